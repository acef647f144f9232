/// Just enough DER to read and write SEC1 `ECPrivateKey` structures (RFC 5915),
/// the ECDSA private key encoding go-libp2p uses in the PrivateKey protobuf.
enum DER {
    struct Reader {
        var bytes: ArraySlice<UInt8>

        init(_ bytes: ArraySlice<UInt8>) { self.bytes = bytes }

        var isAtEnd: Bool { bytes.isEmpty }
        var peekTag: UInt8? { bytes.first }

        /// Reads one TLV with the given tag and returns its contents.
        mutating func read(tag: UInt8) -> ArraySlice<UInt8>? {
            guard bytes.count >= 2, bytes.first == tag else { return nil }
            var index = bytes.startIndex + 1
            let first = bytes[index]
            index += 1
            var length = 0
            if first < 0x80 {
                length = Int(first)
            } else {
                let n = Int(first & 0x7f)
                // DER: long form only for lengths >= 128, at most 2 length bytes here.
                guard n >= 1, n <= 2, bytes.endIndex - index >= n, bytes[index] != 0 else { return nil }
                for _ in 0..<n {
                    length = length << 8 | Int(bytes[index])
                    index += 1
                }
                guard length >= 0x80 else { return nil }
            }
            guard bytes.endIndex - index >= length else { return nil }
            let content = bytes[index..<index + length]
            bytes = bytes[(index + length)...]
            return content
        }
    }

    static func encodeLength(_ n: Int) -> [UInt8] {
        if n < 0x80 { return [UInt8(n)] }
        if n <= 0xff { return [0x81, UInt8(n)] }
        precondition(n <= 0xffff)
        return [0x82, UInt8(n >> 8), UInt8(n & 0xff)]
    }

    static func tlv(_ tag: UInt8, _ content: [UInt8]) -> [UInt8] {
        [tag] + encodeLength(content.count) + content
    }

    /// OID 1.2.840.10045.3.1.7 (prime256v1 / P-256), DER content bytes.
    static let p256OID: [UInt8] = [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]

    /// SEC1 ECPrivateKey with version 1, the private scalar, the curve OID in [0]
    /// and the uncompressed public point in [1] — the layout Go's
    /// `x509.MarshalECPrivateKey` produces.
    static func sec1(privateScalar: [UInt8], curveOID: [UInt8], publicX963: [UInt8]) -> [UInt8] {
        let body = tlv(0x02, [0x01])
            + tlv(0x04, privateScalar)
            + tlv(0xa0, tlv(0x06, curveOID))
            + tlv(0xa1, tlv(0x03, [0x00] + publicX963))
        return tlv(0x30, body)
    }

    struct SEC1Key {
        var privateScalar: [UInt8]
        var curveOID: [UInt8]?
        var publicX963: [UInt8]?
    }

    static func parseSEC1(_ bytes: [UInt8]) -> SEC1Key? {
        var outer = Reader(bytes[...])
        guard let seq = outer.read(tag: 0x30), outer.isAtEnd else { return nil }
        var r = Reader(seq)
        guard let version = r.read(tag: 0x02), Array(version) == [0x01],
              let scalar = r.read(tag: 0x04)
        else { return nil }
        var key = SEC1Key(privateScalar: Array(scalar))
        if r.peekTag == 0xa0 {
            guard let params = r.read(tag: 0xa0) else { return nil }
            var pr = Reader(params)
            guard let oid = pr.read(tag: 0x06), pr.isAtEnd else { return nil }
            key.curveOID = Array(oid)
        }
        if r.peekTag == 0xa1 {
            guard let pub = r.read(tag: 0xa1) else { return nil }
            var pr = Reader(pub)
            guard let bits = pr.read(tag: 0x03), pr.isAtEnd, bits.first == 0x00 else { return nil }
            key.publicX963 = Array(bits.dropFirst())
        }
        guard r.isAtEnd else { return nil }
        return key
    }
}
