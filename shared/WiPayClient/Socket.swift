#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation

/// Why a socket operation failed. `code` tells the kind; `message` says what happened, with errno text.
public struct NetworkError: Error, Sendable, Equatable, CustomStringConvertible {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        let name: String
        public var description: String { name }
        /// The name did not resolve.
        public static let resolve = Code(name: "resolve")
        /// The TCP connection could not be made (refused, unreachable).
        public static let connect = Code(name: "connect")
        /// Nothing arrived (or could be sent) within the time allowed.
        public static let timedOut = Code(name: "timed_out")
        /// The peer closed or reset the connection.
        public static let closed = Code(name: "closed")
        /// The operation was cancelled (the socket was shut down from another thread).
        public static let cancelled = Code(name: "cancelled")
        /// Any other system call failure.
        public static let system = Code(name: "system")
    }

    public let code: Code
    public let message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { message }

    static func errno(_ function: String, _ code: Code = .system, errno value: Int32 = errnoValue()) -> NetworkError {
        NetworkError(code, "\(function): \(String(cString: strerror(value)))")
    }
}

@inline(__always) func errnoValue() -> Int32 {
    #if canImport(Glibc)
    return Glibc.errno
    #else
    return Darwin.errno
    #endif
}

/// Calls a system call again while it fails with EINTR.
@inline(__always) func retryingEINTR<T: BinaryInteger>(_ call: () -> T) -> T {
    while true {
        let result = call()
        if result >= 0 || errnoValue() != EINTR { return result }
    }
}

/// One resolved IPv4/IPv6 socket address.
struct SocketAddress: @unchecked Sendable {
    var storage = sockaddr_storage()
    var length: socklen_t = 0
    var family: Int32 { Int32(storage.ss_family) }

    /// Resolves `host` (a name or a numeric address) and `port`; numeric addresses never hit DNS.
    static func resolve(host: String, port: UInt16, datagram: Bool) throws(NetworkError) -> [SocketAddress] {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        #if canImport(Glibc)
        hints.ai_socktype = Int32(datagram ? SOCK_DGRAM.rawValue : SOCK_STREAM.rawValue)
        #else
        hints.ai_socktype = datagram ? SOCK_DGRAM : SOCK_STREAM
        #endif
        var list: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, String(port), &hints, &list)
        guard rc == 0, let first = list else {
            throw NetworkError(.resolve, "cannot resolve \(host): \(String(cString: gai_strerror(rc)))")
        }
        defer { freeaddrinfo(first) }
        var result: [SocketAddress] = []
        var node: UnsafeMutablePointer<addrinfo>? = first
        while let entry = node {
            if let addr = entry.pointee.ai_addr, Int(entry.pointee.ai_addrlen) <= MemoryLayout<sockaddr_storage>.size {
                var address = SocketAddress()
                withUnsafeMutableBytes(of: &address.storage) { raw in
                    raw.copyMemory(from: UnsafeRawBufferPointer(start: addr, count: Int(entry.pointee.ai_addrlen)))
                }
                address.length = entry.pointee.ai_addrlen
                result.append(address)
            }
            node = entry.pointee.ai_next
        }
        if result.isEmpty { throw NetworkError(.resolve, "cannot resolve \(host): no address") }
        return result
    }

    func withSockaddr<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
        withUnsafeBytes(of: storage) { raw in
            body(raw.baseAddress!.assumingMemoryBound(to: sockaddr.self), length)
        }
    }
}

#if canImport(Glibc)
let socketStream = Int32(SOCK_STREAM.rawValue)
let socketDatagram = Int32(SOCK_DGRAM.rawValue)
let sendFlags = Int32(MSG_NOSIGNAL)
#else
let socketStream = SOCK_STREAM
let socketDatagram = SOCK_DGRAM
let sendFlags: Int32 = 0
#endif

func setNonBlocking(_ fd: Int32) {
    let flags = fcntl(fd, F_GETFL)
    if flags >= 0 { _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK) }
}

func setOption(_ fd: Int32, _ level: Int32, _ name: Int32, _ value: Int32 = 1) -> Bool {
    var v = value
    return setsockopt(fd, level, name, &v, socklen_t(MemoryLayout<Int32>.size)) == 0
}

/// Waits until `fd` is ready for `events` or `deadline` passes. Returns false on timeout.
func waitReady(_ fd: Int32, events: Int16, deadline: ContinuousClock.Instant) throws(NetworkError) -> Bool {
    while true {
        let remaining = ContinuousClock.now.duration(to: deadline)
        if remaining <= .zero { return false }
        let (seconds, attoseconds) = remaining.components
        let ms = min(Int64(Int32.max), seconds * 1000 + attoseconds / 1_000_000_000_000_000 + 1)
        var pfd = pollfd(fd: fd, events: events, revents: 0)
        let rc = poll(&pfd, 1, Int32(ms))
        if rc < 0 {
            if errnoValue() == EINTR { continue }
            throw NetworkError.errno("poll")
        }
        if rc == 0 { continue }  // re-check the clock: poll may wake a little early
        if pfd.revents & Int16(POLLNVAL) != 0 { throw NetworkError(.cancelled, "socket closed") }
        return true
    }
}

/// A connected TCP stream socket with deadlines on every operation. Not thread-safe except
/// `shutdown()`, which any thread may call to wake (and fail) a blocked reader or writer.
final class TCPConnection: @unchecked Sendable {
    private let fd: Int32
    private let state = Protected((closed: false, shutDown: false))
    let peer: String

    private init(fd: Int32, peer: String) {
        self.fd = fd
        self.peer = peer
    }

    deinit { close() }

    /// Connects to the first address of `host` that answers within `timeout`.
    static func connect(host: String, port: UInt16, timeout: Duration) throws(NetworkError) -> TCPConnection {
        let deadline = ContinuousClock.now + timeout
        var lastError = NetworkError(.connect, "cannot connect to \(host):\(port)")
        for address in try SocketAddress.resolve(host: host, port: port, datagram: false) {
            let fd = socket(address.family, socketStream, 0)
            if fd < 0 {
                lastError = .errno("socket")
                continue
            }
            setNonBlocking(fd)
            #if canImport(Darwin)
            _ = setOption(fd, SOL_SOCKET, SO_NOSIGPIPE)
            #endif
            _ = setOption(fd, Int32(IPPROTO_TCP), TCP_NODELAY)
            let rc = address.withSockaddr { Glibc_connect(fd, $0, $1) }
            if rc == 0 { return TCPConnection(fd: fd, peer: "\(host):\(port)") }
            let err = errnoValue()
            if err != EINPROGRESS && err != EINTR {
                _ = Glibc_close(fd)
                lastError = NetworkError(.connect, "cannot connect to \(host):\(port): \(String(cString: strerror(err)))")
                continue
            }
            let ready: Bool
            do {
                ready = try waitReady(fd, events: Int16(POLLOUT), deadline: deadline)
            } catch {
                _ = Glibc_close(fd)
                throw error
            }
            guard ready else {
                _ = Glibc_close(fd)
                throw NetworkError(.timedOut, "cannot connect to \(host):\(port): no answer within \(timeout)")
            }
            var soError: Int32 = 0
            var len = socklen_t(MemoryLayout<Int32>.size)
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &soError, &len)
            if soError == 0 { return TCPConnection(fd: fd, peer: "\(host):\(port)") }
            _ = Glibc_close(fd)
            lastError = NetworkError(.connect, "cannot connect to \(host):\(port): \(String(cString: strerror(soError)))")
        }
        throw lastError
    }

    /// Sends all of `bytes` before `deadline`.
    func write(_ bytes: [UInt8], deadline: ContinuousClock.Instant) throws(NetworkError) {
        var offset = 0
        while offset < bytes.count {
            try checkOpen()
            let n = bytes.withUnsafeBytes { raw in
                retryingEINTR { send(fd, raw.baseAddress! + offset, raw.count - offset, sendFlags) }
            }
            if n > 0 {
                offset += n
                continue
            }
            let err = errnoValue()
            if n < 0 && (err == EAGAIN || err == EWOULDBLOCK) {
                guard try waitReady(fd, events: Int16(POLLOUT), deadline: deadline) else {
                    throw NetworkError(.timedOut, "sending to \(peer) timed out")
                }
                continue
            }
            try checkOpen()
            if err == EPIPE || err == ECONNRESET { throw NetworkError(.closed, "\(peer) closed the connection") }
            throw NetworkError.errno("send")
        }
    }

    /// Reads at most `maxCount` bytes, waiting until `deadline`. Returns an empty array at end of stream.
    func read(maxCount: Int, deadline: ContinuousClock.Instant) throws(NetworkError) -> [UInt8] {
        while true {
            try checkOpen()
            var buffer = [UInt8](repeating: 0, count: maxCount)
            let n = buffer.withUnsafeMutableBytes { raw in retryingEINTR { recv(fd, raw.baseAddress!, maxCount, 0) } }
            if n > 0 {
                buffer.removeSubrange(n...)
                return buffer
            }
            if n == 0 {
                try checkOpen()
                return []
            }
            let err = errnoValue()
            if err == EAGAIN || err == EWOULDBLOCK {
                guard try waitReady(fd, events: Int16(POLLIN), deadline: deadline) else {
                    throw NetworkError(.timedOut, "no data from \(peer) in time")
                }
                continue
            }
            try checkOpen()
            if err == ECONNRESET { throw NetworkError(.closed, "\(peer) reset the connection") }
            throw NetworkError.errno("recv")
        }
    }

    /// True when the peer has closed (or sent unexpected bytes on) an idle connection.
    var isStale: Bool {
        var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let rc = poll(&pfd, 1, 0)
        return rc != 0
    }

    private func checkOpen() throws(NetworkError) {
        if state.withLock({ $0.shutDown || $0.closed }) { throw NetworkError(.cancelled, "connection to \(peer) cancelled") }
    }

    /// Wakes and fails any blocked read or write; safe from any thread.
    func shutdown() {
        state.withLock { s in
            if !s.closed && !s.shutDown {
                s.shutDown = true
                _ = Glibc_shutdown(fd, Int32(SHUT_RDWR))
            }
        }
    }

    func close() {
        state.withLock { s in
            if !s.closed {
                s.closed = true
                _ = Glibc_close(fd)
            }
        }
    }
}

// The C functions under names that do not clash with our methods.
@inline(__always) func Glibc_close(_ fd: Int32) -> Int32 {
    #if canImport(Glibc)
    return Glibc.close(fd)
    #else
    return Darwin.close(fd)
    #endif
}

@inline(__always) func Glibc_shutdown(_ fd: Int32, _ how: Int32) -> Int32 {
    #if canImport(Glibc)
    return Glibc.shutdown(fd, how)
    #else
    return Darwin.shutdown(fd, how)
    #endif
}

@inline(__always) func Glibc_connect(_ fd: Int32, _ address: UnsafePointer<sockaddr>, _ length: socklen_t) -> Int32 {
    #if canImport(Glibc)
    return Glibc.connect(fd, address, length)
    #else
    return Darwin.connect(fd, address, length)
    #endif
}
