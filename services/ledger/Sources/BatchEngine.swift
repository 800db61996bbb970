import Foundation
import Logging
import Metrics
import Postgres
import Synchronization
import WiPayBus

/// Batching settings (`WIPAY_LEDGER_BATCH_MAX`, `WIPAY_LEDGER_BATCH_WAIT_US`).
public struct BatchSettings: Sendable {
    /// At most this many transfers per database transaction.
    public var maxBatch: Int
    /// When fewer than `maxBatch / 4` transfers are waiting, wait this long once for more.
    public var maxWait: Duration
    /// Transfers waiting for a batch; past it callers get `503 overloaded` (and retry).
    public var maxQueued: Int
    /// Batch threads. Each has two connections of its own (see `overlap`); threads take the same locks in
    /// the same order, so they never deadlock.
    public var workers: Int
    /// While batch N writes and commits on one connection, batch N+1 is read and decided on the other, on
    /// top of N's outcome (docs/ledger.md, "Overlap"). Off: one batch at a time, as before.
    public var overlap: Bool

    public init(
        maxBatch: Int = 2048, maxWait: Duration = .microseconds(500), maxQueued: Int = 50_000, workers: Int = 1,
        overlap: Bool = true
    ) {
        self.maxBatch = maxBatch
        self.maxWait = maxWait
        self.maxQueued = maxQueued
        self.workers = max(1, workers)
        self.overlap = overlap
    }
}

/// Posts transfers in batches: the transfers that arrive close together are decided and written in one
/// PostgreSQL transaction — the touched accounts locked in id order and updated once each with their net
/// change, the transfers inserted in bulk, one commit with `synchronous_commit` on — and only then is
/// every caller answered. A transfer that breaks a rule fails alone; its batch goes on.
///
/// Batch N+1 is decided while batch N commits: its reads take no locks, its decisions start from what N
/// leaves (`Overlay`), and its writes begin by locking every account it read and checking that each is
/// still what the decisions assumed (`ledger.lock_unchanged`); otherwise PostgreSQL refuses the whole
/// batch and it is done again the plain way. So a batch never commits on a state that did not commit.
///
/// Each thread owns its connections (libpq blocks); callers wait on continuations, never on the thread.
public final class BatchEngine: Sendable {
    struct Job: Sendable {
        let post: TransferPost
        let reply: @Sendable (BusReply) -> Void
    }

    private let settings: BatchSettings
    private let conninfo: String
    private let pins: PinHasher
    private let logger: Logger
    private let queue = Locked<(jobs: [Job], threadsWaiting: Int, gathering: Int)>(([], 0, 0))
    /// Wakes the batch thread when it waits for work; producers signal only then (no stale counts
    /// that would make the thread spin and cut small batches).
    private let signal = DispatchSemaphore(value: 0)
    /// Wakes a batch thread that waits (at most `maxWait`) for a fuller batch as soon as a quarter of
    /// `maxBatch` is queued: the wait closes on size or on time, never longer than needed.
    private let fuller = DispatchSemaphore(value: 0)
    private let stopping = Atomic<Bool>(false)
    private let finished = DispatchSemaphore(value: 0)
    private let batchSize = Recorder(label: "wipay_ledger_batch_size")
    private let batchDuration = Timer(label: "wipay_ledger_batch_duration_seconds", preferredDisplayUnit: .seconds)
    private let queueDepth = Gauge(label: "wipay_ledger_queue_depth")
    private let outcomes = Locked<[String: Counter]>([:])
    private let overlappedBatches = Counter(label: "wipay_ledger_batches_overlapped_total")
    private let redoneBatches = Counter(label: "wipay_ledger_batches_redone_total")
    private let tally = Locked(Tally())

    /// Batches since start: all, decided while the one before committed, and done again the plain way
    /// (the state they were decided on had not committed, or changed).
    public struct Tally: Sendable, Equatable {
        public var batches = 0
        public var overlapped = 0
        public var redone = 0
    }

    public var counts: Tally { tally.withLock { $0 } }

    public init(conninfo: String, pins: PinHasher, settings: BatchSettings, logger: Logger) {
        self.conninfo = conninfo
        self.pins = pins
        self.settings = settings
        self.logger = logger
        for index in 0..<settings.workers {
            let thread = Thread { [self] in self.loop() }
            thread.name = "ledger-batch-\(index)"
            thread.start()
        }
    }

    /// Queues one transfer and waits for its answer (after the commit that holds it).
    public func post(_ post: TransferPost) async -> BusReply {
        if stopping.load(ordering: .relaxed) { return Self.stoppingReply }
        return await withCheckedContinuation { continuation in
            if enqueue([Job(post: post, reply: { continuation.resume(returning: $0) })]) == 0 {
                continuation.resume(returning: Self.overloadedReply)
            }
        }
    }

    /// Queues many transfers at once (one lock, one wake-up) and waits for all their answers, in order.
    /// What does not fit in the queue is answered `503 overloaded` (retry), the rest as `post` would.
    public func post(batch posts: [TransferPost]) async -> [BusReply] {
        guard !posts.isEmpty else { return [] }
        if stopping.load(ordering: .relaxed) { return posts.map { _ in Self.stoppingReply } }
        let collector = BatchCollector(count: posts.count)
        return await withCheckedContinuation { continuation in
            collector.onComplete { continuation.resume(returning: $0) }
            let jobs = posts.enumerated().map { index, post in Job(post: post, reply: { collector.set(index, $0) }) }
            let accepted = enqueue(jobs)
            for index in accepted..<posts.count { collector.set(index, Self.overloadedReply) }
        }
    }

    static let stoppingReply = BusReply.error(.unavailable, "ledger_stopping", "this ledger instance is stopping; retry")
    static let overloadedReply = BusReply.error(.unavailable, "overloaded", "the ledger's queue is full; retry")

    /// Appends as many of `jobs` as the queue has room for (in order) and wakes a batch thread when one
    /// waits for work, or for a fuller batch that this makes full enough. Returns how many were queued.
    private func enqueue(_ jobs: [Job]) -> Int {
        let (accepted, wake, full) = queue.withLock { queue -> (Int, Bool, Bool) in
            let accepted = min(max(0, settings.maxQueued - queue.jobs.count), jobs.count)
            guard accepted > 0 else { return (0, false, false) }
            queue.jobs.append(contentsOf: jobs.prefix(accepted))
            let wake = queue.threadsWaiting > 0
            if wake { queue.threadsWaiting -= 1 }
            let full = queue.gathering > 0 && queue.jobs.count >= max(1, settings.maxBatch / 4)
            if full { queue.gathering -= 1 }
            return (accepted, wake, full)
        }
        if wake { signal.signal() }
        if full { fuller.signal() }
        return accepted
    }

    public var queued: Int { queue.withLock { $0.jobs.count } }

    /// Answers what is queued, then stops the thread.
    public func stop() {
        guard !stopping.exchange(true, ordering: .relaxed) else { return }
        queue.withLock {
            $0.threadsWaiting = 0
            $0.gathering = 0
        }
        for _ in 0..<settings.workers { signal.signal() }
        for _ in 0..<settings.workers { finished.wait() }
    }

    // MARK: the batch thread

    /// One batch thread's own state: its two connections and the batch on the wire, if any.
    private final class Lane {
        var connections: [PGConnection?] = [nil, nil]
        var inFlight: InFlight?
        /// After a batch had to be done again, batches go the plain way until then: where another instance
        /// keeps changing the same accounts, deciding ahead would mostly be work thrown away.
        var plainUntil = ContinuousClock.now
    }

    private struct InFlight {
        let batch: SentBatch
        let jobs: [Job]
        let slot: Int
        let start: ContinuousClock.Instant
    }

    private func loop() {
        defer { finished.signal() }
        let lane = Lane()
        while true {
            let jobs = lane.inFlight == nil ? waitForJobs() : take()
            if jobs.isEmpty {
                if lane.inFlight != nil {
                    // Nothing new to decide meanwhile: answer the batch on the wire.
                    let failed = completeInFlight(lane)
                    redo(failed, lane: lane)
                } else if stopping.load(ordering: .relaxed) {
                    return
                }
                continue
            }
            queueDepth.record(queued)
            let posts = jobs.map(\.post)
            var overlay: Overlay?
            if settings.overlap, let inFlight = lane.inFlight, ContinuousClock.now >= lane.plainUntil,
                inFlight.batch.overlay.allows(posts)
            {
                overlay = inFlight.batch.overlay
            } else if lane.inFlight != nil {
                // This batch touches what the one on the wire holds (a retried id, a request it pays, a
                // refund): that one commits first.
                let failed = completeInFlight(lane)
                redo(failed, lane: lane)
            }
            let slot = lane.inFlight.map { 1 - $0.slot } ?? 0
            let start = ContinuousClock.now
            var sent: SentBatch?
            do {
                sent = try send(posts, db: try connection(lane, slot), over: overlay)
            } catch {
                failed(error, lane: lane, slot: slot, size: jobs.count)
            }
            tally.withLock {
                $0.batches += 1
                if overlay != nil, sent != nil { $0.overlapped += 1 }
            }
            if overlay != nil, sent != nil { overlappedBatches.increment() }
            // The batch before this one: answer it, or (it did not commit) settle this one too before doing
            // both again, since this one may rest on it and holds locks until it is settled.
            if let failed = completeInFlight(lane) {
                var again: [Job]? = jobs
                if let sent {
                    lane.inFlight = InFlight(batch: sent, jobs: jobs, slot: slot, start: start)
                    again = completeInFlight(lane)
                }
                redo(failed, lane: lane)
                redo(again, lane: lane)
            } else if let sent {
                lane.inFlight = InFlight(batch: sent, jobs: jobs, slot: slot, start: start)
            } else {
                redo(jobs, lane: lane)
            }
        }
    }

    /// How long a lane goes the plain way after a batch had to be done again.
    static let plainAfterRedo = Duration.seconds(1)

    /// Waits for work (as long as the thread is idle), then for company: until a quarter batch is queued, or
    /// `maxWait` at most. Empty when nothing came.
    private func waitForJobs() -> [Job] {
        let idle = queue.withLock { queue -> Bool in
            if queue.jobs.isEmpty { queue.threadsWaiting += 1 }
            return queue.jobs.isEmpty
        }
        if idle, signal.wait(timeout: .now() + .milliseconds(200)) == .timedOut {
            // Nobody woke us: take ourselves off the count (at worst another idle thread waits out its own
            // timeout once).
            queue.withLock { $0.threadsWaiting = max(0, $0.threadsWaiting - 1) }
        }
        var jobs = take()
        if !jobs.isEmpty, jobs.count < settings.maxBatch / 4, settings.maxWait > .zero, !stopping.load(ordering: .relaxed) {
            let enough = queue.withLock { queue -> Bool in
                if jobs.count + queue.jobs.count >= settings.maxBatch / 4 { return true }
                queue.gathering += 1
                return false
            }
            if !enough, fuller.wait(timeout: .now() + Self.dispatchInterval(settings.maxWait)) == .timedOut {
                queue.withLock { $0.gathering = max(0, $0.gathering - 1) }
            }
            jobs += take(limit: settings.maxBatch - jobs.count)
        }
        return jobs
    }

    /// The lane's connection in `slot`, connected (a lost one is reconnected).
    private func connection(_ lane: Lane, _ slot: Int) throws(PGError) -> PGConnection {
        if let existing = lane.connections[slot] {
            try existing.ensureConnected()
            return existing
        }
        let created = try PGConnection(conninfo: conninfo)
        lane.connections[slot] = created
        return created
    }

    /// A batch that could not be read, decided or sent: its connection is cleaned up (a transaction left
    /// open is rolled back; a lost or busy connection is dropped) and the batch is done again.
    private func failed(_ error: any Error, lane: Lane, slot: Int, size: Int) {
        if let db = lane.connections[slot] {
            if (error as? PGError)?.isConnectionError == true || db.isAwaitingAnswers {
                lane.connections[slot] = nil
            } else {
                db.rollbackIfNeeded()
            }
        }
        if let error = error as? PGError, error.sqlState == LedgerSchema.staleDecisionState {
            tally.withLock { $0.redone += 1 }
            redoneBatches.increment()
            lane.plainUntil = ContinuousClock.now + Self.plainAfterRedo
            logger.debug("ledger batch decided on a state that did not commit; doing it again", metadata: ["batch.size": "\(size)"])
        } else {
            logger.warning("ledger batch failed; doing it again", metadata: ["batch.size": "\(size)", "error": "\(error)"])
        }
    }

    /// Reads the answers of the batch on the wire and answers its callers. Returns its jobs when it did not
    /// commit (the caller does them again), nil otherwise.
    private func completeInFlight(_ lane: Lane) -> [Job]? {
        guard let inFlight = lane.inFlight else { return nil }
        lane.inFlight = nil
        let replies: [BusReply]
        do {
            replies = try complete(inFlight.batch)
        } catch {
            failed(error, lane: lane, slot: inFlight.slot, size: inFlight.jobs.count)
            return inFlight.jobs
        }
        answer(inFlight.jobs, replies, since: inFlight.start)
        return nil
    }

    /// Does `jobs` again the plain way, one batch at a time (after settling the batch on the wire, whose
    /// locks it might otherwise wait for), and answers them.
    private func redo(_ jobs: [Job]?, lane: Lane) {
        guard let jobs, !jobs.isEmpty else { return }
        if let failed = completeInFlight(lane) { redo(failed, lane: lane) }
        let start = ContinuousClock.now
        let replies = process(jobs, connection: &lane.connections[0])
        answer(jobs, replies, since: start)
    }

    private func answer(_ jobs: [Job], _ replies: [BusReply], since start: ContinuousClock.Instant) {
        batchSize.record(jobs.count)
        let elapsed = ContinuousClock.now - start
        batchDuration.recordNanoseconds(
            elapsed.components.seconds * 1_000_000_000 + elapsed.components.attoseconds / 1_000_000_000)
        for (job, reply) in zip(jobs, replies) {
            count(reply)
            job.reply(reply)
        }
    }

    static func dispatchInterval(_ duration: Duration) -> DispatchTimeInterval {
        let (seconds, attoseconds) = duration.components
        return .microseconds(Int(clamping: seconds * 1_000_000 + attoseconds / 1_000_000_000_000))
    }

    private func take(limit: Int? = nil) -> [Job] {
        queue.withLock { queue in
            let n = min(queue.jobs.count, limit ?? settings.maxBatch)
            let taken = Array(queue.jobs.prefix(n))
            queue.jobs.removeFirst(n)
            return taken
        }
    }

    private func count(_ reply: BusReply) {
        let key = reply.status.description
        let counter = outcomes.withLock { counters in
            if let existing = counters[key] { return existing }
            let created = Counter(label: "wipay_ledger_transfers_total", dimensions: [("status", key)])
            counters[key] = created
            return created
        }
        counter.increment()
    }

    /// Decides and writes one batch; retries the whole batch on a conflict with another ledger instance
    /// (a unique violation means someone committed the same id or request first: the retry sees it), and
    /// falls back to one transfer per transaction when a batch keeps failing, so one bad transfer cannot
    /// stall the rest.
    private func process(_ jobs: [Job], connection: inout PGConnection?) -> [BusReply] {
        for attempt in 1...3 {
            do {
                if connection == nil { connection = try PGConnection(conninfo: conninfo) }
                guard let db = connection else { continue }
                try db.ensureConnected()
                do {
                    return try self.write(jobs.map(\.post), db: db)
                } catch {
                    db.rollbackIfNeeded()
                    throw error
                }
            } catch let error as PGError {
                if error.isConnectionError { connection = nil }
                logger.warning(
                    "ledger batch failed; retrying",
                    metadata: ["attempt": "\(attempt)", "batch.size": "\(jobs.count)", "error": "\(error)"])
                if !error.isConnectionError && !error.isUniqueViolation && !error.isSerializationFailure { break }
                Thread.sleep(forTimeInterval: 0.01 * Double(attempt))
            } catch {
                logger.error("ledger batch failed", metadata: ["error": "\(error)"])
                break
            }
        }
        guard jobs.count > 1 else {
            return [.error(.unavailable, "ledger_unavailable", "the ledger could not post this transfer now; retry")]
        }
        return jobs.flatMap { process([$0], connection: &connection) }
    }

    /// One batch inside one transaction, the plain way. Returns one reply per transfer, in order.
    func write(_ posts: [TransferPost], db: PGConnection) throws -> [BusReply] {
        try complete(try send(posts, db: db, over: nil))
    }

    /// Reads and decides one batch on `db`, and sends its writes and commit without waiting for them
    /// (`complete` reads the answer). Without `overlay`, the plain way: the reads lock what the batch
    /// touches. With it (the batch sent before this one, not known to have committed yet): the reads take
    /// no locks, the decisions start from the overlay's accounts, and the writes lock and check first.
    func send(_ posts: [TransferPost], db: PGConnection, over overlay: Overlay?) throws -> SentBatch {
        var replies = [BusReply?](repeating: nil, count: posts.count)

        // 0. Malformed transfers are answered at once and never reach SQL (nor are they stored).
        var valid: [Int] = []
        for (index, post) in posts.enumerated() {
            if let failure = LedgerLimits.validate(post) {
                replies[index] = .error(failure.status, failure.code, failure.message)
            } else {
                valid.append(index)
            }
        }
        var book = LedgerBook(accounts: [:])
        guard !valid.isEmpty else {
            return SentBatch(posts: posts, replies: replies, seen: [:], db: db, pending: nil, overlay: Overlay())
        }

        // 1. One pipeline (one round trip): BEGIN, then lock what these transfers touch, always in the same
        //    order — refunded payments, then accounts, by id — so that two ledger instances never deadlock,
        //    and so that whatever another instance committed for the same transfers is visible to the reads
        //    that follow; then the transfers seen before (failed or posted) and the requests already paid
        //    (asked for every valid transfer: the answer is the same for the new ones, and it saves a trip).
        //    Overlapped, the same reads without BEGIN and without locks (refunds never overlap).
        let refundTargets = Set(valid.compactMap { posts[$0].refundOf }).sorted()
        let accountIds = Set(valid.flatMap { [posts[$0].debitAccountId, posts[$0].creditAccountId] }).sorted()
        let ids = Array(Set(valid.map { posts[$0].transferId }))
        let requests = Set(valid.compactMap { posts[$0].paymentRequestId }).sorted()
        let overlapped = overlay != nil
        if overlapped, !refundTargets.isEmpty {
            throw PGError(sqlState: "XX000", message: "a refund cannot be decided ahead of a commit", context: "ledger batch")
        }
        var reads: [PGStatement] = overlapped ? [] : [.begin]
        if !refundTargets.isEmpty { reads.append(PGStatement(Self.lockPayments, [PGArray.text(refundTargets)])) }
        reads.append(PGStatement(overlapped ? Self.readAccounts : Self.lockAccounts, [PGArray.text(accountIds)]))
        reads.append(PGStatement(Self.failedLookup, [PGArray.text(ids)]))
        reads.append(PGStatement(Self.postedLookup, [PGArray.text(ids)]))
        if !requests.isEmpty { reads.append(PGStatement(Self.paidLookup, [PGArray.text(requests)])) }
        var read = try db.pipelineAll(reads).dropFirst(overlapped ? 0 : 1)[...]  // BEGIN's empty result first

        if !refundTargets.isEmpty, let rows = read.popFirst() {
            for row in rows.rows {
                guard let id = row[0], let amount = Int64(row[1] ?? ""), let refunded = Int64(row[2] ?? "") else { continue }
                book.payments[id] = PaymentRow(
                    id: id, amount: amount, refunded: refunded, walletId: row[3] ?? "", merchantId: row[4] ?? "",
                    currency: (row[5] ?? "").trimmingCharacters(in: .whitespaces))
            }
        }
        guard let accountRows = read.popFirst(), let failed = read.popFirst(), let posted = read.popFirst() else {
            throw PGError(sqlState: "XX000", message: "a read of the batch gave no result", context: "ledger batch")
        }
        for row in accountRows.rows {
            guard let id = row[0], let kind = AccountKind(rawValue: UInt8(row[1] ?? "") ?? 0) else { continue }
            book.accounts[id] = AccountRow(
                id: id, kind: kind, currency: (row[2] ?? "").trimmingCharacters(in: .whitespaces),
                debits: Int64(row[3] ?? "") ?? 0, credits: Int64(row[4] ?? "") ?? 0, pinHash: row[5].flatMap(Hex.decode),
                pinFailures: Int(row[6] ?? "") ?? 0, locked: row[7] == "t")
        }
        // What the batch on the wire leaves these accounts with, once it commits (the writes check it).
        for (id, account) in overlay?.accounts ?? [:] where book.accounts[id] != nil { book.accounts[id] = account }
        // The state the decisions start from, for the check of an overlapped batch's writes.
        let assumed = overlapped ? book.accounts.values.sorted { $0.id < $1.id } : []

        // 2. Transfers seen before, failed or posted (a posted row wins): answered from what was stored.
        var known: [String: (fields: TransferFields, reply: BusReply)] = [:]
        for row in failed.rows {
            let fields = TransferFields(row: row)
            known[fields.id] = (
                fields,
                .error(Status(rawValue: UInt16(row[8] ?? "") ?? 422), row[9] ?? "declined", row[10] ?? "declined")
            )
        }
        for row in posted.rows {
            let fields = TransferFields(row: row)
            let result = TransferResult(
                transferId: row[0] ?? "", postedAtMillis: Int64(row[8] ?? "") ?? 0,
                debitBalance: Int64(row[9] ?? "") ?? 0, creditBalance: Int64(row[10] ?? "") ?? 0)
            known[fields.id] = (fields, .ok(result, status: .exists))
        }
        if !requests.isEmpty, let paid = read.popFirst() {
            book.paidRequests = Set(paid.rows.compactMap { $0[0] })
        }

        // 3. The new ones, each id once (a duplicate inside the batch is answered from the first, below).
        var fresh: [Int] = []
        var seen: [String: Int] = [:]
        for index in valid {
            let post = posts[index]
            if let earlier = known[post.transferId] {
                replies[index] = earlier.fields == TransferFields(post) ? earlier.reply : Self.conflict(post.transferId)
            } else if seen[post.transferId] == nil {
                seen[post.transferId] = index
                fresh.append(index)
            }
        }

        // 4. Decide each new transfer in arrival order against the working set.
        let postedAt = unixMillis()
        var inserts: [(TransferPost, Int64, Int64)] = []
        var failures: [(TransferPost, LedgerFailure)] = []
        let pins = self.pins
        for index in fresh {
            let post = posts[index]
            switch book.apply(post, checkPin: { account, pin in
                account.pinHash.map { pins.verify(accountId: account.id, pin: pin, against: $0) } ?? false
            }) {
            case .success(let balances):
                inserts.append((post, balances.debitBalance, balances.creditBalance))
                replies[index] = .ok(
                    TransferResult(
                        transferId: post.transferId, postedAtMillis: postedAt, debitBalance: balances.debitBalance,
                        creditBalance: balances.creditBalance))
            case .failure(let failure):
                failures.append((post, failure))
                replies[index] = .error(failure.status, failure.code, failure.message)
            }
        }

        // 5. Write, in one pipeline ending with COMMIT (one round trip): accounts once each with their new
        //    totals, transfers and failures in bulk.
        var writes: [PGStatement] = []
        let changed = book.changedAccounts.sorted().compactMap { book.accounts[$0] }
        if !changed.isEmpty {
            writes.append(PGStatement(
                """
                UPDATE ledger.accounts a SET debits = v.debits, credits = v.credits, pin_failures = v.failures, locked = v.locked
                FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::smallint[], $5::boolean[])
                     AS v(id, debits, credits, failures, locked)
                WHERE a.id = v.id
                """,
                [
                    PGArray.text(changed.map(\.id)), PGArray.int64(changed.map(\.debits)),
                    PGArray.int64(changed.map(\.credits)), PGArray.int64(changed.map { Int64($0.pinFailures) }),
                    PGArray.bool(changed.map(\.locked)),
                ]))
        }
        if !inserts.isEmpty {
            writes.append(PGStatement(
                """
                INSERT INTO ledger.transfers (id, kind, debit_account_id, credit_account_id, amount, currency,
                    payment_request_id, refund_of, debit_balance_after, credit_balance_after, posted_at)
                SELECT id, kind, debit, credit, amount, currency, request, refund_of, debit_after, credit_after,
                       to_timestamp($11::bigint / 1000.0)
                FROM unnest($1::text[], $2::smallint[], $3::text[], $4::text[], $5::bigint[], $6::text[], $7::text[],
                            $8::text[], $9::bigint[], $10::bigint[])
                     AS v(id, kind, debit, credit, amount, currency, request, refund_of, debit_after, credit_after)
                """,
                [
                    PGArray.text(inserts.map(\.0.transferId)), PGArray.int64(inserts.map { Int64($0.0.kind.rawValue) }),
                    PGArray.text(inserts.map(\.0.debitAccountId)), PGArray.text(inserts.map(\.0.creditAccountId)),
                    PGArray.int64(inserts.map(\.0.amountMinor)), PGArray.text(inserts.map(\.0.currency)),
                    PGArray.text(inserts.map(\.0.paymentRequestId)), PGArray.text(inserts.map(\.0.refundOf)),
                    PGArray.int64(inserts.map(\.1)), PGArray.int64(inserts.map(\.2)), String(postedAt),
                ]))
        }
        let refunded = book.changedPayments.sorted().compactMap { book.payments[$0] }
        if !refunded.isEmpty {
            writes.append(PGStatement(
                """
                UPDATE ledger.transfers t SET refunded = v.refunded
                FROM unnest($1::text[], $2::bigint[]) AS v(id, refunded) WHERE t.id = v.id
                """, [PGArray.text(refunded.map(\.id)), PGArray.int64(refunded.map(\.refunded))]))
        }
        // Failures decided against the book are kept — declines and unknown accounts or payments alike —
        // so the same id always gets the same answer ("a failed transfer stays failed").
        let durable = failures.filter { $0.1.status == .declined || $0.1.status == .notFound }
        if !durable.isEmpty {
            writes.append(PGStatement(
                """
                INSERT INTO ledger.failed_transfers (id, kind, debit_account_id, credit_account_id, amount, currency,
                    payment_request_id, refund_of, status, code, message)
                SELECT * FROM unnest($1::text[], $2::smallint[], $3::text[], $4::text[], $5::bigint[], $6::text[],
                                     $7::text[], $8::text[], $9::smallint[], $10::text[], $11::text[])
                """,
                [
                    PGArray.text(durable.map(\.0.transferId)), PGArray.int64(durable.map { Int64($0.0.kind.rawValue) }),
                    PGArray.text(durable.map(\.0.debitAccountId)), PGArray.text(durable.map(\.0.creditAccountId)),
                    PGArray.int64(durable.map(\.0.amountMinor)), PGArray.text(durable.map(\.0.currency)),
                    PGArray.text(durable.map(\.0.paymentRequestId)), PGArray.text(durable.map(\.0.refundOf)),
                    PGArray.int64(durable.map { Int64($0.1.status.rawValue) }), PGArray.text(durable.map(\.1.code)),
                    PGArray.text(durable.map(\.1.message)),
                ]))
        }
        // Overlapped: first lock every account read, in id order, and check that each is what the decisions
        // started from; all of it in one implicit transaction, which the sync point commits, and which a
        // failed check (or any error) rolls back at once, locks released, without a word from us.
        if overlapped, !writes.isEmpty {
            writes.insert(
                PGStatement(
                    "SELECT ledger.lock_unchanged($1::text[], $2::bigint[], $3::bigint[], $4::smallint[], $5::boolean[])",
                    [
                        PGArray.text(assumed.map(\.id)), PGArray.int64(assumed.map(\.debits)),
                        PGArray.int64(assumed.map(\.credits)), PGArray.int64(assumed.map { Int64($0.pinFailures) }),
                        PGArray.bool(assumed.map(\.locked)),
                    ]), at: 0)
        }
        if !overlapped { writes.append(.commit) }
        var next = Overlay()
        for account in changed { next.accounts[account.id] = account }
        for index in valid {
            next.transferIds.insert(posts[index].transferId)
            if let request = posts[index].paymentRequestId { next.requests.insert(request) }
        }
        return SentBatch(
            posts: posts, replies: replies, seen: seen, db: db, pending: writes.isEmpty ? nil : try db.send(writes),
            overlay: next)
    }

    /// Reads the answer to a batch's writes and commit; then every transfer of the batch is answered.
    /// Throws when the batch did not commit (nothing of it was applied).
    func complete(_ batch: SentBatch) throws -> [BusReply] {
        if let pending = batch.pending { _ = try batch.db.receive(pending).allRows() }
        let posts = batch.posts
        let seen = batch.seen
        var replies = batch.replies

        // 6. Duplicates inside the batch get the first one's answer (or a conflict when fields differ).
        for (index, post) in posts.enumerated() where replies[index] == nil {
            guard let first = seen[post.transferId], let firstReply = replies[first] else {
                replies[index] = .error(.internalError, "internal_error", "transfer was not decided")
                continue
            }
            if TransferFields(posts[first]) != TransferFields(post) {
                replies[index] = Self.conflict(post.transferId)
            } else if firstReply.status == .ok {
                replies[index] = BusReply(status: .exists, body: firstReply.body)
            } else {
                replies[index] = firstReply
            }
        }
        return replies.map { $0 ?? Self.undecided }
    }

    static let undecided = BusReply.error(.internalError, "internal_error", "transfer was not decided")

    static let lockPayments = """
        SELECT id, amount, refunded, debit_account_id, credit_account_id, currency
        FROM ledger.transfers WHERE id = ANY($1::text[]) AND kind = 1 ORDER BY id FOR UPDATE
        """
    static let readAccounts = """
        SELECT id, kind, currency, debits, credits, encode(pin_hash, 'hex'), pin_failures, locked
        FROM ledger.accounts WHERE id = ANY($1::text[])
        """
    static let lockAccounts = """
        SELECT id, kind, currency, debits, credits, encode(pin_hash, 'hex'), pin_failures, locked
        FROM ledger.accounts WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE
        """
    static let failedLookup = """
        SELECT id, kind, debit_account_id, credit_account_id, amount, currency, payment_request_id, refund_of,
               status, code, message
        FROM ledger.failed_transfers WHERE id = ANY($1::text[])
        """
    static let postedLookup = """
        SELECT id, kind, debit_account_id, credit_account_id, amount, currency, payment_request_id, refund_of,
               (extract(epoch FROM posted_at) * 1000)::bigint, debit_balance_after, credit_balance_after
        FROM ledger.transfers WHERE id = ANY($1::text[])
        """
    static let paidLookup =
        "SELECT payment_request_id FROM ledger.transfers WHERE kind = 1 AND payment_request_id = ANY($1::text[])"

    static func conflict(_ id: String) -> BusReply {
        .error(.conflict, "exists_with_different_fields", "transfer \(id) exists with different fields")
    }
}

/// What a batch whose writes are on the wire leaves for the batch decided after it.
struct Overlay: Sendable {
    /// The accounts the batch changes, as they are once it commits.
    var accounts: [String: AccountRow] = [:]
    /// Its transfer ids and the payment requests it pays.
    var transferIds: Set<String> = []
    var requests: Set<String> = []

    /// Whether `posts` may be decided before this batch commits: not when one of them is a refund, has an
    /// id of this batch (a retry) or pays a request this batch pays. Those wait for its commit.
    func allows(_ posts: [TransferPost]) -> Bool {
        !posts.contains { post in
            post.refundOf != nil || transferIds.contains(post.transferId)
                || post.paymentRequestId.map(requests.contains) == true
        }
    }
}

/// A batch read, decided and sent: its writes and commit are on the wire on `db` (`pending`, nil when it
/// has nothing to write), and `replies` holds what each transfer gets once they commit.
struct SentBatch {
    let posts: [TransferPost]
    let replies: [BusReply?]
    /// The index of the first occurrence of each new transfer id.
    let seen: [String: Int]
    let db: PGConnection
    let pending: PGSentPipeline?
    let overlay: Overlay
}

/// Gathers the answers of one `post(batch:)`, and hands them over once the last one is in.
final class BatchCollector: Sendable {
    private struct State {
        var replies: [BusReply?]
        var remaining: Int
        var done: (@Sendable ([BusReply]) -> Void)?
    }

    private let state: Locked<State>

    init(count: Int) { state = Locked(State(replies: Array(repeating: nil, count: count), remaining: count, done: nil)) }

    func onComplete(_ done: @escaping @Sendable ([BusReply]) -> Void) { state.withLock { $0.done = done } }

    func set(_ index: Int, _ reply: BusReply) {
        let finished = state.withLock { state -> ([BusReply], (@Sendable ([BusReply]) -> Void))? in
            guard index < state.replies.count, state.replies[index] == nil else { return nil }
            state.replies[index] = reply
            state.remaining -= 1
            guard state.remaining == 0, let done = state.done else { return nil }
            state.done = nil
            return (state.replies.map { $0 ?? BatchEngine.undecided }, done)
        }
        if let (replies, done) = finished { done(replies) }
    }
}

/// The fields that make a transfer what it is (the PIN is not one: it is never stored).
struct TransferFields: Equatable {
    let id: String
    let kind: UInt8
    let debit: String
    let credit: String
    let amount: Int64
    let currency: String
    let request: String?
    let refundOf: String?

    init(_ post: TransferPost) {
        id = post.transferId
        kind = post.kind.rawValue
        debit = post.debitAccountId
        credit = post.creditAccountId
        amount = post.amountMinor
        currency = post.currency
        request = post.paymentRequestId
        refundOf = post.refundOf
    }

    init(row: [String?]) {
        id = row[0] ?? ""
        kind = UInt8(row[1] ?? "") ?? 0
        debit = row[2] ?? ""
        credit = row[3] ?? ""
        amount = Int64(row[4] ?? "") ?? 0
        currency = (row[5] ?? "").trimmingCharacters(in: .whitespaces)
        request = row[6]
        refundOf = row[7]
    }
}

enum Hex {
    static func decode(_ text: String) -> [UInt8]? {
        let chars = Array(text.utf8)
        guard chars.count % 2 == 0 else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(chars.count / 2)
        var i = 0
        while i < chars.count {
            guard let hi = nibble(chars[i]), let lo = nibble(chars[i + 1]) else { return nil }
            out.append(hi << 4 | lo)
            i += 2
        }
        return out
    }

    static func encode(_ bytes: [UInt8]) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count * 2)
        for b in bytes {
            out.append(digits[Int(b >> 4)])
            out.append(digits[Int(b & 0xF)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    private static func nibble(_ c: UInt8) -> UInt8? {
        switch c {
        case 0x30...0x39: c - 0x30
        case 0x61...0x66: c - 0x61 + 10
        case 0x41...0x46: c - 0x41 + 10
        default: nil
        }
    }
}
