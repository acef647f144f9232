/// A DAG-CBOR value (IPLD DAG-CBOR spec, a strict subset of CBOR, RFC 8949), as far as IPNS
/// records need it: the `data` field of an IPNS record is a DAG-CBOR map of `Value`,
/// `Validity`, `ValidityType`, `Sequence` and `TTL`, and may carry other fields.
///
/// The decoder is bounded (input size, nesting depth, items) and follows the DAG-CBOR rules
/// that change what a value means: definite lengths only, map keys are text and unique, the
/// only tag is 42 (a CID link), floats are 64-bit and finite, `undefined` is refused. Like
/// go-ipld-prime's default decoder it accepts map keys in any order and non-minimal integer
/// heads; the encoder writes the canonical form (shortest heads, map keys sorted by length,
/// then bytewise).
public indirect enum DAGCBOR: Sendable, Hashable {
    /// A non-negative integer (major type 0).
    case unsigned(UInt64)
    /// A negative integer `-1 - n` (major type 1), stored as `n`.
    case negative(UInt64)
    /// A byte string (major type 2).
    case bytes([UInt8])
    /// A UTF-8 text string (major type 3).
    case text(String)
    /// An array (major type 4).
    case array([DAGCBOR])
    /// A map with text keys, in the order read (major type 5).
    case map([(key: String, value: DAGCBOR)])
    /// A CID link (tag 42 over bytes that start with the multibase identity prefix 0x00); the
    /// bytes after that prefix.
    case link([UInt8])
    /// `false` or `true`.
    case bool(Bool)
    /// `null`.
    case null
    /// A finite 64-bit float.
    case float(Double)

    /// Decoding limits (an IPNS record is at most 10 KiB, so its data is too).
    public struct Limits: Sendable, Hashable {
        /// The whole input.
        public var maxSize = 10 << 10
        /// Arrays and maps nested in one another.
        public var maxDepth = 16
        /// Values in the whole input (every array element, map key and map value counts).
        public var maxItems = 2048

        /// The defaults above.
        public init() {}
    }

    /// Decodes exactly one value filling `bytes`. Throws `KademliaError(.malformedMessage)` for
    /// input that is not DAG-CBOR, `.limitExceeded` beyond `limits`.
    public init(decoding bytes: [UInt8], limits: Limits = Limits()) throws(KademliaError) {
        guard bytes.count <= limits.maxSize else {
            throw KademliaError(.limitExceeded, "DAG-CBOR of \(bytes.count) bytes exceeds \(limits.maxSize)")
        }
        var reader = Reader(bytes: bytes, limits: limits)
        let value = try reader.value(depth: 0)
        guard reader.offset == bytes.count else {
            throw KademliaError(.malformedMessage, "DAG-CBOR: \(bytes.count - reader.offset) bytes after the value")
        }
        self = value
    }

    /// The canonical DAG-CBOR encoding.
    public func encoded() -> [UInt8] {
        var out: [UInt8] = []
        encode(into: &out)
        return out
    }

    /// The value of `key` when this is a map that has it.
    public subscript(key: String) -> DAGCBOR? {
        guard case .map(let entries) = self else { return nil }
        return entries.first { $0.key == key }?.value
    }

    /// The bytes of a byte string.
    public var bytesValue: [UInt8]? {
        if case .bytes(let bytes) = self { return bytes }
        return nil
    }

    /// An integer that fits in 64 signed bits (go-ipld-prime's `AsInt`).
    public var int64Value: Int64? {
        switch self {
        case .unsigned(let n): return n <= UInt64(Int64.max) ? Int64(n) : nil
        case .negative(let n): return n <= UInt64(Int64.max) ? -1 - Int64(n) : nil
        default: return nil
        }
    }

    /// The integer `value` as DAG-CBOR.
    public static func int(_ value: Int64) -> DAGCBOR {
        value >= 0 ? .unsigned(UInt64(value)) : .negative(UInt64(-(value + 1)))
    }

    /// Equal values: same kind and content, map entries in the same order, floats bit for bit.
    public static func == (lhs: DAGCBOR, rhs: DAGCBOR) -> Bool {
        switch (lhs, rhs) {
        case (.unsigned(let a), .unsigned(let b)), (.negative(let a), .negative(let b)): return a == b
        case (.bytes(let a), .bytes(let b)), (.link(let a), .link(let b)): return a == b
        case (.text(let a), .text(let b)): return a == b
        case (.array(let a), .array(let b)): return a == b
        case (.map(let a), .map(let b)): return a.count == b.count && zip(a, b).allSatisfy { $0.key == $1.key && $0.value == $1.value }
        case (.bool(let a), .bool(let b)): return a == b
        case (.null, .null): return true
        case (.float(let a), .float(let b)): return a.bitPattern == b.bitPattern
        default: return false
        }
    }

    /// Hashes what `==` compares.
    public func hash(into hasher: inout Hasher) {
        switch self {
        case .unsigned(let n): hasher.combine(0); hasher.combine(n)
        case .negative(let n): hasher.combine(1); hasher.combine(n)
        case .bytes(let b): hasher.combine(2); hasher.combine(b)
        case .text(let t): hasher.combine(3); hasher.combine(t)
        case .array(let a): hasher.combine(4); hasher.combine(a)
        case .map(let m):
            hasher.combine(5)
            for entry in m { hasher.combine(entry.key); hasher.combine(entry.value) }
        case .link(let b): hasher.combine(6); hasher.combine(b)
        case .bool(let b): hasher.combine(7); hasher.combine(b)
        case .null: hasher.combine(8)
        case .float(let f): hasher.combine(9); hasher.combine(f.bitPattern)
        }
    }

    // MARK: Encoding

    private func encode(into out: inout [UInt8]) {
        switch self {
        case .unsigned(let n): Self.head(0, n, into: &out)
        case .negative(let n): Self.head(1, n, into: &out)
        case .bytes(let bytes):
            Self.head(2, UInt64(bytes.count), into: &out)
            out += bytes
        case .text(let text):
            Self.head(3, UInt64(text.utf8.count), into: &out)
            out += text.utf8
        case .array(let items):
            Self.head(4, UInt64(items.count), into: &out)
            for item in items { item.encode(into: &out) }
        case .map(let entries):
            // DAG-CBOR's canonical order: shorter keys first, then bytewise.
            let sorted = entries.sorted { a, b in
                let (x, y) = (Array(a.key.utf8), Array(b.key.utf8))
                return x.count != y.count ? x.count < y.count : x.lexicographicallyPrecedes(y)
            }
            Self.head(5, UInt64(sorted.count), into: &out)
            for entry in sorted {
                DAGCBOR.text(entry.key).encode(into: &out)
                entry.value.encode(into: &out)
            }
        case .link(let cid):
            Self.head(6, 42, into: &out)
            Self.head(2, UInt64(cid.count + 1), into: &out)
            out.append(0)
            out += cid
        case .bool(let value): out.append(value ? 0xF5 : 0xF4)
        case .null: out.append(0xF6)
        case .float(let value):
            out.append(0xFB)
            let bits = value.bitPattern
            for shift in stride(from: 56, through: 0, by: -8) { out.append(UInt8(truncatingIfNeeded: bits >> UInt64(shift))) }
        }
    }

    /// A head in its shortest form: the major type and `argument`.
    private static func head(_ major: UInt8, _ argument: UInt64, into out: inout [UInt8]) {
        let type = major << 5
        switch argument {
        case 0..<24: out.append(type | UInt8(argument))
        case 24...0xFF: out += [type | 24, UInt8(argument)]
        case 0x100...0xFFFF: out += [type | 25, UInt8(argument >> 8), UInt8(argument & 0xFF)]
        case 0x1_0000...0xFFFF_FFFF:
            out.append(type | 26)
            for shift in stride(from: 24, through: 0, by: -8) { out.append(UInt8(truncatingIfNeeded: argument >> UInt64(shift))) }
        default:
            out.append(type | 27)
            for shift in stride(from: 56, through: 0, by: -8) { out.append(UInt8(truncatingIfNeeded: argument >> UInt64(shift))) }
        }
    }

    // MARK: Decoding

    private struct Reader {
        let bytes: [UInt8]
        let limits: Limits
        var offset = 0
        var items = 0

        init(bytes: [UInt8], limits: Limits) {
            self.bytes = bytes
            self.limits = limits
        }

        mutating func byte() throws(KademliaError) -> UInt8 {
            guard offset < bytes.count else { throw KademliaError(.malformedMessage, "DAG-CBOR: unexpected end of input") }
            defer { offset += 1 }
            return bytes[offset]
        }

        mutating func take(_ count: UInt64) throws(KademliaError) -> [UInt8] {
            // A declared length can never reach past the input (checked before allocating).
            guard count <= UInt64(bytes.count - offset) else {
                throw KademliaError(.malformedMessage, "DAG-CBOR: a length of \(count) runs past the input")
            }
            defer { offset += Int(count) }
            return Array(bytes[offset..<offset + Int(count)])
        }

        /// The argument of a head whose additional information is `info`.
        mutating func argument(_ info: UInt8) throws(KademliaError) -> UInt64 {
            switch info {
            case 0..<24: return UInt64(info)
            case 24...27:
                var value: UInt64 = 0
                for _ in 0..<(1 << (info - 24)) { value = value << 8 | UInt64(try byte()) }
                return value
            case 31: throw KademliaError(.malformedMessage, "DAG-CBOR forbids indefinite lengths")
            default: throw KademliaError(.malformedMessage, "DAG-CBOR: reserved additional information \(info)")
            }
        }

        mutating func count() throws(KademliaError) {
            items += 1
            guard items <= limits.maxItems else {
                throw KademliaError(.limitExceeded, "DAG-CBOR with more than \(limits.maxItems) values")
            }
        }

        mutating func value(depth: Int) throws(KademliaError) -> DAGCBOR {
            try count()
            let initial = try byte()
            let major = initial >> 5
            let info = initial & 0x1F
            switch major {
            case 0: return .unsigned(try argument(info))
            case 1: return .negative(try argument(info))
            case 2: return .bytes(try take(try argument(info)))
            case 3:
                guard let text = String(validating: try take(try argument(info)), as: UTF8.self) else {
                    throw KademliaError(.malformedMessage, "DAG-CBOR: a text string that is not UTF-8")
                }
                return .text(text)
            case 4, 5:
                guard depth < limits.maxDepth else {
                    throw KademliaError(.limitExceeded, "DAG-CBOR nested deeper than \(limits.maxDepth)")
                }
                let n = try argument(info)
                // Every element takes at least a byte: a count beyond the rest is malformed
                // (and nothing is reserved from a declared count).
                guard n <= UInt64(bytes.count - offset) else {
                    throw KademliaError(.malformedMessage, "DAG-CBOR: \(n) elements cannot fit in the input")
                }
                if major == 4 {
                    var items: [DAGCBOR] = []
                    for _ in 0..<n { items.append(try value(depth: depth + 1)) }
                    return .array(items)
                }
                var entries: [(key: String, value: DAGCBOR)] = []
                var seen: Set<String> = []
                for _ in 0..<n {
                    guard case .text(let key) = try value(depth: depth + 1) else {
                        throw KademliaError(.malformedMessage, "DAG-CBOR map keys must be text")
                    }
                    guard seen.insert(key).inserted else {
                        throw KademliaError(.malformedMessage, "DAG-CBOR: the map key \(key.debugDescription) repeats")
                    }
                    entries.append((key, try value(depth: depth + 1)))
                }
                return .map(entries)
            case 6:
                guard try argument(info) == 42 else { throw KademliaError(.malformedMessage, "DAG-CBOR allows only tag 42") }
                guard case .bytes(let cid) = try value(depth: depth + 1), cid.first == 0, cid.count > 1 else {
                    throw KademliaError(.malformedMessage, "DAG-CBOR: tag 42 must hold 0x00 and a CID")
                }
                return .link(Array(cid.dropFirst()))
            default:
                switch info {
                case 20: return .bool(false)
                case 21: return .bool(true)
                case 22: return .null
                case 27:
                    let bits = try argument(27)
                    let value = Double(bitPattern: bits)
                    guard value.isFinite else { throw KademliaError(.malformedMessage, "DAG-CBOR forbids NaN and infinities") }
                    return .float(value)
                default:
                    throw KademliaError(.malformedMessage, "DAG-CBOR: simple value or float of kind \(info) not allowed")
                }
            }
        }
    }
}
