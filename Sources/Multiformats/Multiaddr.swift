/// A multiaddr: a sequence of self-describing protocol components.
///
/// Binary form: for each component `varint(protocol code) ‖ value`, where the value
/// is fixed-size for some protocols (ip4: 4, ip6: 16, tcp/udp: 2 big-endian bytes),
/// absent for flag protocols (ws, quic-v1, ...) and `varint(length) ‖ bytes` for
/// variable-size ones (dns*, p2p, certhash, sni). Codes come from the multiaddr
/// protocols table (protocols.csv).
///
/// Text form: `/name/value/name/...`. Decisions documented here:
/// - `"/"` is the empty multiaddr (no components) and is what an empty multiaddr
///   prints; `""` is rejected (text must start with `/`).
/// - A single trailing `/` is accepted and ignored; empty segments (`//`) are not.
/// - `/ipfs/` is accepted as an alias of `/p2p/` and printed as `/p2p/`.
/// - Unknown protocols are rejected in both forms.
public struct Multiaddr: Hashable, Sendable, CustomStringConvertible, LosslessStringConvertible,
    ExpressibleByStringLiteral
{
    public let components: [Component]

    public init(_ components: [Component]) {
        self.components = components
    }

    /// Parses the text form, throwing `MultiformatsError` on invalid input.
    ///
    /// Note: because `Multiaddr` is `ExpressibleByStringLiteral`, Swift treats
    /// `Multiaddr("/ip4/…")` with a *literal* argument as literal coercion (SE-0213),
    /// which traps on invalid text. Pass a `String` value to get the throwing parser.
    public init(_ string: String) throws {
        try self.init(parsing: string)
    }

    /// `LosslessStringConvertible` conformance: `nil` for invalid text.
    public init?<S: StringProtocol>(_ description: S) {
        do {
            try self.init(parsing: String(description))
        } catch {
            return nil
        }
    }

    /// Traps on an invalid literal (a programming error).
    public init(stringLiteral value: String) {
        do {
            try self.init(parsing: value)
        } catch {
            fatalError("invalid multiaddr literal \(value.debugDescription): \(error)")
        }
    }

    private init(parsing string: String) throws(MultiformatsError) {
        guard string.utf8.first == UInt8(ascii: "/") else {
            throw .malformedMultiaddr(string.isEmpty ? "empty string" : "must start with '/'")
        }
        var segments = string.utf8.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false)
            .dropFirst()
            .map { String(decoding: $0, as: UTF8.self) }
        if segments.last == "" { segments.removeLast() }  // "/" or a trailing slash
        var components: [Component] = []
        var index = 0
        while index < segments.count {
            let name = segments[index]
            index += 1
            guard !name.isEmpty else { throw .malformedMultiaddr("empty protocol name") }
            guard let proto = ProtocolInfo.byName[name] else { throw .unknownProtocolName(name) }
            if proto.size == .zero {
                components.append(try Component(code: proto.code, value: []))
                continue
            }
            guard index < segments.count, !segments[index].isEmpty else {
                throw .malformedMultiaddr("missing value for /\(name)")
            }
            components.append(try Component(code: proto.code, text: segments[index]))
            index += 1
        }
        self.components = components
    }

    /// Parses the binary form; the whole input must be consumed.
    public init(bytes: [UInt8]) throws(MultiformatsError) {
        var components: [Component] = []
        var offset = 0
        while offset < bytes.count {
            let code = try Varint.decodeComplete(bytes, at: &offset, truncated: .malformedMultiaddr("truncated protocol code"))
            guard let proto = ProtocolInfo.byCode[code] else { throw .unknownProtocolCode(code) }
            let length: Int
            switch proto.size {
            case .zero:
                length = 0
            case .fixed(let n):
                length = n
            case .variable:
                let l = try Varint.decodeComplete(bytes, at: &offset, truncated: .malformedMultiaddr("truncated length of /\(proto.name)"))
                guard l <= UInt64(bytes.count - offset) else {
                    throw .malformedMultiaddr("/\(proto.name) value length \(l) exceeds input")
                }
                length = Int(l)
            }
            guard length <= bytes.count - offset else {
                throw .malformedMultiaddr("truncated value of /\(proto.name)")
            }
            components.append(try Component(code: code, value: Array(bytes[offset..<offset + length])))
            offset += length
        }
        self.components = components
    }

    public var bytes: [UInt8] {
        var out: [UInt8] = []
        for c in components { c.write(into: &out) }
        return out
    }

    /// Canonical text form (`"/"` for the empty multiaddr).
    public var description: String {
        if components.isEmpty { return "/" }
        return components.map(\.description).joined()
    }

    public var isEmpty: Bool { components.isEmpty }

    public func appending(_ component: Component) -> Multiaddr {
        Multiaddr(components + [component])
    }

    public func appending(_ other: Multiaddr) -> Multiaddr {
        Multiaddr(components + other.components)
    }

    /// Multihash bytes of the last component when it is `/p2p/...`.
    public var peerIDBytes: [UInt8]? {
        if case .p2p(let mh)? = components.last { return mh }
        return nil
    }

    /// Whether the address goes through a relay (has a `/p2p-circuit` part).
    public var isCircuit: Bool { components.contains(.p2pCircuit) }

    /// This address without a trailing `/p2p/...` component.
    public func removingPeerID() -> Multiaddr {
        if case .p2p? = components.last { return Multiaddr(Array(components.dropLast())) }
        return self
    }

    /// Port of the first `/tcp` component.
    public var tcpPort: UInt16? {
        for c in components { if case .tcp(let p) = c { return p } }
        return nil
    }

    /// Port of the first `/udp` component.
    public var udpPort: UInt16? {
        for c in components { if case .udp(let p) = c { return p } }
        return nil
    }

    /// The address of the first component, when it is `/ip4` or `/ip6`.
    public var ipAddress: IPAddress? {
        switch components.first {
        case .ip4(let a)?: return .v4(a)
        case .ip6(let a)?: return .v6(a)
        default: return nil
        }
    }
}
