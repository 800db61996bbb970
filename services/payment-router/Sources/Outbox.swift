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
    public func relay(batch: Int = 256) -> OutboxRelay { OutboxRelay(router: self, batch: max(1, batch)) }

    /// One pass: claims up to `limit` rows in order and hands them to the notifier in one
    /// `outcome.deliver.batch` (one notifier commit for all). When the notifier refuses the batch (or is an
    /// older one without batches), the rows go one by one, stopping at the first it does not take. The
    /// delivered marks commit without waiting for the disk (`synchronous_commit = off`): a mark lost in a
    /// crash only makes the row go again, and the notifier deduplicates it by `outbox_seq`.
    /// Returns how many were delivered and whether every claimed row was.
    func relayOnce(limit: Int) async throws -> (delivered: Int, complete: Bool) {
        let (outcomes, complete, claimed) = try await db.transaction { lease -> ([OutcomePublished], Bool, Int) in
            let rows = try await lease.query(
                """
                SELECT seq, encode(body, 'hex') FROM router.outbox WHERE delivered_at IS NULL
                ORDER BY seq LIMIT \(limit) FOR UPDATE SKIP LOCKED
                """)
            guard !rows.rows.isEmpty else { return ([], true, 0) }
            var claimed: [OutcomePublished] = []
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
                claimed.append(outcome)
            }
            var delivered: [OutcomePublished] = []
            switch await deliver(batch: claimed) {
            case .delivered:
                delivered = claimed
            case .failed:
                complete = false
            case .refused:
                for outcome in claimed {
                    guard await deliver(outcome) else {
                        complete = false
                        break
                    }
                    delivered.append(outcome)
                }
            }
            if !delivered.isEmpty {
                let now = unixMillis()
                let seqs = delivered.map(\.outboxSeq)
                // The trace's `outbox.delivered` steps are read from `delivered_at`.
                try await lease.queryAndCommit(
                    "UPDATE router.outbox SET delivered_at = $1 WHERE seq = ANY($2::bigint[])",
                    [String(now), PGArray.int64(seqs)], setting: "SET LOCAL synchronous_commit = off")
            }
            return (delivered, complete, rows.rows.count)
        }
        // The backlog gauge without a count on every pass: a short pass that delivered everything saw the
        // whole backlog; only a full (or failed) one asks for the count.
        if claimed < limit && complete {
            metrics.outboxPending.record(0)
        } else {
            let pending = try await db.query("SELECT count(*) FROM router.outbox WHERE delivered_at IS NULL").int64(0, 0)
            metrics.outboxPending.record(pending ?? 0)
        }
        if let publisher {
            for outcome in outcomes {
                publisher.publish(
                    topic: Topic.outcomePrefix + outcome.requestId, type: .outcomePublished, body: outcome.encoded(),
                    correlation: outcome.requestId)
            }
        }
        return (outcomes.count, complete)
    }

    enum BatchDelivery {
        /// The notifier stored every outcome of the batch (now or before).
        case delivered
        /// It refused the batch as such (an outcome it cannot take, or no batches): try them one by one.
        case refused
        /// No answer, or it is unavailable: try again later.
        case failed
    }

    /// Sends `outcomes` to the notifier in one `outcome.deliver.batch`.
    func deliver(batch outcomes: [OutcomePublished]) async -> BatchDelivery {
        guard !outcomes.isEmpty else { return .delivered }
        guard outcomes.count > 1 else { return await deliver(outcomes[0]) ? .delivered : .failed }
        do {
            let first = outcomes[0].outboxSeq
            let reply = try await bus.send(
                service: Self.notifierService, type: .outcomeDeliverBatch, body: OutcomeBatch(outcomes: outcomes).encoded(),
                requestId: "outbox-\(first)-\(outcomes.count)-\(bus.newRequestId())", correlation: outcomes[0].requestId)
            let status = reply.envelope.status
            if status == .ok || status == .exists { return .delivered }
            if status == .badRequest || status == .unknownType { return .refused }
            let error = (try? ErrorBody.decode(reply.body))?.code ?? "?"
            logger.warning(
                "notifier refused a batch of outcomes; will retry",
                metadata: ["outbox.seq": "\(first)", "count": "\(outcomes.count)", "status": "\(status)", "code": "\(error)"])
            return .failed
        } catch {
            logger.warning("notifier did not answer; will retry", metadata: ["outbox.seq": "\(outcomes[0].outboxSeq)"])
            return .failed
        }
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
