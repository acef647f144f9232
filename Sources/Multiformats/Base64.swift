/// RFC 4648 base64 without padding, in the URL-safe (`-_`, multibase `u`) or the
/// standard (`+/`, multibase `m`) alphabet. Decoding rejects `=` padding,
/// impossible lengths and non-zero trailing bits.
public enum Base64 {
    static let standardAlphabet: [UInt8] = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
    static let urlAlphabet: [UInt8] = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)

    static func table(for alphabet: [UInt8]) -> [UInt8] {
        var table = [UInt8](repeating: 0xff, count: 256)
        for (i, c) in alphabet.enumerated() { table[Int(c)] = UInt8(i) }
        return table
    }
    static let standardTable = table(for: standardAlphabet)
    static let urlTable = table(for: urlAlphabet)

    public static func encode<C: Collection>(_ bytes: C, urlSafe: Bool = true) -> String where C.Element == UInt8 {
        let alphabet = urlSafe ? urlAlphabet : standardAlphabet
        var out: [UInt8] = []
        out.reserveCapacity((bytes.count * 4 + 2) / 3)
        var buffer: UInt32 = 0
        var bits = 0
        for byte in bytes {
            buffer = (buffer << 8) | UInt32(byte)
            bits += 8
            while bits >= 6 {
                bits -= 6
                out.append(alphabet[Int((buffer >> UInt32(bits)) & 0x3f)])
            }
        }
        if bits > 0 {
            out.append(alphabet[Int((buffer << UInt32(6 - bits)) & 0x3f)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    public static func decode(_ string: String, urlSafe: Bool = true) throws(MultiformatsError) -> [UInt8] {
        let table = urlSafe ? urlTable : standardTable
        let input = Array(string.utf8)
        guard input.count % 4 != 1 else {
            throw .invalidEncodingLength("base64 length \(input.count)")
        }
        var out: [UInt8] = []
        out.reserveCapacity(input.count * 3 / 4)
        var buffer: UInt32 = 0
        var bits = 0
        for c in input {
            let v = table[Int(c)]
            guard v != 0xff else {
                throw .invalidBase64Character(invalidCharacter(in: string, table: table))
            }
            buffer = (buffer << 6) | UInt32(v)
            bits += 6
            if bits >= 8 {
                bits -= 8
                out.append(UInt8(truncatingIfNeeded: buffer >> UInt32(bits)))
            }
        }
        if bits > 0 && (buffer & ((1 << UInt32(bits)) - 1)) != 0 {
            throw .invalidEncodingLength("base64 has non-zero trailing bits")
        }
        return out
    }
}

/// Hexadecimal (base16). Encodes lowercase; decodes either case.
public enum Base16 {
    static let digits: [UInt8] = Array("0123456789abcdef".utf8)

    public static func encode<C: Collection>(_ bytes: C) -> String where C.Element == UInt8 {
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count * 2)
        for b in bytes {
            out.append(digits[Int(b >> 4)])
            out.append(digits[Int(b & 0x0f)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    public static func decode(_ string: String) throws(MultiformatsError) -> [UInt8] {
        let input = Array(string.utf8)
        guard input.count % 2 == 0 else {
            throw .invalidEncodingLength("base16 length \(input.count) is odd")
        }
        func nibble(_ c: UInt8) -> UInt8? {
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): return c - UInt8(ascii: "A") + 10
            default: return nil
            }
        }
        var out: [UInt8] = []
        out.reserveCapacity(input.count / 2)
        var i = 0
        while i < input.count {
            guard let hi = nibble(input[i]), let lo = nibble(input[i + 1]) else {
                let bad = string.first { ch in
                    !(ch.isASCII && ch.isHexDigit)
                } ?? "?"
                throw .invalidBase16Character(bad)
            }
            out.append(hi << 4 | lo)
            i += 2
        }
        return out
    }
}
