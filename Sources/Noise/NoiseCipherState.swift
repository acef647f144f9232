import CNoiseAEAD
import Crypto
import NIOCore

/// A Noise CipherState for ChaChaPoly: a key and a 64-bit message counter.
/// The AEAD nonce is 4 zero bytes followed by the counter in little-endian (Noise spec §5.1, ChaChaPoly).
public struct NoiseCipherState {
    /// ChaCha20-Poly1305 tag length.
    public static let tagLength = 16

    private var key: ChaChaPolyKey?
    private(set) var nonce: UInt64 = 0

    init(key: SymmetricKey? = nil) {
        self.key = key.map(ChaChaPolyKey.init)
    }

    var hasKey: Bool { key != nil }

    private mutating func nextNonce() throws(NoiseError) -> UInt64 {
        // 2^64-1 is reserved by the Noise spec; libp2p never rekeys, so the connection must end.
        guard nonce < UInt64.max else { throw NoiseError(.nonceExhausted, "cipher nonce exhausted") }
        defer { nonce += 1 }
        return nonce
    }

    /// Encrypts with associated data (handshake) or returns the plaintext when there is no key yet.
    mutating func encrypt(ad: [UInt8], plaintext: [UInt8]) throws(NoiseError) -> [UInt8] {
        guard let key else { return plaintext }
        let nonce = try nextNonce()
        var sealed = [UInt8](repeating: 0, count: plaintext.count + Self.tagLength)
        let ok = plaintext.withUnsafeBytes { input in
            ad.withUnsafeBytes { ad in
                sealed.withUnsafeMutableBytes { key.seal(input, ad: ad, nonce: nonce, into: $0) }
            }
        }
        guard ok else { throw NoiseError(.invalidFrame, "encryption failed") }
        return sealed
    }

    mutating func decrypt(ad: [UInt8], ciphertext: [UInt8]) throws(NoiseError) -> [UInt8] {
        guard let key else { return ciphertext }
        guard ciphertext.count >= Self.tagLength else {
            throw NoiseError(.invalidFrame, "ciphertext shorter than the tag")
        }
        let nonce = try nextNonce()
        var opened = [UInt8](repeating: 0, count: ciphertext.count - Self.tagLength)
        let ok = ciphertext.withUnsafeBytes { input in
            ad.withUnsafeBytes { ad in
                opened.withUnsafeMutableBytes { key.open(input, ad: ad, nonce: nonce, into: $0) }
            }
        }
        guard ok else { throw NoiseError(.decryptionFailed, "handshake message failed authentication") }
        return opened
    }

    /// Transport encryption (empty associated data) of `plaintext`, appended to `out` as ciphertext ‖ tag.
    public mutating func seal(_ plaintext: UnsafeRawBufferPointer, into out: inout ByteBuffer) throws(NoiseError) {
        guard let key else { preconditionFailure("transport cipher without a key") }
        let nonce = try nextNonce()
        let total = plaintext.count + Self.tagLength
        let written = out.writeWithUnsafeMutableBytes(minimumWritableBytes: total) { free in
            key.seal(plaintext, ad: UnsafeRawBufferPointer(start: nil, count: 0), nonce: nonce,
                     into: UnsafeMutableRawBufferPointer(rebasing: free[..<total])) ? total : 0
        }
        guard written == total else { throw NoiseError(.invalidFrame, "encryption failed") }
    }

    /// Transport decryption of one message (ciphertext ‖ tag), appending the plaintext to `out`.
    public mutating func open(_ message: UnsafeRawBufferPointer, into out: inout ByteBuffer) throws(NoiseError) {
        guard let key else { preconditionFailure("transport cipher without a key") }
        guard message.count >= Self.tagLength else {
            throw NoiseError(.invalidFrame, "transport message of \(message.count) bytes is shorter than the tag")
        }
        let nonce = try nextNonce()
        let length = message.count - Self.tagLength
        // Nothing is appended unless the tag is valid: the bytes written are only kept on success.
        var authentic = false
        out.writeWithUnsafeMutableBytes(minimumWritableBytes: length) { free in
            authentic = key.open(message, ad: UnsafeRawBufferPointer(start: nil, count: 0), nonce: nonce,
                                 into: UnsafeMutableRawBufferPointer(rebasing: free[..<length]))
            return authentic ? length : 0
        }
        guard authentic else {
            throw NoiseError(.decryptionFailed, "transport message failed authentication")
        }
    }
}

/// A ChaCha20-Poly1305 key that seals into and opens from caller-owned memory.
///
/// On Linux it uses BoringSSL's AEAD through `CNoiseAEAD`, with no allocation per message;
/// swift-crypto's `ChaChaPoly` (the fallback elsewhere) allocates a `Data` per call, which for
/// 64 KiB messages cost more than the cipher (fresh pages from malloc each time).
final class ChaChaPolyKey: @unchecked Sendable {
    // Immutable after init; BoringSSL's AEAD context may be used from several threads at once.
    private let context: UnsafeMutableRawPointer?
    private let fallback: SymmetricKey

    init(_ key: SymmetricKey) {
        precondition(key.bitCount == 256, "ChaChaPoly keys are 32 bytes")
        fallback = key
        context = key.withUnsafeBytes { raw in
            pointsub_chachapoly_new(raw.bindMemory(to: UInt8.self).baseAddress!)
        }
    }

    deinit { pointsub_chachapoly_free(context) }

    /// Runs `body` with the 12-byte nonce for `counter`: 4 zero bytes, then the counter little-endian.
    private static func withNonce<R>(_ counter: UInt64, _ body: (UnsafePointer<UInt8>) -> R) -> R {
        var words: (UInt32, UInt32, UInt32) = (
            0, UInt32(truncatingIfNeeded: counter).littleEndian, UInt32(truncatingIfNeeded: counter >> 32).littleEndian
        )
        return withUnsafeBytes(of: &words) { body($0.bindMemory(to: UInt8.self).baseAddress!) }
    }

    /// Seals `plaintext` into `output` (plaintext.count + 16 bytes: ciphertext ‖ tag).
    func seal(_ plaintext: UnsafeRawBufferPointer, ad: UnsafeRawBufferPointer, nonce counter: UInt64,
              into output: UnsafeMutableRawBufferPointer) -> Bool {
        precondition(output.count == plaintext.count + NoiseCipherState.tagLength)
        if let context {
            return Self.withNonce(counter) { nonce in
                pointsub_chachapoly_seal(
                    context, nonce, plaintext.bindMemory(to: UInt8.self).baseAddress, plaintext.count,
                    output.bindMemory(to: UInt8.self).baseAddress, output.baseAddress!.assumingMemoryBound(to: UInt8.self) + plaintext.count,
                    ad.bindMemory(to: UInt8.self).baseAddress, ad.count) == 1
            }
        }
        guard let box = try? ChaChaPoly.seal(plaintext, using: fallback, nonce: Self.swiftNonce(counter), authenticating: ad)
        else { return false }
        box.ciphertext.copyBytes(to: output)
        box.tag.copyBytes(to: UnsafeMutableRawBufferPointer(rebasing: output[plaintext.count...]))
        return true
    }

    /// Opens `message` (ciphertext ‖ tag) into `output` (message.count − 16 bytes); false if the tag
    /// does not authenticate it.
    func open(_ message: UnsafeRawBufferPointer, ad: UnsafeRawBufferPointer, nonce counter: UInt64,
              into output: UnsafeMutableRawBufferPointer) -> Bool {
        let length = message.count - NoiseCipherState.tagLength
        precondition(length >= 0 && output.count == length)
        if let context {
            return Self.withNonce(counter) { nonce in
                pointsub_chachapoly_open(
                    context, nonce, message.bindMemory(to: UInt8.self).baseAddress, length,
                    message.baseAddress!.assumingMemoryBound(to: UInt8.self) + length,
                    output.bindMemory(to: UInt8.self).baseAddress,
                    ad.bindMemory(to: UInt8.self).baseAddress, ad.count) == 1
            }
        }
        guard let box = try? ChaChaPoly.SealedBox(
                nonce: Self.swiftNonce(counter),
                ciphertext: UnsafeRawBufferPointer(rebasing: message[..<length]),
                tag: UnsafeRawBufferPointer(rebasing: message[length...])),
            let plaintext = try? ChaChaPoly.open(box, using: fallback, authenticating: ad)
        else { return false }
        plaintext.copyBytes(to: output)
        return true
    }

    private static func swiftNonce(_ counter: UInt64) -> ChaChaPoly.Nonce {
        // 12 bytes is always a valid ChaChaPoly nonce.
        withNonce(counter) { try! ChaChaPoly.Nonce(data: UnsafeBufferPointer(start: $0, count: 12)) }
    }
}
