// The signed payment payload: see Payload.swift.
