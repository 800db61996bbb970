/// Who gets which of a pool's connections, with a limit on everything: at most `maxWaiters` callers wait
/// for one, each at most `acquireTimeout`; past either bound the caller gets `PGError.poolBusy` at once
/// (a stage answers it `503 database_busy`, safe to retry), never an unbounded wait. Waiters are served
/// in arrival order.
public final class PGSlotQueue: Sendable {
    public let size: Int
    public let maxWaiters: Int
    public let acquireTimeout: Duration

    private enum Answer: Sendable {
        case slot(Int)
        case tooManyWaiting
        case timedOut
    }

    private struct Waiter {
        let id: UInt64
        let continuation: CheckedContinuation<Answer, Never>
    }

    private struct State {
        var free: [Int]
        var waiters: [Waiter] = []
        var nextId: UInt64 = 0
    }

    private let state: Locked<State>

    public init(size: Int, maxWaiters: Int = 1024, acquireTimeout: Duration = .seconds(5)) {
        self.size = max(1, size)
        self.maxWaiters = max(0, maxWaiters)
        self.acquireTimeout = acquireTimeout
        state = Locked(State(free: Array((0..<max(1, size)).reversed())))
    }

    /// Callers waiting for a connection now.
    public var waiting: Int { state.withLock { $0.waiters.count } }

    /// A free slot, waiting for one if needed (bounded, see the type).
    public func acquire() async throws(PGError) -> Int {
        if let index = state.withLock({ $0.free.popLast() }) { return index }
        guard acquireTimeout > .zero, maxWaiters > 0 else {
            throw PGError.poolBusy("all \(size) connections are in use")
        }
        let id = state.withLock { state -> UInt64 in
            state.nextId &+= 1
            return state.nextId
        }
        let timeout = acquireTimeout
        let timer = Task { [self] in
            do {
                try await Task.sleep(for: timeout)
                expire(id)
            } catch {}  // cancelled: the wait already ended
        }
        defer { timer.cancel() }
        let answer = await withCheckedContinuation { (continuation: CheckedContinuation<Answer, Never>) in
            let immediate = state.withLock { state -> Answer? in
                if let index = state.free.popLast() { return .slot(index) }
                guard state.waiters.count < maxWaiters else { return .tooManyWaiting }
                state.waiters.append(Waiter(id: id, continuation: continuation))
                return nil
            }
            if let immediate { continuation.resume(returning: immediate) }
        }
        switch answer {
        case .slot(let index):
            return index
        case .tooManyWaiting:
            throw PGError.poolBusy("\(maxWaiters) callers are already waiting for one of \(size) connections")
        case .timedOut:
            throw PGError.poolBusy("no connection of \(size) was free within \(timeout)")
        }
    }

    /// Gives `index` back: to the longest waiter, or to the free list.
    public func release(_ index: Int) {
        let waiter = state.withLock { state -> Waiter? in
            if !state.waiters.isEmpty { return state.waiters.removeFirst() }
            state.free.append(index)
            return nil
        }
        waiter?.continuation.resume(returning: .slot(index))
    }

    private func expire(_ id: UInt64) {
        let waiter = state.withLock { state -> Waiter? in
            guard let position = state.waiters.firstIndex(where: { $0.id == id }) else { return nil }
            return state.waiters.remove(at: position)
        }
        waiter?.continuation.resume(returning: .timedOut)
    }
}

extension PGError {
    /// The SQLSTATE of `poolBusy` (ours, not the server's).
    public static let poolBusyState = "WPBSY"

    /// Every connection of the pool is in use and the caller could not wait longer (see `PGSlotQueue`).
    public static func poolBusy(_ message: String) -> PGError {
        PGError(sqlState: poolBusyState, message: message, context: "connection pool")
    }

    public var isPoolBusy: Bool { sqlState == Self.poolBusyState }
}
