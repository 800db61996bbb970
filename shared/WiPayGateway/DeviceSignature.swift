import Crypto
import Foundation
import HTTPTypes
import WiPayBus

/// The device request signature of the phone API: `X-Signature` = base64url (no padding) of an Ed25519
/// signature over the UTF-8 bytes of `METHOD + "\n" + PATH + "\n" + X-Timestamp + "\n" + hex SHA-256(body)`,
/// where PATH is the request target as sent (path plus `?query` if any).
public enum DeviceSignature {
    /// How far a timestamp may be from the gateway's clock.
    public static let window: Int64 = 300
    /// How long a seen signature is remembered (longer than the ±window it could be accepted in).
    public static let replayMemory: Duration = .seconds(600)

    public static let deviceIdHeader = HTTPField.Name("X-Device-Id")!
    public static let timestampHeader = HTTPField.Name("X-Timestamp")!
    public static let signatureHeader = HTTPField.Name("X-Signature")!

    public static func message(method: String, path: String, timestamp: String, bodyHash: String) -> [UInt8] {
        Array("\(method)\n\(path)\n\(timestamp)\n\(bodyHash)".utf8)
    }

    /// Signs like a device does (the reference wallet and the tests use it).
    public static func sign(
        privateKey: Curve25519.Signing.PrivateKey, method: String, path: String, timestamp: String, body: [UInt8]
    ) throws -> String {
        let signature = try privateKey.signature(
            for: message(method: method, path: path, timestamp: timestamp, bodyHash: Hex.sha256(body)))
        return Base64URL.encode(Array(signature))
    }
}

/// Checks signed requests: the timestamp window, the Ed25519 signature, and that a signature is not
/// seen twice (a per-instance bounded memory of seen signatures). Pure except for the clock it is given.
public final class SignatureVerifier: Sendable {
    private let seen: TTLCache<String, Bool>

    public init(capacity: Int = 1_000_000) {
        seen = TTLCache(capacity: capacity, ttl: DeviceSignature.replayMemory)
    }

    /// nil when the request is authentic and fresh (and it is remembered); otherwise the 401 to answer.
    public func verify(
        publicKey rawKey: [UInt8], method: String, path: String, timestamp: String, signature: String,
        body: [UInt8], nowSeconds: Int64 = Int64(Date().timeIntervalSince1970), now: ContinuousClock.Instant = .now
    ) -> GatewayError? {
        guard let time = Int64(timestamp), timestamp.utf8.count <= 20 else {
            return GatewayError(.unauthorized, "stale_timestamp", "X-Timestamp must be unix seconds")
        }
        guard abs(nowSeconds - time) <= DeviceSignature.window else {
            return GatewayError(.unauthorized, "stale_timestamp", "X-Timestamp is more than \(DeviceSignature.window) s off")
        }
        guard signature.utf8.count <= 128, let raw = Base64URL.decode(signature), raw.count == 64 else {
            return GatewayError(.unauthorized, "invalid_signature", "X-Signature is not a base64url Ed25519 signature")
        }
        guard let publicKey = try? Curve25519.Signing.PublicKey(rawRepresentation: rawKey) else {
            return GatewayError(.unauthorized, "invalid_signature", "the device key is not usable")
        }
        let message = DeviceSignature.message(method: method, path: path, timestamp: timestamp, bodyHash: Hex.sha256(body))
        guard publicKey.isValidSignature(raw, for: message) else {
            return GatewayError(.unauthorized, "invalid_signature", "the signature does not match the request")
        }
        // Remembered only once valid, so forged junk cannot fill the memory.
        guard seen.insertIfAbsent(signature, true, now: now) else {
            return GatewayError(.unauthorized, "signature_replayed", "this signature was already used")
        }
        return nil
    }
}
