import ArgumentParser
import BusBroker
import WiPayRuntime

@main
struct Bus: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bus",
        abstract: "The WiPay bus broker: routes requests to stage instances and relays events.",
        discussion: "Binds four ports from WIPAY_BUS_PORT (requests in, workers, events in, events out).")

    @OptionGroup var options: ServiceOptions
    @Option(help: "Where the broker binds. [env WIPAY_BUS_BIND_HOST, default 127.0.0.1]") var busBindHost: String?

    func run() async throws {
        var values = options.values
        if let busBindHost { values.flags[.busBindHost] = busBindHost }
        try await BusBrokerService.run(config: try RuntimeConfig.load(service: "bus", values: values, defaultHTTPPort: nil))
    }
}
