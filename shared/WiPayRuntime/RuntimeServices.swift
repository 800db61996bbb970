import Foundation
import Hummingbird
import HummingbirdTLS
import NIOSSL
import Logging
import Metrics
import NIOCore
import ServiceLifecycle
import WiPayBus
import ZeroMQ

/// The instance's control socket: a ROUTER that answers `control.status`, `control.drain` and `ping`
/// from `payctl`. Bound on `WIPAY_CONTROL_BIND` (a free port by default), advertised in heartbeats.
final class ControlService: Service {
    private let runtime: Runtime
    private let socket: ZMQSocket
    let endpoint: String

    init(runtime: Runtime) throws {
        self.runtime = runtime
        socket = try ZMQSocket(runtime.context, .router)
        if case .curve(let keys, _) = runtime.busSecurity { try socket.makeCurveServer(keys) }
        try socket.bind(runtime.config.controlBind)
        endpoint = Self.advertised(try socket.lastEndpoint, config: runtime.config)
        runtime.controlEndpoint = endpoint
    }

    /// Replaces a wildcard bind address with one that others can reach.
    static func advertised(_ bound: String, config: RuntimeConfig) -> String {
        guard bound.hasPrefix("tcp://"), let colon = bound.lastIndex(of: ":") else { return bound }
        let host = String(bound[bound.index(bound.startIndex, offsetBy: 6)..<colon])
        let port = bound[bound.index(after: colon)...]
        var advertised = config.advertiseHost
        if advertised.isEmpty { advertised = (host == "0.0.0.0" || host == "*") ? config.host : host }
        return "tcp://\(advertised):\(port)"
    }

    func run() async throws {
        let runtime = self.runtime
        let pumpBox = Locked<SocketPump?>(nil)
        let pump = try SocketPump(socket: socket, name: "control") { frames in
            guard let message = try? BusMessage.parse(frames) else { return }
            let reply = ControlService.answer(message, runtime: runtime)
            var out = message
            out.envelope = message.envelope.reply(status: reply.status, sender: runtime.sender, nowMillis: unixMillis())
            out.body = reply.body
            _ = pumpBox.withLock { $0?.send(out.frames()) }
        }
        pumpBox.withLock { $0 = pump }
        runtime.logger.info("control socket ready", metadata: ["control.endpoint": "\(endpoint)"])
        try? await gracefulShutdown()
        // Keep answering status while the other services drain; stop last (services stop in reverse).
        pump.stop()
    }

    static func answer(_ message: BusMessage, runtime: Runtime) -> BusReply {
        switch message.envelope.type {
        case .ping, .controlStatus:
            return .ok(runtime.status())
        case .controlDrain:
            let inFlight = runtime.state.inFlight
            runtime.logger.notice("drain requested", metadata: ["by": "\(message.envelope.sender)"])
            runtime.requestStop()
            return .ok(DrainReply(accepted: true, inFlight: inFlight))
        default:
            return .error(.unknownType, "unknown_type", "the control socket does not handle \(message.envelope.type)")
        }
    }
}

extension Runtime {
    /// This instance's status, as heartbeats and `control.status` report it.
    public func status(sampleRate: Bool = false) -> InstanceStatus {
        InstanceStatus(
            service: config.service, instance: config.instance, version: config.version, host: config.host,
            pid: Int64(getpid()), startedAtMillis: state.startedAtMillis, healthy: state.healthy && !state.draining,
            draining: state.draining, inFlight: state.inFlight, handledTotal: state.handledTotal,
            recentPerSecond: sampleRate ? state.sampleRate() : state.lastRate,
            controlEndpoint: controlEndpoint, httpEndpoint: state.httpEndpoint, detail: state.detail)
    }
}

/// Publishes `hb.<service>` with this instance's status every heartbeat interval, after asking the
/// service's own health check (database reachable, broker heard from, ...).
struct HeartbeatService: Service {
    let runtime: Runtime
    let healthCheck: @Sendable () async -> (Bool, String)

    func run() async throws {
        let publisher = try runtime.publisher()
        let topic = Topic.heartbeat(runtime.config.service)
        let gauge = Gauge(label: "wipay_in_flight", dimensions: [("service", runtime.config.service)])
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            let (healthy, detail) = await healthCheck()
            runtime.state.setHealth(healthy, detail)
            let status = runtime.status(sampleRate: true)
            gauge.record(status.inFlight)
            publisher.publish(topic: topic, type: .heartbeat, body: status.encoded())
            try? await Task.sleep(for: runtime.config.heartbeatInterval)
        }
        // A last heartbeat says "draining" so that payctl shows the instance leaving, not vanishing.
        publisher.publish(topic: topic, type: .heartbeat, body: runtime.status().encoded())
    }
}

/// Serves the stage's bus requests through the broker, with metrics and in-flight accounting; on
/// graceful shutdown tells the broker to stop sending work, finishes what it has, then stops.
final class WorkerService: Service {
    private let runtime: Runtime
    private let worker: BusWorker
    private let handler: BusWorker.Handler

    init(runtime: Runtime, handler: @escaping BusWorker.Handler) throws {
        self.runtime = runtime
        self.handler = handler
        worker = try BusWorker(
            context: runtime.context, backend: runtime.config.bus.backend, service: runtime.config.service,
            instance: runtime.config.instance, credit: runtime.config.workerCredit, security: runtime.busSecurity,
            logger: runtime.logger)
    }

    var lastBrokerHeartbeatMillis: Int64 { worker.lastBrokerHeartbeatMillis }

    func run() async throws {
        let runtime = self.runtime
        let handler = self.handler
        let service = runtime.config.service
        let worker = self.worker
        let metrics = RequestMetrics(service: service)
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await worker.heartbeat(every: runtime.config.heartbeatInterval) }
            group.addTask {
                await worker.serve { message in
                    runtime.state.begin()
                    let start = ContinuousClock.now
                    let reply = await handler(message)
                    runtime.state.end()
                    let (counter, timer) = metrics.instruments(message.envelope.type, reply.status)
                    counter.increment()
                    timer.recordNanoseconds((ContinuousClock.now - start).nanoseconds)
                    return reply
                }
            }
            try? await gracefulShutdown()
            runtime.state.markDraining()
            worker.drain()
            runtime.logger.notice("draining: no new work", metadata: ["in_flight": "\(worker.inFlight)"])
            let left = await worker.waitForInFlight(timeout: .seconds(20))
            if left > 0 { runtime.logger.warning("stopped with work in flight", metadata: ["in_flight": "\(left)"]) }
            worker.finish()
            group.cancelAll()
        }
        worker.close()
    }
}

/// Per type and status request counters and timers, made once (a metrics lookup per request costs).
final class RequestMetrics: Sendable {
    private let service: String
    private let cache = Locked<[UInt32: (Counter, Timer)]>([:])

    init(service: String) { self.service = service }

    func instruments(_ type: MessageType, _ status: Status) -> (Counter, Timer) {
        let key = UInt32(type.rawValue) << 16 | UInt32(status.rawValue)
        if let found = cache.withLock({ $0[key] }) { return found }
        let made = (
            Counter(
                label: "wipay_bus_requests_total",
                dimensions: [("service", service), ("type", type.description), ("status", status.description)]),
            Timer(
                label: "wipay_bus_request_duration_seconds", dimensions: [("service", service), ("type", type.description)],
                preferredDisplayUnit: .seconds)
        )
        cache.withLock { $0[key] = made }
        return made
    }
}

extension Duration {
    var nanoseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
    }
}

/// What `GET /healthz` answers (docs/openapi.yaml, `Health`): `detail` says what the health check found,
/// e.g. the database pool's connections.
struct HealthBody: Encodable {
    let status: String
    let service: String
    let instance: String
    let detail: String?
}

/// The HTTP endpoint every service has: `GET /healthz` and `GET /metrics`; gateways add their API.
enum HTTPService {
    /// The TLS configuration from the PEM files, or a clear error before anything starts.
    static func tlsConfiguration(certFile: String, keyFile: String) throws(ConfigError) -> TLSConfiguration {
        do {
            let chain = try NIOSSLCertificate.fromPEMFile(certFile)
            guard !chain.isEmpty else { throw ConfigError("WIPAY_TLS_CERT_FILE \(certFile) holds no certificate") }
            let key = try NIOSSLPrivateKey(file: keyFile, format: .pem)
            return TLSConfiguration.makeServerConfiguration(certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
        } catch let error as ConfigError {
            throw error
        } catch {
            throw ConfigError("cannot load the TLS certificate \(certFile) or key \(keyFile): \(error)")
        }
    }

    /// `tls` nil: plain HTTP on `port`; otherwise HTTPS with it (the same routes).
    static func make(
        runtime: Runtime, port: Int, tls: TLSConfiguration? = nil, extraRoutes: (@Sendable (Router<BasicRequestContext>) -> Void)?
    ) throws -> some Service {
        let router = Router()
        router.add(middleware: MetricsMiddleware())
        router.get("healthz") { _, _ -> Response in
            let healthy = runtime.state.healthy && !runtime.state.draining
            let detail = runtime.state.draining ? "draining" : runtime.state.detail
            let health = HealthBody(
                status: healthy ? "ok" : "unavailable", service: runtime.config.service, instance: runtime.config.instance,
                detail: detail.isEmpty ? nil : detail)
            let body = (try? JSONEncoder().encode(health)).map { Array($0) } ?? Array("{\"status\":\"unavailable\"}".utf8)
            return Response(
                status: healthy ? .ok : .serviceUnavailable, headers: [.contentType: "application/json"],
                body: .init(byteBuffer: ByteBuffer(bytes: body)))
        }
        router.get("metrics") { _, _ -> Response in
            var buffer: [UInt8] = []
            runtime.metricsRegistry.emit(into: &buffer)
            return Response(
                status: .ok, headers: [.contentType: "text/plain; version=0.0.4"],
                body: .init(byteBuffer: ByteBuffer(bytes: buffer)))
        }
        extraRoutes?(router)
        let host = runtime.config.httpHost
        let scheme = tls == nil ? "http" : "https"
        // The responder sets `PeerAddress.current` (limits per client address) around the router.
        return Application(
            responder: PeerAddressResponder(inner: router.buildResponder()),
            server: try tls.map { try .tls(.http1(), tlsConfiguration: $0) } ?? .http1(),
            configuration: .init(address: .hostname(host, port: port), serverName: runtime.config.service),
            onServerRunning: { channel in
                let bound = channel.localAddress?.port ?? port
                if tls == nil { runtime.state.httpEndpoint = "http://\(host):\(bound)" }
                runtime.logger.info("\(scheme) listening", metadata: ["\(scheme).endpoint": "\(scheme)://\(host):\(bound)"])
            }, logger: runtime.logger)
    }
}
