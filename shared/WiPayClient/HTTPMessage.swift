import Foundation

/// HTTP header fields in order, looked up case-insensitively.
public struct HTTPHeaders: Sendable, Equatable, Sequence, ExpressibleByDictionaryLiteral {
    public private(set) var fields: [(name: String, value: String)]

    public init(_ fields: [(name: String, value: String)] = []) { self.fields = fields }

    public init(dictionaryLiteral elements: (String, String)...) {
        self.fields = elements.map { (name: $0.0, value: $0.1) }
    }

    /// The first value of `name` (any case), or nil.
    public subscript(name: String) -> String? {
        let lower = name.lowercased()
        return fields.first { $0.name.lowercased() == lower }?.value
    }

    /// Every value of `name` (any case), in order.
    public func values(_ name: String) -> [String] {
        let lower = name.lowercased()
        return fields.filter { $0.name.lowercased() == lower }.map(\.value)
    }

    public func contains(_ name: String) -> Bool { self[name] != nil }

    public mutating func add(_ name: String, _ value: String) { fields.append((name: name, value: value)) }

    /// Replaces every field called `name` with one holding `value`.
    public mutating func set(_ name: String, _ value: String) {
        remove(name)
        add(name, value)
    }

    public mutating func remove(_ name: String) {
        let lower = name.lowercased()
        fields.removeAll { $0.name.lowercased() == lower }
    }

    public func makeIterator() -> IndexingIterator<[(name: String, value: String)]> { fields.makeIterator() }

    public static func == (lhs: HTTPHeaders, rhs: HTTPHeaders) -> Bool {
        lhs.fields.count == rhs.fields.count
            && zip(lhs.fields, rhs.fields).allSatisfy { $0.name.lowercased() == $1.name.lowercased() && $0.value == $1.value }
    }
}

/// A complete HTTP response.
public struct HTTPResponse: Sendable {
    public let status: Int
    public let reason: String
    public let headers: HTTPHeaders
    public let body: [UInt8]

    public init(status: Int, reason: String = "", headers: HTTPHeaders = HTTPHeaders(), body: [UInt8] = []) {
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body
    }

    /// The body as UTF-8 text (invalid sequences repaired).
    public var text: String { String(decoding: body, as: UTF8.self) }

    /// True for 2xx.
    public var isSuccess: Bool { (200..<300).contains(status) }

    /// The body parsed as JSON; throws `HTTPClientError.malformedResponse` when it is not JSON.
    public func json() throws(HTTPClientError) -> JSON {
        do {
            return try JSONDecoder().decode(JSON.self, from: Data(body))
        } catch {
            throw HTTPClientError(.malformedResponse, "expected JSON in the body of a \(status) response")
        }
    }

    /// The body decoded as `T` (keys as they are on the wire: use `CodingKeys` for snake_case).
    public func decode<T: Decodable>(_ type: T.Type = T.self) throws(HTTPClientError) -> T {
        do {
            return try JSONDecoder().decode(T.self, from: Data(body))
        } catch {
            throw HTTPClientError(.malformedResponse, "cannot decode \(T.self) from a \(status) response: \(error)")
        }
    }

    /// The contract's error body `{"error": {"code", "message"}}`, if the body is one.
    public var apiError: APIError? {
        guard let code = (try? json())?["error"]?["code"]?.string else { return nil }
        return APIError(status: status, code: code, message: (try? json())?["error"]?["message"]?.string ?? "")
    }
}

/// An error answer from a WiPay gateway: the HTTP status plus the contract's `error.code`/`error.message`.
public struct APIError: Error, Sendable, Equatable, CustomStringConvertible {
    public let status: Int
    public let code: String
    public let message: String

    public init(status: Int, code: String, message: String) {
        self.status = status
        self.code = code
        self.message = message
    }

    /// Builds the error for a non-2xx response: from its error body, or from the status alone.
    public init(response: HTTPResponse) {
        if let error = response.apiError {
            self = error
        } else {
            let snippet = String(response.text.prefix(200))
            self.init(
                status: response.status, code: "http_\(response.status)",
                message: snippet.isEmpty ? "HTTP \(response.status) \(response.reason)" : snippet)
        }
    }

    public var description: String { "\(code) (HTTP \(status)): \(message)" }
}

/// Why an HTTP exchange failed before a complete response arrived.
public struct HTTPClientError: Error, Sendable, Equatable, CustomStringConvertible {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        let name: String
        public var description: String { name }
        public static let invalidURL = Code(name: "invalid_url")
        /// Resolving, connecting, sending or reading failed; `network` has the detail.
        public static let network = Code(name: "network")
        /// No (complete) answer within the time allowed.
        public static let timedOut = Code(name: "timed_out")
        /// The server's answer broke HTTP/1.1 framing or was not what was expected.
        public static let malformedResponse = Code(name: "malformed_response")
        /// The response (or its head) was larger than allowed.
        public static let tooLarge = Code(name: "too_large")
        /// The caller cancelled.
        public static let cancelled = Code(name: "cancelled")
    }

    public let code: Code
    public let message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    init(_ error: NetworkError) {
        switch error.code {
        case .timedOut: self.init(.timedOut, error.message)
        case .cancelled: self.init(.cancelled, error.message)
        default: self.init(.network, error.message)
        }
    }

    /// True when a retry with the same idempotency key is the right move (the request may or may not
    /// have arrived).
    public var isRetryable: Bool { code == .network || code == .timedOut }

    public var description: String { message }
}
