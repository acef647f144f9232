import Foundation
import NIOCore
import PointSub
import PubSub
import TestSupport
import Testing

/// Interop with go-libp2p v0.32.1 (go-yamux 4.0.1, go-libp2p-pubsub 0.10.0, go-libp2p-kad-dht
/// 0.25.1) through its daemon `p2pd` (P2PDaemon.swift), over real TCP on 127.0.0.1, in both
/// directions: connections, identify, ping, echo, floodsub and gossipsub with go forwarding
/// between two of our nodes, and go's DHT finding our node through another go node.
///
/// The daemon cannot be asked everything: it has no identify query about other peers and no
/// ping request. What go learned from our identify shows in go-libp2p's metrics (how many
/// protocols and addresses it received, identify push listed; not our agent version) and where
/// go uses it: the DHT test finds our *listen* address, which go only knows from our identify
/// message (we dialed go, so the connection's remote address is an ephemeral port). Go pings us through STREAM_OPEN on
/// `/ipfs/ping/1.0.0`, with the test writing the 32-byte payloads through the daemon's proxy.
///
/// Every wait is bounded (`Self.timeout`); a missing `p2pd` fails every test. (No closures
/// inside `#expect`: see the note at the top of PubSubInteropTests.swift.)
@Suite(.serialized, .timeLimit(.minutes(2)))
struct GoInteropTests {
    static let agent = "pointsub-go-interop/0.1.0"
    static let timeout: Duration = .seconds(30)

    static func configuration(listen: Bool) -> P2PHost.Configuration {
        .defaults {
            $0.agentVersion = Self.agent
            $0.services = [EchoService()]
            if listen { $0.listenAddresses = [Multiaddr("/ip4/127.0.0.1/tcp/0")] }
        }
    }


    /// Polls `condition` every 20 ms until it holds; throws after `timeout`.
    static func until(_ what: String, timeout: Duration = Self.timeout, _ condition: () async throws -> Bool) async throws {
        let deadline = ContinuousClock.now + timeout
        while try await !condition() {
            guard ContinuousClock.now < deadline else { throw ChildProcess.Failure("timed out waiting for \(what)") }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    /// Pseudo-random bytes (xorshift, filled 8 at a time).
    static func payload(_ count: Int, seed: UInt64) -> ByteBuffer {
        var buffer = ByteBuffer(repeating: 0, count: count)
        var x = seed &* 0x9E37_79B9_7F4A_7C15 | 1
        buffer.withUnsafeMutableReadableBytes { raw in
            for offset in stride(from: 0, to: raw.count - raw.count % 8, by: 8) {
                x ^= x << 13
                x ^= x >> 7
                x ^= x << 17
                raw.storeBytes(of: x, toByteOffset: offset, as: UInt64.self)
            }
        }
        return buffer
    }

    /// Writes `payload` to a daemon-proxied stream while reading the same number of bytes back
    /// (full duplex: the proxy cannot carry a half-close), and returns what came back.
    static func roundTrip(_ socket: DaemonSocket, _ payload: ByteBuffer) async throws -> ByteBuffer {
        let writer = socket.writer
        let count = payload.readableBytes
        async let sent: Void = {
            var rest = payload
            while rest.readableBytes > 0 {
                try await writer.write(rest.readSlice(length: min(64 << 10, rest.readableBytes))!)
            }
        }()
        let back = try await socket.readExactly(count)
        try await sent
        return back
    }

    // MARK: - Connect and identify, both directions

    @Test func goDialsSwift() async throws {
        try await withDaemon(seed: 101, metrics: true) { go in
            try await withHost(identity: .ed25519(seed: 201), configuration: Self.configuration(listen: true)) { host in
                // (host.addresses end in /p2p/<our ID>; go's addresses never do.)
                let ours = host.addresses[0].removingPeerID()
                try await go.connect(host.peerID, [ours])
                // go's side: the connection, to the address it dialed.
                let peers = try await go.peers()
                let seen = peers.first { $0.id == host.peerID }
                #expect(seen != nil, "LIST_PEERS after CONNECT: \(peers.map(\.id))")
                #expect(seen?.addresses == [ours])
                // Our side: an inbound connection from go's peer ID, and go identified.
                try await Self.until("the inbound connection from go") { !host.connections(to: go.peerID).isEmpty }
                #expect(host.connections(to: go.peerID).first?.direction == .inbound)
                try await Self.until("our identify of go") { host.peerstore.info(for: go.peerID)?.agentVersion != nil }
                let info = host.peerstore.info(for: go.peerID)
                Self.checkGoIdentify(info, listenAddress: go.address)
                try await Self.checkGoIdentifiedUs(go, host)
            }
        }
    }

    @Test func swiftDialsGo() async throws {
        try await withDaemon(seed: 102, metrics: true) { go in
            try await withHost(identity: .ed25519(seed: 202), configuration: Self.configuration(listen: false)) { host in
                let connection = try await host.connect(to: go.fullAddress)
                #expect(connection.remotePeer == go.peerID)
                #expect(connection.direction == .outbound)
                try await Self.until("go listing our connection") {
                    try await go.peers().contains { $0.id == host.peerID }
                }
                // Asking explicitly (the host asked on connecting too): go's answer, key checked.
                let message = try await IdentifyService.identify(connection, host: host)
                let keyMatches = message.publicKey.map { go.peerID.matches($0) }
                #expect(keyMatches == true)
                #expect(message.listenAddresses.contains(go.address))
                // go reports the address it sees us at: our side of the connection.
                #expect(message.observedAddress != nil)
                #expect(message.observedAddress == connection.localAddress)
                Self.checkGoIdentify(host.peerstore.info(for: go.peerID), listenAddress: go.address)
                try await Self.checkGoIdentifiedUs(go, host)
            }
        }
    }

    /// What our identify learned of a plain p2pd (no pubsub, no DHT).
    static func checkGoIdentify(_ info: Peerstore.PeerInfo?, listenAddress: Multiaddr) {
        // p2pd sets this user agent (libp2p.UserAgent in its main.go). go-libp2p 0.32 sends an
        // empty protocol version, so there is nothing to check there.
        #expect(info?.agentVersion == "p2pd/0.1")
        let protocols = Set(info?.protocols ?? [])
        for p in ["/ipfs/id/1.0.0", "/ipfs/id/push/1.0.0", "/ipfs/ping/1.0.0"] {
            #expect(protocols.contains(p), "go's protocols: \(protocols.sorted())")
        }
        #expect(info?.addresses.keys.contains(listenAddress) == true)
    }

    /// go's identify of us and its answer to ours, as go-libp2p 0.32 counts them in its metrics
    /// (the daemon has no query for what go knows of a peer; our agent version is not counted):
    /// go identified us once and answered us, as many protocols as we list, as many addresses as
    /// we listen on, and identify push among our protocols.
    static func checkGoIdentifiedUs(_ go: P2PDaemon, _ host: P2PHost) async throws {
        var metrics: [String: Double] = [:]
        try await until("go identifying us and answering our identify, in its metrics") {
            metrics = try await go.metrics()
            // (inbound: each identify of go we asked for; swiftDialsGo asks once more.)
            // go records these one after another, not at once: wait for all of them.
            return metrics["libp2p_identify_protocols_received_count"] == 1
                && metrics["libp2p_identify_identify_total{dir=\"inbound\"}", default: 0] >= 1
                && metrics["libp2p_identify_identify_total{dir=\"outbound\"}"] != nil
                && metrics["libp2p_identify_conn_push_support_total{support=\"supported\"}"] != nil
        }
        #expect(metrics["libp2p_identify_identify_total{dir=\"outbound\"}"] == 1)
        #expect(metrics["libp2p_identify_protocols_received_sum"] == Double(host.supportedProtocols.count))
        #expect(metrics["libp2p_identify_addrs_received_sum"] == Double(host.listenAddresses.count))
        #expect(metrics["libp2p_identify_conn_push_support_total{support=\"supported\"}"] == 1)
    }

    // MARK: - Ping

    @Test func pingBothWays() async throws {
        try await withDaemon(seed: 103) { go in
            try await withHost(identity: .ed25519(seed: 203), configuration: Self.configuration(listen: true)) { host in
                // We ping go.
                _ = try await host.connect(to: go.fullAddress)
                let rtts = try await PingService.ping(host: host, peer: go.peerID, count: 3)
                #expect(rtts.count == 3)

                // go opens /ipfs/ping/1.0.0 to us (the daemon has no ping request; the test writes
                // the payloads through the proxied stream): our handler answers each 32 bytes.
                try await go.withStream(to: host.peerID, [PingService.protocolID]) { info, socket in
                    #expect(info.peer == host.peerID)
                    #expect(info.proto == PingService.protocolID)
                    for round in 0..<3 {
                        let payload = Self.payload(PingService.payloadSize, seed: UInt64(round + 1))
                        let back = try await Self.roundTrip(socket, payload)
                        #expect(back == payload, "ping round \(round)")
                    }
                }
            }
        }
    }

    // MARK: - Echo

    /// go opens two streams to our `/echo/1.0.0` at once and sends 1 MiB through each; every
    /// byte comes back.
    @Test func goEchoesThroughSwift() async throws {
        try await withDaemon(seed: 104) { go in
            try await withHost(identity: .ed25519(seed: 204), configuration: Self.configuration(listen: true)) { host in
                try await go.connect(host.peerID, [host.addresses[0].removingPeerID()])
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for index in 0..<2 {
                        group.addTask {
                            try await go.withStream(to: host.peerID, [EchoService.protocolID]) { info, socket in
                                #expect(info.peer == host.peerID)
                                #expect(info.proto == EchoService.protocolID)
                                let payload = Self.payload(1 << 20, seed: UInt64(7 + index))
                                let back = try await Self.roundTrip(socket, payload)
                                #expect(back.readableBytes == 1 << 20)
                                #expect(back == payload, "stream \(index)")
                            }
                        }
                    }
                    try await group.waitForAll()
                }
            }
        }
    }

    /// We open a stream to an echo handler the test registers on go (STREAM_HANDLER) after we
    /// connected: go pushes its new protocol list to us (identify push), and then 1 MiB goes there
    /// and back, full duplex, on two streams at once.
    @Test func swiftEchoesThroughGo() async throws {
        try await withDaemon(seed: 105) { go in
            let handler = try await DaemonEchoHandler.start(path: "\(go.directory)/echo.sock")
            do {
                try await withHost(identity: .ed25519(seed: 205), configuration: Self.configuration(listen: false)) { host in
                    _ = try await host.connect(to: go.fullAddress)
                    try await Self.until("our identify of go") { host.peerstore.info(for: go.peerID)?.agentVersion != nil }
                    #expect(!host.peerstore.protocols(for: go.peerID).contains(EchoService.protocolID))
                    try await go.setStreamHandler(path: handler.path, [EchoService.protocolID])
                    try await Self.until("go's identify push of /echo/1.0.0") {
                        host.peerstore.protocols(for: go.peerID).contains(EchoService.protocolID)
                    }
                    try await withThrowingTaskGroup(of: Void.self) { group in
                        for index in 0..<2 {
                            group.addTask {
                                let stream = try await host.newStream(to: go.peerID, protocols: [EchoService.protocolID])
                                let payload = Self.payload(1 << 20, seed: UInt64(100 + index))
                                let back = try await echoFullDuplex(stream, payload)
                                #expect(back == payload, "stream \(index)")
                                // Everything is back; a FIN now would make the proxy reset the stream.
                                stream.reset()
                            }
                        }
                        try await group.waitForAll()
                    }
                    let streams = handler.streams
                    #expect(streams.count == 2)
                    let allOurs = streams.allSatisfy { $0.peer == host.peerID && $0.proto == EchoService.protocolID }
                    let described = streams.map { "\($0.peer) \($0.proto)" }
                    #expect(allOurs, "StreamInfos: \(described)")
                    #expect(handler.echoedBytes == 2 << 20)
                }
                await handler.stop()
            } catch {
                await handler.stop()
                throw error
            }
        }
    }

    // MARK: - Pubsub: Swift A — go — Swift B

    /// Our nodes A and B are connected only to go (A dialed go, go dialed B); go (gossipsub or
    /// floodsub, subscribed through the daemon) forwards between them. Each message A publishes
    /// reaches B exactly once, from A, received from go, and the other way round (an empty
    /// message included); go's own PUBLISH reaches both once; go's subscription gets each of ours
    /// once, signed.
    @Test(arguments: ["floodsub", "gossipsub"])
    func pubsubThroughGo(router: String) async throws {
        let topic = "go-interop"
        try await withDaemon(seed: 110, ["-pubsub", "-pubsubRouter=\(router)"]) { go in
            // go-libp2p-pubsub ignores messages of topics it has not joined: subscribe go first.
            let feed = try await go.subscribe(topic)
            do {
                try await Self.pubsubLine(go: go, feed: feed, router: router, topic: topic)
                await feed.stop()
            } catch {
                await feed.stop()
                throw error
            }
        }
    }

    static func pubsubLine(go: P2PDaemon, feed: DaemonSubscription, router: String, topic: String) async throws {
        let config = configuration(listen: false)
        try await withHost(identity: .ed25519(seed: 210), configuration: config) { a in
            try await withPubSub(host: a, router: try PubSubInteropTests.router(router)) { pa in
                let inboxA = PubSubInbox(try pa.subscribe(topic))
                // B listens and go dials it: go's pubsub stream to B goes out on a connection go
                // opened, to A on one A opened.
                try await withHost(identity: .ed25519(seed: 211), configuration: configuration(listen: true)) { b in
                    try await withPubSub(host: b, router: try PubSubInteropTests.router(router)) { pb in
                        let inboxB = PubSubInbox(try pb.subscribe(topic))
                        _ = try await a.connect(to: go.fullAddress)
                        try await go.connect(b.peerID, [b.addresses[0].removingPeerID()])
                        try await until("go seeing A and B in \(topic)") {
                            let peers = try await go.pubsubPeers(topic)
                            return peers.contains(a.peerID) && peers.contains(b.peerID)
                        }
                        try await until("A and B seeing go in \(topic)") {
                            pa.peers(topic: topic).contains(go.peerID) && pb.peers(topic: topic).contains(go.peerID)
                        }
                        #expect(a.connections(to: b.peerID).isEmpty && b.connections(to: a.peerID).isEmpty)
                        let wire = router == "floodsub" ? "/floodsub/1.0.0" : "/meshsub/1.1.0"
                        #expect(a.peerstore.protocols(for: go.peerID).contains(wire))

                        // Until go has both in its mesh (gossipsub: its heartbeat grafts them, or
                        // it takes our GRAFTs), messages may not get through: publish "ready"
                        // messages until one gets across each way. They are not counted below.
                        try await ready(pa, to: inboxB, label: "A")
                        try await ready(pb, to: inboxA, label: "B")

                        let textsA = ["A one", "", "A three"]
                        let textsB = ["B one", ""]
                        let textsGo = ["go one", ""]
                        var idsA: [MessageID] = []
                        var idsB: [MessageID] = []
                        for text in textsA { idsA.append(try await pa.publish(topic, Array(text.utf8))) }
                        for text in textsB { idsB.append(try await pb.publish(topic, Array(text.utf8))) }
                        for text in textsGo { try await go.publish(topic, Array(text.utf8)) }
                        for id in idsA { try await inboxB.message("A's message at B") { $0.id == id } }
                        for id in idsB { try await inboxA.message("B's message at A") { $0.id == id } }
                        for inbox in [inboxA, inboxB] {
                            try await until("go's messages at A and B") {
                                inbox.all.filter { $0.from == go.peerID && !$0.text.hasPrefix("ready") }.count >= textsGo.count
                            }
                        }
                        try await until("our messages in go's subscription") {
                            let ids = Set(try feed.messages().map(\.id))
                            return (idsA + idsB).allSatisfy { ids.contains($0) }
                        }

                        // Barriers the same ways; once they are in, any duplicate would be too.
                        let barrierA = try await pa.publish(topic, Array("A barrier".utf8))
                        let barrierB = try await pb.publish(topic, Array("B barrier".utf8))
                        try await go.publish(topic, Array("go barrier".utf8))
                        try await inboxB.message("A's barrier") { $0.id == barrierA }
                        try await inboxA.message("B's barrier") { $0.id == barrierB }
                        for inbox in [inboxA, inboxB] {
                            try await inbox.message("go's barrier") { $0.from == go.peerID && $0.text == "go barrier" }
                        }
                        try await until("our barriers in go's subscription") {
                            let ids = Set(try feed.messages().map(\.id))
                            return ids.contains(barrierA) && ids.contains(barrierB)
                        }

                        for (inbox, ids, texts, author) in [(inboxB, idsA, textsA, a.peerID), (inboxA, idsB, textsB, b.peerID)] {
                            let all = inbox.all
                            for (id, text) in zip(ids, texts) {
                                let copies = all.filter { $0.id == id }
                                #expect(copies.count == 1, "\(author)'s “\(text)” exactly once")
                                #expect(copies.first?.text == text)
                                #expect(copies.first?.from == author)
                                #expect(copies.first?.receivedFrom == go.peerID, "forwarded by go")
                                #expect(copies.first?.topic == topic)
                            }
                        }
                        for inbox in [inboxA, inboxB] {
                            let fromGo = inbox.all.filter { $0.from == go.peerID && $0.text != "go barrier" }
                            #expect(fromGo.map(\.text).sorted() == textsGo.sorted(), "go's messages exactly once")
                            #expect(Set(fromGo.map(\.id)).count == fromGo.count)
                        }
                        let fromUs = try feed.messages().filter { $0.from == a.peerID || $0.from == b.peerID }
                        for (id, text) in zip(idsA + idsB, textsA + textsB) {
                            let copies = fromUs.filter { $0.id == id }
                            #expect(copies.count == 1, "go's subscription: “\(text)” exactly once")
                            #expect(copies.first?.text == text)
                            #expect(copies.first?.topics == [topic])
                            #expect(copies.first?.signed == true)
                        }
                        for service in [pa, pb] {
                            let counters = service.counters
                            #expect(counters.rejected == 0)
                            #expect(counters.badRPCs == 0)
                        }
                    }
                }
            }
        }
    }

    /// Publishes "ready <label> <i>" every 100 ms until one reaches `inbox` (bounded).
    static func ready(_ from: PubSubService, to inbox: PubSubInbox, label: String) async throws {
        let deadline = ContinuousClock.now + timeout
        for attempt in 0..<1_000 {
            _ = try await from.publish("go-interop", Array("ready \(label) \(attempt)".utf8))
            let arrived = { inbox.all.contains { $0.text.hasPrefix("ready \(label) ") } }
            let next = ContinuousClock.now + .milliseconds(100)
            while !arrived(), ContinuousClock.now < next { try await Task.sleep(for: .milliseconds(10)) }
            if arrived() { return }
            guard ContinuousClock.now < deadline else { break }
        }
        throw ChildProcess.Failure("no “ready \(label)” message got across within \(timeout)")
    }

    // MARK: - DHT

    /// go A asks its DHT (FIND_PEER) for our peer ID. A knows only go B (a DHT server), which we
    /// are connected to but which has us in no routing table (we do not speak kad): go-libp2p-kad-dht
    /// 0.25.1's FIND_NODE handler adds the target to its closer peers whenever its peerstore has
    /// addresses for it. So A learns our listen address, which B only knows from our identify
    /// message (we dialed B: the connection's remote port is ephemeral), and dials us there.
    @Test func goDHTFindsSwiftThroughGo() async throws {
        // `-dht` is ModeAuto, which stays a client on a private network (no answers to
        // queries): B must be `-dhtServer`.
        try await withDaemon(seed: 120, ["-dhtServer"]) { goB in
            try await withDaemon(seed: 121, ["-dhtClient"]) { goA in
                try await withHost(identity: .ed25519(seed: 220), configuration: Self.configuration(listen: true)) { host in
                    let ours = host.addresses[0].removingPeerID()
                    let toB = try await host.connect(to: goB.fullAddress)
                    // We dial from an ephemeral port: B can learn `ours` only from our identify.
                    #expect(toB.localAddress != nil && toB.localAddress != ours)
                    try await goA.connect(goB.peerID, [goB.address])
                    let before = try await goA.peers().map(\.id)
                    #expect(!before.contains(host.peerID), "go A is not connected to us before its lookup")

                    // A puts B in its routing table once it identified B as a DHT server; until
                    // then FIND_PEER fails at once ("failed to find any peer in table").
                    let deadline = ContinuousClock.now + Self.timeout
                    var found: DaemonPeerInfo?
                    while found == nil {
                        do {
                            found = try await goA.findPeer(host.peerID, timeout: 10)
                        } catch let error as DaemonError {
                            guard ContinuousClock.now < deadline else { throw error }
                            try await Task.sleep(for: .milliseconds(100))
                        }
                    }
                    #expect(found?.id == host.peerID)
                    #expect(found?.addresses.contains(ours) == true, "FIND_PEER gave \(found?.addresses ?? [])")
                    // A dialed us during its lookup, at the address B gave it.
                    try await Self.until("go A's connection to us") { !host.connections(to: goA.peerID).isEmpty }
                    let allInbound = host.connections(to: goA.peerID).allSatisfy { $0.direction == .inbound }
                    #expect(allInbound)
                    let seen = try await goA.peers().first { $0.id == host.peerID }
                    #expect(seen?.addresses.contains(ours) == true)
                }
            }
        }
    }
}

/// go opens streams to us: three pings (the daemon has no ping request: the test writes the
/// 32-byte payloads through the proxied stream), then 1 MiB echoed through our handler.
func goPingsAndEchoesThrough(_ go: P2PDaemon, _ host: P2PHost, echoSeed: UInt64) async throws {
    try await go.withStream(to: host.peerID, [PingService.protocolID]) { _, socket in
        for round in 0..<3 {
            let payload = GoInteropTests.payload(PingService.payloadSize, seed: UInt64(round + 1))
            let back = try await GoInteropTests.roundTrip(socket, payload)
            #expect(back == payload, "ping round \(round)")
        }
    }
    try await go.withStream(to: host.peerID, [EchoService.protocolID]) { _, socket in
        let payload = GoInteropTests.payload(1 << 20, seed: echoSeed)
        let back = try await GoInteropTests.roundTrip(socket, payload)
        #expect(back == payload)
    }
}
