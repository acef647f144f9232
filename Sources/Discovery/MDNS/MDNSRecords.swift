import DNS
import Identity
import Multiformats

/// The libp2p mDNS records (libp2p mDNS spec) as value-type builders and readers, no I/O.
///
/// A query is a PTR question for the service name (`_p2p._udp.local`). A peer answers with a PTR
/// record from the service name to `<peer-name>._p2p._udp.local` (a random label, 32–63
/// characters) and, in the additional section, a TXT record of that name holding one
/// `dnsaddr=<multiaddr ending in /p2p/<id>>` string per address.
public enum MDNSRecords {
    /// The service name of the spec.
    public static let serviceName = "_p2p._udp.local"

    /// The query message.
    public static func query(service: String = serviceName) -> DNSMessage {
        DNSMessage(id: 0, flags: 0, questions: [.init(name: service, type: DNSMessage.RecordType.ptr.rawValue)])
    }

    /// Our answer: PTR to `peerName`, and the TXT record with our addresses (those over 255 bytes
    /// as text are left out: a TXT string cannot hold them).
    public static func response(
        peerName: String, addresses: [Multiaddr], service: String = serviceName, ttl: UInt32 = 120
    ) throws(DNSError) -> DNSMessage {
        let instance = "\(peerName).\(service)"
        var pointer: [UInt8] = []
        try DNSMessage.encodeNameBytes(instance, into: &pointer)
        let strings = addresses.map { "dnsaddr=\($0)" }.filter { $0.utf8.count <= 255 }
        return DNSMessage(
            id: 0, flags: 0x8400, questions: [],
            answers: [.init(name: service, type: DNSMessage.RecordType.ptr.rawValue, ttl: ttl, data: pointer)],
            additional: [.init(name: instance, type: DNSMessage.RecordType.txt.rawValue, ttl: ttl, data: try DNSMessage.txtData(strings))])
    }

    /// Whether `message` asks for the service.
    public static func isQuery(_ message: DNSMessage, service: String = serviceName) -> Bool {
        !message.isResponse
            && message.questions.contains { $0.name.lowercased() == service && $0.type == DNSMessage.RecordType.ptr.rawValue }
    }

    /// The peers a response announces, with their addresses (`dnsaddr=` strings of its TXT records;
    /// unparsable ones and ones without `/p2p/` skipped). At most `maxPeers` peers and
    /// `maxAddressesPerPeer` addresses each.
    public static func peers(
        in message: DNSMessage, maxPeers: Int = 32, maxAddressesPerPeer: Int = 16
    ) -> [(peer: PeerID, addresses: [Multiaddr])] {
        guard message.isResponse else { return [] }
        var order: [PeerID] = []
        var found: [PeerID: [Multiaddr]] = [:]
        for record in message.answers + message.additional {
            for text in record.txtStrings ?? [] where text.hasPrefix("dnsaddr=") {
                guard let address = Multiaddr(String(text.dropFirst("dnsaddr=".count))), let peer = address.peerID else {
                    continue
                }
                if found[peer] == nil {
                    guard order.count < maxPeers else { continue }
                    order.append(peer)
                }
                if found[peer, default: []].count < maxAddressesPerPeer, !found[peer, default: []].contains(address) {
                    found[peer, default: []].append(address)
                }
            }
        }
        return order.map { ($0, found[$0] ?? []) }
    }

    /// A random peer name: 32 to 63 letters and digits (the spec's range).
    public static func randomPeerName() -> String {
        let alphabet = Array("abcdefghijklmnopqrstuvwxyz0123456789")
        return String((0..<Int.random(in: 32...63)).map { _ in alphabet.randomElement()! })
    }
}
