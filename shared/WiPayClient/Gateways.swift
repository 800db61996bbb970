import Foundation
import WiPayPayload

/// Fresh idempotency keys: 32 lowercase hex characters from the system's secure random source.
public enum IdempotencyKey {
    public static func random() -> String {
        var generator = SystemRandomNumberGenerator()
        return hexString((0..<16).map { _ in UInt8.random(in: 0...255, using: &generator) })
    }
}

/// How often and how fast to retry a request that may not have arrived (connection errors, timeouts,
/// 503). The retry sends the same request again, so it must carry the same idempotency key.
public struct RetryPolicy: Sendable {
    public var attempts: Int
    public var initialDelay: Duration
    public var maxDelay: Duration

    public init(attempts: Int = 5, initialDelay: Duration = .milliseconds(200), maxDelay: Duration = .seconds(2)) {
        self.attempts = max(1, attempts)
        self.initialDelay = initialDelay
        self.maxDelay = maxDelay
    }

    public static let none = RetryPolicy(attempts: 1)

    /// Runs `attempt` until it returns a response that is not 503, or the attempts run out. The last
    /// error (or the last 503 response) is what the caller gets.
    public func run(_ attempt: () async throws -> HTTPResponse) async throws -> HTTPResponse {
        var delay = initialDelay
        for number in 1...attempts {
            do {
                let response = try await attempt()
                if response.status != 503 || number == attempts { return response }
            } catch let error as HTTPClientError where error.isRetryable && number < attempts {
                _ = error
            }
            try await Task.sleep(for: delay)
            delay = min(delay * 2, maxDelay)
        }
        throw HTTPClientError(.network, "no attempt left")  // not reached: the last attempt returns or throws
    }
}

/// The POS terminal API of a pos-gateway (contract: "POS terminal API").
public struct POSClient: Sendable {
    public let http: HTTPClient
    private let terminalKey: String
    public var retry: RetryPolicy

    public init(baseURL: String, terminalKey: String, retry: RetryPolicy = RetryPolicy(), timeouts: HTTPClient.Timeouts = .init())
        throws(HTTPClientError)
    {
        self.http = try HTTPClient(baseURL: baseURL, timeouts: timeouts)
        self.terminalKey = terminalKey
        self.retry = retry
    }

    var authorization: HTTPHeaders { ["Authorization": "Bearer \(terminalKey)"] }

    /// `POST /v1/payment-requests`, retried with the same `idempotencyKey` on 503 and connection errors.
    public func createPaymentRequest(
        amount: Int64, currency: String, reference: String, description: String? = nil, expiresIn: Int? = nil,
        idempotencyKey: String
    ) async throws -> HTTPResponse {
        var body: [String: JSON] = ["amount": .int(amount), "currency": .string(currency), "reference": .string(reference)]
        if let description { body["description"] = .string(description) }
        if let expiresIn { body["expires_in"] = .int(Int64(expiresIn)) }
        var headers = authorization
        headers.set("Idempotency-Key", idempotencyKey)
        return try await retry.run { try await http.post("/v1/payment-requests", json: .object(body), headers: headers) }
    }

    /// `GET /v1/payment-requests/{id}`.
    public func paymentRequest(id: String) async throws -> HTTPResponse {
        try await retry.run { try await http.get("/v1/payment-requests/\(Self.pathSegment(id))", headers: authorization) }
    }

    /// `POST /v1/payment-requests/{id}/cancel`, retried with the same key.
    public func cancel(id: String, idempotencyKey: String) async throws -> HTTPResponse {
        var headers = authorization
        headers.set("Idempotency-Key", idempotencyKey)
        return try await retry.run {
            try await http.send(method: "POST", path: "/v1/payment-requests/\(Self.pathSegment(id))/cancel", headers: headers)
        }
    }

    /// `POST /v1/payments/{payment_id}/refunds`.
    public func refund(paymentId: String, amount: Int64?, idempotencyKey: String) async throws -> HTTPResponse {
        var headers = authorization
        headers.set("Idempotency-Key", idempotencyKey)
        let body: JSON = amount.map { ["amount": .int($0)] } ?? [:]
        return try await retry.run {
            try await http.post("/v1/payments/\(Self.pathSegment(paymentId))/refunds", json: body, headers: headers)
        }
    }

    /// `GET /v1/terminal/events` (SSE), resuming after `lastEventId`.
    public func events(lastEventId: String? = nil, idleTimeout: Duration = .seconds(45)) async throws
        -> ServerSentEventStream
    {
        try await http.events(path: "/v1/terminal/events", headers: authorization, lastEventId: lastEventId, idleTimeout: idleTimeout)
    }

    /// An id as one path segment: anything outside `[A-Za-z0-9_.-]` is percent-encoded.
    static func pathSegment(_ id: String) -> String {
        var allowed = CharacterSet.alphanumerics.intersection(CharacterSet(charactersIn: Unicode.Scalar(0)...Unicode.Scalar(127)))
        allowed.insert(charactersIn: "_.-")
        return id.addingPercentEncoding(withAllowedCharacters: allowed) ?? "_"
    }
}

/// The phone wallet API of a phone-gateway (contract: "Phone wallet API"). Every call but enrollment and
/// the payload keys is signed by the device.
public struct PhoneClient: Sendable {
    public let http: HTTPClient
    public let identity: DeviceIdentity?
    public var retry: RetryPolicy

    public init(
        baseURL: String, identity: DeviceIdentity? = nil, retry: RetryPolicy = RetryPolicy(),
        timeouts: HTTPClient.Timeouts = .init()
    ) throws(HTTPClientError) {
        self.http = try HTTPClient(baseURL: baseURL, timeouts: timeouts)
        self.identity = identity
        self.retry = retry
    }

    /// `POST /v1/devices`: enrolls `publicKey` (base64url raw 32 bytes) with a one-time code. Not retried
    /// (an enrollment code works once): on a connection error, ask the operator for a new code.
    public func enroll(code: String, publicKey: String, name: String) async throws -> HTTPResponse {
        try await http.post(
            "/v1/devices", json: ["enrollment_code": .string(code), "public_key": .string(publicKey), "name": .string(name)])
    }

    /// `GET /v1/payload-keys` (public): key id → raw public key. Throws `APIError` on a non-200 answer.
    public func payloadKeys() async throws -> [String: [UInt8]] {
        let response = try await retry.run { try await http.get("/v1/payload-keys") }
        guard response.status == 200 else { throw APIError(response: response) }
        return PayloadKeySet.parse(try response.json())
    }

    private func device() throws -> DeviceIdentity {
        guard let identity else { throw HTTPClientError(.invalidURL, "this call needs an enrolled device") }
        return identity
    }

    /// `POST /v1/payment-instructions`, signed, retried with the same `idempotencyKey` on 503 and
    /// connection errors (each attempt signed afresh).
    public func pay(payload: String, pin: String, idempotencyKey: String) async throws -> HTTPResponse {
        let identity = try device()
        let body = JSON.object(["payload": .string(payload), "pin": .string(pin)]).bytes
        return try await retry.run {
            try await http.sendSigned(
                identity, method: "POST", path: "/v1/payment-instructions", headers: ["Idempotency-Key": idempotencyKey],
                body: body)
        }
    }

    /// `GET /v1/accounts/me`, signed.
    public func account() async throws -> HTTPResponse {
        let identity = try device()
        return try await retry.run { try await http.sendSigned(identity, method: "GET", path: "/v1/accounts/me") }
    }

    /// `GET /v1/devices/me/events` (SSE), signed, resuming after `lastEventId`.
    public func events(lastEventId: String? = nil, idleTimeout: Duration = .seconds(45)) async throws
        -> ServerSentEventStream
    {
        try await http.signedEvents(try device(), path: "/v1/devices/me/events", lastEventId: lastEventId, idleTimeout: idleTimeout)
    }
}
