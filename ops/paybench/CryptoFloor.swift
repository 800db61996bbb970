import ArgumentParser
import Crypto
import Foundation

/// `paybench crypto-floor`: what Ed25519 costs on this machine, the floor of a complete payment's CPU (the
/// services sign one payload and verify one device instruction per payment). bench-e2e.sh runs it in the
/// same run as the load, so the report can say how many times the floor the services use.
struct CryptoFloorCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "crypto-floor",
        abstract: "Measure Ed25519 sign and verify (µs each) with the library the services use.",
        discussion: """
            Signs and verifies a 200-byte message --iterations times each (after a short warm-up) and prints
            the mean µs per sign, per verify, and their sum: the CPU floor of one complete payment.
            """)

    @Option(help: "Signatures and verifications to time (100...1000000).") var iterations = 2000
    @Flag(help: "Print one JSON object.") var json = false

    func validate() throws {
        guard (100...1_000_000).contains(iterations) else { throw ValidationError("--iterations is 100 to 1000000") }
    }

    func run() throws {
        let key = Curve25519.Signing.PrivateKey()
        let publicKey = key.publicKey
        let message = Data((0..<200).map { UInt8(truncatingIfNeeded: $0) })
        var signature = try key.signature(for: message)
        for _ in 0..<50 { signature = try key.signature(for: message) }
        let clock = ContinuousClock()
        let signStart = clock.now
        for _ in 0..<iterations { signature = try key.signature(for: message) }
        let signTime = clock.now - signStart
        var valid = 0
        let verifyStart = clock.now
        for _ in 0..<iterations where publicKey.isValidSignature(signature, for: message) { valid += 1 }
        let verifyTime = clock.now - verifyStart
        guard valid == iterations else { throw ValidationError("a signature did not verify") }
        func micros(_ duration: Duration) -> Double {
            let (seconds, attoseconds) = duration.components
            return (Double(seconds) * 1e6 + Double(attoseconds) / 1e12) / Double(iterations)
        }
        let sign = micros(signTime)
        let verify = micros(verifyTime)
        if json {
            print(#"{"sign_us":\#(round(sign * 10) / 10),"verify_us":\#(round(verify * 10) / 10),"floor_us":\#(round((sign + verify) * 10) / 10)}"#)
        } else {
            print(String(format: "Ed25519: sign %.1f µs, verify %.1f µs; floor per payment (one of each) %.1f µs", sign, verify, sign + verify))
        }
    }
}
