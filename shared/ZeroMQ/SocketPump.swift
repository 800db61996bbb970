import CZeroMQ
import Foundation
import Synchronization

/// Gives one ZeroMQ socket one owner: a dedicated thread that polls it, hands every received message
/// to `onMessage` (on that thread — keep it short and non-blocking: resume a continuation, yield into
/// a stream), and sends what other threads queued with `send`. This is the bridge between ZeroMQ's
/// single-owner, blocking sockets and Swift concurrency: no async task ever blocks on a socket, and no
/// socket is touched by two threads.
///
/// Limits: at most `maxPendingSends` outgoing messages wait while the peer is slow or absent; past that
/// `send` returns `false` and the message is not queued (callers time out and retry). The owner wakes at
/// least every `idleWake` to notice `stop()`.
public final class SocketPump: Sendable {
    public typealias Handler = @Sendable (Frames) -> Void

    private struct State: ~Copyable {
        var outbox: [Frames] = []
        var operations: [@Sendable (ZMQSocket) -> Void] = []
        var stopping = false
        /// A wake-up is already on its way to the owner: later sends need not write the eventfd again.
        var wakePending = false
    }

    public let name: String
    private let state = Mutex(State())
    private let wakeFD: Int32
    private let maxPendingSends: Int
    private let idleWake: Duration
    private let stopped = Mutex<Bool>(false)
    private let done = DispatchSemaphore(value: 0)
    private let counters = Mutex(PumpCounters())

    public struct PumpCounters: Sendable {
        public var received: UInt64 = 0
        public var sent: UInt64 = 0
        public var dropped: UInt64 = 0
        public var receiveErrors: UInt64 = 0
    }

    /// Takes ownership of `socket` (configured, bound or connected) and starts its thread.
    public init(
        socket: ZMQSocket, name: String, maxPendingSends: Int = 100_000, idleWake: Duration = .milliseconds(200),
        onError: (@Sendable (ZMQError) -> Void)? = nil, onMessage: @escaping Handler
    ) throws(ZMQError) {
        let fd = eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC))
        guard fd >= 0 else { throw ZMQError(code: errno, function: "eventfd") }
        self.name = name
        self.wakeFD = fd
        self.maxPendingSends = maxPendingSends
        self.idleWake = idleWake
        let thread = Thread { [self] in
            self.loop(socket: socket, onMessage: onMessage, onError: onError)
        }
        thread.name = "zmq-\(name)"
        thread.start()
    }

    deinit { close(wakeFD) }

    public var statistics: PumpCounters { counters.withLock { $0 } }

    /// Queues a message for the owner thread to send. Thread-safe; never blocks.
    /// Returns `false` when the pump is stopping or its outbox is full.
    @discardableResult
    public func send(_ frames: Frames) -> Bool {
        let (queued, needWake) = state.withLock { state -> (Bool, Bool) in
            guard !state.stopping, state.outbox.count < maxPendingSends else { return (false, false) }
            state.outbox.append(frames)
            let needWake = !state.wakePending
            state.wakePending = true
            return (true, needWake)
        }
        if !queued { counters.withLock { $0.dropped += 1 } }
        if needWake { wake() }
        return queued
    }

    /// Runs `operation` on the owner thread (subscribe, disconnect, ...), before any later `send`.
    public func perform(_ operation: @escaping @Sendable (ZMQSocket) -> Void) {
        state.withLock { $0.operations.append(operation) }
        wake()
    }

    /// Stops the thread and closes the socket; waits until that happened. Queued sends are attempted
    /// once more first (without blocking). Safe to call more than once.
    public func stop() {
        let first = stopped.withLock { (stopped: inout Bool) -> Bool in
            defer { stopped = true }
            return !stopped
        }
        guard first else { return }
        state.withLock { $0.stopping = true }
        wake()
        done.wait()
    }

    private func wake() {
        var one: UInt64 = 1
        _ = withUnsafeBytes(of: &one) { Glibc.write(wakeFD, $0.baseAddress, 8) }
    }

    private func drainWake() {
        var value: UInt64 = 0
        _ = withUnsafeMutableBytes(of: &value) { Glibc.read(wakeFD, $0.baseAddress, 8) }
    }

    private func loop(socket: ZMQSocket, onMessage: Handler, onError: (@Sendable (ZMQError) -> Void)?) {
        defer {
            socket.close()
            done.signal()
        }
        var poller = Poller()
        let socketIndex = poller.add(.socket(socket), .readable)
        let wakeIndex = poller.add(.fd(wakeFD), .readable)
        var pending: [Frames] = []  // taken from the outbox, not yet accepted by the socket
        var pendingStart = 0
        let canReceive = socket.type != .pub && socket.type != .push

        while true {
            let (operations, newSends, stopping) = state.withLock { state in
                let taken = (state.operations, state.outbox, state.stopping)
                state.operations.removeAll(keepingCapacity: true)
                state.outbox.removeAll(keepingCapacity: true)
                state.wakePending = false
                return taken
            }
            for operation in operations { operation(socket) }
            if !newSends.isEmpty {
                if pendingStart == pending.count {
                    pending = newSends
                    pendingStart = 0
                } else {
                    pending.append(contentsOf: newSends)
                }
            }
            // Send what the socket accepts now; keep the rest for when it becomes writable.
            var sentCount: UInt64 = 0
            while pendingStart < pending.count {
                do {
                    guard try socket.send(pending[pendingStart], dontWait: true) else { break }
                    sentCount += 1
                } catch {
                    // Unroutable (ROUTER_MANDATORY) or a bad message: drop it, count it, go on.
                    if error.isTerminated { return }
                    counters.withLock { $0.dropped += 1 }
                    onError?(error)
                }
                pendingStart += 1
            }
            if sentCount > 0 { counters.withLock { $0.sent += sentCount } }
            if pendingStart == pending.count {
                pending.removeAll(keepingCapacity: true)
                pendingStart = 0
            }
            if stopping { return }

            var interest: PollEvents = canReceive ? .readable : []
            if pendingStart < pending.count { interest.insert(.writable) }
            poller.setEvents(socketIndex, interest)
            let ready: [PollEvents]
            do {
                ready = try poller.poll(timeout: idleWake)
            } catch {
                if error.isTerminated { return }
                onError?(error)
                continue
            }
            if ready[wakeIndex].contains(.readable) { drainWake() }
            if ready[socketIndex].contains(.readable) {
                // Take everything waiting, but yield to the send side after a bounded burst.
                var received: UInt64 = 0
                var errors: UInt64 = 0
                for _ in 0..<1024 {
                    do {
                        guard let frames = try socket.receive(dontWait: true) else { break }
                        received += 1
                        onMessage(frames)
                    } catch {
                        if error.isTerminated { return }
                        errors += 1
                        onError?(error)
                    }
                }
                counters.withLock {
                    $0.received += received
                    $0.receiveErrors += errors
                }
            }
        }
    }
}
