import Foundation
import Postgres
import WiPayBus

/// The router's connections: the shared `PGPool` (one event loop for every connection, pipelined and
/// prepared statements, bounded waits, reconnect with back-off), plus what the router's transactions add:
/// a `BEGIN` that travels with the transaction's first statement and a `COMMIT` with its last, so a
/// transaction costs no round trips of its own. A caller may hold one connection across `await`s: the
/// instruction's transaction keeps the request row locked while the ledger is asked.
final class RouterDatabase: Sendable {
    let pool: PGPool

    struct Statement: Sendable, Equatable {
        let sql: String
        let parameters: [String?]
    }

    /// One leased connection; valid inside `withLease`/`transaction` only.
    struct Lease: Sendable {
        let session: PGSession
        /// Where the transaction is: `BEGIN` is sent with the first statement, and `COMMIT` may go with the
        /// last one.
        let transaction = Locked(TransactionState.none)

        enum TransactionState: Sendable, Equatable {
            case none
            /// `transaction` began; `BEGIN` goes before the next statement, after the prelude (a statement
            /// that commits on its own first) when there is one.
            case pending(prelude: Statement?)
            case open
        }

        /// Runs `statements` as one pipeline (after a pending `BEGIN`): one result each, in order.
        func pipeline(_ statements: [PGStatement]) async throws -> [Result<PGRows, PGError>] {
            let opening = takePendingBegin()
            let results = try await session.pipeline(opening + statements)
            guard !opening.isEmpty else { return results }
            // The prelude and BEGIN must have run for the rest to mean anything.
            for result in results.prefix(opening.count) {
                if case .failure(let error) = result {
                    transaction.withLock { $0 = .none }
                    throw error
                }
            }
            transaction.withLock { $0 = .open }
            return Array(results.dropFirst(opening.count))
        }

        @discardableResult
        func query(_ sql: String, _ parameters: [String?] = []) async throws -> PGRows {
            try await only(pipeline([PGStatement(sql, parameters)]))
        }

        /// The last statement of a `transaction`, and its `COMMIT`, in one round trip (`setting`, e.g.
        /// `SET LOCAL …`, first when given).
        @discardableResult
        func queryAndCommit(_ sql: String, _ parameters: [String?] = [], setting: String? = nil) async throws -> PGRows {
            var statements: [PGStatement] = []
            if let setting { statements.append(PGStatement(setting, prepared: false)) }
            statements.append(PGStatement(sql, parameters))
            let committing = transaction.withLock { $0 } != .none
            if committing { statements.append(.commit) }
            let results = try await pipeline(statements)
            let rows = try results.allRows()
            if committing { transaction.withLock { $0 = .none } }
            return rows[setting == nil ? 0 : 1]
        }

        /// Commits the open transaction now (nothing when none is open).
        func commit() async throws {
            switch transaction.withLock({ $0 }) {
            case .none: return
            case .pending(let prelude):
                transaction.withLock { $0 = .none }
                if let prelude { try await only(session.pipeline([PGStatement(prelude.sql, prelude.parameters)])) }
            case .open:
                try await only(session.pipeline([.commit]))
                transaction.withLock { $0 = .none }
            }
        }

        /// Rolls back an open or aborted transaction (nothing when none is open).
        func rollbackIfNeeded() async {
            transaction.withLock { if $0 == .open { $0 = .none } }
            await session.rollbackIfNeeded()
        }

        /// The prelude and `BEGIN` still to send, if the transaction is pending.
        private func takePendingBegin() -> [PGStatement] {
            guard case .pending(let prelude) = transaction.withLock({ $0 }) else { return [] }
            var statements: [PGStatement] = []
            if let prelude { statements.append(PGStatement(prelude.sql, prelude.parameters)) }
            statements.append(.begin)
            return statements
        }

        @discardableResult
        private func only(_ results: [Result<PGRows, PGError>]) throws -> PGRows {
            guard let first = results.first else {
                throw PGError(sqlState: "08P01", message: "no result for a statement", context: "router")
            }
            return try first.get()
        }
    }

    /// `size` connections. Bounded: at most `maxWaiters` callers wait for one, each at most
    /// `acquireTimeout`, then `PGError.poolBusy` (answered `503 database_busy`).
    init(conninfo: String, size: Int, maxWaiters: Int = 1024, acquireTimeout: Duration = .seconds(5)) {
        pool = PGPool(
            conninfo: conninfo, size: size, name: "payment-router", maxWaiters: maxWaiters, acquireTimeout: acquireTimeout)
    }

    /// Callers waiting for a connection now.
    var waiting: Int { pool.waiting }

    /// Leases a connection for `body`, then gives it back (a transaction left open is rolled back).
    func withLease<T: Sendable>(_ body: (Lease) async throws -> T) async throws -> T {
        try await pool.withSession { try await body(Lease(session: $0)) }
    }

    /// `BEGIN`, `body`, `COMMIT` on one leased connection; `ROLLBACK` when `body` throws. `BEGIN` travels
    /// with the body's first statement; a body that ends with `queryAndCommit` or `commit()` has committed
    /// already.
    ///
    /// `prelude`: a statement that commits on its own before the transaction begins (the instruction's
    /// attempt row), sent in the same trip as `BEGIN` and the first statement.
    func transaction<T: Sendable>(prelude: Statement? = nil, _ body: (Lease) async throws -> T) async throws -> T {
        try await withLease { lease in
            lease.transaction.withLock { $0 = .pending(prelude: prelude) }
            do {
                let value = try await body(lease)
                try await lease.commit()
                return value
            } catch {
                await lease.rollbackIfNeeded()
                throw error
            }
        }
    }

    /// One statement on any connection.
    @discardableResult
    func query(_ sql: String, _ parameters: [String?] = []) async throws -> PGRows {
        try await pool.query(sql, parameters)
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
