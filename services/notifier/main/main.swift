import ArgumentParser
import NotifierService
import WiPayRuntime

@main
struct Main: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "notifier", abstract: "The WiPay notifier stage.")

    @OptionGroup var options: ServiceOptions

    func run() async throws {
        try await NotifierStage.run(config: try RuntimeConfig.load(service: "notifier", values: options.values))
    }
}
