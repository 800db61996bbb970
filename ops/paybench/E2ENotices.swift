import Foundation
import Synchronization
import WiPayBus
import WiPayClient

/// Where the notices of the event streams meet the payments waiting for them. A payment registers its
/// request id once the terminal has it (no notice can come earlier: it needs the instruction), then
/// waits until both the terminal's and the device's `payment.succeeded` arrived, or its deadline passed.
final class E2ENoticeBoard: Sendable {
    enum Side: Sendable { case terminal, device }

    struct Arrivals: Sendable {
        var terminal: ContinuousClock.Instant?
        var device: ContinuousClock.Instant?
        /// An event other than `payment.succeeded` about this request (e.g. `payment.declined`).
        var other: String?
        var complete: Bool { terminal != nil && device != nil }
    }

    private struct Entry {
        var arrivals = Arrivals()
        var waiter: CheckedContinuation<Arrivals, Never>?
        var deadline: ContinuousClock.Instant?
    }

    private struct State {
        var entries: [String: Entry] = [:]
        /// Notices about request ids nobody registered (another run's, or a duplicate after completion).
        var unmatched = 0
        var duplicates = 0
    }

    private let state = Mutex(State())

    /// Starts tracking a request id.
    func register(_ requestId: String) {
        state.withLock { $0.entries[requestId] = Entry() }
    }

    /// Stops tracking (the payment failed before its notices could come).
    func forget(_ requestId: String) {
        state.withLock { _ = $0.entries.removeValue(forKey: requestId) }
    }

    /// An event from a stream. Resumes the waiter when this completes the pair.
    func notice(requestId: String, type: String, side: Side, at: ContinuousClock.Instant) {
        let resume: (CheckedContinuation<Arrivals, Never>, Arrivals)? = state.withLock { s in
            guard var entry = s.entries[requestId] else {
                s.unmatched += 1
                return nil
            }
            if type == "payment.succeeded" {
                switch side {
                case .terminal:
                    if entry.arrivals.terminal != nil { s.duplicates += 1 } else { entry.arrivals.terminal = at }
                case .device:
                    if entry.arrivals.device != nil { s.duplicates += 1 } else { entry.arrivals.device = at }
                }
            } else {
                entry.arrivals.other = type
            }
            if (entry.arrivals.complete || entry.arrivals.other != nil), let waiter = entry.waiter {
                s.entries[requestId] = nil
                return (waiter, entry.arrivals)
            }
            s.entries[requestId] = entry
            return nil
        }
        if let (waiter, arrivals) = resume { waiter.resume(returning: arrivals) }
    }

    /// Waits until both notices arrived (or another outcome), or until `deadline`; returns what arrived.
    func wait(_ requestId: String, deadline: ContinuousClock.Instant) async -> Arrivals {
        await withCheckedContinuation { continuation in
            let ready: Arrivals? = state.withLock { s in
                guard var entry = s.entries[requestId] else { return Arrivals() }
                if entry.arrivals.complete || entry.arrivals.other != nil {
                    s.entries[requestId] = nil
                    return entry.arrivals
                }
                entry.waiter = continuation
                entry.deadline = deadline
                s.entries[requestId] = entry
                return nil
            }
            if let ready { continuation.resume(returning: ready) }
        }
    }

    /// Resumes every waiter whose deadline has passed with what it has (one sweep for all, not a timer each).
    func sweep(now: ContinuousClock.Instant) {
        let expired: [(CheckedContinuation<Arrivals, Never>, Arrivals)] = state.withLock { s in
            var out: [(CheckedContinuation<Arrivals, Never>, Arrivals)] = []
            var ids: [String] = []
            for (id, entry) in s.entries {
                if let deadline = entry.deadline, deadline <= now, let waiter = entry.waiter {
                    out.append((waiter, entry.arrivals))
                    ids.append(id)
                }
            }
            for id in ids { s.entries[id] = nil }
            return out
        }
        for (waiter, arrivals) in expired { waiter.resume(returning: arrivals) }
    }

    var counters: (unmatched: Int, duplicates: Int) { state.withLock { ($0.unmatched, $0.duplicates) } }
}

/// The value of `"request_id"` in an event's JSON data, found without a full parse (the gateways write
/// compact JSON; a space after the colon is tolerated).
func e2eRequestId(inEventData data: String) -> String? {
    let utf8 = Array(data.utf8)
    let key = Array("\"request_id\"".utf8)
    guard utf8.count > key.count else { return nil }
    var i = 0
    while i + key.count <= utf8.count {
        if utf8[i] == key[0] && Array(utf8[i..<(i + key.count)]) == key {
            var j = i + key.count
            while j < utf8.count && (utf8[j] == 0x20 || utf8[j] == 0x3A) { j += 1 }
            guard j < utf8.count, utf8[j] == 0x22 else { return nil }
            j += 1
            let start = j
            while j < utf8.count && utf8[j] != 0x22 && utf8[j] != 0x5C { j += 1 }
            guard j < utf8.count, utf8[j] == 0x22, j - start <= 64 else { return nil }
            return String(decoding: utf8[start..<j], as: UTF8.self)
        }
        i += 1
    }
    return nil
}

/// One event stream kept open for the whole run: reconnects with `Last-Event-ID` when it breaks, and
/// hands every event to the board.
final class E2EStream: Sendable {
    let side: E2ENoticeBoard.Side
    private let task = Locked<Task<Void, Never>?>(nil)
    private let failures = Locked(0)

    init(side: E2ENoticeBoard.Side) { self.side = side }

    var reconnects: Int { failures.withLock { $0 } }

    /// Opens the stream (waits until the server answered 200) and starts reading it in the background.
    /// `open` is called again with the last event id after a break.
    func start(
        board: E2ENoticeBoard,
        open: @escaping @Sendable (String?) async throws -> ServerSentEventStream
    ) async throws {
        let first = try await open(nil)
        let side = self.side
        let failures = self.failures
        let reader = Task {
            var stream = first
            var lastId: String?
            while !Task.isCancelled {
                do {
                    for try await event in stream {
                        let now = ContinuousClock.now
                        if let id = event.id { lastId = id }
                        guard event.event.hasPrefix("payment."), let requestId = e2eRequestId(inEventData: event.data) else {
                            continue
                        }
                        board.notice(requestId: requestId, type: event.event, side: side, at: now)
                    }
                } catch {}
                if Task.isCancelled { return }
                failures.withLock { $0 += 1 }
                while !Task.isCancelled {
                    if let reopened = try? await open(lastId) {
                        stream = reopened
                        break
                    }
                    try? await Task.sleep(for: .milliseconds(200))
                }
            }
        }
        task.withLock { $0 = reader }
    }

    func stop() {
        task.withLock { $0?.cancel() }
    }
}
