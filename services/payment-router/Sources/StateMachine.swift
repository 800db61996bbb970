import WiPayBus

/// A payment request's state machine: `pending → succeeded | declined | expired | canceled`, every other
/// move refused with a reason. A plain value, no I/O: the handlers load it from the locked row, ask it,
/// and write what it decided (see docs/payment-flow.md, "The router's state machine").
///
/// A declined *attempt* (wrong PIN, not enough money, a locked wallet, another currency) leaves the
/// request `pending`, payable by the same or another phone, until `maxDeclinedAttempts` attempts have
/// been declined: then it is final `declined` (`attempts_exhausted`).
public struct RequestStateMachine: Sendable, Equatable {
    /// The default limit of declined attempts per request (`WIPAY_MAX_DECLINED_ATTEMPTS`).
    public static let defaultMaxDeclinedAttempts = 5
    /// The bounds an operator may set the limit within.
    public static let maxDeclinedAttemptsRange = 1...100

    public private(set) var status: PaymentRequestStatus
    public let expiresAtMillis: Int64
    public private(set) var declinedAttempts: Int
    public let maxDeclinedAttempts: Int

    public init(
        status: PaymentRequestStatus, expiresAtMillis: Int64, declinedAttempts: Int = 0,
        maxDeclinedAttempts: Int = RequestStateMachine.defaultMaxDeclinedAttempts
    ) {
        precondition(Self.maxDeclinedAttemptsRange.contains(maxDeclinedAttempts), "the attempt limit is validated at start")
        self.status = status
        self.expiresAtMillis = expiresAtMillis
        self.declinedAttempts = max(0, declinedAttempts)
        self.maxDeclinedAttempts = maxDeclinedAttempts
    }

    /// The decline code of a request made final by its declined attempts.
    public static let attemptsExhausted = "attempts_exhausted"

    /// Why a move was refused: the request is already final.
    public struct Refusal: Error, Sendable, Equatable {
        public let status: PaymentRequestStatus

        public init(status: PaymentRequestStatus) { self.status = status }

        /// The contract's code for an instruction against a request in `status`.
        public var code: String {
            switch status {
            case .succeeded: "request_already_paid"
            case .declined: "request_declined"
            case .expired: "request_expired"
            case .canceled: "request_canceled"
            case .pending: "request_pending"
            }
        }

        public var message: String {
            switch status {
            case .succeeded: "this payment request has already been paid"
            case .declined: "this payment request was declined after too many declined attempts; the terminal starts a new one"
            case .expired: "this payment request has expired"
            case .canceled: "this payment request was canceled"
            case .pending: "this payment request is still pending"
            }
        }
    }

    /// What an instruction arriving at `nowMillis` may do.
    public enum InstructionDecision: Sendable, Equatable {
        /// Still pending and in time: post the payment.
        case pay
        /// Pending but past its expiry: the machine moved to `expired`; write that, then refuse.
        case expiredNow
        /// Already final: refuse with the refusal's code, change nothing.
        case refuse(Refusal)
    }

    public func isDue(nowMillis: Int64) -> Bool { nowMillis >= expiresAtMillis }

    public mutating func instruction(nowMillis: Int64) -> InstructionDecision {
        guard status == .pending else { return .refuse(Refusal(status: status)) }
        if isDue(nowMillis: nowMillis) {
            status = .expired
            return .expiredNow
        }
        return .pay
    }

    /// The ledger holds the payment. Allowed past the expiry too: money that moved is a payment.
    public mutating func succeed() throws(Refusal) {
        guard status == .pending else { throw Refusal(status: status) }
        status = .succeeded
    }

    /// What a declined attempt did to the request.
    public enum AttemptOutcome: Sendable, Equatable {
        /// The request stays `pending`; `declinedAttempts` attempts have been declined so far.
        case stillPending(declinedAttempts: Int)
        /// That was the last allowed attempt: the request is final `declined` (`attempts_exhausted`).
        case exhausted(declinedAttempts: Int)
    }

    /// The ledger refused one attempt by a business rule: no money moved. The request stays payable
    /// until the limit of declined attempts is used up.
    public mutating func declineAttempt() throws(Refusal) -> AttemptOutcome {
        guard status == .pending else { throw Refusal(status: status) }
        declinedAttempts += 1
        if declinedAttempts >= maxDeclinedAttempts {
            status = .declined
            return .exhausted(declinedAttempts: declinedAttempts)
        }
        return .stillPending(declinedAttempts: declinedAttempts)
    }

    /// What a cancel did.
    public enum CancelOutcome: Sendable, Equatable {
        case canceled
        /// Its time had run out first: it is `expired` now (and the cancel is refused).
        case expiredInstead
    }

    public mutating func cancel(nowMillis: Int64) throws(Refusal) -> CancelOutcome {
        guard status == .pending else { throw Refusal(status: status) }
        if isDue(nowMillis: nowMillis) {
            status = .expired
            return .expiredInstead
        }
        status = .canceled
        return .canceled
    }

    /// The sweeper: a pending request past its expiry expires.
    public mutating func expire(nowMillis: Int64) throws(Refusal) {
        guard status == .pending else { throw Refusal(status: status) }
        guard isDue(nowMillis: nowMillis) else { throw Refusal(status: .pending) }
        status = .expired
    }

    /// The outbox event of a declined attempt that left the request pending (the terminal hears it; the
    /// attempting device hears it as its own `payment.declined`).
    public static let attemptDeclinedEvent = "payment.attempt_declined"

    /// The outbox event a final status is told by.
    public static func eventType(_ status: PaymentRequestStatus) -> String? {
        switch status {
        case .succeeded: "payment.succeeded"
        case .declined: "payment.declined"
        case .expired: "payment.expired"
        case .canceled: "payment.canceled"
        case .pending: nil
        }
    }
}
