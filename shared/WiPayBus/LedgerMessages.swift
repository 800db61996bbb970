/// Kinds of ledger accounts.
public enum AccountKind: UInt8, Sendable, CaseIterable {
    /// A shopper's wallet: its balance may never go below zero.
    case wallet = 1
    /// A merchant's account: receives payments, pays refunds.
    case merchant = 2
    /// A per-currency system account (funding/top-up): the other side of `wallet fund`; may go negative.
    case funding = 3

    public var name: String {
        switch self {
        case .wallet: "wallet"
        case .merchant: "merchant"
        case .funding: "funding"
        }
    }
}

/// What a transfer is for; it decides which checks apply.
public enum TransferKind: UInt8, Sendable, CaseIterable {
    /// Wallet → merchant, paying one payment request; needs the wallet's PIN.
    case payment = 1
    /// Merchant → wallet, linked to a payment; the refunds of a payment never exceed it.
    case refund = 2
    /// Funding account → wallet (top-up by an operator).
    case funding = 3

    public var name: String {
        switch self {
        case .payment: "payment"
        case .refund: "refund"
        case .funding: "funding"
        }
    }
}

/// `account.open`: creates a wallet or merchant account with a caller-chosen id (the idempotency key).
public struct AccountOpen: BusEncodable, Equatable {
    public var accountId: String
    public var kind: AccountKind
    public var currency: String
    public var name: String
    /// Wallets only: the PIN, hashed by the ledger with its secret and never stored in clear.
    public var pin: String?
    /// Merchants: the merchant id that owns the account (one account per merchant).
    public var ownerId: String?

    public init(accountId: String, kind: AccountKind, currency: String, name: String, pin: String?, ownerId: String? = nil) {
        self.accountId = accountId
        self.kind = kind
        self.currency = currency
        self.name = name
        self.pin = pin
        self.ownerId = ownerId
    }

    public func encode(to w: inout BusWriter) {
        w.write(accountId)
        w.write(kind.rawValue)
        w.write(currency)
        w.write(name)
        w.write(pin)
        w.write(ownerId)
    }

    public init(from r: inout BusReader) throws(BusDecodeError) {
        accountId = try r.readString("account_id", max: 64)
        guard let kind = AccountKind(rawValue: try r.readUInt8("kind")) else {
            throw BusDecodeError(.invalidValue, "kind")
        }
        self.kind = kind
        currency = try r.readString("currency", max: 8)
        name = try r.readString("name", max: 256)
        pin = try r.readOptionalString("pin", max: 16)
        ownerId = try r.readOptionalString("owner_id", max: 64)
    }
}

/// `account.show` and `wallet.unlock`: one account by id.
public struct AccountRef: BusEncodable, Equatable {
    public var accountId: String

    public init(accountId: String) { self.accountId = accountId }
    public func encode(to w: inout BusWriter) { w.write(accountId) }
    public init(from r: inout BusReader) throws(BusDecodeError) { accountId = try r.readString("account_id", max: 64) }
}

/// An account as the ledger sees it now.
public struct AccountInfo: BusEncodable, Equatable {
    public var accountId: String
    public var kind: AccountKind
    public var currency: String
    public var name: String
    public var balance: Int64
    public var locked: Bool

    public init(accountId: String, kind: AccountKind, currency: String, name: String, balance: Int64, locked: Bool) {
        self.accountId = accountId
        self.kind = kind
        self.currency = currency
        self.name = name
        self.balance = balance
        self.locked = locked
    }

    public func encode(to w: inout BusWriter) {
        w.write(accountId)
        w.write(kind.rawValue)
        w.write(currency)
        w.write(name)
        w.write(balance)
        w.write(locked)
    }

    public init(from r: inout BusReader) throws(BusDecodeError) {
        accountId = try r.readString("account_id", max: 64)
        guard let kind = AccountKind(rawValue: try r.readUInt8("kind")) else {
            throw BusDecodeError(.invalidValue, "kind")
        }
        self.kind = kind
        currency = try r.readString("currency", max: 8)
        name = try r.readString("name", max: 256)
        balance = try r.readInt64("balance")
        locked = try r.readBool("locked")
    }
}

/// `transfer.post`: one double-entry transfer. `transferId` is the idempotency key: the same id with the
/// same fields answers `exists` with the first result; with other fields, `conflict`.
public struct TransferPost: BusEncodable, Equatable {
    public var transferId: String
    public var kind: TransferKind
    public var debitAccountId: String
    public var creditAccountId: String
    public var amountMinor: Int64
    public var currency: String
    /// Payments: the payment request it pays (at most one transfer per request, enforced by the database).
    public var paymentRequestId: String?
    /// Refunds: the payment transfer it refunds.
    public var refundOf: String?
    /// Payments: the payer's PIN, checked by the ledger. Never logged.
    public var pin: String?

    public init(
        transferId: String, kind: TransferKind, debitAccountId: String, creditAccountId: String, amountMinor: Int64,
        currency: String, paymentRequestId: String? = nil, refundOf: String? = nil, pin: String? = nil
    ) {
        self.transferId = transferId
        self.kind = kind
        self.debitAccountId = debitAccountId
        self.creditAccountId = creditAccountId
        self.amountMinor = amountMinor
        self.currency = currency
        self.paymentRequestId = paymentRequestId
        self.refundOf = refundOf
        self.pin = pin
    }

    public func encode(to w: inout BusWriter) {
        w.write(transferId)
        w.write(kind.rawValue)
        w.write(debitAccountId)
        w.write(creditAccountId)
        w.write(amountMinor)
        w.write(currency)
        w.write(paymentRequestId)
        w.write(refundOf)
        w.write(pin)
    }

    public init(from r: inout BusReader) throws(BusDecodeError) {
        transferId = try r.readString("transfer_id", max: 64)
        guard let kind = TransferKind(rawValue: try r.readUInt8("kind")) else {
            throw BusDecodeError(.invalidValue, "kind")
        }
        self.kind = kind
        debitAccountId = try r.readString("debit_account_id", max: 64)
        creditAccountId = try r.readString("credit_account_id", max: 64)
        amountMinor = try r.readInt64("amount")
        currency = try r.readString("currency", max: 8)
        paymentRequestId = try r.readOptionalString("payment_request_id", max: 64)
        refundOf = try r.readOptionalString("refund_of", max: 64)
        pin = try r.readOptionalString("pin", max: 16)
    }
}

/// `transfer.post.batch`: many transfers in one bus message, for callers that batch (the payment flow's
/// group commit). The ledger queues them together, so they usually share one database transaction; each
/// is decided on its own, exactly as `transfer.post` would decide it.
public struct TransferPostBatch: BusEncodable, Equatable {
    /// At most this many transfers per message (the ledger's default batch size).
    public static let maxCount = 2048
    public var transfers: [TransferPost]

    public init(transfers: [TransferPost]) { self.transfers = transfers }
    public func encode(to w: inout BusWriter) { w.write(transfers) }
    public init(from r: inout BusReader) throws(BusDecodeError) {
        transfers = try r.readArray(TransferPost.self, "transfers", max: Self.maxCount)
    }
}

/// One transfer's answer inside `TransferPostResults`: the bus status and body `transfer.post` would have
/// replied (`TransferResult` for `ok`/`exists`, `ErrorBody` otherwise).
public struct TransferPostOutcome: BusEncodable, Equatable {
    public var status: Status
    public var body: [UInt8]

    public init(status: Status, body: [UInt8]) {
        self.status = status
        self.body = body
    }

    public func encode(to w: inout BusWriter) {
        w.write(status.rawValue)
        w.write(bytes: body)
    }

    public init(from r: inout BusReader) throws(BusDecodeError) {
        status = Status(rawValue: try r.readUInt16("status"))
        body = try r.readBytes("body", max: 2048)
    }
}

/// The reply to `transfer.post.batch` (status `ok`): one outcome per transfer, in the order sent.
public struct TransferPostResults: BusEncodable, Equatable {
    public var outcomes: [TransferPostOutcome]

    public init(outcomes: [TransferPostOutcome]) { self.outcomes = outcomes }
    public func encode(to w: inout BusWriter) { w.write(outcomes) }
    public init(from r: inout BusReader) throws(BusDecodeError) {
        outcomes = try r.readArray(TransferPostOutcome.self, "outcomes", max: TransferPostBatch.maxCount)
    }
}

/// The result of a posted transfer (status `ok` or `exists`).
public struct TransferResult: BusEncodable, Equatable {
    public var transferId: String
    public var postedAtMillis: Int64
    public var debitBalance: Int64
    public var creditBalance: Int64

    public init(transferId: String, postedAtMillis: Int64, debitBalance: Int64, creditBalance: Int64) {
        self.transferId = transferId
        self.postedAtMillis = postedAtMillis
        self.debitBalance = debitBalance
        self.creditBalance = creditBalance
    }

    public func encode(to w: inout BusWriter) {
        w.write(transferId)
        w.write(postedAtMillis)
        w.write(debitBalance)
        w.write(creditBalance)
    }

    public init(from r: inout BusReader) throws(BusDecodeError) {
        transferId = try r.readString("transfer_id", max: 64)
        postedAtMillis = try r.readInt64("posted_at")
        debitBalance = try r.readInt64("debit_balance")
        creditBalance = try r.readInt64("credit_balance")
    }
}

/// One invariant checked by `reconcile`.
public struct ReconcileCheck: BusEncodable, Equatable {
    public var name: String
    public var ok: Bool
    /// The offending rows, as short text lines (at most 100).
    public var offending: [String]

    public init(name: String, ok: Bool, offending: [String]) {
        self.name = name
        self.ok = ok
        self.offending = offending
    }

    public func encode(to w: inout BusWriter) {
        w.write(name)
        w.write(ok)
        w.writeLength(offending.count)
        for line in offending { w.write(line) }
    }

    public init(from r: inout BusReader) throws(BusDecodeError) {
        name = try r.readString("name", max: 128)
        ok = try r.readBool("ok")
        let count = try r.readLength("offending", max: 1000)
        offending = []
        for _ in 0..<count { offending.append(try r.readString("offending", max: 4096)) }
    }
}

/// Reply to `reconcile`.
public struct ReconcileReport: BusEncodable, Equatable {
    public var checks: [ReconcileCheck]
    public var ok: Bool { checks.allSatisfy(\.ok) }

    public init(checks: [ReconcileCheck]) { self.checks = checks }
    public func encode(to w: inout BusWriter) { w.write(checks) }
    public init(from r: inout BusReader) throws(BusDecodeError) {
        checks = try r.readArray(ReconcileCheck.self, "checks", max: 64)
    }
}
