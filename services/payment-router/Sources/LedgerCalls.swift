import WiPayBus

/// What the ledger said to a transfer.
enum LedgerAnswer: Sendable {
    /// Posted now (`ok`) or earlier with the same id and fields (`exists`).
    case posted(TransferResult)
    /// Refused: `declined` by a business rule, or a 4xx about the request itself.
    case refused(Status, ErrorBody)
    /// No usable answer (timeouts, 5xx, undecodable): nothing is known; retry later with the same id.
    case unavailable(String)
}

extension PaymentRouter {
    /// Posts `post` to the ledger (the bus client retries with the same request id; the ledger deduplicates
    /// by transfer id).
    func postToLedger(_ post: TransferPost, correlation: String) async -> LedgerAnswer {
        let start = ContinuousClock.now
        defer { metrics.ledgerDuration.recordNanoseconds(Self.nanoseconds(ContinuousClock.now - start)) }
        let reply: BusMessage
        do {
            reply = try await bus.send(
                service: Self.ledgerService, type: .transferPost, body: post.encoded(), correlation: correlation)
        } catch {
            logger.warning("ledger did not answer", metadata: ["transfer.id": "\(post.transferId)", "error": "\(error)"])
            return .unavailable("\(error)")
        }
        let status = reply.envelope.status
        if status.isSuccess {
            guard let result = try? TransferResult.decode(reply.body) else { return .unavailable("undecodable ledger reply") }
            return .posted(result)
        }
        let error = (try? ErrorBody.decode(reply.body)) ?? ErrorBody(code: "ledger_error", message: "ledger status \(status)")
        if status.rawValue >= 500 {
            logger.warning("ledger unavailable", metadata: ["transfer.id": "\(post.transferId)", "code": "\(error.code)"])
            return .unavailable(error.code)
        }
        return .refused(status, error)
    }

    /// The payment transfer the ledger holds for `requestId`, nil when it holds none. Throws
    /// `ledgerUnavailable` when the ledger does not answer.
    func lookupPayment(_ requestId: String) async throws(RouterError) -> PaymentRecord? {
        let reply: BusMessage
        do {
            reply = try await bus.send(
                service: Self.ledgerService, type: .paymentLookup, body: PaymentLookup(requestId: requestId).encoded(),
                correlation: requestId)
        } catch {
            throw .ledgerUnavailable
        }
        switch reply.envelope.status {
        case .ok, .exists:
            guard let record = try? PaymentRecord.decode(reply.body) else { throw .ledgerUnavailable }
            return record
        case .notFound:
            return nil
        default:
            throw .ledgerUnavailable
        }
    }

    /// Opens a ledger account (idempotent by id); returns the ledger's answer as a router error when refused.
    func openLedgerAccount(_ open: AccountOpen) async throws(RouterError) -> AccountInfo {
        do {
            let (_, info) = try await bus.call(
                service: Self.ledgerService, type: .accountOpen, open, as: AccountInfo.self)
            return info
        } catch {
            switch error {
            case .rejected(let status, let body) where status.rawValue < 500:
                throw RouterError(status, body.code, body.message)
            default:
                throw .ledgerUnavailable
            }
        }
    }

    static func nanoseconds(_ duration: Duration) -> Int64 {
        let (seconds, attoseconds) = duration.components
        return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
    }
}
