import Crypto
import Foundation
import NIOCore
import PointSub
import Testing

@testable import TLS

/// TLS inside real hosts on 127.0.0.1: dialers with broken certificates get nothing from a
/// TLS-only listener, which keeps serving well-behaved dialers.
@Suite("TLS in a host", .timeLimit(.minutes(1)))
struct TLSHostTests {
    /// A security option that presents a deliberately broken certificate.
    static func broken(_ options: @escaping @Sendable (PrivateKey) -> CertificateFactory.Options) -> SecurityOption {
        SecurityOption(protocolID: TLSSecurity.protocolID) { identity in
            try TLSSecurity(identity: identity, certificate: CertificateFactory.make(options(identity)))
        }
    }

    static func configuration(security: [SecurityOption], listen: Bool = false) -> P2PHost.Configuration {
        .defaults {
            $0.security = security
            $0.services = [EchoService()]
            $0.handshakeTimeout = .seconds(3)
            $0.streamNegotiationTimeout = .seconds(3)
            if listen { $0.listenAddresses = [Multiaddr("/ip4/127.0.0.1/tcp/0")] }
        }
    }

    /// One echo round trip; throws if the connection or stream fails.
    static func echo(_ host: P2PHost, to peer: PeerID) async throws -> String {
        let stream = try await host.newStream(to: peer, protocols: [EchoService.protocolID])
        try await stream.write(ByteBuffer(string: "ping over tls"))
        try await stream.closeWrite()
        let back = try await stream.readToEnd(maxBytes: 64)
        return String(buffer: back)
    }

    @Test("no extension, a forged SignedKey, an expired certificate, a broken self-signature: refused; others still served")
    func brokenDialers() async throws {
        let defects: [(String, @Sendable (PrivateKey) -> CertificateFactory.Options)] = [
            ("no extension", { .init(identity: $0, includeExtension: false) }),
            ("forged SignedKey", { identity in
                .init(identity: identity, signedKey: { _ in
                    try LibP2PCertificate.makeSignedKey(
                        identity: identity, certificatePublicKey: .init(P256.Signing.PrivateKey().publicKey))
                })
            }),
            ("expired", { .init(identity: $0, notBefore: Date() - 7200, notAfter: Date() - 3600) }),
            ("broken self-signature", { .init(identity: $0, wrongSigner: true) }),
        ]
        try await withHost(identity: .ed25519(seed: 1), configuration: Self.configuration(security: [.tls], listen: true)) { listener in
            let address = listener.addresses[0]
            for (name, defect) in defects {
                try await withHost(configuration: Self.configuration(security: [Self.broken(defect)])) { bad in
                    // TLS 1.3 clients finish before the server has checked their certificate, so
                    // the dial itself may look fine for a moment; no stream ever gets through.
                    var echoed: String?
                    if let connection = try? await bad.connect(to: address) {
                        echoed = try? await Self.echo(bad, to: connection.remotePeer)
                    }
                    #expect(echoed == nil, "\(name): echo went through")
                    #expect(listener.connections(to: bad.peerID).isEmpty, "\(name)")
                }
                // A good dialer right after.
                try await withHost(configuration: Self.configuration(security: [.tls])) { good in
                    let connection = try await good.connect(to: address)
                    #expect(connection.security == TLSSecurity.protocolID)
                    #expect(try await Self.echo(good, to: connection.remotePeer) == "ping over tls", "after \(name)")
                }
            }
        }
    }

    @Test("hosts offering Noise and TLS in different orders agree on the dialer's first choice")
    func order() async throws {
        for (dialer, expected) in [([SecurityOption.tls, .noise], "/tls/1.0.0"), ([.noise, .tls], "/noise")] {
            try await withHost(configuration: Self.configuration(security: [.noise, .tls], listen: true)) { listener in
                try await withHost(configuration: Self.configuration(security: dialer)) { host in
                    let connection = try await host.connect(to: listener.addresses[0])
                    #expect(connection.security == expected)
                    #expect(try await Self.echo(host, to: connection.remotePeer) == "ping over tls")
                }
            }
        }
    }
}
