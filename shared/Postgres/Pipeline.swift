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
}

extension PGError {
    /// The SQLSTATE given to a statement that PostgreSQL skipped because an earlier statement of the same
    /// pipeline failed (libpq's `PGRES_PIPELINE_ABORTED`; not a server code).
    public static let pipelineAbortedState = "WPPAB"

    public var isPipelineAborted: Bool { sqlState == Self.pipelineAbortedState }
}

/// libpq's pipeline mode on one connection (docs/ledger.md, "Round trips"): every statement is queued and
/// sent without waiting for the one before, one sync point ends the pipeline, and then each statement's
/// own result is read. One round trip for the lot. The socket is driven non-blocking (send and receive
/// interleaved), so a large pipeline cannot deadlock with a server that is writing results back.
extension PGConnection {
    /// At most this many statements in one pipeline (a limit on everything: the server holds their results).
    public static let maxPipelineStatements = 256

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
        guard statements.count <= Self.maxPipelineStatements else {
            throw PGError(
                sqlState: "54000", message: "a pipeline holds at most \(Self.maxPipelineStatements) statements",
                context: "pipeline")
        }
        for statement in statements where statement.parameters.contains(where: { $0?.utf8.contains(0) == true }) {
            throw PGError(sqlState: "22021", message: "a parameter contains a NUL character", context: Self.summary(statement.sql))
        }
        let conn = try handle("pipeline")
        guard PQenterPipelineMode(conn) == 1 else { throw connectionError(conn, "enter pipeline mode") }
        guard PQsetnonblocking(conn, 1) == 0 else {
            _ = PQexitPipelineMode(conn)
            throw connectionError(conn, "non-blocking mode")
        }
        defer {
            _ = PQsetnonblocking(conn, 0)
            _ = PQexitPipelineMode(conn)
        }

        // 1. Queue everything: a Parse for each statement this connection has not prepared yet, then the
        //    statement itself, then the sync. `expected` lists what each result read below belongs to.
        enum Slot { case prepare(String), statement(Int) }
        var expected: [Slot] = []
        var newlyPrepared: [String: String] = [:]
        for (index, statement) in statements.enumerated() {
            let sent: Int32
            let cached = preparedNames[statement.sql] ?? newlyPrepared[statement.sql]
            let room = preparedNames.count + newlyPrepared.count < Self.maxPreparedStatements
            if statement.prepared, cached != nil || room {
                let name: String
                if let cached {
                    name = cached
                } else {
                    name = "wp_\(preparedNames.count + newlyPrepared.count + 1)"
                    guard PQsendPrepare(conn, name, statement.sql, 0, nil) == 1 else {
                        throw connectionError(conn, Self.summary(statement.sql))
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
            guard sent == 1 else { throw connectionError(conn, Self.summary(statement.sql)) }
            expected.append(.statement(index))
        }
        guard PQpipelineSync(conn) == 1 else { throw connectionError(conn, "pipeline sync") }
        try flush(conn)

        // 2. Read one result per queued item (each ends with a NULL), then the sync's.
        var results = [Result<PGRows, PGError>?](repeating: nil, count: statements.count)
        var failedPrepares: [String: PGError] = [:]
        for slot in expected {
            let result = try nextResult(conn)
            defer { PQclear(result) }
            try drainToNull(conn)
            switch slot {
            case .prepare(let sql):
                if case .failure(let error) = Self.outcome(result, conn: conn, sql: sql) { failedPrepares[sql] = error }
            case .statement(let index):
                let outcome = Self.outcome(result, conn: conn, sql: statements[index].sql)
                // A statement whose own Parse failed reports that error, not "skipped".
                if case .failure(let error) = outcome, error.isPipelineAborted,
                    let parseError = failedPrepares[statements[index].sql], !parseError.isPipelineAborted
                {
                    results[index] = .failure(parseError)
                } else {
                    results[index] = outcome
                }
            }
        }
        let sync = try nextResult(conn)
        let syncStatus = PQresultStatus(sync)
        PQclear(sync)
        guard syncStatus == PGRES_PIPELINE_SYNC else {
            throw PGError(sqlState: "08P01", message: "pipeline ended without its sync point", context: "pipeline")
        }
        for (sql, name) in newlyPrepared where failedPrepares[sql] == nil { preparedNames[sql] = name }
        return results.map {
            $0 ?? .failure(PGError(sqlState: "08P01", message: "no result for a statement", context: "pipeline"))
        }
    }

    /// `pipeline`, then the first failure thrown (the rows of every statement otherwise). For a pipeline
    /// whose statements stand or fall together.
    @discardableResult
    public func pipelineAll(_ statements: [PGStatement]) throws(PGError) -> [PGRows] {
        let results = try pipeline(statements)
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
            guard state == 1 else { throw connectionError(conn, "send") }
            try waitSocket(conn, write: true)
            guard PQconsumeInput(conn) == 1 else { throw connectionError(conn, "receive") }
        }
    }

    /// The next result, waiting on the socket while libpq needs more input.
    private func nextResult(_ conn: OpaquePointer) throws(PGError) -> OpaquePointer {
        // A connection that died mid-pipeline keeps answering NULL; a few in a row mean it is gone.
        var nulls = 0
        while true {
            while PQisBusy(conn) == 1 {
                try waitSocket(conn, write: false)
                guard PQconsumeInput(conn) == 1 else { throw connectionError(conn, "receive") }
            }
            if let result = PQgetResult(conn) { return result }
            nulls += 1
            if nulls > 2 || PQstatus(conn) != CONNECTION_OK { throw connectionError(conn, "result") }
        }
    }

    /// Reads the NULL that ends one statement's results (a statement answers one result here).
    private func drainToNull(_ conn: OpaquePointer) throws(PGError) {
        for _ in 0..<16 {
            while PQisBusy(conn) == 1 {
                try waitSocket(conn, write: false)
                guard PQconsumeInput(conn) == 1 else { throw connectionError(conn, "receive") }
            }
            guard let extra = PQgetResult(conn) else { return }
            PQclear(extra)
        }
        throw PGError(sqlState: "08P01", message: "too many results for one statement", context: "pipeline")
    }

    /// Waits until the socket is readable (or writable too, with `write`). Bounded: a server that says
    /// nothing for `socketTimeout` is taken as gone.
    private func waitSocket(_ conn: OpaquePointer, write: Bool) throws(PGError) {
        let fd = PQsocket(conn)
        guard fd >= 0 else { throw connectionError(conn, "socket") }
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

    private func connectionError(_ conn: OpaquePointer, _ context: String) -> PGError {
        let message = String(cString: PQerrorMessage(conn)).trimmingCharacters(in: .whitespacesAndNewlines)
        return PGError(sqlState: "08006", message: message.isEmpty ? "connection failed" : message, context: context)
    }

    private static func outcome(_ result: OpaquePointer, conn: OpaquePointer, sql: String) -> Result<PGRows, PGError> {
        if PQresultStatus(result) == PGRES_PIPELINE_ABORTED {
            return .failure(
                PGError(
                    sqlState: PGError.pipelineAbortedState, message: "skipped: an earlier statement of the pipeline failed",
                    context: summary(sql)))
        }
        do {
            return .success(try rows(result, conn: conn, sql: sql))
        } catch {
            return .failure(error)
        }
    }
}
