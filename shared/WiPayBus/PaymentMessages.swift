// Bodies of the payment flow: the gateways ask the payment-router (0x03xx), the router publishes outcomes
// from its outbox (0x04xx), the notifier turns them into per-client notices (0x05xx).
// Money is `amountMinor` + `currency` (≤ 8 bytes); times are unix milliseconds; ids and references are
// ≤ 64 bytes, descriptions ≤ 256, names ≤ 400 (100 characters), payloads ≤ 2048, idempotency keys ≤ 255;
// a body hash is the lowercase hex SHA-256 of the HTTP body (64 bytes). Lengths are UTF-8 bytes.

/// Where a payment request stands. The `name`s are the public API's `status` strings.
public enum PaymentRequestStatus: UInt8, Sendable, CaseIterable {
    /// Created, waiting for the shopper's instruction, not yet expired.
    case pending = 1
    /// Paid: exactly one payment transfer was posted for it.
    case succeeded = 2
    /// An instruction for it was refused by a business rule (or, in an `InstructionResult`, this one was).
    case declined = 3
    /// Its time ran out before it was paid.
    case expired = 4
    /// The terminal canceled it while it was pending.
    case canceled = 5

    public var name: String {
        switch self {
        case .pending: "pending"
        case .succeeded: "succeeded"
        case .declined: "declined"
        case .expired: "expired"
        case .canceled: "canceled"
        }
    }
}

/// `request.create` (pos-gateway → payment-router): a terminal asks for a payment.
/// The same idempotency key with the same body hash answers the first request again (`exists`); with
/// another body hash, `conflict`.
public struct RequestCreate: BusEncodable, Equatable {
    /// The terminal's `Idempotency-Key` header (≤ 255 bytes).
    public var idempotencyKey: String
    /// Lowercase hex SHA-256 of the HTTP body (≤ 64 bytes).
    public var bodyHash: String
    /// The authenticated terminal, and the merchant it belongs to.
    public var terminalId: String
    public var merchantId: String
    public var amountMinor: Int64
    public var currency: String
    /// The merchant's own reference (≤ 64 bytes), e.g. an order number.
    public var reference: String
    /// ≤ 256 bytes.
    public var description: String?
    /// Seconds until the request expires (the gateway fills in the default and checks the range).
    public var expiresInSeconds: Int64

    public init(
        idempotencyKey: String, bodyHash: String, terminalId: String, merchantId: String, amountMinor: Int64,
        currency: String, reference: String, description: String?, expiresInSeconds: Int64
    ) {
        self.idempotencyKey = idempotencyKey
        self.bodyHash = bodyHash
        self.terminalId = terminalId
        self.merchantId = merchantId
        self.amountMinor = amountMinor
        self.currency = currency
        self.reference = reference
        self.description = description
        self.expiresInSeconds = expiresInSeconds
    }

    public func encode(to w: inout BusWriter) {
        w.write(idempotencyKey)
        w.write(bodyHash)
        w.write(terminalId)
        w.write(merchantId)
        w.write(amountMinor)
        w.write(currency)
        w.write(reference)
        w.write(description)
        w.write(expiresInSeconds)
    }

    public init(from r: inout BusReader) throws(BusDecodeError) {
        idempotencyKey = try r.readString("idempotency_key", max: 255)
        bodyHash = try r.readString("body_hash", max: 64)
        terminalId = try r.readString("terminal_id", max: 64)
        merchantId = try r.readString("merchant_id", max: 64)
        amountMinor = try r.readInt64("amount")
        currency = try r.readString("currency", max: 8)
        reference = try r.readString("reference", max: 64)
        description = try r.readOptionalString("description", max: 256)
        expiresInSeconds = try r.readInt64("expires_in")
    }
}

/// `request.get` and `request.cancel`: one payment request, as seen by one merchant.
public struct RequestRef: BusEncodable, Equatable {
    public var requestId: String
    /// The caller's merchant: another merchant's request answers `notFound`, as an unknown id does.
    public var merchantId: String
    /// `request.cancel`: the terminal's `Idempotency-Key` header (≤ 255 bytes); nil for `request.get`.
    public var idempotencyKey: String?

    public init(requestId: String, merchantId: String, idempotencyKey: String? = nil) {
        self.requestId = requestId
        self.merchantId = merchantId
        self.idempotencyKey = idempotencyKey
    }

    public func encode(to w: inout BusWriter) {
        w.write(requestId)
        w.write(merchantId)
        w.write(idempotencyKey)
    }

    public init(from r: inout BusReader) throws(BusDecodeError) {
        requestId = try r.readString("request_id", max: 64)
        merchantId = try r.readString("merchant_id", max: 64)
        idempotencyKey = try r.readOptionalString("idempotency_key", max: 255)
    }
}

/// `request.list`: one terminal's requests created at or after `sinceMillis`, newest first, at most `limit`.
public struct RequestList: BusEncodable, Equatable {
    public static let maxLimit = 200
    public var terminalId: String
    public var merchantId: String
    public var sinceMillis: Int64
    public var limit: Int64

    public init(terminalId: String, merchantId: String, sinceMillis: Int64, limit: Int64) {
        self.terminalId = terminalId
        self.merchantId = merchantId
        self.sinceMillis = sinceMillis
        self.limit = limit
    }

    public func encode(to w: inout BusWriter) {
        w.write(terminalId)
        w.write(merchantId)
        w.write(sinceMillis)
        w.write(limit)
    }

    public init(from r: inout BusReader) throws(BusDecodeError) {
        terminalId = try r.readString("terminal_id", max: 64)
        merchantId = try r.readString("merchant_id", max: 64)
        sinceMillis = try r.readInt64("since")
        limit = try r.readInt64("limit")
    }
}

/// The reply to `request.list`.
public struct PaymentRequestPage: BusEncodable, Equatable {
    public var requests: [PaymentRequestInfo]

    public init(requests: [PaymentRequestInfo]) { self.requests = requests }

    public func encode(to w: inout BusWriter) { w.write(requests) }

    public init(from r: inout BusReader) throws(BusDecodeError) {
        requests = try r.readArray(PaymentRequestInfo.self, "requests", max: RequestList.maxLimit)
    }
}

/// A payment request as it stands now: the reply to `request.create`, `request.get` and `request.cancel`.
public struct PaymentRequestInfo: BusEncodable, Equatable {
    public var requestId: String
    public var status: PaymentRequestStatus
    public var amountMinor: Int64
    public var currency: String
    public var reference: String
    public var description: String?
    public var merchantId: String
    /// ≤ 100 characters, so ≤ 400 bytes.
    public var merchantName: String
    public var terminalId: String
    public var createdAtMillis: Int64
    public var expiresAtMillis: Int64
    /// What the terminal hands to the phone (≤ 2048 bytes): signed by the server, never anything secret.
    public var payload: String
    /// Set once `succeeded`: the payment's id, when it was posted, and the payer's masked alias (never a
    /// phone number or an account id).
    public var paymentId: String?
    public var postedAtMillis: Int64?
    public var payerAlias: String?
    /// How many instruction attempts on it were declined (appended field: absent in older bodies, read as 0).
    public var declinedAttempts: Int64
    /// Set once `declined`: why (`attempts_exhausted`). Appended field.
    public var declineCode: String?

    public init(
        requestId: String, status: PaymentRequestStatus, amountMinor: Int64, currency: String, reference: String,
        description: String?, merchantId: String, merchantName: String, terminalId: String, createdAtMillis: Int64,
        expiresAtMillis: Int64, payload: String, paymentId: String? = nil, postedAtMillis: Int64? = nil,
        payerAlias: String? = nil, declinedAttempts: Int64 = 0, declineCode: String? = nil
    ) {
        self.declinedAttempts = declinedAttempts
        self.declineCode = declineCode
        self.requestId = requestId
        self.status = status
        self.amountMinor = amountMinor
        self.currency = currency
        self.reference = reference
        self.description = description
        self.merchantId = merchantId
        self.merchantName = merchantName
        self.terminalId = terminalId
        self.createdAtMillis = createdAtMillis
        self.expiresAtMillis = expiresAtMillis
        self.payload = payload
        self.paymentId = paymentId
        self.postedAtMillis = postedAtMillis
        self.payerAlias = payerAlias
    }

    public func encode(to w: inout BusWriter) {
        w.write(requestId)
        w.write(status.rawValue)
        w.write(amountMinor)
        w.write(currency)
        w.write(reference)
        w.write(description)
        w.write(merchantId)
        w.write(merchantName)
        w.write(terminalId)
        w.write(createdAtMillis)
        w.write(expiresAtMillis)
        w.write(payload)
        w.write(paymentId)
        w.write(postedAtMillis)
        w.write(payerAlias)
        w.write(declinedAttempts)
        w.write(declineCode)
    }

    public init(from r: inout BusReader) throws(BusDecodeError) {
        requestId = try r.readString("request_id", max: 64)
        guard let status = PaymentRequestStatus(rawValue: try r.readUInt8("status")) else {
            throw BusDecodeError(.invalidValue, "status")
        }
        self.status = status
        amountMinor = try r.readInt64("amount")
        currency = try r.readString("currency", max: 8)
        reference = try r.readString("reference", max: 64)
        description = try r.readOptionalString("description", max: 256)
        merchantId = try r.readString("merchant_id", max: 64)
        merchantName = try r.readString("merchant_name", max: 400)
        terminalId = try r.readString("terminal_id", max: 64)
        createdAtMillis = try r.readInt64("created_at")
        expiresAtMillis = try r.readInt64("expires_at")
        payload = try r.readString("payload", max: 2048)
        paymentId = try r.readOptionalString("payment_id", max: 64)
        postedAtMillis = try r.readOptionalInt64("posted_at")
        payerAlias = try r.readOptionalString("payer_alias", max: 64)
        // Appended fields: a body from before them ends here.
        if r.isAtEnd {
            declinedAttempts = 0
            declineCode = nil
        } else {
            declinedAttempts = try r.readInt64("declined_attempts")
            guard declinedAttempts >= 0 else { throw BusDecodeError(.invalidValue, "declined_attempts") }
            declineCode = try r.readOptionalString("decline_code", max: 64)
        }
    }
}

/// `instruction.submit` (phone-gateway → payment-router): a signed-in device pays the request in `payload`.
public struct InstructionSubmit: BusEncodable, Equatable {
    /// The device's `Idempotency-Key` header (≤ 255 bytes).
    public var idempotencyKey: String
    /// Lowercase hex SHA-256 of the HTTP body (≤ 64 bytes).
    public var bodyHash: String
    /// The authenticated device, and the wallet account it pays from.
    public var deviceId: String
    public var accountId: String
    /// The payload the terminal handed over (≤ 2048 bytes); the router verifies its signature.
    public var payload: String
    /// The payer's PIN, 4 to 6 digits (checked by the gateway; ≤ 16 bytes on the wire, like the ledger's).
    /// Passed on to the ledger only: never logged, stored or echoed.
    public var pin: String
    /// Lowercase hex SHA-256 of the raw device signature the gateway verified (64 bytes), so that every
    /// router instance can tell a resend (same signature, same key and body) from a replay (same signature,
    /// another key or body). Empty when not known (appended field: absent in older bodies).
    public var signatureDigest: String

    public init(
        idempotencyKey: String, bodyHash: String, deviceId: String, accountId: String, payload: String, pin: String,
        signatureDigest: String = ""
    ) {
        self.signatureDigest = signatureDigest
        self.idempotencyKey = idempotencyKey
        self.bodyHash = bodyHash
        self.deviceId = deviceId
        self.accountId = accountId
        self.payload = payload
        self.pin = pin
    }

    public func encode(to w: inout BusWriter) {
        w.write(idempotencyKey)
        w.write(bodyHash)
        w.write(deviceId)
        w.write(accountId)
        w.write(payload)
        w.write(pin)
        w.write(signatureDigest)
    }

    public init(from r: inout BusReader) throws(BusDecodeError) {
        idempotencyKey = try r.readString("idempotency_key", max: 255)
        bodyHash = try r.readString("body_hash", max: 64)
        deviceId = try r.readString("device_id", max: 64)
        accountId = try r.readString("account_id", max: 64)
        payload = try r.readString("payload", max: 2048)
        pin = try r.readString("pin", max: 16)
        signatureDigest = r.isAtEnd ? "" : try r.readString("signature_digest", max: 64)
    }
}

/// The reply to `instruction.submit`: `succeeded` with the payment, or `declined` with the error code
/// (`insufficient_funds`, `incorrect_pin`, `pin_locked`, `request_expired`, …).
public struct InstructionResult: BusEncodable, Equatable {
    /// `succeeded` or `declined`.
    public var status: PaymentRequestStatus
    public var paymentId: String?
    public var requestId: String
    public var amountMinor: Int64
    public var currency: String
    public var merchantId: String
    /// ≤ 100 characters, so ≤ 400 bytes.
    public var merchantName: String
    /// The payer's balance after the payment.
    public var balance: Int64?
    /// When declined: like `ErrorBody` (code ≤ 64 bytes, message ≤ 1024).
    public var errorCode: String?
    public var errorMessage: String?

    public init(
        status: PaymentRequestStatus, paymentId: String?, requestId: String, amountMinor: Int64, currency: String,
        merchantId: String, merchantName: String, balance: Int64?, errorCode: String? = nil, errorMessage: String? = nil
    ) {
        self.status = status
        self.paymentId = paymentId
        self.requestId = requestId
        self.amountMinor = amountMinor
        self.currency = currency
        self.merchantId = merchantId
        self.merchantName = merchantName
        self.balance = balance
        self.errorCode = errorCode
        self.errorMessage = errorMessage
    }

    public func encode(to w: inout BusWriter) {
        w.write(status.rawValue)
        w.write(paymentId)
        w.write(requestId)
        w.write(amountMinor)
        w.write(currency)
        w.write(merchantId)
        w.write(merchantName)
        w.write(balance)
        w.write(errorCode)
        w.write(errorMessage)
    }

    public init(from r: inout BusReader) throws(BusDecodeError) {
        guard let status = PaymentRequestStatus(rawValue: try r.readUInt8("status")) else {
            throw BusDecodeError(.invalidValue, "status")
        }
        self.status = status
        paymentId = try r.readOptionalString("payment_id", max: 64)
        requestId = try r.readString("request_id", max: 64)
        amountMinor = try r.readInt64("amount")
        currency = try r.readString("currency", max: 8)
        merchantId = try r.readString("merchant_id", max: 64)
        merchantName = try r.readString("merchant_name", max: 400)
        balance = try r.readOptionalInt64("balance")
        errorCode = try r.readOptionalString("error_code", max: 64)
        errorMessage = try r.readOptionalString("error_message", max: 1024)
    }
}

/// `refund.create` (pos-gateway → payment-router): refund part or all of a payment to its payer.
public struct RefundCreate: BusEncodable, Equatable {
    /// The terminal's `Idempotency-Key` header (≤ 255 bytes).
    public var idempotencyKey: String
    /// Lowercase hex SHA-256 of the HTTP body (≤ 64 bytes).
    public var bodyHash: String
    /// The caller's merchant: another merchant's payment answers `notFound`.
    public var merchantId: String
    public var paymentId: String
    /// nil refunds what is left of the payment.
    public var amountMinor: Int64?

    public init(idempotencyKey: String, bodyHash: String, merchantId: String, paymentId: String, amountMinor: Int64?) {
        self.idempotencyKey = idempotencyKey
        self.bodyHash = bodyHash
        self.merchantId = merchantId
        self.paymentId = paymentId
        self.amountMinor = amountMinor
    }

    public func encode(to w: inout BusWriter) {
        w.write(idempotencyKey)
        w.write(bodyHash)
        w.write(merchantId)
        w.write(paymentId)
        w.write(amountMinor)
    }

    public init(from r: inout BusReader) throws(BusDecodeError) {
        idempotencyKey = try r.readString("idempotency_key", max: 255)
        bodyHash = try r.readString("body_hash", max: 64)
        merchantId = try r.readString("merchant_id", max: 64)
        paymentId = try r.readString("payment_id", max: 64)
        amountMinor = try r.readOptionalInt64("amount")
    }
}

/// The reply to `refund.create`.
public struct RefundInfo: BusEncodable, Equatable {
    public var refundId: String
    public var paymentId: String
    public var amountMinor: Int64
    public var currency: String
    /// The public API's refund status string (≤ 32 bytes): `succeeded`.
    public var status: String

    public init(refundId: String, paymentId: String, amountMinor: Int64, currency: String, status: String) {
        self.refundId = refundId
        self.paymentId = paymentId
        self.amountMinor = amountMinor
        self.currency = currency
        self.status = status
    }

    public func encode(to w: inout BusWriter) {
        w.write(refundId)
        w.write(paymentId)
        w.write(amountMinor)
        w.write(currency)
        w.write(status)
    }

    public init(from r: inout BusReader) throws(BusDecodeError) {
        refundId = try r.readString("refund_id", max: 64)
        paymentId = try r.readString("payment_id", max: 64)
        amountMinor = try r.readInt64("amount")
        currency = try r.readString("currency", max: 8)
        status = try r.readString("status", max: 32)
    }
}

/// `outcome.published` (event on `outcome.<request id>`, from the payment-router's outbox): a request
/// reached a final state, or a refund of its payment was posted.
public struct OutcomePublished: BusEncodable, Equatable {
    /// The outbox row's sequence number: increasing, so a consumer can tell what it has already seen.
    public var outboxSeq: Int64
    /// ≤ 32 bytes: `payment.succeeded`, `payment.declined`, `payment.expired`, `payment.canceled`,
    /// `refund.succeeded`.
    public var eventType: String
    public var requestId: String
    public var status: PaymentRequestStatus
    /// The payment's amount; for `refund.succeeded`, the refund's.
    public var amountMinor: Int64
    public var currency: String
    public var reference: String
    public var terminalId: String
    /// The paying (or declined) device, when one is known: it gets a notice too.
    public var deviceId: String?
    public var merchantId: String
    public var paymentId: String?
    public var refundId: String?
    public var atMillis: Int64
    /// ≤ 400 bytes: shown to the payer.
    public var merchantName: String?
    /// For `payment.declined`: why (`insufficient_funds`, `incorrect_pin`, …).
    public var errorCode: String?
    /// For `payment.succeeded`: the payer's masked alias, for the terminal.
    public var payerAlias: String?
    /// For `payment.attempt_declined` and `payment.declined`: the request's declined attempts so far
    /// (appended field: absent in older bodies and outbox rows, read as nil).
    public var declinedAttempts: Int64?

    public init(
        outboxSeq: Int64, eventType: String, requestId: String, status: PaymentRequestStatus, amountMinor: Int64,
        currency: String, reference: String, terminalId: String, deviceId: String?, merchantId: String,
        paymentId: String?, refundId: String?, atMillis: Int64, merchantName: String? = nil, errorCode: String? = nil,
        payerAlias: String? = nil, declinedAttempts: Int64? = nil
    ) {
        self.declinedAttempts = declinedAttempts
        self.merchantName = merchantName
        self.errorCode = errorCode
        self.payerAlias = payerAlias
        self.outboxSeq = outboxSeq
        self.eventType = eventType
        self.requestId = requestId
        self.status = status
        self.amountMinor = amountMinor
        self.currency = currency
        self.reference = reference
        self.terminalId = terminalId
        self.deviceId = deviceId
        self.merchantId = merchantId
        self.paymentId = paymentId
        self.refundId = refundId
        self.atMillis = atMillis
    }

    public func encode(to w: inout BusWriter) {
        w.write(outboxSeq)
        w.write(eventType)
        w.write(requestId)
        w.write(status.rawValue)
        w.write(amountMinor)
        w.write(currency)
        w.write(reference)
        w.write(terminalId)
        w.write(deviceId)
        w.write(merchantId)
        w.write(paymentId)
        w.write(refundId)
        w.write(atMillis)
        w.write(merchantName)
        w.write(errorCode)
        w.write(payerAlias)
        w.write(declinedAttempts)
    }

    public init(from r: inout BusReader) throws(BusDecodeError) {
        outboxSeq = try r.readInt64("outbox_seq")
        eventType = try r.readString("event_type", max: 32)
        requestId = try r.readString("request_id", max: 64)
        guard let status = PaymentRequestStatus(rawValue: try r.readUInt8("status")) else {
            throw BusDecodeError(.invalidValue, "status")
        }
        self.status = status
        amountMinor = try r.readInt64("amount")
        currency = try r.readString("currency", max: 8)
        reference = try r.readString("reference", max: 64)
        terminalId = try r.readString("terminal_id", max: 64)
        deviceId = try r.readOptionalString("device_id", max: 64)
        merchantId = try r.readString("merchant_id", max: 64)
        paymentId = try r.readOptionalString("payment_id", max: 64)
        refundId = try r.readOptionalString("refund_id", max: 64)
        atMillis = try r.readInt64("at")
        merchantName = try r.readOptionalString("merchant_name", max: 400)
        errorCode = try r.readOptionalString("error_code", max: 64)
        payerAlias = try r.readOptionalString("payer_alias", max: 64)
        declinedAttempts = r.isAtEnd ? nil : try r.readOptionalInt64("declined_attempts")
    }
}

/// `notice.delivered` (event on `notice.pos.<terminal id>` / `notice.dev.<device id>`, and the items of a
/// `NoticeBatch`): one Server-Sent Event for one client stream.
public struct NoticeDelivered: BusEncodable, Equatable {
    /// ≤ 80 bytes: `pos:<terminal id>` or `dev:<device id>`.
    public var recipient: String
    /// Per recipient, increasing: the SSE `id:` a client resumes from with `Last-Event-ID`.
    public var seq: Int64
    /// ≤ 32 bytes, e.g. `payment.succeeded`: the SSE `event:`.
    public var eventType: String
    /// The SSE `data:` JSON (≤ 16 KiB).
    public var dataJSON: String
    public var atMillis: Int64

    public init(recipient: String, seq: Int64, eventType: String, dataJSON: String, atMillis: Int64) {
        self.recipient = recipient
        self.seq = seq
        self.eventType = eventType
        self.dataJSON = dataJSON
        self.atMillis = atMillis
    }

    public func encode(to w: inout BusWriter) {
        w.write(recipient)
        w.write(seq)
        w.write(eventType)
        w.write(dataJSON)
        w.write(atMillis)
    }

    public init(from r: inout BusReader) throws(BusDecodeError) {
        recipient = try r.readString("recipient", max: 80)
        seq = try r.readInt64("seq")
        eventType = try r.readString("event_type", max: 32)
        dataJSON = try r.readString("data", max: 16 * 1024)
        atMillis = try r.readInt64("at")
    }
}

/// `notice.ack`: the recipient's stream has sent every notice up to and including `seq`.
public struct NoticeAck: BusEncodable, Equatable {
    public var recipient: String
    public var seq: Int64

    public init(recipient: String, seq: Int64) {
        self.recipient = recipient
        self.seq = seq
    }

    public func encode(to w: inout BusWriter) {
        w.write(recipient)
        w.write(seq)
    }

    public init(from r: inout BusReader) throws(BusDecodeError) {
        recipient = try r.readString("recipient", max: 80)
        seq = try r.readInt64("seq")
    }
}

/// `notice.replay`: the recipient's notices after `afterSeq`, oldest first, at most `limit` of them (the
/// notifier refuses a limit above 1000; the codec does not judge it).
public struct NoticeReplay: BusEncodable, Equatable {
    public var recipient: String
    public var afterSeq: Int64
    public var limit: UInt32

    public init(recipient: String, afterSeq: Int64, limit: UInt32) {
        self.recipient = recipient
        self.afterSeq = afterSeq
        self.limit = limit
    }

    public func encode(to w: inout BusWriter) {
        w.write(recipient)
        w.write(afterSeq)
        w.write(limit)
    }

    public init(from r: inout BusReader) throws(BusDecodeError) {
        recipient = try r.readString("recipient", max: 80)
        afterSeq = try r.readInt64("after_seq")
        limit = try r.readUInt32("limit")
    }
}

/// The reply to `notice.replay`: at most 1000 notices, oldest first.
public struct NoticeBatch: BusEncodable, Equatable {
    public var notices: [NoticeDelivered]

    public init(notices: [NoticeDelivered]) { self.notices = notices }
    public func encode(to w: inout BusWriter) { w.write(notices) }
    public init(from r: inout BusReader) throws(BusDecodeError) {
        notices = try r.readArray(NoticeDelivered.self, "notices", max: 1000)
    }
}

/// `outcome.deliver.batch` (relay → notifier): outbox rows in `outbox_seq` order, stored in one transaction.
/// The reply is `Empty` (`ok`) once every one of them is stored (now or by an earlier delivery).
public struct OutcomeBatch: BusEncodable, Equatable {
    public static let maxCount = 1000
    public var outcomes: [OutcomePublished]

    public init(outcomes: [OutcomePublished]) { self.outcomes = outcomes }
    public func encode(to w: inout BusWriter) { w.write(outcomes) }
    public init(from r: inout BusReader) throws(BusDecodeError) {
        outcomes = try r.readArray(OutcomePublished.self, "outcomes", max: Self.maxCount)
    }
}
