/// An IPv4 address (4 bytes, network order).
public struct IPv4Address: Hashable, Sendable, Comparable, CustomStringConvertible {
    /// The address as a big-endian integer (`1.2.3.4` → `0x01020304`).
    public var rawValue: UInt32

    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public init(_ a: UInt8, _ b: UInt8, _ c: UInt8, _ d: UInt8) {
        rawValue = UInt32(a) << 24 | UInt32(b) << 16 | UInt32(c) << 8 | UInt32(d)
    }

    /// Exactly 4 bytes in network order.
    public init?(bytes: some Collection<UInt8>) {
        guard bytes.count == 4 else { return nil }
        var v: UInt32 = 0
        for b in bytes { v = v << 8 | UInt32(b) }
        rawValue = v
    }

    /// Strict dotted-quad: four decimal octets 0-255, no leading zeros (to avoid
    /// the octal ambiguity some parsers have), no whitespace.
    public init?(_ string: some StringProtocol) {
        let parts = string.utf8.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var v: UInt32 = 0
        for part in parts {
            guard (1...3).contains(part.count),
                  part.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }),
                  part.count == 1 || part.first != UInt8(ascii: "0")
            else { return nil }
            let n = part.reduce(0) { $0 * 10 + Int($1 - UInt8(ascii: "0")) }
            guard n <= 255 else { return nil }
            v = v << 8 | UInt32(n)
        }
        rawValue = v
    }

    public var bytes: [UInt8] {
        [UInt8(truncatingIfNeeded: rawValue >> 24), UInt8(truncatingIfNeeded: rawValue >> 16),
         UInt8(truncatingIfNeeded: rawValue >> 8), UInt8(truncatingIfNeeded: rawValue)]
    }

    public var description: String {
        bytes.map { String($0) }.joined(separator: ".")
    }

    public var isLoopback: Bool { rawValue >> 24 == 127 }
    public var isUnspecified: Bool { rawValue == 0 }

    public static func < (lhs: IPv4Address, rhs: IPv4Address) -> Bool { lhs.rawValue < rhs.rawValue }
}

/// An IPv6 address (16 bytes, network order).
///
/// Text output follows RFC 5952: lowercase hex, no leading zeros, the longest
/// run (first on ties) of two or more zero groups replaced by `::`, and
/// IPv4-mapped addresses written as `::ffff:a.b.c.d`. Parsing accepts any RFC 4291
/// text form, including an embedded dotted quad in the last 32 bits; zone
/// identifiers (`%eth0`) are rejected (they belong in `/ip6zone`).
public struct IPv6Address: Hashable, Sendable, Comparable, CustomStringConvertible {
    /// High and low 64 bits, big-endian.
    public var high: UInt64
    public var low: UInt64

    public init(high: UInt64, low: UInt64) {
        self.high = high
        self.low = low
    }

    /// Exactly 16 bytes in network order.
    public init?(bytes: some Collection<UInt8>) {
        guard bytes.count == 16 else { return nil }
        var h: UInt64 = 0
        var l: UInt64 = 0
        for (i, b) in bytes.enumerated() {
            if i < 8 { h = h << 8 | UInt64(b) } else { l = l << 8 | UInt64(b) }
        }
        high = h
        low = l
    }

    /// Eight 16-bit groups.
    public init(groups: [UInt16]) {
        precondition(groups.count == 8, "an IPv6 address has 8 groups")
        var h: UInt64 = 0
        var l: UInt64 = 0
        for (i, g) in groups.enumerated() {
            if i < 4 { h = h << 16 | UInt64(g) } else { l = l << 16 | UInt64(g) }
        }
        high = h
        low = l
    }

    public static let loopback = IPv6Address(high: 0, low: 1)
    public static let unspecified = IPv6Address(high: 0, low: 0)

    public init?(_ string: some StringProtocol) {
        let s = Array(string.utf8)
        guard !s.isEmpty, s.count <= 45 else { return nil }
        // Locate the single allowed "::".
        var doubleColon: Int? = nil
        var i = 0
        while i + 1 < s.count {
            if s[i] == UInt8(ascii: ":") && s[i + 1] == UInt8(ascii: ":") {
                guard doubleColon == nil else { return nil }
                doubleColon = i
            }
            i += 1
        }
        let groups: [UInt16]
        if let dc = doubleColon {
            guard let head = Self.parseGroups(s[..<dc], allowIPv4: false),
                  let tail = Self.parseGroups(s[(dc + 2)...], allowIPv4: true),
                  head.count + tail.count <= 7
            else { return nil }
            groups = head + [UInt16](repeating: 0, count: 8 - head.count - tail.count) + tail
        } else {
            guard let all = Self.parseGroups(s[...], allowIPv4: true), all.count == 8 else { return nil }
            groups = all
        }
        self.init(groups: groups)
    }

    /// Parses colon-separated hex groups; an empty slice yields no groups. When
    /// `allowIPv4`, the last element may be a dotted quad (two groups).
    private static func parseGroups(_ s: ArraySlice<UInt8>, allowIPv4: Bool) -> [UInt16]? {
        if s.isEmpty { return [] }
        let parts = s.split(separator: UInt8(ascii: ":"), omittingEmptySubsequences: false)
        var out: [UInt16] = []
        for (index, part) in parts.enumerated() {
            if allowIPv4 && index == parts.count - 1 && part.contains(UInt8(ascii: ".")) {
                guard let v4 = IPv4Address(String(decoding: part, as: UTF8.self)) else { return nil }
                out.append(UInt16(truncatingIfNeeded: v4.rawValue >> 16))
                out.append(UInt16(truncatingIfNeeded: v4.rawValue))
                continue
            }
            guard (1...4).contains(part.count) else { return nil }
            var v: UInt16 = 0
            for c in part {
                let d: UInt8
                switch c {
                case UInt8(ascii: "0")...UInt8(ascii: "9"): d = c - UInt8(ascii: "0")
                case UInt8(ascii: "a")...UInt8(ascii: "f"): d = c - UInt8(ascii: "a") + 10
                case UInt8(ascii: "A")...UInt8(ascii: "F"): d = c - UInt8(ascii: "A") + 10
                default: return nil
                }
                v = v << 4 | UInt16(d)
            }
            out.append(v)
        }
        return out.count <= 8 ? out : nil
    }

    public var groups: [UInt16] {
        (0..<8).map { i in
            let word = i < 4 ? high : low
            return UInt16(truncatingIfNeeded: word >> (UInt64(3 - i % 4) * 16))
        }
    }

    public var bytes: [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(16)
        for shift in stride(from: 56, through: 0, by: -8) { out.append(UInt8(truncatingIfNeeded: high >> UInt64(shift))) }
        for shift in stride(from: 56, through: 0, by: -8) { out.append(UInt8(truncatingIfNeeded: low >> UInt64(shift))) }
        return out
    }

    /// The embedded IPv4 address when this is IPv4-mapped (`::ffff:a.b.c.d`).
    public var ipv4Mapped: IPv4Address? {
        guard high == 0, low >> 32 == 0xffff else { return nil }
        return IPv4Address(rawValue: UInt32(truncatingIfNeeded: low))
    }

    public var isLoopback: Bool { self == .loopback }

    public var description: String {
        if let v4 = ipv4Mapped { return "::ffff:\(v4)" }
        let g = groups
        // Longest run of zero groups (length >= 2); first one wins ties.
        var bestStart = -1
        var bestLength = 0
        var i = 0
        while i < 8 {
            if g[i] == 0 {
                var j = i
                while j < 8 && g[j] == 0 { j += 1 }
                if j - i > bestLength {
                    bestStart = i
                    bestLength = j - i
                }
                i = j
            } else {
                i += 1
            }
        }
        func hex(_ range: Range<Int>) -> String {
            range.map { String(g[$0], radix: 16) }.joined(separator: ":")
        }
        if bestLength < 2 { return hex(0..<8) }
        return hex(0..<bestStart) + "::" + hex((bestStart + bestLength)..<8)
    }

    public static func < (lhs: IPv6Address, rhs: IPv6Address) -> Bool {
        (lhs.high, lhs.low) < (rhs.high, rhs.low)
    }
}

/// Either kind of IP address.
public enum IPAddress: Hashable, Sendable, CustomStringConvertible {
    case v4(IPv4Address)
    case v6(IPv6Address)

    public var description: String {
        switch self {
        case .v4(let a): return a.description
        case .v6(let a): return a.description
        }
    }
}
