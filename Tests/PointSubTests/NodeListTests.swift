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

/// SplitMix64: reproducible random requests.
private struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// SHA-256 (FIPS 180-4), written here so the expected orderings do not depend on the code under test.
private func sha256(_ message: [UInt8]) -> [UInt8] {
    let k: [UInt32] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
        0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
        0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
        0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
        0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
        0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
        0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
    ]
    var h: [UInt32] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
    ]
    var padded = message + [0x80]
    while padded.count % 64 != 56 { padded.append(0) }
    let bitLength = UInt64(message.count) * 8
    for shift in stride(from: 56, through: 0, by: -8) { padded.append(UInt8(truncatingIfNeeded: bitLength >> UInt64(shift))) }
    func rotr(_ x: UInt32, _ n: UInt32) -> UInt32 { (x >> n) | (x << (32 - n)) }
    for blockStart in stride(from: 0, to: padded.count, by: 64) {
        var w = [UInt32](repeating: 0, count: 64)
        for t in 0..<16 {
            let i = blockStart + t * 4
            w[t] = UInt32(padded[i]) << 24 | UInt32(padded[i + 1]) << 16 | UInt32(padded[i + 2]) << 8 | UInt32(padded[i + 3])
        }
        for t in 16..<64 {
            let s0 = rotr(w[t - 15], 7) ^ rotr(w[t - 15], 18) ^ (w[t - 15] >> 3)
            let s1 = rotr(w[t - 2], 17) ^ rotr(w[t - 2], 19) ^ (w[t - 2] >> 10)
            w[t] = w[t - 16] &+ s0 &+ w[t - 7] &+ s1
        }
        var (a, b, c, d, e, f, g, hh) = (h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7])
        for t in 0..<64 {
            let s1 = rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)
            let ch = (e & f) ^ (~e & g)
            let t1 = hh &+ s1 &+ ch &+ k[t] &+ w[t]
            let s0 = rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)
            let maj = (a & b) ^ (a & c) ^ (b & c)
            let t2 = s0 &+ maj
            (hh, g, f, e, d, c, b, a) = (g, f, e, d &+ t1, c, b, a, t1 &+ t2)
        }
        for (i, v) in [a, b, c, d, e, f, g, hh].enumerated() { h[i] = h[i] &+ v }
    }
    return h.flatMap { word in (0..<4).map { UInt8(truncatingIfNeeded: word >> (24 - 8 * UInt32($0))) } }
}

/// The XOR of two digests, compared byte by byte from the first (big-endian).
private func closer(_ target: [UInt8], _ a: PeerID, _ b: PeerID) -> Bool {
    closer(target, sha256(a.bytes), sha256(b.bytes))
}

private func closer(_ target: [UInt8], _ da: [UInt8], _ db: [UInt8]) -> Bool {
    for i in 0..<32 where da[i] ^ target[i] != db[i] ^ target[i] {
        return da[i] ^ target[i] < db[i] ^ target[i]
    }
    return false
}

private func expectedXOROrder(_ request: [UInt8], _ peers: [PeerID]) -> [PeerID] {
    let target = sha256(request)
    let hashes = Dictionary(uniqueKeysWithValues: peers.map { ($0, sha256($0.bytes)) })
    return peers.sorted { closer(target, hashes[$0]!, hashes[$1]!) }
}

@Suite struct NodeListTests {
    @Test func referenceSHA256() {
        let hex = { (bytes: [UInt8]) in bytes.map { String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined() }
        #expect(hex(sha256(Array("abc".utf8))) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(hex(sha256([])) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        #expect(hex(sha256(Array(repeating: UInt8(ascii: "a"), count: 1000))).hasPrefix("41edece42d63e8d9bf515a9ba6932e1c"))
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
        let localHash = sha256(local.bytes)
        let tie = [peers[2], peers[3]].sorted { closer(localHash, $0, $1) }
        let unmeasured = [peers[4], peers[5]].sorted { closer(localHash, $0, $1) }
        #expect(list.orderedByRTT(protocol: proto) == [peers[1]] + tie + [peers[0]] + unmeasured)
        // …or to the request's.
        let requestHash = sha256([5, 5])
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
