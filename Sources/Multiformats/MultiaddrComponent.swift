extension Multiaddr {
    /// How a protocol's value is sized in the binary form.
    enum ValueSize: Equatable, Sendable {
        case zero
        case fixed(Int)
        case variable
    }

    /// A row of the multiaddr protocol table (protocols.csv).
    struct ProtocolInfo: Sendable {
        let code: UInt64
        let name: String
        let size: ValueSize

        static let ip4 = ProtocolInfo(code: 4, name: "ip4", size: .fixed(4))
        static let tcp = ProtocolInfo(code: 6, name: "tcp", size: .fixed(2))
        static let dns = ProtocolInfo(code: 53, name: "dns", size: .variable)
        static let dns4 = ProtocolInfo(code: 54, name: "dns4", size: .variable)
        static let dns6 = ProtocolInfo(code: 55, name: "dns6", size: .variable)
        static let dnsaddr = ProtocolInfo(code: 56, name: "dnsaddr", size: .variable)
        static let ip6 = ProtocolInfo(code: 41, name: "ip6", size: .fixed(16))
        static let udp = ProtocolInfo(code: 273, name: "udp", size: .fixed(2))
        static let p2pCircuit = ProtocolInfo(code: 290, name: "p2p-circuit", size: .zero)
        static let p2p = ProtocolInfo(code: 421, name: "p2p", size: .variable)
        static let https = ProtocolInfo(code: 443, name: "https", size: .zero)
        static let tls = ProtocolInfo(code: 448, name: "tls", size: .zero)
        static let sni = ProtocolInfo(code: 449, name: "sni", size: .variable)
        static let noise = ProtocolInfo(code: 454, name: "noise", size: .zero)
        static let quic = ProtocolInfo(code: 460, name: "quic", size: .zero)
        static let quicV1 = ProtocolInfo(code: 461, name: "quic-v1", size: .zero)
        static let webtransport = ProtocolInfo(code: 465, name: "webtransport", size: .zero)
        static let certhash = ProtocolInfo(code: 466, name: "certhash", size: .variable)
        static let ws = ProtocolInfo(code: 477, name: "ws", size: .zero)
        static let wss = ProtocolInfo(code: 478, name: "wss", size: .zero)
        static let http = ProtocolInfo(code: 480, name: "http", size: .zero)
        // In-process transport: code 0x309, a 64-bit value, big-endian in the binary form and
        // decimal in text (multicodec table; rust-libp2p's multiaddr and py-multiaddr 0.2.0 agree).
        static let memory = ProtocolInfo(code: 0x309, name: "memory", size: .fixed(8))

        static let all: [ProtocolInfo] = [
            ip4, tcp, dns, dns4, dns6, dnsaddr, ip6, udp, p2pCircuit, p2p, https, tls, sni,
            noise, quic, quicV1, webtransport, certhash, ws, wss, http, memory,
        ]
        static let byCode: [UInt64: ProtocolInfo] = Dictionary(uniqueKeysWithValues: all.map { ($0.code, $0) })
        static let byName: [String: ProtocolInfo] = {
            var map = Dictionary(uniqueKeysWithValues: all.map { ($0.name, $0) })
            map["ipfs"] = p2p  // legacy name, same code
            return map
        }()
    }

    /// Limits on variable-size values (not from a spec; sanity bounds that keep
    /// parsing cheap): multihashes in /p2p and /certhash, and their text forms.
    static let maxMultihashLength = 512
    static let maxMultihashTextLength = 1024

    public enum Component: Hashable, Sendable, CustomStringConvertible {
        case ip4(IPv4Address)
        case ip6(IPv6Address)
        case tcp(UInt16)
        case udp(UInt16)
        case dns(String)
        case dns4(String)
        case dns6(String)
        case dnsaddr(String)
        /// Peer ID multihash bytes.
        case p2p([UInt8])
        case p2pCircuit
        case quic
        case quicV1
        case ws
        case wss
        case tls
        case sni(String)
        case noise
        case http
        case https
        case webtransport
        /// Certificate hash: multihash bytes (text form is multibase).
        case certhash([UInt8])
        /// An in-process (memory transport) address: any 64-bit number.
        case memory(UInt64)

        var proto: ProtocolInfo {
            switch self {
            case .ip4: return .ip4
            case .ip6: return .ip6
            case .tcp: return .tcp
            case .udp: return .udp
            case .dns: return .dns
            case .dns4: return .dns4
            case .dns6: return .dns6
            case .dnsaddr: return .dnsaddr
            case .p2p: return .p2p
            case .p2pCircuit: return .p2pCircuit
            case .quic: return .quic
            case .quicV1: return .quicV1
            case .ws: return .ws
            case .wss: return .wss
            case .tls: return .tls
            case .sni: return .sni
            case .noise: return .noise
            case .http: return .http
            case .https: return .https
            case .webtransport: return .webtransport
            case .certhash: return .certhash
            case .memory: return .memory
            }
        }

        /// ProtocolInfo code from the multiaddr table.
        public var code: UInt64 { proto.code }
        /// ProtocolInfo name as used in the text form.
        public var name: String { proto.name }

        /// The binary value (without the code or any length prefix).
        public var valueBytes: [UInt8] {
            switch self {
            case .ip4(let a): return a.bytes
            case .ip6(let a): return a.bytes
            case .tcp(let p), .udp(let p): return [UInt8(p >> 8), UInt8(p & 0xff)]
            case .dns(let s), .dns4(let s), .dns6(let s), .dnsaddr(let s), .sni(let s): return Array(s.utf8)
            case .p2p(let b), .certhash(let b): return b
            case .memory(let n): return (0..<8).map { UInt8(truncatingIfNeeded: n >> (56 - 8 * $0)) }
            case .p2pCircuit, .quic, .quicV1, .ws, .wss, .tls, .noise, .http, .https, .webtransport: return []
            }
        }

        /// The text value, or nil for protocols without a value.
        public var textValue: String? {
            switch self {
            case .ip4(let a): return a.description
            case .ip6(let a): return a.description
            case .tcp(let p), .udp(let p): return String(p)
            case .dns(let s), .dns4(let s), .dns6(let s), .dnsaddr(let s), .sni(let s): return s
            case .p2p(let b): return Base58.encode(b)
            case .certhash(let b): return Multibase.encode(b, as: .base64url)
            case .memory(let n): return String(n)
            case .p2pCircuit, .quic, .quicV1, .ws, .wss, .tls, .noise, .http, .https, .webtransport: return nil
            }
        }

        public var description: String {
            if let v = textValue { return "/\(name)/\(v)" }
            return "/\(name)"
        }

        func write(into out: inout [UInt8]) {
            Varint.encode(code, into: &out)
            let value = valueBytes
            if proto.size == .variable {
                Varint.encode(UInt64(value.count), into: &out)
            }
            out.append(contentsOf: value)
        }

        /// Builds a component from its binary value (size already checked by the caller
        /// for fixed-size protocols).
        init(code: UInt64, value: [UInt8]) throws(MultiformatsError) {
            guard let proto = ProtocolInfo.byCode[code] else { throw .unknownProtocolCode(code) }
            if case .fixed(let n) = proto.size, value.count != n {
                throw .malformedMultiaddr("/\(proto.name) needs \(n) bytes, got \(value.count)")
            }
            if proto.size == .zero, !value.isEmpty {
                throw .malformedMultiaddr("/\(proto.name) takes no value")
            }
            switch code {
            case ProtocolInfo.ip4.code: self = .ip4(IPv4Address(bytes: value)!)
            case ProtocolInfo.ip6.code: self = .ip6(IPv6Address(bytes: value)!)
            case ProtocolInfo.tcp.code: self = .tcp(UInt16(value[0]) << 8 | UInt16(value[1]))
            case ProtocolInfo.udp.code: self = .udp(UInt16(value[0]) << 8 | UInt16(value[1]))
            case ProtocolInfo.dns.code: self = .dns(try Self.dnsName(value, proto))
            case ProtocolInfo.dns4.code: self = .dns4(try Self.dnsName(value, proto))
            case ProtocolInfo.dns6.code: self = .dns6(try Self.dnsName(value, proto))
            case ProtocolInfo.dnsaddr.code: self = .dnsaddr(try Self.dnsName(value, proto))
            case ProtocolInfo.sni.code: self = .sni(try Self.dnsName(value, proto))
            case ProtocolInfo.p2p.code: self = .p2p(try Self.multihash(value, proto))
            case ProtocolInfo.certhash.code: self = .certhash(try Self.multihash(value, proto))
            case ProtocolInfo.p2pCircuit.code: self = .p2pCircuit
            case ProtocolInfo.quic.code: self = .quic
            case ProtocolInfo.quicV1.code: self = .quicV1
            case ProtocolInfo.ws.code: self = .ws
            case ProtocolInfo.wss.code: self = .wss
            case ProtocolInfo.tls.code: self = .tls
            case ProtocolInfo.noise.code: self = .noise
            case ProtocolInfo.http.code: self = .http
            case ProtocolInfo.https.code: self = .https
            case ProtocolInfo.webtransport.code: self = .webtransport
            case ProtocolInfo.memory.code: self = .memory(value.reduce(0) { $0 << 8 | UInt64($1) })
            default: throw .unknownProtocolCode(code)
            }
        }

        /// Builds a component from its text value.
        init(code: UInt64, text: String) throws(MultiformatsError) {
            guard let proto = ProtocolInfo.byCode[code] else { throw .unknownProtocolCode(code) }
            switch code {
            case ProtocolInfo.ip4.code:
                guard let a = IPv4Address(text) else { throw .malformedMultiaddr("invalid IPv4 address \(text.debugDescription)") }
                self = .ip4(a)
            case ProtocolInfo.ip6.code:
                guard let a = IPv6Address(text) else { throw .malformedMultiaddr("invalid IPv6 address \(text.debugDescription)") }
                self = .ip6(a)
            case ProtocolInfo.tcp.code, ProtocolInfo.udp.code:
                // Decimal 0-65535, digits only (no sign, no whitespace).
                guard text.utf8.count <= 5, text.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }),
                      let port = UInt16(text)
                else { throw .malformedMultiaddr("invalid port \(text.debugDescription) for /\(proto.name)") }
                self = code == ProtocolInfo.tcp.code ? .tcp(port) : .udp(port)
            case ProtocolInfo.memory.code:
                // Decimal 0-18446744073709551615, digits only.
                guard text.utf8.count <= 20, text.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }),
                      let value = UInt64(text)
                else { throw .malformedMultiaddr("invalid /memory value \(text.debugDescription)") }
                self = .memory(value)
            case ProtocolInfo.p2p.code:
                self = .p2p(try Self.peerIDText(text))
            case ProtocolInfo.certhash.code:
                guard text.utf8.count <= maxMultihashTextLength else { throw .malformedMultiaddr("/certhash value too long") }
                let decoded: [UInt8]
                do {
                    decoded = try Multibase.decode(text)
                } catch {
                    throw .malformedMultiaddr("/certhash value is not multibase", cause: error)
                }
                self = .certhash(try Self.multihash(decoded, proto))
            default:
                try self.init(code: code, value: Array(text.utf8))
            }
        }

        /// `/p2p` text: a base58btc multihash (legacy form; such peer IDs start with
        /// `1` or `Qm`) or a multibase CIDv1 with the libp2p-key codec (peer-ids spec).
        private static func peerIDText(_ text: String) throws(MultiformatsError) -> [UInt8] {
            guard text.utf8.count <= maxMultihashTextLength else { throw .malformedMultiaddr("/p2p value too long") }
            if text.hasPrefix("1") || text.hasPrefix("Qm") {
                let decoded: [UInt8]
                do {
                    decoded = try Base58.decode(text)
                } catch {
                    throw .malformedMultiaddr("/p2p value is not base58btc", cause: error)
                }
                return try multihash(decoded, ProtocolInfo.p2p)
            }
            let cid: CID
            do {
                cid = try CID(text)
            } catch {
                throw .malformedMultiaddr("/p2p value is not a CID", cause: error)
            }
            guard cid.codec == Multicodec.libp2pKey else {
                throw .malformedMultiaddr("/p2p: CID codec \(cid.codec) is not libp2p-key")
            }
            return try multihash(cid.multihash.bytes, ProtocolInfo.p2p)
        }

        private static func multihash(_ value: [UInt8], _ proto: ProtocolInfo) throws(MultiformatsError) -> [UInt8] {
            guard value.count <= maxMultihashLength else {
                throw .malformedMultiaddr("/\(proto.name) multihash too long (\(value.count) bytes)")
            }
            do {
                _ = try Multihash(bytes: value)
            } catch {
                throw .malformedMultiaddr("/\(proto.name) value is not a multihash", cause: error)
            }
            return value
        }

        /// DNS names: ASCII letters, digits, '-' and '_', dot-separated labels of
        /// 1-63 bytes, at most 253 bytes (RFC 1035 limits; one trailing dot allowed).
        private static func dnsName(_ value: [UInt8], _ proto: ProtocolInfo) throws(MultiformatsError) -> String {
            var name = value[...]
            if name.count > 1 && name.last == UInt8(ascii: ".") { name = name.dropLast() }
            guard !name.isEmpty, name.count <= 253 else {
                throw .malformedMultiaddr("/\(proto.name) name length \(value.count) out of range")
            }
            for label in name.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false) {
                guard (1...63).contains(label.count) else {
                    throw .malformedMultiaddr("/\(proto.name) has an empty or over-long label")
                }
                for c in label {
                    switch c {
                    case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
                         UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "_"):
                        continue
                    default:
                        throw .malformedMultiaddr("/\(proto.name) name contains invalid byte 0x\(String(c, radix: 16))")
                    }
                }
            }
            return String(decoding: value, as: UTF8.self)
        }
    }
}
