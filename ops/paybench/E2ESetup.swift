import Foundation
import WiPayBus
import WiPayClient
import WiPayPayload

/// A terminal the bench charges with.
struct E2ETerminal: Sendable {
    let terminalId: String
    let key: String
    let merchantId: String
}

/// An enrolled phone with its wallet.
struct E2EPhone: Sendable {
    let accountId: String
    let identity: DeviceIdentity
}

struct E2EWorld: Sendable {
    let terminals: [E2ETerminal]
    let phones: [E2EPhone]
    let verifier: PayloadVerifier
}

struct E2ESetupError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// The untimed setup: merchants, terminals and funded wallets over the bus (as payctl does it), one
/// device per wallet enrolled over HTTP, and the payload keys.
struct E2ESetup {
    let bus: BusClient
    let phoneURL: String
    let currency: String
    let merchants: Int
    let terminalsPerMerchant: Int
    let wallets: Int
    let pin: String
    let fundingMinor: Int64
    let label: String
    /// Onboarding calls in flight at once.
    let parallel = 16

    func run() async throws -> E2EWorld {
        // The first call waits for the router to be there (the script starts everything at once).
        let (_, first) = try await callRouter(.merchantAdd, MerchantAdd(name: "\(label) merchant 0", currency: currency), as: MerchantInfo.self, patient: true)
        var merchantIds = [first.merchantId]
        merchantIds += try await inParallel(1..<merchants) { i in
            try await callRouter(.merchantAdd, MerchantAdd(name: "\(label) merchant \(i)", currency: currency), as: MerchantInfo.self).1.merchantId
        }
        let terminalSpecs = merchantIds.flatMap { m in (0..<terminalsPerMerchant).map { (m, $0) } }
        let terminals = try await inParallel(0..<terminalSpecs.count) { i in
            let (merchantId, n) = terminalSpecs[i]
            let issued = try await callRouter(
                .terminalAdd, TerminalAdd(merchantId: merchantId, name: "\(label) till \(n)"), as: TerminalIssued.self
            ).1
            return E2ETerminal(terminalId: issued.terminalId, key: issued.terminalKey, merchantId: merchantId)
        }

        let funding = "funding-\(currency)"
        _ = try await bus.call(
            service: "ledger", type: .accountOpen,
            AccountOpen(accountId: funding, kind: .funding, currency: currency, name: "funding \(currency)", pin: nil),
            as: AccountInfo.self, totalTimeout: .seconds(30))

        let phoneURL = self.phoneURL
        let enrollClient = try HTTPClient(baseURL: phoneURL, timeouts: .init(connect: .seconds(5), response: .seconds(20)))
        defer { enrollClient.close() }
        let phones = try await inParallel(0..<wallets) { i in
            let issued = try await callRouter(
                .walletAdd, WalletAdd(name: "\(label) shopper \(i)", pin: pin, currency: currency), as: WalletIssued.self
            ).1
            _ = try await bus.call(
                service: "ledger", type: .transferPost,
                TransferPost(
                    transferId: "\(label)-fund-\(i)", kind: .funding, debitAccountId: funding, creditAccountId: issued.accountId,
                    amountMinor: fundingMinor, currency: currency),
                as: TransferResult.self, totalTimeout: .seconds(30))
            var seed = [UInt8](repeating: 0, count: 32)
            var rng = SystemRandomNumberGenerator()
            for j in seed.indices { seed[j] = UInt8.random(in: 0...255, using: &rng) }
            let draft = try DeviceIdentity(deviceId: "", rawPrivateKey: seed)
            let body: JSON = [
                "enrollment_code": .string(issued.enrollmentCode), "public_key": .string(draft.publicKeyBase64URL),
                "name": .string("\(label) phone \(i)"),
            ]
            let response = try await enrollClient.post("/v1/devices", json: body)
            guard response.status == 201, let deviceId = try? response.json()["device_id"]?.string else {
                throw E2ESetupError("enrolling a device: HTTP \(response.status) \(response.text.prefix(200))")
            }
            return E2EPhone(accountId: issued.accountId, identity: try DeviceIdentity(deviceId: deviceId, rawPrivateKey: seed))
        }

        let keysResponse = try await enrollClient.get("/v1/payload-keys")
        guard keysResponse.status == 200, let keysJSON = try? keysResponse.json() else {
            throw E2ESetupError("GET /v1/payload-keys: HTTP \(keysResponse.status)")
        }
        let keys = PayloadKeySet.parse(keysJSON)
        guard !keys.isEmpty else { throw E2ESetupError("GET /v1/payload-keys returned no usable key") }
        return E2EWorld(terminals: terminals, phones: phones, verifier: PayloadVerifier(keys: keys))
    }

    private func callRouter<Request: BusEncodable, Reply: BusEncodable>(
        _ type: MessageType, _ request: Request, as reply: Reply.Type, patient: Bool = false
    ) async throws -> (Status, Reply) {
        do {
            return try await bus.call(
                service: "payment-router", type: type, request, as: reply, attemptTimeout: .seconds(5),
                totalTimeout: patient ? .seconds(60) : .seconds(30))
        } catch {
            switch error {
            case .rejected(_, let body): throw E2ESetupError("\(type): \(body.code): \(body.message)")
            case .timedOut: throw E2ESetupError("\(type): no answer from the payment-router — is it running?")
            default: throw E2ESetupError("\(type): \(error)")
            }
        }
    }

    /// Runs `body` for every index with at most `parallel` at once; results in index order.
    private func inParallel<T: Sendable>(
        _ range: Range<Int>, _ body: @escaping @Sendable (Int) async throws -> T
    ) async throws -> [T] {
        guard !range.isEmpty else { return [] }
        return try await withThrowingTaskGroup(of: (Int, T).self) { group in
            var results = [T?](repeating: nil, count: range.count)
            var next = range.lowerBound
            while next < range.upperBound && next - range.lowerBound < parallel {
                let i = next
                group.addTask { (i, try await body(i)) }
                next += 1
            }
            while let (i, value) = try await group.next() {
                results[i - range.lowerBound] = value
                if next < range.upperBound {
                    let j = next
                    group.addTask { (j, try await body(j)) }
                    next += 1
                }
            }
            return results.compactMap { $0 }
        }
    }
}
