import ArgumentParser
import Foundation
import WiPayBus

/// One configuration key: its environment variable, its flag, its default and what it means.
/// Every setting of every service is listed in `Setting.all`, the one place defaults live.
public struct Setting: Sendable, Hashable {
    public let env: String
    public let flag: String
    public let defaultValue: String
    public let help: String

    public init(_ env: String, flag: String, default defaultValue: String, _ help: String) {
        self.env = env
        self.flag = flag
        self.defaultValue = defaultValue
        self.help = help
    }

    public static let busHost = Setting("WIPAY_BUS_HOST", flag: "bus-host", default: "127.0.0.1", "Host of the bus broker.")
    public static let busPort = Setting(
        "WIPAY_BUS_PORT", flag: "bus-port", default: "5550",
        "First of the broker's four ports: requests in, workers, events in, events out.")
    public static let busBindHost = Setting(
        "WIPAY_BUS_BIND_HOST", flag: "bus-bind-host", default: "127.0.0.1", "Where the bus broker binds (bus only).")
    public static let instance = Setting(
        "WIPAY_INSTANCE", flag: "instance", default: "", "Instance id; empty = <service>-<host>-<pid>.")
    public static let httpHost = Setting("WIPAY_HTTP_HOST", flag: "http-host", default: "127.0.0.1", "HTTP listen host.")
    public static let httpPort = Setting(
        "WIPAY_HTTP_PORT", flag: "http-port", default: "",
        "HTTP port (/healthz, /metrics and, for gateways, the API); empty = the service's default, 0 = any free port.")
    public static let httpsPort = Setting(
        "WIPAY_HTTPS_PORT", flag: "https-port", default: "",
        "HTTPS port: the same routes as HTTP, over TLS (phones' browsers need it for the wallet page); empty = off, 0 = any free port.")
    public static let tlsCertFile = Setting(
        "WIPAY_TLS_CERT_FILE", flag: "tls-cert-file", default: "", "PEM certificate chain for HTTPS (the server's first).")
    public static let tlsKeyFile = Setting(
        "WIPAY_TLS_KEY_FILE", flag: "tls-key-file", default: "", "PEM private key for HTTPS.")
    public static let controlBind = Setting(
        "WIPAY_CONTROL_BIND", flag: "control-bind", default: "tcp://127.0.0.1:*",
        "Control socket (payctl status/drain); '*' as port picks a free one.")
    public static let advertiseHost = Setting(
        "WIPAY_ADVERTISE_HOST", flag: "advertise-host", default: "",
        "Host others use to reach this instance's control socket; empty = the bind host, or the hostname for 0.0.0.0.")
    public static let heartbeatMillis = Setting(
        "WIPAY_HEARTBEAT_MS", flag: "heartbeat-ms", default: "1000", "Heartbeat interval in milliseconds (100...10000).")
    public static let logLevel = Setting(
        "WIPAY_LOG_LEVEL", flag: "log-level", default: "info", "trace, debug, info, notice, warning, error, critical.")
    public static let logFormat = Setting("WIPAY_LOG_FORMAT", flag: "log-format", default: "json", "json or text.")
    public static let databaseURL = Setting(
        "WIPAY_DATABASE_URL", flag: "database-url", default: "host=127.0.0.1 port=55432 dbname=wipay user=wipay",
        "libpq connection string (ledger, payment-router, notifier).")
    public static let workerCredit = Setting(
        "WIPAY_WORKER_CREDIT", flag: "worker-credit", default: "",
        "Bus requests one instance takes at once; empty = the service's default.")

    public static let curveKeysDir = Setting(
        "WIPAY_CURVE_KEYS_DIR", flag: "curve-keys-dir", default: "",
        "Folder of CurveZMQ keys (payctl keys generate); empty = the bus runs without CURVE (development only).")
    public static let curveKeyName = Setting(
        "WIPAY_CURVE_KEY_NAME", flag: "curve-key-name", default: "",
        "Which key pair in the keys folder is this process's; empty = the service's name.")

    public static let all: [Setting] = [
        busHost, busPort, busBindHost, instance, httpHost, httpPort, httpsPort, tlsCertFile, tlsKeyFile, controlBind,
        advertiseHost, heartbeatMillis, logLevel, logFormat, databaseURL, workerCredit, curveKeysDir, curveKeyName,
    ]
}

/// A configuration problem, reported before anything starts.
public struct ConfigError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Resolved settings: flags first, then the environment, then the default.
public struct ConfigValues: Sendable {
    public var environment: [String: String]
    public var flags: [Setting: String]

    public init(environment: [String: String] = ProcessInfo.processInfo.environment, flags: [Setting: String] = [:]) {
        self.environment = environment
        self.flags = flags
    }

    public func string(_ setting: Setting) -> String {
        if let flag = flags[setting] { return flag }
        if let value = environment[setting.env] { return value }
        return setting.defaultValue
    }

    public func int(_ setting: Setting, range: ClosedRange<Int>, default fallback: Int? = nil) throws(ConfigError) -> Int {
        let text = string(setting)
        if text.isEmpty, let fallback { return fallback }
        guard let value = Int(text), range.contains(value) else {
            throw ConfigError("\(setting.env) (--\(setting.flag)) must be a whole number in \(range), got '\(text)'")
        }
        return value
    }
}

/// What every service needs to start.
public struct RuntimeConfig: Sendable {
    public var service: String
    public var version: String
    public var instance: String
    public var host: String
    public var bus: BusEndpoints
    public var busBindHost: String
    public var httpHost: String
    /// nil = this service serves no HTTP.
    public var httpPort: Int?
    /// nil = no HTTPS. With it, the PEM files of the certificate chain and the key.
    public var httpsPort: Int?
    public var tlsCertFile: String
    public var tlsKeyFile: String
    public var controlBind: String
    public var advertiseHost: String
    public var heartbeatInterval: Duration
    public var logLevel: String
    public var logFormat: String
    public var databaseURL: String
    public var workerCredit: Int
    /// Empty: no CURVE.
    public var curveKeysDir: String
    public var curveKeyName: String
    public var values: ConfigValues

    public static let version = "0.1.0"

    /// Reads and checks every common setting. `defaultHTTPPort` nil means "no HTTP unless configured".
    public static func load(
        service: String, values: ConfigValues = ConfigValues(), defaultHTTPPort: Int? = 0, defaultCredit: Int = 256
    ) throws(ConfigError) -> RuntimeConfig {
        let host = ProcessInfo.processInfo.hostName
        var instance = values.string(.instance)
        if instance.isEmpty { instance = "\(service)-\(host)-\(getpid())" }
        guard instance.utf8.count <= 100, instance.allSatisfy({ $0.isLetter || $0.isNumber || "-_.".contains($0) }) else {
            throw ConfigError("WIPAY_INSTANCE must be at most 100 letters, digits, '-', '_' or '.', got '\(instance)'")
        }
        let busHost = values.string(.busHost)
        guard !busHost.isEmpty else { throw ConfigError("WIPAY_BUS_HOST must not be empty") }
        let busPort = try values.int(.busPort, range: 1...65532)
        let httpPort: Int? = try values.string(.httpPort).isEmpty && defaultHTTPPort == nil
            ? nil : values.int(.httpPort, range: 0...65535, default: defaultHTTPPort)
        let httpsPort: Int? = values.string(.httpsPort).isEmpty ? nil : try values.int(.httpsPort, range: 0...65535)
        if httpsPort != nil {
            guard httpPort != nil else { throw ConfigError("WIPAY_HTTPS_PORT needs the HTTP endpoint too (WIPAY_HTTP_PORT)") }
            guard !values.string(.tlsCertFile).isEmpty, !values.string(.tlsKeyFile).isEmpty else {
                throw ConfigError("WIPAY_HTTPS_PORT needs WIPAY_TLS_CERT_FILE and WIPAY_TLS_KEY_FILE (PEM files)")
            }
        }
        let heartbeat = try values.int(.heartbeatMillis, range: 100...10_000)
        let level = values.string(.logLevel)
        guard LogSetup.level(level) != nil else { throw ConfigError("WIPAY_LOG_LEVEL '\(level)' is not a log level") }
        let format = values.string(.logFormat)
        guard format == "json" || format == "text" else { throw ConfigError("WIPAY_LOG_FORMAT must be json or text") }
        let controlBind = values.string(.controlBind)
        guard controlBind.hasPrefix("tcp://") || controlBind.hasPrefix("ipc://") || controlBind.hasPrefix("inproc://")
        else { throw ConfigError("WIPAY_CONTROL_BIND must be a ZeroMQ endpoint like tcp://127.0.0.1:*") }
        return RuntimeConfig(
            service: service, version: version, instance: instance, host: host,
            bus: BusEndpoints(host: busHost, basePort: busPort), busBindHost: values.string(.busBindHost),
            httpHost: values.string(.httpHost), httpPort: httpPort, httpsPort: httpsPort,
            tlsCertFile: values.string(.tlsCertFile), tlsKeyFile: values.string(.tlsKeyFile), controlBind: controlBind,
            advertiseHost: values.string(.advertiseHost), heartbeatInterval: .milliseconds(heartbeat), logLevel: level,
            logFormat: format, databaseURL: values.string(.databaseURL),
            workerCredit: try values.int(.workerCredit, range: 1...100_000, default: defaultCredit),
            curveKeysDir: values.string(.curveKeysDir),
            curveKeyName: values.string(.curveKeyName).isEmpty ? service : values.string(.curveKeyName), values: values)
    }
}

/// The flags every service takes; each also reads its environment variable (flags win).
public struct ServiceOptions: ParsableArguments {
    @Option(help: ArgumentHelp(Setting.busHost.help + " [env WIPAY_BUS_HOST, default 127.0.0.1]")) var busHost: String?
    @Option(help: ArgumentHelp(Setting.busPort.help + " [env WIPAY_BUS_PORT, default 5550]")) var busPort: String?
    @Option(help: ArgumentHelp(Setting.instance.help + " [env WIPAY_INSTANCE]")) var instance: String?
    @Option(help: ArgumentHelp(Setting.httpHost.help + " [env WIPAY_HTTP_HOST, default 127.0.0.1]")) var httpHost: String?
    @Option(help: ArgumentHelp(Setting.httpPort.help + " [env WIPAY_HTTP_PORT]")) var httpPort: String?
    @Option(help: ArgumentHelp(Setting.httpsPort.help + " [env WIPAY_HTTPS_PORT]")) var httpsPort: String?
    @Option(help: ArgumentHelp(Setting.tlsCertFile.help + " [env WIPAY_TLS_CERT_FILE]")) var tlsCertFile: String?
    @Option(help: ArgumentHelp(Setting.tlsKeyFile.help + " [env WIPAY_TLS_KEY_FILE]")) var tlsKeyFile: String?
    @Option(help: ArgumentHelp(Setting.controlBind.help + " [env WIPAY_CONTROL_BIND, default tcp://127.0.0.1:*]"))
    var controlBind: String?
    @Option(help: ArgumentHelp(Setting.advertiseHost.help + " [env WIPAY_ADVERTISE_HOST]")) var advertiseHost: String?
    @Option(help: ArgumentHelp(Setting.heartbeatMillis.help + " [env WIPAY_HEARTBEAT_MS, default 1000]"))
    var heartbeatMs: String?
    @Option(help: ArgumentHelp(Setting.logLevel.help + " [env WIPAY_LOG_LEVEL, default info]")) var logLevel: String?
    @Option(help: ArgumentHelp(Setting.logFormat.help + " [env WIPAY_LOG_FORMAT, default json]")) var logFormat: String?
    @Option(help: ArgumentHelp(Setting.databaseURL.help + " [env WIPAY_DATABASE_URL]")) var databaseUrl: String?
    @Option(help: ArgumentHelp(Setting.workerCredit.help + " [env WIPAY_WORKER_CREDIT]")) var workerCredit: String?
    @Option(help: ArgumentHelp(Setting.curveKeysDir.help + " [env WIPAY_CURVE_KEYS_DIR]")) var curveKeysDir: String?
    @Option(help: ArgumentHelp(Setting.curveKeyName.help + " [env WIPAY_CURVE_KEY_NAME]")) var curveKeyName: String?

    public init() {}

    public var values: ConfigValues {
        var flags: [Setting: String] = [:]
        let pairs: [(Setting, String?)] = [
            (.busHost, busHost), (.busPort, busPort), (.instance, instance), (.httpHost, httpHost),
            (.httpPort, httpPort), (.httpsPort, httpsPort), (.tlsCertFile, tlsCertFile), (.tlsKeyFile, tlsKeyFile),
            (.controlBind, controlBind), (.advertiseHost, advertiseHost),
            (.heartbeatMillis, heartbeatMs), (.logLevel, logLevel), (.logFormat, logFormat),
            (.databaseURL, databaseUrl), (.workerCredit, workerCredit), (.curveKeysDir, curveKeysDir),
            (.curveKeyName, curveKeyName),
        ]
        for (setting, value) in pairs { if let value { flags[setting] = value } }
        return ConfigValues(flags: flags)
    }
}
