import Crypto
import WiPayBus
import WiPayPayload
import WiPayRuntime

/// The router's payload key: it signs every new request's payload and verifies the payloads that phones
/// hand back in their instructions.
public struct PayloadKeyring: Sendable {
    let signer: PayloadSigner
    let verifier: PayloadVerifier
    /// Key id → raw public key: the signing key first, then the previous keys still accepted.
    let published: [(keyId: String, publicKey: [UInt8])]

    /// `previous`: keys replaced by a rotation whose payloads are still accepted (and published to phones)
    /// until the requests they signed have expired.
    public init(privateKey: Curve25519.Signing.PrivateKey, previous: [Curve25519.Signing.PrivateKey] = []) {
        signer = PayloadSigner(privateKey: privateKey)
        var published = [(keyId: signer.keyId, publicKey: signer.publicKeyBytes)]
        for key in previous {
            let old = PayloadSigner(privateKey: key)
            if !published.contains(where: { $0.keyId == old.keyId }) {
                published.append((keyId: old.keyId, publicKey: old.publicKeyBytes))
            }
        }
        self.published = published
        verifier = PayloadVerifier(keys: Dictionary(published.map { ($0.keyId, $0.publicKey) }, uniquingKeysWith: { a, _ in a }))
    }

    /// Reads `WIPAY_PAYLOAD_KEY_FILE`, else `WIPAY_PAYLOAD_KEY` (inline base64url); one is required. Keys
    /// being rotated out are listed in `WIPAY_PAYLOAD_PREVIOUS_KEY_FILES` (comma-separated files).
    public static func load(_ values: ConfigValues) throws(ConfigError) -> PayloadKeyring {
        let path = values.string(.payloadKeyFile)
        let inline = values.string(.payloadKey)
        var previous: [Curve25519.Signing.PrivateKey] = []
        for old in values.string(.payloadPreviousKeyFiles).split(separator: ",") {
            let file = old.trimmingCharacters(in: .whitespaces)
            guard !file.isEmpty else { continue }
            do {
                previous.append(try PayloadKeyFile.load(path: file))
            } catch {
                throw ConfigError("previous payload key: \(error) (WIPAY_PAYLOAD_PREVIOUS_KEY_FILES)")
            }
        }
        do {
            if !path.isEmpty { return PayloadKeyring(privateKey: try PayloadKeyFile.load(path: path), previous: previous) }
            if !inline.isEmpty { return PayloadKeyring(privateKey: try PayloadKeyFile.parse(inline), previous: previous) }
        } catch {
            throw ConfigError("payload signing key: \(error) (WIPAY_PAYLOAD_KEY_FILE / WIPAY_PAYLOAD_KEY)")
        }
        throw ConfigError(
            "set WIPAY_PAYLOAD_KEY_FILE (a key file made by `payctl keys payload FILE`) or WIPAY_PAYLOAD_KEY "
                + "(its base64url text): the key that signs payment payloads")
    }

    /// The public keys that verify payloads (the `payload.keys` reply): the signing key and the previous ones.
    var publicKeys: WiPayBus.PayloadKeys {
        WiPayBus.PayloadKeys(keys: published.map { PayloadKey(keyId: $0.keyId, publicKey: $0.publicKey) })
    }

    func sign(_ payload: PaymentPayload) throws(PayloadError) -> String { try signer.sign(payload) }

    func verify(_ text: String, nowSeconds: Int64) throws(PayloadError) -> PaymentPayload {
        try verifier.verify(text, nowSeconds: nowSeconds)
    }
}

extension Setting {
    public static let payloadKeyFile = Setting(
        "WIPAY_PAYLOAD_KEY_FILE", flag: "payload-key-file", default: "",
        "payment-router: file with the payload signing key (base64url of the raw Ed25519 private key).")
    public static let payloadKey = Setting(
        "WIPAY_PAYLOAD_KEY", flag: "payload-key", default: "",
        "payment-router: the payload signing key inline (base64url), when no key file is given.")
    public static let payloadPreviousKeyFiles = Setting(
        "WIPAY_PAYLOAD_PREVIOUS_KEY_FILES", flag: "payload-previous-key-files", default: "",
        "payment-router: comma-separated key files of rotated-out payload keys, still accepted and published.")
    public static let sweepIntervalMillis = Setting(
        "WIPAY_SWEEP_INTERVAL_MS", flag: "sweep-interval-ms", default: "1000",
        "payment-router: how often pending requests past their expiry are expired (ms, 50...60000).")
    public static let outboxIntervalMillis = Setting(
        "WIPAY_OUTBOX_INTERVAL_MS", flag: "outbox-interval-ms", default: "200",
        "payment-router: how often undelivered outbox rows are looked for (ms, 10...60000); a commit wakes it too.")
    public static let routerPoolSize = Setting(
        "WIPAY_ROUTER_DB_POOL", flag: "router-db-pool", default: "16",
        "payment-router: PostgreSQL connections (1...256); an instruction holds one while the ledger answers.")
    public static let routerBatchMax = Setting(
        "WIPAY_ROUTER_BATCH_MAX", flag: "router-batch-max", default: "64",
        "payment-router: most instructions handled as one batch (1...200): one lookup trip, one commit of attempts, one ledger call, one commit of outcomes.")
    public static let routerBatches = Setting(
        "WIPAY_ROUTER_BATCHES", flag: "router-batches", default: "2",
        "payment-router: instruction batches in flight at once (1...16); each holds one database connection.")
    public static let routerBatchWaitMicros = Setting(
        "WIPAY_ROUTER_BATCH_WAIT_US", flag: "router-batch-wait-us", default: "0",
        "payment-router: how long a batch that is not full waits for more instructions (microseconds, 0...100000); 0 takes what queued while the last batch ran.")
    public static let maxDeclinedAttempts = Setting(
        "WIPAY_MAX_DECLINED_ATTEMPTS", flag: "max-declined-attempts", default: "5",
        "payment-router: declined instruction attempts (wrong PIN, insufficient funds, locked wallet, other currency) a request takes before it is final declined (1...100).")
}

/// The router's own settings (the common ones are in `RuntimeConfig`).
public struct RouterSettings: Sendable {
    public var sweepInterval: Duration
    public var outboxInterval: Duration
    public var poolSize: Int
    /// A request with an attempt younger than this is not expired yet: its ledger call may still land.
    public var attemptGrace: Duration
    /// Declined attempts a request takes before it is final `declined` (`attempts_exhausted`).
    public var maxDeclinedAttempts: Int
    /// How instructions are batched.
    public var batches: BatchSettings

    /// Group commit of instructions (docs/payment-flow.md, "Batches").
    public struct BatchSettings: Sendable {
        /// Most instructions per batch.
        public var maxSize: Int
        /// Batches in flight at once (each holds a connection).
        public var inFlight: Int
        /// How long a batch that is not full waits for more; zero takes what queued meanwhile.
        public var wait: Duration

        public init(maxSize: Int = 64, inFlight: Int = 2, wait: Duration = .zero) {
            self.maxSize = min(max(maxSize, 1), 200)
            self.inFlight = min(max(inFlight, 1), 16)
            self.wait = wait
        }
    }

    public init(
        sweepInterval: Duration = .seconds(1), outboxInterval: Duration = .milliseconds(200), poolSize: Int = 16,
        attemptGrace: Duration = .seconds(10), maxDeclinedAttempts: Int = RequestStateMachine.defaultMaxDeclinedAttempts,
        batches: BatchSettings = BatchSettings()
    ) {
        self.batches = batches
        self.maxDeclinedAttempts = min(
            max(maxDeclinedAttempts, RequestStateMachine.maxDeclinedAttemptsRange.lowerBound),
            RequestStateMachine.maxDeclinedAttemptsRange.upperBound)
        self.sweepInterval = sweepInterval
        self.outboxInterval = outboxInterval
        self.poolSize = poolSize
        self.attemptGrace = attemptGrace
    }

    public static func load(_ values: ConfigValues) throws(ConfigError) -> RouterSettings {
        RouterSettings(
            sweepInterval: .milliseconds(try values.int(.sweepIntervalMillis, range: 50...60_000)),
            outboxInterval: .milliseconds(try values.int(.outboxIntervalMillis, range: 10...60_000)),
            poolSize: try values.int(.routerPoolSize, range: 1...256),
            maxDeclinedAttempts: try values.int(.maxDeclinedAttempts, range: RequestStateMachine.maxDeclinedAttemptsRange),
            batches: BatchSettings(
                maxSize: try values.int(.routerBatchMax, range: 1...200), inFlight: try values.int(.routerBatches, range: 1...16),
                wait: .microseconds(try values.int(.routerBatchWaitMicros, range: 0...100_000))))
    }
}
