import Foundation
import NIOCore
import PointSub
import TestSupport
import Testing

/// AutoNAT v1 with go-libp2p 0.32 (`p2pd -autonat`), over TCP on 127.0.0.1.
///
/// go's AutoNAT server never dials private or loopback addresses (its dial policy skips
/// unroutable addresses unless built with self-dials allowed): on loopback it answers
/// `E_DIAL_REFUSED` ("no dialable addresses"). Dial-backs that succeed need routable addresses:
/// the network-namespace tests of issue 13 give them. go's own AutoNAT client does not ask our
/// server on loopback either (none in 80 s after connecting: it has no public address to test).
@Suite(.serialized, .timeLimit(.minutes(2)))
struct AutoNATInteropTests {
    @Test func goServerAnswersOurProbe() async throws {
        try await withDaemon(seed: 151, ["-autonat"]) { go in
            var autonatConfiguration = AutoNATService.Configuration()
            autonatConfiguration.probeAutomatically = false
            let autonat = AutoNATService(configuration: autonatConfiguration)
            let configuration = P2PHost.Configuration.defaults {
                $0.services = [IdentifyService(), autonat]
                $0.listenAddresses = [Multiaddr("/ip4/127.0.0.1/tcp/0")]
            }
            try await withHost(identity: .ed25519(seed: 251), configuration: configuration) { host in
                defer { autonat.stop() }
                _ = try await host.connect(to: go.fullAddress)
                try await GoInteropTests.until("go's identify listing AutoNAT") {
                    host.peerstore.protocols(for: go.peerID).contains(AutoNATMessage.protocolID)
                }
                let answer = try await autonat.probe(using: go.peerID)
                #expect(answer.status == .dialRefused, "\(answer)")
                #expect(answer.statusText?.isEmpty == false)
                // A refusal says nothing about reachability.
                #expect(autonat.reachability == .unknown)
                #expect(autonat.counters.probes[.dialRefused] == 1)
            }
        }
    }
}
