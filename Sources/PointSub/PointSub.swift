// The umbrella: `import PointSub` is the whole stack, bottom to top. NIOCore comes along because
// its `ByteBuffer` (and `EventLoopGroup`) are public API everywhere above it.
@_exported import Basics
@_exported import DNS
@_exported import Discovery
@_exported import Identity
@_exported import Kademlia
@_exported import LibP2P
@_exported import Multiformats
@_exported import Multistream
@_exported import NIOCore
@_exported import Noise
@_exported import PointSubCore
@_exported import Protocols
@_exported import Reachability
@_exported import Relay
@_exported import PubSub
@_exported import Resources
@_exported import Security
@_exported import TLS
@_exported import Transport
@_exported import Yamux

/// Runs `body` with a started host that answers identify and ping, then shuts the host down
/// gracefully (open streams get the configured grace period), whether `body` returns or throws.
/// `eventLoopGroup`: where the host's connections run (default: NIO's shared group); a single
/// `EventLoop` keeps them all on one thread.
public func withHost<T: Sendable>(
    identity: PrivateKey = .generateEd25519(),
    configuration: P2PHost.Configuration = .defaults,
    eventLoopGroup: (any EventLoopGroup)? = nil,
    _ body: (P2PHost) async throws -> T
) async throws -> T {
    var configuration = configuration
    let hasIdentify = configuration.services.contains { $0 is IdentifyService }
    let hasPing = configuration.services.contains { $0 is PingService }
    if !hasIdentify { configuration.services.insert(IdentifyService(), at: 0) }
    if !hasPing { configuration.services.append(PingService()) }
    let host = P2PHost(identity: identity, configuration: configuration, eventLoopGroup: eventLoopGroup)
    do {
        try await host.start()
        let result = try await body(host)
        await host.shutdown()
        return result
    } catch {
        await host.shutdown()
        throw error
    }
}
