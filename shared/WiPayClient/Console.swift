#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation

/// Talking to the person at the keyboard: prompts and secrets go through `/dev/tty`, so they work when
/// stdout is piped (`--json | jq`) and never end up in captured output.
public enum Console {
    /// True when stdout is a terminal (then colours and QR codes are drawn).
    public static var stdoutIsTerminal: Bool { isatty(STDOUT_FILENO) == 1 }

    /// Writes `text` to stderr.
    public static func error(_ text: String) {
        FileHandle.standardError.write(Data((text + "\n").utf8))
    }

    /// Asks a yes/no question on the terminal; only "y"/"yes" (any case) is yes. False without a terminal.
    public static func confirm(_ question: String) -> Bool {
        guard let answer = readLine(prompt: question, echo: true) else { return false }
        let trimmed = answer.trimmingCharacters(in: .whitespaces).lowercased()
        return trimmed == "y" || trimmed == "yes"
    }

    /// Asks a question on the terminal; the answer (trimmed), or nil without a terminal or on EOF.
    public static func ask(_ question: String) -> String? {
        readLine(prompt: question, echo: true).map { $0.trimmingCharacters(in: .whitespaces) }
    }

    /// True when there is a terminal to ask (`/dev/tty` opens).
    public static var canAsk: Bool {
        let fd = open("/dev/tty", O_RDWR | O_NOCTTY)
        guard fd >= 0 else { return false }
        _ = Glibc_close(fd)
        return true
    }

    /// `text` safe to print to a terminal: control and invisible formatting characters (escape sequences,
    /// right-to-left overrides that would reorder what the shopper reads) become U+FFFD.
    public static func printable(_ text: String) -> String {
        var out = String.UnicodeScalarView()
        for c in text.unicodeScalars {
            switch c.properties.generalCategory {
            case .control, .format, .lineSeparator, .paragraphSeparator: out.append("\u{FFFD}")
            default: out.append(c)
            }
        }
        return String(out)
    }

    /// Reads a secret (a PIN) from the terminal with echo off; nil when there is no terminal or on EOF.
    public static func readSecret(prompt: String) -> String? {
        readLine(prompt: prompt, echo: false)
    }

    /// One line from `/dev/tty` (at most 256 bytes) after writing `prompt` to it.
    static func readLine(prompt: String, echo: Bool) -> String? {
        let fd = open("/dev/tty", O_RDWR | O_NOCTTY)
        guard fd >= 0 else { return nil }
        defer { _ = Glibc_close(fd) }
        var saved = termios()
        let haveTermios = tcgetattr(fd, &saved) == 0
        if !echo && haveTermios {
            var quiet = saved
            quiet.c_lflag &= ~tcflag_t(ECHO)
            quiet.c_lflag |= tcflag_t(ECHONL)
            _ = tcsetattr(fd, TCSAFLUSH, &quiet)
        }
        defer {
            if !echo && haveTermios { _ = tcsetattr(fd, TCSAFLUSH, &saved) }
        }
        let promptBytes = Array(prompt.utf8)
        _ = promptBytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        var line: [UInt8] = []
        var byte: UInt8 = 0
        while line.count < 256 {
            let n = retryingEINTR { read(fd, &byte, 1) }
            if n <= 0 { return line.isEmpty ? nil : String(decoding: line, as: UTF8.self) }
            if byte == 0x0A || byte == 0x0D { break }
            line.append(byte)
        }
        defer { for i in line.indices { line[i] = 0 } }
        return String(decoding: line, as: UTF8.self)
    }
}

/// Delivers SIGINT (Ctrl-C) and SIGTERM as an async stream instead of killing the process, so a program
/// can clean up (a POS terminal cancels its pending request).
/// (`@unchecked`: the sources are set once in `init`; cancelling a dispatch source is thread-safe.)
public final class InterruptSignals: @unchecked Sendable {
    private let sources: [any DispatchSourceSignal]
    public let signals: AsyncStream<Int32>

    public init(_ numbers: [Int32] = [SIGINT, SIGTERM]) {
        let (stream, continuation) = AsyncStream<Int32>.makeStream()
        var sources: [any DispatchSourceSignal] = []
        for number in numbers {
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler { continuation.yield(number) }
            source.resume()
            sources.append(source)
        }
        self.sources = sources
        self.signals = stream
    }

    /// Waits for the next signal.
    public func next() async -> Int32? {
        for await number in signals { return number }
        return nil
    }

    /// Restores the default actions.
    public func stop() {
        for source in sources { source.cancel() }
    }
}
