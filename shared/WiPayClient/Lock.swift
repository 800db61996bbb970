import Foundation

/// A value behind a lock, for state shared between a blocking I/O thread and async callers.
/// (`Synchronization.Mutex` needs macOS 15; the package still supports macOS 14.)
final class Protected<Value>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Value

    init(_ value: Value) { self.value = value }

    func withLock<R>(_ body: (inout Value) throws -> R) rethrows -> R {
        lock.lock()
        defer { lock.unlock() }
        return try body(&value)
    }
}
