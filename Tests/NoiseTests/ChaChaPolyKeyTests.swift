import Crypto
import NIOCore
import Testing

@testable import Noise

/// `ChaChaPolyKey` seals and opens into caller memory (BoringSSL's AEAD directly on Linux); its
/// output must be exactly swift-crypto's `ChaChaPoly` for the same key, nonce and data.
@Suite struct ChaChaPolyKeyTests {
    static func nonce(_ counter: UInt64) -> ChaChaPoly.Nonce {
        var bytes = [UInt8](repeating: 0, count: 4)
        withUnsafeBytes(of: counter.littleEndian) { bytes.append(contentsOf: $0) }
        return try! ChaChaPoly.Nonce(data: bytes)
    }

    @Test(arguments: [0, 1, 15, 16, 63, 64, 1000, 65_519, 200_000])
    func sealMatchesSwiftCryptoAndOpens(length: Int) throws {
        var rng = SystemRandomNumberGenerator()
        let symmetric = SymmetricKey(size: .bits256)
        let key = ChaChaPolyKey(symmetric)
        let plaintext = (0..<length).map { _ in UInt8.random(in: 0...255, using: &rng) }
        let ad = length % 2 == 0 ? [] : Array("associated".utf8)
        for counter: UInt64 in [0, 1, 0x0102_0304_0506_0708, UInt64.max - 1] {
            var sealed = [UInt8](repeating: 0, count: length + 16)
            let ok = plaintext.withUnsafeBytes { p in
                ad.withUnsafeBytes { a in sealed.withUnsafeMutableBytes { key.seal(p, ad: a, nonce: counter, into: $0) } }
            }
            #expect(ok)
            let reference = try ChaChaPoly.seal(plaintext, using: symmetric, nonce: Self.nonce(counter), authenticating: ad)
            #expect(sealed == Array(reference.ciphertext) + Array(reference.tag))

            var opened = [UInt8](repeating: 0, count: length)
            let authentic = sealed.withUnsafeBytes { s in
                ad.withUnsafeBytes { a in opened.withUnsafeMutableBytes { key.open(s, ad: a, nonce: counter, into: $0) } }
            }
            #expect(authentic)
            #expect(opened == plaintext)
        }
    }

    @Test func tamperedCiphertextTagNonceOrADFailToOpen() {
        let key = ChaChaPolyKey(SymmetricKey(size: .bits256))
        let plaintext = Array("attack at dawn".utf8)
        var sealed = [UInt8](repeating: 0, count: plaintext.count + 16)
        _ = plaintext.withUnsafeBytes { p in sealed.withUnsafeMutableBytes { key.seal(p, ad: .init(start: nil, count: 0), nonce: 5, into: $0) } }
        func opens(_ message: [UInt8], nonce: UInt64, ad: [UInt8] = []) -> Bool {
            var out = [UInt8](repeating: 0, count: message.count - 16)
            return message.withUnsafeBytes { m in ad.withUnsafeBytes { a in out.withUnsafeMutableBytes { key.open(m, ad: a, nonce: nonce, into: $0) } } }
        }
        #expect(opens(sealed, nonce: 5))
        #expect(!opens(sealed, nonce: 6))
        #expect(!opens(sealed, nonce: 5, ad: [1]))
        for index in [0, plaintext.count - 1, plaintext.count, sealed.count - 1] {
            var bad = sealed
            bad[index] ^= 0x01
            #expect(!opens(bad, nonce: 5))
        }
    }

    @Test func transportOpenAppendsNothingWhenTheTagIsWrong() throws {
        var send = NoiseCipherState(key: SymmetricKey(data: [UInt8](repeating: 9, count: 32)))
        var receive = NoiseCipherState(key: SymmetricKey(data: [UInt8](repeating: 9, count: 32)))
        var sealed = ByteBuffer()
        try [UInt8](repeating: 7, count: 5000).withUnsafeBytes { try send.seal($0, into: &sealed) }
        var bytes = Array(buffer: sealed)
        bytes[bytes.count - 1] ^= 0x80
        var out = ByteBuffer(string: "kept")
        #expect(throws: NoiseError.self) { try bytes.withUnsafeBytes { try receive.open($0, into: &out) } }
        #expect(String(buffer: out) == "kept")
    }
}
