// Rate limits of the gateways: the token bucket (burst, refill, retry-after), the keyed store (its key bound
// and idle keys), the setting's form and the 429 answer. Pure: the clock is given.

import HTTPTypes
import Logging
import Testing
import WiPayGateway
import WiPayRuntime

@Suite("Gateway rate limits")
struct RateLimitTests {
    let start = ContinuousClock.now

    func limit(_ perSecond: Double, _ burst: Int) throws -> RateLimit {
        try #require(RateLimit(perSecond: perSecond, burst: burst))
    }

    @Test func burstThenRefused() throws {
        var bucket = TokenBucket(try limit(10, 5), now: start)
        for i in 0..<5 { #expect(bucket.take(now: start) == .allowed, "token \(i) of the burst") }
        guard case .retryAfter(let wait) = bucket.take(now: start) else {
            Issue.record("the sixth request at once must be refused")
            return
        }
        // One token comes back every 100 ms.
        #expect(wait > .milliseconds(99) && wait <= .milliseconds(100), "\(wait)")
        #expect(RateLimit.retryAfterSeconds(wait) == 1)
    }

    @Test func refillAtTheRate() throws {
        var bucket = TokenBucket(try limit(2, 4), now: start)
        for _ in 0..<4 { #expect(bucket.take(now: start) == .allowed) }
        #expect(bucket.take(now: start) != .allowed)
        // 0.5 s later one token is back, not two.
        let later = start + .milliseconds(500)
        #expect(bucket.take(now: later) == .allowed)
        #expect(bucket.take(now: later) != .allowed)
        // After a long pause the bucket is full again, and never fuller than the burst.
        let muchLater = start + .seconds(60)
        #expect(bucket.isFull(now: muchLater))
        for _ in 0..<4 { #expect(bucket.take(now: muchLater) == .allowed) }
        #expect(bucket.take(now: muchLater) != .allowed)
    }

    @Test func retryAfterIsWholeSecondsAtLeastOne() throws {
        #expect(RateLimit.retryAfterSeconds(.zero) == 1)
        #expect(RateLimit.retryAfterSeconds(.milliseconds(1)) == 1)
        #expect(RateLimit.retryAfterSeconds(.seconds(1)) == 1)
        #expect(RateLimit.retryAfterSeconds(.milliseconds(1001)) == 2)
        #expect(RateLimit.retryAfterSeconds(.seconds(7)) == 7)
        // A slow limit: one token in 4 s.
        var bucket = TokenBucket(try limit(0.25, 1), now: start)
        #expect(bucket.take(now: start) == .allowed)
        guard case .retryAfter(let wait) = bucket.take(now: start + .seconds(1)) else {
            Issue.record("refused expected")
            return
        }
        #expect(RateLimit.retryAfterSeconds(wait) == 3, "\(wait)")
        // Retrying after the advertised wait is served.
        #expect(bucket.take(now: start + .seconds(1) + .seconds(3)) == .allowed)
    }

    @Test func anEarlierInstantAddsNothing() throws {
        var bucket = TokenBucket(try limit(1, 1), now: start + .seconds(10))
        #expect(bucket.take(now: start + .seconds(10)) == .allowed)
        #expect(bucket.take(now: start) != .allowed)
        #expect(bucket.take(now: start + .seconds(11)) == .allowed)
    }

    @Test func keysAreIndependentAndFirstRefusalIsMarked() throws {
        let limiter = RateLimiter(limit: try limit(1, 2), maxKeys: 100, now: start)
        #expect(limiter.take("a", now: start) == .allowed)
        #expect(limiter.take("a", now: start) == .allowed)
        guard case .refused(_, let first) = limiter.take("a", now: start) else {
            Issue.record("a is spent")
            return
        }
        #expect(first)
        guard case .refused(_, let second) = limiter.take("a", now: start) else {
            Issue.record("a is still spent")
            return
        }
        #expect(!second, "only the first refusal of a streak is marked (one log line)")
        #expect(limiter.take("b", now: start) == .allowed, "another key has its own bucket")
        // Allowed again, then refused again: a new streak.
        #expect(limiter.take("a", now: start + .seconds(1)) == .allowed)
        guard case .refused(_, let again) = limiter.take("a", now: start + .seconds(1)) else {
            Issue.record("a is spent again")
            return
        }
        #expect(again)
    }

    @Test func keyCountIsBounded() throws {
        let limiter = RateLimiter(limit: try limit(1, 1), maxKeys: 100, now: start)
        for i in 0..<10_000 {
            _ = limiter.take("key-\(i)", now: start)
            #expect(limiter.count <= 100)
        }
        #expect(limiter.count <= 100)
        #expect(limiter.count >= 50, "the young generation stays")
        // The newest keys are still remembered (and spent).
        #expect(limiter.take("key-9999", now: start) != .allowed)
        // Long keys are kept as a hash: bounded size, still one bucket per key.
        let long = String(repeating: "x", count: 10_000)
        #expect(limiter.take(long, now: start) == .allowed)
        #expect(limiter.take(long, now: start) != .allowed)
    }

    @Test func idleKeysAreDropped() throws {
        // Refill time 2 s: a key idle that long is full again and may go.
        let limiter = RateLimiter(limit: try limit(1, 2), maxKeys: 1000, now: start)
        for i in 0..<50 { _ = limiter.take("idle-\(i)", now: start) }
        #expect(limiter.count == 50)
        _ = limiter.take("busy", now: start + .seconds(2))
        #expect(limiter.count == 51, "one rotation: the idle keys are in the old generation")
        _ = limiter.take("busy", now: start + .seconds(4))
        #expect(limiter.count == 1, "two rotations: only the key in use is left")
        // A dropped key starts with a full bucket, the same decision a kept one would give.
        #expect(limiter.take("idle-0", now: start + .seconds(4)) == .allowed)
        #expect(limiter.take("idle-0", now: start + .seconds(4)) == .allowed)
    }

    @Test func concurrentTakesNeverExceedTheBurst() async throws {
        let limiter = RateLimiter(limit: try limit(0.001, 100), maxKeys: 100, now: start)
        let now = start
        let allowed = await withTaskGroup(of: Int.self) { group in
            for _ in 0..<8 {
                group.addTask {
                    var n = 0
                    for _ in 0..<100 where limiter.take("shared", now: now) == .allowed { n += 1 }
                    return n
                }
            }
            return await group.reduce(0, +)
        }
        #expect(allowed == 100)
    }

    @Test func settingForm() throws {
        #expect(RateLimit.parse("50/s,100") == .some(RateLimit(perSecond: 50, burst: 100)))
        #expect(RateLimit.parse(" 0.5/s , 3 ") == .some(RateLimit(perSecond: 0.5, burst: 3)))
        #expect(RateLimit.parse("20,40") == .some(RateLimit(perSecond: 20, burst: 40)))
        for off in ["off", "OFF", "0"] {
            #expect(RateLimit.parse(off) == .some(nil), "\(off) is off")
        }
        for bad in ["", "50", "50/s", "50/s,", "/s,3", "x/s,3", "50/s,0", "50/s,-1", "-1/s,3", "nan/s,3", "inf/s,3", "1/m,3", "1,2,3"] {
            #expect(RateLimit.parse(bad) == nil, "\(bad.debugDescription) is not a limit")
        }
        #expect(RateLimit(perSecond: 50, burst: 100)?.description == "50/s,100")
    }

    @Test func settingsLoad() throws {
        let logger = Logger(label: "test")
        let values = ConfigValues(environment: ["WIPAY_RATE_TERMINAL": "off", "WIPAY_RATE_ADDRESS": "1/s,1"])
        let limits = try GatewayRateLimits.load(values, kinds: [.terminal, .address], service: "pos-gateway", logger: logger)
        #expect(!limits.isOn(.terminal))
        #expect(limits.isOn(.address))
        #expect(!limits.isOn(.device), "not asked for")
        #expect(limits.check(.address, "127.0.0.1") == nil)
        let refused = try #require(limits.check(.address, "127.0.0.1"))
        #expect(refused.status == .tooManyRequests)
        #expect(refused.code == "rate_limited")
        #expect(refused.headers[.retryAfter] == "1")
        #expect(refused.body.serialized.hasPrefix(#"{"error":{"code":"rate_limited","message":"#))
        // The defaults are on.
        let defaults = try GatewayRateLimits.load(
            ConfigValues(environment: [:]), kinds: GatewayRateLimits.Kind.allCases, service: "x", logger: logger)
        #expect(GatewayRateLimits.Kind.allCases.allSatisfy { defaults.isOn($0) })
        // A flag wins over the environment; a bad value is a configuration error.
        let flagged = ConfigValues(environment: ["WIPAY_RATE_DEVICE": "1/s,1"], flags: [.rateDevice: "off"])
        #expect(!(try GatewayRateLimits.load(flagged, kinds: [.device], service: "x", logger: logger)).isOn(.device))
        #expect(throws: ConfigError.self) {
            try GatewayRateLimits.load(
                ConfigValues(environment: ["WIPAY_RATE_DEVICE": "fast"]), kinds: [.device], service: "x", logger: logger)
        }
        #expect(throws: ConfigError.self) {
            try GatewayRateLimits.load(
                ConfigValues(environment: ["WIPAY_RATE_MAX_KEYS": "5"]), kinds: [.device], service: "x", logger: logger)
        }
    }
}
