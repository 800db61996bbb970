import ArgumentParser
import PhoneGatewayService
import WiPayGateway
import WiPayRuntime

@main
struct Main: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "phone-gateway", abstract: "The WiPay phone-gateway (HTTP).")

    @OptionGroup var options: ServiceOptions
    @Option(help: ArgumentHelp(Setting.rateDevice.help + " [env WIPAY_RATE_DEVICE, default 20/s,40]"))
    var rateDevice: String?
    @Option(help: ArgumentHelp(Setting.rateAddress.help + " [env WIPAY_RATE_ADDRESS, default 10/s,30]"))
    var rateAddress: String?
    @Option(help: ArgumentHelp(Setting.rateMaxKeys.help + " [env WIPAY_RATE_MAX_KEYS, default 100000]"))
    var rateMaxKeys: String?

    func run() async throws {
        var values = options.values
        let flags: [(Setting, String?)] = [(.rateDevice, rateDevice), (.rateAddress, rateAddress), (.rateMaxKeys, rateMaxKeys)]
        for (setting, value) in flags { if let value { values.flags[setting] = value } }
        try await PhoneGatewayStage.run(
            config: try RuntimeConfig.load(service: "phone-gateway", values: values, defaultHTTPPort: PhoneGatewayStage.defaultPort))
    }
}
