import Foundation
import Crypto

/// Ids, keys and codes of the router (see docs/payment-flow.md, "Ids"). Random ids are lowercase base32
/// (`a-z2-7`) after a prefix; payment and refund ids are derived from their idempotency keys, so that a
/// retry names the same ledger transfer and the ledger answers `exists` instead of posting twice.
public enum RouterIds {
    static let lowerAlphabet = Array("abcdefghijklmnopqrstuvwxyz234567".utf8)
    static let upperAlphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567".utf8)

    /// `count` random base32 characters (5 bits each) from the system's CSPRNG.
    static func random(_ count: Int, alphabet: [UInt8] = lowerAlphabet) -> String {
        var generator = SystemRandomNumberGenerator()
        var out: [UInt8] = []
        out.reserveCapacity(count)
        for _ in 0..<count { out.append(alphabet[Int(generator.next() & 31)]) }
        return String(decoding: out, as: UTF8.self)
    }

    /// Base32 (lowercase, no padding) of `bytes`, cut to `count` characters.
    static func base32(_ bytes: some Sequence<UInt8>, count: Int) -> String {
        var out: [UInt8] = []
        var buffer: UInt32 = 0
        var bits = 0
        for byte in bytes {
            buffer = (buffer << 8) | UInt32(byte)
            bits += 8
            while bits >= 5 && out.count < count {
                bits -= 5
                out.append(lowerAlphabet[Int((buffer >> UInt32(bits)) & 31)])
            }
            if out.count >= count { break }
        }
        return String(decoding: out, as: UTF8.self)
    }

    public static func merchant() -> String { "mer_" + random(16) }
    public static func merchantAccount() -> String { "acc_" + random(16) }
    public static func terminal() -> String { "ter_" + random(16) }
    public static func wallet() -> String { "wal_" + random(16) }
    public static func device() -> String { "dev_" + random(16) }
    public static func request() -> String { "pr_" + random(20) }

    /// The payment transfer of one instruction: `pay_` + 24 base32 of SHA-256(device, key).
    public static func payment(deviceId: String, idempotencyKey: String) -> String {
        "pay_" + base32(SHA256.hash(data: Array("payment\n\(deviceId)\n\(idempotencyKey)".utf8)), count: 24)
    }

    /// The refund transfer of one refund request: `ref_` + 24 base32 of SHA-256(merchant, key).
    public static func refund(merchantId: String, idempotencyKey: String) -> String {
        "ref_" + base32(SHA256.hash(data: Array("refund\n\(merchantId)\n\(idempotencyKey)".utf8)), count: 24)
    }

    /// A terminal's bearer key: `tk_` + 40 random base32 characters (200 bits). Shown once.
    public static func terminalKey() -> String { "tk_" + random(40) }

    /// A one-time enrollment code, 12 characters `A-Z2-7`, shown as `XXXX-XXXX-XXXX`.
    public static func enrollmentCode() -> String {
        let raw = Array(random(12, alphabet: upperAlphabet))
        return String(raw[0..<4]) + "-" + String(raw[4..<8]) + "-" + String(raw[8..<12])
    }

    /// The code as stored: hyphens, spaces and case ignored; nil unless 12 characters of `A-Z2-7`.
    public static func normalizedEnrollmentCode(_ text: String) -> String? {
        let kept = text.uppercased().unicodeScalars.filter { $0 != "-" && $0 != " " }
        guard kept.count == 12, kept.allSatisfy({ $0.isASCII && upperAlphabet.contains(UInt8($0.value)) }) else {
            return nil
        }
        return String(String.UnicodeScalarView(kept))
    }

    /// Lowercase hex SHA-256 of the UTF-8 bytes of `text` (terminal keys, enrollment codes).
    public static func sha256Hex(_ text: String) -> String {
        hex(SHA256.hash(data: Array(text.utf8)))
    }

    static func hex(_ bytes: some Sequence<UInt8>) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        for byte in bytes {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 15)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// What a merchant sees of its payer: the first character of the wallet's name and `***` — never an
    /// account id or a phone number.
    public static func payerAlias(walletName: String) -> String {
        guard let first = walletName.trimmingCharacters(in: .whitespacesAndNewlines).first else { return "***" }
        return String(first) + "***"
    }
}
