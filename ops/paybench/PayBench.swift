import ArgumentParser
import Foundation
import Histogram
import WiPayBus
import WiPayRuntime
import ZeroMQ

@main
struct PayBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "paybench",
        abstract: "Load generators for WiPay, driving the services over their public interfaces.",
        subcommands: [LedgerBench.self, E2EBench.self, CurveKeysCommand.self, CryptoFloorCommand.self])
}

struct LedgerBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ledger",
        abstract: "Post payments to the ledger over the bus and report transfers/s and latency.",
        discussion: """
            Expects wallets bw-0 … bw-(N-1) (PIN 1234, well funded) and merchants bm-0 … bm-(M-1), all in
            --currency, as ops/scripts/bench-ledger.sh seeds them. Mixes: `hot` sends 80% of payments to
            10 merchants, `uniform` spreads them evenly. Without --rate it runs flat out with --concurrency
            callers; with --rate it sends at that fixed rate (open loop: latency counts from the intended
            send time, so a stall is not hidden). With --batch N (flat out only) each caller sends N transfers
            in one `transfer.post.batch`, as the payment-router does; each transfer's latency is its call's.
            """)

    @Option(help: "Host of the bus broker. [env WIPAY_BUS_HOST]") var busHost: String?
    @Option(help: "First port of the bus broker. [env WIPAY_BUS_PORT]") var busPort: String?
    @Option(help: "Number of seeded wallets.") var wallets = 10_000
    @Option(help: "Number of seeded merchants.") var merchants = 1_000
    @Option(help: "hot or uniform.") var mix = "hot"
    @Option(help: "Seconds to run.") var duration = 15
    @Option(help: "Concurrent callers when running flat out.") var concurrency = 1024
    @Option(help: "Fixed rate in transfers per second (0 = flat out).") var rate = 0
    @Option(help: "Transfers per bus message when running flat out (1 = transfer.post, more = transfer.post.batch).")
    var batch = 1
    @Option(help: "Currency of the seeded accounts.") var currency = "CNY"
    @Option(help: "Prefix of transfer ids (make it unique per run).") var prefix = "bench-\(unixMillis())"
    @Option(help: "Seed of the random mix.") var seed: UInt64 = 42
    @Flag(help: "Print one JSON object.") var json = false

    func validate() throws {
        guard wallets >= 1, merchants >= 10 || mix == "uniform", merchants >= 1 else {
            throw ValidationError("need at least 1 wallet and 10 merchants for the hot mix")
        }
        guard mix == "hot" || mix == "uniform" else { throw ValidationError("--mix is hot or uniform") }
        guard (1...3600).contains(duration), (1...100_000).contains(concurrency), (0...1_000_000).contains(rate) else {
            throw ValidationError("duration 1...3600 s, concurrency 1...100000, rate 0...1000000")
        }
        guard (1...TransferPostBatch.maxCount).contains(batch), batch == 1 || rate == 0 else {
            throw ValidationError("--batch is 1...\(TransferPostBatch.maxCount), and more than 1 only flat out (no --rate)")
        }
    }

    struct Tally: Sendable {
        var histogram = Histogram<UInt64>(highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: .three)
        var statuses: [String: Int] = [:]
        var errors = 0
        mutating func add(_ other: Tally) {
            histogram.add(other.histogram)
            for (k, v) in other.statuses { statuses[k, default: 0] += v }
            errors += other.errors
        }
    }

    func makeTransfer(_ n: Int, rng: inout SplitMix64) -> TransferPost {
        let wallet = Int(rng.next() % UInt64(wallets))
        let merchant: Int
        if mix == "hot" && rng.next() % 100 < 80 {
            merchant = Int(rng.next() % 10)
        } else {
            merchant = Int(rng.next() % UInt64(merchants))
        }
        let id = "\(prefix)-\(n)"
        return TransferPost(
            transferId: id, kind: .payment, debitAccountId: "bw-\(wallet)", creditAccountId: "bm-\(merchant)",
            amountMinor: Int64(1 + rng.next() % 1000), currency: currency, paymentRequestId: id, pin: "1234")
    }

    /// One transfer over the bus, retried by the client with the same id for up to 20 s.
    static func post(_ post: TransferPost, client: BusClient) async -> Result<BusMessage, BusCallError> {
        do {
            return .success(try await client.send(
                service: "ledger", type: .transferPost, body: post.encoded(), requestId: post.transferId,
                attemptTimeout: .seconds(5), totalTimeout: .seconds(20)))
        } catch {
            return .failure(error)
        }
    }

    /// Many transfers in one `transfer.post.batch`, retried like `post`. One status per transfer, in order.
    static func post(batch posts: [TransferPost], client: BusClient) async -> Result<[Status], BusCallError> {
        do {
            let reply = try await client.send(
                service: "ledger", type: .transferPostBatch, body: TransferPostBatch(transfers: posts).encoded(),
                requestId: posts[0].transferId, attemptTimeout: .seconds(5), totalTimeout: .seconds(20))
            guard reply.envelope.status.isSuccess, let results = try? TransferPostResults.decode(reply.body) else {
                return .success(posts.map { _ in reply.envelope.status })
            }
            return .success(results.outcomes.map(\.status))
        } catch {
            return .failure(error)
        }
    }

    static func record(_ tally: inout Tally, _ reply: Result<[Status], BusCallError>, micros: UInt64) {
        switch reply {
        case .success(let statuses):
            for status in statuses {
                tally.statuses[status.description, default: 0] += 1
                if status.isSuccess { _ = tally.histogram.record(max(1, micros)) }
            }
        case .failure:
            tally.errors += 1
        }
    }

    static func record(_ tally: inout Tally, _ reply: Result<BusMessage, BusCallError>, micros: UInt64) {
        switch reply {
        case .success(let message):
            tally.statuses[message.envelope.status.description, default: 0] += 1
            if message.envelope.status.isSuccess { _ = tally.histogram.record(max(1, micros)) }
        case .failure:
            tally.errors += 1
        }
    }

    func run() async throws {
        var values = ConfigValues()
        if let busHost { values.flags[.busHost] = busHost }
        if let busPort { values.flags[.busPort] = busPort }
        let endpoints = BusEndpoints(host: values.string(.busHost), basePort: try values.int(.busPort, range: 1...65532))
        let context = try ZMQContext(ioThreads: 1)
        let client = try BusClient(context: context, frontend: endpoints.frontend, sender: "paybench/\(getpid())")
        defer { client.close() }

        let start = ContinuousClock.now
        let end = start + .seconds(duration)
        var total = Tally()
        if rate == 0 {
            total = await withTaskGroup(of: Tally.self) { group in
                for worker in 0..<concurrency {
                    group.addTask { [self] in
                        var tally = Tally()
                        var rng = SplitMix64(seed: seed &+ UInt64(worker) &* 7919)
                        var n = worker
                        while ContinuousClock.now < end {
                            var posts: [TransferPost] = []
                            for _ in 0..<batch {
                                posts.append(makeTransfer(n, rng: &rng))
                                n += concurrency
                            }
                            let sent = ContinuousClock.now
                            if batch == 1 {
                                let reply = await Self.post(posts[0], client: client)
                                Self.record(&tally, reply, micros: UInt64((ContinuousClock.now - sent) / .microseconds(1)))
                            } else {
                                let reply = await Self.post(batch: posts, client: client)
                                Self.record(&tally, reply, micros: UInt64((ContinuousClock.now - sent) / .microseconds(1)))
                            }
                        }
                        return tally
                    }
                }
                var sum = Tally()
                for await tally in group { sum.add(tally) }
                return sum
            }
        } else {
            let interval = Duration.nanoseconds(1_000_000_000 / Int64(rate))
            // Children return one small sample each (a histogram per request would cost more than the request).
            typealias Sample = (reply: Result<BusMessage, BusCallError>, micros: UInt64)
            total = await withTaskGroup(of: Sample.self) { group in
                var tally = Tally()
                var rng = SplitMix64(seed: seed)
                var n = 0
                var next = start
                // Open loop: wake every millisecond and send every request whose time has come (a
                // per-request sleep cannot keep up with sub-millisecond intervals).
                while next < end {
                    let now = ContinuousClock.now
                    while next <= now && next < end {
                        let post = makeTransfer(n, rng: &rng)
                        n += 1
                        let intended = next
                        next += interval
                        group.addTask {
                            let reply = await Self.post(post, client: client)
                            return (reply, UInt64((ContinuousClock.now - intended) / .microseconds(1)))
                        }
                    }
                    try? await Task.sleep(for: .milliseconds(1))
                }
                for await sample in group { Self.record(&tally, sample.reply, micros: sample.micros) }
                return tally
            }
        }
        let elapsed = Double((ContinuousClock.now - start) / .milliseconds(1)) / 1000
        let posted = Int(total.histogram.totalCount)
        let h = total.histogram
        let ms = { (p: Double) in Double(h.valueAtPercentile(p)) / 1000 }
        if json {
            let object: [String: Any] = [
                "mix": mix, "wallets": wallets, "merchants": merchants, "rate_target": rate, "concurrency": concurrency,
                "batch": batch,
                "seconds": elapsed, "posted": posted, "transfers_per_second": Double(posted) / elapsed,
                "latency_ms": ["p50": ms(50), "p90": ms(90), "p99": ms(99), "p99_9": ms(99.9), "max": Double(h.max) / 1000],
                "statuses": total.statuses, "errors": total.errors,
            ]
            if let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]) {
                print(String(decoding: data, as: UTF8.self))
            }
        } else {
            print(String(
                format: "mix=%@ wallets=%d merchants=%d %@: %d posted in %.1f s = %.0f transfers/s; latency ms p50 %.2f p90 %.2f p99 %.2f p99.9 %.2f max %.2f; statuses %@; errors %d",
                mix, wallets, merchants,
                rate == 0 ? "flat out (\(concurrency) callers\(batch > 1 ? " × \(batch) per message" : ""))" : "at \(rate)/s",
                posted, elapsed,
                Double(posted) / elapsed, ms(50), ms(90), ms(99), ms(99.9), Double(h.max) / 1000,
                total.statuses.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ","), total.errors))
        }
    }
}
