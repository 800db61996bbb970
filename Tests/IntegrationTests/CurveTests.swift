import BusBroker
import Foundation
import Logging
import Testing
import WiPayBus
import ZeroMQ

/// CurveZMQ on the bus: a broker with CURVE and a ZAP handler admits the keys in `authorized/` only.
/// Keys come from `BusKeys.generate`, as `payctl keys generate` makes them.
@Suite(.timeLimit(.minutes(2))) struct CurveTests {
    /// Keeps the broker's log messages, to check that refusals are logged.
    struct CaptureLog: LogHandler {
        let lines: Locked<[String]>
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .debug
        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }
        func log(event: LogEvent) {
            lines.withLock { $0.append("\(event.message)") }
        }
    }

    final class Setup: Sendable {
        let brokerLog = Locked<[String]>([])
        let dir: String
        let broker: Broker
        let endpoints: BusEndpoints
        let context: ZMQContext
        let brokerKey: String

        init() throws {
            dir = NSTemporaryDirectory() + "wipay-curve-\(UUID().uuidString)"
            try BusKeys.generate(dir: dir, names: ["bus", "ledger", "ops"])
            // A stranger: a valid key pair that is not in authorized/.
            try BusKeys.generate(dir: dir + "/strangers", names: ["stranger"])
            var lastError: (any Error)?
            for _ in 0..<40 {
                let settings = BrokerSettings(
                    endpoints: BusEndpoints(host: "127.0.0.1", basePort: Int.random(in: 20_000...59_996)),
                    workerExpiry: .seconds(2), heartbeatInterval: .milliseconds(100),
                    curve: try BusKeys.loadPair(dir: dir, name: "bus"),
                    authorizedKeys: BusKeys.authorized(dir: dir).keys)
                let log = brokerLog
                let broker = try Broker(settings: settings, logger: Logger(label: "test") { _ in CaptureLog(lines: log) })
                do {
                    try broker.start()
                } catch {
                    broker.stop()
                    lastError = error
                    continue
                }
                self.broker = broker
                self.endpoints = settings.endpoints
                self.context = try ZMQContext()
                self.brokerKey = try BusKeys.loadPublic(dir: dir, name: "bus")
                return
            }
            throw lastError ?? ZMQError(code: EADDRINUSE, function: "zmq_bind")
        }

        func security(_ name: String, in folder: String? = nil) throws -> BusSecurity {
            .curve(keys: try BusKeys.loadPair(dir: folder ?? dir, name: name), brokerPublicKey: brokerKey)
        }

        var stranger: BusSecurity { get throws { try security("stranger", in: dir + "/strangers") } }

        func shutdown() {
            context.shutdown()
            context.terminate()
            broker.stop()
            try? FileManager.default.removeItem(atPath: dir)
        }
    }

    /// Serves "echo" as the (authorized) ledger key; returns the worker's tasks to cancel.
    func startEcho(_ s: Setup) throws -> (BusWorker, [Task<Void, Never>]) {
        let worker = try BusWorker(
            context: s.context, backend: s.endpoints.backend, service: "echo", instance: "echo-1", credit: 16,
            security: try s.security("ledger"), logger: Logger(label: "test"))
        let tasks = [
            Task { await worker.serve { message in BusReply(status: .ok, body: message.body) } },
            Task { await worker.heartbeat(every: .milliseconds(100)) },
        ]
        return (worker, tasks)
    }

    func call(_ s: Setup, _ security: BusSecurity, timeout: Duration) async -> Result<[UInt8], BusCallError> {
        do {
            let client = try BusClient(
                context: s.context, frontend: s.endpoints.frontend, sender: "test/client", security: security,
                logger: Logger(label: "test"))
            defer { client.close() }
            let reply = try await client.send(
                service: "echo", type: .ping, body: Array("hi".utf8), attemptTimeout: timeout, totalTimeout: timeout)
            // A 503 (the worker has not registered yet) comes back as a reply, not an error.
            guard reply.envelope.status.isSuccess else { return .failure(.closed) }
            return .success(reply.body)
        } catch let error as BusCallError {
            return .failure(error)
        } catch {
            return .failure(.closed)
        }
    }

    @Test func authorizedKeysTalkUnknownKeysAndPlainTCPCannotRequest() async throws {
        let s = try Setup()
        defer { s.shutdown() }
        let (worker, tasks) = try startEcho(s)
        defer {
            worker.close()
            for task in tasks { task.cancel() }
        }
        // The authorized ops key gets its echo.
        var answered = false
        for _ in 0..<50 where !answered {
            if case .success(let body) = await call(s, try s.security("ops"), timeout: .seconds(1)) {
                #expect(body == Array("hi".utf8))
                answered = true
            } else {
                try await Task.sleep(for: .milliseconds(100))
            }
        }
        #expect(answered)
        // A valid key pair that is not authorized: the handshake is refused, no request gets through.
        if case .success = await call(s, try s.stranger, timeout: .milliseconds(1500)) {
            Issue.record("an unknown key got an answer")
        }
        // No CURVE at all: refused too.
        if case .success = await call(s, .none, timeout: .milliseconds(1500)) {
            Issue.record("a plain TCP client got an answer")
        }
        // Both refusals are in the broker's log: the unknown key by the ZAP handler, plain TCP by the monitor.
        let log = s.brokerLog.value
        #expect(log.contains { $0.contains("unknown CURVE key") }, "\(log)")
        // libzmq reports the plain TCP peer as a protocol error or as a failure without detail.
        #expect(
            log.contains { $0.hasPrefix("peer refused: protocol error") || $0 == "peer refused: handshake failed" },
            "\(log)")
        #expect(worker.handledTotal >= 1)
    }

    @Test func unknownKeysCannotPublishOrSubscribe() async throws {
        let s = try Setup()
        defer { s.shutdown() }
        let trusted = try BusSubscriber(
            context: s.context, endpoint: s.endpoints.subscribe, topics: ["t."], security: try s.security("ops"))
        let intruder = try BusSubscriber(
            context: s.context, endpoint: s.endpoints.subscribe, topics: ["t."], security: try s.stranger)
        let goodPublisher = try BusPublisher(
            context: s.context, endpoint: s.endpoints.publish, sender: "ledger/1", security: try s.security("ledger"))
        let badPublisher = try BusPublisher(
            context: s.context, endpoint: s.endpoints.publish, sender: "stranger/1", security: try s.stranger)
        defer {
            for sub in [trusted, intruder] { sub.close() }
            for pub in [goodPublisher, badPublisher] { pub.close() }
        }
        let trustedSeen = Locked<[String]>([])
        let intruderSeen = Locked<[String]>([])
        let readers = [
            Task { for await event in trusted.events { trustedSeen.withLock { $0.append(event.topic) } } },
            Task { for await event in intruder.events { intruderSeen.withLock { $0.append(event.topic) } } },
        ]
        defer { for reader in readers { reader.cancel() } }
        // Publish for 3 s (slow joiners: subscriptions take a moment to reach the proxy).
        for i in 0..<60 {
            goodPublisher.publish(topic: "t.good.\(i)", type: .ping, body: [])
            badPublisher.publish(topic: "t.bad.\(i)", type: .ping, body: [])
            try await Task.sleep(for: .milliseconds(50))
        }
        let seen = trustedSeen.value
        #expect(seen.contains { $0.hasPrefix("t.good.") }, "the authorized subscriber hears the authorized publisher")
        #expect(!seen.contains { $0.hasPrefix("t.bad.") }, "nothing from the unknown publisher reaches anyone")
        #expect(intruderSeen.value.isEmpty, "the unknown subscriber hears nothing")
    }

    @Test func keyFilesAreMadeOnceAndKeptPrivate() throws {
        let dir = NSTemporaryDirectory() + "wipay-keys-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(try BusKeys.generate(dir: dir, names: ["bus", "ops"]) == ["bus", "ops"])
        let first = try BusKeys.loadPair(dir: dir, name: "ops")
        #expect(try BusKeys.generate(dir: dir, names: ["bus", "ops"]).isEmpty, "existing keys are never replaced")
        #expect(try BusKeys.loadPair(dir: dir, name: "ops") == first)
        #expect(Set(BusKeys.authorized(dir: dir).keys.values) == ["bus", "ops"])
        chmod(BusKeys.keyPath(dir, "ops"), 0o644)
        #expect(throws: BusKeys.KeyError.self) { try BusKeys.loadPair(dir: dir, name: "ops") }
    }
}
