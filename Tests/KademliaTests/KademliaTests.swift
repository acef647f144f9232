import Identity
import Multiformats
import Testing

@testable import Kademlia

private func peer(_ seed: Int) -> PeerID { PeerID(publicKey: PrivateKey.ed25519(seed: UInt64(seed)).publicKey) }

@Suite struct KadMessageTests {
    @Test func findNodeHasTheSpecsBytes() {
        // type = FIND_NODE (field 1, varint 4), key (field 2, 3 bytes).
        let message = KadMessage(type: .findNode, key: [0xAA, 0xBB, 0xCC])
        #expect(message.encoded() == [0x08, 0x04, 0x12, 0x03, 0xAA, 0xBB, 0xCC])
    }

    @Test func everyFieldRoundTrips() throws {
        let address = Multiaddr("/ip4/127.0.0.1/tcp/4001")
        let message = KadMessage(
            type: .getValue, key: Array("/pk/abc".utf8),
            record: .init(key: Array("/pk/abc".utf8), value: [1, 2, 3], timeReceived: "2026-12-07T00:00:00Z"),
            closerPeers: [.init(id: peer(1).bytes, addresses: [address], connection: .connected)],
            providerPeers: [.init(id: peer(2).bytes, addresses: [])])
        #expect(try KadMessage(decoding: message.encoded()) == message)
        for type in KadMessage.MessageType.allCases {
            #expect(try KadMessage(decoding: KadMessage(type: type).encoded()).type == type)
        }
    }

    @Test func unknownFieldsAndAddressesAreSkipped() throws {
        var writer = ProtobufWriter()
        writer.writeVarintField(1, 4)
        writer.writeVarintField(10, 7)  // clusterLevelRaw
        var peerWriter = ProtobufWriter()
        peerWriter.writeBytesField(1, peer(3).bytes)
        peerWriter.writeBytesField(2, [0xFF, 0xFF, 0x03])  // not a multiaddr we know
        writer.writeBytesField(8, peerWriter.bytes)
        writer.writeBytesField(77, [1, 2])
        let decoded = try KadMessage(decoding: writer.bytes)
        #expect(decoded.type == .findNode)
        #expect(decoded.closerPeers.count == 1 && decoded.closerPeers[0].addresses.isEmpty)
    }

    @Test func badInputIsATypedError() {
        func code(_ bytes: [UInt8], _ limits: KadMessage.Limits = .init()) -> KademliaError.Code? {
            do {
                _ = try KadMessage(decoding: bytes, limits: limits)
                return nil
            } catch {
                return error.code
            }
        }
        #expect(code([0x08, 0x09]) == .malformedMessage)  // unknown type 9
        #expect(code([0x0A, 0x01, 0x00]) == .malformedMessage)  // type with the bytes wire type
        #expect(code([0x12, 0x05, 0x01]) == .malformedMessage)  // truncated key
        #expect(code([0x42, 0x00]) == .malformedMessage)  // a peer without an ID
        var limits = KadMessage.Limits()
        limits.maxKeySize = 2
        #expect(code(KadMessage(type: .getValue, key: [1, 2, 3]).encoded(), limits) == .limitExceeded)
        limits = KadMessage.Limits()
        limits.maxPeers = 2
        let many = KadMessage(type: .findNode, closerPeers: (0..<3).map { .init(id: peer($0).bytes, addresses: []) })
        #expect(code(many.encoded(), limits) == .limitExceeded)
        limits = KadMessage.Limits()
        limits.maxValueSize = 4
        let big = KadMessage(type: .putValue, record: .init(key: [1], value: [UInt8](repeating: 7, count: 5)))
        #expect(code(big.encoded(), limits) == .limitExceeded)
        limits = KadMessage.Limits()
        limits.maxMessageSize = 3
        #expect(code(KadMessage(type: .findNode, key: [1, 2]).encoded(), limits) == .limitExceeded)
    }
}

@Suite struct KadKeyTests {
    @Test func distanceIsXorOfTheHashes() {
        let a = KadKey(peer: peer(1))
        let b = KadKey(peer: peer(2))
        #expect(a.distance(to: b) == b.distance(to: a))
        #expect(a.distance(to: a).leadingZeroBits == 256)
        #expect(a.distance(to: b).bytes == zip(a.bytes, b.bytes).map { $0 ^ $1 })
        // The key of a peer is SHA-256 of its ID's bytes, as for any other key.
        #expect(KadKey(peer: peer(1)) == KadKey(hashing: peer(1).bytes))
        let x = KadKey(rawBytes: [0b0001_0000] + [UInt8](repeating: 0, count: 31))
        let y = KadKey(rawBytes: [UInt8](repeating: 0, count: 32))
        #expect(x.commonPrefixLength(with: y) == 3)
    }
}

@Suite struct RoutingTableTests {
    @Test func aFullBucketNamesItsLeastRecentlySeenAndKeepsTheNewcomerAsReplacement() {
        let local = peer(0)
        var table = RoutingTable(local: local, bucketSize: 2)
        let t0 = ContinuousClock.now
        // Bucket 0 holds the keys whose first bit differs from ours: about half of all peers.
        let inBucket0 = (1...200).map(peer).filter { table.bucketIndex(of: KadKey(peer: $0)) == 0 }
        #expect(inBucket0.count >= 4)
        #expect(table.add(inBucket0[0], now: t0) == .added)
        #expect(table.add(inBucket0[1], now: t0 + .seconds(1)) == .added)
        #expect(table.add(inBucket0[2], now: t0 + .seconds(2)) == .bucketFull(leastRecentlySeen: inBucket0[0]))
        #expect(!table.contains(inBucket0[2]))
        // Seen again: the old entry moves to the end, and the other becomes the oldest.
        #expect(table.add(inBucket0[0], now: t0 + .seconds(3)) == .added)
        #expect(table.add(inBucket0[3], now: t0 + .seconds(4)) == .bucketFull(leastRecentlySeen: inBucket0[1]))
        // The oldest fails its check: the freshest replacement takes its place.
        let removed = table.remove(inBucket0[1])
        #expect(removed)
        #expect(table.contains(inBucket0[3]))
        #expect(table.count == 2)
        #expect(table.add(local, now: t0) == .isSelf)
    }

    @Test func closestIsOrderedByDistance() {
        var table = RoutingTable(local: peer(0))
        let peers = (1...300).map(peer)
        for p in peers { table.add(p, now: .now) }
        let target = KadKey(hashing: Array("some key".utf8))
        let closest = table.closest(to: target, count: 20)
        let brute = table.peers.sorted { KadKey(peer: $0).distance(to: target) < KadKey(peer: $1).distance(to: target) }
        #expect(closest == Array(brute.prefix(20)))
        #expect(table.count <= 300)
    }

    @Test func randomKeysLandInTheAskedBucket() {
        let table = RoutingTable(local: peer(0))
        for index in [0, 1, 5, 9] {
            let bytes = table.randomQueryKey(inBucket: index)
            #expect(bytes.map { table.localKey.commonPrefixLength(with: KadKey(hashing: $0)) } == index)
        }
        #expect(table.randomQueryKey(inBucket: 200, maxTries: 10) == nil)
    }
}

/// Lookups in an in-process network of routing tables (no sockets): the state machine alone.
@Suite struct KadLookupTests {
    struct Network {
        let peers: [PeerID]
        var tables: [PeerID: RoutingTable] = [:]
        var gone: Set<PeerID> = []

        init(size: Int) {
            peers = (1...size).map(peer)
            let keys = peers.map { KadKey(peer: $0) }
            let now = ContinuousClock.now
            for p in peers {
                var table = RoutingTable(local: p)
                for (other, key) in zip(peers, keys) where other != p { table.add(other, key: key, now: now) }
                tables[p] = table
            }
        }

        /// Runs a lookup of `target` from `origin`, answering each query from the asked peer's
        /// table; returns the lookup and the queries it sent.
        func lookup(_ target: KadKey, from origin: PeerID, alpha: Int = 3) -> KadLookup {
            var lookup = KadLookup(
                target: target, local: origin, seeds: tables[origin]!.closest(to: target, count: 20), alpha: alpha)
            var rounds = 0
            while !lookup.isFinished, rounds < 1000 {
                rounds += 1
                let asked = lookup.next() + lookup.waiting
                for p in Set(asked) {
                    if gone.contains(p) {
                        lookup.failed(p)
                    } else {
                        lookup.received(from: p, closer: tables[p]!.closest(to: target, count: 20))
                    }
                }
            }
            return lookup
        }
    }

    // 120 peers keep the debug-build test fast; the large networks are the benchmark's.
    @Test func everyPeerIsFoundAndTheKClosestAreExact() {
        let network = Network(size: 120)
        for i in 0..<20 {
            let origin = network.peers[(i * 13) % 120]
            let target = network.peers[(i * 29 + 5) % 120]
            guard origin != target else { continue }
            let lookup = network.lookup(KadKey(peer: target), from: origin)
            #expect(lookup.isFinished)
            #expect(lookup.closestSucceeded.first == target, "lookup \(i) did not find its target")
            let targetKey = KadKey(peer: target)
            let exact = network.peers.filter { $0 != origin }
                .map { ($0, KadKey(peer: $0).distance(to: targetKey)) }
                .sorted { $0.1 < $1.1 }.map(\.0)
            #expect(lookup.closestSucceeded == Array(exact.prefix(20)))
            #expect(lookup.queriesSent < 100)
        }
    }

    @Test func lookupsSucceedWithATenthOfThePeersGone() {
        var network = Network(size: 120)
        network.gone = Set(network.peers.enumerated().filter { $0.offset % 10 == 3 }.map(\.element))
        for i in 0..<20 {
            let origin = network.peers[(i * 17 + 1) % 120]
            let target = network.peers[(i * 31 + 2) % 120]
            guard origin != target, !network.gone.contains(origin), !network.gone.contains(target) else { continue }
            let lookup = network.lookup(KadKey(peer: target), from: origin)
            #expect(lookup.closestSucceeded.first == target, "lookup \(i) did not find its target")
            for p in lookup.closestSucceeded { #expect(!network.gone.contains(p)) }
        }
    }

    @Test func asksAtMostAlphaAtOnceAndEndsWhenNobodyIsLeft() {
        let seeds = (1...10).map(peer)
        var lookup = KadLookup(target: KadKey(peer: peer(99)), local: peer(0), seeds: seeds, k: 20, alpha: 3)
        let first = lookup.next()
        #expect(first.count == 3)
        let none = lookup.next()
        #expect(none.isEmpty, "three in flight already")
        lookup.failed(first[0])
        let one = lookup.next()
        #expect(one.count == 1)
        // Everyone fails: the lookup ends with nothing.
        for _ in 0..<20 {
            for p in lookup.waiting { lookup.failed(p) }
            _ = lookup.next()
        }
        #expect(lookup.isFinished)
        #expect(lookup.closestSucceeded.isEmpty)
        #expect(lookup.queriesSent == 10)
    }

    @Test func candidatesAreBounded() {
        var lookup = KadLookup(target: KadKey(peer: peer(0)), local: peer(1), seeds: [peer(2)], k: 2, alpha: 1, maxCandidates: 5)
        let asked = lookup.next()
        lookup.received(from: asked[0], closer: (10..<60).map(peer))
        var seen = 0
        for p in (10..<60).map(peer) where lookup.state(of: p) != nil { seen += 1 }
        #expect(seen <= 4)
        #expect(lookup.hops(to: asked[0]) == 0)
    }
}
