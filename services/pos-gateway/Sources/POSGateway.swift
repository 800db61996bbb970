import Hummingbird
import Logging
import WiPayBus
import WiPayGateway
import WiPayPages
import WiPayPayload
import WiPayRuntime

/// The pos-gateway: the HTTP edge for terminals (bearer terminal keys). Creates, reads and cancels
/// payment requests and refunds through the payment-router, and streams the terminal's events (SSE).
/// Routes: docs/openapi.yaml (tag `pos`).
public final class POSGateway: Sendable {
    public static let defaultPort = 8080
    static let allowedCreateFields: Set<String> = ["amount", "currency", "reference", "description", "expires_in"]

    let caller: StageCaller
    let hub: NoticeHub
    let logger: Logger
    /// Terminal key hash → terminal (positive answers only, 30 s).
    let terminals = TTLCache<String, TerminalInfo>(capacity: 100_000, ttl: .seconds(30))
    /// Requests per terminal and, for credentials that fail, per client address (none when nil).
    let limits: GatewayRateLimits

    public init(caller: StageCaller, hub: NoticeHub, logger: Logger, limits: GatewayRateLimits? = nil) {
        self.caller = caller
        self.hub = hub
        self.logger = logger
        self.limits = limits ?? .disabled(logger: logger)
    }

    // MARK: routes

    public func addRoutes(to router: Router<BasicRequestContext>, service: String) {
        router.addGatewayBasics(service: service, api: .pos)
        router.add(middleware: limits.middleware())  // after the basics: /openapi.yaml is never limited
        router.post("v1/payment-requests") { request, _ in
            await GatewayResponse.handle { try await self.create(request) }
        }
        router.get("v1/payment-requests") { request, _ in
            await GatewayResponse.handle { try await self.list(request) }
        }
        router.get("v1/payment-requests/:id") { request, context in
            await GatewayResponse.handle { try await self.get(request, id: context.parameters.get("id") ?? "") }
        }
        router.get("v1/payment-requests/:id/qr.svg") { request, context in
            await GatewayResponse.handle { try await self.qrCode(request, id: context.parameters.get("id") ?? "") }
        }
        router.post("v1/payment-requests/:id/cancel") { request, context in
            await GatewayResponse.handle { try await self.cancel(request, id: context.parameters.get("id") ?? "") }
        }
        router.post("v1/payments/:payment_id/refunds") { request, context in
            await GatewayResponse.handle { try await self.refund(request, paymentId: context.parameters.get("payment_id") ?? "") }
        }
        router.get("v1/terminal/events") { request, _ in
            await GatewayResponse.handle {
                let terminal = try await self.authenticate(request)
                return try await self.hub.streamResponse(recipient: "pos:\(terminal.terminalId)", request: request)
            }
        }
    }

    // MARK: authentication

    static let challenge: HTTPFields = [.wwwAuthenticate: "Bearer realm=\"wipay-pos\""]

    static func unauthorized(_ message: String) -> GatewayError {
        GatewayError(.unauthorized, "unauthorized", message, headers: challenge)
    }

    /// `Authorization: Bearer <terminal key>` → the terminal (the key is never logged; only its hash is sent).
    func authenticate(_ request: Request) async throws(GatewayError) -> TerminalInfo {
        guard let header = request.headers[.authorization] else { throw Self.unauthorized("an Authorization: Bearer header is required") }
        let parts = header.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: true)
        guard parts.count == 2, parts[0].lowercased() == "bearer" else { throw Self.unauthorized("use Authorization: Bearer <terminal key>") }
        let key = String(parts[1].drop { $0 == " " })
        guard (1...256).contains(key.utf8.count), key.utf8.allSatisfy({ (0x21...0x7E).contains($0) }) else {
            throw Self.unauthorized("the terminal key is not valid")
        }
        let hash = Hex.sha256(key)
        if let cached = terminals.get(hash) { return try admitted(cached) }
        let reply = try await caller.send(.terminalAuth, TerminalAuth(keyHash: hash))
        switch reply.envelope.status {
        case .ok, .exists:
            guard let info = try? TerminalInfo.decode(reply.body) else { throw GatewayError.stageUnavailable }
            terminals.set(hash, info)
            return try admitted(info)
        case .notFound, .badRequest:
            throw Self.unauthorized("unknown terminal key")
        default:
            throw StageCaller.httpError(status: reply.envelope.status, body: reply.body, logger: logger, type: .terminalAuth)
        }
    }

    /// The terminal's rate limit, right after authentication: 429 `rate_limited` (nothing done) when it is spent.
    func admitted(_ terminal: TerminalInfo) throws(GatewayError) -> TerminalInfo {
        try limits.admit(.terminal, terminal.terminalId)
        return terminal
    }

    // MARK: payment requests

    func create(_ request: Request) async throws(GatewayError) -> Response {
        let terminal = try await authenticate(request)
        let key = try GatewayRequest.idempotencyKey(request)
        let bytes = try await GatewayRequest.body(request)
        let body = try JSONBody.parse(bytes, allowed: Self.allowedCreateFields)
        let amount = try Validate.amount("amount", try body.int64("amount"))
        let currency = try body.string("currency")
        guard Currency.isKnown(currency) else {
            throw GatewayError.invalidField("currency", "must be a known ISO 4217 alphabetic code like \"CNY\"")
        }
        let reference = try Validate.text("reference", try body.string("reference"), characters: 1...64)
        guard reference.utf8.count <= 64 else { throw GatewayError.invalidField("reference", "must be at most 64 bytes in UTF-8") }
        var description: String? = nil
        if let text = try body.optionalString("description") {
            description = try Validate.text("description", text, characters: 0...256)
            guard text.utf8.count <= 256 else { throw GatewayError.invalidField("description", "must be at most 256 bytes in UTF-8") }
        }
        let expiresIn = try body.optionalInt64("expires_in") ?? 120
        guard (10...900).contains(expiresIn) else { throw GatewayError.invalidField("expires_in", "must be 10 to 900 seconds") }
        let (_, info) = try await caller.call(
            .requestCreate,
            RequestCreate(
                idempotencyKey: key, bodyHash: GatewayRequest.bodyHash(bytes), terminalId: terminal.terminalId,
                merchantId: terminal.merchantId, amountMinor: amount, currency: currency, reference: reference,
                description: description, expiresInSeconds: expiresIn),
            as: PaymentRequestInfo.self)
        return GatewayResponse.json(.created, Self.render(info))
    }

    static let defaultListLimit: Int64 = 50

    /// `GET /v1/payment-requests?since=RFC3339&limit=N`: this terminal's requests created since then (default:
    /// the last 24 hours), newest first, at most `limit` (1-200, default 50).
    func list(_ request: Request) async throws(GatewayError) -> Response {
        let terminal = try await authenticate(request)
        let query = request.uri.queryParameters
        var since = unixMillis() - 86_400_000
        if let text = query.get("since") {
            guard let millis = RFC3339.millis(String(text)) else {
                throw GatewayError.invalidField("since", "must be an RFC 3339 date-time such as 2025-01-31T00:00:00Z")
            }
            since = max(0, millis)  // nothing is older than 1970
        }
        var limit = Self.defaultListLimit
        if let text = query.get("limit") {
            guard text.utf8.count <= 3, let n = Int64(String(text)), (1...Int64(RequestList.maxLimit)).contains(n) else {
                throw GatewayError.invalidField("limit", "must be a whole number from 1 to \(RequestList.maxLimit)")
            }
            limit = n
        }
        let (_, page) = try await caller.call(
            .requestList,
            RequestList(terminalId: terminal.terminalId, merchantId: terminal.merchantId, sinceMillis: since, limit: limit),
            as: PaymentRequestPage.self)
        return GatewayResponse.json(
            .ok,
            .obj([
                "requests": .array(page.requests.map(Self.render)), "count": .int(Int64(page.requests.count)),
                "since": .string(RFC3339.string(millis: since)),
            ]))
    }

    func get(_ request: Request, id: String) async throws(GatewayError) -> Response {
        let terminal = try await authenticate(request)
        guard Validate.isPlausibleId(id) else { throw Self.requestNotFound(id) }
        let (_, info) = try await caller.call(
            .requestGet, RequestRef(requestId: id, merchantId: terminal.merchantId), as: PaymentRequestInfo.self)
        return GatewayResponse.json(.ok, Self.render(info))
    }

    /// The request's payload as a QR code (SVG), for the counter page. The same authentication and the same
    /// 404 as `get`; the image holds only the public payload.
    func qrCode(_ request: Request, id: String) async throws(GatewayError) -> Response {
        let terminal = try await authenticate(request)
        guard Validate.isPlausibleId(id) else { throw Self.requestNotFound(id) }
        let (_, info) = try await caller.call(
            .requestGet, RequestRef(requestId: id, merchantId: terminal.merchantId), as: PaymentRequestInfo.self)
        guard let code = try? QRCode(text: info.payload) else {
            throw GatewayError(.internalServerError, "internal_error", "the payload does not fit in a QR code")
        }
        var headers = BrowserPages.securityHeaders
        headers[.contentType] = "image/svg+xml"
        headers[.cacheControl] = "private, max-age=300"
        return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(string: code.svg())))
    }

    func cancel(_ request: Request, id: String) async throws(GatewayError) -> Response {
        let terminal = try await authenticate(request)
        let key = try GatewayRequest.idempotencyKey(request)
        _ = try JSONBody.parse(try await GatewayRequest.body(request), allowed: [], emptyIsObject: true)
        guard Validate.isPlausibleId(id) else { throw Self.requestNotFound(id) }
        let (_, info) = try await caller.call(
            .requestCancel, RequestRef(requestId: id, merchantId: terminal.merchantId, idempotencyKey: key),
            as: PaymentRequestInfo.self)
        return GatewayResponse.json(.ok, Self.render(info))
    }

    static func requestNotFound(_ id: String) -> GatewayError {
        GatewayError(.notFound, "request_not_found", "no payment request with this id")
    }

    /// The public payment request object.
    static func render(_ info: PaymentRequestInfo) -> JSONValue {
        var object = JSONObject([
            ("id", .string(info.requestId)),
            ("status", .string(info.status.name)),
            ("amount", .int(info.amountMinor)),
            ("currency", .string(info.currency)),
            ("reference", .string(info.reference)),
            ("description", .optional(info.description)),
            ("merchant", .obj(["id": .string(info.merchantId), "name": .string(info.merchantName)])),
            ("terminal_id", .string(info.terminalId)),
            ("created_at", .string(RFC3339.string(millis: info.createdAtMillis))),
            ("expires_at", .string(RFC3339.string(millis: info.expiresAtMillis))),
            ("payload", .string(info.payload)),
            ("declined_attempts", .int(info.declinedAttempts)),
        ])
        if info.status == .declined, let code = info.declineCode { object["decline_code"] = .string(code) }
        if info.status == .succeeded, let paymentId = info.paymentId {
            object["payment"] = .obj([
                "id": .string(paymentId),
                "posted_at": .string(RFC3339.string(millis: info.postedAtMillis ?? info.createdAtMillis)),
                "payer": .string(info.payerAlias ?? "***"),
            ])
        }
        return .object(object)
    }

    // MARK: refunds

    func refund(_ request: Request, paymentId: String) async throws(GatewayError) -> Response {
        let terminal = try await authenticate(request)
        let key = try GatewayRequest.idempotencyKey(request)
        let bytes = try await GatewayRequest.body(request)
        let body = try JSONBody.parse(bytes, allowed: ["amount"], emptyIsObject: true)
        let amount = try body.optionalInt64("amount").map { (value: Int64) throws(GatewayError) -> Int64 in
            try Validate.amount("amount", value)
        }
        guard Validate.isPlausibleId(paymentId) else {
            throw GatewayError(.notFound, "payment_not_found", "no payment with this id")
        }
        let (_, info) = try await caller.call(
            .refundCreate,
            RefundCreate(
                idempotencyKey: key, bodyHash: GatewayRequest.bodyHash(bytes), merchantId: terminal.merchantId,
                paymentId: paymentId, amountMinor: amount),
            as: RefundInfo.self)
        return GatewayResponse.json(
            .created,
            .obj([
                "id": .string(info.refundId), "payment_id": .string(info.paymentId), "amount": .int(info.amountMinor),
                "currency": .string(info.currency), "status": .string(info.status),
            ]))
    }
}

/// Wiring for `main` and the tests.
public enum POSGatewayStage {
    public static let defaultPort = POSGateway.defaultPort

    public static func run(config: RuntimeConfig) async throws {
        let runtime = try Runtime(config: config)
        let client = try runtime.client()
        let caller = StageCaller(client: client, logger: runtime.logger)
        let hub = try NoticeHub.make(runtime: runtime, kind: "pos", caller: caller)
        let limits = try GatewayRateLimits.load(
            config.values, kinds: [.terminal, .address], service: config.service, logger: runtime.logger)
        let gateway = POSGateway(caller: caller, hub: hub, logger: runtime.logger, limits: limits)
        try await runtime.run(
            services: [hub],
            http: { router in gateway.addRoutes(to: router, service: config.service) },
            healthCheck: {
                do {
                    _ = try await client.send(
                        service: "bus", type: .ping, body: Empty().encoded(), attemptTimeout: .milliseconds(500),
                        totalTimeout: .milliseconds(900))
                    return (true, "event streams \(hub.openStreams)")
                } catch {
                    return (false, "bus unreachable: \(error)")
                }
            })
    }
}
