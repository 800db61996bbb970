import Crypto
import Foundation
import HTTPTypes
import WiPayBus
import WiPayPayload

/// The device request signature of the phone API: `X-Signature` = base64url (no padding) of an Ed25519
/// signature over the UTF-8 bytes of the signed string, where PATH is the request target as sent (path plus
/// `?query` if any):
/// - version 1 (no `X-Signature-Version` header, or `1`): `METHOD \n PATH \n X-Timestamp \n hex SHA-256(body)`;
/// - version 2 (`X-Signature-Version: 2`): `wipay-sig-2 \n METHOD \n PATH \n X-Timestamp \n hex SHA-256(body)
///   \n Idempotency-Key` (empty when the request has none), so two calls that differ only in their key never
///   share a signature.
public enum DeviceSignature {
    /// How far a timestamp may be from the gateway's clock.
    public static let window: Int64 = 300
    /// How long a seen signature is remembered (longer than the ±window it could be accepted in).
    public static let replayMemory: Duration = .seconds(600)

    public static let deviceIdHeader = HTTPField.Name("X-Device-Id")!
    public static let timestampHeader = HTTPField.Name("X-Timestamp")!
    public static let signatureHeader = HTTPField.Name("X-Signature")!
    public static let versionHeader = HTTPField.Name("X-Signature-Version")!

    /// The signed-string versions a gateway accepts.
    public enum Version: Int, Sendable {
        case v1 = 1
        case v2 = 2

        /// The version a request's `X-Signature-Version` header names; nil for an unknown one.
        public init?(header: String?) {
            guard let header else {
                self = .v1
                return
            }
            switch header {
            case "1": self = .v1
            case "2": self = .v2
            default: return nil
            }
        }
    }

    public static func message(method: String, path: String, timestamp: String, bodyHash: String) -> [UInt8] {
        Array("\(method)\n\(path)\n\(timestamp)\n\(bodyHash)".utf8)
    }

    public static func message(
        version: Version, method: String, path: String, timestamp: String, bodyHash: String, idempotencyKey: String?
    ) -> [UInt8] {
        switch version {
        case .v1: message(method: method, path: path, timestamp: timestamp, bodyHash: bodyHash)
        case .v2: Array("wipay-sig-2\n\(method)\n\(path)\n\(timestamp)\n\(bodyHash)\n\(idempotencyKey ?? "")".utf8)
        }
    }

    /// Signs like a device does (the reference wallet and the tests use it).
    public static func sign(
        privateKey: Curve25519.Signing.PrivateKey, method: String, path: String, timestamp: String, body: [UInt8],
        version: Version = .v1, idempotencyKey: String? = nil
    ) throws -> String {
        let signature = try privateKey.signature(
            for: message(
                version: version, method: method, path: path, timestamp: timestamp, bodyHash: Hex.sha256(body),
                idempotencyKey: idempotencyKey))
        return Base64URL.encode(Array(signature))
    }
}

/// A signature the verifier accepted: what the router needs to tell a resend from a replay.
public struct VerifiedSignature: Sendable, Equatable {
    /// Lowercase hex SHA-256 of the raw signature bytes.
    public let digest: String
    /// True when the identical request (same signature, body and Idempotency-Key) was seen before: a resend,
    /// which gets its first result again.
    public let isResend: Bool
}

/// Checks signed requests: the timestamp window, the Ed25519 signature, and that a signature is reused
/// only by the identical request (a per-instance bounded memory of seen signatures; the router keeps the
/// shared one for payment instructions). Pure except for the clock it is given.
public final class SignatureVerifier: Sendable {
    /// signature → what it was seen with (`hex SHA-256(body) \n Idempotency-Key`).
    private let seen: TTLCache<String, String>

    public init(capacity: Int = 1_000_000) {
        seen = TTLCache(capacity: capacity, ttl: DeviceSignature.replayMemory)
    }

    /// nil when the request is authentic and fresh (and it is remembered), or the identical request again;
    /// otherwise the 401 to answer.
    public func verify(
        publicKey rawKey: [UInt8], method: String, path: String, timestamp: String, signature: String,
        body: [UInt8], nowSeconds: Int64 = Int64(Date().timeIntervalSince1970), now: ContinuousClock.Instant = .now
    ) -> GatewayError? {
        switch check(
            publicKey: rawKey, method: method, path: path, timestamp: timestamp, signature: signature, body: body,
            nowSeconds: nowSeconds, now: now)
        {
        case .success: nil
        case .failure(let error): error
        }
    }

    /// Like `verify`, for a request with its signature version and Idempotency-Key; on success, the
    /// signature's digest and whether this is a resend.
    public func check(
        publicKey rawKey: [UInt8], method: String, path: String, timestamp: String, signature: String,
        body: [UInt8], version: DeviceSignature.Version = .v1, idempotencyKey: String? = nil,
        nowSeconds: Int64 = Int64(Date().timeIntervalSince1970), now: ContinuousClock.Instant = .now
    ) -> Result<VerifiedSignature, GatewayError> {
        guard let time = Int64(timestamp), timestamp.utf8.count <= 20 else {
            return .failure(GatewayError(.unauthorized, "stale_timestamp", "X-Timestamp must be unix seconds"))
        }
        guard abs(nowSeconds - time) <= DeviceSignature.window else {
            return .failure(
                GatewayError(.unauthorized, "stale_timestamp", "X-Timestamp is more than \(DeviceSignature.window) s off"))
        }
        guard signature.utf8.count <= 128, let raw = Base64URL.decode(signature), raw.count == 64 else {
            return .failure(
                GatewayError(.unauthorized, "invalid_signature", "X-Signature is not a base64url Ed25519 signature"))
        }
        guard let publicKey = try? Curve25519.Signing.PublicKey(rawRepresentation: rawKey) else {
            return .failure(GatewayError(.unauthorized, "invalid_signature", "the device key is not usable"))
        }
        let bodyHash = Hex.sha256(body)
        let message = DeviceSignature.message(
            version: version, method: method, path: path, timestamp: timestamp, bodyHash: bodyHash,
            idempotencyKey: idempotencyKey)
        guard publicKey.isValidSignature(raw, for: message) else {
            return .failure(GatewayError(.unauthorized, "invalid_signature", "the signature does not match the request"))
        }
        // Remembered only once valid, so forged junk cannot fill the memory. The identical request again is
        // a resend (a phone that never saw its answer); the signature with another key is a replay.
        let fingerprint = bodyHash + "\n" + (idempotencyKey ?? "")
        var isResend = false
        if !seen.insertIfAbsent(signature, fingerprint, now: now) {
            guard seen.get(signature, now: now) == fingerprint else {
                return .failure(
                    GatewayError(.unauthorized, "signature_replayed", "this signature was already used for another request"))
            }
            isResend = true
        }
        return .success(VerifiedSignature(digest: Hex.sha256(raw), isResend: isResend))
    }
}
