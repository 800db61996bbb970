import HTTPTypes
import Hummingbird

/// Turns anything a route throws (an unknown path, a wrong method, a `GatewayError`) into the JSON
/// error shape, so that no answer of a gateway is ever an empty or HTML error page.
public struct GatewayErrorMiddleware<Context: RequestContext>: RouterMiddleware {
    public init() {}

    public func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws
        -> Response
    {
        do {
            return try await next(request, context)
        } catch let error as GatewayError {
            return GatewayResponse.error(error)
        } catch let error as any HTTPResponseError {
            let status = error.status
            let code: String =
                switch status.code {
                case 404: "not_found"
                case 405: "method_not_allowed"
                case 413: "body_too_large"
                case 400: "bad_request"
                default: "http_\(status.code)"
                }
            let message = status.code == 404 ? "no such route" : status.reasonPhrase
            return GatewayResponse.error(GatewayError(status, code, message))
        } catch {
            return GatewayResponse.error(GatewayError(.internalServerError, "internal_error", "unexpected error"))
        }
    }
}

extension GatewayResponse {
    /// `GET /openapi.yaml`: the API description both gateways serve.
    public static func openAPI() -> Response {
        Response(
            status: .ok, headers: [.contentType: "application/yaml; charset=utf-8", .cacheControl: "public, max-age=300"],
            body: .init(byteBuffer: ByteBuffer(string: OpenAPIDocument.yaml)))
    }
}

extension Router where Context == BasicRequestContext {
    /// What both gateways put first on their router: contract-shaped errors, per-route metrics and
    /// `GET /openapi.yaml`.
    public func addGatewayBasics(service: String) {
        add(middleware: GatewayErrorMiddleware())
        add(middleware: GatewayMetricsMiddleware(service: service))
        get("openapi.yaml") { _, _ in GatewayResponse.openAPI() }
    }
}
