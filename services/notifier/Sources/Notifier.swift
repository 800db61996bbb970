import Logging
import Metrics
import Postgres
import WiPayBus
import WiPayRuntime

/// The notifier stage: turns outcomes from the payment-router's outbox into per-recipient notices
/// (terminal `pos:<id>`, device `dev:<id>`), stores them with a per-recipient sequence in PostgreSQL
/// (schema `notifier`), publishes each on `notice.pos.<id>` / `notice.dev.<id>` after commit, and
/// serves replays (`notice.replay`) and heads (`notice.head`) for the gateways' event streams.
public final class Notifier: Sendable {
    /// Where a committed notice goes live: (topic, notice).
    public typealias Publish = @Sendable (String, NoticeDelivered) -> Void

    public static let maxReplayLimit: UInt32 = 1000
    /// What every terminal hears; a device hears `deviceEventTypes`.
    public static let eventTypes: Set<String> = [
        "payment.succeeded", "payment.declined", "payment.expired", "payment.canceled", "refund.succeeded",
        attemptDeclined,
    ]
    /// The outcomes a paying device hears of (an attempt decline as its own `payment.declined`).
    public static let deviceEventTypes: Set<String> = ["payment.succeeded", "payment.declined", "refund.succeeded", attemptDeclined]
    /// A declined attempt that left the request pending: the terminal hears it under this type.
    public static let attemptDeclined = "payment.attempt_declined"

    let pool: PGPool
    let logger: Logger
    let publish: Publish
    private let duplicates = Counter(label: "wipay.notifier.duplicates")
    private let noticeCounters: [String: Counter]

    /// `acquireTimeout`: how long a call waits for one of the `poolSize` connections before it is answered
    /// `503 database_busy` (the bus caller's own attempt has timed out by then and retries).
    public init(
        conninfo: String, logger: Logger, poolSize: Int = 8, acquireTimeout: Duration = .seconds(5),
        publish: @escaping Publish
    ) {
        self.pool = PGPool(conninfo: conninfo, size: poolSize, name: "notifier", acquireTimeout: acquireTimeout)
        self.logger = logger
        self.publish = publish
        var counters: [String: Counter] = [:]
        for type in Self.eventTypes { counters[type] = Counter(label: "wipay.notifier.notices", dimensions: [("type", type)]) }
        self.noticeCounters = counters
    }

    /// Applies migrations, retrying while PostgreSQL is not up yet (bounded: `timeout`).
    public func migrate(timeout: Duration = .seconds(30)) async throws {
        try await pgRetryingUntilReachable(timeout: timeout, onRetry: { error in
            logger.warning("database not reachable yet; retrying", metadata: ["error": "\(error)"])
        }) {
            try await pool.blocking { try NotifierSchema.migrate($0) }
        }
    }

    public func handle(_ message: BusMessage) async -> BusReply {
        do {
            switch message.envelope.type {
            case .outcomeDeliver:
                return try await deliver(try OutcomePublished.decode(message.body))
            case .outcomeDeliverBatch:
                return try await deliver(batch: try OutcomeBatch.decode(message.body).outcomes)
            case .noticeReplay:
                return try await replay(try NoticeReplay.decode(message.body))
            case .noticeHead:
                let ack = try NoticeAck.decode(message.body)
                return .ok(NoticeAck(recipient: ack.recipient, seq: try await head(ack.recipient)))
            case .ping:
                return .ok(Empty())
            default:
                return .error(.unknownType, "unknown_type", "the notifier does not handle \(message.envelope.type)")
            }
        } catch let error as BusDecodeError {
            return .error(.badRequest, "bad_request", "\(error)")
        } catch let error as PGError where error.isDataError {
            return .error(.badRequest, "bad_request", "the request holds data the notifier cannot store: \(error.message)")
        } catch let error as PGError where error.isPoolBusy {
            logger.warning("database busy", metadata: ["error": "\(error)", "bus.type": "\(message.envelope.type)"])
            return .error(.unavailable, "database_busy", "the notifier's database connections are all busy; retry")
        } catch let error as PGError {
            logger.error("database error", metadata: ["error": "\(error)", "bus.type": "\(message.envelope.type)"])
            return .error(.unavailable, "notifier_unavailable", "the notifier database is not available; retry")
        } catch {
            logger.error("unexpected error", metadata: ["error": "\(error)"])
            return .error(.internalError, "internal_error", "unexpected notifier error")
        }
    }

    // MARK: outcome.deliver

    /// One notice to be stored for one recipient (its seq is allocated in the transaction).
    struct Planned: Sendable {
        let recipient: String
        let topic: String
        let forTerminal: Bool
        /// The notice's type and status: the outcome's, except that the device whose attempt was declined
        /// hears `payment.declined` with status `declined` (its payment), while the request stays pending.
        let eventType: String
        let status: PaymentRequestStatus
    }

    /// Who hears about `outcome`: the terminal always, the device for the event types a payer cares about.
    static func recipients(_ outcome: OutcomePublished) -> [Planned] {
        var out = [
            Planned(
                recipient: "pos:\(outcome.terminalId)", topic: "notice.pos.\(outcome.terminalId)", forTerminal: true,
                eventType: outcome.eventType, status: outcome.status)
        ]
        if let device = outcome.deviceId, !device.isEmpty, deviceEventTypes.contains(outcome.eventType) {
            let attempt = outcome.eventType == attemptDeclined
            out.append(
                Planned(
                    recipient: "dev:\(device)", topic: "notice.dev.\(device)", forTerminal: false,
                    eventType: attempt ? "payment.declined" : outcome.eventType, status: attempt ? .declined : outcome.status))
        }
        // One lock order for every transaction (sorted recipients), so two deliveries never deadlock.
        return out.sorted { $0.recipient < $1.recipient }
    }

    /// Why the notifier cannot take `outcome` (a 400), or nil.
    static func refusal(_ outcome: OutcomePublished) -> BusReply? {
        guard eventTypes.contains(outcome.eventType) else {
            return .error(.badRequest, "unknown_event_type", "event type \(outcome.eventType) is not one the notifier knows")
        }
        guard !outcome.terminalId.isEmpty, !outcome.requestId.isEmpty else {
            return .error(.badRequest, "bad_request", "an outcome needs a terminal id and a request id")
        }
        return nil
    }

    func deliver(_ outcome: OutcomePublished) async throws -> BusReply {
        if let refusal = Self.refusal(outcome) { return refusal }
        let stored = try await store([outcome])
        guard !stored.isEmpty else {
            duplicates.increment()
            logger.debug("outcome already consumed", metadata: ["outbox.seq": "\(outcome.outboxSeq)"])
            return .ok(Empty(), status: .exists)
        }
        publish(stored)
        logger.debug(
            "notices stored",
            metadata: [
                "outbox.seq": "\(outcome.outboxSeq)", "request.id": "\(outcome.requestId)", "event": "\(outcome.eventType)",
                "notices": "\(stored.count)",
            ])
        return .ok(Empty())
    }

    /// `outcome.deliver.batch`: every outcome of the batch in one transaction (the ones already consumed are
    /// skipped), so a batch costs one commit. One outcome the notifier cannot take refuses the whole batch
    /// (the relay then delivers that batch one by one and finds it).
    func deliver(batch: [OutcomePublished]) async throws -> BusReply {
        for outcome in batch {
            if let refusal = Self.refusal(outcome) { return refusal }
        }
        guard !batch.isEmpty else { return .ok(Empty()) }
        let stored = try await store(batch)
        let fresh = Set(stored.map(\.outboxSeq)).count
        if fresh < batch.count { duplicates.increment(by: Int64(batch.count - fresh)) }
        publish(stored)
        logger.debug("notices stored", metadata: ["outcomes": "\(batch.count)", "fresh": "\(fresh)", "notices": "\(stored.count)"])
        return .ok(Empty())
    }

    /// One stored notice: where it goes live, the notice, and the outbox row it came from.
    struct Stored: Sendable {
        let topic: String
        let notice: NoticeDelivered
        let outboxSeq: Int64
    }

    /// Stores the notices of the outcomes not consumed yet, in one transaction: the consumed marks (in
    /// `outbox_seq` order), each recipient's head moved by its count (recipients in sorted order, so two
    /// transactions never wait on each other in a cycle), then the notices. Returns them in outbox order.
    func store(_ outcomes: [OutcomePublished]) async throws -> [Stored] {
        var seen = Set<Int64>()
        let unique = outcomes.filter { seen.insert($0.outboxSeq).inserted }.sorted { $0.outboxSeq < $1.outboxSeq }
        return try await pool.withSession { db in
            let consumed = try await db.pipelineAll([
                .begin,
                PGStatement(
                    """
                    INSERT INTO notifier.consumed (outbox_seq) SELECT s FROM unnest($1::bigint[]) AS t(s) ORDER BY s
                    ON CONFLICT DO NOTHING RETURNING outbox_seq
                    """, [PGArray.int64(unique.map(\.outboxSeq))]),
            ])[1]
            let fresh = Set(consumed.rows.compactMap { $0[0].flatMap { Int64($0) } })
            guard !fresh.isEmpty else { return [] }  // nothing written: the session rolls back
            // The notices to store, in outbox order, and how many each recipient gets.
            var planned: [(OutcomePublished, Planned)] = []
            var counts: [String: Int64] = [:]
            for outcome in unique where fresh.contains(outcome.outboxSeq) {
                for plan in Self.recipients(outcome) {
                    planned.append((outcome, plan))
                    counts[plan.recipient, default: 0] += 1
                }
            }
            let recipients = counts.keys.sorted()
            let heads = try await db.query(
                """
                INSERT INTO notifier.heads (recipient, seq)
                SELECT r, n FROM unnest($1::text[], $2::bigint[]) AS t(r, n) ORDER BY r
                ON CONFLICT (recipient) DO UPDATE SET seq = notifier.heads.seq + excluded.seq RETURNING recipient, seq
                """, [PGArray.text(recipients), PGArray.int64(recipients.map { counts[$0] ?? 0 })])
            // The next seq per recipient: its new head minus its count, plus one.
            var next: [String: Int64] = [:]
            for row in heads.rows {
                guard let recipient = row[0], let head = row[1].flatMap({ Int64($0) }), let count = counts[recipient] else {
                    continue
                }
                next[recipient] = head - count + 1
            }
            guard next.count == recipients.count else {
                throw PGError(sqlState: "XX000", message: "no sequence allocated", context: "notifier.heads")
            }
            var out: [Stored] = []
            out.reserveCapacity(planned.count)
            for (outcome, plan) in planned {
                guard let seq = next[plan.recipient] else { continue }
                next[plan.recipient] = seq + 1
                let notice = NoticeDelivered(
                    recipient: plan.recipient, seq: seq, eventType: plan.eventType,
                    dataJSON: NoticeData.json(
                        outcome, seq: seq, forTerminal: plan.forTerminal, eventType: plan.eventType, status: plan.status),
                    atMillis: outcome.atMillis)
                out.append(Stored(topic: plan.topic, notice: notice, outboxSeq: outcome.outboxSeq))
            }
            try await db.pipelineAll([
                PGStatement(
                    """
                    INSERT INTO notifier.notices (recipient, seq, event_type, data, at, outbox_seq)
                    SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::bigint[], $6::bigint[])
                    """,
                    [
                        PGArray.text(out.map(\.notice.recipient)), PGArray.int64(out.map(\.notice.seq)),
                        PGArray.text(out.map(\.notice.eventType)), PGArray.text(out.map(\.notice.dataJSON)),
                        PGArray.int64(out.map(\.notice.atMillis)), PGArray.int64(out.map(\.outboxSeq)),
                    ]),
                .commit,
            ])
            return out
        }
    }

    /// Only after commit: a notice published is a notice stored (a lost publish is replayed).
    private func publish(_ stored: [Stored]) {
        for item in stored {
            publish(item.topic, item.notice)
            noticeCounters[item.notice.eventType]?.increment()
        }
    }

    // MARK: notice.replay / notice.head

    func replay(_ request: NoticeReplay) async throws -> BusReply {
        guard request.limit <= Self.maxReplayLimit else {
            return .error(.badRequest, "limit_too_large", "a replay returns at most \(Self.maxReplayLimit) notices")
        }
        guard request.limit > 0 else { return .ok(NoticeBatch(notices: [])) }
        let rows = try await pool.query(
            """
            SELECT seq, event_type, data, at FROM notifier.notices
            WHERE recipient = $1 AND seq > $2 ORDER BY seq LIMIT $3
            """, [request.recipient, String(request.afterSeq), String(request.limit)])
        var notices: [NoticeDelivered] = []
        notices.reserveCapacity(rows.count)
        for row in 0..<rows.count {
            guard let seq = rows.int64(row, 0), let type = rows.string(row, 1), let data = rows.string(row, 2),
                let at = rows.int64(row, 3)
            else { continue }
            notices.append(NoticeDelivered(recipient: request.recipient, seq: seq, eventType: type, dataJSON: data, atMillis: at))
        }
        return .ok(NoticeBatch(notices: notices))
    }

    func head(_ recipient: String) async throws -> Int64 {
        let rows = try await pool.query("SELECT seq FROM notifier.heads WHERE recipient = $1", [recipient])
        return rows.count == 1 ? rows.int64(0, 0) ?? 0 : 0
    }

    /// Healthy when the database answers and no pooled connection is waiting to reconnect.
    public func healthCheck() async -> (Bool, String) {
        await pgHealthCheck(pool)
    }
}

/// The SSE `data:` JSON of a notice (snake_case keys), written by hand: small, fixed and hot.
enum NoticeData {
    static func json(
        _ o: OutcomePublished, seq: Int64, forTerminal: Bool, eventType: String? = nil, status: PaymentRequestStatus? = nil
    ) -> String {
        let eventType = eventType ?? o.eventType
        var out = "{"
        func key(_ name: String) {
            if out.count > 1 { out += "," }
            out += "\"\(name)\":"
        }
        func string(_ name: String, _ value: String) {
            key(name)
            escape(value, into: &out)
        }
        string("event_id", String(seq))
        string("type", eventType)
        string("request_id", o.requestId)
        string("status", (status ?? o.status).name)
        key("amount")
        out += String(o.amountMinor)
        string("currency", o.currency)
        string("reference", o.reference)
        if let payment = o.paymentId { string("payment_id", payment) }
        if let refund = o.refundId { string("refund_id", refund) }
        key("merchant")
        out += "{\"id\":"
        escape(o.merchantId, into: &out)
        out += ",\"name\":"
        escape(o.merchantName ?? "", into: &out)
        out += "}"
        if eventType == "payment.declined" || eventType == Notifier.attemptDeclined {
            key("error")
            out += "{\"code\":"
            escape(o.errorCode ?? "declined", into: &out)
            out += "}"
        }
        if let attempts = o.declinedAttempts {
            key("declined_attempts")
            out += String(attempts)
        }
        if forTerminal, let payer = o.payerAlias { string("payer", payer) }
        string("at", rfc3339(millis: o.atMillis))
        return out + "}"
    }

    static func escape(_ value: String, into out: inout String) {
        out += "\""
        for scalar in value.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if scalar.value < 0x20 || scalar.value == 0x2028 || scalar.value == 0x2029 {
                    let hex = String(scalar.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        out += "\""
    }

    /// RFC 3339 UTC with milliseconds, e.g. `2025-01-31T09:05:03.042Z` (civil-from-days, no Calendar).
    static func rfc3339(millis: Int64) -> String {
        let seconds = millis >= 0 ? millis / 1000 : (millis - 999) / 1000
        let ms = millis - seconds * 1000
        var days = seconds >= 0 ? seconds / 86_400 : (seconds - 86_399) / 86_400
        let secondOfDay = seconds - days * 86_400
        days += 719_468
        let era = (days >= 0 ? days : days - 146_096) / 146_097
        let dayOfEra = days - era * 146_097
        let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36_524 - dayOfEra / 146_096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
        let mp = (5 * dayOfYear + 2) / 153
        let day = dayOfYear - (153 * mp + 2) / 5 + 1
        let month = mp < 10 ? mp + 3 : mp - 9
        let year = yearOfEra + era * 400 + (month <= 2 ? 1 : 0)
        func pad(_ value: Int64, _ width: Int) -> String {
            let text = String(value)
            return text.count >= width ? text : String(repeating: "0", count: width - text.count) + text
        }
        return "\(pad(year, 4))-\(pad(month, 2))-\(pad(day, 2))T\(pad(secondOfDay / 3600, 2)):"
            + "\(pad(secondOfDay / 60 % 60, 2)):\(pad(secondOfDay % 60, 2)).\(pad(ms, 3))Z"
    }
}

/// Wiring for `main` and the tests.
public enum NotifierStage {
    public static func run(config: RuntimeConfig) async throws {
        let runtime = try Runtime(config: config)
        let publisher = try runtime.publisher()
        let notifier = Notifier(conninfo: config.databaseURL, logger: runtime.logger) { topic, notice in
            publisher.publish(topic: topic, type: .noticeDelivered, body: notice.encoded())
        }
        try await notifier.migrate()
        try await runtime.run(
            handler: { message in
                if message.envelope.type == .ping { return .ok(runtime.status()) }
                return await notifier.handle(message)
            }, healthCheck: { await notifier.healthCheck() })
    }
}
