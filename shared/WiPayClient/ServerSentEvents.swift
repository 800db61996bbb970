import Foundation

/// One Server-Sent Event.
public struct ServerSentEvent: Sendable, Equatable {
    /// The stream's last event id when this event was dispatched (its own `id:` line, or an earlier one).
    public var id: String?
    /// The `event:` field, `"message"` when absent.
    public var event: String
    /// The `data:` lines joined with "\n".
    public var data: String
    /// The `retry:` hint in milliseconds, if the event set one.
    public var retryMilliseconds: Int?

    public init(id: String? = nil, event: String = "message", data: String, retryMilliseconds: Int? = nil) {
        self.id = id
        self.event = event
        self.data = data
        self.retryMilliseconds = retryMilliseconds
    }

    /// `data` parsed as JSON, or nil.
    public var json: JSON? { JSON.parse(Array(data.utf8)) }
}

/// The `text/event-stream` parser as a plain value: feed it bytes in any pieces, get the complete events.
/// Lines end with CRLF, LF or CR; comment lines (starting with ":") are ignored; an event is dispatched at
/// an empty line when it has data. One event may hold at most `maxEventBytes`.
public struct ServerSentEventParser: Sendable {
    public var lastEventId: String?
    public let maxEventBytes: Int
    private var line: [UInt8] = []
    private var afterCR = false
    private var eventType = ""
    private var data: [UInt8] = []
    private var hasData = false
    private var retry: Int?

    public init(lastEventId: String? = nil, maxEventBytes: Int = 1 << 20) {
        self.lastEventId = lastEventId
        self.maxEventBytes = maxEventBytes
    }

    public struct TooLarge: Error, Sendable {}

    /// Consumes `bytes` and returns the events they complete.
    public mutating func feed(_ bytes: some Sequence<UInt8>) throws(TooLarge) -> [ServerSentEvent] {
        var events: [ServerSentEvent] = []
        for byte in bytes {
            if afterCR {
                afterCR = false
                if byte == 0x0A { continue }
            }
            if byte == 0x0A || byte == 0x0D {
                afterCR = byte == 0x0D
                if let event = processLine() { events.append(event) }
                line.removeAll(keepingCapacity: true)
                continue
            }
            line.append(byte)
            if line.count + data.count > maxEventBytes { throw TooLarge() }
        }
        return events
    }

    private mutating func processLine() -> ServerSentEvent? {
        if line.isEmpty { return dispatch() }
        if line[0] == UInt8(ascii: ":") { return nil }
        let field: [UInt8]
        var value: ArraySlice<UInt8>
        if let colon = line.firstIndex(of: UInt8(ascii: ":")) {
            field = Array(line[..<colon])
            value = line[(colon + 1)...]
            if value.first == UInt8(ascii: " ") { value = value.dropFirst() }
        } else {
            field = line
            value = []
        }
        switch String(decoding: field, as: UTF8.self) {
        case "event": eventType = String(decoding: value, as: UTF8.self)
        case "data":
            if hasData { data.append(0x0A) }
            data += value
            hasData = true
        case "id":
            if !value.contains(0) { lastEventId = String(decoding: value, as: UTF8.self) }
        case "retry":
            if !value.isEmpty, value.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), value.count < 10 {
                retry = Int(String(decoding: value, as: UTF8.self))
            }
        default: break
        }
        return nil
    }

    private mutating func dispatch() -> ServerSentEvent? {
        defer {
            eventType = ""
            data.removeAll(keepingCapacity: true)
            hasData = false
            retry = nil
        }
        guard hasData else { return nil }
        return ServerSentEvent(
            id: lastEventId, event: eventType.isEmpty ? "message" : eventType, data: String(decoding: data, as: UTF8.self),
            retryMilliseconds: retry)
    }
}

extension HTTPClient {
    /// Opens a Server-Sent Events stream with `GET path` and returns once the server has answered 200 with
    /// its headers; the events then arrive on the returned stream.
    ///
    /// - Parameters:
    ///   - lastEventId: sent as `Last-Event-ID` so the server resumes after that event.
    ///   - idleTimeout: the stream fails with `timedOut` when no byte (not even a comment) arrives for
    ///     this long. The gateways send a comment at least every 15 s.
    /// - Throws: `APIError` when the server answers anything but 200 (with its error code and message),
    ///   `HTTPClientError` when it cannot be reached.
    ///
    /// The stream ends without error when the server ends the response, and with an `HTTPClientError` when
    /// the connection breaks. When the consumer stops (its task is cancelled, or the stream and its iterator
    /// are released, e.g. after a `break`) or calls `close()`, the socket is shut down at once.
    public func events(
        path: String, headers: HTTPHeaders = HTTPHeaders(), lastEventId: String? = nil,
        idleTimeout: Duration = .seconds(45)
    ) async throws -> ServerSentEventStream {
        var headers = headers
        headers.set("Accept", "text/event-stream")
        headers.set("Cache-Control", "no-cache")
        if let lastEventId { headers.set("Last-Event-ID", lastEventId) }
        let request = try encodeRequest(method: "GET", path: path, headers: headers, body: [], keepAlive: false)
        let (stream, continuation) = AsyncThrowingStream<ServerSentEvent, any Error>.makeStream(bufferingPolicy: .unbounded)
        let cancel = CancelBox()
        continuation.onTermination = { _ in cancel.cancel() }
        let opened = OpenSignal()
        let connectTimeout = timeouts.response
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (ready: CheckedContinuation<Void, any Error>) in
                opened.set(ready)
                let thread = Thread { [self] in
                    self.runEventStream(
                        request: request, lastEventId: lastEventId, headTimeout: connectTimeout, idleTimeout: idleTimeout,
                        cancel: cancel, opened: opened, events: continuation)
                }
                thread.name = "wipay-sse"
                thread.start()
            }
            return ServerSentEventStream(base: stream, closer: StreamCloser(cancel))
        } onCancel: {
            cancel.cancel()
        }
    }

    private func runEventStream(
        request: [UInt8], lastEventId: String?, headTimeout: Duration, idleTimeout: Duration, cancel: CancelBox,
        opened: OpenSignal, events: AsyncThrowingStream<ServerSentEvent, any Error>.Continuation
    ) {
        var connection: HTTPConnection?
        defer { connection?.close() }
        do {
            let conn = try connect(cancel: cancel)
            connection = conn
            guard cancel.attach(conn.tcp) else { throw HTTPClientError(.cancelled, "event stream cancelled") }
            let headDeadline = ContinuousClock.now + headTimeout
            do {
                try conn.tcp.write(request, deadline: headDeadline)
            } catch {
                throw HTTPClientError(error)
            }
            let head = try conn.readHead(deadline: headDeadline, method: "GET")
            guard head.status == 200 else {
                var body: [UInt8] = []
                while body.count < 64 * 1024, let piece = try conn.readBody(deadline: headDeadline) { body += piece }
                throw APIError(response: HTTPResponse(status: head.status, reason: head.reason, headers: head.headers, body: body))
            }
            conn.unboundedBody = true
            opened.resume(with: .success(()))
            var parser = ServerSentEventParser(lastEventId: lastEventId)
            while true {
                guard let piece = try conn.readBody(deadline: ContinuousClock.now + idleTimeout) else { break }
                let parsed: [ServerSentEvent]
                do {
                    parsed = try parser.feed(piece)
                } catch {
                    throw HTTPClientError(.tooLarge, "an event from \(conn.tcp.peer) exceeds \(parser.maxEventBytes) bytes")
                }
                for event in parsed { events.yield(event) }
            }
            events.finish()
        } catch {
            if !opened.resume(with: .failure(error)) {
                events.finish(throwing: error)
            }
        }
    }
}

/// Resumes the opener of an event stream once: with success when the head arrived, or with the error.
final class OpenSignal: Sendable {
    private let state = Protected<(continuation: CheckedContinuation<Void, any Error>?, done: Bool)>((nil, false))

    func set(_ continuation: CheckedContinuation<Void, any Error>) {
        state.withLock { $0.continuation = continuation }
    }

    /// False if it had already been resumed.
    @discardableResult
    func resume(with result: Result<Void, any Error>) -> Bool {
        let continuation = state.withLock { s -> CheckedContinuation<Void, any Error>? in
            if s.done { return nil }
            s.done = true
            return s.continuation
        }
        guard let continuation else { return false }
        continuation.resume(with: result)
        return true
    }
}

/// The events of one SSE response. Iterate it once; `close()` (or releasing it) shuts the socket down.
public struct ServerSentEventStream: AsyncSequence, Sendable {
    public typealias Element = ServerSentEvent
    let base: AsyncThrowingStream<ServerSentEvent, any Error>
    let closer: StreamCloser

    public struct AsyncIterator: AsyncIteratorProtocol {
        var base: AsyncThrowingStream<ServerSentEvent, any Error>.AsyncIterator
        let closer: StreamCloser

        public mutating func next() async throws -> ServerSentEvent? { try await base.next() }
    }

    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(base: base.makeAsyncIterator(), closer: closer) }

    /// Closes the connection; the iteration ends.
    public func close() { closer.cancel.cancel() }
}

/// Shuts the stream's socket down when the last holder (stream or iterator) lets go.
final class StreamCloser: Sendable {
    let cancel: CancelBox
    init(_ cancel: CancelBox) { self.cancel = cancel }
    deinit { cancel.cancel() }
}
