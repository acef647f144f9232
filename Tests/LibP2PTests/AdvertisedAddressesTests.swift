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

extension AdvertisedAddressesTests {
    /// An observed address that identify activates (here one observer is enough) is pushed to
    /// the peers already connected, with an `.addressesChanged` event.
    @Test func activatedObservedAddressIsPushed() async throws {
        let tcp = P2PHost.Configuration.defaults { $0.listenAddresses = [Multiaddr("/ip4/127.0.0.1/tcp/0")] }
        var hostConfiguration = tcp
        hostConfiguration.observedAddressActivation = 1
        try await withHost(identity: .ed25519(seed: 811), configuration: hostConfiguration) { host in
            let events = host.events()
            try await withHost(identity: .ed25519(seed: 812), configuration: tcp) { watcher in
                try await withHost(identity: .ed25519(seed: 813), configuration: tcp) { observer in
                    _ = try await watcher.connect(to: host.addresses[0])
                    // Our dial to the observer: it reports the ephemeral port it sees us at.
                    let outbound = try await host.connect(to: observer.addresses[0])
                    let observed = try #require(outbound.localAddress)
                    let deadline = ContinuousClock.now + .seconds(10)
                    while !watcher.peerstore.addresses(for: host.peerID).contains(observed), ContinuousClock.now < deadline {
                        try await Task.sleep(for: .milliseconds(20))
                    }
                    #expect(host.advertisedAddresses.contains(observed))
                    #expect(watcher.peerstore.addresses(for: host.peerID).contains(observed))
                    var changed = false
                    for await event in events {
                        if case .addressesChanged(let addresses) = event, addresses.contains(observed) {
                            changed = true
                            break
                        }
                    }
                    #expect(changed)
                }
            }
        }
    }
}
