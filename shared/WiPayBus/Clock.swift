import Foundation

/// Wall-clock unix milliseconds, for envelopes and deadlines that cross processes.
@inline(__always)
public func unixMillis() -> Int64 {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec) / 1_000_000
}

/// Process-unique, time-ordered request ids: `<prefix>-<millis base36>-<counter base36>`.
public final class RequestIdGenerator: Sendable {
    private let prefix: String
    private let counter = Atomic<UInt64>(0)

    /// The prefix is cut to 80 safe characters, so ids always fit `Envelope.maxIdBytes`.
    public init(prefix: String) {
        let safe = prefix.unicodeScalars.map { scalar -> Character in
            scalar.isASCII && (CharacterSet.alphanumerics.contains(scalar) || "-._".unicodeScalars.contains(scalar))
                ? Character(scalar) : "_"
        }
        self.prefix = String(safe.prefix(80))
    }

    public func next() -> String {
        let n = counter.wrappingAdd(1, ordering: .relaxed).newValue
        return "\(prefix)-\(String(UInt64(unixMillis()), radix: 36))-\(String(n, radix: 36))"
    }
}

import Synchronization

/// A `Mutex` in a class, so that closures can share it by reference.
public final class Locked<Value: Sendable>: Sendable {
    private let mutex: Mutex<Value>
    public init(_ value: Value) { mutex = Mutex(value) }
    @inline(__always)
    public func withLock<R>(_ body: (inout Value) throws -> R) rethrows -> R {
        try mutex.withLock { try body(&$0) }
    }
    public var value: Value { mutex.withLock { $0 } }
}
