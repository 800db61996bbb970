import Logging
import Postgres
import ServiceLifecycle
import WiPayBus

/// The outbox relay (one in every router instance): claims undelivered rows (`FOR UPDATE SKIP LOCKED`, so
/// instances share the work), sends each to the notifier with `outcome.deliver` until it answers `ok` or
/// `exists`, marks it delivered, then publishes it on `outcome.<request id>`. The notifier deduplicates by
/// `outbox_seq`, so a row delivered twice (a relay that died before its commit) makes one notice.
public struct OutboxRelay: Service {
    let router: PaymentRouter
    /// Rows per transaction.
    let batch: Int

    public func run() async throws {
        let logger = router.logger
        var backoff = Duration.milliseconds(100)
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            do {
                let (delivered, complete) = try await router.relayOnce(limit: batch)
                backoff = .milliseconds(100)
                if complete && delivered < batch {
                    await router.outboxBell.wait(timeout: router.settings.outboxInterval)
                } else if !complete {
                    try? await Task.sleep(for: .milliseconds(200))
                }
            } catch {
                logger.warning("outbox relay pass failed", metadata: ["error": "\(error)"])
                try? await Task.sleep(for: backoff)
                backoff = min(backoff * 2, .seconds(5))
            }
        }
    }
}

extension PaymentRouter {
    /// The relay service of this router.
    public func relay(batch: Int = 50) -> OutboxRelay { OutboxRelay(router: self, batch: max(1, batch)) }

    /// One pass: delivers up to `limit` rows in order; stops at the first the notifier does not take.
    /// Returns how many were delivered and whether every claimed row was.
    func relayOnce(limit: Int) async throws -> (delivered: Int, complete: Bool) {
        let (outcomes, complete, pending) = try await db.transaction { lease -> ([OutcomePublished], Bool, Int64) in
            let rows = try await lease.query(
                """
                SELECT seq, encode(body, 'hex') FROM router.outbox WHERE delivered_at IS NULL
                ORDER BY seq LIMIT \(limit) FOR UPDATE SKIP LOCKED
                """)
            var delivered: [OutcomePublished] = []
            var complete = true
            for row in rows.rows {
                guard let seq = row[0].flatMap({ Int64($0) }), let body = row[1].flatMap(Hex.decode),
                    var outcome = try? OutcomePublished.decode(body)
                else {
                    logger.error("undecodable outbox row", metadata: ["outbox.seq": "\(row[0] ?? "?")"])
                    complete = false
                    break
                }
                outcome.outboxSeq = seq
                guard await deliver(outcome) else {
                    complete = false
                    break
                }
                delivered.append(outcome)
            }
            if !delivered.isEmpty {
                let now = unixMillis()
                let seqs = delivered.map(\.outboxSeq)
                try await lease.query(
                    """
                    WITH d AS (UPDATE router.outbox SET delivered_at = $1 WHERE seq = ANY($2::bigint[]))
                    INSERT INTO router.trace (request_id, at, stage, event, detail)
                    SELECT request_id, $1, 'notifier', 'outbox.delivered', event FROM unnest($3::text[], $4::text[]) AS t(request_id, event)
                    """,
                    [
                        String(now), PGArray.int64(seqs), PGArray.text(delivered.map(\.requestId)),
                        PGArray.text(delivered.map { "\($0.eventType) #\($0.outboxSeq)" }),
                    ])
            }
            let pending = try await lease.query("SELECT count(*) FROM router.outbox WHERE delivered_at IS NULL").int64(0, 0)
            return (delivered, complete, pending ?? 0)
        }
        metrics.outboxPending.record(pending)
        if let publisher {
            for outcome in outcomes {
                publisher.publish(
                    topic: Topic.outcomePrefix + outcome.requestId, type: .outcomePublished, body: outcome.encoded(),
                    correlation: outcome.requestId)
            }
        }
        return (outcomes.count, complete)
    }

    /// Sends one outcome to the notifier; true once it answered `ok` or `exists`.
    func deliver(_ outcome: OutcomePublished) async -> Bool {
        do {
            let reply = try await bus.send(
                service: Self.notifierService, type: .outcomeDeliver, body: outcome.encoded(),
                requestId: "outbox-\(outcome.outboxSeq)-\(bus.newRequestId())", correlation: outcome.requestId)
            let status = reply.envelope.status
            if status == .ok || status == .exists { return true }
            let error = (try? ErrorBody.decode(reply.body))?.code ?? "?"
            logger.warning(
                "notifier refused an outcome; will retry",
                metadata: ["outbox.seq": "\(outcome.outboxSeq)", "status": "\(status)", "code": "\(error)"])
            return false
        } catch {
            logger.warning("notifier did not answer; will retry", metadata: ["outbox.seq": "\(outcome.outboxSeq)"])
            return false
        }
    }
}
