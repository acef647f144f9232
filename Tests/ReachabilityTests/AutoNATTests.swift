import Foundation
import NIOCore
import PointSub
import Testing

/// AutoNAT v1: the wire format byte by byte, the reachability tracker, and client and server on
/// real hosts (TCP on 127.0.0.x).
@Suite(.serialized, .timeLimit(.minutes(2)))
struct AutoNATTests {
    @Test func dialRequestBytes() throws {
        let peer = PeerID(publicKey: PrivateKey.ed25519(seed: 1).publicKey)
        let address = Multiaddr("/ip4/1.2.3.4/tcp/4001")
        let message = AutoNATMessage(type: .dial, dial: .init(peerID: peer.bytes, addresses: [address]))
        let bytes = message.encoded()
        // type DIAL (0) | dial { peer { id, addrs } }
        #expect(Array(bytes.prefix(3)) == [0x08, 0x00, 0x12])
        let peerInfoLength = 2 + peer.bytes.count + 2 + address.bytes.count
        #expect(Array(bytes[3...6]) == [UInt8(peerInfoLength + 2), 0x0a, UInt8(peerInfoLength), 0x0a])
        #expect(try AutoNATMessage(decoding: bytes) == message)
        let ok = AutoNATMessage(type: .dialResponse, dialResponse: .init(status: .ok, address: address))
        #expect(ok.encoded() == [0x08, 0x01, 0x1a, UInt8(4 + address.bytes.count), 0x08, 0x00, 0x1a, UInt8(address.bytes.count)] + address.bytes)
        #expect(try AutoNATMessage(decoding: ok.encoded()) == ok)
        let error = AutoNATMessage(type: .dialResponse, dialResponse: .init(status: .dialError, statusText: "dial failed"))
        #expect(try AutoNATMessage(decoding: error.encoded()) == error)
    }

    @Test func badMessagesAreTypedErrors() {
        func code(_ bytes: [UInt8]) -> AutoNATError.Code? {
            do { _ = try AutoNATMessage(decoding: bytes); return nil } catch { return error.code }
        }
        #expect(code([]) == .malformedMessage)
        #expect(code([0x08, 0x05]) == .malformedMessage)
        #expect(code([0x08, 0x01, 0x1a, 0x02, 0x08, 0x07]) == .malformedMessage)  // unknown status
        #expect(code([0x08, 0x01, 0x1a, 0x00]) == .malformedMessage)              // response without status
        #expect(code([0x08, 0x00, 0x12, 0x05, 0x0a]) == .malformedMessage)        // truncated
        #expect(code([UInt8](repeating: 0, count: AutoNATMessage.maxMessageSize + 1)) == .limitExceeded)
        #expect(code([0x08, 0x00, 0x78, 0x01]) == nil)                            // unknown field skipped
    }

    @Test func trackerNeedsConfidenceToFlip() {
        var tracker = ReachabilityTracker()
        #expect(tracker.status == .unknown)
        var changed = tracker.record(dialedBack: false)
        #expect(changed)
        #expect(tracker.status == .private)
        for _ in 0..<5 {
            changed = tracker.record(dialedBack: false)
            #expect(!changed)
        }
        #expect(tracker.confidence == 3)
        // Three contrary answers only wear the confidence down; the fourth flips.
        for _ in 0..<3 {
            changed = tracker.record(dialedBack: true)
            #expect(!changed)
        }
        #expect(tracker.status == .private)
        changed = tracker.record(dialedBack: true)
        #expect(changed)
        #expect(tracker.status == .public)
    }

    static func withHost<T: Sendable>(
        seed: UInt64, ip: String = "127.0.0.1", listen: Bool = true, autonat: AutoNATService,
        _ body: (P2PHost) async throws -> T
    ) async throws -> T {
        var configuration = P2PHost.Configuration.defaults
        configuration.services = [IdentifyService(), autonat]
        if listen { configuration.listenAddresses = [try Multiaddr("/ip4/\(ip)/tcp/0")] }
        return try await PointSub.withHost(identity: .ed25519(seed: seed), configuration: configuration) { host in
            defer { autonat.stop() }
            return try await body(host)
        }
    }

    static func service(serve: Bool = true) -> AutoNATService {
        var configuration = AutoNATService.Configuration()
        configuration.serve = serve
        configuration.allowPrivateAddresses = true
        configuration.probeAutomatically = false
        configuration.dialTimeout = .seconds(5)
        return AutoNATService(configuration: configuration)
    }

    /// A listening client is dialed back: public. One that listens on nothing dialable: private.
    @Test func serverDialsBackAndClientLearnsItsReachability() async throws {
        let server = Self.service()
        try await Self.withHost(seed: 301, autonat: server) { serverHost in
            let reachable = Self.service(serve: false)
            try await Self.withHost(seed: 302, autonat: reachable) { client in
                _ = try await client.connect(to: serverHost.addresses[0])
                try await Self.until { client.peerstore.protocols(for: serverHost.peerID).contains(AutoNATMessage.protocolID) }
                let answer = try await reachable.probe(using: serverHost.peerID)
                #expect(answer.status == .ok)
                #expect(answer.address == client.listenAddresses[0])
                #expect(reachable.reachability == .public)
                // The dial-back was a connection of its own, closed afterwards: the first stays.
                #expect(client.connections(to: serverHost.peerID).count >= 1)
            }
            let unreachable = Self.service(serve: false)
            try await Self.withHost(seed: 303, listen: false, autonat: unreachable) { client in
                _ = try await client.connect(to: serverHost.addresses[0])
                let answer = try await unreachable.probe(using: serverHost.peerID)
                // Only the observed address (an ephemeral port nobody listens on) was left to try.
                #expect(answer.status == .dialError)
                #expect(unreachable.reachability == .private)
            }
            #expect(server.counters.served[.ok] == 1)
            #expect(server.counters.served[.dialError] == 1)
        }
    }

    /// A requester asking for a third party's address (another IP than the one it is seen at) is
    /// never dialed there; a requester naming another peer ID is refused; a flood from one peer
    /// is refused without dialing.
    @Test func thirdPartyAddressesAndFloodsAreRefused() async throws {
        let server = Self.service()
        try await Self.withHost(seed: 311, autonat: server) { serverHost in
            // The victim listens on 127.0.0.1; the attacker is seen at 127.0.0.2.
            try await Self.withHost(seed: 313, autonat: Self.service(serve: false)) { victim in
                try await Self.withHost(seed: 312, ip: "127.0.0.2", listen: false, autonat: Self.service(serve: false)) { attacker in
                    _ = try await attacker.connect(to: serverHost.addresses[0])
                    func ask(peerID: PeerID, _ addresses: [Multiaddr]) async throws -> AutoNATMessage.DialResponse? {
                        let stream = try await attacker.newStream(to: serverHost.peerID, protocols: [AutoNATMessage.protocolID])
                        let request = AutoNATMessage(type: .dial, dial: .init(peerID: peerID.bytes, addresses: addresses))
                        try await stream.writeLengthPrefixed(request.encoded())
                        let frame = try await stream.readLengthPrefixed(maxLength: AutoNATMessage.maxMessageSize)
                        await stream.close()
                        return try frame.flatMap { try AutoNATMessage(decoding: $0.readableBytesView).dialResponse }
                    }
                    let wrongPeer = try await ask(peerID: victim.peerID, victim.listenAddresses)
                    #expect(wrongPeer?.status == .badRequest)
                    let answer = try await ask(peerID: attacker.peerID, victim.listenAddresses)
                    // Only the attacker's observed address (127.0.0.2, an ephemeral port) was tried.
                    #expect(answer?.status == .dialError)
                    #expect(victim.connections(to: serverHost.peerID).isEmpty)
                    // Three requests a minute are served (the bad one cost nothing); the fourth is refused.
                    _ = try await ask(peerID: attacker.peerID, [])
                    _ = try await ask(peerID: attacker.peerID, [])
                    let flood = try await ask(peerID: attacker.peerID, [])
                    #expect(flood?.status == .dialRefused)
                    #expect(server.counters.served[.dialRefused] == 1)
                }
            }
        }
    }

    static func until(_ condition: () -> Bool) async throws {
        let deadline = ContinuousClock.now + .seconds(10)
        while !condition() {
            guard ContinuousClock.now < deadline else { throw CancellationError() }
            try await Task.sleep(for: .milliseconds(20))
        }
    }
}

extension AutoNATTests {
    /// The DHT follows AutoNAT: a node found private turns client (it stops serving the DHT
    /// protocol), and server again once found public.
    @Test func dhtModeFollowsReachability() async throws {
        let server = Self.service()
        try await Self.withHost(seed: 321, autonat: server) { serverHost in
            let autonat = Self.service(serve: false)
            var dhtConfiguration = KademliaDHT.Configuration()
            dhtConfiguration.refreshInterval = nil
            let dht = KademliaDHT(configuration: dhtConfiguration)
            var configuration = P2PHost.Configuration.defaults
            configuration.services = [IdentifyService(), autonat, dht]
            // Not listening: every dial-back fails, so AutoNAT says private.
            try await PointSub.withHost(identity: .ed25519(seed: 322), configuration: configuration) { host in
                defer { autonat.stop(); dht.stop() }
                let following = dht.followReachability(of: autonat)
                defer { following.cancel() }
                #expect(dht.mode == .server)
                _ = try await host.connect(to: serverHost.addresses[0])
                try await autonat.probe(using: serverHost.peerID)
                #expect(autonat.reachability == .private)
                try await Self.until { dht.mode == .client }
                #expect(!host.supportedProtocols.contains(dht.configuration.protocolID))
            }
        }
    }
}
