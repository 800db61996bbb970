import ArgumentParser
import PaymentRouterService
import WiPayRuntime

@main
struct Main: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "payment-router", abstract: "The WiPay payment-router stage.")

    @OptionGroup var options: ServiceOptions

    func run() async throws {
        try await PaymentRouterStage.run(config: try RuntimeConfig.load(service: "payment-router", values: options.values))
    }
}
