import Metrics
import WiPayBus

/// Group commit (docs/payment-flow.md, "Batches"): callers queue their items and wait; up to `maxInFlight`
/// workers each take what has queued (up to `maxBatch` items) and handle it as one batch, so requests that
/// arrive while a batch is in the database ride together in the next one. An idle queue handles a lone item
/// at once (no fixed wait); with `wait` above zero a worker that finds fewer than `maxBatch` items waits that
/// long for more first.
///
/// Items with the same exclusivity key (a payment request, a device's Idempotency-Key) never share a batch
/// and never run in two batches at once: a later one waits for the batch holding its key and then sees
/// what that batch committed (the stored first answer, a paid request). So a batch never races itself.
final class GroupCommitQueue<Item: Sendable>: Sendable {
    typealias Process = @Sendable ([Item]) async -> [BusReply]

    private struct Waiting: Sendable {
        let item: Item
        let keys: [String]
        let continuation: CheckedContinuation<BusReply, Never>
    }

    private struct State: Sendable {
        var queue: [Waiting] = []
        var running = 0
        /// The exclusivity keys of the items in batches now running.
        var busy: Set<String> = []
        var batches = 0
        var largest = 0
    }

    private let state = Locked(State())
    let maxBatch: Int
    let maxInFlight: Int
    let wait: Duration
    private let keys: @Sendable (Item) -> [String]
    private let batchSize: Recorder

    /// `keys`: the exclusivity keys of an item.
    init(name: String, maxBatch: Int, maxInFlight: Int, wait: Duration, keys: @escaping @Sendable (Item) -> [String]) {
        self.maxBatch = max(1, maxBatch)
        self.maxInFlight = max(1, maxInFlight)
        self.wait = wait
        self.keys = keys
        batchSize = Recorder(label: "wipay.router.batch.size", dimensions: [("kind", name)])
    }

    /// Queues `item` and returns its reply once its batch is done. `process` handles a batch: one reply per
    /// item, in order (the owner passes the same function every time).
    func submit(_ item: Item, process: @escaping Process) async -> BusReply {
        let itemKeys = keys(item)
        return await withCheckedContinuation { continuation in
            let start = state.withLock { state -> Bool in
                state.queue.append(Waiting(item: item, keys: itemKeys, continuation: continuation))
                guard state.running < maxInFlight else { return false }
                state.running += 1
                return true
            }
            if start { Task { await self.work(process) } }
        }
    }

    /// Items queued and not yet taken by a batch.
    var queued: Int { state.withLock { $0.queue.count } }

    /// Batches handled so far, and the largest.
    var stats: (batches: Int, largest: Int) { state.withLock { ($0.batches, $0.largest) } }

    private func work(_ process: Process) async {
        var finished: [Waiting] = []
        var waited = false
        while true {
            let batch = state.withLock { state -> [Waiting]? in
                for done in finished { state.busy.subtract(done.keys) }
                let batch = Self.take(from: &state, max: maxBatch)
                if batch.isEmpty { state.running -= 1 }
                return batch.isEmpty ? nil : batch
            }
            finished = []
            guard let batch else { return }
            if wait > .zero, batch.count < maxBatch, !waited {
                // Give the batch its window: put it back, wait, take again (now with whatever came).
                state.withLock { state in
                    for item in batch { state.busy.subtract(item.keys) }
                    state.queue.insert(contentsOf: batch, at: 0)
                }
                try? await Task.sleep(for: wait)
                waited = true
                continue
            }
            waited = false
            batchSize.record(batch.count)
            let size = batch.count
            state.withLock { state in
                state.batches += 1
                state.largest = max(state.largest, size)
            }
            let replies = await process(batch.map(\.item))
            for (index, waiting) in batch.enumerated() {
                waiting.continuation.resume(
                    returning: index < replies.count
                        ? replies[index] : .error(.internalError, "internal_error", "no reply for a batched request"))
            }
            finished = batch
        }
    }

    /// Up to `max` queued items in order, skipping (and keeping queued) those whose keys a running batch or an
    /// earlier item of this batch holds.
    private static func take(from state: inout State, max: Int) -> [Waiting] {
        guard !state.queue.isEmpty else { return [] }
        var taken: [Waiting] = []
        var kept: [Waiting] = []
        for waiting in state.queue {
            if taken.count < max, !waiting.keys.contains(where: state.busy.contains) {
                state.busy.formUnion(waiting.keys)
                taken.append(waiting)
            } else {
                kept.append(waiting)
            }
        }
        state.queue = kept
        return taken
    }
}

extension PaymentRouter {
    /// The skeleton of every batch handler: each item is checked without I/O (a refusal answers it alone),
    /// the checked ones go to `batch` on one leased connection, and every item `batch` did not answer (or
    /// all, when it threw) goes through `alone`, the one-item path that is safe to repeat. Returns one reply
    /// per item, in order, and how many went alone.
    func handleBatch<Item: Sendable, Checked: Sendable>(
        _ items: [Item], type: MessageType, check: (Item) throws -> Checked,
        batch: ([(index: Int, item: Checked)], RouterDatabase.Lease) async throws -> [(Int, BusReply)],
        alone: (Item) async throws -> BusReply
    ) async -> (replies: [BusReply], alone: Int) {
        var replies = [BusReply?](repeating: nil, count: items.count)
        var checked: [(index: Int, item: Checked)] = []
        for (index, item) in items.enumerated() {
            do {
                checked.append((index, try check(item)))
            } catch {
                replies[index] = errorReply(error, type: type)
            }
        }
        if !checked.isEmpty {
            do {
                let answered = try await db.withLease { lease in try await batch(checked, lease) }
                for (index, reply) in answered { replies[index] = reply }
            } catch {
                logger.warning(
                    "batch failed; its items go one by one",
                    metadata: ["bus.type": "\(type)", "batch.size": "\(checked.count)", "error": "\(error)"])
            }
        }
        var aloneCount = 0
        for index in replies.indices where replies[index] == nil {
            aloneCount += 1
            do {
                replies[index] = try await alone(items[index])
            } catch {
                replies[index] = errorReply(error, type: type)
            }
        }
        return (replies.map { $0 ?? .error(.internalError, "internal_error", "no reply for a batched request") }, aloneCount)
    }
}
