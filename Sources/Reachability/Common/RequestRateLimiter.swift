import Basics
import Identity

/// Rate limits for requests that make a server work for a peer (AutoNAT dial-backs): at most
/// `perPeer` a minute from one peer and `total` a minute from everyone, each a token bucket with
/// a burst of a minute's worth. A value type, no I/O; memory bounded by forgetting peers whose
/// bucket is full again once more than 4096 are tracked.
struct RequestRateLimiter: Sendable {
    /// Requests a minute from one peer.
    let perPeer: Double
    /// Requests a minute in total.
    let total: Double
    private var peers: [PeerID: TokenBucket] = [:]
    private var global: TokenBucket?

    /// Limits of `perPeer` and `total` requests a minute.
    init(perPeerPerMinute perPeer: Int, totalPerMinute total: Int) {
        self.perPeer = Double(perPeer)
        self.total = Double(total)
    }

    /// Whether a request from `peer` may be served now (and if so, counts it). A refused request
    /// costs nothing: both buckets are checked before taking from either.
    mutating func admit(_ peer: PeerID, now: ContinuousClock.Instant = .now) -> Bool {
        var globalBucket = global ?? TokenBucket(burst: total, now: now)
        var peerBucket = peers[peer] ?? TokenBucket(burst: perPeer, now: now)
        var globalProbe = globalBucket, peerProbe = peerBucket
        let admitted = globalProbe.take(rate: total / 60, burst: total, now: now)
            && peerProbe.take(rate: perPeer / 60, burst: perPeer, now: now)
        if admitted {
            globalBucket = globalProbe
            peerBucket = peerProbe
        }
        global = globalBucket
        if peers.count > 4096 { peers = peers.filter { $0.value.tokens < perPeer } }
        peers[peer] = peerBucket
        return admitted
    }
}
