// The payment-router's pure pieces, without sockets or a database: the request state machine, ids,
// enrollment codes and payer aliases.

import PaymentRouterService
import Testing
import WiPayBus

@Suite("Router state machine and ids", .timeLimit(.minutes(1)))
struct RouterStateMachineTests {
    static let expiry: Int64 = 1_000_000

    static func pending() -> RequestStateMachine { RequestStateMachine(status: .pending, expiresAtMillis: expiry) }

    @Test func pendingMovesToEachFinalStateOnce() throws {
        var a = Self.pending()
        try a.succeed()
        #expect(a.status == .succeeded)
        var b = RequestStateMachine(status: .pending, expiresAtMillis: Self.expiry, maxDeclinedAttempts: 1)
        #expect(try b.declineAttempt() == .exhausted(declinedAttempts: 1))
        #expect(b.status == .declined)
        var c = Self.pending()
        #expect(try c.cancel(nowMillis: Self.expiry - 1) == .canceled)
        #expect(c.status == .canceled)
        var d = Self.pending()
        try d.expire(nowMillis: Self.expiry)
        #expect(d.status == .expired)
    }

    @Test func everyMoveFromAFinalStateIsRefusedWithItsCode() {
        let codes: [PaymentRequestStatus: String] = [
            .succeeded: "request_already_paid", .declined: "request_declined", .expired: "request_expired",
            .canceled: "request_canceled",
        ]
        for (status, code) in codes {
            var machine = RequestStateMachine(status: status, expiresAtMillis: Self.expiry)
            #expect(throws: RequestStateMachine.Refusal(status: status)) { try machine.succeed() }
            #expect(throws: RequestStateMachine.Refusal(status: status)) { _ = try machine.declineAttempt() }
            #expect(machine.declinedAttempts == 0, "a refused attempt is not counted")
            #expect(throws: RequestStateMachine.Refusal(status: status)) { try machine.cancel(nowMillis: 0) }
            #expect(throws: RequestStateMachine.Refusal(status: status)) { try machine.expire(nowMillis: Self.expiry * 2) }
            #expect(machine.status == status, "a refused move changes nothing")
            #expect(machine.instruction(nowMillis: 0) == .refuse(RequestStateMachine.Refusal(status: status)))
            #expect(RequestStateMachine.Refusal(status: status).code == code)
        }
    }

    @Test func declinedAttemptsKeepTheRequestOpenUntilTheLimit() throws {
        var machine = RequestStateMachine(status: .pending, expiresAtMillis: Self.expiry, maxDeclinedAttempts: 3)
        #expect(try machine.declineAttempt() == .stillPending(declinedAttempts: 1))
        #expect(machine.status == .pending)
        #expect(machine.instruction(nowMillis: 0) == .pay, "a declined attempt leaves the request payable")
        #expect(try machine.declineAttempt() == .stillPending(declinedAttempts: 2))
        #expect(try machine.declineAttempt() == .exhausted(declinedAttempts: 3))
        #expect(machine.status == .declined)
        #expect(throws: RequestStateMachine.Refusal(status: .declined)) { _ = try machine.declineAttempt() }
        #expect(machine.declinedAttempts == 3)
        // A request that had declined attempts still pays once, and only once.
        var paid = RequestStateMachine(status: .pending, expiresAtMillis: Self.expiry, declinedAttempts: 4)
        #expect(paid.maxDeclinedAttempts == RequestStateMachine.defaultMaxDeclinedAttempts)
        try paid.succeed()
        #expect(throws: RequestStateMachine.Refusal(status: .succeeded)) { _ = try paid.declineAttempt() }
        #expect(throws: RequestStateMachine.Refusal(status: .succeeded)) { try paid.succeed() }
        // Loaded with the limit already used up (the limit was lowered): the next decline ends it.
        var lowered = RequestStateMachine(status: .pending, expiresAtMillis: Self.expiry, declinedAttempts: 7, maxDeclinedAttempts: 5)
        #expect(try lowered.declineAttempt() == .exhausted(declinedAttempts: 8))
    }

    @Test func instructionsPayOnlyWhilePendingAndInTime() {
        var machine = Self.pending()
        #expect(machine.instruction(nowMillis: Self.expiry - 1) == .pay)
        #expect(machine.status == .pending, "deciding to pay changes nothing yet")
        #expect(machine.instruction(nowMillis: Self.expiry) == .expiredNow)
        #expect(machine.status == .expired)
        #expect(machine.instruction(nowMillis: Self.expiry) == .refuse(RequestStateMachine.Refusal(status: .expired)))
    }

    @Test func aDueRequestExpiresInsteadOfBeingCanceled() throws {
        var machine = Self.pending()
        #expect(try machine.cancel(nowMillis: Self.expiry + 5) == .expiredInstead)
        #expect(machine.status == .expired)
    }

    @Test func theSweeperDoesNotExpireEarly() {
        var machine = Self.pending()
        #expect(throws: RequestStateMachine.Refusal(status: .pending)) { try machine.expire(nowMillis: Self.expiry - 1) }
        #expect(machine.status == .pending)
    }

    @Test func aPaymentTheLedgerHoldsSucceedsEvenPastExpiry() throws {
        var machine = Self.pending()
        try machine.succeed()  // no clock: money that moved is a payment
        #expect(machine.status == .succeeded)
    }

    @Test func eventTypes() {
        #expect(RequestStateMachine.eventType(.succeeded) == "payment.succeeded")
        #expect(RequestStateMachine.eventType(.declined) == "payment.declined")
        #expect(RequestStateMachine.eventType(.expired) == "payment.expired")
        #expect(RequestStateMachine.eventType(.canceled) == "payment.canceled")
        #expect(RequestStateMachine.eventType(.pending) == nil)
    }

    static func isBase32(_ text: Substring) -> Bool {
        text.allSatisfy { ("a"..."z").contains($0) || ("2"..."7").contains($0) }
    }

    @Test func randomIdsHaveTheirPrefixAndLength() {
        let cases: [(String, String, Int)] = [
            (RouterIds.merchant(), "mer_", 16), (RouterIds.terminal(), "ter_", 16), (RouterIds.wallet(), "wal_", 16),
            (RouterIds.device(), "dev_", 16), (RouterIds.request(), "pr_", 20), (RouterIds.merchantAccount(), "acc_", 16),
            (RouterIds.terminalKey(), "tk_", 40),
        ]
        for (id, prefix, count) in cases {
            #expect(id.hasPrefix(prefix))
            #expect(id.count == prefix.count + count, "\(id)")
            #expect(Self.isBase32(id.dropFirst(prefix.count)), "\(id)")
        }
        #expect(Set((0..<1000).map { _ in RouterIds.request() }).count == 1000)
    }

    @Test func derivedIdsAreStableAndDistinct() {
        let a = RouterIds.payment(deviceId: "dev_a", idempotencyKey: "k1")
        #expect(a == RouterIds.payment(deviceId: "dev_a", idempotencyKey: "k1"))
        #expect(a != RouterIds.payment(deviceId: "dev_b", idempotencyKey: "k1"))
        #expect(a != RouterIds.payment(deviceId: "dev_a", idempotencyKey: "k2"))
        #expect(a.hasPrefix("pay_") && a.count == 28 && Self.isBase32(a.dropFirst(4)))
        let r = RouterIds.refund(merchantId: "mer_a", idempotencyKey: "k1")
        #expect(r == RouterIds.refund(merchantId: "mer_a", idempotencyKey: "k1"))
        #expect(r.hasPrefix("ref_") && r.count == 28)
        #expect(r != RouterIds.refund(merchantId: "mer_b", idempotencyKey: "k1"))
    }

    @Test func enrollmentCodesAreNormalisedAndChecked() {
        let code = RouterIds.enrollmentCode()
        #expect(code.count == 14)
        #expect(code.split(separator: "-").map(\.count) == [4, 4, 4])
        let normal = RouterIds.normalizedEnrollmentCode(code)
        #expect(normal?.count == 12)
        #expect(RouterIds.normalizedEnrollmentCode(code.lowercased()) == normal)
        #expect(RouterIds.normalizedEnrollmentCode(code.replacingOccurrences(of: "-", with: "")) == normal)
        #expect(RouterIds.normalizedEnrollmentCode("ABCD-EFGH-IJK") == nil, "11 characters")
        #expect(RouterIds.normalizedEnrollmentCode("ABCD-EFGH-IJK1") == nil, "1 is not base32")
        #expect(RouterIds.normalizedEnrollmentCode("ABCD-EFGH-IJKLM") == nil, "13 characters")
        #expect(RouterIds.normalizedEnrollmentCode("ÄBCD-EFGH-IJKL") == nil)
    }

    @Test func payerAliasShowsOnlyTheFirstCharacter() {
        #expect(RouterIds.payerAlias(walletName: "Alice Example") == "A***")
        #expect(RouterIds.payerAlias(walletName: "  bob") == "b***")
        #expect(RouterIds.payerAlias(walletName: "") == "***")
        #expect(RouterIds.payerAlias(walletName: "李雷") == "李***")
    }

    @Test func sha256Hex() {
        #expect(RouterIds.sha256Hex("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    }
}
