import Foundation
import Kademlia
import PointSub
import Testing

/// IPNS values, provider republishing, the run-time mode switch and bad input, on DHT nodes on
/// real hosts (in-memory transport).
extension DHTNetworkTests {
    static let kad = "/ipfs/kad/1.0.0"

    /// Polls `condition` every 20 ms until it holds or `timeout` passes.
    static func until(_ timeout: Duration = .seconds(10), _ condition: () async throws -> Bool) async throws -> Bool {
        let deadline = ContinuousClock.now + timeout
        for _ in 0..<10_000 {
            if try await condition() { return true }
            guard ContinuousClock.now < deadline else { break }
            try await Task.sleep(for: .milliseconds(20))
        }
        return false
    }

    // MARK: - IPNS

    @Test func ipnsRecordsAreStoredReadAndOnlyReplacedByNewerOnes() async throws {
        try await Self.withNetwork(size: 8, seed: 7400) { hosts, dhts in
            let owner = hosts[2]
            let key = IPNSRecord.routingKey(for: owner.peerID)
            let eol = Date().addingTimeInterval(3600)
            let first = try IPNSRecord.make(value: "/ipfs/bafkqaaa", sequence: 1, validity: eol, ttl: .seconds(60), key: owner.identity)
            #expect(try await dhts[2].putValue(first.encoded(), for: key) > 0)
            let read = try await dhts[6].getValue(key)
            #expect(try IPNSRecord(decoding: read).signedSequence == 1)

            // A newer one replaces it everywhere; the older one is then refused, locally and by servers.
            let second = try IPNSRecord.make(value: "/ipfs/bafkqaab", sequence: 2, validity: eol, ttl: .seconds(60), key: owner.identity)
            #expect(try await dhts[2].putValue(second.encoded(), for: key) > 0)
            let newest = try await dhts[7].getValue(key)
            #expect(try IPNSRecord(decoding: newest).signedValue == Array("/ipfs/bafkqaab".utf8))
            await #expect(throws: KademliaError.self) { try await dhts[2].putValue(first.encoded(), for: key) }
            let replay = KadMessage(type: .putValue, key: key, record: .init(key: key, value: first.encoded()))
            let holder = try #require(hosts.first { $0.peerID != owner.peerID && $0.peerID != hosts[1].peerID })
            await #expect(throws: (any Error).self) { try await dhts[1].request(replay, to: holder.peerID) }
            let kept = try await dhts[1].request(KadMessage(type: .getValue, key: key), to: holder.peerID)
            #expect(kept.record?.value == second.encoded())

            // Someone else's signature, or a record for another name, is refused.
            let forged = try IPNSRecord.make(value: "/ipfs/evil", sequence: 9, validity: eol, ttl: .seconds(60), key: hosts[3].identity)
            await #expect(throws: KademliaError.self) { try await dhts[3].putValue(forged.encoded(), for: key) }
            let sent = KadMessage(type: .putValue, key: key, record: .init(key: key, value: forged.encoded()))
            await #expect(throws: (any Error).self) { try await dhts[3].request(sent, to: holder.peerID) }
            // The server closed only those streams.
            #expect(try await dhts[1].request(KadMessage(type: .ping), to: holder.peerID).type == .ping)
        }
    }

    @Test func anExpiredIPNSRecordIsNeitherStoredNorServed() async throws {
        try await Self.withNetwork(size: 3, seed: 7450) { hosts, dhts in
            let key = IPNSRecord.routingKey(for: hosts[1].peerID)
            let past = try IPNSRecord.make(
                value: "/ipfs/bafkqaaa", sequence: 1, validity: Date().addingTimeInterval(-1), ttl: .seconds(1), key: hosts[1].identity)
            await #expect(throws: KademliaError.self) { try await dhts[1].putValue(past.encoded(), for: key) }
            // One that expires while stored: dropped when read.
            let short = try IPNSRecord.make(
                value: "/ipfs/bafkqaaa", sequence: 1, validity: Date().addingTimeInterval(1.5), ttl: .seconds(1), key: hosts[1].identity)
            let message = KadMessage(type: .putValue, key: key, record: .init(key: key, value: short.encoded()))
            _ = try await dhts[1].request(message, to: hosts[0].peerID)
            let now = try await dhts[2].request(KadMessage(type: .getValue, key: key), to: hosts[0].peerID)
            #expect(now.record?.value == short.encoded())
            try await Task.sleep(for: .seconds(2))
            let later = try await dhts[2].request(KadMessage(type: .getValue, key: key), to: hosts[0].peerID)
            #expect(later.record == nil)
        }
    }

    // MARK: - Republishing

    /// Provider records live 1 s here and the provider republishes every 300 ms: the record
    /// outlives its TTL while the provider runs, and is gone a TTL after `stop()`.
    @Test func providedKeysAreRepublishedUntilStop() async throws {
        try await Self.withNetwork(
            size: 4, seed: 7500,
            configure: { index, configuration in
                configuration.providerTTL = .seconds(1)
                configuration.providerRepublishInterval = index == 2 ? .milliseconds(300) : nil
            }
        ) { hosts, dhts in
            let key = Array("republished content".utf8)
            var events = dhts[2].events().makeAsyncIterator()
            #expect(try await dhts[2].provide(key) > 0)
            #expect(dhts[2].providedKeys == [key])
            func providers() async throws -> [[UInt8]] {
                try await dhts[3].request(KadMessage(type: .getProviders, key: key), to: hosts[0].peerID).providerPeers.map(\.id)
            }
            var republished = 0
            while republished < 3, let event = await events.next() {
                if case .republished(keys: 1, let announcements) = event, announcements > 0 { republished += 1 }
            }
            #expect(republished == 3)
            try await Task.sleep(for: .milliseconds(1200))
            #expect(try await providers() == [hosts[2].peerID.bytes], "still there after more than a TTL")

            dhts[2].stop()
            var ended = false
            for _ in 0..<100 where await events.next() == nil {
                ended = true
                break
            }
            #expect(ended, "stop ends the events")
            var late = dhts[2].events().makeAsyncIterator()
            #expect(await late.next() == nil, "and those asked for later")
            let gone = try await Self.until(.seconds(5)) { try await providers().isEmpty }
            #expect(gone, "expired a TTL after the republishing stopped")

            // stopProviding: the key is no longer announced.
            #expect(try await dhts[1].provide(key) > 0)
            dhts[1].stopProviding(key)
            #expect(dhts[1].providedKeys.isEmpty)
            #expect(await dhts[1].republishProviders() == 0)
        }
    }

    // MARK: - Mode switch

    @Test func modeSwitchesAtRunTime() async throws {
        try await Self.withNetwork(size: 3, seed: 7600) { hosts, dhts in
            let (node, other) = (dhts[1], dhts[2])
            var events = node.events().makeAsyncIterator()
            #expect(node.mode == .server)
            #expect(try await Self.until { other.routingTablePeers.contains(hosts[1].peerID) })

            try node.setMode(.client)
            #expect(await events.next() == .modeChanged(.client))
            #expect(node.mode == .client)
            #expect(!hosts[1].supportedProtocols.contains(Self.kad))
            // Identify push told the others: they drop it from their tables and it answers no more.
            #expect(try await Self.until { !other.routingTablePeers.contains(hosts[1].peerID) })
            #expect(try await Self.until { !dhts[0].routingTablePeers.contains(hosts[1].peerID) })
            #expect(!hosts[2].peerstore.protocols(for: hosts[1].peerID).contains(Self.kad))
            await #expect(throws: (any Error).self) { try await other.request(KadMessage(type: .ping), to: hosts[1].peerID) }
            // A client still asks.
            let found = try await node.closestPeers(to: Array("anything".utf8))
            #expect(!found.isEmpty)
            #expect(!found.contains(hosts[1].peerID))
            // A peer in client mode answering nothing does not enter tables even when seen again.
            _ = try? await other.closestPeers(to: hosts[1].peerID.bytes)
            #expect(!other.routingTablePeers.contains(hosts[1].peerID))

            try node.setMode(.server)
            #expect(await events.next() == .modeChanged(.server))
            #expect(hosts[1].supportedProtocols.contains(Self.kad))
            #expect(try await Self.until { other.routingTablePeers.contains(hosts[1].peerID) })
            #expect(try await other.request(KadMessage(type: .ping), to: hosts[1].peerID).type == .ping)
            try node.setMode(.server)  // no change, no event
            try node.setMode(.client)
            #expect(await events.next() == .modeChanged(.client))
        }
    }

    @Test func aNodeConfiguredAsClientAdvertisesNothingUntilSwitched() async throws {
        try await Self.withNetwork(
            size: 3, seed: 7650, configure: { index, configuration in if index == 2 { configuration.mode = .client } }
        ) { hosts, dhts in
            #expect(!hosts[2].supportedProtocols.contains(Self.kad))
            #expect(!dhts[0].routingTablePeers.contains(hosts[2].peerID))
            #expect(!dhts[2].routingTablePeers.isEmpty, "a client fills its own table")
            try dhts[2].setMode(.server)
            #expect(try await Self.until { dhts[0].routingTablePeers.contains(hosts[2].peerID) })
        }
    }

    // MARK: - Bad input

    /// Many providers for one key: the newest `maxProvidersPerKey` are kept. One peer announcing
    /// many keys: the store stops at its key limit (the stream that broke it is closed). The
    /// per-peer rate closes a stream that floods. Honest peers are still served.
    @Test func providerFloodsAreBounded() async throws {
        try await Self.withNetwork(
            size: 4, seed: 7700,
            configure: { index, configuration in
                configuration.maxProviderKeys = 16
                configuration.maxProvidersPerKey = 2
                configuration.requestsPerPeerPerSecond = index == 0 ? 40 : 50
            }
        ) { hosts, dhts in
            let server = hosts[0]
            let flooder = hosts[1]
            let me = KadMessage.Peer(id: flooder.peerID.bytes, addresses: flooder.listenAddresses)
            // Many providers for one key: the newest 2 are kept.
            let key = Array("popular".utf8)
            func listed() async throws -> Set<[UInt8]> {
                let answer = try await dhts[3].request(KadMessage(type: .getProviders, key: key), to: server.peerID)
                return Set(answer.providerPeers.map(\.id))
            }
            for index in 1...3 {
                let announcement = KadMessage(
                    type: .addProvider, key: key, providerPeers: [.init(id: hosts[index].peerID.bytes, addresses: [])])
                _ = try await dhts[index].request(announcement, to: server.peerID)
                #expect(try await Self.until { try await listed().contains(hosts[index].peerID.bytes) })
            }
            // An announcement on behalf of another peer is ignored.
            let other = KadMessage.Peer(id: PeerID(publicKey: PrivateKey.ed25519(seed: 1).publicKey).bytes, addresses: [])
            _ = try await dhts[2].request(KadMessage(type: .addProvider, key: key, providerPeers: [other]), to: server.peerID)
            #expect(try await dhts[2].request(KadMessage(type: .ping), to: server.peerID).type == .ping)
            #expect(try await listed() == [hosts[2].peerID.bytes, hosts[3].peerID.bytes])

            // One peer announcing many keys: the store stops at its key limit.
            let stream = try await flooder.newStream(to: server.peerID, protocols: [Self.kad])
            do {
                for index in 0..<64 {
                    let key = Array("flood \(index)".utf8)
                    try await stream.writeLengthPrefixed(KadMessage(type: .addProvider, key: key, providerPeers: [me]).encoded())
                }
                // The server closes the stream at the first key beyond the limit: the read sees it.
                _ = try await stream.readLengthPrefixed(maxLength: 1 << 20)
            } catch {}
            #expect(try await Self.until { dhts[0].storeSizes.providerKeys == 16 })
            #expect(dhts[0].storeSizes.providerKeys == 16)

            // Requests beyond the per-peer rate (burst 80) close the stream.
            let fast = try await flooder.newStream(to: server.peerID, protocols: [Self.kad])
            var answered = 0
            do {
                for _ in 0..<200 {
                    try await fast.writeLengthPrefixed(KadMessage(type: .ping).encoded())
                    guard try await fast.readLengthPrefixed(maxLength: 1 << 20) != nil else { break }
                    answered += 1
                }
            } catch {}
            #expect(answered >= 40 && answered < 200, "\(answered)")

            // The honest peer is still served.
            #expect(try await dhts[2].request(KadMessage(type: .ping), to: server.peerID).type == .ping)
        }
    }

    /// Oversize records and messages, records failing validation: typed errors locally, the
    /// offending stream closed by the server, the store unchanged, other requests answered.
    @Test func oversizeAndInvalidRecordsAreRefused() async throws {
        try await Self.withNetwork(size: 2, seed: 7800) { hosts, dhts in
            let server = hosts[0]
            let client = dhts[1]
            let before = dhts[0].storeSizes.records
            let pkKey = Array("/pk/".utf8) + hosts[1].peerID.bytes
            // A value over maxValueSize (64 KiB) in a message under the message limit.
            let big = KadMessage(type: .putValue, key: pkKey, record: .init(key: pkKey, value: [UInt8](repeating: 1, count: 70_000)))
            await #expect(throws: (any Error).self) { try await client.request(big, to: server.peerID) }
            #expect(throws: KademliaError.self) { try KadMessage(decoding: big.encoded()) }
            // A key over maxKeySize.
            let longKey = [UInt8](repeating: 0x2F, count: 2000)
            await #expect(throws: (any Error).self) { try await client.request(KadMessage(type: .getValue, key: longKey), to: server.peerID) }
            // Records that fail validation: /pk with another key, /ipns garbage and oversize, unknown namespace.
            let ipnsKey = IPNSRecord.routingKey(for: hosts[1].peerID)
            let invalid: [KadMessage.Record] = [
                .init(key: pkKey, value: hosts[0].identity.publicKey.marshal()),
                .init(key: ipnsKey, value: [0x4A, 0x01, 0x00]),
                .init(key: ipnsKey, value: [UInt8](repeating: 0, count: 20_000)),
                .init(key: Array("/other/x".utf8), value: [1]),
            ]
            for record in invalid {
                await #expect(throws: KademliaError.self) { try await client.putValue(record.value, for: record.key) }
                let message = KadMessage(type: .putValue, key: record.key, record: record)
                await #expect(throws: (any Error).self) { try await client.request(message, to: server.peerID) }
            }
            #expect(dhts[0].storeSizes.records == before)
            // The typed error of the validators.
            let refusal = #expect(throws: KademliaError.self) {
                try IPNSValidator().validate(key: ipnsKey, value: [UInt8](repeating: 0, count: 20_000))
            }
            #expect(refusal?.code == .limitExceeded)
            let pong = try await client.request(KadMessage(type: .ping), to: server.peerID)
            #expect(pong.type == .ping)
        }
    }
}

@Suite struct StoreLimitTests {
    @Test func providerStoreIsBoundedInKeysAndProvidersPerKey() throws {
        var store = ProviderStore(maxKeys: 3, maxProvidersPerKey: 2, ttl: .seconds(10))
        let now = ContinuousClock.now
        for index in 0..<3 { try store.add([UInt8(index)], for: [UInt8(index)], now: now) }
        #expect(throws: KademliaError.self) { try store.add([9], for: [9], now: now) }
        #expect(store.keyCount == 3)
        for peer in 10..<20 { try store.add([UInt8(peer)], for: [0], now: now) }
        #expect(store.providers(of: [0], now: now) == [[18], [19]])
        // Expired keys make room.
        try store.add([9], for: [9], now: now + .seconds(11))
        #expect(store.keyCount == 1)
        store.remove([9], for: [9])
        #expect(store.keyCount == 0)
    }

    @Test func recordStoreIsBoundedAndExpires() throws {
        var store = RecordStore(maxRecords: 2, ttl: .seconds(10))
        let now = ContinuousClock.now
        try store.put(.init(key: [1], value: [1]), now: now)
        try store.put(.init(key: [2], value: [2]), now: now)
        #expect(throws: KademliaError.self) { try store.put(.init(key: [3], value: [3]), now: now) }
        try store.put(.init(key: [2], value: [4]), now: now)
        #expect(store.get([2], now: now)?.value == [4])
        #expect(store.get([1], now: now + .seconds(11)) == nil)
        try store.put(.init(key: [3], value: [3]), now: now + .seconds(11))
        store.remove([3])
        #expect(store.count == 1, "key 2 expired but not yet dropped")
        store.expire(now: now + .seconds(11))
        #expect(store.count == 0)
    }
}
