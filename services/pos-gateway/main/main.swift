import ArgumentParser
import POSGatewayService
import WiPayGateway
import WiPayRuntime

@main
struct Main: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "pos-gateway", abstract: "The WiPay pos-gateway (HTTP).")

    @OptionGroup var options: ServiceOptions
    @Option(help: ArgumentHelp(Setting.rateTerminal.help + " [env WIPAY_RATE_TERMINAL, default 50/s,100]"))
    var rateTerminal: String?
    @Option(help: ArgumentHelp(Setting.rateAddress.help + " [env WIPAY_RATE_ADDRESS, default 10/s,30]"))
    var rateAddress: String?
    @Option(help: ArgumentHelp(Setting.rateMaxKeys.help + " [env WIPAY_RATE_MAX_KEYS, default 100000]"))
    var rateMaxKeys: String?

    func run() async throws {
        var values = options.values
        let flags: [(Setting, String?)] = [(.rateTerminal, rateTerminal), (.rateAddress, rateAddress), (.rateMaxKeys, rateMaxKeys)]
        for (setting, value) in flags { if let value { values.flags[setting] = value } }
        try await POSGatewayStage.run(
            config: try RuntimeConfig.load(service: "pos-gateway", values: values, defaultHTTPPort: POSGatewayStage.defaultPort))
    }
}
