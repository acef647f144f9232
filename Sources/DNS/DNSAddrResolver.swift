import Basics
import Identity
import Multiformats

/// Resolves `/dnsaddr/<host>` multiaddrs (libp2p's dnsaddr spec): the TXT records of
/// `_dnsaddr.<host>` hold `dnsaddr=<multiaddr>` strings, which may be `/dnsaddr` again
/// (resolved recursively). When the address ends in `/p2p/<id>`, only results for that peer are
/// kept. Depth and the number of addresses are bounded, so a loop or a huge answer is an error or
/// a truncated list, never unbounded work.
public struct DNSAddrResolver: Sendable {
    /// Where TXT questions go.
    public var client: DNSClient
    /// `/dnsaddr` levels followed at most (go-libp2p's madns allows 32; real networks use 1–2).
    public var maxDepth = 4
    /// Addresses returned at most (go-libp2p caps a dnsaddr resolution at 100).
    public var maxAddresses = 100

    /// A resolver asking `client`.
    public init(client: DNSClient) {
        self.client = client
    }

    /// The addresses `address` stands for: itself when it is not `/dnsaddr`, else its TXT
    /// records' addresses, resolved down to non-dnsaddr ones.
    public func resolve(_ address: Multiaddr) async throws -> [Multiaddr] {
        var out: [Multiaddr] = []
        try await resolve(address, depth: 0, into: &out)
        return out
    }

    private func resolve(_ address: Multiaddr, depth: Int, into out: inout [Multiaddr]) async throws {
        guard case .dnsaddr(let host)? = address.components.first else {
            if out.count < maxAddresses, !out.contains(address) { out.append(address) }
            return
        }
        guard depth < maxDepth else {
            throw DNSError(.limitExceeded, "/dnsaddr nested deeper than \(maxDepth) levels at \(host)")
        }
        let wanted = address.peerID
        let answer = try await client.query("_dnsaddr.\(host)", type: .txt)
        for record in answer.answers {
            for text in record.txtStrings ?? [] where text.hasPrefix("dnsaddr=") {
                // Entries we cannot parse (a protocol we do not know) are skipped, as go does.
                guard let entry = Multiaddr(String(text.dropFirst("dnsaddr=".count))) else { continue }
                if let wanted, entry.peerID != wanted { continue }
                guard out.count < maxAddresses else { return }
                try await resolve(entry, depth: depth + 1, into: &out)
            }
        }
    }
}
