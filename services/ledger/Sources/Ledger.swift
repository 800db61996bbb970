import Foundation
import Logging
import Postgres
import WiPayBus
import WiPayRuntime

/// The ledger stage: accounts, transfers and PINs in PostgreSQL (schema `ledger`), served over the bus.
public final class Ledger: Sendable {
    public let engine: BatchEngine
    let pool: PGPool
    let pins: PinHasher
    let logger: Logger

    public init(conninfo: String, pins: PinHasher, batch: BatchSettings, logger: Logger) {
        self.pool = PGPool(conninfo: conninfo, size: 4, name: "ledger")
        self.pins = pins
        self.logger = logger
        self.engine = BatchEngine(conninfo: conninfo, pins: pins, settings: batch, logger: logger)
    }

    /// Applies migrations, retrying while PostgreSQL is not up yet (bounded: `timeout`).
    public func migrate(timeout: Duration = .seconds(30)) async throws {
        try await pgRetryingUntilReachable(timeout: timeout, onRetry: { error in
            logger.warning("database not reachable yet; retrying", metadata: ["error": "\(error)"])
        }) {
            try await pool.blocking { try LedgerSchema.migrate($0) }
        }
    }

    public func handle(_ message: BusMessage) async -> BusReply {
        do {
            switch message.envelope.type {
            case .transferPost:
                return await engine.post(try TransferPost.decode(message.body))
            case .transferPostBatch:
                let batch = try TransferPostBatch.decode(message.body)
                let replies = await engine.post(batch: batch.transfers)
                return .ok(TransferPostResults(outcomes: replies.map { TransferPostOutcome(status: $0.status, body: $0.body) }))
            case .accountOpen:
                return try await open(try AccountOpen.decode(message.body))
            case .accountShow:
                let ref = try AccountRef.decode(message.body)
                guard let info = try await show(ref.accountId) else {
                    return .error(.notFound, "account_not_found", "no account \(ref.accountId)")
                }
                return .ok(info)
            case .walletUnlock:
                return try await unlock(try AccountRef.decode(message.body).accountId)
            case .paymentLookup:
                let lookup = try PaymentLookup.decode(message.body)
                guard let record = try await payment(forRequest: lookup.requestId) else {
                    return .error(.notFound, "payment_not_found", "no payment for request \(lookup.requestId)")
                }
                return .ok(record)
            case .reconcile:
                return .ok(try await reconcile())
            default:
                return .error(.unknownType, "unknown_type", "the ledger does not handle \(message.envelope.type)")
            }
        } catch let error as BusDecodeError {
            return .error(.badRequest, "bad_request", "\(error)")
        } catch let error as PGError where error.isDataError {
            return .error(.badRequest, "bad_request", "the request holds data the ledger cannot store: \(error.message)")
        } catch let error as PGError where error.isPoolBusy {
            logger.warning("database busy", metadata: ["error": "\(error)", "bus.type": "\(message.envelope.type)"])
            return .error(.unavailable, "database_busy", "the ledger's database connections are all busy; retry")
        } catch let error as PGError {
            logger.error("database error", metadata: ["error": "\(error)", "bus.type": "\(message.envelope.type)"])
            return .error(.unavailable, "ledger_unavailable", "the ledger database is not available; retry")
        } catch {
            logger.error("unexpected error", metadata: ["error": "\(error)"])
            return .error(.internalError, "internal_error", "unexpected ledger error")
        }
    }

    /// Creates an account; the same id with the same fields answers `exists`, other fields `conflict`.
    func open(_ request: AccountOpen) async throws -> BusReply {
        guard LedgerLimits.isValidId(request.accountId) else {
            return .error(.badRequest, "invalid_account_id", "account id must be 1-64 of [A-Za-z0-9_.:-]")
        }
        guard Currency.isKnown(request.currency) else {
            return .error(.badRequest, "unknown_currency", "\(request.currency) is not an ISO 4217 currency code")
        }
        let name = request.name.trimmingCharacters(in: .whitespacesAndNewlines)
        guard !name.isEmpty, name.count <= 100 else {
            return .error(.badRequest, "invalid_name", "a name is 1 to 100 characters")
        }
        if let owner = request.ownerId, !LedgerLimits.isValidId(owner) {
            return .error(.badRequest, "invalid_owner_id", "owner id must be 1-64 of [A-Za-z0-9_.:-]")
        }
        var pinHex: String? = nil
        switch request.kind {
        case .wallet:
            guard let pin = request.pin, LedgerLimits.isValidPin(pin) else {
                return .error(.badRequest, "invalid_pin_format", "a PIN is 4 to 6 digits")
            }
            pinHex = Hex.encode(pins.hash(accountId: request.accountId, pin: pin))
        case .merchant, .funding:
            guard request.pin == nil else { return .error(.badRequest, "invalid_request", "only wallets have a PIN") }
        }
        let pinHash = pinHex
        let owner = request.ownerId
        let outcome: (inserted: Bool, owner: String?, pinHex: String?, stored: PGRows)
        do {
            // One use of one pooled connection for the insert and the read-back: a call refused for want of a
            // connection (503 database_busy) is refused before it has changed anything.
            // Both statements in one pipeline: the read-back sees the insert (or the row that was there).
            let rows = try await pool.pipeline([
                PGStatement(
                    """
                    INSERT INTO ledger.accounts (id, kind, currency, name, owner_id, pin_hash)
                    VALUES ($1, $2, $3, $4, $5, decode($6, 'hex')) ON CONFLICT (id) DO NOTHING RETURNING id
                    """,
                    [request.accountId, String(request.kind.rawValue), request.currency, name, owner, pinHash]),
                PGStatement(
                    """
                    SELECT id, kind, currency, name, credits - debits, locked, owner_id, encode(pin_hash, 'hex')
                    FROM ledger.accounts WHERE id = $1
                    """, [request.accountId]),
            ])
            let inserted = try rows[0].get().count == 1
            let stored = try rows[1].get()
            outcome = (inserted, stored.count == 1 ? stored.string(0, 6) : nil, stored.count == 1 ? stored.string(0, 7) : nil, stored)
        } catch let error as PGError where error.isUniqueViolation {
            return .error(.conflict, "owner_has_account", "owner \(owner ?? "") already has an account")
        }
        guard let info = Self.accountInfo(outcome.stored, id: request.accountId) else {
            return .error(.internalError, "internal_error", "account vanished after creation")
        }
        if outcome.inserted {
            logger.info(
                "account opened",
                metadata: ["account.id": "\(info.accountId)", "account.kind": "\(info.kind.name)", "currency": "\(info.currency)"])
            return .ok(info)
        }
        // The same id again: an idempotent retry only when every field matches (the PIN included).
        guard info.kind == request.kind, info.currency == request.currency, info.name == name, outcome.owner == owner,
            outcome.pinHex == pinHash
        else {
            return .error(.conflict, "exists_with_different_fields", "account \(request.accountId) exists with other fields")
        }
        return .ok(info, status: .exists)
    }

    func show(_ id: String) async throws -> AccountInfo? {
        guard LedgerLimits.isValidId(id) else { return nil }
        let rows = try await pool.query(
            "SELECT id, kind, currency, name, credits - debits, locked FROM ledger.accounts WHERE id = $1", [id])
        return Self.accountInfo(rows, id: id)
    }

    /// An account from a row of `id, kind, currency, name, balance, locked` (more columns may follow).
    static func accountInfo(_ rows: PGRows, id: String) -> AccountInfo? {
        guard rows.count == 1, let kind = AccountKind(rawValue: UInt8(rows.string(0, 1) ?? "") ?? 0) else { return nil }
        return AccountInfo(
            accountId: rows.string(0, 0) ?? id, kind: kind, currency: rows.string(0, 2) ?? "", name: rows.string(0, 3) ?? "",
            balance: rows.int64(0, 4) ?? 0, locked: rows.bool(0, 5) ?? false)
    }

    /// The payment transfer posted for a payment request, if any (`payment.lookup`: the router's recovery).
    func payment(forRequest requestId: String) async throws -> PaymentRecord? {
        guard LedgerLimits.isValidId(requestId) else { return nil }
        let rows = try await pool.query(
            """
            SELECT id, debit_account_id, credit_account_id, amount, currency,
                (extract(epoch FROM posted_at) * 1000)::bigint
            FROM ledger.transfers WHERE payment_request_id = $1 AND kind = 1
            """, [requestId])
        guard rows.count == 1, let id = rows.string(0, 0), let debit = rows.string(0, 1), let credit = rows.string(0, 2),
            let amount = rows.int64(0, 3), let currency = rows.string(0, 4), let posted = rows.int64(0, 5)
        else { return nil }
        return PaymentRecord(
            transferId: id, debitAccountId: debit, creditAccountId: credit, amountMinor: amount, currency: currency,
            postedAtMillis: posted)
    }

    func unlock(_ id: String) async throws -> BusReply {
        guard let info = try await show(id) else { return .error(.notFound, "account_not_found", "no account \(id)") }
        guard info.kind == .wallet else { return .error(.conflict, "not_a_wallet", "account \(id) is not a wallet") }
        // Through the batch engine's lock order would be ideal; a single-row update is safe on its own.
        try await pool.query("UPDATE ledger.accounts SET locked = false, pin_failures = 0 WHERE id = $1", [id])
        logger.notice("wallet unlocked", metadata: ["account.id": "\(id)"])
        return .ok(try await show(id) ?? info)
    }

    /// Checks every invariant of the book directly in the database (see docs/ledger.md).
    public func reconcile() async throws -> ReconcileReport {
        let checks: [(String, String)] = [
            (
                "balances_sum_to_zero_per_currency",
                """
                SELECT currency || ' sums to ' || sum(credits - debits) FROM ledger.accounts
                GROUP BY currency HAVING sum(credits - debits) <> 0
                """
            ),
            (
                "account_totals_match_transfers",
                """
                WITH d AS (SELECT debit_account_id AS id, sum(amount) AS s FROM ledger.transfers GROUP BY 1),
                     c AS (SELECT credit_account_id AS id, sum(amount) AS s FROM ledger.transfers GROUP BY 1)
                SELECT a.id || ': debits ' || a.debits || ' vs transfers ' || coalesce(d.s, 0)
                       || ', credits ' || a.credits || ' vs transfers ' || coalesce(c.s, 0)
                FROM ledger.accounts a LEFT JOIN d ON d.id = a.id LEFT JOIN c ON c.id = a.id
                WHERE a.debits <> coalesce(d.s, 0) OR a.credits <> coalesce(c.s, 0) LIMIT 100
                """
            ),
            (
                "transfers_reference_accounts",
                """
                SELECT t.id || ' has no ' || CASE WHEN d.id IS NULL THEN 'debit' ELSE 'credit' END || ' account'
                FROM ledger.transfers t LEFT JOIN ledger.accounts d ON d.id = t.debit_account_id
                LEFT JOIN ledger.accounts c ON c.id = t.credit_account_id
                WHERE d.id IS NULL OR c.id IS NULL
                UNION ALL
                SELECT r.id || ' refunds unknown payment ' || r.refund_of FROM ledger.transfers r
                LEFT JOIN ledger.transfers p ON p.id = r.refund_of AND p.kind = 1
                WHERE r.kind = 2 AND p.id IS NULL LIMIT 100
                """
            ),
            (
                "transfers_balanced_in_one_currency",
                """
                SELECT t.id || ' (' || t.currency || ' between ' || d.currency || ' and ' || c.currency || ')'
                FROM ledger.transfers t JOIN ledger.accounts d ON d.id = t.debit_account_id
                JOIN ledger.accounts c ON c.id = t.credit_account_id
                WHERE t.amount <= 0 OR t.currency <> d.currency OR t.currency <> c.currency LIMIT 100
                """
            ),
            (
                "no_wallet_below_zero",
                "SELECT id || ' balance ' || (credits - debits) FROM ledger.accounts WHERE kind <> 3 AND credits < debits LIMIT 100"
            ),
            (
                "one_payment_per_request",
                """
                SELECT payment_request_id || ' paid ' || count(*) || ' times' FROM ledger.transfers WHERE kind = 1
                GROUP BY payment_request_id HAVING count(*) > 1 LIMIT 100
                """
            ),
            (
                "refunds_within_payment",
                """
                SELECT p.id || ': amount ' || p.amount || ', refunds ' || coalesce(sum(r.amount), 0) || ', recorded ' || p.refunded
                FROM ledger.transfers p LEFT JOIN ledger.transfers r ON r.refund_of = p.id AND r.kind = 2
                WHERE p.kind = 1 GROUP BY p.id, p.amount, p.refunded
                HAVING coalesce(sum(r.amount), 0) > p.amount OR coalesce(sum(r.amount), 0) <> p.refunded LIMIT 100
                """
            ),
        ]
        // One snapshot for every check: one pipeline in one read-only transaction.
        let statements =
            [PGStatement("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", prepared: false)]
            + checks.map { PGStatement($0.1) } + [.commit]
        let rows = try await pool.withSession { try await $0.pipelineAll(statements) }
        return ReconcileReport(
            checks: checks.enumerated().map { index, check in
                let offending = rows[index + 1].rows.compactMap { $0[0] }
                return ReconcileCheck(name: check.0, ok: offending.isEmpty, offending: offending)
            })
    }

    /// Healthy when the database answers and no pooled connection is waiting to reconnect.
    public func healthCheck() async -> (Bool, String) {
        let (healthy, detail) = await pgHealthCheck(pool)
        return (healthy, "\(detail); batch queue \(engine.queued)")
    }

    public func stop() { engine.stop() }
}

/// Wiring for `main` and the tests.
public enum LedgerStage {
    public static func batchSettings(_ values: ConfigValues) throws -> BatchSettings {
        let maxBatch = try values.int(
            Setting("WIPAY_LEDGER_BATCH_MAX", flag: "batch-max", default: "2048", "Transfers per transaction."),
            range: 1...20_000)
        let waitMicros = try values.int(
            Setting("WIPAY_LEDGER_BATCH_WAIT_US", flag: "batch-wait-us", default: "500", "Extra wait for a fuller batch."),
            range: 0...100_000)
        let workers = try values.int(
            Setting("WIPAY_LEDGER_BATCH_WORKERS", flag: "batch-workers", default: "1", "Batches in flight at once."),
            range: 1...16)
        let overlap = try values.int(
            Setting(
                "WIPAY_LEDGER_BATCH_OVERLAP", flag: "batch-overlap", default: "1",
                "1: decide the next batch while one commits; 0: one batch at a time."),
            range: 0...1)
        return BatchSettings(maxBatch: maxBatch, maxWait: .microseconds(waitMicros), workers: workers, overlap: overlap == 1)
    }

    public static func run(config: RuntimeConfig) async throws {
        let runtime = try Runtime(config: config)
        let pins = try PinHasher.load(environment: config.values.environment)
        let ledger = Ledger(
            conninfo: config.databaseURL, pins: pins, batch: try batchSettings(config.values), logger: runtime.logger)
        try await ledger.migrate()
        defer { ledger.stop() }
        try await runtime.run(handler: { await ledger.handle($0) }, healthCheck: { await ledger.healthCheck() })
    }
}
