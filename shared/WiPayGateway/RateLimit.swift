import Foundation
import HTTPTypes
import Hummingbird
import Logging
import Metrics
import WiPayBus
import WiPayRuntime

// Per-client rate limits of the gateways: token buckets (pure, the clock is given), a bounded keyed store
// of them, and the gateways' use of it (settings, 429 answers, metrics, logs).
//
// Bounds (a limit on everything):
// - a bucket holds at most `burst` tokens (1 ... 1 000 000) and refills at `perSecond` (0.001 ... 1 000 000);
// - a keyed store holds at most `maxKeys` keys (`WIPAY_RATE_MAX_KEYS`, 100 ... 10 000 000, default 100 000) in
//   two generations of `maxKeys / 2`; a key untouched for its refill time (at least 1 s) is dropped at the next
//   rotation: a full bucket carries no state, so dropping it changes no decision. Only a store that fills up
//   with busy keys drops a key early (it starts again with a full bucket);
// - a key longer than 128 bytes is kept as its SHA-256 (the keys are ids and addresses: short).

/// A rate limit: `perSecond` tokens a second, at most `burst` at once.
public struct RateLimit: Sendable, Equatable, CustomStringConvertible {
    public static let rates: ClosedRange<Double> = 0.001...1_000_000
    public static let bursts: ClosedRange<Int> = 1...1_000_000

    public let perSecond: Double
    public let burst: Int

    /// nil unless `perSecond` is in `rates` and `burst` in `bursts`.
    public init?(perSecond: Double, burst: Int) {
        guard perSecond.isFinite, Self.rates.contains(perSecond), Self.bursts.contains(burst) else { return nil }
        self.perSecond = perSecond
        self.burst = burst
    }

    /// The setting's form: `RATE/s,BURST` (`50/s,100`; the `/s` may be left out), or `off` / `0` for no limit.
    /// `.some(nil)` is "off"; nil is not a valid value.
    public static func parse(_ text: String) -> RateLimit?? {
        let trimmed = text.trimmingCharacters(in: .whitespaces).lowercased()
        if trimmed == "off" || trimmed == "0" || trimmed == "0/s" { return .some(nil) }
        let parts = trimmed.split(separator: ",", omittingEmptySubsequences: false)
        guard parts.count == 2 else { return nil }
        var rateText = parts[0].trimmingCharacters(in: .whitespaces)
        if rateText.hasSuffix("/s") { rateText.removeLast(2) }
        guard rateText.utf8.count <= 20, let rate = Double(rateText),
            let burst = Int(parts[1].trimmingCharacters(in: .whitespaces)),
            let limit = RateLimit(perSecond: rate, burst: burst)
        else { return nil }
        return .some(limit)
    }

    /// How long an empty bucket takes to fill up again.
    public var refillTime: Duration { .seconds(Double(burst) / perSecond) }

    public var description: String {
        let rate = perSecond == perSecond.rounded() && perSecond < 1e15 ? String(Int64(perSecond)) : String(perSecond)
        return "\(rate)/s,\(burst)"
    }

    /// A `Retry-After` value: whole seconds, rounded up, at least 1.
    public static func retryAfterSeconds(_ wait: Duration) -> Int {
        let seconds = wait.fractionalSeconds
        guard seconds.isFinite, seconds > 1 else { return 1 }
        return Int(min(seconds.rounded(.up), 86_400))
    }
}

extension Duration {
    /// This duration in seconds, as a floating-point number.
    var fractionalSeconds: Double {
        let (whole, atto) = components
        return Double(whole) + Double(atto) * 1e-18
    }
}

/// A token bucket: starts full, every request takes one token, tokens come back at `perSecond` up to
/// `burst`. Pure and I/O-free: the caller gives the clock.
public struct TokenBucket: Sendable, Equatable {
    public enum Decision: Sendable, Equatable {
        case allowed
        /// No token: one is there again after this long.
        case retryAfter(Duration)
    }

    public let limit: RateLimit
    /// Tokens left at `updated` (0 ... burst; fractions are partly refilled tokens).
    public private(set) var tokens: Double
    public private(set) var updated: ContinuousClock.Instant

    public init(_ limit: RateLimit, now: ContinuousClock.Instant) {
        self.limit = limit
        self.tokens = Double(limit.burst)
        self.updated = now
    }

    /// Takes a token when there is one.
    public mutating func take(now: ContinuousClock.Instant) -> Decision {
        refill(now: now)
        if tokens >= 1 {
            tokens -= 1
            return .allowed
        }
        return .retryAfter(.seconds((1 - tokens) / limit.perSecond))
    }

    /// Whether the bucket is full at `now` (it then carries no state: a new bucket would decide the same).
    public func isFull(now: ContinuousClock.Instant) -> Bool {
        var copy = self
        copy.refill(now: now)
        return copy.tokens >= Double(limit.burst)
    }

    private mutating func refill(now: ContinuousClock.Instant) {
        // The clock is monotonic; an earlier instant (a caller's stale reading) adds nothing.
        guard now > updated else { return }
        tokens = min(Double(limit.burst), tokens + (now - updated).fractionalSeconds * limit.perSecond)
        updated = now
    }
}

/// Token buckets by key (terminal id, device id, client address): thread-safe and bounded (see the bounds
/// at the top of this file).
public final class RateLimiter: Sendable {
    public enum Outcome: Sendable, Equatable {
        case allowed
        /// Refused; `first` is true for the first refusal since the key was last allowed (log it once).
        case refused(retryAfter: Duration, first: Bool)
    }

    public static let maxKeyBytes = 128

    private struct Entry: Sendable {
        var bucket: TokenBucket
        var refusing: Bool
    }

    private struct State: Sendable {
        var current: [String: Entry] = [:]
        var previous: [String: Entry] = [:]
        var rotated: ContinuousClock.Instant
    }

    public let limit: RateLimit
    public let maxKeys: Int
    /// A key untouched this long has a full bucket again: it may be dropped (at least 1 s).
    public let idleAfter: Duration
    private let state: Locked<State>

    public init(limit: RateLimit, maxKeys: Int = 100_000, now: ContinuousClock.Instant = .now) {
        self.limit = limit
        self.maxKeys = max(2, maxKeys)
        self.idleAfter = max(.seconds(1), limit.refillTime)
        self.state = Locked(State(rotated: now))
    }

    /// Keys held right now (at most `maxKeys`).
    public var count: Int { state.withLock { $0.current.count + $0.previous.count } }

    /// Takes a token from `key`'s bucket.
    public func take(_ key: String, now: ContinuousClock.Instant = .now) -> Outcome {
        let key = key.utf8.count <= Self.maxKeyBytes ? key : Hex.sha256(key)
        return state.withLock { state in
            rotateIfIdle(&state, now: now)
            var entry: Entry
            if let found = state.current[key] {
                entry = found
            } else if let found = state.previous.removeValue(forKey: key) {
                entry = found
            } else {
                entry = Entry(bucket: TokenBucket(limit, now: now), refusing: false)
            }
            let outcome: Outcome
            switch entry.bucket.take(now: now) {
            case .allowed:
                entry.refusing = false
                outcome = .allowed
            case .retryAfter(let wait):
                outcome = .refused(retryAfter: wait, first: !entry.refusing)
                entry.refusing = true
            }
            if state.current[key] == nil && state.current.count >= maxKeys / 2 {
                // The young generation is full: it becomes the old one, the old one is dropped.
                state.previous = state.current
                state.current = [:]
                state.rotated = now
            }
            state.current[key] = entry
            return outcome
        }
    }

    /// Every `idleAfter` the young generation becomes the old one and the old one is dropped: a key
    /// survives at least `idleAfter` after its last use, and by then its bucket is full.
    private func rotateIfIdle(_ state: inout State, now: ContinuousClock.Instant) {
        guard now > state.rotated else { return }
        let since = now - state.rotated
        if since >= idleAfter * 2 {
            state.previous = [:]
            state.current = [:]
            state.rotated = now
        } else if since >= idleAfter {
            state.previous = state.current
            state.current = [:]
            state.rotated = now
        }
    }
}

// MARK: - the gateways' limits

extension Setting {
    public static let rateTerminal = Setting(
        "WIPAY_RATE_TERMINAL", flag: "rate-terminal", default: "50/s,100",
        "pos-gateway: requests per authenticated terminal, RATE/s,BURST (token bucket); off or 0 = no limit.")
    public static let rateDevice = Setting(
        "WIPAY_RATE_DEVICE", flag: "rate-device", default: "20/s,40",
        "phone-gateway: requests per device with a verified signature, RATE/s,BURST; off or 0 = no limit.")
    public static let rateAddress = Setting(
        "WIPAY_RATE_ADDRESS", flag: "rate-address", default: "10/s,30",
        "Both gateways: per client address, enrollments and requests whose credentials fail, RATE/s,BURST; off or 0 = no limit.")
    public static let rateMaxKeys = Setting(
        "WIPAY_RATE_MAX_KEYS", flag: "rate-max-keys", default: "100000",
        "Keys each rate limit remembers at most (100...10000000); idle ones are dropped first.")
}

/// The limits of one gateway instance: which kinds are on, their buckets, the 429 answer, the
/// `wipay_gateway_rate_limited_total{service, limit}` counter and one log line per refused streak.
public final class GatewayRateLimits: Sendable {
    public enum Kind: String, Sendable, CaseIterable {
        case terminal, device, address

        public var setting: Setting {
            switch self {
            case .terminal: .rateTerminal
            case .device: .rateDevice
            case .address: .rateAddress
            }
        }

        /// The log metadata key of this kind's key.
        var metadataKey: String {
            switch self {
            case .terminal: "terminal.id"
            case .device: "device.id"
            case .address: "client.address"
            }
        }
    }

    private let limiters: [Kind: RateLimiter]
    private let counters: [Kind: Counter]
    private let logger: Logger

    public init(limits: [Kind: RateLimit], maxKeys: Int = 100_000, service: String, logger: Logger) {
        var limiters: [Kind: RateLimiter] = [:]
        var counters: [Kind: Counter] = [:]
        for (kind, limit) in limits {
            limiters[kind] = RateLimiter(limit: limit, maxKeys: maxKeys)
            counters[kind] = Counter(
                label: "wipay_gateway_rate_limited_total", dimensions: [("service", service), ("limit", kind.rawValue)])
        }
        self.limiters = limiters
        self.counters = counters
        self.logger = logger
    }

    /// No limits at all.
    public static func disabled(logger: Logger) -> GatewayRateLimits {
        GatewayRateLimits(limits: [:], service: "", logger: logger)
    }

    /// The limits of `kinds` from the settings (environment or flags, else the defaults).
    public static func load(_ values: ConfigValues, kinds: [Kind], service: String, logger: Logger) throws(ConfigError)
        -> GatewayRateLimits
    {
        var limits: [Kind: RateLimit] = [:]
        for kind in kinds {
            let text = values.string(kind.setting)
            guard let parsed = RateLimit.parse(text) else {
                throw ConfigError(
                    "\(kind.setting.env) (--\(kind.setting.flag)) must be RATE/s,BURST like 50/s,100 (rate 0.001 to 1000000, "
                        + "burst 1 to 1000000) or off, got '\(text)'")
            }
            if let limit = parsed { limits[kind] = limit }
        }
        let maxKeys = try values.int(.rateMaxKeys, range: 100...10_000_000)
        let described = kinds.map { "\($0.rawValue)=\(limits[$0]?.description ?? "off")" }.joined(separator: " ")
        logger.info("rate limits", metadata: ["rate.limits": "\(described)", "rate.max_keys": "\(maxKeys)"])
        return GatewayRateLimits(limits: limits, maxKeys: maxKeys, service: service, logger: logger)
    }

    public func isOn(_ kind: Kind) -> Bool { limiters[kind] != nil }

    /// Takes a token of `kind` for `key`; throws the 429 answer when there is none.
    public func admit(_ kind: Kind, _ key: String, now: ContinuousClock.Instant = .now) throws(GatewayError) {
        if let error = check(kind, key, now: now) { throw error }
    }

    /// Takes a token of `kind` for `key`; the 429 answer when there is none.
    public func check(_ kind: Kind, _ key: String, now: ContinuousClock.Instant = .now) -> GatewayError? {
        guard let limiter = limiters[kind] else { return nil }
        guard case .refused(let wait, let first) = limiter.take(key, now: now) else { return nil }
        counters[kind]?.increment()
        let seconds = RateLimit.retryAfterSeconds(wait)
        if first {
            logger.info(
                "rate limited",
                metadata: [
                    "rate.limit": "\(kind.rawValue)", kind.metadataKey: "\(key)", "rate.retry_after_s": "\(seconds)",
                    "rate.per_second": "\(limiter.limit.perSecond)", "rate.burst": "\(limiter.limit.burst)",
                ])
        }
        return Self.tooManyRequests(retryAfterSeconds: seconds)
    }

    /// The contract's 429: `{"error": {"code": "rate_limited", ...}}` with `Retry-After` in whole seconds.
    public static func tooManyRequests(retryAfterSeconds seconds: Int) -> GatewayError {
        let seconds = max(1, seconds)
        return GatewayError(
            .tooManyRequests, "rate_limited", "too many requests; retry after \(seconds) s", headers: [.retryAfter: "\(seconds)"])
    }

    /// The client address of the request being handled (the TCP peer), for the `address` limit.
    public static var clientAddress: String { PeerAddress.current ?? "unknown" }

    /// The middleware that applies the `address` limit (add it after the routes that are never limited:
    /// `/healthz`, `/metrics`, `/openapi.yaml`). `unauthenticated` routes (`"POST /v1/devices"`) take an address
    /// token before they run; on every other route, an answer 401 (credentials that fail) takes one, and
    /// becomes the 429 when there is none.
    public func middleware(unauthenticated: Set<String> = []) -> RateLimitMiddleware<BasicRequestContext> {
        RateLimitMiddleware(limits: self, unauthenticated: Set(unauthenticated.map(RateLimitMiddleware<BasicRequestContext>.normalized)))
    }
}

/// See `GatewayRateLimits.middleware`.
public struct RateLimitMiddleware<Context: RequestContext>: RouterMiddleware {
    let limits: GatewayRateLimits
    let unauthenticated: Set<String>

    /// `METHOD path` without a leading or trailing `/` on the path.
    static func normalized(_ route: String) -> String {
        let parts = route.split(separator: " ", maxSplits: 1)
        guard parts.count == 2 else { return route }
        return "\(parts[0].uppercased()) \(parts[1].split(separator: "/").joined(separator: "/"))"
    }

    public func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws
        -> Response
    {
        guard limits.isOn(.address) else { return try await next(request, context) }
        let route = Self.normalized("\(request.method.rawValue) \(context.endpointPath ?? request.uri.path)")
        if unauthenticated.contains(route) {
            if let refused = limits.check(.address, GatewayRateLimits.clientAddress) { return GatewayResponse.error(refused) }
            return try await next(request, context)
        }
        let response = try await next(request, context)
        guard response.status == .unauthorized else { return response }
        if let refused = limits.check(.address, GatewayRateLimits.clientAddress) { return GatewayResponse.error(refused) }
        return response
    }
}
