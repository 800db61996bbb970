import ArgumentParser
import Foundation
import WiPayBus
import WiPayRuntime
import ZeroMQ

/// A random id with a prefix: `acc_` + 20 base-32 characters (100 bits).
func randomId(_ prefix: String) -> String {
    let alphabet = Array("abcdefghijkmnpqrstuvwxyz23456789")
    var generator = SystemRandomNumberGenerator()
    return prefix + String((0..<20).map { _ in alphabet[Int(generator.next() % UInt64(alphabet.count))] })
}

/// Runs `body` with a bus client, turning bus failures into clear messages.
func withLedger<T>(_ bus: BusOptions, _ body: (BusClient) async throws -> T) async throws -> T {
    try await withBus(bus, body)
}

/// Runs `body` with a bus client, turning bus failures into clear messages.
func withBus<T>(_ bus: BusOptions, _ body: (BusClient) async throws -> T) async throws -> T {
    let context = try ZMQContext()
    let client = try BusClient(
        context: context, frontend: try bus.endpoints().frontend, sender: "payctl/\(ProcessInfo.processInfo.hostName)-\(getpid())",
        security: try bus.security())
    defer {
        client.close()
        context.shutdown()
    }
    do {
        return try await body(client)
    } catch let error as BusCallError {
        switch error {
        case .rejected(_, let body): throw Failure("\(body.code): \(body.message)")
        case .timedOut(let service, _, _):
            throw Failure("no answer from \(service) — is it running? (payctl status)")
        default: throw Failure("\(error)")
        }
    }
}

func checkCurrency(_ code: String) throws -> String {
    let upper = code.uppercased()
    guard Currency.isKnown(upper) else { throw ValidationError("'\(code)' is not an ISO 4217 currency code") }
    return upper
}

/// Names of merchants, terminals and wallets: 1 to 100 characters, no control characters.
func checkName(_ name: String) throws {
    guard (1...100).contains(name.count), !name.unicodeScalars.contains(where: { $0.properties.generalCategory == .control })
    else { throw ValidationError("a name is 1 to 100 characters, without control characters") }
}

func accountJSON(_ info: AccountInfo) -> [String: Any] {
    ["account_id": info.accountId, "kind": info.kind.name, "currency": info.currency, "balance": info.balance,
     "name": info.name, "locked": info.locked]
}

struct Merchant: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Merchants.", subcommands: [Add.self])

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Onboard a merchant: opens its ledger account.")
        @OptionGroup var bus: BusOptions
        @Option(help: "The merchant's name, shown to shoppers (1-100 characters).") var name: String
        @Option(help: "ISO 4217 currency of its account, e.g. CNY.") var currency: String

        func run() async throws {
            let currency = try checkCurrency(currency)
            try checkName(name)
            // The payment-router owns merchants: it stores the merchant and opens its ledger account.
            let (_, info) = try await withBus(bus) { client in
                try await client.call(
                    service: "payment-router", type: .merchantAdd, MerchantAdd(name: name, currency: currency),
                    as: MerchantInfo.self)
            }
            if bus.json {
                printJSON(["merchant_id": info.merchantId, "account_id": info.accountId, "name": info.name, "currency": info.currency])
            } else {
                print("merchant \(info.merchantId) with account \(info.accountId) (\(info.currency))")
            }
        }
    }
}

struct Wallet: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Shoppers' wallets.", subcommands: [Add.self, Fund.self, Unlock.self])

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Open a wallet with a PIN.",
            discussion: "The PIN (4 to 6 digits) is hashed by the ledger with its secret and never stored in clear.")
        @OptionGroup var bus: BusOptions
        @Option(help: "The wallet holder's name (1-100 characters).") var name: String
        @Option(help: "The wallet's PIN: 4 to 6 digits.") var pin: String
        @Option(help: "ISO 4217 currency, e.g. CNY.") var currency: String

        func run() async throws {
            let currency = try checkCurrency(currency)
            guard (4...6).contains(pin.count), pin.allSatisfy(\.isASCII), pin.allSatisfy(\.isNumber) else {
                throw ValidationError("a PIN is 4 to 6 digits")
            }
            try checkName(name)
            // The payment-router owns wallets: it opens the ledger account (with the PIN) and issues a
            // one-time enrollment code for the holder's phone.
            let (_, issued) = try await withBus(bus) { client in
                try await client.call(
                    service: "payment-router", type: .walletAdd, WalletAdd(name: name, pin: pin, currency: currency),
                    as: WalletIssued.self)
            }
            if bus.json {
                printJSON(["account_id": issued.accountId, "enrollment_code": issued.enrollmentCode, "currency": currency])
            } else {
                print("wallet \(issued.accountId) (\(currency)); enrollment code \(issued.enrollmentCode) (works once)")
            }
        }
    }

    struct Fund: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Top up a wallet from the currency's funding account.",
            discussion: "Safe to retry with the same --transfer-id: the money moves once.")
        @OptionGroup var bus: BusOptions
        @Argument(help: "The wallet's account id.") var accountId: String
        @Argument(help: "Amount in minor units (1250 = 12.50), 1 to 10^12.") var amount: Int64
        @Option(help: "Idempotency key of this top-up (default: a new one).") var transferId: String?

        func run() async throws {
            guard (1...1_000_000_000_000).contains(amount) else { throw ValidationError("amount must be 1 to 10^12 minor units") }
            let transferId = self.transferId ?? randomId("fund_")
            let result = try await withLedger(bus) { client -> TransferResult in
                let (_, account) = try await client.call(
                    service: "ledger", type: .accountShow, AccountRef(accountId: accountId), as: AccountInfo.self)
                let funding = "funding-\(account.currency)"
                _ = try await client.call(
                    service: "ledger", type: .accountOpen,
                    AccountOpen(accountId: funding, kind: .funding, currency: account.currency, name: "funding \(account.currency)", pin: nil),
                    as: AccountInfo.self)
                return try await client.call(
                    service: "ledger", type: .transferPost,
                    TransferPost(
                        transferId: transferId, kind: .funding, debitAccountId: funding, creditAccountId: accountId,
                        amountMinor: amount, currency: account.currency),
                    as: TransferResult.self
                ).1
            }
            if bus.json {
                printJSON(["account_id": accountId, "balance": result.creditBalance, "transfer_id": transferId])
            } else {
                print("\(accountId) balance \(result.creditBalance)")
            }
        }
    }

    struct Unlock: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Unlock a wallet locked after three wrong PINs.")
        @OptionGroup var bus: BusOptions
        @Argument(help: "The wallet's account id.") var accountId: String

        func run() async throws {
            let (_, info) = try await withLedger(bus) { client in
                try await client.call(service: "ledger", type: .walletUnlock, AccountRef(accountId: accountId), as: AccountInfo.self)
            }
            if bus.json { printJSON(["account_id": info.accountId, "locked": info.locked]) } else { print("\(info.accountId) unlocked") }
        }
    }
}

struct Account: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Ledger accounts.", subcommands: [Show.self])

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show an account's kind, currency and balance.")
        @OptionGroup var bus: BusOptions
        @Argument(help: "The account id.") var accountId: String

        func run() async throws {
            let (_, info) = try await withLedger(bus) { client in
                try await client.call(service: "ledger", type: .accountShow, AccountRef(accountId: accountId), as: AccountInfo.self)
            }
            if bus.json {
                printJSON(accountJSON(info))
            } else {
                print("\(info.accountId)  \(info.kind.name)  \(info.currency)  balance \(info.balance)\(info.locked ? "  LOCKED" : "")")
            }
        }
    }
}

struct Reconcile: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check the ledger's invariants in the database; exit 0 only when all hold.",
        discussion: """
            Per currency the balances sum to zero; account totals equal their transfers; every transfer is \
            in one currency; no wallet or merchant below zero; at most one payment per request; refunds \
            never exceed their payment. Offending rows are printed (at most 100 per check).
            """)
    @OptionGroup var bus: BusOptions

    func run() async throws {
        let (_, report) = try await withLedger(bus) { client in
            try await client.call(
                service: "ledger", type: .reconcile, Empty(), as: ReconcileReport.self, attemptTimeout: .seconds(60),
                totalTimeout: .seconds(120))
        }
        if bus.json {
            printJSON([
                "ok": report.ok,
                "checks": report.checks.map { ["name": $0.name, "ok": $0.ok, "offending": $0.offending] as [String: Any] },
            ])
        } else {
            for check in report.checks {
                print("\(check.ok ? "ok  " : "FAIL") \(check.name)")
                for line in check.offending { print("       \(line)") }
            }
        }
        if !report.ok { throw ExitCode(2) }
    }
}
