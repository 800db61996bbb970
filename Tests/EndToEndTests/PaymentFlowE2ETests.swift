// The payment flow end to end: six real processes on a fresh database, driven through HTTP, SSE and payctl.

import Foundation
import Testing
import WiPayClient

@Suite("End to end: the payment flow", .e2eSystem, .enabled(if: E2EEnv.ready))
struct PaymentFlowE2ETests {
    @Test("happy path: request, pay with PIN, the notice on both streams, balances, trace", .timeLimit(.minutes(2)))
    func happyPath() async throws {
        let system = try e2eSystem()
        let merchant = try await system.addMerchant()
        let pos = try system.pos(merchant)
        let phone = try await system.phone(funds: 100_000)
        let posEvents = try await pos.events()
        let phoneEvents = try await phone.events()
        defer {
            posEvents.close()
            phoneEvents.close()
        }
        #expect(posEvents.status == 200)
        #expect(phoneEvents.status == 200)
        #expect(posEvents.header("content-type")?.contains("text/event-stream") == true)

        let created = try await pos.create(amount: 1250, reference: "order-42", description: "2 coffees", expiresIn: 120)
        #expect(created.status == 201, "\(created)")
        let id = try #require(created.string("id"))
        let payload = try #require(created.string("payload"))
        #expect(created.string("status") == "pending")
        #expect(created.int("amount") == 1250)
        #expect(created.string("currency") == "CNY")
        #expect(created.string("reference") == "order-42")
        #expect(created.string("description") == "2 coffees")
        #expect(created["merchant"]?["id"]?.string == merchant.merchantId)
        #expect(created["merchant"]?["name"]?.string == merchant.name)
        #expect(created.string("terminal_id") == merchant.terminalId)
        #expect(created.string("created_at").flatMap(e2eDate) != nil)
        #expect(created.string("expires_at").flatMap(e2eDate) != nil)

        let paid = try await phone.pay(payload)
        #expect(paid.status == 200, "\(paid)")
        #expect(paid.string("status") == "succeeded")
        #expect(paid.string("request_id") == id)
        #expect(paid.int("amount") == 1250)
        #expect(paid.string("currency") == "CNY")
        #expect(paid["merchant"]?["id"]?.string == merchant.merchantId)
        #expect(paid["merchant"]?["name"]?.string == merchant.name)
        let balanceAfter: Int64 = 100_000 - 1250
        #expect(paid.int("balance") == balanceAfter, "\(paid)")
        let paymentId = try #require(paid.string("payment_id"))

        // Both completion notices, with the contract's fields.
        for (stream, name) in [(posEvents, "terminal"), (phoneEvents, "device")] {
            let event = await stream.waitForEvent("payment.succeeded", requestId: id)
            let data = try #require(event?.json, "no payment.succeeded on the \(name) stream; got \(stream.events)")
            #expect(event?.id?.isEmpty == false)
            #expect(data["event_id"] != nil)
            #expect(data["type"]?.string == "payment.succeeded")
            #expect(data["status"]?.string == "succeeded")
            #expect(data["amount"]?.int64 == 1250)
            #expect(data["currency"]?.string == "CNY")
            #expect(data["reference"]?.string == "order-42")
        }

        let shown = try await pos.get(id)
        #expect(shown.status == 200)
        #expect(shown.string("status") == "succeeded")
        #expect(shown["payment"]?["id"]?.string == paymentId)
        #expect(shown["payment"]?["posted_at"]?.string.flatMap(e2eDate) != nil)
        let payer = shown["payment"]?["payer"]?.string ?? ""
        #expect(!payer.isEmpty)
        #expect(!payer.contains(phone.accountId))

        #expect(try await system.balance(phone.accountId) == 100_000 - 1250)
        #expect(try await system.balance(merchant.accountId) == 1250)

        let me = try await phone.me()
        #expect(me.status == 200, "\(me)")
        #expect(me.string("account_id") == phone.accountId)
        #expect(me.string("currency") == "CNY")
        #expect(me.int("balance") == balanceAfter, "\(me)")
        #expect(me["recent"]?.array?.isEmpty == false)

        let trace = try await system.payctl(["payment", "show", id])
        #expect(trace.status == 0, "\(trace)")
        #expect(trace.string("status") == "succeeded")
        let steps = trace.json?["steps"] as? [[String: Any]] ?? []
        #expect(!steps.isEmpty, "payctl payment show: \(trace)")
        for step in steps {
            #expect(step["stage"] is String && step["event"] is String && step["detail"] is String)
            #expect((step["at"] as? String).flatMap(e2eDate) != nil)
        }
        let table = try await system.payctl(["payment", "show", id], json: false)
        #expect(table.status == 0 && table.stdout.contains(id), "\(table)")
    }

    @Test("a terminal lists its own requests since a time, newest first", .timeLimit(.minutes(2)))
    func listRequests() async throws {
        let system = try e2eSystem()
        let merchant = try await system.addMerchant()
        let pos = try system.pos(merchant)
        // A second till of the same merchant: its requests are not the first till's.
        let (tillId, tillKey) = try await system.addTerminal(merchantId: merchant.merchantId, name: "till 2")
        let other = try system.pos(
            E2EMerchant(
                merchantId: merchant.merchantId, accountId: merchant.accountId, name: merchant.name, currency: merchant.currency,
                terminalId: tillId, terminalKey: tillKey))
        var ids: [String] = []
        for amount in [100, 200, 300] as [Int64] {
            ids.append(try await pos.mustCreate(amount: amount).id)
            try await Task.sleep(for: .milliseconds(20))
        }
        let foreign = try await other.mustCreate(amount: 999).id
        let all = try await pos.http.send("GET", "/v1/payment-requests", headers: pos.authHeaders)
        #expect(all.status == 200, "\(all)")
        #expect(all["requests"]?.array?.compactMap { $0["id"]?.string } == ids.reversed(), "\(all)")
        #expect(all.int("count") == 3)
        let first = all["requests"]?.array?.first
        #expect(first?["amount"]?.int64 == 300 && first?["status"]?.string == "pending" && first?["payload"]?.string != nil)
        let two = try await pos.http.send("GET", "/v1/payment-requests?limit=2", headers: pos.authHeaders)
        #expect(two["requests"]?.array?.count == 2, "\(two)")
        let theirs = try await other.http.send("GET", "/v1/payment-requests", headers: other.authHeaders)
        #expect(theirs["requests"]?.array?.compactMap { $0["id"]?.string } == [foreign], "\(theirs)")
        let future = try await pos.http.send("GET", "/v1/payment-requests?since=2999-01-01T00:00:00Z", headers: pos.authHeaders)
        #expect(future.status == 200 && future.int("count") == 0, "\(future)")
        let offset = try await pos.http.send(
            "GET", "/v1/payment-requests?since=2020-01-01T08:00:00.5%2B08:00", headers: pos.authHeaders)
        #expect(offset.status == 200 && offset.int("count") == 3 && offset.string("since") == "2020-01-01T00:00:00.500Z", "\(offset)")
        let ancient = try await pos.http.send("GET", "/v1/payment-requests?since=0060-12-07T16:47:05-07:07", headers: pos.authHeaders)
        #expect(ancient.status == 200 && ancient.int("count") == 3 && ancient.string("since") == "1970-01-01T00:00:00.000Z", "\(ancient)")
        for bad in ["since=yesterday", "since=2025-02-30T00:00:00Z", "limit=0", "limit=201", "limit=x"] {
            let reply = try await pos.http.send("GET", "/v1/payment-requests?\(bad)", headers: pos.authHeaders)
            #expect(reply.status == 400 && reply.code == "invalid_field", "\(bad): \(reply)")
        }
        let anonymous = try await pos.http.send("GET", "/v1/payment-requests")
        #expect(anonymous.status == 401, "\(anonymous)")
    }

    @Test("idempotent retries: create, pay, cancel and refund repeat their first answer", .timeLimit(.minutes(2)))
    func idempotentRetries() async throws {
        let system = try e2eSystem()
        let merchant = try await system.addMerchant()
        let pos = try system.pos(merchant)
        let phone = try await system.phone(funds: 50_000)

        // Create: same key and body → same id; same key, other body → 409.
        let body = pos.createBody(amount: 700, reference: "idem-1")
        let first = try await pos.createRaw(body, idempotencyKey: "create-key-1")
        let again = try await pos.createRaw(body, idempotencyKey: "create-key-1")
        #expect(first.status == 201, "\(first)")
        #expect(again.status == first.status)
        #expect(again.string("id") == first.string("id"))
        #expect(again.string("payload") == first.string("payload"))
        let other = try await pos.createRaw(pos.createBody(amount: 701, reference: "idem-1"), idempotencyKey: "create-key-1")
        #expect(other.status == 409 && other.code == "idempotency_key_reused", "\(other)")
        let payload = try #require(first.string("payload"))
        let id = try #require(first.string("id"))

        // Pay: same key and body → same payment, money moves once.
        let paid = try await phone.pay(payload, idempotencyKey: "pay-key-1")
        let paidAgain = try await phone.pay(payload, idempotencyKey: "pay-key-1")
        #expect(paid.status == 200, "\(paid)")
        #expect(paidAgain.status == 200, "\(paidAgain)")
        #expect(paidAgain.string("payment_id") == paid.string("payment_id"))
        #expect(paidAgain.int("balance") == paid.int("balance"))
        let paidOther = try await phone.pay(payload, pin: "999999", idempotencyKey: "pay-key-1")
        #expect(paidOther.status == 409 && paidOther.code == "idempotency_key_reused", "\(paidOther)")
        #expect(try await system.balance(phone.accountId) == 50_000 - 700)
        #expect(try await system.balance(merchant.accountId) == 700)

        // Refund: same key and body → same refund, money moves once; same key, other amount → 409.
        let paymentId = try #require(paid.string("payment_id"))
        let refund = try await pos.refund(paymentId, amount: 200, idempotencyKey: "refund-key-1")
        let refundAgain = try await pos.refund(paymentId, amount: 200, idempotencyKey: "refund-key-1")
        #expect(refund.status == 201, "\(refund)")
        #expect(refundAgain.status == 201, "\(refundAgain)")
        #expect(refundAgain.string("id") == refund.string("id"))
        let refundOther = try await pos.refund(paymentId, amount: 300, idempotencyKey: "refund-key-1")
        #expect(refundOther.status == 409 && refundOther.code == "idempotency_key_reused", "\(refundOther)")
        #expect(try await system.balance(phone.accountId) == 50_000 - 500)
        #expect(try await system.balance(merchant.accountId) == 500)

        // Cancel: same key → the same 200 again; a new key on a final request → 409.
        let (toCancel, _) = try await pos.mustCreate(amount: 300)
        let canceled = try await pos.cancel(toCancel, idempotencyKey: "cancel-key-1")
        let canceledAgain = try await pos.cancel(toCancel, idempotencyKey: "cancel-key-1")
        #expect(canceled.status == 200 && canceled.string("status") == "canceled", "\(canceled)")
        #expect(canceledAgain.status == 200 && canceledAgain.string("status") == "canceled", "\(canceledAgain)")
        let cancelPaid = try await pos.cancel(id, idempotencyKey: "cancel-key-2")
        #expect(cancelPaid.status == 409, "\(cancelPaid)")

        // Enrollment codes work once: a repeat with the same device key may answer the same device again (a
        // retry whose answer was lost); another key is refused (see the bad-input suite).
        let enrolledAs = phone.deviceId
        let reenroll = try await phone.enroll()
        #expect(
            reenroll.status == 409 || (reenroll.status == 201 && reenroll.string("device_id") == enrolledAs),
            "\(reenroll)")
    }

    @Test("two phones race for one request: exactly one pays, the other gets request_already_paid", .timeLimit(.minutes(2)))
    func racingPhones() async throws {
        let system = try e2eSystem()
        let merchant = try await system.addMerchant()
        let pos = try system.pos(merchant)
        let phoneA = try await system.phone(funds: 10_000)
        let phoneB = try await system.phone(funds: 10_000)
        for round in 0..<3 {
            let (id, payload) = try await pos.mustCreate(amount: 1000)
            async let a = phoneA.pay(payload)
            async let b = phoneB.pay(payload)
            let (ra, rb) = try await (a, b)
            let statuses = [ra.status, rb.status].sorted()
            #expect(statuses == [200, 422], "round \(round): \(ra) / \(rb)")
            let loser = ra.status == 200 ? rb : ra
            #expect(loser.code == "request_already_paid", "round \(round): \(loser)")
            #expect(loser.string("status") == "declined")
            let shown = try await pos.get(id)
            #expect(shown.string("status") == "succeeded")
        }
        let a = try await system.balance(phoneA.accountId)
        let b = try await system.balance(phoneB.accountId)
        #expect(a + b == 20_000 - 3000)
        #expect(try await system.balance(merchant.accountId) == 3000)
    }

    @Test("expiry (expires_in 10) and cancel both reach the terminal stream", .timeLimit(.minutes(2)))
    func expiryAndCancel() async throws {
        let system = try e2eSystem()
        let merchant = try await system.addMerchant()
        let pos = try system.pos(merchant)
        let phone = try await system.phone(funds: 10_000)
        let posEvents = try await pos.events()
        defer { posEvents.close() }

        let (expiring, expiringPayload) = try await pos.mustCreate(amount: 500, expiresIn: 10)
        let (canceling, cancelingPayload) = try await pos.mustCreate(amount: 600)

        let canceled = try await pos.cancel(canceling)
        #expect(canceled.status == 200 && canceled.string("status") == "canceled", "\(canceled)")
        #expect(await posEvents.waitForEvent("payment.canceled", requestId: canceling) != nil, "\(posEvents.events)")
        let payCanceled = try await phone.pay(cancelingPayload)
        #expect(payCanceled.status == 422 && payCanceled.code == "request_canceled", "\(payCanceled)")

        let expired = await posEvents.waitForEvent("payment.expired", requestId: expiring, timeout: .seconds(30))
        #expect(expired != nil, "no payment.expired: \(posEvents.events)")
        #expect(expired?.json?["status"]?.string == "expired")
        let shown = try await pos.get(expiring)
        #expect(shown.string("status") == "expired", "\(shown)")
        let payExpired = try await phone.pay(expiringPayload)
        #expect(payExpired.status == 422 && payExpired.code == "request_expired", "\(payExpired)")
        let cancelExpired = try await pos.cancel(expiring)
        #expect(cancelExpired.status == 409, "\(cancelExpired)")
        #expect(try await system.balance(phone.accountId) == 10_000)
        #expect(try await system.balance(merchant.accountId) == 0)
    }

    @Test("refunds: partial, the rest, and never more than the payment", .timeLimit(.minutes(2)))
    func refunds() async throws {
        let system = try e2eSystem()
        let merchant = try await system.addMerchant()
        let pos = try system.pos(merchant)
        let phone = try await system.phone(funds: 5000)
        let posEvents = try await pos.events()
        let phoneEvents = try await phone.events()
        defer {
            posEvents.close()
            phoneEvents.close()
        }
        let (id, payload) = try await pos.mustCreate(amount: 1000)
        let paid = try await phone.pay(payload)
        let paymentId = try #require(paid.string("payment_id"), "\(paid)")

        let partial = try await pos.refund(paymentId, amount: 300)
        #expect(partial.status == 201, "\(partial)")
        #expect(partial.string("payment_id") == paymentId)
        #expect(partial.int("amount") == 300)
        #expect(partial.string("status") == "succeeded")
        #expect(partial.string("id")?.isEmpty == false)

        let tooMuch = try await pos.refund(paymentId, amount: 701)
        #expect(tooMuch.status == 422 || tooMuch.status == 409, "\(tooMuch)")
        #expect(tooMuch.code == "refund_exceeds_payment", "\(tooMuch)")

        let rest = try await pos.refund(paymentId, amount: nil)
        #expect(rest.status == 201, "\(rest)")
        #expect(rest.int("amount") == 700)
        let nothingLeft = try await pos.refund(paymentId, amount: 1)
        #expect(nothingLeft.code == "refund_exceeds_payment", "\(nothingLeft)")

        #expect(try await system.balance(phone.accountId) == 5000)
        #expect(try await system.balance(merchant.accountId) == 0)
        #expect(await posEvents.waitFor { $0.filter { $0.event == "refund.succeeded" }.count >= 2 }, "\(posEvents.events)")
        #expect(await phoneEvents.waitFor { $0.filter { $0.event == "refund.succeeded" }.count >= 2 }, "\(phoneEvents.events)")
        #expect(posEvents.events.filter { $0.event == "refund.succeeded" }.allSatisfy { $0.json?["request_id"]?.string == id })

        let unknown = try await pos.refund("pay_aaaaaaaaaaaaaaaaaaaa", amount: 1)
        #expect(unknown.status == 404, "\(unknown)")
    }

    @Test("SSE resume with Last-Event-ID: nothing missed, nothing twice, in order", .timeLimit(.minutes(2)))
    func sseResume() async throws {
        let system = try e2eSystem()
        let merchant = try await system.addMerchant()
        let pos = try system.pos(merchant)
        let phone = try await system.phone(funds: 50_000)

        func pay(_ count: Int) async throws -> [String] {
            var ids: [String] = []
            for _ in 0..<count {
                let (id, payload) = try await pos.mustCreate(amount: 100)
                let r = try await phone.pay(payload)
                #expect(r.status == 200, "\(r)")
                ids.append(id)
            }
            return ids
        }

        let firstPos = try await pos.events()
        let firstPhone = try await phone.events()
        let before = try await pay(2)
        #expect(await firstPos.waitFor { $0.count >= 2 }, "\(firstPos.events)")
        #expect(await firstPhone.waitFor { $0.count >= 2 }, "\(firstPhone.events)")
        firstPos.close()
        firstPhone.close()
        let posLast = try #require(firstPos.events.last?.id)
        let phoneLast = try #require(firstPhone.events.last?.id)
        #expect(firstPos.events.compactMap { $0.json?["request_id"]?.string } == before)

        let missed = try await pay(3)
        let resumedPos = try await pos.events(lastEventId: posLast)
        let resumedPhone = try await phone.events(lastEventId: phoneLast)
        defer {
            resumedPos.close()
            resumedPhone.close()
        }
        let after = try await pay(1)
        for (stream, name) in [(resumedPos, "terminal"), (resumedPhone, "device")] {
            #expect(await stream.waitFor { $0.count >= 4 }, "\(name): \(stream.events)")
            try? await Task.sleep(for: .milliseconds(800))  // a duplicate would arrive by now
            let requestIds = stream.events.compactMap { $0.json?["request_id"]?.string }
            #expect(requestIds == missed + after, "\(name) stream after resume: \(stream.events)")
            let ids = stream.events.compactMap(\.id)
            #expect(Set(ids).count == ids.count, "\(name): an event id twice: \(ids)")
        }
        // Keepalive comments arrive on an idle stream.
        #expect(await e2eWait(timeout: .seconds(5)) { resumedPos.comments > 0 }, "no keepalive comment")
    }
}

/// Parses an RFC 3339 time.
func e2eDate(_ text: String) -> Date? {
    let formatter = ISO8601DateFormatter()
    formatter.formatOptions = [.withInternetDateTime]
    if let date = formatter.date(from: text) { return date }
    formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
    return formatter.date(from: text)
}
