import Testing
@testable import Multiformats

@Suite struct BaseEncodingTests {
    // Vectors from the multibase test suite / RFC 4648 ("yes mani !" is the multibase example).
    @Test func base58Vectors() throws {
        let cases: [([UInt8], String)] = [
            ([], ""),
            ([0], "1"),
            ([0, 0, 0x28, 0x7f, 0xb4, 0xcd], "11233QC4"),
            (Array("yes mani !".utf8), "7paNL19xttacUY"),
            (Array("hello world".utf8), "StV1DL6CwTryKyV"),
        ]
        for (bytes, text) in cases {
            #expect(Base58.encode(bytes) == text)
            #expect(try Base58.decode(text) == bytes)
        }
    }

    @Test func base58RejectsInvalidCharacters() {
        for bad in ["0", "O", "I", "l", "abc+", "é"] {
            #expect(throws: MultiformatsError.self) { try Base58.decode(bad) }
        }
        #expect(throws: MultiformatsError.invalidBase58Character("0")) { try Base58.decode("ab0c") }
    }

    @Test func base32Vectors() throws {
        // RFC 4648 section 10, lowercased, padding removed.
        let cases = [("", ""), ("f", "my"), ("fo", "mzxq"), ("foo", "mzxw6"), ("foob", "mzxw6yq"),
                     ("fooba", "mzxw6ytb"), ("foobar", "mzxw6ytboi")]
        for (plain, text) in cases {
            #expect(Base32.encode(Array(plain.utf8)) == text)
            #expect(try Base32.decode(text) == Array(plain.utf8))
            #expect(try Base32.decode(text.uppercased()) == Array(plain.utf8))
        }
    }

    @Test func base32RejectsBadInput() {
        #expect(throws: MultiformatsError.invalidBase32Character("1")) { try Base32.decode("mzx1") }
        #expect(throws: MultiformatsError.self) { try Base32.decode("my======") }  // padding
        #expect(throws: MultiformatsError.self) { try Base32.decode("m") }  // impossible length
        #expect(throws: MultiformatsError.self) { try Base32.decode("mz") }  // non-zero trailing bits
    }

    @Test func base64Vectors() throws {
        let cases = [("", ""), ("f", "Zg"), ("fo", "Zm8"), ("foo", "Zm9v"), ("foob", "Zm9vYg"),
                     ("fooba", "Zm9vYmE"), ("foobar", "Zm9vYmFy")]
        for (plain, text) in cases {
            #expect(Base64.encode(Array(plain.utf8)) == text)
            #expect(try Base64.decode(text) == Array(plain.utf8))
        }
        #expect(Base64.encode([0xfb, 0xff]) == "-_8")
        #expect(Base64.encode([0xfb, 0xff], urlSafe: false) == "+/8")
        #expect(throws: MultiformatsError.self) { try Base64.decode("+/8") }
        #expect(throws: MultiformatsError.self) { try Base64.decode("Zg==") }
        #expect(throws: MultiformatsError.self) { try Base64.decode("Zh") }  // trailing bits
    }

    @Test func base16() throws {
        #expect(Base16.encode([0x00, 0xab, 0xff]) == "00abff")
        #expect(try Base16.decode("00ABff") == [0x00, 0xab, 0xff])
        #expect(throws: MultiformatsError.self) { try Base16.decode("abc") }
        #expect(throws: MultiformatsError.invalidBase16Character("g")) { try Base16.decode("0g") }
    }

    @Test func multibaseVectors() throws {
        // From the multibase spec test vectors for "yes mani !".
        let data = Array("yes mani !".utf8)
        #expect(Multibase.encode(data, as: .base58btc) == "z7paNL19xttacUY")
        #expect(Multibase.encode(data, as: .base32) == "bpfsxgidnmfxgsibb")
        #expect(Multibase.encode(data, as: .base64url) == "ueWVzIG1hbmkgIQ")
        #expect(Multibase.encode(data, as: .base16) == "f796573206d616e692021")
        for text in ["z7paNL19xttacUY", "bpfsxgidnmfxgsibb", "BPFSXGIDNMFXGSIBB", "ueWVzIG1hbmkgIQ",
                     "meWVzIG1hbmkgIQ", "f796573206d616e692021", "F796573206D616E692021"] {
            #expect(try Multibase.decode(text) == data, "\(text)")
        }
    }

    @Test func multibaseRejects() {
        #expect(throws: MultiformatsError.unknownMultibasePrefix(nil)) { try Multibase.decode("") }
        #expect(throws: MultiformatsError.unknownMultibasePrefix("Q")) { try Multibase.decode("Qmabc") }
        #expect(throws: MultiformatsError.self) { try Multibase.decode("bPFSX") }  // mixed case
    }

    @Test func randomRoundTrips() throws {
        var rng = SplitMix64(seed: 2)
        for _ in 0..<500 {
            var data = rng.bytes(Int.random(in: 0...80, using: &rng))
            // Exercise leading zeros for base58.
            if Bool.random(using: &rng) { data.insert(contentsOf: [0, 0], at: 0) }
            #expect(try Base58.decode(Base58.encode(data)) == data)
            #expect(try Base32.decode(Base32.encode(data)) == data)
            #expect(try Base64.decode(Base64.encode(data)) == data)
            #expect(try Base16.decode(Base16.encode(data)) == data)
            for enc in Multibase.Encoding.allCases {
                let text = Multibase.encode(data, as: enc)
                #expect(text.first == enc.prefix)
                #expect(try Multibase.decode(text) == data)
            }
        }
    }
}
