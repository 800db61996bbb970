import Foundation

/// A small HTTP/1.1 client for plain `http://` on loopback and LAN: keep-alive connection reuse,
/// Content-Length and chunked bodies, deadlines on connect and on every read, and a bound on what it
/// accepts. Each exchange runs its blocking socket I/O on a dispatch queue and is bridged to `async`;
/// cancelling the calling task shuts the socket down at once.
///
///     let client = try HTTPClient(baseURL: "http://127.0.0.1:8080")
///     let response = try await client.send(method: "GET", path: "/v1/payment-requests/pr_x")
///     let status = try response.json()["status"]?.string
///
/// Retries: a request that fails on a *reused* keep-alive connection before any byte of the answer
/// arrived (the server had closed it) is sent once more on a fresh connection. Every other failure is
/// the caller's to retry (`HTTPClientError.isRetryable`), with the same idempotency key.
public final class HTTPClient: Sendable {
    /// How long each step may take.
    public struct Timeouts: Sendable {
        /// Resolving and connecting.
        public var connect: Duration
        /// Sending the request and receiving the whole response.
        public var response: Duration

        public init(connect: Duration = .seconds(5), response: Duration = .seconds(30)) {
            self.connect = connect
            self.response = response
        }
    }

    /// The base URL as given, e.g. `http://127.0.0.1:8080`.
    public let baseURL: String
    public let timeouts: Timeouts
    /// The largest response body accepted (default 8 MiB); larger is `HTTPClientError.tooLarge`.
    public let maxResponseBytes: Int
    let host: String
    let port: UInt16
    /// The path prefix of the base URL without a trailing slash ("" for none).
    let basePath: String
    private let idle = Protected<[HTTPConnection]>([])
    private let opened = Protected(0)
    /// How many TCP connections this client has opened (keep-alive reuse keeps it low).
    public var connectionsOpened: Int { opened.withLock { $0 } }
    private let maxIdleConnections = 8

    /// - Parameter baseURL: `http://HOST[:PORT][/PREFIX]`; only plain http is supported.
    public init(baseURL: String, timeouts: Timeouts = Timeouts(), maxResponseBytes: Int = 8 << 20) throws(HTTPClientError) {
        guard let components = URLComponents(string: baseURL), components.scheme?.lowercased() == "http",
            let host = components.host, !host.isEmpty
        else {
            throw HTTPClientError(.invalidURL, "not a plain http URL: \(baseURL) (expected http://HOST:PORT)")
        }
        guard components.query == nil, components.fragment == nil, components.user == nil else {
            throw HTTPClientError(.invalidURL, "the base URL may not have a query, fragment or user: \(baseURL)")
        }
        let port = components.port ?? 80
        guard let port16 = UInt16(exactly: port), port16 > 0 else {
            throw HTTPClientError(.invalidURL, "bad port in \(baseURL)")
        }
        self.baseURL = baseURL
        self.timeouts = timeouts
        self.maxResponseBytes = maxResponseBytes
        // URLComponents keeps IPv6 brackets off `host`; getaddrinfo wants them off too.
        self.host = host
        self.port = port16
        var path = components.percentEncodedPath
        while path.hasSuffix("/") { path.removeLast() }
        self.basePath = path
    }

    deinit { close() }

    /// Closes the idle keep-alive connections. Exchanges in flight are not affected.
    public func close() {
        let connections = idle.withLock { list in
            defer { list.removeAll() }
            return list
        }
        for connection in connections { connection.close() }
    }

    /// Sends one request and returns the complete response, whatever its status.
    ///
    /// - Parameters:
    ///   - path: the request target after the base URL, starting with `/` (query included if any).
    ///   - headers: extra header fields; `Host`, `Content-Length` and `Connection` are set by the client.
    public func send(
        method: String, path: String, headers: HTTPHeaders = HTTPHeaders(), body: [UInt8] = [],
        timeout: Duration? = nil
    ) async throws(HTTPClientError) -> HTTPResponse {
        let request = try encodeRequest(method: method, path: path, headers: headers, body: body, keepAlive: true)
        let deadlineAfterConnect = timeout ?? timeouts.response
        let cancel = CancelBox()
        do {
            return try await withTaskCancellationHandler {
                try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<HTTPResponse, any Error>) in
                    DispatchQueue.global().async {
                        do {
                            let response = try self.exchange(
                                request: request, method: method, timeout: deadlineAfterConnect, cancel: cancel)
                            continuation.resume(returning: response)
                        } catch {
                            continuation.resume(throwing: error)
                        }
                    }
                }
            } onCancel: {
                cancel.cancel()
            }
        } catch let error as HTTPClientError {
            throw error
        } catch {
            throw HTTPClientError(.network, "\(error)")
        }
    }

    /// `GET path`.
    public func get(_ path: String, headers: HTTPHeaders = HTTPHeaders()) async throws(HTTPClientError) -> HTTPResponse {
        try await send(method: "GET", path: path, headers: headers)
    }

    /// `POST path` with a JSON body (`Content-Type: application/json`).
    public func post(_ path: String, json: JSON, headers: HTTPHeaders = HTTPHeaders()) async throws(HTTPClientError)
        -> HTTPResponse
    {
        var headers = headers
        headers.set("Content-Type", "application/json")
        return try await send(method: "POST", path: path, headers: headers, body: json.bytes)
    }

    // MARK: - Blocking internals

    /// The bytes of a request. Refuses header names or values that would break the framing.
    func encodeRequest(method: String, path: String, headers: HTTPHeaders, body: [UInt8], keepAlive: Bool)
        throws(HTTPClientError) -> [UInt8]
    {
        guard !method.isEmpty, method.utf8.allSatisfy({ $0 >= 0x41 && $0 <= 0x5A }) else {
            throw HTTPClientError(.invalidURL, "bad HTTP method \(method)")
        }
        guard path.hasPrefix("/"), !path.utf8.contains(where: { $0 <= 0x20 || $0 == 0x7F }) else {
            throw HTTPClientError(.invalidURL, "bad request path \(path)")
        }
        var head = "\(method) \(basePath)\(path) HTTP/1.1\r\n"
        let hostHeader = host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        head += "Host: \(hostHeader)\r\n"
        for field in headers {
            let lower = field.name.lowercased()
            if lower == "host" || lower == "content-length" || lower == "connection" || lower == "transfer-encoding" {
                continue
            }
            guard !field.name.isEmpty, field.name.utf8.allSatisfy(isTokenByte),
                !field.value.utf8.contains(where: { $0 == 0x0D || $0 == 0x0A || $0 == 0 })
            else {
                throw HTTPClientError(.invalidURL, "bad header field \(field.name)")
            }
            head += "\(field.name): \(field.value)\r\n"
        }
        if !headers.contains("User-Agent") { head += "User-Agent: wipay-client/1\r\n" }
        if !body.isEmpty || method == "POST" || method == "PUT" || method == "PATCH" {
            head += "Content-Length: \(body.count)\r\n"
        }
        if !keepAlive { head += "Connection: close\r\n" }
        head += "\r\n"
        return Array(head.utf8) + body
    }

    func takeIdleConnection() -> HTTPConnection? {
        while let connection = idle.withLock({ $0.popLast() }) {
            if !connection.tcp.isStale { return connection }
            connection.close()
        }
        return nil
    }

    func returnIdleConnection(_ connection: HTTPConnection) {
        let overflow = idle.withLock { list -> HTTPConnection? in
            if list.count >= maxIdleConnections { return connection }
            list.append(connection)
            return nil
        }
        overflow?.close()
    }

    func connect(cancel: CancelBox) throws(HTTPClientError) -> HTTPConnection {
        do {
            let tcp = try TCPConnection.connect(host: host, port: port, timeout: timeouts.connect)
            opened.withLock { $0 += 1 }
            return HTTPConnection(tcp: tcp, maxBodyBytes: maxResponseBytes)
        } catch {
            throw HTTPClientError(error)
        }
    }

    private func exchange(request: [UInt8], method: String, timeout: Duration, cancel: CancelBox)
        throws(HTTPClientError) -> HTTPResponse
    {
        if let reused = takeIdleConnection() {
            guard cancel.attach(reused.tcp) else {
                reused.close()
                throw HTTPClientError(.cancelled, "request cancelled")
            }
            do {
                return try exchange(on: reused, request: request, method: method, timeout: timeout)
            } catch let error as StaleConnection {
                _ = error  // the server closed the idle connection: once more on a fresh one
                reused.close()
            } catch let error as HTTPClientError {
                reused.close()
                throw error
            } catch {
                reused.close()
                throw HTTPClientError(.network, "\(error)")
            }
        }
        let connection = try connect(cancel: cancel)
        guard cancel.attach(connection.tcp) else {
            connection.close()
            throw HTTPClientError(.cancelled, "request cancelled")
        }
        do {
            return try exchange(on: connection, request: request, method: method, timeout: timeout)
        } catch let error as HTTPClientError {
            connection.close()
            throw error
        } catch {
            connection.close()
            throw HTTPClientError(.network, "\(connection.tcp.peer) closed the connection before answering")
        }
    }

    /// One exchange on one connection. Throws `StaleConnection` when nothing at all came back.
    private func exchange(on connection: HTTPConnection, request: [UInt8], method: String, timeout: Duration) throws
        -> HTTPResponse
    {
        let deadline = ContinuousClock.now + timeout
        do {
            try connection.tcp.write(request, deadline: deadline)
        } catch {
            if error.code == .closed { throw StaleConnection() }
            throw HTTPClientError(error)
        }
        let head: ResponseHead
        do {
            head = try connection.readHead(deadline: deadline, method: method)
        } catch {
            if !connection.receivedAny && (error.code == .network) { throw StaleConnection() }
            throw error
        }
        var body: [UInt8] = []
        while let piece = try connection.readBody(deadline: deadline) {
            body += piece
        }
        let response = HTTPResponse(status: head.status, reason: head.reason, headers: head.headers, body: body)
        if connection.reusable {
            connection.reset()
            returnIdleConnection(connection)
        } else {
            connection.close()
        }
        return response
    }
}

/// The server closed a reused keep-alive connection before answering.
struct StaleConnection: Error {}

/// Lets a cancelled task shut down the socket its exchange is blocked on.
final class CancelBox: Sendable {
    private let state = Protected<(cancelled: Bool, connection: TCPConnection?)>((false, nil))

    /// Remembers the connection to shut down on cancel; false if already cancelled.
    func attach(_ connection: TCPConnection) -> Bool {
        state.withLock { s in
            if s.cancelled { return false }
            s.connection = connection
            return true
        }
    }

    var isCancelled: Bool { state.withLock { $0.cancelled } }

    func cancel() {
        let connection = state.withLock { s -> TCPConnection? in
            s.cancelled = true
            return s.connection
        }
        connection?.shutdown()
    }
}

func isTokenByte(_ byte: UInt8) -> Bool {
    switch byte {
    case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"):
        return true
    default:
        return Array("!#$%&'*+-.^_`|~".utf8).contains(byte)
    }
}

struct ResponseHead {
    var status: Int
    var reason: String
    var headers: HTTPHeaders
}

/// A TCP connection plus the HTTP/1.1 response framing: a read buffer, the head parser and a body
/// reader for Content-Length, chunked and read-until-close bodies.
final class HTTPConnection: @unchecked Sendable {
    enum Body {
        case none
        case length(remaining: Int)
        case chunked(remainingInChunk: Int)  // 0: expecting a size line
        case untilClose
        case done
    }

    let tcp: TCPConnection
    let maxBodyBytes: Int
    let maxHeadBytes = 64 * 1024
    private var buffer: [UInt8] = []
    private var start = 0
    private var body: Body = .none
    private var bodyBytes = 0
    private var keepAlive = true
    /// Whether any byte of a response arrived on this exchange.
    private(set) var receivedAny = false

    init(tcp: TCPConnection, maxBodyBytes: Int) {
        self.tcp = tcp
        self.maxBodyBytes = maxBodyBytes
    }

    func close() { tcp.close() }

    /// Ready for the next exchange.
    func reset() {
        receivedAny = false
        body = .none
        bodyBytes = 0
    }

    /// Whether the connection can carry another exchange (the body was read to its end).
    var reusable: Bool {
        if case .done = body { return keepAlive && start == buffer.count }
        return false
    }

    private var available: Int { buffer.count - start }

    private func fill(deadline: ContinuousClock.Instant) throws(HTTPClientError) -> Bool {
        let bytes: [UInt8]
        do {
            bytes = try tcp.read(maxCount: 16 * 1024, deadline: deadline)
        } catch {
            throw HTTPClientError(error)
        }
        if bytes.isEmpty { return false }
        receivedAny = true
        if start > 0 && start == buffer.count {
            buffer.removeAll(keepingCapacity: true)
            start = 0
        } else if start > 64 * 1024 {
            buffer.removeSubrange(0..<start)
            start = 0
        }
        buffer += bytes
        return true
    }

    /// One line without its CRLF (or bare LF), at most `limit` bytes.
    private func readLine(deadline: ContinuousClock.Instant, limit: Int) throws(HTTPClientError) -> [UInt8] {
        // Counted from `start`: `fill` may move the buffer's contents down (and `start` to 0).
        var scannedFromStart = 0
        while true {
            if let newline = buffer[(start + scannedFromStart)...].firstIndex(of: 0x0A) {
                var end = newline
                if end > start && buffer[end - 1] == 0x0D { end -= 1 }
                let line = Array(buffer[start..<end])
                start = newline + 1
                return line
            }
            scannedFromStart = buffer.count - start
            if available > limit { throw HTTPClientError(.tooLarge, "a response line from \(tcp.peer) is too long") }
            guard try fill(deadline: deadline) else {
                throw HTTPClientError(.network, "\(tcp.peer) closed the connection mid-response")
            }
        }
    }

    /// Reads the status line and header fields and sets up the body reader. Skips 1xx answers.
    func readHead(deadline: ContinuousClock.Instant, method: String) throws(HTTPClientError) -> ResponseHead {
        while true {
            var headBytes = 0
            let statusLine = String(decoding: try readLine(deadline: deadline, limit: maxHeadBytes), as: UTF8.self)
            let parts = statusLine.split(separator: " ", maxSplits: 2, omittingEmptySubsequences: false)
            guard parts.count >= 2, parts[0].hasPrefix("HTTP/1."), parts[1].count == 3, let status = Int(parts[1]),
                (100...599).contains(status)
            else {
                throw HTTPClientError(.malformedResponse, "bad status line from \(tcp.peer): \(statusLine.prefix(80))")
            }
            var headers = HTTPHeaders()
            while true {
                let line = try readLine(deadline: deadline, limit: maxHeadBytes)
                headBytes += line.count + 2
                if headBytes > maxHeadBytes { throw HTTPClientError(.tooLarge, "response head from \(tcp.peer) too large") }
                if line.isEmpty { break }
                guard let colon = line.firstIndex(of: UInt8(ascii: ":")), colon > 0,
                    line[..<colon].allSatisfy(isTokenByte)
                else {
                    throw HTTPClientError(.malformedResponse, "bad header line from \(tcp.peer)")
                }
                let name = String(decoding: line[..<colon], as: UTF8.self)
                let value = String(decoding: line[(colon + 1)...], as: UTF8.self).trimmingCharacters(in: .whitespaces)
                headers.add(name, value)
            }
            if (100..<200).contains(status) { continue }
            let http10 = parts[0] == "HTTP/1.0"
            let connection = headers.values("Connection").joined(separator: ",").lowercased()
            keepAlive = !http10 && !connection.contains("close")
            try setUpBody(status: status, method: method, headers: headers)
            return ResponseHead(status: status, reason: parts.count > 2 ? String(parts[2]) : "", headers: headers)
        }
    }

    private func setUpBody(status: Int, method: String, headers: HTTPHeaders) throws(HTTPClientError) {
        bodyBytes = 0
        if method == "HEAD" || status == 204 || status == 304 {
            body = .done
            return
        }
        let encodings = headers.values("Transfer-Encoding").joined(separator: ",").lowercased()
        if !encodings.isEmpty {
            guard encodings.split(separator: ",").last?.trimmingCharacters(in: .whitespaces) == "chunked" else {
                throw HTTPClientError(.malformedResponse, "unsupported Transfer-Encoding \(encodings) from \(tcp.peer)")
            }
            body = .chunked(remainingInChunk: 0)
            return
        }
        let lengths = headers.values("Content-Length")
        if let first = lengths.first {
            guard lengths.allSatisfy({ $0 == first }), !first.isEmpty, first.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
                let length = Int(first)
            else {
                throw HTTPClientError(.malformedResponse, "bad Content-Length from \(tcp.peer)")
            }
            if length > maxBodyBytes {
                throw HTTPClientError(.tooLarge, "response body of \(length) bytes from \(tcp.peer) exceeds \(maxBodyBytes)")
            }
            body = length == 0 ? .done : .length(remaining: length)
            return
        }
        keepAlive = false
        body = .untilClose
    }

    /// The next piece of the body as it arrives; nil at its end.
    func readBody(deadline: ContinuousClock.Instant) throws(HTTPClientError) -> [UInt8]? {
        switch body {
        case .none, .done:
            return nil
        case .length(let remaining):
            if available == 0 {
                guard try fill(deadline: deadline) else {
                    throw HTTPClientError(.network, "\(tcp.peer) closed the connection mid-body")
                }
            }
            let n = min(remaining, available)
            let piece = take(n)
            body = remaining - n == 0 ? .done : .length(remaining: remaining - n)
            return try counted(piece)
        case .chunked(let remainingInChunk):
            var remaining = remainingInChunk
            if remaining == 0 {
                let line = try readLine(deadline: deadline, limit: 1024)
                let sizeText = String(decoding: line, as: UTF8.self).split(separator: ";", maxSplits: 1).first ?? ""
                let trimmed = sizeText.trimmingCharacters(in: .whitespaces)
                guard !trimmed.isEmpty, trimmed.count <= 15, let size = Int(trimmed, radix: 16) else {
                    throw HTTPClientError(.malformedResponse, "bad chunk size from \(tcp.peer)")
                }
                if size == 0 {
                    // Trailer fields, then the empty line.
                    var trailerBytes = 0
                    while true {
                        let trailer = try readLine(deadline: deadline, limit: maxHeadBytes)
                        trailerBytes += trailer.count
                        if trailer.isEmpty { break }
                        if trailerBytes > maxHeadBytes { throw HTTPClientError(.tooLarge, "trailers too large") }
                    }
                    body = .done
                    return nil
                }
                if bodyBytes + size > maxBodyBytes {
                    throw HTTPClientError(.tooLarge, "response body from \(tcp.peer) exceeds \(maxBodyBytes) bytes")
                }
                remaining = size
            }
            if available == 0 {
                guard try fill(deadline: deadline) else {
                    throw HTTPClientError(.network, "\(tcp.peer) closed the connection mid-body")
                }
            }
            let n = min(remaining, available)
            let piece = take(n)
            remaining -= n
            if remaining == 0 {
                let end = try readLine(deadline: deadline, limit: 2)
                guard end.isEmpty else { throw HTTPClientError(.malformedResponse, "bad chunk end from \(tcp.peer)") }
            }
            body = .chunked(remainingInChunk: remaining)
            return try counted(piece)
        case .untilClose:
            if available == 0 {
                guard try fill(deadline: deadline) else {
                    body = .done
                    return nil
                }
            }
            return try counted(take(available))
        }
    }

    /// Reads body pieces for a stream whose total is unbounded (SSE): the size cap does not apply.
    var unboundedBody = false

    private func counted(_ piece: [UInt8]) throws(HTTPClientError) -> [UInt8] {
        bodyBytes += piece.count
        if !unboundedBody && bodyBytes > maxBodyBytes {
            throw HTTPClientError(.tooLarge, "response body from \(tcp.peer) exceeds \(maxBodyBytes) bytes")
        }
        return piece
    }

    private func take(_ n: Int) -> [UInt8] {
        let piece = Array(buffer[start..<(start + n)])
        start += n
        return piece
    }
}
