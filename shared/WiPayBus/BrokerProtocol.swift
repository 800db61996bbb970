import ZeroMQ

/// Frames between workers and the broker (the `bus` service). See docs/bus-protocol.md, "Broker".
///
/// Client → broker (frontend ROUTER):  `["", service, envelope, body]`
/// Broker → client:                    `["", envelope, body]`
/// Worker → broker (backend ROUTER):   `["", "HB", service, instance, credit]` (registers and heartbeats)
///                                     `["", "REPLY", client, envelope, body]`
///                                     `["", "DRAIN"]` (send me no more work)
/// Broker → worker:                    `["", "REQ", client, envelope, body]`, `["", "HB"]`
public enum BrokerCommand: String, Sendable {
    case heartbeat = "HB"
    case request = "REQ"
    case reply = "REPLY"
    case drain = "DRAIN"

    public var frame: [UInt8] { Array(rawValue.utf8) }

    public static func parse(_ frame: [UInt8]) -> BrokerCommand? {
        guard frame.count <= 8, let text = String(validating: frame, as: UTF8.self) else { return nil }
        return BrokerCommand(rawValue: text)
    }
}

/// The ports of the broker, derived from one base port so that a deployment sets one number.
public struct BusEndpoints: Sendable, Equatable {
    /// Callers (gateways, router, payctl) connect DEALER sockets here.
    public var frontend: String
    /// Workers (every stage instance) connect DEALER sockets here.
    public var backend: String
    /// Publishers connect PUB sockets here (broker's XSUB).
    public var publish: String
    /// Subscribers connect SUB sockets here (broker's XPUB).
    public var subscribe: String

    public init(frontend: String, backend: String, publish: String, subscribe: String) {
        self.frontend = frontend
        self.backend = backend
        self.publish = publish
        self.subscribe = subscribe
    }

    /// `tcp://host:base` … `tcp://host:base+3`.
    public init(host: String, basePort: Int) {
        self.init(
            frontend: "tcp://\(host):\(basePort)", backend: "tcp://\(host):\(basePort + 1)",
            publish: "tcp://\(host):\(basePort + 2)", subscribe: "tcp://\(host):\(basePort + 3)")
    }
}

/// How a socket secures itself on the bus: nothing (plain TCP, local development) or CurveZMQ as a
/// client of the broker whose public key it knows.
public enum BusSecurity: Sendable, Equatable {
    case none
    case curve(keys: CurveKeyPair, brokerPublicKey: String)

    public func apply(to socket: ZMQSocket) throws(ZMQError) {
        if case .curve(let keys, let brokerKey) = self {
            try socket.makeCurveClient(keys, serverPublicKey: brokerKey)
        }
    }
}
