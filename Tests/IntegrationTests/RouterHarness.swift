// The payment-router on a real PostgreSQL with the real ledger, over a real broker, all in-process:
// a fresh database (schemas `ledger` and `router`), a broker on free ports, a ledger worker, a router
// worker with its outbox relay and sweeper, and a fake notifier worker that records what it is given.
// Tests call the router with a `BusClient`, as the gateways and payctl do.

import BusBroker
import Foundation
import LedgerService
import Logging
import PaymentRouterService
import Postgres
import Testing
import WiPayBus
import WiPayRuntime

/// The fake notifier: answers `outcome.deliver` with `ok` (or `exists` for a sequence number seen before)
/// and `outcome.deliver.batch` with `ok`, and keeps every delivery (`batches` counts the batch calls).
final class RTNotifier: Sendable {
    let deliveries = TSLocked<[OutcomePublished]>([])
    let batches = TSLocked<Int>(0)
    /// False: answers batches as an older notifier would (`unknownType`).
    let acceptsBatches = TSLocked<Bool>(true)

    var handler: BusWorker.Handler {
        { [deliveries, batches, acceptsBatches] message in
            if message.envelope.type == .outcomeDeliverBatch {
                guard acceptsBatches.value else { return .error(.unknownType, "unknown_type", "no batches here") }
                guard let batch = try? OutcomeBatch.decode(message.body) else {
                    return .error(.badRequest, "bad_request", "not a batch")
                }
                batches.withLock { $0 += 1 }
                deliveries.withLock { $0.append(contentsOf: batch.outcomes) }
                return .ok(Empty())
            }
            guard message.envelope.type == .outcomeDeliver, let outcome = try? OutcomePublished.decode(message.body) else {
                return .error(.badRequest, "bad_request", "not an outcome")
            }
            let seen = deliveries.withLock { list -> Bool in
                let seen = list.contains { $0.outboxSeq == outcome.outboxSeq }
                list.append(outcome)
                return seen
            }
            return .ok(Empty(), status: seen ? .exists : .ok)
        }
    }

    var all: [OutcomePublished] { deliveries.value }

    func events(for requestId: String) -> [String] {
        all.filter { $0.requestId == requestId }.map(\.eventType)
    }
}

/// One test's world. `stop()` tears everything down.
final class RTWorld: Sendable {
    let bus: BTHarness
    let db: TSDatabase
    let ledger: Ledger
    let router: PaymentRouter
    let client: BusClient
    let notifier = RTNotifier()
    let events: BTSubscriber
    private let tasks = TSLocked<[Task<Void, Never>]>([])
    private let notifierWorker = TSLocked<BTWorker?>(nil)

    private init(bus: BTHarness, db: TSDatabase, ledger: Ledger, router: PaymentRouter, client: BusClient, events: BTSubscriber) {
        self.bus = bus
        self.db = db
        self.ledger = ledger
        self.router = router
        self.client = client
        self.events = events
    }

    /// A random payload signing key (any 32 bytes are an Ed25519 private key), as base64url.
    static func payloadKeyText() -> String {
        let bytes = (0..<32).map { _ in UInt8.random(in: 0...255) }
        return Data(bytes).base64EncodedString().replacingOccurrences(of: "+", with: "-")
            .replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
    }

    static func start(withNotifier: Bool = true, attemptGrace: Duration = .seconds(10)) async throws -> RTWorld {
        let bus = try BTHarness.start()
        let db: TSDatabase
        do {
            db = try await TSDatabase.create(prefix: "routertest")
        } catch {
            bus.shutdown()
            throw error
        }
        let ledger = Ledger(conninfo: db.conninfo, pins: TSEnv.pins, batch: BatchSettings(), logger: tsQuietLogger)
        let payloads = try PayloadKeyring.load(ConfigValues(environment: ["WIPAY_PAYLOAD_KEY": payloadKeyText()]))
        let router = PaymentRouter(
            conninfo: db.conninfo, bus: try bus.client("payment-router/test"), publisher: try bus.publisher("payment-router/test"),
            payloads: payloads,
            settings: RouterSettings(
                sweepInterval: .milliseconds(50), outboxInterval: .milliseconds(50), poolSize: 16, attemptGrace: attemptGrace),
            logger: tsQuietLogger)
        let world = RTWorld(
            bus: bus, db: db, ledger: ledger, router: router, client: try bus.client("test/gateway"),
            events: try bus.subscriber([Topic.outcomePrefix]))
        do {
            try await ledger.migrate(timeout: .seconds(10))
            try await router.migrate(timeout: .seconds(10))
            let ledgerWorker = try bus.worker("ledger", "ledger-1") { await ledger.handle($0) }
            let routerWorker = try bus.worker("payment-router", "router-1") { await router.handle($0) }
            if withNotifier { try world.startNotifier() }
            world.tasks.withLock {
                $0.append(Task { try? await router.relay().run() })
                $0.append(Task { try? await router.sweeper().run() })
            }
            guard await tsWait(timeout: .seconds(5), { ledgerWorker.isRegistered && routerWorker.isRegistered }) else {
                throw TSFailure("workers did not register with the broker")
            }
            // The ledger's funding accounts for the currencies the tests use.
            for currency in ["USD", "EUR"] {
                let reply = await ledger.handle(tsMessage(.accountOpen, body: TSFixture.funding(currency).encoded()))
                guard reply.status.isSuccess else { throw TSFailure("cannot open funding-\(currency)") }
            }
        } catch {
            await world.stop()
            throw error
        }
        return world
    }

    func startNotifier() throws {
        let worker = try bus.worker("notifier", "notifier-1", handler: notifier.handler)
        notifierWorker.withLock { $0 = worker }
    }

    func stop() async {
        for task in tasks.withLock({ $0 }) { task.cancel() }
        for task in tasks.withLock({ $0 }) { await task.value }
        bus.shutdown()
        await TSBlocking.run { self.ledger.stop() }
        await db.drop()
    }

    // MARK: calls

    /// Sends one request to the router and returns the raw reply. Generous deadlines: the whole suite runs
    /// in parallel on as few as 2 cores, where CPU-bound tests can hold the cooperative pool long enough for
    /// the in-process broker to drop a worker whose heartbeat is late (it comes back with the next one).
    func send<T: BusEncodable>(_ type: MessageType, _ body: T) async throws -> BusMessage {
        try await client.send(
            service: "payment-router", type: type, body: body.encoded(), attemptTimeout: .seconds(4), totalTimeout: .seconds(40))
    }

    /// A reply decoded as `R` (for 2xx, or for any status when `anyStatus`), plus its status.
    func call<T: BusEncodable, R: BusEncodable>(
        _ type: MessageType, _ body: T, as: R.Type, sourceLocation: SourceLocation = #_sourceLocation
    ) async throws -> (Status, R) {
        let reply = try await send(type, body)
        guard reply.envelope.status.isSuccess else {
            let error = try? ErrorBody.decode(reply.body)
            throw TSFailure("\(type) answered \(reply.envelope.status) \(error?.code ?? "?"): \(error?.message ?? "")")
        }
        return (reply.envelope.status, try R.decode(reply.body))
    }

    /// The status and error code of a refusal.
    func refusal<T: BusEncodable>(_ type: MessageType, _ body: T) async throws -> (Status, String) {
        let reply = try await send(type, body)
        let code = (try? ErrorBody.decode(reply.body))?.code ?? "<no error body>"
        return (reply.envelope.status, code)
    }

    // MARK: fixtures

    struct Shop {
        var merchant: MerchantInfo
        var terminal: TerminalIssued
    }

    func shop(_ name: String = "Corner Café", currency: String = "USD") async throws -> Shop {
        let (_, merchant) = try await call(.merchantAdd, MerchantAdd(name: name, currency: currency), as: MerchantInfo.self)
        let (_, terminal) = try await call(
            .terminalAdd, TerminalAdd(merchantId: merchant.merchantId, name: "till 1"), as: TerminalIssued.self)
        return Shop(merchant: merchant, terminal: terminal)
    }

    struct Payer {
        var accountId: String
        var device: DeviceInfo
        var pin: String
    }

    /// A wallet with `balance`, enrolled on a new device.
    func payer(_ name: String = "Alice", balance: Int64, currency: String = "USD", pin: String = "1234") async throws -> Payer {
        let (_, wallet) = try await call(.walletAdd, WalletAdd(name: name, pin: pin, currency: currency), as: WalletIssued.self)
        if balance > 0 {
            let post = TSFixture.fund("fund-\(wallet.accountId)", to: wallet.accountId, balance, currency: currency)
            let reply = await ledger.handle(tsMessage(.transferPost, body: post.encoded()))
            guard reply.status == .ok else { throw TSFailure("funding failed: \(reply.tsCode ?? "?")") }
        }
        let key = (0..<32).map { _ in UInt8.random(in: 0...255) }
        let (_, device) = try await call(
            .deviceEnroll, DeviceEnroll(enrollmentCode: wallet.enrollmentCode, publicKey: key, name: "\(name)'s phone"),
            as: DeviceInfo.self)
        return Payer(accountId: wallet.accountId, device: device, pin: pin)
    }

    func create(
        _ shop: Shop, amount: Int64, currency: String = "USD", key: String = UUID().uuidString, hash: String? = nil,
        reference: String = "order-42", expiresIn: Int64 = 120
    ) -> RequestCreate {
        RequestCreate(
            idempotencyKey: key, bodyHash: hash ?? Self.hash("\(amount)-\(currency)-\(reference)-\(expiresIn)"),
            terminalId: shop.terminal.terminalId, merchantId: shop.merchant.merchantId, amountMinor: amount,
            currency: currency, reference: reference, description: "2 coffees", expiresInSeconds: expiresIn)
    }

    func newRequest(_ shop: Shop, amount: Int64, expiresIn: Int64 = 120) async throws -> PaymentRequestInfo {
        try await call(.requestCreate, create(shop, amount: amount, expiresIn: expiresIn), as: PaymentRequestInfo.self).1
    }

    func instruction(_ payer: Payer, _ request: PaymentRequestInfo, key: String = UUID().uuidString, pin: String? = nil)
        -> InstructionSubmit
    {
        InstructionSubmit(
            idempotencyKey: key, bodyHash: Self.hash("\(request.payload)-\(pin ?? payer.pin)"),
            deviceId: payer.device.deviceId, accountId: payer.accountId, payload: request.payload, pin: pin ?? payer.pin)
    }

    /// Submits an instruction; returns the status and the `InstructionResult` (200, 208 and 422 carry one).
    func pay(_ submit: InstructionSubmit) async throws -> (Status, InstructionResult) {
        let reply = try await send(.instructionSubmit, submit)
        guard let result = try? InstructionResult.decode(reply.body) else {
            let error = try? ErrorBody.decode(reply.body)
            throw TSFailure("instruction answered \(reply.envelope.status) \(error?.code ?? "?") \(error?.message ?? "")")
        }
        return (reply.envelope.status, result)
    }

    func get(_ shop: Shop, _ id: String) async throws -> PaymentRequestInfo {
        try await call(.requestGet, RequestRef(requestId: id, merchantId: shop.merchant.merchantId), as: PaymentRequestInfo.self).1
    }

    func balance(_ account: String) async throws -> Int64 { try await db.balance(account) }

    /// A fake lowercase hex "SHA-256" of a body (64 hex characters, stable per text).
    static func hash(_ text: String) -> String {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in text.utf8 {
            h = (h ^ UInt64(byte)) &* 0x100_0000_01b3
        }
        let part = String(h, radix: 16)
        return String(repeating: "0", count: 64 - part.count) + part
    }

    /// Waits until the fake notifier has `events` for `requestId` (in that order).
    func waitForNotices(_ requestId: String, _ events: [String], timeout: Duration = .seconds(10)) async -> Bool {
        await tsWait(timeout: timeout) { self.notifier.events(for: requestId) == events }
    }
}

/// Runs `body` in a fresh world and always tears it down.
func withRouterWorld<T: Sendable>(
    withNotifier: Bool = true, attemptGrace: Duration = .seconds(10), _ body: (RTWorld) async throws -> T
) async throws -> T {
    let world = try await RTWorld.start(withNotifier: withNotifier, attemptGrace: attemptGrace)
    do {
        let result = try await body(world)
        await world.stop()
        return result
    } catch {
        await world.stop()
        throw error
    }
}
