import Basics
import Identity
import LibP2P

/// Gossipsub v1.1 peer exchange (`gossipsub-v1.1.md`, "Peer Exchange"), the engine's part: the
/// router decides when a PRUNE carries peers and whose offers to take (score ≥ `acceptPX`); the
/// engine attaches the signed peer records to what it sends (`attachingRecords`) and checks the
/// records of what it takes (`plan`) before connecting. Pure functions, no I/O.
enum PeerExchange {
    /// An offered peer worth a connection attempt.
    struct Candidate: Sendable, Equatable {
        /// The offered peer.
        let peer: PeerID
        /// Its verified signed peer record, if the offer carried one (without, the host can only
        /// use addresses it already knows, or its peer routing).
        let record: SignedPeerRecord?
    }

    /// What `plan` made of a PRUNE's offers.
    struct Plan: Sendable, Equatable {
        /// The peers to connect to, in the order offered.
        var candidates: [Candidate] = []
        /// Offers whose record failed verification (ignored).
        var invalidRecords = 0
        /// Why the first invalid record failed, for the log.
        var firstFailure: RecordError?
        /// Offers left out: ourselves, peers we are connected to, peers offered twice (after a
        /// valid offer), peer IDs that do not parse.
        var skipped = 0
        /// Offers not looked at: `limit` candidates were found before them.
        var overLimit = 0

        static func == (lhs: Plan, rhs: Plan) -> Bool {
            lhs.candidates == rhs.candidates && lhs.invalidRecords == rhs.invalidRecords && lhs.skipped == rhs.skipped
                && lhs.overLimit == rhs.overLimit
        }
    }

    /// Checks offered peers: each record must open as a signed peer record (envelope signature,
    /// domain `libp2p-peer-record`, payload type 03 01, signed by the record's peer) about the
    /// offered peer ID — go-libp2p-pubsub drops the offer otherwise, and so do we. Ourselves and
    /// peers `isConnected` says we are connected to are skipped. At most `limit` candidates; the
    /// offers after the limit is reached are not looked at (`overLimit`).
    static func plan(
        _ offers: [PubSubRPC.Prune.PeerInfo], localPeer: PeerID, limit: Int, isConnected: (PeerID) -> Bool
    ) -> Plan {
        var plan = Plan()
        var taken: Set<PeerID> = []
        for (index, offer) in offers.enumerated() {
            guard plan.candidates.count < limit else {
                plan.overLimit = offers.count - index
                break
            }
            guard let bytes = offer.peerID, let peer = try? PeerID(bytes: bytes),
                  peer != localPeer, !taken.contains(peer), !isConnected(peer) else {
                plan.skipped += 1
                continue
            }
            var record: SignedPeerRecord?
            if let envelope = offer.signedPeerRecord {
                do throws(RecordError) {
                    let opened = try SignedPeerRecord(opening: envelope)
                    guard opened.peerID == peer else {
                        throw RecordError(.unexpectedPeer, "peer exchange record of \(opened.peerID) offered as \(peer)")
                    }
                    record = opened
                } catch {
                    plan.invalidRecords += 1
                    if plan.firstFailure == nil { plan.firstFailure = error }
                    continue
                }
            }
            taken.insert(peer)
            plan.candidates.append(Candidate(peer: peer, record: record))
        }
        return plan
    }

    /// `rpc` with the signed peer record (`record(peer)`, when it gives one) attached to every
    /// peer its PRUNEs offer without one. The spec: "the pruning peer SHOULD include the signed
    /// peer record of each peer it offers, when it has one".
    static func attachingRecords(to rpc: PubSubRPC, record: (PeerID) -> SignedPeerRecord?) -> PubSubRPC {
        guard var control = rpc.control, control.prune.contains(where: { !$0.peers.isEmpty }) else { return rpc }
        for p in control.prune.indices {
            for i in control.prune[p].peers.indices where control.prune[p].peers[i].signedPeerRecord == nil {
                guard let bytes = control.prune[p].peers[i].peerID, let peer = try? PeerID(bytes: bytes),
                      let signed = record(peer) else { continue }
                control.prune[p].peers[i].signedPeerRecord = signed.bytes
            }
        }
        var out = rpc
        out.control = control
        return out
    }
}
