import CZeroMQ

/// Every failure of a ZeroMQ call, as one error type: the errno, the C function that failed, and
/// libzmq's own description. `EINTR` never reaches callers (it is retried) and `EAGAIN` is returned as
/// a value by the non-blocking calls that can meet it, so what is thrown here is a real failure.
public struct ZMQError: Error, Sendable, Equatable, CustomStringConvertible {
    public let code: Int32
    public let function: String

    public init(code: Int32, function: String) {
        self.code = code
        self.function = function
    }

    /// The error `zmq_errno()` holds right now, attributed to `function`.
    static func last(_ function: String) -> ZMQError {
        ZMQError(code: zmq_errno(), function: function)
    }

    public var message: String { String(cString: zmq_strerror(code)) }
    public var description: String { "\(function) failed: \(message) (errno \(code))" }

    /// The context was terminated: the owner of a socket should close it and stop.
    public var isTerminated: Bool { code == ETERM }
    public var isAgain: Bool { code == EAGAIN }

    public static let again = ZMQError(code: EAGAIN, function: "")
}

/// Calls `body` until it does not fail with `EINTR`, the way SwiftNIO wraps system calls.
/// Returns the non-negative result, or `nil` for `EAGAIN`; throws `ZMQError` for anything else.
@inline(__always)
func retryingInterrupts(_ function: StaticString, _ body: () -> Int32) throws(ZMQError) -> Int32? {
    while true {
        let rc = body()
        if rc >= 0 { return rc }
        let err = zmq_errno()
        if err == EINTR { continue }
        if err == EAGAIN { return nil }
        throw ZMQError(code: err, function: "\(function)")
    }
}
