import Foundation
import Postgres
import WiPayBus

/// The router's connections. Like `PGPool` (each connection used on its own thread, so blocking libpq
/// calls never block Swift's cooperative pool) but a caller can also hold one connection across `await`s:
/// the instruction's transaction keeps the request row locked while the ledger is asked.
final class RouterDatabase: Sendable {
    final class Slot: @unchecked Sendable {
        // Touched only on `queue`.
        let queue: DispatchQueue
        var connection: PGConnection?
        let conninfo: String
        init(index: Int, conninfo: String) {
            queue = DispatchQueue(label: "router-pg-\(index)")
            self.conninfo = conninfo
        }
    }

    /// One leased connection; valid inside `withLease`/`transaction` only.
    struct Lease: Sendable {
        let slot: Slot

        /// Runs `body` with the connection on its own thread.
        func run<T: Sendable>(_ body: @escaping @Sendable (PGConnection) throws -> T) async throws -> T {
            let slot = self.slot
            return try await withCheckedThrowingContinuation { continuation in
                slot.queue.async {
                    do {
                        if slot.connection == nil { slot.connection = try PGConnection(conninfo: slot.conninfo) }
                        guard let connection = slot.connection else {
                            throw PGError(sqlState: "08003", message: "no connection", context: "router pool")
                        }
                        continuation.resume(returning: try body(connection))
                    } catch {
                        if let error = error as? PGError, error.isConnectionError { slot.connection = nil }
                        continuation.resume(throwing: error)
                    }
                }
            }
        }

        @discardableResult
        func query(_ sql: String, _ parameters: [String?] = []) async throws -> PGRows {
            try await run { try $0.query(sql, parameters) }
        }
    }

    private let slots: [Slot]
    private let free: Locked<[Int]>
    private let waiters = Locked<[CheckedContinuation<Int, Never>]>([])

    init(conninfo: String, size: Int) {
        let size = max(1, size)
        slots = (0..<size).map { Slot(index: $0, conninfo: conninfo) }
        free = Locked(Array(0..<size))
    }

    /// Leases a connection (reconnecting a lost one) for `body`, then gives it back.
    func withLease<T: Sendable>(_ body: (Lease) async throws -> T) async throws -> T {
        let index = await acquire()
        defer { release(index) }
        let lease = Lease(slot: slots[index])
        try await lease.run { try $0.ensureConnected() }
        return try await body(lease)
    }

    /// `BEGIN`, `body`, `COMMIT` on one leased connection; `ROLLBACK` when `body` throws.
    func transaction<T: Sendable>(_ body: (Lease) async throws -> T) async throws -> T {
        try await withLease { lease in
            try await lease.run { try $0.execute("BEGIN") }
            do {
                let value = try await body(lease)
                try await lease.run { try $0.execute("COMMIT") }
                return value
            } catch {
                _ = try? await lease.run { try $0.execute("ROLLBACK") }
                throw error
            }
        }
    }

    /// One statement on any connection.
    @discardableResult
    func query(_ sql: String, _ parameters: [String?] = []) async throws -> PGRows {
        try await withLease { try await $0.query(sql, parameters) }
    }

    private func acquire() async -> Int {
        if let index = free.withLock({ $0.popLast() }) { return index }
        return await withCheckedContinuation { continuation in
            let immediate: Int? = free.withLock { free in
                if let index = free.popLast() { return index }
                waiters.withLock { $0.append(continuation) }
                return nil
            }
            if let immediate { continuation.resume(returning: immediate) }
        }
    }

    private func release(_ index: Int) {
        let waiter: CheckedContinuation<Int, Never>? = free.withLock { free in
            if let next = waiters.withLock({ $0.isEmpty ? nil : $0.removeFirst() }) { return next }
            free.append(index)
            return nil
        }
        waiter?.resume(returning: index)
    }
}

/// Wakes a waiting loop early (the outbox relay after a commit that inserted rows). A ring while nobody
/// waits is kept, so the next wait returns at once.
final class Doorbell: Sendable {
    private struct State {
        var rung = false
        var waiter: CheckedContinuation<Void, Never>?
    }

    private let state = Locked(State())

    func ring() {
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            if let waiter = state.waiter {
                state.waiter = nil
                return waiter
            }
            state.rung = true
            return nil
        }
        waiter?.resume()
    }

    /// Returns when rung, or after `timeout`.
    func wait(timeout: Duration) async {
        let timer = Task { [self] in
            do {
                try await Task.sleep(for: timeout)
                ring()
            } catch {}  // cancelled: the wait already ended
        }
        defer { timer.cancel() }
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let now = state.withLock { state -> Bool in
                if state.rung {
                    state.rung = false
                    return true
                }
                state.waiter = continuation
                return false
            }
            if now { continuation.resume() }
        }
    }
}
