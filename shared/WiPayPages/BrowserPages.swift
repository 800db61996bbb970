import HTTPTypes
import Hummingbird

/// The browser pages (docs/pages.md): the counter at `/pos/` on the pos-gateway, the wallet at `/wallet/` on
/// the phone-gateway, the operations console at `/console/` of `payctl console`, and what they share under
/// `/assets/`. The files live in `Pages/` and are compiled in (SwiftPM `embedInCode`), so nothing has to be
/// found on disk at run time.
///
/// Every page is served with a strict Content-Security-Policy: scripts and styles from this origin only (no
/// inline script, no third-party origin), calls to this origin only, images from this origin or `blob:`
/// (the QR code), no framing. The pages use no cookie: calls carry the bearer key or the device signature
/// (the console: a custom header and a loopback origin), so there is nothing for a cross-site request to
/// ride on.
public enum BrowserPages {
    public static let contentSecurityPolicy =
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; "
        + "media-src 'self' blob:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

    public enum Page: String, Sendable, CaseIterable {
        case commonCSS = "/assets/common.css"
        case commonJS = "/assets/common.js"
        case pos = "/pos/"
        case posJS = "/pos/pos.js"
        case wallet = "/wallet/"
        case walletJS = "/wallet/wallet.js"
        case console = "/console/"
        case consoleJS = "/console/console.js"

        var file: (bytes: [UInt8], type: String) {
            switch self {
            case .commonCSS: (PackageResources.common_css, "text/css; charset=utf-8")
            case .commonJS: (PackageResources.common_js, "text/javascript; charset=utf-8")
            case .pos: (PackageResources.pos_html, "text/html; charset=utf-8")
            case .posJS: (PackageResources.pos_js, "text/javascript; charset=utf-8")
            case .wallet: (PackageResources.wallet_html, "text/html; charset=utf-8")
            case .walletJS: (PackageResources.wallet_js, "text/javascript; charset=utf-8")
            case .console: (PackageResources.console_html, "text/html; charset=utf-8")
            case .consoleJS: (PackageResources.console_js, "text/javascript; charset=utf-8")
            }
        }

        /// The route path (a trailing slash is the same route in Hummingbird).
        public var route: String { rawValue.split(separator: "/").joined(separator: "/") }
    }

    /// The headers every page and asset (and the QR code image) is served with.
    public static let securityHeaders: HTTPFields = {
        var fields: HTTPFields = [.contentSecurityPolicy: contentSecurityPolicy, .xContentTypeOptions: "nosniff"]
        for (name, value) in [
            ("Referrer-Policy", "no-referrer"), ("X-Frame-Options", "DENY"), ("Cross-Origin-Opener-Policy", "same-origin"),
            ("Permissions-Policy", "camera=(self), microphone=(), geolocation=()"),
        ] {
            if let name = HTTPField.Name(name) { fields[name] = value }
        }
        return fields
    }()

    public static func response(_ page: Page) -> Response {
        let file = page.file
        var headers = securityHeaders
        headers[.contentType] = file.type
        // Small and changed only by an upgrade: revalidate each time, so an upgrade is seen at once.
        headers[.cacheControl] = "no-cache"
        return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: file.bytes)))
    }
}

extension Router {
    /// Serves `pages` (and nothing else) at their paths.
    public func addPages(_ pages: [BrowserPages.Page]) {
        for page in pages {
            get(RouterPath(page.route)) { _, _ in BrowserPages.response(page) }
        }
    }
}
