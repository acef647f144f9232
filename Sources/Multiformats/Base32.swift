/// RFC 4648 base32 (alphabet `a-z2-7`), lowercase and without padding, as used by
/// multibase prefix `b`. Decoding accepts upper case as well, rejects `=` padding,
/// impossible lengths and non-zero trailing bits (so encodings are canonical).
public enum Base32 {
    static let alphabet: [UInt8] = Array("abcdefghijklmnopqrstuvwxyz234567".utf8)

    static let decodeTable: [UInt8] = {
        var table = [UInt8](repeating: 0xff, count: 256)
        for (i, c) in alphabet.enumerated() {
            table[Int(c)] = UInt8(i)
            if c >= UInt8(ascii: "a") && c <= UInt8(ascii: "z") {
                table[Int(c - 32)] = UInt8(i)
            }
        }
        return table
    }()

    public static func encode<C: Collection>(_ bytes: C) -> String where C.Element == UInt8 {
        var out: [UInt8] = []
        out.reserveCapacity((bytes.count * 8 + 4) / 5)
        var buffer: UInt32 = 0
        var bits = 0
        for byte in bytes {
            buffer = (buffer << 8) | UInt32(byte)
            bits += 8
            while bits >= 5 {
                bits -= 5
                out.append(alphabet[Int((buffer >> UInt32(bits)) & 0x1f)])
            }
        }
        if bits > 0 {
            out.append(alphabet[Int((buffer << UInt32(5 - bits)) & 0x1f)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    public static func decode(_ string: String) throws(MultiformatsError) -> [UInt8] {
        let input = Array(string.utf8)
        // 8 characters carry 5 bytes; a final group of 1, 3 or 6 characters
        // cannot come from whole bytes.
        switch input.count % 8 {
        case 1, 3, 6: throw .invalidEncodingLength("base32 length \(input.count)")
        default: break
        }
        var out: [UInt8] = []
        out.reserveCapacity(input.count * 5 / 8)
        var buffer: UInt32 = 0
        var bits = 0
        for c in input {
            let v = decodeTable[Int(c)]
            guard v != 0xff else {
                throw .invalidBase32Character(invalidCharacter(in: string, table: decodeTable))
            }
            buffer = (buffer << 5) | UInt32(v)
            bits += 5
            if bits >= 8 {
                bits -= 8
                out.append(UInt8(truncatingIfNeeded: buffer >> UInt32(bits)))
            }
        }
        if bits > 0 && (buffer & ((1 << UInt32(bits)) - 1)) != 0 {
            throw .invalidEncodingLength("base32 has non-zero trailing bits")
        }
        return out
    }
}

/// First character of `string` that `table` maps to 0xff (used for error messages).
func invalidCharacter(in string: String, table: [UInt8]) -> Character {
    string.first { ch in
        guard ch.utf8.count == 1, let b = ch.utf8.first else { return true }
        return table[Int(b)] == 0xff
    } ?? "?"
}
