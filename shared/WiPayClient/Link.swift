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

/// Where the link announces and listens:
/// - `WIPAY_LINK_ADDRESS` / `--link-address` (default 127.0.0.1): a unicast address, a subnet broadcast
///   address (192.168.1.255), the limited broadcast 255.255.255.255 (with an interface), or an IPv4 multicast
///   group (239.255.74.74, joined by listeners);
/// - `WIPAY_LINK_PORT` / `--link-port` (default 47474);
/// - `WIPAY_LINK_INTERFACE` / `--link-interface`: the network interface (`wlan0`) to announce and listen on;
///   unset, the system's routing decides and a listener hears every interface;
/// - `WIPAY_LINK_TTL` / `--link-ttl` (default 1, 1-255): multicast hops; 1 keeps datagrams in the shop's subnet.
/// Flags win over the environment, the environment over the defaults.
public struct LinkSettings: Sendable, Equatable {
    public var address: String
    public var port: UInt16
    public var interface: String?
    public var ttl: Int

    public init(address: String = LocalLink.defaultAddress, port: UInt16 = LocalLink.defaultPort, interface: String? = nil, ttl: Int = 1) {
        self.address = address
        self.port = port
        self.interface = interface
        self.ttl = ttl
    }

    /// True when `address` is an IPv4 multicast group (224.0.0.0/4).
    public var isMulticast: Bool { LocalLink.multicastGroup(address) != nil }

    /// Flags first, then the environment, then the defaults. Throws `LinkError` for a bad port, address,
    /// interface name or TTL.
    public static func resolve(
        address: String?, port: Int?, interface: String? = nil, ttl: Int? = nil,
        environment: [String: String] = ProcessInfo.processInfo.environment
    ) throws(LinkError) -> LinkSettings {
        func env(_ key: String) -> String? { environment[key].flatMap { $0.isEmpty ? nil : $0 } }
        let chosenAddress = address ?? env("WIPAY_LINK_ADDRESS") ?? LocalLink.defaultAddress
        var chosenPort = LocalLink.defaultPort
        if let port {
            guard let p = UInt16(exactly: port), p > 0 else { throw LinkError("--link-port must be 1-65535, not \(port)") }
            chosenPort = p
        } else if let text = env("WIPAY_LINK_PORT") {
            guard let p = UInt16(text), p > 0 else { throw LinkError("WIPAY_LINK_PORT must be 1-65535, not \(text)") }
            chosenPort = p
        }
        guard !chosenAddress.isEmpty, chosenAddress.utf8.count <= 255,
            !chosenAddress.unicodeScalars.contains(where: { $0.value <= 0x20 || $0.value >= 0x7F })
        else {
            throw LinkError("bad link address \(String(reflecting: chosenAddress))")
        }
        let chosenInterface = interface ?? env("WIPAY_LINK_INTERFACE")
        if let name = chosenInterface {
            // Linux interface names: at most 15 bytes, no slash, no space.
            guard !name.isEmpty, name.utf8.count <= 15,
                name.utf8.allSatisfy({ c in
                    (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || c == 0x2D || c == 0x5F
                        || c == 0x2E || c == 0x40 || c == 0x3A
                })
            else { throw LinkError("bad link interface \(String(reflecting: name)): a network interface name is 1-15 of [A-Za-z0-9._@:-]") }
        }
        var chosenTTL = 1
        if let ttl {
            guard (1...255).contains(ttl) else { throw LinkError("--link-ttl must be 1-255, not \(ttl)") }
            chosenTTL = ttl
        } else if let text = env("WIPAY_LINK_TTL") {
            guard let t = Int(text), (1...255).contains(t) else { throw LinkError("WIPAY_LINK_TTL must be 1-255, not \(text)") }
            chosenTTL = t
        }
        return LinkSettings(address: chosenAddress, port: chosenPort, interface: chosenInterface, ttl: chosenTTL)
    }

    /// How the settings announce, for a log line: "multicast 239.255.74.74:47474 on eth0 (ttl 1)".
    public var summary: String {
        let mode = isMulticast ? "multicast" : (address.hasSuffix(".255") ? "broadcast" : "to")
        let on = interface.map { " on \($0)" } ?? ""
        return "\(mode) \(address):\(port)\(on)\(isMulticast ? " (ttl \(ttl))" : "")"
    }
}

public struct LinkError: Error, Sendable, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

extension LocalLink {
    /// The IPv4 multicast group in `address`, or nil when it is not one.
    static func multicastGroup(_ address: String) -> in_addr? {
        var addr = in_addr()
        guard inet_pton(AF_INET, address, &addr) == 1 else { return nil }
        return UInt32(bigEndian: addr.s_addr) >> 28 == 0xE ? addr : nil
    }

    /// The index of the network interface `name`.
    static func interfaceIndex(_ name: String) throws(LinkError) -> UInt32 {
        let index = if_nametoindex(name)
        guard index != 0 else { throw LinkError("no network interface \(name) on this machine (see `ip link`)") }
        return index
    }

    /// Sends and receives on `interface` only (SO_BINDTODEVICE).
    static func bind(_ fd: Int32, toInterface name: String) throws(LinkError) {
        _ = try interfaceIndex(name)
        #if os(Linux)
        let rc = Array(name.utf8CString).withUnsafeBufferPointer { buffer in
            setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, buffer.baseAddress, socklen_t(buffer.count))
        }
        guard rc == 0 else {
            let err = errnoValue()
            let hint = err == EPERM ? " (binding to an interface needs CAP_NET_RAW; without --link-interface the routing table picks it)" : ""
            throw LinkError("cannot bind the link to \(name): \(String(cString: strerror(err)))\(hint)")
        }
        #else
        throw LinkError("--link-interface is supported on Linux only")
        #endif
    }

    /// The numeric form of a received datagram's source address.
    static func describe(_ storage: sockaddr_storage) -> String {
        var copy = storage
        var buffer = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
        let family = Int32(copy.ss_family)
        let text: String? = withUnsafeMutableBytes(of: &copy) { raw -> String? in
            guard let base = raw.baseAddress else { return nil }
            if family == AF_INET {
                let sin = base.assumingMemoryBound(to: sockaddr_in.self)
                return inet_ntop(AF_INET, &sin.pointee.sin_addr, &buffer, socklen_t(buffer.count)).map { String(cString: $0) }
            }
            if family == AF_INET6 {
                let sin6 = base.assumingMemoryBound(to: sockaddr_in6.self)
                return inet_ntop(AF_INET6, &sin6.pointee.sin6_addr, &buffer, socklen_t(buffer.count)).map { String(cString: $0) }
            }
            return nil
        }
        return text ?? "?"
    }
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
        if settings.isMulticast {
            try Self.configureMulticast(socket.fd, settings: settings)
        } else if let interface = settings.interface {
            // A broadcast (255.255.255.255 above all) leaves by this interface, whatever the routes say.
            try LocalLink.bind(socket.fd, toInterface: interface)
        }
        self.settings = settings
        self.payload = payload
        self.interval = interval
    }

    deinit {
        stop()
        socket.close()
    }

    /// Hops (`ttl`), our own datagrams looped back (a phone on the same machine hears them), and the interface
    /// the group's datagrams leave by.
    static func configureMulticast(_ fd: Int32, settings: LinkSettings) throws(LinkError) {
        guard setOption(fd, Int32(IPPROTO_IP), IP_MULTICAST_TTL, Int32(settings.ttl)),
            setOption(fd, Int32(IPPROTO_IP), IP_MULTICAST_LOOP, 1)
        else { throw LinkError("cannot set the multicast options: \(String(cString: strerror(errnoValue())))") }
        guard let interface = settings.interface else { return }
        #if os(Linux)
        var request = ip_mreqn()
        request.imr_ifindex = Int32(try LocalLink.interfaceIndex(interface))
        let rc = setsockopt(fd, Int32(IPPROTO_IP), IP_MULTICAST_IF, &request, socklen_t(MemoryLayout<ip_mreqn>.size))
        guard rc == 0 else {
            throw LinkError("cannot send multicast on \(interface): \(String(cString: strerror(errnoValue())))")
        }
        #else
        throw LinkError("--link-interface is supported on Linux only")
        #endif
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

    /// One datagram of ours: the payload text and the numeric address it came from.
    public struct Heard: Sendable, Equatable {
        public var payload: String
        public var from: String
    }

    /// Listens on `settings.port`, on every interface or only on `settings.interface`, and joins
    /// `settings.address` when it is a multicast group (broadcasts and unicast to the port are heard too).
    public convenience init(settings: LinkSettings) throws(LinkError) {
        try self.init(port: settings.port, bindAddress: "0.0.0.0", interface: settings.interface)
        if let group = LocalLink.multicastGroup(settings.address) {
            try join(group, address: settings.address, interface: settings.interface)
        }
    }

    /// - Parameters:
    ///   - bindAddress: the local address to bind; the default `0.0.0.0` hears loopback, LAN unicast and
    ///     broadcasts alike.
    ///   - interface: hear only datagrams that arrive on this network interface.
    public init(port: UInt16 = LocalLink.defaultPort, bindAddress: String = "0.0.0.0", interface: String? = nil) throws(LinkError) {
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
        if let interface { try LocalLink.bind(udp.fd, toInterface: interface) }
        let rc = address.withSockaddr { bind(udp.fd, $0, $1) }
        guard rc == 0 else {
            throw LinkError("cannot listen on UDP port \(port): \(String(cString: strerror(errnoValue())))")
        }
        self.socket = udp
        self.port = port
    }

    deinit { socket.close() }

    public func close() { socket.close() }

    private func join(_ group: in_addr, address: String, interface: String?) throws(LinkError) {
        #if os(Linux)
        var request = ip_mreqn()
        request.imr_multiaddr = group
        if let interface { request.imr_ifindex = Int32(try LocalLink.interfaceIndex(interface)) }
        let rc = setsockopt(socket.fd, Int32(IPPROTO_IP), IP_ADD_MEMBERSHIP, &request, socklen_t(MemoryLayout<ip_mreqn>.size))
        guard rc == 0 else {
            let err = errnoValue()
            let hint = err == ENODEV ? " (no route for multicast: name the interface with --link-interface)" : ""
            throw LinkError("cannot join the multicast group \(address): \(String(cString: strerror(err)))\(hint)")
        }
        #else
        var request = ip_mreq()
        request.imr_multiaddr = group
        guard setsockopt(socket.fd, Int32(IPPROTO_IP), IP_ADD_MEMBERSHIP, &request, socklen_t(MemoryLayout<ip_mreq>.size)) == 0 else {
            throw LinkError("cannot join the multicast group \(address): \(String(cString: strerror(errnoValue())))")
        }
        #endif
    }

    /// The payload of the next `WIPAY1` datagram, or nil when none arrives before `deadline`. Other
    /// datagrams (foreign, truncated, larger than 4 KiB) are skipped.
    public func next(deadline: ContinuousClock.Instant) async throws -> String? {
        try await nextHeard(deadline: deadline)?.payload
    }

    /// The next `WIPAY1` datagram and its sender, or nil at `deadline`.
    public func nextHeard(deadline: ContinuousClock.Instant) async throws -> Heard? {
        while ContinuousClock.now < deadline {
            try Task.checkCancellation()
            // Wait in slices so cancellation is noticed within 200 ms.
            let slice = min(deadline, ContinuousClock.now + .milliseconds(200))
            let datagram = try await withCheckedThrowingContinuation { (c: CheckedContinuation<([UInt8], String)?, any Error>) in
                DispatchQueue.global().async {
                    do {
                        c.resume(returning: try self.receiveBlocking(deadline: slice))
                    } catch {
                        c.resume(throwing: error)
                    }
                }
            }
            if let (bytes, from) = datagram, let payload = LocalLink.payload(in: bytes) { return Heard(payload: payload, from: from) }
        }
        return nil
    }

    /// The first announced payload that verifies with `verifier` and has not expired (`hear` with no wait
    /// for the others).
    public func firstVerified(
        verifier: PayloadVerifier, deadline: ContinuousClock.Instant, now: @Sendable () -> Int64 = unixNow
    ) async throws -> (text: String, payload: PaymentPayload)? {
        let heard = try await hear(deadline: deadline, settle: .zero) { text in try? verifier.verify(text, nowSeconds: now()) }
        return heard.current(nowSeconds: now()).first.map { ($0.text, $0.payload) }
    }

    /// Everything on the air: listens until `deadline`, but no longer than `settle` after the first payload
    /// that `accept` verifies and `wanted` keeps (announcements repeat every 300 ms, so a second or so hears
    /// every till in range). Each distinct text is verified once; one that fails is not tried again.
    public func hear(
        deadline: ContinuousClock.Instant, settle: Duration, wanted: (HeardRequest) -> Bool = { _ in true },
        accept: (String) async -> PaymentPayload?
    ) async throws -> HeardRequests {
        var heard = HeardRequests()
        var verified: [String: PaymentPayload] = [:]
        var rejected = Set<String>()
        var end = deadline
        while let datagram = try await nextHeard(deadline: end) {
            if rejected.contains(datagram.payload) { continue }
            let payload: PaymentPayload
            if let known = verified[datagram.payload] {
                payload = known
            } else if let fresh = await accept(datagram.payload) {
                payload = fresh
                if verified.count < 1024 { verified[datagram.payload] = fresh }
            } else {
                if rejected.count < 1024 { rejected.insert(datagram.payload) }
                continue
            }
            let entry = heard.heard(text: datagram.payload, payload: payload, from: datagram.from, at: .now)
            if end == deadline, wanted(entry) { end = min(deadline, ContinuousClock.now + settle) }
        }
        return heard
    }

    private func receiveBlocking(deadline: ContinuousClock.Instant) throws -> ([UInt8], String)? {
        guard try waitReady(socket.fd, events: Int16(POLLIN), deadline: deadline) else { return nil }
        var buffer = [UInt8](repeating: 0, count: LocalLink.maxDatagramBytes + 1)
        var source = sockaddr_storage()
        var sourceLength = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let n = buffer.withUnsafeMutableBytes { raw in
            withUnsafeMutablePointer(to: &source) { pointer in
                pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { address in
                    retryingEINTR { recvfrom(socket.fd, raw.baseAddress, raw.count, 0, address, &sourceLength) }
                }
            }
        }
        if n < 0 {
            let err = errnoValue()
            if err == EAGAIN || err == EWOULDBLOCK { return nil }
            throw LinkError("recv: \(String(cString: strerror(err)))")
        }
        // One byte more than the limit arrived: the datagram was larger, so it is not ours.
        guard n <= LocalLink.maxDatagramBytes else { return nil }
        return (Array(buffer[0..<n]), LocalLink.describe(source))
    }
}

/// A payment request heard on the link: its verified payload, who sent it, and when.
public struct HeardRequest: Sendable, Equatable {
    public var text: String
    public var payload: PaymentPayload
    /// The sender's numeric address.
    public var from: String
    public var firstHeard: ContinuousClock.Instant
    public var lastHeard: ContinuousClock.Instant
}

/// The phone's view of the air: every verified request heard, once each (by request id).
public struct HeardRequests: Sendable {
    private var byId: [String: HeardRequest] = [:]

    public init() {}

    /// Notes one verified payload; returns its entry.
    @discardableResult
    public mutating func heard(text: String, payload: PaymentPayload, from: String, at instant: ContinuousClock.Instant) -> HeardRequest {
        if var known = byId[payload.requestId] {
            known.lastHeard = max(known.lastHeard, instant)
            byId[payload.requestId] = known
            return known
        }
        // At most 256 distinct requests: a mall's link is busy, but not that busy; more is noise or an attack.
        let entry = HeardRequest(text: text, payload: payload, from: from, firstHeard: instant, lastHeard: instant)
        if byId.count < 256 { byId[payload.requestId] = entry }
        return entry
    }

    /// What is still payable: not past its expiry at `nowSeconds`, and heard again within `staleAfter` of
    /// `now` (a terminal stops announcing a request once it is paid, canceled or expired). Newest first:
    /// by the creation time in the payload, then by when it was first heard.
    public func current(
        nowSeconds: Int64, now: ContinuousClock.Instant = .now, staleAfter: Duration = .seconds(3)
    ) -> [HeardRequest] {
        byId.values
            .filter { $0.payload.expiresAtSeconds >= nowSeconds && now - $0.lastHeard <= staleAfter }
            .sorted { a, b in
                let ca = a.payload.createdAtSeconds ?? 0
                let cb = b.payload.createdAtSeconds ?? 0
                if ca != cb { return ca > cb }
                if a.firstHeard != b.firstHeard { return a.firstHeard > b.firstHeard }
                return a.payload.requestId < b.payload.requestId
            }
    }
}

/// Which heard request to pay: the shopper's filters (`--request`, `--terminal`, `--merchant`) applied to
/// what is on the air.
public struct LinkChoice: Sendable, Equatable {
    public var requestId: String?
    /// The till's display name, or "Merchant — till" as the phone shows it; case and surrounding spaces ignored.
    public var terminal: String?
    /// The merchant's name; case and surrounding spaces ignored.
    public var merchant: String?

    public init(requestId: String? = nil, terminal: String? = nil, merchant: String? = nil) {
        self.requestId = requestId
        self.terminal = terminal
        self.merchant = merchant
    }

    public var isEmpty: Bool { requestId == nil && terminal == nil && merchant == nil }

    public func matches(_ request: HeardRequest) -> Bool {
        let payload = request.payload
        if let requestId, payload.requestId != requestId { return false }
        if let terminal {
            let wanted = Self.fold(terminal)
            guard payload.terminalName.map(Self.fold) == wanted || Self.fold(payload.payee) == wanted else { return false }
        }
        if let merchant, Self.fold(payload.merchantName) != Self.fold(merchant) { return false }
        return true
    }

    public enum Outcome: Sendable, Equatable {
        /// Nothing payable was heard at all.
        case none
        /// Requests were heard, but none matches the filters.
        case noMatch(heard: [HeardRequest])
        case one(HeardRequest)
        /// More than one matches: the shopper must pick.
        case several([HeardRequest])
    }

    /// Applies the filters to `heard` (already in display order).
    public func pick(from heard: [HeardRequest]) -> Outcome {
        if heard.isEmpty { return .none }
        let matching = heard.filter(matches)
        switch matching.count {
        case 0: return .noMatch(heard: heard)
        case 1: return .one(matching[0])
        default: return .several(matching)
        }
    }

    static func fold(_ text: String) -> String {
        text.trimmingCharacters(in: .whitespaces).lowercased()
    }
}
