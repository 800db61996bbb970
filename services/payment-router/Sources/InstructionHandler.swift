import Foundation
import Logging
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

    func submitInstruction(_ submit: InstructionSubmit) async throws -> BusReply {
        let key = try RouterLimits.checkIdempotencyKey(submit.idempotencyKey)
        try RouterLimits.checkBodyHash(submit.bodyHash)
        guard RouterLimits.isPlausibleId(submit.deviceId) else {
            throw RouterError.notFound("device_not_found", "no device \(submit.deviceId)")
        }
        // The payload is checked first (no I/O), so one query can fetch everything the checks below need:
        // the stored answer for (device, key), the device's wallet and the request the payload names.
        let now = unixMillis()
        let verified = Result { () throws(PayloadError) -> PaymentPayload in
            try payloads.verify(submit.payload, nowSeconds: now / 1000)
        }
        let payloadRequestId = (try? verified.get())?.requestId ?? ""
        let digest = submit.signatureDigest
        guard digest.isEmpty || Self.isHexDigest(digest) else {
            throw RouterError.invalid("bad_request", "signature_digest must be a lowercase hex SHA-256")
        }
        // The signature is remembered (shared by every gateway and router instance, kept across restarts)
        // in the same statement: one round trip. The outer query's snapshot cannot see a row a racing
        // statement inserted, so a conflict that found nothing is read again below.
        let found = try await db.query(
            """
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
            """,
            [
                submit.deviceId, key, RouterLimits.isPlausibleId(payloadRequestId) ? payloadRequestId : "", digest,
                submit.bodyHash, String(now),
            ])
        guard found.count == 1 else { throw RouterError.corrupt("instruction lookup") }
        let columns = found.rows[0]
        if !digest.isEmpty {
            let tail = Array(columns.suffix(4))
            var seen: (device: String?, key: String?, bodyHash: String?) = (tail[1], tail[2], tail[3])
            if tail[0] == "0", seen.device == nil {
                // Inserted by a statement that raced this one: read it now that it has committed.
                let again = try await db.query(
                    "SELECT device_id, idem_key, body_hash FROM router.signatures WHERE digest = $1", [digest])
                if again.count == 1 { seen = (again.string(0, 0), again.string(0, 1), again.string(0, 2)) }
            }
            if tail[0] == "0", seen.device != submit.deviceId || seen.key != key || seen.bodyHash != submit.bodyHash {
                logger.warning(
                    "device signature replayed with another request",
                    metadata: ["device.id": "\(submit.deviceId)", "request.id": "\(payloadRequestId)"])
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
            return BusReply(status: status == .ok ? .exists : status, body: body)
        }
        // A device pays from its own wallet only.
        guard let deviceAccount = columns[3], let walletName = columns[4] else {
            throw RouterError.notFound("device_not_found", "no device \(submit.deviceId)")
        }
        guard deviceAccount == submit.accountId else {
            throw RouterError(RouterError.forbidden, "account_not_allowed", "a device pays from its own wallet only")
        }
        // 2. The payload: signature, CRC and fields, then against the stored request.
        let payload: PaymentPayload
        switch verified {
        case .success(let verifiedPayload):
            payload = verifiedPayload
        case .failure(let error):
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
        let request: RequestRow? = columns[5] == nil ? nil : try RequestRow(row: Array(columns[5...]))
        guard let request, request.payload == submit.payload else {
            return declined(
                InstructionResult(
                    status: .declined, paymentId: nil, requestId: payload.requestId, amountMinor: payload.amountMinor,
                    currency: payload.currency, merchantId: payload.merchantId, merchantName: payload.merchantName,
                    balance: nil, errorCode: "invalid_payload", errorMessage: "the payload matches no payment request"))
        }
        // 3. The attempt, committed before the ledger is asked: recovery knows who tried, with which id. It is
        // the transaction's prelude: it commits on its own, in the same trip as `BEGIN` and the row lock.
        let transferId = RouterIds.payment(deviceId: submit.deviceId, idempotencyKey: key)
        let attempt = RouterDatabase.Statement(
            sql: """
                WITH a AS (INSERT INTO router.attempts (transfer_id, request_id, device_id, account_id, at)
                    VALUES ($1, $2, $3, $4, $5) ON CONFLICT (transfer_id) DO NOTHING RETURNING request_id)
                INSERT INTO router.trace (request_id, at, stage, event, detail)
                SELECT request_id, $5, 'payment-router', 'instruction.received', $6 FROM a
                """,
            parameters: [transferId, request.id, submit.deviceId, submit.accountId, String(now), "from device \(submit.deviceId)"])
        // 4. Lock the request, decide, ask the ledger, write the outcome; one transaction.
        let instruction = StoredInstruction(
            deviceId: submit.deviceId, idempotencyKey: key, bodyHash: submit.bodyHash, requestId: request.id,
            status: .ok, result: InstructionResult(
                status: .succeeded, paymentId: nil, requestId: request.id, amountMinor: request.amountMinor,
                currency: request.currency, merchantId: request.merchantId, merchantName: request.merchantName,
                balance: nil))
        let (reply, outcome) = try await db.transaction(prelude: attempt) { lease -> (BusReply, String) in
            guard let row = try await lease.request(request.id, lock: true) else {
                throw RouterError.corrupt("request vanished")
            }
            let at = unixMillis()
            var machine = row.machine(settings)
            var writes = RouterWrites()
            var stored = instruction
            switch machine.instruction(nowMillis: at) {
            case .refuse where row.status == .succeeded && row.paymentId == transferId:
                // This device's own payment, recorded by the sweeper after this instruction's first try died:
                // the ledger answers `exists` with the balance; the request stays as it is.
                guard case .posted(let result) = await postToLedger(Self.payment(transferId, submit, row), correlation: row.id)
                else { throw RouterError.ledgerUnavailable }
                stored.result.paymentId = transferId
                stored.result.balance = result.debitBalance
                writes.instruction = stored
                try await lease.write(writes, nowMillis: at, commit: true)
                return (Self.reply(stored), "succeeded")
            case .refuse(let refusal):
                stored.status = .declined
                stored.result.status = .declined
                stored.result.errorCode = refusal.code
                stored.result.errorMessage = refusal.message
                writes.instruction = stored
                writes.trace = [
                    TraceRow(requestId: row.id, stage: TraceRow.router, event: "instruction.refused", detail: refusal.code)
                ]
                try await lease.write(writes, nowMillis: at, commit: true)
                return (Self.reply(stored), refusal.code)
            case .expiredNow:
                stored.status = .declined
                stored.result.status = .declined
                stored.result.errorCode = "request_expired"
                stored.result.errorMessage = "this payment request has expired"
                writes.instruction = stored
                writes.change = RequestChange(requestId: row.id, status: .expired)
                writes.outbox = [row.outcome(.expired, atMillis: at, deviceId: nil)]
                writes.trace = [
                    TraceRow(requestId: row.id, stage: TraceRow.router, event: "expired", detail: "found due by an instruction")
                ]
                try await lease.write(writes, nowMillis: at, commit: true)
                return (Self.reply(stored), "request_expired")
            case .pay:
                break
            }
            switch await postToLedger(Self.payment(transferId, submit, row), correlation: row.id) {
            case .posted(let result):
                let alias = RouterIds.payerAlias(walletName: walletName)
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
                writes.trace = [TraceRow(requestId: row.id, stage: TraceRow.ledger, event: "ledger.posted", detail: transferId)]
                try await lease.write(writes, nowMillis: at, commit: true)
                return (Self.reply(stored), "succeeded")
            case .refused(let status, let error) where status == .declined && Self.attemptDecliningCodes.contains(error.code):
                // The attempt is declined (the phone gets the 422); the request stays payable unless that was
                // its last allowed attempt.
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
                try await lease.write(writes, nowMillis: at, commit: true)
                return (Self.reply(stored), error.code)
            case .refused(_, let error) where error.code == "request_already_paid":
                // The ledger holds a payment this router has not recorded (it died before its commit): record
                // that payment now, and refuse this instruction.
                guard let record = try await lookupPayment(row.id) else { throw RouterError.ledgerUnavailable }
                writes = try await recordFoundPayment(record, row: row, lease: lease, atMillis: at, how: "found after request_already_paid")
                stored.status = .declined
                stored.result.status = .declined
                stored.result.errorCode = "request_already_paid"
                stored.result.errorMessage = "this payment request has already been paid"
                writes.instruction = stored
                try await lease.write(writes, nowMillis: at, commit: true)
                return (Self.reply(stored), "request_already_paid")
            case .refused(let status, let error):
                // Not a decision about this request (a bad PIN format, an unknown account): nothing is written.
                throw RouterError(status, error.code, error.message)
            case .unavailable:
                throw RouterError.ledgerUnavailable
            }
        }
        metrics.outcome(outcome)
        if outcome == "succeeded" || Self.attemptDecliningCodes.contains(outcome) || outcome == "request_expired"
            || outcome == "request_already_paid"
        {
            outboxBell.ring()
        }
        logger.debug(
            "instruction answered",
            metadata: ["request.id": "\(request.id)", "device.id": "\(submit.deviceId)", "outcome": "\(outcome)"])
        return reply
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
