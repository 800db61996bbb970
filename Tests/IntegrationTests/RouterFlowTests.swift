// The payment-router end to end on the bus: real PostgreSQL, real ledger, real broker, a fake notifier.
// Each test gets its own world (database, broker, workers), so tests run in parallel.

import Foundation
import PaymentRouterService
import Postgres
import Testing
import WiPayBus

@Suite(
    "Payment router on PostgreSQL and the bus", .timeLimit(.minutes(3)),
    .enabled(if: TSEnv.hasDatabase, "set WIPAY_TEST_DATABASE_URL to run"))
struct RouterFlowTests {
    // MARK: onboarding

    @Test func onboardingMerchantsTerminalsWalletsDevices() async throws {
        try await withRouterWorld { w in
            let shop = try await w.shop("Corner Café", currency: "USD")
            #expect(shop.merchant.merchantId.hasPrefix("mer_"))
            #expect(shop.merchant.accountId.hasPrefix("acc_"))
            #expect(shop.terminal.terminalKey.hasPrefix("tk_") && shop.terminal.terminalKey.count == 43)
            // The ledger holds the merchant account.
            #expect(try await w.db.scalar("SELECT count(*) FROM ledger.accounts WHERE id = $1 AND kind = 2", [shop.merchant.accountId]) == 1)
            // The key is stored only as its hash.
            #expect(try await w.db.scalar("SELECT count(*) FROM router.terminals WHERE key_hash = $1", [shop.terminal.terminalKey]) == 0)
            let (_, auth) = try await w.call(
                .terminalAuth, TerminalAuth(keyHash: RouterIds.sha256Hex(shop.terminal.terminalKey)), as: TerminalInfo.self)
            #expect(auth == TerminalInfo(terminalId: shop.terminal.terminalId, merchantId: shop.merchant.merchantId, merchantName: "Corner Café", currency: "USD"))
            #expect(try await w.refusal(.terminalAuth, TerminalAuth(keyHash: RouterIds.sha256Hex("tk_nope"))) == (.notFound, "unknown_terminal_key"))
            #expect(try await w.refusal(.terminalAdd, TerminalAdd(merchantId: "mer_unknown", name: "x")) == (.notFound, "merchant_not_found"))
            #expect(try await w.refusal(.merchantAdd, MerchantAdd(name: "X", currency: "XXX")) == (.badRequest, "unknown_currency"))
            #expect(try await w.refusal(.merchantAdd, MerchantAdd(name: "  ", currency: "USD")) == (.badRequest, "invalid_name"))

            let (_, wallet) = try await w.call(.walletAdd, WalletAdd(name: "Alice", pin: "1234", currency: "USD"), as: WalletIssued.self)
            #expect(wallet.accountId.hasPrefix("wal_"))
            #expect(wallet.enrollmentCode.count == 14)
            #expect(try await w.refusal(.walletAdd, WalletAdd(name: "Bob", pin: "12", currency: "USD")) == (.badRequest, "invalid_pin_format"))
            #expect(try await w.db.scalar("SELECT count(*) FROM ledger.accounts WHERE id = $1 AND kind = 1", [wallet.accountId]) == 1)

            let key = (0..<32).map { UInt8($0) }
            #expect(try await w.refusal(.deviceEnroll, DeviceEnroll(enrollmentCode: wallet.enrollmentCode, publicKey: Array(key.prefix(31)), name: "p")) == (.badRequest, "invalid_public_key"))
            #expect(try await w.refusal(.deviceEnroll, DeviceEnroll(enrollmentCode: "AAAA-BBBB-CCCC", publicKey: key, name: "p")) == (.notFound, "enrollment_code_unknown"))
            #expect(try await w.refusal(.deviceEnroll, DeviceEnroll(enrollmentCode: "nonsense", publicKey: key, name: "p")) == (.notFound, "enrollment_code_unknown"))
            // Lowercase and without hyphens works too.
            let code = wallet.enrollmentCode.lowercased().replacingOccurrences(of: "-", with: "")
            let (status, device) = try await w.call(.deviceEnroll, DeviceEnroll(enrollmentCode: code, publicKey: key, name: "Alice's phone"), as: DeviceInfo.self)
            #expect(status == .ok)
            #expect(device.deviceId.hasPrefix("dev_"))
            #expect(device.accountId == wallet.accountId)
            #expect(device.currency == "USD")
            // The same enrollment again (a retry) answers `exists` with the same device; another key is refused.
            let (again, same) = try await w.call(.deviceEnroll, DeviceEnroll(enrollmentCode: wallet.enrollmentCode, publicKey: key, name: "Alice's phone"), as: DeviceInfo.self)
            #expect(again == .exists)
            #expect(same.deviceId == device.deviceId)
            let otherKey = (0..<32).map { UInt8(100 + $0) }
            #expect(try await w.refusal(.deviceEnroll, DeviceEnroll(enrollmentCode: wallet.enrollmentCode, publicKey: otherKey, name: "thief")) == (.conflict, "enrollment_code_used"))
            let (_, got) = try await w.call(.deviceGet, DeviceRef(deviceId: device.deviceId), as: DeviceInfo.self)
            #expect(got == device)
            #expect(try await w.refusal(.deviceGet, DeviceRef(deviceId: "dev_unknown")) == (.notFound, "device_not_found"))

            let (_, keys) = try await w.call(.payloadKeys, Empty(), as: PayloadKeys.self)
            #expect(keys.keys.count == 1)
            #expect(keys.keys.first?.publicKey.count == 32)
        }
    }

    // MARK: requests

    @Test func createGetCancelAreIdempotent() async throws {
        try await withRouterWorld { w in
            let shop = try await w.shop()
            let other = try await w.shop("Other Shop")
            let create = w.create(shop, amount: 1250, key: "order-42-key")
            let (status, request) = try await w.call(.requestCreate, create, as: PaymentRequestInfo.self)
            #expect(status == .ok)
            #expect(request.requestId.hasPrefix("pr_") && request.requestId.count == 23)
            #expect(request.status == .pending)
            #expect(request.amountMinor == 1250 && request.currency == "USD" && request.reference == "order-42")
            #expect(request.merchantName == "Corner Café")
            #expect(request.terminalId == shop.terminal.terminalId)
            #expect(request.expiresAtMillis - request.createdAtMillis > 118_000 && request.expiresAtMillis - request.createdAtMillis <= 120_000)
            #expect(request.payload.hasPrefix("000201") && request.payload.contains(request.requestId))
            #expect(request.paymentId == nil && request.payerAlias == nil)

            // The same key and body: the first answer again, `exists`.
            let (again, same) = try await w.call(.requestCreate, create, as: PaymentRequestInfo.self)
            #expect(again == .exists)
            #expect(same == request)
            // The same key, another body.
            var changed = create
            changed.amountMinor = 1300
            changed.bodyHash = RTWorld.hash("another body")
            #expect(try await w.refusal(.requestCreate, changed) == (.conflict, "idempotency_key_reused"))
            #expect(try await w.db.scalar("SELECT count(*) FROM router.requests") == 1)

            // Validation.
            #expect(try await w.refusal(.requestCreate, w.create(shop, amount: 0)) == (.badRequest, "invalid_amount"))
            #expect(try await w.refusal(.requestCreate, w.create(shop, amount: 1_000_000_000_001)) == (.badRequest, "invalid_amount"))
            #expect(try await w.refusal(.requestCreate, w.create(shop, amount: 5, currency: "EUR")) == (.declined, "currency_mismatch"))
            #expect(try await w.refusal(.requestCreate, w.create(shop, amount: 5, currency: "ABC")) == (.badRequest, "unknown_currency"))
            #expect(try await w.refusal(.requestCreate, w.create(shop, amount: 5, expiresIn: 9)) == (.badRequest, "invalid_expires_in"))
            #expect(try await w.refusal(.requestCreate, w.create(shop, amount: 5, expiresIn: 901)) == (.badRequest, "invalid_expires_in"))
            #expect(try await w.refusal(.requestCreate, w.create(shop, amount: 5, key: "")) == (.badRequest, "idempotency_key_missing"))
            #expect(try await w.refusal(.requestCreate, w.create(shop, amount: 5, key: "a b")) == (.badRequest, "idempotency_key_invalid"))
            #expect(try await w.refusal(.requestCreate, w.create(shop, amount: 5, reference: "")) == (.badRequest, "invalid_reference"))
            var wrongMerchant = w.create(shop, amount: 5)
            wrongMerchant.merchantId = other.merchant.merchantId
            #expect(try await w.refusal(.requestCreate, wrongMerchant) == (.notFound, "terminal_not_found"))
            #expect(try await w.db.scalar("SELECT count(*) FROM router.requests") == 1, "refusals change nothing")

            // Get: own merchant only.
            #expect(try await w.get(shop, request.requestId) == request)
            #expect(try await w.refusal(.requestGet, RequestRef(requestId: request.requestId, merchantId: other.merchant.merchantId)) == (.notFound, "request_not_found"))
            #expect(try await w.refusal(.requestGet, RequestRef(requestId: "pr_nope", merchantId: shop.merchant.merchantId)) == (.notFound, "request_not_found"))

            // Cancel: needs a key; idempotent by key; another merchant cannot.
            let ref = RequestRef(requestId: request.requestId, merchantId: shop.merchant.merchantId, idempotencyKey: "cancel-1")
            #expect(try await w.refusal(.requestCancel, RequestRef(requestId: request.requestId, merchantId: shop.merchant.merchantId)) == (.badRequest, "idempotency_key_missing"))
            #expect(try await w.refusal(.requestCancel, RequestRef(requestId: request.requestId, merchantId: other.merchant.merchantId, idempotencyKey: "x")) == (.notFound, "request_not_found"))
            let (canceledStatus, canceled) = try await w.call(.requestCancel, ref, as: PaymentRequestInfo.self)
            #expect(canceledStatus == .ok)
            #expect(canceled.status == .canceled)
            let (repeatStatus, repeated) = try await w.call(.requestCancel, ref, as: PaymentRequestInfo.self)
            #expect(repeatStatus == .exists)
            #expect(repeated.status == .canceled)
            var otherKey = ref
            otherKey.idempotencyKey = "cancel-2"
            #expect(try await w.refusal(.requestCancel, otherKey) == (.conflict, "request_not_pending"))
            #expect(try await w.get(shop, request.requestId).status == .canceled)
            // Exactly one payment.canceled notice, with the merchant's name.
            #expect(await w.waitForNotices(request.requestId, ["payment.canceled"]))
            #expect(w.notifier.all.first?.merchantName == "Corner Café")
            #expect(w.notifier.all.first?.deviceId == nil)
        }
    }

    // MARK: paying

    @Test func payHappyPath() async throws {
        try await withRouterWorld { w in
            let shop = try await w.shop()
            let alice = try await w.payer("Alice", balance: 5000)
            let request = try await w.newRequest(shop, amount: 1250)
            let submit = w.instruction(alice, request, key: "pay-1")
            let (status, result) = try await w.pay(submit)
            #expect(status == .ok)
            #expect(result.status == .succeeded)
            #expect(result.balance == 3750)
            #expect(result.paymentId == RouterIds.payment(deviceId: alice.device.deviceId, idempotencyKey: "pay-1"))
            #expect(result.requestId == request.requestId && result.amountMinor == 1250 && result.currency == "USD")
            #expect(result.merchantId == shop.merchant.merchantId && result.merchantName == "Corner Café")
            #expect(result.errorCode == nil)
            #expect(try await w.balance(alice.accountId) == 3750)
            #expect(try await w.balance(shop.merchant.accountId) == 1250)

            // The request shows the payment and a masked payer.
            let paid = try await w.get(shop, request.requestId)
            #expect(paid.status == .succeeded)
            #expect(paid.paymentId == result.paymentId)
            #expect(paid.payerAlias == "A***")
            #expect(paid.postedAtMillis != nil)

            // A repeat answers the first result again (`exists`), moving nothing.
            let (repeatStatus, repeated) = try await w.pay(submit)
            #expect(repeatStatus == .exists)
            #expect(repeated == result)
            var otherBody = submit
            otherBody.bodyHash = RTWorld.hash("other")
            #expect(try await w.refusal(.instructionSubmit, otherBody) == (.conflict, "idempotency_key_reused"))
            // Another key for the same request: already paid, nothing moves.
            let (again, refused) = try await w.pay(w.instruction(alice, request, key: "pay-2"))
            #expect(again == .declined)
            #expect(refused.errorCode == "request_already_paid")
            #expect(try await w.balance(alice.accountId) == 3750)
            #expect(try await w.db.scalar("SELECT count(*) FROM ledger.transfers WHERE kind = 1") == 1)

            // Both sides are told once: the notifier got it with the phone's device id and the masked payer.
            #expect(await w.waitForNotices(request.requestId, ["payment.succeeded"]))
            let notice = w.notifier.all.first { $0.requestId == request.requestId }
            #expect(notice?.deviceId == alice.device.deviceId)
            #expect(notice?.payerAlias == "A***")
            #expect(notice?.paymentId == result.paymentId)
            #expect(notice?.merchantName == "Corner Café")
            #expect(notice?.amountMinor == 1250)
            #expect(notice?.terminalId == shop.terminal.terminalId)
            #expect((notice?.outboxSeq ?? 0) > 0)
            // ... and it was published on outcome.<request id>.
            #expect(await tsWait(timeout: .seconds(5)) { w.events.events.contains { $0.topic == "outcome.\(request.requestId)" } })
            let event = w.events.events.first { $0.topic == "outcome.\(request.requestId)" }
            #expect(event?.envelope.type == .outcomePublished)
            #expect((try? OutcomePublished.decode(event?.body ?? [])) == notice)

            // The trace tells the story.
            let (_, trace) = try await w.call(.paymentTrace, TraceQuery(requestId: request.requestId), as: PaymentTrace.self)
            #expect(trace.request.status == .succeeded)
            // The payment's steps, then (in either order) the delivery and the refused second instruction.
            let traced = await tsWait(timeout: .seconds(5)) {
                let steps = (try? await w.call(.paymentTrace, TraceQuery(requestId: request.requestId), as: PaymentTrace.self).1.steps) ?? []
                return steps.count == 6
            }
            let steps = try await w.call(.paymentTrace, TraceQuery(requestId: request.requestId), as: PaymentTrace.self).1.steps
            #expect(traced, "\(steps.map(\.event))")
            #expect(steps.prefix(3).map(\.event) == ["created", "instruction.received", "ledger.posted"])
            #expect(steps.prefix(3).map(\.stage) == ["payment-router", "payment-router", "ledger"])
            #expect(Set(steps.dropFirst(3).map(\.event)) == ["outbox.delivered", "instruction.received", "instruction.refused"])
            #expect(steps.first { $0.event == "outbox.delivered" }?.stage == "notifier")
            #expect(steps.first { $0.event == "instruction.refused" }?.detail == "request_already_paid")

            // The wallet's summary.
            let (_, summary) = try await w.call(.accountSummary, AccountRef(accountId: alice.accountId), as: AccountSummary.self)
            #expect(summary.balance == 3750)
            #expect(summary.currency == "USD")
            #expect(summary.recent.count == 1)
            #expect(summary.recent.first?.paymentId == result.paymentId)
            #expect(summary.recent.first?.merchantName == "Corner Café")
            #expect(try await w.refusal(.accountSummary, AccountRef(accountId: "wal_unknown")) == (.notFound, "account_not_found"))
            await w.expectLedgerReconciled()
        }
    }

    @Test func twoDevicesRaceExactlyOnePays() async throws {
        try await withRouterWorld { w in
            let shop = try await w.shop()
            for round in 0..<5 {
                let alice = try await w.payer("Alice\(round)", balance: 10_000)
                let bob = try await w.payer("Bob\(round)", balance: 10_000)
                let request = try await w.newRequest(shop, amount: 700)
                async let a = w.pay(w.instruction(alice, request))
                async let b = w.pay(w.instruction(bob, request))
                let results = try await [a, b]
                let winners = results.filter { $0.0 == .ok && $0.1.status == .succeeded }
                let losers = results.filter { $0.0 == .declined && $0.1.errorCode == "request_already_paid" }
                #expect(winners.count == 1 && losers.count == 1, "round \(round): \(results.map { "\($0.0) \($0.1.errorCode ?? "ok")" })")
                let total = try await w.balance(alice.accountId) + w.balance(bob.accountId)
                #expect(total == 20_000 - 700, "exactly one wallet paid")
                #expect(try await w.db.scalar("SELECT count(*) FROM ledger.transfers WHERE payment_request_id = $1", [request.requestId]) == 1)
                #expect(await w.waitForNotices(request.requestId, ["payment.succeeded"]))
            }
            await w.expectLedgerReconciled()
        }
    }

    @Test func declineCodes() async throws {
        try await withRouterWorld { w in
            let shop = try await w.shop()
            let poor = try await w.payer("Penny", balance: 100)
            let rich = try await w.payer("Rich", balance: 100_000)

            // insufficient_funds: the attempt is declined, the request stays pending (payable by another phone).
            let r1 = try await w.newRequest(shop, amount: 500)
            let (s1, d1) = try await w.pay(w.instruction(poor, r1))
            #expect(s1 == .declined && d1.status == .declined && d1.errorCode == "insufficient_funds")
            #expect(d1.errorMessage?.isEmpty == false)
            let after1 = try await w.get(shop, r1.requestId)
            #expect(after1.status == .pending && after1.declinedAttempts == 1 && after1.declineCode == nil)
            #expect(await w.waitForNotices(r1.requestId, ["payment.attempt_declined"]))
            let declinedNotice = w.notifier.all.first { $0.requestId == r1.requestId }
            #expect(declinedNotice?.errorCode == "insufficient_funds")
            #expect(declinedNotice?.deviceId == poor.device.deviceId)
            #expect(declinedNotice?.status == .pending && declinedNotice?.declinedAttempts == 1)
            #expect(declinedNotice?.payerAlias == nil, "an attempt's notice carries no payer data")

            // incorrect_pin, then pin_locked after three wrong PINs in a row; each request stays pending.
            for (index, expected) in ["incorrect_pin", "incorrect_pin", "pin_locked", "pin_locked"].enumerated() {
                let request = try await w.newRequest(shop, amount: 10)
                let (status, result) = try await w.pay(w.instruction(rich, request, pin: index == 3 ? "1234" : "9999"))
                #expect(status == .declined && result.errorCode == expected, "attempt \(index)")
                #expect(try await w.get(shop, request.requestId).status == .pending)
            }
            #expect(try await w.balance(rich.accountId) == 100_000)

            // request_canceled.
            let carol = try await w.payer("Carol", balance: 1000)
            let r2 = try await w.newRequest(shop, amount: 10)
            _ = try await w.call(.requestCancel, RequestRef(requestId: r2.requestId, merchantId: shop.merchant.merchantId, idempotencyKey: "c"), as: PaymentRequestInfo.self)
            let (s2, d2) = try await w.pay(w.instruction(carol, r2))
            #expect(s2 == .declined && d2.errorCode == "request_canceled")

            // request_expired: due but not yet swept (the sweeper would expire it just the same).
            let r3 = try await w.newRequest(shop, amount: 10)
            try await w.db.query("UPDATE router.requests SET expires_at = $2 WHERE id = $1", [r3.requestId, String(unixMillis() - 1)])
            let (s3, d3) = try await w.pay(w.instruction(carol, r3))
            #expect(s3 == .declined && d3.errorCode == "request_expired")
            #expect(try await w.get(shop, r3.requestId).status == .expired)

            // currency_mismatch: a EUR wallet and a USD request.
            let euro = try await w.payer("Eve", balance: 1000, currency: "EUR")
            let r4 = try await w.newRequest(shop, amount: 10)
            let (s4, d4) = try await w.pay(w.instruction(euro, r4))
            #expect(s4 == .declined && d4.errorCode == "currency_mismatch")

            // invalid_payload: altered, or not a payload at all; nothing is written.
            let r5 = try await w.newRequest(shop, amount: 10)
            var forged = w.instruction(carol, r5)
            forged.payload = r5.payload.replacingOccurrences(of: "5802XX", with: "5802YY")
            #expect(forged.payload != r5.payload)
            let (s5, d5) = try await w.pay(forged)
            #expect(s5 == .declined && d5.errorCode == "invalid_payload")
            var garbage = w.instruction(carol, r5)
            garbage.payload = "hello"
            let (s6, d6) = try await w.pay(garbage)
            #expect(s6 == .declined && d6.errorCode == "invalid_payload")
            #expect(try await w.get(shop, r5.requestId).status == .pending)

            // A device pays from its own wallet only.
            var stolen = w.instruction(carol, r5)
            stolen.accountId = rich.accountId
            #expect(try await w.refusal(.instructionSubmit, stolen) == (Status(rawValue: 403), "account_not_allowed"))
            var ghost = w.instruction(carol, r5)
            ghost.deviceId = "dev_ghost"
            #expect(try await w.refusal(.instructionSubmit, ghost) == (.notFound, "device_not_found"))
            #expect(try await w.balance(carol.accountId) == 1000)
            #expect(try await w.balance(shop.merchant.accountId) == 0)

            // Then it is paid all right.
            let (s7, d7) = try await w.pay(w.instruction(carol, r5))
            #expect(s7 == .ok && d7.status == .succeeded && d7.balance == 990)
            await w.expectLedgerReconciled()
        }
    }

    @Test func aDeclinedAttemptLeavesTheRequestPayableOnce() async throws {
        try await withRouterWorld { w in
            let shop = try await w.shop()
            let poor = try await w.payer("Penny", balance: 100)
            let rich = try await w.payer("Rich", balance: 10_000)
            let request = try await w.newRequest(shop, amount: 300)
            // Not enough money, then a mistyped PIN: two declined attempts, no money moved.
            let (a, ra) = try await w.pay(w.instruction(poor, request))
            #expect(a == .declined && ra.errorCode == "insufficient_funds")
            let (b, rb) = try await w.pay(w.instruction(rich, request, pin: "0000"))
            #expect(b == .declined && rb.errorCode == "incorrect_pin")
            // The same attempt resent (same key and body) gets its first answer and is not counted again.
            let wrongPin = w.instruction(rich, request, key: "typo", pin: "0000")
            _ = try await w.pay(wrongPin)
            let (b2, rb2) = try await w.pay(wrongPin)
            #expect(b2 == .declined && rb2.errorCode == "incorrect_pin")
            #expect(try await w.get(shop, request.requestId).declinedAttempts == 3)
            // Then the right PIN pays it, exactly once.
            let (c, rc) = try await w.pay(w.instruction(rich, request))
            #expect(c == .ok && rc.status == .succeeded && rc.balance == 9_700)
            let (d, rd) = try await w.pay(w.instruction(poor, request))
            #expect(d == .declined && rd.errorCode == "request_already_paid")
            let info = try await w.get(shop, request.requestId)
            #expect(info.status == .succeeded && info.declinedAttempts == 3)
            #expect(try await w.balance(shop.merchant.accountId) == 300)
            #expect(try await w.balance(poor.accountId) == 100)
            #expect(try await w.db.scalar("SELECT count(*) FROM ledger.transfers WHERE payment_request_id = $1", [request.requestId]) == 1)
            #expect(
                await w.waitForNotices(
                    request.requestId, ["payment.attempt_declined", "payment.attempt_declined", "payment.attempt_declined", "payment.succeeded"]))
            await w.expectLedgerReconciled()
        }
    }

    @Test func theLimitOfDeclinedAttemptsEndsTheRequest() async throws {
        try await withRouterWorld { w in
            let shop = try await w.shop()
            let poor = try await w.payer("Penny", balance: 100)
            let rich = try await w.payer("Rich", balance: 10_000)
            let request = try await w.newRequest(shop, amount: 300)
            let limit = RequestStateMachine.defaultMaxDeclinedAttempts
            for attempt in 1...limit {
                let (status, result) = try await w.pay(w.instruction(poor, request))
                #expect(status == .declined && result.errorCode == "insufficient_funds", "attempt \(attempt)")
                let info = try await w.get(shop, request.requestId)
                #expect(info.declinedAttempts == Int64(attempt))
                #expect(info.status == (attempt < limit ? .pending : .declined), "attempt \(attempt)")
            }
            let info = try await w.get(shop, request.requestId)
            #expect(info.declineCode == "attempts_exhausted")
            // Final now: even a phone that could pay is refused, and nothing moves.
            let (s, r) = try await w.pay(w.instruction(rich, request))
            #expect(s == .declined && r.errorCode == "request_declined")
            #expect(try await w.balance(rich.accountId) == 10_000)
            var expected = Array(repeating: "payment.attempt_declined", count: limit)
            expected.append("payment.declined")
            #expect(await w.waitForNotices(request.requestId, expected))
            let final = w.notifier.all.last { $0.requestId == request.requestId }
            #expect(final?.errorCode == "attempts_exhausted" && final?.status == .declined && final?.deviceId == nil)
            await w.expectLedgerReconciled()
        }
    }

    @Test func aSignatureIsReusedOnlyByTheIdenticalInstruction() async throws {
        try await withRouterWorld { w in
            let shop = try await w.shop()
            let alice = try await w.payer("Alice", balance: 10_000)
            let request = try await w.newRequest(shop, amount: 250)
            let digest = String(repeating: "ab", count: 32)
            var first = w.instruction(alice, request, key: "k1")
            first.signatureDigest = digest
            let (s1, r1) = try await w.pay(first)
            #expect(s1 == .ok && r1.status == .succeeded)
            // The identical instruction again (any router instance: the memory is in PostgreSQL): its answer.
            let (s2, r2) = try await w.pay(first)
            #expect(s2 == .exists && r2.paymentId == r1.paymentId)
            // The same signature with another Idempotency-Key: refused, nothing written.
            var replay = w.instruction(alice, request, key: "k2")
            replay.signatureDigest = digest
            #expect(try await w.refusal(.instructionSubmit, replay) == (Status(rawValue: 401), "signature_replayed"))
            #expect(try await w.db.scalar("SELECT count(*) FROM router.instructions WHERE idem_key = 'k2'") == 0)
            // A digest that is not one is a bad request.
            var junk = w.instruction(alice, request, key: "k3")
            junk.signatureDigest = "not-hex"
            #expect(try await w.refusal(.instructionSubmit, junk).1 == "bad_request")
            #expect(try await w.balance(alice.accountId) == 9_750)
        }
    }

    // MARK: refunds

    @Test func refundsPartialFullAndExceeding() async throws {
        try await withRouterWorld { w in
            let shop = try await w.shop()
            let other = try await w.shop("Other Shop")
            let alice = try await w.payer("Alice", balance: 5000)
            let request = try await w.newRequest(shop, amount: 1000)
            let (_, paid) = try await w.pay(w.instruction(alice, request))
            let paymentId = try #require(paid.paymentId)
            func refund(_ key: String, _ amount: Int64?, merchant: String? = nil, payment: String? = nil) -> RefundCreate {
                RefundCreate(
                    idempotencyKey: key, bodyHash: RTWorld.hash("refund-\(amount.map(String.init) ?? "rest")"),
                    merchantId: merchant ?? shop.merchant.merchantId, paymentId: payment ?? paymentId, amountMinor: amount)
            }
            let (s1, first) = try await w.call(.refundCreate, refund("r1", 300), as: RefundInfo.self)
            #expect(s1 == .ok)
            #expect(first.refundId == RouterIds.refund(merchantId: shop.merchant.merchantId, idempotencyKey: "r1"))
            #expect(first.amountMinor == 300 && first.currency == "USD" && first.status == "succeeded" && first.paymentId == paymentId)
            #expect(try await w.balance(alice.accountId) == 4300)
            let (s1r, again) = try await w.call(.refundCreate, refund("r1", 300), as: RefundInfo.self)
            #expect(s1r == .exists && again == first)
            #expect(try await w.refusal(.refundCreate, refund("r1", 200)) == (.conflict, "idempotency_key_reused"))
            #expect(try await w.refusal(.refundCreate, refund("r2", 701)) == (.declined, "refund_exceeds_payment"))
            #expect(try await w.refusal(.refundCreate, refund("r2", 0)) == (.badRequest, "invalid_amount"))
            #expect(try await w.refusal(.refundCreate, refund("r2", 1, merchant: other.merchant.merchantId)) == (.notFound, "payment_not_found"))
            #expect(try await w.refusal(.refundCreate, refund("r2", 1, payment: "pay_unknown")) == (.notFound, "payment_not_found"))
            // The rest, by default.
            let (s2, rest) = try await w.call(.refundCreate, refund("r3", nil), as: RefundInfo.self)
            #expect(s2 == .ok && rest.amountMinor == 700)
            #expect(try await w.balance(alice.accountId) == 5000)
            #expect(try await w.balance(shop.merchant.accountId) == 0)
            #expect(try await w.refusal(.refundCreate, refund("r4", nil)) == (.declined, "refund_exceeds_payment"))
            #expect(try await w.refusal(.refundCreate, refund("r4", 1)) == (.declined, "refund_exceeds_payment"))

            #expect(await w.waitForNotices(request.requestId, ["payment.succeeded", "refund.succeeded", "refund.succeeded"]))
            let refunds = w.notifier.all.filter { $0.eventType == "refund.succeeded" }
            #expect(refunds.map(\.amountMinor) == [300, 700])
            #expect(refunds.allSatisfy { $0.deviceId == alice.device.deviceId && $0.paymentId == paymentId })
            #expect(refunds.map(\.refundId) == [first.refundId, rest.refundId])
            let (_, summary) = try await w.call(.accountSummary, AccountRef(accountId: alice.accountId), as: AccountSummary.self)
            #expect(summary.recent.first?.refundedMinor == 1000)
            await w.expectLedgerReconciled()
        }
    }

    // MARK: sweeper and recovery

    @Test func sweeperExpiresDueRequests() async throws {
        try await withRouterWorld { w in
            let shop = try await w.shop()
            let due = try await w.newRequest(shop, amount: 10)
            let fresh = try await w.newRequest(shop, amount: 20)
            try await w.db.query("UPDATE router.requests SET expires_at = $2 WHERE id = $1", [due.requestId, String(unixMillis() - 1)])
            #expect(await tsWait(timeout: .seconds(5)) { (try? await w.get(shop, due.requestId).status) == .expired })
            #expect(try await w.get(shop, fresh.requestId).status == .pending)
            #expect(await w.waitForNotices(due.requestId, ["payment.expired"]))
            #expect(w.notifier.events(for: fresh.requestId).isEmpty)
        }
    }

    @Test func sweeperRecordsAPaymentTheLedgerHoldsInsteadOfExpiring() async throws {
        try await withRouterWorld(attemptGrace: .milliseconds(200)) { w in
            let shop = try await w.shop()
            let alice = try await w.payer("Alice", balance: 1000)
            let request = try await w.newRequest(shop, amount: 400)
            // The router "died" between the ledger's answer and its commit: an attempt row and a posted
            // transfer, the request still pending and now due.
            let transferId = RouterIds.payment(deviceId: alice.device.deviceId, idempotencyKey: "lost")
            try await w.db.query(
                "INSERT INTO router.attempts (transfer_id, request_id, device_id, account_id, at) VALUES ($1, $2, $3, $4, $5)",
                [transferId, request.requestId, alice.device.deviceId, alice.accountId, String(unixMillis() - 1000)])
            let post = TransferPost(
                transferId: transferId, kind: .payment, debitAccountId: alice.accountId, creditAccountId: shop.merchant.accountId,
                amountMinor: 400, currency: "USD", paymentRequestId: request.requestId, pin: "1234")
            #expect(await w.ledger.handle(tsMessage(.transferPost, body: post.encoded())).status == .ok)
            // The ledger answers payment.lookup.
            let lookup = await w.ledger.handle(tsMessage(.paymentLookup, body: PaymentLookup(requestId: request.requestId).encoded()))
            #expect(lookup.status == .ok)
            #expect((try? PaymentRecord.decode(lookup.body))?.transferId == transferId)
            #expect(await w.ledger.handle(tsMessage(.paymentLookup, body: PaymentLookup(requestId: "pr_none").encoded())).status == .notFound)

            try await w.db.query("UPDATE router.requests SET expires_at = $2 WHERE id = $1", [request.requestId, String(unixMillis() - 1)])
            #expect(await tsWait(timeout: .seconds(5)) { (try? await w.get(shop, request.requestId).status) == .succeeded })
            let info = try await w.get(shop, request.requestId)
            #expect(info.paymentId == transferId)
            #expect(info.payerAlias == "A***")
            #expect(await w.waitForNotices(request.requestId, ["payment.succeeded"]))
            #expect(w.notifier.all.first?.deviceId == alice.device.deviceId)
            // The phone's retry of that instruction finishes as a success, moving nothing more.
            let (status, result) = try await w.pay(w.instruction(alice, request, key: "lost"))
            #expect(status == .ok && result.paymentId == transferId && result.balance == 600)
            #expect(try await w.balance(alice.accountId) == 600)
            await w.expectLedgerReconciled()
        }
    }

    @Test func aPaymentTheRouterMissedIsRecordedWhenAnotherDeviceTries() async throws {
        try await withRouterWorld { w in
            let shop = try await w.shop()
            let alice = try await w.payer("Alice", balance: 1000)
            let bob = try await w.payer("Bob", balance: 1000)
            let request = try await w.newRequest(shop, amount: 400)
            let transferId = RouterIds.payment(deviceId: alice.device.deviceId, idempotencyKey: "lost")
            try await w.db.query(
                "INSERT INTO router.attempts (transfer_id, request_id, device_id, account_id, at) VALUES ($1, $2, $3, $4, $5)",
                [transferId, request.requestId, alice.device.deviceId, alice.accountId, String(unixMillis())])
            let post = TransferPost(
                transferId: transferId, kind: .payment, debitAccountId: alice.accountId, creditAccountId: shop.merchant.accountId,
                amountMinor: 400, currency: "USD", paymentRequestId: request.requestId, pin: "1234")
            #expect(await w.ledger.handle(tsMessage(.transferPost, body: post.encoded())).status == .ok)
            let (status, result) = try await w.pay(w.instruction(bob, request))
            #expect(status == .declined && result.errorCode == "request_already_paid")
            let info = try await w.get(shop, request.requestId)
            #expect(info.status == .succeeded && info.paymentId == transferId)
            #expect(try await w.balance(bob.accountId) == 1000)
            #expect(await w.waitForNotices(request.requestId, ["payment.succeeded"]))
            #expect(w.notifier.all.first?.deviceId == alice.device.deviceId)
        }
    }

    // MARK: outbox

    @Test func outboxRowsReachTheNotifierExactlyOnceEvenIfItComesLate() async throws {
        try await withRouterWorld(withNotifier: false) { w in
            let shop = try await w.shop()
            let alice = try await w.payer("Alice", balance: 10_000)
            var ids: [String] = []
            for index in 0..<6 {
                let request = try await w.newRequest(shop, amount: 100)
                ids.append(request.requestId)
                if index % 2 == 0 {
                    _ = try await w.pay(w.instruction(alice, request))
                } else {
                    _ = try await w.call(.requestCancel, RequestRef(requestId: request.requestId, merchantId: shop.merchant.merchantId, idempotencyKey: "c\(index)"), as: PaymentRequestInfo.self)
                }
            }
            #expect(try await w.db.scalar("SELECT count(*) FROM router.outbox WHERE delivered_at IS NULL") == 6)
            try await Task.sleep(for: .milliseconds(300))
            #expect(w.notifier.all.isEmpty)
            try w.startNotifier()
            #expect(await tsWait(timeout: .seconds(30)) { w.notifier.all.count >= 6 })
            #expect(await tsWait(timeout: .seconds(10)) {
                (try? await w.db.scalar("SELECT count(*) FROM router.outbox WHERE delivered_at IS NULL")) == 0
            })
            try await Task.sleep(for: .milliseconds(300))
            let deliveries = w.notifier.all
            #expect(deliveries.count == 6, "each row once: \(deliveries.map(\.outboxSeq))")
            #expect(Set(deliveries.map(\.outboxSeq)).count == 6)
            #expect(deliveries.map(\.outboxSeq) == deliveries.map(\.outboxSeq).sorted(), "in order")
            for (index, id) in ids.enumerated() {
                #expect(w.notifier.events(for: id) == [index % 2 == 0 ? "payment.succeeded" : "payment.canceled"])
            }
            // The backlog went as one batch (one notifier call, one notifier commit).
            #expect(w.notifier.batches.value == 1)
        }
    }

    @Test func aNotifierWithoutBatchesGetsTheRowsOneByOne() async throws {
        try await withRouterWorld(withNotifier: false) { w in
            w.notifier.acceptsBatches.withLock { $0 = false }
            let shop = try await w.shop()
            var ids: [String] = []
            for index in 0..<4 {
                let request = try await w.newRequest(shop, amount: 100)
                ids.append(request.requestId)
                _ = try await w.call(.requestCancel, RequestRef(requestId: request.requestId, merchantId: shop.merchant.merchantId, idempotencyKey: "c\(index)"), as: PaymentRequestInfo.self)
            }
            try w.startNotifier()
            #expect(await tsWait(timeout: .seconds(30)) {
                (try? await w.db.scalar("SELECT count(*) FROM router.outbox WHERE delivered_at IS NULL")) == 0
            })
            let deliveries = w.notifier.all
            #expect(deliveries.count == 4)
            #expect(deliveries.map(\.outboxSeq) == deliveries.map(\.outboxSeq).sorted(), "in order")
            #expect(w.notifier.batches.value == 0)
            for id in ids { #expect(w.notifier.events(for: id) == ["payment.canceled"]) }
        }
    }

    /// A burst of instructions is handled in batches, and inside a batch every promise holds: two phones
    /// racing one request pay it once, the same key twice gets the first answer, an instruction refused on
    /// its own (a device paying from another wallet, a bad PIN format) fails alone.
    @Test func aBurstOfInstructionsIsHandledInBatchesWithEveryPromiseKept() async throws {
        try await withRouterWorld { w in
            let shop = try await w.shop()
            var payers: [RTWorld.Payer] = []
            var requests: [PaymentRequestInfo] = []
            for i in 0..<24 {
                payers.append(try await w.payer("Burst\(i)", balance: 10_000))
                requests.append(try await w.newRequest(shop, amount: Int64(100 + i)))
            }
            let racer = try await w.payer("Racer", balance: 10_000)
            let spare = try await w.newRequest(shop, amount: 5)
            let spare2 = try await w.newRequest(shop, amount: 6)
            var submits = requests.indices.map { w.instruction(payers[$0], requests[$0], key: "burst-\($0)") }
            // One device signature used twice, for two instructions (another key, another request): a replay.
            let digest = String(repeating: "ab", count: 32)
            submits[5].signatureDigest = digest
            submits.append(w.instruction(racer, requests[0], key: "racer"))
            submits.append(w.instruction(payers[1], requests[1], key: "burst-1"))  // the same key and body again
            var foreign = w.instruction(payers[2], requests[3], key: "foreign")
            foreign.accountId = payers[3].accountId  // device of payer 2, wallet of payer 3
            submits.append(foreign)
            submits.append(w.instruction(payers[4], spare, key: "bad-pin", pin: "12"))
            var replay = w.instruction(payers[5], spare2, key: "replay")
            replay.signatureDigest = digest
            submits.append(replay)
            let replies = try await withThrowingTaskGroup(of: (Int, BusMessage).self) { group in
                for (index, submit) in submits.enumerated() { group.addTask { (index, try await w.send(.instructionSubmit, submit)) } }
                var out = [Int: BusMessage]()
                for try await (index, reply) in group { out[index] = reply }
                return out
            }
            func result(_ index: Int) -> (Status, InstructionResult?, String?) {
                guard let reply = replies[index] else { return (.internalError, nil, "no reply") }
                return (reply.envelope.status, try? InstructionResult.decode(reply.body), (try? ErrorBody.decode(reply.body))?.code)
            }
            // Request 0: the owner or the racer, exactly one.
            let zero = [result(0), result(24)]
            #expect(zero.filter { $0.0 == .ok && $0.1?.status == .succeeded }.count == 1, "\(zero)")
            #expect(zero.filter { $0.0 == .declined && $0.1?.errorCode == "request_already_paid" }.count == 1, "\(zero)")
            // Request 1: both answers are the one payment.
            let first = result(1)
            let again = result(25)
            #expect(first.0 == .ok || first.0 == .exists)
            #expect(again.0 == .ok || again.0 == .exists)
            #expect(first.0 != again.0, "one pays, the other is the stored answer")
            #expect(first.1?.paymentId != nil && first.1?.paymentId == again.1?.paymentId)
            // The instructions refused alone.
            #expect(result(26).0 == Status(rawValue: 403) && result(26).2 == "account_not_allowed")
            #expect(result(27).0 == .badRequest, "bad PIN format: \(result(27))")
            // Everything else paid, once.
            // The signature pays once; the other use of it is refused and moves nothing.
            let uses = [result(5), result(28)]
            #expect(uses.filter { $0.0 == .ok }.count == 1, "\(uses)")
            #expect(uses.filter { $0.0 == Status(rawValue: 401) && $0.2 == "signature_replayed" }.count == 1, "\(uses)")
            let spent = try await w.db.scalar(
                "SELECT count(*) FROM ledger.transfers WHERE payment_request_id = ANY($1::text[])",
                [PGArray.text([requests[5].requestId, spare2.requestId])])
            #expect(spent == 1)
            for i in 2..<24 where i != 5 {
                #expect(result(i).0 == .ok && result(i).1?.status == .succeeded, "request \(i): \(result(i))")
            }
            for (i, request) in requests.enumerated() where i != 5 {
                let transfers = try await w.db.scalar(
                    "SELECT count(*) FROM ledger.transfers WHERE payment_request_id = $1", [request.requestId])
                #expect(transfers == 1, "request \(i)")
            }
            #expect(try await w.get(shop, spare.requestId).status == .pending, "a bad PIN format decides nothing")
            let paidByRacer = try await w.balance(racer.accountId) < 10_000
            let paidByOwner = try await w.balance(payers[0].accountId) < 10_000
            #expect(paidByRacer != paidByOwner)
            let stats = w.router.instructionBatches
            #expect(stats.largest > 1, "the burst rode in batches: \(stats)")
            #expect(stats.batches < submits.count)
            await w.expectLedgerReconciled()
        }
    }

    /// A burst of creates rides in batches: the same key twice makes one request, a create against the
    /// merchant's rule fails alone, every other create gets its own request.
    @Test func aBurstOfCreatesIsHandledInBatches() async throws {
        try await withRouterWorld { w in
            let shop = try await w.shop()
            var creates = (0..<30).map { w.create(shop, amount: Int64(10 + $0), key: "burst-\($0)") }
            creates.append(w.create(shop, amount: 10, key: "burst-0"))  // the same key and body again
            creates.append(w.create(shop, amount: 99, currency: "EUR", key: "euro"))
            let replies = try await withThrowingTaskGroup(of: (Int, BusMessage).self) { group in
                for (index, create) in creates.enumerated() { group.addTask { (index, try await w.send(.requestCreate, create)) } }
                var out = [Int: BusMessage]()
                for try await (index, reply) in group { out[index] = reply }
                return out
            }
            func info(_ index: Int) -> PaymentRequestInfo? { replies[index].flatMap { try? PaymentRequestInfo.decode($0.body) } }
            var ids = Set<String>()
            for index in 0..<30 {
                #expect(replies[index]?.envelope.status.isSuccess == true, "create \(index)")
                if let id = info(index)?.requestId { ids.insert(id) }
                #expect(info(index)?.amountMinor == Int64(10 + index))
            }
            #expect(ids.count == 30)
            let statuses = [replies[0]?.envelope.status, replies[30]?.envelope.status]
            #expect(statuses.contains(.ok) && statuses.contains(.exists), "\(statuses)")
            #expect(info(0)?.requestId == info(30)?.requestId)
            #expect(replies[31]?.envelope.status == .declined)
            #expect(replies[31].flatMap { try? ErrorBody.decode($0.body) }?.code == "currency_mismatch")
            #expect(try await w.db.scalar("SELECT count(*) FROM router.requests WHERE terminal_id = $1", [shop.terminal.terminalId]) == 30)
            let stats = w.router.createBatches
            #expect(stats.largest > 1, "the burst rode in batches: \(stats)")
        }
    }
}

extension RTWorld {
    func expectLedgerReconciled(sourceLocation: SourceLocation = #_sourceLocation) async {
        do {
            let report = try await ledger.reconcile()
            for check in report.checks where !check.ok {
                Issue.record("reconcile \(check.name) failed: \(check.offending.prefix(5))", sourceLocation: sourceLocation)
            }
        } catch {
            Issue.record("reconcile threw \(error)", sourceLocation: sourceLocation)
        }
    }
}
