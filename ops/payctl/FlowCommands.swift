import ArgumentParser
import Foundation
import WiPayBus
import WiPayRuntime
import ZeroMQ

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// RFC 3339 UTC with milliseconds, e.g. `2025-01-31T09:15:02.125Z`.
func rfc3339(millis: Int64) -> String {
    let formatter = ISO8601DateFormatter()
    formatter.timeZone = TimeZone(identifier: "UTC")
    formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
    return formatter.string(from: Date(timeIntervalSince1970: Double(millis) / 1000))
}

/// A payment request as JSON for payctl's output (the public API's field names).
func requestJSON(_ r: PaymentRequestInfo) -> [String: Any] {
    var object: [String: Any] = [
        "id": r.requestId, "status": r.status.name, "amount": r.amountMinor, "currency": r.currency,
        "reference": r.reference, "merchant": ["id": r.merchantId, "name": r.merchantName],
        "terminal_id": r.terminalId, "created_at": rfc3339(millis: r.createdAtMillis),
        "expires_at": rfc3339(millis: r.expiresAtMillis),
    ]
    if let description = r.description { object["description"] = description }
    if let paymentId = r.paymentId {
        var payment: [String: Any] = ["id": paymentId]
        if let posted = r.postedAtMillis { payment["posted_at"] = rfc3339(millis: posted) }
        if let payer = r.payerAlias { payment["payer"] = payer }
        object["payment"] = payment
    }
    return object
}

/// Prints rows as left-aligned columns.
func printTable(_ header: [String], _ rows: [[String]]) {
    let widths = header.indices.map { i in ([header] + rows).map { $0[i].count }.max() ?? 0 }
    for row in [header] + rows {
        print(row.indices.map { i in row[i].padding(toLength: widths[i], withPad: " ", startingAt: 0) }
            .joined(separator: "  ").trimmingCharacters(in: .whitespaces))
    }
}

struct Terminal: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Merchants' POS terminals.", subcommands: [Add.self])

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Issue a terminal key for a merchant.",
            discussion: """
                The key (`tk_…`) is printed once: the payment-router keeps only its SHA-256. The terminal sends \
                it as `Authorization: Bearer <key>` (pos-terminal reads it from WIPAY_TERMINAL_KEY).
                """)
        @OptionGroup var bus: BusOptions
        @Option(help: "The merchant's id (mer_…), as `payctl merchant add` printed it.") var merchant: String
        @Option(help: "A name for the terminal, e.g. \"counter 1\" (1-100 characters).") var name: String

        func run() async throws {
            try checkName(name)
            guard (1...64).contains(merchant.utf8.count) else { throw ValidationError("--merchant is a merchant id (mer_…)") }
            let (_, issued) = try await withBus(bus) { client in
                try await client.call(
                    service: "payment-router", type: .terminalAdd, TerminalAdd(merchantId: merchant, name: name),
                    as: TerminalIssued.self)
            }
            if bus.json {
                printJSON([
                    "terminal_id": issued.terminalId, "terminal_key": issued.terminalKey, "merchant_id": issued.merchantId,
                ])
            } else {
                print("terminal \(issued.terminalId) of \(issued.merchantId)")
                print("key (shown once): \(issued.terminalKey)")
            }
        }
    }
}

struct Payment: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Payment requests.", subcommands: [Show.self])

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show a payment request's state and its trace across the stages.")
        @OptionGroup var bus: BusOptions
        @Argument(help: "The payment request's id (pr_…).") var requestId: String

        func run() async throws {
            guard (1...64).contains(requestId.utf8.count) else { throw ValidationError("REQUEST_ID is a request id (pr_…)") }
            let (_, trace) = try await withBus(bus) { client in
                try await client.call(
                    service: "payment-router", type: .paymentTrace, TraceQuery(requestId: requestId), as: PaymentTrace.self)
            }
            let steps = trace.steps.sorted { $0.atMillis < $1.atMillis }
            if bus.json {
                var object = requestJSON(trace.request)
                object["steps"] = steps.map { step in
                    ["stage": step.stage, "event": step.event, "at": rfc3339(millis: step.atMillis), "detail": step.detail]
                }
                printJSON(object)
            } else {
                let r = trace.request
                print("\(r.requestId)  \(r.status.name)  \(r.amountMinor) \(r.currency)  reference \(r.reference)")
                print("merchant \(r.merchantId) (\(r.merchantName)), terminal \(r.terminalId)")
                print("created \(rfc3339(millis: r.createdAtMillis)), expires \(rfc3339(millis: r.expiresAtMillis))")
                if let paymentId = r.paymentId {
                    print("payment \(paymentId)" + (r.payerAlias.map { " by \($0)" } ?? ""))
                }
                print("")
                printTable(
                    ["AT", "STAGE", "EVENT", "DETAIL"],
                    steps.map { [rfc3339(millis: $0.atMillis), $0.stage, $0.event, $0.detail] })
            }
        }
    }
}

struct Tail: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print the live event stream, one line per event, until interrupted.",
        discussion: """
            Subscribes to the bus events: outcomes (`outcome.<request id>`) and client notices \
            (`notice.pos.<terminal>`, `notice.dev.<device>`); --heartbeats adds the instances' heartbeats.
            --topic narrows it to topics starting with a prefix (e.g. --topic outcome.pr_abc).
            """)
    @OptionGroup var bus: BusOptions
    @Option(help: "Only topics starting with this prefix (repeatable).") var topic: [String] = []
    @Flag(help: "Also print heartbeats (hb.*).") var heartbeats = false
    @Option(help: "Stop after this many events (0: until interrupted).") var count = 0
    @Option(help: "Stop after this many seconds (0: until interrupted).") var seconds = 0

    func run() async throws {
        guard count >= 0, seconds >= 0 else { throw ValidationError("--count and --seconds are 0 or more") }
        var topics = topic.isEmpty ? [Topic.outcomePrefix, Topic.noticePrefix] : topic
        if heartbeats { topics.append(Topic.heartbeatPrefix) }
        guard topics.allSatisfy({ (1...200).contains($0.utf8.count) }) else {
            throw ValidationError("a --topic prefix is 1 to 200 bytes")
        }
        let context = try ZMQContext()
        defer { context.shutdown() }
        let subscriber = try BusSubscriber(
            context: context, endpoint: try bus.endpoints().subscribe, topics: topics, security: try bus.security())
        defer { subscriber.close() }
        // Ctrl-C or SIGTERM closes the stream, so the loop below ends and the sockets close cleanly.
        let signalSources = [SIGINT, SIGTERM].map { number in
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler { subscriber.close() }
            source.resume()
            return source
        }
        defer { for source in signalSources { source.cancel() } }
        let json = bus.json
        let watcher: Task<Void, Never>? =
            seconds > 0
            ? Task {
                try? await Task.sleep(for: .seconds(seconds))
                subscriber.close()
            } : nil
        defer { watcher?.cancel() }
        var printed = 0
        for await event in subscriber.events {
            printLine(event, json: json)
            fflush(nil)  // every output stream: one line per event, at once, also into a pipe
            printed += 1
            if count > 0 && printed >= count { break }
        }
    }

    private func printLine(_ event: BusEvent, json: Bool) {
        let at = rfc3339(millis: event.envelope.sentAtMillis)
        var object: [String: Any] = ["topic": event.topic, "type": event.envelope.type.description, "at": at]
        var text = "\(event.topic)"
        switch event.envelope.type {
        case .outcomePublished:
            if let o = try? OutcomePublished.decode(event.body) {
                var fields: [String: Any] = [
                    "outbox_seq": o.outboxSeq, "event": o.eventType, "request_id": o.requestId, "status": o.status.name,
                    "amount": o.amountMinor, "currency": o.currency, "reference": o.reference,
                    "terminal_id": o.terminalId, "merchant_id": o.merchantId, "at": rfc3339(millis: o.atMillis),
                ]
                if let v = o.deviceId { fields["device_id"] = v }
                if let v = o.paymentId { fields["payment_id"] = v }
                if let v = o.refundId { fields["refund_id"] = v }
                if let v = o.errorCode { fields["error_code"] = v }
                if let v = o.merchantName { fields["merchant_name"] = v }
                if let v = o.payerAlias { fields["payer"] = v }
                object["outcome"] = fields
                text = "\(rfc3339(millis: o.atMillis))  \(o.eventType)  \(o.requestId)  \(o.status.name)  "
                    + "\(o.amountMinor) \(o.currency)  ref \(o.reference)  terminal \(o.terminalId)"
                    + (o.deviceId.map { "  device \($0)" } ?? "") + (o.paymentId.map { "  payment \($0)" } ?? "")
                    + (o.refundId.map { "  refund \($0)" } ?? "") + (o.errorCode.map { "  (\($0))" } ?? "")
            } else {
                object["undecodable"] = true
                text = "\(at)  \(event.topic)  (undecodable outcome)"
            }
        case .noticeDelivered:
            if let n = try? NoticeDelivered.decode(event.body) {
                let data = (try? JSONSerialization.jsonObject(with: Data(n.dataJSON.utf8))) ?? n.dataJSON
                object["notice"] = [
                    "recipient": n.recipient, "seq": n.seq, "event": n.eventType, "at": rfc3339(millis: n.atMillis),
                    "data": data,
                ] as [String: Any]
                text = "\(rfc3339(millis: n.atMillis))  notice  \(n.recipient)  #\(n.seq)  \(n.eventType)  \(n.dataJSON)"
            } else {
                object["undecodable"] = true
                text = "\(at)  \(event.topic)  (undecodable notice)"
            }
        case .heartbeat:
            if let s = try? InstanceStatus.decode(event.body) {
                object["heartbeat"] = [
                    "service": s.service, "instance": s.instance, "healthy": s.healthy, "draining": s.draining,
                    "in_flight": s.inFlight, "recent_per_second": s.recentPerSecond,
                ] as [String: Any]
                text = "\(at)  hb  \(s.service)/\(s.instance)  \(s.draining ? "draining" : (s.healthy ? "healthy" : "UNHEALTHY"))"
                    + "  in-flight \(s.inFlight)  \(s.recentPerSecond)/s"
            } else {
                text = "\(at)  \(event.topic)  (undecodable heartbeat)"
            }
        default:
            text = "\(at)  \(event.topic)  \(event.envelope.type.description)  \(event.body.count) bytes"
        }
        if json { printJSON(object) } else { print(text) }
    }
}
