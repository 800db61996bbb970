import Testing
import WiPayBus
import ZeroMQ

// MARK: - helpers shared by the codec and fuzz tests

/// Decodes `bytes` as `T` and returns the error, or nil when it decoded.
func decodeError<T: BusEncodable>(_: T.Type, _ bytes: [UInt8]) -> BusDecodeError? {
    do {
        _ = try T.decode(bytes)
        return nil
    } catch {
        return error
    }
}

/// Encodes, decodes, and checks the value and its bytes survive unchanged (strings compared byte for
/// byte: Swift's `==` on String is canonical equivalence, which would hide a normalising codec).
func expectRoundTrip<T: BusEncodable & Equatable>(_ value: T, sourceLocation: SourceLocation = #_sourceLocation) {
    let bytes = value.encoded()
    do {
        let decoded = try T.decode(bytes)
        #expect(decoded == value, sourceLocation: sourceLocation)
        #expect(decoded.encoded() == bytes, "re-encoding changed the bytes", sourceLocation: sourceLocation)
    } catch {
        Issue.record("round trip of \(T.self) failed: \(error)", sourceLocation: sourceLocation)
    }
}

/// Writes a length prefix and raw bytes (which need not be UTF-8).
func lengthPrefixed(_ raw: [UInt8]) -> [UInt8] {
    var w = BusWriter()
    w.write(bytes: raw)
    return w.bytes
}

enum Samples {
    /// Precomposed and decomposed accents, CJK, a flag and a ZWJ family: 4-byte UTF-8 and grapheme clusters.
    static let unicode = "Zürich café e\u{301} — 東京 🇨🇭 👩‍👩‍👧 €"
    static let extremes: [Int64] = [0, 1, -1, Int64.min, Int64.max, Int64.min + 1, Int64.max - 1, 0x0102_0304_0506_0708]

    static let envelopes: [Envelope] = [
        Envelope(kind: .request, type: .ping, requestId: "r-1", sender: "pos-gateway/1"),
        Envelope(
            kind: .reply, type: .transferPost, status: .exists, requestId: unicode, sender: "ledger/ü-1",
            correlation: "pay-🚀", sentAtMillis: .max, deadlineMillis: .min),
        Envelope(
            kind: .event, type: MessageType(rawValue: 0xFFFF), status: Status(rawValue: 0xFFFF), requestId: "",
            sender: "", correlation: "", sentAtMillis: .min, deadlineMillis: .max),
        Envelope(
            kind: .request, type: .reconcile, status: .none, requestId: String(repeating: "x", count: Envelope.maxIdBytes),
            sender: String(repeating: "é", count: Envelope.maxIdBytes / 2), correlation: String(repeating: "🚀", count: 32),
            sentAtMillis: -1, deadlineMillis: 1),
    ]

    static let errorBodies: [ErrorBody] = [
        ErrorBody(code: "", message: ""),
        ErrorBody(code: "no_instance", message: "no instance of ledger is available; retry"),
        ErrorBody(code: String(repeating: "c", count: 64), message: String(repeating: "ü", count: 512)),
        ErrorBody(code: "déclinée", message: unicode),
    ]

    static func instanceStatus(_ n: Int64, healthy: Bool = true, draining: Bool = false) -> InstanceStatus {
        InstanceStatus(
            service: "ledger", instance: "ledger-\(n)", version: "1.2.3", host: "höst-🚀", pid: n, startedAtMillis: 0 &- n,
            healthy: healthy, draining: draining, inFlight: n, handledTotal: .max, recentPerSecond: .min,
            controlEndpoint: "tcp://127.0.0.1:7001", httpEndpoint: "", detail: unicode)
    }

    static let instanceStatuses: [InstanceStatus] = [
        instanceStatus(0), instanceStatus(.max, healthy: false, draining: true), instanceStatus(.min, healthy: true, draining: true),
        InstanceStatus(
            service: "", instance: "", version: "", host: "", pid: 0, startedAtMillis: 0, healthy: false, draining: false,
            inFlight: 0, handledTotal: 0, recentPerSecond: 0, controlEndpoint: "", httpEndpoint: "", detail: ""),
        InstanceStatus(
            service: String(repeating: "s", count: 64), instance: String(repeating: "i", count: 128),
            version: String(repeating: "v", count: 64), host: String(repeating: "h", count: 256), pid: -1,
            startedAtMillis: .max, healthy: true, draining: false, inFlight: -1, handledTotal: .min, recentPerSecond: .max,
            controlEndpoint: String(repeating: "c", count: 256), httpEndpoint: String(repeating: "w", count: 256),
            detail: String(repeating: "d", count: 1024)),
    ]

    static let drainReplies: [DrainReply] = [
        DrainReply(accepted: true, inFlight: 0), DrainReply(accepted: false, inFlight: .max),
        DrainReply(accepted: true, inFlight: .min), DrainReply(accepted: false, inFlight: -1),
    ]

    static let accountOpens: [AccountOpen] = [
        AccountOpen(accountId: "w-1", kind: .wallet, currency: "CHF", name: "Anna Müller", pin: "1234"),
        AccountOpen(accountId: "m-1", kind: .merchant, currency: "EUR", name: "Café ☕︎ & Co", pin: nil),
        AccountOpen(accountId: "m-2", kind: .merchant, currency: "CHF", name: "Bäckerei", pin: nil, ownerId: "merchant-ü-7"),
        AccountOpen(accountId: "w-2", kind: .wallet, currency: "CHF", name: "x", pin: "0000", ownerId: String(repeating: "o", count: 64)),
        AccountOpen(accountId: "f-1", kind: .funding, currency: "JPY", name: "東京", pin: ""),
        AccountOpen(
            accountId: String(repeating: "a", count: 64), kind: .wallet, currency: "€€", name: String(repeating: "n", count: 256),
            pin: String(repeating: "9", count: 16)),
        AccountOpen(accountId: "", kind: .merchant, currency: "", name: "", pin: nil),
    ]

    static let accountRefs: [AccountRef] = [
        AccountRef(accountId: ""), AccountRef(accountId: "w-ü-🚀"), AccountRef(accountId: String(repeating: "z", count: 64)),
    ]

    static let accountInfos: [AccountInfo] =
        extremes.map { balance in
            AccountInfo(accountId: "acc-\(balance)", kind: .wallet, currency: "CHF", name: unicode, balance: balance, locked: false)
        } + [
            AccountInfo(accountId: "m", kind: .merchant, currency: "USD", name: "", balance: .min, locked: true),
            AccountInfo(accountId: "f", kind: .funding, currency: "", name: "x", balance: .max, locked: true),
        ]

    static let transferPosts: [TransferPost] = [
        TransferPost(
            transferId: "t-1", kind: .payment, debitAccountId: "w-1", creditAccountId: "m-1", amountMinor: 1250, currency: "CHF",
            paymentRequestId: "pr-ü", refundOf: "t-0", pin: "0000"),
        TransferPost(
            transferId: "t-2", kind: .refund, debitAccountId: "m-1", creditAccountId: "w-1", amountMinor: .max, currency: "EUR"),
        TransferPost(
            transferId: "t-3", kind: .funding, debitAccountId: "f", creditAccountId: "w", amountMinor: .min, currency: "JPY",
            paymentRequestId: nil, refundOf: "", pin: nil),
        TransferPost(
            transferId: "", kind: .payment, debitAccountId: "", creditAccountId: "", amountMinor: -1, currency: "",
            paymentRequestId: "", refundOf: nil, pin: ""),
        TransferPost(
            transferId: String(repeating: "t", count: 64), kind: .refund, debitAccountId: String(repeating: "d", count: 64),
            creditAccountId: String(repeating: "c", count: 64), amountMinor: 0, currency: "12345678",
            paymentRequestId: String(repeating: "p", count: 64), refundOf: String(repeating: "r", count: 64),
            pin: String(repeating: "9", count: 16)),
    ]

    static let transferResults: [TransferResult] = extremes.map {
        TransferResult(transferId: "t-\($0)-ü", postedAtMillis: $0, debitBalance: ~$0, creditBalance: $0 &+ 1)
    }

    static let reconcileChecks: [ReconcileCheck] = [
        ReconcileCheck(name: "", ok: true, offending: []),
        ReconcileCheck(name: "balances_match_entries", ok: false, offending: ["w-1: 100 ≠ 99", "", unicode]),
        ReconcileCheck(
            name: String(repeating: "n", count: 128), ok: false,
            offending: Array(repeating: String(repeating: "o", count: 40), count: 1000)),
        ReconcileCheck(name: "one long line", ok: false, offending: [String(repeating: "€", count: 1365)]),
    ]

    static let reconcileReports: [ReconcileReport] = [
        ReconcileReport(checks: []),
        ReconcileReport(checks: reconcileChecks),
        ReconcileReport(checks: (0..<64).map { ReconcileCheck(name: "check-\($0)", ok: $0 % 2 == 0, offending: ["\($0)"]) }),
    ]
}

// MARK: - round trips

@Suite struct RoundTripTests {
    @Test(arguments: Samples.envelopes)
    func envelopeRoundTrips(_ envelope: Envelope) {
        expectRoundTrip(envelope)
        let decoded = try? Envelope.decode(envelope.encoded())
        #expect(decoded.map { Array($0.requestId.utf8) } == Array(envelope.requestId.utf8))
        #expect(decoded.map { Array($0.sender.utf8) } == Array(envelope.sender.utf8))
        #expect(decoded.map { Array($0.correlation.utf8) } == Array(envelope.correlation.utf8))
    }

    @Test func envelopeRoundTripsEveryKindAndKnownType() {
        let types: [MessageType] = [
            .ping, .heartbeat, .controlStatus, .controlDrain, .accountOpen, .accountShow, .walletUnlock, .transferPost,
            .reconcile, .requestCreate, .requestGet, .requestCancel, .instructionSubmit, .refundCreate, .outcomePublished,
            .noticeDelivered, .noticeAck, .noticeReplay,
        ]
        let statuses: [Status] = [
            .none, .ok, .exists, .badRequest, .notFound, .conflict, .declined, .internalError, .unknownType, .unavailable,
            .unsupportedVersion,
        ]
        for kind in [MessageKind.request, .reply, .event] {
            for type in types {
                for status in statuses {
                    expectRoundTrip(Envelope(kind: kind, type: type, status: status, requestId: "id", sender: "s"))
                }
            }
        }
    }

    @Test func envelopeHasTheDocumentedWireLayout() {
        let envelope = Envelope(
            kind: .reply, type: .transferPost, status: .unavailable, requestId: "ab", sender: "é", correlation: "",
            sentAtMillis: 0x0102_0304_0506_0708, deadlineMillis: -2)
        let expected: [UInt8] =
            [0x57, 0x50, 0x01, 0x02]  // "WP", version 1, kind reply
            + [0x02, 0x10, 0x01, 0xF7]  // type 0x0210, status 503
            + [0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08]  // sent_at, big-endian
            + [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFE]  // deadline -2, two's complement
            + [0x02, 0x61, 0x62]  // "ab"
            + [0x02, 0xC3, 0xA9]  // "é" is two UTF-8 bytes
            + [0x00]  // ""
        #expect(envelope.encoded() == expected)
    }

    @Test func lengthsAreUnsignedLEB128() throws {
        let cases: [(Int, [UInt8])] = [
            (0, [0x00]), (1, [0x01]), (127, [0x7F]), (128, [0x80, 0x01]), (300, [0xAC, 0x02]), (16_383, [0xFF, 0x7F]),
            (16_384, [0x80, 0x80, 0x01]), (Int(Int64.max), [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]),
        ]
        for (value, bytes) in cases {
            var w = BusWriter()
            w.writeLength(value)
            #expect(w.bytes == bytes, "length \(value)")
            var r = BusReader(bytes)
            #expect(try r.readLength("n", max: .max) == value)
            #expect(r.isAtEnd)
        }
    }

    @Test func fixedWidthIntegersAreBigEndian() throws {
        var w = BusWriter()
        w.write(UInt8(0xAB))
        w.write(UInt16(0x0102))
        w.write(UInt32(0x0A0B_0C0D))
        w.write(Int64.min)
        w.write(true)
        w.write(false)
        #expect(w.bytes == [0xAB, 0x01, 0x02, 0x0A, 0x0B, 0x0C, 0x0D, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 0])
        var r = BusReader(w.bytes)
        #expect(try r.readUInt8("a") == 0xAB)
        #expect(try r.readUInt16("b") == 0x0102)
        #expect(try r.readUInt32("c") == 0x0A0B_0C0D)
        #expect(try r.readInt64("d") == .min)
        #expect(try r.readBool("e") == true)
        #expect(try r.readBool("f") == false)
        try r.finish()
    }

    @Test func int64ExtremesRoundTripThroughTheReader() throws {
        for value in Samples.extremes {
            var w = BusWriter()
            w.write(value)
            w.write(Optional(value))
            w.write(Int64?.none)
            #expect(w.bytes.count == 8 + 9 + 1)
            var r = BusReader(w.bytes)
            #expect(try r.readInt64("v") == value)
            #expect(try r.readOptionalInt64("o") == value)
            #expect(try r.readOptionalInt64("n") == nil)
            try r.finish()
        }
    }

    @Test func optionalStringsAndBytesRoundTrip() throws {
        var w = BusWriter()
        w.write(Optional(Samples.unicode))
        w.write(String?.none)
        w.write(Optional(""))
        w.write(bytes: [0, 0xFF, 0x80])
        w.write(bytes: [])
        var r = BusReader(w.bytes)
        #expect(try r.readOptionalString("a").map { Array($0.utf8) } == Array(Samples.unicode.utf8))
        #expect(try r.readOptionalString("b") == nil)
        #expect(try r.readOptionalString("c") == "")
        #expect(try r.readBytes("d") == [0, 0xFF, 0x80])
        #expect(try r.readBytes("e") == [])
        #expect(r.remaining == 0)
        try r.finish()
    }

    @Test(arguments: Samples.errorBodies) func errorBodyRoundTrips(_ body: ErrorBody) { expectRoundTrip(body) }

    @Test func emptyIsZeroBytes() throws {
        #expect(Empty().encoded() == [])
        #expect(try Empty.decode([]) == Empty())
    }

    @Test(arguments: Samples.instanceStatuses) func instanceStatusRoundTrips(_ status: InstanceStatus) {
        expectRoundTrip(status)
    }

    @Test(arguments: Samples.drainReplies) func drainReplyRoundTrips(_ reply: DrainReply) { expectRoundTrip(reply) }

    @Test(arguments: Samples.accountOpens) func accountOpenRoundTrips(_ open: AccountOpen) { expectRoundTrip(open) }

    @Test func accountOpenOwnerIdRoundTripsWithAndWithoutPin() throws {
        for pin in [nil, "1234"] as [String?] {
            for owner in [nil, "", "merchant-1"] as [String?] {
                let open = AccountOpen(accountId: "a", kind: .merchant, currency: "CHF", name: "n", pin: pin, ownerId: owner)
                let decoded = try AccountOpen.decode(open.encoded())
                #expect(decoded.pin == pin)
                #expect(decoded.ownerId == owner)
            }
        }
        #expect(AccountOpen(accountId: "a", kind: .merchant, currency: "C", name: "n", pin: nil).ownerId == nil)
    }

    @Test func accountOpenDistinguishesNoPinFromEmptyPin() throws {
        let withoutPin = AccountOpen(accountId: "a", kind: .merchant, currency: "CHF", name: "n", pin: nil)
        let emptyPin = AccountOpen(accountId: "a", kind: .merchant, currency: "CHF", name: "n", pin: "")
        #expect(withoutPin.encoded() != emptyPin.encoded())
        #expect(try AccountOpen.decode(withoutPin.encoded()).pin == nil)
        #expect(try AccountOpen.decode(emptyPin.encoded()).pin == "")
        #expect(emptyPin.encoded().count == withoutPin.encoded().count + 1)  // flag 1 + length 0 vs flag 0
    }

    @Test(arguments: Samples.accountRefs) func accountRefRoundTrips(_ ref: AccountRef) { expectRoundTrip(ref) }

    @Test(arguments: Samples.accountInfos) func accountInfoRoundTrips(_ info: AccountInfo) { expectRoundTrip(info) }

    @Test(arguments: Samples.transferPosts) func transferPostRoundTrips(_ post: TransferPost) { expectRoundTrip(post) }

    @Test func transferPostOptionalsAllSetAndAllNil() throws {
        let all = TransferPost(
            transferId: "t", kind: .payment, debitAccountId: "d", creditAccountId: "c", amountMinor: 5, currency: "CHF",
            paymentRequestId: "p", refundOf: "r", pin: "1")
        let none = TransferPost(
            transferId: "t", kind: .payment, debitAccountId: "d", creditAccountId: "c", amountMinor: 5, currency: "CHF")
        let decodedAll = try TransferPost.decode(all.encoded())
        #expect(decodedAll.paymentRequestId == "p")
        #expect(decodedAll.refundOf == "r")
        #expect(decodedAll.pin == "1")
        let decodedNone = try TransferPost.decode(none.encoded())
        #expect(decodedNone.paymentRequestId == nil)
        #expect(decodedNone.refundOf == nil)
        #expect(decodedNone.pin == nil)
        #expect(decodedNone != decodedAll)
        // Each present optional costs flag + length + 1 byte; absent costs the flag only.
        #expect(all.encoded().count == none.encoded().count + 3 * 2)
    }

    @Test(arguments: Samples.transferResults) func transferResultRoundTrips(_ result: TransferResult) {
        expectRoundTrip(result)
    }

    @Test(arguments: Samples.reconcileChecks) func reconcileCheckRoundTrips(_ check: ReconcileCheck) {
        expectRoundTrip(check)
    }

    @Test(arguments: Samples.reconcileReports) func reconcileReportRoundTrips(_ report: ReconcileReport) {
        expectRoundTrip(report)
    }

    @Test func reconcileReportOkIsTheConjunctionOfItsChecks() {
        #expect(ReconcileReport(checks: []).ok)
        #expect(ReconcileReport(checks: [ReconcileCheck(name: "a", ok: true, offending: [])]).ok)
        #expect(
            !ReconcileReport(checks: [
                ReconcileCheck(name: "a", ok: true, offending: []), ReconcileCheck(name: "b", ok: false, offending: ["x"]),
            ]).ok)
    }

    @Test func envelopeReplyKeepsIdentityAndClearsDeadline() {
        let request = Envelope(
            kind: .request, type: .transferPost, requestId: "r-9", sender: "router/1", correlation: "pay-1",
            sentAtMillis: 10, deadlineMillis: 20)
        let reply = request.reply(status: .declined, sender: "ledger/2", nowMillis: 30)
        #expect(
            reply
                == Envelope(
                    kind: .reply, type: .transferPost, status: .declined, requestId: "r-9", sender: "ledger/2",
                    correlation: "pay-1", sentAtMillis: 30, deadlineMillis: 0))
    }
}

// MARK: - multipart messages

@Suite struct FrameTests {
    static let envelope = Envelope(
        kind: .request, type: .accountShow, requestId: "req-1", sender: "payctl/🚀", correlation: "c", sentAtMillis: 1,
        deadlineMillis: 2)
    static let body = AccountRef(accountId: "w-ü").encoded()

    @Test(arguments: [0, 1, 2, BusMessage.maxRouteFrames])
    func busMessageFramesRoundTrip(routeCount: Int) throws {
        let route: Frames = (0..<routeCount).map { [UInt8(0xF0 + $0), 0x00, 0xFF] }  // binary ROUTER identities
        let message = BusMessage(route: route, envelope: Self.envelope, body: Self.body)
        let frames = message.frames()
        #expect(frames.count == routeCount + 3)
        #expect(Array(frames.prefix(routeCount)) == route)
        #expect(frames[routeCount] == [])
        #expect(frames[routeCount + 1] == Self.envelope.encoded())
        #expect(frames[routeCount + 2] == Self.body)
        let parsed = try BusMessage.parse(frames)
        #expect(parsed.route == route)
        #expect(parsed.envelope == Self.envelope)
        #expect(parsed.body == Self.body)
        #expect(try BusMessage.parseRoute(frames) == route)
        #expect(try AccountRef.decode(parsed.body) == AccountRef(accountId: "w-ü"))
    }

    @Test func busMessageWithEmptyBody() throws {
        let message = BusMessage(route: [Array("c".utf8)], envelope: Self.envelope, body: [])
        let parsed = try BusMessage.parse(message.frames())
        #expect(parsed.body == [])
        #expect(parsed.route == [Array("c".utf8)])
    }

    @Test func busMessageParseRejectsMalformedFrames() {
        let env = Self.envelope.encoded()
        func failure(_ frames: Frames) -> BusDecodeError? {
            do {
                _ = try BusMessage.parse(frames)
                return nil
            } catch { return error }
        }
        #expect(failure([]) == BusDecodeError(.wrongFrameCount, "delimiter"))
        #expect(failure([env, Self.body]) == BusDecodeError(.wrongFrameCount, "delimiter"))
        #expect(failure([[]]) == BusDecodeError(.wrongFrameCount, "frames"))
        #expect(failure([[], env]) == BusDecodeError(.wrongFrameCount, "frames"))
        #expect(failure([[1], [], env]) == BusDecodeError(.wrongFrameCount, "frames"))
        #expect(failure([[], env, Self.body, [1]]) == BusDecodeError(.wrongFrameCount, "frames"))
        #expect(failure([[], env, Self.body, []]) == BusDecodeError(.wrongFrameCount, "frames"))
        let tooManyRoutes: Frames = Array(repeating: [1], count: BusMessage.maxRouteFrames + 1) + [[], env, Self.body]
        #expect(failure(tooManyRoutes) == BusDecodeError(.tooLong, "route"))
        #expect(failure([[], [0x57, 0x51] + env.dropFirst(2), Self.body]) == BusDecodeError(.badMagic, "magic"))
        #expect(failure([[], env + [0], Self.body]) == BusDecodeError(.trailingBytes, "Envelope"))
    }

    @Test func busEventFramesRoundTrip() throws {
        let envelope = Envelope(kind: .event, type: .outcomePublished, requestId: "pr-1", sender: "router/1", sentAtMillis: 5)
        let topics = ["outcome.pr-1", "", "notice.pos.tërminal-🚀", String(repeating: "t", count: 256)]
        for topic in topics {
            let event = BusEvent(topic: topic, envelope: envelope, body: [1, 2, 3])
            let frames = event.frames()
            #expect(frames.count == 3)
            #expect(frames[0] == Array(topic.utf8))
            let parsed = try BusEvent.parse(frames)
            #expect(Array(parsed.topic.utf8) == Array(topic.utf8))
            #expect(parsed.envelope == envelope)
            #expect(parsed.body == [1, 2, 3])
        }
    }

    @Test func busEventParseRejectsMalformedFrames() {
        let event = Envelope(kind: .event, type: .outcomePublished, requestId: "", sender: "s").encoded()
        func failure(_ frames: Frames) -> BusDecodeError? {
            do {
                _ = try BusEvent.parse(frames)
                return nil
            } catch { return error }
        }
        #expect(failure([]) == BusDecodeError(.wrongFrameCount, "frames"))
        #expect(failure([Array("t".utf8), event]) == BusDecodeError(.wrongFrameCount, "frames"))
        #expect(failure([Array("t".utf8), event, [], []]) == BusDecodeError(.wrongFrameCount, "frames"))
        #expect(failure([[0xFF, 0xFE], event, []]) == BusDecodeError(.invalidUTF8, "topic"))
        #expect(failure([Array(repeating: 0x61, count: 257), event, []]) != nil)
        #expect(failure([Array("t".utf8), [0x57], []]) == BusDecodeError(.truncated, "magic"))
        for kind in [MessageKind.request, .reply] {
            let envelope = Envelope(kind: kind, type: .outcomePublished, requestId: "", sender: "s").encoded()
            #expect(failure([Array("t".utf8), envelope, []]) == BusDecodeError(.badKind, "kind"))
        }
    }

    @Test
    func busEventOverlongTopicIsTooLong() {
        let event = Envelope(kind: .event, type: .outcomePublished, requestId: "", sender: "s").encoded()
        #expect(throws: BusDecodeError(.tooLong, "topic")) {
            try BusEvent.parse([Array(repeating: 0x61, count: 257), event, []])
        }
    }

    @Test func brokerCommandParsesOnlyItsFourCommands() {
        #expect(BrokerCommand.parse(Array("HB".utf8)) == .heartbeat)
        #expect(BrokerCommand.parse(Array("REQ".utf8)) == .request)
        #expect(BrokerCommand.parse(Array("REPLY".utf8)) == .reply)
        #expect(BrokerCommand.parse(Array("DRAIN".utf8)) == .drain)
        for command in [BrokerCommand.heartbeat, .request, .reply, .drain] {
            #expect(BrokerCommand.parse(command.frame) == command)
        }
        #expect(BrokerCommand.parse([]) == nil)
        #expect(BrokerCommand.parse(Array("hb".utf8)) == nil)
        #expect(BrokerCommand.parse(Array("HB ".utf8)) == nil)
        #expect(BrokerCommand.parse([0xFF]) == nil)
        #expect(BrokerCommand.parse(Array(repeating: 0x41, count: 100_000)) == nil)
    }
}

// MARK: - what decode refuses

@Suite struct DecodeErrorTests {
    static let envelope = Envelope(
        kind: .request, type: .transferPost, requestId: "r", sender: "s", correlation: "c", sentAtMillis: 1, deadlineMillis: 2)

    /// The envelope's fixed-width header, then three strings written raw.
    static func envelopeBytes(header: [UInt8]? = nil, requestId: [UInt8], sender: [UInt8] = [], correlation: [UInt8] = [])
        -> [UInt8]
    {
        let fixed = header ?? Array(Self.envelope.encoded().prefix(24))
        return fixed + lengthPrefixed(requestId) + lengthPrefixed(sender) + lengthPrefixed(correlation)
    }

    @Test func trailingBytesAreRejectedForEveryType() {
        let one: UInt8 = 0
        #expect(decodeError(Envelope.self, Self.envelope.encoded() + [one]) == BusDecodeError(.trailingBytes, "Envelope"))
        #expect(decodeError(ErrorBody.self, Samples.errorBodies[1].encoded() + [one]) == BusDecodeError(.trailingBytes, "ErrorBody"))
        #expect(decodeError(Empty.self, [one]) == BusDecodeError(.trailingBytes, "Empty"))
        #expect(
            decodeError(InstanceStatus.self, Samples.instanceStatuses[0].encoded() + [one])
                == BusDecodeError(.trailingBytes, "InstanceStatus"))
        #expect(decodeError(DrainReply.self, Samples.drainReplies[0].encoded() + [one]) == BusDecodeError(.trailingBytes, "DrainReply"))
        #expect(
            decodeError(AccountOpen.self, Samples.accountOpens[0].encoded() + [one]) == BusDecodeError(.trailingBytes, "AccountOpen"))
        #expect(decodeError(AccountRef.self, Samples.accountRefs[1].encoded() + [one]) == BusDecodeError(.trailingBytes, "AccountRef"))
        #expect(
            decodeError(AccountInfo.self, Samples.accountInfos[0].encoded() + [one]) == BusDecodeError(.trailingBytes, "AccountInfo"))
        #expect(
            decodeError(TransferPost.self, Samples.transferPosts[0].encoded() + [one])
                == BusDecodeError(.trailingBytes, "TransferPost"))
        #expect(
            decodeError(TransferResult.self, Samples.transferResults[0].encoded() + [one])
                == BusDecodeError(.trailingBytes, "TransferResult"))
        #expect(
            decodeError(ReconcileCheck.self, Samples.reconcileChecks[1].encoded() + [one])
                == BusDecodeError(.trailingBytes, "ReconcileCheck"))
        #expect(
            decodeError(ReconcileReport.self, Samples.reconcileReports[1].encoded() + [one])
                == BusDecodeError(.trailingBytes, "ReconcileReport"))
    }

    @Test func badMagicIsRejected() {
        var bytes = Self.envelope.encoded()
        bytes[0] = 0x58
        #expect(decodeError(Envelope.self, bytes) == BusDecodeError(.badMagic, "magic"))
        bytes = Self.envelope.encoded()
        bytes[1] = 0x57
        #expect(decodeError(Envelope.self, bytes) == BusDecodeError(.badMagic, "magic"))
        #expect(decodeError(Envelope.self, Array("{\"json\":true}".utf8)) == BusDecodeError(.badMagic, "magic"))
    }

    @Test(arguments: [0, 2, 3, 0x7F, 0xFF] as [UInt8])
    func unsupportedVersionIsRejected(version: UInt8) {
        var bytes = Self.envelope.encoded()
        bytes[2] = version
        #expect(decodeError(Envelope.self, bytes) == BusDecodeError(.unsupportedVersion, "version"))
    }

    @Test(arguments: [0, 4, 5, 0x80, 0xFF] as [UInt8])
    func badKindIsRejected(kind: UInt8) {
        var bytes = Self.envelope.encoded()
        bytes[3] = kind
        #expect(decodeError(Envelope.self, bytes) == BusDecodeError(.badKind, "kind"))
    }

    @Test func everyValidKindIsAccepted() throws {
        for (raw, kind) in [(UInt8(1), MessageKind.request), (2, .reply), (3, .event)] {
            var bytes = Self.envelope.encoded()
            bytes[3] = raw
            #expect(try Envelope.decode(bytes).kind == kind)
        }
    }

    @Test(arguments: [2, 3, 0x80, 0xFF] as [UInt8])
    func invalidBoolBytesAreRejected(byte: UInt8) {
        // DrainReply: accepted is the first byte.
        var drain = DrainReply(accepted: true, inFlight: 3).encoded()
        drain[0] = byte
        #expect(decodeError(DrainReply.self, drain) == BusDecodeError(.invalidValue, "accepted"))

        // AccountInfo: locked is the last byte.
        var info = Samples.accountInfos[0].encoded()
        info[info.count - 1] = byte
        #expect(decodeError(AccountInfo.self, info) == BusDecodeError(.invalidValue, "locked"))

        // AccountOpen: the presence flags of pin and owner id are its last two bytes.
        var open = AccountOpen(accountId: "a", kind: .wallet, currency: "CHF", name: "n", pin: nil, ownerId: nil).encoded()
        open[open.count - 2] = byte
        #expect(decodeError(AccountOpen.self, open) == BusDecodeError(.invalidValue, "pin"))
        open = AccountOpen(accountId: "a", kind: .wallet, currency: "CHF", name: "n", pin: nil, ownerId: nil).encoded()
        open[open.count - 1] = byte
        #expect(decodeError(AccountOpen.self, open) == BusDecodeError(.invalidValue, "owner_id"))

        // InstanceStatus: healthy and draining follow the two Int64s.
        let status = Samples.instanceStatuses[3]  // every string empty: offsets are fixed
        var bytes = status.encoded()
        let healthyOffset = 4 + 16
        bytes[healthyOffset] = byte
        #expect(decodeError(InstanceStatus.self, bytes) == BusDecodeError(.invalidValue, "healthy"))
        bytes = status.encoded()
        bytes[healthyOffset + 1] = byte
        #expect(decodeError(InstanceStatus.self, bytes) == BusDecodeError(.invalidValue, "draining"))

        // ReconcileCheck: ok follows the name.
        var check = ReconcileCheck(name: "", ok: true, offending: []).encoded()
        check[1] = byte
        #expect(decodeError(ReconcileCheck.self, check) == BusDecodeError(.invalidValue, "ok"))

        // TransferPost: each optional's flag.
        let post = TransferPost(transferId: "", kind: .payment, debitAccountId: "", creditAccountId: "", amountMinor: 0, currency: "")
        let flagsStart = 1 + 1 + 1 + 1 + 8 + 1
        for (offset, field) in [(0, "payment_request_id"), (1, "refund_of"), (2, "pin")] {
            var bytes = post.encoded()
            bytes[flagsStart + offset] = byte
            #expect(decodeError(TransferPost.self, bytes) == BusDecodeError(.invalidValue, field))
        }
    }

    @Test(arguments: [0, 4, 5, 0x7F, 0xFF] as [UInt8])
    func invalidEnumRawValuesAreRejected(raw: UInt8) {
        // The kind byte follows the one-byte length and the id "a".
        var open = AccountOpen(accountId: "a", kind: .wallet, currency: "CHF", name: "n", pin: "1").encoded()
        open[2] = raw
        #expect(decodeError(AccountOpen.self, open) == BusDecodeError(.invalidValue, "kind"))
        var info = AccountInfo(accountId: "a", kind: .wallet, currency: "CHF", name: "n", balance: 1, locked: false).encoded()
        info[2] = raw
        #expect(decodeError(AccountInfo.self, info) == BusDecodeError(.invalidValue, "kind"))
        var post = TransferPost(
            transferId: "a", kind: .refund, debitAccountId: "d", creditAccountId: "c", amountMinor: 1, currency: "CHF"
        ).encoded()
        post[2] = raw
        #expect(decodeError(TransferPost.self, post) == BusDecodeError(.invalidValue, "kind"))
    }

    @Test func everyAccountAndTransferKindIsAccepted() throws {
        for kind in AccountKind.allCases {
            #expect(try AccountOpen.decode(AccountOpen(accountId: "a", kind: kind, currency: "X", name: "", pin: nil).encoded()).kind == kind)
        }
        for kind in TransferKind.allCases {
            let post = TransferPost(transferId: "", kind: kind, debitAccountId: "", creditAccountId: "", amountMinor: 0, currency: "")
            #expect(try TransferPost.decode(post.encoded()).kind == kind)
        }
        #expect(AccountKind.allCases.map(\.name) == ["wallet", "merchant", "funding"])
        #expect(TransferKind.allCases.map(\.name) == ["payment", "refund", "funding"])
    }

    @Test func stringsAtTheirMaximumAreAcceptedAndOneByteMoreIsTooLong() {
        func id(_ n: Int) -> String { String(repeating: "i", count: n) }
        // Envelope ids: 128 bytes.
        let max = Envelope.maxIdBytes
        #expect(decodeError(Envelope.self, Envelope(kind: .request, type: .ping, requestId: id(max), sender: id(max), correlation: id(max)).encoded()) == nil)
        #expect(
            decodeError(Envelope.self, Envelope(kind: .request, type: .ping, requestId: id(max + 1), sender: "").encoded())
                == BusDecodeError(.tooLong, "request_id"))
        #expect(
            decodeError(Envelope.self, Envelope(kind: .request, type: .ping, requestId: "", sender: id(max + 1)).encoded())
                == BusDecodeError(.tooLong, "sender"))
        #expect(
            decodeError(Envelope.self, Envelope(kind: .request, type: .ping, requestId: "", sender: "", correlation: id(max + 1)).encoded())
                == BusDecodeError(.tooLong, "correlation"))
        // Multi-byte characters count in bytes: 65 two-byte characters are 130 bytes.
        #expect(
            decodeError(Envelope.self, Envelope(kind: .request, type: .ping, requestId: String(repeating: "é", count: 65), sender: "").encoded())
                == BusDecodeError(.tooLong, "request_id"))

        #expect(decodeError(ErrorBody.self, ErrorBody(code: id(65), message: "").encoded()) == BusDecodeError(.tooLong, "code"))
        #expect(decodeError(ErrorBody.self, ErrorBody(code: "", message: id(1025)).encoded()) == BusDecodeError(.tooLong, "message"))
        #expect(decodeError(ErrorBody.self, ErrorBody(code: id(64), message: id(1024)).encoded()) == nil)

        #expect(
            decodeError(AccountOpen.self, AccountOpen(accountId: id(65), kind: .wallet, currency: "", name: "", pin: nil).encoded())
                == BusDecodeError(.tooLong, "account_id"))
        #expect(
            decodeError(AccountOpen.self, AccountOpen(accountId: "", kind: .wallet, currency: id(9), name: "", pin: nil).encoded())
                == BusDecodeError(.tooLong, "currency"))
        #expect(
            decodeError(AccountOpen.self, AccountOpen(accountId: "", kind: .wallet, currency: "", name: id(257), pin: nil).encoded())
                == BusDecodeError(.tooLong, "name"))
        #expect(
            decodeError(AccountOpen.self, AccountOpen(accountId: "", kind: .wallet, currency: "", name: "", pin: id(17)).encoded())
                == BusDecodeError(.tooLong, "pin"))
        #expect(
            decodeError(AccountOpen.self, AccountOpen(accountId: "", kind: .merchant, currency: "", name: "", pin: nil, ownerId: id(65)).encoded())
                == BusDecodeError(.tooLong, "owner_id"))
        #expect(decodeError(AccountRef.self, AccountRef(accountId: id(65)).encoded()) == BusDecodeError(.tooLong, "account_id"))

        let base = TransferPost(transferId: "", kind: .payment, debitAccountId: "", creditAccountId: "", amountMinor: 0, currency: "")
        var post = base
        post.transferId = id(65)
        #expect(decodeError(TransferPost.self, post.encoded()) == BusDecodeError(.tooLong, "transfer_id"))
        post = base
        post.creditAccountId = id(65)
        #expect(decodeError(TransferPost.self, post.encoded()) == BusDecodeError(.tooLong, "credit_account_id"))
        post = base
        post.refundOf = id(65)
        #expect(decodeError(TransferPost.self, post.encoded()) == BusDecodeError(.tooLong, "refund_of"))
        post = base
        post.pin = id(17)
        #expect(decodeError(TransferPost.self, post.encoded()) == BusDecodeError(.tooLong, "pin"))

        var status = Samples.instanceStatuses[3]
        status.detail = id(1025)
        #expect(decodeError(InstanceStatus.self, status.encoded()) == BusDecodeError(.tooLong, "detail"))
        status = Samples.instanceStatuses[3]
        status.service = id(65)
        #expect(decodeError(InstanceStatus.self, status.encoded()) == BusDecodeError(.tooLong, "service"))

        #expect(
            decodeError(ReconcileCheck.self, ReconcileCheck(name: "", ok: true, offending: Array(repeating: "", count: 1001)).encoded())
                == BusDecodeError(.tooLong, "offending"))
        #expect(
            decodeError(ReconcileCheck.self, ReconcileCheck(name: "", ok: true, offending: [id(4097)]).encoded())
                == BusDecodeError(.tooLong, "offending"))
        #expect(
            decodeError(ReconcileCheck.self, ReconcileCheck(name: id(129), ok: true, offending: []).encoded())
                == BusDecodeError(.tooLong, "name"))
        let tooManyChecks = ReconcileReport(checks: Array(repeating: ReconcileCheck(name: "", ok: true, offending: []), count: 65))
        #expect(decodeError(ReconcileReport.self, tooManyChecks.encoded()) == BusDecodeError(.tooLong, "checks"))
    }

    @Test func readerDefaultStringLimitIs64KiB() throws {
        var w = BusWriter()
        w.write(String(repeating: "x", count: BusReader.maxStringBytes))
        w.write(String(repeating: "x", count: BusReader.maxStringBytes + 1))
        var r = BusReader(w.bytes)
        #expect(try r.readString("ok").utf8.count == BusReader.maxStringBytes)
        #expect(throws: BusDecodeError(.tooLong, "big")) { try r.readString("big") }
    }

    static let invalidUTF8: [[UInt8]] = [
        [0xFF],  // never valid
        [0xC3],  // truncated two-byte sequence
        [0xC3, 0x28],  // bad continuation
        [0xC0, 0x80],  // overlong NUL
        [0xE0, 0x80, 0x80],  // overlong
        [0xED, 0xA0, 0x80],  // UTF-16 surrogate
        [0xF4, 0x90, 0x80, 0x80],  // above U+10FFFF
        [0x61, 0x80, 0x62],  // lone continuation byte
        [0xF0, 0x9F, 0x9A],  // truncated emoji
    ]

    @Test(arguments: DecodeErrorTests.invalidUTF8)
    func invalidUTF8IsRejected(raw: [UInt8]) {
        #expect(decodeError(Envelope.self, Self.envelopeBytes(requestId: raw)) == BusDecodeError(.invalidUTF8, "request_id"))
        #expect(decodeError(Envelope.self, Self.envelopeBytes(requestId: [], sender: raw)) == BusDecodeError(.invalidUTF8, "sender"))
        #expect(
            decodeError(Envelope.self, Self.envelopeBytes(requestId: [], sender: [], correlation: raw))
                == BusDecodeError(.invalidUTF8, "correlation"))
        #expect(decodeError(ErrorBody.self, lengthPrefixed(raw) + lengthPrefixed([])) == BusDecodeError(.invalidUTF8, "code"))
        #expect(decodeError(ErrorBody.self, lengthPrefixed([]) + lengthPrefixed(raw)) == BusDecodeError(.invalidUTF8, "message"))
        #expect(decodeError(AccountRef.self, lengthPrefixed(raw)) == BusDecodeError(.invalidUTF8, "account_id"))
        // An optional string: present flag, then the bad bytes.
        let open = lengthPrefixed([0x61]) + [AccountKind.wallet.rawValue] + lengthPrefixed([]) + lengthPrefixed([]) + [1]
            + lengthPrefixed(raw) + [0]
        #expect(decodeError(AccountOpen.self, open) == BusDecodeError(.invalidUTF8, "pin"))
        let owner = lengthPrefixed([0x61]) + [AccountKind.merchant.rawValue] + lengthPrefixed([]) + lengthPrefixed([]) + [0]
            + [1] + lengthPrefixed(raw)
        #expect(decodeError(AccountOpen.self, owner) == BusDecodeError(.invalidUTF8, "owner_id"))
        var r = BusReader(lengthPrefixed(raw))
        #expect(throws: BusDecodeError(.invalidUTF8, "s")) { try r.readString("s") }
    }

    @Test func validMultiByteUTF8IsAccepted() throws {
        let raw: [UInt8] = [0xC3, 0xA9, 0xE2, 0x82, 0xAC, 0xF0, 0x9F, 0x9A, 0x80, 0xEF, 0xBF, 0xBF]  // é € 🚀 U+FFFF
        let envelope = try Envelope.decode(Self.envelopeBytes(requestId: raw))
        #expect(Array(envelope.requestId.utf8) == raw)
    }

    @Test func aLengthPrefixOf2To60BytesThrowsWithoutAllocating() {
        var huge = BusWriter()
        huge.writeLength(1 << 60)
        let prefix = huge.bytes
        #expect(prefix.count == 9)
        // Fields with a maximum refuse the length itself.
        #expect(decodeError(Envelope.self, Array(Self.envelope.encoded().prefix(24)) + prefix) == BusDecodeError(.tooLong, "request_id"))
        #expect(decodeError(ErrorBody.self, prefix) == BusDecodeError(.tooLong, "code"))
        #expect(decodeError(AccountRef.self, prefix + [0x61, 0x62]) == BusDecodeError(.tooLong, "account_id"))
        #expect(decodeError(ReconcileReport.self, prefix) == BusDecodeError(.tooLong, "checks"))
        #expect(decodeError(ReconcileCheck.self, [0, 1] + prefix) == BusDecodeError(.tooLong, "offending"))
        // Even with no maximum, the reader checks what is there before taking or reserving anything.
        var r = BusReader(prefix + [1, 2, 3])
        #expect(throws: BusDecodeError(.truncated, "blob")) { try r.readBytes("blob", max: .max) }
        r = BusReader(prefix + [1, 2, 3])
        #expect(throws: BusDecodeError(.truncated, "text")) { try r.readString("text", max: .max) }
        r = BusReader(prefix + [0, 1])
        #expect(throws: BusDecodeError.self) { try r.readArray(ReconcileCheck.self, "items", max: .max) }
        // Int.max itself: 9 bytes of LEB128.
        var w = BusWriter()
        w.writeLength(.max)
        r = BusReader(w.bytes)
        #expect(throws: BusDecodeError(.truncated, "max")) { try r.readBytes("max", max: .max) }
    }

    @Test func lengthPrefixesLongerThan63BitsAreTooLong() {
        // Ten LEB128 bytes, and an unterminated run of continuation bytes.
        let tenBytes: [UInt8] = Array(repeating: 0xFF, count: 9) + [0x01]
        var r = BusReader(tenBytes)
        #expect(throws: BusDecodeError(.tooLong, "n")) { try r.readLength("n", max: .max) }
        r = BusReader(Array(repeating: 0x80, count: 9) + [0x80, 0x80, 0x00])
        #expect(throws: BusDecodeError(.tooLong, "n")) { try r.readLength("n", max: .max) }
        r = BusReader(Array(repeating: 0x80, count: 5))
        #expect(throws: BusDecodeError(.truncated, "n")) { try r.readLength("n", max: .max) }
        #expect(decodeError(ErrorBody.self, Array(repeating: 0xFF, count: 64)) == BusDecodeError(.tooLong, "code"))
    }

    @Test func truncationIsReportedAtTheMissingField() {
        let bytes = Self.envelope.encoded()
        #expect(decodeError(Envelope.self, []) == BusDecodeError(.truncated, "magic"))
        #expect(decodeError(Envelope.self, Array(bytes.prefix(2))) == BusDecodeError(.truncated, "version"))
        #expect(decodeError(Envelope.self, Array(bytes.prefix(3))) == BusDecodeError(.truncated, "kind"))
        #expect(decodeError(Envelope.self, Array(bytes.prefix(5))) == BusDecodeError(.truncated, "type"))
        #expect(decodeError(Envelope.self, Array(bytes.prefix(7))) == BusDecodeError(.truncated, "status"))
        #expect(decodeError(Envelope.self, Array(bytes.prefix(15))) == BusDecodeError(.truncated, "sent_at"))
        #expect(decodeError(Envelope.self, Array(bytes.prefix(23))) == BusDecodeError(.truncated, "deadline"))
        #expect(decodeError(Envelope.self, Array(bytes.prefix(24))) == BusDecodeError(.truncated, "request_id"))
        #expect(decodeError(Envelope.self, Array(bytes.dropLast())) == BusDecodeError(.truncated, "correlation"))
        #expect(decodeError(DrainReply.self, [1, 0, 0]) == BusDecodeError(.truncated, "in_flight"))
    }

    @Test func errorDescriptionNamesReasonAndField() {
        #expect(BusDecodeError(.tooLong, "code").description == "cannot decode bus frame: tooLong at code")
    }
}

// MARK: - message types and statuses

@Suite struct MessageTypeAndStatusTests {
    @Test func knownTypesHaveTheirNames() {
        let expected: [(MessageType, String)] = [
            (.ping, "ping"), (.heartbeat, "heartbeat"), (.controlStatus, "control.status"), (.controlDrain, "control.drain"),
            (.accountOpen, "account.open"), (.accountShow, "account.show"), (.walletUnlock, "wallet.unlock"),
            (.transferPost, "transfer.post"), (.reconcile, "reconcile"), (.requestCreate, "request.create"),
            (.requestGet, "request.get"), (.requestCancel, "request.cancel"), (.instructionSubmit, "instruction.submit"),
            (.refundCreate, "refund.create"), (.outcomePublished, "outcome.published"),
            (.noticeDelivered, "notice.delivered"), (.noticeAck, "notice.ack"), (.noticeReplay, "notice.replay"),
        ]
        for (type, name) in expected {
            #expect(type.description == name)
            #expect("\(type)" == name)
        }
        #expect(Set(expected.map(\.0.rawValue)).count == expected.count, "two types share a number")
    }

    @Test func typeNumbersAreGroupedByStage() {
        #expect(MessageType.ping.rawValue == 0x0001)
        #expect(MessageType.controlDrain.rawValue == 0x0102)
        #expect(MessageType.transferPost.rawValue == 0x0210)
        #expect(MessageType.instructionSubmit.rawValue == 0x0310)
        #expect(MessageType.outcomePublished.rawValue == 0x0401)
        #expect(MessageType.noticeReplay.rawValue == 0x0503)
    }

    @Test(arguments: [
        (UInt16(0x0000), "unknown(0x0)"), (0x0003, "unknown(0x3)"), (0x0204, "unknown(0x204)"), (0xBEEF, "unknown(0xbeef)"),
        (0xFFFF, "unknown(0xffff)"),
    ])
    func unknownTypesPrintAsHex(raw: UInt16, text: String) {
        #expect(MessageType(rawValue: raw).description == text)
    }

    @Test func typeEqualityIsByNumber() {
        #expect(MessageType(rawValue: 0x0210) == .transferPost)
        #expect(MessageType(rawValue: 0x0211) != .transferPost)
    }

    @Test func statusClasses() {
        for raw: UInt16 in [200, 208, 250, 299] { #expect(Status(rawValue: raw).isSuccess, "\(raw)") }
        for raw: UInt16 in [0, 199, 300, 400, 404, 409, 422, 500, 503] { #expect(!Status(rawValue: raw).isSuccess, "\(raw)") }
        for status in [Status.internalError, .unavailable, Status(rawValue: 502), Status(rawValue: 504), Status(rawValue: 599)] {
            #expect(status.isRetryable, "\(status)")
        }
        for status in [
            Status.none, .ok, .exists, .badRequest, .notFound, .conflict, .declined, .unknownType, .unsupportedVersion,
            Status(rawValue: 499),
        ] {
            #expect(!status.isRetryable, "\(status)")
        }
        #expect(Status.ok.isSuccess && Status.exists.isSuccess)
        #expect(Status.unavailable.description == "503")
        #expect(Status.none.rawValue == 0)
        #expect(
            [Status.ok, .exists, .badRequest, .notFound, .conflict, .declined, .internalError, .unknownType, .unavailable,
             .unsupportedVersion].map(\.rawValue) == [200, 208, 400, 404, 409, 422, 500, 501, 503, 505])
    }
}

// MARK: - request ids

@Suite struct RequestIdTests {
    @Test func idsAreUniqueAndCarryPrefixTimeAndCounter() throws {
        let generator = RequestIdGenerator(prefix: "pos.1")
        let before = unixMillis()
        let ids = (0..<10_000).map { _ in generator.next() }
        let after = unixMillis()
        #expect(Set(ids).count == ids.count)
        for (n, id) in ids.enumerated() where n % 997 == 0 {
            let parts = id.split(separator: "-")
            #expect(parts.count == 3)
            #expect(parts[0] == "pos.1")
            let millis = try #require(Int64(parts[1], radix: 36))
            #expect((before...after).contains(millis))
            #expect(Int(parts[2], radix: 36) == n + 1)
        }
    }

    @Test func clientIdsUseTheSenderWithoutSlashes() throws {
        let context = try ZMQContext()
        defer { context.terminate() }
        let client = try BusClient(context: context, frontend: "tcp://127.0.0.1:9", sender: "pos-gateway/7")
        defer { client.close() }
        let id = client.newRequestId()
        #expect(id.hasPrefix("pos-gateway.7-"))
        #expect(client.newRequestId() != id)
        #expect(decodeError(Envelope.self, Envelope(kind: .request, type: .ping, requestId: id, sender: client.sender).encoded()) == nil)
    }

    @Test
    func requestIdsOfALongButValidSenderFitTheEnvelope() throws {
        let context = try ZMQContext()
        defer { context.terminate() }
        let sender = "ledger/" + String(repeating: "i", count: 113)  // 120 bytes: a valid envelope sender
        let client = try BusClient(context: context, frontend: "tcp://127.0.0.1:9", sender: sender)
        defer { client.close() }
        let id = client.newRequestId()
        #expect(id.utf8.count <= Envelope.maxIdBytes)
        // Every request this client sends would be refused by the worker as undecodable (tooLong request_id).
        #expect(decodeError(Envelope.self, Envelope(kind: .request, type: .ping, requestId: id, sender: sender).encoded()) == nil)
    }
}
