import Logging
import ServiceLifecycle
import WiPayBus

/// Expires pending requests past their expiry, in small batches (`FOR UPDATE SKIP LOCKED`, so router
/// instances share the work). A request with attempts is first checked with the ledger (`payment.lookup`):
/// when the ledger holds its payment (the router died between the ledger's answer and its own commit), it
/// becomes `succeeded` instead. A request whose last attempt is younger than `attemptGrace` waits: its
/// ledger call may still be on its way.
public struct Sweeper: Service {
    let router: PaymentRouter
    let batch: Int

    /// How often seen device signatures older than the replay memory are deleted.
    static let signaturePurgeInterval: Duration = .seconds(30)

    public func run() async throws {
        var lastPurge = ContinuousClock.now - Self.signaturePurgeInterval
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            var full = false
            do {
                full = try await router.sweepOnce(limit: batch) >= batch
            } catch {
                router.logger.warning("sweep failed", metadata: ["error": "\(error)"])
            }
            if ContinuousClock.now - lastPurge >= Self.signaturePurgeInterval {
                lastPurge = .now
                do {
                    try await router.purgeSignatures()
                } catch {
                    router.logger.warning("signature purge failed", metadata: ["error": "\(error)"])
                }
            }
            if !full { try? await Task.sleep(for: router.settings.sweepInterval) }
        }
    }
}

extension PaymentRouter {
    public func sweeper(batch: Int = 100) -> Sweeper { Sweeper(router: self, batch: max(1, batch)) }

    /// Forgets device signatures past the replay memory (they are refused as stale by every gateway by then).
    func purgeSignatures() async throws {
        let cutoff = unixMillis() - Self.signatureMemoryMillis
        try await db.query("DELETE FROM router.signatures WHERE at < $1", [String(cutoff)])
    }

    /// One batch; returns how many due requests it looked at.
    @discardableResult
    func sweepOnce(limit: Int) async throws -> Int {
        let now = unixMillis()
        let graceMillis = Self.nanoseconds(settings.attemptGrace) / 1_000_000
        let (seen, changes) = try await db.transaction { lease -> (Int, [String]) in
            let rows = try await lease.query(
                """
                SELECT \(RequestRow.columns),
                    (SELECT max(a.at) FROM router.attempts a WHERE a.request_id = r.id)
                FROM \(RequestRow.from) WHERE r.status = 1 AND r.expires_at <= $1
                ORDER BY r.expires_at LIMIT \(limit) FOR UPDATE OF r SKIP LOCKED
                """, [String(now)])
            var writes = RouterWrites()
            var changes: [String] = []
            for raw in rows.rows {
                let row = try RequestRow(row: raw)
                let lastAttempt = raw.last.flatMap { $0 }.flatMap { Int64($0) }
                if let lastAttempt {
                    if lastAttempt > now - graceMillis { continue }
                    let record: PaymentRecord?
                    do {
                        record = try await lookupPayment(row.id)
                    } catch {
                        continue  // the ledger is not answering: decide next time
                    }
                    if let record {
                        let found = try await recordFoundPayment(record, row: row, lease: lease, atMillis: now, how: "found by the sweeper")
                        writes.change = found.change
                        writes.outbox = found.outbox
                        writes.trace = found.trace
                        try await lease.write(writes, nowMillis: now)
                        changes.append("succeeded")
                        continue
                    }
                }
                var machine = row.machine(settings)
                try machine.expire(nowMillis: now)
                writes.change = RequestChange(requestId: row.id, status: .expired)
                writes.outbox = [row.outcome(.expired, atMillis: now, deviceId: nil)]
                writes.trace = [TraceRow(requestId: row.id, stage: TraceRow.router, event: "expired", detail: "by the sweeper")]
                try await lease.write(writes, nowMillis: now)
                changes.append("expired")
            }
            return (rows.count, changes)
        }
        if !changes.isEmpty {
            outboxBell.ring()
            for change in changes { metrics.outcome(change) }
            logger.debug("swept", metadata: ["changed": "\(changes.count)"])
        }
        return seen
    }
}
