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
        /// Where the leased connection's transaction is: `BEGIN` is sent with the first statement, and
        /// `COMMIT` may go with the last one, so a transaction costs no round trips of its own.
        let transaction = Locked(TransactionState.none)
        /// The statements prepared on `connection`: SQL text → statement name. Touched only on `queue`.
        var prepared: [String: String] = [:]
        static let maxPrepared = 64

        init(index: Int, conninfo: String) {
            queue = DispatchQueue(label: "router-pg-\(index)")
            self.conninfo = conninfo
        }

        /// Runs `sql` as a prepared statement (prepared on first use; the router's statements are a small,
        /// fixed set, so the server parses and plans each once per connection instead of every time).
        func query(_ connection: PGConnection, _ sql: String, _ parameters: [String?]) throws -> PGRows {
            if let name = prepared[sql] { return try connection.queryPrepared(name, parameters, sql: sql) }
            guard prepared.count < Self.maxPrepared else { return try connection.query(sql, parameters) }
            let name = "router_\(prepared.count + 1)"
            try connection.prepare(name, sql)
            prepared[sql] = name
            return try connection.queryPrepared(name, parameters, sql: sql)
        }
    }

    enum TransactionState: Sendable, Equatable {
        case none
        /// `transaction` began; `BEGIN` goes before the next statement, after the prelude (a statement that
        /// commits on its own first) when there is one.
        case pending(prelude: Statement?)
        case open
    }

    struct Statement: Sendable, Equatable {
        let sql: String
        let parameters: [String?]
    }

    /// One leased connection; valid inside `withLease`/`transaction` only.
    struct Lease: Sendable {
        let slot: Slot

        /// Runs `body` with the connection on its own thread (after a pending `BEGIN`).
        func run<T: Sendable>(_ body: @escaping @Sendable (PGConnection) throws -> T) async throws -> T {
            let slot = self.slot
            return try await withCheckedThrowingContinuation { continuation in
                slot.queue.async {
                    do {
                        if let connection = slot.connection {
                            // A reset connection is a new session: its prepared statements are gone.
                            if !connection.isHealthy { slot.prepared = [:] }
                            try connection.ensureConnected()
                        } else {
                            slot.prepared = [:]
                            slot.connection = try PGConnection(conninfo: slot.conninfo)
                        }
                        guard let connection = slot.connection else {
                            throw PGError(sqlState: "08003", message: "no connection", context: "router pool")
                        }
                        if case .pending(let prelude) = slot.transaction.withLock({ $0 }) {
                            if let prelude { _ = try slot.query(connection, prelude.sql, prelude.parameters) }
                            try connection.execute("BEGIN")
                            slot.transaction.withLock { $0 = .open }
                        }
                        continuation.resume(returning: try body(connection))
                    } catch {
                        if let error = error as? PGError, error.isConnectionError {
                            slot.connection = nil
                            slot.transaction.withLock { if $0 == .open { $0 = .none } }
                        }
                        continuation.resume(throwing: error)
                    }
                }
            }
        }

        @discardableResult
        func query(_ sql: String, _ parameters: [String?] = []) async throws -> PGRows {
            let slot = self.slot
            return try await run { try slot.query($0, sql, parameters) }
        }

        /// The last statement of a `transaction`, and its `COMMIT`, in one trip to the connection's thread
        /// (`setting`, e.g. `SET LOCAL …`, first when given).
        @discardableResult
        func queryAndCommit(_ sql: String, _ parameters: [String?] = [], setting: String? = nil) async throws -> PGRows {
            let slot = self.slot
            return try await run { connection in
                if let setting { try connection.execute(setting) }
                let rows = try slot.query(connection, sql, parameters)
                if slot.transaction.withLock({ $0 }) == .open {
                    try connection.execute("COMMIT")
                    slot.transaction.withLock { $0 = .none }
                }
                return rows
            }
        }

        /// Commits the open transaction now (nothing when none is open).
        func commit() async throws {
            let slot = self.slot
            switch slot.transaction.withLock({ $0 }) {
            case .none: return
            case .pending(let prelude):
                slot.transaction.withLock { $0 = .none }
                if let prelude { try await run { _ = try slot.query($0, prelude.sql, prelude.parameters) } }
            case .open:
                try await run { connection in
                    try connection.execute("COMMIT")
                    slot.transaction.withLock { $0 = .none }
                }
            }
        }
    }

    private let slots: [Slot]
    /// Bounded: at most `maxWaiters` callers wait for a connection, each at most `acquireTimeout`, then
    /// `PGError.poolBusy` (answered `503 database_busy`).
    private let queue: PGSlotQueue

    init(conninfo: String, size: Int, maxWaiters: Int = 1024, acquireTimeout: Duration = .seconds(5)) {
        let size = max(1, size)
        slots = (0..<size).map { Slot(index: $0, conninfo: conninfo) }
        queue = PGSlotQueue(size: size, maxWaiters: maxWaiters, acquireTimeout: acquireTimeout)
    }

    /// Callers waiting for a connection now.
    var waiting: Int { queue.waiting }

    /// Leases a connection (reconnecting a lost one) for `body`, then gives it back.
    func withLease<T: Sendable>(_ body: (Lease) async throws -> T) async throws -> T {
        let index = try await queue.acquire()
        defer { queue.release(index) }
        return try await body(Lease(slot: slots[index]))
    }

    /// `BEGIN`, `body`, `COMMIT` on one leased connection; `ROLLBACK` when `body` throws. `BEGIN` travels
    /// with the body's first statement; a body that ends with `queryAndCommit` or `commit()` has committed
    /// already.
    ///
    /// `prelude`: a statement that commits on its own before the transaction begins (the instruction's
    /// attempt row), sent in the same trip as `BEGIN` and the first statement.
    func transaction<T: Sendable>(prelude: Statement? = nil, _ body: (Lease) async throws -> T) async throws -> T {
        try await withLease { lease in
            lease.slot.transaction.withLock { $0 = .pending(prelude: prelude) }
            do {
                let value = try await body(lease)
                try await lease.commit()
                return value
            } catch {
                let state = lease.slot.transaction.withLock { state -> TransactionState in
                    defer { state = .none }
                    return state
                }
                if state == .open {
                    _ = try? await lease.run { try $0.execute("ROLLBACK") }
                }
                throw error
            }
        }
    }

    /// One statement on any connection.
    @discardableResult
    func query(_ sql: String, _ parameters: [String?] = []) async throws -> PGRows {
        try await withLease { try await $0.query(sql, parameters) }
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
