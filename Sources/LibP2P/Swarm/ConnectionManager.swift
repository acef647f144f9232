import Identity
import NIOConcurrencyHelpers

/// Keeps the number of connections between watermarks and closes idle ones, in the spirit of
/// go-libp2p's basic connection manager.
///
/// - When more than `highWater` connections are open, the least useful ones are closed until
///   `lowWater` remain. Connections younger than `gracePeriod` and connections to protected peers
///   are never trimmed. Least useful: lowest peer value (the sum of its tags), then fewest open
///   streams, then the newest.
/// - A connection with no open stream for `idleTimeout` is closed (unless its peer is
///   protected): a peer cannot pin a connection slot by only answering keep-alives.
///
/// Protocols protect what they depend on (pubsub its mesh and topic peers, routes their peers)
/// with ``protect(_:tag:)`` and weigh peers with ``tagPeer(_:_:value:)``.
public final class ConnectionManager: Sendable {
    /// Watermarks, grace period and idle timeout.
    public struct Configuration: Sendable, DefaultsConfigurable {
        /// Trimming stops once this many connections remain.
        public var lowWater = 160
        /// Trimming starts when more than this many connections are open.
        public var highWater = 192
        /// New connections are not trimmed for this long (they may be about to become useful).
        public var gracePeriod: Duration = .seconds(20)
        /// Connections with no open stream for this long are closed; nil keeps them.
        public var idleTimeout: Duration? = .seconds(120)
        /// How often idle connections and watermarks are checked (trimming is also checked at
        /// once when a connection opens above the high watermark).
        public var checkInterval: Duration = .seconds(5)

        /// The defaults: 160/192 connections, 20 s grace, 2 min idle timeout, checks every 5 s.
        public init() {}
    }

    /// What the trimming decision needs to know about one connection.
    public struct Candidate: Sendable, Hashable {
        /// The connection's ID (``Connection/id``).
        public var id: UInt64
        /// The remote peer.
        public var peer: PeerID
        /// When the connection opened.
        public var openedAt: ContinuousClock.Instant
        /// Streams open now.
        public var streams: Int
        /// When a stream was last opened on it (or when it opened).
        public var lastActivity: ContinuousClock.Instant

        /// A candidate with every field given.
        public init(
            id: UInt64, peer: PeerID, openedAt: ContinuousClock.Instant, streams: Int,
            lastActivity: ContinuousClock.Instant
        ) {
            self.id = id
            self.peer = peer
            self.openedAt = openedAt
            self.streams = streams
            self.lastActivity = lastActivity
        }
    }

    /// Why a connection is closed by the manager.
    public enum TrimReason: String, Sendable, Hashable {
        /// Over the high watermark.
        case watermark
        /// No stream for the idle timeout.
        case idle
    }

    private struct PeerInfo {
        var tags: [String: Int] = [:]
        var protections: Set<String> = []
        var value: Int { tags.values.reduce(0, &+) }
    }

    /// The configuration in force.
    public let configuration: Configuration
    private let peers = NIOLockedValueBox([PeerID: PeerInfo]())

    /// A manager with `configuration`.
    public init(configuration: Configuration = .defaults) {
        var c = configuration
        c.highWater = max(c.highWater, 1)
        c.lowWater = min(max(c.lowWater, 0), c.highWater)
        self.configuration = c
    }

    // MARK: - Tags and protection

    /// Protects `peer`'s connections from trimming and idle closing under `tag` (e.g. `pubsub`);
    /// a peer stays protected while it has at least one tag.
    public func protect(_ peer: PeerID, tag: String) {
        peers.withLockedValue { _ = $0[peer, default: PeerInfo()].protections.insert(tag) }
    }

    /// Removes one protection; returns whether the peer is still protected by another tag.
    @discardableResult
    public func unprotect(_ peer: PeerID, tag: String) -> Bool {
        peers.withLockedValue { peers in
            guard var info = peers[peer] else { return false }
            info.protections.remove(tag)
            peers[peer] = info.protections.isEmpty && info.tags.isEmpty ? nil : info
            return !info.protections.isEmpty
        }
    }

    /// Whether `peer` is protected (by any tag).
    public func isProtected(_ peer: PeerID) -> Bool {
        peers.withLockedValue { !($0[peer]?.protections.isEmpty ?? true) }
    }

    /// Sets `peer`'s value under `tag`; higher-valued peers are trimmed last.
    public func tagPeer(_ peer: PeerID, _ tag: String, value: Int) {
        peers.withLockedValue { $0[peer, default: PeerInfo()].tags[tag] = value }
    }

    /// Removes `peer`'s value under `tag`.
    public func untagPeer(_ peer: PeerID, _ tag: String) {
        peers.withLockedValue { peers in
            guard var info = peers[peer] else { return }
            info.tags[tag] = nil
            peers[peer] = info.protections.isEmpty && info.tags.isEmpty ? nil : info
        }
    }

    /// The sum of `peer`'s tag values.
    public func value(of peer: PeerID) -> Int {
        peers.withLockedValue { $0[peer]?.value ?? 0 }
    }

    // MARK: - Decisions (pure given the tags)

    /// The connections to close now, and why: idle ones first, then, above the high watermark,
    /// the least useful ones until `lowWater` remain.
    public func selectToClose(
        _ connections: [Candidate], now: ContinuousClock.Instant
    ) -> [(id: UInt64, reason: TrimReason)] {
        let info = peers.withLockedValue { $0 }
        func isProtected(_ c: Candidate) -> Bool { !(info[c.peer]?.protections.isEmpty ?? true) }
        var closing: [(UInt64, TrimReason)] = []
        var remaining: [Candidate] = []
        for c in connections {
            if let idle = configuration.idleTimeout, c.streams == 0, now - c.lastActivity >= idle,
                now - c.openedAt >= configuration.gracePeriod, !isProtected(c)
            {
                closing.append((c.id, .idle))
            } else {
                remaining.append(c)
            }
        }
        guard remaining.count > configuration.highWater else { return closing }
        let excess = remaining.count - configuration.lowWater
        let trimmable = remaining
            .filter { now - $0.openedAt >= configuration.gracePeriod && !isProtected($0) }
            .sorted { a, b in
                let va = info[a.peer]?.value ?? 0
                let vb = info[b.peer]?.value ?? 0
                if va != vb { return va < vb }
                if a.streams != b.streams { return a.streams < b.streams }
                return a.openedAt > b.openedAt
            }
        for c in trimmable.prefix(excess) { closing.append((c.id, .watermark)) }
        return closing
    }
}
