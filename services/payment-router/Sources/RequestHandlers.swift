import Foundation
import Logging
import Postgres
import WiPayBus
import WiPayPayload

/// `request.create`, `request.get`, `request.cancel`: what terminals do with payment requests.
extension PaymentRouter {
    static let expiresInRange: ClosedRange<Int64> = 10...900

    /// A create whose fields passed the checks that need no I/O.
    struct CheckedCreate: Sendable {
        let create: RequestCreate
        let key: String
    }

    /// What the lookup says of a create: its answer now, or the insert of a new request.
    enum CreateVerdict: Sendable {
        case answer(BusReply)
        case insert(PGStatement, requestId: String)
    }

    /// One query: the first answer for the same key (same body → `exists`, another body → conflict), the
    /// terminal's merchant and the terminal's own name (both go into the signed payload).
    static let createLookupSQL = """
        SELECT tm.name, tm.currency, t.name, \(RequestRow.columns)
        FROM (SELECT 1) AS one
        LEFT JOIN (router.terminals t JOIN router.merchants tm ON tm.id = t.merchant_id) ON t.id = $1 AND t.merchant_id = $2
        LEFT JOIN (router.requests r JOIN router.merchants m ON m.id = r.merchant_id) ON r.terminal_id = $1 AND r.idem_key = $3
        """

    /// The insert answers with the whole row (no second read); none when a create with the same key won. The
    /// trace's `created` step is read from the row itself.
    static let createInsertSQL = """
        WITH r AS (
            INSERT INTO router.requests (id, merchant_id, terminal_id, amount, currency, reference, description, status,
                created_at, expires_at, payload, idem_key, body_hash)
            VALUES ($1, $2, $3, $4, $5, $6, $7, 1, $8, $9, $10, $11, $12)
            ON CONFLICT (terminal_id, idem_key) DO NOTHING RETURNING *)
        SELECT \(RequestRow.columns) FROM r JOIN router.merchants m ON m.id = r.merchant_id
        """

    static func check(_ create: RequestCreate) throws(RouterError) -> CheckedCreate {
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
        return CheckedCreate(create: create, key: key)
    }

    /// Judges one lookup row (`createLookupSQL`); for a new request, signs its payload and returns its insert.
    func evaluate(_ checked: CheckedCreate, columns: [String?]) throws -> CreateVerdict {
        let create = checked.create
        guard columns.count >= 3 + 22 else { throw RouterError.corrupt("request lookup") }
        if columns[3] != nil {
            let existing = try RequestRow(row: Array(columns[3...]))
            guard existing.bodyHash == create.bodyHash else { throw RouterError.idempotencyKeyReused }
            return .answer(.ok(existing.info, status: .exists))
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
                    amountMinor: create.amountMinor, currency: create.currency, expiresAtSeconds: expiresAtSeconds,
                    terminalName: columns[2], createdAtSeconds: now / 1000))
        } catch {
            logger.error("cannot sign a payload", metadata: ["error": "\(error)", "request.id": "\(id)"])
            throw RouterError(.internalError, "internal_error", "the payload could not be signed")
        }
        let insert = PGStatement(
            Self.createInsertSQL,
            [
                id, create.merchantId, create.terminalId, String(create.amountMinor), create.currency, create.reference,
                create.description, String(now), String(expiresAtSeconds * 1000), payload, checked.key, create.bodyHash,
            ])
        return .insert(insert, requestId: id)
    }

    /// The answer to a create whose insert ran: the new row, or (none inserted: a concurrent create with the
    /// same key won) that one's answer.
    func created(_ checked: CheckedCreate, inserted: PGRows, requestId: String) async throws -> BusReply {
        guard inserted.count == 1 else {
            guard let existing = try await existingRequest(terminalId: checked.create.terminalId, key: checked.key) else {
                throw RouterError(.unavailable, "router_busy", "retry with the same idempotency key")
            }
            guard existing.bodyHash == checked.create.bodyHash else { throw RouterError.idempotencyKeyReused }
            return .ok(existing.info, status: .exists)
        }
        let row = try RequestRow(row: inserted.rows[0])
        logger.debug(
            "payment request created",
            metadata: ["request.id": "\(requestId)", "terminal.id": "\(checked.create.terminalId)", "amount": "\(checked.create.amountMinor)"])
        return .ok(row.info)
    }

    /// One create on its own: the path a batch falls back to (see `createRequests`).
    func createRequest(_ create: RequestCreate) async throws -> BusReply {
        let checked = try Self.check(create)
        let found = try await db.query(Self.createLookupSQL, [create.terminalId, create.merchantId, checked.key])
        guard found.count == 1 else { throw RouterError.corrupt("request lookup") }
        switch try evaluate(checked, columns: found.rows[0]) {
        case .answer(let reply):
            return reply
        case .insert(let insert, let requestId):
            let inserted = try await db.query(insert.sql, insert.parameters)
            return try await created(checked, inserted: inserted, requestId: requestId)
        }
    }

    /// Creates as one batch: the lookups in one trip, the payloads signed, the inserts in one trip and one
    /// commit. A create the batch cannot take (its lookup failed, an insert of the batch failed, a concurrent
    /// create with its key) goes on its own afterwards: an invalid create fails alone.
    func createRequests(_ creates: [RequestCreate]) async -> [BusReply] {
        await handleBatch(
            creates, type: .requestCreate, check: { try Self.check($0) }, batch: { try await createBatch($0, lease: $1) },
            alone: { try await createRequest($0) }
        ).replies
    }

    /// The batch's two trips on `lease`: the lookups, then every insert in one commit. Returns the answers it
    /// decided; a create it leaves out goes on its own.
    private func createBatch(
        _ checked: [(index: Int, item: CheckedCreate)], lease: RouterDatabase.Lease
    ) async throws -> [(Int, BusReply)] {
        let lookups = checked.map {
            PGStatement(Self.createLookupSQL, [$0.item.create.terminalId, $0.item.create.merchantId, $0.item.key])
        }
        let found = try await lease.pipeline(lookups)
        var answered: [(Int, BusReply)] = []
        var inserts: [(index: Int, item: CheckedCreate, statement: PGStatement, requestId: String)] = []
        for ((index, item), result) in zip(checked, found) {
            guard case .success(let rows) = result, rows.count == 1 else { continue }
            do {
                switch try evaluate(item, columns: rows.rows[0]) {
                case .answer(let reply): answered.append((index, reply))
                case .insert(let statement, let id): inserts.append((index, item, statement, id))
                }
            } catch {
                answered.append((index, errorReply(error, type: .requestCreate)))
            }
        }
        guard !inserts.isEmpty else { return answered }
        // One implicit transaction: all inserts commit at the sync, or none does.
        let statements = inserts.map(\.statement)
        let written = try await lease.pipeline(statements)
        guard written.allSatisfy({ if case .success = $0 { true } else { false } }) else { return answered }
        for (insert, result) in zip(inserts, written) {
            guard case .success(let rows) = result, rows.count == 1 else { continue }
            answered.append((insert.index, try await created(insert.item, inserted: rows, requestId: insert.requestId)))
        }
        return answered
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

    /// A terminal's requests created since a time, newest first (its own only: the terminal and its merchant
    /// come from the gateway's authentication).
    func listRequests(_ list: RequestList) async throws -> BusReply {
        guard (1...Int64(RequestList.maxLimit)).contains(list.limit) else {
            throw RouterError.invalid("invalid_limit", "limit is 1 to \(RequestList.maxLimit)")
        }
        guard list.sinceMillis >= 0 else { throw RouterError.invalid("invalid_since", "since must not be before 1970") }
        guard RouterLimits.isPlausibleId(list.terminalId), RouterLimits.isPlausibleId(list.merchantId) else {
            return .ok(PaymentRequestPage(requests: []))
        }
        let rows = try await db.query(
            """
            SELECT \(RequestRow.columns) FROM \(RequestRow.from)
            WHERE r.terminal_id = $1 AND r.merchant_id = $2 AND r.created_at >= $3
            ORDER BY r.created_at DESC, r.id DESC LIMIT $4
            """, [list.terminalId, list.merchantId, String(list.sinceMillis), String(list.limit)])
        return .ok(PaymentRequestPage(requests: try rows.rows.map { try RequestRow(row: $0).info }))
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
