import Logging
import ZeroMQ

/// Publishes events to the broker's XSUB. Thread-safe. PUB/SUB drops what slow or late subscribers
/// miss: anything that must not be lost is published from a durable source (an outbox), not from here alone.
public final class BusPublisher: Sendable {
    public let sender: String
    private let pump: SocketPump

    public init(context: ZMQContext, endpoint: String, sender: String, security: BusSecurity = .none) throws(ZMQError) {
        let socket = try ZMQSocket(context, .pub)
        try security.apply(to: socket)
        try socket.setReconnect(interval: .milliseconds(100), maximum: .seconds(2))
        try socket.setSendHighWaterMark(100_000)
        try socket.connect(endpoint)
        self.sender = sender
        pump = try SocketPump(socket: socket, name: "pub") { _ in }
    }

    @discardableResult
    public func publish(topic: String, type: MessageType, body: [UInt8], requestId: String = "", correlation: String = "")
        -> Bool
    {
        let envelope = Envelope(
            kind: .event, type: type, requestId: requestId, sender: sender, correlation: correlation,
            sentAtMillis: unixMillis())
        return pump.send(BusEvent(topic: topic, envelope: envelope, body: body).frames())
    }

    public func close() { pump.stop() }
}

/// Subscribes to topic prefixes on the broker's XPUB; decoded events arrive on `events`.
/// Undecodable frames are counted and dropped, never crash the subscriber.
public final class BusSubscriber: Sendable {
    public let events: AsyncStream<BusEvent>
    private let pump: SocketPump
    private let continuation: AsyncStream<BusEvent>.Continuation

    public init(
        context: ZMQContext, endpoint: String, topics: [String], security: BusSecurity = .none,
        bufferLimit: Int = 100_000, logger: Logger = Logger(label: "wipay.bus.subscriber")
    ) throws(ZMQError) {
        let socket = try ZMQSocket(context, .sub)
        try security.apply(to: socket)
        try socket.setReconnect(interval: .milliseconds(100), maximum: .seconds(2))
        try socket.setReceiveHighWaterMark(100_000)
        for topic in topics { try socket.subscribe(topic) }
        try socket.connect(endpoint)
        let (stream, continuation) = AsyncStream<BusEvent>.makeStream(bufferingPolicy: .bufferingNewest(bufferLimit))
        events = stream
        self.continuation = continuation
        pump = try SocketPump(socket: socket, name: "sub") { frames in
            do {
                continuation.yield(try BusEvent.parse(frames))
            } catch {
                logger.debug("dropped undecodable event", metadata: ["error": "\(error)"])
            }
        }
        let pump = self.pump
        continuation.onTermination = { _ in pump.stop() }
    }

    /// Stops receiving and ends `events`.
    public func close() {
        pump.stop()
        continuation.finish()
    }
}
