import NIOCore
import NIOPosix
import PointSub
import Testing

@testable import Transport

/// Dialing `/dns`, `/dns4` and `/dns6` names over TCP, against local listeners: `/dns4` names
/// only IPv4 addresses and `/dns6` only IPv6 ones (the multiaddr protocol table), so neither
/// falls back to the other family; `/dns` takes either. IP literals serve as names that resolve
/// the same everywhere.
@Suite(.timeLimit(.minutes(1)))
struct TCPTransportDNSTests {
    let transport = TCPTransport(group: MultiThreadedEventLoopGroup.singleton)

    func dial(_ text: String) async throws -> any Channel {
        try await transport.dial(try Multiaddr(text), options: DialOptions(deadline: .after(.seconds(5)))) {
            $0.eventLoop.makeSucceededVoidFuture()
        }
    }

    @Test func namesResolveOverIPv4() async throws {
        let listener = try await transport.listen(on: Multiaddr("/ip4/127.0.0.1/tcp/0")) {
            $0.eventLoop.makeSucceededVoidFuture()
        }
        let port = try #require(listener.address.tcpPort)
        for name in ["/dns4/localhost", "/dns/localhost", "/dns4/127.0.0.1", "/dns/127.0.0.1"] {
            let channel = try await dial("\(name)/tcp/\(port)")
            #expect(channel.remoteAddress?.ipAddress == "127.0.0.1", "\(name)")
            #expect(channel.localMultiaddr != nil)
            try await channel.close()
        }
        // An IPv4-only name under /dns6 has no address to try.
        await #expect {
            _ = try await dial("/dns6/127.0.0.1/tcp/\(port)")
        } throws: { error in
            (error as? TransportError)?.code == .connectionFailed
        }
        await listener.close()
    }

    @Test func theResolverKeepsToItsFamily() async throws {
        // A multiaddr name cannot hold an IPv6 literal (no ':'), and not every machine gives
        // localhost an IPv6 address: the resolver is asked directly, and used by NIO's connect.
        let v6 = try FamilyResolver.lookup(host: "::1", port: 80, family: .ipv6)
        #expect(v6.map(\.ipAddress) == ["::1"])
        let v4 = try FamilyResolver.lookup(host: "localhost", port: 80, family: .ipv4)
        #expect(!v4.isEmpty && v4.allSatisfy { $0.protocol == .inet }, "\(v4)")
        #expect(throws: TransportError.self) { try FamilyResolver.lookup(host: "::1", port: 80, family: .ipv4) }
        #expect(throws: TransportError.self) { try FamilyResolver.lookup(host: "127.0.0.1", port: 80, family: .ipv6) }

        let group = MultiThreadedEventLoopGroup.singleton
        let listener = try await transport.listen(on: Multiaddr("/ip6/::1/tcp/0")) {
            $0.eventLoop.makeSucceededVoidFuture()
        }
        let port = try #require(listener.address.tcpPort)
        let channel = try await ClientBootstrap(group: group)
            .resolver(FamilyResolver(loop: group.next(), family: .ipv6))
            .connect(host: "::1", port: Int(port)).get()
        #expect(channel.remoteAddress?.ipAddress == "::1")
        try await channel.close()
        await #expect(throws: (any Error).self) {
            _ = try await ClientBootstrap(group: group)
                .resolver(FamilyResolver(loop: group.next(), family: .ipv4))
                .connect(host: "::1", port: Int(port)).get()
        }
        await listener.close()
    }

    @Test func anUnknownNameFailsTyped() async throws {
        // .invalid never resolves (RFC 6761 §6.4); a resolver that does not answer at all runs
        // into the dial's timeout instead.
        for family in ["dns", "dns4", "dns6"] {
            await #expect {
                _ = try await dial("/\(family)/no-such-host.invalid/tcp/1")
            } throws: { error in
                [.connectionFailed, .dialTimeout].contains((error as? TransportError)?.code)
            }
        }
    }
}
