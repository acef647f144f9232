import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import PointSub
import Testing

@testable import LibP2P

/// Address ranking and the staggered dial schedule (value types, no sockets), then a dial that
/// must not wait for black-holed addresses.
@Suite(.timeLimit(.minutes(1)))
struct DialRankerTests {
    @Test func ranksByLocalityThenTransportThenFamily() {
        let given = [
            Multiaddr("/dns4/example.com/tcp/1"),
            Multiaddr("/ip4/8.8.8.8/tcp/1/ws"),
            Multiaddr("/ip4/8.8.8.8/tcp/1"),
            Multiaddr("/ip6/2001:db8::1/tcp/1"),
            Multiaddr("/ip4/192.168.1.5/tcp/1"),
            Multiaddr("/ip4/127.0.0.1/tcp/1/tls/ws"),
            Multiaddr("/ip4/127.0.0.1/tcp/1"),
            Multiaddr("/memory/7"),
            Multiaddr("/ip4/127.0.0.1/tcp/1"),  // a duplicate is dialed once
        ]
        let ranked = DialRanker().rank(given).map(\.address)
        #expect(ranked == [
            Multiaddr("/memory/7"),
            Multiaddr("/ip4/127.0.0.1/tcp/1"),
            Multiaddr("/ip4/127.0.0.1/tcp/1/tls/ws"),
            Multiaddr("/ip4/192.168.1.5/tcp/1"),
            Multiaddr("/ip6/2001:db8::1/tcp/1"),
            Multiaddr("/ip4/8.8.8.8/tcp/1"),
            Multiaddr("/ip4/8.8.8.8/tcp/1/ws"),
            Multiaddr("/dns4/example.com/tcp/1"),
        ])
    }

    @Test func delaysAreStaggeredByLocality() {
        var ranker = DialRanker()
        ranker.localStagger = .milliseconds(10)
        ranker.publicStagger = .milliseconds(100)
        let delays = ranker.rank([
            Multiaddr("/ip4/127.0.0.1/tcp/1"), Multiaddr("/ip4/10.0.0.1/tcp/1"),
            Multiaddr("/ip4/1.1.1.1/tcp/1"), Multiaddr("/ip4/1.0.0.1/tcp/1"),
        ]).map(\.delay)
        #expect(delays == [.zero, .milliseconds(10), .milliseconds(110), .milliseconds(210)])
    }

    @Test func privateRangesAreLocal() throws {
        for text in ["/ip4/10.1.2.3/tcp/1", "/ip4/172.16.0.1/tcp/1", "/ip4/172.31.255.1/tcp/1", "/ip4/192.168.0.1/tcp/1",
            "/ip4/169.254.1.1/tcp/1", "/ip4/100.64.0.1/tcp/1", "/ip6/fd00::1/tcp/1", "/ip6/fe80::1/tcp/1"]
        {
            #expect(try DialRanker.locality(of: Multiaddr(text)) == .privateNetwork, "\(text)")
        }
        for text in ["/ip4/172.32.0.1/tcp/1", "/ip4/11.0.0.1/tcp/1", "/ip4/100.128.0.1/tcp/1", "/ip6/2001:db8::1/tcp/1"] {
            #expect(try DialRanker.locality(of: Multiaddr(text)) == .publicNetwork, "\(text)")
        }
        #expect(DialRanker.locality(of: Multiaddr("/ip6/::1/tcp/1")) == .loopback)
    }

    @Test func scheduleStartsTheNextOnDelayOrOnFailure() throws {
        let t0 = ContinuousClock.now
        let dials = try (0..<4).map {
            DialRanker.ScheduledDial(address: try Multiaddr("/ip4/127.0.0.\($0 + 1)/tcp/1"), delay: .milliseconds(100 * $0))
        }
        var schedule = DialSchedule(dials, maxParallel: 8, start: t0)
        #expect(schedule.due(now: t0) == [dials[0].address])
        #expect(schedule.nextStart == t0 + .milliseconds(100))
        #expect(schedule.due(now: t0 + .milliseconds(50)).isEmpty)
        #expect(schedule.due(now: t0 + .milliseconds(100)) == [dials[1].address])
        // A failure lets the next start at once instead of at 200 ms.
        schedule.failed(now: t0 + .milliseconds(110))
        #expect(schedule.due(now: t0 + .milliseconds(110)) == [dials[2].address])
        #expect(schedule.inFlight == 2)
        // And the one after keeps its spacing from there.
        #expect(schedule.nextStart! <= t0 + .milliseconds(210))
        schedule.failed(now: t0 + .milliseconds(120))
        schedule.failed(now: t0 + .milliseconds(120))
        // Nothing in flight: the last starts at once, whatever its delay.
        #expect(schedule.due(now: t0 + .milliseconds(120)) == [dials[3].address])
        schedule.failed(now: t0 + .milliseconds(130))
        #expect(schedule.isExhausted)
    }

    @Test func scheduleRespectsTheParallelLimit() throws {
        let t0 = ContinuousClock.now
        let dials = try (0..<3).map { DialRanker.ScheduledDial(address: try Multiaddr("/memory/\($0)"), delay: .zero) }
        var schedule = DialSchedule(dials, maxParallel: 2, start: t0)
        #expect(schedule.due(now: t0).count == 2)
        #expect(schedule.nextStart == nil)
        schedule.failed(now: t0)
        #expect(schedule.due(now: t0) == [dials[2].address])
    }

    /// Two addresses that accept TCP and then say nothing come first (plain TCP ranks before the
    /// server's WebSocket address); the dial timeout is long.
    /// A sequential dial would wait out both timeouts; the staggered one connects through the
    /// third address at once and closes the two hanging attempts.
    @Test func blackHoledAddressesDoNotDelayTheDial() async throws {
        let silent = try await SilentListener.start(count: 2)
        defer { silent.stop() }
        var configuration = P2PHost.Configuration.defaults
        configuration.dialTimeout = .seconds(30)
        configuration.transports = [.tcp, .webSocket]
        var serverConfiguration = listeningConfig()
        serverConfiguration.transports = [.webSocket]
        serverConfiguration.listenAddresses = [Multiaddr("/ip4/127.0.0.1/tcp/0/ws")]
        try await withHost(identity: .ed25519(seed: 61), configuration: serverConfiguration) { server in
            try await withHost(identity: .ed25519(seed: 62), configuration: configuration) { client in
                let started = ContinuousClock.now
                let connection = try await client.connect(
                    to: server.peerID, addresses: silent.addresses + [server.listenAddresses[0]])
                let took = ContinuousClock.now - started
                #expect(connection.remotePeer == server.peerID)
                #expect(took < .seconds(15), "took \(took): the dial waited for a black-holed address")
                try await eventually("both silent addresses were tried") { silent.accepted.withLockedValue { $0 } == 2 }
                try await eventually("the hanging attempts closed") { silent.closed.withLockedValue { $0 } == 2 }
            }
        }
    }
}

/// TCP listeners that accept and never send a byte; count accepts and closes.
private final class SilentListener: Sendable {
    let channels: [any Channel]
    let accepted = NIOLockedValueBox(0)
    let closed = NIOLockedValueBox(0)

    private init(channels: [any Channel]) { self.channels = channels }

    var addresses: [Multiaddr] { channels.compactMap { $0.localAddress.flatMap { try? Multiaddr(socketAddress: $0) } } }

    static func start(count: Int) async throws -> SilentListener {
        let box = NIOLockedValueBox<SilentListener?>(nil)
        var channels: [any Channel] = []
        for _ in 0..<count {
            let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .childChannelInitializer { child in
                    box.withLockedValue { $0 }?.accepted.withLockedValue { $0 += 1 }
                    child.closeFuture.whenComplete { _ in box.withLockedValue { $0 }?.closed.withLockedValue { $0 += 1 } }
                    return child.eventLoop.makeSucceededVoidFuture()
                }
                .bind(host: "127.0.0.1", port: 0).get()
            channels.append(channel)
        }
        let listener = SilentListener(channels: channels)
        box.withLockedValue { $0 = listener }
        return listener
    }

    func stop() {
        for channel in channels { channel.close(promise: nil) }
    }
}
