import Identity
import Multiformats

extension FuzzTargets {
    /// Signed envelopes and peer records. The first byte picks what the rest is:
    /// 0 an envelope (decode, re-marshal, and the signature check for the peer-record domain),
    /// 1 a signed peer record (the full `SignedPeerRecord(opening:)` path), 2 a bare peer record.
    static func fuzzPeerRecord(_ input: [UInt8], _ check: inout Checker) throws(FuzzInvariantFailure) {
        var reader = FuzzReader(input)
        let mode = reader.byte()
        let body = reader.rest()
        switch mode % 3 {
        case 0:
            guard let envelope = try? SignedEnvelope.decode(body) else { return }
            let again = try? SignedEnvelope.decode(envelope.marshal())
            try check(again == envelope, "envelope round trip differs")
            // The verification path must not trap on any key/signature pair.
            _ = try? envelope.verify(domain: PeerRecord.domain)
            _ = try? SignedEnvelope.open(body, domain: PeerRecord.domain, payloadType: PeerRecord.payloadType)
        case 1:
            guard let signed = try? SignedPeerRecord(opening: body) else { return }
            try check(signed.record.peerID.matches(signed.envelope.publicKey), "opened record not of its signer")
            try check(signed.bytes == body, "opened record does not keep its bytes")
            let reopened = try? SignedPeerRecord(opening: signed.envelope.marshal())
            try check(reopened?.record == signed.record, "re-marshalled envelope does not open to the same record")
        default:
            guard let record = try? PeerRecord(decoding: body) else { return }
            let again = try? PeerRecord(decoding: record.encoded())
            try check(again == record, "peer record round trip differs")
            try check(again?.skippedAddresses == 0, "re-encoded record has unparsable addresses")
        }
    }

    static func peerRecordSeeds() -> [[UInt8]] {
        var seeds: [[UInt8]] = []
        // String literals: Multiaddr's literal initializer (valid constants).
        let addresses: [Multiaddr] = ["/ip4/127.0.0.1/tcp/4001", "/ip6/::1/udp/4001/quic-v1"]
        for key in [SeedKeys.ed25519, SeedKeys.ecdsa] {
            let record = PeerRecord(peerID: key.peerID, seq: 1_700_000_000_000_000_000, addresses: addresses)
            guard let signed = try? SignedPeerRecord.seal(record, with: key) else { continue }
            seeds.append([0] + signed.bytes)
            seeds.append([1] + signed.bytes)
            seeds.append([2] + record.encoded())
        }
        return seeds
    }
}
