import Foundation

/// Follows an SSE stream across drops: when it ends or breaks, it reconnects (with back-off) sending the
/// last event id seen as `Last-Event-ID`, so no event is missed. Events are kept until taken with
/// `next(timeout:where:)`, so one that arrives before anyone waits for it is not lost.
///
///     let feed = EventFeed { lastId in try await pos.events(lastEventId: lastId) }
///     try await feed.connect()                     // fails at once on 401 and the like
///     let outcome = try await feed.next(timeout: .seconds(150)) { $0.json?["request_id"]?.string == id }
public actor EventFeed {
    public typealias Opener = @Sendable (_ lastEventId: String?) async throws -> ServerSentEventStream

    private let open: Opener
    private let onReconnect: (@Sendable () async -> Void)?
    private var buffer: [ServerSentEvent] = []
    private var waiters: [UUID: (predicate: @Sendable (ServerSentEvent) -> Bool, continuation: CheckedContinuation<ServerSentEvent?, Never>)] = [:]
    private var reader: Task<Void, Never>?
    private var closed = false
    /// The id of the last event received.
    public private(set) var lastEventId: String?
    /// How many times the stream was reopened after a drop.
    public private(set) var reconnects = 0
    /// Why the stream last dropped, if it did.
    public private(set) var lastDropReason: String?
    private let maxBuffered = 10_000

    /// - Parameters:
    ///   - onReconnect: called after each successful reconnection (e.g. to re-check state by polling).
    public init(lastEventId: String? = nil, onReconnect: (@Sendable () async -> Void)? = nil, open: @escaping Opener) {
        self.lastEventId = lastEventId
        self.onReconnect = onReconnect
        self.open = open
    }

    /// Opens the stream; throws what the first attempt throws (bad credentials, unreachable gateway).
    public func connect() async throws {
        let stream = try await open(lastEventId)
        startReading(stream)
    }

    private func startReading(_ first: ServerSentEventStream) {
        reader = Task { [weak self] in
            var stream: ServerSentEventStream? = first
            var delay: Duration = .milliseconds(100)
            while !Task.isCancelled {
                if let current = stream {
                    do {
                        for try await event in current { await self?.receive(event) }
                        await self?.dropped("the server ended the stream")
                    } catch {
                        await self?.dropped("\(error)")
                    }
                    stream = nil
                }
                if Task.isCancelled { break }
                try? await Task.sleep(for: delay)
                guard let self else { break }
                do {
                    stream = try await self.open(await self.lastEventId)
                    delay = .milliseconds(100)
                    await self.reconnected()
                } catch {
                    await self.dropped("reconnecting: \(error)")
                    delay = min(delay * 2, .seconds(2))
                }
            }
        }
    }

    private func receive(_ event: ServerSentEvent) {
        if let id = event.id { lastEventId = id }
        for (key, waiter) in waiters where waiter.predicate(event) {
            waiters[key] = nil
            waiter.continuation.resume(returning: event)
            return
        }
        buffer.append(event)
        if buffer.count > maxBuffered { buffer.removeFirst(buffer.count - maxBuffered) }
    }

    private func dropped(_ reason: String) { lastDropReason = reason }

    private func reconnected() async {
        reconnects += 1
        if let onReconnect { await onReconnect() }
    }

    /// The first event (already received or still to come) that matches, taken out of the feed; nil when
    /// none arrives within `timeout`.
    public func next(timeout: Duration, where predicate: @escaping @Sendable (ServerSentEvent) -> Bool) async -> ServerSentEvent? {
        if let index = buffer.firstIndex(where: predicate) { return buffer.remove(at: index) }
        if closed { return nil }
        let id = UUID()
        let timer = Task { [weak self] in
            try? await Task.sleep(for: timeout)
            await self?.expire(id)
        }
        defer { timer.cancel() }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                waiters[id] = (predicate, continuation)
            }
        } onCancel: {
            Task { await self.expire(id) }
        }
    }

    private func expire(_ id: UUID) {
        waiters.removeValue(forKey: id)?.continuation.resume(returning: nil)
    }

    /// Stops following; pending waits end with nil.
    public func close() {
        closed = true
        reader?.cancel()
        reader = nil
        for (_, waiter) in waiters { waiter.continuation.resume(returning: nil) }
        waiters.removeAll()
    }
}
