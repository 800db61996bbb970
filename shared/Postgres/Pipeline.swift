import CLibPQ
import Foundation

/// One statement of a pipeline: SQL with text parameters (`$1`, …; nil is SQL NULL).
public struct PGStatement: Sendable, Equatable {
    public let sql: String
    public let parameters: [String?]
    /// Sent as a prepared statement (prepared once per connection, re-prepared after a reconnect). Off for
    /// one-off and utility statements (`BEGIN`, `COMMIT`, `SET LOCAL …`).
    public let prepared: Bool

    public init(_ sql: String, _ parameters: [String?] = [], prepared: Bool = true) {
        self.sql = sql
        self.parameters = parameters
        self.prepared = prepared
    }

    public static let begin = PGStatement("BEGIN", prepared: false)
    public static let commit = PGStatement("COMMIT", prepared: false)
    public static let rollback = PGStatement("ROLLBACK", prepared: false)
}

extension PGError {
    /// The SQLSTATE given to a statement that PostgreSQL skipped because an earlier statement of the same
    /// pipeline failed (libpq's `PGRES_PIPELINE_ABORTED`; not a server code).
    public static let pipelineAbortedState = "WPPAB"

    public var isPipelineAborted: Bool { sqlState == Self.pipelineAbortedState }
}

/// Sending one pipeline and reading its answers, for both drivers of a connection: the blocking
/// `PGConnection.pipeline` (the ledger's batch thread, tests) and the pool's event loop (`PGPool`).
enum PGPipelineWire {
    /// At most this many statements in one pipeline (a limit on everything: the server holds their results).
    static let maxStatements = 256
    /// Past this many prepared statements on one connection, further ones run unprepared (the callers'
    /// statements are a small fixed set).
    static let maxPreparedStatements = 128

    /// What each result read back belongs to, in order.
    enum Expected { case prepare(String), statement(Int) }

    /// Refuses what cannot be sent: too many statements, a NUL inside a text parameter (libpq takes C
    /// strings, so it would silently cut the value).
    static func validate(_ statements: [PGStatement]) throws(PGError) {
        guard statements.count <= maxStatements else {
            throw PGError(
                sqlState: "54000", message: "a pipeline holds at most \(maxStatements) statements", context: "pipeline")
        }
        for statement in statements where statement.parameters.contains(where: { $0?.utf8.contains(0) == true }) {
            throw PGError(
                sqlState: "22021", message: "a parameter contains a NUL character",
                context: PGConnection.summary(statement.sql))
        }
    }

    /// Queues `statements` on `conn` (in pipeline mode) and their sync point: a Parse for each statement the
    /// session has not prepared (`prepared`: SQL text → name), then the statement. Nothing is flushed.
    /// Returns what to expect back and the names prepared by this pipeline (cached once it succeeds).
    static func queue(
        _ statements: [PGStatement], on conn: OpaquePointer, prepared: [String: String]
    ) throws(PGError) -> (expected: [Expected], newlyPrepared: [String: String]) {
        var expected: [Expected] = []
        expected.reserveCapacity(statements.count + 4)
        var newlyPrepared: [String: String] = [:]
        for (index, statement) in statements.enumerated() {
            let sent: Int32
            let cached = prepared[statement.sql] ?? newlyPrepared[statement.sql]
            let room = prepared.count + newlyPrepared.count < maxPreparedStatements
            if statement.prepared, cached != nil || room {
                let name: String
                if let cached {
                    name = cached
                } else {
                    name = "wp_\(prepared.count + newlyPrepared.count + 1)"
                    guard PQsendPrepare(conn, name, statement.sql, 0, nil) == 1 else {
                        throw connectionError(conn, PGConnection.summary(statement.sql))
                    }
                    newlyPrepared[statement.sql] = name
                    expected.append(.prepare(statement.sql))
                }
                sent = withParameterPointers(statement.parameters) { pointers in
                    PQsendQueryPrepared(conn, name, Int32(pointers.count), pointers, nil, nil, 0)
                }
            } else {
                sent = withParameterPointers(statement.parameters) { pointers in
                    PQsendQueryParams(conn, statement.sql, Int32(pointers.count), nil, pointers, nil, nil, 0)
                }
            }
            guard sent == 1 else { throw connectionError(conn, PGConnection.summary(statement.sql)) }
            expected.append(.statement(index))
        }
        guard PQpipelineSync(conn) == 1 else { throw connectionError(conn, "pipeline sync") }
        return (expected, newlyPrepared)
    }

    /// Turns the stream of `PQgetResult` answers of one queued pipeline into one result per statement.
    struct Reader {
        let statements: [PGStatement]
        let expected: [Expected]
        let newlyPrepared: [String: String]
        private var position = 0
        /// The result for `expected[position - 1]` was read; its terminating NULL is next.
        private var awaitingNull = false
        private var strayResults = 0
        private var strayNulls = 0
        private var results: [Result<PGRows, PGError>?]
        private var failedPrepares: [String: PGError] = [:]

        init(statements: [PGStatement], expected: [Expected], newlyPrepared: [String: String]) {
            self.statements = statements
            self.expected = expected
            self.newlyPrepared = newlyPrepared
            results = Array(repeating: nil, count: statements.count)
        }

        /// The names to cache on the session once the pipeline has ended (a failed Parse is not cached).
        var preparedToKeep: [String: String] { newlyPrepared.filter { failedPrepares[$0.key] == nil } }

        /// Feeds the next answer of `PQgetResult` (taken, and cleared, here). Returns the results once the
        /// sync point has been read, nil while more is to come; throws on a protocol breach.
        mutating func feed(_ result: OpaquePointer?, conn: OpaquePointer) throws(PGError) -> [Result<PGRows, PGError>]? {
            guard let result else {
                if awaitingNull {
                    awaitingNull = false
                    return nil
                }
                // A NULL where a result belongs: a connection that died mid-pipeline keeps answering NULL.
                strayNulls += 1
                if strayNulls > 2 || PQstatus(conn) != CONNECTION_OK { throw connectionError(conn, "result") }
                return nil
            }
            defer { PQclear(result) }
            if awaitingNull {
                // A second result for one statement (not sent by our statements; bounded all the same).
                strayResults += 1
                if strayResults > 16 {
                    throw PGError(sqlState: "08P01", message: "too many results for one statement", context: "pipeline")
                }
                return nil
            }
            guard position < expected.count else {
                guard PQresultStatus(result) == PGRES_PIPELINE_SYNC else {
                    throw PGError(sqlState: "08P01", message: "pipeline ended without its sync point", context: "pipeline")
                }
                return results.map {
                    $0 ?? .failure(PGError(sqlState: "08P01", message: "no result for a statement", context: "pipeline"))
                }
            }
            let slot = expected[position]
            position += 1
            awaitingNull = true
            switch slot {
            case .prepare(let sql):
                if case .failure(let error) = outcome(result, conn: conn, sql: sql) { failedPrepares[sql] = error }
            case .statement(let index):
                let sql = statements[index].sql
                let answer = outcome(result, conn: conn, sql: sql)
                // A statement whose own Parse failed reports that error, not "skipped".
                if case .failure(let error) = answer, error.isPipelineAborted,
                    let parseError = failedPrepares[sql], !parseError.isPipelineAborted
                {
                    results[index] = .failure(parseError)
                } else {
                    results[index] = answer
                }
            }
            return nil
        }

        private func outcome(_ result: OpaquePointer, conn: OpaquePointer, sql: String) -> Result<PGRows, PGError> {
            if PQresultStatus(result) == PGRES_PIPELINE_ABORTED {
                return .failure(
                    PGError(
                        sqlState: PGError.pipelineAbortedState, message: "skipped: an earlier statement of the pipeline failed",
                        context: PGConnection.summary(sql)))
            }
            do {
                return .success(try PGConnection.rows(result, conn: conn, sql: sql))
            } catch {
                return .failure(error)
            }
        }
    }

    static func connectionError(_ conn: OpaquePointer, _ context: String) -> PGError {
        PGError(sqlState: "08006", message: message(conn), context: context)
    }

    /// libpq's last error on `conn`, trimmed ("connection failed" when it says nothing).
    static func message(_ conn: OpaquePointer) -> String {
        let text = String(cString: PQerrorMessage(conn)).trimmingCharacters(in: .whitespacesAndNewlines)
        return text.isEmpty ? "connection failed" : text
    }

    /// `results`, then the first failure thrown (the rows of every statement otherwise). For a pipeline whose
    /// statements stand or fall together.
    static func all(_ results: [Result<PGRows, PGError>]) throws(PGError) -> [PGRows] {
        var rows: [PGRows] = []
        rows.reserveCapacity(results.count)
        for result in results {
            switch result {
            case .success(let value): rows.append(value)
            case .failure(let error) where error.isPipelineAborted: continue  // the real error comes first
            case .failure(let error): throw error
            }
        }
        return rows
    }
}

/// A pipeline on the wire whose answers are still to be read (`PGConnection.send`, then `receive`).
public struct PGSentPipeline {
    fileprivate let reader: PGPipelineWire.Reader
}

/// libpq's pipeline mode on one connection, driven by the calling thread (docs/ledger.md, "Round trips"):
/// every statement is queued and sent without waiting for the one before, one sync point ends the
/// pipeline, and then each statement's own result is read. One round trip for the lot. The socket is
/// driven non-blocking (send and receive interleaved), so a large pipeline cannot deadlock with a server
/// that is writing results back. `PGPool` drives its connections the same way from one event loop.
extension PGConnection {
    /// At most this many statements in one pipeline.
    public static var maxPipelineStatements: Int { PGPipelineWire.maxStatements }

    /// Runs `statements` as one pipeline with one sync at the end. Returns one result per statement, in
    /// order: its rows, or the error PostgreSQL gave it. After a failing statement, PostgreSQL skips the rest
    /// up to the sync; those get `PGError.isPipelineAborted`. A failure in an explicit transaction (a
    /// `BEGIN` in this or an earlier pipeline) leaves it aborted: the caller rolls back (`rollbackIfNeeded`).
    ///
    /// Throws only when the connection itself failed (lost, or a protocol error): then nothing can be said
    /// of which statements ran, and the caller treats the whole pipeline as failed (a transaction that was
    /// open is rolled back by the server when the connection goes).
    public func pipeline(_ statements: [PGStatement]) throws(PGError) -> [Result<PGRows, PGError>] {
        guard !statements.isEmpty else { return [] }
        return try receive(try send(statements))
    }

    /// The first half of `pipeline`: queues `statements` and their sync point and sends them, without
    /// waiting for any answer. The connection is then busy with this pipeline until `receive` reads its
    /// answers; nothing else may be sent on it meanwhile. The caller may do other work in between, e.g.
    /// drive another connection: the server works on this pipeline at the same time.
    public func send(_ statements: [PGStatement]) throws(PGError) -> PGSentPipeline {
        guard !statements.isEmpty else {
            throw PGError(sqlState: "XX000", message: "an empty pipeline", context: "pipeline")
        }
        guard sentPipelines == 0 else {
            throw PGError(sqlState: "XX000", message: "a pipeline is already waiting for its answers", context: "pipeline")
        }
        try PGPipelineWire.validate(statements)
        let conn = try handle("pipeline")
        guard PQenterPipelineMode(conn) == 1 else { throw PGPipelineWire.connectionError(conn, "enter pipeline mode") }
        guard PQsetnonblocking(conn, 1) == 0 else {
            _ = PQexitPipelineMode(conn)
            throw PGPipelineWire.connectionError(conn, "non-blocking mode")
        }
        do {
            let queued = try PGPipelineWire.queue(statements, on: conn, prepared: preparedNames)
            try flush(conn)
            sentPipelines += 1
            return PGSentPipeline(
                reader: PGPipelineWire.Reader(
                    statements: statements, expected: queued.expected, newlyPrepared: queued.newlyPrepared))
        } catch {
            leavePipelineMode(conn)
            throw error
        }
    }

    /// The second half of `pipeline`: reads the answers of a pipeline `send` put on this connection. One
    /// result per statement, as `pipeline` returns them; throws only when the connection failed.
    public func receive(_ sent: PGSentPipeline) throws(PGError) -> [Result<PGRows, PGError>] {
        let conn = try handle("pipeline")
        guard sentPipelines > 0 else {
            throw PGError(sqlState: "XX000", message: "no pipeline is waiting for its answers", context: "pipeline")
        }
        defer {
            sentPipelines -= 1
            leavePipelineMode(conn)
        }
        var reader = sent.reader
        while true {
            while PQisBusy(conn) == 1 {
                try waitSocket(conn, write: false)
                guard PQconsumeInput(conn) == 1 else { throw PGPipelineWire.connectionError(conn, "receive") }
            }
            if let results = try reader.feed(PQgetResult(conn), conn: conn) {
                preparedNames.merge(reader.preparedToKeep) { old, _ in old }
                return results
            }
        }
    }

    private func leavePipelineMode(_ conn: OpaquePointer) {
        _ = PQsetnonblocking(conn, 0)
        _ = PQexitPipelineMode(conn)
    }

    /// `pipeline`, then the first failure thrown (the rows of every statement otherwise). For a pipeline
    /// whose statements stand or fall together.
    @discardableResult
    public func pipelineAll(_ statements: [PGStatement]) throws(PGError) -> [PGRows] {
        try PGPipelineWire.all(try pipeline(statements))
    }

    /// True inside a transaction block (open or aborted).
    public var inTransaction: Bool {
        guard let conn = rawHandle else { return false }
        let status = PQtransactionStatus(conn)
        return status == PQTRANS_INTRANS || status == PQTRANS_INERROR || status == PQTRANS_ACTIVE
    }

    /// Rolls back an open or aborted transaction; nothing when none is open. Errors are swallowed: a
    /// connection that cannot even roll back is reset by its next use.
    public func rollbackIfNeeded() {
        guard inTransaction else { return }
        try? execute("ROLLBACK")
    }

    // MARK: the socket

    /// Sends what libpq has buffered, reading meanwhile so the server never blocks on a full socket.
    private func flush(_ conn: OpaquePointer) throws(PGError) {
        while true {
            let state = PQflush(conn)
            if state == 0 { return }
            guard state == 1 else { throw PGPipelineWire.connectionError(conn, "send") }
            try waitSocket(conn, write: true)
            guard PQconsumeInput(conn) == 1 else { throw PGPipelineWire.connectionError(conn, "receive") }
        }
    }

    /// Waits until the socket is readable (or writable too, with `write`). Bounded: a server that says
    /// nothing for `socketTimeout` is taken as gone.
    private func waitSocket(_ conn: OpaquePointer, write: Bool) throws(PGError) {
        let fd = PQsocket(conn)
        guard fd >= 0 else { throw PGPipelineWire.connectionError(conn, "socket") }
        var pfd = pollfd(fd: fd, events: Int16(POLLIN) | (write ? Int16(POLLOUT) : 0), revents: 0)
        while true {
            let ready = poll(&pfd, 1, Self.socketTimeoutMillis)
            if ready > 0 { return }
            if ready == 0 {
                throw PGError(
                    sqlState: "08006", message: "no answer from the server for \(Self.socketTimeoutMillis) ms",
                    context: "pipeline")
            }
            if errno != EINTR { throw PGError(sqlState: "08006", message: "poll failed (errno \(errno))", context: "pipeline") }
        }
    }

    /// How long a pipeline waits for the server to say anything (a commit's fsync included).
    static let socketTimeoutMillis: Int32 = 30_000
}
