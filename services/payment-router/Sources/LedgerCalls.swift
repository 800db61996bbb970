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
        return ledgerAnswer(status: reply.envelope.status, body: reply.body, transferId: post.transferId)
    }

    /// What one `transfer.post` reply (or one outcome of a `transfer.post.batch` reply) says.
    func ledgerAnswer(status: Status, body: [UInt8], transferId: String) -> LedgerAnswer {
        if status.isSuccess {
            guard let result = try? TransferResult.decode(body) else { return .unavailable("undecodable ledger reply") }
            return .posted(result)
        }
        let error = (try? ErrorBody.decode(body)) ?? ErrorBody(code: "ledger_error", message: "ledger status \(status)")
        if status.rawValue >= 500 {
            logger.warning("ledger unavailable", metadata: ["transfer.id": "\(transferId)", "code": "\(error.code)"])
            return .unavailable(error.code)
        }
        return .refused(status, error)
    }

    /// Posts a batch's transfers in one `transfer.post.batch`: one answer per transfer, in order. No answer
    /// for the message is no answer for any of them (each is retried with its own id later). A ledger that
    /// does not take batches (`unknown_type`) gets them one by one.
    func postBatchToLedger(_ posts: [TransferPost], correlation: String) async -> [LedgerAnswer] {
        guard posts.count > 1 else { return await posts.asyncMap { await postToLedger($0, correlation: correlation) } }
        let start = ContinuousClock.now
        defer { metrics.ledgerDuration.recordNanoseconds(Self.nanoseconds(ContinuousClock.now - start)) }
        let reply: BusMessage
        do {
            reply = try await bus.send(
                service: Self.ledgerService, type: .transferPostBatch, body: TransferPostBatch(transfers: posts).encoded(),
                correlation: correlation)
        } catch {
            logger.warning("ledger did not answer a batch", metadata: ["count": "\(posts.count)", "error": "\(error)"])
            return posts.map { _ in .unavailable("\(error)") }
        }
        let status = reply.envelope.status
        if status == .unknownType {
            return await posts.asyncMap { await postToLedger($0, correlation: correlation) }
        }
        guard status.isSuccess, let results = try? TransferPostResults.decode(reply.body), results.outcomes.count == posts.count
        else {
            let code = (try? ErrorBody.decode(reply.body))?.code ?? "undecodable"
            logger.warning("ledger refused a batch", metadata: ["count": "\(posts.count)", "status": "\(status)", "code": "\(code)"])
            return posts.map { _ in .unavailable(code) }
        }
        return zip(posts, results.outcomes).map { ledgerAnswer(status: $1.status, body: $1.body, transferId: $0.transferId) }
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

extension Array where Element: Sendable {
    /// `map` with an async transform, one element after the other.
    func asyncMap<T>(_ transform: (Element) async -> T) async -> [T] {
        var out: [T] = []
        out.reserveCapacity(count)
        for element in self { out.append(await transform(element)) }
        return out
    }
}
