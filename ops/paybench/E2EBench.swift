import ArgumentParser
import Foundation
import Histogram
import WiPayBus
import WiPayClient
import WiPayPayload
import WiPayRuntime
import ZeroMQ

struct E2EBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "e2e",
        abstract: "Complete payments through the public HTTP APIs: create, verify, instruct, both notices.",
        discussion: """
            Setup (not timed): onboards --merchants merchants with --terminals each and --wallets funded wallets
            over the bus, enrolls one device per wallet at the phone-gateway, fetches the payload keys and opens
            one event stream per terminal and per device. Load: a terminal creates a payment request, the phone
            verifies its payload and sends the signed instruction with the PIN, and the payment counts once
            BOTH the terminal's and the device's payment.succeeded notice arrived. A payment whose notices are
            not both there 10 s after the instruction was answered is lost. Without --rate it runs flat out
            with --concurrency payers, each with its own terminal, phone and keep-alive connections; with
            --rate it starts payments at that fixed rate (open loop: the end-to-end latency counts from the
            scheduled start). The bus is secured with CURVE when WIPAY_CURVE_KEYS_DIR is set (keys `ops` and
            `bus` of that folder). Start the gateways it drives with their rate limits off
            (WIPAY_RATE_TERMINAL=off WIPAY_RATE_DEVICE=off WIPAY_RATE_ADDRESS=off, as ops/scripts/bench-e2e.sh
            does): it drives each terminal and device far faster than a counter, all from one address.
            """)

    @Option(help: "Host of the bus broker. [env WIPAY_BUS_HOST]") var busHost: String?
    @Option(help: "First port of the bus broker. [env WIPAY_BUS_PORT]") var busPort: String?
    @Option(help: "Folder of CurveZMQ keys; empty = no CURVE. [env WIPAY_CURVE_KEYS_DIR]") var curveKeysDir: String?
    @Option(help: "The pos-gateway's base URL.") var posUrl = "http://127.0.0.1:8080"
    @Option(help: "The phone-gateway's base URL.") var phoneUrl = "http://127.0.0.1:8090"
    @Option(help: "Merchants to onboard.") var merchants = 8
    @Option(help: "Terminals per merchant.") var terminals = 4
    @Option(help: "Wallets (one enrolled phone each).") var wallets = 64
    @Option(help: "Concurrent payers when running flat out.") var concurrency = 32
    @Option(help: "Fixed rate in payments per second (0 = flat out).") var rate = 0
    @Option(help: "Seconds measured.") var duration = 10
    @Option(help: "Seconds of load before the measurement (not counted).") var warmup = 2
    @Option(help: "A file that gets the line `measure` when the measured window begins and `end` when it ends (so a script can read the services' CPU over exactly that window).")
    var windowFile: String?
    @Option(help: "HTTP clients per gateway in --rate mode (each keeps its connections alive).") var connections = 64
    @Option(help: "Currency of every account.") var currency = "CNY"
    @Option(help: "Label of the onboarded names and ids (make it unique per run).") var label = "bench-\(unixMillis())"
    @Flag(help: "Print one JSON object.") var json = false

    func validate() throws {
        guard (1...1_000).contains(merchants), (1...100).contains(terminals), (1...20_000).contains(wallets) else {
            throw ValidationError("merchants 1...1000, terminals 1...100, wallets 1...20000")
        }
        guard (1...10_000).contains(concurrency), (0...100_000).contains(rate), (1...3600).contains(duration),
            (0...600).contains(warmup), (1...4096).contains(connections)
        else {
            throw ValidationError("concurrency 1...10000, rate 0...100000, duration 1...3600, warmup 0...600, connections 1...4096")
        }
        guard Currency.isKnown(currency.uppercased()) else { throw ValidationError("unknown currency \(currency)") }
        guard label.count <= 40, label.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-") }) else {
            throw ValidationError("--label is at most 40 ASCII letters, digits and '-'")
        }
        for url in [posUrl, phoneUrl] {
            guard (try? HTTPClient(baseURL: url)) != nil else { throw ValidationError("not a plain http URL: \(url)") }
        }
    }

    static let pin = "2580"
    static let noticeTimeout = Duration.seconds(10)

    func busSecurity(_ values: ConfigValues) throws -> BusSecurity {
        let dir = values.string(.curveKeysDir)
        guard !dir.isEmpty else { return .none }
        do {
            return .curve(keys: try BusKeys.loadPair(dir: dir, name: "ops"), brokerPublicKey: try BusKeys.loadPublic(dir: dir, name: "bus"))
        } catch {
            throw ValidationError("CURVE keys: \(error.description)")
        }
    }

    func run() async throws {
        var values = ConfigValues()
        if let busHost { values.flags[.busHost] = busHost }
        if let busPort { values.flags[.busPort] = busPort }
        if let curveKeysDir { values.flags[.curveKeysDir] = curveKeysDir }
        let endpoints = BusEndpoints(host: values.string(.busHost), basePort: try values.int(.busPort, range: 1...65532))
        let security = try busSecurity(values)
        let context = try ZMQContext(ioThreads: 1)
        let bus = try BusClient(context: context, frontend: endpoints.frontend, sender: "paybench/\(getpid())", security: security)
        defer { bus.close() }

        // --- setup (untimed)
        let setupStart = ContinuousClock.now
        let world = try await E2ESetup(
            bus: bus, phoneURL: phoneUrl, currency: currency.uppercased(), merchants: merchants, terminalsPerMerchant: terminals,
            wallets: wallets, pin: Self.pin, fundingMinor: 1_000_000_000_000, label: label
        ).run()
        let board = E2ENoticeBoard()
        let streams = try await openStreams(world: world, board: board)
        defer { for stream in streams { stream.stop() } }
        let setupSeconds = Double((ContinuousClock.now - setupStart) / .milliseconds(1)) / 1000
        if !json {
            print(
                "setup: \(merchants) merchants, \(world.terminals.count) terminals, \(world.phones.count) wallets and devices, "
                    + "\(streams.count) event streams in \(String(format: "%.1f", setupSeconds)) s")
        }

        let sweeper = Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(50))
                board.sweep(now: .now)
            }
        }
        defer { sweeper.cancel() }

        // --- load
        let start = ContinuousClock.now
        let measureFrom = start + .seconds(warmup)
        let end = measureFrom + .seconds(duration)
        let payer = E2EPayer(world: world, board: board, currency: currency.uppercased(), pin: Self.pin, label: label)
        let marker = windowFile.map { file in
            Task {
                _ = FileManager.default.createFile(atPath: file, contents: nil)
                try? await Task.sleep(until: measureFrom, clock: .continuous)
                Self.append("measure\n", to: file)
                try? await Task.sleep(until: end, clock: .continuous)
                Self.append("end\n", to: file)
            }
        }
        defer { marker?.cancel() }
        var total = E2ETally()
        if rate == 0 {
            let count = concurrency
            total = await withTaskGroup(of: E2ETally.self) { group in
                for worker in 0..<count {
                    group.addTask {
                        var tally = E2ETally()
                        guard let pos = try? HTTPClient(baseURL: posUrl, timeouts: .init(connect: .seconds(5), response: .seconds(10))),
                            let phone = try? HTTPClient(baseURL: phoneUrl, timeouts: .init(connect: .seconds(5), response: .seconds(10)))
                        else { return tally }
                        defer {
                            pos.close()
                            phone.close()
                        }
                        var n = worker
                        while ContinuousClock.now < end {
                            let begun = ContinuousClock.now
                            let sample = await payer.pay(n, scheduled: begun, pos: pos, phone: phone)
                            if begun >= measureFrom { tally.record(sample) }
                            n += count
                        }
                        return tally
                    }
                }
                var sum = E2ETally()
                for await tally in group { sum.add(tally) }
                return sum
            }
        } else {
            let pool = (0..<connections).compactMap { _ in
                (try? HTTPClient(baseURL: posUrl, timeouts: .init(connect: .seconds(5), response: .seconds(10))),
                 try? HTTPClient(baseURL: phoneUrl, timeouts: .init(connect: .seconds(5), response: .seconds(10))))
            }.compactMap { pair -> (HTTPClient, HTTPClient)? in
                guard let pos = pair.0, let phone = pair.1 else { return nil }
                return (pos, phone)
            }
            defer { for (pos, phone) in pool { pos.close(); phone.close() } }
            let interval = Duration.nanoseconds(1_000_000_000 / Int64(rate))
            // Each payment records itself; the discarding group keeps no results around.
            let collected = Locked(E2ETally())
            await withDiscardingTaskGroup { group in
                var n = 0
                var next = start
                // Open loop: wake every millisecond and start every payment whose time has come.
                while next < end {
                    let now = ContinuousClock.now
                    while next <= now && next < end {
                        let scheduled = next
                        let (pos, phone) = pool[n % pool.count]
                        let number = n
                        group.addTask {
                            let sample = await payer.pay(number, scheduled: scheduled, pos: pos, phone: phone)
                            if scheduled >= measureFrom { collected.withLock { $0.record(sample) } }
                        }
                        n += 1
                        next += interval
                    }
                    try? await Task.sleep(for: .milliseconds(1))
                }
            }
            total = collected.withLock { $0 }
        }
        let counters = board.counters
        total.unmatchedNotices = counters.unmatched
        total.duplicateNotices = counters.duplicates
        total.streamReconnects = streams.reduce(0) { $0 + $1.reconnects }
        report(total, seconds: Double(duration))
        if total.lost > 0 { throw ExitCode(2) }
    }

    /// One stream per terminal and per device, all open before the load starts.
    func openStreams(world: World, board: E2ENoticeBoard) async throws -> [E2EStream] {
        let pos = try HTTPClient(baseURL: posUrl, timeouts: .init(connect: .seconds(5), response: .seconds(20)))
        let phone = try HTTPClient(baseURL: phoneUrl, timeouts: .init(connect: .seconds(5), response: .seconds(20)))
        var streams: [E2EStream] = []
        for terminal in world.terminals {
            let stream = E2EStream(side: .terminal)
            let headers: HTTPHeaders = ["Authorization": "Bearer \(terminal.key)"]
            try await stream.start(board: board) { lastId in
                try await pos.events(path: "/v1/terminal/events", headers: headers, lastEventId: lastId, idleTimeout: .seconds(60))
            }
            streams.append(stream)
        }
        for device in world.phones {
            let stream = E2EStream(side: .device)
            let identity = device.identity
            try await stream.start(board: board) { lastId in
                try await phone.signedEvents(identity, path: "/v1/devices/me/events", lastEventId: lastId, idleTimeout: .seconds(60))
            }
            streams.append(stream)
        }
        return streams
    }

    typealias World = E2EWorld

    static func append(_ line: String, to path: String) {
        guard let handle = FileHandle(forWritingAtPath: path) else { return }
        defer { try? handle.close() }
        _ = try? handle.seekToEnd()
        try? handle.write(contentsOf: Data(line.utf8))
    }

    func report(_ t: E2ETally, seconds: Double) {
        let mode = rate == 0 ? "flat out (\(concurrency) payers)" : "at \(rate)/s"
        let perSecond = Double(t.completed) / seconds
        let curve = !(curveKeysDir ?? ProcessInfo.processInfo.environment["WIPAY_CURVE_KEYS_DIR"] ?? "").isEmpty
        if json {
            var latency: [String: Any] = [:]
            for (name, h) in t.named { latency[name] = E2ETally.summary(h) }
            let object: [String: Any] = [
                "mode": rate == 0 ? "flat_out" : "rate", "concurrency": concurrency, "rate_target": rate, "seconds": seconds,
                "warmup_seconds": warmup, "curve": curve, "terminals": merchants * terminals, "wallets": wallets,
                "started": t.started, "completed": t.completed, "payments_per_second": perSecond, "lost": t.lost,
                "errors": t.errors, "latency_ms": latency, "unmatched_notices": t.unmatchedNotices,
                "duplicate_notices": t.duplicateNotices, "stream_reconnects": t.streamReconnects,
                "notices_before_instruction_answer": t.early,
            ]
            if let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]) {
                print(String(decoding: data, as: UTF8.self))
            }
            return
        }
        print(
            String(
                format: "e2e %@%@: %d started, %d complete in %.0f s = %.0f payments/s; lost %d; errors %@",
                mode, curve ? ", CURVE on" : "", t.started, t.completed, seconds, perSecond, t.lost,
                t.errors.isEmpty ? "none" : t.errors.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ",")))
        print("  latency ms            p50      p90      p99    p99.9      max    count")
        for (name, h) in t.named {
            func ms(_ v: UInt64) -> String { String(format: "%8.2f", Double(v) / 1000) }
            print(
                "  \(name.padding(toLength: 18, withPad: " ", startingAt: 0))"
                    + " \(ms(h.valueAtPercentile(50))) \(ms(h.valueAtPercentile(90))) \(ms(h.valueAtPercentile(99)))"
                    + " \(ms(h.valueAtPercentile(99.9))) \(ms(h.max)) \(String(format: "%8d", h.totalCount))")
        }
        print(
            "  notices: \(t.early) terminal notices came before the instruction's answer (lag counted as 0); "
                + "unmatched \(t.unmatchedNotices), duplicates \(t.duplicateNotices), stream reconnects \(t.streamReconnects)")
    }
}

/// What one payment took.
struct E2ESample: Sendable {
    enum Outcome: Sendable {
        case complete
        case failed(String)
        case lost
    }

    var outcome: Outcome = .failed("not_started")
    var createMicros: UInt64 = 0
    var instructMicros: UInt64 = 0
    var terminalLagMicros: UInt64 = 0
    var deviceLagMicros: UInt64 = 0
    var endToEndMicros: UInt64 = 0
    var earlyNotice = false
}

struct E2ETally: Sendable {
    static func histogram() -> Histogram<UInt64> {
        Histogram<UInt64>(highestTrackableValue: 120_000_000, numberOfSignificantValueDigits: .three)
    }

    var create = histogram()
    var instruct = histogram()
    var terminalLag = histogram()
    var deviceLag = histogram()
    var endToEnd = histogram()
    var started = 0
    var completed = 0
    var lost = 0
    var early = 0
    var errors: [String: Int] = [:]
    var unmatchedNotices = 0
    var duplicateNotices = 0
    var streamReconnects = 0

    var named: [(String, Histogram<UInt64>)] {
        [("create", create), ("instruct", instruct), ("notice_terminal", terminalLag), ("notice_device", deviceLag),
         ("end_to_end", endToEnd)]
    }

    static func summary(_ h: Histogram<UInt64>) -> [String: Any] {
        func ms(_ v: UInt64) -> Double { Double(v) / 1000 }
        return [
            "p50": ms(h.valueAtPercentile(50)), "p90": ms(h.valueAtPercentile(90)), "p99": ms(h.valueAtPercentile(99)),
            "p99_9": ms(h.valueAtPercentile(99.9)), "max": ms(h.max), "count": h.totalCount,
        ]
    }

    mutating func record(_ s: E2ESample) {
        started += 1
        if s.createMicros > 0 { _ = create.record(s.createMicros) }
        if s.instructMicros > 0 { _ = instruct.record(s.instructMicros) }
        switch s.outcome {
        case .complete:
            completed += 1
            _ = terminalLag.record(max(1, s.terminalLagMicros))
            _ = deviceLag.record(max(1, s.deviceLagMicros))
            _ = endToEnd.record(max(1, s.endToEndMicros))
            if s.earlyNotice { early += 1 }
        case .lost:
            lost += 1
        case .failed(let code):
            errors[code, default: 0] += 1
        }
    }

    mutating func add(_ o: E2ETally) {
        create.add(o.create)
        instruct.add(o.instruct)
        terminalLag.add(o.terminalLag)
        deviceLag.add(o.deviceLag)
        endToEnd.add(o.endToEnd)
        started += o.started
        completed += o.completed
        lost += o.lost
        early += o.early
        for (k, v) in o.errors { errors[k, default: 0] += v }
    }
}

/// One complete payment, as a terminal and a phone do it.
struct E2EPayer: Sendable {
    let world: E2EWorld
    let board: E2ENoticeBoard
    let currency: String
    let pin: String
    let label: String

    static func micros(_ d: Duration) -> UInt64 {
        let us = d / .microseconds(1)
        return us <= 0 ? 1 : UInt64(us)
    }

    static func errorCode(_ response: HTTPResponse) -> String {
        if let code = response.apiError?.code, !code.isEmpty { return code }
        return "http_\(response.status)"
    }

    /// Payment `n`: terminal `n % T`, phone `n % W`. Latency of the whole counts from `scheduled`.
    func pay(_ n: Int, scheduled: ContinuousClock.Instant, pos: HTTPClient, phone: HTTPClient) async -> E2ESample {
        var sample = E2ESample()
        let terminal = world.terminals[n % world.terminals.count]
        let device = world.phones[n % world.phones.count]
        let amount = Int64(1 + (n &* 7919) % 1000)

        // 1. The terminal creates the request.
        let createBody: JSON = [
            "amount": .int(amount), "currency": .string(currency), "reference": .string("\(label)-\(n)"), "expires_in": 120,
        ]
        let createHeaders: HTTPHeaders = [
            "Authorization": "Bearer \(terminal.key)", "Idempotency-Key": "\(label)-c-\(n)", "Content-Type": "application/json",
        ]
        let createStart = ContinuousClock.now
        let created: HTTPResponse
        do {
            created = try await pos.send(method: "POST", path: "/v1/payment-requests", headers: createHeaders, body: createBody.bytes)
        } catch {
            sample.outcome = .failed("create_\(error.code)")
            return sample
        }
        sample.createMicros = Self.micros(.now - createStart)
        guard created.status == 201 else {
            sample.outcome = .failed("create_\(Self.errorCode(created))")
            return sample
        }
        guard let info = try? created.json(), let requestId = info["id"]?.string, let payloadText = info["payload"]?.string else {
            sample.outcome = .failed("create_malformed_answer")
            return sample
        }
        board.register(requestId)

        // 2. The phone verifies the payload offline, then instructs.
        let payload: PaymentPayload
        do {
            payload = try world.verifier.verify(payloadText, nowSeconds: unixNow())
        } catch {
            board.forget(requestId)
            sample.outcome = .failed("payload_rejected")
            return sample
        }
        guard payload.requestId == requestId, payload.amountMinor == amount, payload.currency == currency,
            payload.merchantId == terminal.merchantId
        else {
            board.forget(requestId)
            sample.outcome = .failed("payload_mismatch")
            return sample
        }
        let instructBody: JSON = ["payload": .string(payloadText), "pin": .string(pin)]
        let instructStart = ContinuousClock.now
        let instructed: HTTPResponse
        do {
            instructed = try await phone.sendSigned(
                device.identity, method: "POST", path: "/v1/payment-instructions",
                headers: ["Idempotency-Key": "\(label)-i-\(n)"], body: instructBody.bytes)
        } catch {
            board.forget(requestId)
            sample.outcome = .failed("instruct_\((error as? HTTPClientError)?.code.description ?? "signing")")
            return sample
        }
        let answered = ContinuousClock.now
        sample.instructMicros = Self.micros(answered - instructStart)
        guard instructed.status == 200 else {
            board.forget(requestId)
            sample.outcome = .failed("instruct_\(Self.errorCode(instructed))")
            return sample
        }

        // 3. Both notices.
        let arrivals = await board.wait(requestId, deadline: answered + E2EBench.noticeTimeout)
        if let other = arrivals.other {
            sample.outcome = .failed("notice_\(other)")
            return sample
        }
        guard let terminalAt = arrivals.terminal, let deviceAt = arrivals.device else {
            sample.outcome = .lost
            return sample
        }
        sample.earlyNotice = terminalAt < answered
        sample.terminalLagMicros = terminalAt > answered ? Self.micros(terminalAt - answered) : 1
        sample.deviceLagMicros = deviceAt > answered ? Self.micros(deviceAt - answered) : 1
        sample.endToEndMicros = Self.micros(max(terminalAt, deviceAt) - scheduled)
        sample.outcome = .complete
        return sample
    }
}
