import Identity
import Logging
import Metrics
import Multiformats

extension P2PHost {
    /// Our signed peer record (RFC 0003) for the addresses we advertise (`advertisedAddresses`),
    /// as identify sends it, for peer exchange. Signed once per set of addresses: the same record (same seq)
    /// while they do not change, a new one with a greater seq when they do. Nil only if the record
    /// would be over the envelope limits.
    public var signedPeerRecord: SignedPeerRecord? {
        peerstore.localSignedRecord(addresses: advertisedAddresses, key: identity)
    }

    /// Verifies and stores a signed peer record that `sender` sent us (in identify, or passed on in
    /// peer exchange with `sender` the peer the record claims to be about). A record that fails
    /// verification or is about another peer is ignored: a debug log line, the
    /// `pointsub_signed_peer_records_total{result="rejected"}` counter and
    /// `peerstore.recordCounts.rejected`, nil returned; never an error for the connection.
    @discardableResult
    public func consumeSignedPeerRecord(
        _ bytes: [UInt8], from sender: PeerID, ttl: Peerstore.AddressTTL = .connected
    ) -> Peerstore.RecordUpdate? {
        do {
            let (signed, update) = try peerstore.consumeSignedRecord(bytes, expectedPeer: sender, ttl: ttl)
            let result: String
            switch update {
            case .accepted: result = "accepted"
            case .refreshed: result = "refreshed"
            case .stale: result = "stale"
            }
            Counter(label: "pointsub_signed_peer_records_total", dimensions: [("result", result)]).increment()
            if case .stale(let current) = update {
                logger.debug(
                    "ignoring an older signed peer record",
                    metadata: ["peer": "\(sender)", "seq": "\(signed.seq)", "current_seq": "\(current)"])
            }
            return update
        } catch {
            Counter(label: "pointsub_signed_peer_records_total", dimensions: [("result", "rejected")]).increment()
            logger.debug("ignoring a signed peer record", metadata: ["peer": "\(sender)", "error": "\(error)"])
            return nil
        }
    }
}
