import Foundation
import Logging
import ZeroMQ

/// CurveZMQ keys of one deployment, kept as files in one folder (made by `payctl keys generate`):
///
///     bus.key, bus.pub               the broker (a CURVE server); every client knows bus.pub
///     <name>.key, <name>.pub         one pair per service (ledger, payment-router, …) and one for ops (payctl)
///     authorized/<name>.pub          the public keys the broker and the control sockets admit
///
/// A `.key` file holds two lines, `public: <Z85>` and `secret: <Z85>`, and is readable by its owner only;
/// a `.pub` file holds the Z85 public key. Removing a file from `authorized/` (and restarting the bus)
/// shuts that key out.
public enum BusKeys {
    public struct KeyError: Error, Sendable, CustomStringConvertible {
        public let description: String
        public init(_ description: String) { self.description = description }
    }

    /// The names `payctl keys generate` makes pairs for.
    public static let standardNames = ["bus", "ledger", "payment-router", "notifier", "pos-gateway", "phone-gateway", "ops"]

    public static func keyPath(_ dir: String, _ name: String) -> String { "\(dir)/\(name).key" }
    public static func publicPath(_ dir: String, _ name: String) -> String { "\(dir)/\(name).pub" }

    /// Reads `<dir>/<name>.key`, refusing a file that others can read.
    public static func loadPair(dir: String, name: String) throws(KeyError) -> CurveKeyPair {
        let path = keyPath(dir, name)
        var info = stat()
        guard stat(path, &info) == 0 else { throw KeyError("no CURVE key file \(path) (run `payctl keys generate`)") }
        guard info.st_mode & 0o077 == 0 else { throw KeyError("\(path) is readable by others: chmod 600 it") }
        guard let text = read(path) else { throw KeyError("cannot read \(path)") }
        var publicKey = "", secretKey = ""
        for line in text.split(whereSeparator: \.isNewline) {
            let parts = line.split(separator: ":", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            guard parts.count == 2 else { continue }
            if parts[0] == "public" { publicKey = parts[1] }
            if parts[0] == "secret" { secretKey = parts[1] }
        }
        do {
            return try CurveKeyPair(publicKey: publicKey, secretKey: secretKey)
        } catch {
            throw KeyError("\(path) does not hold a valid CURVE key pair")
        }
    }

    /// Reads the Z85 public key in `<dir>/<name>.pub`.
    public static func loadPublic(dir: String, name: String) throws(KeyError) -> String {
        let path = publicPath(dir, name)
        guard let text = read(path) else { throw KeyError("no public key file \(path)") }
        let key = text.trimmingCharacters(in: .whitespacesAndNewlines)
        guard CurveKeyPair.isValidKey(key) else { throw KeyError("\(path) does not hold a Z85 public key") }
        return key
    }

    /// The admitted public keys: Z85 key → name (the file name without `.pub`). Unreadable or malformed
    /// files are reported in `problems` and skipped.
    public static func authorized(dir: String) -> (keys: [String: String], problems: [String]) {
        let folder = "\(dir)/authorized"
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: folder) else {
            return ([:], ["no folder \(folder)"])
        }
        var keys: [String: String] = [:]
        var problems: [String] = []
        for file in names.sorted() where file.hasSuffix(".pub") {
            let name = String(file.dropLast(4))
            do {
                keys[try loadPublic(dir: folder, name: name)] = name
            } catch {
                problems.append(error.description)
            }
        }
        return (keys, problems)
    }

    /// Creates the folder and every missing pair for `names`, and authorizes each (the bus too: its own
    /// runtime publishes heartbeats through the events proxy like every other process).
    /// Existing files are never overwritten. Returns the names it created.
    @discardableResult
    public static func generate(dir: String, names: [String] = standardNames) throws(KeyError) -> [String] {
        for folder in [dir, "\(dir)/authorized"] {
            do {
                try FileManager.default.createDirectory(
                    atPath: folder, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            } catch {
                throw KeyError("cannot create \(folder): \(error)")
            }
        }
        var created: [String] = []
        for name in names {
            guard name.utf8.allSatisfy({ ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2D }),
                !name.isEmpty
            else { throw KeyError("a key name is lowercase letters, digits and '-': \(name)") }
            if !FileManager.default.fileExists(atPath: keyPath(dir, name)) {
                let pair: CurveKeyPair
                do { pair = try CurveKeyPair.generate() } catch { throw KeyError("cannot generate a key: \(error)") }
                try write(keyPath(dir, name), "public: \(pair.publicKey)\nsecret: \(pair.secretKey)\n", mode: 0o600)
                try write(publicPath(dir, name), pair.publicKey + "\n", mode: 0o644)
                created.append(name)
            }
            if !FileManager.default.fileExists(atPath: publicPath("\(dir)/authorized", name)) {
                let pub = try loadPublic(dir: dir, name: name)
                try write(publicPath("\(dir)/authorized", name), pub + "\n", mode: 0o644)
            }
        }
        return created
    }

    static func read(_ path: String) -> String? {
        FileManager.default.contents(atPath: path).flatMap { String(data: $0, encoding: .utf8) }
    }

    static func write(_ path: String, _ text: String, mode: mode_t) throws(KeyError) {
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL, mode)
        guard fd >= 0 else { throw KeyError("cannot create \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let bytes = Array(text.utf8)
        guard bytes.withUnsafeBytes({ Foundation.write(fd, $0.baseAddress, $0.count) }) == bytes.count else {
            throw KeyError("cannot write \(path)")
        }
    }
}

/// The ZeroMQ authentication handler (ZAP, RFC 27) of one context: every CURVE server socket of the
/// context asks it whether a connecting client's public key is admitted. Only keys in `authorized` pass;
/// a refused peer is logged with its address and key (public keys are not secret).
public final class ZAPAuthenticator: Sendable {
    public static let endpoint = "inproc://zeromq.zap.01"
    private let pump: SocketPump

    public init(context: ZMQContext, authorized: [String: String], logger: Logger) throws(ZMQError) {
        let socket = try ZMQSocket(context, .rep)
        try socket.setLinger(.zero)
        try socket.bind(Self.endpoint)
        let box = Locked<SocketPump?>(nil)
        let pump = try SocketPump(socket: socket, name: "zap") { frames in
            let reply = ZAPAuthenticator.answer(frames, authorized: authorized, logger: logger)
            _ = box.withLock { $0?.send(reply) }
        }
        box.withLock { $0 = pump }
        self.pump = pump
        logger.info("CURVE authentication on", metadata: ["zap.authorized": "\(authorized.count)"])
    }

    /// ZAP request: version, request id, domain, address, identity, mechanism, credentials…
    /// Reply: version, request id, status code, status text, user id, metadata.
    static func answer(_ frames: [[UInt8]], authorized: [String: String], logger: Logger) -> [[UInt8]] {
        let version = Array("1.0".utf8)
        guard frames.count >= 6, frames[0] == version else {
            logger.warning("malformed ZAP request refused", metadata: ["zap.frames": "\(frames.count)"])
            return [version, frames.count > 1 ? frames[1] : [], Array("500".utf8), Array("malformed request".utf8), [], []]
        }
        let requestId = frames[1]
        let address = String(decoding: frames[3], as: UTF8.self)
        let mechanism = String(decoding: frames[5], as: UTF8.self)
        guard mechanism == "CURVE", frames.count >= 7, frames[6].count == 32, let key = Z85.encode(frames[6]) else {
            logger.warning("peer refused: not CURVE", metadata: ["peer.address": "\(address)", "zap.mechanism": "\(mechanism)"])
            return [version, requestId, Array("400".utf8), Array("CURVE required".utf8), [], []]
        }
        guard let name = authorized[key] else {
            logger.warning("peer refused: unknown CURVE key", metadata: ["peer.address": "\(address)", "peer.key": "\(key)"])
            return [version, requestId, Array("400".utf8), Array("unknown key".utf8), [], []]
        }
        logger.debug("peer admitted", metadata: ["peer.address": "\(address)", "peer.name": "\(name)"])
        return [version, requestId, Array("200".utf8), Array("OK".utf8), Array(name.utf8), []]
    }

    public func stop() { pump.stop() }
}

/// Logs the CURVE handshakes a server socket refused before ZAP was even asked: a peer speaking plain TCP
/// (no CURVE), a malformed or failed handshake. Unknown keys are logged by `ZAPAuthenticator` itself.
public final class HandshakeFailureLog: Sendable {
    private let pump: SocketPump

    /// Starts monitoring `socket` (call from its owner thread, before or after bind). `name` tells the
    /// sockets of one process apart in the log.
    public init(context: ZMQContext, socket: ZMQSocket, name: String, logger: Logger) throws(ZMQError) {
        let endpoint = "inproc://wipay-handshake-\(name)-\(UInt64.random(in: 0...UInt64.max))"
        try socket.monitor(endpoint, events: .handshakeFailed)
        let pair = try ZMQSocket(context, .pair)
        try pair.setLinger(.zero)
        try pair.connect(endpoint)
        pump = try SocketPump(socket: pair, name: "handshake-\(name)") { frames in
            guard frames.count >= 2, frames[0].count >= 6 else { return }
            let event = Int32(frames[0][0]) | Int32(frames[0][1]) << 8
            let reason: String
            switch event {
            case SocketEvents.handshakeFailedProtocol.rawValue: reason = "protocol error (not CURVE, or a broken handshake)"
            case SocketEvents.handshakeFailedAuth.rawValue: reason = "authentication refused"
            default: reason = "handshake failed"
            }
            logger.warning(
                "peer refused: \(reason)",
                metadata: ["bus.socket": "\(name)", "bus.endpoint": "\(String(decoding: frames[1], as: UTF8.self))"])
        }
    }

    public func stop() { pump.stop() }
}
