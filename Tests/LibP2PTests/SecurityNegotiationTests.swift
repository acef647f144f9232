import NIOCore
import PointSub
import Security
import Testing

/// A security protocol nobody else speaks: it fails whatever it is asked to secure. Offered
/// first, it makes the dialer propose more than one protocol (no optimistic negotiation).
struct UnknownSecurity: SecurityProtocol {
    struct Refused: SecurityError {
        enum Code: String, ErrorCode { case refused }
        var code: Code { .refused }
        var message: String { "refused" }
        var cause: (any Error)? { nil }
    }
    let protocolID = "/unknown-security/1.0.0"
    func secure(
        channel: any Channel, position: ChannelPipeline.SynchronousOperations.Position, role: SecurityRole,
        muxers: [String]
    ) throws -> EventLoopFuture<SecuredConnection> {
        channel.eventLoop.makeFailedFuture(Refused())
    }
}

extension SecurityOption {
    static let unknown = SecurityOption(protocolID: "/unknown-security/1.0.0") { _ in UnknownSecurity() }
}

/// The host negotiates its security protocol from a configured list (issue 11).
@Suite(.timeLimit(.minutes(1)))
struct SecurityNegotiationTests {
    func config(_ security: [SecurityOption], listening: Bool) -> P2PHost.Configuration {
        .defaults {
            if listening { $0.listenAddresses = [loopback] }
            $0.services = [EchoService()]
            $0.security = security
        }
    }

    @Test(arguments: [
        ([SecurityOption.unknown, .noise], [SecurityOption.noise]),  // the dialer's first choice is refused
        ([SecurityOption.noise], [SecurityOption.unknown, .noise]),  // the listener knows more
    ])
    func theFirstProtocolBothSpeakIsUsed(dialer: [SecurityOption], listener: [SecurityOption]) async throws {
        try await withHost(configuration: config(listener, listening: true)) { server in
            try await withHost(configuration: config(dialer, listening: false)) { client in
                let connection = try await client.connect(to: server.addresses[0])
                #expect(connection.security == "/noise")
                #expect(try await echo(client, to: server.peerID, "secured") == "secured")
                let inbound = server.connections(to: client.peerID)
                #expect(inbound.map(\.security) == ["/noise"])
            }
        }
    }

    @Test func noProtocolInCommonFailsTheDialAndTheListenerServesOthers() async throws {
        try await withHost(configuration: config([.noise], listening: true)) { server in
            try await withHost(configuration: config([.unknown], listening: false)) { client in
                await #expect(throws: (any Error).self) { try await client.connect(to: server.addresses[0]) }
                #expect(client.connections(to: server.peerID).isEmpty)
            }
            try await withHost(configuration: config([.noise], listening: false)) { honest in
                _ = try await honest.connect(to: server.addresses[0])
                let answer = try await echo(honest, to: server.peerID, "still here")
                #expect(answer == "still here")
            }
        }
    }

    @Test func aFailedHandshakeOfTheChosenProtocolFailsTheDial() async throws {
        try await withHost(configuration: config([.unknown, .noise], listening: true)) { server in
            try await withHost(configuration: config([.unknown, .noise], listening: false)) { client in
                // Both prefer the failing protocol: the dial fails (no fallback after a chosen
                // protocol's handshake failed, as in every libp2p implementation).
                do {
                    _ = try await client.connect(to: server.addresses[0])
                    Issue.record("the dial succeeded")
                } catch {
                    #expect(rootCause(error) is UnknownSecurity.Refused, "\(error)")
                }
            }
        }
    }
}

/// The innermost cause of a host error.
func rootCause(_ error: any Error) -> any Error {
    if let error = error as? HostError, let cause = error.causes.first { return rootCause(cause) }
    return error
}
