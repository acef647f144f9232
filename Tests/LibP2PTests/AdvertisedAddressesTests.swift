import NIOCore
import PointSub
import Testing

/// What a host advertises (identify, signed peer records): listen or announce addresses, minus
/// the no-announce ones, plus address sources; identify carries them to peers.
@Suite(.serialized, .timeLimit(.minutes(1)))
struct AdvertisedAddressesTests {
    @Test func announceAndNoAnnounceShapeWhatPeersLearn() async throws {
        let announced = Multiaddr("/ip4/203.0.113.7/tcp/4001")
        let hidden = Multiaddr("/ip4/198.51.100.9/tcp/4002")
        let configuration = P2PHost.Configuration.defaults {
            $0.transports = [.memory]
            $0.listenAddresses = [Multiaddr("/memory/0")]
            $0.announceAddresses = [announced, hidden]
            $0.noAnnounceAddresses = [hidden]
        }
        try await withHost(identity: .ed25519(seed: 801), configuration: configuration) { host in
            #expect(host.advertisedAddresses == [announced])
            let listen = host.listenAddresses[0]
            let client = P2PHost.Configuration.defaults { $0.transports = [.memory] }
            try await withHost(identity: .ed25519(seed: 802), configuration: client) { peer in
                _ = try await peer.connect(to: listen.appending(peerID: host.peerID))
                let deadline = ContinuousClock.now + .seconds(10)
                while !peer.peerstore.addresses(for: host.peerID).contains(announced), ContinuousClock.now < deadline {
                    try await Task.sleep(for: .milliseconds(20))
                }
                let learned = peer.peerstore.addresses(for: host.peerID)
                #expect(learned.contains(announced))
                #expect(!learned.contains(hidden))
            }
        }
    }
}
