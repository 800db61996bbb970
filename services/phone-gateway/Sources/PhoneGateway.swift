import Crypto
import Foundation
import Hummingbird
import Logging
import WiPayBus
import WiPayGateway
import WiPayPayload
import WiPayRuntime

/// The phone-gateway: the HTTP edge for phones. Enrolls devices, checks every other call's Ed25519
/// device signature (timestamp window, replayed signatures), forwards payment instructions to the
/// payment-router, and streams the device's events (SSE). Routes: docs/openapi.yaml (tag `phone`).
public final class PhoneGateway: Sendable {
    public static let defaultPort = 8090

    /// A device as the gateway needs it: its wallet and its public key.
    struct Device: Sendable {
        let info: DeviceInfo
    }

    let caller: StageCaller
    let hub: NoticeHub
    let logger: Logger
    let verifier = SignatureVerifier()
    /// device id → device (30 s).
    let devices = TTLCache<String, Device>(capacity: 100_000, ttl: .seconds(30))
    /// Requests per device and, for enrollments and credentials that fail, per client address (none when nil).
    let limits: GatewayRateLimits

    public init(caller: StageCaller, hub: NoticeHub, logger: Logger, limits: GatewayRateLimits? = nil) {
        self.caller = caller
        self.hub = hub
        self.logger = logger
        self.limits = limits ?? .disabled(logger: logger)
    }

    // MARK: routes

    public func addRoutes(to router: Router<BasicRequestContext>, service: String) {
        router.addGatewayBasics(service: service, api: .phone)
        // After the basics: /openapi.yaml is never limited. Enrollment is limited per client address.
        router.add(middleware: limits.middleware(unauthenticated: ["POST /v1/devices"]))
        router.post("v1/devices") { request, _ in
            await GatewayResponse.handle { try await self.enroll(request) }
        }
        router.get("v1/payload-keys") { _, _ in
            await GatewayResponse.handle { try await self.payloadKeys() }
        }
        router.post("v1/payment-instructions") { request, _ in
            await GatewayResponse.handle { try await self.instruct(request) }
        }
        router.get("v1/accounts/me") { request, _ in
            await GatewayResponse.handle { try await self.account(request) }
        }
        router.get("v1/devices/me/events") { request, _ in
            await GatewayResponse.handle {
                let (device, _) = try await self.authenticate(request)
                return try await self.hub.streamResponse(recipient: "dev:\(device.info.deviceId)", request: request)
            }
        }
    }

    // MARK: enrollment and keys

    func enroll(_ request: Request) async throws(GatewayError) -> Response {
        let body = try JSONBody.parse(
            try await GatewayRequest.body(request), allowed: ["enrollment_code", "public_key", "name"])
        let code = try body.string("enrollment_code")
        guard (1...64).contains(code.utf8.count) else {
            throw GatewayError.invalidField("enrollment_code", "must be an enrollment code like ABCD-EFGH-JKLM")
        }
        guard let key = Base64URL.decode(try body.string("public_key")), key.count == 32,
            (try? Curve25519.Signing.PublicKey(rawRepresentation: key)) != nil
        else {
            throw GatewayError.invalidField("public_key", "must be a raw 32-byte Ed25519 public key, base64url without padding")
        }
        let name = try Validate.text("name", try body.string("name"), characters: 1...100)
        let (_, info) = try await caller.call(
            .deviceEnroll, DeviceEnroll(enrollmentCode: code, publicKey: key, name: name), as: DeviceInfo.self)
        logger.info("device enrolled", metadata: ["device.id": "\(info.deviceId)", "account.id": "\(info.accountId)"])
        return GatewayResponse.json(.created, .obj(["device_id": .string(info.deviceId), "account_id": .string(info.accountId)]))
    }

    func payloadKeys() async throws(GatewayError) -> Response {
        let (_, keys) = try await caller.call(.payloadKeys, Empty(), as: PayloadKeys.self)
        let list: [JSONValue] = keys.keys.map {
            .obj(["key_id": .string($0.keyId), "public_key": .string(Base64URL.encode($0.publicKey))])
        }
        return GatewayResponse.json(.ok, .obj(["keys": .array(list)]))
    }

    // MARK: signed calls

    static let deviceIdHeader = DeviceSignature.deviceIdHeader
    static let timestampHeader = DeviceSignature.timestampHeader
    static let signatureHeader = DeviceSignature.signatureHeader

    /// Checks the device signature of `request` and returns the device and the raw body (read once,
    /// with the size limit). Never logs the signature.
    func authenticate(_ request: Request) async throws(GatewayError) -> (Device, [UInt8]) {
        let (device, body, _) = try await authenticateSigned(request)
        return (device, body)
    }

    /// `authenticate`, also returning what the router needs to tell a resend from a replay.
    func authenticateSigned(_ request: Request) async throws(GatewayError) -> (Device, [UInt8], VerifiedSignature) {
        guard let deviceId = request.headers[Self.deviceIdHeader], let timestamp = request.headers[Self.timestampHeader],
            let signature = request.headers[Self.signatureHeader]
        else {
            throw GatewayError(.unauthorized, "unauthorized", "signed calls need X-Device-Id, X-Timestamp and X-Signature")
        }
        // The cheap checks first: a stale timestamp needs no device lookup.
        guard let time = Int64(timestamp), abs(Int64(Date().timeIntervalSince1970) - time) <= DeviceSignature.window else {
            throw GatewayError(.unauthorized, "stale_timestamp", "X-Timestamp is more than \(DeviceSignature.window) s off")
        }
        let device = try await lookup(deviceId)
        let body = try await GatewayRequest.body(request)
        let path = request.head.path ?? request.uri.description
        guard let version = DeviceSignature.Version(header: request.headers[DeviceSignature.versionHeader]) else {
            throw GatewayError(.unauthorized, "invalid_signature", "X-Signature-Version must be 1 or 2")
        }
        switch verifier.check(
            publicKey: device.info.publicKey, method: request.method.rawValue, path: path, timestamp: timestamp, signature: signature,
            body: body, version: version, idempotencyKey: request.headers[GatewayResponse.idempotencyKey])
        {
        case .success(let verified):
            try admit(device)
            return (device, body, verified)
        case .failure(let error):
            logger.info("device signature refused", metadata: ["device.id": "\(deviceId)", "code": "\(error.code)"])
            throw error
        }
    }

    /// The device's rate limit, once its signature is verified (so forged calls cannot spend another device's
    /// tokens): 429 `rate_limited` (nothing done) when it is spent.
    func admit(_ device: Device) throws(GatewayError) {
        try limits.admit(.device, device.info.deviceId)
    }

    func lookup(_ deviceId: String) async throws(GatewayError) -> Device {
        let unknown = GatewayError(.unauthorized, "unauthorized", "unknown device")
        guard Validate.isPlausibleId(deviceId) else { throw unknown }
        if let cached = devices.get(deviceId) { return cached }
        let reply = try await caller.send(.deviceGet, DeviceRef(deviceId: deviceId))
        switch reply.envelope.status {
        case .ok, .exists:
            guard let info = try? DeviceInfo.decode(reply.body), info.publicKey.count == 32 else {
                throw GatewayError.stageUnavailable
            }
            let device = Device(info: info)
            devices.set(deviceId, device)
            return device
        case .notFound, .badRequest:
            throw unknown
        default:
            throw StageCaller.httpError(status: reply.envelope.status, body: reply.body, logger: logger, type: .deviceGet)
        }
    }

    /// A PIN is 4 to 6 ASCII digits.
    public static func isValidPin(_ pin: String) -> Bool {
        (4...6).contains(pin.utf8.count) && pin.utf8.allSatisfy { $0 >= 0x30 && $0 <= 0x39 }
    }

    func instruct(_ request: Request) async throws(GatewayError) -> Response {
        let (device, bytes, signed) = try await authenticateSigned(request)
        let key = try GatewayRequest.idempotencyKey(request)
        let body = try JSONBody.parse(bytes, allowed: ["payload", "pin"])
        let payload = try body.string("payload")
        guard (1...2048).contains(payload.utf8.count) else {
            throw GatewayError.invalidField("payload", "must be the payload string from the terminal (at most 2048 bytes)")
        }
        let pin = try body.string("pin")
        guard Self.isValidPin(pin) else { throw GatewayError.badRequest("invalid_pin_format", "a PIN is 4 to 6 digits") }
        let reply = try await caller.send(
            .instructionSubmit,
            InstructionSubmit(
                idempotencyKey: key, bodyHash: GatewayRequest.bodyHash(bytes), deviceId: device.info.deviceId,
                accountId: device.info.accountId, payload: payload, pin: pin, signatureDigest: signed.digest))
        let status = reply.envelope.status
        if status.isSuccess || status == .declined, let result = try? InstructionResult.decode(reply.body) {
            return Self.render(result)
        }
        if status == .declined, let error = try? ErrorBody.decode(reply.body) {
            return Self.declined(code: error.code, message: error.message, requestId: nil)
        }
        if status.isSuccess {
            logger.error("undecodable instruction result", metadata: ["device.id": "\(device.info.deviceId)"])
            throw GatewayError(.badGateway, "bad_gateway", "a payment stage gave an answer the gateway cannot read")
        }
        throw StageCaller.httpError(status: status, body: reply.body, logger: logger, type: .instructionSubmit)
    }

    static func render(_ result: InstructionResult) -> Response {
        guard result.status == .succeeded, let paymentId = result.paymentId else {
            return declined(
                code: result.errorCode ?? "declined", message: result.errorMessage ?? "the payment was declined",
                requestId: result.requestId)
        }
        return GatewayResponse.json(
            .ok,
            .obj([
                "status": "succeeded", "payment_id": .string(paymentId), "request_id": .string(result.requestId),
                "amount": .int(result.amountMinor), "currency": .string(result.currency),
                "merchant": .obj(["id": .string(result.merchantId), "name": .string(result.merchantName)]),
                "balance": .optional(result.balance),
            ]))
    }

    static func declined(code: String, message: String, requestId: String?) -> Response {
        var object = JSONObject([
            ("status", "declined"), ("error", .obj(["code": .string(code), "message": .string(message)])),
        ])
        if let requestId, !requestId.isEmpty { object["request_id"] = .string(requestId) }
        return GatewayResponse.json(.unprocessableContent, .object(object))
    }

    func account(_ request: Request) async throws(GatewayError) -> Response {
        let (device, _) = try await authenticate(request)
        let (_, summary) = try await caller.call(
            .accountSummary, AccountRef(accountId: device.info.accountId), as: AccountSummary.self)
        let recent: [JSONValue] = summary.recent.map { p in
            .obj([
                "payment_id": .string(p.paymentId), "request_id": .string(p.requestId), "amount": .int(p.amountMinor),
                "currency": .string(p.currency), "merchant": .obj(["id": .string(p.merchantId), "name": .string(p.merchantName)]),
                "refunded": .int(p.refundedMinor), "posted_at": .string(RFC3339.string(millis: p.postedAtMillis)),
            ])
        }
        return GatewayResponse.json(
            .ok,
            .obj([
                "account_id": .string(summary.accountId), "currency": .string(summary.currency), "balance": .int(summary.balance),
                "recent": .array(recent),
            ]))
    }
}

/// Wiring for `main` and the tests.
public enum PhoneGatewayStage {
    public static let defaultPort = PhoneGateway.defaultPort

    public static func run(config: RuntimeConfig) async throws {
        let runtime = try Runtime(config: config)
        let client = try runtime.client()
        let caller = StageCaller(client: client, logger: runtime.logger)
        let hub = try NoticeHub.make(runtime: runtime, kind: "dev", caller: caller)
        let limits = try GatewayRateLimits.load(
            config.values, kinds: [.device, .address], service: config.service, logger: runtime.logger)
        let gateway = PhoneGateway(caller: caller, hub: hub, logger: runtime.logger, limits: limits)
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
