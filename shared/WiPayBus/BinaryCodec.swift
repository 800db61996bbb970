/// The bus's compact binary encoding: big-endian fixed-width integers, unsigned LEB128 lengths,
/// length-prefixed UTF-8 strings. Hand-written per message — about ten times cheaper than JSON on the
/// hot path, and every length is bounded so a hostile frame cannot make us allocate without limit.

/// Why a frame could not be decoded. Receivers answer it with `Status.badRequest` or count a drop.
public struct BusDecodeError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Reason: String, Sendable {
        case truncated, badMagic, unsupportedVersion, badKind, tooLong, invalidUTF8, invalidValue, trailingBytes,
            wrongFrameCount
    }
    public let reason: Reason
    public let field: String

    public init(_ reason: Reason, _ field: String) {
        self.reason = reason
        self.field = field
    }

    public var description: String { "cannot decode bus frame: \(reason.rawValue) at \(field)" }
}

public struct BusWriter: Sendable {
    public private(set) var bytes: [UInt8]

    public init(capacity: Int = 64) {
        bytes = []
        bytes.reserveCapacity(capacity)
    }

    public mutating func write(_ value: UInt8) { bytes.append(value) }
    public mutating func write(_ value: Bool) { bytes.append(value ? 1 : 0) }

    public mutating func write(_ value: UInt16) {
        bytes.append(UInt8(truncatingIfNeeded: value >> 8))
        bytes.append(UInt8(truncatingIfNeeded: value))
    }

    public mutating func write(_ value: UInt32) {
        for shift in stride(from: 24, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: value >> UInt32(shift))) }
    }

    public mutating func write(_ value: Int64) {
        let bits = UInt64(bitPattern: value)
        for shift in stride(from: 56, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: bits >> UInt64(shift))) }
    }

    /// Unsigned LEB128.
    public mutating func writeLength(_ value: Int) {
        precondition(value >= 0, "lengths are never negative")
        var v = UInt64(value)
        while v >= 0x80 {
            bytes.append(UInt8(truncatingIfNeeded: v) | 0x80)
            v >>= 7
        }
        bytes.append(UInt8(v))
    }

    public mutating func write(_ value: String) {
        var copy = value
        copy.withUTF8 { utf8 in
            writeLength(utf8.count)
            bytes.append(contentsOf: utf8)
        }
    }

    public mutating func write(bytes value: [UInt8]) {
        writeLength(value.count)
        bytes.append(contentsOf: value)
    }

    public mutating func write(_ value: String?) {
        if let value {
            write(true)
            write(value)
        } else {
            write(false)
        }
    }

    public mutating func write(_ value: Int64?) {
        if let value {
            write(true)
            write(value)
        } else {
            write(false)
        }
    }

    public mutating func write<T: BusEncodable>(_ value: T) { value.encode(to: &self) }

    public mutating func write<T: BusEncodable>(_ values: [T]) {
        writeLength(values.count)
        for value in values { value.encode(to: &self) }
    }
}

public struct BusReader: Sendable {
    /// Bounds for anything a peer can make us allocate.
    public static let maxStringBytes = 64 * 1024
    public static let maxArrayCount = 100_000

    private let bytes: [UInt8]
    private var offset: Int

    public init(_ bytes: [UInt8]) {
        self.bytes = bytes
        self.offset = 0
    }

    public var isAtEnd: Bool { offset == bytes.count }
    public var remaining: Int { bytes.count - offset }

    /// Fails when bytes are left over: a frame must be exactly one message.
    public func finish(_ field: String = "end") throws(BusDecodeError) {
        guard isAtEnd else { throw BusDecodeError(.trailingBytes, field) }
    }

    private mutating func take(_ count: Int, _ field: String) throws(BusDecodeError) -> ArraySlice<UInt8> {
        guard count >= 0, remaining >= count else { throw BusDecodeError(.truncated, field) }
        defer { offset += count }
        return bytes[offset..<offset + count]
    }

    public mutating func readUInt8(_ field: String) throws(BusDecodeError) -> UInt8 {
        try take(1, field).first ?? 0
    }

    public mutating func readBool(_ field: String) throws(BusDecodeError) -> Bool {
        switch try readUInt8(field) {
        case 0: return false
        case 1: return true
        default: throw BusDecodeError(.invalidValue, field)
        }
    }

    public mutating func readUInt16(_ field: String) throws(BusDecodeError) -> UInt16 {
        try take(2, field).reduce(0) { $0 << 8 | UInt16($1) }
    }

    public mutating func readUInt32(_ field: String) throws(BusDecodeError) -> UInt32 {
        try take(4, field).reduce(0) { $0 << 8 | UInt32($1) }
    }

    public mutating func readInt64(_ field: String) throws(BusDecodeError) -> Int64 {
        Int64(bitPattern: try take(8, field).reduce(0) { $0 << 8 | UInt64($1) })
    }

    public mutating func readLength(_ field: String, max: Int) throws(BusDecodeError) -> Int {
        var result: UInt64 = 0
        var shift: UInt64 = 0
        while true {
            let byte = try readUInt8(field)
            guard shift < 63 else { throw BusDecodeError(.tooLong, field) }
            result |= UInt64(byte & 0x7F) << shift
            if byte & 0x80 == 0 { break }
            shift += 7
        }
        guard result <= UInt64(max) else { throw BusDecodeError(.tooLong, field) }
        return Int(result)
    }

    public mutating func readString(_ field: String, max: Int = BusReader.maxStringBytes) throws(BusDecodeError) -> String {
        let count = try readLength(field, max: max)
        let slice = try take(count, field)
        guard let string = String(validating: slice, as: UTF8.self) else { throw BusDecodeError(.invalidUTF8, field) }
        return string
    }

    public mutating func readBytes(_ field: String, max: Int = BusReader.maxStringBytes) throws(BusDecodeError) -> [UInt8] {
        Array(try take(try readLength(field, max: max), field))
    }

    public mutating func readOptionalString(_ field: String, max: Int = BusReader.maxStringBytes) throws(BusDecodeError)
        -> String?
    {
        try readBool(field) ? try readString(field, max: max) : nil
    }

    public mutating func readOptionalInt64(_ field: String) throws(BusDecodeError) -> Int64? {
        try readBool(field) ? try readInt64(field) : nil
    }

    public mutating func read<T: BusEncodable>(_ type: T.Type) throws(BusDecodeError) -> T {
        try T(from: &self)
    }

    public mutating func readArray<T: BusEncodable>(_ type: T.Type, _ field: String, max: Int = BusReader.maxArrayCount)
        throws(BusDecodeError) -> [T]
    {
        let count = try readLength(field, max: max)
        var result: [T] = []
        result.reserveCapacity(Swift.min(count, 1024))
        for _ in 0..<count { result.append(try T(from: &self)) }
        return result
    }
}

/// A value with a bus encoding.
public protocol BusEncodable: Sendable {
    func encode(to writer: inout BusWriter)
    init(from reader: inout BusReader) throws(BusDecodeError)
}

extension BusEncodable {
    /// The value as one frame.
    public func encoded() -> [UInt8] {
        var writer = BusWriter()
        encode(to: &writer)
        return writer.bytes
    }

    /// Decodes one whole frame; trailing bytes are an error.
    public static func decode(_ frame: [UInt8]) throws(BusDecodeError) -> Self {
        var reader = BusReader(frame)
        let value = try Self(from: &reader)
        try reader.finish(String(describing: Self.self))
        return value
    }
}
