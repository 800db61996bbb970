import CLibPQ
import Foundation
import Metrics
import Synchronization

/// A stage's connections to PostgreSQL: `size` connections driven by **one event loop** (one thread) that
/// waits on every connection's socket at once (`PQsocket`, non-blocking libpq in pipeline mode) and hands
/// each result to the task waiting for it. A caller sends its own pipeline from its own thread (libpq only
/// buffers and writes to the socket, which never blocks), so a round trip costs no thread hop on the way
/// out; the loop wakes when the answer arrives (docs/architecture.md, "PostgreSQL").
///
/// - Bounded: at most `maxWaiters` callers wait for a connection, each at most `acquireTimeout`, then
///   `PGError.poolBusy` (a stage answers `503 database_busy`), never an unbounded wait (`PGSlotQueue`).
/// - Every statement is prepared once per connection and re-prepared after a reconnect.
/// - Idle connections are watched: a server that restarts or ends a session is noticed at once, and the
///   connection reconnects in the background with back-off (50 ms doubling to 1 s), so no call fails
///   merely because its pooled connection had gone stale. `health` (and the `wipay_pg_*` metrics) say
///   how many connections are up, how many wait to reconnect, and the last error.
/// - A call on a connection that is down waits for its next connection attempt (at most `connectTimeout`
///   after the back-off) and fails with that attempt's error when it fails: a retryable connection error.
public final class PGPool: Sendable {
    public let name: String
    public let size: Int
    private let loop: PGEventLoop
    private let slots: PGSlotQueue

    public init(
        conninfo: String, size: Int, name: String = "postgres", maxWaiters: Int = 1024,
        acquireTimeout: Duration = .seconds(5), connectTimeout: Duration = .seconds(10)
    ) {
        self.name = name
        self.size = max(1, size)
        slots = PGSlotQueue(size: self.size, maxWaiters: maxWaiters, acquireTimeout: acquireTimeout)
        loop = PGEventLoop(conninfo: conninfo, size: self.size, name: name, connectTimeout: connectTimeout)
        loop.start()
    }

    deinit { loop.stop() }

    /// Callers waiting for a connection now.
    public var waiting: Int { slots.waiting }

    /// Where the connections stand.
    public var health: PGPoolHealth { loop.health() }

    /// Leases one connection for `body` (every pipeline of a transaction goes on it), then gives it back.
    /// A transaction `body` left open, by throwing or by mistake, is rolled back before the connection
    /// serves anyone else.
    public func withSession<T: Sendable>(_ body: (PGSession) async throws -> T) async throws -> T {
        let index = try await slots.acquire()
        defer { slots.release(index) }
        let session = PGSession(loop: loop, connection: loop.connections[index])
        do {
            let value = try await body(session)
            await session.rollbackIfNeeded()
            return value
        } catch {
            await session.rollbackIfNeeded()
            throw error
        }
    }

    /// One pipeline on any connection (see `PGSession.pipeline`).
    public func pipeline(_ statements: [PGStatement]) async throws -> [Result<PGRows, PGError>] {
        try await withSession { try await $0.pipeline(statements) }
    }

    /// One statement on any connection, prepared.
    @discardableResult
    public func query(_ sql: String, _ parameters: [String?] = []) async throws -> PGRows {
        try await withSession { try await $0.query(sql, parameters) }
    }

    /// Runs `body` on a blocking connection of its own, on a thread of its own, holding one of the pool's
    /// slots: for what pipeline mode cannot carry (multi-statement migration scripts) and what is not on a
    /// hot path. The connection is closed afterwards.
    public func blocking<T: Sendable>(_ body: @escaping @Sendable (PGConnection) throws -> T) async throws -> T {
        let index = try await slots.acquire()
        defer { slots.release(index) }
        let conninfo = loop.conninfo
        return try await withCheckedThrowingContinuation { continuation in
            let thread = Thread {
                do {
                    let connection = try PGConnection(conninfo: conninfo)
                    continuation.resume(returning: try body(connection))
                } catch {
                    continuation.resume(throwing: error)
                }
            }
            thread.name = "pg-blocking"
            thread.start()
        }
    }
}

/// What `PGPool.health` reports.
public struct PGPoolHealth: Sendable, Equatable, CustomStringConvertible {
    public let name: String
    public let size: Int
    /// Connections open and ready.
    public let up: Int
    /// Connections that were lost or failed to connect and wait for their next attempt.
    public let down: Int
    /// Connections re-established after a loss, since start.
    public let reconnects: Int
    /// The last connection error, while any connection is down.
    public let lastError: String?

    /// No connection is down (a pool never used yet has none up and is healthy).
    public var healthy: Bool { down == 0 }

    public var description: String {
        var text = "\(name): \(up) of \(size) connections up"
        if down > 0 { text += ", \(down) reconnecting" }
        if reconnects > 0 { text += ", \(reconnects) reconnects" }
        if let lastError { text += "; last error: \(lastError)" }
        return text
    }
}

/// One leased connection of a `PGPool`, valid inside `withSession` only. Pipelines sent on it run one
/// after the other on the same database session, so a transaction may span several of them (and `await`s
/// between them). If the connection is lost, every later pipeline of the session fails with a connection
/// error: a transaction never silently continues on a new session.
public struct PGSession: Sendable {
    let loop: PGEventLoop
    let connection: PGLoopConnection
    /// The session generation of the connection this session has used (nil before its first pipeline).
    private let bound = Locked<Int?>(nil)

    init(loop: PGEventLoop, connection: PGLoopConnection) {
        self.loop = loop
        self.connection = connection
    }

    /// Runs `statements` as one pipeline with one sync at the end: one round trip. One result per
    /// statement, in order: its rows, or the error PostgreSQL gave it; after a failing statement PostgreSQL
    /// skips the rest up to the sync (`PGError.isPipelineAborted`). A failure inside an explicit transaction
    /// leaves it aborted until rolled back (`rollbackIfNeeded`). Throws only when the connection failed.
    public func pipeline(_ statements: [PGStatement]) async throws(PGError) -> [Result<PGRows, PGError>] {
        guard !statements.isEmpty else { return [] }
        try PGPipelineWire.validate(statements)
        let generation = bound.value
        let answer = await withCheckedContinuation { (continuation: CheckedContinuation<PGLoopConnection.Answer, Never>) in
            loop.submit(PGLoopConnection.Job(statements: statements, generation: generation, continuation: continuation), on: connection)
        }
        switch answer {
        case .success(let results, let generation):
            bound.withLock { $0 = generation }
            return results
        case .failure(let error):
            throw error
        }
    }

    /// `pipeline`, then the first failure thrown (the rows of every statement otherwise).
    @discardableResult
    public func pipelineAll(_ statements: [PGStatement]) async throws(PGError) -> [PGRows] {
        try PGPipelineWire.all(try await pipeline(statements))
    }

    /// One statement (prepared unless `prepared` is false), its error thrown.
    @discardableResult
    public func query(_ sql: String, _ parameters: [String?] = [], prepared: Bool = true) async throws(PGError) -> PGRows {
        let results = try await pipeline([PGStatement(sql, parameters, prepared: prepared)])
        guard let first = results.first else {
            throw PGError(sqlState: "08P01", message: "no result for a statement", context: PGConnection.summary(sql))
        }
        return try first.get()
    }

    /// True while a transaction is open or aborted on this session (as of its last pipeline).
    public var inTransaction: Bool { connection.inTransaction }

    /// Rolls back an open or aborted transaction; nothing when none is open. A connection that cannot
    /// even roll back is lost, and the server rolls back with it.
    public func rollbackIfNeeded() async {
        guard inTransaction else { return }
        _ = try? await pipeline([.rollback])
    }
}

// MARK: - The event loop

/// The connections of one pool and the thread that waits on their sockets. Lock order: a connection's
/// lock is never held while taking another's; continuations are resumed with no lock held.
final class PGEventLoop: Sendable {
    let conninfo: String
    let name: String
    let connections: [PGLoopConnection]
    let connectTimeout: Duration
    /// An eventfd that callers write to wake the loop (a connect to start, a pipeline to flush).
    private let wakeFD: Int32
    private let stopped = Atomic<Bool>(false)
    private let upGauge: Gauge
    private let downGauge: Gauge
    private let reconnectCounter: Counter

    init(conninfo: String, size: Int, name: String, connectTimeout: Duration) {
        self.conninfo = conninfo
        self.name = name
        self.connectTimeout = connectTimeout
        connections = (0..<size).map { PGLoopConnection(index: $0) }
        // As the ZeroMQ pumps do (SocketPump). Without one (out of file descriptors) the loop still works,
        // waking every 10 ms instead of when called.
        wakeFD = eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC))
        upGauge = Gauge(label: "wipay_pg_connections_up", dimensions: [("pool", name)])
        downGauge = Gauge(label: "wipay_pg_connections_down", dimensions: [("pool", name)])
        reconnectCounter = Counter(label: "wipay_pg_reconnects_total", dimensions: [("pool", name)])
    }

    func start() {
        let thread = Thread { [self] in run() }
        thread.name = "pg-\(name)"
        thread.start()
    }

    func stop() {
        stopped.store(true, ordering: .releasing)
        wake()
    }

    func wake() {
        guard wakeFD >= 0 else { return }
        var one: UInt64 = 1
        _ = write(wakeFD, &one, 8)  // a counter at its maximum already wakes the loop
    }

    func health() -> PGPoolHealth {
        var up = 0
        var down = 0
        var reconnects = 0
        var lastError: String?
        for connection in connections {
            connection.lock.withLock {
                if connection.isUp { up += 1 }
                if connection.isDown {
                    down += 1
                    lastError = connection.lastError ?? lastError
                }
                reconnects += connection.reconnects
            }
        }
        return PGPoolHealth(name: name, size: connections.count, up: up, down: down, reconnects: reconnects, lastError: lastError)
    }

    /// Hands `job` to `connection`: sent at once from the caller's thread when the connection is ready,
    /// otherwise when the loop has connected it.
    func submit(_ job: PGLoopConnection.Job, on connection: PGLoopConnection) {
        var done: [PGLoopConnection.Completion] = []
        let needsLoop = connection.lock.withLock { connection.accept(job, &done) }
        for completion in done { completion.resume() }
        if needsLoop { wake() }
    }

    private func run() {
        var fds: [pollfd] = []
        var owners: [Int] = []
        var done: [PGLoopConnection.Completion] = []
        var published: (up: Int, down: Int) = (-1, -1)
        let longestWait: Duration = wakeFD >= 0 ? .seconds(1) : .milliseconds(10)
        while !stopped.load(ordering: .acquiring) {
            let now = ContinuousClock.now
            var nextDeadline = now + longestWait
            var counted: (up: Int, down: Int) = (0, 0)
            fds.removeAll(keepingCapacity: true)
            owners.removeAll(keepingCapacity: true)
            fds.append(pollfd(fd: wakeFD, events: Int16(POLLIN), revents: 0))  // a negative fd is skipped
            for connection in connections {
                connection.lock.withLock {
                    connection.tick(now: now, loop: self, &done)
                    if let interest = connection.interest() {
                        fds.append(pollfd(fd: interest.fd, events: interest.events, revents: 0))
                        owners.append(connection.index)
                    }
                    if let deadline = connection.deadline, deadline < nextDeadline { nextDeadline = deadline }
                    if connection.isUp { counted.up += 1 }
                    if connection.isDown { counted.down += 1 }
                }
            }
            for completion in done { completion.resume() }
            done.removeAll(keepingCapacity: true)
            if counted != published {
                published = counted
                upGauge.record(counted.up)
                downGauge.record(counted.down)
            }

            let wait = max(Duration.zero, nextDeadline - now)
            let millis = Int32(min(1000, wait.components.seconds * 1000 + wait.components.attoseconds / 1_000_000_000_000_000 + 1))
            let ready = poll(&fds, nfds_t(fds.count), millis)
            if ready < 0 {
                if errno == EINTR { continue }
                usleep(10_000)  // never spin on a persistent poll failure
                continue
            }
            if fds[0].revents != 0 {
                var count: UInt64 = 0
                _ = read(wakeFD, &count, 8)  // resets the counter
            }
            for (position, index) in owners.enumerated() where fds[position + 1].revents != 0 {
                let connection = connections[index]
                let events = fds[position + 1].revents
                connection.lock.withLock { connection.onSocket(events, loop: self, &done) }
            }
            for completion in done { completion.resume() }
            done.removeAll(keepingCapacity: true)
        }
        for connection in connections { connection.lock.withLock { connection.close(&done) } }
        for completion in done { completion.resume() }
        if wakeFD >= 0 { close(wakeFD) }
    }

    func countReconnect() { reconnectCounter.increment() }
}

/// One connection of a `PGEventLoop`. **Every stored property is touched with `lock` held** (by the loop
/// thread, or by a caller sending its pipeline), which is what makes the `@unchecked Sendable` true.
final class PGLoopConnection: @unchecked Sendable {
    enum Answer: Sendable {
        case success([Result<PGRows, PGError>], generation: Int)
        case failure(PGError)
    }

    struct Job {
        let statements: [PGStatement]
        /// The session generation the caller's session is bound to (nil: any).
        let generation: Int?
        let continuation: CheckedContinuation<Answer, Never>
    }

    /// A caller to resume once no lock is held.
    struct Completion {
        let continuation: CheckedContinuation<Answer, Never>
        let answer: Answer
        func resume() { continuation.resume(returning: answer) }
    }

    private enum Phase {
        /// Never needed yet: no connection, none wanted.
        case idle
        case connecting(wantsRead: Bool, deadline: ContinuousClock.Instant)
        case ready
        /// Lost, or failed to connect: the next attempt is due at `retryAt`.
        case down(retryAt: ContinuousClock.Instant)
    }

    let lock = NSLock()
    let index: Int
    private var conn: OpaquePointer?
    private var phase = Phase.idle
    /// Failed attempts in a row (the back-off grows with them).
    private var failures = 0
    /// Counts sessions: a new one after each connect.
    private var generation = 0
    private(set) var reconnects = 0
    private(set) var lastError: String?
    /// SQL text → prepared statement name, for the current session.
    private var prepared: [String: String] = [:]
    /// The pipeline waiting to be sent (`reader` nil) or on the wire (`reader` set).
    private var job: Job?
    private var reader: PGPipelineWire.Reader?
    private var needsFlush = false
    private var lastProgress = ContinuousClock.now
    private(set) var inTransactionState = false

    init(index: Int) { self.index = index }

    var isUp: Bool { if case .ready = phase { true } else { false } }
    var isDown: Bool { if case .down = phase { true } else { false } }
    var inTransaction: Bool { lock.withLock { inTransactionState } }

    /// How long a pipeline on the wire may go without a word from the server (a commit's fsync included).
    static let silenceLimit = Duration.seconds(30)

    // MARK: called with `lock` held

    /// Takes a caller's job; sends it now when possible. Returns true when the loop must act.
    func accept(_ job: Job, _ done: inout [Completion]) -> Bool {
        guard self.job == nil else {
            done.append(
                Completion(
                    continuation: job.continuation,
                    answer: .failure(PGError(sqlState: "08P01", message: "a connection runs one pipeline at a time", context: "pool"))))
            return false
        }
        if let bound = job.generation, !(isUp && bound == generation) {
            done.append(Completion(continuation: job.continuation, answer: .failure(Self.lostDuringSession)))
            return false
        }
        self.job = job
        guard isUp else { return true }  // the loop connects, then sends
        send(&done)
        return needsFlush || !isUp
    }

    /// Time-driven work: a due connection attempt, a connect or silence deadline, a job to send.
    func tick(now: ContinuousClock.Instant, loop: PGEventLoop, _ done: inout [Completion]) {
        switch phase {
        case .idle:
            if job != nil { startConnect(loop: loop, now: now, &done) }
        case .down(let retryAt):
            // A connection that was wanted once is kept up: retried in the background, so that health
            // reports the truth and the next caller finds it ready.
            if now >= retryAt { startConnect(loop: loop, now: now, &done) }
        case .connecting(_, let deadline):
            if now >= deadline {
                connectFailed("no connection within \(loop.connectTimeout)", now: now, &done)
            } else if let conn, PQsocket(conn) < 0 || PQstatus(conn) == CONNECTION_BAD {
                connectFailed(Self.message(conn), now: now, &done)  // nothing to wait on: it has failed
            }
        case .ready:
            if reader != nil, now - lastProgress > Self.silenceLimit {
                lost("no answer from the server for \(Self.silenceLimit)", now: now, &done)
            } else if job != nil, reader == nil {
                send(&done)
            }
        }
    }

    /// The next moment `tick` has something to do.
    var deadline: ContinuousClock.Instant? {
        switch phase {
        case .idle, .ready: return reader != nil ? lastProgress + Self.silenceLimit : nil
        case .down(let retryAt): return retryAt
        case .connecting(_, let deadline): return deadline
        }
    }

    /// The socket and the events to wait for.
    func interest() -> (fd: Int32, events: Int16)? {
        guard let conn else { return nil }
        let fd = PQsocket(conn)
        guard fd >= 0 else { return nil }
        switch phase {
        case .connecting(let wantsRead, _): return (fd, Int16(wantsRead ? POLLIN : POLLOUT))
        case .ready: return (fd, Int16(POLLIN) | (needsFlush ? Int16(POLLOUT) : 0))
        case .idle, .down: return nil
        }
    }

    func onSocket(_ events: Int16, loop: PGEventLoop, _ done: inout [Completion]) {
        guard let conn else { return }
        let now = ContinuousClock.now
        switch phase {
        case .connecting(_, let deadline):
            switch PQconnectPoll(conn) {
            case PGRES_POLLING_READING: phase = .connecting(wantsRead: true, deadline: deadline)
            case PGRES_POLLING_WRITING: phase = .connecting(wantsRead: false, deadline: deadline)
            case PGRES_POLLING_OK: connected(conn, loop: loop, &done)
            default: connectFailed(Self.message(conn), now: now, &done)
            }
        case .ready:
            if needsFlush, events & Int16(POLLOUT) != 0 {
                let state = PQflush(conn)
                guard state >= 0 else { return lost(Self.message(conn), now: now, &done) }
                needsFlush = state == 1
            }
            if events & (Int16(POLLIN) | Int16(POLLERR) | Int16(POLLHUP)) != 0 {
                guard PQconsumeInput(conn) == 1, PQstatus(conn) == CONNECTION_OK else {
                    return lost(Self.message(conn), now: now, &done)
                }
                lastProgress = now
            }
            readResults(conn, now: now, &done)
        case .idle, .down:
            return
        }
    }

    /// Fails what waits and closes the connection (the pool is going away).
    func close(_ done: inout [Completion]) {
        if let job {
            done.append(
                Completion(
                    continuation: job.continuation,
                    answer: .failure(PGError(sqlState: "08003", message: "the connection pool was shut down", context: "pool"))))
        }
        job = nil
        reader = nil
        if let conn { PQfinish(conn) }
        conn = nil
        phase = .idle
    }

    // MARK: private, `lock` held

    private func send(_ done: inout [Completion]) {
        guard let job, reader == nil, let conn else { return }
        // Found dead before anything was sent: the job waits for the reconnect.
        guard PQstatus(conn) == CONNECTION_OK else { return lost(Self.message(conn), now: .now, sent: false, &done) }
        do {
            let queued = try PGPipelineWire.queue(job.statements, on: conn, prepared: prepared)
            reader = PGPipelineWire.Reader(
                statements: job.statements, expected: queued.expected, newlyPrepared: queued.newlyPrepared)
            lastProgress = ContinuousClock.now
            let state = PQflush(conn)
            guard state >= 0 else { return lost(Self.message(conn), now: .now, &done) }
            needsFlush = state == 1
        } catch {
            lost(error.message, now: .now, sent: true, &done)  // part of it may have gone out
        }
    }

    private func readResults(_ conn: OpaquePointer, now: ContinuousClock.Instant, _ done: inout [Completion]) {
        guard reader != nil else {
            // Idle: nothing is expected. Drop anything stray so it cannot be taken for a later answer.
            while PQisBusy(conn) == 0, let stray = PQgetResult(conn) { PQclear(stray) }
            return
        }
        while PQisBusy(conn) == 0, var current = reader {
            reader = nil  // `current` owns it alone while it is fed (no copy of its results per answer)
            let results: [Result<PGRows, PGError>]?
            do {
                results = try current.feed(PQgetResult(conn), conn: conn)
            } catch {
                return lost(error.message, now: now, &done)
            }
            guard let results else {
                reader = current
                continue
            }
            prepared.merge(current.preparedToKeep) { old, _ in old }
            reader = nil
            let status = PQtransactionStatus(conn)
            inTransactionState = status == PQTRANS_INTRANS || status == PQTRANS_INERROR
            if let job {
                done.append(Completion(continuation: job.continuation, answer: .success(results, generation: generation)))
            }
            job = nil
        }
    }

    private func startConnect(loop: PGEventLoop, now: ContinuousClock.Instant, _ done: inout [Completion]) {
        if let conn { PQfinish(conn) }
        conn = PQconnectStart(loop.conninfo)
        guard let conn, PQstatus(conn) != CONNECTION_BAD else {
            return connectFailed(conn.map(Self.message) ?? "out of memory", now: now, &done)
        }
        phase = .connecting(wantsRead: false, deadline: now + loop.connectTimeout)
    }

    private func connected(_ conn: OpaquePointer, loop: PGEventLoop, _ done: inout [Completion]) {
        guard PQsetnonblocking(conn, 1) == 0, PQenterPipelineMode(conn) == 1 else {
            return connectFailed("could not enter pipeline mode: \(Self.message(conn))", now: .now, &done)
        }
        PQsetNoticeProcessor(conn, { _, _ in }, nil)  // warnings ("no transaction in progress") are not news
        if generation > 0 {
            reconnects += 1
            loop.countReconnect()
        }
        generation += 1
        failures = 0
        lastError = nil
        prepared = [:]
        inTransactionState = false
        needsFlush = false
        phase = .ready
        lastProgress = .now
        if let job, job.generation != nil {
            // Bound to the session that was lost: it must not continue on this one.
            done.append(Completion(continuation: job.continuation, answer: .failure(Self.lostDuringSession)))
            self.job = nil
        }
        send(&done)
    }

    private func connectFailed(_ message: String, now: ContinuousClock.Instant, _ done: inout [Completion]) {
        if let conn { PQfinish(conn) }
        conn = nil
        failures += 1
        lastError = message
        phase = .down(retryAt: now + Self.backoff(failures))
        if let job {
            done.append(
                Completion(
                    continuation: job.continuation,
                    answer: .failure(PGError(sqlState: "08001", message: message, context: "connect"))))
        }
        job = nil
        reader = nil
    }

    /// The connection is gone: the pipeline on the wire fails (nothing can be said of what ran); a job that
    /// surely was not sent (`sent` false) waits for the reconnect unless it belongs to the lost session.
    private func lost(_ message: String, now: ContinuousClock.Instant, sent: Bool = true, _ done: inout [Completion]) {
        if let conn { PQfinish(conn) }
        conn = nil
        failures += 1
        lastError = message
        phase = .down(retryAt: now + Self.backoff(failures))
        needsFlush = false
        inTransactionState = false
        if let job, sent || reader != nil || job.generation != nil {
            done.append(
                Completion(continuation: job.continuation, answer: .failure(PGError(sqlState: "08006", message: message, context: "pipeline"))))
            self.job = nil
        }
        reader = nil
    }

    private static let lostDuringSession = PGError(
        sqlState: "08006", message: "the connection was lost during this session", context: "pool")

    /// 50 ms, doubling per failure in a row, at most 1 s; ±20 % so a pool's connections spread out.
    static func backoff(_ failures: Int) -> Duration {
        let base = min(1000.0, 50.0 * pow(2.0, Double(max(0, failures - 1))))
        return .milliseconds(Int(base * Double.random(in: 0.8...1.2)))
    }

    private static func message(_ conn: OpaquePointer) -> String { PGPipelineWire.message(conn) }
}

/// A stage's database health, for its heartbeat and `/healthz`: one round trip answered, and no pooled
/// connection waiting to reconnect. A pool too busy to lend a connection is busy, not unhealthy.
public func pgHealthCheck(_ pool: PGPool) async -> (Bool, String) {
    do {
        _ = try await pool.query("SELECT 1")
    } catch let error as PGError where error.isPoolBusy {
        return (true, "\(pool.health); busy")
    } catch {
        return (false, "database: \(error); \(pool.health)")
    }
    let health = pool.health
    return (health.healthy, "\(health)")
}

extension Array where Element == Result<PGRows, PGError> {
    /// The rows of every statement of a pipeline, or its first real failure thrown (not a "skipped").
    public func allRows() throws(PGError) -> [PGRows] { try PGPipelineWire.all(self) }
}
