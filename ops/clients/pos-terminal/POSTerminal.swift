import ArgumentParser
import Foundation
import WiPayClient
import WiPayPayload

/// The reference POS terminal: charges an amount, hands the signed payload to the phone over the local
/// link (and as a QR code), and waits for the outcome on the terminal's event stream.
@main
struct POSTerminal: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pos-terminal",
        abstract: "A reference POS terminal for WiPay.",
        discussion: """
            Authenticates to the pos-gateway with the terminal key from `payctl terminal add` \
            (WIPAY_TERMINAL_KEY or --key). The gateway is WIPAY_POS_URL or --url \
            (default http://127.0.0.1:8080). The local link is WIPAY_LINK_ADDRESS / WIPAY_LINK_PORT \
            or --link-address / --link-port (default 127.0.0.1:47474; on a shop LAN the subnet's broadcast \
            address, e.g. 192.168.1.255, or a multicast group such as 239.255.74.74 with --link-ttl; \
            --link-interface picks the network interface). See docs/local-link.md.
            """,
        subcommands: [Charge.self])
}

/// Exit statuses: 0 paid, 1 declined/expired/canceled, 2 usage or connection errors.
enum Exit {
    static let paid: Int32 = 0
    static let notPaid: Int32 = 1
    static let error: Int32 = 2
}

struct Charge: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Charge an amount and wait until the phone has paid (or the request ends).",
        discussion: """
            1. Opens the terminal's event stream (GET /v1/terminal/events).
            2. Creates the payment request (POST /v1/payment-requests with a fresh Idempotency-Key; on 503 or a connection error it retries with the same key).
            3. Prints the amount and request id, draws the payload as a QR code (unless --no-qr or --json) and announces it on the local link every 300 ms.
            4. Waits for this request's event (reconnecting with Last-Event-ID if the stream drops) and prints the outcome: status, payment id and the payer's masked alias.

            Ctrl-C cancels the pending request. Exit status: 0 succeeded; 1 declined, expired or canceled; 2 usage or connection errors.
            """)

    @Argument(help: "The amount in minor units (1250 = 12.50), 1 to 10^12.") var amount: String
    @Option(help: "ISO 4217 currency code, e.g. CNY.") var currency: String
    @Option(help: "Your reference for this charge (order number).") var reference: String
    @Option(help: "A description shown with the request.") var description: String?
    @Option(help: "Seconds until the request expires (10-900; the gateway's default is 120).") var expiresIn: Int?
    @Option(help: "The terminal key. [env WIPAY_TERMINAL_KEY]") var key: String?
    @Option(help: "The pos-gateway's URL. [env WIPAY_POS_URL, default http://127.0.0.1:8080]") var url: String?
    @Option(help: "Where to announce the payload. [env WIPAY_LINK_ADDRESS, default 127.0.0.1]") var linkAddress: String?
    @Option(help: "The link's UDP port. [env WIPAY_LINK_PORT, default 47474]") var linkPort: Int?
    @Option(help: "Announce on this network interface (e.g. wlan0); needed for 255.255.255.255 on a machine with several. [env WIPAY_LINK_INTERFACE]")
    var linkInterface: String?
    @Option(help: "Multicast hops when --link-address is a multicast group (1-255). [env WIPAY_LINK_TTL, default 1]") var linkTtl: Int?
    @Flag(help: "Do not draw the QR code.") var noQr = false
    @Flag(help: "Print one JSON object on stdout (and nothing else).") var json = false

    func run() async throws {
        let code = await charge()
        throw ExitCode(code)
    }

    // MARK: - Output

    func fail(_ code: String, _ message: String, extra: [String: JSON] = [:]) -> Int32 {
        Console.error("pos-terminal: \(message)")
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

    // MARK: - The charge

    func charge() async -> Int32 {
        let env = ProcessInfo.processInfo.environment
        guard amount.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), amount.utf8.count <= 13, let amountMinor = Int64(amount),
            (1...1_000_000_000_000).contains(amountMinor)
        else {
            return fail("invalid_amount", "AMOUNT must be a whole number of minor units from 1 to 10^12, not \(amount)")
        }
        guard currency.utf8.count == 3, currency.utf8.allSatisfy({ $0 >= 0x41 && $0 <= 0x5A }) else {
            return fail("invalid_currency", "--currency must be an ISO 4217 code of 3 capital letters, e.g. CNY")
        }
        guard !reference.isEmpty else { return fail("invalid_reference", "--reference must not be empty") }
        if let expiresIn, !(10...900).contains(expiresIn) {
            return fail("invalid_expires_in", "--expires-in must be 10 to 900 seconds")
        }
        guard let terminalKey = key ?? env["WIPAY_TERMINAL_KEY"], !terminalKey.isEmpty else {
            return fail("missing_key", "no terminal key: pass --key or set WIPAY_TERMINAL_KEY")
        }
        guard terminalKey.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else {
            return fail("invalid_key", "the terminal key has characters a key never has")
        }
        let baseURL = url ?? env["WIPAY_POS_URL"].flatMap { $0.isEmpty ? nil : $0 } ?? "http://127.0.0.1:8080"
        let link: LinkSettings
        do {
            link = try LinkSettings.resolve(address: linkAddress, port: linkPort, interface: linkInterface, ttl: linkTtl)
        } catch {
            return fail("invalid_link", error.message)
        }
        let pos: POSClient
        do {
            pos = try POSClient(baseURL: baseURL, terminalKey: terminalKey)
        } catch {
            return fail("invalid_url", error.message)
        }
        let signals = InterruptSignals()
        defer { signals.stop() }

        // 1. The event stream first, so the outcome cannot slip past us.
        let feed = EventFeed { lastId in try await pos.events(lastEventId: lastId) }
        do {
            try await feed.connect()
        } catch {
            return fail(errorCode(error), "cannot open the terminal event stream at \(baseURL): \(error)")
        }
        defer { Task { await feed.close() } }

        // 2. The request, retried with the same key.
        let idempotencyKey = IdempotencyKey.random()
        let created: HTTPResponse
        do {
            created = try await pos.createPaymentRequest(
                amount: amountMinor, currency: currency, reference: reference, description: description,
                expiresIn: expiresIn, idempotencyKey: idempotencyKey)
        } catch {
            return fail(errorCode(error), "cannot create the payment request at \(baseURL): \(error)")
        }
        guard created.status == 201 || created.status == 200 else {
            let apiError = APIError(response: created)
            return fail(apiError.code, "the gateway refused the request: \(apiError)")
        }
        guard let request = try? created.json(), let requestId = request["id"]?.string,
            let payload = request["payload"]?.string
        else {
            return fail("malformed_response", "the gateway's answer has no request id or payload")
        }
        let expiresAt = request["expires_at"]?.string.flatMap(parseTime) ?? (unixNow() + Int64(expiresIn ?? 120))
        say("Payment request \(requestId): \(Money.format(amountMinor, currency)) — \(reference)")
        if !noQr && !json {
            if let qr = try? QRCode(text: payload) {
                print(qr.renderHalfBlocks(ansi: Console.stdoutIsTerminal), terminator: "")
            } else {
                Console.error("pos-terminal: the payload is too long for a QR code; the local link still works")
            }
        }

        // 3. Announce on the link until the outcome arrives.
        let announcer: LinkAnnouncer
        do {
            announcer = try LinkAnnouncer(payload: payload, settings: link)
        } catch {
            _ = try? await pos.cancel(id: requestId, idempotencyKey: IdempotencyKey.random())
            return fail("link_error", "cannot announce on the local link: \(error.message)")
        }
        announcer.start()
        defer { announcer.stop() }
        say("Announcing \(link.summary); waiting for the phone (Ctrl-C cancels)…")

        // 4. Wait for the outcome, or Ctrl-C.
        let outcome = await withTaskGroup(of: Outcome?.self) { group -> Outcome? in
            group.addTask { await waitForOutcome(pos: pos, feed: feed, requestId: requestId, expiresAt: expiresAt) }
            group.addTask {
                guard await signals.next() != nil else { return nil }
                return .interrupted
            }
            let first = await group.next() ?? nil
            group.cancelAll()
            return first
        }
        announcer.stop()
        switch outcome {
        case .final(let state)?:
            return report(state, amountMinor: amountMinor)
        case .interrupted?:
            say("Interrupted: canceling \(requestId)…")
            return await cancelAndReport(pos: pos, requestId: requestId, amountMinor: amountMinor)
        case .failed(let code, let message)?:
            return fail(code, message, extra: ["request_id": .string(requestId)])
        case nil:
            return fail("no_outcome", "no outcome for \(requestId)", extra: ["request_id": .string(requestId)])
        }
    }

    enum Outcome: Sendable {
        case final(FinalState)
        case interrupted
        case failed(code: String, message: String)
    }

    struct FinalState: Sendable {
        var requestId: String
        var status: String
        var currency: String
        var reference: String?
        var paymentId: String?
        var payer: String?
        var eventId: String?
        var declineCode: String?
    }

    static let finalStatuses: Set<String> = ["succeeded", "declined", "expired", "canceled"]

    /// Waits for this request's `payment.*` event; re-checks the request by GET after a reconnection and at
    /// the end (expiry plus a grace period), so a missed event cannot leave the terminal waiting forever.
    func waitForOutcome(pos: POSClient, feed: EventFeed, requestId: String, expiresAt: Int64) async -> Outcome {
        let graceSeconds: Int64 = 30
        var seenReconnects = await feed.reconnects
        while !Task.isCancelled {
            let remaining = expiresAt + graceSeconds - unixNow()
            if remaining <= 0 { break }
            let event = await feed.next(timeout: .seconds(min(remaining, 2))) { event in
                guard let data = event.json, data["request_id"]?.string == requestId else { return false }
                let type = data["type"]?.string ?? event.event
                return type.hasPrefix("payment.")
            }
            if let event, let data = event.json, (data["type"]?.string ?? event.event) == "payment.attempt_declined" {
                // The shopper may type the PIN again, top up, or pay with another phone: keep waiting.
                let code = data["error"]?["code"]?.string ?? "declined"
                let attempts = data["declined_attempts"]?.int64.map { " (declined attempts: \($0))" } ?? ""
                say("Attempt declined: \(code)\(attempts); the request is still open")
                continue
            }
            if let event, let data = event.json {
                var state = FinalState(
                    requestId: requestId,
                    status: data["status"]?.string ?? String((data["type"]?.string ?? event.event).dropFirst("payment.".count)),
                    currency: data["currency"]?.string ?? currency, reference: data["reference"]?.string,
                    paymentId: data["payment_id"]?.string ?? data["payment"]?["id"]?.string,
                    payer: data["payer"]?.string ?? data["payment"]?["payer"]?.string, eventId: event.id,
                    declineCode: data["decline_code"]?.string ?? data["error"]?["code"]?.string)
                if state.status == "succeeded" && (state.paymentId == nil || state.payer == nil),
                    let fetched = await fetchState(pos: pos, requestId: requestId)
                {
                    state.paymentId = state.paymentId ?? fetched.paymentId
                    state.payer = state.payer ?? fetched.payer
                }
                return .final(state)
            }
            let reconnects = await feed.reconnects
            if reconnects != seenReconnects {
                seenReconnects = reconnects
                if let state = await fetchState(pos: pos, requestId: requestId), Self.finalStatuses.contains(state.status) {
                    return .final(state)
                }
            }
        }
        if let state = await fetchState(pos: pos, requestId: requestId), Self.finalStatuses.contains(state.status) {
            return .final(state)
        }
        return .failed(code: "timed_out", message: "no outcome for \(requestId) by its expiry; check it with GET /v1/payment-requests/\(requestId)")
    }

    func fetchState(pos: POSClient, requestId: String) async -> FinalState? {
        guard let response = try? await pos.paymentRequest(id: requestId), response.status == 200,
            let object = try? response.json(), let status = object["status"]?.string
        else { return nil }
        return FinalState(
            requestId: requestId, status: status, currency: object["currency"]?.string ?? currency,
            reference: object["reference"]?.string, paymentId: object["payment"]?["id"]?.string,
            payer: object["payment"]?["payer"]?.string, eventId: nil, declineCode: object["decline_code"]?.string)
    }

    func cancelAndReport(pos: POSClient, requestId: String, amountMinor: Int64) async -> Int32 {
        do {
            let response = try await pos.cancel(id: requestId, idempotencyKey: IdempotencyKey.random())
            if response.status == 200 {
                return report(FinalState(requestId: requestId, status: "canceled", currency: currency, reference: reference), amountMinor: amountMinor)
            }
            // Already final (409): say what it became — it may have been paid a moment ago.
            if let state = await fetchState(pos: pos, requestId: requestId), Self.finalStatuses.contains(state.status) {
                return report(state, amountMinor: amountMinor)
            }
            let apiError = APIError(response: response)
            return fail(apiError.code, "cannot cancel \(requestId): \(apiError)", extra: ["request_id": .string(requestId)])
        } catch {
            return fail(errorCode(error), "cannot cancel \(requestId): \(error)", extra: ["request_id": .string(requestId)])
        }
    }

    func report(_ state: FinalState, amountMinor: Int64) -> Int32 {
        if json {
            var object: [String: JSON] = [
                "request_id": .string(state.requestId), "status": .string(state.status), "amount": .int(amountMinor),
                "currency": .string(state.currency), "reference": .string(state.reference ?? reference),
                "payment_id": .optional(state.paymentId), "payer": .optional(state.payer), "event_id": .optional(state.eventId),
            ]
            if let declineCode = state.declineCode { object["decline_code"] = .string(declineCode) }
            print(JSON.object(object).text)
        } else {
            switch state.status {
            case "succeeded":
                print("Payment succeeded: \(Money.format(amountMinor, state.currency)), payment \(state.paymentId ?? "?"), payer \(state.payer ?? "?")")
            default:
                let why = state.declineCode.map { " (\($0))" } ?? ""
                print("Payment \(state.status)\(why): request \(state.requestId)")
            }
        }
        return state.status == "succeeded" ? Exit.paid : Exit.notPaid
    }
}

/// A short code for an error: the gateway's, or the client's kind.
func errorCode(_ error: any Error) -> String {
    switch error {
    case let error as APIError: error.code
    case let error as HTTPClientError: error.code.description
    default: "error"
    }
}

/// RFC 3339 UTC → unix seconds.
func parseTime(_ text: String) -> Int64? {
    let formatter = ISO8601DateFormatter()
    formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
    if let date = formatter.date(from: text) { return Int64(date.timeIntervalSince1970) }
    formatter.formatOptions = [.withInternetDateTime]
    return formatter.date(from: text).map { Int64($0.timeIntervalSince1970) }
}
