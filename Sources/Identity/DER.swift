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

extension DER {
    /// OID 1.2.840.113549.1.1.1 (rsaEncryption), DER content bytes.
    static let rsaEncryptionOID: [UInt8] = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01]

    /// Why an RSA SubjectPublicKeyInfo was refused by ``validateRSAPublicKey(_:)``.
    enum RSAKeyProblem: Error {
        case malformed(String)
        case tooSmall(bits: Int)
        case tooLarge(bits: Int)
    }

    /// Checks that `bytes` is exactly one strict-DER PKIX SubjectPublicKeyInfo holding an RSA key
    /// that BoringSSL will accept, and returns the modulus size in bits.
    ///
    /// Why this exists: swift-crypto 3.12.3's `_RSA.Signing.PublicKey(derRepresentation:)` frees
    /// its BoringSSL key on the error path *and* again in `deinit` (a double free that aborts the
    /// process; `PublicKey{Type=RSA, Data=<empty>}` in a Noise handshake was enough). So no byte
    /// sequence may reach that initializer unless BoringSSL's parse is certain to succeed: this
    /// checks everything `d2i_RSA_PUBKEY` checks (SPKI and AlgorithmIdentifier structure, NULL
    /// parameters, a BIT STRING with no unused bits, RSAPublicKey{n, e} as minimal non-negative
    /// INTEGERs, nothing trailing) and `rsa_check_public_key` (n odd, e odd, 2 ≤ bits(e) ≤ 33),
    /// plus our own size bounds.
    static func validateRSAPublicKey(_ bytes: [UInt8], minBits: Int, maxBits: Int) throws(RSAKeyProblem) -> Int {
        var outer = Reader(bytes[...])
        guard let spki = outer.read(tag: 0x30), outer.isAtEnd else {
            throw .malformed("not one DER SEQUENCE")
        }
        var spkiReader = Reader(spki)
        guard let algorithm = spkiReader.read(tag: 0x30) else { throw .malformed("no AlgorithmIdentifier") }
        var algorithmReader = Reader(algorithm)
        guard let oid = algorithmReader.read(tag: 0x06), Array(oid) == rsaEncryptionOID else {
            throw .malformed("algorithm is not rsaEncryption")
        }
        // RFC 3279 §2.3.1: the parameters MUST be NULL (and BoringSSL insists on them).
        guard let null = algorithmReader.read(tag: 0x05), null.isEmpty, algorithmReader.isAtEnd else {
            throw .malformed("rsaEncryption parameters are not NULL")
        }
        guard let bitString = spkiReader.read(tag: 0x03), spkiReader.isAtEnd else {
            throw .malformed("no subjectPublicKey BIT STRING")
        }
        guard bitString.first == 0x00 else { throw .malformed("BIT STRING has unused bits") }
        var keyReader = Reader(bitString.dropFirst())
        guard let rsaKey = keyReader.read(tag: 0x30), keyReader.isAtEnd else {
            throw .malformed("RSAPublicKey is not one SEQUENCE")
        }
        var integers = Reader(rsaKey)
        guard let n = integers.read(tag: 0x02), let e = integers.read(tag: 0x02), integers.isAtEnd else {
            throw .malformed("RSAPublicKey is not SEQUENCE { INTEGER, INTEGER }")
        }
        guard let nBits = unsignedBitCount(n), let eBits = unsignedBitCount(e) else {
            throw .malformed("modulus or exponent is not a minimal non-negative INTEGER")
        }
        guard n.last.map({ $0 & 1 == 1 }) == true else { throw .malformed("modulus is even") }
        guard eBits >= 2, eBits <= 33, e.last.map({ $0 & 1 == 1 }) == true else {
            throw .malformed("public exponent must be odd, > 1 and at most 33 bits")
        }
        guard nBits >= minBits else { throw .tooSmall(bits: nBits) }
        guard nBits <= maxBits else { throw .tooLarge(bits: nBits) }
        return nBits
    }

    /// The bit length of a DER INTEGER's content if it is minimal and non-negative, else nil.
    static func unsignedBitCount(_ content: ArraySlice<UInt8>) -> Int? {
        guard let first = content.first, first & 0x80 == 0 else { return nil }
        var digits = content
        if first == 0 {
            guard content.count == 1 || content[content.startIndex + 1] & 0x80 != 0 else { return nil }
            digits = content.dropFirst()
        }
        guard let top = digits.first else { return 0 }
        return (digits.count - 1) * 8 + (8 - top.leadingZeroBitCount)
    }
}
