// The Grafana dashboard in ops/grafana reads metrics by name: after a payment and a decline, every
// metric name the dashboard queries must appear in some instance's /metrics.

import Foundation
import Testing
import WiPayClient

@Suite("End to end: metrics behind the dashboard", .e2eSystem, .enabled(if: E2EEnv.ready))
struct MetricsE2ETests {
    /// The repository root, from this file's place in Tests/EndToEndTests.
    static var repoRoot: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    }

    /// Metric names (`wipay_…`) in the dashboard's queries, without the histogram suffixes.
    static func dashboardMetrics() throws -> Set<String> {
        let text = try String(contentsOf: repoRoot.appendingPathComponent("ops/grafana/wipay-dashboard.json"), encoding: .utf8)
        var names = Set<String>()
        let regex = try NSRegularExpression(pattern: "wipay_[a-z_]+")
        for match in regex.matches(in: text, range: NSRange(text.startIndex..., in: text)) {
            guard let range = Range(match.range, in: text) else { continue }
            var name = String(text[range])
            for suffix in ["_bucket", "_count", "_sum"] where name.hasSuffix(suffix) { name.removeLast(suffix.count) }
            names.insert(name)
        }
        return names
    }

    @Test("every metric the dashboard queries is exported", .timeLimit(.minutes(2)))
    func dashboardMetricsExist() async throws {
        let system = try e2eSystem()
        let merchant = try await system.addMerchant()
        let pos = try system.pos(merchant)
        let phone = try await system.phone(funds: 10_000)
        let paid = try await pos.mustCreate(amount: 700)
        #expect(try await phone.pay(paid.payload).status == 200)
        let declined = try await pos.mustCreate(amount: 999_999)
        #expect(try await phone.pay(declined.payload).status == 422)

        let wanted = try Self.dashboardMetrics()
        #expect(wanted.count >= 10, "the dashboard queries \(wanted.sorted())")
        // Every instance's HTTP endpoint, from its heartbeat.
        let status = try await system.payctl(["status"])
        let instances = (status.json?["instances"] as? [[String: Any]]) ?? []
        let endpoints = instances.compactMap { $0["http_endpoint"] as? String }.filter { !$0.isEmpty }
        #expect(endpoints.count >= 5, "\(status)")
        var exported = ""
        // Outcome counters appear once the router has written them; give the relay a moment.
        for _ in 0..<20 {
            exported = ""
            for endpoint in endpoints {
                let client = try HTTPClient(baseURL: endpoint)
                defer { client.close() }
                if let response = try? await client.get("/metrics") { exported += String(decoding: response.body, as: UTF8.self) }
            }
            if wanted.allSatisfy({ exported.contains($0) }) { break }
            try await Task.sleep(for: .milliseconds(250))
        }
        for name in wanted.sorted() {
            #expect(exported.contains(name), "no instance exports \(name)")
        }
    }
}
