import Foundation
import NIOConcurrencyHelpers
import NIOCore
import PointSub
import PubSub
import TestSupport
import Testing

// StrictNoSign (spec `pubsub/README.md`, "Signature Policy Options") against the referees, over
// TCP on 127.0.0.1. What each referee can do:
//
// * py-libp2p 0.8.1 has no StrictNoSign: `strict_signing=False` neither signs nor checks, but
//   still writes `from` and `seqno`. `pubsub_peer.py --signing none --no-author` publishes
//   author-less messages through py's own push path, `--msg-id sha256` makes py's seen cache use
//   our content ID. py's floodsub is used: py's gossipsub forwards only the first author-less
//   message (its "equivocation" check keys on the empty from ‖ seqno; pubsub_peer.py quirks).
// * go p2pd (go-libp2p-pubsub 0.10.0): `-pubsubSign=false` is go's `WithMessageSigning(false)`,
//   which keeps verification strict (a signature is refused) but still writes `from` and
//   `seqno` (only `WithNoAuthor`, which p2pd has no flag for, drops them); and its message ID is
//   go's default from ‖ seqno — the empty string for every author-less message, so go delivers
//   the first of ours and drops later ones as duplicates for its 2-minute seen TTL. So: ours
//   reach go (one message), go's carry author fields and are rejected here, as a StrictNoSign
//   go node with `WithNoAuthor` rejects them too.
//
// Also peer exchange towards go: the signed peer record in our PRUNE is one go verifies and dials.

/// A p2pd PUBSUB SUBSCRIBE feed that keeps author-less messages (the shared
/// `DaemonSubscription` requires a `from`): the `PSMessage` fields as they came.
final class NoSignDaemonFeed: Sendable {
    /// One `PSMessage` of the feed.
    struct Message: Sendable {
        var from: [UInt8]?
        var data: [UInt8] = []
        var seqno: [UInt8]?
        var signature: [UInt8]?
        var text: String { String(decoding: data, as: UTF8.self) }
    }

    private let task: Task<Void, Never>
    private let received: NIOLockedValueBox<[Message]>

    private init(task: Task<Void, Never>, received: NIOLockedValueBox<[Message]>) {
        self.task = task
        self.received = received
    }

    /// Subscribes `daemon` to `topic` on a control connection of its own.
    static func start(_ daemon: P2PDaemon, topic: String) async throws -> NoSignDaemonFeed {
        let received = NIOLockedValueBox<[Message]>([])
        let subscribed = AsyncStream<Result<Void, any Error>>.makeStream()
        let task = Task {
            do {
                try await DaemonSocket.with(path: daemon.controlPath) { socket in
                    _ = try await socket.request(DaemonRequest.pubsub(3, topic: topic))
                    subscribed.continuation.yield(.success(()))
                    while !Task.isCancelled, let bytes = try await socket.readMessage() {
                        var reader = ProtobufReader(bytes)
                        var message = Message()
                        while let (field, value) = try reader.next() {
                            switch field {
                            case 1: message.from = value.bytesValue
                            case 2: message.data = value.bytesValue ?? []
                            case 3: message.seqno = value.bytesValue
                            case 5: message.signature = value.bytesValue
                            default: break
                            }
                        }
                        received.withLockedValue { $0.append(message) }
                    }
                }
            } catch {
                subscribed.continuation.yield(.failure(error))
            }
            subscribed.continuation.finish()
        }
        for await result in subscribed.stream {
            if case .failure(let error) = result { throw error }
            break
        }
        return NoSignDaemonFeed(task: task, received: received)
    }

    /// The messages so far.
    var messages: [Message] { received.withLockedValue { $0 } }

    /// Ends the subscription.
    func stop() async {
        task.cancel()
        await task.value
    }
}

@Suite(.serialized, .timeLimit(.minutes(3)))
struct PubSubSigningInteropTests {
    static let timeout = PubSubInteropTests.timeout
    static let topic = "nosign"

    /// Our side: gossipsub (it serves /floodsub/1.0.0 to py), `topic` StrictNoSign with the
    /// default content ID (SHA-256 of the data); the service itself signs.
    static let configuration = PubSubConfiguration.defaults {
        $0.topics[Self.topic] = PubSubTopicOptions(signaturePolicy: .strictNoSign)
    }

    func until(_ what: String, _ condition: () async throws -> Bool) async throws {
        let deadline = ContinuousClock.now + Self.timeout
        while try await !condition() {
            guard ContinuousClock.now < deadline else { throw ChildProcess.Failure("timed out waiting for \(what)") }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    /// Starts py with `arguments` (listening; floodsub on `topic`), connects to it and waits until
    /// both sides know the other's subscription; then runs `body`.
    func withPy<T: Sendable>(
        _ arguments: [String], host: P2PHost, pubsub: PubSubService, _ body: (PyPubSubPeer) async throws -> T
    ) async throws -> T {
        let py = try await PyPubSubPeer.start(
            ["listen", "--seed", "72", "--router", "floodsub", "--topic", Self.topic] + arguments)
        do {
            _ = try await host.connect(to: Multiaddr(py.address))
            try await PubSubInteropTests().waitUntilReady(py, pubsub, topic: Self.topic, gossip: false)
            let result = try await body(py)
            _ = await py.stop()
            return result
        } catch {
            _ = await py.stop()
            throw error
        }
    }

    // MARK: - py-libp2p

    /// py publishes author-less messages and we receive each exactly once, without author, with
    /// the SHA-256 of the data as ID; we publish and py delivers each exactly once, unsigned and
    /// without author, under the same ID in its seen cache.
    @Test func strictNoSignWithPyBothWays() async throws {
        try await withHost(identity: .ed25519(seed: 71), configuration: PubSubInteropTests.listening()) { host in
            try await withPubSub(host: host, router: try GossipSubRouter(), configuration: Self.configuration) { pubsub in
                let inbox = PubSubInbox(try pubsub.subscribe(Self.topic))
                try await withPy(["--signing", "none", "--no-author", "--msg-id", "sha256"], host: host, pubsub: pubsub) { py in
                    // py → us.
                    let texts = ["py one", "py two", "py three"]
                    for text in texts {
                        let published = try await py.publish(text)
                        #expect(published.seqno == nil)
                    }
                    for text in texts { try await inbox.message("py's “\(text)”") { $0.text == text } }
                    _ = try await py.publish("py barrier")
                    try await inbox.message("py's barrier") { $0.text == "py barrier" }
                    for text in texts {
                        let copies = inbox.all.filter { $0.text == text }
                        #expect(copies.count == 1, "“\(text)” exactly once")
                        #expect(copies.first?.from == nil)
                        #expect(copies.first?.seqno == nil)
                        #expect(copies.first?.receivedFrom.b58String == py.peerID)
                        #expect(copies.first?.id == PubSubConfiguration.dataSHA256(
                            PubSubRPC.Message(data: Array(text.utf8), topic: Self.topic)))
                    }

                    // us → py.
                    let ours = ["swift one", "swift two", "swift three"]
                    var ids: [MessageID] = []
                    for text in ours { ids.append(try await pubsub.publish(Self.topic, Array(text.utf8))) }
                    let barrier = try await pubsub.publish(Self.topic, Array("swift barrier".utf8))
                    try await py.event("our barrier") { $0.event == "message" && $0.id == barrier.hex }
                    let received = py.events.filter { $0.event == "message" && $0.topic == Self.topic }
                    for (text, id) in zip(ours, ids) {
                        let copies = received.filter { $0.id == id.hex }
                        #expect(copies.count == 1, "py got “\(text)” exactly once")
                        #expect(copies.first?.data == text)
                        #expect(copies.first?.from == nil)
                        #expect(copies.first?.seqno == nil)
                        #expect(copies.first?.signed == false)
                    }
                    let counters = pubsub.counters
                    #expect(counters.rejected == 0)
                    #expect(counters.badRPCs == 0)
                }
            }
        }
    }

    /// py's messages signed as py always signs them (StrictSign, `key` included) arrive on our
    /// StrictNoSign topic: each is rejected (a signature is not allowed), nothing is delivered,
    /// and py stays connected.
    @Test func signedPyMessagesAreRejectedOnAStrictNoSignTopic() async throws {
        try await withHost(identity: .ed25519(seed: 73), configuration: PubSubInteropTests.listening()) { host in
            try await withPubSub(host: host, router: try GossipSubRouter(), configuration: Self.configuration) { pubsub in
                let inbox = PubSubInbox(try pubsub.subscribe(Self.topic))
                // Also a topic of the same service under StrictSign: py's signed messages pass there.
                let signedInbox = PubSubInbox(try pubsub.subscribe("signed"))
                try await withPy([], host: host, pubsub: pubsub) { py in
                    try py.command("subscribe signed")
                    try await until("py's subscription to signed") {
                        pubsub.peers(topic: "signed").contains { $0.b58String == py.peerID }
                    }
                    for text in ["signed one", "signed two"] { _ = try await py.publish(text) }
                    try py.command("publish-to signed signed elsewhere")
                    let elsewhere = try await signedInbox.message("py's signed message on a StrictSign topic") {
                        $0.text == "signed elsewhere"
                    }
                    #expect(elsewhere.from?.b58String == py.peerID)
                    try await until("both rejected") { pubsub.counters.rejected == 2 }
                    #expect(inbox.all.isEmpty)
                    #expect(pubsub.counters.delivered == 1)
                    #expect(pubsub.counters.badRPCs == 0)
                    #expect(pubsub.peers.contains { $0.b58String == py.peerID })
                }
            }
        }
    }

    // MARK: - go p2pd

    /// p2pd with `-pubsubSign=false`: our author-less message reaches go's subscription (no
    /// from, seqno or signature); go's messages carry from and seqno and are rejected here.
    @Test func strictNoSignWithGo() async throws {
        try await withDaemon(seed: 74, ["-pubsub", "-pubsubRouter=gossipsub", "-pubsubSign=false"]) { go in
            // go-libp2p-pubsub ignores messages of topics it has not joined: subscribe go first.
            let feed = try await NoSignDaemonFeed.start(go, topic: Self.topic)
            do {
                try await withHost(identity: .ed25519(seed: 75), configuration: PubSubInteropTests.listening()) { host in
                    try await withPubSub(host: host, router: try GossipSubRouter(), configuration: Self.configuration) { pubsub in
                        let inbox = PubSubInbox(try pubsub.subscribe(Self.topic))
                        _ = try await host.connect(to: go.fullAddress)
                        try await until("go and we seeing each other in \(Self.topic)") {
                            try await go.pubsubPeers(Self.topic).contains(host.peerID)
                                && pubsub.peers(topic: Self.topic).contains(go.peerID)
                        }
                        // us → go: one message (go's ID for every author-less message is "").
                        // Until go has us as a topic peer on its side too, a message may be
                        // lost: published once the feed is up and go lists us (checked above).
                        let id = try await pubsub.publish(Self.topic, Array("swift to go".utf8))
                        #expect(id == PubSubConfiguration.dataSHA256(
                            PubSubRPC.Message(data: Array("swift to go".utf8), topic: Self.topic)))
                        try await until("our message in go's subscription") {
                            feed.messages.contains { $0.text == "swift to go" }
                        }
                        let got = try #require(feed.messages.first { $0.text == "swift to go" })
                        #expect(got.from ?? [] == [])
                        #expect(got.seqno ?? [] == [])
                        #expect(got.signature == nil)

                        // go → us: unsigned but with from and seqno: rejected (unexpected author).
                        let before = pubsub.counters
                        try await go.publish(Self.topic, Array("go to swift".utf8))
                        try await until("go's message rejected") { pubsub.counters.rejected > before.rejected }
                        #expect(inbox.all.isEmpty)
                        #expect(pubsub.counters.badRPCs == 0)
                        #expect(pubsub.peers.contains(go.peerID))
                    }
                }
                await feed.stop()
            } catch {
                await feed.stop()
                throw error
            }
        }
    }

    /// Peer exchange towards go: our node B, in go's mesh and in the mesh of our node C (which go
    /// does not know), leaves the topic; its PRUNE to go offers C with C's signed peer record (as
    /// B got it through identify). go-libp2p-pubsub (scoring off: every score 0, acceptPX 0)
    /// verifies the envelope, stores the addresses and dials C: the record is right on the wire.
    @Test func goConnectsToAPeerOurPruneOffered() async throws {
        let topic = "px"
        try await withDaemon(seed: 78, ["-pubsub", "-pubsubRouter=gossipsub"]) { go in
            let feed = try await NoSignDaemonFeed.start(go, topic: topic)
            do {
                let exchanging = try GossipSubRouter(configuration: .defaults { $0.peerExchange = true })
                try await withHost(identity: .ed25519(seed: 79), configuration: PubSubInteropTests.listening()) { b in
                    try await withPubSub(host: b, router: exchanging) { pb in
                        try await withHost(identity: .ed25519(seed: 80), configuration: PubSubInteropTests.listening()) { c in
                            try await withPubSub(host: c, router: try GossipSubRouter()) { pc in
                                _ = PubSubInbox(try pc.subscribe(topic))  // its task keeps the subscription
                                _ = try await b.connect(to: go.fullAddress)
                                _ = try await b.connect(to: c.addresses[0])
                                try await until("B knowing the signed record of C") { b.peerstore.signedRecord(for: c.peerID) != nil }
                                _ = PubSubInbox(try pb.subscribe(topic))
                                try await until("B meshed with go and C") {
                                    let mesh = pb.withRouter { ($0 as! GossipSubRouter).meshPeers(in: topic) }
                                    return mesh == [go.peerID, c.peerID]
                                }
                                #expect(c.connections(to: go.peerID).isEmpty)
                                pb.unsubscribe(topic)  // PRUNE to go offering C, and to C offering go
                                try await until("go connected to C") { !c.connections(to: go.peerID).isEmpty }
                                try await until("C and go pubsub peers") { pc.peers.contains(go.peerID) }
                            }
                        }
                    }
                }
                await feed.stop()
            } catch {
                await feed.stop()
                throw error
            }
        }
    }

    /// p2pd signing as by default (StrictSign): its signed message on our StrictNoSign topic is
    /// rejected, while on a StrictSign topic of the same service it is delivered.
    @Test func signedGoMessagesAreRejectedOnAStrictNoSignTopic() async throws {
        try await withDaemon(seed: 76, ["-pubsub", "-pubsubRouter=gossipsub"]) { go in
            let feed = try await NoSignDaemonFeed.start(go, topic: Self.topic)
            let signedFeed = try await NoSignDaemonFeed.start(go, topic: "signed")
            do {
                try await withHost(identity: .ed25519(seed: 77), configuration: PubSubInteropTests.listening()) { host in
                    try await withPubSub(host: host, router: try GossipSubRouter(), configuration: Self.configuration) { pubsub in
                        let inbox = PubSubInbox(try pubsub.subscribe(Self.topic))
                        let signedInbox = PubSubInbox(try pubsub.subscribe("signed"))
                        _ = try await host.connect(to: go.fullAddress)
                        try await until("go and we seeing each other in both topics") {
                            let nosign = try await go.pubsubPeers(Self.topic)
                            let signed = try await go.pubsubPeers("signed")
                            return nosign.contains(host.peerID) && signed.contains(host.peerID)
                                && pubsub.peers(topic: Self.topic).contains(go.peerID)
                                && pubsub.peers(topic: "signed").contains(go.peerID)
                        }
                        // go may send before it grafted us: repeat (bounded) until the signed
                        // topic's message arrives; each copy on the StrictNoSign topic is rejected.
                        var attempt = 0
                        try await until("go's signed message delivered on the StrictSign topic") {
                            if signedInbox.all.isEmpty, attempt < 200 {
                                attempt += 1
                                try await go.publish("signed", Array("go signed \(attempt)".utf8))
                                try await go.publish(Self.topic, Array("go on nosign \(attempt)".utf8))
                                try await Task.sleep(for: .milliseconds(100))
                            }
                            return !signedInbox.all.isEmpty
                        }
                        try await until("go's signed messages rejected on the StrictNoSign topic") {
                            pubsub.counters.rejected >= 1
                        }
                        #expect(inbox.all.isEmpty)
                        #expect(signedInbox.all.first?.from == go.peerID)
                        #expect(pubsub.counters.badRPCs == 0)
                    }
                }
                await feed.stop()
                await signedFeed.stop()
            } catch {
                await feed.stop()
                await signedFeed.stop()
                throw error
            }
        }
    }
}
