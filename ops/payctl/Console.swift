import ArgumentParser
import Foundation
import HTTPTypes
import Hummingbird
import Synchronization
import WiPayBus
import WiPayPages
import WiPayRuntime
import ZeroMQ

/// `payctl console`: the operations console, a local page over this bus (docs/pages.md).
struct Console: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve the operations console: a page on loopback showing the network, over this bus.",
        discussion: """
            Open http://HOST:PORT/console/ (default http://127.0.0.1:8095/console/). It shows every instance \
            with its health, in-flight work and rate (refreshed every 2 s), payments per second and outcomes \
            by code over the last minute (counted from the bus's outcome events since the console started), a \
            payment's trace by request id, the reconcile result, and drains an instance after its name is typed \
            as confirmation. The console holds the ops CURVE key (WIPAY_CURVE_KEYS_DIR) itself: the page never \
            sees it. It listens on loopback only and answers only requests addressed to it (Host) from its own \
            page (a header a cross-site page cannot send); reach it from another machine through an SSH tunnel. \
            Ctrl-C stops it.
            """)

    @OptionGroup var bus: BusOptions
    @Option(help: "The loopback address to listen on (127.0.0.1, ::1 or localhost).") var host = "127.0.0.1"
    @Option(help: "The port to listen on (1-65535).") var port = 8095

    func run() async throws {
        let loopback = host == "localhost" || host == "::1" || host.split(separator: ".").first == "127"
        guard loopback, host.utf8.count <= 64 else {
            throw ValidationError("the console listens on loopback only (it can drain instances): use 127.0.0.1, ::1 or localhost")
        }
        guard (1...65535).contains(port) else { throw ValidationError("--port must be 1-65535") }
        let endpoints = try bus.endpoints()
        let security = try bus.security()
        let context = try ZMQContext()
        defer { context.shutdown() }
        let monitor = try ConsoleMonitor(context: context, endpoint: endpoints.subscribe, security: security)
        let handlers = ConsoleHandlers(bus: bus, monitor: monitor)
        let hostText = host.contains(":") ? "[\(host)]" : host
        let router = Router()
        router.add(middleware: ConsoleGuard(allowedAuthorities: Self.authorities(host: host, port: port)))
        router.get("/") { _, _ in Response(status: .seeOther, headers: [.location: "/console/"]) }
        router.addPages([.commonCSS, .commonJS, .console, .consoleJS])
        handlers.add(to: router)
        let app = Application(
            router: router, configuration: .init(address: .hostname(host, port: port), serverName: nil),
            onServerRunning: { _ in
                print("WiPay operations console on http://\(hostText):\(port)/console/ (Ctrl-C stops it)")
                fflush(nil)
            })
        let watcher = Task { await monitor.run() }
        defer {
            monitor.stop()
            watcher.cancel()
        }
        try await app.runService()
    }

    static func authorities(host: String, port: Int) -> Set<String> {
        var names: Set<String> = [host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"]
        if host == "127.0.0.1" || host == "localhost" {
            names.insert("127.0.0.1:\(port)")
            names.insert("localhost:\(port)")
        }
        return names
    }
}

/// Refuses requests not addressed to the console (a DNS-rebinding page uses another Host) and API calls
/// without the console's header or from another origin: a cross-site page can make a browser send a simple
/// POST, but not one with a custom header unless the console answers a CORS preflight, which it never does.
struct ConsoleGuard<Context: RequestContext>: RouterMiddleware {
    let allowedAuthorities: Set<String>
    static var headerName: HTTPField.Name { HTTPField.Name("X-WiPay-Console")! }

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let authority = (request.head.authority ?? "").lowercased()
        guard allowedAuthorities.contains(authority) else {
            return ConsoleJSON.error(.misdirectedRequest, "host_not_allowed", "this console answers only at \(allowedAuthorities.sorted().joined(separator: " or "))")
        }
        if request.uri.path.hasPrefix("/api/") {
            guard request.headers[Self.headerName] == "1" else {
                return ConsoleJSON.error(.forbidden, "console_header_missing", "API calls come from the console page (X-WiPay-Console: 1)")
            }
            if let origin = request.headers[.origin], origin.lowercased() != "http://\(authority)" {
                return ConsoleJSON.error(.forbidden, "origin_not_allowed", "calls from another origin are refused")
            }
        }
        return try await next(request, context)
    }
}

enum ConsoleJSON {
    static func response(_ object: Any, status: HTTPResponse.Status = .ok) -> Response {
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data("{}".utf8)
        var headers = BrowserPages.securityHeaders
        headers[.contentType] = "application/json"
        headers[.cacheControl] = "no-store"
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: Array(data))))
    }

    static func error(_ status: HTTPResponse.Status, _ code: String, _ message: String) -> Response {
        response(["error": ["code": code, "message": message]], status: status)
    }
}

/// What the console hears on the bus: the latest heartbeat of every instance, and the outcome events
/// counted per second (de-duplicated by their outbox sequence) for the last two minutes.
final class ConsoleMonitor: Sendable {
    struct Heard: Sendable {
        var status: InstanceStatus
        var at: ContinuousClock.Instant
    }

    struct Second: Sendable {
        var at: Int64
        var payments = 0
        var declined = 0
        var outcomes: [String: Int] = [:]
        /// The outbox sequences counted in this second: a redelivered outcome is counted once.
        var seqs = Set<Int64>()
    }

    struct State: Sendable {
        var instances: [String: Heard] = [:]
        /// The last two minutes, oldest first: what is counted, and what a duplicate is checked against.
        var seconds: [Second] = []
    }

    private let subscriber: BusSubscriber
    private let state = Mutex(State())

    init(context: ZMQContext, endpoint: String, security: BusSecurity) throws {
        subscriber = try BusSubscriber(
            context: context, endpoint: endpoint, topics: [Topic.heartbeatPrefix, Topic.outcomePrefix], security: security)
    }

    func run() async {
        for await event in subscriber.events { note(event) }
    }

    func stop() { subscriber.close() }

    func note(_ event: BusEvent) {
        switch event.envelope.type {
        case .heartbeat:
            guard let status = try? InstanceStatus.decode(event.body) else { return }
            state.withLock { $0.instances["\(status.service)/\(status.instance)"] = Heard(status: status, at: .now) }
        case .outcomePublished:
            guard let outcome = try? OutcomePublished.decode(event.body) else { return }
            let (code, payment, declined) = Self.classify(outcome)
            let now = Int64(Date().timeIntervalSince1970)
            state.withLock { s in
                guard !s.seconds.contains(where: { $0.seqs.contains(outcome.outboxSeq) }) else { return }
                if s.seconds.last?.at != now {
                    s.seconds.removeAll { $0.at < now - 120 }
                    s.seconds.append(Second(at: now))
                }
                let last = s.seconds.count - 1
                s.seconds[last].payments += payment ? 1 : 0
                s.seconds[last].declined += declined ? 1 : 0
                s.seconds[last].outcomes[code, default: 0] += 1
                s.seconds[last].seqs.insert(outcome.outboxSeq)
            }
        default:
            break
        }
    }

    /// The outcome's label, and whether it is a payment or a declined attempt.
    static func classify(_ o: OutcomePublished) -> (String, Bool, Bool) {
        switch o.eventType {
        case "payment.succeeded": ("succeeded", true, false)
        case "payment.attempt_declined": ("attempt declined: \(o.errorCode ?? "?")", false, true)
        case "payment.declined": ("declined: \(o.errorCode ?? "?")", false, true)
        case "payment.expired": ("expired", false, false)
        case "payment.canceled": ("canceled", false, false)
        default: (o.eventType, false, false)
        }
    }

    /// Every instance heard in the last 10 s, by service and instance; one silent for over 3 s is `stale`.
    func instances() -> [(status: InstanceStatus, stale: Bool)] {
        let now = ContinuousClock.now
        let heard: [Heard] = state.withLock { s in
            s.instances = s.instances.filter { now - $0.value.at < .seconds(10) }
            return Array(s.instances.values)
        }
        return heard.sorted { ($0.status.service, $0.status.instance) < ($1.status.service, $1.status.instance) }
            .map { (status: $0.status, stale: now - $0.at > .seconds(3)) }
    }

    func live(service: String, instance: String) -> InstanceStatus? {
        instances().first { $0.status.service == service && $0.status.instance == instance && !$0.stale }?.status
    }

    /// The last 60 seconds (zeros where nothing happened), oldest first, and the outcomes summed over them.
    func rates() -> (seconds: [Second], outcomes: [String: Int]) {
        let now = Int64(Date().timeIntervalSince1970)
        let recorded = state.withLock { $0.seconds }
        var byTime: [Int64: Second] = [:]
        for second in recorded { byTime[second.at] = second }
        let seconds = (now - 59...now).map { byTime[$0] ?? Second(at: $0) }
        var outcomes: [String: Int] = [:]
        for second in seconds { outcomes.merge(second.outcomes, uniquingKeysWith: +) }
        return (seconds, outcomes)
    }
}

/// The console's JSON API.
struct ConsoleHandlers: Sendable {
    let bus: BusOptions
    let monitor: ConsoleMonitor

    func add(to router: Router<BasicRequestContext>) {
        router.get("api/instances") { _, _ in instances() }
        router.get("api/rates") { _, _ in rates() }
        router.get("api/payments/:id") { _, context in await trace(context.parameters.get("id") ?? "") }
        router.post("api/reconcile") { _, _ in await reconcile() }
        router.post("api/drain") { request, _ in await drain(request) }
    }

    func instances() -> Response {
        ConsoleJSON.response([
            "instances": monitor.instances().map { s, stale in
                [
                    "service": s.service, "instance": s.instance, "version": s.version, "host": s.host,
                    "uptime_seconds": max(0, (unixMillis() - s.startedAtMillis) / 1000), "healthy": s.healthy,
                    "draining": s.draining, "in_flight": s.inFlight, "recent_per_second": s.recentPerSecond,
                    "handled_total": s.handledTotal, "detail": s.detail, "stale": stale,
                ] as [String: Any]
            }
        ])
    }

    func rates() -> Response {
        let (seconds, outcomes) = monitor.rates()
        return ConsoleJSON.response([
            "seconds": seconds.map { ["at": $0.at, "payments": $0.payments, "declined": $0.declined] },
            "outcomes": outcomes,
        ])
    }

    func trace(_ id: String) async -> Response {
        guard (1...64).contains(id.utf8.count), id.utf8.allSatisfy({ ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x5F })
        else { return ConsoleJSON.error(.badRequest, "invalid_request_id", "a request id looks like pr_ followed by letters and digits") }
        do {
            let (_, trace) = try await withBus(bus) { client in
                try await client.call(
                    service: "payment-router", type: .paymentTrace, TraceQuery(requestId: id), as: PaymentTrace.self)
            }
            var object = requestJSON(trace.request)
            object["steps"] = trace.steps.sorted { $0.atMillis < $1.atMillis }.map { step in
                ["stage": step.stage, "event": step.event, "at": rfc3339(millis: step.atMillis), "detail": step.detail]
            }
            return ConsoleJSON.response(object)
        } catch {
            let text = "\(error)"
            if text.hasPrefix("request_not_found") { return ConsoleJSON.error(.notFound, "request_not_found", "no payment request \(id)") }
            return ConsoleJSON.error(.badGateway, "bus_error", text)
        }
    }

    func reconcile() async -> Response {
        do {
            let (_, report) = try await withLedger(bus) { client in
                try await client.call(
                    service: "ledger", type: .reconcile, Empty(), as: ReconcileReport.self, attemptTimeout: .seconds(60),
                    totalTimeout: .seconds(120))
            }
            return ConsoleJSON.response([
                "ok": report.ok,
                "checks": report.checks.map { ["name": $0.name, "ok": $0.ok, "offending": $0.offending] as [String: Any] },
            ])
        } catch {
            return ConsoleJSON.error(.badGateway, "bus_error", "\(error)")
        }
    }

    func drain(_ request: Request) async -> Response {
        guard let buffer = try? await request.body.collect(upTo: 4096),
            let object = try? JSONSerialization.jsonObject(with: Data(buffer.readableBytesView)) as? [String: Any],
            let service = object["service"] as? String, let instance = object["instance"] as? String
        else { return ConsoleJSON.error(.badRequest, "invalid_body", "send {\"service\", \"instance\", \"confirm\"}") }
        guard object["confirm"] as? String == instance else {
            return ConsoleJSON.error(.badRequest, "not_confirmed", "confirm must repeat the instance name exactly")
        }
        guard let target = monitor.live(service: service, instance: instance) else {
            return ConsoleJSON.error(.notFound, "instance_not_found", "no running instance \(instance) of \(service)")
        }
        let bus = self.bus
        do {
            let drained = try await Task.detached { try sendDrain(bus, to: target) }.value
            return ConsoleJSON.response(["service": service, "instance": instance, "accepted": drained.accepted, "in_flight": drained.inFlight])
        } catch {
            return ConsoleJSON.error(.badGateway, "drain_failed", "\(error)")
        }
    }
}
