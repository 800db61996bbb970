import CZeroMQ

/// The socket types WiPay uses.
public enum SocketType: Sendable {
    case pair, pub, sub, req, rep, dealer, router, pull, push, xpub, xsub

    var raw: Int32 {
        switch self {
        case .pair: ZMQ_PAIR
        case .pub: ZMQ_PUB
        case .sub: ZMQ_SUB
        case .req: ZMQ_REQ
        case .rep: ZMQ_REP
        case .dealer: ZMQ_DEALER
        case .router: ZMQ_ROUTER
        case .pull: ZMQ_PULL
        case .push: ZMQ_PUSH
        case .xpub: ZMQ_XPUB
        case .xsub: ZMQ_XSUB
        }
    }
}

/// One multipart message: its frames, in order.
public typealias Frames = [[UInt8]]

/// A ZeroMQ socket. **Not thread-safe**: a socket has one owner at a time (usually a `SocketPump`
/// thread); it is `@unchecked Sendable` only so that ownership can be handed to that thread.
public final class ZMQSocket: @unchecked Sendable {
    let handle: UnsafeMutableRawPointer
    public let type: SocketType
    private var closed = false

    public init(_ context: ZMQContext, _ type: SocketType) throws(ZMQError) {
        guard let handle = zmq_socket(context.handle, type.raw) else { throw ZMQError.last("zmq_socket") }
        self.handle = handle
        self.type = type
        // Never let a process hang at exit on undelivered messages; owners choose otherwise explicitly.
        try? setOption(ZMQ_LINGER, Int32(0))
    }

    deinit { close() }

    public func close() {
        guard !closed else { return }
        closed = true
        zmq_close(handle)
    }

    // MARK: endpoints

    public func bind(_ endpoint: String) throws(ZMQError) {
        _ = try retryingInterrupts("zmq_bind") { zmq_bind(handle, endpoint) }
    }

    public func connect(_ endpoint: String) throws(ZMQError) {
        _ = try retryingInterrupts("zmq_connect") { zmq_connect(handle, endpoint) }
    }

    public func disconnect(_ endpoint: String) throws(ZMQError) {
        _ = try retryingInterrupts("zmq_disconnect") { zmq_disconnect(handle, endpoint) }
    }

    public func unbind(_ endpoint: String) throws(ZMQError) {
        _ = try retryingInterrupts("zmq_unbind") { zmq_unbind(handle, endpoint) }
    }

    /// Reports this socket's events as two-frame messages on a PAIR socket bound
    /// at `endpoint` (an `inproc://` address of the same context): a 6-byte frame (event u16 LE, value u32
    /// LE) and the endpoint it concerns. Call it from the socket's owner thread.
    public func monitor(_ endpoint: String, events: SocketEvents) throws(ZMQError) {
        _ = try retryingInterrupts("zmq_socket_monitor") { zmq_socket_monitor(handle, endpoint, events.rawValue) }
    }

    /// The endpoint the last `bind` resolved to (the real port after binding to `tcp://host:*`).
    public var lastEndpoint: String {
        get throws(ZMQError) { try stringOption(ZMQ_LAST_ENDPOINT) }
    }

    // MARK: sending and receiving

    /// Sends every frame of a multipart message. Returns `false` (and sends nothing) when the message
    /// cannot be queued right now (`EAGAIN`: high-water mark reached, or no peer for a DEALER/PUSH)
    /// and `dontWait` is set.
    @discardableResult
    public func send(_ frames: Frames, dontWait: Bool = true) throws(ZMQError) -> Bool {
        precondition(!frames.isEmpty, "a message has at least one frame")
        for (index, frame) in frames.enumerated() {
            var flags: Int32 = dontWait ? ZMQ_DONTWAIT : 0
            if index < frames.count - 1 { flags |= ZMQ_SNDMORE }
            let sent = try retryingInterrupts("zmq_send") {
                frame.withUnsafeBytes { zmq_send(handle, $0.baseAddress, $0.count, flags) }
            }
            // libzmq queues multipart messages atomically: EAGAIN can only happen on the first frame.
            if sent == nil { return false }
        }
        return true
    }

    /// Receives one whole multipart message, or `nil` when none is waiting and `dontWait` is set.
    /// A message longer than `maxFrames` is read to its end and reported as `ZMQError(EMSGSIZE)`, so
    /// a peer cannot make us hold an unbounded message.
    public func receive(dontWait: Bool = true, maxFrames: Int = 64) throws(ZMQError) -> Frames? {
        var frames: Frames = []
        var oversized = false
        while true {
            var msg = zmq_msg_t()
            zmq_msg_init(&msg)
            defer { zmq_msg_close(&msg) }
            let flags: Int32 = (dontWait && frames.isEmpty && !oversized) ? ZMQ_DONTWAIT : 0
            guard try retryingInterrupts("zmq_msg_recv", { zmq_msg_recv(&msg, handle, flags) }) != nil else {
                return nil
            }
            if frames.count < maxFrames {
                let size = zmq_msg_size(&msg)
                if let data = zmq_msg_data(&msg), size > 0 {
                    frames.append(Array(UnsafeRawBufferPointer(start: data, count: size)))
                } else {
                    frames.append([])
                }
            } else {
                oversized = true
            }
            if zmq_msg_more(&msg) == 0 { break }
        }
        if oversized { throw ZMQError(code: EMSGSIZE, function: "zmq_msg_recv") }
        return frames
    }

    // MARK: options

    public func setOption(_ option: Int32, _ value: Int32) throws(ZMQError) {
        var v = value
        _ = try retryingInterrupts("zmq_setsockopt") {
            zmq_setsockopt(handle, option, &v, MemoryLayout<Int32>.size)
        }
    }

    public func setOption(_ option: Int32, _ value: [UInt8]) throws(ZMQError) {
        _ = try retryingInterrupts("zmq_setsockopt") {
            value.withUnsafeBytes { zmq_setsockopt(handle, option, $0.baseAddress, $0.count) }
        }
    }

    public func setOption(_ option: Int32, _ value: String) throws(ZMQError) {
        try setOption(option, Array(value.utf8))
    }

    public func intOption(_ option: Int32) throws(ZMQError) -> Int32 {
        var value: Int32 = 0
        var size = MemoryLayout<Int32>.size
        _ = try retryingInterrupts("zmq_getsockopt") { zmq_getsockopt(handle, option, &value, &size) }
        return value
    }

    public func stringOption(_ option: Int32) throws(ZMQError) -> String {
        var buffer = [UInt8](repeating: 0, count: 512)
        var size = buffer.count
        _ = try retryingInterrupts("zmq_getsockopt") { zmq_getsockopt(handle, option, &buffer, &size) }
        let bytes = buffer.prefix(size).prefix { $0 != 0 }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Milliseconds to keep unsent messages after `close`; 0 drops them at once.
    public func setLinger(_ duration: Duration) throws(ZMQError) { try setOption(ZMQ_LINGER, duration.milliseconds) }
    /// How long a blocking `receive` waits before returning `nil`.
    public func setReceiveTimeout(_ duration: Duration) throws(ZMQError) { try setOption(ZMQ_RCVTIMEO, duration.milliseconds) }
    public func setSendHighWaterMark(_ messages: Int32) throws(ZMQError) { try setOption(ZMQ_SNDHWM, messages) }
    public func setReceiveHighWaterMark(_ messages: Int32) throws(ZMQError) { try setOption(ZMQ_RCVHWM, messages) }
    public func setRoutingId(_ id: String) throws(ZMQError) { try setOption(ZMQ_ROUTING_ID, id) }
    public func subscribe(_ prefix: String) throws(ZMQError) { try setOption(ZMQ_SUBSCRIBE, prefix) }
    public func unsubscribe(_ prefix: String) throws(ZMQError) { try setOption(ZMQ_UNSUBSCRIBE, prefix) }
    /// A ROUTER reports unroutable messages (`EHOSTUNREACH`) instead of dropping them silently.
    public func setRouterMandatory(_ on: Bool) throws(ZMQError) { try setOption(ZMQ_ROUTER_MANDATORY, on ? 1 : 0) }
    /// Queue messages only to completed connections (a DEALER then never queues to a dead peer).
    public func setImmediate(_ on: Bool) throws(ZMQError) { try setOption(ZMQ_IMMEDIATE, on ? 1 : 0) }

    /// ZMTP heartbeats: ping every `interval`, drop the connection when nothing came back in `timeout`;
    /// `ttl` asks the remote side to drop us if it hears nothing from us for that long.
    public func setHeartbeat(interval: Duration, timeout: Duration, ttl: Duration? = nil) throws(ZMQError) {
        try setOption(ZMQ_HEARTBEAT_IVL, interval.milliseconds)
        try setOption(ZMQ_HEARTBEAT_TIMEOUT, timeout.milliseconds)
        if let ttl { try setOption(ZMQ_HEARTBEAT_TTL, ttl.milliseconds) }
    }

    /// Reconnect back-off: start at `interval`, double up to `maximum`.
    public func setReconnect(interval: Duration, maximum: Duration) throws(ZMQError) {
        try setOption(ZMQ_RECONNECT_IVL, interval.milliseconds)
        try setOption(ZMQ_RECONNECT_IVL_MAX, maximum.milliseconds)
    }

    // MARK: CurveZMQ

    /// Makes this socket a CURVE server with the given secret key; clients must know its public key.
    public func makeCurveServer(_ keys: CurveKeyPair, zapDomain: String = "wipay") throws(ZMQError) {
        try setOption(ZMQ_CURVE_SERVER, Int32(1))
        try setOption(ZMQ_CURVE_SECRETKEY, keys.secretKey)
        try setOption(ZMQ_ZAP_DOMAIN, zapDomain)
    }

    /// Makes this socket a CURVE client of a server whose public key is `serverPublicKey` (Z85).
    public func makeCurveClient(_ keys: CurveKeyPair, serverPublicKey: String) throws(ZMQError) {
        try setOption(ZMQ_CURVE_SERVERKEY, serverPublicKey)
        try setOption(ZMQ_CURVE_PUBLICKEY, keys.publicKey)
        try setOption(ZMQ_CURVE_SECRETKEY, keys.secretKey)
    }
}

extension Duration {
    /// Whole milliseconds, clamped to what a ZeroMQ option (a C int) can hold.
    public var milliseconds: Int32 {
        let (seconds, attoseconds) = components
        let ms = seconds.multipliedReportingOverflow(by: 1000)
        guard !ms.overflow else { return seconds < 0 ? Int32.min : Int32.max }
        let total = ms.partialValue + attoseconds / 1_000_000_000_000_000
        return Int32(clamping: total)
    }
}

/// Socket monitor events (`ZMQ_EVENT_*`), for `ZMQSocket.monitor`.
public struct SocketEvents: OptionSet, Sendable {
    public let rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }

    public static let handshakeFailedNoDetail = SocketEvents(rawValue: Int32(ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL))
    public static let handshakeFailedProtocol = SocketEvents(rawValue: Int32(ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL))
    public static let handshakeFailedAuth = SocketEvents(rawValue: Int32(ZMQ_EVENT_HANDSHAKE_FAILED_AUTH))
    public static let handshakeFailed: SocketEvents = [.handshakeFailedNoDetail, .handshakeFailedProtocol, .handshakeFailedAuth]
}
