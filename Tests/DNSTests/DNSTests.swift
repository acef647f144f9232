import DNS
import Multiformats
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import PointSub
import Testing

/// A DNS server of our own on loopback UDP: answers TXT questions from `records` (name → TXT
/// strings), or with raw bytes from `raw` (name → a whole answer, for malformed ones).
final class TestDNSServer: Sendable {
    let channel: any Channel
    /// Questions received.
    let queries: NIOLockedValueBox<Int>

    var address: SocketAddress { channel.localAddress! }

    private init(channel: any Channel, queries: NIOLockedValueBox<Int>) {
        self.channel = channel
        self.queries = queries
    }

    static func start(
        records: [String: [String]], raw: [String: @Sendable (UInt16) -> [UInt8]] = [:]
    ) async throws -> TestDNSServer {
        let counter = NIOLockedValueBox(0)
        let channel = try await DatagramBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelOption(ChannelOptions.recvAllocator, value: FixedSizeRecvByteBufferAllocator(capacity: 65_536))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(Responder(records: records, raw: raw, counter: counter))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        return TestDNSServer(channel: channel, queries: counter)
    }

    func stop() { channel.close(promise: nil) }

    private final class Responder: ChannelInboundHandler, Sendable {
        typealias InboundIn = AddressedEnvelope<ByteBuffer>
        typealias OutboundOut = AddressedEnvelope<ByteBuffer>
        let records: [String: [String]]
        let raw: [String: @Sendable (UInt16) -> [UInt8]]
        let counter: NIOLockedValueBox<Int>

        init(records: [String: [String]], raw: [String: @Sendable (UInt16) -> [UInt8]], counter: NIOLockedValueBox<Int>) {
            self.records = records
            self.raw = raw
            self.counter = counter
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let envelope = unwrapInboundIn(data)
            counter.withLockedValue { $0 += 1 }
            guard let query = try? DNSMessage(decoding: Array(envelope.data.readableBytesView)),
                let question = query.questions.first
            else { return }
            let bytes: [UInt8]
            if let make = raw[question.name] {
                bytes = make(query.id)
            } else {
                let answers = (records[question.name] ?? []).map {
                    DNSMessage.Record(
                        name: question.name, type: DNSMessage.RecordType.txt.rawValue, recordClass: 1, ttl: 60,
                        data: (try? DNSMessage.txtData([$0])) ?? [])
                }
                let rcode: UInt16 = records[question.name] == nil ? 3 : 0
                let answer = DNSMessage(id: query.id, flags: 0x8180 | rcode, questions: query.questions, answers: answers)
                bytes = (try? answer.encoded()) ?? []
            }
            let reply = AddressedEnvelope(remoteAddress: envelope.remoteAddress, data: ByteBuffer(bytes: bytes))
            context.writeAndFlush(wrapOutboundOut(reply), promise: nil)
        }
    }
}

@Suite struct DNSMessageTests {
    @Test func queryBytesAreRFC1035() throws {
        let bytes = try DNSMessage.query(id: 0x1234, name: "_dnsaddr.a.io", type: .txt).encoded()
        #expect(bytes == [
            0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0,
            8] + Array("_dnsaddr".utf8) + [1, UInt8(ascii: "a"), 2, UInt8(ascii: "i"), UInt8(ascii: "o"), 0, 0, 16, 0, 1])
    }

    @Test func compressedNamesAreFollowedAndLoopsRefused() throws {
        // Header: 1 question, 1 answer. The answer's name is a pointer to the question's (offset 12).
        var bytes: [UInt8] = [0, 1, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0]
        bytes += [1, UInt8(ascii: "x"), 2, UInt8(ascii: "i"), UInt8(ascii: "o"), 0, 0, 16, 0, 1]
        bytes += [0xC0, 12, 0, 16, 0, 1, 0, 0, 0, 60, 0, 4, 3] + Array("abc".utf8)
        let message = try DNSMessage(decoding: bytes)
        #expect(message.answers.first?.name == "x.io")
        #expect(message.answers.first?.txtStrings == ["abc"])
        // A pointer to itself.
        var loop: [UInt8] = [0, 1, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0]
        loop += [0xC0, 12, 0, 16, 0, 1]
        #expect(throws: DNSError.self) { try DNSMessage(decoding: loop) }
        // Truncated, and too many records.
        #expect(throws: DNSError.self) { try DNSMessage(decoding: Array(bytes.prefix(20))) }
        #expect(throws: DNSError.self) { try DNSMessage(decoding: [0, 1, 0x81, 0x80, 0xFF, 0xFF, 0, 0, 0, 0, 0, 0]) }
    }
}

@Suite(.serialized, .timeLimit(.minutes(1)))
struct DNSAddrTests {
    let peerA = PeerID(publicKey: PrivateKey.ed25519(seed: 1).publicKey)
    let peerB = PeerID(publicKey: PrivateKey.ed25519(seed: 2).publicKey)

    @Test func resolvesRecursivelyAndFiltersByPeer() async throws {
        let server = try await TestDNSServer.start(records: [
            "_dnsaddr.bootstrap.test": [
                "dnsaddr=/dnsaddr/sjc.bootstrap.test/p2p/\(peerA)",
                "dnsaddr=/ip4/10.0.0.2/tcp/4001/p2p/\(peerB)",
                "dnsaddr=/unknownproto/1",
            ],
            "_dnsaddr.sjc.bootstrap.test": [
                "dnsaddr=/ip4/10.0.0.1/tcp/4001/p2p/\(peerA)", "dnsaddr=/ip6/::1/tcp/4001/p2p/\(peerA)",
            ],
        ])
        defer { server.stop() }
        let resolver = DNSAddrResolver(client: DNSClient(server: server.address, timeout: .seconds(2)))
        let all = try await resolver.resolve(Multiaddr("/dnsaddr/bootstrap.test"))
        #expect(Set(all.map(\.description)) == [
            "/ip4/10.0.0.1/tcp/4001/p2p/\(peerA)", "/ip6/::1/tcp/4001/p2p/\(peerA)", "/ip4/10.0.0.2/tcp/4001/p2p/\(peerB)",
        ])
        let onlyB = try await resolver.resolve(Multiaddr("/dnsaddr/bootstrap.test").appending(peerID: peerB))
        #expect(onlyB.map(\.description) == ["/ip4/10.0.0.2/tcp/4001/p2p/\(peerB)"])
    }

    @Test func loopsAndFloodsAreBounded() async throws {
        var flood: [String] = []
        for i in 0..<200 { flood.append("dnsaddr=/ip4/10.1.\(i / 250).\(i % 250)/tcp/1") }
        let server = try await TestDNSServer.start(records: [
            "_dnsaddr.loop.test": ["dnsaddr=/dnsaddr/loop.test"],
            "_dnsaddr.flood.test": flood,
        ])
        defer { server.stop() }
        let resolver = DNSAddrResolver(client: DNSClient(server: server.address, timeout: .seconds(2)))
        await #expect(throws: DNSError.self) { _ = try await resolver.resolve(Multiaddr("/dnsaddr/loop.test")) }
        // Depth 0…3 asked, the fifth level refused before its question.
        #expect(server.queries.withLockedValue { $0 } == resolver.maxDepth)
        let many = try await resolver.resolve(Multiaddr("/dnsaddr/flood.test"))
        #expect(many.count == resolver.maxAddresses)
    }

    @Test func malformedAnswersAndSilenceAreTypedErrors() async throws {
        let server = try await TestDNSServer.start(
            records: [:],
            raw: [
                "_dnsaddr.bad.test": { id in [UInt8(id >> 8), UInt8(id & 0xFF), 0x81, 0x80, 0, 0, 0, 5] },
                "_dnsaddr.refused.test": { id in [UInt8(id >> 8), UInt8(id & 0xFF), 0x81, 0x85, 0, 0, 0, 0, 0, 0, 0, 0] },
                "_dnsaddr.silent.test": { _ in [] },
            ])
        defer { server.stop() }
        let client = DNSClient(server: server.address, timeout: .milliseconds(300))
        let resolver = DNSAddrResolver(client: client)
        await #expect(throws: DNSError.self) { _ = try await resolver.resolve(Multiaddr("/dnsaddr/bad.test")) }
        await #expect(throws: DNSError.self) { _ = try await resolver.resolve(Multiaddr("/dnsaddr/refused.test")) }
        await #expect(throws: DNSError.self) { _ = try await resolver.resolve(Multiaddr("/dnsaddr/silent.test")) }
        // No such name: an empty result, not an error.
        #expect(try await resolver.resolve(Multiaddr("/dnsaddr/nothing.test")).isEmpty)
    }

    /// A host dials a peer known only by a /dnsaddr address.
    @Test func aHostDialsThroughDNSAddr() async throws {
        try await withHost(identity: .ed25519(seed: 41), configuration: .defaults { $0.listenAddresses = [Multiaddr("/ip4/127.0.0.1/tcp/0")] }) { server in
            let dns = try await TestDNSServer.start(records: [
                "_dnsaddr.node.test": server.addresses.map { "dnsaddr=\($0)" }
            ])
            defer { dns.stop() }
            var configuration = P2PHost.Configuration.defaults
            configuration.dnsaddrResolver = DNSAddrResolver(client: DNSClient(server: dns.address, timeout: .seconds(2)))
            try await withHost(identity: .ed25519(seed: 42), configuration: configuration) { client in
                let connection = try await client.connect(to: Multiaddr("/dnsaddr/node.test").appending(peerID: server.peerID))
                #expect(connection.remotePeer == server.peerID)
                let anonymous = try await client.connect(to: Multiaddr("/dnsaddr/node.test"))
                #expect(anonymous.remotePeer == server.peerID)
            }
        }
    }
}
