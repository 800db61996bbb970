import WiPayBus

/// A bounded in-memory cache whose entries expire after a time to live. Used for terminal and device
/// lookups (30 s) and for the signatures already seen (the replay window). When full, the oldest
/// entries go first (a limit on everything: memory stays bounded whatever the traffic).
public final class TTLCache<Key: Hashable & Sendable, Value: Sendable>: Sendable {
    private struct State {
        var entries: [Key: (value: Value, expires: ContinuousClock.Instant)] = [:]
        /// Insertion order, for eviction; `head` is the oldest live index.
        var order: [(key: Key, expires: ContinuousClock.Instant)] = []
        var head = 0
    }

    public let capacity: Int
    public let ttl: Duration
    private let state = Locked(State())

    public init(capacity: Int, ttl: Duration) {
        self.capacity = max(1, capacity)
        self.ttl = ttl
    }

    public var count: Int { state.withLock { $0.entries.count } }

    public func get(_ key: Key, now: ContinuousClock.Instant = .now) -> Value? {
        state.withLock { state in
            guard let entry = state.entries[key] else { return nil }
            guard entry.expires > now else {
                state.entries[key] = nil
                return nil
            }
            return entry.value
        }
    }

    public func set(_ key: Key, _ value: Value, now: ContinuousClock.Instant = .now) {
        state.withLock { state in Self.insert(&state, key, value, now + ttl, now: now, capacity: capacity) }
    }

    /// Inserts `key` unless a live entry exists; true when inserted (the first sighting).
    public func insertIfAbsent(_ key: Key, _ value: Value, now: ContinuousClock.Instant = .now) -> Bool {
        state.withLock { state in
            if let entry = state.entries[key], entry.expires > now { return false }
            Self.insert(&state, key, value, now + ttl, now: now, capacity: capacity)
            return true
        }
    }

    public func remove(_ key: Key) { state.withLock { $0.entries[key] = nil } }

    private static func insert(
        _ state: inout State, _ key: Key, _ value: Value, _ expires: ContinuousClock.Instant, now: ContinuousClock.Instant,
        capacity: Int
    ) {
        // Drop expired entries from the front, then the oldest while full.
        while state.head < state.order.count {
            let oldest = state.order[state.head]
            let live = state.entries[oldest.key]
            if let live, live.expires != oldest.expires {
                state.head += 1  // re-inserted later: its newer order entry stays
                continue
            }
            guard live == nil || oldest.expires <= now || state.entries.count >= capacity else { break }
            state.entries[oldest.key] = nil
            state.head += 1
        }
        state.entries[key] = (value, expires)
        state.order.append((key, expires))
        if state.head > 1024 && state.head * 2 > state.order.count {
            state.order.removeFirst(state.head)
            state.head = 0
        }
    }
}
