import Testing
import WiPayBus
import ZeroMQ

/// Helpers over the shared seeded PRNG.
extension SplitMix64 {
    mutating func below(_ bound: Int) -> Int { Int(next() % UInt64(bound)) }
    mutating func byte() -> UInt8 { UInt8(truncatingIfNeeded: next()) }
    mutating func bytes(_ count: Int) -> [UInt8] { (0..<count).map { _ in byte() } }
    mutating func chance(_ percent: Int) -> Bool { below(100) < percent }
}

/// What one decode attempt did.
enum Outcome: Equatable {
    case decoded
    case failed(BusDecodeError)
    /// Decoded, but the value did not survive encode → decode unchanged.
    case unstable
}

/// One single-frame decoder under test, with valid encodings to start from.
struct FuzzTarget: Sendable, CustomTestStringConvertible {
    let name: String
    let samples: [[UInt8]]
    let run: @Sendable ([UInt8]) -> Outcome

    var testDescription: String { name }

    /// A per-target seed (FNV-1a of the name): reproducible, and different for each target.
    var seed: UInt64 { name.utf8.reduce(0xCBF2_9CE4_8422_2325) { ($0 ^ UInt64($1)) &* 0x100_0000_01B3 } }

    static func of<T: BusEncodable & Equatable>(_: T.Type, _ values: [T]) -> FuzzTarget {
        FuzzTarget(
            name: "\(T.self)",
            // Keep every sample small enough that "every prefix" and "every byte" stay cheap.
            samples: values.map { $0.encoded() }.filter { $0.count <= 4096 },
            run: { bytes in
                let value: T
                do throws(BusDecodeError) {
                    value = try T.decode(bytes)
                } catch {
                    return .failed(error)
                }
                // Whatever was accepted must be a real value: it re-encodes to a frame that decodes to itself.
                guard let again = try? T.decode(value.encoded()), again == value else { return .unstable }
                return .decoded
            })
    }

    static let all: [FuzzTarget] = [
        .of(Envelope.self, Samples.envelopes),
        .of(ErrorBody.self, Samples.errorBodies),
        .of(Empty.self, [Empty()]),
        .of(InstanceStatus.self, Samples.instanceStatuses),
        .of(DrainReply.self, Samples.drainReplies),
        .of(AccountOpen.self, Samples.accountOpens),
        .of(AccountRef.self, Samples.accountRefs),
        .of(AccountInfo.self, Samples.accountInfos),
        .of(TransferPost.self, Samples.transferPosts),
        .of(TransferResult.self, Samples.transferResults),
        .of(ReconcileCheck.self, Samples.reconcileChecks),
        .of(ReconcileReport.self, Samples.reconcileReports + [ReconcileReport(checks: Array(Samples.reconcileChecks.prefix(2)))]),
    ]
}

/// Multipart parsers: what they accept must be internally consistent.
enum FrameParsers {
    static func message(_ frames: Frames) -> Outcome {
        do {
            let message = try BusMessage.parse(frames)
            guard message.route.count <= BusMessage.maxRouteFrames, message.route.allSatisfy({ !$0.isEmpty }),
                frames.count == message.route.count + 3, message.body == frames[frames.count - 1],
                (try? Envelope.decode(message.envelope.encoded())) == message.envelope
            else { return .unstable }
            return .decoded
        } catch {
            return .failed(error)
        }
    }

    static func event(_ frames: Frames) -> Outcome {
        do {
            let event = try BusEvent.parse(frames)
            guard frames.count == 3, Array(event.topic.utf8) == frames[0], frames[0].count <= 256,
                event.envelope.kind == .event, event.body == frames[2],
                (try? Envelope.decode(event.envelope.encoded())) == event.envelope
            else { return .unstable }
            return .decoded
        } catch {
            return .failed(error)
        }
    }

    static let validMessages: [Frames] = Samples.envelopes.flatMap { envelope in
        [
            BusMessage(envelope: envelope, body: []).frames(),
            BusMessage(route: [[0x00, 0x6B, 0x8B, 0x45, 0x67]], envelope: envelope, body: [1, 2, 3]).frames(),
            BusMessage(route: [Array("a".utf8), Array("b".utf8)], envelope: envelope, body: Samples.errorBodies[1].encoded())
                .frames(),
        ]
    }

    static let validEvents: [Frames] = Samples.envelopes.map { envelope in
        var event = envelope
        event.kind = .event
        return BusEvent(topic: "outcome.pr-ü-🚀", envelope: event, body: [9, 8, 7]).frames()
    }
}

@Suite struct FuzzTests {
    static func envelopeFrameIndexInMessage(_ frames: Frames) -> Int { frames.firstIndex(where: \.isEmpty)! + 1 }

    // MARK: (a) every truncation

    @Test(.timeLimit(.minutes(1)), arguments: FuzzTarget.all)
    func everyStrictPrefixIsTruncated(_ target: FuzzTarget) async {
        #expect(!target.samples.isEmpty)
        for sample in target.samples {
            #expect(target.run(sample) == .decoded, "the sample itself must decode")
            for length in 0..<sample.count {
                if length % 256 == 0 { await Task.yield() }
                let outcome = target.run(Array(sample.prefix(length)))
                guard case .failed(let error) = outcome, error.reason == .truncated else {
                    Issue.record("\(target.name): prefix of \(length)/\(sample.count) bytes gave \(outcome)")
                    return
                }
            }
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func everyTruncationOfAMultipartMessageThrows() async {
        for frames in FrameParsers.validMessages {
            await Task.yield()
            #expect(FrameParsers.message(frames) == .decoded)
            // Fewer frames.
            for count in 0..<frames.count {
                #expect(FrameParsers.message(Array(frames.prefix(count))) != .decoded, "\(count) of \(frames.count) frames")
                #expect(FrameParsers.message(Array(frames.prefix(count))) != .unstable)
            }
            // A cut envelope frame.
            let envelopeIndex = Self.envelopeFrameIndexInMessage(frames)
            for length in 0..<frames[envelopeIndex].count {
                var cut = frames
                cut[envelopeIndex] = Array(cut[envelopeIndex].prefix(length))
                // (A cut to nothing still leaves [route..., "", "", body]: the envelope reads as empty.)
                let outcome = FrameParsers.message(cut)
                guard case .failed(let error) = outcome, error.reason == .truncated else {
                    Issue.record("envelope cut to \(length) bytes gave \(outcome)")
                    return
                }
            }
            // The body is opaque to the parser: any cut of it is carried as is.
            let last = frames.count - 1
            for length in 0..<frames[last].count {
                var cut = frames
                cut[last] = Array(cut[last].prefix(length))
                #expect(FrameParsers.message(cut) == .decoded)
                #expect((try? BusMessage.parse(cut))?.body == cut[last])
            }
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func everyTruncationOfAnEventThrows() async {
        for frames in FrameParsers.validEvents {
            await Task.yield()
            #expect(FrameParsers.event(frames) == .decoded)
            for count in 0..<frames.count {
                #expect(FrameParsers.event(Array(frames.prefix(count))) == .failed(BusDecodeError(.wrongFrameCount, "frames")))
            }
            for length in 0..<frames[1].count {
                var cut = frames
                cut[1] = Array(cut[1].prefix(length))
                let outcome = FrameParsers.event(cut)
                guard case .failed(let error) = outcome, error.reason == .truncated else {
                    Issue.record("event envelope cut to \(length) bytes gave \(outcome)")
                    return
                }
            }
            // Topics are opaque but must be UTF-8: a cut inside a multi-byte character is refused, any other cut kept.
            for length in 0...frames[0].count {
                var cut = frames
                cut[0] = Array(cut[0].prefix(length))
                let outcome = FrameParsers.event(cut)
                if String(validating: cut[0], as: UTF8.self) == nil {
                    #expect(outcome == .failed(BusDecodeError(.invalidUTF8, "topic")))
                } else {
                    #expect(outcome == .decoded)
                }
            }
        }
    }

    // MARK: (b) random bytes

    @Test(.timeLimit(.minutes(1)), arguments: FuzzTarget.all)
    func randomBytesNeverCrash(_ target: FuzzTarget) async {
        var rng = SplitMix64(seed: target.seed)
        var decoded = 0
        for iteration in 0..<3000 {
            if iteration % 100 == 0 { await Task.yield() }
            let input: [UInt8]
            switch iteration % 3 {
            case 0:
                // Pure noise.
                input = rng.bytes(rng.below(301))
            case 1:
                // A valid start, then noise: reaches the later fields.
                let sample = target.samples[rng.below(target.samples.count)]
                input = Array(sample.prefix(rng.below(sample.count + 1))) + rng.bytes(rng.below(301))
            default:
                // Small lengths and booleans are likely: noise from a narrow alphabet.
                input = (0..<rng.below(301)).map { _ in [0, 1, 2, 0x7F, 0x80, 0xFF, 0x57, 0x50][rng.below(8)] }
            }
            switch target.run(input) {
            case .decoded: decoded += 1
            case .failed: break
            case .unstable:
                Issue.record("\(target.name): accepted \(input) but the value does not round-trip")
                return
            }
        }
        // Empty decodes only the empty frame; everything else should hardly ever accept noise.
        #expect(decoded < 3000)
    }

    @Test(.timeLimit(.minutes(1)))
    func randomFramesNeverCrashTheMultipartParsers() async {
        var rng = SplitMix64(seed: 0x5EED_F4A3)
        let envelopes = Samples.envelopes.map { $0.encoded() }
        func frame() -> [UInt8] {
            switch rng.below(10) {
            case 0, 1, 2: return []
            case 3, 4:
                var envelope = envelopes[rng.below(envelopes.count)]
                envelope[3] = UInt8(1 + rng.below(3))  // any valid kind
                return envelope
            case 5:
                var envelope = envelopes[rng.below(envelopes.count)]
                envelope[rng.below(envelope.count)] = rng.byte()
                return envelope
            default: return rng.bytes(rng.below(41))
            }
        }
        var accepted = (message: 0, event: 0)
        for iteration in 0..<4000 {
            if iteration % 100 == 0 { await Task.yield() }
            let frames: Frames = (0..<rng.below(rng.chance(10) ? 14 : 6)).map { _ in frame() }
            switch FrameParsers.message(frames) {
            case .decoded: accepted.message += 1
            case .failed: break
            case .unstable: Issue.record("BusMessage.parse accepted inconsistent frames \(frames)")
            }
            switch FrameParsers.event(frames) {
            case .decoded: accepted.event += 1
            case .failed: break
            case .unstable: Issue.record("BusEvent.parse accepted inconsistent frames \(frames)")
            }
            _ = try? BusMessage.parseRoute(frames)
            _ = frames.first.map { BrokerCommand.parse($0) }
        }
        // The generator is biased towards valid shapes: both parsers must have accepted some.
        #expect(accepted.message > 0)
        #expect(accepted.event > 0)
    }

    // MARK: (c) single-byte mutations

    @Test(.timeLimit(.minutes(1)), arguments: FuzzTarget.all)
    func singleByteMutationsNeverCrash(_ target: FuzzTarget) async {
        var rng = SplitMix64(seed: target.seed ^ 0xB17F_11B5)
        for sample in target.samples where !sample.isEmpty {
            if sample.count <= 160 {
                // Small: every position, every value.
                for position in sample.indices {
                    await Task.yield()
                    for value in 0...255 where UInt8(value) != sample[position] {
                        var mutated = sample
                        mutated[position] = UInt8(value)
                        guard target.run(mutated) != .unstable else {
                            Issue.record("\(target.name): byte \(position) := \(value) accepted an unstable value")
                            return
                        }
                    }
                }
            }
            // Any size: random positions and values, and a few multi-byte mutations.
            await Task.yield()
            for _ in 0..<500 {
                var mutated = sample
                for _ in 0..<(rng.chance(80) ? 1 : 1 + rng.below(4)) {
                    mutated[rng.below(mutated.count)] = rng.byte()
                }
                guard target.run(mutated) != .unstable else {
                    Issue.record("\(target.name): mutation \(mutated) accepted an unstable value")
                    return
                }
            }
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func singleByteMutationsOfMultipartMessagesNeverCrash() async {
        var rng = SplitMix64(seed: 0xC0FF_EE00)
        for frames in FrameParsers.validMessages + FrameParsers.validEvents {
            await Task.yield()
            for _ in 0..<300 {
                var mutated = frames
                let index = rng.below(mutated.count)
                if mutated[index].isEmpty {
                    mutated[index] = [rng.byte()]  // the delimiter is no longer empty
                } else {
                    mutated[index][rng.below(mutated[index].count)] = rng.byte()
                }
                #expect(FrameParsers.message(mutated) != .unstable)
                #expect(FrameParsers.event(mutated) != .unstable)
            }
        }
    }

    @Test func envelopeMutationsOfTheHeaderAreClassified() {
        // Every value of magic, version and kind bytes: exactly the valid ones decode, the rest name their reason.
        let sample = Samples.envelopes[1].encoded()
        for value in 0...255 {
            var bytes = sample
            bytes[0] = UInt8(value)
            #expect(decodeError(Envelope.self, bytes) == (value == 0x57 ? nil : BusDecodeError(.badMagic, "magic")))
            bytes = sample
            bytes[1] = UInt8(value)
            #expect(decodeError(Envelope.self, bytes) == (value == 0x50 ? nil : BusDecodeError(.badMagic, "magic")))
            bytes = sample
            bytes[2] = UInt8(value)
            #expect(decodeError(Envelope.self, bytes) == (value == 1 ? nil : BusDecodeError(.unsupportedVersion, "version")))
            bytes = sample
            bytes[3] = UInt8(value)
            #expect(decodeError(Envelope.self, bytes) == ((1...3).contains(value) ? nil : BusDecodeError(.badKind, "kind")))
        }
    }

    @Test func theGeneratorIsDeterministic() {
        var a = SplitMix64(seed: 42)
        var b = SplitMix64(seed: 42)
        let first = (0..<8).map { _ in a.next() }
        #expect(first == (0..<8).map { _ in b.next() })
        // Reference values of SplitMix64 for seed 0.
        var zero = SplitMix64(seed: 0)
        #expect(zero.next() == 0xE220_A839_7B1D_CDAF)
        #expect(zero.next() == 0x6E78_9E6A_A1B9_65F4)
    }
}
