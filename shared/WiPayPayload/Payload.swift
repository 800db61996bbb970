import Crypto
import Foundation

/// What a payment request's payload tells a phone: who is asking, for how much, until when.
/// Everything here is public (it is shown as a QR code at the counter); nothing in it is secret.
public struct PaymentPayload: Sendable, Equatable {
    public var requestId: String
    public var merchantId: String
    /// The merchant's name as shoppers see it (at most 95 characters in the payload: longer names are cut).
    public var merchantName: String
    public var amountMinor: Int64
    /// ISO 4217 alphabetic code.
    public var currency: String
    /// Unix seconds after which the request can no longer be paid.
    public var expiresAtSeconds: Int64
    /// The till's display name (`payctl terminal add --name`, at most 60 characters in the payload), so a phone
    /// can say "Two Till Shop — till 1". Nil in payloads signed before it was carried.
    public var terminalName: String?
    /// Unix seconds when the request was created, so a phone can list the newest first. Nil in older payloads.
    public var createdAtSeconds: Int64?

    public init(
        requestId: String, merchantId: String, merchantName: String, amountMinor: Int64, currency: String,
        expiresAtSeconds: Int64, terminalName: String? = nil, createdAtSeconds: Int64? = nil
    ) {
        self.requestId = requestId
        self.merchantId = merchantId
        self.merchantName = merchantName
        self.amountMinor = amountMinor
        self.currency = currency
        self.expiresAtSeconds = expiresAtSeconds
        self.terminalName = terminalName
        self.createdAtSeconds = createdAtSeconds
    }

    /// Who is asking, as a shopper reads it: "Two Till Shop — till 1", or the merchant alone.
    public var payee: String {
        guard let terminalName, !terminalName.isEmpty else { return merchantName }
        return "\(merchantName) — \(terminalName)"
    }
}

/// Why a payload was refused. `invalid` maps to the public code `invalid_payload`, `expired` to
/// `request_expired` (the payload itself was genuine).
public enum PayloadError: Error, Sendable, Equatable, CustomStringConvertible {
    case invalid(String)
    case expired(PaymentPayload)

    public var description: String {
        switch self {
        case .invalid(let why): "invalid payload: \(why)"
        case .expired(let payload): "payload for request \(payload.requestId) expired at \(payload.expiresAtSeconds)"
        }
    }
}

/// The layout (see docs/payment-flow.md): EMVCo merchant-presented TLV — two-digit tag, two-digit length
/// (in characters), value — so a QR code of the text is a valid EMVCo code. Tags:
/// `00` format `01`, `01` `12` (dynamic), `26` {`00` WIPAY, `01` request id, `02` merchant id}, `52` `0000`,
/// `58` `XX`, `59` short ASCII name, `81` {`00` version, `01` amount, `02` currency, `03` expiry, `04` created
/// (optional)}, `84` {`00` merchant name, `01` terminal name (optional)},
/// `82` key id, `83` base64url Ed25519 signature over every character before `82`, `63` CRC-16/CCITT-FALSE.
public enum PayloadLayout {
    public static let version = "1"
    public static let guid = "WIPAY"
    /// The bus carries payloads of at most 2048 bytes.
    public static let maxBytes = 2048
    static let maxAmount: Int64 = 1_000_000_000_000
    static let maxName = 95
    static let maxTerminalName = 60
    static let maxShortName = 25
}

/// Signs payloads with the router's Ed25519 key.
public struct PayloadSigner: Sendable {
    /// Raw key bytes: Crypto's key types are not `Sendable`, so the key is rebuilt for each signature.
    private let privateKeyBytes: [UInt8]
    /// `k` + the first 8 hex digits of the public key's SHA-256: lets phones pick the right key after a rotation.
    public let keyId: String
    public let publicKeyBytes: [UInt8]

    public init(privateKey: Curve25519.Signing.PrivateKey) {
        self.privateKeyBytes = Array(privateKey.rawRepresentation)
        self.publicKeyBytes = Array(privateKey.publicKey.rawRepresentation)
        self.keyId = PayloadKeys.keyId(of: publicKeyBytes)
    }

    /// The payload text for `payload`. Throws `invalid` when a field cannot be carried (an id with characters
    /// outside `[A-Za-z0-9_.:-]` or over 64, an amount outside 1…10^12, a currency that is not 3 letters).
    public func sign(_ payload: PaymentPayload) throws(PayloadError) -> String {
        try PayloadFields.check(payload)
        let name = String(String.UnicodeScalarView(payload.merchantName.unicodeScalars.prefix(PayloadLayout.maxName)))
        let terminalName = payload.terminalName.map {
            String(String.UnicodeScalarView($0.unicodeScalars.prefix(PayloadLayout.maxTerminalName)))
        }
        var text = ""
        text += tlv("00", "01")
        text += tlv("01", "12")
        text += tlv("26", tlv("00", PayloadLayout.guid) + tlv("01", payload.requestId) + tlv("02", payload.merchantId))
        text += tlv("52", "0000")
        text += tlv("58", "XX")
        text += tlv("59", PayloadFields.shortASCIIName(name))
        text += tlv(
            "81",
            tlv("00", PayloadLayout.version) + tlv("01", String(payload.amountMinor)) + tlv("02", payload.currency)
                + tlv("03", String(payload.expiresAtSeconds)) + (payload.createdAtSeconds.map { tlv("04", String($0)) } ?? ""))
        text += tlv("84", tlv("00", name) + (terminalName.map { tlv("01", $0) } ?? ""))
        let signed = text
        text += tlv("82", keyId)
        let signature: Data
        do {
            let privateKey = try Curve25519.Signing.PrivateKey(rawRepresentation: privateKeyBytes)
            signature = try privateKey.signature(for: Data(signed.utf8))
        } catch {
            throw .invalid("cannot sign: \(error)")
        }
        text += tlv("83", Base64URL.encode(Array(signature)))
        text += "6304"
        text += CRC16.hex(of: Array(text.utf8))
        guard text.utf8.count <= PayloadLayout.maxBytes else { throw .invalid("payload longer than 2048 bytes") }
        return text
    }
}

/// Verifies payload texts with the router's public keys.
public struct PayloadVerifier: Sendable {
    /// Key id → raw 32-byte Ed25519 public key.
    private let keys: [String: [UInt8]]

    /// `keys`: key id → raw 32-byte Ed25519 public key. Malformed keys are skipped.
    public init(keys: [String: [UInt8]]) {
        self.keys = keys.filter { (try? Curve25519.Signing.PublicKey(rawRepresentation: $0.value)) != nil }
    }

    /// The key id a payload claims to be signed with, or nil when the text is not a well-formed payload.
    public static func keyId(of text: String) -> String? {
        guard let fields = try? TLV.parse(Array(text.unicodeScalars)) else { return nil }
        return fields.first { $0.tag == "82" }.map { String(String.UnicodeScalarView($0.value)) }
    }

    /// The fields `text` claims, read without checking its CRC or signature: only to find which stored
    /// request it names. A caller that trusts it must first find it byte for byte equal to a payload it
    /// signed itself (the payment-router, against its stored request), or `verify` it.
    public static func unverifiedFields(of text: String) -> PaymentPayload? {
        guard !text.isEmpty, text.utf8.count <= PayloadLayout.maxBytes,
            let fields = try? TLV.parse(Array(text.unicodeScalars))
        else { return nil }
        return try? PayloadFields.decode(fields)
    }

    /// The payload in `text`, checked in this order: size and layout, CRC, signature, fields, expiry.
    public func verify(_ text: String, nowSeconds: Int64) throws(PayloadError) -> PaymentPayload {
        guard !text.isEmpty, text.utf8.count <= PayloadLayout.maxBytes else { throw .invalid("empty or too long") }
        let scalars = Array(text.unicodeScalars)
        let fields = try TLV.parse(scalars)
        // The last field must be the CRC, over everything before its value.
        guard let crc = fields.last, crc.tag == "63", crc.value.count == 4 else { throw .invalid("no CRC at the end") }
        let crcInput = String(String.UnicodeScalarView(scalars[..<(crc.offset + 4)]))
        guard CRC16.hex(of: Array(crcInput.utf8)) == String(String.UnicodeScalarView(crc.value)) else {
            throw .invalid("CRC mismatch (altered or truncated)")
        }
        guard fields.count >= 3, fields[fields.count - 3].tag == "82", fields[fields.count - 2].tag == "83" else {
            throw .invalid("no signature")
        }
        let keyField = fields[fields.count - 3]
        let keyId = String(String.UnicodeScalarView(keyField.value))
        guard let raw = keys[keyId], let key = try? Curve25519.Signing.PublicKey(rawRepresentation: raw) else {
            throw .invalid("signed with an unknown key \(keyId)")
        }
        guard let signature = Base64URL.decode(String(String.UnicodeScalarView(fields[fields.count - 2].value))),
            signature.count == 64
        else { throw .invalid("malformed signature") }
        let signed = String(String.UnicodeScalarView(scalars[..<keyField.offset]))
        guard key.isValidSignature(signature, for: Data(signed.utf8)) else { throw .invalid("bad signature") }
        let payload = try PayloadFields.decode(fields)
        if nowSeconds > payload.expiresAtSeconds { throw .expired(payload) }
        return payload
    }
}

/// Loading and creating the router's payload signing key: a file holding the base64url (no padding) of the
/// raw 32-byte Ed25519 private key, readable by its owner only.
public enum PayloadKeyFile {
    public struct KeyError: Error, Sendable, CustomStringConvertible {
        public let description: String
        init(_ description: String) { self.description = description }
    }

    public static func parse(_ text: String) throws(KeyError) -> Curve25519.Signing.PrivateKey {
        let trimmed = text.trimmingCharacters(in: .whitespacesAndNewlines)
        guard let raw = Base64URL.decode(trimmed), raw.count == 32 else {
            throw KeyError("a payload key is the base64url of 32 raw bytes")
        }
        do {
            return try Curve25519.Signing.PrivateKey(rawRepresentation: raw)
        } catch {
            throw KeyError("not an Ed25519 private key")
        }
    }

    public static func load(path: String) throws(KeyError) -> Curve25519.Signing.PrivateKey {
        guard let data = FileManager.default.contents(atPath: path), let text = String(data: data, encoding: .utf8) else {
            throw KeyError("cannot read the payload key file \(path)")
        }
        return try parse(text)
    }

    /// The text of a key file for `key`.
    public static func text(of key: Curve25519.Signing.PrivateKey) -> String {
        Base64URL.encode(Array(key.rawRepresentation)) + "\n"
    }

    /// Loads `path`, or creates it (mode 0600, never overwriting) with a new key when it does not exist.
    public static func generate(path: String) throws(KeyError) -> Curve25519.Signing.PrivateKey {
        if FileManager.default.fileExists(atPath: path) { return try load(path: path) }
        let key = Curve25519.Signing.PrivateKey()
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0o600)
        guard fd >= 0 else { throw KeyError("cannot create \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let bytes = Array(text(of: key).utf8)
        let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        guard written == bytes.count else { throw KeyError("cannot write \(path)") }
        return key
    }
}

/// Key ids and base64url for published public keys.
public enum PayloadKeys {
    public static func keyId(of publicKey: [UInt8]) -> String {
        "k" + SHA256.hash(data: publicKey).prefix(4).map { String(format: "%02x", $0) }.joined()
    }
}

// MARK: - Pieces

private func tlv(_ tag: String, _ value: String) -> String {
    let count = value.unicodeScalars.count
    return tag + (count < 10 ? "0\(count)" : "\(count)") + value
}

struct TLVField {
    var tag: String
    var value: [Unicode.Scalar]
    /// Where the field's tag starts, in scalars.
    var offset: Int
}

enum TLV {
    static func parse(_ s: [Unicode.Scalar]) throws(PayloadError) -> [TLVField] {
        var fields: [TLVField] = []
        var i = 0
        while i < s.count {
            guard i + 4 <= s.count else { throw .invalid("truncated field at \(i)") }
            let tag = String(String.UnicodeScalarView(s[i..<(i + 2)]))
            guard tag.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
                let length = digits(s[(i + 2)..<(i + 4)])
            else { throw .invalid("malformed tag or length at \(i)") }
            guard i + 4 + length <= s.count else { throw .invalid("field \(tag) runs past the end") }
            fields.append(TLVField(tag: tag, value: Array(s[(i + 4)..<(i + 4 + length)]), offset: i))
            i += 4 + length
            if fields.count > 64 { throw .invalid("too many fields") }
        }
        return fields
    }

    static func digits(_ s: ArraySlice<Unicode.Scalar>) -> Int? {
        var n = 0
        for c in s {
            guard c.value >= 0x30, c.value <= 0x39 else { return nil }
            n = n * 10 + Int(c.value - 0x30)
        }
        return n
    }
}

enum PayloadFields {
    static func isId(_ s: String) -> Bool {
        !s.isEmpty && s.utf8.count <= 64
            && s.utf8.allSatisfy { c in
                (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || c == 0x5F
                    || c == 0x2E || c == 0x3A || c == 0x2D
            }
    }

    static func isCurrency(_ s: String) -> Bool { s.utf8.count == 3 && s.utf8.allSatisfy { $0 >= 0x41 && $0 <= 0x5A } }

    static func check(_ p: PaymentPayload) throws(PayloadError) {
        guard isId(p.requestId), isId(p.merchantId) else { throw .invalid("ids must be 1-64 of [A-Za-z0-9_.:-]") }
        guard p.amountMinor >= 1, p.amountMinor <= PayloadLayout.maxAmount else { throw .invalid("amount out of range") }
        guard isCurrency(p.currency) else { throw .invalid("currency must be 3 capital letters") }
        guard p.expiresAtSeconds > 0 else { throw .invalid("expiry must be positive") }
        guard !p.merchantName.isEmpty else { throw .invalid("merchant name is empty") }
        if let terminalName = p.terminalName {
            guard !terminalName.isEmpty else { throw .invalid("terminal name is empty") }
        }
        if let created = p.createdAtSeconds {
            guard created > 0, created <= p.expiresAtSeconds else { throw .invalid("created after its expiry") }
        }
        // A name is shown to the shopper as it is: no control characters (escape sequences) in it.
        for name in [p.merchantName, p.terminalName ?? ""] where name.unicodeScalars.contains(where: Self.isControl) {
            throw .invalid("a name holds control characters")
        }
    }

    static func isControl(_ c: Unicode.Scalar) -> Bool {
        c.value < 0x20 || (c.value >= 0x7F && c.value < 0xA0)
    }

    /// EMVCo's tag 59 wants at most 25 characters of a common character set: ASCII letters, digits and
    /// punctuation pass, anything else becomes `?`.
    static func shortASCIIName(_ name: String) -> String {
        var out = String.UnicodeScalarView()
        for c in name.unicodeScalars.prefix(PayloadLayout.maxShortName) {
            out.append(c.value >= 0x20 && c.value < 0x7F ? c : "?")
        }
        return String(out)
    }

    static func decode(_ fields: [TLVField]) throws(PayloadError) -> PaymentPayload {
        func text(_ v: [Unicode.Scalar]) -> String { String(String.UnicodeScalarView(v)) }
        var byTag: [String: [Unicode.Scalar]] = [:]
        for f in fields {
            guard byTag[f.tag] == nil else { throw .invalid("field \(f.tag) twice") }
            byTag[f.tag] = f.value
        }
        guard byTag["00"].map(text) == "01", byTag["01"].map(text) == "12" else {
            throw .invalid("not a dynamic EMVCo payload")
        }
        guard let account = byTag["26"], let wipay = byTag["81"] else { throw .invalid("not a WiPay payload") }
        let a = try sub(account)
        let w = try sub(wipay)
        guard let nameTemplate = byTag["84"] else { throw .invalid("no merchant name") }
        let n = try sub(nameTemplate)
        guard a["00"] == PayloadLayout.guid else { throw .invalid("not a WiPay payload") }
        guard w["00"] == PayloadLayout.version else { throw .invalid("unsupported payload version") }
        guard let requestId = a["01"], let merchantId = a["02"], let amountText = w["01"], let currency = w["02"],
            let expiryText = w["03"], let name = n["00"]
        else { throw .invalid("a field is missing") }
        guard amountText.utf8.count <= 13, amountText.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
            let amount = Int64(amountText)
        else { throw .invalid("malformed amount") }
        guard expiryText.utf8.count <= 12, expiryText.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
            let expiry = Int64(expiryText)
        else { throw .invalid("malformed expiry") }
        var created: Int64?
        if let createdText = w["04"] {
            guard createdText.utf8.count <= 12, createdText.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
                let value = Int64(createdText)
            else { throw .invalid("malformed creation time") }
            created = value
        }
        let payload = PaymentPayload(
            requestId: requestId, merchantId: merchantId, merchantName: name, amountMinor: amount, currency: currency,
            expiresAtSeconds: expiry, terminalName: n["01"], createdAtSeconds: created)
        try check(payload)
        return payload
    }

    static func sub(_ value: [Unicode.Scalar]) throws(PayloadError) -> [String: String] {
        var out: [String: String] = [:]
        for f in try TLV.parse(value) {
            guard out[f.tag] == nil else { throw .invalid("field \(f.tag) twice in a template") }
            out[f.tag] = String(String.UnicodeScalarView(f.value))
        }
        return out
    }
}

/// CRC-16/CCITT-FALSE (polynomial 0x1021, initial 0xFFFF), as EMVCo's tag 63 uses.
public enum CRC16 {
    public static func checksum(_ bytes: [UInt8]) -> UInt16 {
        var crc: UInt16 = 0xFFFF
        for byte in bytes {
            crc ^= UInt16(byte) << 8
            for _ in 0..<8 { crc = crc & 0x8000 != 0 ? (crc << 1) ^ 0x1021 : crc << 1 }
        }
        return crc
    }

    public static func hex(of bytes: [UInt8]) -> String {
        let value = checksum(bytes)
        let digits = Array("0123456789ABCDEF".utf8)
        return String(decoding: [12, 8, 4, 0].map { digits[Int((value >> UInt16($0)) & 0xF)] }, as: UTF8.self)
    }
}

/// base64url without padding (RFC 4648 §5), as the public API uses for keys and signatures. Strict: no
/// padding, no whitespace, canonical final bits (the one decoder of the project).
public enum Base64URL {
    private static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)
    private static let reverse: [Int8] = {
        var table = [Int8](repeating: -1, count: 256)
        for (i, c) in alphabet.enumerated() { table[Int(c)] = Int8(i) }
        return table
    }()

    public static func encode(_ bytes: [UInt8]) -> String {
        var out: [UInt8] = []
        out.reserveCapacity((bytes.count * 4 + 2) / 3)
        var i = 0
        while i + 3 <= bytes.count {
            let n = UInt32(bytes[i]) << 16 | UInt32(bytes[i + 1]) << 8 | UInt32(bytes[i + 2])
            out += [alphabet[Int(n >> 18 & 63)], alphabet[Int(n >> 12 & 63)], alphabet[Int(n >> 6 & 63)], alphabet[Int(n & 63)]]
            i += 3
        }
        let rest = bytes.count - i
        if rest == 1 {
            let n = UInt32(bytes[i]) << 16
            out += [alphabet[Int(n >> 18 & 63)], alphabet[Int(n >> 12 & 63)]]
        } else if rest == 2 {
            let n = UInt32(bytes[i]) << 16 | UInt32(bytes[i + 1]) << 8
            out += [alphabet[Int(n >> 18 & 63)], alphabet[Int(n >> 12 & 63)], alphabet[Int(n >> 6 & 63)]]
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// nil unless `text` is canonical base64url without padding.
    public static func decode(_ text: String) -> [UInt8]? {
        let input = Array(text.utf8)
        guard input.count % 4 != 1 else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(input.count * 3 / 4)
        var buffer: UInt32 = 0
        var bits = 0
        for c in input {
            let v = reverse[Int(c)]
            guard v >= 0 else { return nil }
            buffer = buffer << 6 | UInt32(v)
            bits += 6
            if bits >= 8 {
                bits -= 8
                out.append(UInt8(truncatingIfNeeded: buffer >> UInt32(bits)))
                buffer &= (1 << UInt32(bits)) - 1
            }
        }
        // Leftover bits must be zero (canonical encoding).
        guard buffer == 0 else { return nil }
        return out
    }
}
