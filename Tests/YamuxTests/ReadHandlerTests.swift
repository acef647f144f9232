import NIOConcurrencyHelpers
import NIOCore
import Testing

@testable import Yamux

/// `YamuxStream.setReadHandler`: data, the end and failures pushed on the event loop instead of
/// waiting for `read()`.
@Suite(.timeLimit(.minutes(1)))
struct ReadHandlerTests {
    /// What a read handler was given, as text.
    final class Log: Sendable {
        let events = NIOLockedValueBox<[String]>([])

        var handler: @Sendable (YamuxStream.ReadEvent) -> Void {
            { [events] event in
                events.withLockedValue { events in
                    switch event {
                    case .data(let buffer): events.append(String(buffer: buffer))
                    case .end: events.append("end")
                    case .failure: events.append("failure")
                    }
                }
            }
        }

        var all: [String] { events.withLockedValue { $0 } }
    }

    @Test("queued data first, then what arrives; nil gives the stream back to read(); the end once")
    func dataThenEnd() async throws {
        let pair = try await SessionPair.make()
        defer { Task { await pair.tearDown() } }
        var serverInbound = pair.server.inboundStreams.makeAsyncIterator()
        let client = try await pair.client.openStream()
        try await client.write(ByteBuffer(string: "queued"))
        let server = try #require(await serverInbound.next())
        #expect(await eventually { server.readState.withLockedValue { $0.bufferedBytes } == 6 })

        let log = Log()
        try await server.eventLoop.submit { server.setReadHandler(log.handler) }.get()
        #expect(log.all == ["queued"])
        try await client.write(ByteBuffer(string: "pushed"))
        #expect(await eventually { log.all == ["queued", "pushed"] })

        try await server.eventLoop.submit { server.setReadHandler(nil) }.get()
        try await client.write(ByteBuffer(string: "read"))
        #expect(try await server.read() == ByteBuffer(string: "read"))
        #expect(log.all == ["queued", "pushed"])

        try await server.eventLoop.submit { server.setReadHandler(log.handler) }.get()
        try await client.closeWrite()
        #expect(await eventually { log.all == ["queued", "pushed", "end"] })
        server.reset()  // the handler was removed at the end: nothing more
        try await Task.sleep(for: .milliseconds(20))
        #expect(log.all == ["queued", "pushed", "end"])
    }

    @Test("a reset by the peer or by us reaches the read handler once, on the loop")
    func resets() async throws {
        let pair = try await SessionPair.make()
        defer { Task { await pair.tearDown() } }
        var serverInbound = pair.server.inboundStreams.makeAsyncIterator()

        let byPeer = try await pair.client.openStream()
        try await byPeer.write(ByteBuffer(string: "x"))
        let first = try #require(await serverInbound.next())
        let firstLog = Log()
        try await first.eventLoop.submit { first.setReadHandler(firstLog.handler) }.get()
        byPeer.reset()
        #expect(await eventually { firstLog.all == ["x", "failure"] })

        let local = try await pair.client.openStream()
        try await local.write(ByteBuffer(string: "y"))
        let second = try #require(await serverInbound.next())
        let secondLog = Log()
        try await second.eventLoop.submit { second.setReadHandler(secondLog.handler) }.get()
        #expect(await eventually { secondLog.all == ["y"] })
        second.reset()  // from a task, not the loop: the handler still runs on the loop
        #expect(await eventually { secondLog.all == ["y", "failure"] })
        second.reset()
        try await Task.sleep(for: .milliseconds(20))
        #expect(secondLog.all == ["y", "failure"])
    }

    @Test("a handler that removes itself while given queued data leaves the rest queued, in order")
    func handlerRemovesItselfPartWay() async throws {
        let pair = try await SessionPair.make()
        defer { Task { await pair.tearDown() } }
        var serverInbound = pair.server.inboundStreams.makeAsyncIterator()
        let client = try await pair.client.openStream()
        for text in ["a", "stop", "b", "c"] { try await client.write(ByteBuffer(string: text)) }
        let server = try #require(await serverInbound.next())
        #expect(await eventually { server.readState.withLockedValue { $0.bufferedBytes } == 7 })

        let log = Log()
        let logged = log.handler
        let stopping: @Sendable (YamuxStream.ReadEvent) -> Void = { event in
            logged(event)
            if case .data(let buffer) = event, String(buffer: buffer) == "stop" { server.setReadHandler(nil) }
        }
        try await server.eventLoop.submit { server.setReadHandler(stopping) }.get()
        #expect(log.all == ["a", "stop"])
        #expect(server.readState.withLockedValue { $0.bufferedBytes } == 2)
        try await client.write(ByteBuffer(string: "d"))
        #expect(await eventually { server.readState.withLockedValue { $0.bufferedBytes } == 3 })
        #expect(log.all == ["a", "stop"])

        // A new handler gets the rest first, then what arrives.
        try await server.eventLoop.submit { server.setReadHandler(log.handler) }.get()
        #expect(log.all == ["a", "stop", "b", "c", "d"])
        try await client.write(ByteBuffer(string: "e"))
        #expect(await eventually { log.all == ["a", "stop", "b", "c", "d", "e"] })
    }
}
