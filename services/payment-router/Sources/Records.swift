import Postgres
import WiPayBus

/// One payment request as loaded from `router.requests` joined with its merchant (`RequestRow.columns`).
struct RequestRow: Sendable {
    var id: String
    var status: PaymentRequestStatus
    var amountMinor: Int64
    var currency: String
    var reference: String
    var description: String?
    var merchantId: String
    var merchantName: String
    var terminalId: String
    var createdAtMillis: Int64
    var expiresAtMillis: Int64
    var payload: String
    var paymentId: String?
    var postedAtMillis: Int64?
    var payerAlias: String?
    var merchantAccountId: String
    var payerAccountId: String?
    var deviceId: String?
    var cancelKey: String?
    var bodyHash: String
    var declinedAttempts: Int
    var declineCode: String?

    /// The columns `init(row:)` reads, in order; use with `from`.
    static let columns = """
        r.id, r.status, r.amount, r.currency, r.reference, r.description, r.merchant_id, m.name, r.terminal_id,
        r.created_at, r.expires_at, r.payload, r.payment_id, r.posted_at, r.payer_alias, m.account_id,
        r.payer_account_id, r.device_id, r.cancel_key, r.body_hash, r.declined_attempts, r.decline_code
        """
    static let from = "router.requests r JOIN router.merchants m ON m.id = r.merchant_id"

    init(row: [String?]) throws(RouterError) {
        func text(_ i: Int) throws(RouterError) -> String {
            guard i < row.count, let value = row[i] else { throw RouterError.corrupt("column \(i)") }
            return value
        }
        func int(_ i: Int) throws(RouterError) -> Int64 {
            guard let value = Int64(try text(i)) else { throw RouterError.corrupt("column \(i)") }
            return value
        }
        func optional(_ i: Int) -> String? { i < row.count ? row[i] : nil }
        id = try text(0)
        guard let status = PaymentRequestStatus(rawValue: UInt8(try text(1)) ?? 0) else { throw RouterError.corrupt("status") }
        self.status = status
        amountMinor = try int(2)
        currency = try text(3)
        reference = try text(4)
        description = optional(5)
        merchantId = try text(6)
        merchantName = try text(7)
        terminalId = try text(8)
        createdAtMillis = try int(9)
        expiresAtMillis = try int(10)
        payload = try text(11)
        paymentId = optional(12)
        postedAtMillis = optional(13).flatMap { Int64($0) }
        payerAlias = optional(14)
        merchantAccountId = try text(15)
        payerAccountId = optional(16)
        deviceId = optional(17)
        cancelKey = optional(18)
        bodyHash = try text(19)
        declinedAttempts = Int(try int(20))
        declineCode = optional(21)
    }

    func machine(_ settings: RouterSettings) -> RequestStateMachine {
        RequestStateMachine(
            status: status, expiresAtMillis: expiresAtMillis, declinedAttempts: declinedAttempts,
            maxDeclinedAttempts: settings.maxDeclinedAttempts)
    }

    var info: PaymentRequestInfo {
        PaymentRequestInfo(
            requestId: id, status: status, amountMinor: amountMinor, currency: currency, reference: reference,
            description: description, merchantId: merchantId, merchantName: merchantName, terminalId: terminalId,
            createdAtMillis: createdAtMillis, expiresAtMillis: expiresAtMillis, payload: payload,
            paymentId: status == .succeeded ? paymentId : nil, postedAtMillis: status == .succeeded ? postedAtMillis : nil,
            payerAlias: status == .succeeded ? payerAlias : nil, declinedAttempts: Int64(declinedAttempts),
            declineCode: status == .declined ? declineCode : nil)
    }

    /// The outbox body for this request reaching `status` (its `outboxSeq` is filled in on delivery).
    func outcome(
        _ status: PaymentRequestStatus, atMillis: Int64, deviceId: String?, paymentId: String? = nil,
        errorCode: String? = nil, payerAlias: String? = nil, eventType: String? = nil, declinedAttempts: Int64? = nil
    ) -> OutcomePublished {
        OutcomePublished(
            outboxSeq: 0, eventType: eventType ?? RequestStateMachine.eventType(status) ?? "payment.\(status.name)", requestId: id,
            status: status, amountMinor: amountMinor, currency: currency, reference: reference, terminalId: terminalId,
            deviceId: deviceId, merchantId: merchantId, paymentId: paymentId, refundId: nil, atMillis: atMillis,
            merchantName: merchantName, errorCode: errorCode, payerAlias: payerAlias, declinedAttempts: declinedAttempts)
    }
}

extension RouterError {
    static func corrupt(_ what: String) -> RouterError {
        RouterError(.internalError, "internal_error", "unexpected row in the router's database (\(what))")
    }
}

/// A request's move to a final state, or (`status` nil) a declined attempt that leaves it pending, as written.
struct RequestChange: Sendable {
    var requestId: String
    var status: PaymentRequestStatus?
    var paymentId: String? = nil
    var postedAtMillis: Int64? = nil
    var payerAccountId: String? = nil
    var deviceId: String? = nil
    var payerAlias: String? = nil
    var declineCode: String? = nil
    var cancelKey: String? = nil
    /// One more declined attempt (counted in `declined_attempts`).
    var declinedAttempt = false
}

/// An instruction's stored answer.
struct StoredInstruction: Sendable {
    var deviceId: String
    var idempotencyKey: String
    var bodyHash: String
    var requestId: String
    var status: Status
    var result: InstructionResult
}

/// One trace row.
struct TraceRow: Sendable {
    var requestId: String
    var stage: String
    var event: String
    var detail: String

    static let router = "payment-router"
    static let ledger = "ledger"
    static let notifier = "notifier"
}

/// Everything one decision writes, in a single statement (data-modifying CTEs): one round trip, and
/// atomic with the transaction it runs in.
struct RouterWrites: Sendable {
    var change: RequestChange?
    var instruction: StoredInstruction?
    var outbox: [OutcomePublished] = []
    var trace: [TraceRow] = []

    var isEmpty: Bool { change == nil && instruction == nil && outbox.isEmpty && trace.isEmpty }

    func statement(nowMillis: Int64) -> (sql: String, parameters: [String?]) {
        var parameters: [String?] = []
        func p(_ value: String?) -> String {
            parameters.append(value)
            return "$\(parameters.count)"
        }
        let now = p(String(nowMillis))
        var parts: [String] = []
        if let c = change {
            // nil: a declined attempt, the request stays pending and keeps its final_at (none).
            let status = p(c.status.map { String($0.rawValue) })
            parts.append(
                """
                UPDATE router.requests SET status = coalesce(\(status)::smallint, status),
                    declined_attempts = declined_attempts + \(p(c.declinedAttempt ? "1" : "0"))::int,
                    payment_id = coalesce(\(p(c.paymentId)), payment_id), posted_at = coalesce(\(p(c.postedAtMillis.map(String.init)))::bigint, posted_at),
                    payer_account_id = coalesce(\(p(c.payerAccountId)), payer_account_id),
                    device_id = coalesce(\(p(c.deviceId)), device_id), payer_alias = coalesce(\(p(c.payerAlias)), payer_alias),
                    decline_code = coalesce(\(p(c.declineCode)), decline_code), cancel_key = coalesce(\(p(c.cancelKey)), cancel_key),
                    final_at = CASE WHEN \(status)::smallint IS NULL THEN final_at ELSE \(now)::bigint END
                WHERE id = \(p(c.requestId))
                """)
        }
        if let i = instruction {
            parts.append(
                """
                INSERT INTO router.instructions (device_id, idem_key, body_hash, request_id, status, result, at)
                VALUES (\(p(i.deviceId)), \(p(i.idempotencyKey)), \(p(i.bodyHash)), \(p(i.requestId)),
                    \(p(String(i.status.rawValue)))::smallint, decode(\(p(Hex.encode(i.result.encoded()))), 'hex'), \(now)::bigint)
                ON CONFLICT (device_id, idem_key) DO NOTHING
                """)
        }
        if !outbox.isEmpty {
            let rows = outbox.map { "(\(p($0.requestId)), decode(\(p(Hex.encode($0.encoded()))), 'hex'), \(now)::bigint)" }
            parts.append("INSERT INTO router.outbox (request_id, body, created_at) VALUES \(rows.joined(separator: ", "))")
        }
        if !trace.isEmpty {
            let rows = trace.map { "(\(p($0.requestId)), \(now)::bigint, \(p($0.stage)), \(p($0.event)), \(p($0.detail)))" }
            parts.append("INSERT INTO router.trace (request_id, at, stage, event, detail) VALUES \(rows.joined(separator: ", "))")
        }
        let ctes = parts.enumerated().map { "w\($0.offset) AS (\($0.element))" }
        return ("WITH " + ctes.joined(separator: ",\n") + "\nSELECT 1", parameters)
    }
}

extension RouterDatabase.Lease {
    /// Writes `writes` in one statement; with `commit`, the transaction commits in the same trip.
    func write(_ writes: RouterWrites, nowMillis: Int64, commit: Bool = false) async throws {
        guard !writes.isEmpty else {
            if commit { try await self.commit() }
            return
        }
        let (sql, parameters) = writes.statement(nowMillis: nowMillis)
        if commit {
            try await queryAndCommit(sql, parameters)
        } else {
            try await query(sql, parameters)
        }
    }

    /// The request `id` (any merchant), locked `FOR UPDATE` when `lock`.
    func request(_ id: String, lock: Bool = false) async throws -> RequestRow? {
        guard RouterLimits.isPlausibleId(id) else { return nil }
        let rows = try await query(
            "SELECT \(RequestRow.columns) FROM \(RequestRow.from) WHERE r.id = $1\(lock ? " FOR UPDATE OF r" : "")", [id])
        guard rows.count == 1 else { return nil }
        return try RequestRow(row: rows.rows[0])
    }
}

/// Lowercase hex, for `bytea` parameters (`decode($n, 'hex')`) and results (`encode(col, 'hex')`).
enum Hex {
    static func encode(_ bytes: [UInt8]) -> String { RouterIds.hex(bytes) }

    static func decode(_ text: String) -> [UInt8]? {
        let chars = Array(text.utf8)
        guard chars.count % 2 == 0 else { return nil }
        func nibble(_ c: UInt8) -> UInt8? {
            switch c {
            case 0x30...0x39: c - 0x30
            case 0x61...0x66: c - 0x61 + 10
            case 0x41...0x46: c - 0x41 + 10
            default: nil
            }
        }
        var out: [UInt8] = []
        out.reserveCapacity(chars.count / 2)
        var i = 0
        while i < chars.count {
            guard let high = nibble(chars[i]), let low = nibble(chars[i + 1]) else { return nil }
            out.append(high << 4 | low)
            i += 2
        }
        return out
    }
}
