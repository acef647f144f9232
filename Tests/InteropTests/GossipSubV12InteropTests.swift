import Foundation
import PointSub
import PubSub
import TestSupport
import Testing

// Gossipsub v1.2 (/meshsub/1.2.0, IDONTWANT) with py-libp2p 0.8.1 (Interop/pubsub_peer.py with
// `--protocols /meshsub/1.2.0,…`) and the fallback to v1.1 with go-libp2p-pubsub 0.10.0 (p2pd),
// which predates v1.2. Over TCP on 127.0.0.1; every wait bounded (`PubSubInteropTests.timeout`).
//
// py-libp2p 0.8.1's v1.2, read in libp2p/pubsub/gossipsub.py: py sends IDONTWANT for EVERY
// message it routes (its own included, no size threshold) to all its v1.2 mesh peers, the
// forwarder included, just before forwarding; it skips peers whose IDONTWANT named the message;
// it forgets every IDONTWANT received at each of its heartbeats.

/// Gossipsub v1.2 interop: negotiation and messages both ways with py in both dial directions,
/// IDONTWANT honoured by each side, and v1.1 with go.
@Suite(.serialized, .timeLimit(.minutes(3)))
struct GossipSubV12InteropTests {
    static let topic = "v12"
    static let pyV12 = ["--protocols", "/meshsub/1.2.0,/meshsub/1.1.0,/meshsub/1.0.0"]
    static var timeout: Duration { PubSubInteropTests.timeout }

    /// A text of `size` bytes starting with `label` (IDONTWANT is for messages of 1 KiB or more).
    static func large(_ label: String, size: Int = 2000) -> String {
        label + " " + String(repeating: "x", count: max(0, size - label.utf8.count - 1))
    }

    /// Our started hosts (TCP on 127.0.0.1, identify) with started gossipsub services (v1.2 unless
    /// `v12[i]` is false), stopped when `body` ends.
    static func withNodes<T: Sendable>(
        seeds: [UInt64], v12: [Bool]? = nil, _ body: ([(host: P2PHost, pubsub: PubSubService)]) async throws -> T
    ) async throws -> T {
        var nodes: [(host: P2PHost, pubsub: PubSubService)] = []
        func tearDown() async {
            for node in nodes { await node.pubsub.stop() }
            for node in nodes { await node.host.shutdown(gracePeriod: .milliseconds(200)) }
        }
        do {
            for (index, seed) in seeds.enumerated() {
                var hostConfiguration = PubSubInteropTests.listening()
                hostConfiguration.services = [IdentifyService()]  // as `withHost` adds it
                let host = P2PHost(identity: .ed25519(seed: seed), configuration: hostConfiguration)
                try await host.start()
                let configuration = GossipSubConfiguration.defaults { $0.meshsubV12 = v12?[index] ?? true }
                let pubsub = try PubSubService(host: host, router: try GossipSubRouter(configuration: configuration))
                nodes.append((host, pubsub))
                try pubsub.start()
            }
            let result = try await body(nodes)
            await tearDown()
            return result
        } catch {
            await tearDown()
            throw error
        }
    }

    static func until(_ what: String, timeout: Duration = Self.timeout, _ condition: () async throws -> Bool) async throws {
        let deadline = ContinuousClock.now + timeout
        while try await !condition() {
            guard ContinuousClock.now < deadline else { throw ChildProcess.Failure("timed out waiting for \(what)") }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    static func protocolOf(_ peer: PeerID, at pubsub: PubSubService) -> String? {
        pubsub.withRouter { ($0 as? GossipSubRouter)?.protocolOf(peer) }
    }

    static func meshPeers(_ pubsub: PubSubService, _ topic: String = Self.topic) -> Set<PeerID> {
        pubsub.withRouter { ($0 as? GossipSubRouter)?.meshPeers(in: topic) } ?? []
    }

    // MARK: - py, one peer

    /// py (v1.2) and us, either dialing: both streams negotiate /meshsub/1.2.0; large messages
    /// flow both ways exactly once; py's IDONTWANTs (for its own messages and for ours it
    /// received) reach us and are taken, none ignored; we send py none (everything we get
    /// comes from py itself).
    @Test(arguments: PubSubInteropTests.Dialer.allCases)
    func negotiatesV12WithPyAndMessagesFlow(dialer: PubSubInteropTests.Dialer) async throws {
        let suite = PubSubInteropTests()
        try await Self.withNodes(seeds: [120]) { nodes in
            let (host, pubsub) = nodes[0]
            let us = host.peerID.b58String
            let inbox = PubSubInbox(try pubsub.subscribe(Self.topic))
            var arguments = ["--seed", "121", "--router", "gossipsub", "--topic", Self.topic] + Self.pyV12
            switch dialer {
            case .swiftDialsPy: arguments = ["listen"] + arguments
            case .pyDialsSwift: arguments = ["dial", host.addresses[0].description] + arguments
            }
            try await suite.withPy(arguments) { py in
                if dialer == .swiftDialsPy { _ = try await host.connect(to: Multiaddr(py.address)) }
                // py's stream to us, and ours to py.
                let connected = try await py.event("py's stream to us") { $0.event == "connected" && $0.peer == us }
                #expect(connected.protocol == "/meshsub/1.2.0")
                let pyID = try PeerID(py.peerID)
                try await Self.until("py in our router") { Self.protocolOf(pyID, at: pubsub) != nil }
                #expect(Self.protocolOf(pyID, at: pubsub) == "/meshsub/1.2.0")
                try await suite.waitUntilReady(py, pubsub, topic: Self.topic, gossip: true)

                // py → us.
                let texts = (1...3).map { Self.large("py \($0)") }
                var published: [PyPubSubEvent] = []
                for text in texts { published.append(try await py.publish(text)) }
                for event in published {
                    try await inbox.message("py's message \(event.seqno ?? 0)") { $0.seqno == event.seqno }
                }
                // us → py.
                var ids: [String] = []
                for n in 1...3 { ids.append(try await pubsub.publish(Self.topic, Array(Self.large("swift \(n)").utf8)).hex) }
                for id in ids {
                    let event = try await py.event("py receives our \(id.suffix(8))") { $0.event == "message" && $0.id == id }
                    #expect(event.verified == true)
                }
                // Barriers both ways; then every copy is in.
                let barrier = try await py.publish("py barrier")
                try await inbox.message("py's barrier") { $0.seqno == barrier.seqno }
                let ourBarrier = try await pubsub.publish(Self.topic, Array("swift barrier".utf8)).hex
                try await py.event("py receives our barrier") { $0.event == "message" && $0.id == ourBarrier }

                let received = inbox.all.filter { $0.text.hasPrefix("py ") && $0.text != "py barrier" }
                #expect(received.map(\.text).sorted() == texts.sorted(), "each of py's messages exactly once")
                let pyGot = py.messages(topic: Self.topic, from: us).compactMap(\.id).filter { ids.contains($0) }
                #expect(pyGot.sorted() == ids.sorted(), "each of ours exactly once")

                // py's IDONTWANTs: for each of its own messages and each of ours (its forwarder's).
                let pySent = py.events.filter { $0.event == "control" && $0.dir == "out" && $0.type == "idontwant" && $0.peer == us }
                #expect(pySent.count >= 2 * texts.count)
                try await Self.until("py's IDONTWANTs counted here") {
                    pubsub.counters.idontwantReceived >= 2 * texts.count
                }
                let counters = pubsub.counters
                #expect(counters.idontwantIgnored == 0)
                #expect(counters.idontwantSent == 0, "every message we got came from py itself")
                #expect(counters.rejected == 0 && counters.badRPCs == 0 && counters.duplicates == 0)
                _ = await py.stop()
            }
        }
    }

    // MARK: - py between two of ours

    /// IDONTWANT honoured by both sides, observed in our counters. Our S publishes; our A and B
    /// both get it from S; py is connected to A and B only (A and B are not connected to each
    /// other). A and B hold the message in validation (A 1.2 s, B 0.3 s), and send IDONTWANT to py
    /// before validating. So py gets A's IDONTWANT first, then the message from B; py would
    /// forward it to A (its mesh but the forwarder and the author) but for that IDONTWANT: A
    /// receives no copy from py. py then sends IDONTWANT to A and B; when A's validation ends, A
    /// routes the message — to nobody: S sent it, py said it does not want it (counted as left
    /// out). py's heartbeat (10 s here) forgets IDONTWANTs; a message whose IDONTWANT it forgot
    /// in between would reach A once more, so one such copy is tolerated.
    @Test func idontwantHonouredBothWaysWithPy() async throws {
        let suite = PubSubInteropTests()
        try await Self.withNodes(seeds: [122, 123, 124]) { nodes in
            let (s, a, b) = (nodes[0], nodes[1], nodes[2])
            let inboxes = try nodes.map { PubSubInbox(try $0.pubsub.subscribe(Self.topic)) }
            // The barrier's topic: only A subscribes to it, so py's message there reaches A alone.
            let barrierTopic = "v12-barrier"
            let barrierInbox = PubSubInbox(try a.pubsub.subscribe(barrierTopic))
            a.pubsub.setValidator(Self.topic) { _ in
                try? await Task.sleep(for: .milliseconds(1200))
                return .accept
            }
            b.pubsub.setValidator(Self.topic) { _ in
                try? await Task.sleep(for: .milliseconds(300))
                return .accept
            }
            let arguments = ["listen", "--seed", "125", "--router", "gossipsub", "--topic", Self.topic, "--heartbeat", "10"]
            try await suite.withPy(arguments + Self.pyV12) { py in
                let pyID = try PeerID(py.peerID)
                _ = try await s.host.connect(to: a.host.addresses[0])
                _ = try await s.host.connect(to: b.host.addresses[0])
                _ = try await a.host.connect(to: Multiaddr(py.address))
                _ = try await b.host.connect(to: Multiaddr(py.address))
                for node in [a, b] {
                    try await suite.waitUntilReady(py, node.pubsub, topic: Self.topic, gossip: true)
                    try await Self.until("py in our mesh") { Self.meshPeers(node.pubsub).contains(pyID) }
                    #expect(Self.protocolOf(pyID, at: node.pubsub) == "/meshsub/1.2.0")
                }
                try await Self.until("S, A and B in each other's meshes") {
                    Self.meshPeers(s.pubsub) == [a.host.peerID, b.host.peerID]
                        && Self.meshPeers(a.pubsub).contains(s.host.peerID) && Self.meshPeers(b.pubsub).contains(s.host.peerID)
                }
                let before = (a: a.pubsub.counters, b: b.pubsub.counters)
                let count = 4
                for n in 1...count {
                    let id = try await s.pubsub.publish(Self.topic, Array(Self.large("S \(n)").utf8))
                    try await py.event("py receives S \(n)") { $0.event == "message" && $0.id == id.hex }
                    for inbox in inboxes.dropFirst() { try await inbox.message("S \(n) at A and B") { $0.id == id } }
                }
                // A barrier from py to A alone (in a topic only A is in, so nobody forwards it):
                // py's stream to A is in order, so once it is in, whatever py sent A before is too.
                try await py.event("py sees A in \(barrierTopic)") {
                    $0.event == "peer" && $0.peer == a.host.peerID.b58String && $0.topic == barrierTopic
                        && $0.subscribed == true
                }
                try py.command("publish-to \(barrierTopic) py barrier")
                try await barrierInbox.message("py's barrier at A") { $0.text == "py barrier" }

                let afterA = a.pubsub.counters
                let afterB = b.pubsub.counters
                // A told py, before validating, each time.
                #expect(afterA.idontwantSent - before.a.idontwantSent == count)
                let toldByA = py.events.filter {
                    $0.event == "control" && $0.dir == "in" && $0.type == "idontwant" && $0.peer == a.host.peerID.b58String
                }
                #expect(toldByA.count >= count)
                // py honoured it: A got each message from S only (at most one copy from py, see above).
                let copiesAtA = afterA.received - before.a.received  // S's messages and py's barrier
                #expect(copiesAtA >= count + 1 && copiesAtA <= count + 2, "copies at A: \(copiesAtA)")
                #expect(afterA.duplicates - before.a.duplicates <= 1)
                // We honoured py's: A did not forward the messages to py after validating.
                #expect(afterA.idontwantLeftOut - before.a.idontwantLeftOut >= count - 1)
                #expect(afterA.idontwantReceived > before.a.idontwantReceived)
                #expect(afterB.idontwantReceived > before.b.idontwantReceived)
                for counters in [afterA, afterB] {
                    #expect(counters.idontwantIgnored == 0 && counters.rejected == 0 && counters.badRPCs == 0)
                }
                _ = await py.stop()
            }
        }
    }

    // MARK: - go (v1.1)

    /// go-libp2p-pubsub 0.10.0 (p2pd) speaks /meshsub/1.1.0 at most: our v1.2 node A falls back
    /// to it with go, and keeps v1.2 with our node B (B — A — go, A dialed go). Large messages
    /// flow both ways: go's reach B through A, B's and A's reach go, each exactly once. A tells B
    /// (v1.2) IDONTWANT for go's messages, and never go: A sends exactly one IDONTWANT per large
    /// message of go's, none for B's (B sent them; go is v1.1).
    @Test func fallsBackToV11WithGo() async throws {
        let topic = "v12-go"
        try await withDaemon(seed: 130, ["-pubsub", "-pubsubRouter=gossipsub"]) { go in
            let feed = try await go.subscribe(topic)
            do {
                try await goLine(go: go, feed: feed, topic: topic)
                await feed.stop()
            } catch {
                await feed.stop()
                throw error
            }
        }
    }

    func goLine(go: P2PDaemon, feed: DaemonSubscription, topic: String) async throws {
        try await Self.withNodes(seeds: [131, 132]) { nodes in
            let (a, b) = (nodes[0], nodes[1])
            let inboxA = PubSubInbox(try a.pubsub.subscribe(topic))
            let inboxB = PubSubInbox(try b.pubsub.subscribe(topic))
            _ = try await a.host.connect(to: go.fullAddress)
            _ = try await b.host.connect(to: a.host.addresses[0])
            try await Self.until("go seeing A in \(topic)") { try await go.pubsubPeers(topic).contains(a.host.peerID) }
            try await Self.until("A seeing go and B in \(topic)") {
                Set(a.pubsub.peers(topic: topic)) == [go.peerID, b.host.peerID]
            }
            #expect(Self.protocolOf(go.peerID, at: a.pubsub) == "/meshsub/1.1.0")
            #expect(Self.protocolOf(b.host.peerID, at: a.pubsub) == "/meshsub/1.2.0")
            // What go announces in identify: 1.1.0, not 1.2.0.
            try await Self.until("go's identify") { a.host.peerstore.protocols(for: go.peerID).contains("/meshsub/1.1.0") }
            #expect(!a.host.peerstore.protocols(for: go.peerID).contains("/meshsub/1.2.0"))

            // Until go has A in its mesh, its messages may not get through: small "ready"
            // messages (no IDONTWANT) each way until one arrives.
            try await Self.until("a ready message from go at B") {
                try await go.publish(topic, Array("ready go".utf8))
                try await Task.sleep(for: .milliseconds(100))
                return inboxB.all.contains { $0.text == "ready go" }
            }
            try await Self.until("a ready message from B at go") {
                _ = try await b.pubsub.publish(topic, Array("ready B".utf8))
                try await Task.sleep(for: .milliseconds(100))
                return try feed.messages().contains { $0.text == "ready B" }
            }
            let before = (a: a.pubsub.counters, b: b.pubsub.counters)

            let goTexts = (1...3).map { Self.large("go \($0)") }
            for text in goTexts { try await go.publish(topic, Array(text.utf8)) }
            var ours: [(id: MessageID, text: String)] = []
            for n in 1...2 {
                let text = Self.large("B \(n)")
                ours.append((try await b.pubsub.publish(topic, Array(text.utf8)), text))
            }
            let textA = Self.large("A 1")
            ours.append((try await a.pubsub.publish(topic, Array(textA.utf8)), textA))
            for text in goTexts {
                try await inboxB.message("go's large message at B") { $0.text == text && $0.from == go.peerID }
                try await inboxA.message("go's large message at A") { $0.text == text && $0.from == go.peerID }
            }
            try await Self.until("our large messages at go") {
                let ids = Set(try feed.messages().map(\.id))
                return ours.allSatisfy { ids.contains($0.id) }
            }
            // Barriers, then count.
            try await go.publish(topic, Array("go barrier".utf8))
            let barrierB = try await b.pubsub.publish(topic, Array("B barrier".utf8))
            try await inboxB.message("go's barrier at B") { $0.text == "go barrier" }
            try await Self.until("B's barrier at go") { try feed.messages().contains { $0.id == barrierB } }

            for text in goTexts {
                let copies = inboxB.all.filter { $0.text == text }
                #expect(copies.count == 1, "go's message exactly once at B")
                #expect(copies.first?.receivedFrom == a.host.peerID)
            }
            let atGo = try feed.messages()
            for (id, _) in ours {
                let copies = atGo.filter { $0.id == id }
                #expect(copies.count == 1, "ours exactly once at go")
            }
            let largeFromB = inboxA.all.filter { $0.text.hasPrefix("B ") && $0.text.count > 1000 }
            #expect(largeFromB.count == 2)

            let afterA = a.pubsub.counters
            let afterB = b.pubsub.counters
            #expect(afterA.idontwantSent - before.a.idontwantSent == goTexts.count, "to B, for go's large messages")
            #expect(afterB.idontwantReceived - before.b.idontwantReceived == goTexts.count)
            #expect(afterB.idontwantSent == 0, "B got everything from A, its only peer")
            for counters in [afterA, afterB] {
                #expect(counters.rejected == 0 && counters.badRPCs == 0 && counters.idontwantIgnored == 0)
            }
        }
    }
}
