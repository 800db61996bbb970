// The gateways' strict JSON parser and body validation: pure, no sockets.

import Testing
import WiPayGateway
import WiPayPayload

@Suite("Gateway JSON parser")
struct GatewayJSONParserTests {
    @Test func parsesEveryKind() throws {
        let value = try JSONParser.parse(#" {"a": 1, "b": -12.5, "c": "x\n\u00e9\ud83d\ude00", "d": [true, false, null], "e": {}} "#)
        guard case .object(let object) = value else {
            Issue.record("not an object: \(value)")
            return
        }
        #expect(object.keys == ["a", "b", "c", "d", "e"])
        #expect(object["a"] == .int(1))
        #expect(object["b"] == .number("-12.5"))
        #expect(object["c"] == .string("x\né😀"))
        #expect(object["d"] == .array([.bool(true), .bool(false), .null]))
        #expect(object["e"] == .object(JSONObject()))
    }

    @Test func integersAreKeptApartFromOtherNumbers() throws {
        #expect(try JSONParser.parse("12") == .int(12))
        #expect(try JSONParser.parse("-0") == .int(0))
        #expect(try JSONParser.parse("9223372036854775807") == .int(Int64.max))
        #expect(try JSONParser.parse("12.5") == .number("12.5"))
        #expect(try JSONParser.parse("12.0") == .number("12.0"))
        #expect(try JSONParser.parse("1e3") == .number("1e3"))
        #expect(try JSONParser.parse("1E-2") == .number("1E-2"))
        // Too big for Int64: not an integer we can use.
        #expect(try JSONParser.parse("9223372036854775808") == .number("9223372036854775808"))
    }

    @Test(arguments: [
        "", " ", "{", "}", "[1,]", "{\"a\":1,}", "{\"a\" 1}", "{a:1}", "'a'", "01", "1.", ".5", "-", "1e", "+1", "NaN",
        "Infinity", "tru", "nul", "\"abc", "\"\\x\"", "\"\\u12\"", "\"\\ud800\"", "\"\\udc00\"", "\"a\u{01}b\"", "{} {}",
        "[1] x", "\u{FEFF}{}",
    ])
    func rejectsMalformed(_ text: String) {
        #expect(throws: JSONParseError.self) { try JSONParser.parse(text) }
    }

    @Test func rejectsDuplicateKeys() {
        #expect(throws: JSONParseError.self) { try JSONParser.parse(#"{"amount": 1, "amount": 2}"#) }
        #expect(throws: JSONParseError.self) { try JSONParser.parse(#"{"a": {"x": 1, "x": 1}}"#) }
        // The same key written with an escape is the same key.
        #expect(throws: JSONParseError.self) { try JSONParser.parse(#"{"ab": 1, "a\u0062": 2}"#) }
    }

    @Test func rejectsInvalidUTF8() {
        let bytes: [UInt8] = [0x22, 0xC3, 0x28, 0x22]  // "\xC3(" is not UTF-8
        #expect(throws: JSONParseError.self) { try JSONParser.parse(bytes) }
    }

    @Test func boundsDepthAndSize() throws {
        let deep = String(repeating: "[", count: 100) + String(repeating: "]", count: 100)
        #expect(throws: JSONParseError.self) { try JSONParser.parse(deep, limits: JSONLimits(maxDepth: 32)) }
        let ok = String(repeating: "[", count: 10) + String(repeating: "]", count: 10)
        _ = try JSONParser.parse(ok, limits: JSONLimits(maxDepth: 32))
        let huge = "\"" + String(repeating: "a", count: 2 << 20) + "\""
        #expect(throws: JSONParseError.self) { try JSONParser.parse(huge, limits: JSONLimits(maxBytes: 1 << 20)) }
        // A huge but nested-only input fails fast at the depth limit, not with a stack overflow.
        let bomb = String(repeating: "[", count: 1_000_000)
        #expect(throws: JSONParseError.self) { try JSONParser.parse(bomb, limits: JSONLimits(maxDepth: 32, maxBytes: 2 << 20)) }
    }

    @Test func writesEscapedJSONThatParsesBack() throws {
        let value = JSONValue.obj([
            "q": "say \"hi\"\\", "c": .string("tab\tnl\nbell\u{07}"), "u": "é😀", "n": .int(-5), "z": .null,
        ])
        let text = value.serialized
        #expect(!text.contains("\n"))
        #expect(text.contains(#"\u0007"#))
        #expect(try JSONParser.parse(text) == value)
    }
}

@Suite("Gateway request bodies")
struct GatewayBodyTests {
    static let allowed: Set<String> = ["amount", "currency", "reference", "description"]

    func code(_ body: String, _ read: (JSONBody) throws(GatewayError) -> Void = { _ in }) -> String? {
        do {
            let parsed = try JSONBody.parse(Array(body.utf8), allowed: Self.allowed)
            try read(parsed)
            return nil
        } catch {
            return error.code
        }
    }

    @Test func readsValidFields() throws {
        let body = try JSONBody.parse(Array(#"{"amount": 1250, "currency": "CNY", "reference": "order-42"}"#.utf8), allowed: Self.allowed)
        #expect(try body.int64("amount") == 1250)
        #expect(try body.string("currency") == "CNY")
        #expect(try body.optionalString("description") == nil)
    }

    @Test func errorCodes() {
        #expect(code(#"{"amount": 1, "tip": 2}"#) == "unknown_field")
        #expect(code("not json") == "invalid_json")
        #expect(code("[1, 2]") == "invalid_json")
        #expect(code(#""a string""#) == "invalid_json")
        #expect(code("") == "invalid_json")
        #expect(code(#"{"amount": 1, "amount": 1}"#) == "invalid_json")
        #expect(code("{}") { b throws(GatewayError) in _ = try b.int64("amount") } == "missing_field")
        #expect(code(#"{"amount": null}"#) { b throws(GatewayError) in _ = try b.int64("amount") } == "missing_field")
        #expect(code(#"{"amount": 12.5}"#) { b throws(GatewayError) in _ = try b.int64("amount") } == "invalid_field")
        #expect(code(#"{"amount": 1e3}"#) { b throws(GatewayError) in _ = try b.int64("amount") } == "invalid_field")
        #expect(code(#"{"amount": "12"}"#) { b throws(GatewayError) in _ = try b.int64("amount") } == "invalid_field")
        #expect(code(#"{"amount": 99999999999999999999}"#) { b throws(GatewayError) in _ = try b.int64("amount") } == "invalid_field")
        #expect(code(#"{"currency": 5}"#) { b throws(GatewayError) in _ = try b.string("currency") } == "invalid_field")
        #expect(code(#"{"description": []}"#) { b throws(GatewayError) in _ = try b.optionalString("description") } == "invalid_field")
    }

    @Test func emptyBodyIsAnObjectOnlyWhenAllowed() throws {
        #expect(try JSONBody.parse([], allowed: ["amount"], emptyIsObject: true).object.count == 0)
        #expect(throws: GatewayError.self) { try JSONBody.parse([], allowed: ["amount"]) }
    }

    @Test func amountsAreBounded() throws {
        #expect(try Validate.amount("amount", 1) == 1)
        #expect(try Validate.amount("amount", 1_000_000_000_000) == 1_000_000_000_000)
        for bad: Int64 in [0, -1, 1_000_000_000_001, Int64.max, Int64.min] {
            #expect(throws: GatewayError.self) { try Validate.amount("amount", bad) }
        }
    }

    @Test func textLimits() throws {
        #expect(try Validate.text("reference", "order-42", characters: 1...64) == "order-42")
        #expect(throws: GatewayError.self) { try Validate.text("reference", "", characters: 1...64) }
        #expect(throws: GatewayError.self) { try Validate.text("reference", String(repeating: "x", count: 65), characters: 1...64) }
        #expect(throws: GatewayError.self) { try Validate.text("reference", "a\u{0}b", characters: 1...64) }
    }

    @Test func errorBodyShape() throws {
        let error = GatewayError.badRequest("unknown_field", "unknown field 'a\"b'")
        let parsed = try JSONParser.parse(error.body.serialized)
        #expect(parsed == .obj(["error": .obj(["code": "unknown_field", "message": "unknown field 'a\"b'"])]))
    }

    @Test func idempotencyKeys() {
        #expect(GatewayRequest.isValidIdempotencyKey("k"))
        #expect(GatewayRequest.isValidIdempotencyKey(String(repeating: "k", count: 255)))
        #expect(!GatewayRequest.isValidIdempotencyKey(""))
        #expect(!GatewayRequest.isValidIdempotencyKey(String(repeating: "k", count: 256)))
        #expect(!GatewayRequest.isValidIdempotencyKey("has space"))
        #expect(!GatewayRequest.isValidIdempotencyKey("é"))
    }

    @Test func bodyHashIsLowercaseHexSHA256() {
        #expect(GatewayRequest.bodyHash([]) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        #expect(GatewayRequest.bodyHash(Array("abc".utf8)) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    }

    @Test func base64URL() {
        for length in 0..<40 {
            let bytes = (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) }
            let text = Base64URL.encode(bytes)
            #expect(!text.contains("=") && !text.contains("+") && !text.contains("/"))
            #expect(Base64URL.decode(text) == bytes)
        }
        #expect(Base64URL.decode("AA==") == nil)
        #expect(Base64URL.decode("A") == nil)
        #expect(Base64URL.decode("AB") == nil)  // non-canonical: leftover bits set
        #expect(Base64URL.decode("a+b/") == nil)
    }

    @Test func rfc3339() {
        #expect(RFC3339.string(millis: 0) == "1970-01-01T00:00:00.000Z")
        #expect(RFC3339.string(millis: 1_709_251_199_999) == "2024-02-29T23:59:59.999Z")
        #expect(RFC3339.string(millis: 951_782_400_042) == "2000-02-29T00:00:00.042Z")
    }
}

@Suite struct RFC3339ParsingTests {
    @Test func readsWhatItWritesAndOffsets() {
        for millis: Int64 in [0, 1, 999, 1_738_314_303_042, 951_782_400_000 /* 2000-02-29 */, 253_402_300_799_999] {
            #expect(RFC3339.millis(RFC3339.string(millis: millis)) == millis, "\(RFC3339.string(millis: millis))")
        }
        #expect(RFC3339.millis("2025-01-31T09:05:03Z") == 1_738_314_303_000)
        #expect(RFC3339.millis("2025-01-31t09:05:03z") == 1_738_314_303_000)
        #expect(RFC3339.millis("2025-01-31T17:05:03+08:00") == 1_738_314_303_000)
        #expect(RFC3339.millis("2025-01-31T04:05:03.5-05:00") == 1_738_314_303_500)
        #expect(RFC3339.millis("2025-01-31T09:05:03.123456789Z") == 1_738_314_303_123)
        // Before 1970 is a date-time too (the list API treats it as "since the beginning").
        #expect(RFC3339.millis("1969-12-31T23:59:59Z") == -1000)
        #expect(RFC3339.millis("0060-12-07T16:47:05-07:07") != nil)
        #expect(RFC3339.millis("0000-01-01T00:00:00Z") == -62_167_219_200_000)
    }

    @Test func refusesWhatIsNotADateTime() {
        for text in [
            "", "2025-01-31", "2025-01-31 09:05:03Z", "2025-02-29T00:00:00Z", "2025-13-01T00:00:00Z", "2025-01-31T24:00:00Z",
            "2025-01-31T23:59:60Z", "2025-01-31T09:05:03", "2025-01-31T09:05:03.Z",
            "2025-01-31T09:05:03.1234567890Z", "2025-01-31T09:05:03+0800", "2025-01-31T09:05:03+24:00", "２０２５-01-31T09:05:03Z",
            "2025-01-31T09:05:03Z ", "+025-01-31T09:05:03Z",
        ] {
            #expect(RFC3339.millis(text) == nil, "\(text)")
        }
    }
}
