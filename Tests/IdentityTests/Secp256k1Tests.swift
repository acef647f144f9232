import Foundation
import Multiformats
import Testing
@testable import Identity

/// Vectors made with coincurve 21.0.0, the secp256k1 backend of py-libp2p 0.8.1 (Interop/.venv),
/// by `coincurve.PrivateKey(secret).public_key.format()` and `.sign(message)` (SHA-256, RFC 6979
/// nonces, DER, low S). libsecp256k1's default nonces are RFC 6979 as well, so our signatures
/// must be byte for byte the same. The secrets are `PrivateKey.secp256k1(seed:)`'s: the 32-byte
/// little-endian encoding of the seed, read as a big-endian scalar.
private struct CoincurveVector: Sendable {
    let seed: UInt64
    let publicKey: String
    let peerID: String
    let emptySignature: String
    let helloSignature: String
}

private let coincurveVectors = [
    CoincurveVector(
        seed: 1, publicKey: "028c28a97bf8298bc0d23d8c749452a32e694b65e30a9472a3954ab30fe5324caa",
        peerID: "16Uiu2HAm4ro25Yb85MzJcDdfTyks4NEgLSBTTnHs4UPcAmPg65ah",
        emptySignature: "3045022100c9396ffbd48e93a8b6f808b1320a6b3887e510d9f72733aede13dcf4c4bb6c4d02205ab55658394433108e53c6d9316017b769593e07d833d620e21eb8de221544d2",
        helloSignature: "304402202c09c6f0f762641b09a95fcdef295e401b5226223b45495d3b7b5079ba8457800220467a948dedcebf06da3fe79787f78c007856075d261d25af0b19893c996ceb22"),
    CoincurveVector(
        seed: 7, publicKey: "02308138e71be25e092fdc9da03d5357421bc7280356a1381a6186d63a0ca8dd7f",
        peerID: "16Uiu2HAkxh1qLwU1bxhsJfaW1ibNSBGKzbpqRiUtmQEus4QD3UVk",
        emptySignature: "3044022056e04c591c73e99581fa3ebae72f57030f945d54968df7d6656b255a65af0d3202201b3c33386341a79032a63144de9ef0a9f2ec193323fca7179e063b7533b8eb42",
        helloSignature: "3045022100e50f2e97562c6e8c89fbdf89e149bf3facc8a36f230bdd77bb27be8073d5648b022012cd6d7f37d8f9b3ff91bcaea2f06708ac35d0bbebb02f83f9cbf58c3555a9f4"),
]

private let hello = Array("hello libp2p".utf8)
/// The group order n, big-endian.
private let order = hex("fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141")

/// DER `SEQUENCE { INTEGER r, INTEGER s }` from unsigned big-endian r and s (minimal encoding).
private func derSignature(r: [UInt8], s: [UInt8]) -> [UInt8] {
    func integer(_ value: [UInt8]) -> [UInt8] {
        var digits = Array(value.drop { $0 == 0 })
        if digits.isEmpty { digits = [0] }
        if digits[0] & 0x80 != 0 { digits.insert(0, at: 0) }
        return [0x02, UInt8(digits.count)] + digits
    }
    let body = integer(r) + integer(s)
    return [0x30, UInt8(body.count)] + body
}

/// (r, s) of a minimal DER signature, as 32-byte big-endian values.
private func components(_ der: [UInt8]) -> (r: [UInt8], s: [UInt8])? {
    guard der.count >= 8, der[0] == 0x30, Int(der[1]) == der.count - 2, der[2] == 0x02 else { return nil }
    let rLength = Int(der[3])
    guard der.count >= 6 + rLength, der[4 + rLength] == 0x02 else { return nil }
    let sLength = Int(der[5 + rLength])
    guard der.count == 6 + rLength + sLength else { return nil }
    func pad(_ bytes: ArraySlice<UInt8>) -> [UInt8] {
        let digits = Array(bytes.drop { $0 == 0 })
        return [UInt8](repeating: 0, count: max(0, 32 - digits.count)) + digits
    }
    return (pad(der[4..<4 + rLength]), pad(der[(6 + rLength)...]))
}

/// a - b for 32-byte big-endian values (a >= b).
private func subtract(_ a: [UInt8], _ b: [UInt8]) -> [UInt8] {
    var out = [UInt8](repeating: 0, count: 32)
    var borrow = 0
    for i in (0..<32).reversed() {
        var d = Int(a[i]) - Int(b[i]) - borrow
        borrow = d < 0 ? 1 : 0
        if d < 0 { d += 256 }
        out[i] = UInt8(d)
    }
    return out
}

@Suite struct Secp256k1Tests {
    @Test func libraryIsInstalled() {
        // The test machines install libsecp256k1 (scripts/setup-interop.sh); without it every
        // other test here would fail with `.libraryUnavailable`, so say so once, clearly.
        #expect(Secp256k1.isAvailable, "\(Secp256k1.shared)")
    }

    @Test func coincurveVectorsMatch() throws {
        for vector in coincurveVectors {
            let key = try PrivateKey.secp256k1(seed: vector.seed)
            #expect(key.type == .secp256k1)
            #expect(key.publicKey.raw == hex(vector.publicKey), "seed \(vector.seed)")
            #expect(key.peerID.b58String == vector.peerID)
            // RFC 6979 on both sides: identical signatures.
            #expect(try key.sign([UInt8]()) == hex(vector.emptySignature), "seed \(vector.seed)")
            #expect(try key.sign(hello) == hex(vector.helloSignature), "seed \(vector.seed)")
            // coincurve's signatures verify with a key parsed from its bytes.
            let parsed = try PublicKey(type: .secp256k1, raw: hex(vector.publicKey))
            try parsed.verifyThrowing(signature: hex(vector.helloSignature), for: hello)
            try parsed.verifyThrowing(signature: hex(vector.emptySignature), for: [UInt8]())
            #expect(!parsed.verify(signature: hex(vector.helloSignature), for: [UInt8]()))
        }
    }

    @Test func peerIDIsTheIdentityMultihashOfTheMarshaledKey() throws {
        let key = try PrivateKey.secp256k1(seed: 1)
        let marshaled = key.publicKey.marshal()
        // Type 2, 33 bytes of data: 37 bytes, inlined (<= 42).
        #expect(marshaled == [0x08, 0x02, 0x12, 0x21] + hex(coincurveVectors[0].publicKey))
        let id = key.peerID
        #expect(id.bytes == [0x00, UInt8(marshaled.count)] + marshaled)
        #expect(id.b58String.hasPrefix("16Uiu2"))
        #expect(try PeerID(id.b58String) == id)
        #expect(try PeerID(id.cidString) == id)
        #expect(id.publicKey == key.publicKey)
        #expect(id.matches(key.publicKey))
    }

    @Test func signVerifyRoundTripsWithFreshKeysAndSignaturesAreLowS() throws {
        let halfOrder = hex("7fffffffffffffffffffffffffffffff5d576e7357a4501ddfe92f46681b20a0")
        for round in 0..<20 {
            let key = try PrivateKey.generateSecp256k1()
            #expect(key.raw.count == 32)
            let message = Array("round \(round)".utf8)
            let signature = try key.sign(message)
            #expect(signature.count <= 72)
            try key.publicKey.verifyThrowing(signature: signature, for: message)
            let parts = try #require(components(signature))
            #expect(!halfOrder.lexicographicallyPrecedes(parts.s), "high S produced")  // s <= n/2
            // Private key protobuf and key file round trips.
            let restored = try PrivateKey(marshaled: key.marshal())
            #expect(restored.publicKey == key.publicKey)
            #expect(restored.raw == key.raw)
        }
    }

    @Test func keyFileRoundTrip() throws {
        let key = try PrivateKey.secp256k1(seed: 7)
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("secp-\(UUID()).key").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        try KeyFile.write(key, to: path)
        let data = try #require(FileManager.default.contents(atPath: path))
        // go-libp2p's `crypto.MarshalPrivateKey`: type 2 and the 32-byte scalar.
        #expect([UInt8](data) == [0x08, 0x02, 0x12, 0x20] + key.raw)
        let read = try KeyFile.read(path: path)
        #expect(read.peerID == key.peerID)
        #expect(read.peerID.b58String == coincurveVectors[1].peerID)
    }

    @Test func malformedPublicKeysAreTypedErrors() throws {
        let good = hex(coincurveVectors[0].publicKey)
        let uncompressed = hex(
            "048c28a97bf8298bc0d23d8c749452a32e694b65e30a9472a3954ab30fe5324caa40a30463a3305193378fedf31f7cc0eb7ae784f0451cb9459e71dc73cbef9482")
        let cases: [(String, [UInt8])] = [
            ("empty", []),
            ("32 bytes", Array(good.prefix(32))),
            ("34 bytes", good + [0]),
            // A valid point, but not the compressed form go and py send (and hash into peer IDs).
            ("uncompressed", uncompressed),
            ("prefix 04 on 33 bytes", [0x04] + good.dropFirst()),
            ("prefix 05", [0x05] + good.dropFirst()),
            ("x = 0 is not on the curve", [0x02] + [UInt8](repeating: 0, count: 32)),
            ("x >= p", [0x03] + [UInt8](repeating: 0xff, count: 32)),
        ]
        for (name, raw) in cases {
            #expect(throws: IdentityError.invalidKey, "\(name)") { try PublicKey(type: .secp256k1, raw: raw) }
            var w = ProtobufWriter()
            w.writeVarintField(1, 2)
            w.writeBytesField(2, raw)
            #expect(throws: IdentityError.invalidKey, "\(name)") { try PublicKey(marshaled: w.bytes) }
            // As an inlined peer ID.
            #expect(throws: IdentityError.invalidPeerID, "\(name)") {
                try PeerID(bytes: [0x00, UInt8(w.bytes.count)] + w.bytes)
            }
        }
    }

    @Test func malformedPrivateKeysAreTypedErrors() throws {
        var nPlusOne = order
        nPlusOne[31] += 1
        let cases: [(String, [UInt8])] = [
            ("empty", []),
            ("31 bytes", [UInt8](repeating: 1, count: 31)),
            ("33 bytes", [UInt8](repeating: 1, count: 33)),
            ("zero", [UInt8](repeating: 0, count: 32)),
            ("n", order),
            ("n + 1", nPlusOne),
            ("all ones", [UInt8](repeating: 0xff, count: 32)),
        ]
        for (name, raw) in cases {
            #expect(throws: IdentityError.invalidKey, "\(name)") { try PrivateKey(type: .secp256k1, raw: raw) }
        }
        #expect(throws: IdentityError.invalidKey) { try PrivateKey.secp256k1(seed: 0) }
        // n - 1 is the largest valid secret.
        var nMinusOne = order
        nMinusOne[31] -= 1
        #expect(try PrivateKey(type: .secp256k1, raw: nMinusOne).raw == nMinusOne)
    }

    @Test func malformedSignaturesAreTypedErrors() throws {
        let key = try PublicKey(type: .secp256k1, raw: hex(coincurveVectors[0].publicKey))
        let good = hex(coincurveVectors[0].helloSignature)
        try key.verifyThrowing(signature: good, for: hello)
        let (r, s) = try #require(components(good))
        #expect(derSignature(r: r, s: s) == good)
        let highS = subtract(order, s)
        var nonMinimal = good
        nonMinimal[1] += 1
        nonMinimal[3] += 1
        nonMinimal.insert(0x00, at: 4)  // r with a superfluous leading zero
        let cases: [(String, [UInt8])] = [
            ("empty", []),
            ("one byte", [0x30]),
            ("empty sequence", [0x30, 0x00]),
            ("wrong outer tag", [0x31] + good.dropFirst()),
            ("length one too long", [0x30, good[1] + 1] + good.dropFirst(2)),
            ("trailing byte", good + [0x00]),
            ("truncated", Array(good.dropLast())),
            ("long-form length", [0x30, 0x81, good[1]] + good.dropFirst(2)),
            ("non-minimal r", nonMinimal),
            ("73 bytes", [UInt8](repeating: 0x30, count: 73)),
            // go-libp2p accepts high S; BIP-62, which the spec names, and py-libp2p do not (checked:
            // coincurve's verify returns False for it).
            ("high S", derSignature(r: r, s: highS)),
            ("r = n", derSignature(r: order, s: s)),
            ("s = n", derSignature(r: r, s: order)),
            ("r = 0", derSignature(r: [0], s: s)),
            ("s = 0", derSignature(r: r, s: [0])),
            ("negative r", { var b = good; b[4] = 0x80; return b }()),
            ("64-byte compact form", r + s),
        ]
        for (name, signature) in cases {
            #expect(throws: IdentityError.invalidSignature, "\(name)") {
                try key.verifyThrowing(signature: signature, for: hello)
            }
            #expect(!key.verify(signature: signature, for: hello), "\(name)")
        }
        // The high-S signature is the low-S one's twin: it is refused for its S alone.
        let error = #expect(throws: IdentityError.self) {
            try key.verifyThrowing(signature: derSignature(r: r, s: highS), for: hello)
        }
        #expect(error?.message.contains("high S") == true, "\(String(describing: error))")
        // Another key's valid signature.
        let other = try PrivateKey.secp256k1(seed: 2)
        #expect(throws: IdentityError.invalidSignature) {
            try key.verifyThrowing(signature: try other.sign(hello), for: hello)
        }
    }

    @Test func sharedContextUnderConcurrentUse() async throws {
        let keys = try (1...4).map { try PrivateKey.secp256k1(seed: UInt64(100 + $0)) }
        try await withThrowingTaskGroup(of: (verified: Int, forged: Int).self) { group in
            for (index, key) in keys.enumerated() {
                group.addTask {
                    var verified = 0
                    var forged = 0
                    for round in 0..<50 {
                        let message = Array("task \(index) round \(round)".utf8)
                        let signature = try key.sign(message)
                        let reparsed = try PublicKey(marshaled: key.publicKey.marshal())
                        if reparsed.verify(signature: signature, for: message) { verified += 1 }
                        if reparsed.verify(signature: signature, for: hello) { forged += 1 }
                    }
                    return (verified, forged)
                }
            }
            for try await counts in group {
                #expect(counts.verified == 50)
                #expect(counts.forged == 0)
            }
        }
    }

    @Test func missingLibraryIsATypedErrorSayingWhatToInstall() {
        let result = Secp256k1.Library.load(names: ["/nonexistent/libsecp256k1.so.9"])
        guard case .failure(let error) = result else {
            Issue.record("loading a nonexistent file succeeded")
            return
        }
        #expect(error == .libraryUnavailable)
        #expect(error.message.contains("libsecp256k1-dev"), "\(error)")
        #expect(error.message.contains("/nonexistent/libsecp256k1.so.9"), "\(error)")
        // A library without the functions (libc) is refused the same way.
        let notSecp = Secp256k1.Library.load(names: ["libc.so.6"])
        guard case .failure(let wrong) = notSecp else {
            Issue.record("libc was taken for libsecp256k1")
            return
        }
        #expect(wrong == .libraryUnavailable)
    }
}
