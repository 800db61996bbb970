import Hummingbird
import Logging
import WiPayBus

/// A gateway's calls to other stages over the bus, with bus statuses mapped to HTTP.
public struct StageCaller: Sendable {
    public let client: BusClient
    public let logger: Logger
    public var attemptTimeout: Duration
    public var totalTimeout: Duration

    public init(client: BusClient, logger: Logger, attemptTimeout: Duration = .seconds(2), totalTimeout: Duration = .seconds(6)) {
        self.client = client
        self.logger = logger
        self.attemptTimeout = attemptTimeout
        self.totalTimeout = totalTimeout
    }

    /// Sends a request and returns the reply whatever its status; a timeout is 503 `stage_unavailable`.
    public func send<Request: BusEncodable>(
        service: String = "payment-router", _ type: MessageType, _ request: Request, correlation: String = ""
    ) async throws(GatewayError) -> BusMessage {
        do {
            return try await client.send(
                service: service, type: type, body: request.encoded(), correlation: correlation,
                attemptTimeout: attemptTimeout, totalTimeout: totalTimeout)
        } catch {
            logger.warning("stage did not answer", metadata: ["bus.service": "\(service)", "bus.type": "\(type)", "error": "\(error)"])
            throw GatewayError.stageUnavailable
        }
    }

    /// Sends a request; a 2xx reply is decoded as `Reply`, anything else becomes its HTTP error.
    public func call<Request: BusEncodable, Reply: BusEncodable>(
        service: String = "payment-router", _ type: MessageType, _ request: Request, as: Reply.Type, correlation: String = ""
    ) async throws(GatewayError) -> (Status, Reply) {
        let reply = try await send(service: service, type, request, correlation: correlation)
        let status = reply.envelope.status
        guard status.isSuccess else { throw Self.httpError(status: status, body: reply.body, logger: logger, type: type) }
        do {
            return (status, try Reply.decode(reply.body))
        } catch {
            logger.error("undecodable reply", metadata: ["bus.type": "\(type)", "error": "\(error)"])
            throw GatewayError(.badGateway, "bad_gateway", "a payment stage gave an answer the gateway cannot read")
        }
    }

    /// The HTTP error for a non-2xx bus reply: 4xx statuses pass through with the stage's code and
    /// message; 5xx (and an unknown type: a stage that is being upgraded) are 503 `stage_unavailable`.
    public static func httpError(status: Status, body: [UInt8], logger: Logger? = nil, type: MessageType? = nil) -> GatewayError {
        let error = try? ErrorBody.decode(body)
        switch status {
        case .badRequest, .notFound, .conflict, .declined, Status(rawValue: 401), Status(rawValue: 403), Status(rawValue: 429):
            return GatewayError(
                HTTPResponse.Status(code: Int(status.rawValue)), error?.code ?? "rejected",
                error?.message ?? "the request was rejected")
        default:
            if status.rawValue >= 500 {
                logger?.warning(
                    "stage unavailable",
                    metadata: ["bus.type": "\(type?.description ?? "")", "status": "\(status)", "code": "\(error?.code ?? "")"])
                return .stageUnavailable
            }
            logger?.error("unexpected bus status", metadata: ["bus.type": "\(type?.description ?? "")", "status": "\(status)"])
            return GatewayError(.internalServerError, "internal_error", "unexpected answer from a payment stage")
        }
    }
}
