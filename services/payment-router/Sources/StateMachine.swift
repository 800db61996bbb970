import WiPayBus

/// A payment request's state machine: `pending → succeeded | declined | expired | canceled`, every other
/// move refused with a reason. A plain value, no I/O: the handlers load it from the locked row, ask it,
/// and write what it decided (see docs/payment-flow.md, "The router's state machine").
public struct RequestStateMachine: Sendable, Equatable {
    public private(set) var status: PaymentRequestStatus
    public let expiresAtMillis: Int64

    public init(status: PaymentRequestStatus, expiresAtMillis: Int64) {
        self.status = status
        self.expiresAtMillis = expiresAtMillis
    }

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
            case .declined: "this payment request was declined; the terminal starts a new one"
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

    /// The ledger refused the payment by a business rule.
    public mutating func decline() throws(Refusal) {
        guard status == .pending else { throw Refusal(status: status) }
        status = .declined
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
