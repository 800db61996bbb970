import Logging
import Synchronization
import ZeroMQ

/// Why a bus call failed.
public enum BusCallError: Error, Sendable, CustomStringConvertible {
    /// No reply within the total time, after every attempt.
    case timedOut(service: String, type: MessageType, attempts: Int)
    /// The stage answered with a non-2xx status and this error.
    case rejected(status: Status, error: ErrorBody)
    /// The reply could not be decoded.
    case badReply(BusDecodeError)
    /// The client was closed.
    case closed

    public var description: String {
        switch self {
        case .timedOut(let service, let type, let attempts):
            "no answer from \(service) to \(type) after \(attempts) attempt(s)"
        case .rejected(let status, let error): "\(error.code) (\(status)): \(error.message)"
        case .badReply(let error): "bad reply: \(error)"
        case .closed: "bus client closed"
        }
    }
}

/// Asks stages for things over the broker: a DEALER socket owned by a `SocketPump`, replies matched
/// to waiting callers by request id. Thread-safe and cheap to share; one per process is plenty.
///
/// Retries: an attempt that gets no reply within `attemptTimeout`, or a retryable status (5xx), is
/// sent again **with the same request id** (receivers deduplicate), until `totalTimeout` has passed.
public final class BusClient: Sendable {
    private struct Waiter {
        let continuation: CheckedContinuation<BusMessage?, Never>
        let deadline: ContinuousClock.Instant
        /// Tells two waiters on one request id apart.
        let token: ContinuousClock.Instant
    }

    public let sender: String
    private let pump: SocketPump
    private let waiters = Locked<[String: [Waiter]]>([:])
    private let ids: RequestIdGenerator
    private let sweeper: Task<Void, Never>?
    private let logger: Logger

    public init(
        context: ZMQContext, frontend: String, sender: String, security: BusSecurity = .none,
        logger: Logger = Logger(label: "wipay.bus.client")
    ) throws(ZMQError) {
        let socket = try ZMQSocket(context, .dealer)
        try security.apply(to: socket)
        try socket.setReconnect(interval: .milliseconds(100), maximum: .seconds(2))
        try socket.setHeartbeat(interval: .seconds(1), timeout: .seconds(3))
        try socket.setSendHighWaterMark(100_000)
        try socket.setReceiveHighWaterMark(100_000)
        try socket.connect(frontend)
        self.sender = sender
        self.logger = logger
        self.ids = RequestIdGenerator(prefix: sender.replacingOccurrences(of: "/", with: "."))
        let waiters = self.waiters
        let log = logger
        pump = try SocketPump(socket: socket, name: "client") { frames in
            guard let message = try? BusMessage.parse(frames), message.envelope.kind == .reply else {
                log.debug("dropped undecodable reply", metadata: ["frames": "\(frames.count)"])
                return
            }
            // A late duplicate (the answer to an earlier attempt) finds no waiter: dropped, harmless.
            // Two callers waiting on one request id (a caller's own retry racing) both get the answer.
            let found = waiters.withLock { $0.removeValue(forKey: message.envelope.requestId) } ?? []
            for waiter in found { waiter.continuation.resume(returning: message) }
        }
        // One sweeper per client ends attempts that got no reply (cheaper than a timer per request).
        sweeper = Task.detached { [waiters] in
            while !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(20))
                let now = ContinuousClock.now
                let expired = waiters.withLock { waiters -> [Waiter] in
                    var keys: [String] = []
                    for (key, list) in waiters where list.contains(where: { $0.deadline <= now }) { keys.append(key) }
                    var out: [Waiter] = []
                    for key in keys {
                        guard let list = waiters[key] else { continue }
                        let (due, rest) = (list.filter { $0.deadline <= now }, list.filter { $0.deadline > now })
                        out += due
                        waiters[key] = rest.isEmpty ? nil : rest
                    }
                    return out
                }
                for waiter in expired { waiter.continuation.resume(returning: nil) }
            }
        }
    }

    deinit { sweeper?.cancel() }

    public func newRequestId() -> String { ids.next() }

    /// Sends a request to `service` and waits for its reply (any status). Throws only `timedOut`/`closed`.
    public func send(
        service: String, type: MessageType, body: [UInt8], requestId: String? = nil, correlation: String = "",
        attemptTimeout: Duration = .seconds(2), totalTimeout: Duration = .seconds(6)
    ) async throws(BusCallError) -> BusMessage {
        let requestId = requestId ?? ids.next()
        let start = ContinuousClock.now
        let end = start + totalTimeout
        var attempts = 0
        var backoff = Duration.milliseconds(50)
        var lastReply: BusMessage?
        while true {
            attempts += 1
            let now = ContinuousClock.now
            let attemptEnd = min(now + attemptTimeout, end)
            let remaining = end - now
            let envelope = Envelope(
                kind: .request, type: type, requestId: requestId, sender: sender, correlation: correlation,
                sentAtMillis: unixMillis(), deadlineMillis: unixMillis() + Int64(remaining.milliseconds))
            let token = ContinuousClock.now
            let reply: BusMessage? = await withCheckedContinuation { continuation in
                let waiter = Waiter(continuation: continuation, deadline: attemptEnd, token: token)
                waiters.withLock { $0[requestId, default: []].append(waiter) }
                let frames: Frames = [[], Array(service.utf8), envelope.encoded(), body]
                if !pump.send(frames) {
                    // Not queued (the outbox is full or the client is closing): this attempt failed now.
                    let mine = waiters.withLock { waiters -> Waiter? in
                        guard var list = waiters[requestId], let i = list.firstIndex(where: { $0.token == token }) else {
                            return nil
                        }
                        let found = list.remove(at: i)
                        waiters[requestId] = list.isEmpty ? nil : list
                        return found
                    }
                    mine?.continuation.resume(returning: nil)
                }
            }
            if let reply, !reply.envelope.status.isRetryable { return reply }
            if let reply { lastReply = reply }
            if ContinuousClock.now + backoff >= end {
                // Out of time: the last answer we had (a 503 says more than silence), else a timeout.
                if let lastReply { return lastReply }
                throw .timedOut(service: service, type: type, attempts: attempts)
            }
            logger.debug(
                "retrying bus request",
                metadata: [
                    "bus.service": "\(service)", "bus.type": "\(type)", "bus.request_id": "\(requestId)",
                    "attempt": "\(attempts)", "status": "\(reply?.envelope.status.description ?? "timeout")",
                ])
            try? await Task.sleep(for: backoff)
            backoff = min(backoff * 2, .milliseconds(500))
        }
    }

    /// Typed call: encodes the request, decodes a 2xx reply as `Reply`, throws `rejected` otherwise.
    public func call<Request: BusEncodable, Reply: BusEncodable>(
        service: String, type: MessageType, _ request: Request, as: Reply.Type, requestId: String? = nil,
        correlation: String = "", attemptTimeout: Duration = .seconds(2), totalTimeout: Duration = .seconds(6)
    ) async throws(BusCallError) -> (Status, Reply) {
        let reply = try await send(
            service: service, type: type, body: request.encoded(), requestId: requestId, correlation: correlation,
            attemptTimeout: attemptTimeout, totalTimeout: totalTimeout)
        let status = reply.envelope.status
        do {
            guard status.isSuccess else { throw BusCallError.rejected(status: status, error: try ErrorBody.decode(reply.body)) }
            return (status, try Reply.decode(reply.body))
        } catch let error as BusDecodeError {
            throw .badReply(error)
        } catch let error as BusCallError {
            throw error
        } catch {
            throw .closed
        }
    }

    public func close() {
        sweeper?.cancel()
        pump.stop()
        let pending = waiters.withLock { waiters in
            defer { waiters.removeAll() }
            return Array(waiters.values)
        }
        for waiter in pending.joined() { waiter.continuation.resume(returning: nil) }
    }
}
