import BusBroker
import Foundation
import Logging
import Synchronization
import Testing
import WiPayBus
import ZeroMQ

// MARK: - harness

/// A real broker on 127.0.0.1 (four consecutive ports, picked at random and retried until they bind),
/// plus one ZeroMQ context for the test's clients, workers and raw sockets. `shutdown()` closes all of it.
final class BTHarness: Sendable {
    let broker: Broker
    let endpoints: BusEndpoints
    let settings: BrokerSettings
    let context: ZMQContext
    private let cleanups = Locked<[@Sendable () -> Void]>([])

    private init(broker: Broker, settings: BrokerSettings, context: ZMQContext) {
        self.broker = broker
        self.settings = settings
        self.endpoints = settings.endpoints
        self.context = context
    }

    static func start(
        heartbeatInterval: Duration = .milliseconds(100), workerExpiry: Duration = .seconds(2),
        maxQueueWait: Duration = .seconds(1)
    ) throws -> BTHarness {
        var lastError: (any Error)?
        for _ in 0..<40 {
            let settings = BrokerSettings(
                endpoints: BusEndpoints(host: "127.0.0.1", basePort: Int.random(in: 20_000...59_996)),
                workerExpiry: workerExpiry, heartbeatInterval: heartbeatInterval, maxQueueWait: maxQueueWait)
            let broker = try Broker(settings: settings, logger: Logger(label: "test"))
            do {
                try broker.start()
            } catch {
                // A port is taken: stop what did start (threads, context) and try elsewhere.
                broker.stop()
                lastError = error
                continue
            }
            do {
                return BTHarness(broker: broker, settings: settings, context: try ZMQContext())
            } catch {
                broker.stop()
                throw error
            }
        }
        throw lastError ?? ZMQError(code: EADDRINUSE, function: "zmq_bind")
    }

    private func onShutdown(_ cleanup: @escaping @Sendable () -> Void) {
        cleanups.withLock { $0.append(cleanup) }
    }

    func client(_ sender: String = "test/client") throws -> BusClient {
        let client = try BusClient(context: context, frontend: endpoints.frontend, sender: sender, logger: Logger(label: "test"))
        onShutdown { client.close() }
        return client
    }

    /// A worker serving `handler`, heartbeating every `heartbeat`; both loops run in tasks.
    func worker(
        _ service: String, _ instance: String, credit: Int = 256, heartbeat: Duration = .milliseconds(100),
        handler: @escaping BusWorker.Handler
    ) throws -> BTWorker {
        let worker = try BusWorker(
            context: context, backend: endpoints.backend, service: service, instance: instance, credit: credit,
            logger: Logger(label: "test"))
        let handle = BTWorker(
            worker: worker, serving: Task { await worker.serve(handler) },
            beating: Task { await worker.heartbeat(every: heartbeat) })
        onShutdown { handle.kill() }
        return handle
    }

    func publisher(_ sender: String) throws -> BusPublisher {
        let publisher = try BusPublisher(context: context, endpoint: endpoints.publish, sender: sender)
        onShutdown { publisher.close() }
        return publisher
    }

    /// A subscriber whose events are collected in the background.
    func subscriber(_ topics: [String]) throws -> BTSubscriber {
        let subscriber = try BusSubscriber(context: context, endpoint: endpoints.subscribe, topics: topics)
        let collector = BTSubscriber(subscriber: subscriber)
        onShutdown { collector.close() }
        return collector
    }

    /// A bare socket connected to `endpoint`, for sending what well-behaved peers never send.
    func raw(_ type: SocketType, _ endpoint: String) throws -> ZMQSocket {
        let socket = try ZMQSocket(context, type)
        try socket.connect(endpoint)
        onShutdown { socket.close() }
        return socket
    }

    /// Wakes the broker's loop every `interval` (a raw DEALER pinging "bus" from its own thread, so that
    /// a busy test process cannot slow it down): its timers (heartbeats, queue expiry) then fire on time.
    func keepBrokerAwake(every interval: TimeInterval = 0.002) throws {
        let socket = try ZMQSocket(context, .dealer)
        try socket.connect(endpoints.frontend)
        let stop = Locked(false)
        let done = DispatchSemaphore(value: 0)
        let ping = Envelope(kind: .request, type: .ping, requestId: "keep-awake", sender: "test/keep-awake").encoded()
        let thread = Thread {
            while !stop.value {
                _ = try? socket.send([[], Array("bus".utf8), ping, []])
                while (try? socket.receive(dontWait: true)) != nil {}
                Thread.sleep(forTimeInterval: interval)
            }
            socket.close()
            done.signal()
        }
        thread.start()
        onShutdown {
            stop.withLock { $0 = true }
            done.wait()
        }
    }

    /// Closes every client, worker and socket (newest first), the context, then the broker.
    func shutdown() {
        let all = cleanups.withLock { cleanups in
            defer { cleanups.removeAll() }
            return cleanups
        }
        for cleanup in all.reversed() { cleanup() }
        context.shutdown()
        context.terminate()
        broker.stop()
    }
}

/// A worker and the two tasks that run it.
final class BTWorker: Sendable {
    let worker: BusWorker
    let serving: Task<Void, Never>
    let beating: Task<Void, Never>

    init(worker: BusWorker, serving: Task<Void, Never>, beating: Task<Void, Never>) {
        self.worker = worker
        self.serving = serving
        self.beating = beating
    }

    var name: String { "\(worker.service)/\(worker.instance)" }
    /// The broker heartbeats registered workers only: a heartbeat received means "registered".
    var isRegistered: Bool { worker.lastBrokerHeartbeatMillis > 0 }

    /// Dies the way a killed process does: no more heartbeats, socket gone.
    func kill() {
        beating.cancel()
        worker.close()
    }
}

/// Collects a subscriber's events.
final class BTSubscriber: Sendable {
    let subscriber: BusSubscriber
    private let received = Locked<[BusEvent]>([])
    private let task: Task<Void, Never>

    init(subscriber: BusSubscriber) {
        self.subscriber = subscriber
        let received = self.received
        task = Task {
            for await event in subscriber.events { received.withLock { $0.append(event) } }
        }
    }

    var events: [BusEvent] { received.value }

    func close() {
        subscriber.close()
        task.cancel()
    }
}

/// A handler that blocks until opened (and stays open).
final class BTGate: Sendable {
    private struct State {
        var open = false
        var waiters: [CheckedContinuation<Void, Never>] = []
    }
    private let state = Locked(State())

    func wait() async {
        await withCheckedContinuation { continuation in
            let now = state.withLock { state -> Bool in
                if state.open { return true }
                state.waiters.append(continuation)
                return false
            }
            if now { continuation.resume() }
        }
    }

    func open() {
        let waiters = state.withLock { state in
            state.open = true
            defer { state.waiters.removeAll() }
            return state.waiters
        }
        for waiter in waiters { waiter.resume() }
    }
}

/// Polls `condition` every 10 ms until it holds or `timeout` passes; returns whether it held.
func btEventually(timeout: Duration = .seconds(15), _ condition: () -> Bool) async -> Bool {
    let end = ContinuousClock.now + timeout
    while true {
        if condition() { return true }
        if ContinuousClock.now >= end { return false }
        try? await Task.sleep(for: .milliseconds(10))
    }
}

/// Receives one message from a raw socket without blocking a thread; nil after `timeout`.
func btReceive(_ socket: ZMQSocket, timeout: Duration = .seconds(3)) async throws -> Frames? {
    let end = ContinuousClock.now + timeout
    while true {
        if let frames = try socket.receive(dontWait: true) { return frames }
        if ContinuousClock.now >= end { return nil }
        try await Task.sleep(for: .milliseconds(5))
    }
}

/// Sends `count` requests at once and returns every outcome, in request order.
func btSendConcurrently(
    _ client: BusClient, service: String, count: Int, tag: String, attemptTimeout: Duration = .seconds(2),
    totalTimeout: Duration = .seconds(6)
) async -> [(requestId: String, body: [UInt8], result: Result<BusMessage, BusCallError>)] {
    await withTaskGroup(of: (Int, Result<BusMessage, BusCallError>).self) { group in
        for index in 0..<count {
            group.addTask {
                do throws(BusCallError) {
                    let reply = try await client.send(
                        service: service, type: .accountShow, body: Array("\(tag)-\(index)".utf8),
                        requestId: "\(tag)-\(index)", attemptTimeout: attemptTimeout, totalTimeout: totalTimeout)
                    return (index, .success(reply))
                } catch {
                    return (index, .failure(error))
                }
            }
        }
        var results = [Result<BusMessage, BusCallError>?](repeating: nil, count: count)
        for await (index, result) in group { results[index] = result }
        return results.enumerated().map { index, result in
            ("\(tag)-\(index)", Array("\(tag)-\(index)".utf8), result!)
        }
    }
}

/// Echoes the body with status 200 after `delay`.
func btEcho(after delay: Duration = .zero) -> BusWorker.Handler {
    { message in
        if delay > .zero { try? await Task.sleep(for: delay) }
        return BusReply(status: .ok, body: message.body)
    }
}

// MARK: - tests

@Suite(.serialized, .timeLimit(.minutes(1)))
struct BrokerTests {
    // (a)
    @Test func aRequestReachesAWorkerAndTheReplyComesBack() async throws {
        let bus = try BTHarness.start()
        defer { bus.shutdown() }
        let seen = Locked<[BusMessage]>([])
        let worker = try bus.worker("echo", "w1") { message in
            seen.withLock { $0.append(message) }
            if message.envelope.type == .walletUnlock {
                return .error(.declined, "wrong_pin", "the PIN is wrong")
            }
            return BusReply(status: .exists, body: message.body)
        }
        let client = try bus.client("pos-gateway/7")
        // Generous deadlines: the whole suite runs in parallel on two cores, and this test checks what
        // travels, not how fast.
        #expect(await btEventually { worker.isRegistered })

        let body = AccountRef(accountId: "w-ü-🚀").encoded()
        let before = unixMillis()
        let reply = try await client.send(
            service: "echo", type: .accountShow, body: body, requestId: "req-a-1", correlation: "pay-42",
            totalTimeout: .seconds(20))
        #expect(reply.envelope.kind == .reply)
        #expect(reply.envelope.requestId == "req-a-1")
        #expect(reply.envelope.status == .exists)
        #expect(reply.envelope.type == .accountShow)
        #expect(reply.envelope.sender == "echo/w1")
        #expect(reply.envelope.correlation == "pay-42")
        #expect(reply.envelope.deadlineMillis == 0)
        #expect(reply.route == [])
        #expect(reply.body == body)

        // What the handler saw is what the client sent.
        let request = try #require(seen.value.first)
        // Once, or twice when the client's first attempt timed out on a loaded machine and was retried (the
        // same request id: a retry is the same request, and the handlers are idempotent for that reason).
        #expect((1...2).contains(seen.value.count))
        #expect(seen.value.allSatisfy { $0.envelope.requestId == "req-a-1" && $0.body == body })
        #expect(request.envelope.kind == .request)
        #expect(request.envelope.requestId == "req-a-1")
        #expect(request.envelope.sender == "pos-gateway/7")
        #expect(request.envelope.correlation == "pay-42")
        #expect(request.envelope.sentAtMillis >= before - 1000)
        #expect(request.envelope.deadlineMillis > request.envelope.sentAtMillis)
        #expect(request.body == body)

        // The typed call decodes 2xx bodies and turns the rest into `rejected`.
        let (status, ref) = try await client.call(
            service: "echo", type: .accountShow, AccountRef(accountId: "x"), as: AccountRef.self, totalTimeout: .seconds(20))
        #expect(status == .exists)
        #expect(ref == AccountRef(accountId: "x"))
        do {
            _ = try await client.call(
                service: "echo", type: .walletUnlock, AccountRef(accountId: "x"), as: AccountRef.self, totalTimeout: .seconds(20))
            Issue.record("a 422 reply must throw")
        } catch {
            guard case .rejected(let status, let body) = error else {
                Issue.record("expected rejected, got \(error)")
                return
            }
            #expect(status == .declined)
            #expect(body == ErrorBody(code: "wrong_pin", message: "the PIN is wrong"))
        }
        // At least the three calls (a client attempt that timed out on a loaded machine is sent again, and
        // the worker handles that copy too).
        #expect(await btEventually { worker.worker.handledTotal >= 3 && worker.worker.inFlight == 0 })
    }

    // (b)
    @Test func concurrentRequestsAreSpreadOverTwoWorkersAndNoneIsLost() async throws {
        let bus = try BTHarness.start()
        defer { bus.shutdown() }
        let a = try bus.worker("ledger", "a", handler: btEcho(after: .milliseconds(30)))
        let b = try bus.worker("ledger", "b", handler: btEcho(after: .milliseconds(30)))
        let client = try bus.client()
        #expect(await btEventually { a.isRegistered && b.isRegistered })

        let count = 40
        let results = await btSendConcurrently(client, service: "ledger", count: count, tag: "spread", attemptTimeout: .seconds(5))
        var bySender: [String: Int] = [:]
        for (requestId, body, result) in results {
            guard case .success(let reply) = result else {
                Issue.record("\(requestId) failed: \(result)")
                continue
            }
            #expect(reply.envelope.requestId == requestId)
            #expect(reply.envelope.status == .ok)
            #expect(reply.body == body)
            bySender[reply.envelope.sender, default: 0] += 1
        }
        #expect(bySender.values.reduce(0, +) == count)
        #expect(Set(bySender.keys) == ["ledger/a", "ledger/b"])
        // Least-loaded with equal handlers: close to even, certainly not lopsided.
        #expect(bySender["ledger/a", default: 0] >= count / 4, "\(bySender)")
        #expect(bySender["ledger/b", default: 0] >= count / 4, "\(bySender)")
        // Exactly once each: no request was handled twice (no retries were needed).
        #expect(await btEventually { a.worker.handledTotal + b.worker.handledTotal == Int64(count) })
        #expect(a.worker.handledTotal == Int64(bySender["ledger/a", default: 0]))
        #expect(await btEventually { bus.broker.stats.routed == Int64(count) })
    }

    // (c)
    @Test func aServiceWithNoWorkerIsRefusedWithNoInstanceAfterTheQueueWait() async throws {
        let queueWait = Duration.milliseconds(300)
        let bus = try BTHarness.start(maxQueueWait: queueWait)
        defer { bus.shutdown() }
        let dealer = try bus.raw(.dealer, bus.endpoints.frontend)
        let envelope = Envelope(
            kind: .request, type: .transferPost, requestId: "nobody-1", sender: "raw/1", sentAtMillis: unixMillis(),
            deadlineMillis: unixMillis() + 10_000)
        let start = ContinuousClock.now
        #expect(try dealer.send([[], Array("nobody".utf8), envelope.encoded(), [1, 2, 3]]))
        let frames = try #require(try await btReceive(dealer, timeout: .seconds(3)))
        let elapsed = ContinuousClock.now - start
        let reply = try BusMessage.parse(frames)
        #expect(reply.envelope.kind == .reply)
        #expect(reply.envelope.status == .unavailable)
        #expect(reply.envelope.requestId == "nobody-1")
        #expect(reply.envelope.type == .transferPost)
        #expect(reply.envelope.sender == "bus")
        let error = try ErrorBody.decode(reply.body)
        #expect(error.code == "no_instance")
        #expect(error.message.contains("nobody"))
        // It waited for a worker for maxQueueWait, then gave up on the next timer tick.
        #expect(elapsed >= queueWait, "\(elapsed)")
        #expect(elapsed < queueWait + .seconds(1), "\(elapsed)")
        #expect(await btEventually { bus.broker.stats.refused == 1 && bus.broker.stats.queued["nobody"] == 0 })
    }

    @Test func theClientReturnsTheNoInstanceReplyWhenTheTotalTimeoutEndsAfterIt() async throws {
        // The broker refuses a queued request on its timer: tick every 5 ms, and keep its loop awake (it
        // otherwise sleeps up to 100 ms in poll), so that the 503 comes back within a few ms of maxQueueWait.
        let queueWait = Duration.milliseconds(300)
        let bus = try BTHarness.start(heartbeatInterval: .milliseconds(5), maxQueueWait: queueWait)
        defer { bus.shutdown() }
        try bus.keepBrokerAwake()
        let client = try bus.client()
        #expect(try await client.send(service: "bus", type: .ping, body: []).envelope.status == .ok)  // connected

        // The 503 arrives after 300 ms, never earlier (the broker starts counting when the request reaches
        // it). The total is 350 ms, so the 50 ms backoff before a retry would cross it: `send` returns the
        // 503 it got instead of trying again.
        let start = ContinuousClock.now
        let reply = try await client.send(
            service: "nobody", type: .transferPost, body: [], requestId: "nobody-2", totalTimeout: queueWait + .milliseconds(50))
        let elapsed = ContinuousClock.now - start
        #expect(reply.envelope.status == .unavailable)
        #expect(reply.envelope.status.isRetryable)
        #expect(reply.envelope.requestId == "nobody-2")
        #expect(try ErrorBody.decode(reply.body).code == "no_instance")
        #expect(elapsed >= queueWait)
        #expect(elapsed < queueWait + .milliseconds(200))
    }

    /// (Failed on the first version read: `send` threw `timedOut`, dropping the 503 it had received.)
    @Test func theClientReturnsTheLastReplyEvenWhenTheLastRetryGetsNone() async throws {
        let queueWait = Duration.milliseconds(300)
        let bus = try BTHarness.start(heartbeatInterval: .milliseconds(5), maxQueueWait: queueWait)
        defer { bus.shutdown() }
        try bus.keepBrokerAwake()
        let client = try bus.client()
        #expect(try await client.send(service: "bus", type: .ping, body: []).envelope.status == .ok)
        // Attempt 1 gets 503 no_instance at ~300 ms; attempt 2 (sent at ~350 ms) would get its 503 at
        // ~650 ms, after the 600 ms total. The caller did receive an answer and should see it.
        do {
            let reply = try await client.send(
                service: "nobody", type: .transferPost, body: [], requestId: "nobody-3", totalTimeout: .milliseconds(600))
            #expect(reply.envelope.status == .unavailable)
            #expect(try ErrorBody.decode(reply.body).code == "no_instance")
        } catch {
            Issue.record("send threw \(error) although a 503 no_instance reply had arrived")
        }
    }

    // (d)
    @Test func aDeadWorkerStopsGettingWorkAndTheOtherTakesAll() async throws {
        let bus = try BTHarness.start(heartbeatInterval: .milliseconds(100), workerExpiry: .milliseconds(300))
        defer { bus.shutdown() }
        let handled = Locked<[String]>([])
        let recording: BusWorker.Handler = { message in
            handled.withLock { $0.append(message.envelope.requestId) }
            return await btEcho(after: .milliseconds(20))(message)
        }
        let a = try bus.worker("ledger", "a", handler: recording)
        let b = try bus.worker("ledger", "b", handler: recording)
        let client = try bus.client()
        #expect(await btEventually { a.isRegistered && b.isRegistered })

        // Both alive: both serve.
        let warmup = await btSendConcurrently(client, service: "ledger", count: 10, tag: "alive")
        let warmupSenders = warmup.compactMap { try? $0.result.get().envelope.sender }
        #expect(warmupSenders.count == 10)
        #expect(Set(warmupSenders) == ["ledger/a", "ledger/b"])
        #expect(await btEventually { a.worker.handledTotal + b.worker.handledTotal == 10 })

        // Kill a: no goodbye, its heartbeats just stop.
        a.kill()
        let handledByA = a.worker.handledTotal

        // Sent right away, a request may still be routed to the dead worker and be lost there; the
        // client retries it (same id) after its attempt timeout, and by then b has it.
        let early = try await client.send(
            service: "ledger", type: .accountShow, body: [7], requestId: "right-after-death",
            attemptTimeout: .milliseconds(500), totalTimeout: .seconds(5))
        #expect(early.envelope.status == .ok)
        #expect(early.envelope.sender == "ledger/b")

        // The broker forgets it after workerExpiry. Everything it dropped (heartbeats and requests sent
        // to the dead worker) happened before that.
        // (Stats are a snapshot every 500 ms: wait for one taken after the early request was routed.)
        #expect(await btEventually { bus.broker.stats.workers["ledger"] == 1 && bus.broker.stats.routed >= 11 })
        let before = bus.broker.stats

        let start = ContinuousClock.now
        let attemptTimeout = Duration.seconds(5)
        let results = await btSendConcurrently(
            client, service: "ledger", count: 20, tag: "after", attemptTimeout: attemptTimeout, totalTimeout: .seconds(20))
        let elapsed = ContinuousClock.now - start
        for (requestId, body, result) in results {
            guard case .success(let reply) = result else {
                Issue.record("\(requestId) failed: \(result)")
                continue
            }
            #expect(reply.envelope.status == .ok)
            #expect(reply.envelope.requestId == requestId)
            #expect(reply.body == body)
            #expect(reply.envelope.sender == "ledger/b")
        }
        // None was sent into the dead worker's connection: nothing more was dropped, no retry was needed
        // (a retry waits out the attempt timeout), and b handled each exactly once.
        #expect(elapsed < attemptTimeout, "\(elapsed)")
        #expect(await btEventually { bus.broker.stats.routed >= before.routed + 20 })
        #expect(bus.broker.stats.dropped == before.dropped)
        #expect(handled.value.filter { $0.hasPrefix("after-") }.sorted() == results.map(\.requestId).sorted())
        #expect(a.worker.handledTotal == handledByA)
    }

    /// docs/bus-protocol.md: a killed instance stops receiving work "immediately when its TCP connection
    /// closes", long before its heartbeat expires. (Failed on the first version read: those requests were
    /// lost until the callers' attempt timeout.)
    @Test func aWorkerWhoseConnectionClosedGetsNoMoreWorkBeforeItsHeartbeatExpires() async throws {
        // workerExpiry long on purpose: only the closed connection can tell the broker.
        let bus = try BTHarness.start(heartbeatInterval: .milliseconds(100), workerExpiry: .seconds(30))
        defer { bus.shutdown() }
        let a = try bus.worker("ledger", "a", handler: btEcho())
        let b = try bus.worker("ledger", "b", handler: btEcho())
        let client = try bus.client()
        #expect(await btEventually { a.isRegistered && b.isRegistered })
        a.kill()
        // The broker's side knows the connection is gone once its heartbeats to a fail (EHOSTUNREACH).
        #expect(await btEventually { bus.broker.stats.dropped > 0 })

        // Two at once: with both idle, least-loaded (round-robin among equals) picks each worker once.
        let start = ContinuousClock.now
        let attemptTimeout = Duration.seconds(3)
        let results = await btSendConcurrently(
            client, service: "ledger", count: 2, tag: "closed", attemptTimeout: attemptTimeout, totalTimeout: .seconds(10))
        let elapsed = ContinuousClock.now - start
        #expect(results.allSatisfy { (try? $0.result.get().envelope.sender) == "ledger/b" }, "\(results.map(\.result))")
        // Neither waited out an attempt timeout: none was sent into the closed connection and lost.
        #expect(elapsed < attemptTimeout, "\(elapsed)")
        // And a is forgotten, 30 s before its heartbeat would have expired.
        #expect(await btEventually { bus.broker.stats.routed >= 2 && bus.broker.stats.workers == ["ledger": 1] })
    }

    // (e)
    @Test func aDrainedWorkerGetsNoNewWorkButFinishesWhatItHas() async throws {
        let bus = try BTHarness.start()
        let slowGate = BTGate()
        let stepGate = BTGate()
        defer {
            slowGate.open()
            stepGate.open()
            bus.shutdown()
        }
        let started = Locked<[String]>([])
        let handler: BusWorker.Handler = { message in
            let tag = String(decoding: message.body, as: UTF8.self)
            started.withLock { $0.append(tag) }
            switch tag {
            case "slow": await slowGate.wait()
            case "step": await stepGate.wait()
            default: try? await Task.sleep(for: .milliseconds(30))
            }
            return BusReply(status: .ok, body: message.body)
        }
        let a = try bus.worker("router", "a", handler: handler)
        let client = try bus.client()
        #expect(await btEventually { a.isRegistered })

        // a alone takes a slow request and a "step" request; both stay in progress.
        let noRetry = Duration.seconds(20)
        let slow = Task {
            try await client.send(
                service: "router", type: .accountShow, body: Array("slow".utf8), requestId: "slow",
                attemptTimeout: noRetry, totalTimeout: noRetry)
        }
        let step = Task {
            try await client.send(
                service: "router", type: .accountShow, body: Array("step".utf8), requestId: "step",
                attemptTimeout: noRetry, totalTimeout: noRetry)
        }
        #expect(await btEventually { Set(started.value) == ["slow", "step"] })

        let b = try bus.worker("router", "b", handler: handler)
        #expect(await btEventually { b.isRegistered })

        // Control: before the drain, a busy a still gets part of a concurrent batch.
        let before = await btSendConcurrently(client, service: "router", count: 20, tag: "before")
        let beforeSenders = before.compactMap { try? $0.result.get().envelope.sender }
        #expect(beforeSenders.count == 20)
        #expect(beforeSenders.contains("router/a"), "\(beforeSenders)")

        // Drain a. Its DRAIN and the reply to "step" leave through the same socket in that order, so once
        // the step reply is back the broker has seen the drain.
        a.worker.drain()
        stepGate.open()
        let stepReply = try await step.value
        #expect(stepReply.envelope.status == .ok)
        #expect(stepReply.envelope.sender == "router/a")

        let after = await btSendConcurrently(client, service: "router", count: 20, tag: "after")
        for (requestId, body, result) in after {
            guard case .success(let reply) = result else {
                Issue.record("\(requestId) failed: \(result)")
                continue
            }
            #expect(reply.envelope.status == .ok)
            #expect(reply.body == body)
            #expect(reply.envelope.sender == "router/b", "\(requestId) went to the drained worker")
        }
        #expect(a.worker.inFlight == 1)  // still the slow one

        // The request in progress on the drained worker still gets its answer.
        slowGate.open()
        let slowReply = try await slow.value
        #expect(slowReply.envelope.status == .ok)
        #expect(slowReply.envelope.requestId == "slow")
        #expect(slowReply.envelope.sender == "router/a")
        #expect(slowReply.body == Array("slow".utf8))
        #expect(await a.worker.waitForInFlight(timeout: .seconds(2)) == 0)
    }

    // (f)
    @Test func garbageFramesDoNotHurtTheBroker() async throws {
        let bus = try BTHarness.start()
        defer { bus.shutdown() }
        let worker = try bus.worker("echo", "w1", handler: btEcho())
        let client = try bus.client()
        let front = try bus.raw(.dealer, bus.endpoints.frontend)
        let back = try bus.raw(.dealer, bus.endpoints.backend)
        #expect(await btEventually { worker.isRegistered })

        func envelope(_ id: String) -> [UInt8] {
            Envelope(kind: .request, type: .ping, requestId: id, sender: "raw/1", deadlineMillis: unixMillis() + 10_000).encoded()
        }
        let service = Array("echo".utf8)
        let garbage: [Frames] = [
            // Dropped: too few frames to hold an envelope.
            [[0x01]],
            [[]],
            [[], service],
            [[], service, envelope("three-frames")],  // 4 at the broker: "envelope" is the service name
            // Refused with 400 bad_frame: the envelope is where it should be, the rest is not.
            [[], [0xFF, 0xFE, 0xFD], envelope("bad-utf8-service"), []],
            [[], Array(repeating: 0x73, count: 65), envelope("long-service"), []],
            [Array("x".utf8), service, envelope("no-delimiter"), []],
            [[], service, [0x00], envelope("extra-frame"), []],
            // Dropped: more frames than the broker reads (its receive stops at 64).
            Array(repeating: [0x41], count: 100),
            // To services that exist, with undecodable envelopes.
            [[], Array("bus".utf8), [0x57, 0x50, 0x09], []],
            [[], Array("bus".utf8), Array(repeating: 0xFF, count: 1 << 20), []],
        ]
        for frames in garbage { #expect(try front.send(frames)) }

        // What a worker never sends.
        let backGarbage: [Frames] = [
            [[0x01]],
            [[], Array("NOPE".utf8)],
            [[], Array("HB".utf8)],
            [[], Array("HB".utf8), Array("echo".utf8), Array("bad".utf8), Array("zero".utf8)],
            [[], Array("HB".utf8), Array("echo".utf8), Array("bad".utf8), Array("-5".utf8)],
            [[], Array("HB".utf8), [0xC3], Array("bad".utf8), Array("1".utf8)],
            [[], Array("HB".utf8), Array(repeating: 0x61, count: 65), Array("bad".utf8), Array("1".utf8)],
            [[], Array("REPLY".utf8), Array("no-such-client".utf8), envelope("stray"), []],
            [[], Array("REPLY".utf8)],
            [[], Array("REQ".utf8), [1], envelope("req-from-worker"), []],
            [[], Array("DRAIN".utf8)],  // from a worker that never registered
        ]
        for frames in backGarbage { #expect(try back.send(frames)) }

        // The refusals that could be answered were.
        var refusals: [String: (Status, String)] = [:]
        while refusals.count < 4, let frames = try await btReceive(front, timeout: .seconds(3)) {
            let reply = try BusMessage.parse(frames)
            refusals[reply.envelope.requestId] = (reply.envelope.status, try ErrorBody.decode(reply.body).code)
        }
        #expect(Set(refusals.keys) == ["bad-utf8-service", "long-service", "no-delimiter", "extra-frame"])
        #expect(refusals.values.allSatisfy { $0.0 == .badRequest && $0.1 == "bad_frame" })

        // And the broker still works, for workers and for itself.
        let reply = try await client.send(service: "echo", type: .ping, body: [42], totalTimeout: .seconds(5))
        #expect(reply.envelope.status == .ok)
        #expect(reply.body == [42])
        #expect(reply.envelope.sender == "echo/w1")
        #expect(try await client.send(service: "bus", type: .ping, body: []).envelope.status == .ok)
        // No bogus worker got registered by the bad heartbeats.
        // Refused: the five with four or five frames; dropped: the rest but the two "bus" ones and DRAIN.
        #expect(await btEventually { bus.broker.stats.workers == ["echo": 1] && bus.broker.stats.refused == 5 && bus.broker.stats.dropped >= 14 })
        #expect(bus.broker.stats.refused == 5)
        #expect(bus.broker.stats.dropped >= 14, "\(bus.broker.stats.dropped)")
        // Nothing sent to the raw backend dealer: it was never a worker.
        #expect(try back.receive(dontWait: true) == nil)
    }

    // (g)
    @Test func aRequestPastItsDeadlineIsRefusedWithoutRunningTheHandler() async throws {
        let bus = try BTHarness.start()
        defer { bus.shutdown() }
        let calls = Locked<[String]>([])
        let worker = try bus.worker("ledger", "w1") { message in
            calls.withLock { $0.append(message.envelope.requestId) }
            return BusReply(status: .ok, body: message.body)
        }
        let dealer = try bus.raw(.dealer, bus.endpoints.frontend)
        #expect(await btEventually { worker.isRegistered })

        func request(_ id: String, deadline: Int64) async throws -> BusMessage {
            let now = unixMillis()
            let envelope = Envelope(
                kind: .request, type: .transferPost, requestId: id, sender: "raw/1", correlation: "c-\(id)",
                sentAtMillis: now - 2_000, deadlineMillis: deadline)
            #expect(try dealer.send([[], Array("ledger".utf8), envelope.encoded(), Array(id.utf8)]))
            let frames = try #require(try await btReceive(dealer, timeout: .seconds(3)), "no reply to \(id)")
            return try BusMessage.parse(frames)
        }

        let late = try await request("late", deadline: unixMillis() - 1_000)
        #expect(late.envelope.status == .unavailable)
        #expect(late.envelope.kind == .reply)
        #expect(late.envelope.requestId == "late")
        #expect(late.envelope.correlation == "c-late")
        #expect(late.envelope.sender == "ledger/w1")
        let error = try ErrorBody.decode(late.body)
        #expect(error.code == "deadline_passed")
        #expect(calls.value.isEmpty)

        // Controls: a future deadline, and none at all (0), do run the handler.
        let onTime = try await request("on-time", deadline: unixMillis() + 10_000)
        #expect(onTime.envelope.status == .ok)
        #expect(onTime.body == Array("on-time".utf8))
        let noDeadline = try await request("no-deadline", deadline: 0)
        #expect(noDeadline.envelope.status == .ok)
        #expect(calls.value == ["on-time", "no-deadline"])
    }

    // (h)
    @Test func theBrokerAnswersBusPingItself() async throws {
        let bus = try BTHarness.start()
        defer { bus.shutdown() }
        let client = try bus.client("payctl")
        let reply = try await client.send(
            service: "bus", type: .ping, body: Empty().encoded(), requestId: "ping-1", correlation: "health",
            totalTimeout: .seconds(5))
        #expect(reply.envelope.status == .ok)
        #expect(reply.envelope.kind == .reply)
        #expect(reply.envelope.type == .ping)
        #expect(reply.envelope.requestId == "ping-1")
        #expect(reply.envelope.correlation == "health")
        #expect(reply.envelope.sender == "bus")
        #expect(try Empty.decode(reply.body) == Empty())
        let (status, _) = try await client.call(service: "bus", type: .ping, Empty(), as: Empty.self, totalTimeout: .seconds(5))
        #expect(status == .ok)
        // No worker is involved: nothing was routed.
        #expect(await btEventually { bus.broker.stats.workers.isEmpty && bus.broker.stats.routed == 0 && bus.broker.stats.refused == 0 })
    }

    // (i)
    @Test func eventsGoThroughTheBrokerIntactAndFilteredByTopic() async throws {
        let bus = try BTHarness.start()
        defer { bus.shutdown() }
        let outcomes = try bus.subscriber(["outcome.", "notice.pos."])
        let everything = try bus.subscriber([""])
        let publisher = try bus.publisher("payment-router/1")

        // Subscriptions travel SUB → XPUB → XSUB → PUB asynchronously: publish a probe until both see it.
        let probeBody: [UInt8] = [0xAA]
        let subscribed = await btEventually(timeout: .seconds(5)) {
            publisher.publish(topic: "outcome.probe", type: .outcomePublished, body: probeBody)
            return outcomes.events.contains { $0.topic == "outcome.probe" }
                && everything.events.contains { $0.topic == "outcome.probe" }
        }
        #expect(subscribed)
        // Let any probe still in flight arrive, so that only the events below are counted.
        publisher.publish(topic: "outcome.probe-end", type: .outcomePublished, body: [])
        #expect(await btEventually {
            outcomes.events.contains { $0.topic == "outcome.probe-end" } && everything.events.contains { $0.topic == "outcome.probe-end" }
        })
        let skip = (outcomes.events.count, everything.events.count)

        let outcome = BTSamples.transferResult
        let sent: [(topic: String, type: MessageType, body: [UInt8], requestId: String)] = [
            ("hb.ledger", .heartbeat, BTSamples.instance, ""),
            ("notice.dev.phone-1", .noticeDelivered, [1], "n-1"),
            ("outcomeX", .outcomePublished, [2], "x"),  // not under "outcome."
            ("outcome.pr-1", .outcomePublished, outcome, "pr-1"),
            ("notice.pos.términal-🚀", .noticeDelivered, Array("à la caisse".utf8), "n-2"),
            ("outcome.pr-2", MessageType(rawValue: 0x0999), [], "pr-2"),
            ("outcome.end", .outcomePublished, [], "end"),
        ]
        for event in sent {
            #expect(publisher.publish(topic: event.topic, type: event.type, body: event.body, requestId: event.requestId, correlation: "corr-\(event.requestId)"))
        }
        #expect(await btEventually {
            outcomes.events.contains { $0.topic == "outcome.end" } && everything.events.contains { $0.topic == "outcome.end" }
        })

        let filtered = Array(outcomes.events.dropFirst(skip.0))
        #expect(filtered.map(\.topic) == ["outcome.pr-1", "notice.pos.términal-🚀", "outcome.pr-2", "outcome.end"])
        let all = Array(everything.events.dropFirst(skip.1))
        #expect(all.map(\.topic) == sent.map(\.topic))
        for event in all {
            let original = try #require(sent.first { $0.topic == event.topic })
            #expect(event.envelope.kind == .event)
            #expect(event.envelope.type == original.type)
            #expect(event.envelope.requestId == original.requestId)
            #expect(event.envelope.correlation == "corr-\(original.requestId)")
            #expect(event.envelope.sender == "payment-router/1")
            #expect(event.envelope.status == .none)
            #expect(event.body == original.body)
        }
        let pr1 = try #require(filtered.first)
        #expect(try TransferResult.decode(pr1.body) == TransferResult(transferId: "t-1", postedAtMillis: 5, debitBalance: -1, creditBalance: .max))
    }

    /// Two callers sending the same request id at once (a caller's own retry racing the first try) both
    /// get an answer. (Failed on the first version read: the second waiter replaced the first, whose task
    /// then never returned, whatever its total timeout.)
    @Test func concurrentSendsWithTheSameRequestIdBothReturn() async throws {
        let bus = try BTHarness.start()
        defer { bus.shutdown() }
        let worker = try bus.worker("ledger", "w1", handler: btEcho(after: .milliseconds(200)))
        let client = try bus.client()
        #expect(await btEventually { worker.isRegistered })
        let done = Locked<[Int: Result<BusMessage, BusCallError>]>([:])
        for n in 0..<2 {
            // Unstructured on purpose: a call that never returns must not hang the test, only fail it.
            Task {
                let result: Result<BusMessage, BusCallError>
                do throws(BusCallError) {
                    result = .success(
                        try await client.send(
                            service: "ledger", type: .transferPost, body: [UInt8(n)], requestId: "same-id",
                            totalTimeout: .seconds(2)))
                } catch {
                    result = .failure(error)
                }
                done.withLock { $0[n] = result }
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        // Each call is bounded by its 2 s total timeout, whatever happens.
        #expect(await btEventually(timeout: .seconds(4)) { done.value.count == 2 }, "returned: \(done.value.keys.sorted())")
        for (n, result) in done.value {
            let reply = try #require(try? result.get(), "call \(n): \(result)")
            #expect(reply.envelope.status == .ok)
            #expect(reply.envelope.requestId == "same-id")
        }
    }
}

enum BTSamples {
    static let transferResult = TransferResult(transferId: "t-1", postedAtMillis: 5, debitBalance: -1, creditBalance: .max).encoded()
    static let instance = InstanceStatus(
        service: "ledger", instance: "l-1", version: "1", host: "h", pid: 1, startedAtMillis: 0, healthy: true, draining: false,
        inFlight: 0, handledTotal: 0, recentPerSecond: 0, controlEndpoint: "", httpEndpoint: "", detail: ""
    ).encoded()
}
