import Foundation
import Logging
import Metrics
import Postgres
import WiPayBus
import WiPayPayload
import WiPayRuntime

/// The payment-router stage: payment requests and their state machine, onboarding (merchants, terminals,
/// wallets, devices), instructions, refunds, the outbox and the sweeper, in PostgreSQL schema `router`.
/// See docs/payment-flow.md. `handle` serves the bus; `relay()` and `sweeper()` are its background pieces.
public final class PaymentRouter: Sendable {
    let db: RouterDatabase
    let bus: BusClient
    let publisher: BusPublisher?
    let payloads: PayloadKeyring
    let settings: RouterSettings
    let logger: Logger
    let metrics = RouterMetrics()
    /// Rung after a commit that inserted outbox rows: the relay delivers them at once.
    let outboxBell = Doorbell()
    /// Instructions wait here to be handled as batches (`submitInstructions`).
    let instructions: GroupCommitQueue<InstructionSubmit>
    /// Creates wait here to be handled as batches (`createRequests`).
    let creates: GroupCommitQueue<RequestCreate>

    /// How long a device signature is remembered: past twice the gateways' ±300 s window it is refused
    /// as stale anyway.
    static let signatureMemoryMillis: Int64 = 600_000

    static let ledgerService = "ledger"
    static let notifierService = "notifier"

    public init(
        conninfo: String, bus: BusClient, publisher: BusPublisher?, payloads: PayloadKeyring,
        settings: RouterSettings = RouterSettings(), logger: Logger
    ) {
        self.db = RouterDatabase(conninfo: conninfo, size: settings.poolSize)
        self.bus = bus
        self.publisher = publisher
        self.payloads = payloads
        self.settings = settings
        self.logger = logger
        let batches = settings.batches
        instructions = GroupCommitQueue(
            name: "instruction", maxBatch: batches.maxSize, maxInFlight: batches.inFlight, wait: batches.wait,
            keys: { submit in
                // One request, one device's key: never twice in a batch, never in two at once.
                let request = PayloadVerifier.unverifiedFields(of: submit.payload)?.requestId ?? ""
                return ["r:" + request, "k:" + submit.deviceId + "\u{0}" + submit.idempotencyKey]
            })
        creates = GroupCommitQueue(
            name: "create", maxBatch: batches.maxSize, maxInFlight: batches.inFlight, wait: batches.wait,
            keys: { create in ["t:" + create.terminalId + "\u{0}" + create.idempotencyKey] })
    }

    /// Instruction batches handled so far, and the largest (tests and diagnostics).
    public var instructionBatches: (batches: Int, largest: Int) { instructions.stats }
    /// Create batches handled so far, and the largest.
    public var createBatches: (batches: Int, largest: Int) { creates.stats }

    /// Applies migrations, retrying while PostgreSQL is not up yet (bounded: `timeout`).
    public func migrate(timeout: Duration = .seconds(30)) async throws {
        try await pgRetryingUntilReachable(timeout: timeout, onRetry: { error in
            logger.warning("database not reachable yet; retrying", metadata: ["error": "\(error)"])
        }) {
            try await db.pool.blocking { try RouterSchema.migrate($0) }
        }
    }

    /// Healthy when the database answers and no pooled connection is waiting to reconnect.
    public func healthCheck() async -> (Bool, String) {
        await pgHealthCheck(db.pool)
    }

    public func handle(_ message: BusMessage) async -> BusReply {
        let type = message.envelope.type
        let reply: BusReply
        do {
            switch type {
            case .ping: reply = .ok(Empty())
            case .requestCreate:
                reply = await creates.submit(try RequestCreate.decode(message.body)) { [self] in await createRequests($0) }
            case .requestGet: reply = try await getRequest(try RequestRef.decode(message.body))
            case .requestList: reply = try await listRequests(try RequestList.decode(message.body))
            case .requestCancel: reply = try await cancelRequest(try RequestRef.decode(message.body))
            case .instructionSubmit: reply = await instructions.submit(try InstructionSubmit.decode(message.body)) { [self] in
                    await submitInstructions($0)
                }
            case .refundCreate: reply = try await createRefund(try RefundCreate.decode(message.body))
            case .merchantAdd: reply = try await addMerchant(try MerchantAdd.decode(message.body), message.envelope)
            case .terminalAdd: reply = try await addTerminal(try TerminalAdd.decode(message.body))
            case .terminalAuth: reply = try await authTerminal(try TerminalAuth.decode(message.body))
            case .walletAdd: reply = try await addWallet(try WalletAdd.decode(message.body), message.envelope)
            case .deviceEnroll: reply = try await enrollDevice(try DeviceEnroll.decode(message.body))
            case .deviceGet: reply = try await getDevice(try DeviceRef.decode(message.body))
            case .accountSummary: reply = try await accountSummary(try AccountRef.decode(message.body))
            case .paymentTrace: reply = try await trace(try TraceQuery.decode(message.body))
            case .payloadKeys: reply = .ok(payloads.publicKeys)
            default:
                reply = .error(.unknownType, "unknown_type", "the payment-router does not handle \(type)")
            }
        } catch {
            reply = errorReply(error, type: type)
        }
        metrics.request(type, reply.status)
        return reply
    }

    /// The answer to a handler's error: a `RouterError` as it is, PostgreSQL's errors as the contract's
    /// `bad_request`, `database_busy` (503) or `router_unavailable` (503).
    func errorReply(_ error: any Error, type: MessageType) -> BusReply {
        switch error {
        case let error as RouterError:
            return error.reply
        case let error as BusDecodeError:
            return .error(.badRequest, "bad_request", "\(error)")
        case let error as PGError where error.isDataError:
            return .error(.badRequest, "bad_request", "the request holds data the router cannot store: \(error.message)")
        case let error as PGError where error.isPoolBusy:
            logger.warning("database busy", metadata: ["error": "\(error)", "bus.type": "\(type)"])
            return .error(.unavailable, "database_busy", "the router's database connections are all busy; retry")
        case let error as PGError:
            logger.error("database error", metadata: ["error": "\(error)", "bus.type": "\(type)"])
            return .error(.unavailable, "router_unavailable", "the router's database is not available; retry")
        default:
            logger.error("unexpected error", metadata: ["error": "\(error)", "bus.type": "\(type)"])
            return .error(.internalError, "internal_error", "unexpected router error")
        }
    }
}

/// A refusal with its bus status and the contract's code: thrown by handlers, answered as an `ErrorBody`.
struct RouterError: Error, Sendable, CustomStringConvertible {
    let status: Status
    let code: String
    let message: String

    init(_ status: Status, _ code: String, _ message: String) {
        self.status = status
        self.code = code
        self.message = message
    }

    var reply: BusReply { .error(status, code, message) }
    var description: String { "\(code) (\(status)): \(message)" }

    static let forbidden = Status(rawValue: 403)
    static let unauthorized = Status(rawValue: 401)

    static func invalid(_ code: String, _ message: String) -> RouterError { RouterError(.badRequest, code, message) }
    static func notFound(_ code: String, _ message: String) -> RouterError { RouterError(.notFound, code, message) }
    static let idempotencyKeyReused = RouterError(
        .conflict, "idempotency_key_reused", "this idempotency key was used with a different body")
    static let ledgerUnavailable = RouterError(
        .unavailable, "ledger_unavailable", "the ledger did not answer; retry with the same idempotency key")
}

/// Checks of values that came from outside.
enum RouterLimits {
    static let maxAmount: Int64 = 1_000_000_000_000

    /// An idempotency key: 1-255 visible ASCII characters.
    static func checkIdempotencyKey(_ key: String?) throws(RouterError) -> String {
        guard let key, !key.isEmpty else {
            throw .invalid("idempotency_key_missing", "an Idempotency-Key is required")
        }
        guard key.utf8.count <= 255, key.utf8.allSatisfy({ $0 >= 0x21 && $0 <= 0x7E }) else {
            throw .invalid("idempotency_key_invalid", "an Idempotency-Key is 1 to 255 visible ASCII characters")
        }
        return key
    }

    static func checkBodyHash(_ hash: String) throws(RouterError) {
        guard !hash.isEmpty, hash.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x66) }) else {
            throw .invalid("invalid_body_hash", "the body hash is the lowercase hex SHA-256 of the body")
        }
    }

    static func checkAmount(_ amount: Int64) throws(RouterError) {
        guard amount >= 1, amount <= maxAmount else {
            throw .invalid("invalid_amount", "an amount is 1 to 10^12 minor units")
        }
    }

    static func checkCurrency(_ currency: String) throws(RouterError) {
        guard Currency.isKnown(currency) else {
            throw .invalid("unknown_currency", "'\(currency)' is not an ISO 4217 currency code")
        }
    }

    /// A name: 1 to 100 characters after trimming, no control characters. Returns it trimmed.
    static func checkName(_ name: String) throws(RouterError) -> String {
        let trimmed = name.trimmingCharacters(in: .whitespacesAndNewlines)
        guard !trimmed.isEmpty, trimmed.count <= 100,
            !trimmed.unicodeScalars.contains(where: { $0.properties.generalCategory == .control })
        else { throw .invalid("invalid_name", "a name is 1 to 100 characters") }
        return trimmed
    }

    /// Ids we hand out are `[a-z0-9_]`; anything else cannot exist (and is not sent to the database).
    static func isPlausibleId(_ id: String) -> Bool {
        !id.isEmpty && id.utf8.count <= 64
            && id.utf8.allSatisfy { ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x5F }
    }
}

/// The router's metrics (swift-metrics; dotted names, Prometheus shows them with underscores).
final class RouterMetrics: Sendable {
    private let requests = Locked<[UInt32: Counter]>([:])
    private let outcomes = Locked<[String: Counter]>([:])
    let outboxPending = Gauge(label: "wipay.router.outbox.pending")
    let ledgerDuration = Timer(label: "wipay.router.ledger.duration", preferredDisplayUnit: .seconds)
    /// Instructions a batch could not take, handled on their own.
    let instructionsAlone = Counter(label: "wipay.router.instructions.alone")

    func request(_ type: MessageType, _ status: Status) {
        let key = UInt32(type.rawValue) << 16 | UInt32(status.rawValue)
        let counter = requests.withLock { cache in
            if let found = cache[key] { return found }
            let made = Counter(
                label: "wipay.router.requests", dimensions: [("type", type.description), ("status", status.description)])
            cache[key] = made
            return made
        }
        counter.increment()
    }

    /// One instruction outcome or final state: `succeeded`, `expired`, `canceled` or a decline code.
    func outcome(_ code: String) {
        let counter = outcomes.withLock { cache in
            if let found = cache[code] { return found }
            let made = Counter(label: "wipay.router.outcomes", dimensions: [("code", code)])
            cache[code] = made
            return made
        }
        counter.increment()
    }
}

/// Wiring for `main` and the tests.
public enum PaymentRouterStage {
    public static func run(config: RuntimeConfig) async throws {
        let payloads = try PayloadKeyring.load(config.values)
        let settings = try RouterSettings.load(config.values)
        let runtime = try Runtime(config: config)
        let router = PaymentRouter(
            conninfo: config.databaseURL, bus: try runtime.client(), publisher: try runtime.publisher(),
            payloads: payloads, settings: settings, logger: runtime.logger)
        try await router.migrate()
        try await runtime.run(
            handler: { message in
                message.envelope.type == .ping ? .ok(runtime.status()) : await router.handle(message)
            }, services: [router.relay(), router.sweeper()],
            healthCheck: { await router.healthCheck() })
    }
}
