import CZeroMQ

/// A ZeroMQ context. Thread-safe by libzmq's own promise: sockets may be created from any thread.
/// Terminate it explicitly with `shutdown()` (unblocks every socket with `ETERM`) and `terminate()`.
public final class ZMQContext: @unchecked Sendable {
    let handle: UnsafeMutableRawPointer

    /// - Parameter ioThreads: libzmq I/O threads; one carries well over 100k messages/s.
    public init(ioThreads: Int32 = 1) throws(ZMQError) {
        guard let handle = zmq_ctx_new() else { throw ZMQError.last("zmq_ctx_new") }
        self.handle = handle
        zmq_ctx_set(handle, ZMQ_IO_THREADS, ioThreads)
        // A process that opens many sockets (tests, benchmarks) should not hit the default of 1023.
        zmq_ctx_set(handle, ZMQ_MAX_SOCKETS, 8192)
    }

    /// Makes every blocking call on this context's sockets return `ETERM`. Safe to call twice.
    public func shutdown() {
        _ = zmq_ctx_shutdown(handle)
    }

    /// Waits for every socket of this context to be closed, then frees it. Call once, last.
    public func terminate() {
        while zmq_ctx_term(handle) != 0 && zmq_errno() == EINTR {}
    }

    /// The libzmq version linked in, e.g. "4.3.4".
    public static var version: String {
        var major: Int32 = 0, minor: Int32 = 0, patch: Int32 = 0
        zmq_version(&major, &minor, &patch)
        return "\(major).\(minor).\(patch)"
    }

    /// Whether libzmq was built with a capability ("curve", "ipc", ...).
    public static func has(_ capability: String) -> Bool { zmq_has(capability) != 0 }
}
