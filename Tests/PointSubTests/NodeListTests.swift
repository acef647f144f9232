import NIOConcurrencyHelpers
import NIOCore
import PointSub
import Testing

// Everything here is fileprivate: other test files of this target are written in parallel.

private let proto = "/pointsub/rr-test/1.0.0"

private func peer(_ seed: UInt64) -> PeerID {
    PrivateKey.ed25519(seed: seed).peerID
}

/// A clock the test moves by hand.
private final class ManualClock: Sendable {
    let start = ContinuousClock.now
    private let offset = NIOLockedValueBox(Duration.zero)

    var now: ContinuousClock.Instant { start + offset.withLockedValue { $0 } }

    func advance(_ duration: Duration) {
        offset.withLockedValue { $0 += duration }
    }
}

/// SplitMix64: reproducible random requests (and chunk sizes in WireTests).
struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}


/// The XOR of two digests, compared byte by byte from the first (big-endian).
private func closer(_ target: [UInt8], _ a: PeerID, _ b: PeerID) -> Bool {
    closer(target, referenceSHA256(a.bytes), referenceSHA256(b.bytes))
}

private func closer(_ target: [UInt8], _ da: [UInt8], _ db: [UInt8]) -> Bool {
    for i in 0..<32 where da[i] ^ target[i] != db[i] ^ target[i] {
        return da[i] ^ target[i] < db[i] ^ target[i]
    }
    return false
}

private func expectedXOROrder(_ request: [UInt8], _ peers: [PeerID]) -> [PeerID] {
    let target = referenceSHA256(request)
    let hashes = Dictionary(uniqueKeysWithValues: peers.map { ($0, referenceSHA256($0.bytes)) })
    return peers.sorted { closer(target, hashes[$0]!, hashes[$1]!) }
}

@Suite struct NodeListTests {
    @Test func referenceSHA256MatchesKnownVectors() {
        let hex = { (bytes: [UInt8]) in bytes.map { String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined() }
        #expect(hex(referenceSHA256(Array("abc".utf8))) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(hex(referenceSHA256([])) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        #expect(hex(referenceSHA256(Array(repeating: UInt8(ascii: "a"), count: 1000))).hasPrefix("41edece42d63e8d9bf515a9ba6932e1c"))
    }

    @Test func xorOrderingMatchesAnIndependentComputation() throws {
        let list = NodeList(localPeer: peer(1000))
        let peers = (1...40).map { peer($0) }
        for p in peers { try list.add(p, protocol: proto) }
        var random = SeededGenerator(state: 42)
        for _ in 0..<200 {
            let request = (0..<Int.random(in: 0...64, using: &random)).map { _ in UInt8.random(in: 0...255, using: &random) }
            let expected = expectedXOROrder(request, peers)
            #expect(list.orderedByXOR(request: request, protocol: proto) == expected)
            #expect(list.orderedByXOR(request: ByteBuffer(bytes: request), protocol: proto) == expected)
            #expect(list.orderedByXOR(request: request[...], protocol: proto) == expected)
        }
        #expect(list.orderedByXOR(request: [1, 2, 3], protocol: "/other") == [])
    }

    @Test func sameRequestSameFirstNodeAndRequestsSpread() throws {
        let list = NodeList(localPeer: peer(1000))
        let peers = (1...10).map { peer($0) }
        for p in peers { try list.add(p, protocol: proto) }
        var firsts: [PeerID: Int] = [:]
        for i in 0..<1000 {
            let request = Array("request \(i)".utf8)
            let first = list.orderedByXOR(request: request, protocol: proto).first!
            #expect(list.orderedByXOR(request: request, protocol: proto).first == first)
            firsts[first, default: 0] += 1
        }
        #expect(firsts.count == peers.count, "every node is nearest for some request")
        #expect(firsts.values.allSatisfy { $0 > 40 }, "\(firsts.values.sorted())")
        // Removing a node only moves the requests it was first for.
        let request = Array("request 1".utf8)
        let order = list.orderedByXOR(request: request, protocol: proto)
        list.remove(order[3], protocol: proto)
        #expect(list.orderedByXOR(request: request, protocol: proto) == order.filter { $0 != order[3] })
    }

    @Test func membership() throws {
        let list = NodeList(localPeer: peer(1000))
        let (a, b, c) = (peer(1), peer(2), peer(3))
        #expect(try list.add(a, protocol: proto))
        #expect(try list.add(b, protocol: proto))
        #expect(try list.add(a, protocol: proto) == false, "adding twice is a no-op")
        try list.add(c, protocol: proto)
        try list.add(a, protocol: "/other")
        #expect(list.nodes(protocol: proto) == [a, b, c])
        #expect(list.nodes(protocol: "/other") == [a])
        #expect(list.protocols == ["/other", proto].sorted())
        #expect(list.contains(b, protocol: proto))
        #expect(!list.contains(b, protocol: "/other"))

        #expect(list.remove(b, protocol: proto))
        #expect(!list.remove(b, protocol: proto))
        #expect(list.nodes(protocol: proto) == [a, c])
        list.remove(a)
        #expect(list.nodes(protocol: proto) == [c])
        #expect(list.nodes(protocol: "/other") == [])
        list.clear(protocol: proto)
        #expect(list.nodes(protocol: proto) == [])
        #expect(list.orderedByXOR(request: [1], protocol: proto) == [])
        #expect(list.orderedByRTT(protocol: proto) == [])
        #expect(list.protocols == [])
        list.clear(protocol: "/never")
    }

    @Test func refusesOurOwnPeerID() throws {
        let local = peer(1000)
        let list = NodeList(localPeer: local)
        #expect(throws: NodeListError(.localPeer, "refusing to add our own peer ID \(local) as a node")) {
            try list.add(local, protocol: proto)
        }
        do {
            try list.add(local, protocol: proto)
            Issue.record("expected an error")
        } catch {
            #expect(error.code == .localPeer)
        }
        #expect(list.nodes(protocol: proto) == [])
    }

    @Test func coolDownDoublesAndIsCapped() throws {
        #expect(NodeList.coolDown(afterFailures: 1) == .seconds(1))
        #expect(NodeList.coolDown(afterFailures: 2) == .seconds(2))
        #expect(NodeList.coolDown(afterFailures: 3) == .seconds(4))
        #expect(NodeList.coolDown(afterFailures: 10) == .seconds(512))
        #expect(NodeList.coolDown(afterFailures: 11) == .seconds(900))
        #expect(NodeList.coolDown(afterFailures: 1000) == .seconds(900))
        #expect(NodeList.maxCoolDown == .seconds(15 * 60))

        let clock = ManualClock()
        let list = NodeList(localPeer: peer(1000), now: { clock.now })
        let (a, b) = (peer(1), peer(2))
        try list.add(a, protocol: proto)
        try list.add(b, protocol: proto)
        let request = Array("r".utf8)

        var expected: Duration = .seconds(1)
        for failures in 1...14 {
            list.markFailure(a, protocol: proto)
            let status = try #require(list.status(of: a, protocol: proto))
            #expect(status.consecutiveFailures == failures)
            #expect(status.availableAt == clock.now + expected)
            #expect(list.orderedByXOR(request: request, protocol: proto) == [b])
            #expect(list.orderedByRTT(protocol: proto) == [b])
            #expect(list.nodes(protocol: proto).contains(a), "cooling down is still a member")
            clock.advance(expected - .milliseconds(1))
            #expect(list.orderedByXOR(request: request, protocol: proto) == [b], "still cooling after \(failures)")
            clock.advance(.milliseconds(1))
            #expect(Set(list.orderedByXOR(request: request, protocol: proto)) == [a, b], "back after \(failures)")
            #expect(list.status(of: a, protocol: proto)?.availableAt == nil)
            expected = min(expected * 2, .seconds(900))
        }
        // Success resets: the next failure cools down for 1 s again.
        list.markSuccess(a, protocol: proto)
        #expect(list.status(of: a, protocol: proto)?.consecutiveFailures == 0)
        list.markFailure(a, protocol: proto)
        #expect(list.status(of: a, protocol: proto)?.availableAt == clock.now + .seconds(1))
        list.markSuccess(a, protocol: proto)
        #expect(Set(list.orderedByXOR(request: request, protocol: proto)) == [a, b], "success ends the cool-down at once")
        // Failures count per protocol; unknown peers and protocols are ignored.
        try list.add(a, protocol: "/other")
        list.markFailure(a, protocol: "/other")
        #expect(list.status(of: a, protocol: proto)?.consecutiveFailures == 0)
        list.markFailure(peer(99), protocol: proto)
        #expect(list.status(of: peer(99), protocol: proto) == nil)
    }

    @Test func whenAllAreCoolingDownTheSoonestAvailableComeFirst() throws {
        let clock = ManualClock()
        let list = NodeList(localPeer: peer(1000), now: { clock.now })
        let (a, b, c) = (peer(1), peer(2), peer(3))
        for p in [a, b, c] { try list.add(p, protocol: proto) }
        for _ in 0..<3 { list.markFailure(a, protocol: proto) }  // 4 s
        list.markFailure(b, protocol: proto)  // 1 s
        list.markFailure(b, protocol: proto)  // 2 s
        #expect(list.orderedByRTT(protocol: proto) == [c])
        clock.advance(.milliseconds(500))
        list.markFailure(c, protocol: proto)  // 1 s from now: 1.5 s from the start
        #expect(list.orderedByXOR(request: [7], protocol: proto) == [c, b, a])
        #expect(list.orderedByRTT(protocol: proto) == [c, b, a])
        clock.advance(.seconds(1))
        #expect(list.orderedByXOR(request: [7], protocol: proto) == [c])
        // Equal availability: the list's own order decides.
        let ties = NodeList(localPeer: peer(1000), now: { clock.now })
        for p in [a, b, c] {
            try ties.add(p, protocol: proto)
            ties.markFailure(p, protocol: proto)
        }
        #expect(ties.orderedByXOR(request: [9], protocol: proto) == expectedXOROrder([9], [a, b, c]))
    }

    @Test func rttOrdering() throws {
        let local = peer(1000)
        let list = NodeList(localPeer: local)
        let peers = (1...6).map { peer($0) }
        for p in peers { try list.add(p, protocol: proto) }
        list.recordRTT(peer: peers[0], .milliseconds(30))
        list.recordRTT(peer: peers[1], .milliseconds(10))
        list.recordRTT(peer: peers[2], .milliseconds(20))
        list.recordRTT(peer: peers[3], .milliseconds(20))
        list.recordRTT(peer: peer(99), .milliseconds(1))  // not a node: ignored
        #expect(list.rtt(of: peer(99)) == nil)

        // Ties (peers 2 and 3) and the unmeasured (4 and 5) by XOR distance to our own peer ID's hash.
        let localHash = referenceSHA256(local.bytes)
        let tie = [peers[2], peers[3]].sorted { closer(localHash, $0, $1) }
        let unmeasured = [peers[4], peers[5]].sorted { closer(localHash, $0, $1) }
        #expect(list.orderedByRTT(protocol: proto) == [peers[1]] + tie + [peers[0]] + unmeasured)
        // …or to the request's.
        let requestHash = referenceSHA256([5, 5])
        let tieR = [peers[2], peers[3]].sorted { closer(requestHash, $0, $1) }
        let unmeasuredR = [peers[4], peers[5]].sorted { closer(requestHash, $0, $1) }
        #expect(list.orderedByRTT(request: [5, 5], protocol: proto) == [peers[1]] + tieR + [peers[0]] + unmeasuredR)

        // Smoothing: 7/8 old + 1/8 new.
        list.recordRTT(peer: peers[0], .milliseconds(110))
        #expect(list.rtt(of: peers[0]) == .milliseconds(40))
        #expect(list.status(of: peers[0], protocol: proto)?.rtt == .milliseconds(40))
        for _ in 0..<100 { list.recordRTT(peer: peers[0], .milliseconds(1)) }
        #expect(list.orderedByRTT(protocol: proto).first == peers[0])

        // Cooling nodes are left out; removal forgets the measurement.
        list.markFailure(peers[0], protocol: proto)
        #expect(!list.orderedByRTT(protocol: proto).contains(peers[0]))
        list.remove(peers[1], protocol: proto)
        #expect(list.rtt(of: peers[1]) == nil)
        #expect(list.orderedByRTT(protocol: proto).first == tie[0])
    }

    @Test func safeUnderConcurrentUse() async throws {
        let list = NodeList(localPeer: peer(1000))
        let peers = (1...32).map { peer($0) }
        await withTaskGroup(of: Void.self) { group in
            for t in 0..<16 {
                group.addTask {
                    var random = SeededGenerator(state: UInt64(t))
                    for i in 0..<2000 {
                        let p = peers[Int.random(in: 0..<peers.count, using: &random)]
                        let protocolID = i % 3 == 0 ? "/other" : proto
                        switch Int.random(in: 0..<8, using: &random) {
                        case 0, 1: _ = try? list.add(p, protocol: protocolID)
                        case 2: list.remove(p, protocol: protocolID)
                        case 3: list.recordRTT(peer: p, .microseconds(Int.random(in: 1...10_000, using: &random)))
                        case 4: list.markFailure(p, protocol: protocolID)
                        case 5: list.markSuccess(p, protocol: protocolID)
                        case 6:
                            let order = list.orderedByXOR(request: [UInt8(truncatingIfNeeded: i)], protocol: protocolID)
                            #expect(Set(order).count == order.count)
                        default:
                            let order = list.orderedByRTT(protocol: protocolID)
                            #expect(Set(order).count == order.count)
                        }
                    }
                }
            }
        }
        for protocolID in [proto, "/other"] {
            let nodes = list.nodes(protocol: protocolID)
            #expect(Set(nodes).count == nodes.count)
            for p in nodes { list.markSuccess(p, protocol: protocolID) }
            #expect(Set(list.orderedByXOR(request: [1], protocol: protocolID)) == Set(nodes))
            #expect(Set(list.orderedByRTT(protocol: protocolID)) == Set(nodes))
        }
    }
}
