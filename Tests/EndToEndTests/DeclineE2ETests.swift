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

    @Test("insufficient_funds: declined on both streams, nothing moves", .timeLimit(.minutes(2)))
    func insufficientFunds() async throws {
        let system = try e2eSystem()
        let merchant = try await system.addMerchant()
        let pos = try system.pos(merchant)
        let phone = try await system.phone(funds: 100)
        let posEvents = try await pos.events()
        let phoneEvents = try await phone.events()
        defer {
            posEvents.close()
            phoneEvents.close()
        }
        let (id, payload) = try await pos.mustCreate(amount: 500)
        expectDeclined(try await phone.pay(payload), "insufficient_funds")
        #expect(try await pos.get(id).string("status") == "declined")
        let posDeclined = await posEvents.waitForEvent("payment.declined", requestId: id)
        #expect(posDeclined?.json?["status"]?.string == "declined", "\(posEvents.events)")
        #expect(await phoneEvents.waitForEvent("payment.declined", requestId: id) != nil, "\(phoneEvents.events)")
        #expect(try await system.balance(phone.accountId) == 100)
        #expect(try await system.balance(merchant.accountId) == 0)
        // The request is final: paying it again is refused without reaching the ledger.
        let again = try await phone.pay(payload)
        #expect(again.status == 422, "\(again)")
        #expect(again.code == "request_declined" || again.code == "insufficient_funds", "\(again)")
    }

    @Test("incorrect_pin twice, pin_locked at the third, even the right PIN until payctl wallet unlock", .timeLimit(.minutes(2)))
    func incorrectPinAndLock() async throws {
        let system = try e2eSystem()
        let merchant = try await system.addMerchant()
        let pos = try system.pos(merchant)
        let phone = try await system.phone(pin: "246813", funds: 10_000)
        for attempt in 1...3 {
            let (id, payload) = try await pos.mustCreate(amount: 100)
            let reply = try await phone.pay(payload, pin: "135790")
            expectDeclined(reply, attempt < 3 ? "incorrect_pin" : "pin_locked")
            #expect(try await pos.get(id).string("status") == "declined")
        }
        let (_, lockedPayload) = try await pos.mustCreate(amount: 100)
        expectDeclined(try await phone.pay(lockedPayload, pin: "246813"), "pin_locked")
        #expect(try await system.balance(phone.accountId) == 10_000)

        let unlock = try await system.payctl(["wallet", "unlock", phone.accountId])
        #expect(unlock.status == 0 && unlock.json?["locked"] as? Bool == false, "\(unlock)")
        let (_, payload) = try await pos.mustCreate(amount: 100)
        let paid = try await phone.pay(payload, pin: "246813")
        #expect(paid.status == 200, "\(paid)")
        #expect(try await system.balance(phone.accountId) == 9_900)
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
