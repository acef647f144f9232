import Kademlia
import NIOCore
import PointSub
import Testing

extension Array where Element: Sendable {
    fileprivate func asyncForEach(_ body: (Element) async -> Void) async {
        for element in self { await body(element) }
    }
}

/// DHT nodes on real hosts (in-memory transport): bootstrap, peer routing, providers, values,
/// and the server's limits.
@Suite(.serialized, .timeLimit(.minutes(2)))
struct DHTNetworkTests {
    /// `size` hosts with a DHT server each, bootstrapped in a chain from node 0 (each knows only
    /// node 0's address), run `body`, shut down.
    static func withNetwork<T: Sendable>(
        size: Int, seed: UInt64, configure: (Int, inout KademliaDHT.Configuration) -> Void = { _, _ in },
        _ body: ([P2PHost], [KademliaDHT]) async throws -> T
    ) async throws -> T {
        var hosts: [P2PHost] = []
        var dhts: [KademliaDHT] = []
        func shutdown() async {
            for dht in dhts { dht.stop() }
            for host in hosts { await host.shutdown(gracePeriod: .zero) }
        }
        for index in 0..<size {
            var dhtConfiguration = KademliaDHT.Configuration()
            dhtConfiguration.refreshInterval = nil
            dhtConfiguration.requestTimeout = .seconds(5)
            if index > 0 { dhtConfiguration.bootstrapPeers = [hosts[0].addresses[0]] }
            configure(index, &dhtConfiguration)
            let dht = KademliaDHT(configuration: dhtConfiguration)
            let host = P2PHost(
                identity: .ed25519(seed: seed + UInt64(index)),
                configuration: .defaults {
                    $0.transports = [.memory]
                    $0.listenAddresses = [Multiaddr("/memory/0")]
                    $0.services = [IdentifyService(), dht]
                })
            hosts.append(host)
            dhts.append(dht)
            do {
                try await host.start()
            } catch {
                await shutdown()
                throw error
            }
        }
        for dht in dhts.dropFirst() { await dht.bootstrap() }
        // A second round, all at once: the early nodes learn of the later ones.
        await withTaskGroup(of: Void.self) { group in
            for dht in dhts { group.addTask { await dht.refresh() } }
        }
        do {
            let result = try await body(hosts, dhts)
            await shutdown()
            return result
        } catch {
            await shutdown()
            throw error
        }
    }

    @Test func peersAreFoundThroughTheDHT() async throws {
        try await Self.withNetwork(size: 14, seed: 7000) { hosts, dhts in
            for dht in dhts { #expect(!dht.routingTablePeers.isEmpty) }
            for i in 0..<10 {
                let asker = (i * 5 + 3) % hosts.count
                let target = (i * 7 + 11) % hosts.count
                guard asker != target else { continue }
                // Forget what identify and earlier lookups taught: the DHT must find it.
                hosts[asker].peerstore.removeAddresses(for: hosts[target].peerID)
                let addresses = try await dhts[asker].findPeer(hosts[target].peerID)
                #expect(addresses.contains(hosts[target].listenAddresses[0]), "lookup \(i)")
                let connection = try await hosts[asker].connect(to: hosts[target].peerID, addresses: addresses)
                #expect(connection.remotePeer == hosts[target].peerID)
            }
        }
    }

    /// Peer routing in the host: a stream to a peer known by ID only goes through the DHT.
    @Test func newStreamToAPeerIDAloneAsksTheDHT() async throws {
        try await Self.withNetwork(size: 8, seed: 7300) { hosts, _ in
            let asker = hosts[6]
            let target = hosts[3]
            await asker.connections(to: target.peerID).asyncForEach { await $0.close(graceful: false) }
            asker.peerstore.removeAddresses(for: target.peerID)
            #expect(asker.peerstore.addresses(for: target.peerID).isEmpty)
            let stream = try await asker.newStream(to: target.peerID, protocols: [IdentifyService.protocolID])
            #expect(stream.remotePeer == target.peerID)
            await stream.close()
        }
    }

    @Test func providersAndValuesAreFoundByOthers() async throws {
        try await Self.withNetwork(size: 12, seed: 7100) { hosts, dhts in
            let key = Array("some content".utf8)
            let took = try await dhts[3].provide(key)
            #expect(took > 0)
            let providers = try await dhts[10].findProviders(key)
            #expect(providers.map(\.peer) == [hosts[3].peerID])
            #expect(providers.first?.addresses.isEmpty == false)

            // A /pk record: node 5's public key under its peer ID.
            let pkKey = Array("/pk/".utf8) + hosts[5].peerID.bytes
            let stored = try await dhts[5].putValue(hosts[5].identity.publicKey.marshal(), for: pkKey)
            #expect(stored > 0)
            let value = try await dhts[9].getValue(pkKey)
            #expect(try PublicKey(marshaled: value) == hosts[5].identity.publicKey)

            // A record that does not validate is refused locally and by servers.
            await #expect(throws: KademliaError.self) {
                try await dhts[5].putValue(hosts[6].identity.publicKey.marshal(), for: pkKey)
            }
            let forged = KadMessage(
                type: .putValue, key: pkKey,
                record: .init(key: pkKey, value: hosts[6].identity.publicKey.marshal()))
            await #expect(throws: (any Error).self) { try await dhts[1].request(forged, to: hosts[2].peerID) }
            // The server closed only that stream: it still answers.
            let pong = try await dhts[1].request(KadMessage(type: .ping), to: hosts[2].peerID)
            #expect(pong.type == .ping)
        }
    }

    @Test func malformedAndOversizeMessagesCloseOnlyThatStream() async throws {
        try await Self.withNetwork(size: 2, seed: 7200) { hosts, dhts in
            let server = hosts[0]
            let client = hosts[1]
            // Garbage: not protobuf.
            let bad = try await client.newStream(to: server.peerID, protocols: ["/ipfs/kad/1.0.0"])
            try await bad.writeLengthPrefixed([0xFF, 0xFF, 0xFF])
            await #expect(throws: (any Error).self) { _ = try await bad.readLengthPrefixed(maxLength: 1 << 20) }
            // A length prefix over the limit (4 MiB): refused before anything is buffered.
            let big = try await client.newStream(to: server.peerID, protocols: ["/ipfs/kad/1.0.0"])
            var prefix = ByteBuffer()
            prefix.writeVarint(UInt64(64 << 20))
            try await big.write(prefix)
            await #expect(throws: (any Error).self) { _ = try await big.readLengthPrefixed(maxLength: 1 << 20) }
            // The node still answers others.
            let pong = try await dhts[1].request(KadMessage(type: .ping), to: server.peerID)
            #expect(pong.type == .ping)
        }
    }
}

extension DHTNetworkTests {
    /// Our own provider records carry the addresses we advertise (announced, confirmed observed,
    /// circuit addresses), not our raw listen addresses: a node behind a NAT is found where it
    /// can be reached.
    @Test func ownProviderRecordCarriesTheAdvertisedAddresses() async throws {
        let announced = Multiaddr("/ip4/203.0.113.9/tcp/4001")
        var hosts: [P2PHost] = []
        var dhts: [KademliaDHT] = []
        defer {
            let (hosts, dhts) = (hosts, dhts)
            Task {
                for dht in dhts { dht.stop() }
                for host in hosts { await host.shutdown(gracePeriod: .zero) }
            }
        }
        for index in 0..<2 {
            var dhtConfiguration = KademliaDHT.Configuration()
            dhtConfiguration.refreshInterval = nil
            if index > 0 { dhtConfiguration.bootstrapPeers = [hosts[0].addresses[0]] }
            let dht = KademliaDHT(configuration: dhtConfiguration)
            let host = P2PHost(identity: .ed25519(seed: 7500 + UInt64(index)), configuration: .defaults {
                $0.transports = [.memory]
                $0.listenAddresses = [Multiaddr("/memory/0")]
                if index == 0 { $0.announceAddresses = [announced] }
                $0.services = [IdentifyService(), dht]
            })
            try await host.start()
            hosts.append(host)
            dhts.append(dht)
        }
        await dhts[1].bootstrap()
        let key = Array("behind a NAT".utf8)
        _ = try await dhts[0].provide(key)
        // Asked directly, the provider answers with itself at what it advertises (a lookup
        // would merge in the addresses the asker knows from elsewhere).
        let answer = try await dhts[1].request(KadMessage(type: .getProviders, key: key), to: hosts[0].peerID)
        #expect(answer.providerPeers.map(\.id) == [hosts[0].peerID.bytes])
        #expect(answer.providerPeers.first?.addresses == [announced])
        let found = try await dhts[1].findProviders(key)
        #expect(found.first?.addresses.contains(announced) == true)
    }
}
