import Crypto
import Foundation
import WiPayBus

/// A ledger account as the batch engine holds it while it works (locked in the database).
public struct AccountRow: Sendable, Equatable {
    public var id: String
    public var kind: AccountKind
    public var currency: String
    public var debits: Int64
    public var credits: Int64
    public var pinHash: [UInt8]?
    public var pinFailures: Int
    public var locked: Bool

    public var balance: Int64 { credits - debits }

    public init(
        id: String, kind: AccountKind, currency: String, debits: Int64 = 0, credits: Int64 = 0, pinHash: [UInt8]? = nil,
        pinFailures: Int = 0, locked: Bool = false
    ) {
        self.id = id
        self.kind = kind
        self.currency = currency
        self.debits = debits
        self.credits = credits
        self.pinHash = pinHash
        self.pinFailures = pinFailures
        self.locked = locked
    }
}

/// A posted payment transfer, for refunds against it.
public struct PaymentRow: Sendable, Equatable {
    public var id: String
    public var amount: Int64
    public var refunded: Int64
    public var walletId: String
    public var merchantId: String
    public var currency: String
}

/// Why a transfer was refused. `status` is the bus status of the reply; `code` is the contract's code.
public struct LedgerFailure: Error, Sendable, Equatable {
    public let status: Status
    public let code: String
    public let message: String

    public init(_ status: Status, _ code: String, _ message: String) {
        self.status = status
        self.code = code
        self.message = message
    }

    public static func insufficientFunds(_ id: String) -> LedgerFailure {
        LedgerFailure(.declined, "insufficient_funds", "account \(id) has too little money for this transfer")
    }
    public static let incorrectPin = LedgerFailure(.declined, "incorrect_pin", "the PIN is not correct")
    public static let pinLocked = LedgerFailure(
        .declined, "pin_locked", "the wallet is locked after three wrong PINs; an operator must unlock it")
    public static let currencyMismatch = LedgerFailure(
        .declined, "currency_mismatch", "the transfer's currency differs from an account's currency")
    public static let requestAlreadyPaid = LedgerFailure(
        .declined, "request_already_paid", "this payment request has already been paid")
    public static let refundExceedsPayment = LedgerFailure(
        .declined, "refund_exceeds_payment", "the refunds would exceed the payment")
    public static func accountNotFound(_ id: String) -> LedgerFailure {
        LedgerFailure(.notFound, "account_not_found", "no account \(id)")
    }
    public static func invalid(_ message: String) -> LedgerFailure { LedgerFailure(.badRequest, "invalid_transfer", message) }
}

/// Transfer, account and PIN limits of the contract.
public enum LedgerLimits {
    public static let maxAmount: Int64 = 1_000_000_000_000
    public static let maxFailedPins = 3

    /// Ids: 1–64 of letters, digits, `-`, `_`, `.`, `:`.
    public static func isValidId(_ id: String) -> Bool {
        !id.isEmpty && id.utf8.count <= 64
            && id.utf8.allSatisfy { c in
                (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || c == 0x2D || c == 0x5F
                    || c == 0x2E || c == 0x3A
            }
    }

    /// 4 to 6 digits.
    public static func isValidPin(_ pin: String) -> Bool {
        (4...6).contains(pin.utf8.count) && pin.utf8.allSatisfy { $0 >= 0x30 && $0 <= 0x39 }
    }

    /// Checks a transfer's shape, before any account is looked at.
    public static func validate(_ t: TransferPost) -> LedgerFailure? {
        guard isValidId(t.transferId) else { return .invalid("transfer id must be 1-64 of [A-Za-z0-9_.:-]") }
        guard isValidId(t.debitAccountId), isValidId(t.creditAccountId) else { return .invalid("bad account id") }
        guard t.debitAccountId != t.creditAccountId else { return .invalid("debit and credit accounts are the same") }
        guard t.amountMinor >= 1, t.amountMinor <= maxAmount else { return .invalid("amount must be 1...10^12 minor units") }
        guard Currency.isKnown(t.currency) else { return .invalid("unknown currency \(t.currency)") }
        switch t.kind {
        case .payment:
            guard let request = t.paymentRequestId, isValidId(request) else {
                return .invalid("a payment needs its payment request id")
            }
            guard t.refundOf == nil else { return .invalid("a payment is not a refund") }
            guard let pin = t.pin, isValidPin(pin) else {
                return LedgerFailure(.badRequest, "invalid_pin_format", "a PIN is 4 to 6 digits")
            }
        case .refund:
            guard let of = t.refundOf, isValidId(of) else { return .invalid("a refund needs the payment it refunds") }
            guard t.paymentRequestId == nil else { return .invalid("a refund does not pay a request") }
        case .funding:
            guard t.paymentRequestId == nil, t.refundOf == nil else { return .invalid("funding is not linked to payments") }
        }
        return nil
    }
}

/// Keyed PIN hashes: HMAC-SHA256 with a secret that lives outside the database, over `account:pin`.
public struct PinHasher: Sendable {
    private let secret: [UInt8]

    public init(secret: [UInt8]) {
        precondition(secret.count >= 16, "the PIN secret must be at least 16 bytes")
        self.secret = secret
    }

    public func hash(accountId: String, pin: String) -> [UInt8] {
        Array(HMAC<SHA256>.authenticationCode(for: Array("\(accountId):\(pin)".utf8), using: SymmetricKey(data: secret)))
    }

    public func verify(accountId: String, pin: String, against stored: [UInt8]) -> Bool {
        let computed = hash(accountId: accountId, pin: pin)
        guard computed.count == stored.count else { return false }
        var diff: UInt8 = 0
        for (a, b) in zip(computed, stored) { diff |= a ^ b }  // constant time
        return diff == 0
    }

    /// Reads the secret from `WIPAY_PIN_SECRET_FILE` (a file) or `WIPAY_PIN_SECRET` (hex or text).
    public static func load(environment: [String: String]) throws -> PinHasher {
        var text: String
        if let path = environment["WIPAY_PIN_SECRET_FILE"], !path.isEmpty {
            guard let data = FileManager.default.contents(atPath: path) else {
                throw LedgerConfigError("cannot read the PIN secret file \(path)")
            }
            text = String(decoding: data, as: UTF8.self)
        } else if let value = environment["WIPAY_PIN_SECRET"], !value.isEmpty {
            text = value
        } else {
            throw LedgerConfigError("set WIPAY_PIN_SECRET_FILE (or WIPAY_PIN_SECRET): the key for PIN hashes")
        }
        text = text.trimmingCharacters(in: .whitespacesAndNewlines)
        let bytes = Array(text.utf8)
        guard bytes.count >= 32 else { throw LedgerConfigError("the PIN secret must be at least 32 characters") }
        return PinHasher(secret: bytes)
    }
}

public struct LedgerConfigError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// The working set of one batch: the accounts, payments and paid requests it touches, locked in the
/// database, and the rules that decide each transfer. Pure — no I/O — so it is tested without a database.
public struct LedgerBook: Sendable {
    public var accounts: [String: AccountRow]
    public var payments: [String: PaymentRow]
    public var paidRequests: Set<String>
    public private(set) var changedAccounts: Set<String> = []
    public private(set) var changedPayments: Set<String> = []

    public init(accounts: [String: AccountRow], payments: [String: PaymentRow] = [:], paidRequests: Set<String> = []) {
        self.accounts = accounts
        self.payments = payments
        self.paidRequests = paidRequests
    }

    /// Decides one transfer and, when it passes, applies it to the working set. PIN failures count
    /// (and lock the wallet at three) even though the transfer itself fails.
    public mutating func apply(_ t: TransferPost, checkPin: (AccountRow, String) -> Bool) -> Result<
        (debitBalance: Int64, creditBalance: Int64), LedgerFailure
    > {
        if let failure = LedgerLimits.validate(t) { return .failure(failure) }
        guard var debit = accounts[t.debitAccountId] else { return .failure(.accountNotFound(t.debitAccountId)) }
        guard var credit = accounts[t.creditAccountId] else { return .failure(.accountNotFound(t.creditAccountId)) }
        guard debit.currency == t.currency, credit.currency == t.currency else { return .failure(.currencyMismatch) }

        var refunded: PaymentRow?
        switch t.kind {
        case .payment:
            guard debit.kind == .wallet, credit.kind == .merchant else {
                return .failure(.invalid("a payment goes from a wallet to a merchant"))
            }
            if debit.locked { return .failure(.pinLocked) }
            guard let pin = t.pin, debit.pinHash != nil, checkPin(debit, pin) else {
                debit.pinFailures += 1
                let lockedNow = debit.pinFailures >= LedgerLimits.maxFailedPins
                if lockedNow { debit.locked = true }
                accounts[debit.id] = debit
                changedAccounts.insert(debit.id)
                return .failure(lockedNow ? .pinLocked : .incorrectPin)
            }
            if debit.pinFailures != 0 {
                debit.pinFailures = 0
                changedAccounts.insert(debit.id)
            }
            if let request = t.paymentRequestId, paidRequests.contains(request) {
                accounts[debit.id] = debit
                return .failure(.requestAlreadyPaid)
            }
        case .refund:
            guard debit.kind == .merchant, credit.kind == .wallet else {
                return .failure(.invalid("a refund goes from a merchant back to a wallet"))
            }
            guard let of = t.refundOf, var payment = payments[of] else {
                return .failure(LedgerFailure(.notFound, "payment_not_found", "no payment \(t.refundOf ?? "")"))
            }
            guard payment.merchantId == debit.id, payment.walletId == credit.id, payment.currency == t.currency else {
                return .failure(.invalid("a refund returns money along its payment's path"))
            }
            guard payment.refunded + t.amountMinor <= payment.amount else { return .failure(.refundExceedsPayment) }
            payment.refunded += t.amountMinor
            refunded = payment
        case .funding:
            guard debit.kind == .funding, credit.kind == .wallet || credit.kind == .merchant else {
                return .failure(.invalid("funding goes from a funding account to a wallet or merchant"))
            }
        }

        if debit.kind != .funding && debit.balance < t.amountMinor {
            accounts[debit.id] = debit
            return .failure(.insufficientFunds(debit.id))
        }
        debit.debits += t.amountMinor
        credit.credits += t.amountMinor
        accounts[debit.id] = debit
        accounts[credit.id] = credit
        changedAccounts.insert(debit.id)
        changedAccounts.insert(credit.id)
        if let refunded {
            payments[refunded.id] = refunded
            changedPayments.insert(refunded.id)
        }
        if t.kind == .payment, let request = t.paymentRequestId {
            paidRequests.insert(request)
            payments[t.transferId] = PaymentRow(
                id: t.transferId, amount: t.amountMinor, refunded: 0, walletId: debit.id, merchantId: credit.id,
                currency: t.currency)
        }
        return .success((debitBalance: debit.balance, creditBalance: credit.balance))
    }
}
