import Foundation
import Hummingbird
import Testing
import WiPayClient

/// A Hummingbird server on a free loopback port for the duration of `body`.
func withTestServer(_ router: Router<BasicRequestContext>, _ body: @Sendable (String) async throws -> Void) async throws {
    let (portStream, portContinuation) = AsyncStream<Int>.makeStream()
    let app = Application(
        router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0)),
        onServerRunning: { channel in
            portContinuation.yield(channel.localAddress?.port ?? 0)
            portContinuation.finish()
        })
    try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { try await app.runService() }
        var port = 0
        for await p in portStream { port = p }
        #expect(port > 0)
        try await body("http://127.0.0.1:\(port)")
        group.cancelAll()
    }
}

final class Counter: @unchecked Sendable {
    private let lock = NSLock()
    private var value = 0
    func add(_ n: Int) { lock.withLock { value += n } }
    var current: Int { lock.withLock { value } }
}

func header(_ request: Request, _ name: String) -> String? {
    request.headers.first { $0.name.canonicalName == name }?.value
}

func testRouter(openStreams: Counter = Counter()) -> Router<BasicRequestContext> {
    let router = Router()
    router.get("hello") { _, _ in "hello" }
    router.post("echo") { request, _ -> Response in
        let body = try await request.body.collect(upTo: 1 << 20)
        return Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: body))
    }
    router.get("key") { request, _ -> String in
        header(request, "idempotency-key") ?? "none"
    }
    router.get("chunked") { _, _ -> Response in
        Response(
            status: .ok, headers: [.contentType: "text/plain"],
            body: ResponseBody { writer in
                for piece in ["one,", "two,", "three"] {
                    try await writer.write(ByteBuffer(string: piece))
                    try await Task.sleep(for: .milliseconds(20))
                }
                try await writer.finish(nil)
            })
    }
    router.get("missing") { _, _ -> Response in
        Response(
            status: .notFound, headers: [.contentType: "application/json"],
            body: .init(byteBuffer: ByteBuffer(string: #"{"error":{"code":"request_not_found","message":"no such request"}}"#)))
    }
    router.get("slow") { _, _ -> String in
        try await Task.sleep(for: .seconds(8))
        return "late"
    }
    router.get("events") { request, _ -> Response in
        let last = header(request, "last-event-id") ?? "none"
        return Response(
            status: .ok, headers: [.contentType: "text/event-stream"],
            body: ResponseBody { writer in
                try await writer.write(ByteBuffer(string: ": hello\n\n"))
                try await writer.write(ByteBuffer(string: "id: 1\nevent: resume\ndata: \(last)\n\n"))
                try await writer.write(ByteBuffer(string: "id: 2\nevent: payment.succeeded\ndata: {\"a\":\ndata: 1}\n\n"))
                // An event split across writes, with CRLF line ends.
                try await writer.write(ByteBuffer(string: "id: 3\r\nevent: split\r\nda"))
                try await Task.sleep(for: .milliseconds(30))
                try await writer.write(ByteBuffer(string: "ta: x\r\n\r\n"))
                try await writer.finish(nil)
            })
    }
    router.get("forever") { _, _ -> Response in
        Response(
            status: .ok, headers: [.contentType: "text/event-stream"],
            body: ResponseBody { writer in
                openStreams.add(1)
                defer { openStreams.add(-1) }
                var n = 0
                while !Task.isCancelled {
                    n += 1
                    try await writer.write(ByteBuffer(string: "id: \(n)\ndata: tick\n\n"))
                    try await Task.sleep(for: .milliseconds(50))
                }
                try await writer.finish(nil)
            })
    }
    router.get("unauthorized-events") { _, _ -> Response in
        Response(
            status: .unauthorized, headers: [.contentType: "application/json"],
            body: .init(byteBuffer: ByteBuffer(string: #"{"error":{"code":"unauthorized","message":"bad terminal key"}}"#)))
    }
    return router
}

@Suite(.timeLimit(.minutes(1))) struct ClientHTTPTests {
    @Test func getPostAndKeepAlive() async throws {
        try await withTestServer(testRouter()) { url in
            let client = try HTTPClient(baseURL: url)
            let hello = try await client.get("/hello")
            #expect(hello.status == 200)
            #expect(hello.text == "hello")
            #expect(hello.headers["content-length"] == "5")
            let echo = try await client.post("/echo", json: ["amount": 1250, "currency": "CNY"], headers: ["Idempotency-Key": "k1"])
            #expect(echo.status == 200)
            #expect(try await client.get("/key", headers: ["Idempotency-Key": "k1"]).text == "k1")
            #expect(try echo.json()["amount"]?.int64 == 1250)
            for _ in 0..<4 { _ = try await client.get("/hello") }
            // Seven sequential requests over one kept-alive connection.
            #expect(client.connectionsOpened == 1)
        }
    }

    @Test func chunkedBodyAndErrorBody() async throws {
        try await withTestServer(testRouter()) { url in
            let client = try HTTPClient(baseURL: url)
            let chunked = try await client.get("/chunked")
            #expect(chunked.headers["transfer-encoding"]?.lowercased().contains("chunked") == true)
            #expect(chunked.text == "one,two,three")
            let missing = try await client.get("/missing")
            #expect(missing.status == 404)
            #expect(missing.apiError == APIError(status: 404, code: "request_not_found", message: "no such request"))
            // The connection survives both and is reused.
            _ = try await client.get("/hello")
            #expect(client.connectionsOpened == 1)
        }
    }

    @Test func readTimeoutAndConnectionRefused() async throws {
        try await withTestServer(testRouter()) { url in
            let client = try HTTPClient(baseURL: url, timeouts: .init(connect: .seconds(2), response: .milliseconds(300)))
            let started = ContinuousClock.now
            await #expect(throws: HTTPClientError.self) { try await client.get("/slow") }
            // The 300 ms response timeout fired, not the server's answer 8 s later (a margin for a loaded machine).
            #expect(ContinuousClock.now - started < .seconds(6))
        }
        // Nothing listens on port 1.
        let refused = try HTTPClient(baseURL: "http://127.0.0.1:1")
        do {
            _ = try await refused.get("/")
            Issue.record("expected a connection error")
        } catch {
            #expect(error.code == .network)
            #expect(error.isRetryable)
        }
        #expect(throws: HTTPClientError.self) { try HTTPClient(baseURL: "https://example.com") }
        #expect(throws: HTTPClientError.self) { try HTTPClient(baseURL: "not a url") }
    }

    @Test func serverSentEvents() async throws {
        try await withTestServer(testRouter()) { url in
            let client = try HTTPClient(baseURL: url)
            var events: [ServerSentEvent] = []
            for try await event in try await client.events(path: "/events", lastEventId: "41") { events.append(event) }
            #expect(events.count == 3)
            #expect(events.first == ServerSentEvent(id: "1", event: "resume", data: "41"))
            #expect(events.dropFirst().first == ServerSentEvent(id: "2", event: "payment.succeeded", data: "{\"a\":\n1}"))
            #expect(events.dropFirst().first?.json?["a"]?.int64 == 1)
            #expect(events.last == ServerSentEvent(id: "3", event: "split", data: "x"))
        }
    }

    @Test func eventStreamErrorsAndCancellation() async throws {
        let open = Counter()
        try await withTestServer(testRouter(openStreams: open)) { url in
            let client = try HTTPClient(baseURL: url)
            do {
                _ = try await client.events(path: "/unauthorized-events")
                Issue.record("expected a 401")
            } catch let error as APIError {
                #expect(error.status == 401)
                #expect(error.code == "unauthorized")
            }
            func waitUntilClosed() async throws {
                let deadline = ContinuousClock.now + .seconds(5)
                while open.current != 0 && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(50)) }
                #expect(open.current == 0)
            }
            // 1. The consumer breaks out of the loop and lets the stream go: the socket closes.
            do {
                var received = 0
                for try await event in try await client.events(path: "/forever") {
                    #expect(event.data == "tick")
                    received += 1
                    if received == 3 { break }
                }
                #expect(received == 3)
            }
            try await waitUntilClosed()
            // 2. The consuming task is cancelled.
            let consumer = Task {
                var received = 0
                for try await _ in try await client.events(path: "/forever") { received += 1 }
                return received
            }
            while open.current == 0 { try await Task.sleep(for: .milliseconds(20)) }
            consumer.cancel()
            _ = try? await consumer.value
            try await waitUntilClosed()
            // 3. close().
            let stream = try await client.events(path: "/forever")
            while open.current == 0 { try await Task.sleep(for: .milliseconds(20)) }
            stream.close()
            try await waitUntilClosed()
        }
    }

    @Test func eventFeedReconnectsWithLastEventId() async throws {
        try await withTestServer(testRouter()) { url in
            let client = try HTTPClient(baseURL: url)
            let seen = Counter()
            let feed = EventFeed { last in
                seen.add(1)
                return try await client.events(path: "/events", lastEventId: last)
            }
            try await feed.connect()
            // The /events stream ends after three events; the feed reopens it with Last-Event-ID 3.
            let resumed = await feed.next(timeout: .seconds(5)) { $0.event == "resume" && $0.data == "3" }
            #expect(resumed != nil)
            #expect(await feed.reconnects >= 1)
            let none = await feed.next(timeout: .milliseconds(100)) { $0.event == "never" }
            #expect(none == nil)
            await feed.close()
        }
    }
}
