// Device request signatures (phone-gateway): good, altered, stale, replayed. Pure: the clock is given.

import Crypto
import Testing
import WiPayGateway

@Suite("Gateway device signatures")
struct GatewaySignatureTests {
    let key = Curve25519.Signing.PrivateKey()
    let now: Int64 = 1_750_000_000
    var publicKey: [UInt8] { Array(key.publicKey.rawRepresentation) }

    func signed(_ method: String = "POST", _ path: String = "/v1/payment-instructions", at time: Int64? = nil, body: String)
        throws -> (timestamp: String, signature: String)
    {
        let timestamp = String(time ?? now)
        return (timestamp, try DeviceSignature.sign(privateKey: key, method: method, path: path, timestamp: timestamp, body: Array(body.utf8)))
    }

    @Test func messageLayout() {
        let message = DeviceSignature.message(method: "GET", path: "/v1/accounts/me?x=1", timestamp: "17", bodyHash: "ab")
        #expect(String(decoding: message, as: UTF8.self) == "GET\n/v1/accounts/me?x=1\n17\nab")
    }

    @Test func goodSignatureThenResendThenReplay() throws {
        let verifier = SignatureVerifier()
        let body = #"{"payload":"x","pin":"1234"}"#
        let (timestamp, signature) = try signed(body: body)
        func check(key: String?, at offset: Int64) -> Result<VerifiedSignature, GatewayError> {
            verifier.check(
                publicKey: publicKey, method: "POST", path: "/v1/payment-instructions", timestamp: timestamp, signature: signature,
                body: Array(body.utf8), idempotencyKey: key, nowSeconds: now + offset)
        }
        let first = try check(key: "k1", at: 0).get()
        #expect(!first.isResend)
        #expect(first.digest.utf8.count == 64)
        // The identical request again (a phone that never saw its answer): a resend, let through.
        let again = try check(key: "k1", at: 1).get()
        #expect(again.isResend && again.digest == first.digest)
        // The same version-1 signature with another Idempotency-Key: a replay.
        guard case .failure(let replay) = check(key: "k2", at: 2) else {
            Issue.record("a signature reused with another key must be refused")
            return
        }
        #expect(replay.code == "signature_replayed")
        #expect(replay.status.code == 401)
        guard case .failure(let noKey) = check(key: nil, at: 2) else {
            Issue.record("a signature reused without its key must be refused")
            return
        }
        #expect(noKey.code == "signature_replayed")
    }

    @Test func versionTwoCoversTheIdempotencyKey() throws {
        let verifier = SignatureVerifier()
        let body = #"{"payload":"x","pin":"1234"}"#
        let timestamp = String(now)
        let message = DeviceSignature.message(
            version: .v2, method: "POST", path: "/p", timestamp: "17", bodyHash: "ab", idempotencyKey: "key-1")
        #expect(String(decoding: message, as: UTF8.self) == "wipay-sig-2\nPOST\n/p\n17\nab\nkey-1")
        let a = try DeviceSignature.sign(
            privateKey: key, method: "POST", path: "/v1/payment-instructions", timestamp: timestamp, body: Array(body.utf8),
            version: .v2, idempotencyKey: "a")
        let b = try DeviceSignature.sign(
            privateKey: key, method: "POST", path: "/v1/payment-instructions", timestamp: timestamp, body: Array(body.utf8),
            version: .v2, idempotencyKey: "b")
        #expect(a != b, "two calls that differ only in their key never share a signature")
        for (signature, idempotencyKey) in [(a, "a"), (b, "b")] {
            let verified = verifier.check(
                publicKey: publicKey, method: "POST", path: "/v1/payment-instructions", timestamp: timestamp, signature: signature,
                body: Array(body.utf8), version: .v2, idempotencyKey: idempotencyKey, nowSeconds: now)
            #expect((try? verified.get()) != nil)
        }
        // A version-2 signature moved to another key no longer verifies at all.
        let moved = verifier.check(
            publicKey: publicKey, method: "POST", path: "/v1/payment-instructions", timestamp: timestamp, signature: a,
            body: Array(body.utf8), version: .v2, idempotencyKey: "c", nowSeconds: now)
        guard case .failure(let error) = moved else {
            Issue.record("a moved signature must be refused")
            return
        }
        #expect(error.code == "invalid_signature")
        // Checked as version 1, a version-2 signature is not valid either.
        #expect(
            verifier.verify(
                publicKey: publicKey, method: "POST", path: "/v1/payment-instructions", timestamp: timestamp, signature: a,
                body: Array(body.utf8), nowSeconds: now)?.code == "invalid_signature")
        #expect(DeviceSignature.Version(header: nil) == .v1)
        #expect(DeviceSignature.Version(header: "2") == .v2)
        #expect(DeviceSignature.Version(header: "3") == nil)
    }

    @Test func alteredRequestIsRefused() throws {
        let verifier = SignatureVerifier()
        let body = #"{"payload":"x","pin":"1234"}"#
        let (timestamp, signature) = try signed(body: body)
        let cases: [(String, String, String, String)] = [
            ("POST", "/v1/payment-instructions", timestamp, #"{"payload":"x","pin":"9999"}"#),  // body
            ("GET", "/v1/payment-instructions", timestamp, body),  // method
            ("POST", "/v1/payment-instructions?a=1", timestamp, body),  // path
            ("POST", "/v1/payment-instructions", String(now + 1), body),  // timestamp
        ]
        for (method, path, time, text) in cases {
            let error = verifier.verify(
                publicKey: publicKey, method: method, path: path, timestamp: time, signature: signature, body: Array(text.utf8),
                nowSeconds: now)
            #expect(error?.code == "invalid_signature", "\(method) \(path) \(time)")
        }
        // Another device's key.
        let other = Array(Curve25519.Signing.PrivateKey().publicKey.rawRepresentation)
        #expect(
            verifier.verify(
                publicKey: other, method: "POST", path: "/v1/payment-instructions", timestamp: timestamp, signature: signature,
                body: Array(body.utf8), nowSeconds: now)?.code == "invalid_signature")
        // Garbage signatures.
        for junk in ["", "!!!", String(repeating: "A", count: 86), String(repeating: "A", count: 500)] {
            #expect(
                verifier.verify(
                    publicKey: publicKey, method: "POST", path: "/v1/payment-instructions", timestamp: timestamp, signature: junk,
                    body: Array(body.utf8), nowSeconds: now)?.code == "invalid_signature")
        }
        // Refusals are not remembered: the genuine request still passes once.
        #expect(
            verifier.verify(
                publicKey: publicKey, method: "POST", path: "/v1/payment-instructions", timestamp: timestamp, signature: signature,
                body: Array(body.utf8), nowSeconds: now) == nil)
    }

    @Test func staleTimestamps() throws {
        let verifier = SignatureVerifier()
        for offset: Int64 in [-301, 301, -100_000] {
            let (timestamp, signature) = try signed("GET", "/v1/accounts/me", at: now + offset, body: "")
            #expect(
                verifier.verify(
                    publicKey: publicKey, method: "GET", path: "/v1/accounts/me", timestamp: timestamp, signature: signature, body: [],
                    nowSeconds: now)?.code == "stale_timestamp")
        }
        for offset: Int64 in [-300, 300] {
            let (timestamp, signature) = try signed("GET", "/v1/accounts/me", at: now + offset, body: "")
            #expect(
                verifier.verify(
                    publicKey: publicKey, method: "GET", path: "/v1/accounts/me", timestamp: timestamp, signature: signature, body: [],
                    nowSeconds: now) == nil)
        }
        let (_, signature) = try signed("GET", "/v1/accounts/me", body: "")
        #expect(
            verifier.verify(
                publicKey: publicKey, method: "GET", path: "/v1/accounts/me", timestamp: "soon", signature: signature, body: [],
                nowSeconds: now)?.code == "stale_timestamp")
    }

    @Test func replayMemoryIsBoundedAndExpires() {
        let cache = TTLCache<String, Bool>(capacity: 3, ttl: .seconds(600))
        let t0 = ContinuousClock.now
        #expect(cache.insertIfAbsent("a", true, now: t0))
        #expect(!cache.insertIfAbsent("a", true, now: t0 + .seconds(599)))
        #expect(cache.insertIfAbsent("a", true, now: t0 + .seconds(601)))
        for key in ["b", "c", "d", "e"] { _ = cache.insertIfAbsent(key, true, now: t0 + .seconds(602)) }
        #expect(cache.count <= 3)
    }
}
