import Testing
import WiPayBus

/// The payment-flow bodies (`PaymentMessages.swift`): round trips, truncation, enum values and bounds.
/// Helpers and fixtures are nested here so that they cannot collide with the other codec test files.
@Suite struct PaymentMessagesTests {
    // MARK: - helpers

    /// Decodes `bytes` as `T` and returns the error, or nil when it decoded.
    static func failure<T: BusEncodable>(_: T.Type, _ bytes: [UInt8]) -> BusDecodeError? {
        do {
            _ = try T.decode(bytes)
            return nil
        } catch {
            return error
        }
    }

    /// Encodes, decodes, and checks the value and its bytes survive unchanged (bytes compared too: `==` on
    /// String is canonical equivalence, which would hide a normalising codec).
    static func checkRoundTrip<T: BusEncodable & Equatable>(_ value: T, sourceLocation: SourceLocation = #_sourceLocation) {
        let bytes = value.encoded()
        do {
            let decoded = try T.decode(bytes)
            #expect(decoded == value, sourceLocation: sourceLocation)
            #expect(decoded.encoded() == bytes, "re-encoding changed the bytes", sourceLocation: sourceLocation)
        } catch {
            Issue.record("round trip of \(T.self) failed: \(error)", sourceLocation: sourceLocation)
        }
    }

    /// For each string field: exactly `max` bytes (ASCII, and two-byte characters) decodes; `max + 1` bytes
    /// (ASCII, and two-byte characters plus one) is `tooLong` at that field.
    static func checkStringBounds<T: BusEncodable & Equatable>(
        _ base: T, _ fields: [(field: String, max: Int, path: WritableKeyPath<T, String>)],
        optional: [(field: String, max: Int, path: WritableKeyPath<T, String?>)] = [],
        sourceLocation: SourceLocation = #_sourceLocation
    ) {
        func strings(_ max: Int) -> (fits: [String], over: [String]) {
            let ascii = String(repeating: "x", count: max)
            let twoByte = String(repeating: "é", count: max / 2) + String(repeating: "x", count: max % 2)
            return ([ascii, twoByte], [ascii + "x", twoByte + "x"])
        }
        func check(_ field: String, _ max: Int, _ set: (inout T, String) -> Void) {
            let (fits, over) = strings(max)
            for string in fits {
                var value = base
                set(&value, string)
                checkRoundTrip(value, sourceLocation: sourceLocation)
            }
            for string in over {
                var value = base
                set(&value, string)
                #expect(
                    failure(T.self, value.encoded()) == BusDecodeError(.tooLong, field), "\(T.self).\(field)",
                    sourceLocation: sourceLocation)
            }
        }
        for (field, max, path) in fields { check(field, max) { $0[keyPath: path] = $1 } }
        for (field, max, path) in optional { check(field, max) { $0[keyPath: path] = $1 } }
    }

    /// Overwrites the status byte at `offset` with every byte that is not a `PaymentRequestStatus`.
    static func checkUnknownStatuses<T: BusEncodable>(
        _: T.Type, _ bytes: [UInt8], statusAt offset: Int, sourceLocation: SourceLocation = #_sourceLocation
    ) {
        let known = Set(PaymentRequestStatus.allCases.map(\.rawValue))
        #expect(known.contains(bytes[offset]), "offset \(offset) is not the status byte", sourceLocation: sourceLocation)
        for raw in UInt8.min...UInt8.max where !known.contains(raw) {
            var mutated = bytes
            mutated[offset] = raw
            #expect(
                failure(T.self, mutated) == BusDecodeError(.invalidValue, "status"), "raw \(raw)",
                sourceLocation: sourceLocation)
        }
    }

    /// Byte count of the fields written by `fields`: where the next field starts.
    static func offset(_ fields: (inout BusWriter) -> Void) -> Int {
        var w = BusWriter()
        fields(&w)
        return w.bytes.count
    }

    // MARK: - fixtures

    /// Precomposed and decomposed accents, CJK, a flag and a ZWJ family: 4-byte UTF-8 and grapheme clusters.
    static let unicode = "Zürich café e\u{301} — 東京 🇨🇭 👩‍👩‍👧 €"
    /// The same kinds of characters in 31 bytes, for the fields bounded at 32.
    static let shortUnicode = "é東🇨🇭👩‍👩‍👧"
    static let extremes: [Int64] = [0, 1, -1, .min, .max, .min + 1, .max - 1, 0x0102_0304_0506_0708]
    static let hash = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    static let key = "idem-2024-06-01-0001"
    /// 100 four-byte characters: the longest merchant name, exactly at the 400-byte bound.
    static let longestName = String(repeating: "🚀", count: 100)

    static let requestCreates: [RequestCreate] =
        [
            RequestCreate(
                idempotencyKey: key, bodyHash: hash, terminalId: "t-1", merchantId: "m-1", amountMinor: 1250,
                currency: "CNY", reference: "order-42", description: "2 coffees", expiresInSeconds: 120),
            RequestCreate(
                idempotencyKey: key, bodyHash: hash, terminalId: "t-1", merchantId: "m-1", amountMinor: 1,
                currency: "CHF", reference: "", description: nil, expiresInSeconds: 10),
            RequestCreate(
                idempotencyKey: unicode, bodyHash: "", terminalId: "t-ü", merchantId: "商户-1", amountMinor: 1,
                currency: "€€", reference: unicode, description: unicode, expiresInSeconds: 900),
            RequestCreate(
                idempotencyKey: "", bodyHash: "", terminalId: "", merchantId: "", amountMinor: 0, currency: "",
                reference: "", description: "", expiresInSeconds: 0),
            RequestCreate(
                idempotencyKey: String(repeating: "k", count: 255), bodyHash: String(repeating: "f", count: 64),
                terminalId: String(repeating: "t", count: 64), merchantId: String(repeating: "m", count: 64),
                amountMinor: 1_000_000_000_000, currency: "12345678", reference: String(repeating: "r", count: 64),
                description: String(repeating: "d", count: 256), expiresInSeconds: 900),
        ]
        + extremes.map {
            RequestCreate(
                idempotencyKey: "k\($0)", bodyHash: hash, terminalId: "t", merchantId: "m", amountMinor: $0, currency: "JPY",
                reference: "r", description: $0 < 0 ? nil : "d", expiresInSeconds: ~$0)
        }

    static let requestRefs: [RequestRef] = [
        RequestRef(requestId: "pr-1", merchantId: "m-1"),
        RequestRef(requestId: "pr-1", merchantId: "m-1", idempotencyKey: key),
        RequestRef(requestId: "pr-ü-🚀", merchantId: unicode, idempotencyKey: unicode),
        RequestRef(requestId: "", merchantId: "", idempotencyKey: ""),
        RequestRef(
            requestId: String(repeating: "p", count: 64), merchantId: String(repeating: "m", count: 64),
            idempotencyKey: String(repeating: "k", count: 255)),
    ]

    static func paymentRequestInfo(_ status: PaymentRequestStatus, _ n: Int64) -> PaymentRequestInfo {
        PaymentRequestInfo(
            requestId: "pr-\(n)", status: status, amountMinor: n, currency: "CNY", reference: "order-42",
            description: status == .pending ? nil : unicode, merchantId: "m-1", merchantName: "Café ☕︎ & Co",
            terminalId: "t-1", createdAtMillis: n, expiresAtMillis: n &+ 120_000, payload: "WP1.eyJ9.c2ln",
            paymentId: status == .succeeded ? "pay-\(n)" : nil, postedAtMillis: status == .succeeded ? ~n : nil,
            payerAlias: status == .succeeded ? "A*** M." : nil)
    }

    /// Every optional set, every string non-ASCII.
    static let fullInfo = PaymentRequestInfo(
        requestId: unicode, status: .succeeded, amountMinor: .max, currency: "€", reference: unicode,
        description: unicode, merchantId: unicode, merchantName: unicode, terminalId: unicode,
        createdAtMillis: .min, expiresAtMillis: .max, payload: unicode, paymentId: unicode, postedAtMillis: .min,
        payerAlias: unicode)
    /// Every optional nil.
    static let bareInfo = PaymentRequestInfo(
        requestId: "", status: .pending, amountMinor: 0, currency: "", reference: "", description: nil,
        merchantId: "", merchantName: "", terminalId: "", createdAtMillis: 0, expiresAtMillis: 0, payload: "")

    static let paymentRequestInfos: [PaymentRequestInfo] =
        [
            fullInfo, bareInfo,
            PaymentRequestInfo(
                requestId: "", status: .expired, amountMinor: -1, currency: "", reference: "", description: "",
                merchantId: "", merchantName: "", terminalId: "", createdAtMillis: -1, expiresAtMillis: -1, payload: "",
                paymentId: "", postedAtMillis: 0, payerAlias: ""),
            PaymentRequestInfo(
                requestId: String(repeating: "p", count: 64), status: .canceled, amountMinor: 1_000_000_000_000,
                currency: "12345678", reference: String(repeating: "r", count: 64),
                description: String(repeating: "d", count: 256), merchantId: String(repeating: "m", count: 64),
                merchantName: longestName, terminalId: String(repeating: "t", count: 64), createdAtMillis: .max,
                expiresAtMillis: .min, payload: String(repeating: "P", count: 2048),
                paymentId: String(repeating: "y", count: 64), postedAtMillis: .max,
                payerAlias: String(repeating: "a", count: 64)),
        ]
        + PaymentRequestStatus.allCases.map { paymentRequestInfo($0, 1250) }
        + extremes.map { paymentRequestInfo(.succeeded, $0) }

    static let instructionSubmits: [InstructionSubmit] = [
        InstructionSubmit(
            idempotencyKey: key, bodyHash: hash, deviceId: "dev-1", accountId: "w-1", payload: "WP1.eyJ9.c2ln", pin: "1234"),
        InstructionSubmit(
            idempotencyKey: unicode, bodyHash: hash, deviceId: "dev-ü", accountId: "w-🚀", payload: unicode, pin: "123456"),
        InstructionSubmit(idempotencyKey: "", bodyHash: "", deviceId: "", accountId: "", payload: "", pin: ""),
        InstructionSubmit(
            idempotencyKey: String(repeating: "k", count: 255), bodyHash: String(repeating: "0", count: 64),
            deviceId: String(repeating: "d", count: 64), accountId: String(repeating: "a", count: 64),
            payload: String(repeating: "P", count: 2048), pin: String(repeating: "9", count: 16)),
    ]

    static let instructionResults: [InstructionResult] =
        [
            InstructionResult(
                status: .succeeded, paymentId: "pay-1", requestId: "pr-1", amountMinor: 1250, currency: "CNY",
                merchantId: "m-1", merchantName: "Bäckerei", balance: 8750),
            InstructionResult(
                status: .declined, paymentId: nil, requestId: "pr-1", amountMinor: 1250, currency: "CNY", merchantId: "m-1",
                merchantName: "Bäckerei", balance: nil, errorCode: "insufficient_funds",
                errorMessage: "the wallet's balance is too low"),
            InstructionResult(
                status: .succeeded, paymentId: unicode, requestId: unicode, amountMinor: .max, currency: "€",
                merchantId: unicode, merchantName: unicode, balance: .min, errorCode: unicode, errorMessage: unicode),
            InstructionResult(
                status: .declined, paymentId: nil, requestId: "", amountMinor: 0, currency: "", merchantId: "",
                merchantName: "", balance: nil, errorCode: nil, errorMessage: nil),
            InstructionResult(
                status: .declined, paymentId: "", requestId: "", amountMinor: 0, currency: "", merchantId: "",
                merchantName: "", balance: 0, errorCode: "", errorMessage: ""),
            InstructionResult(
                status: .succeeded, paymentId: String(repeating: "y", count: 64), requestId: String(repeating: "p", count: 64),
                amountMinor: 1, currency: "12345678", merchantId: String(repeating: "m", count: 64),
                merchantName: longestName, balance: .max, errorCode: String(repeating: "c", count: 64),
                errorMessage: String(repeating: "ü", count: 512)),
        ]
        + extremes.map {
            InstructionResult(
                status: .succeeded, paymentId: "pay", requestId: "pr", amountMinor: $0, currency: "CHF", merchantId: "m",
                merchantName: "n", balance: ~$0)
        }

    static let refundCreates: [RefundCreate] =
        [
            RefundCreate(idempotencyKey: key, bodyHash: hash, merchantId: "m-1", paymentId: "pay-1", amountMinor: 500),
            RefundCreate(idempotencyKey: key, bodyHash: hash, merchantId: "m-1", paymentId: "pay-1", amountMinor: nil),
            RefundCreate(idempotencyKey: unicode, bodyHash: unicode, merchantId: unicode, paymentId: unicode, amountMinor: 0),
            RefundCreate(idempotencyKey: "", bodyHash: "", merchantId: "", paymentId: "", amountMinor: nil),
            RefundCreate(
                idempotencyKey: String(repeating: "k", count: 255), bodyHash: String(repeating: "f", count: 64),
                merchantId: String(repeating: "m", count: 64), paymentId: String(repeating: "y", count: 64),
                amountMinor: 1_000_000_000_000),
        ]
        + extremes.map { RefundCreate(idempotencyKey: "k", bodyHash: hash, merchantId: "m", paymentId: "p", amountMinor: $0) }

    static let refundInfos: [RefundInfo] =
        [
            RefundInfo(refundId: "rf-1", paymentId: "pay-1", amountMinor: 500, currency: "CNY", status: "succeeded"),
            RefundInfo(refundId: unicode, paymentId: unicode, amountMinor: 1, currency: "€", status: "réussi"),
            RefundInfo(refundId: "", paymentId: "", amountMinor: 0, currency: "", status: ""),
            RefundInfo(
                refundId: String(repeating: "r", count: 64), paymentId: String(repeating: "y", count: 64), amountMinor: 1,
                currency: "12345678", status: String(repeating: "s", count: 32)),
        ]
        + extremes.map { RefundInfo(refundId: "rf", paymentId: "pay", amountMinor: $0, currency: "CHF", status: "succeeded") }

    static let eventTypes = ["payment.succeeded", "payment.declined", "payment.expired", "payment.canceled", "refund.succeeded"]

    static let outcomes: [OutcomePublished] =
        [
            OutcomePublished(
                outboxSeq: 1, eventType: "payment.succeeded", requestId: "pr-1", status: .succeeded, amountMinor: 1250,
                currency: "CNY", reference: "order-42", terminalId: "t-1", deviceId: "dev-1", merchantId: "m-1",
                paymentId: "pay-1", refundId: nil, atMillis: 1_717_200_000_000),
            OutcomePublished(
                outboxSeq: 2, eventType: "refund.succeeded", requestId: "pr-1", status: .succeeded, amountMinor: 500,
                currency: "CNY", reference: "order-42", terminalId: "t-1", deviceId: "dev-1", merchantId: "m-1",
                paymentId: "pay-1", refundId: "rf-1", atMillis: 1_717_200_001_000),
            OutcomePublished(
                outboxSeq: 3, eventType: "payment.expired", requestId: "pr-2", status: .expired, amountMinor: 1,
                currency: "CHF", reference: "", terminalId: "t-1", deviceId: nil, merchantId: "m-1", paymentId: nil,
                refundId: nil, atMillis: 0),
            OutcomePublished(
                outboxSeq: .max, eventType: shortUnicode, requestId: unicode, status: .canceled, amountMinor: .min, currency: "€",
                reference: unicode, terminalId: unicode, deviceId: unicode, merchantId: unicode, paymentId: unicode,
                refundId: unicode, atMillis: .max),
            OutcomePublished(
                outboxSeq: .min, eventType: "", requestId: "", status: .declined, amountMinor: 0, currency: "", reference: "",
                terminalId: "", deviceId: "", merchantId: "", paymentId: "", refundId: "", atMillis: .min),
            OutcomePublished(
                outboxSeq: 0, eventType: String(repeating: "e", count: 32), requestId: String(repeating: "p", count: 64),
                status: .pending, amountMinor: 1_000_000_000_000, currency: "12345678",
                reference: String(repeating: "r", count: 64), terminalId: String(repeating: "t", count: 64),
                deviceId: String(repeating: "d", count: 64), merchantId: String(repeating: "m", count: 64),
                paymentId: String(repeating: "y", count: 64), refundId: String(repeating: "f", count: 64), atMillis: -1),
        ]
        + zip(eventTypes, [PaymentRequestStatus.succeeded, .declined, .expired, .canceled, .succeeded]).map {
            OutcomePublished(
                outboxSeq: 7, eventType: $0, requestId: "pr", status: $1, amountMinor: 1, currency: "CHF", reference: "r",
                terminalId: "t", deviceId: nil, merchantId: "m", paymentId: nil, refundId: nil, atMillis: 7)
        }
        + extremes.map {
            OutcomePublished(
                outboxSeq: $0, eventType: "payment.declined", requestId: "pr", status: .declined, amountMinor: ~$0,
                currency: "CHF", reference: "r", terminalId: "t", deviceId: "d", merchantId: "m", paymentId: nil,
                refundId: nil, atMillis: $0)
        }

    static let dataJSON =
        #"{"event_id":"pos:t-1:7","type":"payment.succeeded","request_id":"pr-1","status":"succeeded","amount":1250,"#
        + #""currency":"CNY","reference":"Café 東京 🚀"}"#

    static let notices: [NoticeDelivered] =
        [
            NoticeDelivered(
                recipient: "pos:t-1", seq: 7, eventType: "payment.succeeded", dataJSON: dataJSON, atMillis: 1_717_200_000_000),
            NoticeDelivered(recipient: "dev:dev-1", seq: 1, eventType: "refund.succeeded", dataJSON: "{}", atMillis: 0),
            NoticeDelivered(recipient: unicode, seq: .min, eventType: shortUnicode, dataJSON: unicode, atMillis: .max),
            NoticeDelivered(recipient: "", seq: 0, eventType: "", dataJSON: "", atMillis: .min),
            NoticeDelivered(
                recipient: "pos:" + String(repeating: "t", count: 76), seq: .max, eventType: String(repeating: "e", count: 32),
                dataJSON: String(repeating: "j", count: 16 * 1024), atMillis: -1),
        ]
        + extremes.map {
            NoticeDelivered(recipient: "dev:d", seq: $0, eventType: "payment.declined", dataJSON: "{}", atMillis: ~$0)
        }

    static let noticeAcks: [NoticeAck] =
        [
            NoticeAck(recipient: "", seq: 0), NoticeAck(recipient: unicode, seq: 1),
            NoticeAck(recipient: String(repeating: "r", count: 80), seq: -1),
        ]
        + extremes.map { NoticeAck(recipient: "pos:t-1", seq: $0) }

    static let noticeReplays: [NoticeReplay] =
        [
            NoticeReplay(recipient: "pos:t-1", afterSeq: 0, limit: 100),
            NoticeReplay(recipient: unicode, afterSeq: -1, limit: 0),
            NoticeReplay(recipient: "", afterSeq: .max, limit: 1000),
            // Not the codec's to judge: the notifier refuses it.
            NoticeReplay(recipient: String(repeating: "r", count: 80), afterSeq: .min, limit: .max),
        ]
        + extremes.map { NoticeReplay(recipient: "dev:d", afterSeq: $0, limit: UInt32(truncatingIfNeeded: $0)) }

    static let noticeBatches: [NoticeBatch] = [
        NoticeBatch(notices: []),
        NoticeBatch(notices: notices),
        NoticeBatch(
            notices: (1...1000).map {
                NoticeDelivered(recipient: "pos:t-1", seq: Int64($0), eventType: "payment.succeeded", dataJSON: "{}", atMillis: 0)
            }),
    ]

    // MARK: - the status enum

    @Test func paymentRequestStatusValuesAndNamesAreTheDocumentedOnes() {
        #expect(PaymentRequestStatus.allCases.map(\.rawValue) == [1, 2, 3, 4, 5])
        #expect(PaymentRequestStatus.allCases.map(\.name) == ["pending", "succeeded", "declined", "expired", "canceled"])
        #expect(PaymentRequestStatus(rawValue: 0) == nil)
        #expect(PaymentRequestStatus(rawValue: 6) == nil)
    }

    // MARK: - round trips

    @Test(arguments: requestCreates) func requestCreateRoundTrips(_ v: RequestCreate) { Self.checkRoundTrip(v) }
    @Test(arguments: requestRefs) func requestRefRoundTrips(_ v: RequestRef) { Self.checkRoundTrip(v) }
    @Test(arguments: paymentRequestInfos) func paymentRequestInfoRoundTrips(_ v: PaymentRequestInfo) { Self.checkRoundTrip(v) }
    @Test(arguments: instructionSubmits) func instructionSubmitRoundTrips(_ v: InstructionSubmit) { Self.checkRoundTrip(v) }
    @Test(arguments: instructionResults) func instructionResultRoundTrips(_ v: InstructionResult) { Self.checkRoundTrip(v) }
    @Test(arguments: refundCreates) func refundCreateRoundTrips(_ v: RefundCreate) { Self.checkRoundTrip(v) }
    @Test(arguments: refundInfos) func refundInfoRoundTrips(_ v: RefundInfo) { Self.checkRoundTrip(v) }
    @Test(arguments: outcomes) func outcomePublishedRoundTrips(_ v: OutcomePublished) { Self.checkRoundTrip(v) }
    @Test(arguments: notices) func noticeDeliveredRoundTrips(_ v: NoticeDelivered) { Self.checkRoundTrip(v) }
    @Test(arguments: noticeAcks) func noticeAckRoundTrips(_ v: NoticeAck) { Self.checkRoundTrip(v) }
    @Test(arguments: noticeReplays) func noticeReplayRoundTrips(_ v: NoticeReplay) { Self.checkRoundTrip(v) }
    @Test(arguments: noticeBatches) func noticeBatchRoundTrips(_ v: NoticeBatch) { Self.checkRoundTrip(v) }
    @Test(arguments: [OutcomeBatch(outcomes: []), OutcomeBatch(outcomes: outcomes), OutcomeBatch(outcomes: [outcomes[0]])])
    func outcomeBatchRoundTrips(_ v: OutcomeBatch) { Self.checkRoundTrip(v) }

    @Test func optionalsAllSetAndAllNilDecodeAsSent() throws {
        let fullInfo = try PaymentRequestInfo.decode(Self.fullInfo.encoded())
        #expect(fullInfo.description != nil && fullInfo.paymentId != nil && fullInfo.postedAtMillis == .min)
        #expect(fullInfo.payerAlias != nil)
        let bareInfo = try PaymentRequestInfo.decode(Self.bareInfo.encoded())
        #expect(bareInfo.description == nil && bareInfo.paymentId == nil && bareInfo.postedAtMillis == nil)
        #expect(bareInfo.payerAlias == nil)

        let declined = try InstructionResult.decode(Self.instructionResults[3].encoded())
        #expect(declined.paymentId == nil && declined.balance == nil && declined.errorCode == nil)
        #expect(declined.errorMessage == nil)
        let full = try InstructionResult.decode(Self.instructionResults[2].encoded())
        #expect(full.paymentId != nil && full.balance == .min && full.errorCode != nil && full.errorMessage != nil)

        let quiet = try OutcomePublished.decode(Self.outcomes[2].encoded())
        #expect(quiet.deviceId == nil && quiet.paymentId == nil && quiet.refundId == nil)
        let loud = try OutcomePublished.decode(Self.outcomes[3].encoded())
        #expect(loud.deviceId != nil && loud.paymentId != nil && loud.refundId != nil)

        #expect(try RequestCreate.decode(Self.requestCreates[1].encoded()).description == nil)
        #expect(try RequestRef.decode(Self.requestRefs[0].encoded()).idempotencyKey == nil)
        #expect(try RefundCreate.decode(Self.refundCreates[1].encoded()).amountMinor == nil)
    }

    @Test func absentOptionalsDifferFromEmptyOrZeroOnes() throws {
        // A nil costs the flag byte only; "" costs flag + length; 0 costs flag + 8 bytes.
        let get = RequestRef(requestId: "pr", merchantId: "m")
        let emptyKey = RequestRef(requestId: "pr", merchantId: "m", idempotencyKey: "")
        #expect(emptyKey.encoded().count == get.encoded().count + 1)
        #expect(try RequestRef.decode(emptyKey.encoded()).idempotencyKey == "")

        let rest = RefundCreate(idempotencyKey: "k", bodyHash: "h", merchantId: "m", paymentId: "p", amountMinor: nil)
        let zero = RefundCreate(idempotencyKey: "k", bodyHash: "h", merchantId: "m", paymentId: "p", amountMinor: 0)
        #expect(zero.encoded().count == rest.encoded().count + 8)
        #expect(try RefundCreate.decode(zero.encoded()).amountMinor == 0)
        #expect(try RefundCreate.decode(rest.encoded()).amountMinor == nil)
    }

    @Test func unicodeSurvivesByteForByte() throws {
        let info = try PaymentRequestInfo.decode(Self.fullInfo.encoded())
        let strings = [info.requestId, info.reference, info.description ?? "", info.merchantName, info.payload, info.payerAlias ?? ""]
        for string in strings {
            #expect(Array(string.utf8) == Array(Self.unicode.utf8))
        }
        let notice = try NoticeDelivered.decode(Self.notices[0].encoded())
        #expect(Array(notice.dataJSON.utf8) == Array(Self.dataJSON.utf8))
    }

    @Test func noticeAckAndReplayHaveTheDocumentedWireLayout() {
        #expect(
            NoticeAck(recipient: "pos:é", seq: -2).encoded()
                == [0x06, 0x70, 0x6F, 0x73, 0x3A, 0xC3, 0xA9]  // "pos:é", six UTF-8 bytes
                + [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFE])  // seq -2, big-endian two's complement
        #expect(
            NoticeReplay(recipient: "d", afterSeq: 0x0102_0304_0506_0708, limit: 1000).encoded()
                == [0x01, 0x64] + [0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08] + [0x00, 0x00, 0x03, 0xE8])
        #expect(
            RefundCreate(idempotencyKey: "k", bodyHash: "", merchantId: "m", paymentId: "p", amountMinor: nil).encoded()
                == [0x01, 0x6B, 0x00, 0x01, 0x6D, 0x01, 0x70, 0x00])
    }

    // MARK: - malformed frames

    /// One body type and valid encodings of it, type-erased so every type can be a test argument.
    struct Body: Sendable, CustomTestStringConvertible {
        let name: String
        let encodings: [[UInt8]]
        let failure: @Sendable ([UInt8]) -> BusDecodeError?
        var testDescription: String { name }

        /// For bodies with appended fields (docs/bus-protocol.md, ⁺), `appended` encodes those fields
        /// alone, so the one prefix that ends where the older body ended is known to decode.
        static func of<T: BusEncodable & Equatable>(
            _: T.Type, _ values: [T], appended: (@Sendable (T) -> [UInt8])? = nil
        ) -> Body {
            // Skip the few huge samples (16 KiB notices, 1000-notice batches): every prefix of a small one
            // exercises the same decoder paths.
            let small = values.filter { $0.encoded().count <= 4096 }
            let olderLengths = small.map { value -> Int in
                guard let appended else { return -1 }
                return value.encoded().count - appended(value).count
            }
            return Body(
                name: "\(T.self)",
                encodings: small.map { $0.encoded() },
                failure: { PaymentMessagesTests.failure(T.self, $0) },
                olderLengths: olderLengths)
        }

        /// Per encoding: the length of the same body without its appended fields (-1: none appended).
        let olderLengths: [Int]

        init(
            name: String, encodings: [[UInt8]], failure: @escaping @Sendable ([UInt8]) -> BusDecodeError?,
            olderLengths: [Int] = []
        ) {
            self.name = name
            self.encodings = encodings
            self.failure = failure
            self.olderLengths = olderLengths
        }
    }

    /// The encoding of a body's appended fields alone.
    static func appendedBytes(_ write: (inout BusWriter) -> Void) -> [UInt8] {
        var w = BusWriter()
        write(&w)
        return w.bytes
    }

    static let bodies: [Body] = [
        .of(RequestCreate.self, requestCreates), .of(RequestRef.self, requestRefs),
        .of(
            PaymentRequestInfo.self, paymentRequestInfos,
            appended: { v in appendedBytes { $0.write(v.declinedAttempts); $0.write(v.declineCode) } }),
        .of(InstructionSubmit.self, instructionSubmits, appended: { v in appendedBytes { $0.write(v.signatureDigest) } }),
        .of(InstructionResult.self, instructionResults), .of(RefundCreate.self, refundCreates),
        .of(RefundInfo.self, refundInfos),
        .of(OutcomePublished.self, outcomes, appended: { v in appendedBytes { $0.write(v.declinedAttempts) } }),
        .of(NoticeDelivered.self, notices),
        .of(NoticeAck.self, noticeAcks), .of(NoticeReplay.self, noticeReplays),
        .of(NoticeBatch.self, [NoticeBatch(notices: []), NoticeBatch(notices: Array(notices.prefix(4)))]),
    ]

    @Test(arguments: bodies) func everyStrictPrefixIsTruncated(_ body: Body) {
        #expect(!body.encodings.isEmpty)
        for (index, bytes) in body.encodings.enumerated() {
            #expect(body.failure(bytes) == nil, "the whole encoding decodes")
            let older = index < body.olderLengths.count ? body.olderLengths[index] : -1
            for cut in 0..<bytes.count {
                let error = body.failure(Array(bytes.prefix(cut)))
                if cut == older {
                    // Where the body ended before its appended fields: an older sender's body, which decodes.
                    #expect(error == nil, "\(body.name): the body without its appended fields gave \(String(describing: error))")
                    continue
                }
                #expect(
                    error?.reason == .truncated,
                    "\(body.name): prefix of \(cut) of \(bytes.count) bytes gave \(String(describing: error))")
            }
        }
    }

    @Test(arguments: bodies) func aTrailingByteIsRefused(_ body: Body) {
        for bytes in body.encodings {
            #expect(body.failure(bytes + [0]) == BusDecodeError(.trailingBytes, body.name))
        }
    }

    @Test func unknownStatusValuesAreInvalid() {
        let info = Self.paymentRequestInfo(.pending, 1)
        Self.checkUnknownStatuses(
            PaymentRequestInfo.self, info.encoded(), statusAt: Self.offset { $0.write(info.requestId) })
        Self.checkUnknownStatuses(InstructionResult.self, Self.instructionResults[0].encoded(), statusAt: 0)
        let outcome = Self.outcomes[0]
        Self.checkUnknownStatuses(
            OutcomePublished.self, outcome.encoded(),
            statusAt: Self.offset {
                $0.write(outcome.outboxSeq)
                $0.write(outcome.eventType)
                $0.write(outcome.requestId)
            })
    }

    @Test func everyKnownStatusDecodesInEveryBodyThatCarriesOne() throws {
        for status in PaymentRequestStatus.allCases {
            #expect(try PaymentRequestInfo.decode(Self.paymentRequestInfo(status, 5).encoded()).status == status)
            var result = Self.instructionResults[0]
            result.status = status
            #expect(try InstructionResult.decode(result.encoded()).status == status)
            var outcome = Self.outcomes[0]
            outcome.status = status
            #expect(try OutcomePublished.decode(outcome.encoded()).status == status)
        }
    }

    @Test func optionalFlagsOtherThanZeroOrOneAreInvalid() {
        let create = Self.requestCreates[1]  // description nil
        var bytes = create.encoded()
        let flag = bytes.count - 8 - 1  // the description flag sits before expires_in
        #expect(bytes[flag] == 0)
        for raw: UInt8 in [2, 0x80, 0xFF] {
            bytes[flag] = raw
            #expect(Self.failure(RequestCreate.self, bytes) == BusDecodeError(.invalidValue, "description"))
        }
        var refund = RefundCreate(idempotencyKey: "k", bodyHash: "h", merchantId: "m", paymentId: "p", amountMinor: nil).encoded()
        refund[refund.count - 1] = 2
        #expect(Self.failure(RefundCreate.self, refund) == BusDecodeError(.invalidValue, "amount"))
    }

    @Test func invalidUTF8IsRefusedAtItsField() {
        var bytes = NoticeAck(recipient: "pos:t", seq: 1).encoded()
        bytes[1] = 0xFF  // first byte of the recipient
        #expect(Self.failure(NoticeAck.self, bytes) == BusDecodeError(.invalidUTF8, "recipient"))
    }

    // MARK: - bounds

    @Test func requestCreateStringBounds() {
        Self.checkStringBounds(
            Self.requestCreates[0],
            [
                ("idempotency_key", 255, \.idempotencyKey), ("body_hash", 64, \.bodyHash), ("terminal_id", 64, \.terminalId),
                ("merchant_id", 64, \.merchantId), ("currency", 8, \.currency), ("reference", 64, \.reference),
            ],
            optional: [("description", 256, \.description)])
    }

    @Test func requestRefStringBounds() {
        Self.checkStringBounds(
            Self.requestRefs[1], [("request_id", 64, \.requestId), ("merchant_id", 64, \.merchantId)],
            optional: [("idempotency_key", 255, \.idempotencyKey)])
    }

    @Test func paymentRequestInfoStringBounds() {
        Self.checkStringBounds(
            Self.paymentRequestInfo(.succeeded, 1),
            [
                ("request_id", 64, \.requestId), ("currency", 8, \.currency), ("reference", 64, \.reference),
                ("merchant_id", 64, \.merchantId), ("merchant_name", 400, \.merchantName), ("terminal_id", 64, \.terminalId),
                ("payload", 2048, \.payload),
            ],
            optional: [("description", 256, \.description), ("payment_id", 64, \.paymentId), ("payer_alias", 64, \.payerAlias)])
    }

    @Test func instructionSubmitStringBounds() {
        Self.checkStringBounds(
            Self.instructionSubmits[0],
            [
                ("idempotency_key", 255, \.idempotencyKey), ("body_hash", 64, \.bodyHash), ("device_id", 64, \.deviceId),
                ("account_id", 64, \.accountId), ("payload", 2048, \.payload), ("pin", 16, \.pin),
            ])
    }

    @Test func instructionResultStringBounds() {
        Self.checkStringBounds(
            Self.instructionResults[2],
            [
                ("request_id", 64, \.requestId), ("currency", 8, \.currency), ("merchant_id", 64, \.merchantId),
                ("merchant_name", 400, \.merchantName),
            ],
            optional: [("payment_id", 64, \.paymentId), ("error_code", 64, \.errorCode), ("error_message", 1024, \.errorMessage)])
    }

    @Test func refundStringBounds() {
        Self.checkStringBounds(
            Self.refundCreates[0],
            [
                ("idempotency_key", 255, \.idempotencyKey), ("body_hash", 64, \.bodyHash), ("merchant_id", 64, \.merchantId),
                ("payment_id", 64, \.paymentId),
            ])
        Self.checkStringBounds(
            Self.refundInfos[0],
            [("refund_id", 64, \.refundId), ("payment_id", 64, \.paymentId), ("currency", 8, \.currency), ("status", 32, \.status)])
    }

    @Test func outcomePublishedStringBounds() {
        Self.checkStringBounds(
            Self.outcomes[1],
            [
                ("event_type", 32, \.eventType), ("request_id", 64, \.requestId), ("currency", 8, \.currency),
                ("reference", 64, \.reference), ("terminal_id", 64, \.terminalId), ("merchant_id", 64, \.merchantId),
            ],
            optional: [("device_id", 64, \.deviceId), ("payment_id", 64, \.paymentId), ("refund_id", 64, \.refundId)])
    }

    @Test func noticeStringBounds() {
        Self.checkStringBounds(
            Self.notices[0], [("recipient", 80, \.recipient), ("event_type", 32, \.eventType), ("data", 16 * 1024, \.dataJSON)])
        Self.checkStringBounds(Self.noticeAcks[1], [("recipient", 80, \.recipient)])
        Self.checkStringBounds(Self.noticeReplays[0], [("recipient", 80, \.recipient)])
    }

    @Test func merchantNamesAreBoundedInBytesNotCharacters() {
        // 100 characters of four bytes each fit; one more byte does not.
        var info = Self.paymentRequestInfo(.pending, 1)
        info.merchantName = Self.longestName
        Self.checkRoundTrip(info)
        info.merchantName += "x"
        #expect(info.merchantName.count == 101)
        #expect(Self.failure(PaymentRequestInfo.self, info.encoded()) == BusDecodeError(.tooLong, "merchant_name"))
    }

    @Test func noticeBatchHoldsAtMostAThousandNotices() {
        let notice = NoticeDelivered(recipient: "dev:d", seq: 1, eventType: "refund.succeeded", dataJSON: "{}", atMillis: 0)
        Self.checkRoundTrip(NoticeBatch(notices: Array(repeating: notice, count: 1000)))
        let over = NoticeBatch(notices: Array(repeating: notice, count: 1001)).encoded()
        #expect(Self.failure(NoticeBatch.self, over) == BusDecodeError(.tooLong, "notices"))
        // A count over the bound is refused before any notice is read: no allocation follows a hostile count.
        var hostile = BusWriter()
        hostile.writeLength(Int(Int32.max))
        #expect(Self.failure(NoticeBatch.self, hostile.bytes) == BusDecodeError(.tooLong, "notices"))
        // A bad notice inside a batch is refused at its own field.
        var bad = notice
        bad.recipient = String(repeating: "r", count: 81)
        #expect(Self.failure(NoticeBatch.self, NoticeBatch(notices: [notice, bad]).encoded()) == BusDecodeError(.tooLong, "recipient"))
    }
}
