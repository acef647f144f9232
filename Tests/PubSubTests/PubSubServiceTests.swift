import NIOConcurrencyHelpers
import NIOCore
import PointSub
import Testing

@testable import PubSub

/// A host without a pubsub service that speaks floodsub by hand: it writes whatever frames a test
/// wants on its own stream and swallows what the node under test sends it.
struct RawPeer {
    let host: P2PHost
    let stream: P2PStream

    static func with<T: Sendable>(
        connectingTo target: P2PHost, _ body: (RawPeer) async throws -> T
    ) async throws -> T {
        try await withHost(configuration: .defaults {
            $0.transports = [.memory]  // as the test network's hosts
            $0.shutdownGracePeriod = .milliseconds(100)
        }) { host in
            // The node under test opens its own stream to us and must find a listener.
            try host.setStreamHandler(FloodSubRouter.protocolID) { stream in
                while try await stream.read() != nil {}
            }
            _ = try await host.connect(to: target.addresses[0])
            let stream = try await host.newStream(to: target.peerID, protocols: [FloodSubRouter.protocolID])
            return try await body(RawPeer(host: host, stream: stream))
        }
    }

    func send(_ rpc: PubSubRPC) async throws {
        try await stream.writeLengthPrefixed(rpc.encoded())
    }

    func signed(_ text: String, topic: String = "t", seqno: UInt64) throws -> PubSubRPC.Message {
        try MessageSigning.signedMessage(topic: topic, data: Array(text.utf8), seqno: seqno, key: host.identity)
    }
}

@Suite(.timeLimit(.minutes(2)))
struct PubSubServiceTests {
    // MARK: - Bad input from one peer

    @Test func anOversizedRPCClosesOnlyThatPeer() async throws {
        let small = PubSubConfiguration.defaults { $0.maxRPCSize = 1024 }
        try await PubSubTestNetwork.with(nodes: 2, edges: [(0, 1)], configuration: { _ in small }) { net in
            let received = Collector(try net.services[0].subscribe("t"))
            try await net.waitForSubscriptions("t", subscribers: [0])
            try await RawPeer.with(connectingTo: net.hosts[0]) { raw in
                try await net.waitUntil("the raw peer is a pubsub peer") {
                    net.services[0].peers.contains(raw.host.peerID)
                }
                // Only the length prefix: refused on it, before any body arrives.
                var prefix = ByteBuffer()
                _ = prefix.writeVarint(1025)
                try await raw.stream.write(prefix)
                try await net.waitUntil("the raw peer is dropped") {
                    !net.services[0].peers.contains(raw.host.peerID)
                }
                #expect(net.counters[0].badRPCs == 1)
                await #expect(throws: (any Error).self) {
                    while try await raw.stream.read() != nil {}  // reset by the node
                }
            }
            // The other peer is unaffected.
            #expect(net.services[0].peers == [net.peerID(1)])
            try await net.services[1].publish("t", Array("still here".utf8))
            try await net.waitUntil("delivered") { received.texts == ["still here"] }
            // A message filling the limit cannot be published.
            await #expect(throws: PubSubError.self) {
                try await net.services[1].publish("t", [UInt8](repeating: 0, count: 1024))
            }
        }
    }

    @Test func aMalformedRPCClosesOnlyThatPeer() async throws {
        try await PubSubTestNetwork.with(nodes: 2, edges: [(0, 1)]) { net in
            let received = Collector(try net.services[0].subscribe("t"))
            try await net.waitForSubscriptions("t", subscribers: [0])
            try await RawPeer.with(connectingTo: net.hosts[0]) { raw in
                try await raw.send(PubSubRPC(subscriptions: [.init(subscribe: true, topic: "t")]))
                try await net.waitUntil("the raw peer subscribed") {
                    net.services[0].peers(topic: "t").contains(raw.host.peerID)
                }
                // A message field (2) whose body is a truncated field.
                try await raw.stream.writeLengthPrefixed([0x12, 0x03, 0x0A, 0x05, 0x01])
                try await net.waitUntil("the raw peer is dropped, with its subscription") {
                    !net.services[0].peers.contains(raw.host.peerID)
                        && !net.services[0].peers(topic: "t").contains(raw.host.peerID)
                }
                #expect(net.counters[0].badRPCs == 1)
            }
            try await net.services[1].publish("t", Array("ok".utf8))
            try await net.waitUntil("delivered") { received.texts == ["ok"] }
        }
    }

    // MARK: - Signing

    @Test func unsignedForgedAndSelfOriginMessagesAreDroppedNotForwarded() async throws {
        try await PubSubTestNetwork.with(nodes: 2, edges: [(0, 1)]) { net in
            let at0 = Collector(try net.services[0].subscribe("t"))
            let at1 = Collector(try net.services[1].subscribe("t"))
            try await net.waitForSubscriptions("t", subscribers: [0, 1])
            try await RawPeer.with(connectingTo: net.hosts[0]) { raw in
                try await net.waitUntil("the raw peer is a pubsub peer") {
                    net.services[0].peers.contains(raw.host.peerID)
                }
                var unsigned = try raw.signed("unsigned", seqno: 1)
                unsigned.signature = nil
                var tamperedData = try raw.signed("original", seqno: 2)
                tamperedData.data = Array("tampered".utf8)
                var tamperedSeqno = try raw.signed("seqno", seqno: 3)
                tamperedSeqno.seqno = MessageSigning.encode(seqno: 4)
                var tamperedSignature = try raw.signed("signature", seqno: 5)
                tamperedSignature.signature![10] ^= 0x40
                var stolenFrom = try raw.signed("from", seqno: 6)
                stolenFrom.from = net.peerID(1).bytes
                var noSeqno = try raw.signed("noseqno", seqno: 7)
                noSeqno.seqno = nil
                // Signed by node 0's own key but never published by it.
                let selfOrigin = try MessageSigning.signedMessage(
                    topic: "t", data: Array("self".utf8), seqno: 8, key: net.hosts[0].identity)
                let good = try raw.signed("good", seqno: 9)
                try await raw.send(PubSubRPC(messages: [
                    unsigned, tamperedData, tamperedSeqno, tamperedSignature, stolenFrom, noSeqno, selfOrigin, good,
                ]))
                try await raw.send(PubSubRPC(messages: [good]))  // a duplicate
                try await net.waitUntil("the good message went through") {
                    at0.texts == ["good"] && at1.texts == ["good"]
                }
                try await Task.sleep(for: .milliseconds(100))
                let counters = net.counters[0]
                #expect(counters.received == 9)
                #expect(counters.rejected == 6)
                #expect(counters.ignored == 1)  // self-origin
                #expect(counters.duplicates == 1)
                #expect(counters.delivered == 1)
                #expect(counters.routed == 1)
                #expect(counters.badRPCs == 0)  // bad messages are dropped, the peer stays
                #expect(net.services[0].peers.contains(raw.host.peerID))
                #expect(at0.messages.first?.from == raw.host.peerID)
                #expect(at0.messages.first?.receivedFrom == raw.host.peerID)
                #expect(at1.messages.first?.from == raw.host.peerID)
                #expect(at1.messages.first?.receivedFrom == net.peerID(0))
                #expect(at1.messages.first?.seqno == 9)
                #expect(net.counters[1].received == 1)  // only the good message was forwarded
            }
        }
    }

    @Test func ownMessagesComingBackAreNeverRedelivered() async throws {
        let own = PubSubConfiguration.defaults { $0.deliverOwnMessages = true }
        try await PubSubTestNetwork.with(nodes: 2, edges: [(0, 1)], configuration: { _ in own }) { net in
            let at0 = Collector(try net.services[0].subscribe("t"))
            try await net.waitForSubscriptions("t", subscribers: [0])
            let id = try await net.services[0].publish("t", Array("mine".utf8))
            try await net.waitUntil("delivered locally") { at0.texts == ["mine"] }
            #expect(at0.messages.first?.receivedFrom == net.peerID(0))
            #expect(at0.messages.first?.id == id)
            // Node 1 sends it back by hand, as a misbehaving relay would.
            let copy = try MessageSigning.signedMessage(
                topic: "t", data: Array("mine".utf8), seqno: try #require(at0.messages[0].seqno), key: net.hosts[0].identity)
            #expect(PubSubConfiguration.fromAndSeqno(copy) == id)  // the default ID: from ‖ seqno
            try await RawPeer.with(connectingTo: net.hosts[0]) { raw in
                try await raw.send(PubSubRPC(messages: [copy]))
                try await net.waitUntil("it arrived") { net.counters[0].received == 1 }
            }
            #expect(net.counters[0].duplicates == 1)
            #expect(net.counters[0].delivered == 1)
            #expect(net.counters[0].routed == 1)
            #expect(at0.texts == ["mine"])
        }
    }

    // MARK: - Message IDs

    @Test func theMessageIDFunctionDecidesWhatIsADuplicate() async throws {
        // Node 1 takes the data as the ID: the same text twice is one message to it.
        let byContent = PubSubConfiguration.defaults { $0.messageID = { $0.data } }
        try await PubSubTestNetwork.with(
            nodes: 3, edges: [(0, 1), (0, 2)], configuration: { $0 == 1 ? byContent : .defaults }
        ) { net in
            let at1 = Collector(try net.services[1].subscribe("t"))
            let at2 = Collector(try net.services[2].subscribe("t"))
            try await net.waitForSubscriptions("t", subscribers: [1, 2])
            try await net.services[0].publish("t", Array("same".utf8))
            try await net.services[0].publish("t", Array("same".utf8))
            try await net.waitUntil("node 2 got both") { at2.texts == ["same", "same"] }
            // Delivered when the first copy was handled; the subscriber's task takes it a moment later.
            try await net.waitUntil("node 1 saw both") { net.counters[1].received == 2 && !at1.texts.isEmpty }
            #expect(at1.texts == ["same"])
            #expect(net.counters[1].delivered == 1)
            #expect(at1.messages.first?.id == Array("same".utf8))
            #expect(net.counters[1].duplicates == 1)
            #expect(at2.messages[0].id != at2.messages[1].id)
            #expect(at2.messages[1].seqno == at2.messages[0].seqno.map { $0 &+ 1 })
        }
    }

    // MARK: - Validators

    @Test func validatorsAcceptRejectIgnoreAndTimeOut() async throws {
        // 0 → 1 → 2: node 1 validates; what it does not accept never reaches node 2.
        try await PubSubTestNetwork.with(nodes: 3, edges: PubSubTestNetwork.line(3)) { net in
            let judged = NIOLockedValueBox<[String]>([])
            net.services[1].setValidator("t", timeout: .milliseconds(200), { message in
                judged.withLockedValue { $0.append(message.text) }
                switch message.text {
                case "spam": return .reject
                case "boring": return .ignore
                case "slow":
                    try? await Task.sleep(for: .seconds(30))
                    return .accept
                default: return .accept
                }
            })
            let at1 = Collector(try net.services[1].subscribe("t"))
            let at2 = Collector(try net.services[2].subscribe("t"))
            try await net.waitForSubscriptions("t", subscribers: [1, 2])
            for text in ["spam", "boring", "slow", "fine"] {
                try await net.services[0].publish("t", Array(text.utf8))
            }
            try await net.waitUntil("fine went through") { at1.texts == ["fine"] && at2.texts == ["fine"] }
            try await Task.sleep(for: .milliseconds(100))
            #expect(judged.withLockedValue { $0 } == ["spam", "boring", "slow", "fine"])
            let counters = net.counters[1]
            #expect(counters.rejected == 1)
            #expect(counters.ignored == 2)  // "boring" and the late "slow"
            #expect(counters.delivered == 1)
            #expect(counters.routed == 1)
            #expect(net.counters[2].received == 1)
            #expect(at2.texts == ["fine"])

            // Our own messages are validated too.
            await #expect(throws: PubSubError.publishRejected(topic: "t", .reject)) {
                try await net.services[1].publish("t", Array("spam".utf8))
            }
            net.services[1].removeValidator("t")
            try await net.services[1].publish("t", Array("spam".utf8))
            try await net.waitUntil("without the validator it goes out") { at2.texts == ["fine", "spam"] }
        }
    }

    @Test func aValidatorPausesOnlyItsPeersStreamAndReadingGoesOnAfterTheVerdict() async throws {
        // Topic "v" has a slow validator, "t" none. One write from a raw peer carries two RPCs:
        // the first RPC's validated message holds up the rest of that RPC and the second RPC;
        // afterwards the stream is read as before, until a bad frame still ends the peer.
        try await PubSubTestNetwork.with(nodes: 1, edges: []) { net in
            let service = net.services[0]
            // What the service received and delivered while each validation ran: nothing, when
            // reading the stream waits for the verdict. (Counted in the service, not by the
            // subscribers: the two topics' subscriber tasks may record in either order.)
            let during = NIOLockedValueBox<[String]>([])
            service.setValidator("v", timeout: .seconds(5), { [service] message in
                let before = service.counters
                try? await Task.sleep(for: .milliseconds(50))
                let after = service.counters
                during.withLockedValue {
                    $0.append("\(message.text): +\(after.received - before.received) received, +\(after.delivered - before.delivered) delivered")
                }
                return message.text.hasPrefix("bad") ? .reject : .accept
            })
            let order = NIOLockedValueBox<[String: [String]]>([:])
            let tasks = try ["v", "t"].map { topic in
                let subscription = try service.subscribe(topic)
                return Task { for await message in subscription { order.withLockedValue { $0[topic, default: []].append(message.text) } } }
            }
            defer { for task in tasks { task.cancel() } }
            try await RawPeer.with(connectingTo: net.hosts[0]) { raw in
                try await net.waitUntil("the raw peer is a pubsub peer") { service.peers.contains(raw.host.peerID) }
                var both = ByteBuffer()
                for rpc in [
                    PubSubRPC(messages: [try raw.signed("v1", topic: "v", seqno: 1), try raw.signed("t1", seqno: 2)]),
                    PubSubRPC(messages: [try raw.signed("t2", seqno: 3)]),
                ] {
                    let bytes = rpc.encoded()
                    _ = both.writeVarint(UInt64(bytes.count))
                    both.writeBytes(bytes)
                }
                try await raw.stream.write(both)
                try await net.waitUntil("the first write is handled") {
                    order.withLockedValue { $0 } == ["v": ["v1"], "t": ["t1", "t2"]]
                }
                // Later writes: the stream is read again (on the loop), validated or not.
                try await raw.send(PubSubRPC(messages: [try raw.signed("bad", topic: "v", seqno: 4)]))
                try await raw.send(PubSubRPC(messages: [try raw.signed("t3", seqno: 5)]))
                try await raw.send(PubSubRPC(messages: [try raw.signed("v2", topic: "v", seqno: 6)]))
                try await raw.send(PubSubRPC(messages: [try raw.signed("t4", seqno: 7)]))
                do {
                    try await net.waitUntil("the later writes are handled") {
                        order.withLockedValue { $0 } == ["v": ["v1", "v2"], "t": ["t1", "t2", "t3", "t4"]]
                    }
                } catch {
                    Issue.record("delivered: \(order.withLockedValue { $0 }), counters: \(net.counters[0])")
                    throw error
                }
                #expect(during.withLockedValue { $0 } == ["v1", "bad", "v2"].map { "\($0): +0 received, +0 delivered" })
                #expect(net.counters[0].rejected == 1)
                // Only a length prefix over the limit: the peer is dropped, the node stays.
                var prefix = ByteBuffer()
                _ = prefix.writeVarint(UInt64(service.configuration.maxRPCSize + 1))
                try await raw.stream.write(prefix)
                try await net.waitUntil("the raw peer is dropped") { !service.peers.contains(raw.host.peerID) }
                #expect(net.counters[0].badRPCs == 1)
            }
        }
    }

    // MARK: - Flow control and lifecycle

    @Test func aSlowSubscriberLosesMessagesButNothingElseDoes() async throws {
        let tiny = PubSubConfiguration.defaults { $0.subscriptionBufferSize = 2 }
        try await PubSubTestNetwork.with(nodes: 3, edges: PubSubTestNetwork.line(3), configuration: { $0 == 1 ? tiny : .defaults }) { net in
            let slow = try net.services[1].subscribe("t")  // never read until the end
            let at2 = Collector(try net.services[2].subscribe("t"))
            try await net.waitForSubscriptions("t", subscribers: [1, 2])
            for n in 0..<5 { try await net.services[0].publish("t", Array("\(n)".utf8)) }
            try await net.waitUntil("node 2 got everything through node 1") { at2.texts.count == 5 }
            #expect(net.counters[1].subscriberOverflows == 3)
            #expect(net.counters[1].delivered == 5)
            var iterator = slow.makeAsyncIterator()
            #expect(await iterator.next()?.text == "0")  // the oldest are kept
            #expect(await iterator.next()?.text == "1")
            slow.cancel()
            #expect(await iterator.next() == nil)
        }
    }

    @Test func messagesQueuedBeforeStopStillArrive() async throws {
        try await PubSubTestNetwork.with(nodes: 2, edges: [(0, 1)]) { net in
            let at1 = Collector(try net.services[1].subscribe("t"))
            try await net.waitForSubscriptions("t", subscribers: [1])
            for n in 0..<50 { try await net.services[0].publish("t", Array("\(n)".utf8)) }
            // Queued, maybe not written yet: stop drains the queue and closes the stream cleanly,
            // and node 1 reads its end even though its own stream to node 0 is reset meanwhile.
            await net.services[0].stop()
            try await net.waitUntil("all 50 arrived") { at1.messages.count == 50 }
            #expect(at1.texts == (0..<50).map { "\($0)" })
            #expect(net.counters[0].forwarded == 50)
            try await net.waitUntil("node 1 dropped node 0") { net.services[1].peers.isEmpty }
        }
    }

    @Test func lifecycle() async throws {
        try await withHost(configuration: .defaults { $0.listenAddresses = [Multiaddr("/ip4/127.0.0.1/tcp/0")] }) { host in
            #expect(throws: PubSubError.self) {
                try PubSubService(host: host, router: FloodSubRouter(), configuration: .defaults { $0.maxRPCSize = 0 })
            }
            let service = try PubSubService(host: host, router: FloodSubRouter())
            let early = try service.subscribe("early")  // allowed before start
            await #expect(throws: PubSubError.notRunning) { try await service.publish("t", [1]) }
            try service.start()
            try service.start()  // idempotent
            #expect(host.supportedProtocols.contains(FloodSubRouter.protocolID))
            #expect(throws: (any Error).self) { try PubSubService(host: host, router: FloodSubRouter()).start() }
            try await service.publish("t", [1])  // nobody listens: fine
            #expect(service.counters.published == 1 && service.counters.forwarded == 0)
            await service.stop()
            await service.stop()
            #expect(!host.supportedProtocols.contains(FloodSubRouter.protocolID))
            var iterator = early.makeAsyncIterator()
            #expect(await iterator.next() == nil)  // stop ends subscriptions
            #expect(throws: PubSubError.notRunning) { try service.subscribe("late") }
            #expect(throws: PubSubError.notRunning) { try service.start() }
            await #expect(throws: PubSubError.notRunning) { try await service.publish("t", [1]) }
            // The scoped form.
            let topics = try await withPubSub(host: host, router: FloodSubRouter()) { pubsub in
                let subscription = try pubsub.subscribe("a")
                return withExtendedLifetime(subscription) { pubsub.topics }
            }
            #expect(topics == ["a"])
        }
    }
}
