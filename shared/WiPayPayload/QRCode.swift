/// A QR code (ISO/IEC 18004) of bytes: byte mode, error correction level M, the smallest version 1–40 that
/// fits, and the mask with the lowest penalty by the standard's four rules (or a fixed mask).
/// `modules[row][column]` is true for a dark module; the quiet zone is not included.
public struct QRCode: Sendable, Equatable {
    public let version: Int
    public let mask: Int
    public let modules: [[Bool]]
    public var size: Int { modules.count }

    public struct TooLong: Error, Sendable, CustomStringConvertible {
        public let bytes: Int
        public var description: String { "\(bytes) bytes do not fit in a QR code (at most 2331 at level M)" }
    }

    /// Encodes the UTF-8 bytes of `text`.
    public init(text: String, mask: Int? = nil) throws(TooLong) {
        try self.init(bytes: Array(text.utf8), mask: mask)
    }

    /// - Parameter mask: 0–7 to force a mask (for tests); nil picks the best.
    public init(bytes: [UInt8], mask: Int? = nil) throws(TooLong) {
        guard let version = (1...40).first(where: { QRTables.dataCodewords(version: $0) * 8 >= Self.bitLength(bytes.count, version: $0) })
        else { throw TooLong(bytes: bytes.count) }
        let codewords = QRTables.interleaved(data: Self.dataCodewords(bytes, version: version), version: version)
        var grid = QRGrid(version: version)
        grid.drawFunctionPatterns()
        grid.drawCodewords(codewords)
        let chosen: Int
        if let mask, (0...7).contains(mask) {
            chosen = mask
        } else {
            var best = 0
            var bestPenalty = Int.max
            for candidate in 0..<8 {
                var trial = grid
                trial.applyMask(candidate)
                trial.drawFormatBits(mask: candidate)
                let penalty = trial.penalty()
                if penalty < bestPenalty {
                    bestPenalty = penalty
                    best = candidate
                }
            }
            chosen = best
        }
        grid.applyMask(chosen)
        grid.drawFormatBits(mask: chosen)
        self.version = version
        self.mask = chosen
        self.modules = grid.modules
    }

    /// Mode indicator (4) + character count + 8 per byte.
    static func bitLength(_ count: Int, version: Int) -> Int { 4 + (version <= 9 ? 8 : 16) + 8 * count }

    /// The data codewords: mode 0100, count, bytes, terminator, padding to a byte, then 0xEC 0x11 …
    static func dataCodewords(_ bytes: [UInt8], version: Int) -> [UInt8] {
        let capacity = QRTables.dataCodewords(version: version)
        var bits: [Bool] = []
        func append(_ value: Int, _ count: Int) {
            for i in stride(from: count - 1, through: 0, by: -1) { bits.append((value >> i) & 1 == 1) }
        }
        append(0b0100, 4)
        append(bytes.count, version <= 9 ? 8 : 16)
        for byte in bytes { append(Int(byte), 8) }
        append(0, min(4, capacity * 8 - bits.count))
        append(0, (8 - bits.count % 8) % 8)
        var result: [UInt8] = []
        for start in stride(from: 0, to: bits.count, by: 8) {
            var byte: UInt8 = 0
            for bit in bits[start..<(start + 8)] { byte = byte << 1 | (bit ? 1 : 0) }
            result.append(byte)
        }
        var pad: UInt8 = 0xEC
        while result.count < capacity {
            result.append(pad)
            pad = pad == 0xEC ? 0x11 : 0xEC
        }
        return result
    }
}

/// Version tables and the Reed–Solomon code for level M.
enum QRTables {
    /// Error correction codewords per block, level M, index = version.
    static let eccPerBlock = [
        -1, 10, 16, 26, 18, 24, 16, 18, 22, 22, 26, 30, 22, 22, 24, 24, 28, 28, 26, 26, 26, 26, 28, 28, 28, 28, 28, 28,
        28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28,
    ]
    /// Number of error correction blocks, level M, index = version.
    static let blocks = [
        -1, 1, 1, 1, 2, 2, 4, 4, 4, 5, 5, 5, 8, 9, 9, 10, 10, 11, 13, 14, 16, 17, 17, 18, 20, 21, 23, 25, 26, 28, 29, 31,
        33, 35, 37, 38, 40, 43, 45, 47, 49,
    ]

    /// Modules that carry codewords (data + ECC + remainder bits).
    static func rawDataModules(version: Int) -> Int {
        var result = (16 * version + 128) * version + 64
        if version >= 2 {
            let align = version / 7 + 2
            result -= (25 * align - 10) * align - 55
            if version >= 7 { result -= 36 }
        }
        return result
    }

    static func dataCodewords(version: Int) -> Int {
        rawDataModules(version: version) / 8 - eccPerBlock[version] * blocks[version]
    }

    /// Centre coordinates of the alignment patterns.
    static func alignmentPositions(version: Int) -> [Int] {
        if version == 1 { return [] }
        let count = version / 7 + 2
        let size = version * 4 + 17
        let step = (version * 8 + count * 3 + 5) / (count * 4 - 4) * 2
        var result: [Int] = []
        var position = size - 7
        while result.count < count - 1 {
            result.insert(position, at: 0)
            position -= step
        }
        result.insert(6, at: 0)
        return result
    }

    /// Splits data into blocks, adds each block's ECC and interleaves them.
    static func interleaved(data: [UInt8], version: Int) -> [UInt8] {
        let blockCount = blocks[version]
        let eccLength = eccPerBlock[version]
        let rawCodewords = rawDataModules(version: version) / 8
        let shortBlocks = blockCount - rawCodewords % blockCount
        let shortLength = rawCodewords / blockCount
        let divisor = ReedSolomon.generator(degree: eccLength)
        var dataBlocks: [[UInt8]] = []
        var eccBlocks: [[UInt8]] = []
        var offset = 0
        for i in 0..<blockCount {
            let length = shortLength - eccLength + (i < shortBlocks ? 0 : 1)
            let block = Array(data[offset..<(offset + length)])
            offset += length
            dataBlocks.append(block)
            eccBlocks.append(ReedSolomon.remainder(block, generator: divisor))
        }
        var result: [UInt8] = []
        let longest = dataBlocks.map(\.count).max() ?? 0
        for i in 0..<longest {
            for block in dataBlocks where i < block.count { result.append(block[i]) }
        }
        for i in 0..<eccLength {
            for block in eccBlocks { result.append(block[i]) }
        }
        return result
    }
}

/// Reed–Solomon over GF(2^8) with the QR polynomial x^8 + x^4 + x^3 + x^2 + 1 (0x11D).
public enum ReedSolomon {
    static func multiply(_ x: UInt8, _ y: UInt8) -> UInt8 {
        var z: Int = 0
        for i in stride(from: 7, through: 0, by: -1) {
            z = (z << 1) ^ ((z >> 7) * 0x11D)
            z ^= ((Int(y) >> i) & 1) * Int(x)
        }
        return UInt8(z & 0xFF)
    }

    /// The generator polynomial of `degree` (highest coefficient, always 1, left out).
    static func generator(degree: Int) -> [UInt8] {
        var result = [UInt8](repeating: 0, count: degree)
        result[degree - 1] = 1
        var root: UInt8 = 1
        for _ in 0..<degree {
            for j in 0..<degree {
                result[j] = multiply(result[j], root)
                if j + 1 < degree { result[j] ^= result[j + 1] }
            }
            root = multiply(root, 0x02)
        }
        return result
    }

    static func remainder(_ data: [UInt8], generator: [UInt8]) -> [UInt8] {
        var result = [UInt8](repeating: 0, count: generator.count)
        for byte in data {
            let factor = byte ^ result.removeFirst()
            result.append(0)
            for i in 0..<result.count { result[i] ^= multiply(generator[i], factor) }
        }
        return result
    }

    /// The `count` error correction codewords of `data`.
    public static func errorCorrection(for data: [UInt8], count: Int) -> [UInt8] {
        remainder(data, generator: generator(degree: count))
    }
}

/// The module grid while it is being built.
struct QRGrid {
    let version: Int
    let size: Int
    var modules: [[Bool]]
    var isFunction: [[Bool]]

    init(version: Int) {
        self.version = version
        self.size = version * 4 + 17
        modules = Array(repeating: Array(repeating: false, count: size), count: size)
        isFunction = modules
    }

    mutating func set(_ x: Int, _ y: Int, _ dark: Bool) {
        modules[y][x] = dark
        isFunction[y][x] = true
    }

    mutating func drawFunctionPatterns() {
        for i in 0..<size {
            set(6, i, i % 2 == 0)
            set(i, 6, i % 2 == 0)
        }
        drawFinder(3, 3)
        drawFinder(size - 4, 3)
        drawFinder(3, size - 4)
        let positions = QRTables.alignmentPositions(version: version)
        let last = positions.count - 1
        for i in positions.indices {
            for j in positions.indices {
                if (i == 0 && j == 0) || (i == 0 && j == last) || (i == last && j == 0) { continue }
                for dy in -2...2 {
                    for dx in -2...2 { set(positions[i] + dx, positions[j] + dy, max(abs(dx), abs(dy)) != 1) }
                }
            }
        }
        drawFormatBits(mask: 0)  // reserves the area; redrawn once the mask is known
        drawVersion()
    }

    private mutating func drawFinder(_ x: Int, _ y: Int) {
        for dy in -4...4 {
            for dx in -4...4 {
                let distance = max(abs(dx), abs(dy))
                let xx = x + dx
                let yy = y + dy
                if (0..<size).contains(xx) && (0..<size).contains(yy) { set(xx, yy, distance != 2 && distance != 4) }
            }
        }
    }

    /// The 15 format bits (level M = 00, then the mask) with their BCH code, both copies, and the dark module.
    mutating func drawFormatBits(mask: Int) {
        let data = (0b00 << 3) | mask
        var remainder = data
        for _ in 0..<10 { remainder = (remainder << 1) ^ ((remainder >> 9) * 0x537) }
        let bits = ((data << 10) | remainder) ^ 0x5412
        func bit(_ i: Int) -> Bool { (bits >> i) & 1 == 1 }
        for i in 0...5 { set(8, i, bit(i)) }
        set(8, 7, bit(6))
        set(8, 8, bit(7))
        set(7, 8, bit(8))
        for i in 9..<15 { set(14 - i, 8, bit(i)) }
        for i in 0..<8 { set(size - 1 - i, 8, bit(i)) }
        for i in 8..<15 { set(8, size - 15 + i, bit(i)) }
        set(8, size - 8, true)
    }

    /// The 18 version bits (versions 7 and up), both copies.
    mutating func drawVersion() {
        guard version >= 7 else { return }
        var remainder = version
        for _ in 0..<12 { remainder = (remainder << 1) ^ ((remainder >> 11) * 0x1F25) }
        let bits = (version << 12) | remainder
        for i in 0..<18 {
            let dark = (bits >> i) & 1 == 1
            let a = size - 11 + i % 3
            let b = i / 3
            set(a, b, dark)
            set(b, a, dark)
        }
    }

    /// Places the codewords in the zigzag order, skipping function modules.
    mutating func drawCodewords(_ codewords: [UInt8]) {
        var i = 0
        var right = size - 1
        while right >= 1 {
            if right == 6 { right = 5 }
            for vertical in 0..<size {
                for j in 0..<2 {
                    let x = right - j
                    let upward = (right + 1) & 2 == 0
                    let y = upward ? size - 1 - vertical : vertical
                    if !isFunction[y][x] && i < codewords.count * 8 {
                        modules[y][x] = (codewords[i >> 3] >> (7 - (i & 7))) & 1 == 1
                        i += 1
                    }
                }
            }
            right -= 2
        }
    }

    static func maskBit(_ mask: Int, x: Int, y: Int) -> Bool {
        switch mask {
        case 0: return (x + y) % 2 == 0
        case 1: return y % 2 == 0
        case 2: return x % 3 == 0
        case 3: return (x + y) % 3 == 0
        case 4: return (x / 3 + y / 2) % 2 == 0
        case 5: return x * y % 2 + x * y % 3 == 0
        case 6: return (x * y % 2 + x * y % 3) % 2 == 0
        default: return ((x + y) % 2 + x * y % 3) % 2 == 0
        }
    }

    mutating func applyMask(_ mask: Int) {
        for y in 0..<size {
            for x in 0..<size where !isFunction[y][x] && Self.maskBit(mask, x: x, y: y) {
                modules[y][x].toggle()
            }
        }
    }

    /// The standard's penalty score: runs of five or more (N1 = 3), 2×2 blocks (N2 = 3), finder-like
    /// 1:1:3:1:1 patterns with four light modules on one side (N3 = 40), and dark/light balance (N4 = 10).
    func penalty() -> Int {
        var score = 0
        func lines() -> [[Bool]] {
            var result = modules
            for x in 0..<size { result.append((0..<size).map { modules[$0][x] }) }
            return result
        }
        let finderA: [Bool] = [true, false, true, true, true, false, true, false, false, false, false]
        let finderB: [Bool] = [false, false, false, false, true, false, true, true, true, false, true]
        for line in lines() {
            var run = 1
            for i in 1..<line.count {
                if line[i] == line[i - 1] {
                    run += 1
                } else {
                    if run >= 5 { score += 3 + run - 5 }
                    run = 1
                }
            }
            if run >= 5 { score += 3 + run - 5 }
            if line.count >= 11 {
                for start in 0...(line.count - 11) {
                    let window = line[start..<(start + 11)]
                    if window.elementsEqual(finderA) || window.elementsEqual(finderB) { score += 40 }
                }
            }
        }
        for y in 0..<(size - 1) {
            for x in 0..<(size - 1) {
                let c = modules[y][x]
                if c == modules[y][x + 1] && c == modules[y + 1][x] && c == modules[y + 1][x + 1] { score += 3 }
            }
        }
        let dark = modules.reduce(0) { $0 + $1.filter { $0 }.count }
        let total = size * size
        let k = (abs(dark * 20 - total * 10) + total - 1) / total - 1
        score += k * 10
        return score
    }
}

extension QRCode {
    /// The code drawn with Unicode half blocks, two module rows per text line, with a quiet zone of
    /// `quietZone` modules. With `ansi`, the colours are set explicitly (black on white) so the code reads
    /// the same in light and dark terminals; without, dark modules are drawn as blocks (right on a light
    /// background or on paper).
    public func renderHalfBlocks(quietZone: Int = 4, ansi: Bool = true) -> String {
        let full = size + 2 * quietZone
        func dark(_ row: Int, _ column: Int) -> Bool {
            let r = row - quietZone
            let c = column - quietZone
            guard r >= 0, c >= 0, r < size, c < size else { return false }
            return modules[r][c]
        }
        var out = ""
        for row in stride(from: 0, to: full, by: 2) {
            if ansi { out += "\u{1B}[30;107m" }
            for column in 0..<full {
                let top = dark(row, column)
                let bottom = row + 1 < full ? dark(row + 1, column) : false
                switch (top, bottom) {
                case (true, true): out += "█"
                case (true, false): out += "▀"
                case (false, true): out += "▄"
                case (false, false): out += " "
                }
            }
            if ansi { out += "\u{1B}[0m" }
            out += "\n"
        }
        return out
    }
}

extension QRCode {
    /// The code as an SVG image: one path of unit squares on a white background, with a quiet zone of
    /// `quietZone` modules, `scale` pixels per module for its intrinsic size. Nothing in it comes from the
    /// encoded text, so it is safe to serve for any payload.
    public func svg(quietZone: Int = 4, scale: Int = 8) -> String {
        let full = size + 2 * quietZone
        var path = ""
        path.reserveCapacity(size * size * 4)
        for (r, row) in modules.enumerated() {
            var c = 0
            while c < size {
                guard row[c] else {
                    c += 1
                    continue
                }
                // One rectangle per run of dark modules in a row.
                var run = 1
                while c + run < size && row[c + run] { run += 1 }
                path += "M\(c + quietZone) \(r + quietZone)h\(run)v1h-\(run)z"
                c += run
            }
        }
        let pixels = full * max(1, scale)
        return """
            <svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 \(full) \(full)" width="\(pixels)" height="\(pixels)" \
            shape-rendering="crispEdges" role="img" aria-label="QR code of the payment request">\
            <rect width="\(full)" height="\(full)" fill="#fff"/><path d="\(path)" fill="#000"/></svg>
            """
    }
}
