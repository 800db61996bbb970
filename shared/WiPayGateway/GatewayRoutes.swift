import HTTPTypes
import Hummingbird
import Synchronization
import WiPayPages

/// Which gateway a router serves: it picks the API document served at `GET /openapi.yaml`.
public enum GatewayAPI: String, Sendable, CaseIterable {
    case pos = "pos-gateway"
    case phone = "phone-gateway"

    /// This gateway's own OpenAPI document (generated from docs/openapi.yaml, see OpenAPIDocument.swift).
    public var document: String {
        switch self {
        case .pos: OpenAPIDocument.pos
        case .phone: OpenAPIDocument.phone
        }
    }
}

/// The path templates a router answers and the methods of each, read from the router itself once it is
/// complete (at the first request that matches no route), so that a `405`'s `Allow` header always tells
/// what the code really serves.
public final class GatewayRouteTable: Sendable {
    /// One route template, split into segments (`nil` = a `{parameter}` or `*`: any one segment).
    public struct Route: Sendable, Equatable {
        public let template: String
        public let segments: [String?]
        public var methods: [String]
    }

    /// The router, kept only until the table is read. It is read once, after the server started, when
    /// nothing changes the router any more (Hummingbird builds its responder before the first request).
    private struct RouterReference: @unchecked Sendable {
        let routes: () -> [(path: String, method: String)]
    }

    private let state: Mutex<(source: RouterReference?, routes: [Route]?)>

    public init(router: Router<BasicRequestContext>) {
        let reference = RouterReference(routes: { router.routes.map { ("\($0.path)", $0.method.rawValue) } })
        state = Mutex((reference, nil))
    }

    /// A table of fixed routes (tests).
    public init(routes: [(path: String, method: String)]) {
        state = Mutex((nil, Self.index(routes)))
    }

    /// Every route with its methods (sorted by template).
    public var routes: [Route] {
        state.withLock { state -> [Route] in
            if let routes = state.routes { return routes }
            let routes = Self.index(state.source?.routes() ?? [])
            state = (nil, routes)
            return routes
        }
    }

    static func split(_ path: String) -> [Substring] { path.split(separator: "/", omittingEmptySubsequences: true) }

    static func index(_ pairs: [(path: String, method: String)]) -> [Route] {
        var byTemplate: [String: Route] = [:]
        for (path, method) in pairs {
            let segments: [String?] = split(path).map { part in
                part.hasPrefix("{") || part.hasPrefix(":") || part == "*" ? nil : String(part)
            }
            let template = "/" + segments.enumerated().map { i, s in s ?? "{\(i)}" }.joined(separator: "/")
            byTemplate[template, default: Route(template: path, segments: segments, methods: [])].methods.append(method)
        }
        return byTemplate.values.map { route in
            var route = route
            route.methods = Array(Set(route.methods)).sorted()
            return route
        }.sorted { $0.template < $1.template }
    }

    /// The methods answered at `path` (a request path without its query), or nil when no template
    /// matches it. A literal segment beats a parameter, as in the router.
    public func methods(at path: String) -> [String]? {
        let parts = Self.split(path)
        let candidates = routes.filter { route in
            route.segments.count == parts.count && zip(route.segments, parts).allSatisfy { literal, part in literal.map { $0 == part } ?? true }
        }
        guard !candidates.isEmpty else { return nil }
        let best = candidates.max { $0.segments.filter { $0 != nil }.count < $1.segments.filter { $0 != nil }.count }
        return best?.methods
    }
}

/// Turns anything a route throws (an unknown path, a wrong method, a `GatewayError`) into the JSON
/// error shape, so that no answer of a gateway is ever an empty or HTML error page. A known path asked
/// with another method is `405 method_not_allowed` with `Allow`; an unknown path stays `404 not_found`.
public struct GatewayErrorMiddleware<Context: RequestContext>: RouterMiddleware {
    let table: GatewayRouteTable?

    public init(table: GatewayRouteTable? = nil) { self.table = table }

    public func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws
        -> Response
    {
        do {
            return try await next(request, context)
        } catch let error as GatewayError {
            return GatewayResponse.error(error)
        } catch let error as any HTTPResponseError {
            let status = error.status
            if status == .notFound, let table, let methods = table.methods(at: request.uri.path) {
                return GatewayResponse.error(Self.methodNotAllowed(request.method, methods))
            }
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

    static func methodNotAllowed(_ method: HTTPRequest.Method, _ allowed: [String]) -> GatewayError {
        let allow = allowed.joined(separator: ", ")
        return GatewayError(
            .methodNotAllowed, "method_not_allowed", "\(method.rawValue) is not allowed here; use \(allow)",
            headers: [.allow: allow])
    }
}

extension GatewayResponse {
    /// `GET /openapi.yaml`: the API description of this gateway (its own operations only).
    public static func openAPI(_ api: GatewayAPI) -> Response {
        Response(
            status: .ok, headers: [.contentType: "application/yaml; charset=utf-8", .cacheControl: "public, max-age=300"],
            body: .init(byteBuffer: ByteBuffer(string: api.document)))
    }
}

extension Router where Context == BasicRequestContext {
    /// What both gateways put first on their router: contract-shaped errors (with `405` and `Allow` for a
    /// known path asked with another method), per-route metrics, `GET /openapi.yaml` (this gateway's
    /// own document) and the browser pages (`BrowserPages`).
    public func addGatewayBasics(service: String, api: GatewayAPI) {
        add(middleware: GatewayErrorMiddleware(table: GatewayRouteTable(router: self)))
        add(middleware: GatewayMetricsMiddleware(service: service))
        get("openapi.yaml") { _, _ in GatewayResponse.openAPI(api) }
        switch api {
        case .pos: addPages([.commonCSS, .commonJS, .pos, .posJS])
        case .phone: addPages([.commonCSS, .commonJS, .wallet, .walletJS])
        }
    }

}
