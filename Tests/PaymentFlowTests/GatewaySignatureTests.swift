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

    @Test func goodSignatureThenReplay() throws {
        let verifier = SignatureVerifier()
        let body = #"{"payload":"x","pin":"1234"}"#
        let (timestamp, signature) = try signed(body: body)
        #expect(
            verifier.verify(
                publicKey: publicKey, method: "POST", path: "/v1/payment-instructions", timestamp: timestamp, signature: signature,
                body: Array(body.utf8), nowSeconds: now) == nil)
        let again = verifier.verify(
            publicKey: publicKey, method: "POST", path: "/v1/payment-instructions", timestamp: timestamp, signature: signature,
            body: Array(body.utf8), nowSeconds: now + 1)
        #expect(again?.code == "signature_replayed")
        #expect(again?.status.code == 401)
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
