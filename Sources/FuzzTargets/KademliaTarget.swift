import DNS
import Foundation
import Identity
import Kademlia

extension FuzzTargets {
    /// A kad-dht message as it comes off a stream: decode with the default limits; whatever
    /// decodes must re-encode to a message that decodes to the same value.
    static func fuzzKadMessage(_ input: [UInt8], _ check: inout Checker) throws(FuzzInvariantFailure) {
        guard let message = try? KadMessage(decoding: input) else { return }
        let again = try? KadMessage(decoding: message.encoded())
        try check(again == message, "kad message round trip differs")
    }
}

extension FuzzTargets {
    /// DAG-CBOR: decode within the limits; whatever decodes encodes canonically, and that
    /// encoding decodes and encodes to the same bytes.
    static func fuzzDAGCBOR(_ input: [UInt8], _ check: inout Checker) throws(FuzzInvariantFailure) {
        guard let value = try? DAGCBOR(decoding: input) else { return }
        let canonical = value.encoded()
        let again = try? DAGCBOR(decoding: canonical)
        try check(again?.encoded() == canonical, "DAG-CBOR canonical encoding does not round trip")
    }

    /// An IPNS record: decode, re-encode to the same record, verify it against the name of the
    /// seed key and against the name inlined in its own public key (never a crash; a record
    /// that verifies must carry the signed fields).
    static func fuzzIPNSRecord(_ input: [UInt8], _ check: inout Checker) throws(FuzzInvariantFailure) {
        guard let record = try? IPNSRecord(decoding: input) else { return }
        let again = try? IPNSRecord(decoding: record.encoded())
        try check(again == record, "IPNS record round trip differs")
        _ = record.signedValue
        _ = record.isNewer(than: record)
        let now = Date(timeIntervalSince1970: 1_800_000_000)
        var names = [SeedKeys.ed25519.peerID]
        if let key = record.publicKey.flatMap({ try? PublicKey(marshaled: $0) }) { names.append(PeerID(publicKey: key)) }
        for name in names where (try? record.validate(for: name, now: now)) != nil {
            try check(record.expiry != nil && record.signedSequence != nil, "a valid IPNS record without EOL or sequence")
        }
    }
}

extension FuzzTargets {
    /// A DNS answer (dnsaddr TXT lookups, mDNS): decode within the limits, read every TXT record;
    /// whatever decodes re-encodes (uncompressed) to a message that decodes the same.
    static func fuzzDNSMessage(_ input: [UInt8], _ check: inout Checker) throws(FuzzInvariantFailure) {
        guard let message = try? DNSMessage(decoding: input) else { return }
        for record in message.answers + message.additional { _ = record.txtStrings }
        guard let encoded = try? message.encoded() else { return }
        let again = try? DNSMessage(decoding: encoded)
        try check(again == message, "DNS message round trip differs")
    }
}
