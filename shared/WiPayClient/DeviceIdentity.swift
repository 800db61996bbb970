import Crypto
import Foundation
import WiPayPayload

/// Lowercase hex of bytes.
public func hexString(_ bytes: some Sequence<UInt8>) -> String {
    let digits = Array("0123456789abcdef".utf8)
    var out: [UInt8] = []
    for byte in bytes {
        out.append(digits[Int(byte >> 4)])
        out.append(digits[Int(byte & 0x0F)])
    }
    return String(decoding: out, as: UTF8.self)
}

/// An enrolled device: its id and Ed25519 key. Signs requests to the phone gateway as the contract says,
/// with its versioned extension (`X-Signature-Version: 2`) that also covers the `Idempotency-Key`:
/// `X-Signature` = base64url(Ed25519 over UTF-8 of "wipay-sig-2" "\n" METHOD "\n" PATH "\n" TIMESTAMP "\n"
/// hex(SHA-256(body)) "\n" IDEMPOTENCY-KEY). Version 1 (without the first and last parts) is what
/// `signingInput(method:path:timestamp:body:)` makes; gateways accept both.
public struct DeviceIdentity: Sendable {
    public let deviceId: String
    /// The raw 32-byte private key (kept as bytes: Crypto's key type is not `Sendable`).
    let privateKeyBytes: [UInt8]

    public init(deviceId: String, privateKey: Curve25519.Signing.PrivateKey) {
        self.deviceId = deviceId
        self.privateKeyBytes = Array(privateKey.rawRepresentation)
    }

    /// Restores an identity from its raw 32-byte private key.
    public init(deviceId: String, rawPrivateKey: [UInt8]) throws {
        let key = try Curve25519.Signing.PrivateKey(rawRepresentation: rawPrivateKey)
        self.init(deviceId: deviceId, privateKey: key)
    }

    public var privateKey: Curve25519.Signing.PrivateKey {
        // The bytes came from a valid key in init, so this cannot fail; fall back to a fresh key otherwise.
        (try? Curve25519.Signing.PrivateKey(rawRepresentation: privateKeyBytes)) ?? Curve25519.Signing.PrivateKey()
    }

    /// The raw 32-byte public key, base64url without padding (what `POST /v1/devices` takes).
    public var publicKeyBase64URL: String { Base64URL.encode(Array(privateKey.publicKey.rawRepresentation)) }

    /// The exact bytes that are signed: `METHOD\nPATH\nTIMESTAMP\nhex(sha256(body))`.
    /// `path` is the request target as sent (with its query string, if any).
    public static func signingInput(method: String, path: String, timestamp: Int64, body: [UInt8]) -> [UInt8] {
        let bodyHash = hexString(SHA256.hash(data: body))
        return Array("\(method)\n\(path)\n\(timestamp)\n\(bodyHash)".utf8)
    }

    /// Version 2 of the signed string: version 1 prefixed with `wipay-sig-2` and followed by the
    /// `Idempotency-Key` (empty when the request has none).
    public static func signingInputV2(
        method: String, path: String, timestamp: Int64, body: [UInt8], idempotencyKey: String?
    ) -> [UInt8] {
        let bodyHash = hexString(SHA256.hash(data: body))
        return Array("wipay-sig-2\n\(method)\n\(path)\n\(timestamp)\n\(bodyHash)\n\(idempotencyKey ?? "")".utf8)
    }

    /// The version 1 signature of a request, base64url without padding.
    public func signature(method: String, path: String, timestamp: Int64, body: [UInt8]) throws -> String {
        let input = Self.signingInput(method: method, path: path, timestamp: timestamp, body: body)
        return Base64URL.encode(Array(try privateKey.signature(for: input)))
    }

    /// The version 2 signature of a request (covers the `Idempotency-Key`), base64url without padding.
    public func signatureV2(
        method: String, path: String, timestamp: Int64, body: [UInt8], idempotencyKey: String?
    ) throws -> String {
        let input = Self.signingInputV2(
            method: method, path: path, timestamp: timestamp, body: body, idempotencyKey: idempotencyKey)
        return Base64URL.encode(Array(try privateKey.signature(for: input)))
    }

    /// `X-Device-Id`, `X-Timestamp`, `X-Signature-Version: 2` and `X-Signature` for one request.
    /// - Parameter now: the clock, unix seconds (defaults to the system clock).
    public func signedHeaders(
        method: String, path: String, body: [UInt8], idempotencyKey: String? = nil, now: Int64 = unixNow()
    ) throws -> HTTPHeaders {
        [
            "X-Device-Id": deviceId,
            "X-Timestamp": String(now),
            "X-Signature-Version": "2",
            "X-Signature": try signatureV2(
                method: method, path: path, timestamp: now, body: body, idempotencyKey: idempotencyKey),
        ]
    }

    /// Checks a signature as a gateway would (used by tests and tools).
    public static func verify(
        signature: String, publicKey: Curve25519.Signing.PublicKey, method: String, path: String, timestamp: Int64,
        body: [UInt8]
    ) -> Bool {
        guard let raw = Base64URL.decode(signature) else { return false }
        return publicKey.isValidSignature(raw, for: signingInput(method: method, path: path, timestamp: timestamp, body: body))
    }
}

/// The system clock in unix seconds.
public func unixNow() -> Int64 { Int64(Date().timeIntervalSince1970.rounded(.down)) }

extension HTTPClient {
    /// Sends a request signed by `device` (the body bytes are what is hashed and sent).
    public func sendSigned(
        _ device: DeviceIdentity, method: String, path: String, headers: HTTPHeaders = HTTPHeaders(), body: [UInt8] = [],
        now: Int64 = unixNow()
    ) async throws -> HTTPResponse {
        var headers = headers
        // The gateway checks the signature over the path it receives, which includes our base path.
        let signed = try device.signedHeaders(
            method: method, path: basePath + path, body: body, idempotencyKey: headers["Idempotency-Key"], now: now)
        for field in signed {
            headers.set(field.name, field.value)
        }
        if !body.isEmpty && !headers.contains("Content-Type") { headers.set("Content-Type", "application/json") }
        return try await send(method: method, path: path, headers: headers, body: body)
    }

    /// Opens a device's event stream with a signed `GET`.
    public func signedEvents(
        _ device: DeviceIdentity, path: String, lastEventId: String? = nil, idleTimeout: Duration = .seconds(45)
    ) async throws -> ServerSentEventStream {
        let headers = try device.signedHeaders(method: "GET", path: basePath + path, body: [])
        return try await events(path: path, headers: headers, lastEventId: lastEventId, idleTimeout: idleTimeout)
    }
}
