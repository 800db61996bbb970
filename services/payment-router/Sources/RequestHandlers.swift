import Foundation
import Logging
import WiPayBus
import WiPayPayload

/// `request.create`, `request.get`, `request.cancel`: what terminals do with payment requests.
extension PaymentRouter {
    static let expiresInRange: ClosedRange<Int64> = 10...900

    func createRequest(_ create: RequestCreate) async throws -> BusReply {
        let key = try RouterLimits.checkIdempotencyKey(create.idempotencyKey)
        try RouterLimits.checkBodyHash(create.bodyHash)
        try RouterLimits.checkAmount(create.amountMinor)
        try RouterLimits.checkCurrency(create.currency)
        guard !create.reference.isEmpty, create.reference.utf8.count <= 64 else {
            throw RouterError.invalid("invalid_reference", "a reference is 1 to 64 bytes")
        }
        if let description = create.description, description.utf8.count > 256 {
            throw RouterError.invalid("invalid_description", "a description is at most 256 bytes")
        }
        guard Self.expiresInRange.contains(create.expiresInSeconds) else {
            throw RouterError.invalid("invalid_expires_in", "expires_in is 10 to 900 seconds")
        }
        guard RouterLimits.isPlausibleId(create.terminalId), RouterLimits.isPlausibleId(create.merchantId) else {
            throw RouterError.notFound("terminal_not_found", "no terminal \(create.terminalId) of merchant \(create.merchantId)")
        }
        // One query: the first answer for the same key (same body → `exists`, another body → conflict), and
        // the terminal's merchant.
        let found = try await db.query(
            """
            SELECT tm.name, tm.currency, \(RequestRow.columns)
            FROM (SELECT 1) AS one
            LEFT JOIN (router.terminals t JOIN router.merchants tm ON tm.id = t.merchant_id) ON t.id = $1 AND t.merchant_id = $2
            LEFT JOIN (router.requests r JOIN router.merchants m ON m.id = r.merchant_id) ON r.terminal_id = $1 AND r.idem_key = $3
            """, [create.terminalId, create.merchantId, key])
        guard found.count == 1 else { throw RouterError.corrupt("request lookup") }
        let columns = found.rows[0]
        if columns[2] != nil {
            let existing = try RequestRow(row: Array(columns[2...]))
            guard existing.bodyHash == create.bodyHash else { throw RouterError.idempotencyKeyReused }
            return .ok(existing.info, status: .exists)
        }
        guard let merchantName = columns[0], let merchantCurrency = columns[1] else {
            throw RouterError.notFound("terminal_not_found", "no terminal \(create.terminalId) of merchant \(create.merchantId)")
        }
        guard merchantCurrency == create.currency else {
            // Well-formed, but against this merchant's rule: a 422 (the contract's "declined by a business rule").
            throw RouterError(.declined, "currency_mismatch", "this merchant takes \(merchantCurrency), not \(create.currency)")
        }
        let id = RouterIds.request()
        let now = unixMillis()
        let expiresAtSeconds = now / 1000 + create.expiresInSeconds
        let payload: String
        do {
            payload = try payloads.sign(
                PaymentPayload(
                    requestId: id, merchantId: create.merchantId, merchantName: merchantName,
                    amountMinor: create.amountMinor, currency: create.currency, expiresAtSeconds: expiresAtSeconds))
        } catch {
            logger.error("cannot sign a payload", metadata: ["error": "\(error)", "request.id": "\(id)"])
            throw RouterError(.internalError, "internal_error", "the payload could not be signed")
        }
        // The insert answers with the whole row (no second read).
        let inserted = try await db.query(
            """
            WITH r AS (
                INSERT INTO router.requests (id, merchant_id, terminal_id, amount, currency, reference, description, status,
                    created_at, expires_at, payload, idem_key, body_hash)
                VALUES ($1, $2, $3, $4, $5, $6, $7, 1, $8, $9, $10, $11, $12)
                ON CONFLICT (terminal_id, idem_key) DO NOTHING RETURNING *),
            t AS (INSERT INTO router.trace (request_id, at, stage, event, detail)
                SELECT id, $8, 'payment-router', 'created', $13 FROM r)
            SELECT \(RequestRow.columns) FROM r JOIN router.merchants m ON m.id = r.merchant_id
            """,
            [
                id, create.merchantId, create.terminalId, String(create.amountMinor), create.currency, create.reference,
                create.description, String(now), String(expiresAtSeconds * 1000), payload, key, create.bodyHash,
                "\(create.amountMinor) \(create.currency) by terminal \(create.terminalId), expires in \(create.expiresInSeconds)s",
            ])
        guard inserted.count == 1 else {
            // A concurrent create with the same key won: answer as its repeat.
            guard let existing = try await existingRequest(terminalId: create.terminalId, key: key) else {
                throw RouterError(.unavailable, "router_busy", "retry with the same idempotency key")
            }
            guard existing.bodyHash == create.bodyHash else { throw RouterError.idempotencyKeyReused }
            return .ok(existing.info, status: .exists)
        }
        let row = try RequestRow(row: inserted.rows[0])
        logger.debug(
            "payment request created",
            metadata: ["request.id": "\(id)", "terminal.id": "\(create.terminalId)", "amount": "\(create.amountMinor)"])
        return .ok(row.info)
    }

    private func existingRequest(terminalId: String, key: String) async throws -> RequestRow? {
        let rows = try await db.query(
            "SELECT \(RequestRow.columns) FROM \(RequestRow.from) WHERE r.terminal_id = $1 AND r.idem_key = $2",
            [terminalId, key])
        return rows.count == 1 ? try RequestRow(row: rows.rows[0]) : nil
    }

    func getRequest(_ ref: RequestRef) async throws -> BusReply {
        guard let row = try await db.withLease({ try await $0.request(ref.requestId) }), row.merchantId == ref.merchantId
        else { throw Self.requestNotFound(ref.requestId) }
        return .ok(row.info)
    }

    static func requestNotFound(_ id: String) -> RouterError {
        .notFound("request_not_found", "no payment request \(id)")
    }

    func cancelRequest(_ ref: RequestRef) async throws -> BusReply {
        let key = try RouterLimits.checkIdempotencyKey(ref.idempotencyKey)
        let now = unixMillis()
        let (reply, wroteOutbox) = try await db.transaction { lease -> (BusReply, Bool) in
            guard let row = try await lease.request(ref.requestId, lock: true), row.merchantId == ref.merchantId else {
                throw Self.requestNotFound(ref.requestId)
            }
            if row.status == .canceled && row.cancelKey == key { return (.ok(row.info, status: .exists), false) }
            var machine = row.machine(settings)
            let outcome: RequestStateMachine.CancelOutcome
            do throws(RequestStateMachine.Refusal) {
                outcome = try machine.cancel(nowMillis: now)
            } catch {
                throw RouterError(.conflict, "request_not_pending", "the payment request is already \(error.status.name)")
            }
            var writes = RouterWrites()
            switch outcome {
            case .canceled:
                writes.change = RequestChange(requestId: row.id, status: .canceled, cancelKey: key)
                writes.outbox = [row.outcome(.canceled, atMillis: now, deviceId: nil)]
                writes.trace = [TraceRow(requestId: row.id, stage: TraceRow.router, event: "canceled", detail: "by the terminal")]
            case .expiredInstead:
                writes.change = RequestChange(requestId: row.id, status: .expired)
                writes.outbox = [row.outcome(.expired, atMillis: now, deviceId: nil)]
                writes.trace = [TraceRow(requestId: row.id, stage: TraceRow.router, event: "expired", detail: "found due by a cancel")]
            }
            try await lease.write(writes, nowMillis: now)
            guard outcome == .canceled else {
                return (
                    RouterError(.conflict, "request_not_pending", "the payment request is already expired").reply, true
                )
            }
            var info = row.info
            info.status = .canceled
            return (.ok(info), true)
        }
        if wroteOutbox {
            outboxBell.ring()
            metrics.outcome(reply.status.isSuccess ? "canceled" : "expired")
        }
        return reply
    }
}
