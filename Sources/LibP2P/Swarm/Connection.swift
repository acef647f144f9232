import Basics
import Identity
import Multiformats
import Multistream
import NIOConcurrencyHelpers
import NIOCore
import Resources
import Yamux

/// A secured, multiplexed connection to one peer.
public final class Connection: Sendable, Hashable, CustomStringConvertible {
    public enum Direction: String, Sendable {
        case inbound
        case outbound
    }

    public let id: UInt64
    public let remotePeer: PeerID
    public let remotePublicKey: PublicKey
    public let direction: Direction
    public let localAddress: Multiaddr?
    public let remoteAddress: Multiaddr
    /// `remoteAddress` has `/p2p-circuit` (worked out once: streams ask on their way).
    private let limited: Bool
    public let openedAt: ContinuousClock.Instant
    /// The security protocol negotiated ("/noise", "/tls/1.0.0").
    public let security: String
    /// The muxer negotiated.
    public let muxer = "/yamux/1.0.0"
    package let session: YamuxSession
    let negotiationTimeout: Duration
    /// The connection's place in the host's resource manager; released when it closes.
    public let resourceScope: ConnectionScope?
    /// When a stream was last opened on this connection (the connection manager's idle clock).
    private let activity: NIOLockedValueBox<ContinuousClock.Instant>
    private let metrics: HostMetrics?

    init(
        id: UInt64, remotePeer: PeerID, remotePublicKey: PublicKey, direction: Direction,
        localAddress: Multiaddr?, remoteAddress: Multiaddr, session: YamuxSession, negotiationTimeout: Duration,
        security: String, resourceScope: ConnectionScope? = nil, metrics: HostMetrics? = nil
    ) {
        self.id = id
        self.security = security
        self.remotePeer = remotePeer
        self.remotePublicKey = remotePublicKey
        self.direction = direction
        self.localAddress = localAddress
        self.remoteAddress = remoteAddress
        self.limited = remoteAddress.isCircuit
        self.openedAt = .now
        self.session = session
        self.negotiationTimeout = negotiationTimeout
        self.resourceScope = resourceScope
        self.metrics = metrics
        self.activity = NIOLockedValueBox(.now)
    }

    /// When a stream was last opened on this connection, in either direction.
    public var lastStreamActivity: ContinuousClock.Instant { activity.withLockedValue { $0 } }

    func markStreamActivity() {
        activity.withLockedValue { $0 = .now }
    }

    public var isClosed: Bool { session.isClosed }
    public var streamCount: Int { session.openStreamCount }

    /// Opens a stream and negotiates the first of `protocols` the remote supports.
    ///
    /// `lazy`: propose `protocols[0]` and return at once, without waiting a round trip for the
    /// answer; the first read checks it (a refusal then surfaces as `.protocolNotSupported`). Use it
    /// when the peer is known to support the protocol — `P2PHost.newStream` does so when identify
    /// said it does, as go-libp2p does.
    public func newStream(protocols: [String], lazy: Bool = false) async throws -> P2PStream {
        precondition(!protocols.isEmpty, "newStream needs at least one protocol")
        // The multistream header and first proposal ride on the SYN: one frame, one write.
        markStreamActivity()
        var negotiator = MultistreamNegotiator(role: .dialer(proposals: lazy ? [protocols[0]] : protocols))
        let stream = try await session.openStream(sending: ByteBuffer(bytes: negotiator.start()))
        if lazy {
            try Self.account(stream, protocolID: protocols[0])
            metrics?.streamOpened(.outbound, protocolID: protocols[0])
            return P2PStream(
                stream: stream, protocolID: protocols[0], connection: self, leftover: ByteBuffer(),
                unverified: negotiator)
        }
        do {
            let (proto, leftover) = try await P2PHost.negotiate(
                stream, continuing: negotiator, timeout: negotiationTimeout)
            try Self.account(stream, protocolID: proto)
            metrics?.streamOpened(.outbound, protocolID: proto)
            return P2PStream(stream: stream, protocolID: proto, connection: self, leftover: leftover)
        } catch let error as MultistreamError where error.code == .noProtocolInCommon {
            stream.reset()
            throw HostError(
                .protocolNotSupported, "\(remotePeer) supports none of \(protocols.joined(separator: ", "))",
                cause: error)
        } catch {
            stream.reset()
            throw error
        }
    }

    /// Moves a new stream's resources to its protocol's scope; past the protocol's stream limit
    /// the stream is reset and the refusal thrown.
    private static func account(_ stream: YamuxStream, protocolID: String) throws {
        do {
            try stream.resourceScope?.setProtocol(protocolID)
        } catch {
            stream.reset()
            throw HostError(.limitReached, "cannot open a \(protocolID) stream", cause: error)
        }
    }

    /// Measures the round-trip time with a Yamux ping.
    public func muxerPing() async throws -> Duration {
        try await session.ping()
    }

    /// Closes the connection. `graceful`: wait for open streams to finish first, until `deadline`
    /// at most (nil: 5 seconds from now).
    public func close(graceful: Bool = true, deadline: Deadline? = nil) async {
        let deadline = deadline ?? .after(.seconds(5))
        await session.close(graceful: graceful, deadline: .now() + deadline.timeAmount)
    }

    public static func == (lhs: Connection, rhs: Connection) -> Bool { lhs === rhs }
    public func hash(into hasher: inout Hasher) { hasher.combine(ObjectIdentifier(self)) }

    /// Whether the connection runs through a relay (its remote address has `/p2p-circuit`):
    /// such a connection is limited in time and data by the relay.
    public var isLimited: Bool { limited }

    public var description: String {
        "Connection(\(id), \(direction.rawValue), \(remotePeer) at \(remoteAddress))"
    }
}
