import Crypto
import WiPayBus

/// Onboarding (`merchant.add`, `terminal.add`, `terminal.auth`, `wallet.add`, `device.enroll`, `device.get`)
/// and the read-only questions (`account.summary`, `payment.trace`).
extension PaymentRouter {
    /// An id derived from the bus request (sender + request id), so that the bus client's retry of the same
    /// request opens the same ledger account instead of a second one.
    static func derivedId(_ prefix: String, _ kind: String, _ envelope: Envelope) -> String {
        prefix
            + RouterIds.base32(
                SHA256.hash(data: Array("\(kind)\n\(envelope.sender)\n\(envelope.requestId)".utf8)), count: 16)
    }

    func addMerchant(_ add: MerchantAdd, _ envelope: Envelope) async throws -> BusReply {
        let name = try RouterLimits.checkName(add.name)
        try RouterLimits.checkCurrency(add.currency)
        let merchantId = Self.derivedId("mer_", "merchant", envelope)
        let accountId = Self.derivedId("acc_", "merchant-account", envelope)
        _ = try await openLedgerAccount(
            AccountOpen(accountId: accountId, kind: .merchant, currency: add.currency, name: name, pin: nil, ownerId: merchantId))
        try await db.query(
            """
            INSERT INTO router.merchants (id, name, currency, account_id, created_at) VALUES ($1, $2, $3, $4, $5)
            ON CONFLICT (id) DO NOTHING
            """, [merchantId, name, add.currency, accountId, String(unixMillis())])
        logger.info("merchant added", metadata: ["merchant.id": "\(merchantId)", "account.id": "\(accountId)"])
        return .ok(MerchantInfo(merchantId: merchantId, accountId: accountId, name: name, currency: add.currency))
    }

    func addTerminal(_ add: TerminalAdd) async throws -> BusReply {
        let name = try RouterLimits.checkName(add.name)
        guard RouterLimits.isPlausibleId(add.merchantId) else { throw Self.merchantNotFound(add.merchantId) }
        let terminalId = RouterIds.terminal()
        let key = RouterIds.terminalKey()
        let inserted = try await db.query(
            """
            INSERT INTO router.terminals (id, merchant_id, name, key_hash, created_at)
            SELECT $1, id, $3, $4, $5 FROM router.merchants WHERE id = $2 RETURNING id
            """, [terminalId, add.merchantId, name, RouterIds.sha256Hex(key), String(unixMillis())])
        guard inserted.count == 1 else { throw Self.merchantNotFound(add.merchantId) }
        logger.info("terminal added", metadata: ["terminal.id": "\(terminalId)", "merchant.id": "\(add.merchantId)"])
        return .ok(TerminalIssued(terminalId: terminalId, merchantId: add.merchantId, terminalKey: key))
    }

    static func merchantNotFound(_ id: String) -> RouterError { .notFound("merchant_not_found", "no merchant \(id)") }

    func authTerminal(_ auth: TerminalAuth) async throws -> BusReply {
        let rows = try await db.query(
            """
            SELECT t.id, t.merchant_id, m.name, m.currency FROM router.terminals t
            JOIN router.merchants m ON m.id = t.merchant_id WHERE t.key_hash = $1
            """, [auth.keyHash.lowercased()])
        guard rows.count == 1, let id = rows.string(0, 0), let merchant = rows.string(0, 1), let name = rows.string(0, 2),
            let currency = rows.string(0, 3)
        else { throw RouterError.notFound("unknown_terminal_key", "no terminal holds this key") }
        return .ok(TerminalInfo(terminalId: id, merchantId: merchant, merchantName: name, currency: currency))
    }

    func addWallet(_ add: WalletAdd, _ envelope: Envelope) async throws -> BusReply {
        let name = try RouterLimits.checkName(add.name)
        try RouterLimits.checkCurrency(add.currency)
        guard (4...6).contains(add.pin.utf8.count), add.pin.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else {
            throw RouterError.invalid("invalid_pin_format", "a PIN is 4 to 6 digits")
        }
        let accountId = Self.derivedId("wal_", "wallet", envelope)
        _ = try await openLedgerAccount(
            AccountOpen(accountId: accountId, kind: .wallet, currency: add.currency, name: name, pin: add.pin))
        let code = RouterIds.enrollmentCode()
        guard let normalized = RouterIds.normalizedEnrollmentCode(code) else { throw RouterError.corrupt("enrollment code") }
        let now = String(unixMillis())
        try await db.query(
            """
            WITH w AS (INSERT INTO router.wallets (account_id, name, currency, created_at) VALUES ($1, $2, $3, $5)
                ON CONFLICT (account_id) DO NOTHING)
            INSERT INTO router.enrollments (code_hash, account_id, created_at) VALUES ($4, $1, $5)
            """, [accountId, name, add.currency, RouterIds.sha256Hex(normalized), now])
        logger.info("wallet added", metadata: ["account.id": "\(accountId)", "currency": "\(add.currency)"])
        return .ok(WalletIssued(accountId: accountId, enrollmentCode: code))
    }

    /// Replies: `ok` + `DeviceInfo`; `exists` + the same for a retry with the same key; `notFound`
    /// `enrollment_code_unknown`; `conflict` `enrollment_code_used`; 400 `invalid_public_key` / `invalid_name`.
    func enrollDevice(_ enroll: DeviceEnroll) async throws -> BusReply {
        guard enroll.publicKey.count == 32, (try? Curve25519.Signing.PublicKey(rawRepresentation: enroll.publicKey)) != nil
        else { throw RouterError.invalid("invalid_public_key", "a public key is 32 raw Ed25519 bytes") }
        let name = try RouterLimits.checkName(enroll.name)
        guard let code = RouterIds.normalizedEnrollmentCode(enroll.enrollmentCode) else {
            throw Self.enrollmentCodeUnknown
        }
        let keyHex = Hex.encode(enroll.publicKey)
        let now = unixMillis()
        return try await db.transaction { lease -> BusReply in
            let rows = try await lease.query(
                """
                SELECT e.account_id, e.used_at, e.device_id, encode(d.public_key, 'hex'), d.name, w.currency
                FROM router.enrollments e JOIN router.wallets w ON w.account_id = e.account_id
                LEFT JOIN router.devices d ON d.id = e.device_id WHERE e.code_hash = $1 FOR UPDATE OF e
                """, [RouterIds.sha256Hex(code)])
            guard rows.count == 1, let account = rows.string(0, 0), let currency = rows.string(0, 5) else {
                throw Self.enrollmentCodeUnknown
            }
            if rows.string(0, 1) != nil {
                // The same key again (a retry of this enrollment): the device it made.
                if let device = rows.string(0, 2), rows.string(0, 3) == keyHex {
                    return .ok(
                        DeviceInfo(
                            deviceId: device, accountId: account, publicKey: enroll.publicKey, name: rows.string(0, 4) ?? name,
                            currency: currency), status: .exists)
                }
                throw RouterError(.conflict, "enrollment_code_used", "this enrollment code has already been used")
            }
            let deviceId = RouterIds.device()
            try await lease.query(
                """
                WITH d AS (INSERT INTO router.devices (id, account_id, public_key, name, created_at)
                    VALUES ($1, $2, decode($3, 'hex'), $4, $5))
                UPDATE router.enrollments SET used_at = $5, device_id = $1 WHERE code_hash = $6
                """, [deviceId, account, keyHex, name, String(now), RouterIds.sha256Hex(code)])
            logger.info("device enrolled", metadata: ["device.id": "\(deviceId)", "account.id": "\(account)"])
            return .ok(
                DeviceInfo(deviceId: deviceId, accountId: account, publicKey: enroll.publicKey, name: name, currency: currency))
        }
    }

    static let enrollmentCodeUnknown = RouterError.notFound("enrollment_code_unknown", "no such enrollment code")

    func getDevice(_ ref: DeviceRef) async throws -> BusReply {
        guard RouterLimits.isPlausibleId(ref.deviceId) else { throw Self.deviceNotFound(ref.deviceId) }
        let rows = try await db.query(
            """
            SELECT d.account_id, encode(d.public_key, 'hex'), d.name, w.currency FROM router.devices d
            JOIN router.wallets w ON w.account_id = d.account_id WHERE d.id = $1
            """, [ref.deviceId])
        guard rows.count == 1, let account = rows.string(0, 0), let key = rows.string(0, 1).flatMap(Hex.decode),
            let name = rows.string(0, 2), let currency = rows.string(0, 3)
        else { throw Self.deviceNotFound(ref.deviceId) }
        return .ok(DeviceInfo(deviceId: ref.deviceId, accountId: account, publicKey: key, name: name, currency: currency))
    }

    static func deviceNotFound(_ id: String) -> RouterError { .notFound("device_not_found", "no device \(id)") }

    /// The wallet's balance (from the ledger) and its 50 most recent payments (from the router).
    func accountSummary(_ ref: AccountRef) async throws -> BusReply {
        guard RouterLimits.isPlausibleId(ref.accountId) else { throw Self.accountNotFound(ref.accountId) }
        let wallet = try await db.query("SELECT currency FROM router.wallets WHERE account_id = $1", [ref.accountId])
        guard wallet.count == 1, let currency = wallet.string(0, 0) else { throw Self.accountNotFound(ref.accountId) }
        let info: AccountInfo
        do {
            (_, info) = try await bus.call(service: Self.ledgerService, type: .accountShow, ref, as: AccountInfo.self)
        } catch {
            if case .rejected(let status, let body) = error, status.rawValue < 500 {
                throw RouterError(status, body.code, body.message)
            }
            throw RouterError.ledgerUnavailable
        }
        let rows = try await db.query(
            """
            SELECT r.payment_id, r.id, r.amount, r.currency, r.merchant_id, m.name,
                coalesce((SELECT sum(f.amount) FROM router.refunds f WHERE f.payment_id = r.payment_id), 0), r.posted_at
            FROM router.requests r JOIN router.merchants m ON m.id = r.merchant_id
            WHERE r.payer_account_id = $1 AND r.status = 2 ORDER BY r.posted_at DESC LIMIT 50
            """, [ref.accountId])
        let recent = rows.rows.compactMap { row -> PaymentSummary? in
            guard let payment = row[0], let request = row[1], let amount = row[2].flatMap({ Int64($0) }),
                let currency = row[3], let merchant = row[4], let name = row[5]
            else { return nil }
            return PaymentSummary(
                paymentId: payment, requestId: request, amountMinor: amount, currency: currency, merchantId: merchant,
                merchantName: name, refundedMinor: row[6].flatMap { Int64($0) } ?? 0,
                postedAtMillis: row[7].flatMap { Int64($0) } ?? 0)
        }
        return .ok(AccountSummary(accountId: ref.accountId, currency: currency, balance: info.balance, recent: recent))
    }

    static func accountNotFound(_ id: String) -> RouterError { .notFound("account_not_found", "no wallet \(id)") }

    /// A request's trace: the four steps of a normal payment read from the columns the flow writes anyway
    /// (`created` from the request, `instruction.received` from each attempt, `ledger.posted` from the
    /// payment columns, `outbox.delivered` from each delivered outbox row), merged by time with the trace
    /// rows written for the unusual (refusals, recoveries, cancels, expiries, refunds). Rows written as trace
    /// rows by older versions are shown instead of their column-made twins.
    static let traceSQL = """
        SELECT at, stage, event, detail, ord, id FROM (
            SELECT r.created_at AS at, 'payment-router' AS stage, 'created' AS event,
                r.amount || ' ' || r.currency || ' by terminal ' || r.terminal_id || ', expires in '
                    || ((r.expires_at - r.created_at + 999) / 1000) || 's' AS detail, 0 AS ord, 0::bigint AS id
            FROM router.requests r
            WHERE r.id = $1 AND NOT EXISTS (SELECT 1 FROM router.trace t WHERE t.request_id = $1 AND t.event = 'created')
            UNION ALL
            SELECT a.at, 'payment-router', 'instruction.received', 'from device ' || a.device_id, 1, 0
            FROM router.attempts a
            WHERE a.request_id = $1
                AND NOT EXISTS (SELECT 1 FROM router.trace t WHERE t.request_id = $1 AND t.event = 'instruction.received')
            UNION ALL
            SELECT r.posted_at, 'ledger', 'ledger.posted', r.payment_id, 2, 0
            FROM router.requests r
            WHERE r.id = $1 AND r.payment_id IS NOT NULL AND r.posted_at IS NOT NULL
                AND NOT EXISTS (SELECT 1 FROM router.trace t WHERE t.request_id = $1 AND t.event = 'ledger.posted')
            UNION ALL
            SELECT t.at, t.stage, t.event, t.detail, 3, t.id FROM router.trace t WHERE t.request_id = $1
            UNION ALL
            SELECT o.delivered_at, 'notifier', 'outbox.delivered', encode(o.body, 'hex'), 4, o.seq
            FROM router.outbox o
            WHERE o.request_id = $1 AND o.delivered_at IS NOT NULL
                AND NOT EXISTS (SELECT 1 FROM router.trace t WHERE t.request_id = $1 AND t.event = 'outbox.delivered')
        ) AS steps
        ORDER BY at, ord, id LIMIT 1000
        """

    func trace(_ query: TraceQuery) async throws -> BusReply {
        guard let row = try await db.withLease({ try await $0.request(query.requestId) }) else {
            throw Self.requestNotFound(query.requestId)
        }
        let rows = try await db.query(Self.traceSQL, [row.id])
        let steps = rows.rows.map { row in
            var detail = row[3] ?? ""
            if row[2] == "outbox.delivered", row[4] == "4", let body = Hex.decode(detail),
                let outcome = try? OutcomePublished.decode(body)
            {
                detail = "\(outcome.eventType) #\(row[5] ?? "?")"
            }
            return TraceStep(
                atMillis: row[0].flatMap { Int64($0) } ?? 0, stage: row[1] ?? "", event: row[2] ?? "",
                detail: String(detail.utf8.prefix(1000)) ?? "")
        }
        return .ok(PaymentTrace(request: row.info, steps: steps))
    }
}
