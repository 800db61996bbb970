import Logging
import ServiceLifecycle
import WiPayBus
import WiPayRuntime
import ZeroMQ

/// The `bus` service: the broker that lets every stage scale with no configuration edits (callers and
/// workers connect to it; it binds), plus the runtime's heartbeat and control socket.
public enum BusBrokerService {
    /// The broker's settings; with `WIPAY_CURVE_KEYS_DIR` it is a CURVE server with `bus.key` that admits the
    /// keys in `authorized/`.
    public static func settings(_ config: RuntimeConfig, logger: Logger) throws -> BrokerSettings {
        let port = Int(config.values.string(.busPort)) ?? 5550
        var settings = BrokerSettings(
            endpoints: BusEndpoints(host: config.busBindHost, basePort: port),
            workerExpiry: config.heartbeatInterval * 3, heartbeatInterval: config.heartbeatInterval)
        if !config.curveKeysDir.isEmpty {
            settings.curve = try BusKeys.loadPair(dir: config.curveKeysDir, name: "bus")
            let authorized = BusKeys.authorized(dir: config.curveKeysDir)
            for problem in authorized.problems { logger.warning("authorized key skipped", metadata: ["problem": "\(problem)"]) }
            guard !authorized.keys.isEmpty else {
                throw BusKeys.KeyError("no authorized keys in \(config.curveKeysDir)/authorized: nobody could connect")
            }
            settings.authorizedKeys = authorized.keys
            logger.info("bus CURVE on", metadata: ["bus.authorized": "\(authorized.keys.values.sorted().joined(separator: ","))"])
        }
        return settings
    }

    /// Starts the broker, then runs until SIGTERM/SIGINT or `payctl drain bus`.
    public static func run(config: RuntimeConfig) async throws {
        let runtime = try Runtime(config: config)
        let broker = try Broker(settings: settings(config, logger: runtime.logger), logger: runtime.logger)
        try broker.start()
        try await runtime.run(services: [BrokerLifetime(broker: broker)], healthCheck: {
            let stats = broker.stats
            let workers = stats.workers.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
            let queued = stats.queued.values.reduce(0, +)
            return (true, "workers: \(workers.isEmpty ? "none" : workers); queued \(queued); routed \(stats.routed)")
        })
    }
}

/// Keeps the broker up for the life of the service group; it stops last (it is listed first).
struct BrokerLifetime: Service {
    let broker: Broker

    func run() async throws {
        try? await gracefulShutdown()
        broker.stop()
    }
}
