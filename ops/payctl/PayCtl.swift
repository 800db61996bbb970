import ArgumentParser
import Foundation
import WiPayBus
import WiPayRuntime
import ZeroMQ

/// Options every payctl command shares: where the bus is, and JSON output.
struct BusOptions: ParsableArguments {
    @Option(help: "Host of the bus broker. [env WIPAY_BUS_HOST, default 127.0.0.1]") var busHost: String?
    @Option(help: "First port of the bus broker. [env WIPAY_BUS_PORT, default 5550]") var busPort: String?
    @Option(help: "Folder of CurveZMQ keys; payctl uses ops.key. [env WIPAY_CURVE_KEYS_DIR; empty = no CURVE]")
    var curveKeysDir: String?
    @Flag(help: "Print one JSON object on stdout.") var json = false

    var values: ConfigValues {
        var values = ConfigValues()
        if let busHost { values.flags[.busHost] = busHost }
        if let busPort { values.flags[.busPort] = busPort }
        if let curveKeysDir { values.flags[.curveKeysDir] = curveKeysDir }
        return values
    }

    func endpoints() throws -> BusEndpoints {
        let values = self.values
        let port = try values.int(.busPort, range: 1...65532)
        return BusEndpoints(host: values.string(.busHost), basePort: port)
    }

    /// CURVE with the ops key pair (`WIPAY_CURVE_KEY_NAME` picks another) when a keys folder is set.
    func security() throws -> BusSecurity {
        let values = self.values
        let dir = values.string(.curveKeysDir)
        guard !dir.isEmpty else { return .none }
        let name = values.string(.curveKeyName).isEmpty ? "ops" : values.string(.curveKeyName)
        do {
            return .curve(keys: try BusKeys.loadPair(dir: dir, name: name), brokerPublicKey: try BusKeys.loadPublic(dir: dir, name: "bus"))
        } catch {
            throw Failure("\(error)")
        }
    }

    /// The public key of a service's control socket (its own key pair), when CURVE is on.
    func controlServerKey(service: String) throws -> String? {
        let dir = values.string(.curveKeysDir)
        guard !dir.isEmpty else { return nil }
        do { return try BusKeys.loadPublic(dir: dir, name: service) } catch { throw Failure("\(error)") }
    }
}

/// A clear message on stderr and a non-zero exit.
struct Failure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

func printJSON(_ object: Any) {
    guard let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes]) else { return }
    print(String(decoding: data, as: UTF8.self))
}

@main
struct PayCtl: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "payctl",
        abstract: "Operate a WiPay network over its ZeroMQ bus.",
        discussion: """
            Every command takes --json (one JSON object on stdout) and exits non-zero with a clear message \
            on error. The bus is found through WIPAY_BUS_HOST / WIPAY_BUS_PORT (or --bus-host/--bus-port).
            """,
        subcommands: [
            Status.self, Drain.self, Merchant.self, Terminal.self, Wallet.self, Account.self, Payment.self, Tail.self,
            Reconcile.self, Keys.self, Console.self,
        ])
}

/// Collects heartbeats (`hb.*`) for a little over two intervals: every live instance says who it is.
func collectInstances(_ bus: BusOptions, listen: Duration) async throws -> [InstanceStatus] {
    let context = try ZMQContext()
    defer { context.shutdown() }
    let subscriber = try BusSubscriber(
        context: context, endpoint: try bus.endpoints().subscribe, topics: [Topic.heartbeatPrefix],
        security: try bus.security())
    defer { subscriber.close() }
    var latest: [String: InstanceStatus] = [:]
    let deadline = ContinuousClock.now + listen
    await withTaskGroup(of: Void.self) { group in
        group.addTask {
            try? await Task.sleep(until: deadline)
            subscriber.close()
        }
        for await event in subscriber.events {
            guard event.envelope.type == .heartbeat, let status = try? InstanceStatus.decode(event.body) else { continue }
            latest["\(status.service)/\(status.instance)"] = status
            if ContinuousClock.now >= deadline { break }
        }
        group.cancelAll()
    }
    return latest.values.sorted { ($0.service, $0.instance) < ($1.service, $1.instance) }
}

func formatUptime(_ startedAtMillis: Int64) -> String {
    let seconds = max(0, (unixMillis() - startedAtMillis) / 1000)
    if seconds < 120 { return "\(seconds)s" }
    if seconds < 7200 { return "\(seconds / 60)m" }
    return "\(seconds / 3600)h\((seconds % 3600) / 60)m"
}

struct Status: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List every running instance of every service.",
        discussion: """
            Listens to the instances' heartbeats on the bus for --listen-ms (default 2200, a little over two \
            heartbeat intervals). An instance that stopped heartbeating is not listed. Exit code 1 when no \
            instance is heard at all (the bus is down, or refuses this CURVE key) or when an expected service \
            has no healthy instance (see --expect).
            """)

    @OptionGroup var bus: BusOptions
    @Option(help: "How long to listen for heartbeats, in milliseconds (200...60000).") var listenMs = 2200
    @Option(
        parsing: .upToNextOption,
        help: "Services that must each have a healthy instance; exit 1 otherwise (e.g. --expect ledger notifier).")
    var expect: [String] = []

    func run() async throws {
        guard (200...60_000).contains(listenMs) else { throw ValidationError("--listen-ms must be 200...60000") }
        let instances = try await collectInstances(bus, listen: .milliseconds(listenMs))
        let missing = expect.filter { name in !instances.contains { $0.service == name && $0.healthy } }
        if bus.json {
            printJSON([
                "instances": instances.map { s in
                    [
                        "service": s.service, "instance": s.instance, "version": s.version, "host": s.host,
                        "pid": s.pid, "uptime_seconds": max(0, (unixMillis() - s.startedAtMillis) / 1000),
                        "healthy": s.healthy, "draining": s.draining, "in_flight": s.inFlight,
                        "handled_total": s.handledTotal, "recent_per_second": s.recentPerSecond,
                        "control_endpoint": s.controlEndpoint, "http_endpoint": s.httpEndpoint, "detail": s.detail,
                    ] as [String: Any]
                },
                "missing": missing,
            ])
        } else if !instances.isEmpty {
            let header = ["SERVICE", "INSTANCE", "VERSION", "UPTIME", "HEALTH", "IN-FLIGHT", "RATE/S", "DETAIL"]
            let rows = instances.map { s in
                [
                    s.service, s.instance, s.version, formatUptime(s.startedAtMillis),
                    s.draining ? "draining" : (s.healthy ? "healthy" : "UNHEALTHY"), "\(s.inFlight)",
                    "\(s.recentPerSecond)", s.detail,
                ]
            }
            let widths = header.indices.map { i in ([header] + rows).map { $0[i].count }.max() ?? 0 }
            for row in [header] + rows {
                print(row.indices.map { i in row[i].padding(toLength: widths[i], withPad: " ", startingAt: 0) }
                    .joined(separator: "  ").trimmingCharacters(in: .whitespaces))
            }
        }
        if !missing.isEmpty {
            throw Failure("no healthy instance of: \(missing.joined(separator: ", "))")
        }
        if instances.isEmpty {
            let hint = bus.values.string(.curveKeysDir).isEmpty
                ? " (if the bus runs with CURVE, set WIPAY_CURVE_KEYS_DIR)" : " (or the bus refused this CURVE key)"
            throw Failure("no instance heard within \(listenMs) ms: the bus is not running or not reachable\(hint)")
        }
    }
}

struct Drain: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Make one instance stop taking new work, finish what it has, and exit.",
        discussion: """
            SERVICE alone works when exactly one instance of it runs; otherwise name the INSTANCE \
            (see `payctl status`). With --wait, returns once the instance has stopped heartbeating.
            """)

    @OptionGroup var bus: BusOptions
    @Argument(help: "The service, e.g. ledger.") var service: String
    @Argument(help: "The instance id, as `payctl status` shows it.") var instance: String?
    @Flag(help: "Wait until the instance has exited (stopped heartbeating), up to 60 s.") var wait = false

    func run() async throws {
        _ = try bus.endpoints()  // fail early on a bad --bus-port
        let instances = try await collectInstances(bus, listen: .milliseconds(2200))
            .filter { $0.service == service }
        let target: InstanceStatus
        if let instance {
            guard let found = instances.first(where: { $0.instance == instance }) else {
                throw Failure("no running instance \(instance) of \(service)")
            }
            target = found
        } else {
            guard instances.count == 1, let only = instances.first else {
                if instances.isEmpty { throw Failure("no running instance of \(service)") }
                throw Failure(
                    "\(instances.count) instances of \(service) run; name one: "
                        + instances.map(\.instance).joined(separator: ", "))
            }
            target = only
        }
        let drained = try sendDrain(bus, to: target)
        var exited: Bool? = nil
        if wait {
            exited = false
            let end = ContinuousClock.now + .seconds(60)
            while ContinuousClock.now < end {
                let live = try await collectInstances(bus, listen: .milliseconds(1500))
                if !live.contains(where: { $0.instance == target.instance && !$0.draining }) && !live.contains(where: { $0.instance == target.instance }) {
                    exited = true
                    break
                }
            }
        }
        if bus.json {
            var object: [String: Any] = [
                "service": target.service, "instance": target.instance, "accepted": drained.accepted,
                "in_flight": drained.inFlight,
            ]
            if let exited { object["exited"] = exited }
            printJSON(object)
        } else {
            print("\(target.service) \(target.instance): draining, \(drained.inFlight) request(s) in flight"
                + (exited == true ? "; exited" : exited == false ? "; still running after 60 s" : ""))
        }
        if exited == false { throw Failure("\(target.instance) did not exit within 60 s") }
    }
}

/// Asks one instance, on its control socket, to drain; its answer (blocks up to 5 s).
func sendDrain(_ bus: BusOptions, to target: InstanceStatus) throws -> DrainReply {
    let context = try ZMQContext()
    defer { context.shutdown() }
    let socket = try ZMQSocket(context, .dealer)
    defer { socket.close() }
    if case .curve(let keys, _) = try bus.security(), let serverKey = try bus.controlServerKey(service: target.service) {
        try socket.makeCurveClient(keys, serverPublicKey: serverKey)
    }
    try socket.connect(target.controlEndpoint)
    let envelope = Envelope(
        kind: .request, type: .controlDrain, requestId: "payctl-drain-\(unixMillis())", sender: "payctl",
        sentAtMillis: unixMillis())
    try socket.send([[], envelope.encoded(), Empty().encoded()], dontWait: false)
    try socket.setReceiveTimeout(.seconds(5))
    guard let frames = try socket.receive(dontWait: false), let reply = try? BusMessage.parse(frames) else {
        throw Failure("no answer from \(target.instance) at \(target.controlEndpoint)")
    }
    guard reply.envelope.status.isSuccess, let drained = try? DrainReply.decode(reply.body) else {
        let error = (try? ErrorBody.decode(reply.body))?.message ?? "status \(reply.envelope.status)"
        throw Failure("drain refused: \(error)")
    }
    return drained
}
