/// A request body read as a JSON object with a fixed set of allowed keys. Every problem is a 400 with
/// a precise code: `invalid_json` (malformed, or not an object), `unknown_field`, `missing_field`,
/// `invalid_field` (wrong type or out of range).
public struct JSONBody: Sendable {
    public let object: JSONObject

    /// Parses `bytes` as an object whose keys are all in `allowed`. An empty body is `{}` only when
    /// `emptyIsObject` (bodies that are optional, like a full refund's).
    public static func parse(_ bytes: [UInt8], allowed: Set<String>, emptyIsObject: Bool = false) throws(GatewayError) -> JSONBody {
        if emptyIsObject, bytes.allSatisfy({ $0 == 0x20 || $0 == 0x09 || $0 == 0x0A || $0 == 0x0D }) {
            return JSONBody(object: JSONObject())
        }
        let value: JSONValue
        do {
            value = try JSONParser.parse(bytes, limits: JSONLimits(maxDepth: 16, maxBytes: GatewayRequest.maxBodyBytes))
        } catch {
            throw GatewayError.badRequest("invalid_json", "the body is not valid JSON: \(error.description)")
        }
        guard case .object(let object) = value else {
            throw GatewayError.badRequest("invalid_json", "the body must be a JSON object")
        }
        if let unknown = object.keys.first(where: { !allowed.contains($0) }) {
            throw GatewayError.badRequest("unknown_field", "unknown field '\(JSONBody.printable(unknown))'")
        }
        return JSONBody(object: object)
    }

    public init(object: JSONObject) { self.object = object }

    /// A key for an error message: bounded and without control characters.
    static func printable(_ key: String) -> String {
        String(key.unicodeScalars.prefix(64).map { $0.value < 0x20 || $0.value == 0x7F ? "?" : Character($0) })
    }

    private func missing(_ key: String) -> GatewayError {
        GatewayError.badRequest("missing_field", "missing field '\(key)'")
    }

    /// A required string.
    public func string(_ key: String) throws(GatewayError) -> String {
        guard let value = object[key], value != .null else { throw missing(key) }
        guard case .string(let text) = value else { throw GatewayError.invalidField(key, "must be a string, not \(value.kindName)") }
        return text
    }

    /// An optional string (absent or null → nil).
    public func optionalString(_ key: String) throws(GatewayError) -> String? {
        guard let value = object[key], value != .null else { return nil }
        guard case .string(let text) = value else { throw GatewayError.invalidField(key, "must be a string, not \(value.kindName)") }
        return text
    }

    /// A required integer (an integer literal: `12.0`, `1e3` and `"12"` are refused).
    public func int64(_ key: String) throws(GatewayError) -> Int64 {
        guard let value = object[key], value != .null else { throw missing(key) }
        return try Self.integer(key, value)
    }

    /// An optional integer (absent or null → nil).
    public func optionalInt64(_ key: String) throws(GatewayError) -> Int64? {
        guard let value = object[key], value != .null else { return nil }
        return try Self.integer(key, value)
    }

    private static func integer(_ key: String, _ value: JSONValue) throws(GatewayError) -> Int64 {
        switch value {
        case .int(let number): return number
        case .number(let text):
            let isIntegerText = text.utf8.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2D }
            throw GatewayError.invalidField(key, isIntegerText ? "is out of range" : "must be an integer, not \(text)")
        default: throw GatewayError.invalidField(key, "must be an integer, not \(value.kindName)")
        }
    }
}

/// Checks shared by the gateways.
public enum Validate {
    public static let maxAmountMinor: Int64 = 1_000_000_000_000

    /// An amount in minor units: 1 … 10^12.
    public static func amount(_ key: String, _ value: Int64) throws(GatewayError) -> Int64 {
        guard value >= 1, value <= maxAmountMinor else {
            throw GatewayError.invalidField(key, "must be an integer from 1 to \(maxAmountMinor) (minor units)")
        }
        return value
    }

    /// A string of `range` characters (Unicode code points, as JSON Schema's `maxLength` counts them; not
    /// bytes) with no control characters.
    public static func text(_ key: String, _ value: String, characters range: ClosedRange<Int>) throws(GatewayError) -> String {
        let count = value.unicodeScalars.count
        guard range.contains(count) else {
            throw GatewayError.invalidField(key, "must be \(range.lowerBound) to \(range.upperBound) characters")
        }
        // C0 and C1 control characters (U+0000–U+001F, U+007F–U+009F), as the payment-router refuses them too.
        guard !value.unicodeScalars.contains(where: { $0.value < 0x20 || (0x7F...0x9F).contains($0.value) }) else {
            throw GatewayError.invalidField(key, "must not contain control characters")
        }
        return value
    }

    /// An id in a path: our ids are short lowercase ASCII; anything else cannot exist (404, not 400).
    public static func isPlausibleId(_ id: String) -> Bool {
        (1...64).contains(id.utf8.count) && id.utf8.allSatisfy { ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x5F }
    }
}
