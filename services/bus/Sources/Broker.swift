import Foundation
import Logging
import Synchronization
import WiPayBus
import ZeroMQ

/// The broker's limits and timings.
public struct BrokerSettings: Sendable {
    public var endpoints: BusEndpoints
    /// A worker unheard of for this long is forgotten (its in-flight requests are retried by their callers).
    public var workerExpiry: Duration
    public var heartbeatInterval: Duration
    /// A request waits at most this long for a free worker before the caller gets `503 no_instance`.
    public var maxQueueWait: Duration
    /// Requests waiting per service; past it the caller gets `503 overloaded` at once.
    public var maxQueuedPerService: Int
    /// The broker's CURVE key pair: set, every socket of the bus is a CURVE server.
    public var curve: CurveKeyPair?
    /// With `curve`: the client public keys admitted (Z85 → name); every other key is refused and logged.
    public var authorizedKeys: [String: String]

    public init(
        endpoints: BusEndpoints, workerExpiry: Duration = .seconds(3), heartbeatInterval: Duration = .seconds(1),
        maxQueueWait: Duration = .seconds(1), maxQueuedPerService: Int = 20_000, curve: CurveKeyPair? = nil,
        authorizedKeys: [String: String] = [:]
    ) {
        self.authorizedKeys = authorizedKeys
        self.endpoints = endpoints
        self.workerExpiry = workerExpiry
        self.heartbeatInterval = heartbeatInterval
        self.maxQueueWait = maxQueueWait
        self.maxQueuedPerService = maxQueuedPerService
        self.curve = curve
    }
}

/// What `payctl status` shows about the broker.
public struct BrokerStats: Sendable {
    public var routed: Int64 = 0
    public var refused: Int64 = 0
    public var dropped: Int64 = 0
    public var workers: [String: Int] = [:]
    public var queued: [String: Int] = [:]
    public var inFlight: Int64 = 0
}

/// Routes requests from callers to the workers of the named service, credit-based and least-loaded
/// first; forwards replies; keeps a bounded, deadline-bound queue per service while no worker is free;
/// forgets workers that stop heartbeating. It keeps no durable state: restart it and workers register
/// again from their next heartbeat, callers retry what was in flight.
///
/// One thread owns both ROUTER sockets (no locks on the hot path); the events proxy (XSUB→XPUB) runs
/// in libzmq's own `zmq_proxy` on a second thread.
public final class Broker: Sendable {
    private let settings: BrokerSettings
    private let context: ZMQContext
    private let logger: Logger
    private let stopFlag = Atomic<Bool>(false)
    private let statsBox = Locked(BrokerStats())
    private let threadsDone = DispatchGroup()
    private let ready = DispatchSemaphore(value: 0)
    private let startError = Locked<ZMQError?>(nil)
    private let zap = Locked<ZAPAuthenticator?>(nil)
    private let handshakeLogs = Locked<[HandshakeFailureLog]>([])

    public init(settings: BrokerSettings, logger: Logger) throws(ZMQError) {
        self.settings = settings
        self.context = try ZMQContext(ioThreads: 1)
        self.logger = logger
    }

    public var stats: BrokerStats { statsBox.value }

    /// Binds every socket and starts the threads; throws if a port cannot be bound.
    public func start() throws(ZMQError) {
        if settings.curve != nil {
            // The ZAP handler must be bound before the first CURVE server socket of this context.
            let authenticator = try ZAPAuthenticator(context: context, authorized: settings.authorizedKeys, logger: logger)
            zap.withLock { $0 = authenticator }
        }
        threadsDone.enter()
        let routing = Thread { [self] in
            defer { threadsDone.leave() }
            do throws(ZMQError) {
                try routeLoop()
            } catch {
                startError.withLock { $0 = error }
                ready.signal()
            }
        }
        routing.name = "bus-router"
        routing.start()
        ready.wait()
        if let error = startError.value { throw error }

        let xsub = try ZMQSocket(context, .xsub)
        let xpub = try ZMQSocket(context, .xpub)
        if let curve = settings.curve {
            try xsub.makeCurveServer(curve)
            try xpub.makeCurveServer(curve)
            let logs = [
                try HandshakeFailureLog(context: context, socket: xsub, name: "publish", logger: logger),
                try HandshakeFailureLog(context: context, socket: xpub, name: "subscribe", logger: logger),
            ]
            handshakeLogs.withLock { $0.append(contentsOf: logs) }
        }
        try xpub.setSendHighWaterMark(1_000_000)
        try xsub.setReceiveHighWaterMark(1_000_000)
        try xsub.bind(settings.endpoints.publish)
        try xpub.bind(settings.endpoints.subscribe)
        threadsDone.enter()
        let events = Thread { [self, logger] in
            defer { threadsDone.leave() }
            do {
                try runProxy(frontend: xsub, backend: xpub)
            } catch {
                logger.error("events proxy stopped", metadata: ["error": "\(error)"])
            }
            xsub.close()
            xpub.close()
        }
        events.name = "bus-events"
        events.start()
    }

    /// Stops both threads and closes every socket.
    public func stop() {
        stopFlag.store(true, ordering: .relaxed)
        zap.withLock { $0?.stop() }
        handshakeLogs.withLock { logs in
            for log in logs { log.stop() }
        }
        context.shutdown()
        threadsDone.wait()
        context.terminate()
    }

    // MARK: the routing loop

    private struct Worker {
        let id: [UInt8]
        var service: String
        var instance: String
        var credit: Int
        var inFlight: Int = 0
        var lastSeen: ContinuousClock.Instant
        var draining = false
    }

    private struct Waiting {
        let client: [UInt8]
        let envelope: [UInt8]
        let body: [UInt8]
        let expires: ContinuousClock.Instant
    }

    private struct ServiceQueue {
        var workers: [[UInt8]] = []
        var next = 0
        var waiting: [Waiting] = []
        var waitingStart = 0
        var count: Int { waiting.count - waitingStart }
    }

    private func routeLoop() throws(ZMQError) {
        let frontend = try ZMQSocket(context, .router)
        let backend = try ZMQSocket(context, .router)
        defer {
            frontend.close()
            backend.close()
        }
        for (socket, name) in [(frontend, "frontend"), (backend, "backend")] {
            if let curve = settings.curve {
                try socket.makeCurveServer(curve)
                let log = try HandshakeFailureLog(context: context, socket: socket, name: name, logger: logger)
                handshakeLogs.withLock { $0.append(log) }
            }
            try socket.setRouterMandatory(true)
            try socket.setSendHighWaterMark(200_000)
            try socket.setReceiveHighWaterMark(200_000)
        }
        try frontend.bind(settings.endpoints.frontend)
        try backend.bind(settings.endpoints.backend)
        ready.signal()
        logger.info(
            "broker listening",
            metadata: [
                "bus.frontend": "\(settings.endpoints.frontend)", "bus.backend": "\(settings.endpoints.backend)",
            ])

        var workers: [[UInt8]: Worker] = [:]
        var services: [String: ServiceQueue] = [:]
        var stats = BrokerStats()
        var poller = Poller()
        poller.add(.socket(frontend), .readable)
        poller.add(.socket(backend), .readable)
        var nextHeartbeat = ContinuousClock.now + settings.heartbeatInterval
        var nextStats = ContinuousClock.now

        enum SendOutcome { case sent, full, gone }

        /// Sends without blocking. `full`: the peer's queue is at its high-water mark (EAGAIN);
        /// `gone`: the peer has disconnected (EHOSTUNREACH, thanks to ROUTER_MANDATORY).
        @discardableResult
        func send(_ socket: ZMQSocket, _ frames: Frames) -> SendOutcome {
            do {
                if try socket.send(frames, dontWait: true) { return .sent }
                stats.dropped += 1
                return .full
            } catch {
                stats.dropped += 1
                return .gone
            }
        }

        func refuse(_ client: [UInt8], envelopeFrame: [UInt8], status: Status, code: String, message: String) {
            stats.refused += 1
            guard let request = try? Envelope.decode(envelopeFrame) else { return }
            let reply = request.reply(status: status, sender: "bus", nowMillis: unixMillis())
            send(frontend, [client, [], reply.encoded(), ErrorBody(code: code, message: message).encoded()])
        }

        /// The free worker of `service` with the fewest requests in flight (round-robin among equals).
        func pickWorker(_ service: String) -> [UInt8]? {
            guard var queue = services[service], !queue.workers.isEmpty else { return nil }
            var best: [UInt8]?
            var bestLoad = Int.max
            let count = queue.workers.count
            for offset in 0..<count {
                let id = queue.workers[(queue.next + offset) % count]
                guard let worker = workers[id], !worker.draining, worker.inFlight < worker.credit else { continue }
                if worker.inFlight < bestLoad {
                    best = id
                    bestLoad = worker.inFlight
                    if bestLoad == 0 { break }
                }
            }
            queue.next = (queue.next + 1) % count
            services[service] = queue
            return best
        }

        /// Sends a request to a worker. When the worker's connection is gone (a `kill -9`ed instance is
        /// noticed here at once, before its heartbeat expires), forgets the worker and tries the next one.
        func dispatch(_ first: [UInt8], service: String, client: [UInt8], envelope: [UInt8], body: [UInt8]) -> Bool {
            var candidate: [UInt8]? = first
            var tried: Set<[UInt8]> = []
            while let workerId = candidate, !tried.contains(workerId) {
                tried.insert(workerId)
                switch send(backend, [workerId, [], BrokerCommand.request.frame, client, envelope, body]) {
                case .sent:
                    workers[workerId]?.inFlight += 1
                    stats.routed += 1
                    return true
                case .gone:
                    removeWorker(workerId, reason: "connection gone")
                case .full:
                    break  // busy beyond its queue: try another instance, else the request waits here
                }
                candidate = pickWorker(service)
            }
            return false
        }

        func drainQueue(_ service: String) {
            guard var queue = services[service], queue.count > 0 else { return }
            services[service] = queue  // pickWorker mutates the stored copy
            while queue.waitingStart < queue.waiting.count, let id = pickWorker(service) {
                queue = services[service] ?? queue
                let item = queue.waiting[queue.waitingStart]
                guard dispatch(id, service: service, client: item.client, envelope: item.envelope, body: item.body) else {
                    break  // no live worker after all: the item stays queued
                }
                queue = services[service] ?? queue
                queue.waitingStart += 1
                services[service] = queue
            }
            queue = services[service] ?? queue
            if queue.waitingStart > 1024 && queue.waitingStart * 2 > queue.waiting.count {
                queue.waiting.removeFirst(queue.waitingStart)
                queue.waitingStart = 0
            }
            services[service] = queue
        }

        func removeWorker(_ id: [UInt8], reason: String) {
            guard let worker = workers.removeValue(forKey: id) else { return }
            services[worker.service]?.workers.removeAll { $0 == id }
            logger.info(
                "worker removed",
                metadata: [
                    "service": "\(worker.service)", "instance": "\(worker.instance)", "reason": "\(reason)",
                    "in_flight": "\(worker.inFlight)",
                ])
        }

        while !stopFlag.load(ordering: .relaxed) {
            let ready: [PollEvents]
            do {
                ready = try poller.poll(timeout: .milliseconds(100))
            } catch {
                if error.isTerminated { return }
                throw error
            }
            let now = ContinuousClock.now

            // Replies and heartbeats from workers first: they free credit.
            if ready[1].contains(.readable) {
                for _ in 0..<4096 {
                    let frames: Frames
                    do {
                        guard let received = try backend.receive(dontWait: true) else { break }
                        frames = received
                    } catch {
                        if error.isTerminated { return }
                        stats.dropped += 1
                        continue
                    }
                    guard frames.count >= 3, frames[1].isEmpty, let command = BrokerCommand.parse(frames[2]) else {
                        stats.dropped += 1
                        continue
                    }
                    let id = frames[0]
                    switch command {
                    case .heartbeat where frames.count == 6:
                        guard let service = String(validating: frames[3], as: UTF8.self), !service.isEmpty,
                            service.utf8.count <= 64,
                            let instance = String(validating: frames[4], as: UTF8.self),
                            let credit = Int(String(decoding: frames[5], as: UTF8.self)), credit > 0
                        else {
                            stats.dropped += 1
                            continue
                        }
                        if workers[id] == nil {
                            workers[id] = Worker(
                                id: id, service: service, instance: instance, credit: min(credit, 100_000), lastSeen: now)
                            services[service, default: ServiceQueue()].workers.append(id)
                            logger.info("worker registered", metadata: ["service": "\(service)", "instance": "\(instance)"])
                            drainQueue(service)
                        } else {
                            workers[id]?.lastSeen = now
                        }
                    case .reply where frames.count == 6:
                        if var worker = workers[id] {
                            worker.inFlight = max(0, worker.inFlight - 1)
                            worker.lastSeen = now
                            workers[id] = worker
                        }
                        send(frontend, [frames[3], [], frames[4], frames[5]])
                        if let service = workers[id]?.service { drainQueue(service) }
                    case .drain:
                        workers[id]?.draining = true
                        if let worker = workers[id] {
                            logger.info(
                                "worker draining", metadata: ["service": "\(worker.service)", "instance": "\(worker.instance)"])
                        }
                    default:
                        stats.dropped += 1
                    }
                }
            }

            // Requests from callers: ["client", "", service, envelope, body].
            if ready[0].contains(.readable) {
                for _ in 0..<4096 {
                    let frames: Frames
                    do {
                        guard let received = try frontend.receive(dontWait: true) else { break }
                        frames = received
                    } catch {
                        if error.isTerminated { return }
                        stats.dropped += 1
                        continue
                    }
                    guard frames.count == 5, frames[1].isEmpty, frames[2].count <= 64,
                        let service = String(validating: frames[2], as: UTF8.self)
                    else {
                        // Not our protocol. With the envelope we could answer; without it, count a drop.
                        if frames.count >= 4 {
                            refuse(
                                frames[0], envelopeFrame: frames[frames.count - 2], status: .badRequest, code: "bad_frame",
                                message: "expected [\"\", service, envelope, body]")
                        } else {
                            stats.dropped += 1
                        }
                        continue
                    }
                    if service == "bus" {
                        // The broker answers for itself: a cheap "can I reach the bus?" for health checks.
                        if let request = try? Envelope.decode(frames[3]) {
                            let reply = request.reply(status: .ok, sender: "bus", nowMillis: unixMillis())
                            send(frontend, [frames[0], [], reply.encoded(), Empty().encoded()])
                        }
                    } else if let id = pickWorker(service),
                        dispatch(id, service: service, client: frames[0], envelope: frames[3], body: frames[4])
                    {
                        continue
                    } else if services[service, default: ServiceQueue()].count >= settings.maxQueuedPerService {
                        refuse(
                            frames[0], envelopeFrame: frames[3], status: .unavailable, code: "overloaded",
                            message: "too many requests waiting for \(service)")
                    } else {
                        services[service, default: ServiceQueue()].waiting.append(
                            Waiting(client: frames[0], envelope: frames[3], body: frames[4], expires: now + settings.maxQueueWait))
                    }
                }
            }

            // Timers: heartbeats out, dead workers out, stale waiting requests answered.
            if now >= nextHeartbeat {
                nextHeartbeat = now + settings.heartbeatInterval
                for id in workers.keys { send(backend, [id, [], BrokerCommand.heartbeat.frame]) }
                for (id, worker) in workers where now - worker.lastSeen > settings.workerExpiry {
                    removeWorker(id, reason: "heartbeat expired")
                }
            }
            // Requests that waited too long for a free worker get their 503 (checked every loop, so
            // within about 100 ms of maxQueueWait).
            for service in Array(services.keys) {
                guard var queue = services[service] else { continue }
                while queue.waitingStart < queue.waiting.count, queue.waiting[queue.waitingStart].expires <= now {
                    let item = queue.waiting[queue.waitingStart]
                    queue.waitingStart += 1
                    services[service] = queue
                    refuse(
                        item.client, envelopeFrame: item.envelope, status: .unavailable, code: "no_instance",
                        message: "no instance of \(service) is available; retry")
                    queue = services[service] ?? queue
                }
                services[service] = queue
            }
            if now >= nextStats {
                nextStats = now + .milliseconds(500)
                var byService: [String: Int] = [:]
                for worker in workers.values { byService[worker.service, default: 0] += 1 }
                stats.workers = byService
                stats.queued = services.mapValues(\.count)
                stats.inFlight = Int64(workers.values.reduce(0) { $0 + $1.inFlight })
                let snapshot = stats
                statsBox.withLock { $0 = snapshot }
            }
        }
    }
}
