// The ledger's overlap: batch N+1 is read and decided while batch N commits, on top of what N leaves.
// First the two halves of a batch driven by hand on two real connections (what the batch thread does),
// then the whole engine under a burst, overlap on and off.

import Foundation
@testable import LedgerService
import Postgres
import Testing
import WiPayBus

@Suite("Ledger overlap on PostgreSQL", .timeLimit(.minutes(2)), .enabled(if: TSEnv.hasDatabase, "set WIPAY_TEST_DATABASE_URL to run"))
struct LedgerOverlapTests {
    typealias F = TSFixture

    /// A ledger with merchant m1 and the wallets funded as given, and two connections of the test's own.
    static func withTwoConnections(
        wallets: [(String, Int64)], _ body: @escaping @Sendable (TSLedgerEnv, PGConnection, PGConnection) throws -> Void
    ) async throws {
        try await withTSLedger { (env: TSLedgerEnv) async throws -> Void in
            await LedgerDatabaseTests.setUp(env, wallets: wallets)
            let conninfo = env.db.conninfo
            try await TSBlocking.run {
                let first = try PGConnection(conninfo: conninfo)
                let second = try PGConnection(conninfo: conninfo)
                try body(env, first, second)
            }
        }
    }

    static func outcome(_ reply: BusReply?) -> TSOutcome? { reply.map(TSOutcome.init) }

    @Test func theNextBatchIsDecidedOnWhatTheOneOnTheWireLeaves() async throws {
        try await Self.withTwoConnections(wallets: [("w1", 1000)]) { env, first, second in
            let engine = env.ledger.engine
            let n = try engine.send([F.pay("p-1", from: "w1", to: "m1", 300)], db: first, over: nil)
            #expect(n.pending != nil && first.isAwaitingAnswers)
            #expect(n.overlay.accounts["w1"]?.balance == 700 && n.overlay.accounts["m1"]?.balance == 300)
            // Decided before N is known to have committed: from 700, not from the 1000 the database may still show.
            let next = try engine.send(
                [F.pay("p-2", from: "w1", to: "m1", 600), F.pay("p-3", from: "w1", to: "m1", 200)], db: second, over: n.overlay)
            let nReplies = try engine.complete(n)
            let nextReplies = try engine.complete(next)
            #expect(Self.outcome(nReplies.first)?.result?.debitBalance == 700)
            #expect(Self.outcome(nextReplies.first)?.result?.debitBalance == 100)
            #expect(Self.outcome(nextReplies.last) == TSOutcome(status: .declined, code: "insufficient_funds"))
            #expect(!first.isAwaitingAnswers && !second.isAwaitingAnswers && !first.inTransaction && !second.inTransaction)
        }
    }

    @Test func aBatchDecidedOnAStateThatNeverCommittedChangesNothing() async throws {
        try await Self.withTwoConnections(wallets: [("w1", 1000)]) { env, first, _ in
            let engine = env.ledger.engine
            // As if a batch spending 900 of w1 had been on the wire and then rolled back.
            let read = try first.query("SELECT debits, credits, encode(pin_hash, 'hex') FROM ledger.accounts WHERE id = 'w1'")
            #expect(read.int64(0, 0) == 0 && read.int64(0, 1) == 1000)
            var assumed = Overlay()
            assumed.accounts["w1"] = AccountRow(
                id: "w1", kind: .wallet, currency: "USD", debits: 900, credits: 1000,
                pinHash: read.string(0, 2).flatMap(Hex.decode), pinFailures: 0, locked: false)
            let pay = F.pay("p-stale", from: "w1", to: "m1", 500)
            let sent = try engine.send([pay], db: first, over: assumed)
            #expect(Self.outcome(sent.replies[0]) == TSOutcome(status: .declined, code: "insufficient_funds"))
            do {
                _ = try engine.complete(sent)
                Issue.record("a batch decided on a state that never committed was accepted")
            } catch let error as PGError {
                #expect(error.sqlState == LedgerSchema.staleDecisionState, "\(error)")
            }
            // Nothing of it was applied or kept (the decline above was never stored), no lock is left...
            #expect(!first.inTransaction)
            #expect(try first.query("SELECT count(*) FROM ledger.failed_transfers WHERE id = 'p-stale'").int64(0, 0) == 0)
            #expect(try first.query("SELECT credits - debits FROM ledger.accounts WHERE id = 'w1'").int64(0, 0) == 1000)
            // ...and done again the plain way, it is what it should have been.
            let again = try engine.write([pay], db: first)
            #expect(Self.outcome(again.first)?.result?.debitBalance == 500)
        }
    }

    @Test func whatTheBatchOnTheWireHoldsWaitsForItsCommit() {
        var overlay = Overlay()
        overlay.transferIds = ["p-1"]
        overlay.requests = ["req-p-1"]
        #expect(overlay.allows([F.pay("p-2", from: "w1", to: "m1", 1)]))
        #expect(!overlay.allows([F.pay("p-1", from: "w1", to: "m1", 1)]), "a retry of an id on the wire")
        #expect(!overlay.allows([F.pay("p-9", from: "w2", to: "m1", 1, request: "req-p-1")]), "a request it pays")
        #expect(!overlay.allows([F.refund("rf-1", of: "p-0", from: "m1", to: "w1", 1)]), "a refund")
        #expect(overlay.allows([F.fund("f-1", to: "w1", 5)]))
    }

    @Test(arguments: [true, false])
    func aBurstOnOneMerchantKeepsOneSerialOrder(overlap: Bool) async throws {
        let batch = BatchSettings(maxBatch: 64, maxWait: .zero, overlap: overlap)
        try await withTSLedger(batch: batch) { (env: TSLedgerEnv) async throws -> Void in
            let walletCount = 40
            let start: Int64 = 5_000
            await LedgerDatabaseTests.setUp(env, wallets: (0..<walletCount).map { ("w\($0)", start) })
            let before = env.ledger.engine.counts
            // Some wallets run dry on the way, so declines depend on the order the batches decided in.
            let posts = (0..<1500).map { i in
                F.pay("burst-\(i)", from: "w\(i % walletCount)", to: "m1", Int64(50 + (i * 7919) % 300))
            }
            let outcomes = await env.postConcurrently(posts).map(TSOutcome.init)
            let counts = env.ledger.engine.counts
            #expect(outcomes.allSatisfy { $0.status == 200 || $0.code == "insufficient_funds" }, "\(outcomes.filter { $0.status != 200 }.prefix(3))")
            #expect(outcomes.contains { $0.code == "insufficient_funds" } && outcomes.contains { $0.status == 200 })
            if overlap {
                #expect(counts.overlapped > before.overlapped, "no batch was decided while another committed: \(counts)")
            } else {
                #expect(counts.overlapped == before.overlapped)
            }
            let balances = try await env.db.balances()
            let paid = zip(posts, outcomes).filter { $0.1.status == 200 }.map(\.0)
            #expect(balances["m1"] == paid.reduce(0) { $0 + $1.amountMinor })
            for w in 0..<walletCount {
                let spent = paid.filter { $0.debitAccountId == "w\(w)" }.reduce(0) { $0 + $1.amountMinor }
                #expect(balances["w\(w)"] == start - spent)
            }
            LedgerDatabaseTests.expectSerialBalances(
                posts: paid, outcomes: outcomes.filter { $0.status == 200 },
                start: ["m1": 0].merging((0..<walletCount).map { ("w\($0)", start) }, uniquingKeysWith: { a, _ in a }))
            // A decline is stored only when it was decided on a state that committed.
            let declined = Set(zip(posts, outcomes).filter { $0.1.status != 200 }.map(\.0.transferId))
            let stored = try await env.db.transferIds(table: "failed_transfers")
            #expect(Set(stored.keys.filter { $0.hasPrefix("burst-") }) == declined)
            print("ledger burst, overlap \(overlap): \(counts.batches - before.batches) batches, \(counts.overlapped - before.overlapped) overlapped, \(counts.redone - before.redone) redone")
            await env.expectReconciled()
        }
    }
}
