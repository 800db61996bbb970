// Each gateway's served document against the running system: it lists exactly the routes that gateway
// answers (a known path asked with another method is 405 with `Allow` = the documented methods; the other
// gateway's paths are 404 here), and Schemathesis (a tool we did not write) finds no disagreement between
// the document and the code, with all of its checks, for both gateways. Afterwards the ledger reconciles
// and the refused inputs moved no money.
//
// Schemathesis comes from ops/scripts/schemathesis.sh (ops/scripts/test.sh sets WIPAY_SCHEMATHESIS to its
// path). Without it the Schemathesis test is skipped, except under CI=true, where that is a failure.

import Foundation
import Testing
import WiPayClient
import Yams

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

@Suite("End to end: the gateways' own OpenAPI documents", .e2eSystem, .enabled(if: E2EEnv.ready))
struct SchemathesisE2ETests {
    static let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()

    static var schemathesis: String? {
        guard let path = ProcessInfo.processInfo.environment["WIPAY_SCHEMATHESIS"], !path.isEmpty else { return nil }
        return path
    }

    static var isCI: Bool { ProcessInfo.processInfo.environment["CI"] == "true" }

    /// The document a gateway serves, as path → documented methods (upper case).
    func servedOperations(_ http: E2EHTTP) async throws -> [String: Set<String>] {
        let reply = try await http.send("GET", "/openapi.yaml")
        #expect(reply.status == 200)
        #expect(reply.headers["Content-Type"]?.hasPrefix("application/yaml") == true)
        let text = String(decoding: reply.body, as: UTF8.self)
        guard let root = try Yams.load(yaml: text) as? [String: Any], let paths = root["paths"] as? [String: Any] else {
            throw E2EFailure("the served document has no paths")
        }
        var operations: [String: Set<String>] = [:]
        for (path, value) in paths {
            let methods = (value as? [String: Any])?.keys.filter {
                ["get", "put", "post", "delete", "patch", "head", "options", "trace"].contains($0)
            } ?? []
            operations[path] = Set(methods.map { $0.uppercased() })
        }
        return operations
    }

    /// A concrete path for a template (`{id}` → a plausible id).
    static func concrete(_ template: String) -> String {
        template.split(separator: "/", omittingEmptySubsequences: false).map { part in
            part.hasPrefix("{") ? "pr_aaaaaaaaaaaaaaaaaaaa" : String(part)
        }.joined(separator: "/")
    }

    @Test("each gateway documents exactly the routes it answers", .timeLimit(.minutes(2)))
    func documentsExactlyItself() async throws {
        let system = try e2eSystem()
        let pos = try E2EHTTP(baseURL: system.posURL, system: system)
        let phone = try E2EHTTP(baseURL: system.phoneURL, system: system)
        let posOps = try await servedOperations(pos)
        let phoneOps = try await servedOperations(phone)
        #expect(Set(posOps.keys).contains("/v1/payment-requests/{id}"))
        #expect(Set(phoneOps.keys).contains("/v1/payment-instructions"))
        for (http, own, other, name) in [(pos, posOps, phoneOps, "pos-gateway"), (phone, phoneOps, posOps, "phone-gateway")] {
            for (template, methods) in own {
                let path = Self.concrete(template)
                for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
                    // Probes without credentials or bodies: refused, so they change nothing.
                    let reply = try await http.send(method, path, record: false)
                    if methods.contains(method) {
                        #expect(reply.status != 405 && reply.code != "not_found", "\(name) \(method) \(path): \(reply)")
                    } else {
                        #expect(reply.status == 405, "\(name) \(method) \(path): \(reply)")
                        #expect(reply.code == "method_not_allowed", "\(name) \(method) \(path): \(reply)")
                        #expect(reply.headers["Allow"] == methods.sorted().joined(separator: ", "), "\(name) \(method) \(path): \(reply)")
                    }
                }
            }
            for template in other.keys where own[template] == nil {
                let reply = try await http.send("GET", Self.concrete(template), record: false)
                #expect(reply.status == 404 && reply.code == "not_found", "\(name) GET \(template): \(reply)")
            }
            let unknown = try await http.send("GET", "/v1/no-such-route", record: false)
            #expect(unknown.status == 404 && unknown.code == "not_found", "\(unknown)")
        }
    }

    /// A crash of the tool itself rather than a finding: CPython 3.11's `ast.parse`, called deep in a
    /// recursion by Hypothesis to describe a lambda, sometimes fails with this (not our API's doing). With a
    /// fixed seed a real finding repeats, so such a run is tried once more.
    static func isToolCrash(_ output: String) -> Bool {
        output.contains("Runtime Error") && output.contains("SystemError: AST constructor recursion depth mismatch")
    }

    /// `runSchemathesis`, once more after a crash of the tool itself (see `isToolCrash`).
    func runSchemathesisRetryingToolCrash(
        _ executable: String, system: E2ESystem, baseURL: String, headers: [String], extraEnvironment: [String: String],
        arguments extra: [String], log: String
    ) async throws -> (Int32, String) {
        let first = try await runSchemathesis(
            executable, system: system, baseURL: baseURL, headers: headers, extraEnvironment: extraEnvironment,
            arguments: extra, log: log)
        guard first.0 != 0, Self.isToolCrash(first.1) else { return first }
        print("Schemathesis crashed inside Python (\(log)), not a finding; running it once more")
        return try await runSchemathesis(
            executable, system: system, baseURL: baseURL, headers: headers, extraEnvironment: extraEnvironment,
            arguments: extra, log: log + "-again")
    }

    /// Runs Schemathesis against one gateway; returns its exit status and output.
    func runSchemathesis(
        _ executable: String, system: E2ESystem, baseURL: String, headers: [String], extraEnvironment: [String: String],
        arguments extra: [String], log: String
    ) async throws -> (Int32, String) {
        let root = Self.repoRoot.path
        var arguments = [
            "--config-file", "\(root)/ops/schemathesis/schemathesis.toml", "run", "\(baseURL)/openapi.yaml",
            "--url", baseURL, "--checks", "all", "--phases", "examples,coverage,fuzzing,stateful",
            "--max-examples", ProcessInfo.processInfo.environment["WIPAY_SCHEMATHESIS_MAX_EXAMPLES"] ?? "20",
            "--seed", "20250101", "--workers", "2", "--request-timeout", "10", "--no-color",
            // Below the gateways' default per-address limit for failing credentials (WIPAY_RATE_ADDRESS,
            // 10/s): Schemathesis's auth probes are such requests, and a 429 would hide what they check.
            "--rate-limit", "9/s",
            "--generation-database", "none", "--suppress-health-check", "all",
            "--report", "junit", "--report-dir", "\(system.dir)/schemathesis-\(log)",
        ]
        for header in headers { arguments += ["-H", header] }
        arguments += extra
        var environment = ProcessInfo.processInfo.environment
        environment["SCHEMATHESIS_HOOKS"] = "hooks"
        environment["PYTHONPATH"] = "\(root)/ops/schemathesis"
        environment["PYTHONDONTWRITEBYTECODE"] = "1"
        for (key, value) in extraEnvironment { environment[key] = value }
        return try await e2eRunLogged(
            executable, arguments, environment: environment, currentDirectory: system.dir,
            logPath: "\(system.dir)/schemathesis-\(log).log", timeout: .seconds(420))
    }

    @Test("Schemathesis finds nothing on either gateway; the ledger reconciles; refused inputs move no money",
        .timeLimit(.minutes(10)))
    func schemathesisBothGateways() async throws {
        guard let executable = Self.schemathesis else {
            if Self.isCI {
                Issue.record("WIPAY_SCHEMATHESIS is not set under CI=true: ops/scripts/test.sh installs Schemathesis")
            }
            return
        }
        let system = try e2eSystem()
        let merchant = try await system.addMerchant()
        let phone = try await system.phone(funds: 50_000)
        let deviceId = try #require(phone.deviceId)
        let started = ContinuousClock.now
        let (posStatus, posOutput) = try await runSchemathesisRetryingToolCrash(
            executable, system: system, baseURL: system.posURL, headers: ["Authorization: Bearer \(merchant.terminalKey)"],
            extraEnvironment: [:],
            // An event stream never ends, so it has no response to check: the other suites cover the streams.
            arguments: ["--exclude-operation-id", "terminalEvents"], log: "pos")
        #expect(posStatus == 0, "Schemathesis against the pos-gateway exited \(posStatus):\n\(posOutput.suffix(20_000))")
        let (phoneStatus, phoneOutput) = try await runSchemathesisRetryingToolCrash(
            executable, system: system, baseURL: system.phoneURL,
            headers: ["X-Device-Id: \(deviceId)", "X-Timestamp: 0", "X-Signature: wipay-sign-me"],
            extraEnvironment: ["WIPAY_SCHEMATHESIS_DEVICE_KEY": e2eBase64URL(phone.key.raw)],
            arguments: ["--exclude-operation-id", "deviceEvents"], log: "phone")
        #expect(phoneStatus == 0, "Schemathesis against the phone-gateway exited \(phoneStatus):\n\(phoneOutput.suffix(20_000))")
        let summary = [posOutput, phoneOutput].map { output in
            output.split(separator: "\n").filter { $0.contains("passed") || $0.contains("failed") || $0.contains("cases") }
                .suffix(6).joined(separator: "\n")
        }
        print("Schemathesis (\(ContinuousClock.now - started)):\n--- pos-gateway\n\(summary[0])\n--- phone-gateway\n\(summary[1])")

        // Nothing generated could pay (no valid payload reaches the phone run), so no money moved.
        #expect(try await system.balance(phone.accountId) == 50_000)
        #expect(try await system.balance(merchant.accountId) == 0)
        // The device still works after thousands of refused calls.
        let me = try await phone.me()
        #expect(me.status == 200 && me.int("balance") == 50_000, "\(me)")
        // payctl reconcile runs at the end of the suite (E2ESystemTrait).
    }
}
