import NIOCore
import NIOPosix
import Testing

@testable import Yamux

@Suite("Yamux over loopback TCP", .timeLimit(.minutes(2)))
struct TCPLoopbackTests {
    /// A client and a server session over a real 127.0.0.1 TCP connection.
    static func withTCPSessions(
        configuration: YamuxConfiguration = .defaults,
        _ body: @Sendable (_ client: YamuxSession, _ server: YamuxSession) async throws -> Void
    ) async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let (accepted, acceptedContinuation) = AsyncStream<YamuxSession>.makeStream()
        let listener = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    acceptedContinuation.yield(try YamuxSession.install(on: channel, role: .responder, configuration: configuration))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        let port = try #require(listener.localAddress?.port)
        let channel = try await ClientBootstrap(group: group).connect(host: "127.0.0.1", port: port).get()
        let client = try await channel.eventLoop.submit {
            try YamuxSession.install(on: channel, role: .initiator, configuration: configuration)
        }.get()
        var iterator = accepted.makeAsyncIterator()
        let server = try #require(await iterator.next())

        do {
            try await body(client, server)
        } catch {
            await client.close(graceful: false)
            try? await listener.close()
            try? await group.shutdownGracefully()
            throw error
        }
        await client.close(graceful: true, deadline: .now() + .seconds(5))
        _ = try? await server.closeFuture.get()
        #expect(server.isClosed)
        try await listener.close()
        try await group.shutdownGracefully()
    }

    /// Writes `size` pattern bytes in `chunk`-sized writes, then FIN.
    static func send(_ stream: YamuxStream, seed: Int, size: Int, chunk: Int) async throws {
        var offset = 0
        while offset < size {
            let n = min(chunk, size - offset)
            try await stream.write(patternBuffer(seed: seed, offset: offset, count: n))
            offset += n
        }
        try await stream.closeWrite()
    }

    /// Reads to EOF, verifying the pattern; returns the byte count.
    static func receive(_ stream: YamuxStream, seed: Int) async throws -> Int {
        var offset = 0
        while let chunk = try await stream.read() {
            if let bad = firstMismatch(chunk, seed: seed, offset: offset) {
                Issue.record("stream \(stream.id): mismatch at byte \(bad)")
                throw YamuxError(.protocolError, "data mismatch")
            }
            offset += chunk.readableBytes
        }
        return offset
    }

    @Test("16 MiB on one stream, byte-exact; the receive window auto-tunes above 256 KiB")
    func bulkTransfer() async throws {
        try await Self.withTCPSessions { client, server in
            let size = 16 * 1024 * 1024
            let stream = try await client.openStream()
            async let sent: Void = Self.send(stream, seed: 1, size: size, chunk: 1024 * 1024)
            var inbound = server.inboundStreams.makeAsyncIterator()
            let remote = try #require(await inbound.next())
            let received = try await Self.receive(remote, seed: 1)
            try await sent
            #expect(received == size)
            // The reader kept up, so the window grew beyond the spec's initial 256 KiB.
            #expect(remote.receiveWindowSize > YamuxConfiguration.specInitialStreamWindow)
            #expect(remote.receiveWindowSize <= YamuxConfiguration.defaults.maxStreamWindow)
            await remote.close()
            #expect(try await stream.read() == nil)
        }
    }

    @Test("4 concurrent streams, 1 MiB each way, byte-exact")
    func concurrentStreams() async throws {
        try await Self.withTCPSessions { client, server in
            let size = 1024 * 1024
            // Server: for each stream, verify the client's data, then answer with its own.
            let serverTask = Task {
                try await withThrowingTaskGroup(of: Int.self) { group in
                    var accepted = 0
                    for await stream in server.inboundStreams {
                        group.addTask {
                            let n = try await Self.receive(stream, seed: Int(stream.id))
                            try await Self.send(stream, seed: Int(stream.id) + 1000, size: size, chunk: 100_000)
                            return n
                        }
                        accepted += 1
                        if accepted == 4 { break }
                    }
                    var total = 0
                    for try await n in group { total += n }
                    return total
                }
            }
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<4 {
                    let stream = try await client.openStream()
                    group.addTask {
                        async let sent: Void = Self.send(stream, seed: Int(stream.id), size: size, chunk: 64 * 1024 + 3)
                        let received = try await Self.receive(stream, seed: Int(stream.id) + 1000)
                        try await sent
                        #expect(received == size)
                    }
                }
                try await group.waitForAll()
            }
            #expect(try await serverTask.value == 4 * size)
            #expect(await eventually { client.openStreamCount == 0 && server.openStreamCount == 0 })
        }
    }

    /// Runs its methods on an event loop, as tasks run when NIO's loops are Swift's global
    /// executor (the CLI and the benchmarks): stream calls then take their inline path.
    actor OnLoop {
        let loop: any EventLoop
        nonisolated var unownedExecutor: UnownedSerialExecutor { loop.executor.asUnownedSerialExecutor() }
        init(_ loop: any EventLoop) { self.loop = loop }

        /// Opens a stream with `first` on its SYN, writes `size` pattern bytes, closes, and
        /// returns what the peer echoed.
        func exchange(on session: YamuxSession, size: Int) async throws -> Int {
            precondition(loop.inEventLoop)
            let stream = try await session.openStream(sending: patternBuffer(seed: 9, offset: 0, count: 100))
            precondition(loop.inEventLoop)
            var offset = 100
            while offset < size {
                let n = min(64 * 1024 + 1, size - offset)
                try await stream.write(patternBuffer(seed: 9, offset: offset, count: n))
                offset += n
            }
            try await stream.closeWrite()
            return try await TCPLoopbackTests.receive(stream, seed: 9)
        }
    }

    @Test("stream calls from a task on the channel's event loop (inline path), byte-exact")
    func callsOnTheEventLoop() async throws {
        try await Self.withTCPSessions { client, server in
            // More than one window (so writes wait for credit), less than two (the echo is only
            // read once everything was written).
            let size = 400 * 1024
            let echo = Task {
                var inbound = server.inboundStreams.makeAsyncIterator()
                let remote = try #require(await inbound.next())
                while let chunk = try await remote.read() { try await remote.write(chunk) }
                try await remote.closeWrite()
            }
            let echoed = try await OnLoop(client.eventLoop).exchange(on: client, size: size)
            #expect(echoed == size)
            try await echo.value
        }
    }

    @Test("ping over TCP")
    func ping() async throws {
        try await Self.withTCPSessions { client, server in
            let rtt = try await client.ping()
            #expect(rtt > .zero)
            _ = try await server.ping()
        }
    }
}
