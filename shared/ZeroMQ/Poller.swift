import CZeroMQ

/// What a poll item waits for.
public struct PollEvents: OptionSet, Sendable {
    public let rawValue: Int16
    public init(rawValue: Int16) { self.rawValue = rawValue }
    public static let readable = PollEvents(rawValue: Int16(ZMQ_POLLIN))
    public static let writable = PollEvents(rawValue: Int16(ZMQ_POLLOUT))
    public static let error = PollEvents(rawValue: Int16(ZMQ_POLLERR))
}

/// One thing to poll: a ZeroMQ socket or a plain file descriptor (an eventfd, a pipe).
public enum PollTarget {
    case socket(ZMQSocket)
    case fd(Int32)
}

/// `zmq_poll` over sockets and file descriptors with a bounded timeout. There is deliberately no
/// "wait forever": a loop that polls must wake up now and then to notice that it should stop.
public struct Poller {
    private var items: [zmq_pollitem_t] = []
    private var targets: [PollTarget] = []

    public init() {}

    /// Adds an item and returns its index in `poll`'s result.
    @discardableResult
    public mutating func add(_ target: PollTarget, _ events: PollEvents) -> Int {
        var item = zmq_pollitem_t()
        switch target {
        case .socket(let socket): item.socket = socket.handle
        case .fd(let fd): item.fd = fd
        }
        item.events = events.rawValue
        items.append(item)
        targets.append(target)
        return items.count - 1
    }

    public mutating func setEvents(_ index: Int, _ events: PollEvents) {
        items[index].events = events.rawValue
    }

    /// Waits up to `timeout` and returns, per item, the events that are ready (empty when none).
    public mutating func poll(timeout: Duration) throws(ZMQError) -> [PollEvents] {
        let timeoutMs = max(0, Int(timeout.milliseconds))
        let count = items.count
        let ready = try retryingInterrupts("zmq_poll") {
            items.withUnsafeMutableBufferPointer { zmq_poll($0.baseAddress, Int32(count), timeoutMs) }
        }
        guard let ready, ready > 0 else { return Array(repeating: [], count: count) }
        return items.map { PollEvents(rawValue: $0.revents) }
    }
}

/// Runs libzmq's built-in proxy between two sockets on the calling thread until the context is shut
/// down (the normal way to stop it: returns quietly) or a real error happens (thrown).
/// `capture`, when given, receives a copy of every message (used for tracing and counting).
public func runProxy(frontend: ZMQSocket, backend: ZMQSocket, capture: ZMQSocket? = nil) throws(ZMQError) {
    let rc = zmq_proxy(frontend.handle, backend.handle, capture?.handle)
    if rc != 0 {
        let error = ZMQError.last("zmq_proxy")
        if !error.isTerminated { throw error }
    }
}
