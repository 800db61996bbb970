import ArgumentParser
import WiPayBus

/// `paybench curve-keys DIR`: the CurveZMQ key folder for a benchmark run (what `payctl keys generate`
/// makes), so ops/scripts/bench-e2e.sh can run the whole network with CURVE on.
struct CurveKeysCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "curve-keys",
        abstract: "Create a folder of CurveZMQ keys (bus, every service, ops), all authorized; existing files are kept.")

    @Argument(help: "The folder to create or complete.") var dir: String

    func run() async throws {
        guard !dir.isEmpty else { throw ValidationError("DIR is a path") }
        do {
            let created = try BusKeys.generate(dir: dir)
            print("\(dir): created \(created.isEmpty ? "nothing (all keys existed)" : created.joined(separator: ", "))")
        } catch {
            throw ValidationError(error.description)
        }
    }
}
