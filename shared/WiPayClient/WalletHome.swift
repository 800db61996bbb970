#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
import WiPayPayload

/// What an enrolled phone keeps: its device identity, its account, its gateway and the payload keys.
public struct Wallet: Sendable {
    public var identity: DeviceIdentity
    public var accountId: String
    /// The phone gateway's base URL, e.g. `http://127.0.0.1:8090`.
    public var gatewayURL: String
    /// The device name given at enrollment.
    public var name: String
    /// Key id → raw 32-byte Ed25519 public key that verifies payloads.
    public var payloadKeys: [String: [UInt8]]

    public init(identity: DeviceIdentity, accountId: String, gatewayURL: String, name: String, payloadKeys: [String: [UInt8]]) {
        self.identity = identity
        self.accountId = accountId
        self.gatewayURL = gatewayURL
        self.name = name
        self.payloadKeys = payloadKeys
    }

    public var verifier: PayloadVerifier { PayloadVerifier(keys: payloadKeys) }
}

public struct WalletHomeError: Error, Sendable, CustomStringConvertible {
    public let message: String
    init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// The wallet's folder (`--home DIR`, default `~/.wipay`): mode 0700, every file 0600, written atomically.
///
/// - `device.key`: base64url (no padding) of the raw 32-byte Ed25519 private key. Refused when its mode
///   lets anyone but the owner read or write it.
/// - `wallet.json`: `{"device_id", "account_id", "gateway_url", "name"}`.
/// - `payload-keys.json`: `{"keys": [{"key_id", "public_key"}]}` as `GET /v1/payload-keys` answers.
public struct WalletHome: Sendable {
    public let path: String

    public static let keyFile = "device.key"
    public static let walletFile = "wallet.json"
    public static let payloadKeysFile = "payload-keys.json"

    /// - Parameter path: the folder; nil for `$HOME/.wipay`.
    public init(path: String? = nil) {
        if let path, !path.isEmpty {
            self.path = path
        } else {
            let home = ProcessInfo.processInfo.environment["HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? NSHomeDirectory()
            self.path = (home as NSString).appendingPathComponent(".wipay")
        }
    }

    func file(_ name: String) -> String { (path as NSString).appendingPathComponent(name) }

    /// True when the folder holds an enrolled wallet (a key and a wallet file).
    public var isEnrolled: Bool {
        FileManager.default.fileExists(atPath: file(Self.keyFile)) && FileManager.default.fileExists(atPath: file(Self.walletFile))
    }

    /// Creates the folder (mode 0700) if needed and checks it can be written, before anything is enrolled.
    public func prepare() throws(WalletHomeError) {
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) {
            guard isDirectory.boolValue else { throw WalletHomeError("\(path) exists and is not a folder") }
        } else if mkdir(path, 0o700) != 0 && errnoValue() != EEXIST {
            throw WalletHomeError("cannot create \(path): \(String(cString: strerror(errnoValue())))")
        }
        guard chmod(path, 0o700) == 0 else {
            throw WalletHomeError("cannot set mode 0700 on \(path): \(String(cString: strerror(errnoValue())))")
        }
        guard access(path, W_OK) == 0 else { throw WalletHomeError("cannot write to \(path)") }
    }

    /// Writes every file of `wallet`.
    public func save(_ wallet: Wallet) throws(WalletHomeError) {
        try prepare()
        try writeFile(Self.keyFile, Array((Base64URL.encode(wallet.identity.privateKeyBytes) + "\n").utf8))
        let info: JSON = [
            "device_id": .string(wallet.identity.deviceId), "account_id": .string(wallet.accountId),
            "gateway_url": .string(wallet.gatewayURL), "name": .string(wallet.name),
        ]
        try writeFile(Self.walletFile, info.bytes + [0x0A])
        try savePayloadKeys(wallet.payloadKeys)
    }

    /// Replaces the stored payload keys.
    public func savePayloadKeys(_ keys: [String: [UInt8]]) throws(WalletHomeError) {
        try prepare()
        try writeFile(Self.payloadKeysFile, PayloadKeySet.json(keys).bytes + [0x0A])
    }

    /// Reads the wallet. Fails with a clear message when it is missing, malformed or its key file is
    /// readable by others.
    public func load() throws(WalletHomeError) -> Wallet {
        guard isEnrolled else {
            throw WalletHomeError("no wallet in \(path): run `phone-wallet enroll CODE` first")
        }
        let keyText = String(decoding: try readFile(Self.keyFile, secret: true), as: UTF8.self)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        guard let raw = Base64URL.decode(keyText), raw.count == 32 else {
            throw WalletHomeError("\(file(Self.keyFile)) does not hold a device key")
        }
        guard let info = JSON.parse(try readFile(Self.walletFile, secret: false)),
            let deviceId = info["device_id"]?.string, let accountId = info["account_id"]?.string,
            let gatewayURL = info["gateway_url"]?.string
        else {
            throw WalletHomeError("\(file(Self.walletFile)) is not a wallet file")
        }
        let identity: DeviceIdentity
        do {
            identity = try DeviceIdentity(deviceId: deviceId, rawPrivateKey: raw)
        } catch {
            throw WalletHomeError("\(file(Self.keyFile)) does not hold an Ed25519 key")
        }
        var keys: [String: [UInt8]] = [:]
        if FileManager.default.fileExists(atPath: file(Self.payloadKeysFile)),
            let json = JSON.parse(try readFile(Self.payloadKeysFile, secret: false))
        {
            keys = PayloadKeySet.parse(json)
        }
        return Wallet(
            identity: identity, accountId: accountId, gatewayURL: gatewayURL, name: info["name"]?.string ?? "",
            payloadKeys: keys)
    }

    private func readFile(_ name: String, secret: Bool) throws(WalletHomeError) -> [UInt8] {
        let full = file(name)
        let fd = open(full, O_RDONLY | O_NOFOLLOW)
        guard fd >= 0 else { throw WalletHomeError("cannot read \(full): \(String(cString: strerror(errnoValue())))") }
        defer { _ = Glibc_close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG else {
            throw WalletHomeError("\(full) is not a regular file")
        }
        if secret && (info.st_mode & 0o077) != 0 {
            throw WalletHomeError(
                "\(full) can be read or changed by others (mode \(String(info.st_mode & 0o777, radix: 8))): "
                    + "refusing to use it; run `chmod 600 \(full)`")
        }
        if secret && info.st_uid != getuid() {
            throw WalletHomeError("\(full) belongs to another user: refusing to use it")
        }
        guard info.st_size <= 1 << 20 else { throw WalletHomeError("\(full) is too large") }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 8192)
        while true {
            let n = chunk.withUnsafeMutableBytes { raw in retryingEINTR { read(fd, raw.baseAddress, raw.count) } }
            if n < 0 { throw WalletHomeError("cannot read \(full): \(String(cString: strerror(errnoValue())))") }
            if n == 0 { break }
            bytes += chunk[0..<n]
            if bytes.count > 1 << 20 { throw WalletHomeError("\(full) is too large") }
        }
        return bytes
    }

    /// Writes `bytes` to a new 0600 file next to `name`, syncs it, then renames it over `name`.
    private func writeFile(_ name: String, _ bytes: [UInt8]) throws(WalletHomeError) {
        let full = file(name)
        let temporary = full + ".tmp-\(getpid())"
        _ = unlink(temporary)
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { throw WalletHomeError("cannot create \(temporary): \(String(cString: strerror(errnoValue())))") }
        var ok = fchmod(fd, 0o600) == 0
        var offset = 0
        while ok && offset < bytes.count {
            let n = bytes.withUnsafeBytes { raw in
                retryingEINTR { write(fd, raw.baseAddress.map { $0 + offset }, raw.count - offset) }
            }
            if n <= 0 { ok = false } else { offset += n }
        }
        ok = ok && fsync(fd) == 0
        _ = Glibc_close(fd)
        guard ok, rename(temporary, full) == 0 else {
            _ = unlink(temporary)
            throw WalletHomeError("cannot write \(full): \(String(cString: strerror(errnoValue())))")
        }
    }
}

/// The payload keys as `GET /v1/payload-keys` gives them: `{"keys": [{"key_id", "public_key"}]}`, each
/// `public_key` the base64url (no padding) of a raw 32-byte Ed25519 public key.
public enum PayloadKeySet {
    /// Key id → raw key; entries that are malformed are skipped.
    public static func parse(_ json: JSON) -> [String: [UInt8]] {
        var keys: [String: [UInt8]] = [:]
        for entry in json["keys"]?.array ?? [] {
            guard let id = entry["key_id"]?.string, !id.isEmpty, id.utf8.count <= 64,
                let text = entry["public_key"]?.string, let raw = Base64URL.decode(text), raw.count == 32
            else { continue }
            keys[id] = raw
        }
        return keys
    }

    public static func json(_ keys: [String: [UInt8]]) -> JSON {
        .object([
            "keys": .array(
                keys.keys.sorted().map { id in
                    ["key_id": .string(id), "public_key": .string(Base64URL.encode(keys[id] ?? []))]
                })
        ])
    }
}
