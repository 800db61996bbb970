// The end-to-end harness: a fresh PostgreSQL database, free ports, and the REAL built executables (bus,
// ledger, payment-router, notifier, pos-gateway, phone-gateway) as child processes, one whole system per
// suite (`.e2eSystem`). Tests drive it only from the outside: HTTP and SSE, payctl and the reference
// clients. Every name here starts with `E2E`/`e2e` so it cannot collide with other test files' helpers.

import Crypto
import Foundation
import Postgres
import Synchronization
import Testing
import WiPayClient
import WiPayPayload

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

// MARK: - environment

enum E2EEnv {
    static let services = ["bus", "ledger", "payment-router", "notifier", "pos-gateway", "phone-gateway"]
    static let tools = ["payctl", "pos-terminal", "phone-wallet"]

    /// The server the tests make their databases on (libpq conninfo or URI); nil = skip.
    static var databaseURL: String? {
        guard let url = ProcessInfo.processInfo.environment["WIPAY_TEST_DATABASE_URL"], !url.isEmpty else { return nil }
        return url
    }

    /// The folder with every built executable: the test binary sits in it or below it.
    static let binDirectory: URL? = {
        let names = services + tools
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
    }()

    /// Both a database server and the executables: otherwise the end-to-end suites are skipped.
    static var ready: Bool { databaseURL != nil && binDirectory != nil }

    static let pinSecret = "e2e-pin-secret-0123456789abcdef-xyz"

    /// The gateways' rate limits off: for suites whose clients pay in a tight loop, faster than any counter.
    static let noRateLimits = ["WIPAY_RATE_TERMINAL": "off", "WIPAY_RATE_DEVICE": "off", "WIPAY_RATE_ADDRESS": "off"]
}

struct E2EFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// A small lock-protected box for values shared by concurrent tasks.
final class E2ELocked<Value: Sendable>: Sendable {
    private let mutex: Mutex<Value>
    init(_ value: Value) { mutex = Mutex(value) }
    func withLock<R>(_ body: (inout Value) throws -> R) rethrows -> R { try mutex.withLock { try body(&$0) } }
    var value: Value { mutex.withLock { $0 } }
}

/// Runs blocking work (libpq, process waits) on a Dispatch thread, off Swift's small cooperative pool.
func e2eBlocking<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        DispatchQueue.global().async {
            do { continuation.resume(returning: try body()) } catch { continuation.resume(throwing: error) }
        }
    }
}

/// Polls `condition` every `interval` until it holds or `timeout` passes. Returns whether it held.
func e2eWait(
    timeout: Duration, interval: Duration = .milliseconds(50), _ condition: @Sendable () async -> Bool
) async -> Bool {
    let end = ContinuousClock.now + timeout
    while true {
        if await condition() { return true }
        if ContinuousClock.now >= end { return false }
        try? await Task.sleep(for: interval)
    }
}

/// A random lowercase token for names and idempotency keys.
func e2eToken(_ count: Int = 12) -> String {
    let alphabet = Array("abcdefghijklmnopqrstuvwxyz0123456789")
    return String((0..<count).map { _ in alphabet[Int.random(in: 0..<alphabet.count)] })
}

// MARK: - a database of its own

/// `CREATE DATABASE e2e_<random>` on the test server; dropped (with FORCE) at the end of the suite.
struct E2EDatabase: Sendable {
    let name: String
    let conninfo: String
    let adminConninfo: String

    static func create() async throws -> E2EDatabase {
        guard let admin = E2EEnv.databaseURL else { throw E2EFailure("WIPAY_TEST_DATABASE_URL is not set") }
        let name = "e2e_" + e2eToken(12)
        try await e2eBlocking {
            let db = try PGConnection(conninfo: admin)
            try db.execute("CREATE DATABASE \(name)")
        }
        return E2EDatabase(name: name, conninfo: replacingDatabase(admin, with: name), adminConninfo: admin)
    }

    func drop() async {
        let admin = adminConninfo
        let name = self.name
        _ = try? await e2eBlocking {
            let db = try PGConnection(conninfo: admin)
            try db.execute("DROP DATABASE IF EXISTS \(name) WITH (FORCE)")
        }
    }

    /// The same server, another database: handles `key=value` conninfo and `postgres[ql]://` URIs.
    static func replacingDatabase(_ conninfo: String, with database: String) -> String {
        let trimmed = conninfo.trimmingCharacters(in: .whitespaces)
        if trimmed.hasPrefix("postgres://") || trimmed.hasPrefix("postgresql://") {
            guard let schemeEnd = trimmed.range(of: "://") else { return trimmed }
            let afterScheme = trimmed[schemeEnd.upperBound...]
            let query = afterScheme.firstIndex(of: "?").map { String(afterScheme[$0...]) } ?? ""
            let authority = afterScheme.prefix { $0 != "?" }.prefix { $0 != "/" }
            return String(trimmed[..<schemeEnd.upperBound]) + authority + "/" + database + query
        }
        let parts = trimmed.split(separator: " ").filter { !$0.hasPrefix("dbname=") }
        return (parts.map(String.init) + ["dbname=\(database)"]).joined(separator: " ")
    }
}

// MARK: - free ports

enum E2EPorts {
    /// A base port `p` such that `p ..< p + count` can all be bound on 127.0.0.1 right now.
    /// Ports are picked below Linux's ephemeral range (32768 and up by default): a port found free there
    /// cannot be taken before the service binds it by another process's `bind(…:0)` or outgoing connection
    /// (the suites run in parallel and every instance binds an ephemeral control port).
    static let range = 20_000...32_000

    static func consecutive(_ count: Int, attempts: Int = 300) -> Int? {
        for _ in 0..<attempts {
            let base = Int.random(in: range.lowerBound...(range.upperBound - count))
            if (base..<(base + count)).allSatisfy(canBind) { return base }
        }
        return nil
    }

    static func canBind(_ port: Int) -> Bool { canBind(port, udp: false) && canBind(port, udp: true) }

    static func canBind(_ port: Int, udp: Bool) -> Bool {
        #if canImport(Glibc)
            let fd = socket(AF_INET, Int32(udp ? SOCK_DGRAM.rawValue : SOCK_STREAM.rawValue), 0)
        #else
            let fd = socket(AF_INET, udp ? SOCK_DGRAM : SOCK_STREAM, 0)
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

/// Runs an outside tool (Schemathesis, the browser test) to its end, stdout and stderr into `logPath`; killed
/// after `timeout`, so a hang is a failure and not a stuck suite. Its exit status and its output.
func e2eRunLogged(
    _ executable: String, _ arguments: [String], environment: [String: String], currentDirectory: String,
    logPath: String, timeout: Duration
) async throws -> (status: Int32, output: String) {
    try await e2eBlocking {
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        guard let log = FileHandle(forWritingAtPath: logPath) else { throw E2EFailure("cannot write \(logPath)") }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.environment = environment
        process.currentDirectoryURL = URL(fileURLWithPath: currentDirectory)
        process.standardOutput = log
        process.standardError = log
        process.standardInput = FileHandle.nullDevice
        try process.run()
        try? log.close()
        e2eAwaitExit(process, timeout: timeout, polling: .milliseconds(100))
        return (process.terminationStatus, (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "")
    }
}

/// Waits (blocking, by polling) until `process` has exited; SIGKILLs it at `timeout`.
func e2eAwaitExit(_ process: Process, timeout: Duration, polling interval: Duration) {
    let micros = useconds_t(max(1_000, interval.components.attoseconds / 1_000_000_000_000 + interval.components.seconds * 1_000_000))
    let end = ContinuousClock.now + timeout
    while process.isRunning && ContinuousClock.now < end { usleep(micros) }
    if process.isRunning {
        kill(process.processIdentifier, SIGKILL)
        while process.isRunning { usleep(10_000) }
    }
}

/// A self-signed certificate for 127.0.0.1 and localhost in `dir` (openssl), and the settings that make a
/// service serve HTTPS with it on a free port.
func e2eSelfSignedCertificate(in dir: String) throws -> [String: String] {
    let cert = "\(dir)/tls-cert.pem"
    let key = "\(dir)/tls-key.pem"
    guard let openssl = ["/usr/bin/openssl", "/bin/openssl"].first(where: FileManager.default.isExecutableFile) else {
        throw E2EFailure("openssl is needed for the HTTPS test certificate (ops/scripts/deps.sh installs it)")
    }
    let process = Process()
    process.executableURL = URL(fileURLWithPath: openssl)
    process.arguments = [
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", key, "-out", cert,
    ]
    process.standardOutput = FileHandle.nullDevice
    process.standardError = FileHandle.nullDevice
    try process.run()
    process.waitUntilExit()
    guard process.terminationStatus == 0 else { throw E2EFailure("openssl could not make the test certificate") }
    return ["WIPAY_HTTPS_PORT": "0", "WIPAY_TLS_CERT_FILE": cert, "WIPAY_TLS_KEY_FILE": key]
}

// MARK: - child processes

/// A child process whose stdout and stderr go to one log file; signalled by pid only.
final class E2EChild: Sendable {
    let name: String
    let logPath: String
    let pid: Int32
    private let process: E2ELocked<Process>

    init(
        name: String, executable: URL, arguments: [String] = [], environment: [String: String], logPath: String,
        currentDirectory: String? = nil
    ) throws {
        self.name = name
        self.logPath = logPath
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        guard let output = FileHandle(forWritingAtPath: logPath) else { throw E2EFailure("cannot write \(logPath)") }
        let process = Process()
        process.executableURL = executable
        process.arguments = arguments
        var env = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("WIPAY_") }
        for (key, value) in environment { env[key] = value }
        process.environment = env
        if let currentDirectory { process.currentDirectoryURL = URL(fileURLWithPath: currentDirectory) }
        process.standardOutput = output
        process.standardError = output
        process.standardInput = FileHandle.nullDevice
        try process.run()
        try? output.close()
        pid = process.processIdentifier
        self.process = E2ELocked(process)
    }

    var isRunning: Bool { process.withLock { $0.isRunning } }
    /// The exit status once it has exited (a signal shows as 128 + signal number), nil while running.
    var exitStatus: Int32? {
        process.withLock { p in
            guard !p.isRunning else { return nil }
            return p.terminationReason == .uncaughtSignal ? 128 + p.terminationStatus : p.terminationStatus
        }
    }

    func signal(_ number: Int32) { if isRunning { _ = kill(pid, number) } }

    /// Waits (bounded) for the exit; nil when it still runs after `timeout`.
    func waitForExit(timeout: Duration) async -> Int32? {
        _ = await e2eWait(timeout: timeout, interval: .milliseconds(50)) { !self.isRunning }
        return exitStatus
    }

    /// SIGTERM, then SIGKILL if it is still running after `grace`.
    func stop(grace: Duration = .seconds(5)) async {
        guard isRunning else { return }
        signal(SIGTERM)
        if await e2eWait(timeout: grace, { !self.isRunning }) { return }
        signal(SIGKILL)
        _ = await e2eWait(timeout: .seconds(5)) { !self.isRunning }
    }

    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    func tail(_ lines: Int) -> String { log.split(separator: "\n", omittingEmptySubsequences: false).suffix(lines).joined(separator: "\n") }
}

/// What a finished command printed, and its exit status.
struct E2ECommandResult: Sendable, CustomStringConvertible {
    let arguments: [String]
    let status: Int32
    let stdout: String
    let stderr: String

    /// The single JSON object a `--json` command prints (the last non-empty line that parses).
    var json: [String: Any]? {
        for line in stdout.split(separator: "\n").reversed() {
            if let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] { return object }
        }
        return nil
    }

    func string(_ key: String) -> String? { json?[key] as? String }
    func int(_ key: String) -> Int64? { (json?[key] as? NSNumber)?.int64Value }

    var description: String {
        "`\(arguments.joined(separator: " "))` exited \(status)\n--- stdout\n\(stdout.suffix(3000))\n--- stderr\n\(stderr.suffix(3000))"
    }
}

// MARK: - the system

/// One whole WiPay on loopback: its database, ports, the six services as processes, and a record of
/// every HTTP response the tests saw (checked against docs/openapi.yaml at the end of the suite).
final class E2ESystem: Sendable {
    @TaskLocal static var current: E2ESystem?

    let suite: String
    let db: E2EDatabase
    let dir: String
    let bin: URL
    let busPort: Int
    let httpPorts: [String: Int]
    let payloadKeyText: String
    let payloadKeyId: String
    let payloadPublicKey: [UInt8]
    let children: E2ELocked<[E2EChild]>
    /// Settings given to every service on top of the harness's own (a suite's `.e2eSystem(environment:)`).
    let environmentOverrides: [String: String]
    let observed = E2ELocked<[E2EObservation]>([])
    let failed = E2ELocked(false)
    /// PINs (6 digits), terminal keys and enrollment codes the tests used: none may appear in a service log.
    let secrets = E2ELocked<Set<String>>([])
    private let linkPorts = E2ELocked<Set<Int>>([])

    var posURL: String { "http://127.0.0.1:\(httpPorts["pos-gateway"] ?? 0)" }
    var phoneURL: String { "http://127.0.0.1:\(httpPorts["phone-gateway"] ?? 0)" }

    private init(
        suite: String, db: E2EDatabase, dir: String, bin: URL, busPort: Int, httpPorts: [String: Int],
        payloadKey: Curve25519.Signing.PrivateKey, environmentOverrides: [String: String]
    ) {
        self.suite = suite
        self.db = db
        self.dir = dir
        self.bin = bin
        self.busPort = busPort
        self.httpPorts = httpPorts
        self.payloadKeyText = PayloadKeyFile.text(of: payloadKey).trimmingCharacters(in: .whitespacesAndNewlines)
        let signer = PayloadSigner(privateKey: payloadKey)
        self.payloadKeyId = signer.keyId
        self.payloadPublicKey = signer.publicKeyBytes
        self.children = E2ELocked([])
        self.environmentOverrides = environmentOverrides
    }

    /// Creates the database, picks ports, starts every service and waits until each answers /healthz.
    /// `tls`: every service also serves HTTPS on a free port, with a throwaway self-signed certificate for
    /// 127.0.0.1 made in the system's folder (see `httpsEndpoint`).
    static func start(suite: String, environment: [String: String] = [:], tls: Bool = false) async throws -> E2ESystem {
        // Another suite may bind a port between our check and our service's bind: start again on new ports.
        var attempt = 1
        while true {
            do {
                return try await startOnce(suite: suite, environment: environment, tls: tls)
            } catch let error as E2EFailure where attempt < 3 && error.description.contains("Address already in use") {
                attempt += 1
            }
        }
    }

    private static func startOnce(suite: String, environment: [String: String], tls: Bool) async throws -> E2ESystem {
        guard let bin = E2EEnv.binDirectory else { throw E2EFailure("built executables not found next to the tests") }
        let db = try await E2EDatabase.create()
        let safeName = suite.filter { $0.isLetter || $0.isNumber }.prefix(40)
        let dir = NSTemporaryDirectory() + "wipay-e2e-\(safeName)-\(e2eToken(6))"
        do {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            var environment = environment
            if tls { environment.merge(try e2eSelfSignedCertificate(in: dir), uniquingKeysWith: { $1 }) }
            // bus: 4 ports; then one HTTP port per service.
            guard let base = E2EPorts.consecutive(4 + E2EEnv.services.count) else { throw E2EFailure("no free ports") }
            var httpPorts: [String: Int] = [:]
            for (i, service) in E2EEnv.services.enumerated() { httpPorts[service] = base + 4 + i }
            let system = E2ESystem(
                suite: suite, db: db, dir: dir, bin: bin, busPort: base, httpPorts: httpPorts,
                payloadKey: Curve25519.Signing.PrivateKey(), environmentOverrides: environment)
            do {
                try await system.startServices()
            } catch {
                system.failed.withLock { $0 = true }
                await system.stop()
                throw error
            }
            return system
        } catch {
            await db.drop()
            throw error
        }
    }

    func environment(for service: String) -> [String: String] {
        var env: [String: String] = [
            "WIPAY_INSTANCE": "\(service)-e2e",
            "WIPAY_BUS_HOST": "127.0.0.1",
            "WIPAY_BUS_PORT": "\(busPort)",
            "WIPAY_BUS_BIND_HOST": "127.0.0.1",
            "WIPAY_HTTP_HOST": "127.0.0.1",
            "WIPAY_HTTP_PORT": "\(httpPorts[service] ?? 0)",
            // Debug logs: the more a service says, the better the check that no PIN ever appears in them.
            "WIPAY_LOG_LEVEL": "debug",
            "WIPAY_LOG_FORMAT": "text",
            "WIPAY_HEARTBEAT_MS": "500",
        ]
        switch service {
        case "ledger":
            env["WIPAY_DATABASE_URL"] = db.conninfo
            env["WIPAY_PIN_SECRET"] = E2EEnv.pinSecret
        case "payment-router":
            env["WIPAY_DATABASE_URL"] = db.conninfo
            env["WIPAY_PAYLOAD_KEY"] = payloadKeyText
            env["WIPAY_SWEEP_INTERVAL_MS"] = "250"
        case "notifier":
            env["WIPAY_DATABASE_URL"] = db.conninfo
        case "pos-gateway", "phone-gateway":
            env["WIPAY_SSE_KEEPALIVE_MS"] = "300"
        default:
            break
        }
        for (key, value) in environmentOverrides { env[key] = value }
        return env
    }

    private func startServices() async throws {
        for service in E2EEnv.services {
            let child = try E2EChild(
                name: service, executable: bin.appendingPathComponent(service), environment: environment(for: service),
                logPath: "\(dir)/\(service).log")
            children.withLock { $0.append(child) }
            if service == "bus" {
                // The others connect to it; they would retry, but a bus that cannot start is the clearest failure.
                try await waitHealthy(service, child: child, timeout: .seconds(20))
            }
        }
        for child in children.value where child.name != "bus" {
            try await waitHealthy(child.name, child: child, timeout: .seconds(30))
        }
        // The gateways answer /healthz once they reach the bus; the router is needed by every test: wait until
        // payctl gets an answer from it (a merchant lookup of an unknown id is cheap and changes nothing).
        let routerUp = await e2eWait(timeout: .seconds(20), interval: .milliseconds(200)) {
            let r = try? await self.payctl(["payment", "show", "pr_aaaaaaaaaaaaaaaaaaaa"])
            return r.map { !$0.stderr.contains("no answer") } ?? false
        }
        if !routerUp { throw E2EFailure("the payment-router does not answer on the bus") }
    }

    func waitHealthy(_ service: String, child: E2EChild, timeout: Duration) async throws {
        guard let port = httpPorts[service] else { return }
        let healthy = await e2eWait(timeout: timeout, interval: .milliseconds(100)) {
            guard child.isRunning else { return true }
            guard let client = try? HTTPClient(
                baseURL: "http://127.0.0.1:\(port)", timeouts: .init(connect: .seconds(1), response: .seconds(2)))
            else { return false }
            defer { client.close() }
            return (try? await client.get("/healthz"))?.status == 200
        }
        if !child.isRunning {
            throw E2EFailure("\(service) exited during startup (status \(child.exitStatus ?? -1)):\n\(child.tail(40))")
        }
        if !healthy { throw E2EFailure("\(service) is not healthy on :\(port) after \(timeout):\n\(child.tail(40))") }
    }

    func child(_ name: String) -> E2EChild? { children.value.first { $0.name == name } }

    /// The HTTPS endpoint a service logged (`https.endpoint=https://127.0.0.1:PORT`; systems started with `tls`).
    func httpsEndpoint(_ service: String) -> String? {
        let log = child(service)?.log ?? ""
        guard let range = log.range(of: #"https\.endpoint=https://127\.0\.0\.1:[0-9]+"#, options: .regularExpression) else {
            return nil
        }
        return String(log[range].dropFirst("https.endpoint=".count))
    }

    /// Stops every child (SIGTERM, then SIGKILL) and drops the database. On failure the logs are printed
    /// and kept; otherwise removed.
    func stop() async {
        let all = children.value
        // Gateways and stages first, the bus last.
        await withTaskGroup(of: Void.self) { group in
            for child in all where child.name != "bus" { group.addTask { await child.stop() } }
        }
        for child in all where child.name == "bus" { await child.stop() }
        if failed.value {
            var report = "=== wipay e2e suite \(suite) failed; logs in \(dir) ===\n"
            for child in all {
                report += "--- \(child.name) (\(child.logPath)), last lines:\n\(child.tail(60))\n"
            }
            FileHandle.standardError.write(Data(report.utf8))
        } else {
            try? FileManager.default.removeItem(atPath: dir)
        }
        await db.drop()
    }

    /// Every service log, read now.
    func serviceLogs() -> [(String, String)] {
        children.value.filter { E2EEnv.services.contains($0.name) }.map { ($0.name, $0.log) }
    }

    // MARK: tools

    /// Runs `payctl ARGS --json` against this system; never throws on a non-zero exit (the result says).
    func payctl(_ arguments: [String], json: Bool = true, timeout: Duration = .seconds(60)) async throws -> E2ECommandResult {
        try await run("payctl", arguments + (json ? ["--json"] : []), environment: ["WIPAY_BUS_PORT": "\(busPort)"],
            timeout: timeout)
    }

    /// Runs a built tool to its end (bounded), capturing stdout and stderr.
    /// `netns`: run it in that network namespace (`ip netns exec`), as another host on a test network.
    func run(
        _ tool: String, _ arguments: [String], environment: [String: String] = [:], timeout: Duration = .seconds(60),
        netns: String? = nil
    ) async throws -> E2ECommandResult {
        let token = e2eToken(8)
        let outPath = "\(dir)/\(tool)-\(token).out"
        let errPath = "\(dir)/\(tool)-\(token).err"
        let (executable, commandArguments) = try command(tool, arguments, netns: netns)
        let result: E2ECommandResult = try await e2eBlocking {
            _ = FileManager.default.createFile(atPath: outPath, contents: nil)
            _ = FileManager.default.createFile(atPath: errPath, contents: nil)
            guard let out = FileHandle(forWritingAtPath: outPath), let err = FileHandle(forWritingAtPath: errPath) else {
                throw E2EFailure("cannot write \(outPath)")
            }
            let process = Process()
            process.executableURL = executable
            process.arguments = commandArguments
            var env = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("WIPAY_") }
            for (key, value) in environment { env[key] = value }
            process.environment = env
            process.standardOutput = out
            process.standardError = err
            process.standardInput = FileHandle.nullDevice
            try process.run()
            try? out.close()
            try? err.close()
            e2eAwaitExit(process, timeout: timeout, polling: .milliseconds(20))
            let stdout = (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? ""
            let stderr = (try? String(contentsOfFile: errPath, encoding: .utf8)) ?? ""
            try? FileManager.default.removeItem(atPath: outPath)
            try? FileManager.default.removeItem(atPath: errPath)
            let status = process.terminationReason == .uncaughtSignal ? 128 + process.terminationStatus : process.terminationStatus
            return E2ECommandResult(arguments: [tool] + arguments, status: status, stdout: stdout, stderr: stderr)
        }
        return result
    }

    /// Starts a built tool in the background (the reference clients), its output in a log file.
    func spawn(_ tool: String, _ arguments: [String], environment: [String: String], netns: String? = nil) throws -> E2EChild {
        let (executable, commandArguments) = try command(tool, arguments, netns: netns)
        let child = try E2EChild(
            name: tool, executable: executable, arguments: commandArguments, environment: environment,
            logPath: "\(dir)/\(tool)-\(e2eToken(6)).log")
        children.withLock { $0.append(child) }
        return child
    }

    /// The built `tool`, or `ip netns exec NETNS tool` to run it on another (namespaced) host.
    func command(_ tool: String, _ arguments: [String], netns: String?) throws -> (URL, [String]) {
        let executable = bin.appendingPathComponent(tool)
        guard let netns else { return (executable, arguments) }
        guard let ip = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"].first(where: FileManager.default.isExecutableFile)
        else { throw E2EFailure("`ip` (iproute2) is needed to run \(tool) in network namespace \(netns)") }
        return (URL(fileURLWithPath: ip), ["netns", "exec", netns, executable.path] + arguments)
    }

    /// A UDP/TCP port for one test's local link, distinct from every other test's in this system.
    func linkPort() -> Int {
        while true {
            let port = Int.random(in: E2EPorts.range)
            let fresh = linkPorts.withLock { used in used.insert(port).inserted }
            if fresh && E2EPorts.canBind(port) { return port }
        }
    }

    /// A new temp folder (a phone-wallet `--home`).
    func tempFolder(_ prefix: String) throws -> String {
        let path = "\(dir)/\(prefix)-\(e2eToken(6))"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    func record(_ observation: E2EObservation) { observed.withLock { $0.append(observation) } }

    /// Remembers a secret the logs must never show. PINs count only with 6 digits: shorter digit runs
    /// turn up by chance inside hashes and numbers.
    func noteSecret(_ secret: String) {
        let isPin = secret.allSatisfy(\.isASCII) && secret.allSatisfy(\.isNumber)
        if isPin && secret.count < 6 { return }
        if secret.count < 6 { return }
        secrets.withLock { _ = $0.insert(secret) }
    }

    /// Every occurrence of a noted secret in a service log, as "service: secret…" lines. A PIN counts only
    /// where it is not part of a longer number.
    func secretLeaks() -> [String] {
        let secrets = self.secrets.value
        var found: [String] = []
        for (service, log) in serviceLogs() {
            for secret in secrets {
                var variants = [secret]
                if secret.count == 14, secret.filter({ $0 == "-" }).count == 2 { variants.append(secret.replacingOccurrences(of: "-", with: "")) }
                for variant in variants {
                    var searchFrom = log.startIndex
                    while let range = log.range(of: variant, options: [.caseInsensitive], range: searchFrom..<log.endIndex) {
                        searchFrom = range.upperBound
                        let isPin = variant.allSatisfy(\.isNumber)
                        if isPin {
                            let before = range.lowerBound > log.startIndex ? log[log.index(before: range.lowerBound)] : " "
                            let after = range.upperBound < log.endIndex ? log[range.upperBound] : " "
                            if before.isNumber || after.isNumber { continue }
                        }
                        let lineStart = log[..<range.lowerBound].lastIndex(of: "\n").map { log.index(after: $0) } ?? log.startIndex
                        let lineEnd = log[range.upperBound...].firstIndex(of: "\n") ?? log.endIndex
                        found.append("\(service): \(log[lineStart..<lineEnd].prefix(300))")
                        break
                    }
                }
            }
        }
        return found
    }
}

/// The system of the running suite (set by `.e2eSystem`).
func e2eSystem() throws -> E2ESystem {
    guard let system = E2ESystem.current else {
        throw E2EFailure("no end-to-end system: add the .e2eSystem trait to the suite")
    }
    return system
}

// MARK: - the suite trait

/// Starts one whole system for the suite it is applied to; at the end of the suite it runs
/// `payctl reconcile`, checks the observed responses against docs/openapi.yaml, and stops everything.
struct E2ESystemTrait: SuiteTrait, TestScoping {
    /// Settings for every service of the suite's system, on top of the harness's.
    var environment: [String: String] = [:]
    /// Every service also serves HTTPS (`E2ESystem.start(tls:)`).
    var tls = false

    var isRecursive: Bool { false }

    func scopeProvider(for test: Test, testCase: Test.Case?) -> E2ESystemTrait? { test.isSuite ? self : nil }

    func provideScope(
        for test: Test, testCase: Test.Case?, performing function: @Sendable () async throws -> Void
    ) async throws {
        // A suite skipped for want of a database or of built executables starts nothing.
        guard E2EEnv.ready else { return try await function() }
        let system = try await E2ESystem.start(suite: test.name, environment: environment, tls: tls)
        do {
            try await E2ESystem.$current.withValue(system) {
                try await IssueHandlingTrait.compactMapIssues { issue in
                    system.failed.withLock { $0 = true }
                    return issue
                }.provideScope(for: test, testCase: testCase, performing: function)
            }
            await E2ESystem.$current.withValue(system) {
                await system.finalChecks()
            }
        } catch {
            system.failed.withLock { $0 = true }
            await system.stop()
            throw error
        }
        await system.stop()
    }
}

extension Trait where Self == E2ESystemTrait {
    /// One whole WiPay (database and six processes) for this suite.
    static var e2eSystem: E2ESystemTrait { E2ESystemTrait() }

    /// One whole WiPay for this suite, every service with these settings on top of the harness's.
    static func e2eSystem(environment: [String: String]) -> E2ESystemTrait { E2ESystemTrait(environment: environment) }

    /// One whole WiPay for this suite whose services also serve HTTPS (a throwaway certificate).
    static var e2eSystemWithTLS: E2ESystemTrait { E2ESystemTrait(tls: true) }
}

extension E2ESystem {
    /// At the end of every suite: the ledger's invariants hold, and every response matched the OpenAPI copy.
    func finalChecks() async {
        do {
            let reconcile = try await payctl(["reconcile"])
            if reconcile.status != 0 || reconcile.json?["ok"] as? Bool != true {
                failed.withLock { $0 = true }
                Issue.record("payctl reconcile failed at the end of \(suite): \(reconcile)")
            }
        } catch {
            failed.withLock { $0 = true }
            Issue.record("payctl reconcile could not run: \(error)")
        }
        let leaks = secretLeaks()
        if !leaks.isEmpty {
            failed.withLock { $0 = true }
            Issue.record("secrets in service logs:\n\(leaks.prefix(20).joined(separator: "\n"))")
        }
        let problems = E2EOpenAPI.check(observed.value)
        if !problems.isEmpty {
            failed.withLock { $0 = true }
            Issue.record("responses that do not match docs/openapi.yaml:\n\(problems.prefix(40).joined(separator: "\n"))")
        }
    }
}
