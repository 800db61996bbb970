import CZeroMQ
import Foundation
import Synchronization
import Testing

@testable import ZeroMQ

@Suite struct ZeroMQSocketTests {
    let context: ZMQContext

    init() throws { context = try ZMQContext() }

    @Test func pairOverInprocCarriesMultipartMessages() throws {
        let a = try ZMQSocket(context, .pair)
        let b = try ZMQSocket(context, .pair)
        try a.bind("inproc://pair-test")
        try b.connect("inproc://pair-test")
        #expect(try a.send([Array("hello".utf8), [], [0, 1, 2, 255]], dontWait: false))
        let frames = try b.receive(dontWait: false)
        #expect(frames == [Array("hello".utf8), [], [0, 1, 2, 255]])
        #expect(try b.receive(dontWait: true) == nil)  // EAGAIN is a value, not an error
    }

    @Test func dealerRouterOverTcpLoopbackRoutesRepliesByIdentity() throws {
        let router = try ZMQSocket(context, .router)
        try router.bind("tcp://127.0.0.1:*")
        let endpoint = try router.lastEndpoint
        #expect(endpoint.hasPrefix("tcp://127.0.0.1:"))
        let dealer = try ZMQSocket(context, .dealer)
        try dealer.setRoutingId("client-1")
        try dealer.connect(endpoint)
        #expect(try dealer.send([[], Array("ping".utf8)], dontWait: false))
        let request = try #require(try router.receive(dontWait: false))
        #expect(request == [Array("client-1".utf8), [], Array("ping".utf8)])
        try router.send([request[0], [], Array("pong".utf8)], dontWait: false)
        #expect(try dealer.receive(dontWait: false) == [[], Array("pong".utf8)])
    }

    @Test func pollerTimesOutAndReportsReadiness() throws {
        let pull = try ZMQSocket(context, .pull)
        try pull.bind("inproc://poll-test")
        let push = try ZMQSocket(context, .push)
        try push.connect("inproc://poll-test")
        var poller = Poller()
        poller.add(.socket(pull), .readable)
        let start = ContinuousClock.now
        #expect(try poller.poll(timeout: .milliseconds(50)) == [[]])
        #expect(ContinuousClock.now - start >= .milliseconds(40))
        try push.send([[42]], dontWait: false)
        #expect(try poller.poll(timeout: .seconds(2)).first?.contains(.readable) == true)
    }

    @Test func errorsCarryTheFunctionAndErrno() throws {
        let socket = try ZMQSocket(context, .pub)
        #expect(throws: ZMQError.self) { try socket.bind("nonsense://nowhere") }
        do {
            try socket.connect("tcp://")
            Issue.record("connect to an invalid endpoint should throw")
        } catch {
            #expect(error.function == "zmq_connect")
            #expect(!error.message.isEmpty)
        }
    }

    @Test func oversizedMessagesAreRefusedNotHeld() throws {
        let a = try ZMQSocket(context, .pair)
        let b = try ZMQSocket(context, .pair)
        try a.bind("inproc://big")
        try b.connect("inproc://big")
        try a.send(Array(repeating: [1], count: 10), dontWait: false)
        try a.send([[2]], dontWait: false)
        #expect(throws: ZMQError.self) { _ = try b.receive(dontWait: false, maxFrames: 4) }
        // The socket is still in step: the next message arrives whole.
        #expect(try b.receive(dontWait: false) == [[2]])
    }

    @Test func socketOptionsRoundTrip() throws {
        let socket = try ZMQSocket(context, .dealer)
        try socket.setSendHighWaterMark(1234)
        #expect(try socket.intOption(ZMQ_SNDHWM) == 1234)
        try socket.setHeartbeat(interval: .seconds(1), timeout: .seconds(3), ttl: .seconds(5))
        #expect(try socket.intOption(ZMQ_HEARTBEAT_IVL) == 1000)
        try socket.setReconnect(interval: .milliseconds(100), maximum: .seconds(2))
        #expect(try socket.intOption(ZMQ_RECONNECT_IVL_MAX) == 2000)
        try socket.setLinger(.milliseconds(250))
        #expect(try socket.intOption(ZMQ_LINGER) == 250)
    }
}

@Suite struct CurveTests {
    @Test func keyPairsAreValidAndDerivable() throws {
        guard ZMQContext.has("curve") else { return }
        let keys = try CurveKeyPair.generate()
        #expect(CurveKeyPair.isValidKey(keys.publicKey))
        #expect(try CurveKeyPair.publicKey(forSecret: keys.secretKey) == keys.publicKey)
        #expect(throws: ZMQError.self) { _ = try CurveKeyPair(publicKey: keys.publicKey, secretKey: "short") }
        let other = try CurveKeyPair.generate()
        #expect(throws: ZMQError.self) {
            _ = try CurveKeyPair(publicKey: other.publicKey, secretKey: keys.secretKey)
        }
        let raw = try #require(Z85.decode(keys.publicKey))
        #expect(raw.count == 32)
        #expect(Z85.encode(raw) == keys.publicKey)
    }

    @Test func curveClientTalksToCurveServerOverTcp() throws {
        guard ZMQContext.has("curve") else { return }
        let context = try ZMQContext()
        let serverKeys = try CurveKeyPair.generate()
        let clientKeys = try CurveKeyPair.generate()
        let server = try ZMQSocket(context, .router)
        try server.makeCurveServer(serverKeys)
        try server.bind("tcp://127.0.0.1:*")
        let client = try ZMQSocket(context, .dealer)
        try client.makeCurveClient(clientKeys, serverPublicKey: serverKeys.publicKey)
        try client.connect(try server.lastEndpoint)
        try client.send([Array("secret".utf8)], dontWait: false)
        try server.setReceiveTimeout(.seconds(5))
        let frames = try #require(try server.receive(dontWait: false))
        #expect(frames.last == Array("secret".utf8))
    }
}

@Suite(.timeLimit(.minutes(1))) struct SocketPumpTests {
    @Test func pumpsBridgeThreadsBothWays() async throws {
        let context = try ZMQContext()
        let routerSocket = try ZMQSocket(context, .router)
        // A ROUTER drops what it cannot queue unless it is told to report it (then the pump waits).
        try routerSocket.setRouterMandatory(true)
        try routerSocket.bind("tcp://127.0.0.1:*")
        let endpoint = try routerSocket.lastEndpoint
        // An echo server whose replies go back through its own pump.
        let box = Mutex<SocketPump?>(nil)
        let server = try SocketPump(socket: routerSocket, name: "echo") { frames in
            _ = box.withLock { $0?.send(frames) }
        }
        box.withLock { $0 = server }

        let dealerSocket = try ZMQSocket(context, .dealer)
        try dealerSocket.connect(endpoint)
        let (stream, continuation) = AsyncStream<Frames>.makeStream()
        let client = try SocketPump(socket: dealerSocket, name: "client") { continuation.yield($0) }

        let count = 2_000
        // Many concurrent senders: the pump is the only one touching the socket.
        await withTaskGroup(of: Void.self) { group in
            for task in 0..<4 {
                group.addTask {
                    for i in stride(from: task, to: count, by: 4) {
                        client.send([Array("m\(i)".utf8)])
                    }
                }
            }
        }
        var seen = Set<String>()
        for await frames in stream {
            seen.insert(String(decoding: frames[0], as: UTF8.self))
            if seen.count == count { break }
        }
        #expect(seen.count == count)
        #expect(client.statistics.sent == UInt64(count))
        client.stop()
        server.stop()
        #expect(!client.send([[1]]))  // a stopped pump refuses work instead of losing it silently
    }
}
