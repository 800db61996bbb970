import ArgumentParser
import POSGatewayService
import WiPayRuntime

@main
struct Main: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "pos-gateway", abstract: "The WiPay pos-gateway (HTTP).")

    @OptionGroup var options: ServiceOptions

    func run() async throws {
        try await POSGatewayStage.run(
            config: try RuntimeConfig.load(service: "pos-gateway", values: options.values, defaultHTTPPort: POSGatewayStage.defaultPort))
    }
}
