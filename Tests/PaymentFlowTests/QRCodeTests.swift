import Testing

@testable import WiPayPayload

@Suite struct QRCodeTests {
    static let vectors = [QRVectors.helloWorld, QRVectors.version7, QRVectors.version10]

    func rows(_ code: QRCode) -> [String] {
        code.modules.map { row in String(row.map { $0 ? "#" : "." }) }
    }

    @Test(arguments: vectors.indices)
    func matchesKnownMatrix(index: Int) throws {
        let vector = Self.vectors[index]
        let code = try QRCode(text: vector.text, mask: vector.mask)
        #expect(code.version == vector.version)
        #expect(code.size == vector.version * 4 + 17)
        let got = rows(code)
        #expect(got.count == vector.rows.count)
        for (row, (mine, expected)) in zip(got, vector.rows).enumerated() {
            #expect(mine == expected, "row \(row) differs")
        }
    }

    @Test(arguments: vectors.indices)
    func automaticMaskIsTheLowestPenalty(index: Int) throws {
        let vector = Self.vectors[index]
        let automatic = try QRCode(text: vector.text)
        // Whatever mask it chose, forcing that mask gives the same symbol, and no other mask scores lower.
        #expect(try QRCode(text: vector.text, mask: automatic.mask) == automatic)
        var grid = QRGrid(version: automatic.version)
        grid.modules = automatic.modules
        let chosenPenalty = grid.penalty()
        for mask in 0..<8 {
            let other = try QRCode(text: vector.text, mask: mask)
            var otherGrid = QRGrid(version: other.version)
            otherGrid.modules = other.modules
            #expect(otherGrid.penalty() >= chosenPenalty)
        }
    }

    /// ISO/IEC 18004's worked example: "HELLO WORLD" at 1-M (alphanumeric) and its ten ECC codewords.
    @Test func reedSolomonKnownVector() {
        let data: [UInt8] = [32, 91, 11, 120, 209, 114, 220, 77, 67, 64, 236, 17, 236, 17, 236, 17]
        #expect(ReedSolomon.errorCorrection(for: data, count: 10) == [196, 35, 39, 119, 235, 215, 231, 226, 93, 23])
    }

    @Test func galoisFieldMultiplication() {
        #expect(ReedSolomon.multiply(0x02, 0x80) == 0x1D)  // x * x^7 = x^8 = x^4 + x^3 + x^2 + 1
        #expect(ReedSolomon.multiply(0x53, 0x01) == 0x53)
        #expect(ReedSolomon.multiply(0x00, 0xFF) == 0x00)
    }

    @Test func capacityAndVersionChoice() throws {
        // Level M byte capacities: version 1 holds 14 bytes, version 40 holds 2331.
        #expect(try QRCode(bytes: Array(repeating: 0x41, count: 14)).version == 1)
        #expect(try QRCode(bytes: Array(repeating: 0x41, count: 15)).version == 2)
        #expect(try QRCode(bytes: Array(repeating: 0x41, count: 2331)).version == 40)
        #expect(throws: QRCode.TooLong.self) { try QRCode(bytes: Array(repeating: 0x41, count: 2332)) }
        #expect(QRTables.alignmentPositions(version: 32) == [6, 34, 60, 86, 112, 138])
        #expect(QRTables.alignmentPositions(version: 7) == [6, 22, 38])
    }

    @Test func halfBlockRendering() throws {
        let code = try QRCode(text: "HELLO WORLD", mask: 2)
        let plain = code.renderHalfBlocks(quietZone: 4, ansi: false)
        let lines = plain.split(separator: "\n", omittingEmptySubsequences: false).dropLast()
        // 21 modules + 8 quiet = 29 rows → 15 text lines of 29 characters.
        #expect(lines.count == 15)
        #expect(lines.allSatisfy { $0.count == 29 })
        // Two blank lines of quiet zone on top, then the finder's top edge in full blocks... row 4 is the
        // finder's first row (dark), row 5 its second: so line 2 starts with 4 spaces then "█" (dark over dark).
        #expect(lines[0].allSatisfy { $0 == " " })
        #expect(lines[1].allSatisfy { $0 == " " })
        #expect(Array(lines[2])[4] == "█")
        #expect(Array(lines[2])[5] == "▀")  // finder row 0 dark, row 1 light inside
        let ansi = code.renderHalfBlocks()
        #expect(ansi.hasPrefix("\u{1B}[30;107m"))
    }
}
