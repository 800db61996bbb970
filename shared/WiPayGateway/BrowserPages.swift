import HTTPTypes
import Hummingbird

/// The browser pages (docs/pages.md): the counter at `/pos/` on the pos-gateway, the wallet at `/wallet/` on
/// the phone-gateway, and what both share under `/assets/`. The files live in `Pages/` and are compiled in
/// (SwiftPM `embedInCode`), so a gateway has nothing to find on disk at run time.
///
/// Every page is served with a strict Content-Security-Policy: scripts and styles from this origin only (no
/// inline script, no third-party origin), calls to this origin only, images from this origin or `blob:`
/// (the QR code), no framing. The pages use no cookie: calls carry the bearer key or the device signature,
/// so there is nothing for a cross-site request to ride on.
public enum BrowserPages {
    public static let contentSecurityPolicy =
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; "
        + "media-src 'self' blob:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

    /// The files, by the path they are served at.
    static let files: [String: (bytes: [UInt8], type: String)] = [
        "/assets/common.css": (PackageResources.common_css, "text/css; charset=utf-8"),
        "/assets/common.js": (PackageResources.common_js, "text/javascript; charset=utf-8"),
        "/pos/": (PackageResources.pos_html, "text/html; charset=utf-8"),
        "/pos/pos.js": (PackageResources.pos_js, "text/javascript; charset=utf-8"),
        "/wallet/": (PackageResources.wallet_html, "text/html; charset=utf-8"),
        "/wallet/wallet.js": (PackageResources.wallet_js, "text/javascript; charset=utf-8"),
    ]

    /// The headers every page and asset is served with.
    public static let securityHeaders: HTTPFields = [
        .contentSecurityPolicy: contentSecurityPolicy,
        HTTPField.Name("X-Content-Type-Options")!: "nosniff",
        HTTPField.Name("Referrer-Policy")!: "no-referrer",
        HTTPField.Name("X-Frame-Options")!: "DENY",
        HTTPField.Name("Cross-Origin-Opener-Policy")!: "same-origin",
        HTTPField.Name("Permissions-Policy")!: "camera=(self), microphone=(), geolocation=()",
    ]

    static func response(_ path: String) -> Response {
        guard let file = files[path] else {
            return GatewayResponse.error(GatewayError(.notFound, "not_found", "no such page"))
        }
        var headers = securityHeaders
        headers[.contentType] = file.type
        // Small and changed only by an upgrade: revalidate each time, so an upgrade is seen at once.
        headers[.cacheControl] = "no-cache"
        return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: file.bytes)))
    }
}

extension Router where Context == BasicRequestContext {
    /// `GET /pos/` (pos-gateway) or `GET /wallet/` (phone-gateway), their script, and the shared assets.
    /// A path without the trailing slash is the same route.
    public func addPages(_ api: GatewayAPI) {
        get("assets/common.css") { _, _ in BrowserPages.response("/assets/common.css") }
        get("assets/common.js") { _, _ in BrowserPages.response("/assets/common.js") }
        switch api {
        case .pos:
            get("pos") { _, _ in BrowserPages.response("/pos/") }
            get("pos/pos.js") { _, _ in BrowserPages.response("/pos/pos.js") }
        case .phone:
            get("wallet") { _, _ in BrowserPages.response("/wallet/") }
            get("wallet/wallet.js") { _, _ in BrowserPages.response("/wallet/wallet.js") }
        }
    }
}
