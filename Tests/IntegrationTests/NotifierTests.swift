// The notifier on a real PostgreSQL and a real bus: an outcome becomes one notice per recipient with
// a per-recipient sequence, a repeated delivery changes nothing, replay and head answer from the store,
// and committed notices are published on `notice.pos.<terminal>` / `notice.dev.<device>`.

import Foundation
import NotifierService
import Postgres
import Testing
import WiPayBus

enum NTFixture {
    static func outcome(
        _ outboxSeq: Int64, _ type: String = "payment.succeeded", request: String = "pr_aaaaaaaaaaaaaaaaaaaa",
        terminal: String = "ter_t1", device: String? = "dev_d1", amount: Int64 = 1250
    ) -> OutcomePublished {
        let status: PaymentRequestStatus =
            switch type {
            case "payment.declined": .declined
            case "payment.expired": .expired
            case "payment.canceled": .canceled
            default: .succeeded
            }
        return OutcomePublished(
            outboxSeq: outboxSeq, eventType: type, requestId: request, status: status, amountMinor: amount, currency: "CNY",
            reference: "order \"42\"\n", terminalId: terminal, deviceId: device, merchantId: "mer_m1",
            paymentId: type == "payment.succeeded" || type == "refund.succeeded" ? "pay_p1" : nil,
            refundId: type == "refund.succeeded" ? "ref_r1" : nil, atMillis: 1_750_000_000_123, merchantName: "Café Ünïcode",
            errorCode: type == "payment.declined" ? "insufficient_funds" : nil, payerAlias: "J*** D.")
    }
}

/// A fresh database, the notifier schema and a `Notifier` whose publishes are recorded.
struct NTEnv: Sendable {
    let db: TSDatabase
    let notifier: Notifier
    let published: TSLocked<[(String, NoticeDelivered)]>

    func handle(_ type: MessageType, _ body: some BusEncodable) async -> BusReply {
        await notifier.handle(tsMessage(type, body: body.encoded()))
    }

    func deliver(_ outcome: OutcomePublished) async -> BusReply { await handle(.outcomeDeliver, outcome) }

    func replay(_ recipient: String, after: Int64 = 0, limit: UInt32 = 1000) async throws -> [NoticeDelivered] {
        let reply = await handle(.noticeReplay, NoticeReplay(recipient: recipient, afterSeq: after, limit: limit))
        guard reply.status == .ok else { throw TSFailure("replay answered \(reply.status) \(reply.tsCode ?? "")") }
        return try NoticeBatch.decode(reply.body).notices
    }

    func head(_ recipient: String) async throws -> Int64 {
        let reply = await handle(.noticeHead, NoticeAck(recipient: recipient, seq: 99))
        guard reply.status == .ok else { throw TSFailure("head answered \(reply.status)") }
        return try NoticeAck.decode(reply.body).seq
    }
}

func withNTNotifier<T: Sendable>(_ body: (NTEnv) async throws -> T) async throws -> T {
    let db = try await TSDatabase.create(prefix: "notifiertest")
    let published = TSLocked<[(String, NoticeDelivered)]>([])
    // Stress tests queue 80 deliveries on one recipient's row: no acquire deadline in the way here.
    let notifier = Notifier(conninfo: db.conninfo, logger: tsQuietLogger, acquireTimeout: .seconds(120)) { topic, notice in
        published.withLock { $0.append((topic, notice)) }
    }
    do {
        try await notifier.migrate(timeout: .seconds(10))
        let result = try await body(NTEnv(db: db, notifier: notifier, published: published))
        await db.drop()
        return result
    } catch {
        await db.drop()
        throw error
    }
}

@Suite("Notifier", .enabled(if: TSEnv.hasDatabase), .timeLimit(.minutes(2)))
struct NotifierTests {
    @Test func deliverTwiceMakesOneNoticePerRecipient() async throws {
        try await withNTNotifier { (env: NTEnv) async throws -> Void in
            let first = await env.deliver(NTFixture.outcome(7))
            #expect(first.status == .ok)
            let second = await env.deliver(NTFixture.outcome(7))
            #expect(second.status == .exists)
            #expect(try await env.db.scalar("SELECT count(*) FROM notifier.notices") == 2)
            #expect(try await env.db.scalar("SELECT count(*) FROM notifier.consumed") == 1)
            // Published once each, after commit, on the recipients' topics.
            let topics = env.published.value.map(\.0).sorted()
            #expect(topics == ["notice.dev.dev_d1", "notice.pos.ter_t1"])

            let pos = try await env.replay("pos:ter_t1")
            #expect(pos.map(\.seq) == [1])
            #expect(pos.first?.eventType == "payment.succeeded")
            let data = try #require(pos.first?.dataJSON)
            let object = try #require(try JSONSerialization.jsonObject(with: Data(data.utf8)) as? [String: Any])
            #expect(object["event_id"] as? String == "1")
            #expect(object["type"] as? String == "payment.succeeded")
            #expect(object["request_id"] as? String == "pr_aaaaaaaaaaaaaaaaaaaa")
            #expect(object["status"] as? String == "succeeded")
            #expect(object["amount"] as? Int == 1250)
            #expect(object["currency"] as? String == "CNY")
            #expect(object["reference"] as? String == "order \"42\"\n")
            #expect(object["payment_id"] as? String == "pay_p1")
            #expect(object["payer"] as? String == "J*** D.")
            #expect(object["at"] as? String == "2025-06-15T15:06:40.123Z")
            let merchant = try #require(object["merchant"] as? [String: Any])
            #expect(merchant["name"] as? String == "Café Ünïcode")
            // The payer's own notice carries no alias.
            let dev = try await env.replay("dev:dev_d1")
            #expect(dev.count == 1)
            let devObject = try #require(
                try JSONSerialization.jsonObject(with: Data((dev.first?.dataJSON ?? "").utf8)) as? [String: Any])
            #expect(devObject["payer"] == nil)
        }
    }

    @Test func sequencesIncreasePerRecipient() async throws {
        try await withNTNotifier { (env: NTEnv) async throws -> Void in
            // Terminal t1 hears everything; the device only succeeded, declined and refunds.
            let outcomes = [
                NTFixture.outcome(1, "payment.succeeded", request: "pr_1"),
                NTFixture.outcome(2, "payment.declined", request: "pr_2"),
                NTFixture.outcome(3, "payment.expired", request: "pr_3", device: nil),
                NTFixture.outcome(4, "payment.canceled", request: "pr_4", device: "dev_d1"),
                NTFixture.outcome(5, "refund.succeeded", request: "pr_1"),
                NTFixture.outcome(6, "payment.succeeded", request: "pr_6", terminal: "ter_t2", device: "dev_d2"),
            ]
            for outcome in outcomes { #expect(await env.deliver(outcome).status == .ok) }
            let pos = try await env.replay("pos:ter_t1")
            #expect(pos.map(\.seq) == [1, 2, 3, 4, 5])
            #expect(pos.map(\.eventType) == ["payment.succeeded", "payment.declined", "payment.expired", "payment.canceled", "refund.succeeded"])
            let dev = try await env.replay("dev:dev_d1")
            #expect(dev.map(\.seq) == [1, 2, 3])
            #expect(dev.map(\.eventType) == ["payment.succeeded", "payment.declined", "refund.succeeded"])
            let declined = try #require(
                try JSONSerialization.jsonObject(with: Data(dev[1].dataJSON.utf8)) as? [String: Any])
            #expect((declined["error"] as? [String: Any])?["code"] as? String == "insufficient_funds")
            #expect(try await env.replay("pos:ter_t2").map(\.seq) == [1])
            #expect(try await env.replay("dev:dev_d2").map(\.seq) == [1])
            #expect(try await env.head("pos:ter_t1") == 5)
            #expect(try await env.head("dev:dev_d1") == 3)
            #expect(try await env.head("pos:nobody") == 0)
        }
    }

    @Test func concurrentDeliveriesKeepSequencesDense() async throws {
        try await withNTNotifier { (env: NTEnv) async throws -> Void in
            // 40 outcomes for one terminal, each delivered twice at once.
            let replies = await withTaskGroup(of: BusReply.self) { group in
                for seq in 1...40 {
                    for _ in 0..<2 {
                        group.addTask { await env.deliver(NTFixture.outcome(Int64(seq), request: "pr_\(seq)", device: "dev_c")) }
                    }
                }
                var out: [BusReply] = []
                for await reply in group { out.append(reply) }
                return out
            }
            #expect(replies.filter { $0.status == .ok }.count == 40)
            #expect(replies.filter { $0.status == .exists }.count == 40)
            #expect(try await env.replay("pos:ter_t1").map(\.seq) == Array(1...40))
            #expect(try await env.replay("dev:dev_c").map(\.seq) == Array(1...40))
            #expect(env.published.value.count == 80)
        }
    }

    @Test func batchesStoreInOneGoKeepOrderAndSkipWhatWasConsumed() async throws {
        try await withNTNotifier { (env: NTEnv) async throws -> Void in
            // One single delivery first, then a batch that repeats it, holds a duplicate and is out of order.
            #expect(await env.deliver(NTFixture.outcome(2, request: "pr_2", device: "dev_b")).status == .ok)
            let batch = OutcomeBatch(outcomes: [
                NTFixture.outcome(5, "refund.succeeded", request: "pr_1", device: "dev_b"),
                NTFixture.outcome(1, request: "pr_1", device: "dev_b"),
                NTFixture.outcome(2, request: "pr_2", device: "dev_b"),
                NTFixture.outcome(3, "payment.expired", request: "pr_3", device: nil),
                NTFixture.outcome(4, request: "pr_4", terminal: "ter_t2", device: "dev_b"),
                NTFixture.outcome(3, "payment.expired", request: "pr_3", device: nil),
            ])
            #expect(await env.handle(.outcomeDeliverBatch, batch).status == .ok)
            // The whole batch again: nothing new.
            #expect(await env.handle(.outcomeDeliverBatch, batch).status == .ok)
            #expect(try await env.db.scalar("SELECT count(*) FROM notifier.consumed") == 5)
            let pos = try await env.replay("pos:ter_t1")
            #expect(pos.map(\.seq) == [1, 2, 3, 4])
            // In outbox order after the single one: pr_2 (single), then 1, 3, 5.
            #expect(pos.map(\.eventType) == ["payment.succeeded", "payment.succeeded", "payment.expired", "refund.succeeded"])
            let posEvents = pos.compactMap {
                (try? JSONSerialization.jsonObject(with: Data($0.dataJSON.utf8)) as? [String: Any])?["event_id"] as? String
            }
            #expect(posEvents == ["1", "2", "3", "4"])
            let dev = try await env.replay("dev:dev_b")
            #expect(dev.map(\.seq) == [1, 2, 3, 4])
            #expect(try await env.replay("pos:ter_t2").map(\.seq) == [1])
            #expect(try await env.head("pos:ter_t1") == 4)
            #expect(try await env.head("dev:dev_b") == 4)
            // Published once each: 2 + (4 + 3 from the batch).
            #expect(env.published.value.count == 9)
            let counts = try await env.db.scalar(
                "SELECT count(*) FROM (SELECT outbox_seq, recipient FROM notifier.notices GROUP BY 1, 2 HAVING count(*) > 1) d")
            #expect(counts == 0)
            // One outcome the notifier cannot take refuses the whole batch and stores nothing of it.
            var unknown = NTFixture.outcome(9)
            unknown.eventType = "payment.exploded"
            let refused = await env.handle(
                .outcomeDeliverBatch, OutcomeBatch(outcomes: [NTFixture.outcome(8, request: "pr_8"), unknown]))
            #expect(refused.status == .badRequest)
            #expect(try await env.db.scalar("SELECT count(*) FROM notifier.consumed WHERE outbox_seq >= 8") == 0)
            #expect(await env.handle(.outcomeDeliverBatch, OutcomeBatch(outcomes: [])).status == .ok)
        }
    }

    @Test func concurrentBatchesKeepSequencesDense() async throws {
        try await withNTNotifier { (env: NTEnv) async throws -> Void in
            // 60 outcomes for one terminal and two devices, in overlapping batches delivered at once.
            let all = (1...60).map { NTFixture.outcome(Int64($0), request: "pr_\($0)", device: $0 % 2 == 0 ? "dev_e" : "dev_o") }
            let replies = await withTaskGroup(of: BusReply.self) { group in
                for start in stride(from: 0, to: 60, by: 10) {
                    for width in [10, 20] {
                        let slice = Array(all[start..<min(60, start + width)])
                        group.addTask { await env.handle(.outcomeDeliverBatch, OutcomeBatch(outcomes: slice)) }
                    }
                }
                var out: [BusReply] = []
                for await reply in group { out.append(reply) }
                return out
            }
            #expect(replies.allSatisfy { $0.status == .ok })
            #expect(try await env.replay("pos:ter_t1").map(\.seq) == Array(1...60))
            #expect(try await env.replay("dev:dev_e").map(\.seq) == Array(1...30))
            #expect(try await env.replay("dev:dev_o").map(\.seq) == Array(1...30))
            #expect(try await env.db.scalar("SELECT count(DISTINCT outbox_seq) FROM notifier.notices") == 60)
            #expect(env.published.value.count == 120)
        }
    }

    @Test func replayPagesAndLimits() async throws {
        try await withNTNotifier { (env: NTEnv) async throws -> Void in
            for seq in 1...12 { _ = await env.deliver(NTFixture.outcome(Int64(seq), request: "pr_\(seq)", device: nil)) }
            #expect(try await env.replay("pos:ter_t1", after: 0, limit: 5).map(\.seq) == [1, 2, 3, 4, 5])
            #expect(try await env.replay("pos:ter_t1", after: 5, limit: 5).map(\.seq) == [6, 7, 8, 9, 10])
            #expect(try await env.replay("pos:ter_t1", after: 10, limit: 5).map(\.seq) == [11, 12])
            #expect(try await env.replay("pos:ter_t1", after: 12).isEmpty)
            let tooMany = await env.handle(.noticeReplay, NoticeReplay(recipient: "pos:ter_t1", afterSeq: 0, limit: 1001))
            #expect(tooMany.status == .badRequest)
            let garbage = await env.notifier.handle(tsMessage(.outcomeDeliver, body: [1, 2, 3]))
            #expect(garbage.status == .badRequest)
            var unknown = NTFixture.outcome(99)
            unknown.eventType = "payment.exploded"
            #expect(await env.deliver(unknown).status == .badRequest)
            #expect(try await env.db.scalar("SELECT count(*) FROM notifier.consumed WHERE outbox_seq = 99") == 0)
        }
    }

    @Test func overTheBus() async throws {
        let db = try await TSDatabase.create(prefix: "notifiertest")
        let harness = try BTHarness.start()
        defer {
            harness.shutdown()
        }
        let publisher = try harness.publisher("notifier/test")
        // Stress tests queue 80 deliveries on one recipient's row: no acquire deadline in the way here.
    let notifier = Notifier(conninfo: db.conninfo, logger: tsQuietLogger, acquireTimeout: .seconds(120)) { topic, notice in
            publisher.publish(topic: topic, type: .noticeDelivered, body: notice.encoded())
        }
        do {
            try await notifier.migrate(timeout: .seconds(10))
            _ = try harness.worker("notifier", "n1") { await notifier.handle($0) }
            let events = try harness.subscriber(["notice.pos."])
            let client = try harness.client()
            // Subscriptions take a moment to reach the publisher side: deliver until one is seen.
            var seq: Int64 = 0
            var seen = false
            let end = ContinuousClock.now + .seconds(10)
            while !seen && ContinuousClock.now < end {
                seq += 1
                let outcome = NTFixture.outcome(seq, request: "pr_\(seq)", device: nil)
                _ = try? await client.call(service: "notifier", type: .outcomeDeliver, outcome, as: Empty.self)
                try await Task.sleep(for: .milliseconds(100))
                seen = !events.events.isEmpty
            }
            #expect(seen)
            let (status, repeatReply) = try await client.call(
                service: "notifier", type: .outcomeDeliver, NTFixture.outcome(1, request: "pr_1", device: nil), as: Empty.self)
            #expect(status == .exists)
            _ = repeatReply
            let (_, head) = try await client.call(
                service: "notifier", type: .noticeHead, NoticeAck(recipient: "pos:ter_t1", seq: 0), as: NoticeAck.self)
            #expect(head.seq == seq)
            let (_, batch) = try await client.call(
                service: "notifier", type: .noticeReplay, NoticeReplay(recipient: "pos:ter_t1", afterSeq: 0, limit: 100),
                as: NoticeBatch.self)
            #expect(batch.notices.map(\.seq) == Array(1...seq))
            let event = try #require(events.events.last)
            #expect(event.envelope.type == .noticeDelivered)
            #expect(event.topic == "notice.pos.ter_t1")
            let notice = try NoticeDelivered.decode(event.body)
            #expect(notice.recipient == "pos:ter_t1")
        } catch {
            await db.drop()
            throw error
        }
        await db.drop()
    }
}
