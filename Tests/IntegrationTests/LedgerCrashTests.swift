// `kill -9` of the ledger process while it posts: nothing answered as posted is lost, nothing is
// half-applied, and the callers' retries (same ids) reach the restarted ledger and finish.
// Uses the real `bus` and `ledger` executables built next to the test executable.

import Foundation
import LedgerService
import Postgres
import Testing
import WiPayBus
import ZeroMQ

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

@Suite("Ledger crash (kill -9)", .timeLimit(.minutes(2)), .enabled(if: TSEnv.hasDatabase, "set WIPAY_TEST_DATABASE_URL to run"))
struct LedgerCrashTests {
    typealias F = TSFixture

    /// The bus and one ledger process at a time, on a fresh database.
    final class Stack: Sendable {
        let products: URL
        let db: TSDatabase
        let basePort: Int
        let bus: TSChild
        let ledgers = TSLocked<[TSChild]>([])
        let context: ZMQContext
        let client: BusClient

        init(products: URL, db: TSDatabase) throws {
            guard let base = TSFreePorts.consecutive(4) else { throw TSFailure("no four free consecutive ports") }
            self.products = products
            self.db = db
            self.basePort = base
            self.bus = try TSChild(
                name: "bus", executable: products.appendingPathComponent("bus"),
                environment: ["WIPAY_BUS_PORT": "\(base)", "WIPAY_LOG_FORMAT": "text", "WIPAY_HEARTBEAT_MS": "200"])
            self.context = try ZMQContext()
            self.client = try BusClient(
                context: context, frontend: "tcp://127.0.0.1:\(base)", sender: "test/ledger-crash", logger: tsQuietLogger)
        }

        var ledgerEnvironment: [String: String] {
            [
                "WIPAY_BUS_PORT": "\(basePort)", "WIPAY_DATABASE_URL": db.conninfo,
                "WIPAY_PIN_SECRET": "crash-test-pin-secret-0123456789abcdef", "WIPAY_HEARTBEAT_MS": "200",
                "WIPAY_LOG_FORMAT": "text",
            ]
        }

        @discardableResult
        func startLedger() throws -> TSChild {
            let ledger = try TSChild(
                name: "ledger", executable: products.appendingPathComponent("ledger"), environment: ledgerEnvironment)
            ledgers.withLock { $0.append(ledger) }
            return ledger
        }

        /// Waits until a ledger answers through the bus (404 for an unknown account is an answer).
        func waitForLedger(timeout: Duration) async -> Bool {
            await tsWait(timeout: timeout, interval: .milliseconds(50)) {
                let reply = try? await self.client.send(
                    service: "ledger", type: .accountShow, body: AccountRef(accountId: "probe").encoded(),
                    attemptTimeout: .milliseconds(300), totalTimeout: .milliseconds(600))
                return reply?.envelope.status == .notFound
            }
        }

        func post(_ post: TransferPost, totalTimeout: Duration = .seconds(30)) async -> TSOutcome? {
            do {
                let reply = try await client.send(
                    service: "ledger", type: .transferPost, body: post.encoded(), requestId: "rq-\(post.transferId)",
                    attemptTimeout: .milliseconds(500), totalTimeout: totalTimeout)
                return TSOutcome(reply)
            } catch {
                return nil
            }
        }

        func open(_ open: AccountOpen) async -> Status? {
            try? await client.send(
                service: "ledger", type: .accountOpen, body: open.encoded(), attemptTimeout: .milliseconds(500),
                totalTimeout: .seconds(10)
            ).envelope.status
        }

        /// Kills every process (by pid) and closes the client; drops the database unless `keep`.
        func tearDown(keepLogs: Bool) async {
            for ledger in ledgers.value { await ledger.killNow() }
            await bus.stop(grace: .seconds(2))
            client.close()
            context.shutdown()
            await db.drop()
            if keepLogs {
                print("ledger crash test logs: \(([bus] + ledgers.value).map(\.logPath).joined(separator: " "))")
            } else {
                bus.removeLog()
                for ledger in ledgers.value { ledger.removeLog() }
            }
        }
    }

    @Test(.timeLimit(.minutes(2)))
    func killNineMidBatchLosesNothingAnswered() async throws {
        guard let products = TSProducts.directory() else {
            Issue.record("no folder with the built `bus` and `ledger` executables above the test executable")
            return
        }
        let db = try await TSDatabase.create(prefix: "ledgercrash")
        let stack: Stack
        do {
            stack = try Stack(products: products, db: db)
        } catch {
            await db.drop()
            throw error
        }
        var failed = true
        do {
            try await run(stack)
            failed = false
        } catch {
            Issue.record("crash test stopped: \(error)")
        }
        await stack.tearDown(keepLogs: failed)
    }

    func run(_ stack: Stack) async throws {
        let first = try stack.startLedger()
        guard await stack.waitForLedger(timeout: .seconds(20)) else {
            throw TSFailure("the ledger did not answer within 20 s; log: \(first.log.suffix(2000))")
        }

        // Accounts and money.
        let walletCount = 100
        let merchantCount = 5
        let start: Int64 = 1_000_000
        var opens = [F.funding()] + (0..<merchantCount).map { F.merchant("m\($0)") }
        opens += (0..<walletCount).map { F.wallet("w\($0)") } + [F.wallet("poor")]
        for open in opens {
            let status = await stack.open(open)
            guard status == .ok else { throw TSFailure("opening \(open.accountId) answered \(status?.description ?? "nothing")") }
        }
        let fundings = (0..<walletCount).map { F.fund("fund-w\($0)", to: "w\($0)", start) }
        let funded = await withTaskGroup(of: TSOutcome?.self) { group in
            for post in fundings { group.addTask { await stack.post(post) } }
            var out: [TSOutcome?] = []
            for await outcome in group { out.append(outcome) }
            return out
        }
        guard funded.allSatisfy({ $0?.status == 200 }) else { throw TSFailure("funding failed: \(funded.prefix(3))") }

        // Thousands of transfers at once; the ledger dies when about 30% are answered.
        let count = 3000
        var posts: [TransferPost] = []
        for i in 0..<count {
            let merchant = "m\(i % merchantCount)"
            if i % 20 == 7 {  // from a wallet with no money: always declined
                posts.append(F.pay("crash-\(i)", from: "poor", to: merchant, Int64(1 + i % 50)))
            } else {
                posts.append(F.pay("crash-\(i)", from: "w\(i % walletCount)", to: merchant, Int64(1 + i % 97)))
            }
        }
        let answered = TSLocked(0)
        let killedAt = TSLocked<Int?>(nil)
        let killedInTransaction = TSLocked(false)
        let clock = ContinuousClock.now
        let outcomes: [TSOutcome?] = await withTaskGroup(of: (Int, TSOutcome?).self) { group in
            group.addTask {
                // The killer: waits (bounded) for ~30% answered, kill -9, then a new ledger.
                _ = await tsWait(timeout: .seconds(20), interval: .milliseconds(1)) { answered.value >= count * 3 / 10 }
                // Better still: while the ledger's batch transaction is open.
                let open = await tsWait(timeout: .seconds(2), interval: .milliseconds(1)) {
                    let rows = try? await stack.db.query(
                        """
                        SELECT count(*) FROM pg_stat_activity
                        WHERE datname = current_database() AND pid <> pg_backend_pid() AND xact_start IS NOT NULL
                        """)
                    return (rows?.int64(0, 0) ?? 0) > 0
                }
                killedInTransaction.withLock { $0 = open }
                killedAt.withLock { $0 = answered.value }
                await first.killNow()
                _ = try? stack.startLedger()
                return (-1, nil)
            }
            for (index, post) in posts.enumerated() {
                group.addTask {
                    let outcome = await stack.post(post)
                    answered.withLock { $0 += 1 }
                    return (index, outcome)
                }
            }
            var out = [TSOutcome?](repeating: nil, count: count)
            for await (index, outcome) in group where index >= 0 { out[index] = outcome }
            return out
        }
        let elapsed = ContinuousClock.now - clock
        #expect(!first.isRunning, "the first ledger was not killed")
        #expect(stack.ledgers.value.count == 2, "no second ledger was started")

        // Every call finished, with the answer its transfer deserves.
        var postedIds: Set<String> = []
        var exists = 0
        for (post, outcome) in zip(posts, outcomes) {
            guard let outcome else {
                Issue.record("\(post.transferId) got no answer within 30 s")
                continue
            }
            if post.debitAccountId == "poor" {
                #expect(outcome == TSOutcome(status: .declined, code: "insufficient_funds"), "\(post.transferId): \(outcome)")
            } else {
                #expect(outcome.isPosted, "\(post.transferId): \(outcome)")
                if outcome.status == 208 { exists += 1 }
            }
            if outcome.isPosted { postedIds.insert(post.transferId) }
        }

        // The database: every transfer answered as posted is there once; nothing else; books balance.
        let inDB = try await stack.db.transferIds().filter { $0.key.hasPrefix("crash-") }
        #expect(inDB.values.allSatisfy { $0 == 1 })
        let missing = postedIds.subtracting(inDB.keys)
        #expect(missing.isEmpty, "answered as posted but not in the database: \(missing.sorted().prefix(10))")
        let unanswered = Set(inDB.keys).subtracting(postedIds)
        #expect(unanswered.isEmpty, "in the database but not answered as posted: \(unanswered.sorted().prefix(10))")
        let balances = try await stack.db.balances()
        for w in 0..<walletCount {
            let spent = posts.filter { $0.debitAccountId == "w\(w)" && inDB[$0.transferId] != nil }.reduce(0) { $0 + $1.amountMinor }
            #expect(balances["w\(w)"] == start - spent, "w\(w)")
        }
        for m in 0..<merchantCount {
            let got = posts.filter { $0.creditAccountId == "m\(m)" && inDB[$0.transferId] != nil }.reduce(0) { $0 + $1.amountMinor }
            #expect(balances["m\(m)"] == got, "m\(m)")
        }
        #expect(balances["poor"] == 0)
        #expect(balances["funding-USD"] == -start * Int64(walletCount))
        let report = try await stack.client.call(
            service: "ledger", type: .reconcile, Empty(), as: ReconcileReport.self, attemptTimeout: .seconds(2),
            totalTimeout: .seconds(10)
        ).1
        for check in report.checks where !check.ok { Issue.record("reconcile \(check.name): \(check.offending.prefix(5))") }
        #expect(report.checks.count >= 6)

        // Every id once more with the same fields: 208 with the stored result, or the same decline.
        let stored = try await stack.db.query(
            """
            SELECT id, debit_balance_after, credit_balance_after, (extract(epoch FROM posted_at) * 1000)::bigint
            FROM ledger.transfers WHERE id LIKE 'crash-%'
            """)
        var results: [String: TransferResult] = [:]
        for row in stored.rows {
            guard let id = row[0] else { continue }
            results[id] = TransferResult(
                transferId: id, postedAtMillis: Int64(row[3] ?? "") ?? -1, debitBalance: Int64(row[1] ?? "") ?? -1,
                creditBalance: Int64(row[2] ?? "") ?? -1)
        }
        let resent: [TSOutcome?] = await withTaskGroup(of: (Int, TSOutcome?).self) { group in
            for (index, post) in posts.enumerated() {
                group.addTask { (index, await stack.post(post, totalTimeout: .seconds(15))) }
            }
            var out = [TSOutcome?](repeating: nil, count: count)
            for await (index, outcome) in group { out[index] = outcome }
            return out
        }
        for (index, post) in posts.enumerated() {
            let again = resent[index]
            if post.debitAccountId == "poor" {
                #expect(again == TSOutcome(status: .declined, code: "insufficient_funds"), "\(post.transferId): \(String(describing: again))")
            } else {
                #expect(again == TSOutcome(status: .exists, result: results[post.transferId]), "\(post.transferId): \(String(describing: again))")
            }
        }
        // The first answers of posted transfers agree with what is stored (200 and 208 alike).
        for (post, outcome) in zip(posts, outcomes) {
            guard let outcome, outcome.isPosted else { continue }
            #expect(outcome.result == results[post.transferId], "\(post.transferId): \(outcome)")
        }

        let batches = try await stack.db.batchSizes()
        let restarts = first.log.components(separatedBy: "ledger batch failed").count - 1
        print(
            "ledger crash: \(count) transfers in \(elapsed); killed at \(killedAt.value ?? -1) answered, "
                + "with a batch transaction open: \(killedInTransaction.value); "
                + "\(exists) first answers were 208 (an earlier attempt had posted it: timed out, or lost in the crash); "
                + "\(batches.count) transactions with transfers, largest \(batches.prefix(5)); "
                + "batch retries logged by the first ledger: \(restarts)")
    }
}
