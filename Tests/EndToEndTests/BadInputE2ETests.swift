// Bad input at both gateways: each answers the right status and error code and changes nothing.

import Foundation
import Testing
import WiPayClient
import WiPayPayload

@Suite("End to end: bad input", .e2eSystem, .enabled(if: E2EEnv.ready))
struct BadInputE2ETests {
    func expectError(
        _ reply: E2EReply, _ status: Int, _ codes: Set<String>, _ what: String,
        sourceLocation: SourceLocation = #_sourceLocation
    ) {
        #expect(reply.status == status, "\(what): expected \(status) \(codes.sorted()), got \(reply)", sourceLocation: sourceLocation)
        #expect(reply.code.map(codes.contains) == true, "\(what): expected \(codes.sorted()), got \(reply)", sourceLocation: sourceLocation)
        let message = reply.json?["error"]?["message"]?.string ?? ""
        #expect(!message.isEmpty, "\(what): no error message: \(reply)", sourceLocation: sourceLocation)
    }

    @Test("payment request bodies: JSON, fields, types, amounts, currency, reference, size", .timeLimit(.minutes(3)))
    func paymentRequestBodies() async throws {
        let system = try e2eSystem()
        let merchant = try await system.addMerchant()
        let pos = try system.pos(merchant)
        let ref = String(repeating: "r", count: 65)
        let huge = "{\"amount\": 100, \"currency\": \"CNY\", \"reference\": \"x\", \"description\": \""
            + String(repeating: "a", count: 70 * 1024) + "\"}"
        let cases: [(String, String, Int, Set<String>)] = [
            ("malformed JSON", #"{"amount": 100, "currency": "CNY""#, 400, ["invalid_json"]),
            ("not JSON", "amount=100", 400, ["invalid_json"]),
            ("empty body", "", 400, ["invalid_json", "missing_field"]),
            ("array", #"[{"amount": 100}]"#, 400, ["invalid_json"]),
            ("string", #""hello""#, 400, ["invalid_json"]),
            ("null", "null", 400, ["invalid_json"]),
            ("unknown field", #"{"amount": 100, "currency": "CNY", "reference": "a", "tip": 5}"#, 400, ["unknown_field"]),
            ("missing amount", #"{"currency": "CNY", "reference": "a"}"#, 400, ["missing_field"]),
            ("missing currency", #"{"amount": 100, "reference": "a"}"#, 400, ["missing_field"]),
            ("missing reference", #"{"amount": 100, "currency": "CNY"}"#, 400, ["missing_field"]),
            ("amount as string", #"{"amount": "100", "currency": "CNY", "reference": "a"}"#, 400, ["invalid_field"]),
            ("currency as number", #"{"amount": 100, "currency": 156, "reference": "a"}"#, 400, ["invalid_field"]),
            ("reference as object", #"{"amount": 100, "currency": "CNY", "reference": {}}"#, 400, ["invalid_field"]),
            ("amount 0", #"{"amount": 0, "currency": "CNY", "reference": "a"}"#, 400, ["invalid_field", "invalid_amount"]),
            ("amount -1", #"{"amount": -1, "currency": "CNY", "reference": "a"}"#, 400, ["invalid_field", "invalid_amount"]),
            (
                "amount 10^12+1", #"{"amount": 1000000000001, "currency": "CNY", "reference": "a"}"#, 400,
                ["invalid_field", "invalid_amount"]
            ),
            ("amount 12.5", #"{"amount": 12.5, "currency": "CNY", "reference": "a"}"#, 400, ["invalid_field", "invalid_amount"]),
            ("amount 1e3", #"{"amount": 1e3, "currency": "CNY", "reference": "a"}"#, 400, ["invalid_field", "invalid_amount"]),
            (
                "amount 2^64", #"{"amount": 18446744073709551616, "currency": "CNY", "reference": "a"}"#, 400,
                ["invalid_field", "invalid_amount", "invalid_json"]
            ),
            (
                "unknown currency", #"{"amount": 100, "currency": "QQQ", "reference": "a"}"#, 400,
                ["invalid_field", "unknown_currency", "invalid_currency"]
            ),
            (
                "lowercase currency", #"{"amount": 100, "currency": "cny", "reference": "a"}"#, 400,
                ["invalid_field", "unknown_currency", "invalid_currency"]
            ),
            ("reference of 65", "{\"amount\": 100, \"currency\": \"CNY\", \"reference\": \"\(ref)\"}", 400, ["invalid_field"]),
            ("empty reference", #"{"amount": 100, "currency": "CNY", "reference": ""}"#, 400, ["invalid_field"]),
            (
                "expires_in 9", #"{"amount": 100, "currency": "CNY", "reference": "a", "expires_in": 9}"#, 400,
                ["invalid_field"]
            ),
            (
                "expires_in 901", #"{"amount": 100, "currency": "CNY", "reference": "a", "expires_in": 901}"#, 400,
                ["invalid_field"]
            ),
            ("duplicate key", #"{"amount": 100, "amount": 1, "currency": "CNY", "reference": "a"}"#, 400, ["invalid_json"]),
            ("body over 64 KiB", huge, 413, ["body_too_large"]),
        ]
        for (index, (what, body, status, codes)) in cases.enumerated() {
            // Each bad body under a fresh key; the key is then free for a good body (nothing was stored).
            let key = "bad-\(index)-\(e2eToken(8))"
            let reply = try await pos.createRaw(Array(body.utf8), idempotencyKey: key)
            expectError(reply, status, codes, what)
            if index % 6 == 0 {
                let good = try await pos.create(amount: 100, idempotencyKey: key)
                #expect(good.status == 201, "\(what): the key of a rejected request must stay unused: \(good)")
            }
        }
        // A request for another currency than the merchant's account.
        let otherCurrency = try await pos.create(amount: 100, currency: "USD")
        #expect(otherCurrency.status == 400 || otherCurrency.status == 422, "\(otherCurrency)")
        #expect(try await system.balance(merchant.accountId) == 0)
    }

    @Test("terminal credentials, idempotency keys and other merchants' ids", .timeLimit(.minutes(2)))
    func terminalAuthAndKeys() async throws {
        let system = try e2eSystem()
        let merchant = try await system.addMerchant()
        let otherMerchant = try await system.addMerchant()
        let pos = try system.pos(merchant)
        let otherPos = try system.pos(otherMerchant)
        let body = pos.createBody(amount: 100)

        let noAuth = try await pos.createRaw(body, idempotencyKey: nil, headers: ["Idempotency-Key": "k-1", "Content-Type": "application/json"])
        #expect(noAuth.status == 401, "\(noAuth)")
        let wrong = try await pos.createRaw(
            body, idempotencyKey: nil,
            headers: ["Authorization": "Bearer tk_\(e2eToken(40))", "Idempotency-Key": "k-2", "Content-Type": "application/json"])
        #expect(wrong.status == 401, "\(wrong)")
        let notBearer = try await pos.createRaw(
            body, idempotencyKey: nil,
            headers: ["Authorization": "Basic \(merchant.terminalKey)", "Idempotency-Key": "k-3", "Content-Type": "application/json"])
        #expect(notBearer.status == 401, "\(notBearer)")
        let getNoAuth = try await pos.http.send("GET", "/v1/payment-requests/pr_aaaaaaaaaaaaaaaaaaaa")
        #expect(getNoAuth.status == 401, "\(getNoAuth)")
        let streamNoAuth = try await E2ESSE.open(
            baseURL: system.posURL, path: "/v1/terminal/events", headers: HTTPHeaders(), system: system)
        #expect(streamNoAuth.status == 401, "terminal stream without a key: \(String(describing: streamNoAuth.status))")
        streamNoAuth.close()

        let missingKey = try await pos.createRaw(body, idempotencyKey: nil)
        #expect(missingKey.status == 400 && missingKey.code == "idempotency_key_missing", "\(missingKey)")
        let longKey = try await pos.createRaw(body, idempotencyKey: String(repeating: "k", count: 256))
        #expect(longKey.status == 400, "\(longKey)")
        let (id, _) = try await pos.mustCreate(amount: 100)
        let cancelNoKey = try await pos.http.send(
            "POST", "/v1/payment-requests/\(id)/cancel", headers: pos.headers(idempotencyKey: nil), body: [])
        #expect(cancelNoKey.status == 400 && cancelNoKey.code == "idempotency_key_missing", "\(cancelNoKey)")
        let reused1 = try await pos.createRaw(pos.createBody(amount: 100, reference: "a"), idempotencyKey: "reuse-me")
        let reused2 = try await pos.createRaw(pos.createBody(amount: 100, reference: "b"), idempotencyKey: "reuse-me")
        #expect(reused1.status == 201)
        #expect(reused2.status == 409 && reused2.code == "idempotency_key_reused", "\(reused2)")

        // Another merchant's request is as unknown as a made-up id.
        let foreign = try await otherPos.get(id)
        #expect(foreign.status == 404, "\(foreign)")
        let foreignCancel = try await otherPos.cancel(id)
        #expect(foreignCancel.status == 404, "\(foreignCancel)")
        let unknown = try await pos.get("pr_aaaaaaaaaaaaaaaaaaaa")
        #expect(unknown.status == 404, "\(unknown)")
        #expect(try await pos.get(id).string("status") == "pending")
        let garbageId = try await pos.get(String(repeating: "x", count: 300))
        #expect(garbageId.status == 404 || garbageId.status == 400, "\(garbageId)")
    }

    @Test("device signatures, enrollment codes, PIN format", .timeLimit(.minutes(2)))
    func deviceCalls() async throws {
        let system = try e2eSystem()
        let merchant = try await system.addMerchant()
        let pos = try system.pos(merchant)
        let phone = try await system.phone(funds: 10_000)
        let (id, payload) = try await pos.mustCreate(amount: 100)
        let path = "/v1/payment-instructions"
        let body = phone.payBody(payload)
        func post(_ headers: HTTPHeaders, key: String = "k-\(e2eToken(10))", body: [UInt8]? = nil) async throws -> E2EReply {
            var h = headers
            h.set("Content-Type", "application/json")
            h.set("Idempotency-Key", key)
            return try await phone.http.send("POST", path, headers: h, body: body ?? phone.payBody(payload))
        }
        // The clock is read at each call: a slow earlier call must not bring a skewed timestamp back in range.
        func now() -> Int64 { Int64(Date().timeIntervalSince1970) }

        let unsigned = try await post(HTTPHeaders())
        #expect(unsigned.status == 401, "unsigned: \(unsigned)")
        let wrongKey = try await post(phone.signedHeaders(method: "POST", path: path, body: body, signer: E2EDeviceKey()))
        expectError(wrongKey, 401, ["invalid_signature"], "signed by another key")
        let otherBody = try await post(
            phone.signedHeaders(method: "POST", path: path, body: Array("{}".utf8)))
        expectError(otherBody, 401, ["invalid_signature"], "signature over another body")
        let otherPath = try await post(phone.signedHeaders(method: "POST", path: "/v1/accounts/me", body: body))
        expectError(otherPath, 401, ["invalid_signature"], "signature over another path")
        let stale = try await post(phone.signedHeaders(method: "POST", path: path, body: body, timestamp: now() - 360))
        expectError(stale, 401, ["stale_timestamp"], "timestamp 360 s old")
        let future = try await post(phone.signedHeaders(method: "POST", path: path, body: body, timestamp: now() + 360))
        expectError(future, 401, ["stale_timestamp"], "timestamp 360 s ahead")
        let unknownDevice = try await post(
            phone.signedHeaders(method: "POST", path: path, body: body, deviceId: "dev_aaaaaaaaaaaaaaaa"))
        #expect(unknownDevice.status == 401, "unknown device: \(unknownDevice)")
        var garbage = phone.signedHeaders(method: "POST", path: path, body: body)
        garbage.set("X-Signature", "not base64!!")
        expectError(try await post(garbage), 401, ["invalid_signature"], "garbage signature")

        // The identical signed request again is a resend and gets its answer; the same (version-1)
        // signature with another Idempotency-Key is a replay, refused. An instruction with a payload that is
        // not one changes nothing, so it serves as the probe.
        let meHeaders = phone.signedHeaders(method: "GET", path: "/v1/accounts/me", body: [])
        let first = try await phone.http.send("GET", "/v1/accounts/me", headers: meHeaders)
        #expect(first.status == 200, "\(first)")
        let resentGet = try await phone.http.send("GET", "/v1/accounts/me", headers: meHeaders)
        #expect(resentGet.status == 200, "an identical GET resent: \(resentGet)")
        let probeBody = phone.payBody("not a payload")
        let probe = phone.signedHeaders(method: "POST", path: path, body: probeBody)
        let probeKey = "k-\(e2eToken(10))"
        let original = try await post(probe, key: probeKey, body: probeBody)
        #expect(original.status == 422 && original.code == "invalid_payload", "\(original)")
        let resent = try await post(probe, key: probeKey, body: probeBody)
        #expect(resent.status == original.status && resent.code == original.code, "resent: \(resent)")
        let replayed = try await post(probe, key: "k-\(e2eToken(10))", body: probeBody)
        expectError(replayed, 401, ["signature_replayed"], "signature replayed with another Idempotency-Key")

        // PIN format, checked before anything else.
        for pin in ["12", "1234567", "abcd", "", "12 4", "١٢٣٤"] {
            let reply = try await phone.pay(payload, pin: pin)
            expectError(reply, 400, ["invalid_pin_format"], "PIN \(pin.debugDescription)")
        }
        let pinNumber = try await phone.send(
            "POST", path, body: Array(#"{"payload": "x", "pin": 1234}"#.utf8), idempotencyKey: "k-\(e2eToken(8))")
        expectError(pinNumber, 400, ["invalid_field", "invalid_pin_format"], "PIN as a number")
        let noKey = try await phone.send("POST", path, body: phone.payBody(payload))
        expectError(noKey, 400, ["idempotency_key_missing"], "instruction without an idempotency key")
        let unknownField = try await phone.send(
            "POST", path, body: e2eJSON(["payload": payload, "pin": "1234", "amount": 1]), idempotencyKey: "k-\(e2eToken(8))")
        expectError(unknownField, 400, ["unknown_field"], "instruction with an unknown field")

        // Enrollment codes: used, unknown, malformed keys.
        let used = try await E2EPhone(system: system, wallet: phone.wallet).enroll()
        expectError(used, 409, ["enrollment_code_used"], "used enrollment code")
        let wallet = try await system.addWallet(funds: 0)
        let unknownCode = try await E2EPhone(system: system, wallet: wallet).enroll(code: "AAAA-BBBB-CCCC")
        expectError(unknownCode, 404, ["enrollment_code_unknown"], "unknown enrollment code")
        let badKey = try await phone.http.send(
            "POST", "/v1/devices", headers: ["Content-Type": "application/json"],
            body: e2eJSON(["enrollment_code": wallet.enrollmentCode, "public_key": "short", "name": "x"]))
        expectError(badKey, 400, ["invalid_field"], "public key that is not 32 bytes")
        // The code survived the bad attempts.
        let newPhone = try E2EPhone(system: system, wallet: wallet)
        #expect(try await newPhone.enroll().status == 201)

        #expect(try await pos.get(id).string("status") == "pending")
        #expect(try await system.balance(phone.accountId) == 10_000)
        #expect(try await system.balance(merchant.accountId) == 0)
        // And the right call still works.
        #expect(try await phone.pay(payload).status == 200)
    }
}
