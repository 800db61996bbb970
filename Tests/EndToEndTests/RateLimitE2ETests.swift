// Rate limits at both gateways, on a system started with low limits: a flood gets 429 `rate_limited` with
// `Retry-After` and the contract's error shape, the refused request changed nothing, and after the
// advertised wait the client is served again. /healthz, /metrics and /openapi.yaml are never limited.

import Foundation
import Testing
import WiPayClient

/// A token every 5 s, 3 at once: slow enough that no token comes back unnoticed between two calls.
let e2eLowRateLimits = ["WIPAY_RATE_TERMINAL": "0.2/s,3", "WIPAY_RATE_DEVICE": "0.2/s,3", "WIPAY_RATE_ADDRESS": "0.2/s,3"]

@Suite("End to end: rate limits", .e2eSystem(environment: e2eLowRateLimits), .enabled(if: E2EEnv.ready))
struct RateLimitE2ETests {
    /// Sends without the harness's record, then records the answer for the suite's OpenAPI check unless it is
    /// a 429 that docs/openapi.yaml does not document for that route (this suite checks 429s itself).
    func send(
        _ http: E2EHTTP, _ method: String, _ path: String, headers: HTTPHeaders = HTTPHeaders(), body: [UInt8] = []
    ) async throws -> E2EReply {
        let reply = try await http.send(method, path, headers: headers, body: body, record: false)
        let observation = E2EObservation(
            method: method, path: path, status: reply.status, contentType: reply.headers["Content-Type"], body: reply.body)
        var documented = true
        if reply.status == 429, case .success(let spec) = E2EOpenAPI.load() {
            documented = E2EOpenAPI.check(observation, spec) == nil
        }
        if documented { http.system.record(observation) }
        return reply
    }

    /// The contract's 429: `{"error": {"code": "rate_limited", "message"}}`, JSON, `Retry-After` whole seconds ≥ 1.
    /// Returns the Retry-After seconds.
    @discardableResult
    func expectRateLimited(_ reply: E2EReply, _ what: String, sourceLocation: SourceLocation = #_sourceLocation) -> Int {
        #expect(reply.status == 429, "\(what): \(reply)", sourceLocation: sourceLocation)
        #expect(reply.code == "rate_limited", "\(what): \(reply)", sourceLocation: sourceLocation)
        let message = reply.json?["error"]?["message"]?.string ?? ""
        #expect(!message.isEmpty, "\(what): \(reply)", sourceLocation: sourceLocation)
        #expect(reply.headers["Content-Type"]?.contains("application/json") == true, "\(what)", sourceLocation: sourceLocation)
        let retryAfter = reply.headers["Retry-After"].flatMap { Int($0) }
        #expect(retryAfter.map { $0 >= 1 } == true, "\(what): Retry-After \(String(describing: reply.headers["Retry-After"]))",
            sourceLocation: sourceLocation)
        return retryAfter ?? 1
    }

    /// Sleeps the advertised Retry-After (and a little more for the clock of a loaded machine).
    func sleepRetryAfter(_ seconds: Int) async throws {
        try await Task.sleep(for: .seconds(seconds) + .milliseconds(300))
    }

    /// Lines of `service`'s log that say a key got limited.
    func limitedLogLines(_ system: E2ESystem, _ service: String, containing text: String) -> [Substring] {
        (system.child(service)?.log ?? "").split(separator: "\n").filter { $0.contains("rate limited") && $0.contains(text) }
    }

    @Test("pos-gateway: key guessing by address, a terminal's flood, Retry-After, nothing changed", .timeLimit(.minutes(3)))
    func terminalLimits() async throws {
        let system = try e2eSystem()
        let merchant = try await system.addMerchant()
        let pos = try system.pos(merchant)

        // A key-guessing flood: 401 while the address has tokens, then 429.
        var guessed: E2EReply?
        for _ in 0..<30 {
            let reply = try await send(
                pos.http, "GET", "/v1/payment-requests/pr_aaaaaaaaaaaaaaaaaaaa",
                headers: ["Authorization": "Bearer tk_\(e2eToken(40))"])
            #expect(reply.status == 401 || reply.status == 429, "\(reply)")
            if reply.status == 429 {
                guessed = reply
                break
            }
        }
        let guessReply = try #require(guessed, "30 wrong terminal keys in a row were never limited")
        expectRateLimited(guessReply, "wrong terminal keys")
        // The address limit counts failures only: the real terminal at the same address is served.
        let (firstId, _) = try await pos.mustCreate(amount: 100)

        // The terminal floods: 201 while it has tokens, then 429.
        var refused: (key: String, reply: E2EReply)?
        var created = [firstId]
        for i in 0..<30 {
            let key = "flood-\(i)-\(e2eToken(8))"
            let reply = try await send(
                pos.http, "POST", "/v1/payment-requests", headers: pos.headers(idempotencyKey: key),
                body: pos.createBody(amount: 100, reference: "flood-\(i)"))
            if reply.status == 429 {
                refused = (key, reply)
                break
            }
            #expect(reply.status == 201, "\(reply)")
            if let id = reply.string("id") { created.append(id) }
        }
        let (refusedKey, refusedReply) = try #require(refused, "30 requests of one terminal were never limited")
        #expect(created.count <= 6, "a burst of 3 and a token every 5 s, yet \(created.count) were created")
        var retryAfter = expectRateLimited(refusedReply, "terminal flood")
        // More refusals in the same streak: still 429, one log line for the streak.
        for _ in 0..<3 {
            let reply = try await send(pos.http, "GET", "/v1/payment-requests/\(firstId)", headers: pos.authHeaders)
            if reply.status == 429 { retryAfter = expectRateLimited(reply, "terminal flood, again") }
        }

        // Never limited: health, metrics, the API description.
        for path in ["/healthz", "/metrics", "/openapi.yaml"] {
            let reply = try await pos.http.send("GET", path, record: false)
            #expect(reply.status == 200, "\(path) while the terminal is limited: \(reply)")
        }
        let metrics = String(decoding: try await pos.http.send("GET", "/metrics", record: false).body, as: UTF8.self)
        let limitedLines = metrics.split(separator: "\n").filter { $0.hasPrefix("wipay_gateway_rate_limited_total") }
        #expect(limitedLines.contains { $0.contains("limit=\"terminal\"") }, "\(limitedLines)")
        #expect(limitedLines.contains { $0.contains("limit=\"address\"") }, "\(limitedLines)")
        let logged = limitedLogLines(system, "pos-gateway", containing: merchant.terminalId)
        #expect(logged.count == 1, "one log line for the streak, got \(logged)")

        // The refused request changed nothing: its Idempotency-Key is unused (a stored key with another body
        // would be 409 idempotency_key_reused), and no money moved.
        #expect(try await system.balance(merchant.accountId) == 0)
        try await sleepRetryAfter(retryAfter)
        let again = try await pos.create(amount: 250, reference: "after-the-wait", idempotencyKey: refusedKey)
        #expect(again.status == 201, "after Retry-After the terminal is served, the refused key is free: \(again)")
        #expect(again.int("amount") == 250)
    }

    @Test(
        "phone-gateway: enrollment and bad signatures by address, a device's flood, nothing changed", .timeLimit(.minutes(3)))
    func deviceLimits() async throws {
        let system = try e2eSystem()
        let merchant = try await system.addMerchant()
        let pos = try system.pos(merchant)
        let phone = try await system.phone(funds: 10_000)  // one enrollment: an address token
        let second = try await system.addWallet(funds: 0)
        let http = phone.http

        // Calls without a valid signature: 401 while the address has tokens, then 429.
        var forged: E2EReply?
        for i in 0..<30 {
            let path = "/v1/accounts/me?forged=\(i)"
            let headers = phone.signedHeaders(method: "GET", path: path, body: [], signer: E2EDeviceKey())
            let reply = try await send(http, "GET", path, headers: headers)
            #expect(reply.status == 401 || reply.status == 429, "\(reply)")
            if reply.status == 429 {
                forged = reply
                break
            }
        }
        expectRateLimited(try #require(forged, "30 forged signatures in a row were never limited"), "forged signatures")
        // Enrollment takes an address token too: refused now, and the code is not used up by it.
        let enrollBody = e2eJSON([
            "enrollment_code": second.enrollmentCode, "public_key": E2EDeviceKey().publicKeyBase64URL, "name": "second",
        ])
        let json: HTTPHeaders = ["Content-Type": "application/json"]
        let refusedEnroll = try await send(http, "POST", "/v1/devices", headers: json, body: enrollBody)
        let enrollWait = expectRateLimited(refusedEnroll, "enrollment from a limited address")
        // A device with a valid signature at the same address is served.
        let me = try await phone.send("GET", "/v1/accounts/me")
        #expect(me.status == 200, "a signed call while the address is limited: \(me)")
        try await sleepRetryAfter(enrollWait)
        let enrolled = try await send(http, "POST", "/v1/devices", headers: json, body: enrollBody)
        #expect(enrolled.status == 201, "the refused enrollment left the code unused: \(enrolled)")

        // The device floods (distinct queries: distinct signatures within one second), then pays while limited.
        let (requestId, payload) = try await pos.mustCreate(amount: 700)
        var flooded: E2EReply?
        for i in 0..<30 {
            let path = "/v1/accounts/me?n=\(i)"
            let signed = try await phone.freshSignedHeaders(method: "GET", path: path, body: [])
            let reply = try await send(http, "GET", path, headers: signed)
            if reply.status == 429 {
                flooded = reply
                break
            }
            #expect(reply.status == 200, "\(reply)")
        }
        expectRateLimited(try #require(flooded, "30 calls of one device were never limited"), "device flood")
        let payKey = "pay-limited-\(e2eToken(8))"
        system.noteSecret(phone.wallet.pin)
        let payPath = "/v1/payment-instructions"
        // Signed in the contract's first form (version 1: the Idempotency-Key is not covered).
        var headers = phone.signedHeaders(method: "POST", path: payPath, body: phone.payBody(payload))
        headers.set("Content-Type", "application/json")
        headers.set("Idempotency-Key", payKey)
        let refusedPay = try await send(http, "POST", payPath, headers: headers, body: phone.payBody(payload))
        let payWait = expectRateLimited(refusedPay, "instruction from a limited device")
        let logged = limitedLogLines(system, "phone-gateway", containing: phone.deviceId ?? "?")
        #expect(logged.count == 1, "one log line for the streak, got \(logged)")

        // Nothing changed: the request is still pending and no money moved.
        #expect(try await pos.get(requestId).string("status") == "pending")
        #expect(try await system.balance(phone.accountId) == 10_000)
        #expect(try await system.balance(merchant.accountId) == 0)

        // After the wait the device is served: the same instruction (same Idempotency-Key, signed again) pays once.
        try await sleepRetryAfter(payWait)
        let paid = try await phone.pay(payload, idempotencyKey: payKey)
        #expect(paid.status == 200 && paid.string("status") == "succeeded", "\(paid)")
        #expect(try await system.balance(phone.accountId) == 9_300)
    }
}
