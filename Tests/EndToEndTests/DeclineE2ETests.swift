// Every decline code of the contract, end to end: the phone gets 422 with the code, the request ends as the
// state machine says, no money moves.

import Foundation
import Testing
import WiPayClient
import WiPayPayload

@Suite("End to end: declines", .e2eSystem, .enabled(if: E2EEnv.ready))
struct DeclineE2ETests {
    /// Asserts a 422 decline with `code`, and returns the reply.
    @discardableResult
    func expectDeclined(
        _ reply: E2EReply, _ code: String, sourceLocation: SourceLocation = #_sourceLocation
    ) -> E2EReply {
        #expect(reply.status == 422, "expected 422 \(code): \(reply)", sourceLocation: sourceLocation)
        #expect(reply.code == code, "expected \(code): \(reply)", sourceLocation: sourceLocation)
        #expect(reply.string("status") == "declined", "\(reply)", sourceLocation: sourceLocation)
        #expect(reply.string("pin") == nil && !String(decoding: reply.body, as: UTF8.self).contains("\"pin\""))
        return reply
    }

    @Test("insufficient_funds: the attempt is declined on both streams, the request stays open and another phone pays it", .timeLimit(.minutes(2)))
    func insufficientFunds() async throws {
        let system = try e2eSystem()
        let merchant = try await system.addMerchant()
        let pos = try system.pos(merchant)
        let phone = try await system.phone(funds: 100)
        let other = try await system.phone(funds: 1_000)
        let posEvents = try await pos.events()
        let phoneEvents = try await phone.events()
        defer {
            posEvents.close()
            phoneEvents.close()
        }
        let (id, payload) = try await pos.mustCreate(amount: 500)
        expectDeclined(try await phone.pay(payload), "insufficient_funds")
        let after = try await pos.get(id)
        #expect(after.string("status") == "pending" && after.int("declined_attempts") == 1, "\(after)")
        let attempt = await posEvents.waitForEvent("payment.attempt_declined", requestId: id)
        #expect(attempt?.json?["status"]?.string == "pending", "\(posEvents.events)")
        #expect(attempt?.json?["error"]?["code"]?.string == "insufficient_funds", "\(posEvents.events)")
        #expect(attempt?.json?["declined_attempts"]?.int64 == 1, "\(posEvents.events)")
        #expect(attempt?.json?["payer"] == nil, "an attempt tells the terminal nothing about the payer")
        let phoneDeclined = await phoneEvents.waitForEvent("payment.declined", requestId: id)
        #expect(phoneDeclined?.json?["error"]?["code"]?.string == "insufficient_funds", "\(phoneEvents.events)")
        #expect(try await system.balance(phone.accountId) == 100)
        #expect(try await system.balance(merchant.accountId) == 0)
        // The sale is still open: another phone pays it, once.
        let paid = try await other.pay(payload)
        #expect(paid.status == 200 && paid.string("status") == "succeeded", "\(paid)")
        #expect(await posEvents.waitForEvent("payment.succeeded", requestId: id) != nil, "\(posEvents.events)")
        expectDeclined(try await phone.pay(payload), "request_already_paid")
        #expect(try await system.balance(merchant.accountId) == 500)
        #expect(try await system.balance(other.accountId) == 500)
    }

    @Test("a mistyped PIN is typed again on the same request; incorrect_pin twice, pin_locked at the third until payctl wallet unlock", .timeLimit(.minutes(2)))
    func incorrectPinAndLock() async throws {
        let system = try e2eSystem()
        let merchant = try await system.addMerchant()
        let pos = try system.pos(merchant)
        let phone = try await system.phone(pin: "246813", funds: 10_000)
        // One request: a typo, then the right PIN pays it.
        let (typoId, typoPayload) = try await pos.mustCreate(amount: 100)
        expectDeclined(try await phone.pay(typoPayload, pin: "135790"), "incorrect_pin")
        #expect(try await pos.get(typoId).string("status") == "pending")
        let retried = try await phone.pay(typoPayload, pin: "246813")
        #expect(retried.status == 200, "\(retried)")
        #expect(try await pos.get(typoId).int("declined_attempts") == 1)
        #expect(try await system.balance(phone.accountId) == 9_900)
        // Three wrong in a row lock the wallet; each request stays open meanwhile.
        for attempt in 1...3 {
            let (id, payload) = try await pos.mustCreate(amount: 100)
            let reply = try await phone.pay(payload, pin: "135790")
            expectDeclined(reply, attempt < 3 ? "incorrect_pin" : "pin_locked")
            #expect(try await pos.get(id).string("status") == "pending")
        }
        let (_, lockedPayload) = try await pos.mustCreate(amount: 100)
        expectDeclined(try await phone.pay(lockedPayload, pin: "246813"), "pin_locked")
        #expect(try await system.balance(phone.accountId) == 9_900)

        let unlock = try await system.payctl(["wallet", "unlock", phone.accountId])
        #expect(unlock.status == 0 && unlock.json?["locked"] as? Bool == false, "\(unlock)")
        // The same locked-out request is still payable after the unlock.
        let paid = try await phone.pay(lockedPayload, pin: "246813")
        #expect(paid.status == 200, "\(paid)")
        #expect(try await system.balance(phone.accountId) == 9_800)
    }

    @Test("the limit of declined attempts ends the request: attempts_exhausted on the terminal's stream", .timeLimit(.minutes(2)))
    func attemptsExhausted() async throws {
        let system = try e2eSystem()
        let merchant = try await system.addMerchant()
        let pos = try system.pos(merchant)
        let poor = try await system.phone(funds: 10)
        let rich = try await system.phone(funds: 10_000)
        let posEvents = try await pos.events()
        defer { posEvents.close() }
        let (id, payload) = try await pos.mustCreate(amount: 500)
        for _ in 1...5 { expectDeclined(try await poor.pay(payload), "insufficient_funds") }
        let final = try await pos.get(id)
        #expect(final.string("status") == "declined" && final.string("decline_code") == "attempts_exhausted", "\(final)")
        #expect(final.int("declined_attempts") == 5, "\(final)")
        let declined = await posEvents.waitForEvent("payment.declined", requestId: id)
        #expect(declined?.json?["error"]?["code"]?.string == "attempts_exhausted", "\(posEvents.events)")
        expectDeclined(try await rich.pay(payload), "request_declined")
        #expect(try await system.balance(rich.accountId) == 10_000)
        #expect(try await system.balance(merchant.accountId) == 0)
    }

    @Test("a resent instruction (the identical signed bytes) gets its first answer; the signature with another key is refused", .timeLimit(.minutes(2)))
    func resentInstruction() async throws {
        let system = try e2eSystem()
        let merchant = try await system.addMerchant()
        let pos = try system.pos(merchant)
        let phone = try await system.phone(funds: 1_000)
        let (id, payload) = try await pos.mustCreate(amount: 250)
        let body = phone.payBody(payload)
        let key = "pay-\(e2eToken(12))"
        var headers = try await phone.freshSignedHeaders(
            method: "POST", path: "/v1/payment-instructions", body: body, idempotencyKey: key)
        headers.set("Content-Type", "application/json")
        let first = try await phone.http.send("POST", "/v1/payment-instructions", headers: headers, body: body)
        #expect(first.status == 200 && first.string("request_id") == id, "\(first)")
        let again = try await phone.http.send("POST", "/v1/payment-instructions", headers: headers, body: body)
        #expect(again.status == 200 && again.string("payment_id") == first.string("payment_id"), "resent: \(again)")
        // Version 2 covers the key: the same signature under another key does not even verify.
        var moved = headers
        moved.set("Idempotency-Key", "pay-\(e2eToken(12))")
        let refused = try await phone.http.send("POST", "/v1/payment-instructions", headers: moved, body: body)
        #expect(refused.status == 401, "\(refused)")
        #expect(try await system.balance(phone.accountId) == 750, "paid exactly once")
    }

    @Test("request_expired, request_canceled, request_already_paid", .timeLimit(.minutes(2)))
    func finalRequests() async throws {
        let system = try e2eSystem()
        let merchant = try await system.addMerchant()
        let pos = try system.pos(merchant)
        let phone = try await system.phone(funds: 10_000)
        let other = try await system.phone(funds: 10_000)

        let (_, expiring) = try await pos.mustCreate(amount: 100, expiresIn: 10)
        let (canceledId, canceling) = try await pos.mustCreate(amount: 100)
        let (_, paying) = try await pos.mustCreate(amount: 100)

        #expect(try await pos.cancel(canceledId).status == 200)
        expectDeclined(try await phone.pay(canceling), "request_canceled")

        #expect(try await phone.pay(paying).status == 200)
        expectDeclined(try await other.pay(paying), "request_already_paid")
        // The payer's own new attempt (another idempotency key) is refused the same way.
        expectDeclined(try await phone.pay(paying), "request_already_paid")

        try await Task.sleep(for: .seconds(11))
        expectDeclined(try await phone.pay(expiring), "request_expired")

        #expect(try await system.balance(phone.accountId) == 9_900)
        #expect(try await system.balance(other.accountId) == 10_000)
        #expect(try await system.balance(merchant.accountId) == 100)
    }

    @Test("currency_mismatch: a USD wallet cannot pay a CNY request", .timeLimit(.minutes(2)))
    func currencyMismatch() async throws {
        let system = try e2eSystem()
        let merchant = try await system.addMerchant(currency: "CNY")
        let pos = try system.pos(merchant)
        let phone = try await system.phone(currency: "USD", funds: 10_000)
        let (_, payload) = try await pos.mustCreate(amount: 100)
        expectDeclined(try await phone.pay(payload), "currency_mismatch")
        #expect(try await system.balance(phone.accountId) == 10_000)
        #expect(try await system.balance(merchant.accountId) == 0)
    }

    @Test("invalid_payload: forged, altered (CRC fixed), truncated, garbage", .timeLimit(.minutes(2)))
    func invalidPayloads() async throws {
        let system = try e2eSystem()
        let merchant = try await system.addMerchant()
        let pos = try system.pos(merchant)
        let phone = try await system.phone(funds: 10_000)
        let (id, payload) = try await pos.mustCreate(amount: 4321)

        // Forged: the same fields, signed by a key that is not the router's.
        let expires = Int64(Date().timeIntervalSince1970) + 120
        let forged = try PayloadSigner(privateKey: .init()).sign(
            PaymentPayload(
                requestId: id, merchantId: merchant.merchantId, merchantName: merchant.name, amountMinor: 1,
                currency: "CNY", expiresAtSeconds: expires))
        // Altered: the amount changed from 4321 to 0001, and the CRC recomputed so only the signature can tell.
        let altered = e2eFixCRC(payload.replacingOccurrences(of: "01044321", with: "01040001"))
        #expect(altered != payload, "the amount field was not found in \(payload)")
        let truncated = String(payload.dropLast(12))
        for bad in [forged, altered, truncated, "hello", String(repeating: "0", count: 300)] {
            let reply = try await phone.pay(bad)
            #expect(reply.status == 422 || reply.status == 400, "\(bad): \(reply)")
            #expect(reply.code == "invalid_payload", "\(bad): \(reply)")
        }
        #expect(try await pos.get(id).string("status") == "pending")
        #expect(try await system.balance(phone.accountId) == 10_000)
        // The real one still pays.
        let paid = try await phone.pay(payload)
        #expect(paid.status == 200 && paid.int("amount") == 4321, "\(paid)")
    }
}

/// Recomputes the trailing CRC (tag 63, length 04) of a payload text.
func e2eFixCRC(_ payload: String) -> String {
    guard payload.count > 4 else { return payload }
    let body = String(payload.dropLast(4))
    guard body.hasSuffix("6304") else { return payload }
    return body + CRC16.hex(of: Array(body.utf8))
}
