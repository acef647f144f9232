import NIOCore
import NIOEmbedded
import Testing

@testable import Yamux

@Suite("Yamux sessions over in-memory channels", .timeLimit(.minutes(1)))
struct SessionTests {
    @Test("open streams both ways, exchange data, half-close")
    func exchangeAndHalfClose() async throws {
        let pair = try await SessionPair.make()
        defer { Task { await pair.tearDown() } }
        var serverInbound = pair.server.inboundStreams.makeAsyncIterator()
        var clientInbound = pair.client.inboundStreams.makeAsyncIterator()

        // Client -> server: request, FIN; server answers after reading EOF, then FIN.
        let c1 = try await pair.client.openStream()
        #expect(c1.id == 1)
        try await c1.write(ByteBuffer(string: "hello "))
        try await c1.write(ByteBuffer(string: "server"))
        try await c1.closeWrite()
        let s1 = try #require(await serverInbound.next())
        #expect(s1.id == 1)
        #expect(try await readAll(s1) == ByteBuffer(string: "hello server"))
        try await s1.write(ByteBuffer(string: "hello client"))
        try await s1.closeWrite()
        #expect(try await readAll(c1) == ByteBuffer(string: "hello client"))
        #expect(try await c1.read() == nil)  // EOF is sticky

        // Writing after closeWrite is refused.
        await #expect(throws: YamuxError.self) { try await c1.write(ByteBuffer(string: "x")) }

        // Server -> client stream (even ID), the other half-close order.
        let s2 = try await pair.server.openStream()
        #expect(s2.id == 2)
        try await s2.write(ByteBuffer(string: "push"))
        let c2 = try #require(await clientInbound.next())
        #expect(c2.id == 2)
        #expect(try await c2.read() == ByteBuffer(string: "push"))
        try await c2.closeWrite()
        #expect(try await s2.read() == nil)
        try await s2.write(ByteBuffer(string: " more"))  // half-closed: still writable
        try await s2.closeWrite()
        #expect(try await readAll(c2) == ByteBuffer(string: " more"))

        #expect(await eventually { pair.client.openStreamCount == 0 && pair.server.openStreamCount == 0 })
        #expect(!pair.client.isClosed)
    }

    @Test("an inbound stream handler gets the waiting and the new streams, with their SYN data; the sequence none")
    func inboundStreamHandler() async throws {
        let pair = try await SessionPair.make()
        defer { Task { await pair.tearDown() } }
        let early = try await pair.client.openStream(sending: ByteBuffer(string: "early"))
        #expect(await eventually { pair.server.openStreamCount == 1 })
        let (streams, continuation) = AsyncStream<YamuxStream>.makeStream()
        pair.server.setInboundStreamHandler { continuation.yield($0) }
        let late = try await pair.client.openStream(sending: ByteBuffer(string: "late"))
        var iterator = streams.makeAsyncIterator()
        for (client, text) in [(early, "early"), (late, "late")] {
            let server = try #require(await iterator.next())
            #expect(server.id == client.id)
            #expect(try await server.read() == ByteBuffer(string: text))
            try await server.write(ByteBuffer(string: text.uppercased()))
            #expect(try await client.read() == ByteBuffer(string: text.uppercased()))
        }
        var sequence = pair.server.inboundStreams.makeAsyncIterator()
        try await pair.client.openStream().closeWrite()
        let third = try #require(await iterator.next())
        #expect(third.id == 5)
        await pair.client.close(graceful: false)
        #expect(await sequence.next() == nil)  // the sequence got none of them
    }

    @Test("many streams in both directions concurrently, via the inbound sequences")
    func concurrentStreams() async throws {
        let pair = try await SessionPair.make()
        defer { Task { await pair.tearDown() } }

        // Echo servers on both sides.
        for session in [pair.client, pair.server] {
            Task {
                await withTaskGroup(of: Void.self) { group in
                    for await stream in session.inboundStreams {
                        group.addTask {
                            while let chunk = try? await stream.read() { try? await stream.write(chunk) }
                            try? await stream.closeWrite()
                        }
                    }
                }
            }
        }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for i in 0..<20 {
                let session = i.isMultiple(of: 2) ? pair.client : pair.server
                group.addTask {
                    let stream = try await session.openStream()
                    let payload = patternBuffer(seed: i, offset: 0, count: 10_000 + i * 1000)
                    try await stream.write(payload)
                    try await stream.closeWrite()
                    let echoed = try await readAll(stream)
                    #expect(echoed == payload)
                }
            }
            try await group.waitForAll()
        }
        #expect(await eventually { pair.client.openStreamCount == 0 && pair.server.openStreamCount == 0 })
    }

    @Test("a write larger than the window completes once the reader consumes")
    func largeWriteBackPressure() async throws {
        let pair = try await SessionPair.make()
        defer { Task { await pair.tearDown() } }
        let size = 1024 * 1024 + 7
        let stream = try await pair.client.openStream()
        let writer = Task {
            try await stream.write(patternBuffer(seed: 3, offset: 0, count: size))
            try await stream.closeWrite()
        }
        var inbound = pair.server.inboundStreams.makeAsyncIterator()
        let s = try #require(await inbound.next())
        var offset = 0
        while let chunk = try await s.read() {
            #expect(firstMismatch(chunk, seed: 3, offset: offset) == nil)
            // Never more than the granted window in one go.
            #expect(chunk.readableBytes <= YamuxConfiguration.testing.maxDataFrameSize)
            offset += chunk.readableBytes
        }
        #expect(offset == size)
        try await writer.value
    }

    @Test("reset: the peer's reads and writes fail with streamReset")
    func reset() async throws {
        let pair = try await SessionPair.make()
        defer { Task { await pair.tearDown() } }
        let c = try await pair.client.openStream()
        try await c.write(ByteBuffer(string: "abc"))
        var inbound = pair.server.inboundStreams.makeAsyncIterator()
        let s = try #require(await inbound.next())
        #expect(try await s.read() == ByteBuffer(string: "abc"))

        c.reset()
        await #expect(throws: YamuxError(.streamReset, "stream 1 reset locally")) { try await c.read() }
        do {
            _ = try await s.read()
            Issue.record("read after reset succeeded")
        } catch let error as YamuxError {
            #expect(error.code == .streamReset)
        }
        do {
            try await s.write(ByteBuffer(string: "x"))
            Issue.record("write after reset succeeded")
        } catch let error as YamuxError {
            #expect(error.code == .streamReset)
        }
        #expect(await eventually { pair.client.openStreamCount == 0 && pair.server.openStreamCount == 0 })
    }

    @Test("close(): data arriving after it is discarded but credited, stream released on the peer's FIN")
    func closeDiscards() async throws {
        let pair = try await SessionPair.make()
        defer { Task { await pair.tearDown() } }
        let c = try await pair.client.openStream()
        try await c.write(ByteBuffer(string: "request"))
        var inbound = pair.server.inboundStreams.makeAsyncIterator()
        let s = try #require(await inbound.next())
        #expect(try await s.read() == ByteBuffer(string: "request"))
        await s.close()
        await #expect(throws: YamuxError.self) { try await s.read() }
        // The client can still send a whole window and more: the server credits discarded data.
        try await c.write(patternBuffer(seed: 1, offset: 0, count: 600 * 1024))
        try await c.closeWrite()
        #expect(try await c.read() == nil)  // server's FIN from close()
        #expect(await eventually { pair.client.openStreamCount == 0 && pair.server.openStreamCount == 0 })
    }

    @Test("ping measures the round trip; keep-alive answers")
    func ping() async throws {
        let pair = try await SessionPair.make()
        defer { Task { await pair.tearDown() } }
        let rtt = try await pair.client.ping()
        #expect(rtt >= .zero)
        #expect(pair.client.roundTripTime != nil)
        _ = try await pair.server.ping()
    }

    @Test("GoAway: the receiver may not open streams, existing streams continue")
    func goAway() async throws {
        let pair = try await SessionPair.make()
        defer { Task { await pair.tearDown() } }
        let c = try await pair.client.openStream()
        try await c.write(ByteBuffer(string: "1"))
        var inbound = pair.server.inboundStreams.makeAsyncIterator()
        let s = try #require(await inbound.next())

        await pair.server.goAway(.normal)
        await #expect(throws: YamuxError.self) { _ = try await pair.server.openStream() }
        // The client learns of it through the GoAway frame.
        var refused: YamuxError?
        for _ in 0..<1000 {
            do {
                let extra = try await pair.client.openStream()
                extra.reset()
                try await Task.sleep(for: .milliseconds(1))
            } catch let error as YamuxError {
                refused = error
                break
            }
        }
        #expect(refused?.code == .goAwayReceived)
        try await c.write(ByteBuffer(string: "2"))
        try await c.closeWrite()
        #expect(try await readAll(s) == ByteBuffer(string: "12"))
        #expect(!pair.client.isClosed && !pair.server.isClosed)
    }

    @Test("graceful close waits for open streams, then GoAway and channel close")
    func gracefulClose() async throws {
        let pair = try await SessionPair.make()
        defer { Task { await pair.tearDown() } }
        let c = try await pair.client.openStream()
        try await c.write(ByteBuffer(string: "x"))
        var inbound = pair.server.inboundStreams.makeAsyncIterator()
        let s = try #require(await inbound.next())

        let closing = Task { await pair.client.close(graceful: true, deadline: nil) }
        // New streams are refused while closing.
        #expect(await eventually {
            (try? await pair.client.eventLoop.submit { pair.client.handler.value.isClosingForTests }.get()) == true
        })
        await #expect(throws: YamuxError.self) { _ = try await pair.client.openStream() }
        #expect(!pair.client.isClosed)

        // Finish the stream both ways; then the session closes by itself.
        try await c.closeWrite()
        #expect(try await readAll(s) == ByteBuffer(string: "x"))
        try await s.closeWrite()
        #expect(try await c.read() == nil)
        await closing.value
        #expect(pair.client.isClosed)
        try await pair.client.closeFuture.get()  // normal end
        // The server sees the connection close (after the GoAway).
        _ = try? await pair.server.closeFuture.get()
        #expect(pair.server.isClosed)
        #expect(await inbound.next() == nil)
    }

    @Test("graceful close gives up at the deadline")
    func gracefulCloseDeadline() async throws {
        let pair = try await SessionPair.make()
        defer { Task { await pair.tearDown() } }
        let c = try await pair.client.openStream()
        let loop = try #require(pair.clientChannel.eventLoop as? NIOAsyncTestingEventLoop)
        let deadline = loop.now + .seconds(5)
        let closing = Task { await pair.client.close(graceful: true, deadline: deadline) }
        #expect(await eventually {
            (try? await pair.client.eventLoop.submit { pair.client.handler.value.isClosingForTests }.get()) == true
        })
        #expect(!pair.client.isClosed)
        await loop.advanceTime(to: deadline)
        await closing.value
        #expect(pair.client.isClosed)
        await #expect(throws: YamuxError.self) { try await c.read() }
    }

    @Test("closing the connection fails open streams; a stream that saw FIN reads EOF")
    func connectionLoss() async throws {
        let pair = try await SessionPair.make()
        defer { Task { await pair.tearDown() } }
        let open = try await pair.client.openStream()
        let finished = try await pair.client.openStream()
        try await finished.write(ByteBuffer(string: "x"))
        var inbound = pair.server.inboundStreams.makeAsyncIterator()
        _ = try #require(await inbound.next())
        let s2 = try #require(await inbound.next())
        try await s2.write(ByteBuffer(string: "bye"))
        try await s2.closeWrite()
        #expect(try await finished.read() == ByteBuffer(string: "bye"))

        try await pair.serverChannel.close()
        try? await pair.client.closeFuture.get()
        #expect(pair.client.isClosed)
        #expect(try await finished.read() == nil)
        do {
            _ = try await open.read()
            Issue.record("read on a dead session succeeded")
        } catch let error as YamuxError {
            #expect(error.code == .sessionClosed)
        }
        await #expect(throws: YamuxError.self) { try await open.write(ByteBuffer(string: "x")) }
        await #expect(throws: YamuxError.self) { _ = try await pair.client.openStream() }
        var clientInbound = pair.client.inboundStreams.makeAsyncIterator()
        #expect(await clientInbound.next() == nil)
    }
}

@Suite("Yamux session, raw frames", .timeLimit(.minutes(1)))
struct RawSessionTests {
    @Test("bytes fired right after install are processed; ACK is sent when the stream is taken")
    func ackOnAccept() async throws {
        let channel = NIOAsyncTestingChannel()
        try await channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 4001)).get()
        let syn = YamuxFrame.data(streamID: 1, flags: .syn, payload: ByteBuffer(string: "early"))
            .encoded(allocator: ByteBufferAllocator())
        // Install and fire leftover bytes in the same event-loop tick, as the host does.
        let session = try await channel.eventLoop.submit {
            let session = try YamuxSession.install(on: channel, role: .responder, configuration: .testing)
            channel.pipeline.fireChannelRead(syn)
            return session
        }.get()
        let peer = RawPeer(channel: channel, session: session)
        try await peer.barrier()
        #expect(try await peer.writtenFrame() == nil)  // not ACKed yet
        #expect(session.openStreamCount == 1)

        var inbound = session.inboundStreams.makeAsyncIterator()
        let stream = try #require(await inbound.next())
        #expect(try await peer.nextFrame() == .windowUpdate(streamID: 1, flags: .ack, delta: 0))
        #expect(try await stream.read() == ByteBuffer(string: "early"))
        try await channel.close()
    }

    @Test("a large data frame leaves as header then payload, small ones as one buffer; write(contentsOf:) keeps order")
    func largeFramesAreWrittenAsHeaderAndPayload() async throws {
        let peer = try await RawPeer.make(role: .initiator)
        let stream = try await peer.session.openStream()
        let large = patternBuffer(seed: 5, offset: 0, count: YamuxHandler.separatePayloadThreshold)
        let writer = Task { try await stream.write(contentsOf: [ByteBuffer(string: "head"), large, ByteBuffer(string: "tail")]) }
        #expect(try await peer.nextFrame().flags.contains(.syn))
        // "head": a small frame, one buffer.
        let first = try await peer.channel.waitForOutboundWrite(as: ByteBuffer.self)
        #expect(first.readableBytes == YamuxFrame.headerSize + 4)
        // The large payload: a 12-byte header buffer, then the payload buffer itself.
        let header = try await peer.channel.waitForOutboundWrite(as: ByteBuffer.self)
        #expect(header.readableBytes == YamuxFrame.headerSize)
        let payload = try await peer.channel.waitForOutboundWrite(as: ByteBuffer.self)
        #expect(payload == large)
        var decoder = YamuxFrameDecoder()
        decoder.append(header)
        decoder.append(payload)
        let frame = try #require(try decoder.nextFrame())
        #expect(frame.header.streamID == stream.id && frame.payload == large)
        #expect(try await peer.nextFrame() == .data(streamID: stream.id, payload: ByteBuffer(string: "tail")))
        try await writer.value
        try await peer.channel.close()
    }

    @Test("a remote ping is answered with the same opaque value")
    func answersPing() async throws {
        let peer = try await RawPeer.make(role: .initiator)
        try await peer.inject(.ping(opaque: 0xCAFE, ack: false))
        #expect(try await peer.nextFrame() == .ping(opaque: 0xCAFE, ack: true))
        try await peer.channel.close()
    }

    @Test("backlog overflow: SYN beyond maxAcceptBacklog gets RST")
    func backlogOverflow() async throws {
        var config = YamuxConfiguration.testing
        config.maxAcceptBacklog = 2
        let peer = try await RawPeer.make(role: .responder, configuration: config)
        try await peer.inject(
            .windowUpdate(streamID: 1, flags: .syn, delta: 0),
            .windowUpdate(streamID: 3, flags: .syn, delta: 0),
            .windowUpdate(streamID: 5, flags: .syn, delta: 0))
        #expect(try await peer.nextFrame() == .windowUpdate(streamID: 5, flags: .rst, delta: 0))
        #expect(peer.session.openStreamCount == 2)
        #expect(!peer.session.isClosed)
        try await peer.channel.close()
    }

    @Test("credit is sent as the application reads, not as data arrives")
    func creditOnConsumption() async throws {
        let peer = try await RawPeer.make(role: .responder)
        let window = 256 * 1024
        try await peer.inject(.windowUpdate(streamID: 1, flags: .syn, delta: 0))
        var inbound = peer.session.inboundStreams.makeAsyncIterator()
        let stream = try #require(await inbound.next())
        #expect(try await peer.nextFrame().flags == .ack)
        // Fill the whole window in 4 frames.
        for i in 0..<4 {
            try await peer.inject(.data(streamID: 1, payload: patternBuffer(seed: 0, offset: i * window / 4, count: window / 4)))
        }
        try await peer.barrier()
        #expect(try await peer.writtenFrame() == nil)  // arrived, not consumed: no credit
        _ = try await stream.read()
        try await peer.barrier()
        #expect(try await peer.writtenFrame() == nil)  // a quarter consumed: not yet
        _ = try await stream.read()
        let update = try await peer.nextFrame()  // half consumed: credit
        #expect(update.type == .windowUpdate)
        #expect(update.streamID == 1)
        #expect(update.length >= UInt32(window / 2))
        try await peer.channel.close()
    }

    @Test("data beyond the window closes the session with windowExceeded and GoAway(protocol error)")
    func windowViolation() async throws {
        let peer = try await RawPeer.make(role: .responder)
        let stream = Task {
            var inbound = peer.session.inboundStreams.makeAsyncIterator()
            return await inbound.next()
        }
        try await peer.inject(
            .data(streamID: 1, flags: .syn, payload: ByteBuffer(repeating: 1, count: 200 * 1024)),
            .data(streamID: 1, payload: ByteBuffer(repeating: 2, count: 100 * 1024)))
        var frames: [YamuxFrame] = []
        while true {
            guard let f = try? await peer.nextFrame() else { break }
            frames.append(f)
        }
        #expect(frames.contains(.goAway(.protocolError)))
        await #expect(throws: YamuxError.self) { try await peer.session.closeFuture.get() }
        do {
            try await peer.session.closeFuture.get()
        } catch let error as YamuxError {
            #expect(error.code == .windowExceeded)
        }
        #expect(peer.session.isClosed)
        if let s = await stream.value {
            // The stream taken before the violation fails with the session's error
            // (after the data that was valid).
            while true {
                do {
                    guard try await s.read() != nil else { Issue.record("EOF instead of error"); break }
                } catch let error as YamuxError {
                    #expect(error.code == .windowExceeded)
                    break
                }
            }
        }
    }

    @Test("a malformed frame closes the session with the decoder's typed error")
    func malformedFrame() async throws {
        let peer = try await RawPeer.make(role: .initiator)
        try await peer.channel.writeInbound(ByteBuffer(bytes: [7, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]))
        #expect(try await peer.nextFrame() == .goAway(.protocolError))
        do {
            try await peer.session.closeFuture.get()
            Issue.record("session ended normally")
        } catch let error as YamuxError {
            #expect(error.code == .invalidVersion)
        }
        #expect(!peer.channel.isActive)
    }

    @Test("wrong-parity SYN is a protocol error")
    func wrongParity() async throws {
        let peer = try await RawPeer.make(role: .initiator)
        try await peer.inject(.windowUpdate(streamID: 3, flags: .syn, delta: 0))  // initiator expects even
        #expect(try await peer.nextFrame() == .goAway(.protocolError))
        do {
            try await peer.session.closeFuture.get()
        } catch let error as YamuxError {
            #expect(error.code == .invalidStreamID)
        }
    }

    @Test("a closed stream whose peer never ends its side is reset after the linger timeout")
    func closeLingerTimeout() async throws {
        var config = YamuxConfiguration.testing
        config.closeLingerTimeout = .seconds(60)
        let peer = try await RawPeer.make(role: .initiator, configuration: config)
        let loop = try #require(peer.channel.eventLoop as? NIOAsyncTestingEventLoop)
        let stream = try await peer.session.openStream()
        let syn = try await peer.nextFrame()
        #expect(syn.flags.contains(.syn) && syn.streamID == stream.id)
        await stream.close()
        let fin = try await peer.nextFrame()
        #expect(fin.flags.contains(.fin) && fin.streamID == stream.id)
        try await peer.barrier()
        #expect(peer.session.openStreamCount == 1)  // the peer has not finished its side
        await loop.advanceTime(by: .seconds(59))
        #expect(try await peer.writtenFrame() == nil)
        await loop.advanceTime(by: .seconds(1))
        let rst = try await peer.nextFrame()
        #expect(rst.flags.contains(.rst) && rst.streamID == stream.id)
        try await peer.barrier()
        #expect(peer.session.openStreamCount == 0)
        try await peer.channel.close()
    }

    @Test("keep-alive: unanswered ping closes the session with keepAliveTimeout")
    func keepAliveTimeout() async throws {
        var config = YamuxConfiguration.testing
        config.keepAliveInterval = .seconds(10)
        config.keepAliveTimeout = .seconds(5)
        let peer = try await RawPeer.make(role: .initiator, configuration: config)
        let loop = try #require(peer.channel.eventLoop as? NIOAsyncTestingEventLoop)
        // The initial RTT ping is sent at once; answer it.
        let first = try await peer.nextFrame()
        #expect(first.type == .ping && first.flags == .syn)
        try await peer.inject(.ping(opaque: first.length, ack: true))
        #expect(peer.session.roundTripTime != nil)
        // Next keep-alive ping after the interval; leave it unanswered.
        await loop.advanceTime(by: .seconds(10))
        let second = try await peer.nextFrame()
        #expect(second.type == .ping && second.flags == .syn)
        #expect(!peer.session.isClosed)
        await loop.advanceTime(by: .seconds(5))
        do {
            try await peer.session.closeFuture.get()
            Issue.record("session ended normally")
        } catch let error as YamuxError {
            #expect(error.code == .keepAliveTimeout)
        }
    }

    @Test("openStream waits while the outbound ACK backlog is full, resumes on ACK")
    func outboundAckBacklog() async throws {
        var config = YamuxConfiguration.testing
        config.maxOutboundAckBacklog = 1
        let peer = try await RawPeer.make(role: .initiator, configuration: config)
        let first = try await peer.session.openStream()
        #expect(try await peer.nextFrame() == .windowUpdate(streamID: 1, flags: .syn, delta: 0))
        let second = Task { try await peer.session.openStream() }
        try await peer.barrier()
        #expect(try await peer.writtenFrame() == nil)  // no second SYN yet
        try await peer.inject(.windowUpdate(streamID: first.id, flags: .ack, delta: 0))
        #expect(try await peer.nextFrame() == .windowUpdate(streamID: 3, flags: .syn, delta: 0))
        #expect(try await second.value.id == 3)
        try await peer.channel.close()
    }

    @Test("a cancelled read throws CancellationError and loses no data")
    func cancelledRead() async throws {
        let peer = try await RawPeer.make(role: .responder)
        try await peer.inject(.windowUpdate(streamID: 1, flags: .syn, delta: 0))
        var inbound = peer.session.inboundStreams.makeAsyncIterator()
        let stream = try #require(await inbound.next())
        let reader = Task { try await stream.read() }
        reader.cancel()
        await #expect(throws: CancellationError.self) { _ = try await reader.value }
        try await peer.inject(.data(streamID: 1, flags: .fin, payload: ByteBuffer(string: "kept")))
        #expect(try await stream.read() == ByteBuffer(string: "kept"))
        #expect(try await stream.read() == nil)
        try await peer.channel.close()
    }

    @Test("openStream beyond maxStreams throws streamLimit")
    func openStreamLimit() async throws {
        var config = YamuxConfiguration.testing
        config.maxStreams = 2
        let peer = try await RawPeer.make(role: .initiator, configuration: config)
        _ = try await peer.session.openStream()
        _ = try await peer.session.openStream()
        do {
            _ = try await peer.session.openStream()
            Issue.record("third stream opened")
        } catch let error as YamuxError {
            #expect(error.code == .streamLimit)
        }
        try await peer.channel.close()
    }

    @Test("data frames wait while the channel is not writable")
    func writability() async throws {
        let peer = try await RawPeer.make(role: .initiator)
        let stream = try await peer.session.openStream()
        #expect(try await peer.nextFrame().flags == .syn)
        peer.channel.isWritable = false
        try await peer.channel.eventLoop.submit { peer.channel.pipeline.fireChannelWritabilityChanged() }.get()
        let writer = Task { try await stream.write(ByteBuffer(string: "queued")) }
        #expect(await eventually {
            (try? await peer.session.eventLoop.submit { peer.session.handler.value.pendingDataBytesForTests }.get()) == 6
        })
        #expect(try await peer.writtenFrame() == nil)
        peer.channel.isWritable = true
        try await peer.channel.eventLoop.submit { peer.channel.pipeline.fireChannelWritabilityChanged() }.get()
        #expect(try await peer.nextFrame() == .data(streamID: 1, payload: ByteBuffer(string: "queued")))
        try await writer.value
        try await peer.channel.close()
    }
}
