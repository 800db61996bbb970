import HTTPTypes
import Hummingbird
import Logging
import ServiceLifecycle
import Synchronization
import WiPayBus
import WiPayRuntime

extension Setting {
    /// How often an open event stream gets a comment line.
    public static let sseKeepaliveMillis = Setting(
        "WIPAY_SSE_KEEPALIVE_MS", flag: "sse-keepalive-ms", default: "15000",
        "Server-Sent Events keepalive interval in milliseconds (100...60000).")
    /// Every how many keepalives a quiet stream asks the notifier whether it missed a notice.
    public static let sseReplayTicks = Setting(
        "WIPAY_SSE_REPLAY_TICKS", flag: "sse-replay-ticks", default: "8",
        "Every how many keepalives an event stream that saw no gap asks the notifier for missed notices anyway (1...1000; a gap or a reconnect replays at once).")
}

/// The Server-Sent Event streams of one gateway instance, fed by ONE bus subscription (`notice.pos.` or
/// `notice.dev.`) and dispatched by recipient. The notifier's store is the source of truth: a stream
/// starts with a replay (`notice.replay`) from `Last-Event-ID` (or the recipient's head), then sends live
/// events in sequence order, and replays again on a gap (a live notice past the next number). A lost
/// pub/sub message is delivered with the next notice to that recipient, or at the latest at the
/// `replayTicks`-th keepalive of a quiet stream (2 minutes by default), or when the client reconnects. Each stream sends each sequence number once, in order.
public final class NoticeHub: Service, Sendable {
    /// What a stream's loop reacts to.
    enum Input: Sendable {
        case notice(NoticeDelivered)
        case tick
    }

    public static let replayLimit: UInt32 = 500
    /// Live events a slow stream may have queued; beyond, they are dropped and recovered by a replay.
    public static let streamBuffer = 1024

    public let keepalive: Duration
    /// A stream that saw no gap replays every this many keepalives.
    public let replayTicks: Int
    public let maxStreams: Int
    private let subscriber: BusSubscriber
    private let caller: StageCaller
    private let logger: Logger
    private let streams = Locked<[String: [UInt64: AsyncStream<Input>.Continuation]]>([:])
    private let streamCount = Atomic<Int>(0)
    private let nextId = Atomic<UInt64>(1)
    private let stopped = Atomic<Bool>(false)

    public init(
        subscriber: BusSubscriber, caller: StageCaller, keepalive: Duration, replayTicks: Int = 8, maxStreams: Int = 10_000,
        logger: Logger
    ) {
        self.subscriber = subscriber
        self.caller = caller
        self.keepalive = keepalive
        self.replayTicks = max(1, replayTicks)
        self.maxStreams = maxStreams
        self.logger = logger
    }

    /// The hub of a gateway: subscribes to `notice.<kind>.` (`pos` or `dev`) on the runtime's bus.
    public static func make(runtime: Runtime, kind: String, caller: StageCaller) throws -> NoticeHub {
        let millis = try runtime.config.values.int(.sseKeepaliveMillis, range: 100...60_000)
        let ticks = try runtime.config.values.int(.sseReplayTicks, range: 1...1000)
        let subscriber = try runtime.subscriber(topics: ["\(Topic.noticePrefix)\(kind)."])
        return NoticeHub(
            subscriber: subscriber, caller: caller, keepalive: .milliseconds(millis), replayTicks: ticks, logger: runtime.logger)
    }

    /// Streams open right now.
    public var openStreams: Int { streamCount.load(ordering: .relaxed) }

    // MARK: dispatch

    /// Receives notices until stopped (graceful shutdown stops it).
    public func run() async throws {
        await withGracefulShutdownHandler {
            for await event in subscriber.events {
                guard event.envelope.type == .noticeDelivered, let notice = try? NoticeDelivered.decode(event.body) else {
                    continue
                }
                dispatch(notice)
            }
        } onGracefulShutdown: {
            self.stop()
        }
    }

    func dispatch(_ notice: NoticeDelivered) {
        let targets = streams.withLock { $0[notice.recipient].map { Array($0.values) } } ?? []
        for continuation in targets { continuation.yield(.notice(notice)) }
    }

    /// Stops the subscription and ends every open stream.
    public func stop() {
        guard !stopped.exchange(true, ordering: .relaxed) else { return }
        subscriber.close()
        let all = streams.withLock { streams in
            defer { streams.removeAll() }
            return streams.values.flatMap { $0.values }
        }
        for continuation in all { continuation.finish() }
    }

    private func register(_ recipient: String) -> (UInt64, AsyncStream<Input>, AsyncStream<Input>.Continuation) {
        let (stream, continuation) = AsyncStream<Input>.makeStream(bufferingPolicy: .bufferingOldest(Self.streamBuffer))
        let id = nextId.add(1, ordering: .relaxed).newValue
        let added = streams.withLock { streams -> Bool in
            guard !stopped.load(ordering: .relaxed) else { return false }
            streams[recipient, default: [:]][id] = continuation
            return true
        }
        if added { streamCount.add(1, ordering: .relaxed) } else { continuation.finish() }
        return (id, stream, continuation)
    }

    private func unregister(_ recipient: String, _ id: UInt64) {
        let removed = streams.withLock { streams -> AsyncStream<Input>.Continuation? in
            let found = streams[recipient]?.removeValue(forKey: id)
            if streams[recipient]?.isEmpty == true { streams[recipient] = nil }
            return found
        }
        if let removed {
            streamCount.subtract(1, ordering: .relaxed)
            removed.finish()
        }
    }

    // MARK: the notifier

    /// The recipient's latest sequence number (0 if none).
    public func head(_ recipient: String) async throws(GatewayError) -> Int64 {
        let (_, ack) = try await caller.call(
            service: "notifier", .noticeHead, NoticeAck(recipient: recipient, seq: 0), as: NoticeAck.self)
        return ack.seq
    }

    func replay(_ recipient: String, after seq: Int64) async throws(GatewayError) -> [NoticeDelivered] {
        let (_, batch) = try await caller.call(
            service: "notifier", .noticeReplay, NoticeReplay(recipient: recipient, afterSeq: seq, limit: Self.replayLimit),
            as: NoticeBatch.self)
        return batch.notices.sorted { $0.seq < $1.seq }
    }

    // MARK: one stream

    /// `Last-Event-ID` when it is a valid sequence number.
    public static func lastEventId(_ request: Request) -> Int64? {
        guard let text = request.headers[GatewayResponse.lastEventId], let value = Int64(text.filter { $0 != " " && $0 != "\t" }),
            value >= 0
        else { return nil }
        return value
    }

    /// The SSE response for `recipient`: headers at once, then every notice after `Last-Event-ID` (or
    /// after the current head), in order, each once, with a keepalive comment every `keepalive`.
    public func streamResponse(recipient: String, request: Request) async throws(GatewayError) -> Response {
        guard !stopped.load(ordering: .relaxed) else { throw GatewayError.stageUnavailable }
        guard openStreams < maxStreams else {
            throw GatewayError(.serviceUnavailable, "too_many_streams", "this gateway has too many open event streams; retry")
        }
        let start: Int64
        if let last = Self.lastEventId(request) { start = last } else { start = try await head(recipient) }
        let headers: HTTPFields = [
            .contentType: "text/event-stream", .cacheControl: "no-cache, no-store", HTTPField.Name("X-Accel-Buffering")!: "no",
        ]
        return Response(
            status: .ok, headers: headers,
            body: ResponseBody { writer in
                try await self.serve(recipient: recipient, after: start, writer: &writer)
            })
    }

    private func serve(recipient: String, after start: Int64, writer: inout any ResponseBodyWriter) async throws {
        let (id, stream, continuation) = register(recipient)
        defer { unregister(recipient, id) }
        logger.debug("event stream opened", metadata: ["recipient": "\(recipient)", "after": "\(start)"])
        let keepalive = self.keepalive
        try await withGracefulShutdownHandler {
            try await withThrowingDiscardingTaskGroup { group in
                group.addTask {
                    while !Task.isCancelled {
                        try? await Task.sleep(for: keepalive)
                        if case .terminated = continuation.yield(.tick) { return }
                    }
                }
                // An initial comment flushes the headers at once.
                try await writer.write(ByteBuffer(string: ": stream \(recipient)\n\n"))
                var lastSent = start
                // Ticks since the last replay; a replay that failed (notifier away) is retried at the next.
                var quietTicks = 0
                let replayTicks = self.replayTicks
                if !(try await catchUp(recipient, &lastSent, &writer)) { quietTicks = replayTicks }
                for await input in stream {
                    switch input {
                    case .notice(let notice):
                        if notice.seq <= lastSent { continue }
                        if notice.seq == lastSent &+ 1 {
                            try await Self.write(notice, &writer)
                            lastSent = notice.seq
                        } else {
                            quietTicks = try await catchUp(recipient, &lastSent, &writer) ? 0 : replayTicks
                        }
                    case .tick:
                        try await writer.write(ByteBuffer(string: ": keepalive\n\n"))
                        quietTicks += 1
                        if quietTicks >= replayTicks {
                            quietTicks = try await catchUp(recipient, &lastSent, &writer) ? 0 : replayTicks
                        }
                    }
                }
                group.cancelAll()
            }
        } onGracefulShutdown: {
            continuation.finish()
        }
        try await writer.finish(nil)
    }

    /// Sends every stored notice after `lastSent`, oldest first. Returns false when the notifier did not
    /// answer: the next tick tries again (nothing is skipped: `lastSent` only moves past what was written).
    @discardableResult
    private func catchUp(_ recipient: String, _ lastSent: inout Int64, _ writer: inout any ResponseBodyWriter) async throws -> Bool {
        while true {
            let notices: [NoticeDelivered]
            do {
                notices = try await replay(recipient, after: lastSent)
            } catch {
                logger.debug("replay failed; retrying at the next tick", metadata: ["recipient": "\(recipient)", "error": "\(error)"])
                return false
            }
            for notice in notices where notice.seq > lastSent {
                try await Self.write(notice, &writer)
                lastSent = notice.seq
            }
            if notices.count < Int(Self.replayLimit) { return true }
        }
    }

    /// `id: <seq>\nevent: <type>\ndata: <json>\n\n` (a multi-line data field split over `data:` lines).
    static func eventText(_ notice: NoticeDelivered) -> String {
        var text = "id: \(notice.seq)\nevent: \(notice.eventType.filter { $0 != "\n" && $0 != "\r" })\n"
        for line in notice.dataJSON.split(separator: "\n", omittingEmptySubsequences: false) {
            text += "data: \(line.filter { $0 != "\r" })\n"
        }
        return text + "\n"
    }

    private static func write(_ notice: NoticeDelivered, _ writer: inout any ResponseBodyWriter) async throws {
        try await writer.write(ByteBuffer(string: eventText(notice)))
    }
}
