import DNS
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
