import CLibPQ
import Foundation

/// A PostgreSQL error: the SQLSTATE (e.g. "23505" unique_violation), the server's message, and what
/// we were doing. Connection failures have SQLSTATE "08000".
public struct PGError: Error, Sendable, CustomStringConvertible {
    public let sqlState: String
    public let message: String
    public let context: String

    public init(sqlState: String, message: String, context: String) {
        self.sqlState = sqlState
        self.message = message
        self.context = context
    }

    public var description: String { "\(context): \(message) (SQLSTATE \(sqlState))" }
    public var isUniqueViolation: Bool { sqlState == "23505" }
    public var isCheckViolation: Bool { sqlState == "23514" }
    /// Class 22: the data itself is unacceptable (bad encoding, out of range) — the caller's fault.
    public var isDataError: Bool { sqlState.hasPrefix("22") }
    public var isSerializationFailure: Bool { sqlState == "40001" || sqlState == "40P01" }
    /// Class 08 (connection exception) or a lost connection: reconnect and retry.
    public var isConnectionError: Bool { sqlState.hasPrefix("08") || sqlState == "57P01" }
}

/// One query result, copied out of libpq so that it can outlive the connection call.
public struct PGRows: Sendable {
    public let columns: [String]
    public let rows: [[String?]]
    public let affected: Int

    public var count: Int { rows.count }

    public func string(_ row: Int, _ column: Int) -> String? { rows[row][column] }
    public func int64(_ row: Int, _ column: Int) -> Int64? { rows[row][column].flatMap { Int64($0) } }
    public func int(_ row: Int, _ column: Int) -> Int? { rows[row][column].flatMap { Int($0) } }
    public func bool(_ row: Int, _ column: Int) -> Bool? { rows[row][column].map { $0 == "t" } }
}

/// One libpq connection. **Not thread-safe** — one owner at a time (a `PGPool` slot or the ledger's
/// batch thread); `@unchecked Sendable` only so ownership can move to that thread. Calls block.
public final class PGConnection: @unchecked Sendable {
    private var conn: OpaquePointer?
    public let conninfo: String
    /// The statements `pipeline` prepared on this session: SQL text → name. A new session (reconnect,
    /// reset) has none, so they are prepared again on first use.
    var preparedNames: [String: String] = [:]
    /// Pipelines sent (`send`) whose answers are not read yet: at most one.
    var sentPipelines = 0

    /// True between `send` and `receive`: the connection is busy with a pipeline on the wire.
    public var isAwaitingAnswers: Bool { sentPipelines > 0 }

    /// The libpq handle, or a connection error.
    func handle(_ context: String) throws(PGError) -> OpaquePointer {
        guard let conn else { throw PGError(sqlState: "08003", message: "no connection", context: context) }
        return conn
    }

    var rawHandle: OpaquePointer? { conn }

    public init(conninfo: String) throws(PGError) {
        self.conninfo = conninfo
        try connect()
    }

    deinit { if let conn { PQfinish(conn) } }

    private func connect() throws(PGError) {
        if let conn { PQfinish(conn) }
        preparedNames = [:]
        sentPipelines = 0
        conn = PQconnectdb(conninfo)
        guard let conn, PQstatus(conn) == CONNECTION_OK else {
            let message = conn.map { String(cString: PQerrorMessage($0)) } ?? "out of memory"
            throw PGError(sqlState: "08000", message: message.trimmingCharacters(in: .whitespacesAndNewlines), context: "connect")
        }
    }

    public var isHealthy: Bool { conn.map { PQstatus($0) == CONNECTION_OK } ?? false }

    /// Reconnects when the connection was lost (after a server restart, say).
    public func ensureConnected() throws(PGError) {
        if let conn, PQstatus(conn) == CONNECTION_OK { return }
        if let conn {
            PQreset(conn)
            preparedNames = [:]
            sentPipelines = 0
            if PQstatus(conn) == CONNECTION_OK { return }
        }
        try connect()
    }

    /// Runs one statement with text parameters (`$1`, `$2`, … ; nil is SQL NULL). One round trip.
    @discardableResult
    public func query(_ sql: String, _ parameters: [String?] = []) throws(PGError) -> PGRows {
        guard let conn else { throw PGError(sqlState: "08003", message: "no connection", context: "query") }
        // libpq takes C strings: a NUL inside a value would silently cut it. Refuse it instead.
        if parameters.contains(where: { $0?.utf8.contains(0) == true }) {
            throw PGError(sqlState: "22021", message: "a parameter contains a NUL character", context: Self.summary(sql))
        }
        let result = withParameterPointers(parameters) { pointers in
            PQexecParams(conn, sql, Int32(parameters.count), nil, pointers, nil, nil, 0)
        }
        defer { PQclear(result) }
        return try Self.rows(result, conn: conn, sql: sql)
    }

    /// Prepares `sql` as the statement `name` on this connection (parameter types inferred by the server),
    /// so `queryPrepared` skips parsing and, once the server settles on a generic plan, planning.
    public func prepare(_ name: String, _ sql: String) throws(PGError) {
        guard let conn else { throw PGError(sqlState: "08003", message: "no connection", context: "prepare") }
        let result = PQprepare(conn, name, sql, 0, nil)
        defer { PQclear(result) }
        _ = try Self.rows(result, conn: conn, sql: sql)
    }

    /// Runs the statement prepared as `name` with text parameters. One round trip. `sql` only names it in errors.
    @discardableResult
    public func queryPrepared(_ name: String, _ parameters: [String?], sql: String) throws(PGError) -> PGRows {
        guard let conn else { throw PGError(sqlState: "08003", message: "no connection", context: "query") }
        if parameters.contains(where: { $0?.utf8.contains(0) == true }) {
            throw PGError(sqlState: "22021", message: "a parameter contains a NUL character", context: Self.summary(sql))
        }
        let result = withParameterPointers(parameters) { pointers in
            PQexecPrepared(conn, name, Int32(parameters.count), pointers, nil, nil, 0)
        }
        defer { PQclear(result) }
        return try Self.rows(result, conn: conn, sql: sql)
    }

    /// Runs a script of statements without parameters (migrations).
    public func execute(_ sql: String) throws(PGError) {
        guard let conn else { throw PGError(sqlState: "08003", message: "no connection", context: "execute") }
        let result = PQexec(conn, sql)
        defer { PQclear(result) }
        _ = try Self.rows(result, conn: conn, sql: sql)
    }

    /// Runs `body` in a transaction; commits when it returns, rolls back when it throws.
    public func transaction<T>(_ body: (PGConnection) throws -> T) throws -> T {
        try execute("BEGIN")
        do {
            let value = try body(self)
            try execute("COMMIT")
            return value
        } catch {
            try? execute("ROLLBACK")
            throw error
        }
    }

    static func rows(_ result: OpaquePointer?, conn: OpaquePointer, sql: String) throws(PGError) -> PGRows {
        guard let result else {
            throw PGError(sqlState: "08006", message: String(cString: PQerrorMessage(conn)), context: summary(sql))
        }
        switch PQresultStatus(result) {
        case PGRES_COMMAND_OK, PGRES_TUPLES_OK, PGRES_EMPTY_QUERY:
            break
        default:
            let state = PQresultErrorField(result, Int32(UInt8(ascii: "C"))).map { String(cString: $0) } ?? "XX000"
            let message = PQresultErrorField(result, Int32(UInt8(ascii: "M"))).map { String(cString: $0) }
                ?? String(cString: PQerrorMessage(conn))
            throw PGError(sqlState: state, message: message, context: summary(sql))
        }
        let rowCount = Int(PQntuples(result))
        let columnCount = Int(PQnfields(result))
        var columns: [String] = []
        for c in 0..<columnCount { columns.append(String(cString: PQfname(result, Int32(c)))) }
        var rows: [[String?]] = []
        rows.reserveCapacity(rowCount)
        for r in 0..<rowCount {
            var row: [String?] = []
            row.reserveCapacity(columnCount)
            for c in 0..<columnCount {
                if PQgetisnull(result, Int32(r), Int32(c)) != 0 {
                    row.append(nil)
                } else {
                    row.append(String(cString: PQgetvalue(result, Int32(r), Int32(c))))
                }
            }
            rows.append(row)
        }
        let affected = Int(String(cString: PQcmdTuples(result))) ?? 0
        return PGRows(columns: columns, rows: rows, affected: affected)
    }

    static func summary(_ sql: String) -> String {
        let flat = sql.split(whereSeparator: \.isWhitespace).joined(separator: " ")
        return flat.count > 80 ? String(flat.prefix(80)) + "…" : flat
    }
}

/// Calls `body` with C string pointers for `parameters` that stay valid during the call.
func withParameterPointers<R>(_ parameters: [String?], _ body: ([UnsafePointer<CChar>?]) -> R) -> R {
    let storage: [UnsafeMutablePointer<CChar>?] = parameters.map { $0.map { strdup($0) } ?? nil }
    defer { for pointer in storage { free(pointer) } }
    return body(storage.map { $0.map { UnsafePointer($0) } })
}

/// Array literals for `$n::text[]` / `$n::bigint[]` parameters: one round trip carries a whole batch.
public enum PGArray {
    public static func text(_ values: [String]) -> String {
        "{" + values.map(quote).joined(separator: ",") + "}"
    }

    public static func text(_ values: [String?]) -> String {
        "{" + values.map { $0.map(quote) ?? "NULL" }.joined(separator: ",") + "}"
    }

    public static func int64(_ values: [Int64]) -> String {
        "{" + values.map(String.init).joined(separator: ",") + "}"
    }

    public static func bool(_ values: [Bool]) -> String {
        "{" + values.map { $0 ? "t" : "f" }.joined(separator: ",") + "}"
    }

    private static func quote(_ value: String) -> String {
        if !value.utf8.contains(where: { $0 == UInt8(ascii: "\"") || $0 == UInt8(ascii: "\\") }) {
            return "\"" + value + "\""  // the common case: ids need no escaping
        }
        var out = "\""
        for ch in value.unicodeScalars {
            if ch == "\"" || ch == "\\" { out += "\\" }
            out.unicodeScalars.append(ch)
        }
        return out + "\""
    }
}

import Synchronization

/// A `Mutex` in a class (shared by reference).
final class Locked<Value: Sendable>: Sendable {
    private let mutex: Mutex<Value>
    init(_ value: Value) { mutex = Mutex(value) }
    func withLock<R>(_ body: (inout Value) throws -> R) rethrows -> R { try mutex.withLock { try body(&$0) } }
    var value: Value { mutex.withLock { $0 } }
}

/// Runs `body` until it does not fail for want of a connection, for at most `timeout` (once a second):
/// how a stage waits at start-up for a PostgreSQL that is still coming up. Other errors are thrown at once.
public func pgRetryingUntilReachable(
    timeout: Duration, onRetry: (PGError) -> Void, _ body: () async throws -> Void
) async throws {
    let end = ContinuousClock.now + timeout
    while true {
        do {
            try await body()
            return
        } catch let error as PGError where error.isConnectionError && ContinuousClock.now < end {
            onRetry(error)
            try await Task.sleep(for: .seconds(1))
        }
    }
}
