import NIOConcurrencyHelpers
import NIOCore
import PointSub
import Testing

@testable import PubSub

/// Gossipsub v1.1 peer exchange with signed peer records: the record checks and attachment as
/// pure functions, then in-memory networks in which a node learns a peer only through PX.
@Suite(.timeLimit(.minutes(2)))
struct PeerExchangeTests {
    static let local = PrivateKey.ed25519(seed: 1)
    static let alice = PrivateKey.ed25519(seed: 2)
    static let bob = PrivateKey.ed25519(seed: 3)
    static let address = Multiaddr("/ip4/127.0.0.1/tcp/4001")

    static func record(_ key: PrivateKey, addresses: [Multiaddr] = [address]) throws -> SignedPeerRecord {
        try SignedPeerRecord.seal(PeerRecord(peerID: key.peerID, addresses: addresses), with: key)
    }

    static func offer(_ peer: PeerID, _ record: [UInt8]? = nil) -> PubSubRPC.Prune.PeerInfo {
        PubSubRPC.Prune.PeerInfo(peerID: peer.bytes, signedPeerRecord: record)
    }

    // MARK: - Records

    @Test func validRecordsAreKeptAndOffersWithoutRecordsToo() throws {
        let aliceRecord = try Self.record(Self.alice)
        let plan = PeerExchange.plan(
            [Self.offer(Self.alice.peerID, aliceRecord.bytes), Self.offer(Self.bob.peerID)],
            localPeer: Self.local.peerID, limit: 16, isConnected: { _ in false })
        #expect(plan.candidates == [
            PeerExchange.Candidate(peer: Self.alice.peerID, record: aliceRecord),
            PeerExchange.Candidate(peer: Self.bob.peerID, record: nil),
        ])
        #expect(plan.candidates[0].record?.addresses == [Self.address])
        #expect(plan.invalidRecords == 0 && plan.skipped == 0)
    }

    @Test func invalidRecordsAreCountedAndTheirOffersIgnored() throws {
        let aliceRecord = try Self.record(Self.alice)
        // A record signed by the wrong key for its content: the payload names bob, alice signs.
        let bobByAlice = try SignedEnvelope.seal(
            payload: PeerRecord(peerID: Self.bob.peerID, addresses: [Self.address]).encoded(),
            payloadType: PeerRecord.payloadType, domain: PeerRecord.domain, with: Self.alice).marshal()
        // Alice's own record under another payload type, and for another domain.
        let wrongType = try SignedEnvelope.seal(
            payload: aliceRecord.record.encoded(), payloadType: [0x03, 0x02], domain: PeerRecord.domain,
            with: Self.alice).marshal()
        let wrongDomain = try SignedEnvelope.seal(
            payload: aliceRecord.record.encoded(), payloadType: PeerRecord.payloadType, domain: "libp2p-routing-state",
            with: Self.alice).marshal()
        var flipped = aliceRecord.bytes
        flipped[flipped.count - 1] ^= 1  // in the signature
        let offers = [
            Self.offer(Self.bob.peerID, aliceRecord.bytes),  // a valid record of another peer
            Self.offer(Self.bob.peerID, bobByAlice),
            Self.offer(Self.alice.peerID, wrongType),
            Self.offer(Self.alice.peerID, wrongDomain),
            Self.offer(Self.alice.peerID, flipped),
            Self.offer(Self.alice.peerID, [0x0a, 0xff, 0x01]),  // not an envelope
            Self.offer(Self.alice.peerID, []),
        ]
        let plan = PeerExchange.plan(offers, localPeer: Self.local.peerID, limit: 16, isConnected: { _ in false })
        #expect(plan.candidates.isEmpty)
        #expect(plan.invalidRecords == offers.count)
        #expect(plan.firstFailure?.code == .unexpectedPeer)
    }

    @Test func ourselvesConnectedPeersDuplicatesAndBadIDsAreSkipped() throws {
        let offers = [
            Self.offer(Self.local.peerID),
            Self.offer(Self.alice.peerID),
            PubSubRPC.Prune.PeerInfo(peerID: [1, 2, 3]),
            PubSubRPC.Prune.PeerInfo(peerID: nil),
            Self.offer(Self.bob.peerID),
            Self.offer(Self.bob.peerID),
        ]
        let plan = PeerExchange.plan(
            offers, localPeer: Self.local.peerID, limit: 16, isConnected: { $0 == Self.alice.peerID })
        #expect(plan.candidates.map(\.peer) == [Self.bob.peerID])
        #expect(plan.skipped == 5)
        let limited = PeerExchange.plan(
            [Self.offer(Self.alice.peerID), Self.offer(Self.bob.peerID)], localPeer: Self.local.peerID, limit: 1,
            isConnected: { _ in false })
        #expect(limited.candidates.map(\.peer) == [Self.alice.peerID])
        #expect(limited.overLimit == 1)
    }

    @Test func prunesGetTheRecordsWeHave() throws {
        let aliceRecord = try Self.record(Self.alice)
        let other = try Self.record(Self.bob, addresses: [Multiaddr("/ip4/10.0.0.1/tcp/1")])
        let rpc = PubSubRPC(control: PubSubRPC.Control(prune: [
            PubSubRPC.Prune(topic: "t", peers: [
                Self.offer(Self.alice.peerID), Self.offer(Self.local.peerID), Self.offer(Self.bob.peerID, other.bytes),
            ], backoff: 60),
            PubSubRPC.Prune(topic: "u"),
        ]))
        let attached = PeerExchange.attachingRecords(to: rpc) { $0 == Self.alice.peerID ? aliceRecord : nil }
        let peers = try #require(attached.control?.prune.first?.peers)
        #expect(peers[0].signedPeerRecord == aliceRecord.bytes)
        #expect(peers[1].signedPeerRecord == nil)  // no record known
        #expect(peers[2].signedPeerRecord == other.bytes)  // one already there stays
        #expect(attached.control?.prune[1] == PubSubRPC.Prune(topic: "u"))
        // What goes out decodes to the same (field 2 of PeerInfo).
        #expect(try PubSubRPC(decoding: attached.encoded()) == attached)
        let plain = PubSubRPC(subscriptions: [.init(subscribe: true, topic: "t")])
        #expect(PeerExchange.attachingRecords(to: plain) { _ in aliceRecord } == plain)
    }

    // MARK: - Networks

    /// Node 1 leaves `t` and prunes nodes 0 and 2 with peer exchange; node 0 (which takes PX)
    /// learns node 2 — its record, as node 1 got it through identify — and connects to it.
    @Test func aNodeLearnsAPeerOnlyThroughPeerExchangeAndConnects() async throws {
        let exchanging = try GossipSubRouter(configuration: .defaults { $0.peerExchange = true })
        let accepting = try GossipSubRouter(configuration: .defaults { $0.thresholds.acceptPX = 0 })
        try await PubSubTestNetwork.with(
            nodes: 3, edges: PubSubTestNetwork.line(3),
            router: { [0: accepting, 1: exchanging][$0] ?? (try! GossipSubRouter()) }
        ) { net in
            let kept0 = Collector(try net.services[0].subscribe("t"))
            let kept2 = Collector(try net.services[2].subscribe("t"))
            let kept1 = Collector(try net.services[1].subscribe("t"))
            try await net.waitForSubscriptions("t", subscribers: [0, 1, 2])
            try await net.waitUntil("node 1 meshes with nodes 0 and 2") {
                net.services[1].withRouter { ($0 as! GossipSubRouter).meshPeers(in: "t") } == [net.peerID(0), net.peerID(2)]
            }
            #expect(net.hosts[0].peerstore.addresses(for: net.peerID(2)).isEmpty)
            #expect(net.hosts[1].peerstore.signedRecord(for: net.peerID(2)) != nil)
            net.services[1].unsubscribe("t")  // PRUNE with peer exchange to nodes 0 and 2
            try await net.waitUntil("node 0 connected to node 2 and has its pubsub streams") {
                net.services[0].peers.contains(net.peerID(2))
            }
            #expect(net.hosts[0].peerstore.certifiedAddresses(for: net.peerID(2)) == net.hosts[2].listenAddresses)
            let counters = net.counters[0]
            #expect(counters.peerExchangeDials == 1)
            #expect(counters.peerExchangeConnected == 1)
            #expect(counters.peerExchangeInvalidRecords == 0)
            #expect(net.counters[2].peerExchangeDials == 0)  // node 2 does not take PX (acceptPX 100)
            withExtendedLifetime((kept0, kept1, kept2)) {}
        }
    }

    /// A meshsub peer written by hand prunes node 0 offering a listening host with its valid
    /// record, and two bad records: the bad ones are counted and ignored, the good one connected.
    @Test func badRecordsInAPruneAreIgnoredAndTheGoodOneConnected() async throws {
        let accepting = try GossipSubRouter(configuration: .defaults { $0.thresholds.acceptPX = 0 })
        try await PubSubTestNetwork.with(nodes: 1, edges: [], router: { _ in accepting }) { net in
            let kept0 = Collector(try net.services[0].subscribe("t"))
            try await withHost(configuration: .defaults {
                $0.transports = [.memory]
                $0.listenAddresses = [Multiaddr("/memory/0")]
                $0.shutdownGracePeriod = .milliseconds(100)
            }) { target in
                try await withHost(configuration: .defaults {
                    $0.transports = [.memory]
                    $0.shutdownGracePeriod = .milliseconds(100)
                }) { raw in
                    try raw.setStreamHandler(GossipSubRouter.meshsubV11) { stream in
                        while try await stream.read() != nil {}
                    }
                    _ = try await raw.connect(to: net.hosts[0].addresses[0])
                    let stream = try await raw.newStream(to: net.peerID(0), protocols: [GossipSubRouter.meshsubV11])
                    try await net.waitUntil("the raw peer is a pubsub peer") { net.services[0].peers.contains(raw.peerID) }
                    let good = try #require(target.signedPeerRecord)
                    let stranger = PrivateKey.ed25519(seed: 99)
                    let prune = PubSubRPC.Prune(topic: "t", peers: [
                        Self.offer(stranger.peerID, good.bytes),  // the target's record offered as another peer
                        Self.offer(target.peerID, Array(good.bytes.dropLast())),  // truncated
                        Self.offer(target.peerID, good.bytes),
                    ], backoff: 60)
                    try await stream.writeLengthPrefixed(PubSubRPC(control: PubSubRPC.Control(prune: [prune])).encoded())
                    try await net.waitUntil("node 0 connected to the target") {
                        !net.hosts[0].connections(to: target.peerID).isEmpty
                    }
                    try await net.waitUntil("the dial is counted") { net.counters[0].peerExchangeConnected == 1 }
                    let counters = net.counters[0]
                    #expect(counters.peerExchangeInvalidRecords == 2)
                    #expect(counters.peerExchangeDials == 1)
                    #expect(net.hosts[0].connections(to: stranger.peerID).isEmpty)
                    #expect(net.hosts[0].peerstore.addresses(for: stranger.peerID).isEmpty)
                    #expect(net.hosts[0].peerstore.certifiedAddresses(for: target.peerID) == target.listenAddresses)
                    withExtendedLifetime(kept0) {}
                }
            }
        }
    }

    /// Offers beyond `peerExchangeMaxPending` are dropped and counted; the queued ones are tried
    /// by at most `peerExchangeConcurrency` connectors (here one), each attempt failing (peers
    /// with no record and no known address), and the connectors end when the queue is empty.
    @Test func connectionAttemptsAreBounded() async throws {
        let accepting = try GossipSubRouter(configuration: .defaults { $0.thresholds.acceptPX = 0 })
        let bounded = PubSubConfiguration.defaults {
            $0.peerExchangeMaxPending = 2
            $0.peerExchangeConcurrency = 1
            $0.peerExchangeConnectTimeout = .seconds(5)
        }
        try await PubSubTestNetwork.with(
            nodes: 1, edges: [], router: { _ in accepting }, configuration: { _ in bounded }
        ) { net in
            let kept0 = Collector(try net.services[0].subscribe("t"))
            try await withHost(configuration: .defaults {
                $0.transports = [.memory]
                $0.shutdownGracePeriod = .milliseconds(100)
            }) { raw in
                try raw.setStreamHandler(GossipSubRouter.meshsubV11) { stream in
                    while try await stream.read() != nil {}
                }
                _ = try await raw.connect(to: net.hosts[0].addresses[0])
                let stream = try await raw.newStream(to: net.peerID(0), protocols: [GossipSubRouter.meshsubV11])
                try await net.waitUntil("the raw peer is a pubsub peer") { net.services[0].peers.contains(raw.peerID) }
                let offers = (100..<105).map { Self.offer(PrivateKey.ed25519(seed: UInt64($0)).peerID) }
                let prune = PubSubRPC.Prune(topic: "t", peers: offers, backoff: 60)
                try await stream.writeLengthPrefixed(PubSubRPC(control: PubSubRPC.Control(prune: [prune])).encoded())
                try await net.waitUntil("both queued offers tried and the connector ended") {
                    net.counters[0].peerExchangeDials == 2
                        && net.services[0].state.withLockedValue { $0.exchangeConnectors == 0 && $0.exchangePending.isEmpty }
                }
                let counters = net.counters[0]
                #expect(counters.peerExchangeDropped == 3)
                #expect(counters.peerExchangeConnected == 0)
                #expect(counters.peerExchangeInvalidRecords == 0)
                #expect(net.services[0].peers.contains(raw.peerID))
            }
            withExtendedLifetime(kept0) {}
        }
    }
}
