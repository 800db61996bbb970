// libpq pipeline mode in the Postgres module, against a real PostgreSQL: each statement learns its own
// result, a failure aborts exactly what PostgreSQL aborts, prepared statements survive (and are
// re-prepared after) a lost connection, and a large pipeline does not deadlock.

import Foundation
import Postgres
import Testing

@Suite("PostgreSQL pipelines", .timeLimit(.minutes(2)), .enabled(if: TSEnv.hasDatabase, "set WIPAY_TEST_DATABASE_URL to run"))
struct PipelineTests {
    /// A fresh database with one table `t (id int PRIMARY KEY, v text)`.
    func withTable<T: Sendable>(_ body: @escaping @Sendable (PGConnection, TSDatabase) throws -> T) async throws -> T {
        let db = try await TSDatabase.create(prefix: "pipetest")
        do {
            let result = try await TSBlocking.run {
                let connection = try PGConnection(conninfo: db.conninfo)
                try connection.execute("CREATE TABLE t (id int PRIMARY KEY, v text NOT NULL)")
                return try body(connection, db)
            }
            await db.drop()
            return result
        } catch {
            await db.drop()
            throw error
        }
    }

    static let insert = "INSERT INTO t (id, v) VALUES ($1, $2) RETURNING id"

    /// A transaction whose second insert collides with a row 7 already there.
    static let transactionWithADuplicate: [PGStatement] = [
        .begin, PGStatement(insert, ["1", "a"]), PGStatement(insert, ["7", "duplicate"]), PGStatement(insert, ["2", "b"]),
        .commit,
    ]

    /// What `transactionWithADuplicate` must give: BEGIN and the first insert ran, the duplicate failed with
    /// its own error, the insert after it and COMMIT were skipped.
    static func expectTheDuplicateAbortsTheRest(
        _ results: [Result<PGRows, PGError>], sourceLocation: SourceLocation = #_sourceLocation
    ) {
        #expect(results.count == 5, sourceLocation: sourceLocation)
        guard results.count == 5 else { return }
        #expect((try? results[0].get()) != nil, "BEGIN ran", sourceLocation: sourceLocation)
        #expect((try? results[1].get().string(0, 0)) == "1", "the first insert ran and said so", sourceLocation: sourceLocation)
        if case .failure(let failure) = results[2] {
            #expect(failure.isUniqueViolation, "\(failure)", sourceLocation: sourceLocation)
        } else {
            Issue.record("the duplicate must fail", sourceLocation: sourceLocation)
        }
        for index in [3, 4] {
            if case .failure(let skipped) = results[index] {
                #expect(skipped.isPipelineAborted, "\(skipped)", sourceLocation: sourceLocation)
            } else {
                Issue.record("statement \(index) must be skipped", sourceLocation: sourceLocation)
            }
        }
    }
    static let count = "SELECT count(*) FROM t"

    @Test func eachStatementGetsItsOwnResult() async throws {
        try await withTable { db, _ in
            let results = try db.pipeline([
                PGStatement(Self.insert, ["1", "a"]), PGStatement(Self.insert, ["2", "b"]),
                PGStatement("SELECT v FROM t ORDER BY id"), PGStatement(Self.count),
            ])
            #expect(results.count == 4)
            #expect(try results[0].get().string(0, 0) == "1")
            #expect(try results[1].get().string(0, 0) == "2")
            #expect(try results[2].get().rows == [["a"], ["b"]])
            #expect(try results[3].get().int64(0, 0) == 2)
            #expect(!db.inTransaction)
        }
    }

    @Test func aFailureInsideATransactionAbortsTheRestAndTheTransaction() async throws {
        try await withTable { db, _ in
            try db.execute("INSERT INTO t VALUES (7, 'old')")
            Self.expectTheDuplicateAbortsTheRest(try db.pipeline(Self.transactionWithADuplicate))
            // COMMIT was skipped: the transaction is aborted until rolled back, and nothing of it stays.
            #expect(db.inTransaction)
            db.rollbackIfNeeded()
            #expect(!db.inTransaction)
            #expect(try db.query(Self.count).int64(0, 0) == 1)
            // pipelineAll throws the real error, not an "aborted" one.
            #expect(throws: PGError.self) {
                try db.pipelineAll([.begin, PGStatement(Self.insert, ["7", "again"]), .commit])
            }
            db.rollbackIfNeeded()
            // The connection and its prepared statements still work.
            let rows = try db.pipelineAll([.begin, PGStatement(Self.insert, ["3", "c"]), .commit])
            #expect(rows.count == 3 && rows[1].string(0, 0) == "3")
            #expect(try db.query(Self.count).int64(0, 0) == 2)
        }
    }

    @Test func withoutATransactionTheStatementsUpToTheSyncStandOrFallTogether() async throws {
        try await withTable { db, _ in
            try db.execute("INSERT INTO t VALUES (7, 'old')")
            let results = try db.pipeline([
                PGStatement(Self.insert, ["1", "a"]), PGStatement(Self.insert, ["7", "duplicate"]),
                PGStatement(Self.insert, ["2", "b"]),
            ])
            #expect((try? results[0].get()) != nil)
            #expect((try? results[1].get()) == nil && (try? results[2].get()) == nil)
            // One implicit transaction up to the sync: the first insert is rolled back with it.
            #expect(!db.inTransaction)
            #expect(try db.query(Self.count).int64(0, 0) == 1)
        }
    }

    @Test func statementsArePreparedOncePerSession() async throws {
        try await withTable { db, _ in
            for round in 0..<5 {
                try db.pipelineAll([PGStatement(Self.insert, [String(round), "x"]), PGStatement(Self.count)])
            }
            let prepared = try db.query("SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE 'INSERT INTO t%'")
            #expect(prepared.int64(0, 0) == 1, "one prepared insert for five pipelines")
            // A statement that fails to prepare is not remembered as prepared.
            let broken = try db.pipeline([PGStatement("SELECT no_such_column FROM t")])
            #expect((try? broken[0].get()) == nil)
            let again = try db.pipeline([PGStatement("SELECT no_such_column FROM t")])
            guard case .failure(let error) = again[0] else {
                Issue.record("still broken")
                return
            }
            #expect(error.sqlState == "42703", "the real error again, not 'prepared statement does not exist': \(error)")
        }
    }

    @Test func aLostConnectionThrowsThenReconnectsAndPreparesAgain() async throws {
        try await withTable { db, tsdb in
            try db.pipelineAll([PGStatement(Self.insert, ["1", "a"])])
            let pid = try #require(try db.query("SELECT pg_backend_pid()").string(0, 0))
            let killer = try PGConnection(conninfo: tsdb.conninfo)
            try killer.query("SELECT pg_terminate_backend($1::int)", [pid])
            // The server is gone from under the session: a connection error, not a hang.
            var failed = false
            for _ in 0..<20 where !failed {
                do {
                    try db.pipelineAll([PGStatement(Self.insert, ["2", "b"])])
                    Thread.sleep(forTimeInterval: 0.05)
                } catch {
                    failed = true
                    #expect((error as? PGError)?.isConnectionError == true, "\(error)")
                }
            }
            #expect(failed, "a pipeline on a terminated session must fail")
            try db.ensureConnected()
            let rows = try db.pipelineAll([PGStatement(Self.insert, ["3", "c"]), PGStatement(Self.count)])
            #expect(rows[0].string(0, 0) == "3")
            #expect((try db.query(Self.count).int64(0, 0) ?? 0) >= 2)
        }
    }

    @Test func aLargePipelineDoesNotDeadlock() async throws {
        try await withTable { db, _ in
            // ~200 statements with 20 KB each, and results that come back while the client still sends.
            let value = String(repeating: "x", count: 20_000)
            var statements = [PGStatement.begin]
            for id in 0..<200 { statements.append(PGStatement("INSERT INTO t (id, v) VALUES ($1, $2) RETURNING v", [String(id), value])) }
            statements.append(.commit)
            let rows = try db.pipelineAll(statements)
            #expect(rows.count == 202)
            #expect(rows[100].string(0, 0)?.count == 20_000)
            #expect(try db.query(Self.count).int64(0, 0) == 200)
            // Over the bound: refused before anything is sent.
            #expect(throws: PGError.self) {
                try db.pipeline(Array(repeating: PGStatement(Self.count), count: PGConnection.maxPipelineStatements + 1))
            }
        }
    }

    @Test func anExhaustedPoolAnswersBusyWithinItsDeadline() async throws {
        let db = try await TSDatabase.create(prefix: "pooltest")
        let pool = PGPool(conninfo: db.conninfo, size: 1, maxWaiters: 1, acquireTimeout: .milliseconds(300))
        let holding = TSLocked(false)
        let released = TSLocked(false)
        // The holder keeps the connection until the test lets it go (a gate, not a time).
        let gate = TSLocked(false)
        let holder = Task {
            let rows = try await pool.withSession { session in
                holding.withLock { $0 = true }
                let end = ContinuousClock.now + .seconds(60)
                while !gate.value, ContinuousClock.now < end { try await Task.sleep(for: .milliseconds(5)) }
                return try await session.query("SELECT 1")
            }
            released.withLock { $0 = true }
            return rows
        }
        while !holding.value { try await Task.sleep(for: .milliseconds(5)) }
        // One caller may wait; it gives up at its deadline with a clear error, not an endless wait.
        let waiter = Task { try await pool.query("SELECT 1") }
        while pool.waiting == 0 { try await Task.sleep(for: .milliseconds(5)) }
        // A second waiter is past the bound: refused at once.
        do {
            _ = try await pool.query("SELECT 1")
            Issue.record("a caller past maxWaiters must be refused")
        } catch let error as PGError {
            #expect(error.isPoolBusy, "\(error)")
        }
        do {
            _ = try await waiter.value
            Issue.record("the waiter must time out")
        } catch let error as PGError {
            #expect(error.isPoolBusy, "\(error)")
        }
        #expect(!released.value, "both were refused while the connection was still held")
        gate.withLock { $0 = true }
        _ = try await holder.value
        // Free again: served at once.
        let rows = try await pool.query("SELECT 42")
        #expect(rows.int64(0, 0) == 42)
        #expect(pool.waiting == 0)
        await db.drop()
    }
}
