// How the end-to-end tests talk to a system: HTTP through WiPayClient's HTTPClient (every response is
// recorded for the OpenAPI check), a terminal and a phone as the contract describes them, Server-Sent
// Events read from a raw socket, and payctl for onboarding and balances.

import Crypto
import Foundation
import Testing
import WiPayClient

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

// MARK: - HTTP with a record of every response

/// One response the tests saw: checked against docs/openapi.yaml at the end of the suite.
struct E2EObservation: Sendable {
    let method: String
    let path: String
    let status: Int
    let contentType: String?
    let body: [UInt8]
}

/// A response, with its JSON (if any) and the contract's error code (if any).
struct E2EReply: Sendable, CustomStringConvertible {
    let status: Int
    let headers: HTTPHeaders
    let body: [UInt8]

    var json: JSON? { JSON.parse(body) }
    /// `error.code` of an error body (also of a 422 decline).
    var code: String? { json?["error"]?["code"]?.string }
    subscript(key: String) -> JSON? { json?[key] }
    func string(_ key: String) -> String? { json?[key]?.string }
    func int(_ key: String) -> Int64? { json?[key]?.int64 }

    var description: String { "HTTP \(status) \(String(decoding: body.prefix(600), as: UTF8.self))" }
}

final class E2EHTTP: Sendable {
    let client: HTTPClient
    let system: E2ESystem

    init(baseURL: String, system: E2ESystem) throws {
        client = try HTTPClient(baseURL: baseURL, timeouts: .init(connect: .seconds(5), response: .seconds(20)))
        self.system = system
    }

    static func safeToResend(_ method: String, _ headers: HTTPHeaders) -> Bool {
        method == "GET" || headers.contains("Idempotency-Key")
    }

    /// - Parameter record: false for deliberate probes outside the documented API (an unknown path).
    func send(
        _ method: String, _ path: String, headers: HTTPHeaders = HTTPHeaders(), body: [UInt8] = [], record: Bool = true
    ) async throws -> E2EReply {
        let response: HTTPResponse
        do {
            response = try await client.send(method: method, path: path, headers: headers, body: body)
        } catch {
            // What a real terminal or phone does when a connection drops before any answer: send the same
            // request again (same Idempotency-Key; for a phone the same signed bytes, which the gateway
            // answers with the first result).
            guard error.isRetryable, Self.safeToResend(method, headers) else { throw error }
            response = try await client.send(method: method, path: path, headers: headers, body: body)
        }
        if record {
            system.record(
            E2EObservation(
                    method: method, path: path, status: response.status, contentType: response.headers["Content-Type"],
                    body: response.body))
        }
        return E2EReply(status: response.status, headers: response.headers, body: response.body)
    }
}

/// JSON text of a dictionary literal (keys sorted), for request bodies.
func e2eJSON(_ object: [String: Any]) -> [UInt8] {
    (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])).map { Array($0) } ?? []
}

// MARK: - onboarding through payctl

/// A merchant with one terminal, made with payctl.
struct E2EMerchant: Sendable {
    let merchantId: String
    let accountId: String
    let name: String
    let currency: String
    let terminalId: String
    let terminalKey: String
}

/// A wallet made with payctl (and funded), not yet enrolled.
struct E2EWallet: Sendable {
    let accountId: String
    let enrollmentCode: String
    let pin: String
    let currency: String
}

extension E2ESystem {
    func addMerchant(
        name: String? = nil, currency: String = "CNY", terminal: String = "counter 1",
        sourceLocation: SourceLocation = #_sourceLocation
    ) async throws -> E2EMerchant {
        let name = name ?? "Cafe \(e2eToken(6))"
        let m = try await payctl(["merchant", "add", "--name", name, "--currency", currency])
        guard m.status == 0, let merchantId = m.string("merchant_id"), let accountId = m.string("account_id") else {
            throw E2EFailure("payctl merchant add failed: \(m)")
        }
        let (terminalId, key) = try await addTerminal(merchantId: merchantId, name: terminal)
        return E2EMerchant(
            merchantId: merchantId, accountId: accountId, name: name, currency: currency, terminalId: terminalId,
            terminalKey: key)
    }

    /// Another terminal (till) of a merchant: its id and key.
    func addTerminal(merchantId: String, name: String) async throws -> (id: String, key: String) {
        let t = try await payctl(["terminal", "add", "--merchant", merchantId, "--name", name])
        guard t.status == 0, let terminalId = t.string("terminal_id"), let key = t.string("terminal_key") else {
            throw E2EFailure("payctl terminal add failed: \(t)")
        }
        noteSecret(key)
        return (terminalId, key)
    }

    func addWallet(pin: String = "908172", currency: String = "CNY", funds: Int64 = 100_000) async throws -> E2EWallet {
        let w = try await payctl(["wallet", "add", "--name", "Li \(e2eToken(4))", "--pin", pin, "--currency", currency])
        guard w.status == 0, let accountId = w.string("account_id"), let code = w.string("enrollment_code") else {
            throw E2EFailure("payctl wallet add failed: \(w)")
        }
        noteSecret(pin)
        noteSecret(code)
        if funds > 0 {
            let f = try await payctl(["wallet", "fund", accountId, "\(funds)"])
            guard f.status == 0, f.int("balance") == funds else { throw E2EFailure("payctl wallet fund failed: \(f)") }
        }
        return E2EWallet(accountId: accountId, enrollmentCode: code, pin: pin, currency: currency)
    }

    /// The ledger balance of an account, through `payctl account show`.
    func balance(_ accountId: String) async throws -> Int64 {
        let r = try await payctl(["account", "show", accountId])
        guard r.status == 0, let balance = r.int("balance") else { throw E2EFailure("payctl account show failed: \(r)") }
        return balance
    }

    func pos(_ merchant: E2EMerchant) throws -> E2EPOS {
        E2EPOS(http: try E2EHTTP(baseURL: posURL, system: self), merchant: merchant, system: self)
    }

    /// A wallet with an enrolled device.
    func phone(pin: String = "908172", currency: String = "CNY", funds: Int64 = 100_000) async throws -> E2EPhone {
        let wallet = try await addWallet(pin: pin, currency: currency, funds: funds)
        let phone = try E2EPhone(system: self, wallet: wallet)
        let r = try await phone.enroll()
        guard r.status == 201, phone.deviceId != nil else { throw E2EFailure("enrollment failed: \(r)") }
        return phone
    }
}

// MARK: - a terminal

struct E2EPOS: Sendable {
    let http: E2EHTTP
    let merchant: E2EMerchant
    let system: E2ESystem

    var authHeaders: HTTPHeaders { ["Authorization": "Bearer \(merchant.terminalKey)"] }

    func headers(idempotencyKey: String?, json: Bool = true) -> HTTPHeaders {
        var h = authHeaders
        if let idempotencyKey { h.set("Idempotency-Key", idempotencyKey) }
        if json { h.set("Content-Type", "application/json") }
        return h
    }

    func createBody(
        amount: Int64, currency: String? = nil, reference: String? = nil, description: String? = nil, expiresIn: Int? = nil
    ) -> [UInt8] {
        var object: [String: Any] = [
            "amount": amount, "currency": currency ?? merchant.currency, "reference": reference ?? "order-\(e2eToken(6))",
        ]
        if let description { object["description"] = description }
        if let expiresIn { object["expires_in"] = expiresIn }
        return e2eJSON(object)
    }

    func create(
        amount: Int64, currency: String? = nil, reference: String? = nil, description: String? = nil,
        expiresIn: Int? = nil, idempotencyKey: String = "pr-" + e2eToken(16)
    ) async throws -> E2EReply {
        try await createRaw(
            createBody(amount: amount, currency: currency, reference: reference, description: description, expiresIn: expiresIn),
            idempotencyKey: idempotencyKey)
    }

    func createRaw(_ body: [UInt8], idempotencyKey: String?, headers extra: HTTPHeaders? = nil) async throws -> E2EReply {
        try await http.send("POST", "/v1/payment-requests", headers: extra ?? headers(idempotencyKey: idempotencyKey), body: body)
    }

    /// Creates a request and fails unless it is 201 pending; returns (id, payload).
    func mustCreate(amount: Int64, expiresIn: Int? = nil, reference: String? = nil) async throws -> (id: String, payload: String)
    {
        let r = try await create(amount: amount, reference: reference, expiresIn: expiresIn)
        guard r.status == 201, let id = r.string("id"), let payload = r.string("payload"), r.string("status") == "pending" else {
            throw E2EFailure("create payment request failed: \(r)")
        }
        return (id, payload)
    }

    func get(_ id: String) async throws -> E2EReply {
        try await http.send("GET", "/v1/payment-requests/\(id)", headers: authHeaders)
    }

    func cancel(_ id: String, idempotencyKey: String = "cancel-" + e2eToken(16)) async throws -> E2EReply {
        try await http.send(
            "POST", "/v1/payment-requests/\(id)/cancel", headers: headers(idempotencyKey: idempotencyKey), body: [])
    }

    func refund(_ paymentId: String, amount: Int64?, idempotencyKey: String = "rf-" + e2eToken(16)) async throws -> E2EReply {
        let body = amount.map { e2eJSON(["amount": $0]) } ?? Array("{}".utf8)
        return try await http.send(
            "POST", "/v1/payments/\(paymentId)/refunds", headers: headers(idempotencyKey: idempotencyKey), body: body)
    }

    func events(lastEventId: String? = nil) async throws -> E2ESSE {
        var h = authHeaders
        if let lastEventId { h.set("Last-Event-ID", lastEventId) }
        return try await E2ESSE.open(baseURL: system.posURL, path: "/v1/terminal/events", headers: h, system: system)
    }
}

// MARK: - a phone

/// Signs device calls as the contract says: Ed25519 over METHOD \n PATH \n TIMESTAMP \n hex(SHA-256(body)).
struct E2EDeviceKey: Sendable {
    /// The raw 32-byte Ed25519 private key (the Crypto type is not Sendable).
    let raw: [UInt8]

    init() { raw = Array(Curve25519.Signing.PrivateKey().rawRepresentation) }

    var privateKey: Curve25519.Signing.PrivateKey {
        // Always valid: 32 bytes made by Crypto above.
        (try? Curve25519.Signing.PrivateKey(rawRepresentation: raw)) ?? Curve25519.Signing.PrivateKey()
    }

    var publicKeyBase64URL: String { e2eBase64URL(Array(privateKey.publicKey.rawRepresentation)) }

    func signature(method: String, path: String, timestamp: String, body: [UInt8]) -> String {
        let bodyHash = SHA256.hash(data: body).map { String(format: "%02x", $0) }.joined()
        let message = "\(method)\n\(path)\n\(timestamp)\n\(bodyHash)"
        let signature = (try? privateKey.signature(for: Array(message.utf8))).map { Array($0) } ?? []
        return e2eBase64URL(signature)
    }
}

func e2eBase64URL(_ bytes: [UInt8]) -> String {
    Data(bytes).base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
        .replacingOccurrences(of: "=", with: "")
}

final class E2EPhone: Sendable {
    let http: E2EHTTP
    let wallet: E2EWallet
    let key: E2EDeviceKey
    let system: E2ESystem
    private let enrolled = E2ELocked<String?>(nil)
    /// Signatures this phone has sent: Ed25519 is deterministic, so the same call in the same second
    /// signs the same bytes, and the gateway rightly refuses it as a replay. A retry waits for the next second.
    private let usedSignatures = E2ELocked<Set<String>>([])

    var deviceId: String? { enrolled.value }
    var accountId: String { wallet.accountId }

    init(system: E2ESystem, wallet: E2EWallet, key: E2EDeviceKey = E2EDeviceKey()) throws {
        http = try E2EHTTP(baseURL: system.phoneURL, system: system)
        self.wallet = wallet
        self.key = key
        self.system = system
    }

    @discardableResult
    func enroll(code: String? = nil, name: String = "test phone") async throws -> E2EReply {
        let body = e2eJSON([
            "enrollment_code": code ?? wallet.enrollmentCode, "public_key": key.publicKeyBase64URL, "name": name,
        ])
        let r = try await http.send("POST", "/v1/devices", headers: ["Content-Type": "application/json"], body: body)
        if r.status == 201, let id = r.string("device_id") { enrolled.withLock { $0 = id } }
        return r
    }

    /// The signature headers for one call; `timestamp`, `deviceId` and `signer` can be overridden to forge.
    func signedHeaders(
        method: String, path: String, body: [UInt8], timestamp: Int64? = nil, deviceId: String? = nil,
        signer: E2EDeviceKey? = nil
    ) -> HTTPHeaders {
        let ts = String(timestamp ?? Int64(Date().timeIntervalSince1970))
        let sig = (signer ?? key).signature(method: method, path: path, timestamp: ts, body: body)
        return ["X-Device-Id": deviceId ?? self.deviceId ?? "", "X-Timestamp": ts, "X-Signature": sig]
    }

    /// Headers with a signature this phone has not sent before (waits for the next second when needed).
    func freshSignedHeaders(
        method: String, path: String, body: [UInt8], idempotencyKey: String? = nil
    ) async throws -> HTTPHeaders {
        while true {
            // The client library's DeviceIdentity signs the normal calls (version 2, covering the
            // Idempotency-Key); `signedHeaders` (this file's own reading of the contract, version 1) signs
            // the forged ones, so both implementations and both versions meet the gateway.
            let identity = try DeviceIdentity(deviceId: deviceId ?? "", rawPrivateKey: key.raw)
            var headers = try identity.signedHeaders(method: method, path: path, body: body, idempotencyKey: idempotencyKey)
            if let idempotencyKey { headers.set("Idempotency-Key", idempotencyKey) }
            let signature = headers["X-Signature"] ?? ""
            if usedSignatures.withLock({ $0.insert(signature).inserted }) { return headers }
            try await Task.sleep(for: .milliseconds(200))
        }
    }

    func send(
        _ method: String, _ path: String, body: [UInt8] = [], idempotencyKey: String? = nil,
        extraHeaders: HTTPHeaders = HTTPHeaders(), signed: Bool = true
    ) async throws -> E2EReply {
        var headers =
            signed
            ? try await freshSignedHeaders(method: method, path: path, body: body, idempotencyKey: idempotencyKey)
            : HTTPHeaders()
        if !body.isEmpty { headers.set("Content-Type", "application/json") }
        if let idempotencyKey { headers.set("Idempotency-Key", idempotencyKey) }
        for (name, value) in extraHeaders { headers.set(name, value) }
        return try await http.send(method, path, headers: headers, body: body)
    }

    func payBody(_ payload: String, pin: String? = nil) -> [UInt8] {
        e2eJSON(["payload": payload, "pin": pin ?? wallet.pin])
    }

    func pay(_ payload: String, pin: String? = nil, idempotencyKey: String = "pay-" + e2eToken(16)) async throws -> E2EReply {
        system.noteSecret(pin ?? wallet.pin)
        return try await send("POST", "/v1/payment-instructions", body: payBody(payload, pin: pin), idempotencyKey: idempotencyKey)
    }

    func me() async throws -> E2EReply { try await send("GET", "/v1/accounts/me") }

    func events(lastEventId: String? = nil) async throws -> E2ESSE {
        var h = try await freshSignedHeaders(method: "GET", path: "/v1/devices/me/events", body: [])
        if let lastEventId { h.set("Last-Event-ID", lastEventId) }
        return try await E2ESSE.open(baseURL: system.phoneURL, path: "/v1/devices/me/events", headers: h, system: system)
    }
}

// MARK: - Server-Sent Events

func e2eCloseFD(_ fd: Int32) { _ = close(fd) }

/// One SSE stream read from a raw TCP socket on a thread of its own: the HTTP head, then (chunked or
/// not) `id:`/`event:`/`data:` lines; comment lines are counted.
final class E2ESSE: Sendable {
    struct Event: Sendable, CustomStringConvertible {
        let id: String?
        let event: String
        let data: String
        var json: JSON? { JSON.parse(Array(data.utf8)) }
        var description: String { "id=\(id ?? "-") \(event) \(data)" }
    }

    private struct State: Sendable {
        var status: Int?
        var headers: [String: String] = [:]
        var events: [Event] = []
        var comments = 0
        var ended = false
    }

    private let state = E2ELocked(State())
    private let fd: Int32

    private init(fd: Int32) { self.fd = fd }

    var events: [Event] { state.value.events }
    var status: Int? { state.value.status }
    var comments: Int { state.value.comments }
    var ended: Bool { state.value.ended }
    func header(_ name: String) -> String? { state.value.headers[name.lowercased()] }

    /// Connects, sends the GET and waits (bounded) for the response head.
    /// - Parameter record: false to leave the response out of the OpenAPI check (the caller records it).
    static func open(
        baseURL: String, path: String, headers: HTTPHeaders, system: E2ESystem, record: Bool = true
    ) async throws -> E2ESSE {
        guard let components = URLComponents(string: baseURL), let port = components.port else {
            throw E2EFailure("bad base URL \(baseURL)")
        }
        let fd = try await e2eBlocking { () throws -> Int32 in
            #if canImport(Glibc)
                let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            #else
                let fd = socket(AF_INET, SOCK_STREAM, 0)
            #endif
            guard fd >= 0 else { throw E2EFailure("socket() failed") }
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = in_port_t(UInt16(port).bigEndian)
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            let rc = withUnsafePointer(to: &address) { pointer in
                pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
            guard rc == 0 else {
                e2eCloseFD(fd)
                throw E2EFailure("cannot connect to \(baseURL)")
            }
            var request = "GET \(path) HTTP/1.1\r\nHost: 127.0.0.1:\(port)\r\nAccept: text/event-stream\r\n"
            for (name, value) in headers { request += "\(name): \(value)\r\n" }
            request += "\r\n"
            let bytes = Array(request.utf8)
            var sent = 0
            while sent < bytes.count {
                let n = bytes[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                guard n > 0 else {
                    e2eCloseFD(fd)
                    throw E2EFailure("send failed")
                }
                sent += n
            }
            return fd
        }
        let stream = E2ESSE(fd: fd)
        let thread = Thread { stream.readLoop() }
        thread.start()
        let gotHead = await e2eWait(timeout: .seconds(10), interval: .milliseconds(10)) {
            stream.status != nil || stream.ended
        }
        let status = stream.status ?? 0
        if record {
            system.record(
                E2EObservation(
                    method: "GET", path: path, status: status, contentType: stream.header("content-type"),
                    body: status == 200 ? [] : Array(stream.bodyText.utf8)))
        }
        if !gotHead { stream.close() }
        return stream
    }

    /// For a non-200 answer: the body that came with it.
    private let errorBody = E2ELocked<[UInt8]>([])
    var bodyText: String { String(decoding: errorBody.value, as: UTF8.self) }

    /// Waits until `predicate` holds for the events so far (bounded).
    @discardableResult
    func waitFor(timeout: Duration = .seconds(15), _ predicate: @escaping @Sendable ([Event]) -> Bool) async -> Bool {
        await e2eWait(timeout: timeout, interval: .milliseconds(20)) { predicate(self.events) }
    }

    /// Waits for an event of `type` about `requestId`; returns it.
    func waitForEvent(_ type: String, requestId: String, timeout: Duration = .seconds(15)) async -> Event? {
        _ = await waitFor(timeout: timeout) { events in
            events.contains { $0.event == type && $0.json?["request_id"]?.string == requestId }
        }
        return events.first { $0.event == type && $0.json?["request_id"]?.string == requestId }
    }

    func close() { shutdown(fd, Int32(SHUT_RDWR)) }

    private func readLoop() {
        var raw: [UInt8] = []
        var headDone = false
        var chunked = false
        var chunkRemaining = -1  // -1: reading a size line
        var text: [UInt8] = []  // decoded body bytes not yet parsed into lines
        var current = (id: String?.none, event: "message", data: [String]())
        var lastId: String? = nil
        var buffer = [UInt8](repeating: 0, count: 16 * 1024)
        defer {
            state.withLock { $0.ended = true }
            e2eCloseFD(fd)
        }
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { return }
            raw.append(contentsOf: buffer[0..<n])
            if !headDone {
                guard let end = findHeadEnd(raw) else { continue }
                let head = String(decoding: raw[0..<end], as: UTF8.self)
                raw.removeFirst(end + 4)
                headDone = true
                var lines = head.components(separatedBy: "\r\n")
                let statusLine = lines.removeFirst().split(separator: " ")
                var headers: [String: String] = [:]
                for line in lines {
                    guard let colon = line.firstIndex(of: ":") else { continue }
                    headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
                }
                chunked = headers["transfer-encoding"]?.lowercased().contains("chunked") ?? false
                let status = statusLine.count > 1 ? Int(statusLine[1]) ?? 0 : 0
                if status != 200 {
                    // Read the (small) error body, then report.
                    let length = Int(headers["content-length"] ?? "") ?? 0
                    var body = raw
                    while body.count < length {
                        let m = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                        if m <= 0 { break }
                        body.append(contentsOf: buffer[0..<m])
                    }
                    errorBody.withLock { $0 = Array(body.prefix(max(length, 0))) }
                }
                state.withLock {
                    $0.headers = headers
                    $0.status = status
                }
                if status != 200 { return }
            }
            // De-chunk what arrived.
            if chunked {
                while true {
                    if chunkRemaining < 0 {
                        guard let lineEnd = findCRLF(raw) else { break }
                        let sizeText = String(decoding: raw[0..<lineEnd], as: UTF8.self).split(separator: ";").first ?? ""
                        raw.removeFirst(lineEnd + 2)
                        guard let size = Int(sizeText.trimmingCharacters(in: .whitespaces), radix: 16) else { return }
                        if size == 0 { return }
                        chunkRemaining = size
                    }
                    if raw.count < chunkRemaining + 2 {
                        // Take what there is of the chunk's data; keep waiting for its end.
                        let take = min(raw.count, chunkRemaining)
                        text.append(contentsOf: raw[0..<take])
                        raw.removeFirst(take)
                        chunkRemaining -= take
                        if chunkRemaining == 0 && raw.count >= 2 {
                            raw.removeFirst(2)
                            chunkRemaining = -1
                            continue
                        }
                        break
                    }
                    text.append(contentsOf: raw[0..<chunkRemaining])
                    raw.removeFirst(chunkRemaining + 2)
                    chunkRemaining = -1
                }
            } else {
                text.append(contentsOf: raw)
                raw.removeAll()
            }
            // Lines.
            while let newline = text.firstIndex(of: UInt8(ascii: "\n")) {
                var line = String(decoding: text[0..<newline], as: UTF8.self)
                text.removeFirst(newline + 1)
                if line.hasSuffix("\r") { line.removeLast() }
                if line.isEmpty {
                    if !current.data.isEmpty {
                        if let id = current.id { lastId = id }
                        let event = Event(id: current.id ?? lastId, event: current.event, data: current.data.joined(separator: "\n"))
                        state.withLock { $0.events.append(event) }
                    }
                    current = (nil, "message", [])
                } else if line.hasPrefix(":") {
                    state.withLock { $0.comments += 1 }
                } else {
                    let (field, value) = splitField(line)
                    switch field {
                    case "id": current.id = value
                    case "event": current.event = value
                    case "data": current.data.append(value)
                    default: break
                    }
                }
            }
        }
    }

    private func splitField(_ line: String) -> (String, String) {
        guard let colon = line.firstIndex(of: ":") else { return (line, "") }
        var value = line[line.index(after: colon)...]
        if value.hasPrefix(" ") { value = value.dropFirst() }
        return (String(line[..<colon]), String(value))
    }

    private func findHeadEnd(_ bytes: [UInt8]) -> Int? {
        guard bytes.count >= 4 else { return nil }
        for i in 0...(bytes.count - 4) where bytes[i] == 13 && bytes[i + 1] == 10 && bytes[i + 2] == 13 && bytes[i + 3] == 10 {
            return i
        }
        return nil
    }

    private func findCRLF(_ bytes: [UInt8]) -> Int? {
        guard bytes.count >= 2 else { return nil }
        for i in 0...(bytes.count - 2) where bytes[i] == 13 && bytes[i + 1] == 10 { return i }
        return nil
    }
}
