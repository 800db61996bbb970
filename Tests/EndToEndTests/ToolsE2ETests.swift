// The reference clients and payctl, run as the built programs against a whole system; the logs; the
// served OpenAPI document; and the OpenAPI checker itself.

import Foundation
import Testing
import WiPayClient

@Suite("End to end: reference clients, payctl, logs", .e2eSystem, .enabled(if: E2EEnv.ready))
struct ToolsE2ETests {
    /// What both reference programs need to find the gateways and the local link of one test.
    func clientEnvironment(_ system: E2ESystem, linkPort: Int) -> [String: String] {
        [
            "WIPAY_POS_URL": system.posURL,
            "WIPAY_PHONE_URL": system.phoneURL,
            "WIPAY_LINK_ADDRESS": "127.0.0.1",
            "WIPAY_LINK_PORT": "\(linkPort)",
        ]
    }

    @Test("pos-terminal charge + phone-wallet pay --pin --yes on the loopback link, both exit 0", .timeLimit(.minutes(3)))
    func referenceClients() async throws {
        let system = try e2eSystem()
        let merchant = try await system.addMerchant()
        let wallet = try await system.addWallet(funds: 20_000)
        let home = try system.tempFolder("wallet-home")
        let env = clientEnvironment(system, linkPort: system.linkPort())

        let enroll = try await system.run(
            "phone-wallet", ["enroll", wallet.enrollmentCode, "--name", "e2e phone", "--home", home, "--json"],
            environment: env)
        #expect(enroll.status == 0, "\(enroll)")
        #expect(enroll.string("account_id") == wallet.accountId, "\(enroll)")
        #expect(enroll.string("device_id")?.hasPrefix("dev_") == true, "\(enroll)")
        // The device key is readable by its owner only.
        let files = (try? FileManager.default.subpathsOfDirectory(atPath: home)) ?? []
        #expect(!files.isEmpty)
        for file in files {
            let attributes = try FileManager.default.attributesOfItem(atPath: "\(home)/\(file)")
            let mode = (attributes[.posixPermissions] as? NSNumber)?.intValue ?? 0
            #expect(mode & 0o077 == 0, "\(file) has mode \(String(mode, radix: 8))")
        }

        var terminalEnv = env
        terminalEnv["WIPAY_TERMINAL_KEY"] = merchant.terminalKey
        let terminal = try system.spawn(
            "pos-terminal", ["charge", "1250", "--currency", "CNY", "--reference", "e2e-counter", "--expires-in", "60", "--json"],
            environment: terminalEnv)
        defer { terminal.signal(SIGKILL) }
        // Give the terminal a moment to create the request and start announcing it.
        try await Task.sleep(for: .seconds(1))
        let pay = try await system.run(
            "phone-wallet", ["pay", "--pin", wallet.pin, "--yes", "--timeout", "30", "--home", home, "--json"],
            environment: env, timeout: .seconds(60))
        system.noteSecret(wallet.pin)
        #expect(pay.status == 0, "\(pay)")
        #expect(!pay.stdout.contains(wallet.pin), "the PIN was echoed: \(pay)")
        let terminalStatus = await terminal.waitForExit(timeout: .seconds(60))
        #expect(terminalStatus == 0, "pos-terminal exited \(String(describing: terminalStatus)):\n\(terminal.tail(40))")

        #expect(try await system.balance(wallet.accountId) == 20_000 - 1250)
        #expect(try await system.balance(merchant.accountId) == 1250)
        let balance = try await system.run("phone-wallet", ["balance", "--home", home, "--json"], environment: env)
        #expect(balance.status == 0 && balance.int("balance") == 20_000 - 1250, "\(balance)")
    }

    @Test("payctl: keys payload, terminal add, payment show, tail, status, and clear failures", .timeLimit(.minutes(2)))
    func payctl() async throws {
        let system = try e2eSystem()
        let keyFile = "\(try system.tempFolder("keys"))/payload-key"
        let created = try await system.payctl(["keys", "payload", keyFile])
        #expect(created.status == 0 && created.json?["created"] as? Bool == true, "\(created)")
        let keyId = try #require(created.string("key_id"))
        let publicKey = try #require(created.string("public_key"))
        #expect(!created.stdout.contains((try? String(contentsOfFile: keyFile, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "?"))
        let mode = ((try FileManager.default.attributesOfItem(atPath: keyFile))[.posixPermissions] as? NSNumber)?.intValue
        #expect(mode == 0o600)
        let again = try await system.payctl(["keys", "payload", keyFile])
        #expect(again.status == 0 && again.string("key_id") == keyId && again.string("public_key") == publicKey, "\(again)")
        #expect(again.json?["created"] as? Bool == false)

        // tail: starts listening, then one payment's outcome and notices come by.
        let merchant = try await system.addMerchant()
        let pos = try system.pos(merchant)
        let phone = try await system.phone(funds: 1000)
        async let tailed = system.payctl(["tail", "--seconds", "8"], timeout: .seconds(20))
        try await Task.sleep(for: .seconds(2))
        let (id, payload) = try await pos.mustCreate(amount: 250)
        #expect(try await phone.pay(payload).status == 200)
        let tail = try await tailed
        #expect(tail.status == 0, "\(tail)")
        let lines = tail.stdout.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        #expect(lines.contains { ($0["outcome"] as? [String: Any])?["request_id"] as? String == id }, "\(tail)")
        #expect(lines.contains { ($0["topic"] as? String)?.hasPrefix("notice.") == true }, "\(tail)")

        let show = try await system.payctl(["payment", "show", id])
        #expect(show.status == 0 && show.string("status") == "succeeded", "\(show)")

        let status = try await system.payctl(
            ["status", "--expect", "bus", "ledger", "payment-router", "notifier", "pos-gateway", "phone-gateway"])
        #expect(status.status == 0, "\(status)")

        // Clear failures: non-zero exit, a message, nothing on stdout that looks like success.
        let failures: [[String]] = [
            ["merchant", "add", "--name", "X", "--currency", "QQQ"],
            ["merchant", "add", "--name", "", "--currency", "CNY"],
            ["terminal", "add", "--merchant", "mer_aaaaaaaaaaaaaaaa", "--name", "t"],
            ["wallet", "add", "--name", "W", "--pin", "12", "--currency", "CNY"],
            ["wallet", "fund", phone.accountId, "0"],
            ["payment", "show", "pr_aaaaaaaaaaaaaaaaaaaa"],
            ["account", "show", "acc_nope"],
        ]
        for arguments in failures {
            let r = try await system.payctl(arguments)
            #expect(r.status != 0, "\(r)")
            #expect(!r.stderr.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty, "no message: \(r)")
        }
        #expect(try await system.balance(phone.accountId) == 750)
    }

    @Test("no PIN, terminal key or enrollment code in any service log", .timeLimit(.minutes(2)))
    func secretsStayOutOfLogs() async throws {
        let system = try e2eSystem()
        let merchant = try await system.addMerchant()
        let pos = try system.pos(merchant)
        let phone = try await system.phone(pin: "581920", funds: 1000)
        for pin in ["581920", "608217", "581920"] {
            let (_, payload) = try await pos.mustCreate(amount: 100)
            _ = try await phone.pay(payload, pin: pin)
        }
        try await Task.sleep(for: .milliseconds(500))
        let logs = system.serviceLogs()
        #expect(logs.count == E2EEnv.services.count)
        #expect(logs.allSatisfy { !$0.1.isEmpty })
        let leaks = system.secretLeaks()
        #expect(leaks.isEmpty, "\(leaks.joined(separator: "\n"))")
        #expect(system.secrets.value.contains("581920") && system.secrets.value.contains(merchant.terminalKey))
    }

    @Test("both gateways serve /healthz, /metrics and /openapi.yaml (each its own document, as in docs/openapi/)", .timeLimit(.minutes(1)))
    func servedDocuments() async throws {
        let system = try e2eSystem()
        let docs = URL(fileURLWithPath: E2EOpenAPI.specPath).deletingLastPathComponent().appendingPathComponent("openapi")
        for (url, file) in [(system.posURL, "pos-gateway.yaml"), (system.phoneURL, "phone-gateway.yaml")] {
            let document = try String(contentsOf: docs.appendingPathComponent(file), encoding: .utf8)
            let http = try E2EHTTP(baseURL: url, system: system)
            let health = try await http.send("GET", "/healthz")
            #expect(health.status == 200, "\(url): \(health)")
            let metrics = try await http.send("GET", "/metrics")
            #expect(metrics.status == 200 && !metrics.body.isEmpty, "\(url): \(metrics)")
            let served = try await http.send("GET", "/openapi.yaml")
            #expect(served.status == 200, "\(url): \(served)")
            #expect(String(decoding: served.body, as: UTF8.self) == document, "\(url) serves another OpenAPI document")
            let unknown = try await http.send("GET", "/v1/nothing-here", record: false)
            #expect(unknown.status == 404 && unknown.code != nil, "\(url): \(unknown)")
        }
    }
}

@Suite("End to end: the OpenAPI checker")
struct OpenAPICheckerTests {
    @Test("docs/openapi.yaml loads and documents every path of the contract")
    func specLoads() throws {
        let spec = try E2EOpenAPI.load().get()
        let paths = Set(spec.paths.map { "/" + $0.template.joined(separator: "/") })
        for path in [
            "/v1/payment-requests", "/v1/payment-requests/{id}", "/v1/payment-requests/{id}/cancel",
            "/v1/payments/{payment_id}/refunds", "/v1/terminal/events", "/v1/devices", "/v1/payment-instructions",
            "/v1/accounts/me", "/v1/devices/me/events", "/healthz", "/metrics", "/openapi.yaml",
        ] {
            #expect(paths.contains(path), "docs/openapi.yaml lacks \(path)")
        }
    }

    @Test("the checker flags undocumented paths, statuses and missing required fields, and passes good ones")
    func checkerCatchesProblems() throws {
        let spec = try E2EOpenAPI.load().get()
        func observe(_ method: String, _ path: String, _ status: Int, _ body: String) -> E2EObservation {
            E2EObservation(method: method, path: path, status: status, contentType: "application/json", body: Array(body.utf8))
        }
        #expect(E2EOpenAPI.check(observe("GET", "/v1/nowhere", 200, "{}"), spec) != nil)
        #expect(E2EOpenAPI.check(observe("DELETE", "/v1/payment-requests", 200, "{}"), spec) != nil)
        #expect(E2EOpenAPI.check(observe("POST", "/v1/payment-requests", 418, "{}"), spec) != nil)
        let missing = E2EOpenAPI.check(observe("POST", "/v1/payment-requests", 201, #"{"id": "pr_x"}"#), spec)
        #expect(missing?.contains("missing required") == true, "\(String(describing: missing))")
        let error = #"{"error": {"code": "invalid_json", "message": "bad"}}"#
        #expect(E2EOpenAPI.check(observe("POST", "/v1/payment-requests", 400, error), spec) == nil)
        let notAnError = E2EOpenAPI.check(observe("POST", "/v1/payment-requests", 400, #"{"oops": 1}"#), spec)
        #expect(notAnError != nil)
    }
}
