import Multistream
import NIOCore
import NIOEmbedded
import Testing

private func frame(_ messages: String...) -> [UInt8] {
    var out: [UInt8] = []
    for m in messages { MultistreamNegotiator.encode(m, into: &out) }
    return out
}

/// Runs two negotiators against each other, delivering bytes `chunk` at a time.
private func converse(
    dialer: [String], listener: [String], chunk: Int
) throws -> (dialer: String?, listener: String?) {
    var d = MultistreamNegotiator(role: .dialer(proposals: dialer))
    var l = MultistreamNegotiator(role: .listener(protocols: listener))
    var toListener = d.start()
    var toDialer = l.start()
    var rounds = 0
    while (d.negotiatedProtocol == nil || l.negotiatedProtocol == nil) && rounds < 10_000 {
        rounds += 1
        if !toListener.isEmpty {
            let piece = Array(toListener.prefix(chunk))
            toListener.removeFirst(piece.count)
            toDialer += try l.receive(ByteBuffer(bytes: piece)).send
        }
        if !toDialer.isEmpty {
            let piece = Array(toDialer.prefix(chunk))
            toDialer.removeFirst(piece.count)
            toListener += try d.receive(ByteBuffer(bytes: piece)).send
        }
        if toListener.isEmpty && toDialer.isEmpty { break }
    }
    return (d.negotiatedProtocol, l.negotiatedProtocol)
}

@Suite struct MultistreamNegotiatorTests {
    @Test func encodesMessagesWithLengthIncludingNewline() {
        #expect(frame("/noise") == [7] + Array("/noise\n".utf8))
        #expect(frame(MultistreamNegotiator.header).first == 19)
    }

    @Test(arguments: [1, 2, 3, 7, 1000])
    func negotiatesFirstCommonProtocol(chunk: Int) throws {
        let result = try converse(dialer: ["/tls/1.0.0", "/noise"], listener: ["/noise"], chunk: chunk)
        #expect(result.dialer == "/noise")
        #expect(result.listener == "/noise")
    }

    @Test func dialerPipelinesHeaderAndProposal() {
        var d = MultistreamNegotiator(role: .dialer(proposals: ["/yamux/1.0.0"]))
        #expect(d.start() == frame(MultistreamNegotiator.header, "/yamux/1.0.0"))
    }

    @Test func listenerAcceptsPipelinedHeaderAndProposalInOneRead() throws {
        var l = MultistreamNegotiator(role: .listener(protocols: ["/echo/1.0.0"]))
        _ = l.start()
        let step = try l.receive(ByteBuffer(bytes: frame(MultistreamNegotiator.header, "/echo/1.0.0") + [1, 2, 3]))
        #expect(step.negotiated == "/echo/1.0.0")
        // Header and acceptance leave in one write.
        #expect(step.send == frame(MultistreamNegotiator.header, "/echo/1.0.0"))
        #expect(Array(buffer: l.takeLeftover()) == [1, 2, 3])
    }

    @Test func dialerKeepsBytesAfterAcceptanceAsLeftover() throws {
        var d = MultistreamNegotiator(role: .dialer(proposals: ["/p"]))
        _ = d.start()
        let step = try d.receive(ByteBuffer(bytes: frame(MultistreamNegotiator.header, "/p") + Array("hello".utf8)))
        #expect(step.negotiated == "/p")
        #expect(String(buffer: d.takeLeftover()) == "hello")
    }

    @Test func dialerFailsWhenNothingIsSupported() throws {
        #expect(throws: MultistreamError.self) {
            _ = try converse(dialer: ["/a", "/b"], listener: ["/c"], chunk: 100)
        }
        var d = MultistreamNegotiator(role: .dialer(proposals: ["/a"]))
        _ = d.start()
        do {
            _ = try d.receive(ByteBuffer(bytes: frame(MultistreamNegotiator.header, "na")))
            Issue.record("expected failure")
        } catch {
            #expect(error.code == .noProtocolInCommon)
        }
    }

    @Test func rejectsWrongHeader() {
        var l = MultistreamNegotiator(role: .listener(protocols: ["/p"]))
        _ = l.start()
        #expect { try l.receive(ByteBuffer(bytes: frame("/multistream/2.0.0"))) } throws: {
            ($0 as? MultistreamError)?.code == .unsupportedVersion
        }
    }

    @Test func rejectsOverlongMessageBeforeBufferingIt() {
        var l = MultistreamNegotiator(role: .listener(protocols: ["/p"]))
        _ = l.start()
        // Length 2000 announced, body not sent: must fail on the prefix alone.
        #expect { try l.receive(ByteBuffer(bytes: [0xD0, 0x0F])) } throws: {
            ($0 as? MultistreamError)?.code == .messageTooLong
        }
        var l2 = MultistreamNegotiator(role: .listener(protocols: ["/p"]))
        _ = l2.start()
        // A three-byte prefix can only mean a huge length.
        #expect { try l2.receive(ByteBuffer(bytes: [0x80, 0x80])) } throws: {
            ($0 as? MultistreamError)?.code == .messageTooLong
        }
    }

    @Test func rejectsNonMinimalLengthPrefix() {
        var l = MultistreamNegotiator(role: .listener(protocols: ["/p"]))
        _ = l.start()
        #expect { try l.receive(ByteBuffer(bytes: [0x83, 0x00])) } throws: {
            ($0 as? MultistreamError)?.code == .invalidLength
        }
    }

    @Test(arguments: [
        [UInt8](arrayLiteral: 0),  // empty message
        [3] + Array("/p!".utf8),  // no newline
        [3, 0xFF, 0xFE, 0x0A],  // not UTF-8
    ])
    func rejectsMalformedMessages(bytes: [UInt8]) {
        var l = MultistreamNegotiator(role: .listener(protocols: ["/p"]))
        _ = l.start()
        #expect { try l.receive(ByteBuffer(bytes: bytes)) } throws: {
            ($0 as? MultistreamError)?.code == .malformedMessage
        }
    }

    @Test func listenerAnswersNaAndLimitsAttempts() throws {
        var l = MultistreamNegotiator(role: .listener(protocols: ["/p"]))
        #expect(l.start().isEmpty, "the listener speaks only after the dialer")
        let first = try l.receive(ByteBuffer(bytes: frame(MultistreamNegotiator.header, "ls")))
        #expect(first.send == frame(MultistreamNegotiator.header, "na"))
        var caught: MultistreamError?
        for i in 0..<MultistreamNegotiator.maxListenerAttempts {
            do { _ = try l.receive(ByteBuffer(bytes: frame("/nope/\(i)"))) } catch {
                caught = error
                break
            }
        }
        #expect(caught?.code == .tooManyAttempts)
    }

    @Test func dialerRejectsUnexpectedAnswer() {
        var d = MultistreamNegotiator(role: .dialer(proposals: ["/a"]))
        _ = d.start()
        #expect { try d.receive(ByteBuffer(bytes: frame(MultistreamNegotiator.header, "/b"))) } throws: {
            ($0 as? MultistreamError)?.code == .unexpectedResponse
        }
    }
}

@Suite struct MultistreamHandlerTests {
    @Test func handlersNegotiateOverEmbeddedChannelsAndForwardLeftover() throws {
        let loop = EmbeddedEventLoop()
        let dialerPromise = loop.makePromise(of: String.self)
        let listenerPromise = loop.makePromise(of: String.self)
        let dialerHandler = MultistreamNegotiationHandler(role: .dialer(proposals: ["/x", "/noise"]), promise: dialerPromise)
        let listenerHandler = MultistreamNegotiationHandler(role: .listener(protocols: ["/noise"]), promise: listenerPromise)
        let dialer = EmbeddedChannel(handler: dialerHandler, loop: loop)
        let listener = EmbeddedChannel(handler: listenerHandler, loop: loop)
        try dialer.connect(to: .init(ipAddress: "127.0.0.1", port: 1)).wait()
        try listener.connect(to: .init(ipAddress: "127.0.0.1", port: 1)).wait()

        func shuttle() throws {
            for _ in 0..<20 {
                var moved = false
                while let b = try dialer.readOutbound(as: ByteBuffer.self) { try listener.writeInbound(b); moved = true }
                while let b = try listener.readOutbound(as: ByteBuffer.self) { try dialer.writeInbound(b); moved = true }
                if !moved { return }
            }
        }
        try shuttle()
        #expect(try dialerPromise.futureResult.wait() == "/noise")
        #expect(try listenerPromise.futureResult.wait() == "/noise")

        // Bytes that arrive after negotiation are handed on when the handler is removed.
        try listener.writeInbound(ByteBuffer(string: "after"))
        #expect(try listener.readInbound(as: ByteBuffer.self) == nil)
        try listener.pipeline.syncOperations.removeHandler(listenerHandler).wait()
        #expect(try listener.readInbound(as: ByteBuffer.self) == ByteBuffer(string: "after"))
        _ = try dialer.finish()
        _ = try listener.finish()
    }

    @Test func malformedInputFailsPromiseAndClosesChannel() throws {
        let loop = EmbeddedEventLoop()
        let promise = loop.makePromise(of: String.self)
        let channel = EmbeddedChannel(handler: MultistreamNegotiationHandler(role: .listener(protocols: ["/p"]), promise: promise), loop: loop)
        try channel.connect(to: .init(ipAddress: "127.0.0.1", port: 1)).wait()
        _ = try? channel.writeInbound(ByteBuffer(bytes: [0xFF, 0xFF, 0xFF]))
        #expect(throws: MultistreamError.self) { try promise.futureResult.wait() }
        #expect(!channel.isActive)
    }

    @Test func asyncNegotiationOverPipes() async throws {
        // Two async negotiators wired back to back through AsyncStreams.
        let (aToB, aToBc) = AsyncStream<ByteBuffer>.makeStream()
        let (bToA, bToAc) = AsyncStream<ByteBuffer>.makeStream()
        async let dialer = MultistreamNegotiator.negotiate(
            role: .dialer(proposals: ["/a", "/b"]),
            write: { aToBc.yield($0) },
            read: { var it = bToA.makeAsyncIterator(); return await it.next() })
        async let listener = MultistreamNegotiator.negotiate(
            role: .listener(protocols: ["/b"]),
            write: { bToAc.yield($0) },
            read: { var it = aToB.makeAsyncIterator(); return await it.next() })
        let (d, l) = try await (dialer, listener)
        #expect(d.protocol == "/b")
        #expect(l.protocol == "/b")
    }
}
