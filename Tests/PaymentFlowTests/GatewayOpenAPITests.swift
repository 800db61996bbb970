// Each gateway serves a document of its own operations (docs/openapi/<gateway>.yaml, split by tag from
// docs/openapi.yaml and embedded in shared/WiPayGateway/OpenAPIDocument.swift by
// ops/scripts/gen-openapi-swift.sh), and a known path asked with another method is 405 with `Allow`.

import Crypto
import Foundation
import Hummingbird
import Testing
import WiPayBus
import WiPayGateway

@Suite("Gateway OpenAPI documents")
struct GatewayOpenAPITests {
    /// The repository root, from this file's path (Tests/PaymentFlowTests/<file>).
    static var repoRoot: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    }

    static let posPaths: Set<String> = [
        "/v1/payment-requests", "/v1/payment-requests/{id}", "/v1/payment-requests/{id}/cancel", "/v1/payment-requests/{id}/qr.svg",
        "/v1/payments/{payment_id}/refunds", "/v1/terminal/events", "/openapi.yaml", "/healthz", "/metrics",
    ]
    static let phonePaths: Set<String> = [
        "/v1/devices", "/v1/payload-keys", "/v1/payment-instructions", "/v1/accounts/me", "/v1/devices/me/events",
        "/openapi.yaml", "/healthz", "/metrics",
    ]

    /// The `  /path:` keys of a document's `paths:` section.
    static func paths(_ yaml: String) -> Set<String> {
        var inPaths = false
        var found = Set<String>()
        for line in yaml.split(separator: "\n", omittingEmptySubsequences: false) {
            if !line.hasPrefix(" ") && !line.isEmpty { inPaths = line == "paths:" }
            if inPaths, line.hasPrefix("  /"), line.hasSuffix(":"), !line.hasPrefix("   ") {
                found.insert(String(line.dropFirst(2).dropLast()))
            }
        }
        return found
    }

    @Test func embeddedDocumentsMatchTheFiles() throws {
        for api in GatewayAPI.allCases {
            let file = Self.repoRoot.appendingPathComponent("docs/openapi/\(api.rawValue).yaml")
            let onDisk = try Data(contentsOf: file)
            #expect(
                Array(onDisk) == Array(api.document.utf8),
                "shared/WiPayGateway/OpenAPIDocument.swift is stale: run ops/scripts/gen-openapi-swift.sh")
        }
    }

    @Test func generatedFromTheCurrentSource() throws {
        let source = try Data(contentsOf: Self.repoRoot.appendingPathComponent("docs/openapi.yaml"))
        let hash = SHA256.hash(data: source).map { String(format: "%02x", $0) }.joined()
        #expect(hash == OpenAPIDocument.sourceSHA256, "docs/openapi.yaml changed: run ops/scripts/gen-openapi-swift.sh")
    }

    @Test func eachGatewayDocumentsExactlyItself() {
        #expect(OpenAPIDocument.pos.hasPrefix("# Generated"))
        #expect(OpenAPIDocument.pos.contains("\nopenapi: 3.0.3\n"))
        #expect(Self.paths(OpenAPIDocument.pos) == Self.posPaths)
        #expect(Self.paths(OpenAPIDocument.phone) == Self.phonePaths)
        #expect(OpenAPIDocument.pos.contains("scheme: bearer"))
        #expect(!OpenAPIDocument.pos.contains("X-Signature"))
        #expect(OpenAPIDocument.phone.contains("name: X-Signature"))
        #expect(!OpenAPIDocument.phone.contains("bearer"))
        #expect(OpenAPIDocument.pos.contains("payment.attempt_declined"))
        for document in [OpenAPIDocument.pos, OpenAPIDocument.phone] {
            #expect(document.contains("Retry-After"))
        }
    }

    /// The documents' currency enum is exactly the set the server accepts.
    @Test func currenciesAreTheAcceptedSet() throws {
        for document in [OpenAPIDocument.pos, OpenAPIDocument.phone] {
            let line = try #require(
                document.split(separator: "\n").first { $0.hasPrefix("      enum: [") && $0.contains("'CNY'") })
            let codes = line.split(separator: "[", maxSplits: 1)[1].dropLast().split(separator: ",").map {
                $0.trimmingCharacters(in: CharacterSet(charactersIn: " '"))
            }
            #expect(Set(codes) == Currency.codes)
            #expect(codes.count == Currency.codes.count)
        }
    }

    @Test func routeTableMatchesTemplatesAndPrefersLiterals() {
        let table = GatewayRouteTable(routes: [
            ("/v1/payment-requests", "POST"), ("/v1/payment-requests/{id}", "GET"),
            ("/v1/payment-requests/{id}/cancel", "POST"), ("/v1/devices", "POST"), ("/v1/devices/me/events", "GET"),
            ("/v1/devices/{id}", "DELETE"), ("/v1/devices/{id}", "GET"),
        ])
        #expect(table.methods(at: "/v1/payment-requests") == ["POST"])
        #expect(table.methods(at: "/v1/payment-requests/pr_abc") == ["GET"])
        #expect(table.methods(at: "/v1/payment-requests/anything/cancel") == ["POST"])
        #expect(table.methods(at: "/v1/payment-requests/a/b") == nil)
        #expect(table.methods(at: "/v1/devices/x") == ["DELETE", "GET"])
        #expect(table.methods(at: "/v1/devices/me/events") == ["GET"])
        #expect(table.methods(at: "/v2/payment-requests") == nil)
        #expect(table.methods(at: "/") == nil)
    }

    @Test func routeTableReadsTheRouter() {
        let router = Router()
        router.get("healthz") { _, _ in "ok" }
        router.addGatewayBasics(service: "pos-gateway", api: .pos)
        router.post("v1/payment-requests") { _, _ in "ok" }
        router.get("v1/payment-requests/:id") { _, _ in "ok" }
        router.post("v1/payment-requests/:id/cancel") { _, _ in "ok" }
        let table = GatewayRouteTable(router: router)
        // The basics include the counter page and its assets (BrowserPages).
        #expect(table.routes.map(\.template).sorted() == [
            "/assets/common.css", "/assets/common.js", "/healthz", "/openapi.yaml", "/pos", "/pos/pos.js",
            "/v1/payment-requests", "/v1/payment-requests/{id}", "/v1/payment-requests/{id}/cancel",
        ])
        #expect(table.methods(at: "/v1/payment-requests/pr_x") == ["GET"])
        #expect(table.methods(at: "/openapi.yaml") == ["GET"])
    }
}
