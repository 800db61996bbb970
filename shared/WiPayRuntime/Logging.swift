import Foundation
import Logging

/// Logging set-up: one JSON object per line on stderr (or readable text), with swift-log metadata as
/// fields. Libraries log at debug/trace; services at info and above.
public enum LogSetup {
    public static func level(_ name: String) -> Logger.Level? { Logger.Level(rawValue: name) }

    /// Bootstraps swift-log once per process; later calls are ignored (tests start many services).
    public static func bootstrap(level: String, format: String, service: String, instance: String) {
        let logLevel = self.level(level) ?? .info
        once.withLock { done in
            guard !done else { return }
            done = true
            LoggingSystem.bootstrap { label in
                var handler = LineLogHandler(label: label, json: format == "json")
                handler.logLevel = logLevel
                handler.metadata = ["service": "\(service)", "instance": "\(instance)"]
                return handler
            }
        }
    }

    private static let once = Locked(false)
}

import WiPayBus

/// Writes one line per log record to stderr: JSON (`{"ts":...,"level":...,"msg":...,key: value}`) or text.
public struct LineLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level = .info
    public let label: String
    public let json: Bool

    public init(label: String, json: Bool) {
        self.label = label
        self.json = json
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var merged = metadata
        if let extra = event.metadata { merged.merge(extra) { $1 } }
        let ts = Self.timestamp()
        var line: String
        if json {
            line = "{\"ts\":\"\(ts)\",\"level\":\"\(event.level)\",\"logger\":\(Self.quote(label)),\"msg\":\(Self.quote("\(event.message)"))"
            for (key, value) in merged.sorted(by: { $0.key < $1.key }) {
                line += ",\(Self.quote(key)):\(Self.quote(Self.flatten(value)))"
            }
            line += "}\n"
        } else {
            line = "\(ts) \(event.level) \(label): \(event.message)"
            for (key, value) in merged.sorted(by: { $0.key < $1.key }) { line += " \(key)=\(Self.flatten(value))" }
            line += "\n"
        }
        FileHandle.standardError.write(Data(line.utf8))
    }

    static func flatten(_ value: Logger.MetadataValue) -> String {
        switch value {
        case .string(let s): s
        case .stringConvertible(let c): c.description
        case .array(let items): "[" + items.map(flatten).joined(separator: ",") + "]"
        case .dictionary(let dict):
            "{" + dict.sorted(by: { $0.key < $1.key }).map { "\($0.key)=\(flatten($0.value))" }.joined(separator: ",") + "}"
        }
    }

    static func quote(_ s: String) -> String {
        var out = "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case let c where c.value < 0x20: out += String(format: "\\u%04x", c.value)
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }

    static func timestamp() -> String {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        var tm = tm()
        var seconds = ts.tv_sec
        gmtime_r(&seconds, &tm)
        return String(
            format: "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
            tm.tm_min, tm.tm_sec, Int(ts.tv_nsec / 1_000_000))
    }
}
