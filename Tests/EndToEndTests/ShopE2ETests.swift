// A shop with two tills and a neighbour on the local link: the phone hears all three, pays none on its
// own, and pays the one the shopper picks. Once on loopback (every machine), once across hosts made of
// network namespaces on a bridge (ops/scripts/shop-net.sh, run by `make test` where namespaces can be made).

import Foundation
import Testing

/// Where each program of the shop runs and how it reaches the gateways and the link.
struct E2EShopHost: Sendable {
    /// The network namespace (another host), or nil for this one.
    var netns: String?
    /// The address the others see this host's datagrams come from.
    var address: String
    /// `--link-*` flags for this host's program.
    var linkFlags: [String]
}

struct E2EShopLayout: Sendable {
    var till1: E2EShopHost
    var till2: E2EShopHost
    var neighbour: E2EShopHost
    var phone: E2EShopHost
    /// The host part of the gateways' URLs as the clients reach them.
    var gatewayHost: String
}

extension E2ESystem {
    /// The whole scenario of a shop; `layout` says where each program runs.
    func shopScenario(_ layout: E2EShopLayout) async throws {
        let linkPort = self.linkPort()
        let shop = try await addMerchant(name: "Two Till Shop", terminal: "till 1")
        let till2 = try await addTerminal(merchantId: shop.merchantId, name: "till 2")
        let neighbour = try await addMerchant(name: "Next Door Noodles", terminal: "counter")
        let wallet = try await addWallet(funds: 100_000)
        let urls = [
            "WIPAY_POS_URL": posURL.replacingOccurrences(of: "127.0.0.1", with: layout.gatewayHost),
            "WIPAY_PHONE_URL": phoneURL.replacingOccurrences(of: "127.0.0.1", with: layout.gatewayHost),
            "WIPAY_LINK_PORT": "\(linkPort)",
        ]
        let home = try tempFolder("shop-phone")
        let enroll = try await run(
            "phone-wallet", ["enroll", wallet.enrollmentCode, "--home", home, "--json"], environment: urls,
            netns: layout.phone.netns)
        #expect(enroll.status == 0, "\(enroll)")

        // Three charges a second apart, so "newest first" has an order to show.
        func charge(_ amount: Int, _ key: String, _ host: E2EShopHost, _ reference: String) throws -> E2EChild {
            var env = urls
            env["WIPAY_TERMINAL_KEY"] = key
            return try spawn(
                "pos-terminal",
                ["charge", "\(amount)", "--currency", "CNY", "--reference", reference, "--expires-in", "120", "--json", "--no-qr"]
                    + host.linkFlags, environment: env, netns: host.netns)
        }
        let first = try charge(1111, shop.terminalKey, layout.till1, "till1-\(e2eToken(4))")
        defer { first.signal(SIGKILL) }
        try await Task.sleep(for: .milliseconds(1100))
        let second = try charge(2222, till2.key, layout.till2, "till2-\(e2eToken(4))")
        defer { second.signal(SIGKILL) }
        try await Task.sleep(for: .milliseconds(1100))
        let next = try charge(3333, neighbour.terminalKey, layout.neighbour, "noodles-\(e2eToken(4))")
        defer { next.signal(SIGKILL) }
        try await Task.sleep(for: .milliseconds(800))

        func nearby(expect count: Int) async throws -> [[String: Any]] {
            // Terminals announce every 300 ms; one that just stopped can still be in the first window.
            var last: E2ECommandResult?
            for _ in 0..<5 {
                let r = try await run(
                    "phone-wallet", ["nearby", "--listen", "2", "--home", home, "--json"] + layout.phone.linkFlags,
                    environment: urls, netns: layout.phone.netns)
                last = r
                if r.status == 0, r.int("count") == Int64(count) { return r.json?["requests"] as? [[String: Any]] ?? [] }
                try await Task.sleep(for: .milliseconds(500))
            }
            Issue.record("phone-wallet nearby did not hear \(count) requests: \(String(describing: last))")
            return []
        }

        // 1. The phone hears all three, newest first, each with its till and sender.
        let heard = try await nearby(expect: 3)
        #expect(heard.map { $0["payee"] as? String } == ["Next Door Noodles — counter", "Two Till Shop — till 2", "Two Till Shop — till 1"])
        #expect(heard.map { ($0["amount"] as? NSNumber)?.int64Value } == [3333, 2222, 1111])
        #expect(heard.map { $0["from"] as? String } == [layout.neighbour.address, layout.till2.address, layout.till1.address])
        let ids = heard.compactMap { $0["request_id"] as? String }
        try #require(ids.count == 3)

        // 2. With three on the air, `pay --yes` pays none and says why, listing them.
        let refused = try await run(
            "phone-wallet", ["pay", "--pin", wallet.pin, "--yes", "--timeout", "20", "--home", home, "--json"] + layout.phone.linkFlags,
            environment: urls, timeout: .seconds(60), netns: layout.phone.netns)
        #expect(refused.status == 2, "\(refused)")
        #expect((refused.json?["error"] as? [String: Any])?["code"] as? String == "several_requests", "\(refused)")
        #expect((refused.json?["requests"] as? [Any])?.count == 3, "\(refused)")
        #expect(try await balance(wallet.accountId) == 100_000)

        // 3. The shopper at till 1 picks it by name.
        let paid1 = try await run(
            "phone-wallet",
            ["pay", "--pin", wallet.pin, "--yes", "--terminal", "till 1", "--timeout", "20", "--home", home, "--json"]
                + layout.phone.linkFlags, environment: urls, timeout: .seconds(60), netns: layout.phone.netns)
        #expect(paid1.status == 0, "\(paid1)")
        #expect(paid1.string("request_id") == ids[2], "\(paid1)")
        #expect(paid1.string("terminal_name") == "till 1", "\(paid1)")
        let firstStatus = await first.waitForExit(timeout: .seconds(30))
        #expect(firstStatus == 0, "till 1 exited \(String(describing: firstStatus)):\n\(first.tail(20))")

        // 4. Till 1 stopped announcing; the other two are still on the air. Pay till 2 by its request id.
        let left = try await nearby(expect: 2)
        #expect(left.compactMap { $0["request_id"] as? String } == [ids[0], ids[1]])
        let paid2 = try await run(
            "phone-wallet",
            ["pay", "--pin", wallet.pin, "--yes", "--request", ids[1], "--timeout", "20", "--home", home, "--json"]
                + layout.phone.linkFlags, environment: urls, timeout: .seconds(60), netns: layout.phone.netns)
        #expect(paid2.status == 0 && paid2.string("request_id") == ids[1], "\(paid2)")
        let secondStatus = await second.waitForExit(timeout: .seconds(30))
        #expect(secondStatus == 0, "till 2 exited \(String(describing: secondStatus)):\n\(second.tail(20))")

        // 5. The neighbour's cashier gives up (Ctrl-C cancels): nothing is left on the air.
        next.signal(SIGINT)
        let nextStatus = await next.waitForExit(timeout: .seconds(30))
        #expect(nextStatus == 1, "the neighbour's till exited \(String(describing: nextStatus)):\n\(next.tail(20))")
        _ = try await nearby(expect: 0)

        #expect(try await balance(wallet.accountId) == 100_000 - 1111 - 2222)
        #expect(try await balance(shop.accountId) == 1111 + 2222)
        #expect(try await balance(neighbour.accountId) == 0)
        noteSecret(wallet.pin)
    }
}

@Suite("End to end: a shop with two tills and a neighbour, on loopback", .e2eSystem, .enabled(if: E2EEnv.ready))
struct ShopLoopbackE2ETests {
    @Test("the phone lists three tills, pays none on its own, pays the ones picked", .timeLimit(.minutes(4)))
    func loopbackShop() async throws {
        let system = try e2eSystem()
        let here = E2EShopHost(netns: nil, address: "127.0.0.1", linkFlags: ["--link-address", "127.0.0.1"])
        try await system.shopScenario(E2EShopLayout(till1: here, till2: here, neighbour: here, phone: here, gatewayHost: "127.0.0.1"))
    }
}

/// The hosts `ops/scripts/shop-net.sh up PREFIX` makes: one bridge (the shop's Wi-Fi), the bank (this test
/// process and the whole system), two tills, the neighbour's till and the phone, each its own namespace.
enum E2EShopNet {
    /// Set by ops/scripts/test.sh when it made the namespaces and runs this suite inside PREFIX-bank.
    static var prefix: String? {
        ProcessInfo.processInfo.environment["WIPAY_SHOP_NETNS"].flatMap { $0.isEmpty ? nil : $0 }
    }
    static let bank = "192.168.77.1"
    static let group = "239.255.74.74"
}

@Suite(
    "End to end: a shop across hosts (network namespaces, broadcast and multicast)",
    .e2eSystem(environment: ["WIPAY_HTTP_HOST": "0.0.0.0"]), .enabled(if: E2EEnv.ready && E2EShopNet.prefix != nil))
struct ShopNetworkE2ETests {
    @Test("two tills and a neighbour on three hosts; the phone on a fourth lists them and pays the ones picked", .timeLimit(.minutes(4)))
    func shopAcrossHosts() async throws {
        let system = try e2eSystem()
        let prefix = try #require(E2EShopNet.prefix)
        // Till 1 on the subnet's broadcast address, till 2 on a multicast group, the neighbour on the limited
        // broadcast out of its interface; the phone joins the group and hears broadcasts as well.
        let layout = E2EShopLayout(
            till1: E2EShopHost(netns: "\(prefix)-till1", address: "192.168.77.11", linkFlags: ["--link-address", "192.168.77.255"]),
            till2: E2EShopHost(
                netns: "\(prefix)-till2", address: "192.168.77.12",
                linkFlags: ["--link-address", E2EShopNet.group, "--link-interface", "eth0", "--link-ttl", "1"]),
            neighbour: E2EShopHost(
                netns: "\(prefix)-next", address: "192.168.77.21",
                linkFlags: ["--link-address", "255.255.255.255", "--link-interface", "eth0"]),
            phone: E2EShopHost(
                netns: "\(prefix)-phone", address: "192.168.77.31",
                linkFlags: ["--link-address", E2EShopNet.group, "--link-interface", "eth0"]),
            gatewayHost: E2EShopNet.bank)
        try await system.shopScenario(layout)
    }
}
