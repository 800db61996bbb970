import ArgumentParser
import LedgerService
import WiPayRuntime

@main
struct Main: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ledger",
        abstract: "The WiPay ledger: accounts, transfers and PINs in PostgreSQL, posted in batches.",
        discussion: """
            Needs WIPAY_DATABASE_URL and the PIN secret (WIPAY_PIN_SECRET_FILE or WIPAY_PIN_SECRET, at least
            32 characters). Batching: WIPAY_LEDGER_BATCH_MAX (default 2048 transfers per transaction) and
            WIPAY_LEDGER_BATCH_WAIT_US (default 500 µs of extra wait when a batch is small),
            WIPAY_LEDGER_BATCH_WORKERS (default 1; more batches in flight, each on its own connection).
            """)

    @OptionGroup var options: ServiceOptions

    func run() async throws {
        try await LedgerStage.run(config: try RuntimeConfig.load(service: "ledger", values: options.values, defaultCredit: 8192))
    }
}
