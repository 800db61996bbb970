import ArgumentParser
import PhoneGatewayService
import WiPayRuntime

@main
struct Main: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "phone-gateway", abstract: "The WiPay phone-gateway (HTTP).")

    @OptionGroup var options: ServiceOptions

    func run() async throws {
        try await PhoneGatewayStage.run(
            config: try RuntimeConfig.load(service: "phone-gateway", values: options.values, defaultHTTPPort: PhoneGatewayStage.defaultPort))
    }
}
