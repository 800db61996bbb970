// The one PostgreSQL engine (`PGPool`: one event loop for all of a stage's connections) against a real
// PostgreSQL: per-statement results inside a pipeline, many callers at once, a session that never goes on
// over a lost connection, and a server restarted with `pg_ctl restart -m immediate` while statements are
// in flight — every caller gets an answer, nothing acknowledged is lost or applied twice, and afterwards
// no call fails merely because its pooled connection had gone stale.

import Foundation
import Postgres
import Testing

@Suite("PostgreSQL pool", .timeLimit(.minutes(3)), .enabled(if: TSEnv.hasDatabase, "set WIPAY_TEST_DATABASE_URL to run"))
struct PoolTests {
    static let insert = PipelineTests.insert
    static let count = PipelineTests.count

    /// A fresh database with the table `t (id int PRIMARY KEY, v text)` and a pool on it.
    func withPool<T: Sendable>(
        size: Int = 2, acquireTimeout: Duration = .seconds(5), _ body: (PGPool, TSDatabase) async throws -> T
    ) async throws -> T {
        let db = try await TSDatabase.create(prefix: "pooltest")
        do {
            try await db.query("CREATE TABLE t (id int PRIMARY KEY, v text NOT NULL)")
            let pool = PGPool(conninfo: db.conninfo, size: size, name: "test", acquireTimeout: acquireTimeout)
            let result = try await body(pool, db)
            await db.drop()
            return result
        } catch {
            await db.drop()
            throw error
        }
    }

    @Test func aFailingStatementInAPipelineAbortsExactlyWhatPostgreSQLAborts() async throws {
        try await withPool { pool, db in
            try await db.query("INSERT INTO t VALUES (7, 'old')")
            try await pool.withSession { session in
                PipelineTests.expectTheDuplicateAbortsTheRest(try await session.pipeline(PipelineTests.transactionWithADuplicate))
                #expect(session.inTransaction, "COMMIT was skipped: the transaction is aborted until rolled back")
                await session.rollbackIfNeeded()
                #expect(!session.inTransaction)
                // Without BEGIN, the statements up to the sync are one implicit transaction: all or nothing.
                let implicit = try await session.pipeline([
                    PGStatement(Self.insert, ["3", "c"]), PGStatement(Self.insert, ["7", "again"]),
                ])
                #expect((try? implicit[0].get()) != nil)
                #expect((try? implicit[1].get()) == nil)
                // The session and its prepared statements still work.
                let rows = try await session.pipelineAll([.begin, PGStatement(Self.insert, ["4", "d"]), .commit])
                #expect(rows[1].string(0, 0) == "4")
            }
            #expect(try await db.scalar(Self.count) == 2, "only the old row and id 4")
        }
    }

    @Test func aTransactionLeftOpenIsRolledBackBeforeTheConnectionIsLentAgain() async throws {
        try await withPool(size: 1) { pool, db in
            struct Oops: Error {}
            await #expect(throws: Oops.self) {
                try await pool.withSession { session in
                    try await session.pipelineAll([.begin, PGStatement(Self.insert, ["1", "a"])])
                    throw Oops()
                }
            }
            // The one connection is free, outside any transaction, and the insert is gone.
            let status = try await pool.query("SELECT count(*) FROM t")
            #expect(status.int64(0, 0) == 0)
            #expect(try await db.scalar(Self.count) == 0)
        }
    }

    @Test func manyCallersShareFewConnectionsAndEachGetsItsOwnAnswer() async throws {
        // A generous wait for a connection: the parallel suite may keep the callers from running for a while.
        try await withPool(size: 3, acquireTimeout: .seconds(60)) { pool, _ in
            let answers = try await withThrowingTaskGroup(of: (Int, Int64?).self) { group in
                for n in 0..<400 {
                    group.addTask { (n, try await pool.query("SELECT $1::bigint * 2", [String(n)]).int64(0, 0)) }
                }
                var out: [Int: Int64?] = [:]
                for try await (n, value) in group { out[n] = value }
                return out
            }
            #expect(answers.count == 400)
            #expect(answers.allSatisfy { $0.value == Int64($0.key) * 2 })
            // Prepared once per connection: three connections, one statement each (plus the count itself).
            let prepared = try await pool.withSession { session in
                try await session.query("SELECT $1::bigint * 2", ["1"])
                return try await session.query("SELECT count(*) FROM pg_prepared_statements WHERE statement = 'SELECT $1::bigint * 2'")
            }
            #expect(prepared.int64(0, 0) == 1)
            #expect(pool.health.up <= 3 && pool.health.healthy, "\(pool.health)")
        }
    }

    @Test func aSessionWhoseConnectionIsLostNeverContinuesOnANewOne() async throws {
        try await withPool(size: 1) { pool, db in
            try await pool.withSession { session in
                let pid = try await session.pipelineAll([.begin, PGStatement(Self.insert, ["1", "a"]), PGStatement("SELECT pg_backend_pid()")])
                let backend = pid[2].string(0, 0) ?? ""
                // Another connection ends this session's backend mid-transaction.
                _ = try await db.query("SELECT pg_terminate_backend($1::int)", [backend])
                do {
                    try await session.pipelineAll([PGStatement(Self.insert, ["2", "b"]), .commit])
                    Issue.record("a session must not go on over a lost connection")
                } catch let error as PGError {
                    #expect(error.isConnectionError, "\(error)")
                }
            }
            // The pool has reconnected by itself; nothing of the lost transaction stays.
            let end = ContinuousClock.now + .seconds(10)
            while !(pool.health.up == 1), ContinuousClock.now < end { try await Task.sleep(for: .milliseconds(20)) }
            #expect(try await pool.query(Self.count).int64(0, 0) == 0)
            #expect(pool.health.reconnects >= 1, "\(pool.health)")
        }
    }

    @Test func aPostgreSQLRestartedUnderLoadLosesNothingAndLeavesNoStaleConnection() async throws {
        let server = try await TSOwnPostgres.start()
        do {
            let setup = PGPool(conninfo: server.conninfo, size: 1, name: "setup")
            try await setup.query("CREATE TABLE IF NOT EXISTS r (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())")
            let size = 4
            let pool = PGPool(conninfo: server.conninfo, size: size, name: "restart", acquireTimeout: .seconds(10))
            // Every connection opened before the fault.
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<size {
                    group.addTask {
                        _ = try await pool.withSession { session in
                            try await session.query("SELECT pg_sleep(0.05)")
                        }
                    }
                }
                try await group.waitForAll()
            }
            #expect(pool.health.up == size, "\(pool.health)")

            // Writers insert unique ids without pause; the server is restarted with immediate shutdown meanwhile.
            let acknowledged = TSLocked<Set<Int64>>([])
            let attempted = TSLocked<Set<Int64>>([])
            let odd = TSLocked<[String]>([])
            let stop = TSLocked(false)
            let next = TSLocked<Int64>(0)
            let writers = Task {
                await withTaskGroup(of: Void.self) { group in
                    for _ in 0..<8 {
                        group.addTask {
                            while !stop.value {
                                let id = next.withLock { $0 += 1; return $0 }
                                attempted.withLock { _ = $0.insert(id) }
                                do {
                                    let rows = try await pool.query("INSERT INTO r (id) VALUES ($1) RETURNING id", [String(id)])
                                    if rows.int64(0, 0) == id { acknowledged.withLock { _ = $0.insert(id) } }
                                } catch let error as PGError where error.isConnectionError || error.isPoolBusy {
                                    try? await Task.sleep(for: .milliseconds(20))  // retryable: a client would retry
                                } catch {
                                    odd.withLock { $0.append("\(error)") }
                                }
                            }
                        }
                    }
                }
            }
            // Waits for progress, not for a time: the parallel suite may keep the writers from running a while.
            let flowing = await tsWait(timeout: .seconds(30)) { acknowledged.value.count >= 20 }
            let before = acknowledged.value.count
            try await server.restart()
            _ = await tsWait(timeout: .seconds(30)) { acknowledged.value.count >= before + 20 }
            stop.withLock { $0 = true }
            await writers.value
            #expect(flowing && before > 0, "writes were flowing before the restart")
            #expect(odd.value.isEmpty, "every failure is a retryable connection error: \(odd.value.prefix(3))")
            #expect(acknowledged.value.count > before, "writes resumed after the restart")

            // Nothing acknowledged is lost; nothing appears that was not attempted; each id once (primary key).
            let stored = Set(try await pool.withSession { session in
                try await session.query("SELECT id FROM r").rows.compactMap { $0[0].flatMap { Int64($0) } }
            })
            #expect(acknowledged.value.isSubset(of: stored), "\(acknowledged.value.subtracting(stored).count) acknowledged rows lost")
            #expect(stored.isSubset(of: attempted.value))

            // The pool reconnected every connection by itself, and reports it.
            let end = ContinuousClock.now + .seconds(15)
            while pool.health.up < size, ContinuousClock.now < end { try await Task.sleep(for: .milliseconds(20)) }
            let health = pool.health
            #expect(health.up == size && health.healthy, "\(health)")
            #expect(health.reconnects >= size, "\(health)")
            // No call fails because of a connection that went stale: every connection, busy at once.
            let failures = await withTaskGroup(of: String?.self) { group in
                for n in 0..<(size * 8) {
                    group.addTask {
                        do {
                            try await pool.query("SELECT $1::int, pg_sleep(0.01)", [String(n)])
                            return nil
                        } catch {
                            return "\(error)"
                        }
                    }
                }
                var out: [String] = []
                for await failure in group { if let failure { out.append(failure) } }
                return out
            }
            #expect(failures.isEmpty, "\(failures.prefix(3))")
        } catch {
            await server.stop()
            throw error
        }
        await server.stop()
    }
}

/// A PostgreSQL server of the test's own (ops/scripts/pg.sh in a temporary folder, on a free port), for
/// faults that would disturb the shared test server.
struct TSOwnPostgres: Sendable {
    let directory: String
    let port: Int
    var conninfo: String { "host=127.0.0.1 port=\(port) dbname=wipay user=wipay connect_timeout=5" }

    static let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("ops/scripts/pg.sh").path

    static func start() async throws -> TSOwnPostgres {
        guard let port = TSFreePorts.consecutive(1) else { throw TSFailure("no free port for PostgreSQL") }
        let parent = FileManager.default.temporaryDirectory.appendingPathComponent("wipay-pg-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: parent, withIntermediateDirectories: true)
        if getuid() == 0 {
            // PostgreSQL runs as `postgres`, which must be able to enter the folder.
            _ = chmod(parent.path, 0o755)
        }
        let server = TSOwnPostgres(directory: parent.appendingPathComponent("pg").path, port: port)
        try await server.run(["start", server.directory, String(port)])
        return server
    }

    func restart() async throws { try await run(["restart", directory]) }

    func stop() async {
        _ = try? await run(["stop", directory])
        try? FileManager.default.removeItem(atPath: URL(fileURLWithPath: directory).deletingLastPathComponent().path)
    }

    private func run(_ arguments: [String]) async throws {
        let script = Self.script
        let log = URL(fileURLWithPath: directory).deletingLastPathComponent().appendingPathComponent("pg.sh.out").path
        // Through system(3), which waits for its own child: Foundation's Process did not notice this
        // script's exit here (its child, the server, lives on).
        let (status, output) = try await TSBlocking.run { () -> (Int32, String) in
            let quoted = ([script] + arguments + [log]).map { "'" + $0.replacingOccurrences(of: "'", with: "'\\''") + "'" }
            let command = "/bin/bash \(quoted.dropLast().joined(separator: " ")) </dev/null >\(quoted.last ?? "/dev/null") 2>&1"
            let raw = system(command)
            let exit = (raw >> 8) & 0xff
            return (raw == 0 ? 0 : (exit == 0 ? raw : exit), (try? String(contentsOfFile: log, encoding: .utf8)) ?? "")
        }
        guard status == 0 else { throw TSFailure("pg.sh \(arguments.joined(separator: " ")) failed (\(status)): \(output)") }
    }
}
