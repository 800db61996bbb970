import CZeroMQ

/// A CurveZMQ key pair in Z85 text (40 characters each), as libzmq and key files hold them.
public struct CurveKeyPair: Sendable, Equatable {
    public let publicKey: String
    public let secretKey: String

    public init(publicKey: String, secretKey: String) throws(ZMQError) {
        guard Self.isValidKey(publicKey), Self.isValidKey(secretKey) else {
            throw ZMQError(code: EINVAL, function: "CurveKeyPair")
        }
        // The public key must be the one that belongs to the secret key.
        guard try Self.publicKey(forSecret: secretKey) == publicKey else {
            throw ZMQError(code: EINVAL, function: "CurveKeyPair")
        }
        self.publicKey = publicKey
        self.secretKey = secretKey
    }

    private init(unchecked publicKey: String, secretKey: String) {
        self.publicKey = publicKey
        self.secretKey = secretKey
    }

    /// A new random key pair (libzmq's `zmq_curve_keypair`, backed by libsodium).
    public static func generate() throws(ZMQError) -> CurveKeyPair {
        var pub = [CChar](repeating: 0, count: 41)
        var sec = [CChar](repeating: 0, count: 41)
        guard zmq_curve_keypair(&pub, &sec) == 0 else { throw ZMQError.last("zmq_curve_keypair") }
        return CurveKeyPair(
            unchecked: String(decoding: pub.prefix(40).map { UInt8(bitPattern: $0) }, as: UTF8.self),
            secretKey: String(decoding: sec.prefix(40).map { UInt8(bitPattern: $0) }, as: UTF8.self))
    }

    /// The Z85 public key of a Z85 secret key.
    public static func publicKey(forSecret secret: String) throws(ZMQError) -> String {
        guard isValidKey(secret) else { throw ZMQError(code: EINVAL, function: "zmq_curve_public") }
        var pub = [CChar](repeating: 0, count: 41)
        guard zmq_curve_public(&pub, secret) == 0 else { throw ZMQError.last("zmq_curve_public") }
        return String(decoding: pub.prefix(40).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// 40 characters of the Z85 alphabet.
    public static func isValidKey(_ key: String) -> Bool {
        let z85 = Array("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#".utf8)
        let bytes = Array(key.utf8)
        return bytes.count == 40 && bytes.allSatisfy { z85.contains($0) }
    }
}

/// Z85 encoding of 32-byte binary keys (ZMTP's text form), for keys that arrive as raw bytes.
public enum Z85 {
    public static func encode(_ bytes: [UInt8]) -> String? {
        guard bytes.count % 4 == 0 else { return nil }
        var out = [CChar](repeating: 0, count: bytes.count * 5 / 4 + 1)
        guard zmq_z85_encode(&out, bytes, bytes.count) != nil else { return nil }
        return String(decoding: out.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    public static func decode(_ text: String) -> [UInt8]? {
        guard text.utf8.count % 5 == 0 else { return nil }
        var out = [UInt8](repeating: 0, count: text.utf8.count * 4 / 5)
        guard zmq_z85_decode(&out, text) != nil else { return nil }
        return out
    }
}
