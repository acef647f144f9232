import NIOCore
import Testing
@testable import Multiformats

@Suite struct MultiaddrTests {
    // Text ↔ binary vectors. Codes from the multiaddr protocols table; the first is
    // the spec's own example (test/multiaddr.feature); the rest are hand-assembled
    // from the table (code varint ‖ value).
    static let vectors: [(String, String)] = [
        ("/ip4/192.0.2.42/tcp/443", "04c000022a0601bb"),
        ("/ip4/127.0.0.1/tcp/4001", "047f000001060fa1"),
        ("/ip4/127.0.0.1/udp/1234", "047f000001910204d2"),
        ("/ip6/::1/tcp/0", "2900000000000000000000000000000001060000"),
        ("/dns4/example.com/tcp/443/wss", "360b6578616d706c652e636f6d0601bbde03"),
        ("/ip4/1.2.3.4/udp/4001/quic-v1", "040102030491020fa1cd03"),
        ("/p2p-circuit", "a202"),
        ("/ip4/1.2.3.4/udp/4001/quic", "040102030491020fa1cc03"),
        ("/dnsaddr/bootstrap.libp2p.io", "3813626f6f7473747261702e6c69627032702e696f"),
        ("/ip4/1.2.3.4/tcp/443/tls/ws", "04010203040601bbc003dd03"),
        ("/p2p/QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N",
         "a503221220" + "9dff3b17d74cf4d38a50d8b6383e92d181a10395a5e73a726dcccbd21bf6f0b9"),
        ("/ip4/1.2.3.4/tcp/4001/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA",
         "0401020304060fa1a50326" + "0024080112202ffa35a99d3a3cfbb17bb7c1dc5561b18a8dcca4df38dc613ea859c37eb1336b"),
        // /memory: code 0x309 (varint 89 06), then the value as 8 big-endian bytes; py-multiaddr
        // 0.2.0 (Interop/.venv) gives the same bytes for these four.
        ("/memory/0", "89060000000000000000"),
        ("/memory/1234", "890600000000000004d2"),
        ("/memory/18446744073709551615", "8906ffffffffffffffff"),
        ("/memory/72623859790382856/p2p/QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N",
         "89060102030405060708" + "a503221220" + "9dff3b17d74cf4d38a50d8b6383e92d181a10395a5e73a726dcccbd21bf6f0b9"),
        ("/", ""),
    ]

    @Test(arguments: vectors)
    func textBinaryVectors(text: String, binary: String) throws {
        let fromText = try Multiaddr(text)
        #expect(fromText.bytes == hex(binary))
        #expect(fromText.description == text)
        let fromBinary = try Multiaddr(bytes: hex(binary))
        #expect(fromBinary == fromText)
        #expect(fromBinary.description == text)
    }

    @Test func componentsAndAccessors() throws {
        let ma: Multiaddr = "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"
        #expect(ma.components.count == 3)
        #expect(ma.components[0] == .ip4(IPv4Address(127, 0, 0, 1)))
        #expect(ma.tcpPort == 4001)
        #expect(ma.udpPort == nil)
        #expect(ma.ipAddress == .v4(IPv4Address(127, 0, 0, 1)))
        #expect(ma.peerIDBytes.map { Base58.encode($0) } == "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA")
        #expect(ma.removingPeerID().description == "/ip4/127.0.0.1/tcp/4001")
        #expect(ma.removingPeerID().peerIDBytes == nil)
        #expect(ma.removingPeerID().removingPeerID() == ma.removingPeerID())
        let rebuilt = (try parse("/ip4/127.0.0.1")).appending(.tcp(4001)).appending(.p2p(ma.peerIDBytes!))
        #expect(rebuilt == ma)
        #expect(try parse("/dns/example.com/tcp/1").ipAddress == nil)
    }

    @Test func textNormalisation() throws {
        // Trailing slash, /ipfs alias, CIDv1 peer ID, non-canonical IPv6 forms all
        // print canonically.
        #expect(try parse("/ip4/1.2.3.4/tcp/80/").description == "/ip4/1.2.3.4/tcp/80")
        #expect(try parse("/ipfs/QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N").description
                == "/p2p/QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N")
        #expect(try parse("/p2p/bafzbeie5745rpv2m6tjyuugywy4d5ewrqgqqhfnf445he3omzpjbx5xqxe").description
                == "/p2p/QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N")
        #expect(try parse("/ip6/0:0:0:0:0:0:0:1/tcp/1").description == "/ip6/::1/tcp/1")
        #expect(try parse("/ip6/2001:DB8:0:0:1:0:0:1/udp/1").description == "/ip6/2001:db8::1:0:0:1/udp/1")
        #expect(try parse("/ip6/::ffff:1.2.3.4/tcp/1").description == "/ip6/::ffff:1.2.3.4/tcp/1")
        #expect(try parse("/") == Multiaddr([]))
    }

    @Test func ipv6Formatting() throws {
        let cases: [(String, String)] = [
            ("::", "::"),
            ("::1", "::1"),
            ("1::", "1::"),
            ("2001:db8::", "2001:db8::"),
            ("2001:0db8:0000:0000:0000:ff00:0042:8329", "2001:db8::ff00:42:8329"),
            ("2001:db8:0:1:1:1:1:1", "2001:db8:0:1:1:1:1:1"),  // single zero group not compressed
            ("2001:0:0:1:0:0:0:1", "2001:0:0:1::1"),  // longest run wins
            ("2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"),  // first of equal runs
            ("fe80::1:2:3:4", "fe80::1:2:3:4"),
            ("::ffff:10.0.0.1", "::ffff:10.0.0.1"),
            ("::ffff:a00:1", "::ffff:10.0.0.1"),
            ("64:ff9b::1.2.3.4", "64:ff9b::102:304"),
        ]
        for (input, canonical) in cases {
            let a = try #require(IPv6Address(input), "\(input)")
            #expect(a.description == canonical, "\(input)")
            #expect(IPv6Address(a.description) == a)
            #expect(IPv6Address(bytes: a.bytes) == a)
        }
        for bad in ["", ":", ":::", "1:::2", "1::2::3", ":1::", "1:2:3:4:5:6:7", "1:2:3:4:5:6:7:8:9",
                    "12345::", "g::", "::1.2.3", "1.2.3.4", "::1.2.3.4:1", "1::2:3:4:5:6:7:8", "fe80::1%eth0"] {
            #expect(IPv6Address(bad) == nil, "\(bad)")
        }
    }

    @Test func ipv4Parsing() {
        #expect(IPv4Address("0.0.0.0") == IPv4Address(0, 0, 0, 0))
        #expect(IPv4Address("255.255.255.255")?.rawValue == UInt32.max)
        for bad in ["", "1.2.3", "1.2.3.4.5", "256.1.1.1", "01.2.3.4", "1.2.3.-1", "1..2.3", " 1.2.3.4", "a.b.c.d", "1.2.3.4 "] {
            #expect(IPv4Address(bad) == nil, "\(bad)")
        }
    }

    static let invalidText: [String] = [
        "", "ip4/1.2.3.4", "//ip4/1.2.3.4", "/ip4", "/ip4/", "/ip4/1.2.3.4/tcp", "/ip4/1.2.3.256",
        "/ip4/1.2.3.4/tcp/65536", "/ip4/1.2.3.4/tcp/-1", "/ip4/1.2.3.4/tcp/+1", "/ip4/1.2.3.4/tcp/80a",
        "/ip4/1.2.3.4/tcp/", "/ip4/1.2.3.4//tcp/1", "/foo/1", "/ip4/1.2.3.4/tcp/1/bogus", "/ip6/1.2.3.4",
        "/dns4/", "/dns4/exa mple.com", "/dns4/a..b", "/dns4/" + String(repeating: "a", count: 64) + ".com",
        "/dns4/" + Array(repeating: "abcdefghi", count: 30).joined(separator: "."),
        "/p2p/QmInvalid0", "/p2p/Qm", "/p2p/bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi",
        "/p2p/notbase58", "/certhash/zz", "/certhash/xabc", "/tcp/1/1",
        "/memory", "/memory/", "/memory/-1", "/memory/+1", "/memory/0x10", "/memory/1a", "/memory/ 1",
        "/memory/18446744073709551616", "/memory/000000000000000000001",
    ]

    @Test(arguments: invalidText)
    func invalidTextRejected(text: String) {
        #expect(throws: MultiformatsError.self) { try Multiaddr(text) }
        #expect(Multiaddr(Substring(text)) == nil)
    }

    static let invalidBinary: [String] = [
        "04",  // ip4 without value
        "047f0000",  // truncated ip4
        "047f000001060f",  // truncated tcp port
        "047f00000106",  // missing port
        "ff",  // truncated code varint
        "8000",  // non-minimal code varint
        "2a00",  // unknown code 42 (ip6zone is not supported)
        "0501",  // unknown code 5
        "3605616263",  // dns4 length beyond input
        "360061",  // dns4 empty name, then garbage
        "3603612f62",  // dns4 containing '/'
        "a5030400010203",  // p2p whose multihash length is wrong
        "a50300",  // p2p with empty multihash
        "047f000001060fa1a2",  // trailing garbage (truncated varint)
        "8906",  // memory without value
        "890600000000000000",  // memory value of 7 bytes
    ]

    @Test(arguments: invalidBinary)
    func invalidBinaryRejected(binary: String) {
        #expect(throws: MultiformatsError.self) { try Multiaddr(bytes: hex(binary)) }
    }

    @Test func specificErrors() {
        #expect(throws: MultiformatsError.unknownProtocolName("foo")) { try parse("/foo/1") }
        #expect(throws: MultiformatsError.unknownProtocolCode(5)) { try Multiaddr(bytes: [0x05, 0x01]) }
        #expect(throws: MultiformatsError.malformedMultiaddr("missing value for /tcp")) { try parse("/ip4/1.2.3.4/tcp") }
    }

    @Test func memoryComponent() throws {
        let ma = try parse("/memory/42")
        #expect(ma.components == [.memory(42)])
        #expect(ma.components[0].code == 0x309)
        #expect(ma.components[0].name == "memory")
        #expect(ma.components[0].valueBytes == [0, 0, 0, 0, 0, 0, 0, 42])
        #expect(Multiaddr([.memory(7)]).description == "/memory/7")
        // Leading zeros are accepted in text (as for ports) and printed canonically.
        #expect(try parse("/memory/007").description == "/memory/7")
        #expect(ma.tcpPort == nil && ma.ipAddress == nil)
    }

    @Test func certhashUsesMultibase() throws {
        let digest = (0..<32).map { UInt8($0) }
        let mh = Multihash.sha256(digest).bytes
        let b58 = Multibase.encode(mh, as: .base58btc)
        let ma = try parse("/ip4/1.2.3.4/udp/443/quic-v1/webtransport/certhash/\(b58)")
        #expect(ma.components.last == .certhash(mh))
        // Prints base64url, parses back to the same value.
        let text = ma.description
        #expect(text.hasSuffix("/certhash/" + Multibase.encode(mh, as: .base64url)))
        #expect(try Multiaddr(text) == ma)
        #expect(try Multiaddr(bytes: ma.bytes) == ma)
    }

    /// Random multiaddrs survive text and binary round trips.
    @Test func randomRoundTrips() throws {
        var rng = SplitMix64(seed: 4)
        func randomComponent() -> Multiaddr.Component {
            switch Int.random(in: 0..<15, using: &rng) {
            case 0: return .ip4(IPv4Address(rawValue: .random(in: 0...UInt32.max, using: &rng)))
            case 1: return .ip6(IPv6Address(high: .random(in: 0...UInt64.max, using: &rng),
                                             low: Bool.random(using: &rng) ? 0 : .random(in: 0...UInt64.max, using: &rng)))
            case 2: return .tcp(.random(in: 0...UInt16.max, using: &rng))
            case 3: return .udp(.random(in: 0...UInt16.max, using: &rng))
            case 4:
                let labels = (0..<Int.random(in: 1...4, using: &rng)).map { _ in
                    String((0..<Int.random(in: 1...10, using: &rng)).map { _ in "abcxyz019-_".randomElement(using: &rng)! })
                }
                let name = labels.joined(separator: ".")
                return [Multiaddr.Component.dns(name), .dns4(name), .dns6(name), .dnsaddr(name), .sni(name)]
                    .randomElement(using: &rng)!
            case 5: return .p2p(Multihash.sha256(rng.bytes(8)).bytes)
            case 6: return .p2p(Multihash.identity(rng.bytes(Int.random(in: 1...42, using: &rng))).bytes)
            case 7: return .certhash(Multihash.sha256(rng.bytes(8)).bytes)
            case 8: return [.quic, .quicV1, .webtransport].randomElement(using: &rng)!
            case 9: return [.ws, .wss, .tls].randomElement(using: &rng)!
            case 10: return [.noise, .http, .https].randomElement(using: &rng)!
            case 11: return .p2pCircuit
            case 14: return .memory(Bool.random(using: &rng) ? .random(in: 0...0xffff, using: &rng) : .random(in: 0...UInt64.max, using: &rng))
            case 12: return .ip6(IPv6Address(high: 0, low: 0xffff_0000_0000 | UInt64(UInt32.random(in: 0...UInt32.max, using: &rng))))
            default: return .ip6(IPv6Address(groups: (0..<8).map { _ in Bool.random(using: &rng) ? 0 : .random(in: 0...3, using: &rng) }))
            }
        }
        for _ in 0..<1000 {
            let ma = Multiaddr((0..<Int.random(in: 0...6, using: &rng)).map { _ in randomComponent() })
            let text = ma.description
            #expect(try Multiaddr(text) == ma, "\(text)")
            #expect(try Multiaddr(bytes: ma.bytes) == ma, "\(text)")
            #expect(try Multiaddr(bytes: ma.bytes).bytes == ma.bytes)
        }
    }

    @Test func randomBinaryGarbageNeverCrashes() {
        var rng = SplitMix64(seed: 5)
        for _ in 0..<3000 {
            let bytes = rng.bytes(Int.random(in: 0...24, using: &rng))
            if let ma = try? Multiaddr(bytes: bytes) {
                // Whatever parses must re-encode identically and print parseably.
                #expect(ma.bytes == bytes)
                #expect(Multiaddr(Substring(ma.description)) == ma)
            }
        }
    }

    @Test func socketAddressBridge() throws {
        let v4 = try SocketAddress(ipAddress: "127.0.0.1", port: 4001)
        let ma4 = try Multiaddr(socketAddress: v4)
        #expect(ma4.description == "/ip4/127.0.0.1/tcp/4001")
        #expect(try Multiaddr(socketAddress: v4, transport: .udp).description == "/ip4/127.0.0.1/udp/4001")
        #expect(try ma4.socketAddress() == v4)

        let v6 = try SocketAddress(ipAddress: "::1", port: 80)
        let ma6 = try Multiaddr(socketAddress: v6)
        #expect(ma6.description == "/ip6/::1/tcp/80")
        let back = try ma6.socketAddress()
        #expect(back.ipAddress == "::1" && back.port == 80)

        let withPeer = try parse("/ip4/10.0.0.1/tcp/1/p2p/QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N")
        #expect(try withPeer.socketAddress().port == 1)
        #expect(throws: MultiformatsError.self) { try parse("/dns4/example.com/tcp/1").socketAddress() }
        #expect(throws: MultiformatsError.self) { try parse("/ip4/1.2.3.4").socketAddress() }
        #expect(throws: MultiformatsError.self) { try parse("/ip4/1.2.3.4/ws").socketAddress() }
        let unix = try SocketAddress(unixDomainSocketPath: "/tmp/x.sock")
        #expect(throws: MultiformatsError.self) { try Multiaddr(socketAddress: unix) }
    }
}
