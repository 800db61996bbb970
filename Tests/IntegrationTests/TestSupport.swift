// Shared helpers for the integration tests: a fresh PostgreSQL database per test, an in-process
// ledger on it, reply decoding, a seeded PRNG, free ports, and child processes for the real binaries.
// Every name here starts with `TS`/`ts` so that it cannot collide with helpers of other test files.

import Foundation
import Logging
import LedgerService
import Postgres
import Synchronization
import Testing
import WiPayBus

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

// MARK: - environment

enum TSEnv {
    /// The server the database tests use (libpq conninfo or URI); nil = skip those tests.
    static var databaseURL: String? {
        guard let url = ProcessInfo.processInfo.environment["WIPAY_TEST_DATABASE_URL"], !url.isEmpty else { return nil }
        return url
    }

    static var hasDatabase: Bool { databaseURL != nil }

    /// A secret for in-process PIN hashes (>= 32 bytes, like the service requires).
    static let pinSecret = "test-secret-0123456789abcdef-xyz"
    static let pins = PinHasher(secret: Array(pinSecret.utf8))
}

/// A logger that drops everything (the ledger logs every account it opens).
let tsQuietLogger = Logger(label: "wipay.tests", factory: { _ in SwiftLogNoOpLogHandler() })

/// A small lock-protected box for values shared by concurrent test tasks.
final class TSLocked<Value: Sendable>: Sendable {
    private let mutex: Mutex<Value>
    init(_ value: Value) { mutex = Mutex(value) }
    func withLock<R>(_ body: (inout Value) throws -> R) rethrows -> R { try mutex.withLock { try body(&$0) } }
    var value: Value { mutex.withLock { $0 } }
}

struct TSFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

// MARK: - blocking work off the cooperative pool

enum TSBlocking {
    /// Runs blocking work (libpq, waiting for a thread) on a Dispatch thread, not on Swift's small
    /// cooperative pool, so that parallel tests cannot starve each other.
    static func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            DispatchQueue.global().async {
                do { continuation.resume(returning: try body()) } catch { continuation.resume(throwing: error) }
            }
        }
    }

    static func run(_ body: @escaping @Sendable () -> Void) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            DispatchQueue.global().async {
                body()
                continuation.resume()
            }
        }
    }
}

/// Polls `condition` every `interval` until it holds or `timeout` passes. Returns whether it held.
func tsWait(
    timeout: Duration, interval: Duration = .milliseconds(20), _ condition: @Sendable () async -> Bool
) async -> Bool {
    let end = ContinuousClock.now + timeout
    while true {
        if await condition() { return true }
        if ContinuousClock.now >= end { return false }
        try? await Task.sleep(for: interval)
    }
}

// MARK: - conninfo

enum TSConninfo {
    /// The same server, another database: handles `key=value` conninfo and `postgres[ql]://` URIs.
    static func replacingDatabase(_ conninfo: String, with database: String) -> String {
        let trimmed = conninfo.trimmingCharacters(in: .whitespaces)
        if trimmed.hasPrefix("postgres://") || trimmed.hasPrefix("postgresql://") {
            guard let schemeEnd = trimmed.range(of: "://") else { return trimmed }
            let afterScheme = trimmed[schemeEnd.upperBound...]
            let query = afterScheme.firstIndex(of: "?").map { String(afterScheme[$0...]) } ?? ""
            let authorityAndPath = afterScheme.prefix { $0 != "?" }
            let authority = authorityAndPath.prefix { $0 != "/" }
            return String(trimmed[..<schemeEnd.upperBound]) + authority + "/" + database + query
        }
        let parts = trimmed.split(separator: " ").filter { !$0.hasPrefix("dbname=") }
        return (parts.map(String.init) + ["dbname=\(database)"]).joined(separator: " ")
    }
}

// MARK: - a fresh database per test

/// A database of its own on the test server, dropped by `drop()`. Queries run on one connection on
/// a serial Dispatch queue.
final class TSDatabase: Sendable {
    let name: String
    let conninfo: String
    private let adminConninfo: String
    private let queue: DispatchQueue
    private let connection: TSLocked<PGConnection?>

    private init(name: String, conninfo: String, adminConninfo: String) {
        self.name = name
        self.conninfo = conninfo
        self.adminConninfo = adminConninfo
        self.queue = DispatchQueue(label: "ts-db-\(name)")
        self.connection = TSLocked(nil)
    }

    /// `CREATE DATABASE ledgertest_<random>` on the server of `WIPAY_TEST_DATABASE_URL`.
    static func create(prefix: String = "ledgertest") async throws -> TSDatabase {
        guard let admin = TSEnv.databaseURL else { throw TSFailure("WIPAY_TEST_DATABASE_URL is not set") }
        let suffix = String(UInt64.random(in: 0...UInt64.max), radix: 36)
        let name = "\(prefix)_\(suffix)"
        try await TSBlocking.run {
            let db = try PGConnection(conninfo: admin)
            try db.execute("CREATE DATABASE \(name)")
        }
        return TSDatabase(name: name, conninfo: TSConninfo.replacingDatabase(admin, with: name), adminConninfo: admin)
    }

    /// Drops the database, ending any connection still open on it.
    func drop() async {
        let name = self.name
        let admin = adminConninfo
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            queue.async {
                self.connection.withLock { $0 = nil }
                continuation.resume()
            }
        }
        _ = try? await TSBlocking.run {
            let db = try PGConnection(conninfo: admin)
            try db.execute("DROP DATABASE IF EXISTS \(name) WITH (FORCE)")
        }
    }

    /// Runs one statement on this database.
    @discardableResult
    func query(_ sql: String, _ parameters: [String?] = []) async throws -> PGRows {
        try await withCheckedThrowingContinuation { continuation in
            queue.async {
                do {
                    let db: PGConnection = try self.connection.withLock { box in
                        if let existing = box, existing.isHealthy { return existing }
                        let created = try PGConnection(conninfo: self.conninfo)
                        box = created
                        return created
                    }
                    continuation.resume(returning: try db.query(sql, parameters))
                } catch {
                    continuation.resume(throwing: error)
                }
            }
        }
    }

    /// The first column of the first row as an Int64 (counts, sums).
    func scalar(_ sql: String, _ parameters: [String?] = []) async throws -> Int64 {
        let rows = try await query(sql, parameters)
        guard rows.count > 0, let value = rows.int64(0, 0) else { throw TSFailure("no scalar from: \(sql)") }
        return value
    }

    /// Balance (credits - debits) of every account.
    func balances() async throws -> [String: Int64] {
        let rows = try await query("SELECT id, credits - debits FROM ledger.accounts")
        var out: [String: Int64] = [:]
        for row in rows.rows { if let id = row[0], let b = row[1].flatMap({ Int64($0) }) { out[id] = b } }
        return out
    }

    func balance(_ id: String) async throws -> Int64 {
        try await scalar("SELECT credits - debits FROM ledger.accounts WHERE id = $1", [id])
    }

    /// How many rows of `ledger.transfers` (or `failed_transfers`) have each id.
    func transferIds(table: String = "transfers") async throws -> [String: Int] {
        let rows = try await query("SELECT id, count(*) FROM ledger.\(table) GROUP BY id")
        var out: [String: Int] = [:]
        for row in rows.rows { if let id = row[0] { out[id] = Int(row[1] ?? "") ?? 0 } }
        return out
    }

    /// Transfers per database transaction (rows that share an `xmin` were inserted by one batch).
    func batchSizes() async throws -> [Int] {
        let rows = try await query("SELECT count(*) FROM ledger.transfers GROUP BY xmin::text ORDER BY 1 DESC")
        return rows.rows.compactMap { $0[0].flatMap { Int($0) } }
    }
}

// MARK: - an in-process ledger on a fresh database

/// One test's ledger: a fresh database with the schema applied and a `Ledger` on it.
struct TSLedgerEnv: Sendable {
    let db: TSDatabase
    let ledger: Ledger

    /// Sends one request through `Ledger.handle`, as the bus worker would.
    func handle(_ type: MessageType, body: [UInt8], requestId: String = "ts") async -> BusReply {
        await ledger.handle(tsMessage(type, body: body, requestId: requestId))
    }

    func post(_ post: TransferPost) async -> BusReply {
        await handle(.transferPost, body: post.encoded(), requestId: post.transferId)
    }

    func open(_ open: AccountOpen) async -> BusReply {
        await handle(.accountOpen, body: open.encoded(), requestId: open.accountId)
    }

    func show(_ id: String) async -> BusReply { await handle(.accountShow, body: AccountRef(accountId: id).encoded()) }
    func unlock(_ id: String) async -> BusReply { await handle(.walletUnlock, body: AccountRef(accountId: id).encoded()) }

    /// Opens an account and fails the test unless it answers 200.
    @discardableResult
    func mustOpen(_ open: AccountOpen, sourceLocation: SourceLocation = #_sourceLocation) async -> AccountInfo? {
        let reply = await self.open(open)
        #expect(reply.status == .ok, "open \(open.accountId): \(TSOutcome(reply))", sourceLocation: sourceLocation)
        return try? AccountInfo.decode(reply.body)
    }

    /// Posts a transfer and fails the test unless it answers 200.
    @discardableResult
    func mustPost(_ post: TransferPost, sourceLocation: SourceLocation = #_sourceLocation) async -> TransferResult? {
        let reply = await self.post(post)
        #expect(reply.status == .ok, "post \(post.transferId): \(TSOutcome(reply))", sourceLocation: sourceLocation)
        return reply.status == .ok ? try? TransferResult.decode(reply.body) : nil
    }

    /// Posts every transfer at once (one task each); replies in the order of `posts`.
    func postConcurrently(_ posts: [TransferPost]) async -> [BusReply] {
        await withTaskGroup(of: (Int, BusReply).self) { group in
            for (index, post) in posts.enumerated() {
                group.addTask { (index, await self.post(post)) }
            }
            var replies = [BusReply?](repeating: nil, count: posts.count)
            for await (index, reply) in group { replies[index] = reply }
            return replies.map { $0! }
        }
    }

    /// Opens every account at once.
    func openConcurrently(_ opens: [AccountOpen]) async -> [BusReply] {
        await withTaskGroup(of: (Int, BusReply).self) { group in
            for (index, open) in opens.enumerated() {
                group.addTask {
                    // Hundreds at once on the ledger's small pool: a call that could not get a connection in
                    // time is answered 503 database_busy, having done nothing; a client retries it.
                    var reply = await self.open(open)
                    for _ in 0..<100 where reply.status == .unavailable && (try? ErrorBody.decode(reply.body))?.code == "database_busy" {
                        try? await Task.sleep(for: .milliseconds(200))
                        reply = await self.open(open)
                    }
                    return (index, reply)
                }
            }
            var replies = [BusReply?](repeating: nil, count: opens.count)
            for await (index, reply) in group { replies[index] = reply }
            return replies.map { $0! }
        }
    }

    /// Runs `reconcile` and records every failing check.
    func expectReconciled(sourceLocation: SourceLocation = #_sourceLocation) async {
        do {
            let report = try await ledger.reconcile()
            #expect(report.checks.count >= 6, sourceLocation: sourceLocation)
            for check in report.checks where !check.ok {
                Issue.record("reconcile \(check.name) failed: \(check.offending.prefix(5))", sourceLocation: sourceLocation)
            }
        } catch {
            Issue.record("reconcile threw \(error)", sourceLocation: sourceLocation)
        }
    }
}

/// A fresh database, the ledger schema and a `Ledger` for `body`; both are removed afterwards,
/// whatever `body` does.
func withTSLedger<T: Sendable>(
    batch: BatchSettings = BatchSettings(), _ body: (TSLedgerEnv) async throws -> T
) async throws -> T {
    let db = try await TSDatabase.create()
    let ledger = Ledger(conninfo: db.conninfo, pins: TSEnv.pins, batch: batch, logger: tsQuietLogger)
    let env = TSLedgerEnv(db: db, ledger: ledger)
    do {
        try await ledger.migrate(timeout: .seconds(10))
        let result = try await body(env)
        await TSBlocking.run { ledger.stop() }
        await db.drop()
        return result
    } catch {
        await TSBlocking.run { ledger.stop() }
        await db.drop()
        throw error
    }
}

func tsMessage(_ type: MessageType, body: [UInt8], requestId: String = "ts") -> BusMessage {
    BusMessage(envelope: Envelope(kind: .request, type: type, requestId: requestId, sender: "test"), body: body)
}

// MARK: - replies

/// What a reply said, in a comparable form: the status, and the error code or the transfer result.
struct TSOutcome: Equatable, Sendable, CustomStringConvertible {
    var status: UInt16
    var code: String?
    var result: TransferResult?

    init(status: Status, code: String? = nil, result: TransferResult? = nil) {
        self.status = status.rawValue
        self.code = code
        self.result = result
    }

    /// Decodes a transfer reply: `TransferResult` for 2xx, `ErrorBody` otherwise.
    init(_ reply: BusReply) {
        status = reply.status.rawValue
        if reply.status.isSuccess {
            result = try? TransferResult.decode(reply.body)
            code = nil
        } else {
            code = (try? ErrorBody.decode(reply.body))?.code ?? "<undecodable error body>"
            result = nil
        }
    }

    init(_ message: BusMessage) { self.init(BusReply(status: message.envelope.status, body: message.body)) }

    var isPosted: Bool { status == 200 || status == 208 }

    var description: String {
        if let result {
            return "\(status) \(result.transferId) debit=\(result.debitBalance) credit=\(result.creditBalance)"
        }
        return "\(status) \(code ?? "")"
    }
}

extension BusReply {
    var tsError: ErrorBody? { status.isSuccess ? nil : try? ErrorBody.decode(body) }
    var tsCode: String? { tsError?.code }
}

// MARK: - accounts and transfers

enum TSFixture {
    static func wallet(_ id: String, currency: String = "USD", pin: String = "1234") -> AccountOpen {
        AccountOpen(accountId: id, kind: .wallet, currency: currency, name: "Wallet \(id)", pin: pin)
    }

    static func merchant(_ id: String, currency: String = "USD", owner: String? = nil) -> AccountOpen {
        AccountOpen(accountId: id, kind: .merchant, currency: currency, name: "Merchant \(id)", pin: nil, ownerId: owner)
    }

    static func funding(_ currency: String = "USD") -> AccountOpen {
        AccountOpen(accountId: "funding-\(currency)", kind: .funding, currency: currency, name: "Funding \(currency)", pin: nil)
    }

    static func fund(_ id: String, to account: String, _ amount: Int64, currency: String = "USD") -> TransferPost {
        TransferPost(
            transferId: id, kind: .funding, debitAccountId: "funding-\(currency)", creditAccountId: account,
            amountMinor: amount, currency: currency)
    }

    static func pay(
        _ id: String, from wallet: String, to merchant: String, _ amount: Int64, request: String? = nil,
        pin: String = "1234", currency: String = "USD"
    ) -> TransferPost {
        TransferPost(
            transferId: id, kind: .payment, debitAccountId: wallet, creditAccountId: merchant, amountMinor: amount,
            currency: currency, paymentRequestId: request ?? "req-\(id)", pin: pin)
    }

    static func refund(
        _ id: String, of payment: String, from merchant: String, to wallet: String, _ amount: Int64, currency: String = "USD"
    ) -> TransferPost {
        TransferPost(
            transferId: id, kind: .refund, debitAccountId: merchant, creditAccountId: wallet, amountMinor: amount,
            currency: currency, refundOf: payment)
    }
}

// MARK: - a seeded PRNG

/// The shared seeded PRNG, with the helpers these tests use.
typealias TSSplitMix64 = SplitMix64

extension SplitMix64 {
    /// True with probability `p`.
    mutating func chance(_ p: Double) -> Bool { Double.random(in: 0..<1, using: &self) < p }
}

// MARK: - free ports

enum TSFreePorts {
    /// A base port `p` such that `p ..< p + count` can all be bound on 127.0.0.1 right now.
    static func consecutive(_ count: Int, attempts: Int = 200) -> Int? {
        for _ in 0..<attempts {
            let base = Int.random(in: 20_000...(60_000 - count))
            if (base..<(base + count)).allSatisfy(canBind) { return base }
        }
        return nil
    }

    static func canBind(_ port: Int) -> Bool {
        #if canImport(Glibc)
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        #else
            let fd = socket(AF_INET, SOCK_STREAM, 0)
        #endif
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let result = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        return result == 0
    }
}

// MARK: - the built products and child processes

enum TSProducts {
    /// The folder holding the built executables (`bus`, `ledger`, ...): the test executable sits in it
    /// or below it (`.build/<triple>/debug/…xctest`).
    static func directory(containing names: [String] = ["bus", "ledger"]) -> URL? {
        var candidates: [URL] = []
        if let exe = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") {
            candidates.append(URL(fileURLWithPath: exe))
        }
        candidates.append(Bundle.main.executableURL ?? URL(fileURLWithPath: CommandLine.arguments[0]))
        candidates.append(contentsOf: Bundle.allBundles.map(\.bundleURL))
        for start in candidates {
            var dir = start.resolvingSymlinksInPath().deletingLastPathComponent()
            while dir.path != "/" && !dir.path.isEmpty {
                if names.allSatisfy({ FileManager.default.isExecutableFile(atPath: dir.appendingPathComponent($0).path) }) {
                    return dir
                }
                dir = dir.deletingLastPathComponent()
            }
        }
        return nil
    }
}

/// A child process whose output goes to a temporary file; killed by pid.
final class TSChild: Sendable {
    let name: String
    let logPath: String
    private let process: TSLocked<Process?>
    let pid: Int32

    /// Starts `executable` with the current environment plus `environment`.
    init(name: String, executable: URL, environment: [String: String], arguments: [String] = []) throws {
        self.name = name
        let logPath = NSTemporaryDirectory() + "wipay-\(name)-\(UInt32.random(in: 0...UInt32.max)).log"
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        guard let output = FileHandle(forWritingAtPath: logPath) else { throw TSFailure("cannot write \(logPath)") }
        let process = Process()
        process.executableURL = executable
        process.arguments = arguments
        var env = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("WIPAY_") }
        for (key, value) in environment { env[key] = value }
        process.environment = env
        process.standardOutput = output
        process.standardError = output
        process.standardInput = FileHandle.nullDevice
        try process.run()
        try? output.close()
        self.logPath = logPath
        self.pid = process.processIdentifier
        self.process = TSLocked(process)
    }

    var isRunning: Bool { process.withLock { $0?.isRunning ?? false } }

    /// Sends `signal` to the process (by its pid), if it still runs.
    func signal(_ signal: Int32) {
        if isRunning { _ = kill(pid, signal) }
    }

    /// SIGKILL and wait (bounded) until it is gone.
    func killNow(timeout: Duration = .seconds(5)) async {
        signal(SIGKILL)
        _ = await tsWait(timeout: timeout) { !self.isRunning }
    }

    /// SIGTERM, then SIGKILL if it is still running after `grace`.
    func stop(grace: Duration = .seconds(3)) async {
        guard isRunning else { return }
        signal(SIGTERM)
        if await tsWait(timeout: grace, { !self.isRunning }) { return }
        await killNow()
    }

    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    func removeLog() { try? FileManager.default.removeItem(atPath: logPath) }
}
