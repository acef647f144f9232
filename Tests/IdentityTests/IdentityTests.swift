import Foundation
import Multiformats
import Testing
@testable import Identity

func hex(_ s: String) -> [UInt8] { try! Base16.decode(s) }

@Suite struct KeyTests {
    @Test func ed25519SeedVectors() throws {
        // Seeds as 32-byte little-endian numbers; IDs from the project brief
        // (they match the deterministic identities used by rust-libp2p tests).
        #expect(PrivateKey.ed25519(seed: 1).peerID.description == "12D3KooWPjceQrSwdWXPyLLeABRXmuqt69Rg3sBYbU1Nft9HyQ6X")
        #expect(PrivateKey.ed25519(seed: 0).peerID.description == "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN")
        var seed = [UInt8](repeating: 0, count: 32)
        seed[0] = 1
        #expect(try PrivateKey(ed25519Seed: seed).publicKey == PrivateKey.ed25519(seed: 1).publicKey)
        #expect(throws: IdentityError.invalidKey) { try PrivateKey(ed25519Seed: [1, 2, 3]) }
    }

    @Test func ed25519SpecVector() throws {
        let priv = try PrivateKey(marshaled: hex(SpecVectors.ed25519Private))
        #expect(priv.type == .ed25519)
        #expect(priv.marshal() == hex(SpecVectors.ed25519Private))
        #expect(priv.publicKey.marshal() == hex(SpecVectors.ed25519Public))
        let pub = try PublicKey(marshaled: hex(SpecVectors.ed25519Public))
        #expect(pub == priv.publicKey)
        #expect(pub.raw.count == 32)
        // 36-byte protobuf ≤ 42 → identity multihash (base58 starts with "12D3KooW").
        let id = PeerID(publicKey: pub)
        #expect(id.bytes.prefix(2) == [0x00, 36])
        #expect(id.description == "12D3KooWBtg3aaRMjxwedh83aGiUkwSxDwUZkzuJcfaqUmo7R3pq")
        #expect(id.cidString == "bafzaajaiaejcahwr5d5ofrfbis4l5d6uwr57hu5tjodrypfm6yaq6dsc2r2pzyt6")
        #expect(id.publicKey == pub)
    }

    @Test func ecdsaSpecVector() throws {
        let priv = try PrivateKey(marshaled: hex(SpecVectors.ecdsaPrivate))
        #expect(priv.type == .ecdsa)
        #expect(priv.marshal() == hex(SpecVectors.ecdsaPrivate))  // SEC1, byte-exact
        #expect(priv.publicKey.marshal() == hex(SpecVectors.ecdsaPublic))
        let pub = try PublicKey(marshaled: hex(SpecVectors.ecdsaPublic))
        #expect(pub == priv.publicKey)
        // 93-byte protobuf > 42 → sha2-256.
        let id = PeerID(publicKey: pub)
        #expect(id.description == "QmVMT29id3TUASyfZZ6k9hmNyc2nYabCo4uMSpDw4zrgDk")
        #expect(id.cidString == "bafzbeidigywdclqvl5hxfefwp5onbffcfife7pza57mmfb4tiqmtkdjw64")
        #expect(id.publicKey == nil)
        #expect(id.matches(pub))
    }

    @Test func rsaSpecVector() throws {
        let priv = try PrivateKey(marshaled: hex(SpecVectors.rsaPrivate))
        #expect(priv.type == .rsa)
        #expect(priv.marshal() == hex(SpecVectors.rsaPrivate))  // PKCS#1, byte-exact
        #expect(priv.publicKey.marshal() == hex(SpecVectors.rsaPublic))
        let pub = try PublicKey(marshaled: hex(SpecVectors.rsaPublic))
        #expect(pub == priv.publicKey)
        let id = PeerID(publicKey: pub)
        #expect(id.description == "QmaeANgBs1DTSxWSrPPtobgQuxW8XTfsS4ydbK4rCHzqxG")
        #expect(id.matches(pub))
        let sig = try priv.sign(Array("rsa".utf8))
        #expect(pub.verify(signature: sig, for: Array("rsa".utf8)))
    }

    @Test func secp256k1SpecVector() throws {
        // The spec's pair: the private key's public key is the spec's public key.
        let pub = try PublicKey(marshaled: hex(SpecVectors.secp256k1Public))
        #expect(pub.type == .secp256k1)
        #expect(pub.marshal() == hex(SpecVectors.secp256k1Public))
        let id = PeerID(publicKey: pub)
        #expect(id.description == "16Uiu2HAmLhLvBoYaoZfaMUKuibM6ac163GwKY74c5kiSLg5KvLpY")
        #expect(id.publicKey == pub)
        let priv = try PrivateKey(marshaled: hex(SpecVectors.secp256k1Private))
        #expect(priv.type == .secp256k1)
        #expect(priv.publicKey == pub)
        #expect(priv.marshal() == hex(SpecVectors.secp256k1Private))
        let sig = try priv.sign(Array("secp256k1".utf8))
        #expect(pub.verify(signature: sig, for: Array("secp256k1".utf8)))
        #expect(!pub.verify(signature: [0x30, 0x00], for: [1]))
        #expect(throws: IdentityError.invalidSignature) { try pub.verifyThrowing(signature: [0x30, 0x00], for: [1]) }
    }

    static func keysOfEachType() throws -> [PrivateKey] {
        [PrivateKey.generateEd25519(), try PrivateKey.generateSecp256k1(), PrivateKey.generateECDSA(), try PrivateKey.generateRSA(bits: 2048)]
    }

    @Test func signVerifyRoundTripsAndTampering() throws {
        for key in try Self.keysOfEachType() {
            let message = Array("libp2p-signing-test".utf8)
            let sig = try key.sign(message)
            #expect(key.publicKey.verify(signature: sig, for: message), "\(key.type)")
            try key.publicKey.verifyThrowing(signature: sig, for: message)
            // Verification also works through a marshal/parse round trip of the public key.
            let reparsed = try PublicKey(marshaled: key.publicKey.marshal())
            #expect(reparsed.verify(signature: sig, for: message))
            // Tampered message.
            var otherMessage = message
            otherMessage[0] ^= 1
            #expect(!key.publicKey.verify(signature: sig, for: otherMessage), "\(key.type)")
            // Tampered signature (flip a bit in the middle).
            var badSig = sig
            badSig[badSig.count / 2] ^= 0x10
            #expect(!key.publicKey.verify(signature: badSig, for: message), "\(key.type)")
            #expect(throws: IdentityError.invalidSignature) { try key.publicKey.verifyThrowing(signature: badSig, for: message) }
            #expect(!key.publicKey.verify(signature: [], for: message))
            // Another key of the same type does not verify it.
            let other: PrivateKey
            switch key.type {
            case .ed25519: other = .generateEd25519()
            case .ecdsa: other = .generateECDSA()
            case .secp256k1: other = try .generateSecp256k1()
            default: other = try PrivateKey(marshaled: hex(SpecVectors.rsaPrivate))
            }
            #expect(!other.publicKey.verify(signature: sig, for: message), "\(key.type)")
            // Private key round trip keeps the identity.
            let restored = try PrivateKey(marshaled: key.marshal())
            #expect(restored.publicKey == key.publicKey)
            #expect(restored.marshal() == key.marshal())
            #expect(restored.peerID == key.peerID)
        }
    }

    @Test func ed25519SignatureIsDeterministic() throws {
        // RFC 8032 signatures are deterministic: same key + message → same signature.
        let key = PrivateKey.ed25519(seed: 42)
        #expect(try key.sign([1, 2, 3]) == key.sign([1, 2, 3]))
        #expect(try key.sign([1, 2, 3]).count == 64)
    }

    @Test func ed25519PrivateKeyEncodings() throws {
        let key = PrivateKey.ed25519(seed: 7)
        let raw = key.raw  // seed ‖ public
        #expect(raw.count == 64)
        let seedOnly = try PrivateKey(type: .ed25519, raw: Array(raw.prefix(32)))
        #expect(seedOnly.publicKey == key.publicKey)
        let legacy = try PrivateKey(type: .ed25519, raw: raw + Array(raw.suffix(32)))
        #expect(legacy.publicKey == key.publicKey)
        // Mismatched embedded public key.
        var wrong = raw
        wrong[40] ^= 1
        #expect(throws: IdentityError.invalidKey) { try PrivateKey(type: .ed25519, raw: wrong) }
        #expect(throws: IdentityError.invalidKey) { try PrivateKey(type: .ed25519, raw: raw + Array(repeating: 0, count: 32)) }
        #expect(throws: IdentityError.invalidKey) { try PrivateKey(type: .ed25519, raw: Array(raw.prefix(31))) }
    }

    @Test func publicKeyProtobufStrictness() throws {
        let good = hex(SpecVectors.ed25519Public)
        // Fields out of order.
        var w = ProtobufWriter()
        w.writeBytesField(2, Array(good.suffix(32)))
        w.writeVarintField(1, 1)
        #expect(throws: IdentityError.invalidKey) { try PublicKey(marshaled: w.bytes) }
        // Extra field.
        #expect(throws: IdentityError.invalidKey) { try PublicKey(marshaled: good + [0x18, 0x01]) }
        // Missing data / missing type.
        #expect(throws: IdentityError.invalidKey) { try PublicKey(marshaled: [0x08, 0x01]) }
        #expect(throws: IdentityError.invalidKey) { try PublicKey(marshaled: Array(good.dropFirst(2))) }
        // Unknown key type.
        #expect(throws: IdentityError.unsupportedKeyType) { try PublicKey(marshaled: [0x08, 0x09] + Array(good.dropFirst(2))) }
        // Wrong key length for the type; truncated protobuf.
        #expect(throws: IdentityError.invalidKey) { try PublicKey(marshaled: [0x08, 0x01, 0x12, 0x02, 0x01, 0x02]) }
        #expect(throws: IdentityError.invalidKey) { try PublicKey(marshaled: Array(good.dropLast())) }
        // Non-minimal varint for the type.
        #expect(throws: IdentityError.invalidKey) { try PublicKey(marshaled: [0x08, 0x81, 0x00] + Array(good.dropFirst(2))) }
        // ECDSA key with garbage DER.
        #expect(throws: IdentityError.invalidKey) { try PublicKey(type: .ecdsa, raw: [0x30, 0x03, 0x02, 0x01, 0x01]) }
        // secp256k1 needs the compressed form.
        #expect(throws: IdentityError.invalidKey) { try PublicKey(type: .secp256k1, raw: [0x04] + [UInt8](repeating: 1, count: 32)) }
    }

    @Test func rsaSizeLimits() throws {
        #expect(throws: IdentityError.rsaKeyTooSmall) { try PrivateKey.generateRSA(bits: 1024) }
        #expect(throws: IdentityError.rsaKeyTooLarge) { try PrivateKey.generateRSA(bits: 16384) }
        // A 1024-bit SubjectPublicKeyInfo (modulus of 128 bytes with the top bit set, e = 65537)
        // is rejected as too small.
        let modulus: [UInt8] = [0x00, 0xc0] + [UInt8](repeating: 0x5b, count: 126) + [0x01]
        let rsaPublicKey = der(0x30, der(0x02, modulus) + der(0x02, [0x01, 0x00, 0x01]))
        let algorithm = der(0x30, der(0x06, [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01]) + [0x05, 0x00])
        let spki = der(0x30, algorithm + der(0x03, [0x00] + rsaPublicKey))
        #expect(throws: IdentityError.rsaKeyTooSmall) { try PublicKey(type: .rsa, raw: spki) }
        // A 9216-bit key is rejected as too large (the 2048-byte raw cap or the bit limit).
        let bigModulus: [UInt8] = [0x00, 0xc0] + [UInt8](repeating: 0x5b, count: 1150) + [0x01]
        let bigKey = der(0x30, der(0x02, bigModulus) + der(0x02, [0x01, 0x00, 0x01]))
        let bigSPKI = der(0x30, algorithm + der(0x03, [0x00] + bigKey))
        #expect(throws: IdentityError.self) { try PublicKey(type: .rsa, raw: bigSPKI) }
        let bigSigned = bigSPKI.count <= 2048
        #expect(bigSigned)
        #expect(throws: IdentityError.rsaKeyTooLarge) { try PublicKey(type: .rsa, raw: bigSPKI) }
    }

    /// Minimal DER TLV builder for test inputs.
    func der(_ tag: UInt8, _ content: [UInt8]) -> [UInt8] {
        let n = content.count
        let length: [UInt8] = n < 0x80 ? [UInt8(n)] : n <= 0xff ? [0x81, UInt8(n)] : [0x82, UInt8(n >> 8), UInt8(n & 0xff)]
        return [tag] + length + content
    }
}

@Suite struct PeerIDTests {
    @Test func cidAndBase58AreTheSameID() throws {
        // peer-ids spec examples: both strings denote the same sha2-256 peer ID.
        let a = try PeerID("QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N")
        let b = try PeerID("bafzbeie5745rpv2m6tjyuugywy4d5ewrqgqqhfnf445he3omzpjbx5xqxe")
        #expect(a == b)
        #expect(a.cidString == "bafzbeie5745rpv2m6tjyuugywy4d5ewrqgqqhfnf445he3omzpjbx5xqxe")
        #expect(b.b58String == "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N")
        // Other multibases of the same CID are accepted too.
        let cidBytes = try Multibase.decode(a.cidString)
        #expect(try PeerID(Multibase.encode(cidBytes, as: .base58btc)) == a)
        #expect(try PeerID(Multibase.encode(cidBytes, as: .base16)) == a)

        let ed = try PeerID("12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA")
        #expect(try PeerID(ed.cidString) == ed)
        #expect(ed.publicKey?.type == .ed25519)
        #expect(ed.matches(ed.publicKey!))
    }

    @Test func randomKeysRoundTripThroughText() throws {
        for i in 0..<50 {
            let key = PrivateKey.ed25519(seed: UInt64(i) &* 0x9E37_79B9)
            let id = key.peerID
            #expect(id.description.hasPrefix("12D3KooW"))
            #expect(try PeerID(id.description) == id)
            #expect(try PeerID(id.cidString) == id)
            #expect(try PeerID(bytes: id.bytes) == id)
            #expect(PeerID(Substring(id.description)) == id)
            #expect(id.publicKey == key.publicKey)
            #expect(id.matches(key.publicKey))
            #expect(!id.matches(PrivateKey.ed25519(seed: UInt64(i) &* 0x9E37_79B9 &+ 1).publicKey))
        }
        let ecdsa = PrivateKey.generateECDSA().peerID
        #expect(ecdsa.description.hasPrefix("Qm"))
        #expect(try PeerID(ecdsa.description) == ecdsa)
    }

    static let invalidStrings: [String] = [
        "",
        "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5S",  // truncated
        "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SAA",  // extra char
        "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5",  // truncated sha256 ID
        "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx50",  // invalid base58 char
        "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi",  // CIDv1 with dag-pb codec
        "bafzbeie5745rpv2m6tjyuugywy4d5ewrqgqqhfnf445he3omzpjbx5xqx",  // truncated CID
        "zQmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N",  // multibase of a bare multihash, not a CID
        "hello",
        "1",
        "1111111111",
        String(repeating: "Q", count: 300),
    ]

    @Test(arguments: invalidStrings)
    func invalidStringsRejected(text: String) {
        #expect(throws: IdentityError.invalidPeerID) { try PeerID(text) }
        #expect(PeerID(Substring(text)) == nil)
    }

    @Test func invalidBinaryRejected() throws {
        // Unknown hash function (sha2-512 code 0x13).
        #expect(throws: IdentityError.invalidPeerID) { try PeerID(bytes: [0x13, 0x02, 1, 2]) }
        // sha2-256 with a short digest.
        #expect(throws: IdentityError.invalidPeerID) { try PeerID(bytes: [0x12, 0x02, 1, 2]) }
        // Identity whose digest is not a public key.
        #expect(throws: IdentityError.invalidPeerID) { try PeerID(bytes: [0x00, 0x03, 1, 2, 3]) }
        // Identity hash of a key longer than 42 bytes (not a canonical peer ID).
        let ecdsaPub = hex(SpecVectors.ecdsaPublic)
        #expect(throws: IdentityError.invalidPeerID) { try PeerID(bytes: Multihash.identity(ecdsaPub).bytes) }
        #expect(throws: IdentityError.invalidPeerID) { try PeerID(bytes: []) }
        // Trailing byte.
        let good = PrivateKey.ed25519(seed: 1).peerID.bytes
        #expect(throws: IdentityError.invalidPeerID) { try PeerID(bytes: good + [0]) }
    }

    @Test func ordering() throws {
        let ids = (0..<20).map { PrivateKey.ed25519(seed: UInt64($0)).peerID }
        let sorted = ids.sorted()
        for (a, b) in zip(sorted, sorted.dropFirst()) {
            #expect(a.bytes.lexicographicallyPrecedes(b.bytes))
        }
        #expect(Set(ids).count == 20)
    }

    @Test func multiaddrIntegration() throws {
        let id = PrivateKey.ed25519(seed: 1).peerID
        let base = try Multiaddr("/ip4/127.0.0.1/tcp/4001" as String)
        let full = base.appending(peerID: id)
        #expect(full.description == "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWPjceQrSwdWXPyLLeABRXmuqt69Rg3sBYbU1Nft9HyQ6X")
        #expect(full.peerID == id)
        #expect(base.peerID == nil)
        #expect(full.removingPeerID() == base)
        // A /p2p multihash that is structurally valid but not a peer ID.
        let notAPeer = base.appending(.p2p(Multihash.identity([1, 2, 3]).bytes))
        #expect(notAPeer.peerID == nil)
    }
}

@Suite struct KeyFileTests {
    func temporaryPath(_ name: String) -> String {
        NSTemporaryDirectory() + "pointsub-keyfile-\(UUID().uuidString)-\(name)"
    }

    @Test func writeReadRoundTrip() throws {
        for key in [PrivateKey.generateEd25519(), PrivateKey.generateECDSA()] {
            let path = temporaryPath("\(key.type)")
            defer { try? FileManager.default.removeItem(atPath: path) }
            try KeyFile.write(key, to: path)
            let loaded = try KeyFile.read(path: path)
            #expect(loaded.marshal() == key.marshal())
            #expect(loaded.peerID == key.peerID)
            // Raw protobuf on disk, permissions 0600.
            #expect(try Array(Data(contentsOf: URL(fileURLWithPath: path))) == key.marshal())
            let attributes = try FileManager.default.attributesOfItem(atPath: path)
            #expect((attributes[.posixPermissions] as? NSNumber)?.intValue == 0o600)
        }
    }

    @Test func overwriteReplacesKey() throws {
        let path = temporaryPath("overwrite")
        defer { try? FileManager.default.removeItem(atPath: path) }
        try KeyFile.write(PrivateKey.ed25519(seed: 1), to: path)
        try KeyFile.write(PrivateKey.ed25519(seed: 2), to: path)
        #expect(try KeyFile.read(path: path).peerID == PrivateKey.ed25519(seed: 2).peerID)
    }

    @Test func readErrors() throws {
        #expect(throws: IdentityError.keyFile) { try KeyFile.read(path: temporaryPath("missing")) }
        let path = temporaryPath("garbage")
        defer { try? FileManager.default.removeItem(atPath: path) }
        try Data([0x08, 0x01, 0x12, 0x05, 0x01]).write(to: URL(fileURLWithPath: path))
        #expect(throws: IdentityError.invalidKey) { try KeyFile.read(path: path) }
        #expect(throws: IdentityError.keyFile) { try KeyFile.write(.generateEd25519(), to: "/nonexistent-dir/key") }
    }
}
