import ZeroMQ

/// What a frame is: a request wanting a reply, the reply to one, or an event (pub/sub).
public enum MessageKind: UInt8, Sendable {
    case request = 1
    case reply = 2
    case event = 3
}

/// The message type, a 16-bit number grouped by stage (see docs/bus-protocol.md). A struct rather than
/// an enum so that a receiver can hold, log and refuse a type it does not know.
public struct MessageType: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    // 0x00xx — any service
    public static let ping = MessageType(rawValue: 0x0001)
    public static let heartbeat = MessageType(rawValue: 0x0002)
    // 0x01xx — control (payctl → one instance's control socket)
    public static let controlStatus = MessageType(rawValue: 0x0101)
    public static let controlDrain = MessageType(rawValue: 0x0102)
    // 0x02xx — ledger
    public static let accountOpen = MessageType(rawValue: 0x0201)
    public static let accountShow = MessageType(rawValue: 0x0202)
    public static let walletUnlock = MessageType(rawValue: 0x0203)
    public static let transferPost = MessageType(rawValue: 0x0210)
    public static let paymentLookup = MessageType(rawValue: 0x0211)
    public static let transferPostBatch = MessageType(rawValue: 0x0212)
    public static let reconcile = MessageType(rawValue: 0x0220)
    // 0x03xx — payment-router
    public static let requestCreate = MessageType(rawValue: 0x0301)
    public static let requestGet = MessageType(rawValue: 0x0302)
    public static let requestCancel = MessageType(rawValue: 0x0303)
    public static let requestList = MessageType(rawValue: 0x0304)
    public static let instructionSubmit = MessageType(rawValue: 0x0310)
    public static let refundCreate = MessageType(rawValue: 0x0320)
    public static let merchantAdd = MessageType(rawValue: 0x0330)
    public static let terminalAdd = MessageType(rawValue: 0x0331)
    public static let terminalAuth = MessageType(rawValue: 0x0332)
    public static let walletAdd = MessageType(rawValue: 0x0333)
    public static let deviceEnroll = MessageType(rawValue: 0x0334)
    public static let deviceGet = MessageType(rawValue: 0x0335)
    public static let accountSummary = MessageType(rawValue: 0x0336)
    public static let paymentTrace = MessageType(rawValue: 0x0337)
    public static let payloadKeys = MessageType(rawValue: 0x0338)
    // 0x04xx — events about payments (published, durable source: the router's outbox)
    public static let outcomePublished = MessageType(rawValue: 0x0401)
    /// The router's outbox relay → notifier (a request, so delivery is acknowledged).
    public static let outcomeDeliver = MessageType(rawValue: 0x0402)
    /// The relay → notifier, many outbox rows in one request (`OutcomeBatch`): one notifier commit for all.
    public static let outcomeDeliverBatch = MessageType(rawValue: 0x0403)
    // 0x05xx — notifier
    public static let noticeDelivered = MessageType(rawValue: 0x0501)
    public static let noticeAck = MessageType(rawValue: 0x0502)
    public static let noticeReplay = MessageType(rawValue: 0x0503)
    public static let noticeHead = MessageType(rawValue: 0x0504)

    static let names: [UInt16: String] = [
        0x0001: "ping", 0x0002: "heartbeat", 0x0101: "control.status", 0x0102: "control.drain",
        0x0201: "account.open", 0x0202: "account.show", 0x0203: "wallet.unlock", 0x0210: "transfer.post", 0x0212: "transfer.post.batch",
        0x0211: "payment.lookup", 0x0220: "reconcile", 0x0301: "request.create", 0x0302: "request.get",
        0x0303: "request.cancel", 0x0304: "request.list", 0x0310: "instruction.submit", 0x0320: "refund.create", 0x0330: "merchant.add",
        0x0331: "terminal.add", 0x0332: "terminal.auth", 0x0333: "wallet.add", 0x0334: "device.enroll",
        0x0335: "device.get", 0x0336: "account.summary", 0x0337: "payment.trace", 0x0338: "payload.keys",
        0x0401: "outcome.published", 0x0402: "outcome.deliver", 0x0403: "outcome.deliver.batch",
        0x0501: "notice.delivered", 0x0502: "notice.ack",
        0x0503: "notice.replay", 0x0504: "notice.head",
    ]

    public var description: String { Self.names[rawValue] ?? "unknown(0x\(String(rawValue, radix: 16)))" }
}

/// Reply status, grouped by class like HTTP: 2xx done, 4xx the caller's fault (do not retry as is),
/// 5xx this stage's trouble (safe to retry with the same request id).
public struct Status: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    public static let none = Status(rawValue: 0)  // requests and events carry no status
    public static let ok = Status(rawValue: 200)
    /// Already done earlier with the same id and the same fields; the body is the first result.
    public static let exists = Status(rawValue: 208)
    public static let badRequest = Status(rawValue: 400)
    public static let notFound = Status(rawValue: 404)
    /// Conflicts with what exists: same id with other fields, or a state that forbids it.
    public static let conflict = Status(rawValue: 409)
    /// Refused by a business rule (insufficient funds, wrong PIN, ...); the error body says which.
    public static let declined = Status(rawValue: 422)
    public static let internalError = Status(rawValue: 500)
    public static let unknownType = Status(rawValue: 501)
    public static let unavailable = Status(rawValue: 503)
    public static let unsupportedVersion = Status(rawValue: 505)

    public var isSuccess: Bool { (200..<300).contains(rawValue) }
    public var isRetryable: Bool { rawValue >= 500 && self != .unknownType && self != .unsupportedVersion }
    public var description: String { String(rawValue) }
}

/// The first frame after the routing part of every bus message. See docs/bus-protocol.md.
public struct Envelope: Sendable, Equatable {
    public static let magic: (UInt8, UInt8) = (0x57, 0x50)  // "WP"
    public static let version: UInt8 = 1
    public static let maxIdBytes = 128

    public var kind: MessageKind
    public var type: MessageType
    public var status: Status
    /// Chosen by the caller, unique per logical request, kept across retries: receivers deduplicate by it.
    public var requestId: String
    /// `service/instance` of whoever sent this frame.
    public var sender: String
    /// Ties this message to a larger piece of work (the payment request id, a trace id).
    public var correlation: String
    /// Unix milliseconds when sent.
    public var sentAtMillis: Int64
    /// Unix milliseconds after which the caller no longer waits; 0 = none. Workers skip expired requests.
    public var deadlineMillis: Int64

    public init(
        kind: MessageKind, type: MessageType, status: Status = .none, requestId: String, sender: String,
        correlation: String = "", sentAtMillis: Int64 = 0, deadlineMillis: Int64 = 0
    ) {
        self.kind = kind
        self.type = type
        self.status = status
        self.requestId = requestId
        self.sender = sender
        self.correlation = correlation
        self.sentAtMillis = sentAtMillis
        self.deadlineMillis = deadlineMillis
    }

    /// The envelope of the reply to this request.
    public func reply(status: Status, sender: String, nowMillis: Int64) -> Envelope {
        Envelope(
            kind: .reply, type: type, status: status, requestId: requestId, sender: sender,
            correlation: correlation, sentAtMillis: nowMillis, deadlineMillis: 0)
    }
}

extension Envelope: BusEncodable {
    public func encode(to writer: inout BusWriter) {
        writer.write(Self.magic.0)
        writer.write(Self.magic.1)
        writer.write(Self.version)
        writer.write(kind.rawValue)
        writer.write(type.rawValue)
        writer.write(status.rawValue)
        writer.write(sentAtMillis)
        writer.write(deadlineMillis)
        writer.write(requestId)
        writer.write(sender)
        writer.write(correlation)
    }

    public init(from reader: inout BusReader) throws(BusDecodeError) {
        guard try reader.readUInt8("magic") == Self.magic.0, try reader.readUInt8("magic") == Self.magic.1 else {
            throw BusDecodeError(.badMagic, "magic")
        }
        guard try reader.readUInt8("version") == Self.version else {
            throw BusDecodeError(.unsupportedVersion, "version")
        }
        guard let kind = MessageKind(rawValue: try reader.readUInt8("kind")) else {
            throw BusDecodeError(.badKind, "kind")
        }
        self.kind = kind
        type = MessageType(rawValue: try reader.readUInt16("type"))
        status = Status(rawValue: try reader.readUInt16("status"))
        sentAtMillis = try reader.readInt64("sent_at")
        deadlineMillis = try reader.readInt64("deadline")
        requestId = try reader.readString("request_id", max: Self.maxIdBytes)
        sender = try reader.readString("sender", max: Self.maxIdBytes)
        correlation = try reader.readString("correlation", max: Self.maxIdBytes)
    }
}

/// A decoded request or reply: routing frames (to echo back), envelope and body.
public struct BusMessage: Sendable {
    /// Frames before the empty delimiter, put there by ROUTER sockets on the way; echoed in the reply.
    public var route: Frames
    public var envelope: Envelope
    public var body: [UInt8]

    public init(route: Frames = [], envelope: Envelope, body: [UInt8]) {
        self.route = route
        self.envelope = envelope
        self.body = body
    }

    public static let maxRouteFrames = 8

    /// `[route..., "", envelope, body]` — the form of requests and replies on DEALER/ROUTER sockets.
    public func frames() -> Frames {
        var frames = route
        frames.append([])
        frames.append(envelope.encoded())
        frames.append(body)
        return frames
    }

    /// Parses `[route..., "", envelope, body]`. Routing frames are kept even when the rest is
    /// undecodable, so that the receiver can still send a `badRequest` reply back (see `parseRoute`).
    public static func parse(_ frames: Frames) throws(BusDecodeError) -> BusMessage {
        let route = try parseRoute(frames)
        let rest = frames.count - route.count - 1
        guard rest == 2 else { throw BusDecodeError(.wrongFrameCount, "frames") }
        let envelope = try Envelope.decode(frames[route.count + 1])
        return BusMessage(route: route, envelope: envelope, body: frames[route.count + 2])
    }

    /// The routing frames before the empty delimiter.
    public static func parseRoute(_ frames: Frames) throws(BusDecodeError) -> Frames {
        guard let delimiter = frames.firstIndex(where: { $0.isEmpty }) else {
            throw BusDecodeError(.wrongFrameCount, "delimiter")
        }
        guard delimiter <= maxRouteFrames else { throw BusDecodeError(.tooLong, "route") }
        return Array(frames[..<delimiter])
    }
}

/// Events on pub/sub: `[topic, envelope, body]`. Subscribers filter by topic prefix.
public struct BusEvent: Sendable {
    public var topic: String
    public var envelope: Envelope
    public var body: [UInt8]

    public init(topic: String, envelope: Envelope, body: [UInt8]) {
        self.topic = topic
        self.envelope = envelope
        self.body = body
    }

    public func frames() -> Frames { [Array(topic.utf8), envelope.encoded(), body] }

    public static func parse(_ frames: Frames) throws(BusDecodeError) -> BusEvent {
        guard frames.count == 3 else { throw BusDecodeError(.wrongFrameCount, "frames") }
        guard frames[0].count <= 256 else { throw BusDecodeError(.tooLong, "topic") }
        guard let topic = String(validating: frames[0], as: UTF8.self) else { throw BusDecodeError(.invalidUTF8, "topic") }
        let envelope = try Envelope.decode(frames[1])
        guard envelope.kind == .event else { throw BusDecodeError(.badKind, "kind") }
        return BusEvent(topic: topic, envelope: envelope, body: frames[2])
    }
}

/// Event topics.
public enum Topic {
    /// `hb.<service>` — an instance's heartbeat, once per heartbeat interval.
    public static func heartbeat(_ service: String) -> String { "hb.\(service)" }
    public static let heartbeatPrefix = "hb."
    /// `outcome.<request id>` — a payment request reached a final state (or a refund posted).
    public static let outcomePrefix = "outcome."
    /// `notice.pos.<terminal id>` and `notice.dev.<device id>` — a notice for one client stream.
    public static let noticePrefix = "notice."
}
