// Bodies of onboarding (merchants, terminals, wallets, devices), account summaries, traces, payload keys
// and the ledger's payment lookup: one struct per wire body, fields in wire order. Lengths are UTF-8 bytes; see docs/payment-flow.md for who sends what.

/// `merchant.add` (payctl → payment-router): onboard a merchant; the router opens its ledger account.
public struct MerchantAdd: BusEncodable, Equatable {
    /// The name shoppers see (1-100 characters).
    public var name: String
    /// ISO 4217 alphabetic code of its account.
    public var currency: String

    public init(name: String, currency: String) {
        self.name = name
        self.currency = currency
    }

    public func encode(to w: inout BusWriter) {
        w.write(name)
        w.write(currency)
    }

    public init(from r: inout BusReader) throws(BusDecodeError) {
        name = try r.readString("name", max: 400)
        currency = try r.readString("currency", max: 8)
    }
}

/// The reply to `merchant.add`.
public struct MerchantInfo: BusEncodable, Equatable {
    public var merchantId: String
    public var accountId: String
    public var name: String
    public var currency: String

    public init(merchantId: String, accountId: String, name: String, currency: String) {
        self.merchantId = merchantId
        self.accountId = accountId
        self.name = name
        self.currency = currency
    }

    public func encode(to w: inout BusWriter) {
        w.write(merchantId)
        w.write(accountId)
        w.write(name)
        w.write(currency)
    }

    public init(from r: inout BusReader) throws(BusDecodeError) {
        merchantId = try r.readString("merchant_id", max: 64)
        accountId = try r.readString("account_id", max: 64)
        name = try r.readString("name", max: 400)
        currency = try r.readString("currency", max: 8)
    }
}

/// `terminal.add` (payctl → payment-router): issue a terminal key for one merchant.
public struct TerminalAdd: BusEncodable, Equatable {
    public var merchantId: String
    /// 1-100 characters.
    public var name: String

    public init(merchantId: String, name: String) {
        self.merchantId = merchantId
        self.name = name
    }

    public func encode(to w: inout BusWriter) {
        w.write(merchantId)
        w.write(name)
    }

    public init(from r: inout BusReader) throws(BusDecodeError) {
        merchantId = try r.readString("merchant_id", max: 64)
        name = try r.readString("name", max: 400)
    }
}

/// The reply to `terminal.add`: the key is shown once; the router keeps only its SHA-256.
public struct TerminalIssued: BusEncodable, Equatable {
    public var terminalId: String
    public var merchantId: String
    public var terminalKey: String

    public init(terminalId: String, merchantId: String, terminalKey: String) {
        self.terminalId = terminalId
        self.merchantId = merchantId
        self.terminalKey = terminalKey
    }

    public func encode(to w: inout BusWriter) {
        w.write(terminalId)
        w.write(merchantId)
        w.write(terminalKey)
    }

    public init(from r: inout BusReader) throws(BusDecodeError) {
        terminalId = try r.readString("terminal_id", max: 64)
        merchantId = try r.readString("merchant_id", max: 64)
        terminalKey = try r.readString("terminal_key", max: 128)
    }
}

/// `terminal.auth` (pos-gateway → payment-router): who holds this key? `notFound` if nobody.
public struct TerminalAuth: BusEncodable, Equatable {
    /// Lowercase hex SHA-256 of the bearer key.
    public var keyHash: String

    public init(keyHash: String) {
        self.keyHash = keyHash
    }

    public func encode(to w: inout BusWriter) {
        w.write(keyHash)
    }

    public init(from r: inout BusReader) throws(BusDecodeError) {
        keyHash = try r.readString("key_hash", max: 64)
    }
}

/// The reply to `terminal.auth`.
public struct TerminalInfo: BusEncodable, Equatable {
    public var terminalId: String
    public var merchantId: String
    public var merchantName: String
    public var currency: String

    public init(terminalId: String, merchantId: String, merchantName: String, currency: String) {
        self.terminalId = terminalId
        self.merchantId = merchantId
        self.merchantName = merchantName
        self.currency = currency
    }

    public func encode(to w: inout BusWriter) {
        w.write(terminalId)
        w.write(merchantId)
        w.write(merchantName)
        w.write(currency)
    }

    public init(from r: inout BusReader) throws(BusDecodeError) {
        terminalId = try r.readString("terminal_id", max: 64)
        merchantId = try r.readString("merchant_id", max: 64)
        merchantName = try r.readString("merchant_name", max: 400)
        currency = try r.readString("currency", max: 8)
    }
}

/// `wallet.add` (payctl → payment-router): open a wallet with a PIN and issue an enrollment code.
public struct WalletAdd: BusEncodable, Equatable {
    /// The holder's name (1-100 characters); only a masked alias of it is ever shown to merchants.
    public var name: String
    /// 4 to 6 digits, passed on to the ledger only: never logged or stored by the router.
    public var pin: String
    public var currency: String

    public init(name: String, pin: String, currency: String) {
        self.name = name
        self.pin = pin
        self.currency = currency
    }

    public func encode(to w: inout BusWriter) {
        w.write(name)
        w.write(pin)
        w.write(currency)
    }

    public init(from r: inout BusReader) throws(BusDecodeError) {
        name = try r.readString("name", max: 400)
        pin = try r.readString("pin", max: 16)
        currency = try r.readString("currency", max: 8)
    }
}

/// The reply to `wallet.add`: the one-time enrollment code is shown once.
public struct WalletIssued: BusEncodable, Equatable {
    public var accountId: String
    public var enrollmentCode: String

    public init(accountId: String, enrollmentCode: String) {
        self.accountId = accountId
        self.enrollmentCode = enrollmentCode
    }

    public func encode(to w: inout BusWriter) {
        w.write(accountId)
        w.write(enrollmentCode)
    }

    public init(from r: inout BusReader) throws(BusDecodeError) {
        accountId = try r.readString("account_id", max: 64)
        enrollmentCode = try r.readString("enrollment_code", max: 64)
    }
}

/// `device.enroll` (phone-gateway → payment-router): bind a device key to the wallet of a one-time code.
public struct DeviceEnroll: BusEncodable, Equatable {
    public var enrollmentCode: String
    /// Raw 32-byte Ed25519 public key.
    public var publicKey: [UInt8]
    /// The device's name (1-100 characters).
    public var name: String

    public init(enrollmentCode: String, publicKey: [UInt8], name: String) {
        self.enrollmentCode = enrollmentCode
        self.publicKey = publicKey
        self.name = name
    }

    public func encode(to w: inout BusWriter) {
        w.write(enrollmentCode)
        w.write(bytes: publicKey)
        w.write(name)
    }

    public init(from r: inout BusReader) throws(BusDecodeError) {
        enrollmentCode = try r.readString("enrollment_code", max: 64)
        publicKey = try r.readBytes("public_key", max: 32)
        name = try r.readString("name", max: 400)
    }
}

/// `device.get` (phone-gateway → payment-router).
public struct DeviceRef: BusEncodable, Equatable {
    public var deviceId: String

    public init(deviceId: String) {
        self.deviceId = deviceId
    }

    public func encode(to w: inout BusWriter) {
        w.write(deviceId)
    }

    public init(from r: inout BusReader) throws(BusDecodeError) {
        deviceId = try r.readString("device_id", max: 64)
    }
}

/// The reply to `device.enroll` and `device.get`.
public struct DeviceInfo: BusEncodable, Equatable {
    public var deviceId: String
    public var accountId: String
    public var publicKey: [UInt8]
    public var name: String
    /// The wallet's currency.
    public var currency: String

    public init(deviceId: String, accountId: String, publicKey: [UInt8], name: String, currency: String) {
        self.deviceId = deviceId
        self.accountId = accountId
        self.publicKey = publicKey
        self.name = name
        self.currency = currency
    }

    public func encode(to w: inout BusWriter) {
        w.write(deviceId)
        w.write(accountId)
        w.write(bytes: publicKey)
        w.write(name)
        w.write(currency)
    }

    public init(from r: inout BusReader) throws(BusDecodeError) {
        deviceId = try r.readString("device_id", max: 64)
        accountId = try r.readString("account_id", max: 64)
        publicKey = try r.readBytes("public_key", max: 32)
        name = try r.readString("name", max: 400)
        currency = try r.readString("currency", max: 8)
    }
}

/// One payment in `AccountSummary.recent`.
public struct PaymentSummary: BusEncodable, Equatable {
    public var paymentId: String
    public var requestId: String
    public var amountMinor: Int64
    public var currency: String
    public var merchantId: String
    public var merchantName: String
    /// How much of it has been refunded.
    public var refundedMinor: Int64
    public var postedAtMillis: Int64

    public init(paymentId: String, requestId: String, amountMinor: Int64, currency: String, merchantId: String, merchantName: String, refundedMinor: Int64, postedAtMillis: Int64) {
        self.paymentId = paymentId
        self.requestId = requestId
        self.amountMinor = amountMinor
        self.currency = currency
        self.merchantId = merchantId
        self.merchantName = merchantName
        self.refundedMinor = refundedMinor
        self.postedAtMillis = postedAtMillis
    }

    public func encode(to w: inout BusWriter) {
        w.write(paymentId)
        w.write(requestId)
        w.write(amountMinor)
        w.write(currency)
        w.write(merchantId)
        w.write(merchantName)
        w.write(refundedMinor)
        w.write(postedAtMillis)
    }

    public init(from r: inout BusReader) throws(BusDecodeError) {
        paymentId = try r.readString("payment_id", max: 64)
        requestId = try r.readString("request_id", max: 64)
        amountMinor = try r.readInt64("amount")
        currency = try r.readString("currency", max: 8)
        merchantId = try r.readString("merchant_id", max: 64)
        merchantName = try r.readString("merchant_name", max: 400)
        refundedMinor = try r.readInt64("refunded")
        postedAtMillis = try r.readInt64("posted_at")
    }
}

/// The reply to `account.summary` (phone-gateway → payment-router, body `AccountRef`).
public struct AccountSummary: BusEncodable, Equatable {
    public var accountId: String
    public var currency: String
    public var balance: Int64
    /// Newest first, at most 50.
    public var recent: [PaymentSummary]

    public init(accountId: String, currency: String, balance: Int64, recent: [PaymentSummary]) {
        self.accountId = accountId
        self.currency = currency
        self.balance = balance
        self.recent = recent
    }

    public func encode(to w: inout BusWriter) {
        w.write(accountId)
        w.write(currency)
        w.write(balance)
        w.write(recent)
    }

    public init(from r: inout BusReader) throws(BusDecodeError) {
        accountId = try r.readString("account_id", max: 64)
        currency = try r.readString("currency", max: 8)
        balance = try r.readInt64("balance")
        recent = try r.readArray(PaymentSummary.self, "recent", max: 50)
    }
}

/// `payment.trace` (payctl → payment-router).
public struct TraceQuery: BusEncodable, Equatable {
    public var requestId: String

    public init(requestId: String) {
        self.requestId = requestId
    }

    public func encode(to w: inout BusWriter) {
        w.write(requestId)
    }

    public init(from r: inout BusReader) throws(BusDecodeError) {
        requestId = try r.readString("request_id", max: 64)
    }
}

/// One step of a request's path through the stages.
public struct TraceStep: BusEncodable, Equatable {
    public var atMillis: Int64
    /// e.g. `payment-router`, `ledger`, `notifier`.
    public var stage: String
    /// e.g. `created`, `instruction.received`, `ledger.posted`, `outbox.delivered`.
    public var event: String
    /// Never a PIN or key.
    public var detail: String

    public init(atMillis: Int64, stage: String, event: String, detail: String) {
        self.atMillis = atMillis
        self.stage = stage
        self.event = event
        self.detail = detail
    }

    public func encode(to w: inout BusWriter) {
        w.write(atMillis)
        w.write(stage)
        w.write(event)
        w.write(detail)
    }

    public init(from r: inout BusReader) throws(BusDecodeError) {
        atMillis = try r.readInt64("at")
        stage = try r.readString("stage", max: 32)
        event = try r.readString("event", max: 64)
        detail = try r.readString("detail", max: 1024)
    }
}

/// The reply to `payment.trace`: the request as it stands and its steps, oldest first.
public struct PaymentTrace: BusEncodable, Equatable {
    public var request: PaymentRequestInfo
    public var steps: [TraceStep]

    public init(request: PaymentRequestInfo, steps: [TraceStep]) {
        self.request = request
        self.steps = steps
    }

    public func encode(to w: inout BusWriter) {
        w.write(request)
        w.write(steps)
    }

    public init(from r: inout BusReader) throws(BusDecodeError) {
        request = try r.read(PaymentRequestInfo.self)
        steps = try r.readArray(TraceStep.self, "steps", max: 1000)
    }
}

/// A public key that verifies payloads.
public struct PayloadKey: BusEncodable, Equatable {
    public var keyId: String
    /// Raw 32-byte Ed25519 public key.
    public var publicKey: [UInt8]

    public init(keyId: String, publicKey: [UInt8]) {
        self.keyId = keyId
        self.publicKey = publicKey
    }

    public func encode(to w: inout BusWriter) {
        w.write(keyId)
        w.write(bytes: publicKey)
    }

    public init(from r: inout BusReader) throws(BusDecodeError) {
        keyId = try r.readString("key_id", max: 16)
        publicKey = try r.readBytes("public_key", max: 32)
    }
}

/// The reply to `payload.keys`: every key a valid payload may be signed with.
public struct PayloadKeys: BusEncodable, Equatable {
    public var keys: [PayloadKey]

    public init(keys: [PayloadKey]) {
        self.keys = keys
    }

    public func encode(to w: inout BusWriter) {
        w.write(keys)
    }

    public init(from r: inout BusReader) throws(BusDecodeError) {
        keys = try r.readArray(PayloadKey.self, "keys", max: 16)
    }
}

/// `payment.lookup` (payment-router → ledger): the payment transfer posted for a request, if any.
public struct PaymentLookup: BusEncodable, Equatable {
    public var requestId: String

    public init(requestId: String) {
        self.requestId = requestId
    }

    public func encode(to w: inout BusWriter) {
        w.write(requestId)
    }

    public init(from r: inout BusReader) throws(BusDecodeError) {
        requestId = try r.readString("request_id", max: 64)
    }
}

/// The reply to `payment.lookup`.
public struct PaymentRecord: BusEncodable, Equatable {
    public var transferId: String
    public var debitAccountId: String
    public var creditAccountId: String
    public var amountMinor: Int64
    public var currency: String
    public var postedAtMillis: Int64

    public init(transferId: String, debitAccountId: String, creditAccountId: String, amountMinor: Int64, currency: String, postedAtMillis: Int64) {
        self.transferId = transferId
        self.debitAccountId = debitAccountId
        self.creditAccountId = creditAccountId
        self.amountMinor = amountMinor
        self.currency = currency
        self.postedAtMillis = postedAtMillis
    }

    public func encode(to w: inout BusWriter) {
        w.write(transferId)
        w.write(debitAccountId)
        w.write(creditAccountId)
        w.write(amountMinor)
        w.write(currency)
        w.write(postedAtMillis)
    }

    public init(from r: inout BusReader) throws(BusDecodeError) {
        transferId = try r.readString("transfer_id", max: 64)
        debitAccountId = try r.readString("debit_account_id", max: 64)
        creditAccountId = try r.readString("credit_account_id", max: 64)
        amountMinor = try r.readInt64("amount")
        currency = try r.readString("currency", max: 8)
        postedAtMillis = try r.readInt64("posted_at")
    }
}
