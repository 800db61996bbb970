import Crypto
import WiPayBus
import WiPayPayload
import WiPayRuntime

/// The router's payload key: it signs every new request's payload and verifies the payloads that phones
/// hand back in their instructions.
public struct PayloadKeyring: Sendable {
    let signer: PayloadSigner
    let verifier: PayloadVerifier

    public init(privateKey: Curve25519.Signing.PrivateKey) {
        signer = PayloadSigner(privateKey: privateKey)
        verifier = PayloadVerifier(keys: [signer.keyId: signer.publicKeyBytes])
    }

    /// Reads `WIPAY_PAYLOAD_KEY_FILE`, else `WIPAY_PAYLOAD_KEY` (inline base64url); one is required.
    public static func load(_ values: ConfigValues) throws(ConfigError) -> PayloadKeyring {
        let path = values.string(.payloadKeyFile)
        let inline = values.string(.payloadKey)
        do {
            if !path.isEmpty { return PayloadKeyring(privateKey: try PayloadKeyFile.load(path: path)) }
            if !inline.isEmpty { return PayloadKeyring(privateKey: try PayloadKeyFile.parse(inline)) }
        } catch {
            throw ConfigError("payload signing key: \(error) (WIPAY_PAYLOAD_KEY_FILE / WIPAY_PAYLOAD_KEY)")
        }
        throw ConfigError(
            "set WIPAY_PAYLOAD_KEY_FILE (a key file made by `payctl keys payload FILE`) or WIPAY_PAYLOAD_KEY "
                + "(its base64url text): the key that signs payment payloads")
    }

    /// The public keys that verify payloads (the `payload.keys` reply).
    var publicKeys: WiPayBus.PayloadKeys {
        WiPayBus.PayloadKeys(keys: [PayloadKey(keyId: signer.keyId, publicKey: signer.publicKeyBytes)])
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
    public static let sweepIntervalMillis = Setting(
        "WIPAY_SWEEP_INTERVAL_MS", flag: "sweep-interval-ms", default: "1000",
        "payment-router: how often pending requests past their expiry are expired (ms, 50...60000).")
    public static let outboxIntervalMillis = Setting(
        "WIPAY_OUTBOX_INTERVAL_MS", flag: "outbox-interval-ms", default: "200",
        "payment-router: how often undelivered outbox rows are looked for (ms, 10...60000); a commit wakes it too.")
    public static let routerPoolSize = Setting(
        "WIPAY_ROUTER_DB_POOL", flag: "router-db-pool", default: "16",
        "payment-router: PostgreSQL connections (1...256); an instruction holds one while the ledger answers.")
}

/// The router's own settings (the common ones are in `RuntimeConfig`).
public struct RouterSettings: Sendable {
    public var sweepInterval: Duration
    public var outboxInterval: Duration
    public var poolSize: Int
    /// A request with an attempt younger than this is not expired yet: its ledger call may still land.
    public var attemptGrace: Duration

    public init(
        sweepInterval: Duration = .seconds(1), outboxInterval: Duration = .milliseconds(200), poolSize: Int = 16,
        attemptGrace: Duration = .seconds(10)
    ) {
        self.sweepInterval = sweepInterval
        self.outboxInterval = outboxInterval
        self.poolSize = poolSize
        self.attemptGrace = attemptGrace
    }

    public static func load(_ values: ConfigValues) throws(ConfigError) -> RouterSettings {
        RouterSettings(
            sweepInterval: .milliseconds(try values.int(.sweepIntervalMillis, range: 50...60_000)),
            outboxInterval: .milliseconds(try values.int(.outboxIntervalMillis, range: 10...60_000)),
            poolSize: try values.int(.routerPoolSize, range: 1...256))
    }
}
