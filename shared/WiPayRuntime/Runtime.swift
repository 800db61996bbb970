import Foundation
import Hummingbird
import Logging
import Metrics
import Prometheus
import ServiceLifecycle
import Synchronization
import WiPayBus
import ZeroMQ

/// A service's view of its own health, shared by its heartbeat, control socket and /healthz.
public final class InstanceState: Sendable {
    private struct Health {
        var healthy = true
        var detail = ""
    }

    public let startedAtMillis = unixMillis()
    private let health = Locked(Health())
    private let drainingFlag = Atomic<Bool>(false)
    private let inFlightCount = Atomic<Int64>(0)
    private let handledCount = Atomic<Int64>(0)
    private let httpEndpointBox = Locked("")
    private let rateWindow = Locked((at: unixMillis(), handled: Int64(0), perSecond: Int64(0)))

    public init() {}

    public var draining: Bool { drainingFlag.load(ordering: .relaxed) }
    public func markDraining() { drainingFlag.store(true, ordering: .relaxed) }

    public func setHealth(_ healthy: Bool, _ detail: String = "") {
        health.withLock { $0 = Health(healthy: healthy, detail: detail) }
    }

    public var healthy: Bool { health.value.healthy }
    public var detail: String { health.value.detail }

    public func begin() { inFlightCount.add(1, ordering: .relaxed) }
    public func end() {
        inFlightCount.subtract(1, ordering: .relaxed)
        handledCount.add(1, ordering: .relaxed)
    }

    public var inFlight: Int64 { inFlightCount.load(ordering: .relaxed) }
    public var handledTotal: Int64 { handledCount.load(ordering: .relaxed) }

    public var httpEndpoint: String {
        get { httpEndpointBox.value }
        set { httpEndpointBox.withLock { $0 = newValue } }
    }

    /// The rate computed by the last `sampleRate()`.
    public var lastRate: Int64 { rateWindow.value.perSecond }

    /// Requests finished per second since the previous call (called once per heartbeat).
    public func sampleRate() -> Int64 {
        let now = unixMillis()
        let handled = handledTotal
        return rateWindow.withLock { window in
            let elapsed = now - window.at
            guard elapsed >= 200 else { return window.perSecond }
            window.perSecond = (handled - window.handled) * 1000 / elapsed
            window.at = now
            window.handled = handled
            return window.perSecond
        }
    }
}

/// Everything a service gets from the runtime: its configuration, logger, the ZeroMQ context, a bus
/// client to call other stages, a publisher for events, and its instance state.
public final class Runtime: Sendable {
    public let config: RuntimeConfig
    public let logger: Logger
    public let context: ZMQContext
    public let state = InstanceState()
    public let metricsRegistry: PrometheusCollectorRegistry
    private let clientBox = Locked<BusClient?>(nil)
    private let publisherBox = Locked<BusPublisher?>(nil)
    private let groupBox = Locked<ServiceGroup?>(nil)
    private let closed = Atomic<Bool>(false)
    private let controlEndpointBox = Locked("")

    /// Where this instance's control socket is reachable (set once the control socket is bound).
    public internal(set) var controlEndpoint: String {
        get { controlEndpointBox.value }
        set { controlEndpointBox.withLock { $0 = newValue } }
    }

    public var sender: String { "\(config.service)/\(config.instance)" }

    public init(config: RuntimeConfig) throws {
        self.config = config
        LogSetup.bootstrap(level: config.logLevel, format: config.logFormat, service: config.service, instance: config.instance)
        var logger = Logger(label: "wipay.\(config.service)")
        logger.logLevel = LogSetup.level(config.logLevel) ?? .info
        logger[metadataKey: "service"] = "\(config.service)"
        logger[metadataKey: "instance"] = "\(config.instance)"
        self.logger = logger
        self.metricsRegistry = MetricsSetup.bootstrap()
        self.context = try ZMQContext(ioThreads: 1)
        if config.curveKeysDir.isEmpty {
            self.busSecurity = .none
            self.zap = nil
            logger.warning("CURVE is off: the bus is plain TCP (set WIPAY_CURVE_KEYS_DIR in production)")
        } else {
            let keys = try BusKeys.loadPair(dir: config.curveKeysDir, name: config.curveKeyName)
            let brokerKey = try BusKeys.loadPublic(dir: config.curveKeysDir, name: "bus")
            self.busSecurity = .curve(keys: keys, brokerPublicKey: brokerKey)
            // The control socket is a CURVE server too: only authorized keys (ops, services) may use it.
            let authorized = BusKeys.authorized(dir: config.curveKeysDir)
            for problem in authorized.problems { logger.warning("authorized key skipped", metadata: ["problem": "\(problem)"]) }
            self.zap = try ZAPAuthenticator(context: context, authorized: authorized.keys, logger: logger)
        }
    }

    /// How this process's bus sockets secure themselves (CurveZMQ client of the broker, or nothing).
    public let busSecurity: BusSecurity
    let zap: ZAPAuthenticator?

    /// A subscriber to bus events under `topics` (prefixes), with this process's security.
    public func subscriber(topics: [String]) throws -> BusSubscriber {
        try BusSubscriber(context: context, endpoint: config.bus.subscribe, topics: topics, security: busSecurity, logger: logger)
    }

    /// A bus client for calls to other stages (made on first use, shared).
    public func client() throws -> BusClient {
        try clientBox.withLock { box in
            if let client = box { return client }
            let client = try BusClient(
                context: context, frontend: config.bus.frontend, sender: sender, security: busSecurity, logger: logger)
            box = client
            return client
        }
    }

    /// The event publisher (made on first use, shared).
    public func publisher() throws -> BusPublisher {
        try publisherBox.withLock { box in
            if let publisher = box { return publisher }
            let publisher = try BusPublisher(
                context: context, endpoint: config.bus.publish, sender: sender, security: busSecurity)
            box = publisher
            return publisher
        }
    }

    /// Starts a graceful stop of the whole service (what `payctl drain` and SIGTERM do).
    public func requestStop() {
        state.markDraining()
        let group = groupBox.value
        Task { await group?.triggerGracefulShutdown() }
    }

    /// Runs the service: its own pieces (`services`, dependencies first), plus the runtime's — bus worker
    /// (when `handler` is given), heartbeat, control socket and HTTP endpoint — until SIGTERM/SIGINT or a
    /// drain. Shutdown runs in reverse order: HTTP and the worker drain first, then the service's pieces.
    public func run(
        handler: BusWorker.Handler? = nil, services: [any Service] = [],
        http: (@Sendable (Router<BasicRequestContext>) -> Void)? = nil,
        healthCheck: @escaping @Sendable () async -> (Bool, String) = { (true, "") }
    ) async throws {
        var all: [any Service] = services
        let control = try ControlService(runtime: self)
        all.append(control)
        all.append(HeartbeatService(runtime: self, healthCheck: healthCheck))
        if let handler {
            all.append(try WorkerService(runtime: self, handler: handler))
        }
        if let port = config.httpPort {
            all.append(try HTTPService.make(runtime: self, port: port, extraRoutes: http))
            if let httpsPort = config.httpsPort {
                let tls = try HTTPService.tlsConfiguration(certFile: config.tlsCertFile, keyFile: config.tlsKeyFile)
                all.append(try HTTPService.make(runtime: self, port: httpsPort, tls: tls, extraRoutes: http))
            }
        }
        let group = ServiceGroup(
            configuration: ServiceGroupConfiguration(
                services: all.map { .init(service: $0) }, gracefulShutdownSignals: [.sigterm, .sigint],
                cancellationSignals: [], logger: logger))
        groupBox.withLock { $0 = group }
        logger.info(
            "service starting",
            metadata: ["version": "\(config.version)", "bus": "\(config.bus.frontend)", "pid": "\(getpid())"])
        defer { shutdown() }
        try await group.run()
        logger.info("service stopped")
    }

    /// Closes the bus sockets and the context. Called when `run` returns.
    public func shutdown() {
        guard !closed.exchange(true, ordering: .relaxed) else { return }
        clientBox.withLock { $0?.close() }
        publisherBox.withLock { $0?.close() }
        zap?.stop()
        context.shutdown()
    }
}

/// Prometheus as the swift-metrics backend, bootstrapped once per process.
public enum MetricsSetup {
    private static let registry = Locked<PrometheusCollectorRegistry?>(nil)

    public static func bootstrap() -> PrometheusCollectorRegistry {
        registry.withLock { box in
            if let existing = box { return existing }
            let created = PrometheusCollectorRegistry()
            MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: created))
            box = created
            return created
        }
    }
}
