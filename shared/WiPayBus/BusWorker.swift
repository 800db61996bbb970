import Logging
import Synchronization
import ZeroMQ

/// What a handler answers: a status and a body (an `ErrorBody` when the status is not 2xx).
public struct BusReply: Sendable {
    public var status: Status
    public var body: [UInt8]

    public init(status: Status, body: [UInt8]) {
        self.status = status
        self.body = body
    }

    public static func ok<T: BusEncodable>(_ value: T, status: Status = .ok) -> BusReply {
        BusReply(status: status, body: value.encoded())
    }

    public static func error(_ status: Status, _ code: String, _ message: String) -> BusReply {
        BusReply(status: status, body: ErrorBody(code: code, message: message).encoded())
    }
}

/// Serves one stage's requests from the broker: a DEALER connected to the broker's backend, which
/// announces the service name and how many requests it takes at once (`credit`) in every heartbeat.
/// Each request runs in its own task; the reply goes back through the same socket.
///
/// Heartbeats go both ways every `heartbeatInterval`: the broker forgets a worker it has not heard from
/// in three intervals (so a `kill -9`ed instance stops getting work), and re-registers it from its next
/// heartbeat (so a restarted broker learns its workers back without anyone reconnecting by hand).
public final class BusWorker: Sendable {
    public typealias Handler = @Sendable (BusMessage) async -> BusReply

    public let service: String
    public let instance: String
    public let credit: Int
    private let pump: SocketPump
    private let incoming: AsyncStream<(client: [UInt8], frames: Frames)>
    private let inFlightCount = Atomic<Int64>(0)
    private let handledCount = Atomic<Int64>(0)
    private let droppedCount = Atomic<Int64>(0)
    private let lastBrokerHeartbeat = Locked<Int64>(0)
    private let draining = Locked(false)
    private let continuation: AsyncStream<(client: [UInt8], frames: Frames)>.Continuation
    private let logger: Logger

    public init(
        context: ZMQContext, backend: String, service: String, instance: String, credit: Int = 256,
        security: BusSecurity = .none, logger: Logger
    ) throws(ZMQError) {
        let socket = try ZMQSocket(context, .dealer)
        try security.apply(to: socket)
        try socket.setReconnect(interval: .milliseconds(100), maximum: .seconds(2))
        try socket.setSendHighWaterMark(100_000)
        try socket.setReceiveHighWaterMark(100_000)
        try socket.connect(backend)
        self.service = service
        self.instance = instance
        self.credit = max(1, credit)
        self.logger = logger
        let (stream, continuation) = AsyncStream<(client: [UInt8], frames: Frames)>.makeStream()
        incoming = stream
        self.continuation = continuation
        let lastHeartbeat = self.lastBrokerHeartbeat
        pump = try SocketPump(socket: socket, name: "worker-\(service)") { frames in
            // ["", "REQ", client, envelope, body] or ["", "HB"]
            guard frames.count >= 2, frames[0].isEmpty, let command = BrokerCommand.parse(frames[1]) else { return }
            switch command {
            case .request where frames.count == 5:
                continuation.yield((client: frames[2], frames: [[], frames[3], frames[4]]))
            case .heartbeat:
                lastHeartbeat.withLock { $0 = unixMillis() }
            default:
                break
            }
        }
    }

    public var inFlight: Int64 { inFlightCount.load(ordering: .relaxed) }
    public var handledTotal: Int64 { handledCount.load(ordering: .relaxed) }
    /// Unix ms of the broker's last heartbeat (0 = never): the instance is healthy when recent.
    public var lastBrokerHeartbeatMillis: Int64 { lastBrokerHeartbeat.value }

    /// Announces the worker now and every `interval` until cancelled.
    public func heartbeat(every interval: Duration) async {
        let frames: Frames = [
            [], BrokerCommand.heartbeat.frame, Array(service.utf8), Array(instance.utf8), Array(String(credit).utf8),
        ]
        while !Task.isCancelled {
            // A draining worker stops announcing itself: if the broker forgets it (or restarts), it does
            // not come back as a fresh worker and get new work. Its replies still flow.
            if !draining.withLock({ $0 }) { pump.send(frames) }
            try? await Task.sleep(for: interval)
        }
    }

    /// Serves requests with `handler` until `stop()`; returns when every started request has been answered.
    public func serve(_ handler: @escaping Handler) async {
        await withDiscardingTaskGroup { group in
            for await (client, frames) in incoming {
                inFlightCount.add(1, ordering: .relaxed)
                group.addTask { [self] in
                    let reply = await self.handle(frames, handler: handler)
                    self.pump.send([[], BrokerCommand.reply.frame, client] + reply)
                    self.inFlightCount.subtract(1, ordering: .relaxed)
                    self.handledCount.add(1, ordering: .relaxed)
                }
            }
        }
    }

    private func handle(_ frames: Frames, handler: Handler) async -> Frames {
        let sender = "\(service)/\(instance)"
        let message: BusMessage
        do {
            message = try BusMessage.parse(frames)
        } catch {
            droppedCount.add(1, ordering: .relaxed)
            logger.warning("refused undecodable request", metadata: ["error": "\(error)"])
            let envelope = Envelope(
                kind: .reply, type: MessageType(rawValue: 0), status: .badRequest, requestId: "", sender: sender,
                sentAtMillis: unixMillis())
            return [envelope.encoded(), ErrorBody(code: "bad_frame", message: "\(error)").encoded()]
        }
        let envelope = message.envelope
        let now = unixMillis()
        guard envelope.kind == .request else {
            // A reply or event sent to a worker is not work: refuse it rather than act on it.
            droppedCount.add(1, ordering: .relaxed)
            return [
                envelope.reply(status: .badRequest, sender: sender, nowMillis: now).encoded(),
                ErrorBody(code: "bad_frame", message: "a worker takes requests only").encoded(),
            ]
        }
        if envelope.deadlineMillis != 0 && envelope.deadlineMillis < now {
            // The caller stopped waiting: don't start work nobody will see. It retries with the same id.
            return [
                envelope.reply(status: .unavailable, sender: sender, nowMillis: now).encoded(),
                ErrorBody(code: "deadline_passed", message: "the request arrived after its deadline").encoded(),
            ]
        }
        let reply = await handler(message)
        return [envelope.reply(status: reply.status, sender: sender, nowMillis: unixMillis()).encoded(), reply.body]
    }

    /// Tells the broker to send no more work. Replies to work in progress still go out.
    public func drain() {
        draining.withLock { $0 = true }
        pump.send([[], BrokerCommand.drain.frame])
    }

    /// Ends the request stream: `serve` returns once the requests already started are answered.
    public func finish() {
        continuation.finish()
    }

    /// Closes the socket (sending what is queued once more). Call after `serve` returned.
    public func close() {
        continuation.finish()
        pump.stop()
    }

    /// Waits until no request is in flight, or `timeout` passes. Returns the number still in flight.
    public func waitForInFlight(timeout: Duration) async -> Int64 {
        let end = ContinuousClock.now + timeout
        while inFlight > 0 && ContinuousClock.now < end {
            try? await Task.sleep(for: .milliseconds(20))
        }
        return inFlight
    }
}
