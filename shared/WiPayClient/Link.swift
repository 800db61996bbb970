#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
import WiPayPayload

/// The local link between a POS terminal and a phone: UDP datagrams `WIPAY1 <payload>` announced by the
/// terminal every 300 ms and picked up by phones listening on the port. Nothing secret travels on it: the
/// payload is public and signed, so a phone trusts only what verifies with the server's keys.
public enum LocalLink {
    /// The datagram prefix (protocol version 1).
    public static let prefix = "WIPAY1 "
    /// The largest datagram either side sends or accepts.
    public static let maxDatagramBytes = 4096
    public static let defaultAddress = "127.0.0.1"
    public static let defaultPort: UInt16 = 47474
    public static let announceInterval: Duration = .milliseconds(300)

    /// The datagram for `payload`.
    public static func datagram(for payload: String) -> [UInt8] { Array((prefix + payload).utf8) }

    /// The payload in a datagram, or nil when it is not a `WIPAY1` datagram of a sane size.
    public static func payload(in datagram: [UInt8]) -> String? {
        let prefixBytes = Array(prefix.utf8)
        guard datagram.count > prefixBytes.count, datagram.count <= maxDatagramBytes,
            datagram.starts(with: prefixBytes)
        else { return nil }
        let body = datagram[prefixBytes.count...]
        // Printable ASCII or UTF-8 text only; control characters mean it is not ours.
        guard let text = String(validating: body, as: UTF8.self), !text.unicodeScalars.contains(where: { $0.value < 0x20 })
        else { return nil }
        return text
    }
}

/// Where the link announces and listens: environment `WIPAY_LINK_ADDRESS` (default 127.0.0.1; on a shop
/// LAN the broadcast address, e.g. 255.255.255.255 or 192.168.1.255) and `WIPAY_LINK_PORT` (default 47474),
/// overridden by the programs' `--link-address` / `--link-port` flags.
public struct LinkSettings: Sendable, Equatable {
    public var address: String
    public var port: UInt16

    public init(address: String = LocalLink.defaultAddress, port: UInt16 = LocalLink.defaultPort) {
        self.address = address
        self.port = port
    }

    /// Flags first, then the environment, then the defaults. Throws `LinkError` for a bad port or address.
    public static func resolve(
        address: String?, port: Int?, environment: [String: String] = ProcessInfo.processInfo.environment
    ) throws(LinkError) -> LinkSettings {
        let chosenAddress = address ?? environment["WIPAY_LINK_ADDRESS"].flatMap { $0.isEmpty ? nil : $0 } ?? LocalLink.defaultAddress
        var chosenPort = LocalLink.defaultPort
        if let port {
            guard let p = UInt16(exactly: port), p > 0 else { throw LinkError("--link-port must be 1-65535, not \(port)") }
            chosenPort = p
        } else if let text = environment["WIPAY_LINK_PORT"], !text.isEmpty {
            guard let p = UInt16(text), p > 0 else { throw LinkError("WIPAY_LINK_PORT must be 1-65535, not \(text)") }
            chosenPort = p
        }
        guard !chosenAddress.isEmpty, chosenAddress.utf8.count <= 255,
            !chosenAddress.unicodeScalars.contains(where: { $0.value <= 0x20 })
        else {
            throw LinkError("bad link address \(chosenAddress)")
        }
        return LinkSettings(address: chosenAddress, port: chosenPort)
    }
}

public struct LinkError: Error, Sendable, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// A UDP socket for the link.
final class UDPSocket: @unchecked Sendable {
    let fd: Int32
    private let closed = Protected(false)

    init(family: Int32) throws(LinkError) {
        let fd = socket(family, socketDatagram, 0)
        guard fd >= 0 else { throw LinkError("socket: \(String(cString: strerror(errnoValue())))") }
        self.fd = fd
        setNonBlocking(fd)
    }

    deinit { close() }

    func close() {
        closed.withLock { isClosed in
            if !isClosed {
                isClosed = true
                _ = Glibc_close(fd)
            }
        }
    }
}

/// Announces one payload on the link every `interval` (300 ms) from `start()` until `stop()`.
/// `SO_BROADCAST` is set, so a broadcast address works as the target.
public final class LinkAnnouncer: Sendable {
    public let settings: LinkSettings
    public let payload: String
    public let interval: Duration
    private let socket: UDPSocket
    private let target: SocketAddress
    private let state = Protected<(running: Bool, stopped: Bool, sent: Int, lastError: String?)>((false, false, 0, nil))
    private let wakeup = NSCondition()

    public init(payload: String, settings: LinkSettings, interval: Duration = LocalLink.announceInterval) throws(LinkError) {
        guard LocalLink.datagram(for: payload).count <= LocalLink.maxDatagramBytes else {
            throw LinkError("the payload is too long for the link (\(payload.utf8.count) bytes)")
        }
        let addresses: [SocketAddress]
        do {
            addresses = try SocketAddress.resolve(host: settings.address, port: settings.port, datagram: true)
        } catch {
            throw LinkError("link address \(settings.address): \(error.message)")
        }
        guard let target = addresses.first else { throw LinkError("link address \(settings.address) did not resolve") }
        self.target = target
        self.socket = try UDPSocket(family: target.family)
        if target.family == AF_INET {
            guard setOption(socket.fd, SOL_SOCKET, SO_BROADCAST) else {
                throw LinkError("cannot enable broadcast: \(String(cString: strerror(errnoValue())))")
            }
        }
        self.settings = settings
        self.payload = payload
        self.interval = interval
    }

    deinit {
        stop()
        socket.close()
    }

    /// Datagrams sent so far.
    public var sentCount: Int { state.withLock { $0.sent } }
    /// The last send error (e.g. no route to a broadcast address), if any; the announcer keeps trying.
    public var lastError: String? { state.withLock { $0.lastError } }

    /// Sends one datagram now; returns false (and records `lastError`) if the system refused it.
    @discardableResult
    public func sendOnce() -> Bool {
        let bytes = LocalLink.datagram(for: payload)
        let n = bytes.withUnsafeBytes { raw in
            target.withSockaddr { address, length in
                retryingEINTR { sendto(socket.fd, raw.baseAddress, raw.count, sendFlags, address, length) }
            }
        }
        let error = n < 0 ? "sendto \(settings.address):\(settings.port): \(String(cString: strerror(errnoValue())))" : nil
        state.withLock { s in
            if error == nil { s.sent += 1 }
            s.lastError = error ?? s.lastError
        }
        return error == nil
    }

    /// Starts announcing on a thread of its own. Calling it twice does nothing.
    public func start() {
        let go = state.withLock { s -> Bool in
            if s.running || s.stopped { return false }
            s.running = true
            return true
        }
        guard go else { return }
        let thread = Thread { [self] in
            while !isStopped {
                sendOnce()
                wakeup.lock()
                if !isStopped { _ = wakeup.wait(until: Date().addingTimeInterval(Self.seconds(interval))) }
                wakeup.unlock()
            }
        }
        thread.name = "wipay-link-announce"
        thread.start()
    }

    private var isStopped: Bool { state.withLock { $0.stopped } }

    /// Stops announcing (at once: the thread is woken).
    public func stop() {
        wakeup.lock()
        state.withLock { $0.stopped = true }
        wakeup.broadcast()
        wakeup.unlock()
    }

    static func seconds(_ duration: Duration) -> TimeInterval {
        let (s, atto) = duration.components
        return TimeInterval(s) + TimeInterval(atto) / 1e18
    }
}

/// Listens on the link's port for announced payloads. Binds with `SO_REUSEADDR` and `SO_REUSEPORT`, so
/// several phones (programs) on one machine can listen together; broadcasts reach every one of them.
public final class LinkListener: Sendable {
    public let port: UInt16
    private let socket: UDPSocket

    /// - Parameters:
    ///   - bindAddress: the local address to bind; the default `0.0.0.0` hears loopback, LAN unicast and
    ///     broadcasts alike.
    public init(port: UInt16 = LocalLink.defaultPort, bindAddress: String = "0.0.0.0") throws(LinkError) {
        let addresses: [SocketAddress]
        do {
            addresses = try SocketAddress.resolve(host: bindAddress, port: port, datagram: true)
        } catch {
            throw LinkError("bind address \(bindAddress): \(error.message)")
        }
        guard let address = addresses.first else { throw LinkError("bind address \(bindAddress) did not resolve") }
        let udp = try UDPSocket(family: address.family)
        _ = setOption(udp.fd, SOL_SOCKET, SO_REUSEADDR)
        _ = setOption(udp.fd, SOL_SOCKET, SO_REUSEPORT)
        let rc = address.withSockaddr { bind(udp.fd, $0, $1) }
        guard rc == 0 else {
            throw LinkError("cannot listen on UDP port \(port): \(String(cString: strerror(errnoValue())))")
        }
        self.socket = udp
        self.port = port
    }

    deinit { socket.close() }

    public func close() { socket.close() }

    /// The payload of the next `WIPAY1` datagram, or nil when none arrives before `deadline`. Other
    /// datagrams (foreign, truncated, larger than 4 KiB) are skipped.
    public func next(deadline: ContinuousClock.Instant) async throws -> String? {
        while ContinuousClock.now < deadline {
            try Task.checkCancellation()
            // Wait in slices so cancellation is noticed within 200 ms.
            let slice = min(deadline, ContinuousClock.now + .milliseconds(200))
            let datagram = try await withCheckedThrowingContinuation { (c: CheckedContinuation<[UInt8]?, any Error>) in
                DispatchQueue.global().async {
                    do {
                        c.resume(returning: try self.receiveBlocking(deadline: slice))
                    } catch {
                        c.resume(throwing: error)
                    }
                }
            }
            if let datagram, let payload = LocalLink.payload(in: datagram) { return payload }
        }
        return nil
    }

    /// The first announced payload that `accept` turns into a verified `PaymentPayload`, or nil at the
    /// deadline. `accept` returns nil for payloads to ignore (not verifying, expired, unknown key).
    public func firstAccepted(
        deadline: ContinuousClock.Instant, accept: (String) async -> PaymentPayload?
    ) async throws -> (text: String, payload: PaymentPayload)? {
        var rejected = Set<String>()
        while let text = try await next(deadline: deadline) {
            if rejected.contains(text) { continue }
            if let payload = await accept(text) { return (text, payload) }
            if rejected.count < 1024 { rejected.insert(text) }
        }
        return nil
    }

    /// The first announced payload that verifies with `verifier` and has not expired.
    public func firstVerified(
        verifier: PayloadVerifier, deadline: ContinuousClock.Instant, now: @Sendable () -> Int64 = unixNow
    ) async throws -> (text: String, payload: PaymentPayload)? {
        try await firstAccepted(deadline: deadline) { text in try? verifier.verify(text, nowSeconds: now()) }
    }

    private func receiveBlocking(deadline: ContinuousClock.Instant) throws -> [UInt8]? {
        guard try waitReady(socket.fd, events: Int16(POLLIN), deadline: deadline) else { return nil }
        var buffer = [UInt8](repeating: 0, count: LocalLink.maxDatagramBytes + 1)
        let n = buffer.withUnsafeMutableBytes { raw in retryingEINTR { recv(socket.fd, raw.baseAddress, raw.count, 0) } }
        if n < 0 {
            let err = errnoValue()
            if err == EAGAIN || err == EWOULDBLOCK { return nil }
            throw LinkError("recv: \(String(cString: strerror(err)))")
        }
        // One byte more than the limit arrived: the datagram was larger, so it is not ours.
        guard n <= LocalLink.maxDatagramBytes else { return nil }
        return Array(buffer[0..<n])
    }
}
