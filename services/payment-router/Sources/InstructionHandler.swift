import Foundation
import Logging
import Postgres
import WiPayBus
import WiPayPayload

/// `instruction.submit`: a device pays a request, exactly once (docs/payment-flow.md, "Paying, exactly once").
///
/// Replies: `ok` + `InstructionResult(succeeded)`; `exists` + the stored result for a repeat of a success;
/// `declined` (422) + `InstructionResult(declined, errorCode, errorMessage)` — a repeat of a decline answers
/// the same; other refusals are `ErrorBody`s (400, 403, 404, 409 `idempotency_key_reused`, 503).
extension PaymentRouter {
    /// Ledger declines of one *attempt*: no money moved, the request stays `pending` (payable by the same
    /// or another phone) until `maxDeclinedAttempts` attempts were declined.
    static let attemptDecliningCodes: Set<String> = ["insufficient_funds", "incorrect_pin", "pin_locked", "currency_mismatch"]

    /// 64 lowercase hex digits.
    static func isHexDigest(_ text: String) -> Bool {
        text.utf8.count == 64 && text.utf8.allSatisfy { (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }
    }

    /// The lookup behind every instruction, one statement: it remembers the device signature (shared by every
    /// gateway and router instance, kept across restarts) and reads the stored answer for (device, key), the
    /// device's wallet and the request the payload names. The outer query's snapshot cannot see a row a racing
    /// statement inserted, so a conflict that found nothing is read again (`evaluate`).
    static let instructionLookupSQL = """
        WITH sig AS (
            INSERT INTO router.signatures (digest, device_id, idem_key, body_hash, at)
            SELECT $4, $1, $2, $5, $6::bigint WHERE $4 <> '' ON CONFLICT (digest) DO NOTHING RETURNING digest)
        SELECT i.body_hash, i.status, encode(i.result, 'hex'), d.account_id, w.name, \(RequestRow.columns),
            (SELECT count(*) FROM sig), s.device_id, s.idem_key, s.body_hash
        FROM (SELECT 1) AS one
        LEFT JOIN router.instructions i ON i.device_id = $1 AND i.idem_key = $2
        LEFT JOIN (router.devices d JOIN router.wallets w ON w.account_id = d.account_id) ON d.id = $1
        LEFT JOIN (router.requests r JOIN router.merchants m ON m.id = r.merchant_id) ON r.id = $3
        LEFT JOIN router.signatures s ON s.digest = $4 AND $4 <> ''
        """

    /// The batch's lookup: the same row as `instructionLookupSQL`, but it only reads the signature memory
    /// (the "inserted" column is 1 when the digest is new); the batch remembers new signatures in the commit
    /// of its attempts (`signatureStatement`), so the batch costs one commit less.
    static let instructionBatchLookupSQL = """
        SELECT i.body_hash, i.status, encode(i.result, 'hex'), d.account_id, w.name, \(RequestRow.columns),
            CASE WHEN s.digest IS NULL THEN 1 ELSE 0 END, s.device_id, s.idem_key, s.body_hash
        FROM (SELECT 1) AS one
        LEFT JOIN router.instructions i ON i.device_id = $1 AND i.idem_key = $2
        LEFT JOIN (router.devices d JOIN router.wallets w ON w.account_id = d.account_id) ON d.id = $1
        LEFT JOIN (router.requests r JOIN router.merchants m ON m.id = r.merchant_id) ON r.id = $3
        LEFT JOIN router.signatures s ON s.digest = $4 AND $4 <> ''
        """

    /// Remembers a new device signature; answers with the row as stored, which is another instruction's
    /// when a racing batch remembered the same digest first (then this one is a replay).
    static func signatureStatement(_ checked: CheckedInstruction, nowMillis: Int64) -> PGStatement {
        let submit = checked.submit
        return PGStatement(
            """
            INSERT INTO router.signatures (digest, device_id, idem_key, body_hash, at) VALUES ($1, $2, $3, $4, $5)
            ON CONFLICT (digest) DO UPDATE SET digest = excluded.digest RETURNING device_id, idem_key, body_hash
            """, [submit.signatureDigest, submit.deviceId, checked.key, submit.bodyHash, String(nowMillis)])
    }

    /// An instruction whose fields passed the checks that need no I/O.
    struct CheckedInstruction: Sendable {
        let submit: InstructionSubmit
        let key: String
        /// The request the payload names, read without verifying it: it only picks the stored request to
        /// compare the payload with ("" when the payload names none).
        let claimedRequestId: String
        /// The expiry the payload states (trusted once the payload is found equal to the stored one).
        let claimedExpiresAtSeconds: Int64

        func lookupParameters(nowMillis: Int64) -> [String?] {
            [submit.deviceId, key, claimedRequestId, submit.signatureDigest, submit.bodyHash, String(nowMillis)]
        }

        /// For `instructionBatchLookupSQL`.
        var batchLookupParameters: [String?] { [submit.deviceId, key, claimedRequestId, submit.signatureDigest] }
    }

    /// What the lookup row says of an instruction: its answer now, or go on to pay `RequestRow`.
    enum LookupVerdict: Sendable {
        case answer(BusReply)
        case proceed(InstructionContext, RequestRow)
    }

    /// An instruction that may pay its request: who pays, with which transfer id, and its answer so far.
    struct InstructionContext: Sendable {
        let checked: CheckedInstruction
        let transferId: String
        let walletName: String
        let stored: StoredInstruction
        var submit: InstructionSubmit { checked.submit }
    }

    /// What an instruction does to its locked request before the ledger is asked.
    enum InstructionPlan: Sendable {
        /// Decided without the ledger.
        case decided(SettledInstruction)
        /// Ask the ledger for this transfer. `recorded`: the request already records this very payment (the
        /// sweeper found it after this instruction's first try died); the ledger answers `exists` with the
        /// balance and the request stays as it is.
        case post(TransferPost, recorded: Bool)
    }

    /// An instruction's writes (committed with its batch or its own transaction) and its stored answer.
    struct SettledInstruction: Sendable {
        var writes: RouterWrites
        var stored: StoredInstruction
        /// For metrics and logs: `succeeded` or the refusal's code.
        var outcome: String
    }

    /// The checks that need no I/O (a refusal is thrown).
    static func check(_ submit: InstructionSubmit) throws(RouterError) -> CheckedInstruction {
        let key = try RouterLimits.checkIdempotencyKey(submit.idempotencyKey)
        try RouterLimits.checkBodyHash(submit.bodyHash)
        guard RouterLimits.isPlausibleId(submit.deviceId) else {
            throw RouterError.notFound("device_not_found", "no device \(submit.deviceId)")
        }
        let digest = submit.signatureDigest
        guard digest.isEmpty || isHexDigest(digest) else {
            throw RouterError.invalid("bad_request", "signature_digest must be a lowercase hex SHA-256")
        }
        let claimed = PayloadVerifier.unverifiedFields(of: submit.payload)
        let requestId = claimed?.requestId ?? ""
        return CheckedInstruction(
            submit: submit, key: key, claimedRequestId: RouterLimits.isPlausibleId(requestId) ? requestId : "",
            claimedExpiresAtSeconds: claimed?.expiresAtSeconds ?? 0)
    }

    /// Judges one lookup row (`instructionLookupSQL`): a replayed signature, a repeat of a stored answer, a
    /// device paying from another wallet, a payload that is not the stored request's. The payload counts as
    /// genuine when it is byte for byte the one this router signed and stored; only one that is not gets
    /// its signature checked, to say why it is refused. `reread`: the signature row read again after a
    /// racing insert (device, key, body hash).
    func evaluate(
        _ checked: CheckedInstruction, columns: [String?], nowMillis: Int64,
        reread: (String) async throws -> (String?, String?, String?)?
    ) async throws -> LookupVerdict {
        let submit = checked.submit
        let key = checked.key
        let digest = submit.signatureDigest
        guard columns.count >= 5 + 22 + 4 else { throw RouterError.corrupt("instruction lookup") }
        if !digest.isEmpty {
            let tail = Array(columns.suffix(4))
            var seen: (device: String?, key: String?, bodyHash: String?) = (tail[1], tail[2], tail[3])
            if tail[0] == "0", seen.device == nil, let again = try await reread(digest) {
                // Inserted by a statement that raced this one: read it now that it has committed.
                seen = again
            }
            if tail[0] == "0", seen.device != submit.deviceId || seen.key != key || seen.bodyHash != submit.bodyHash {
                logger.warning(
                    "device signature replayed with another request",
                    metadata: ["device.id": "\(submit.deviceId)", "request.id": "\(checked.claimedRequestId)"])
                metrics.outcome("signature_replayed")
                throw RouterError(RouterError.unauthorized, "signature_replayed", "this signature was already used for another request")
            }
        }
        // 1. The same (device, key) again: the stored answer, or a conflict for another body.
        if let storedHash = columns[0] {
            guard storedHash == submit.bodyHash else { throw RouterError.idempotencyKeyReused }
            guard let status = columns[1].flatMap({ Int($0) }).map({ Status(rawValue: UInt16(clamping: $0)) }),
                let body = columns[2].flatMap(Hex.decode)
            else { throw RouterError.corrupt("instruction result") }
            return .answer(BusReply(status: status == .ok ? .exists : status, body: body))
        }
        // A device pays from its own wallet only.
        guard let deviceAccount = columns[3], let walletName = columns[4] else {
            throw RouterError.notFound("device_not_found", "no device \(submit.deviceId)")
        }
        guard deviceAccount == submit.accountId else {
            throw RouterError(RouterError.forbidden, "account_not_allowed", "a device pays from its own wallet only")
        }
        // 2. The payload against the stored request.
        let request: RequestRow? = columns[5] == nil ? nil : try RequestRow(row: Array(columns[5..<(5 + 22)]))
        guard let request, request.payload == submit.payload else {
            return .answer(payloadRefusal(submit, nowMillis: nowMillis))
        }
        // The payload's own expiry, as a verified payload's would be checked (the row's is the state machine's).
        if nowMillis / 1000 > checked.claimedExpiresAtSeconds {
            return .answer(
                declined(
                    InstructionResult(
                        status: .declined, paymentId: nil, requestId: request.id, amountMinor: request.amountMinor,
                        currency: request.currency, merchantId: request.merchantId, merchantName: request.merchantName,
                        balance: nil, errorCode: "request_expired", errorMessage: "this payment request has expired")))
        }
        let transferId = RouterIds.payment(deviceId: submit.deviceId, idempotencyKey: key)
        let stored = StoredInstruction(
            deviceId: submit.deviceId, idempotencyKey: key, bodyHash: submit.bodyHash, requestId: request.id,
            status: .ok, result: InstructionResult(
                status: .succeeded, paymentId: nil, requestId: request.id, amountMinor: request.amountMinor,
                currency: request.currency, merchantId: request.merchantId, merchantName: request.merchantName,
                balance: nil))
        return .proceed(
            InstructionContext(checked: checked, transferId: transferId, walletName: walletName, stored: stored), request)
    }

    /// Why a payload that is not a stored request's is refused: its signature, CRC and fields are checked.
    func payloadRefusal(_ submit: InstructionSubmit, nowMillis: Int64) -> BusReply {
        do {
            let payload = try payloads.verify(submit.payload, nowSeconds: nowMillis / 1000)
            return declined(
                InstructionResult(
                    status: .declined, paymentId: nil, requestId: payload.requestId, amountMinor: payload.amountMinor,
                    currency: payload.currency, merchantId: payload.merchantId, merchantName: payload.merchantName,
                    balance: nil, errorCode: "invalid_payload", errorMessage: "the payload matches no payment request"))
        } catch {
            switch error {
            case .invalid(let why):
                logger.info("invalid payload", metadata: ["device.id": "\(submit.deviceId)", "why": "\(why)"])
                return declined(
                    InstructionResult(
                        status: .declined, paymentId: nil, requestId: "", amountMinor: 0, currency: "", merchantId: "",
                        merchantName: "", balance: nil, errorCode: "invalid_payload",
                        errorMessage: "the payload is not a genuine WiPay payment request"))
            case .expired(let payload):
                return declined(
                    InstructionResult(
                        status: .declined, paymentId: nil, requestId: payload.requestId, amountMinor: payload.amountMinor,
                        currency: payload.currency, merchantId: payload.merchantId, merchantName: payload.merchantName,
                        balance: nil, errorCode: "request_expired", errorMessage: "this payment request has expired"))
            }
        }
    }

    /// The attempt row, committed before the ledger is asked: recovery knows who tried, with which transfer
    /// id (the trace's `instruction.received` step is read from it). With a device signature, only when the
    /// signature memory holds this very instruction (a racing replay that remembered the digest first gets
    /// no attempt).
    static func attemptStatement(_ context: InstructionContext, requestId: String, nowMillis: Int64) -> PGStatement {
        let submit = context.submit
        return PGStatement(
            """
            INSERT INTO router.attempts (transfer_id, request_id, device_id, account_id, at)
            SELECT $1, $2, $3, $4, $5::bigint
            WHERE $6 = '' OR EXISTS (
                SELECT 1 FROM router.signatures s WHERE s.digest = $6 AND s.device_id = $3 AND s.idem_key = $7 AND s.body_hash = $8)
            ON CONFLICT (transfer_id) DO NOTHING
            """,
            [
                context.transferId, requestId, submit.deviceId, submit.accountId, String(nowMillis), submit.signatureDigest,
                context.checked.key, submit.bodyHash,
            ])
    }

    /// The decision before the ledger, from the locked row.
    func plan(_ context: InstructionContext, row: RequestRow, atMillis at: Int64) -> InstructionPlan {
        var machine = row.machine(settings)
        var stored = context.stored
        var writes = RouterWrites()
        switch machine.instruction(nowMillis: at) {
        case .refuse where row.status == .succeeded && row.paymentId == context.transferId:
            return .post(Self.payment(context.transferId, context.submit, row), recorded: true)
        case .refuse(let refusal):
            stored.status = .declined
            stored.result.status = .declined
            stored.result.errorCode = refusal.code
            stored.result.errorMessage = refusal.message
            writes.instruction = stored
            writes.trace = [TraceRow(requestId: row.id, stage: TraceRow.router, event: "instruction.refused", detail: refusal.code)]
            return .decided(SettledInstruction(writes: writes, stored: stored, outcome: refusal.code))
        case .expiredNow:
            stored.status = .declined
            stored.result.status = .declined
            stored.result.errorCode = "request_expired"
            stored.result.errorMessage = "this payment request has expired"
            writes.instruction = stored
            writes.change = RequestChange(requestId: row.id, status: .expired)
            writes.outbox = [row.outcome(.expired, atMillis: at, deviceId: nil)]
            writes.trace = [TraceRow(requestId: row.id, stage: TraceRow.router, event: "expired", detail: "found due by an instruction")]
            return .decided(SettledInstruction(writes: writes, stored: stored, outcome: "request_expired"))
        case .pay:
            return .post(Self.payment(context.transferId, context.submit, row), recorded: false)
        }
    }

    /// The decision after the ledger answered. Throws (nothing written for this instruction) when the answer
    /// decides nothing about the request: a refusal of the instruction itself, or no answer.
    func settle(
        _ context: InstructionContext, row: RequestRow, answer: LedgerAnswer, recorded: Bool,
        lease: RouterDatabase.Lease, atMillis at: Int64
    ) async throws -> SettledInstruction {
        let submit = context.submit
        let transferId = context.transferId
        var machine = row.machine(settings)
        var stored = context.stored
        var writes = RouterWrites()
        if recorded {
            guard case .posted(let result) = answer else { throw RouterError.ledgerUnavailable }
            stored.result.paymentId = transferId
            stored.result.balance = result.debitBalance
            writes.instruction = stored
            return SettledInstruction(writes: writes, stored: stored, outcome: "succeeded")
        }
        switch answer {
        case .posted(let result):
            let alias = RouterIds.payerAlias(walletName: context.walletName)
            try machine.succeed()
            stored.result.paymentId = transferId
            stored.result.balance = result.debitBalance
            writes.instruction = stored
            writes.change = RequestChange(
                requestId: row.id, status: .succeeded, paymentId: transferId, postedAtMillis: result.postedAtMillis,
                payerAccountId: submit.accountId, deviceId: submit.deviceId, payerAlias: alias)
            writes.outbox = [
                row.outcome(
                    .succeeded, atMillis: result.postedAtMillis, deviceId: submit.deviceId, paymentId: transferId,
                    payerAlias: alias)
            ]
            // The trace's `ledger.posted` step is read from the request's payment columns.
            return SettledInstruction(writes: writes, stored: stored, outcome: "succeeded")
        case .refused(let status, let error) where status == .declined && Self.attemptDecliningCodes.contains(error.code):
            // The attempt is declined (the phone gets the 422); the request stays payable unless that was its
            // last allowed attempt.
            let attempt = try machine.declineAttempt()
            let attempts = Int64(machine.declinedAttempts)
            stored.status = .declined
            stored.result.status = .declined
            stored.result.errorCode = error.code
            stored.result.errorMessage = error.message
            writes.instruction = stored
            // The terminal hears `payment.attempt_declined` (no payer data); the device its own decline.
            writes.outbox = [
                row.outcome(
                    .pending, atMillis: at, deviceId: submit.deviceId, errorCode: error.code,
                    eventType: RequestStateMachine.attemptDeclinedEvent, declinedAttempts: attempts)
            ]
            let detail = "\(error.code) (attempt \(attempts) of \(machine.maxDeclinedAttempts))"
            writes.trace = [TraceRow(requestId: row.id, stage: TraceRow.ledger, event: "ledger.declined", detail: detail)]
            switch attempt {
            case .stillPending:
                writes.change = RequestChange(requestId: row.id, status: nil, declinedAttempt: true)
            case .exhausted:
                writes.change = RequestChange(
                    requestId: row.id, status: .declined, deviceId: submit.deviceId,
                    declineCode: RequestStateMachine.attemptsExhausted, declinedAttempt: true)
                writes.outbox.append(
                    row.outcome(
                        .declined, atMillis: at, deviceId: nil, errorCode: RequestStateMachine.attemptsExhausted,
                        declinedAttempts: attempts))
                writes.trace.append(
                    TraceRow(
                        requestId: row.id, stage: TraceRow.router, event: "declined",
                        detail: "\(RequestStateMachine.attemptsExhausted) after \(attempts) declined attempts"))
                logger.info(
                    "payment request declined: attempts exhausted",
                    metadata: ["request.id": "\(row.id)", "declined.attempts": "\(attempts)"])
            }
            return SettledInstruction(writes: writes, stored: stored, outcome: error.code)
        case .refused(_, let error) where error.code == "request_already_paid":
            // The ledger holds a payment this router has not recorded (it died before its commit): record that
            // payment now, and refuse this instruction.
            guard let record = try await lookupPayment(row.id) else { throw RouterError.ledgerUnavailable }
            writes = try await recordFoundPayment(record, row: row, lease: lease, atMillis: at, how: "found after request_already_paid")
            stored.status = .declined
            stored.result.status = .declined
            stored.result.errorCode = "request_already_paid"
            stored.result.errorMessage = "this payment request has already been paid"
            writes.instruction = stored
            return SettledInstruction(writes: writes, stored: stored, outcome: "request_already_paid")
        case .refused(let status, let error):
            // Not a decision about this request (a bad PIN format, an unknown account): nothing is written.
            throw RouterError(status, error.code, error.message)
        case .unavailable:
            throw RouterError.ledgerUnavailable
        }
    }

    /// After an instruction's commit: its metric, the relay's bell when it wrote outbox rows, a debug line.
    func finished(_ settled: SettledInstruction, requestId: String, deviceId: String) {
        metrics.outcome(settled.outcome)
        if !settled.writes.outbox.isEmpty { outboxBell.ring() }
        logger.debug(
            "instruction answered",
            metadata: ["request.id": "\(requestId)", "device.id": "\(deviceId)", "outcome": "\(settled.outcome)"])
    }

    /// The signature row `digest`, read again (after an insert that conflicted with a racing one).
    func rereadSignature(_ digest: String, query: (String, [String?]) async throws -> PGRows) async throws -> (String?, String?, String?)? {
        let again = try await query("SELECT device_id, idem_key, body_hash FROM router.signatures WHERE digest = $1", [digest])
        return again.count == 1 ? (again.string(0, 0), again.string(0, 1), again.string(0, 2)) : nil
    }

    /// One instruction on its own (docs/payment-flow.md, "Paying, exactly once"): the path a batch falls back
    /// to for an instruction it could not take (see `submitInstructions`).
    func submitInstruction(_ submit: InstructionSubmit) async throws -> BusReply {
        let checked = try Self.check(submit)
        let now = unixMillis()
        let found = try await db.query(Self.instructionLookupSQL, checked.lookupParameters(nowMillis: now))
        guard found.count == 1 else { throw RouterError.corrupt("instruction lookup") }
        let verdict = try await evaluate(checked, columns: found.rows[0], nowMillis: now) { digest in
            try await rereadSignature(digest) { try await db.query($0, $1) }
        }
        let context: InstructionContext
        let request: RequestRow
        switch verdict {
        case .answer(let reply): return reply
        case .proceed(let proceeding, let row): (context, request) = (proceeding, row)
        }
        // 3. The attempt commits on its own first (in the same trip as `BEGIN` and the row lock); 4. lock the
        // request, decide, ask the ledger, write the outcome: one transaction.
        let attempt = Self.attemptStatement(context, requestId: request.id, nowMillis: now)
        let settled = try await db.transaction(prelude: RouterDatabase.Statement(sql: attempt.sql, parameters: attempt.parameters)) {
            lease -> SettledInstruction in
            guard let row = try await lease.request(request.id, lock: true) else {
                throw RouterError.corrupt("request vanished")
            }
            let at = unixMillis()
            let settled: SettledInstruction
            switch plan(context, row: row, atMillis: at) {
            case .decided(let decided):
                settled = decided
            case .post(let post, let recorded):
                let answer = await postToLedger(post, correlation: row.id)
                settled = try await settle(context, row: row, answer: answer, recorded: recorded, lease: lease, atMillis: at)
            }
            try await lease.write(settled.writes, nowMillis: at, commit: true)
            return settled
        }
        finished(settled, requestId: request.id, deviceId: submit.deviceId)
        return Self.reply(settled.stored)
    }

    static func payment(_ transferId: String, _ submit: InstructionSubmit, _ row: RequestRow) -> TransferPost {
        TransferPost(
            transferId: transferId, kind: .payment, debitAccountId: submit.accountId,
            creditAccountId: row.merchantAccountId, amountMinor: row.amountMinor, currency: row.currency,
            paymentRequestId: row.id, pin: submit.pin)
    }

    static func reply(_ stored: StoredInstruction) -> BusReply {
        BusReply(status: stored.status, body: stored.result.encoded())
    }

    func declined(_ result: InstructionResult) -> BusReply {
        metrics.outcome(result.errorCode ?? "declined")
        return BusReply(status: .declined, body: result.encoded())
    }

    /// The writes that record a payment the ledger holds for `row` (found by `payment.lookup`): the request
    /// succeeds with the payer of the attempt that carried that transfer id.
    func recordFoundPayment(
        _ record: PaymentRecord, row: RequestRow, lease: RouterDatabase.Lease, atMillis: Int64, how: String
    ) async throws -> RouterWrites {
        var machine = row.machine(settings)
        try machine.succeed()
        let payer = try await lease.query(
            """
            SELECT a.device_id, w.name FROM router.attempts a LEFT JOIN router.wallets w ON w.account_id = a.account_id
            WHERE a.transfer_id = $1
            """, [record.transferId])
        let deviceId = payer.count == 1 ? payer.string(0, 0) : nil
        let walletName = payer.count == 1 ? payer.string(0, 1) : nil
        let alias = RouterIds.payerAlias(walletName: walletName ?? "")
        var writes = RouterWrites()
        writes.change = RequestChange(
            requestId: row.id, status: .succeeded, paymentId: record.transferId, postedAtMillis: record.postedAtMillis,
            payerAccountId: record.debitAccountId, deviceId: deviceId, payerAlias: alias)
        writes.outbox = [
            row.outcome(
                .succeeded, atMillis: record.postedAtMillis, deviceId: deviceId, paymentId: record.transferId,
                payerAlias: alias)
        ]
        writes.trace = [TraceRow(requestId: row.id, stage: TraceRow.ledger, event: "ledger.posted", detail: "\(record.transferId) (\(how))")]
        return writes
    }
}
