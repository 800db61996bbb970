import WiPayBus

/// `refund.create`: part or all of a payment back to its payer. Idempotent per (merchant, key); the ledger
/// transfer id is derived from them, so a retry after a crash names the same transfer.
///
/// Replies: `ok` + `RefundInfo`; `exists` + the first `RefundInfo` for a repeat; `notFound` `payment_not_found`;
/// `declined` (422) `refund_exceeds_payment` or `insufficient_funds` (the merchant's balance); `conflict`
/// `idempotency_key_reused`; 400s for bad input; 503 `ledger_unavailable`.
extension PaymentRouter {
    func createRefund(_ create: RefundCreate) async throws -> BusReply {
        let key = try RouterLimits.checkIdempotencyKey(create.idempotencyKey)
        try RouterLimits.checkBodyHash(create.bodyHash)
        if let amount = create.amountMinor { try RouterLimits.checkAmount(amount) }
        guard RouterLimits.isPlausibleId(create.paymentId), RouterLimits.isPlausibleId(create.merchantId) else {
            throw Self.paymentNotFound(create.paymentId)
        }
        let now = unixMillis()
        let (reply, posted) = try await db.transaction { lease -> (BusReply, Bool) in
            let rows = try await lease.query(
                "SELECT \(RequestRow.columns) FROM \(RequestRow.from) WHERE r.payment_id = $1 AND r.merchant_id = $2 FOR UPDATE OF r",
                [create.paymentId, create.merchantId])
            guard rows.count == 1 else { throw Self.paymentNotFound(create.paymentId) }
            let row = try RequestRow(row: rows.rows[0])
            guard row.status == .succeeded, let payer = row.payerAccountId else { throw Self.paymentNotFound(create.paymentId) }
            // Under the request's lock: a repeat of this key, and the refunds so far, are settled.
            let existing = try await lease.query(
                "SELECT id, payment_id, amount, body_hash FROM router.refunds WHERE merchant_id = $1 AND idem_key = $2",
                [create.merchantId, key])
            if existing.count == 1 {
                guard existing.string(0, 3) == create.bodyHash, existing.string(0, 1) == create.paymentId else {
                    throw RouterError.idempotencyKeyReused
                }
                let info = RefundInfo(
                    refundId: existing.string(0, 0) ?? "", paymentId: create.paymentId, amountMinor: existing.int64(0, 2) ?? 0,
                    currency: row.currency, status: "succeeded")
                return (.ok(info, status: .exists), false)
            }
            let refunded = try await lease.query(
                "SELECT coalesce(sum(amount), 0) FROM router.refunds WHERE payment_id = $1", [create.paymentId]
            ).int64(0, 0) ?? 0
            let left = row.amountMinor - refunded
            let amount = create.amountMinor ?? left
            guard amount >= 1, amount <= left else {
                throw RouterError(
                    .declined, "refund_exceeds_payment",
                    "the refunds would exceed the payment: \(left) of \(row.amountMinor) \(row.currency) left to refund")
            }
            let refundId = RouterIds.refund(merchantId: create.merchantId, idempotencyKey: key)
            let post = TransferPost(
                transferId: refundId, kind: .refund, debitAccountId: row.merchantAccountId, creditAccountId: payer,
                amountMinor: amount, currency: row.currency, refundOf: create.paymentId)
            switch await postToLedger(post, correlation: row.id) {
            case .posted(let result):
                try await lease.query(
                    """
                    INSERT INTO router.refunds (id, payment_id, request_id, merchant_id, idem_key, body_hash, amount, at)
                    VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                    """,
                    [refundId, create.paymentId, row.id, create.merchantId, key, create.bodyHash, String(amount), String(now)])
                var outcome = row.outcome(
                    .succeeded, atMillis: result.postedAtMillis, deviceId: row.deviceId, paymentId: create.paymentId,
                    payerAlias: row.payerAlias)
                outcome.eventType = "refund.succeeded"
                outcome.amountMinor = amount
                outcome.refundId = refundId
                var writes = RouterWrites()
                writes.outbox = [outcome]
                writes.trace = [
                    TraceRow(
                        requestId: row.id, stage: TraceRow.ledger, event: "refund.posted",
                        detail: "\(refundId) \(amount) \(row.currency)")
                ]
                try await lease.write(writes, nowMillis: now)
                let info = RefundInfo(
                    refundId: refundId, paymentId: create.paymentId, amountMinor: amount, currency: row.currency,
                    status: "succeeded")
                return (.ok(info), true)
            case .refused(let status, let error):
                throw RouterError(status, error.code, error.message)
            case .unavailable:
                throw RouterError.ledgerUnavailable
            }
        }
        if posted {
            outboxBell.ring()
            metrics.outcome("refund.succeeded")
        }
        return reply
    }

    static func paymentNotFound(_ id: String) -> RouterError {
        .notFound("payment_not_found", "no payment \(id) of this merchant")
    }
}
