import ArgumentParser
import Crypto
import Foundation
import WiPayClient
import WiPayPayload

/// The reference phone wallet: enrolls a device key, pays the request a terminal announces on the local
/// link, and shows the balance.
@main
struct PhoneWallet: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "phone-wallet",
        abstract: "A reference phone wallet for WiPay.",
        discussion: """
            The wallet lives in --home DIR (default ~/.wipay, mode 0700, files 0600): the device key, the \
            device and account ids, the phone-gateway's URL and the keys that verify payloads. \
            Exit status: 0 success; 1 declined; 2 usage, connection errors and timeouts.
            """,
        subcommands: [Enroll.self, Pay.self, Nearby.self, Balance.self])
}

enum Exit {
    static let ok: Int32 = 0
    static let declined: Int32 = 1
    static let error: Int32 = 2
}

struct CommonOptions: ParsableArguments {
    @Option(help: "The wallet folder. [default ~/.wipay]") var home: String?
    @Flag(help: "Print one JSON object on stdout (prompts still go to the terminal).") var json = false

    func fail(_ code: String, _ message: String, extra: [String: JSON] = [:]) -> Int32 {
        Console.error("phone-wallet: \(message)")
        if json {
            var object = extra
            object["status"] = "error"
            object["error"] = ["code": .string(code), "message": .string(message)]
            print(JSON.object(object).text)
        }
        return Exit.error
    }

    func say(_ text: String) {
        if !json { print(text) }
    }
}

func errorCode(_ error: any Error) -> String {
    switch error {
    case let error as APIError: error.code
    case let error as HTTPClientError: error.code.description
    default: "error"
    }
}

// MARK: - enroll

struct Enroll: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Make this device's key and enroll it with a one-time code.",
        discussion: """
            Generates an Ed25519 key, sends its public half with the code (POST /v1/devices), fetches the \
            payload keys (GET /v1/payload-keys) and saves everything in the wallet folder. Prints the \
            device and account ids. The phone-gateway is --url, WIPAY_PHONE_URL or http://127.0.0.1:8090.
            """)

    @Argument(help: "The enrollment code from `payctl wallet add` (XXXX-XXXX-XXXX).") var code: String
    @Option(help: "A name for this device.") var name: String = "phone-wallet"
    @Option(help: "The phone-gateway's URL. [env WIPAY_PHONE_URL, default http://127.0.0.1:8090]") var url: String?
    @Flag(help: "Replace a wallet already enrolled in the folder.") var force = false
    @OptionGroup var options: CommonOptions

    func run() async throws { throw ExitCode(await enroll()) }

    func enroll() async -> Int32 {
        let env = ProcessInfo.processInfo.environment
        let baseURL = url ?? env["WIPAY_PHONE_URL"].flatMap { $0.isEmpty ? nil : $0 } ?? "http://127.0.0.1:8090"
        let trimmedCode = code.trimmingCharacters(in: .whitespaces)
        guard !trimmedCode.isEmpty, trimmedCode.utf8.count <= 64 else {
            return options.fail("invalid_code", "the enrollment code looks like XXXX-XXXX-XXXX")
        }
        guard !name.isEmpty, name.utf8.count <= 100 else {
            return options.fail("invalid_name", "--name must be 1 to 100 bytes")
        }
        let home = WalletHome(path: options.home)
        if home.isEnrolled && !force {
            return options.fail("already_enrolled", "\(home.path) already holds a wallet (use --force to replace it)")
        }
        do {
            try home.prepare()  // before the code is spent
        } catch {
            return options.fail("home_error", error.message)
        }
        let client: PhoneClient
        do {
            client = try PhoneClient(baseURL: baseURL)
        } catch {
            return options.fail("invalid_url", error.message)
        }
        let key = Curve25519.Signing.PrivateKey()
        let response: HTTPResponse
        do {
            response = try await client.enroll(
                code: trimmedCode, publicKey: Base64URL.encode(Array(key.publicKey.rawRepresentation)), name: name)
        } catch {
            return options.fail(errorCode(error), "cannot reach the phone-gateway at \(baseURL): \(error)")
        }
        guard response.status == 201 || response.status == 200 else {
            let apiError = APIError(response: response)
            return options.fail(apiError.code, "enrollment refused: \(apiError)")
        }
        guard let body = try? response.json(), let deviceId = body["device_id"]?.string,
            let accountId = body["account_id"]?.string
        else {
            return options.fail("malformed_response", "the gateway's answer has no device_id or account_id")
        }
        var keys: [String: [UInt8]] = [:]
        do {
            keys = try await client.payloadKeys()
        } catch {
            Console.error("phone-wallet: warning: could not fetch the payload keys (\(error)); `pay` will fetch them")
        }
        let wallet = Wallet(
            identity: DeviceIdentity(deviceId: deviceId, privateKey: key), accountId: accountId, gatewayURL: baseURL,
            name: name, payloadKeys: keys)
        do {
            try home.save(wallet)
        } catch {
            return options.fail("home_error", "enrolled as \(deviceId) but cannot save the wallet: \(error.message)")
        }
        if options.json {
            print(JSON.object(["device_id": .string(deviceId), "account_id": .string(accountId), "home": .string(home.path)]).text)
        } else {
            print("Enrolled device \(deviceId) for account \(accountId)")
            print("device_id: \(deviceId)")
            print("account_id: \(accountId)")
        }
        return Exit.ok
    }
}

// MARK: - the link

/// Where the phone listens: the same settings as the terminal's (only the port, the interface and a multicast
/// group matter for listening; a listener hears broadcasts and unicast to the port as well).
struct LinkOptions: ParsableArguments {
    @Option(help: "The link address; a multicast group (e.g. 239.255.74.74) is joined, other addresses only name the mode. [env WIPAY_LINK_ADDRESS]")
    var linkAddress: String?
    @Option(help: "The link's UDP port. [env WIPAY_LINK_PORT, default 47474]") var linkPort: Int?
    @Option(help: "Listen on this network interface only (e.g. wlan0). [env WIPAY_LINK_INTERFACE]") var linkInterface: String?

    func settings() throws(LinkError) -> LinkSettings {
        try LinkSettings.resolve(address: linkAddress, port: linkPort, interface: linkInterface)
    }
}

/// Verifies what the link carries with the wallet's payload keys; a payload signed with a key the wallet does
/// not know makes it fetch the keys once (the server may have rotated its key).
final class PayloadAcceptor: @unchecked Sendable {
    private let home: WalletHome
    private let client: PhoneClient
    private let keysRefreshed = OnceFlag()
    private let walletKeys: KeyBox

    init(home: WalletHome, client: PhoneClient, keys: [String: [UInt8]]) {
        self.home = home
        self.client = client
        self.walletKeys = KeyBox(keys)
    }

    func accept(_ text: String) async -> PaymentPayload? {
        if let payload = try? PayloadVerifier(keys: walletKeys.keys).verify(text, nowSeconds: unixNow()) { return payload }
        guard let keyId = PayloadVerifier.keyId(of: text), walletKeys.keys[keyId] == nil, keysRefreshed.setOnce(),
            let fresh = try? await client.payloadKeys()
        else { return nil }
        walletKeys.keys = fresh
        try? home.savePayloadKeys(fresh)
        return try? PayloadVerifier(keys: fresh).verify(text, nowSeconds: unixNow())
    }
}

/// A failure already reported on stdout/stderr: only the exit status is left to return.
struct Reported: Error {
    let status: Int32
}

/// What `nearby` and `pay` start from: the enrolled wallet, the link settings, a client for the
/// phone-gateway, and the payload verifier.
struct WalletOnLink {
    let settings: LinkSettings
    let client: PhoneClient
    let acceptor: PayloadAcceptor

    /// Loads the wallet and the settings; a problem is reported on `options`.
    init(_ options: CommonOptions, _ link: LinkOptions) throws(Reported) {
        let home = WalletHome(path: options.home)
        let wallet: Wallet
        do {
            wallet = try home.load()
        } catch {
            throw Reported(status: options.fail("home_error", error.message))
        }
        do {
            settings = try link.settings()
        } catch {
            throw Reported(status: options.fail("invalid_link", error.message))
        }
        do {
            client = try PhoneClient(baseURL: wallet.gatewayURL, identity: wallet.identity)
        } catch {
            throw Reported(status: options.fail("invalid_url", error.message))
        }
        acceptor = PayloadAcceptor(home: home, client: client, keys: wallet.payloadKeys)
    }

    /// `LinkListener.hear` on these settings: what is still payable, newest first.
    func hear(
        _ options: CommonOptions, deadline: ContinuousClock.Instant, settle: Duration,
        wanted: (HeardRequest) -> Bool = { _ in true }
    ) async throws(Reported) -> [HeardRequest] {
        do {
            let listener = try LinkListener(settings: settings)
            defer { listener.close() }
            return try await listener.hear(deadline: deadline, settle: settle, wanted: wanted, accept: acceptor.accept)
                .current(nowSeconds: unixNow())
        } catch let error as LinkError {
            throw Reported(status: options.fail("link_error", error.message))
        } catch {
            throw Reported(status: options.fail("link_error", "listening on the link failed: \(error)"))
        }
    }
}

/// How a heard request is shown and listed.
enum HeardView {
    static func line(_ request: HeardRequest, now: Int64 = unixNow()) -> String {
        let p = request.payload
        let left = max(0, p.expiresAtSeconds - now)
        return "\(Money.format(p.amountMinor, p.currency)) to \(Console.printable(p.payee)) — \(left) s left (request \(p.requestId), from \(request.from))"
    }

    static func json(_ request: HeardRequest, now: Int64 = unixNow()) -> JSON {
        let p = request.payload
        return .object([
            "request_id": .string(p.requestId),
            "merchant": .object(["id": .string(p.merchantId), "name": .string(p.merchantName)]),
            "terminal_name": .optional(p.terminalName), "payee": .string(p.payee),
            "amount": .int(p.amountMinor), "currency": .string(p.currency),
            "created_at": p.createdAtSeconds.map { .string(rfc3339($0)) } ?? .null,
            "expires_at": .string(rfc3339(p.expiresAtSeconds)), "expires_in": .int(max(0, p.expiresAtSeconds - now)),
            "from": .string(request.from),
        ])
    }

    static func list(_ requests: [HeardRequest]) -> JSON { .array(requests.map { json($0) }) }

    static func rfc3339(_ seconds: Int64) -> String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime]
        return formatter.string(from: Date(timeIntervalSince1970: TimeInterval(seconds)))
    }
}

// MARK: - nearby

struct Nearby: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List the payment requests the tills around announce on the local link.",
        discussion: """
            Listens for --listen seconds (default 2; tills announce every 300 ms) and lists every pending \
            request whose payload verifies with the saved keys: amount, merchant and till, time left, the \
            sender's address. Newest first, each once; expired ones are left out. Pays nothing. With --json: \
            {"count": N, "requests": [{"request_id", "merchant": {"id", "name"}, "terminal_name", "payee", \
            "amount", "currency", "created_at", "expires_at", "expires_in", "from"}]}.
            """)

    @Option(help: "Seconds to listen (1 to 60).") var listen: Int = 2
    @OptionGroup var link: LinkOptions
    @OptionGroup var options: CommonOptions

    func run() async throws { throw ExitCode(await nearby()) }

    func nearby() async -> Int32 {
        guard (1...60).contains(listen) else { return options.fail("invalid_listen", "--listen must be 1 to 60 seconds") }
        let heard: [HeardRequest]
        do {
            let session = try WalletOnLink(options, link)
            if !options.json { Console.error("Listening on the local link (\(session.settings.summary)) for \(listen) s…") }
            let window = Duration.seconds(listen)
            heard = try await session.hear(options, deadline: .now + window, settle: window)
        } catch {
            return error.status
        }
        if options.json {
            print(JSON.object(["count": .int(Int64(heard.count)), "requests": HeardView.list(heard)]).text)
        } else if heard.isEmpty {
            print("No payment request heard on the link.")
        } else {
            print("\(heard.count) payment request\(heard.count == 1 ? "" : "s") on the link, newest first:")
            for (i, request) in heard.enumerated() { print("  \(i + 1). \(HeardView.line(request))") }
        }
        return Exit.ok
    }
}

// MARK: - pay

struct Pay: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Pay a request a terminal announces on the local link.",
        discussion: """
            Listens on the local link (WIPAY_LINK_ADDRESS/WIPAY_LINK_PORT or --link-address/--link-port, \
            default port 47474) for payloads that verify with the saved keys (fetching the keys again once \
            if one names an unknown key). After the first one it keeps listening about a second, so every \
            till in range is heard. Exactly one pending request (after --request/--terminal/--merchant): it \
            shows merchant, till and amount and asks "Pay? [y/N]" unless --yes. Several: it lists them, \
            newest first, and asks which one on the terminal; with --yes, --json or no terminal it pays none \
            and exits 2 (error code several_requests, the list under "requests"): pick with --request ID or \
            --terminal NAME. Then it reads the PIN with echo off unless --pin or WIPAY_PIN is given, sends the \
            signed instruction (retried with the same Idempotency-Key on 503) and waits for the completion \
            notice on the device's event stream. The PIN is never printed.
            """)

    @Option(help: "The PIN (4 to 6 digits). [env WIPAY_PIN; asked for on the terminal otherwise]") var pin: String?
    @Flag(help: "Do not ask for confirmation (still refuses to choose between several requests).") var yes = false
    @Option(help: "Seconds to wait for a payload on the link, and then for the notice.") var timeout: Int = 60
    @Option(help: "Pay only this request id (as `nearby` lists it).") var request: String?
    @Option(help: "Pay only a request of this till: its name (\"till 1\") or \"Merchant — till\"; case ignored.") var terminal: String?
    @Option(help: "Pay only a request of this merchant (its name; case ignored).") var merchant: String?
    @OptionGroup var link: LinkOptions
    @OptionGroup var options: CommonOptions

    func run() async throws { throw ExitCode(await pay()) }

    /// How long the phone keeps listening after it heard the first request (about three announcements).
    static let settle: Duration = .seconds(1)

    func pay() async -> Int32 {
        guard (1...3600).contains(timeout) else { return options.fail("invalid_timeout", "--timeout must be 1 to 3600 seconds") }
        if let request, request.isEmpty || request.utf8.count > 64 || !request.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) {
            return options.fail("invalid_request_id", "--request is a request id such as pr_…")
        }
        for (flag, value) in [("--terminal", terminal), ("--merchant", merchant)] {
            if let value, value.trimmingCharacters(in: .whitespaces).isEmpty || value.count > 200 {
                return options.fail("invalid_filter", "\(flag) must be 1 to 200 characters")
            }
        }
        if let given = pin ?? ProcessInfo.processInfo.environment["WIPAY_PIN"], !Self.isPIN(given) {
            return options.fail("invalid_pin_format", "a PIN is 4 to 6 digits")
        }

        // 1. Hear what is on the air, and pick.
        let choice = LinkChoice(requestId: request, terminal: terminal, merchant: merchant)
        let session: WalletOnLink
        let onAir: [HeardRequest]
        do {
            session = try WalletOnLink(options, link)
            options.say("Listening on the local link (\(session.settings.summary)) for up to \(timeout) s…")
            // A request id names one request: no need to wait for the others.
            onAir = try await session.hear(
                options, deadline: .now + .seconds(timeout), settle: choice.requestId != nil ? .zero : Self.settle,
                wanted: choice.matches)
        } catch {
            return error.status
        }
        let client = session.client
        let settings = session.settings
        let chosen: HeardRequest
        var confirmed = yes
        switch choice.pick(from: onAir) {
        case .none:
            return options.fail("timed_out", "no payment request that verifies was announced (\(settings.summary)) within \(timeout) s")
        case .noMatch(let heard):
            Self.show(heard, to: .standardError)
            return options.fail(
                "no_matching_request", "\(heard.count) request\(heard.count == 1 ? "" : "s") heard, none matching \(Self.describe(choice))",
                extra: ["requests": HeardView.list(heard)])
        case .one(let request):
            chosen = request
        case .several(let requests):
            guard !yes, !options.json, Console.canAsk else {
                Self.show(requests, to: .standardError)
                return options.fail(
                    "several_requests",
                    "\(requests.count) payment requests are on the air; pick one with --request ID or --terminal NAME",
                    extra: ["requests": HeardView.list(requests)])
            }
            Self.show(requests, to: .standardOutput)
            guard let answer = Console.ask("Pay which one? [1-\(requests.count), Enter for none] "), let n = Int(answer),
                (1...requests.count).contains(n)
            else {
                options.say("Not paid.")
                return Exit.declined
            }
            chosen = requests[n - 1]
            confirmed = true
        }
        let payloadText = chosen.text
        let payload = chosen.payload
        let amountText = Money.format(payload.amountMinor, payload.currency)
        let payee = Console.printable(payload.payee)

        // 2. Confirm and get the PIN.
        if !options.json {
            print("Pay \(amountText) to \(payee) (request \(payload.requestId))")
        } else {
            Console.error("Pay \(amountText) to \(payee) (request \(payload.requestId))")
        }
        if !confirmed && !Console.confirm("Pay? [y/N] ") {
            options.say("Not paid.")
            if options.json { print(JSON.object(["status": "not_confirmed", "request_id": .string(payload.requestId)]).text) }
            return Exit.declined
        }
        let givenPIN = pin ?? ProcessInfo.processInfo.environment["WIPAY_PIN"]
        guard var thePIN = givenPIN ?? Console.readSecret(prompt: "PIN: ") else {
            return options.fail("no_pin", "no PIN: pass --pin, set WIPAY_PIN or run on a terminal")
        }
        guard Self.isPIN(thePIN) else { return options.fail("invalid_pin_format", "a PIN is 4 to 6 digits") }

        // 3. The device's event stream first, then the instruction.
        let feed = EventFeed { lastId in try await client.events(lastEventId: lastId) }
        do {
            try await feed.connect()
        } catch {
            return options.fail(errorCode(error), "cannot open the device event stream: \(error)")
        }
        defer { Task { await feed.close() } }
        // A mistyped PIN declines only that attempt: the request stays open, so a shopper who typed the PIN
        // (not one who passed it with --pin or WIPAY_PIN) is asked again, each try a new instruction with its
        // own Idempotency-Key. Three wrong in a row lock the wallet (`pin_locked`), so asking more is useless.
        var response: HTTPResponse
        var pinTries = 1
        while true {
            do {
                response = try await client.pay(payload: payloadText, pin: thePIN, idempotencyKey: IdempotencyKey.random())
            } catch {
                return options.fail(errorCode(error), "cannot send the payment instruction: \(error)",
                    extra: ["request_id": .string(payload.requestId)])
            }
            guard response.status == 422, givenPIN == nil, pinTries < Self.maxPINTries,
                (try? response.json())?["error"]?["code"]?.string == "incorrect_pin"
            else { break }
            guard let again = Console.readSecret(prompt: "Incorrect PIN, try again. PIN: "), Self.isPIN(again) else { break }
            thePIN = again
            pinTries += 1
        }
        let body = try? response.json()
        let requestId = payload.requestId
        func matching(_ type: String) -> @Sendable (ServerSentEvent) -> Bool {
            { event in
                guard let data = event.json, data["request_id"]?.string == requestId else { return false }
                return (data["type"]?.string ?? event.event) == type
            }
        }

        if response.status == 200 {
            // 4. Wait for the completion notice.
            let notice = await feed.next(timeout: .seconds(timeout), where: matching("payment.succeeded"))
            var object: [String: JSON] = [
                "status": "succeeded", "request_id": .string(requestId),
                "payment_id": .optional(body?["payment_id"]?.string), "amount": .int(payload.amountMinor),
                "currency": .string(payload.currency), "merchant": .string(payload.merchantName),
                "terminal_name": .optional(payload.terminalName),
                "balance": body?["balance"] ?? .null,
                "notice": notice.map { .object(["event_id": .optional($0.id), "type": .string($0.event)]) } ?? .null,
            ]
            guard notice != nil else {
                object["status"] = "error"
                object["error"] = [
                    "code": "notice_timed_out",
                    "message": .string("the payment succeeded but no completion notice arrived within \(timeout) s"),
                ]
                Console.error("phone-wallet: payment \(body?["payment_id"]?.string ?? "?") succeeded, but no completion notice arrived within \(timeout) s")
                if options.json { print(JSON.object(object).text) }
                return Exit.error
            }
            if options.json {
                print(JSON.object(object).text)
            } else {
                let balance = body?["balance"]?.int64.map { Money.format($0, payload.currency) } ?? "?"
                print("Paid \(amountText) to \(payee): payment \(body?["payment_id"]?.string ?? "?"), balance \(balance)")
                print("Notice received: payment.succeeded (event \(notice?.id ?? "?"))")
            }
            return Exit.ok
        }
        if response.status == 422 {
            let code = body?["error"]?["code"]?.string ?? "declined"
            let message = body?["error"]?["message"]?.string ?? ""
            // A decline of this attempt by the ledger is also told on the device's stream (the request itself
            // stays open: the shopper may try again). Others (already paid…) change nothing and send no notice.
            let attemptDeclines: Set<String> = ["insufficient_funds", "incorrect_pin", "pin_locked", "currency_mismatch"]
            let notice = attemptDeclines.contains(code)
                ? await feed.next(timeout: .seconds(min(timeout, 10)), where: matching("payment.declined")) : nil
            if options.json {
                print(JSON.object([
                    "status": "declined", "request_id": .string(requestId), "amount": .int(payload.amountMinor),
                    "currency": .string(payload.currency), "merchant": .string(payload.merchantName),
                "terminal_name": .optional(payload.terminalName),
                    "error": ["code": .string(code), "message": .string(message)],
                    "notice": notice.map { .object(["event_id": .optional($0.id), "type": .string($0.event)]) } ?? .null,
                ]).text)
            } else {
                print("Declined: \(code)\(message.isEmpty ? "" : " — \(message)")")
                if let notice { print("Notice received: payment.declined (event \(notice.id ?? "?"))") }
            }
            return Exit.declined
        }
        let apiError = APIError(response: response)
        return options.fail(apiError.code, "the gateway refused the instruction: \(apiError)", extra: ["request_id": .string(requestId)])
    }

    static func show(_ requests: [HeardRequest], to handle: FileHandle) {
        var text = "\(requests.count) payment request\(requests.count == 1 ? "" : "s") on the link, newest first:\n"
        for (i, request) in requests.enumerated() { text += "  \(i + 1). \(HeardView.line(request))\n" }
        handle.write(Data(text.utf8))
    }

    static func describe(_ choice: LinkChoice) -> String {
        var parts: [String] = []
        if let id = choice.requestId { parts.append("request \(id)") }
        if let terminal = choice.terminal { parts.append("terminal \"\(terminal)\"") }
        if let merchant = choice.merchant { parts.append("merchant \"\(merchant)\"") }
        return parts.joined(separator: " and ")
    }

    /// PIN entries per `pay` run (the ledger locks the wallet after three wrong PINs in a row).
    static let maxPINTries = 3

    static func isPIN(_ text: String) -> Bool {
        (4...6).contains(text.utf8.count) && text.utf8.allSatisfy { $0 >= 0x30 && $0 <= 0x39 }
    }
}

/// Set once, from any task.
final class OnceFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var set = false
    /// True the first time only.
    func setOnce() -> Bool {
        lock.lock()
        defer { lock.unlock() }
        if set { return false }
        set = true
        return true
    }
}

/// The payload keys, updated after a refresh.
final class KeyBox: @unchecked Sendable {
    private let lock = NSLock()
    private var value: [String: [UInt8]]
    init(_ value: [String: [UInt8]]) { self.value = value }
    var keys: [String: [UInt8]] {
        get { lock.withLock { value } }
        set { lock.withLock { value = newValue } }
    }
}

// MARK: - balance

struct Balance: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show the account's balance and recent payments (GET /v1/accounts/me).")

    @OptionGroup var options: CommonOptions

    func run() async throws { throw ExitCode(await balance()) }

    func balance() async -> Int32 {
        let wallet: Wallet
        do {
            wallet = try WalletHome(path: options.home).load()
        } catch {
            return options.fail("home_error", error.message)
        }
        let response: HTTPResponse
        do {
            let client = try PhoneClient(baseURL: wallet.gatewayURL, identity: wallet.identity)
            response = try await client.account()
        } catch {
            return options.fail(errorCode(error), "cannot reach the phone-gateway at \(wallet.gatewayURL): \(error)")
        }
        guard response.status == 200, let body = try? response.json() else {
            let apiError = APIError(response: response)
            return options.fail(apiError.code, "the gateway refused: \(apiError)")
        }
        if options.json {
            print(body.text)
            return Exit.ok
        }
        let currency = body["currency"]?.string ?? ""
        print("Account \(body["account_id"]?.string ?? wallet.accountId)")
        print("Balance: \(body["balance"]?.int64.map { Money.format($0, currency) } ?? "?")")
        let recent = body["recent"]?.array ?? []
        if !recent.isEmpty { print("Recent payments:") }
        for payment in recent {
            let amount = payment["amount"]?.int64.map { Money.format($0, payment["currency"]?.string ?? currency) } ?? "?"
            let whenText = payment["posted_at"]?.string ?? payment["created_at"]?.string ?? ""
            let merchant = payment["merchant"]?["name"]?.string ?? payment["merchant_name"]?.string ?? ""
            let id = payment["payment_id"]?.string ?? payment["id"]?.string ?? ""
            print("  \(whenText)  \(amount)  \(merchant)  \(id)")
        }
        return Exit.ok
    }
}
