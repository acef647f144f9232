import Identity
import Multiformats
import NIOConcurrencyHelpers

/// What the host knows about other peers: addresses (each with an expiry), public keys, protocols,
/// and the agent/protocol versions that identify reported. Safe to use from any task.
public final class Peerstore: Sendable {
    /// How long an address stays valid.
    public enum AddressTTL: Sendable {
        /// For addresses learned in passing (e.g. dialed once): 2 minutes.
        case temporary
        /// For addresses of a peer we were connected to: 10 minutes after it leaves.
        case recentlyConnected
        /// While connected (refreshed on every connection).
        case connected
        /// Never expires.
        case permanent
        case custom(Duration)

        var duration: Duration? {
            switch self {
            case .temporary: return .seconds(120)
            case .recentlyConnected: return .seconds(600)
            case .connected: return .seconds(3600 * 24 * 365)
            case .permanent: return nil
            case .custom(let d): return d
            }
        }
    }

    public struct PeerInfo: Sendable {
        /// Addresses from any source (identify's listen addresses, dials, the application), each
        /// with its expiry (nil: never). Not verified: anyone may have told us.
        public var addresses: [Multiaddr: ContinuousClock.Instant?] = [:]
        /// Addresses of the peer's latest verified signed peer record (RFC 0003), with their expiry:
        /// certified by the peer itself. Replaced as a whole by a record with a greater seq.
        public internal(set) var certifiedAddresses: [Multiaddr: ContinuousClock.Instant?] = [:]
        /// The peer's latest verified signed peer record (kept to pass on, e.g. in peer exchange).
        public internal(set) var signedRecord: SignedPeerRecord?
        public var publicKey: PublicKey?
        public var protocols: [String] = []
        public var agentVersion: String?
        public var protocolVersion: String?
    }

    /// What `addSignedRecord` did with a record.
    public enum RecordUpdate: Sendable, Hashable {
        /// The first record of the peer, or one with a greater seq: its addresses are now the
        /// peer's certified addresses.
        case accepted
        /// The same seq as the stored record: only the addresses' expiry was refreshed.
        case refreshed
        /// An older seq than the stored record's: ignored (RFC 0003: newer records replace older
        /// ones, never the reverse).
        case stale(current: UInt64)
    }

    /// Counts of signed peer records handled since the peerstore was made (see `consumeSignedRecord`).
    public struct RecordCounts: Sendable, Hashable {
        /// Verified and stored (new, newer or refreshed).
        public var accepted = 0
        /// Verified, but older than the record we have.
        public var stale = 0
        /// Failed verification, or about another peer than the one that sent it.
        public var rejected = 0
    }

    private let peers = NIOLockedValueBox<[PeerID: PeerInfo]>([:])
    private let counts = NIOLockedValueBox(RecordCounts())
    /// Our own signed record and the addresses it was made for (see `localSignedRecord`).
    private let local = NIOLockedValueBox<SignedPeerRecord?>(nil)

    public init() {}

    public func addAddresses(_ addresses: [Multiaddr], for peer: PeerID, ttl: AddressTTL) {
        let expiry = ttl.duration.map { ContinuousClock.now + $0 }
        peers.withLockedValue { peers in
            var info = peers[peer] ?? PeerInfo()
            for address in addresses {
                let plain = address.removingPeerID()
                // Never shorten a longer-lived entry.
                if let existing = info.addresses[plain] {
                    guard let existing else { continue }
                    if let expiry, expiry <= existing { continue }
                }
                info.addresses[plain] = expiry
            }
            peers[peer] = info
        }
    }

    /// Forgets every address of `peer`, certified or not (its key and protocols stay).
    public func removeAddresses(for peer: PeerID) {
        peers.withLockedValue { peers in
            peers[peer]?.addresses = [:]
            peers[peer]?.certifiedAddresses = [:]
        }
    }

    /// Re-stamps every address of `peer` with `ttl` (e.g. when its last connection closes).
    public func updateAddressTTL(for peer: PeerID, to ttl: AddressTTL) {
        let expiry = ttl.duration.map { ContinuousClock.now + $0 }
        peers.withLockedValue { peers in
            guard var info = peers[peer] else { return }
            for (address, old) in info.addresses where old != nil { info.addresses[address] = expiry }
            for (address, old) in info.certifiedAddresses where old != nil { info.certifiedAddresses[address] = expiry }
            peers[peer] = info
        }
    }

    /// Unexpired addresses of `peer`, without the `/p2p/` suffix: the certified ones first (in
    /// the order of the peer's record), then the others. Dials try them in this order.
    public func addresses(for peer: PeerID) -> [Multiaddr] {
        let now = ContinuousClock.now
        return peers.withLockedValue { peers in
            guard var info = peers[peer] else { return [] }
            Self.dropExpired(&info, now: now)
            peers[peer] = info
            let certified = Self.orderedCertified(info)
            let certifiedSet = Set(certified)
            let others = info.addresses.keys.filter { !certifiedSet.contains($0) }.sorted { $0.description < $1.description }
            return certified + others
        }
    }

    /// Unexpired certified addresses of `peer` (from its latest verified signed record), in the
    /// record's order, without the `/p2p/` suffix.
    public func certifiedAddresses(for peer: PeerID) -> [Multiaddr] {
        let now = ContinuousClock.now
        return peers.withLockedValue { peers in
            guard var info = peers[peer] else { return [] }
            Self.dropExpired(&info, now: now)
            peers[peer] = info
            return Self.orderedCertified(info)
        }
    }

    /// Whether `address` (with or without `/p2p/`) is an unexpired certified address of `peer`.
    public func isCertified(_ address: Multiaddr, for peer: PeerID) -> Bool {
        let plain = address.removingPeerID()
        let now = ContinuousClock.now
        return peers.withLockedValue { peers in
            guard let entry = peers[peer]?.certifiedAddresses[plain] else { return false }
            return entry.map { $0 > now } ?? true
        }
    }

    /// The latest verified signed peer record of `peer`, if we have one; its `bytes` are the
    /// envelope to pass on. Kept while the peer is known, even after its addresses expired: the
    /// signature does not expire, and its seq still orders later records.
    public func signedRecord(for peer: PeerID) -> SignedPeerRecord? {
        peers.withLockedValue { $0[peer]?.signedRecord }
    }

    /// Stores a verified record (RFC 0003 "Peer Store APIs"): a greater seq than the stored
    /// record's replaces it and its addresses become the peer's certified addresses (with `ttl`);
    /// the same seq refreshes their expiry; a smaller one is ignored (`.stale`).
    @discardableResult
    public func addSignedRecord(_ signed: SignedPeerRecord, ttl: AddressTTL) -> RecordUpdate {
        let expiry = ttl.duration.map { ContinuousClock.now + $0 }
        let peer = signed.peerID
        let update = peers.withLockedValue { peers -> RecordUpdate in
            var info = peers[peer] ?? PeerInfo()
            if let current = info.signedRecord {
                if signed.seq < current.seq { return .stale(current: current.seq) }
                if signed.seq == current.seq {
                    for address in Self.plainAddresses(of: current) {
                        if let existing = info.certifiedAddresses[address] {
                            info.certifiedAddresses[address] = Self.longer(existing, expiry)
                        } else {
                            info.certifiedAddresses[address] = expiry
                        }
                    }
                    peers[peer] = info
                    return .refreshed
                }
            }
            info.signedRecord = signed
            info.certifiedAddresses = [:]
            for address in Self.plainAddresses(of: signed) { info.certifiedAddresses[address] = expiry }
            if info.publicKey == nil { info.publicKey = signed.envelope.publicKey }
            peers[peer] = info
            return .accepted
        }
        counts.withLockedValue { c in
            if case .stale = update { c.stale += 1 } else { c.accepted += 1 }
        }
        return update
    }

    /// Opens received envelope bytes as a signed peer record and stores it (`addSignedRecord`).
    /// With `expectedPeer` (the peer that sent it, e.g. over identify), a valid record of another
    /// peer is refused with `.unexpectedPeer`. Every failure is a `RecordError` and is counted in
    /// `recordCounts.rejected`; nothing is stored then.
    @discardableResult
    public func consumeSignedRecord(
        _ bytes: [UInt8], expectedPeer: PeerID?, ttl: AddressTTL
    ) throws(RecordError) -> (record: SignedPeerRecord, update: RecordUpdate) {
        // The record we already hold, sent again (identify push, a second identify): no need to
        // verify the same bytes twice.
        if let expectedPeer, let current = signedRecord(for: expectedPeer), current.bytes == bytes {
            return (current, addSignedRecord(current, ttl: ttl))
        }
        let signed: SignedPeerRecord
        do throws(RecordError) {
            signed = try SignedPeerRecord(opening: bytes)
            if let expectedPeer, signed.peerID != expectedPeer {
                throw RecordError(.unexpectedPeer, "signed peer record of \(signed.peerID), received from \(expectedPeer)")
            }
        } catch {
            counts.withLockedValue { $0.rejected += 1 }
            throw error
        }
        return (signed, addSignedRecord(signed, ttl: ttl))
    }

    /// How many signed peer records were accepted, stale or rejected so far.
    public var recordCounts: RecordCounts {
        counts.withLockedValue { $0 }
    }

    /// Our own signed peer record for `addresses`: the cached one while the addresses are the
    /// same (the same seq, no signing per identify request), else a new one signed with `key`
    /// (a new seq). Nil if `key` cannot sign or the record would be over the envelope limits.
    public func localSignedRecord(addresses: [Multiaddr], key: PrivateKey) -> SignedPeerRecord? {
        local.withLockedValue { cached in
            if let cached, cached.addresses == addresses, cached.envelope.publicKey == key.publicKey { return cached }
            let record = PeerRecord(peerID: key.peerID, addresses: addresses)
            guard let signed = try? SignedPeerRecord.seal(record, with: key) else { return nil }
            cached = signed
            return signed
        }
    }

    /// The record's addresses without `/p2p/<the peer>`; an address naming another peer is left out.
    private static func plainAddresses(of signed: SignedPeerRecord) -> [Multiaddr] {
        var out: [Multiaddr] = []
        for address in signed.addresses {
            if let named = address.peerIDBytes, named != signed.peerID.bytes { continue }
            let plain = address.removingPeerID()
            if !plain.isEmpty, !out.contains(plain) { out.append(plain) }
        }
        return out
    }

    /// Certified addresses in the order of the record they came from.
    private static func orderedCertified(_ info: PeerInfo) -> [Multiaddr] {
        guard let signed = info.signedRecord else { return [] }
        return plainAddresses(of: signed).filter { info.certifiedAddresses[$0] != nil }
    }

    private static func dropExpired(_ info: inout PeerInfo, now: ContinuousClock.Instant) {
        info.addresses = info.addresses.filter { $0.value.map { $0 > now } ?? true }
        info.certifiedAddresses = info.certifiedAddresses.filter { $0.value.map { $0 > now } ?? true }
    }

    /// The later of two expiries (nil: never expires).
    private static func longer(_ a: ContinuousClock.Instant?, _ b: ContinuousClock.Instant?) -> ContinuousClock.Instant? {
        guard let a, let b else { return nil }
        return max(a, b)
    }

    public func setPublicKey(_ key: PublicKey, for peer: PeerID) {
        guard peer.matches(key) else { return }
        peers.withLockedValue { $0[peer, default: PeerInfo()].publicKey = key }
    }

    public func publicKey(for peer: PeerID) -> PublicKey? {
        peers.withLockedValue { $0[peer]?.publicKey } ?? peer.publicKey
    }

    public func setProtocols(_ protocols: [String], for peer: PeerID) {
        peers.withLockedValue { $0[peer, default: PeerInfo()].protocols = protocols }
    }

    public func protocols(for peer: PeerID) -> [String] {
        peers.withLockedValue { $0[peer]?.protocols ?? [] }
    }

    public func setAgentVersion(_ agent: String?, protocolVersion: String?, for peer: PeerID) {
        peers.withLockedValue {
            if let agent { $0[peer, default: PeerInfo()].agentVersion = agent }
            if let protocolVersion { $0[peer, default: PeerInfo()].protocolVersion = protocolVersion }
        }
    }

    public func info(for peer: PeerID) -> PeerInfo? {
        peers.withLockedValue { $0[peer] }
    }

    public var knownPeers: [PeerID] {
        peers.withLockedValue { Array($0.keys) }
    }
}
