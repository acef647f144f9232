/// Base58 with the bitcoin alphabet ("base58btc"), as used for peer IDs.
///
/// Each leading zero byte is encoded as a leading `'1'` (the alphabet's zero
/// digit) and vice versa; the rest is a big-endian base conversion.
public enum Base58 {
    static let alphabet: [UInt8] = Array("123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz".utf8)

    /// Reverse lookup table: ASCII byte → digit value, or 0xff when invalid.
    static let decodeTable: [UInt8] = {
        var table = [UInt8](repeating: 0xff, count: 256)
        for (i, c) in alphabet.enumerated() { table[Int(c)] = UInt8(i) }
        return table
    }()

    public static func encode<C: Collection>(_ bytes: C) -> String where C.Element == UInt8 {
        let input = Array(bytes)
        let zeros = input.prefix(while: { $0 == 0 }).count
        // log(256) / log(58) ≈ 1.366, so this is always large enough.
        var digits = [UInt8](repeating: 0, count: (input.count - zeros) * 138 / 100 + 1)
        var used = 0
        for byte in input[zeros...] {
            var carry = Int(byte)
            var i = 0
            while i < used || carry != 0 {
                carry += 256 * Int(digits[i])
                digits[i] = UInt8(carry % 58)
                carry /= 58
                i += 1
            }
            used = i
        }
        var out = [UInt8](repeating: alphabet[0], count: zeros)
        out.reserveCapacity(zeros + used)
        for i in stride(from: used - 1, through: 0, by: -1) {
            out.append(alphabet[Int(digits[i])])
        }
        return String(decoding: out, as: UTF8.self)
    }

    public static func decode(_ string: String) throws(MultiformatsError) -> [UInt8] {
        let input = Array(string.utf8)
        let ones = input.prefix(while: { $0 == alphabet[0] }).count
        // log(58) / log(256) ≈ 0.733
        var bytes = [UInt8](repeating: 0, count: (input.count - ones) * 733 / 1000 + 1)
        var used = 0
        for c in input[ones...] {
            let digit = decodeTable[Int(c)]
            guard digit != 0xff else {
                throw .invalidBase58Character(firstInvalidCharacter(in: string) ?? "?")
            }
            var carry = Int(digit)
            var i = 0
            while i < used || carry != 0 {
                carry += 58 * Int(bytes[i])
                bytes[i] = UInt8(carry & 0xff)
                carry >>= 8
                i += 1
            }
            used = i
        }
        var out = [UInt8](repeating: 0, count: ones)
        out.reserveCapacity(ones + used)
        for i in stride(from: used - 1, through: 0, by: -1) {
            out.append(bytes[i])
        }
        return out
    }

    private static func firstInvalidCharacter(in string: String) -> Character? {
        string.first { ch in
            guard ch.utf8.count == 1, let b = ch.utf8.first else { return true }
            return decodeTable[Int(b)] == 0xff
        }
    }
}
