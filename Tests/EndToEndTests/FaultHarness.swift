// The fault suite's additions to the end-to-end harness: N instances of every stage (each its own
// WIPAY_INSTANCE and HTTP port), kill -9 and restart with the same settings, drain through payctl, and
// clients that behave like real ones: a failed call is retried with the SAME Idempotency-Key, against any
// instance of the gateway, until it gets a definite answer (bounded); event streams that reconnect with
// Last-Event-ID to another instance when theirs dies. Names start with `E2EFault`/`e2eFault`.

import Foundation
import Postgres
import Testing
import WiPayClient

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

// MARK: - instances

/// One instance of a service: fixed settings (instance id, HTTP port) and its current process. A restart
/// starts a new process with the same settings.
final class E2EFaultInstance: Sendable, CustomStringConvertible {
    let service: String
    let instanceId: String
    let httpPort: Int
    let environment: [String: String]
    let process: E2ELocked<E2EChild?>
    private let generation = E2ELocked(0)

    init(service: String, instanceId: String, httpPort: Int, environment: [String: String], process: E2EChild?) {
        self.service = service
        self.instanceId = instanceId
        self.httpPort = httpPort
        self.environment = environment
        self.process = E2ELocked(process)
    }

    var url: String { "http://127.0.0.1:\(httpPort)" }
    var isRunning: Bool { process.value?.isRunning ?? false }
    var description: String { "\(service)/\(instanceId)" }

    /// The next log file name of this instance (each process its own).
    func nextLogPath(in dir: String) -> String {
        let n = generation.withLock { value -> Int in
            value += 1
            return value
        }
        return "\(dir)/\(instanceId)-\(n).log"
    }
}

/// Counts of what the fault suite did to the system.
struct E2EFaultActions: Sendable {
    var kills: [String: Int] = [:]
    var restarts: [String: Int] = [:]
    var drains: [String: Int] = [:]
    var started: [String: Int] = [:]
}

/// The system scaled to N instances of every stage (one bus), with kill/restart/drain.
final class E2EFaultCluster: Sendable {
    static let stages = ["ledger", "payment-router", "notifier", "pos-gateway", "phone-gateway"]

    let system: E2ESystem
    /// The roster: every instance that is meant to be part of the system (a killed one stays until restarted;
    /// a drained one leaves).
    let roster = E2ELocked<[E2EFaultInstance]>([])
    let actions = E2ELocked(E2EFaultActions())
    private let counter = E2ELocked(1)
    private let clients = E2ELocked<[String: E2EHTTP]>([:])

    init(system: E2ESystem) {
        self.system = system
        // The harness's own processes are instance 1 of each stage.
        for service in Self.stages {
            let env = system.environment(for: service)
            let instance = E2EFaultInstance(
                service: service, instanceId: env["WIPAY_INSTANCE"] ?? "\(service)-e2e",
                httpPort: system.httpPorts[service] ?? 0, environment: env,
                process: system.children.value.last { $0.name == service && $0.isRunning })
            roster.withLock { $0.append(instance) }
        }
    }

    func instances(_ service: String) -> [E2EFaultInstance] { roster.value.filter { $0.service == service } }

    /// The base URLs of a gateway's instances in the roster (what a load balancer would know).
    func urls(_ service: String) -> [String] { instances(service).map(\.url) }

    /// One keep-alive HTTP client per base URL.
    func http(_ url: String) throws -> E2EHTTP {
        if let existing = clients.withLock({ $0[url] }) { return existing }
        let created = try E2EHTTP(baseURL: url, system: system)
        return clients.withLock { map in
            if let raced = map[url] { return raced }
            map[url] = created
            return created
        }
    }

    /// Brings every stage to `count` instances (new ones get new instance ids and ports).
    func scale(to count: Int) async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            for service in Self.stages {
                let missing = count - instances(service).count
                for _ in 0..<max(0, missing) {
                    group.addTask { _ = try await self.startNew(service) }
                }
            }
            try await group.waitForAll()
        }
    }

    /// Starts a new instance of `service` (its own instance id and HTTP port) and waits until it is healthy.
    func startNew(_ service: String) async throws -> E2EFaultInstance {
        let n = counter.withLock { value -> Int in
            value += 1
            return value
        }
        var port = 0
        for _ in 0..<50 {
            guard let candidate = E2EPorts.consecutive(1) else { continue }
            let fresh = roster.withLock { list in !list.contains { $0.httpPort == candidate } }
            if fresh && !system.httpPorts.values.contains(candidate) {
                port = candidate
                break
            }
        }
        guard port != 0 else { throw E2EFailure("no free port for a new \(service)") }
        var env = system.environment(for: service)
        env["WIPAY_INSTANCE"] = "\(service)-e2e-\(n)"
        env["WIPAY_HTTP_PORT"] = "\(port)"
        let instance = E2EFaultInstance(
            service: service, instanceId: "\(service)-e2e-\(n)", httpPort: port, environment: env, process: nil)
        try await launch(instance)
        roster.withLock { $0.append(instance) }
        actions.withLock { $0.started[service, default: 0] += 1 }
        return instance
    }

    /// Starts the instance's process with its settings and waits until /healthz answers 200.
    private func launch(_ instance: E2EFaultInstance) async throws {
        let child = try E2EChild(
            name: instance.service, executable: system.bin.appendingPathComponent(instance.service),
            environment: instance.environment, logPath: instance.nextLogPath(in: system.dir))
        system.children.withLock { $0.append(child) }
        instance.process.withLock { $0 = child }
        let healthy = await e2eWait(timeout: .seconds(30), interval: .milliseconds(50)) {
            guard child.isRunning else { return true }
            guard let client = try? HTTPClient(
                baseURL: instance.url, timeouts: .init(connect: .seconds(1), response: .seconds(2)))
            else { return false }
            defer { client.close() }
            return (try? await client.get("/healthz"))?.status == 200
        }
        if !child.isRunning {
            throw E2EFailure("\(instance) exited during startup (status \(child.exitStatus ?? -1)):\n\(child.tail(40))")
        }
        if !healthy { throw E2EFailure("\(instance) is not healthy after 30 s:\n\(child.tail(40))") }
        // One heartbeat later the broker has it in its pool.
        try? await Task.sleep(for: .milliseconds(600))
    }

    /// kill -9, and wait until the process is gone.
    func kill9(_ instance: E2EFaultInstance) async throws {
        guard let child = instance.process.value, child.isRunning else { throw E2EFailure("\(instance) is not running") }
        child.signal(SIGKILL)
        guard await child.waitForExit(timeout: .seconds(10)) != nil else { throw E2EFailure("\(instance) survived kill -9") }
        actions.withLock { $0.kills[instance.service, default: 0] += 1 }
    }

    /// Waits (at most `within`) until `instance` is caught in the middle of the work `moment` describes, then
    /// kill -9s it at once. `moment` is a query over the system's database whose rows each carry, in the first
    /// column, the client port of a PostgreSQL session in that state (and in the second what it is busy with);
    /// a row counts when that session belongs to the instance's process. Returns what it was busy with, or
    /// nil when the moment did not come in time (it is killed anyway).
    @discardableResult
    func kill9(_ instance: E2EFaultInstance, during moment: String, within: Duration) async throws -> String? {
        guard let child = instance.process.value, child.isRunning else { throw E2EFailure("\(instance) is not running") }
        let pid = child.pid
        let conninfo = system.db.conninfo
        let caught: String? = try await e2eBlocking {
            let db = try PGConnection(conninfo: conninfo)
            let end = ContinuousClock.now + within
            var ports = e2eFaultLocalPorts(pid: pid)
            var lastPortScan = ContinuousClock.now
            while ContinuousClock.now < end {
                let rows = try db.query(moment)
                for i in 0..<rows.count {
                    guard let port = rows.int(i, 0), ports.contains(port) else { continue }
                    _ = kill(pid, SIGKILL)
                    return rows.string(i, 1) ?? "?"
                }
                if ContinuousClock.now - lastPortScan > .milliseconds(200) {
                    ports = e2eFaultLocalPorts(pid: pid)  // the pool may have opened connections since
                    lastPortScan = ContinuousClock.now
                }
            }
            return nil
        }
        if caught == nil { child.signal(SIGKILL) }
        guard await child.waitForExit(timeout: .seconds(10)) != nil else { throw E2EFailure("\(instance) survived kill -9") }
        actions.withLock { $0.kills[instance.service, default: 0] += 1 }
        return caught
    }

    /// kill -9 of the bus broker; after `down`, a new broker with the same settings and ports, waited for
    /// until its /healthz answers. The stages and gateways are not touched: they must rejoin by themselves.
    func killAndRestartBroker(down: Duration) async throws {
        guard let child = system.children.value.last(where: { $0.name == "bus" && $0.isRunning }) else {
            throw E2EFailure("the bus broker is not running")
        }
        child.signal(SIGKILL)
        guard await child.waitForExit(timeout: .seconds(10)) != nil else { throw E2EFailure("the bus broker survived kill -9") }
        let round = actions.withLock { actions -> Int in
            actions.kills["bus", default: 0] += 1
            return actions.kills["bus", default: 0]
        }
        try? await Task.sleep(for: down)
        let fresh = try E2EChild(
            name: "bus", executable: system.bin.appendingPathComponent("bus"), environment: system.environment(for: "bus"),
            logPath: "\(system.dir)/bus-restarted-\(round).log")
        system.children.withLock { $0.append(fresh) }
        try await system.waitHealthy("bus", child: fresh, timeout: .seconds(20))
        actions.withLock { $0.restarts["bus", default: 0] += 1 }
    }

    /// A new process for a killed instance: the same instance id, port and settings.
    func restart(_ instance: E2EFaultInstance) async throws {
        try await launch(instance)
        actions.withLock { $0.restarts[instance.service, default: 0] += 1 }
    }

    /// `payctl drain SERVICE INSTANCE --wait`; the instance must then exit by itself with status 0. A gateway
    /// stays in the clients' rotation until it has exited, so clients meet it while it drains (refused
    /// connections, closed streams) and must cope as real ones do.
    func drain(_ instance: E2EFaultInstance) async throws {
        defer { roster.withLock { $0.removeAll { $0 === instance } } }
        let result = try await system.payctl(["drain", instance.service, instance.instanceId, "--wait"], timeout: .seconds(90))
        guard result.status == 0 else { throw E2EFailure("payctl drain \(instance) failed: \(result)") }
        guard let child = instance.process.value else { return }
        guard let status = await child.waitForExit(timeout: .seconds(30)) else {
            throw E2EFailure("\(instance) still runs 30 s after payctl drain --wait:\n\(child.tail(40))")
        }
        guard status == 0 else { throw E2EFailure("\(instance) exited with status \(status) after drain:\n\(child.tail(40))") }
        actions.withLock { $0.drains[instance.service, default: 0] += 1 }
    }

    /// Every instance in the roster runs (none crashed on its own).
    func crashed() -> [String] {
        roster.value.filter { !$0.isRunning }.map {
            "\($0) is not running (status \($0.process.value?.exitStatus ?? -1)):\n\($0.process.value?.tail(30) ?? "")"
        }
    }
}

/// The local ports of the TCP sockets a process holds (Linux: its /proc/PID/fd links and /proc/net/tcp*).
func e2eFaultLocalPorts(pid: Int32) -> Set<Int> {
    let fdDir = "/proc/\(pid)/fd"
    guard let fds = try? FileManager.default.contentsOfDirectory(atPath: fdDir) else { return [] }
    var inodes = Set<String>()
    for fd in fds {
        guard let target = try? FileManager.default.destinationOfSymbolicLink(atPath: "\(fdDir)/\(fd)"),
            target.hasPrefix("socket:[")
        else { continue }
        inodes.insert(String(target.dropFirst("socket:[".count).dropLast()))
    }
    var ports = Set<Int>()
    for table in ["/proc/\(pid)/net/tcp", "/proc/\(pid)/net/tcp6"] {
        guard let text = e2eFaultReadProcFile(table) else { continue }
        for line in text.split(separator: "\n").dropFirst() {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count > 9, inodes.contains(String(fields[9])),
                let portHex = fields[1].split(separator: ":").last, let port = Int(portHex, radix: 16)
            else { continue }
            ports.insert(port)
        }
    }
    return ports
}

/// A /proc file's text, read to its end (their size shows as 0, so no reader that trusts the size).
func e2eFaultReadProcFile(_ path: String) -> String? {
    let fd = open(path, O_RDONLY)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 64 * 1024)
    while true {
        let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n <= 0 { break }
        bytes.append(contentsOf: buffer[0..<n])
    }
    return String(decoding: bytes, as: UTF8.self)
}

// MARK: - client statistics

/// What the clients saw, over the whole run.
struct E2EFaultClientStats: Sendable {
    var attempts = 0
    var retries = 0
    var status503 = 0
    var status5xxOther = 0
    var networkErrors = 0
    var exhausted = 0
    var unexpected: [String] = []
}

/// How a client call ended.
enum E2EFaultOutcome: Sendable {
    case answer(E2EReply)
    /// Retried until the budget ran out without a definite answer.
    case gaveUp(String)
}

/// Retries one call like a real client: the same request (and so the same Idempotency-Key) again on a 5xx or a
/// network error, rotating over the gateway's instances, with a short backoff, until a definite answer
/// (anything below 500) or the budget is spent.
func e2eFaultCall(
    cluster: E2EFaultCluster, service: String, stats: E2ELocked<E2EFaultClientStats>, budget: Duration = .seconds(60),
    _ attempt: @Sendable (E2EHTTP) async throws -> E2EReply
) async -> E2EFaultOutcome {
    let end = ContinuousClock.now + budget
    var rotation = Int.random(in: 0..<16)
    var backoff = Duration.milliseconds(50)
    var last = "no attempt"
    var first = true
    while true {
        stats.withLock {
            $0.attempts += 1
            if !first { $0.retries += 1 }
        }
        first = false
        let urls = cluster.urls(service)
        if !urls.isEmpty {
            let url = urls[rotation % urls.count]
            do {
                let reply = try await attempt(try cluster.http(url))
                if reply.status < 500 { return .answer(reply) }
                stats.withLock {
                    if reply.status == 503 { $0.status503 += 1 } else { $0.status5xxOther += 1 }
                }
                last = "\(url): \(reply)"
            } catch {
                stats.withLock { $0.networkErrors += 1 }
                last = "\(url): \(error)"
                rotation += 1  // that instance may be gone: the next one
            }
        }
        if ContinuousClock.now + backoff >= end {
            stats.withLock { $0.exhausted += 1 }
            return .gaveUp(last)
        }
        try? await Task.sleep(for: backoff)
        backoff = min(backoff * 2, .milliseconds(500))
    }
}

// MARK: - event streams that survive their gateway

/// A terminal's or device's event stream, kept open across gateway deaths: when the connection ends it
/// reconnects (to any instance) with `Last-Event-ID` = the last id it received. Holds every event of
/// every connection, in arrival order.
final class E2EFaultStream: Sendable {
    typealias Opener = @Sendable (_ baseURL: String, _ lastEventId: String) async throws -> E2ESSE

    let name: String
    let service: String
    let cluster: E2EFaultCluster
    private let opener: Opener
    private let finished = E2ELocked<[E2ESSE.Event]>([])
    private let current = E2ELocked<E2ESSE?>(nil)
    /// The gateway instance the open connection is on.
    let currentURL = E2ELocked<String?>(nil)
    private let stopping = E2ELocked(false)
    let reconnects = E2ELocked(0)
    let failedOpens = E2ELocked(0)
    private let task = E2ELocked<Task<Void, Never>?>(nil)

    init(name: String, service: String, cluster: E2EFaultCluster, opener: @escaping Opener) {
        self.name = name
        self.service = service
        self.cluster = cluster
        self.opener = opener
    }

    /// Every event so far (the finished connections' and the open one's).
    var events: [E2ESSE.Event] { finished.value + (current.value?.events ?? []) }

    /// The last event id received ("0" before any: a new recipient's stream starts at its beginning).
    private var lastId: String { events.last(where: { $0.id != nil })?.id ?? "0" }

    /// Opens the first connection (waits until it is up), then keeps it open in the background.
    func start() async throws {
        guard await connect(timeout: .seconds(20)) else { throw E2EFailure("event stream \(name) did not open") }
        let loop = Task { await self.follow() }
        task.withLock { $0 = loop }
    }

    private func connect(timeout: Duration) async -> Bool {
        let end = ContinuousClock.now + timeout
        var rotation = Int.random(in: 0..<16)
        while ContinuousClock.now < end && !stopping.value {
            let urls = cluster.urls(service)
            if !urls.isEmpty {
                let url = urls[rotation % urls.count]
                if let stream = try? await opener(url, lastId), stream.status == 200, !stream.ended {
                    current.withLock { $0 = stream }
                    currentURL.withLock { $0 = url }
                    return true
                } else {
                    failedOpens.withLock { $0 += 1 }
                }
            }
            rotation += 1
            try? await Task.sleep(for: .milliseconds(100))
        }
        return false
    }

    private func follow() async {
        while !stopping.value {
            guard let stream = current.value else { return }
            if !stream.ended {
                try? await Task.sleep(for: .milliseconds(20))
                continue
            }
            // The connection ended (its gateway died or drained): keep its events, reconnect after the last id.
            finished.withLock { $0 += stream.events }
            current.withLock { $0 = nil }
            if stopping.value { return }
            reconnects.withLock { $0 += 1 }
            if !(await connect(timeout: .seconds(60))) { return }
        }
    }

    /// Stops following and closes the connection.
    func stop() async {
        stopping.withLock { $0 = true }
        await task.value?.value
        if let stream = current.value {
            stream.close()
            _ = await e2eWait(timeout: .seconds(5)) { stream.ended }
            finished.withLock { $0 += stream.events }
            current.withLock { $0 = nil }
        }
    }
}

/// Opens an event stream on one gateway instance. A connection that ends before any response (its gateway is
/// dying or draining) is no HTTP response: only real responses go to the OpenAPI check.
func e2eFaultOpenStream(baseURL: String, path: String, headers: HTTPHeaders, system: E2ESystem) async throws -> E2ESSE {
    let stream = try await E2ESSE.open(baseURL: baseURL, path: path, headers: headers, system: system, record: false)
    if let status = stream.status, status != 0 {
        system.record(
            E2EObservation(
                method: "GET", path: path, status: status, contentType: stream.header("content-type"),
                body: status == 200 ? [] : Array(stream.bodyText.utf8)))
    }
    return stream
}

// MARK: - the report

enum E2EFaultReport {
    /// The report file: in the system's temp folder, one per test process (the first section truncates it).
    static var path: String { NSTemporaryDirectory() + "wipay-fault-report.txt" }
    private static let started = E2ELocked(false)

    /// Prints a section and writes it to the report file; returns the path.
    @discardableResult
    static func write(_ text: String) -> String {
        let path = self.path
        let fresh = started.withLock { value -> Bool in
            defer { value = true }
            return !value
        }
        if fresh || !FileManager.default.fileExists(atPath: path) {
            _ = FileManager.default.createFile(atPath: path, contents: Data(text.utf8))
        } else if let handle = FileHandle(forWritingAtPath: path) {
            handle.seekToEndOfFile()
            handle.write(Data(text.utf8))
            try? handle.close()
        }
        print(text + "(report written to \(path))")
        return path
    }
}

// MARK: - database access for the checks

extension E2ESystem {
    /// Runs one query on the system's database (read-only checks).
    func query(_ sql: String, _ parameters: [String?] = []) async throws -> PGRows {
        let conninfo = db.conninfo
        return try await e2eBlocking {
            let connection = try PGConnection(conninfo: conninfo)
            return try connection.query(sql, parameters)
        }
    }
}
