import Crypto
import HTTPTypes
import Hummingbird
import Metrics
import WiPayBus

/// An HTTP error answer: always `{"error": {"code", "message"}}` with a fitting status.
public struct GatewayError: Error, Sendable, Equatable, CustomStringConvertible {
    public var status: HTTPResponse.Status
    public var code: String
    public var message: String
    /// Extra headers (`WWW-Authenticate` on 401).
    public var headers: HTTPFields

    public init(_ status: HTTPResponse.Status, _ code: String, _ message: String, headers: HTTPFields = [:]) {
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers
    }

    public var description: String { "\(status.code) \(code): \(message)" }

    public static func badRequest(_ code: String, _ message: String) -> GatewayError { GatewayError(.badRequest, code, message) }

    public static func invalidField(_ field: String, _ message: String) -> GatewayError {
        GatewayError(.badRequest, "invalid_field", "\(field): \(message)")
    }

    public static let stageUnavailable = GatewayError(
        .serviceUnavailable, "stage_unavailable", "a payment stage is unavailable; retry with the same Idempotency-Key")

    public static let notFound = GatewayError(.notFound, "not_found", "no such resource")

    /// The JSON body of this error.
    public var body: JSONValue {
        .obj(["error": .obj(["code": .string(code), "message": .string(message)])])
    }
}

/// Building responses.
public enum GatewayResponse {
    public static let idempotencyKey = HTTPField.Name("Idempotency-Key")!
    public static let lastEventId = HTTPField.Name("Last-Event-ID")!

    public static func json(_ status: HTTPResponse.Status, _ value: JSONValue, headers extra: HTTPFields = [:]) -> Response {
        var headers: HTTPFields = [.contentType: "application/json", .cacheControl: "no-store"]
        headers.append(contentsOf: extra)
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(string: value.serialized)))
    }

    public static func error(_ error: GatewayError) -> Response {
        json(error.status, error.body, headers: error.headers)
    }

    /// Runs a handler that throws `GatewayError`s and turns each into its JSON answer. Anything else
    /// thrown becomes a 500 `internal_error` (never a crash, never a stack trace to the client).
    public static func handle(_ body: () async throws -> Response) async -> Response {
        do {
            return try await body()
        } catch let error as GatewayError {
            return self.error(error)
        } catch {
            return self.error(GatewayError(.internalServerError, "internal_error", "unexpected error"))
        }
    }
}

/// Reading a request: the raw body with a size limit, the idempotency key, the body hash.
public enum GatewayRequest {
    /// Bodies above this are refused with 413 `body_too_large`.
    public static let maxBodyBytes = 64 * 1024

    /// The raw body bytes, collected up to `limit` (413 beyond it: a limit on everything).
    public static func body(_ request: Request, limit: Int = maxBodyBytes) async throws(GatewayError) -> [UInt8] {
        let tooLarge = GatewayError(.contentTooLarge, "body_too_large", "the body is larger than \(limit) bytes")
        if let declared = request.headers[.contentLength], let length = Int(declared), length > limit { throw tooLarge }
        var bytes: [UInt8] = []
        do {
            for try await buffer in request.body {
                guard bytes.count + buffer.readableBytes <= limit else { throw tooLarge }
                bytes.append(contentsOf: buffer.readableBytesView)
            }
        } catch let error as GatewayError {
            throw error
        } catch {
            throw GatewayError.badRequest("invalid_body", "the request body could not be read")
        }
        return bytes
    }

    /// The `Idempotency-Key` header: required; 1–255 visible ASCII characters.
    public static func idempotencyKey(_ request: Request) throws(GatewayError) -> String {
        guard let key = request.headers[GatewayResponse.idempotencyKey] else {
            throw GatewayError.badRequest("idempotency_key_missing", "this request needs an Idempotency-Key header")
        }
        guard isValidIdempotencyKey(key) else {
            throw GatewayError.badRequest("idempotency_key_invalid", "an Idempotency-Key is 1 to 255 visible ASCII characters")
        }
        return key
    }

    public static func isValidIdempotencyKey(_ key: String) -> Bool {
        let utf8 = key.utf8
        return (1...255).contains(utf8.count) && utf8.allSatisfy { (0x21...0x7E).contains($0) }
    }

    /// Lowercase hex SHA-256 of the raw body bytes.
    public static func bodyHash(_ bytes: [UInt8]) -> String { Hex.sha256(bytes) }
}

/// Lowercase hex and SHA-256.
public enum Hex {
    private static let digits = Array("0123456789abcdef".utf8)

    public static func encode<Bytes: Sequence>(_ bytes: Bytes) -> String where Bytes.Element == UInt8 {
        var out: [UInt8] = []
        out.reserveCapacity(64)
        for byte in bytes {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 0xF)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    public static func sha256(_ bytes: [UInt8]) -> String { encode(SHA256.hash(data: bytes)) }
    public static func sha256(_ text: String) -> String { sha256(Array(text.utf8)) }
}


/// RFC 3339 UTC timestamps from unix milliseconds (`2025-01-31T09:05:03.042Z`).
public enum RFC3339 {
    public static func string(millis: Int64) -> String {
        let seconds = millis >= 0 ? millis / 1000 : (millis - 999) / 1000
        let ms = Int(millis - seconds * 1000)
        var days = seconds >= 0 ? seconds / 86_400 : (seconds - 86_399) / 86_400
        let secondOfDay = Int(seconds - days * 86_400)
        // Civil from days (Howard Hinnant's algorithm).
        days += 719_468
        let era = (days >= 0 ? days : days - 146_096) / 146_097
        let dayOfEra = days - era * 146_097
        let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36_524 - dayOfEra / 146_096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
        let mp = (5 * dayOfYear + 2) / 153
        let day = dayOfYear - (153 * mp + 2) / 5 + 1
        let month = mp < 10 ? mp + 3 : mp - 9
        let year = yearOfEra + era * 400 + (month <= 2 ? 1 : 0)
        func pad(_ value: Int64, _ width: Int) -> String {
            let text = String(value)
            return text.count >= width ? text : String(repeating: "0", count: width - text.count) + text
        }
        return "\(pad(year, 4))-\(pad(month, 2))-\(pad(day, 2))T\(pad(Int64(secondOfDay / 3600), 2)):"
            + "\(pad(Int64(secondOfDay / 60 % 60), 2)):\(pad(Int64(secondOfDay % 60), 2)).\(pad(Int64(ms), 3))Z"
    }

    /// Unix milliseconds of an RFC 3339 date-time (`2025-01-31T09:05:03Z`, `…03.042+08:00`; `T`/`Z` in any
    /// case), or nil when it is not one (a real calendar day of years 0000-9999; leap seconds refused).
    /// Before 1970 it is negative.
    public static func millis(_ text: String) -> Int64? {
        let c = Array(text.utf8)
        guard (20...35).contains(c.count) else { return nil }
        func number(_ from: Int, _ count: Int) -> Int64? {
            guard from + count <= c.count else { return nil }
            var n: Int64 = 0
            for b in c[from..<(from + count)] {
                guard b >= 0x30, b <= 0x39 else { return nil }
                n = n * 10 + Int64(b - 0x30)
            }
            return n
        }
        guard let year = number(0, 4), c[4] == 0x2D, let month = number(5, 2), c[7] == 0x2D, let day = number(8, 2),
            c[10] == 0x54 || c[10] == 0x74, let hour = number(11, 2), c[13] == 0x3A, let minute = number(14, 2),
            c[16] == 0x3A, let second = number(17, 2)
        else { return nil }
        var i = 19
        var fraction: Int64 = 0
        if i < c.count, c[i] == 0x2E {
            i += 1
            var digits = 0
            while i < c.count, c[i] >= 0x30, c[i] <= 0x39 {
                if digits < 3 { fraction = fraction * 10 + Int64(c[i] - 0x30) }
                digits += 1
                i += 1
            }
            guard (1...9).contains(digits) else { return nil }
            if digits < 3 { for _ in digits..<3 { fraction *= 10 } }
        }
        var offsetMinutes: Int64 = 0
        guard i < c.count else { return nil }
        if c[i] == 0x5A || c[i] == 0x7A {
            i += 1
        } else if c[i] == 0x2B || c[i] == 0x2D, let oh = number(i + 1, 2), i + 3 < c.count, c[i + 3] == 0x3A,
            let om = number(i + 4, 2), oh < 24, om < 60
        {
            offsetMinutes = (oh * 60 + om) * (c[i] == 0x2D ? -1 : 1)
            i += 6
        } else {
            return nil
        }
        guard i == c.count, (1...12).contains(month), hour < 24, minute < 60, second < 60
        else { return nil }
        let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
        let monthDays: [Int64] = [31, leap ? 29 : 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
        guard day >= 1, day <= monthDays[Int(month - 1)] else { return nil }
        // Days from civil (Howard Hinnant's algorithm).
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yearOfEra = y - era * 400
        let mp = month > 2 ? month - 3 : month + 9
        let dayOfYear = (153 * mp + 2) / 5 + day - 1
        let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
        let days = era * 146_097 + dayOfEra - 719_468
        let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offsetMinutes * 60
        return seconds * 1000 + fraction
    }
}

/// Counts every answered request by route, method and status (`wipay.gateway.requests`).
public struct GatewayMetricsMiddleware<Context: RequestContext>: RouterMiddleware {
    private let counters = Locked<[String: Counter]>([:])
    private let service: String

    public init(service: String) { self.service = service }

    public func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws
        -> Response
    {
        let response: Response
        do {
            response = try await next(request, context)
        } catch {
            let status = (error as? any HTTPResponseError)?.status ?? .internalServerError
            count(route: context.endpointPath ?? "unmatched", method: request.method, status: status)
            throw error
        }
        count(route: context.endpointPath ?? "unmatched", method: request.method, status: response.status)
        return response
    }

    private func count(route: String, method: HTTPRequest.Method, status: HTTPResponse.Status) {
        let key = "\(method.rawValue) \(route) \(status.code)"
        let counter = counters.withLock { cache -> Counter in
            if let found = cache[key] { return found }
            let made = Counter(
                label: "wipay.gateway.requests",
                dimensions: [("service", service), ("route", route), ("method", method.rawValue), ("status", String(status.code))])
            // Routes are a fixed set and statuses few, so this cache stays small; bound it anyway.
            if cache.count < 4096 { cache[key] = made }
            return made
        }
        counter.increment()
    }
}
