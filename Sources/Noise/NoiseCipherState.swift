import Crypto
import NIOCore

/// A Noise CipherState for ChaChaPoly: a key and a 64-bit message counter.
/// The AEAD nonce is 4 zero bytes followed by the counter in little-endian (Noise spec §5.1, ChaChaPoly).
public struct NoiseCipherState {
    /// ChaCha20-Poly1305 tag length.
    public static let tagLength = 16

    private var key: SymmetricKey?
    private(set) var nonce: UInt64 = 0

    init(key: SymmetricKey? = nil) {
        self.key = key
    }

    var hasKey: Bool { key != nil }

    private mutating func nextNonce() throws(NoiseError) -> ChaChaPoly.Nonce {
        // 2^64-1 is reserved by the Noise spec; libp2p never rekeys, so the connection must end.
        guard nonce < UInt64.max else { throw NoiseError(.nonceExhausted, "cipher nonce exhausted") }
        var bytes = [UInt8](repeating: 0, count: 12)
        var n = nonce.littleEndian
        withUnsafeBytes(of: &n) { bytes.replaceSubrange(4..<12, with: $0) }
        nonce += 1
        // 12 bytes is always a valid ChaChaPoly nonce.
        return try! ChaChaPoly.Nonce(data: bytes)
    }

    /// Encrypts with associated data (handshake) or returns the plaintext when there is no key yet.
    mutating func encrypt(ad: [UInt8], plaintext: [UInt8]) throws(NoiseError) -> [UInt8] {
        guard let key else { return plaintext }
        let nonce = try nextNonce()
        do {
            let box = try ChaChaPoly.seal(plaintext, using: key, nonce: nonce, authenticating: ad)
            return Array(box.ciphertext) + Array(box.tag)
        } catch {
            throw NoiseError(.invalidFrame, "encryption failed: \(error)")
        }
    }

    mutating func decrypt(ad: [UInt8], ciphertext: [UInt8]) throws(NoiseError) -> [UInt8] {
        guard let key else { return ciphertext }
        guard ciphertext.count >= Self.tagLength else {
            throw NoiseError(.invalidFrame, "ciphertext shorter than the tag")
        }
        let nonce = try nextNonce()
        do {
            let split = ciphertext.count - Self.tagLength
            let box = try ChaChaPoly.SealedBox(
                nonce: nonce, ciphertext: ciphertext[..<split], tag: ciphertext[split...])
            return Array(try ChaChaPoly.open(box, using: key, authenticating: ad))
        } catch {
            throw NoiseError(.decryptionFailed, "handshake message failed authentication")
        }
    }

    /// Transport encryption (empty associated data) of `plaintext`, appended to `out` as ciphertext ‖ tag.
    public mutating func seal(_ plaintext: UnsafeRawBufferPointer, into out: inout ByteBuffer) throws(NoiseError) {
        guard let key else { preconditionFailure("transport cipher without a key") }
        let nonce = try nextNonce()
        do {
            let box = try ChaChaPoly.seal(plaintext, using: key, nonce: nonce)
            out.writeBytes(box.ciphertext)
            out.writeBytes(box.tag)
        } catch {
            throw NoiseError(.invalidFrame, "encryption failed: \(error)")
        }
    }

    /// Transport decryption of one message (ciphertext ‖ tag), appending the plaintext to `out`.
    public mutating func open(_ message: UnsafeRawBufferPointer, into out: inout ByteBuffer) throws(NoiseError) {
        guard let key else { preconditionFailure("transport cipher without a key") }
        guard message.count >= Self.tagLength else {
            throw NoiseError(.invalidFrame, "transport message of \(message.count) bytes is shorter than the tag")
        }
        let nonce = try nextNonce()
        do {
            let split = message.count - Self.tagLength
            let box = try ChaChaPoly.SealedBox(
                nonce: nonce,
                ciphertext: UnsafeRawBufferPointer(rebasing: message[..<split]),
                tag: UnsafeRawBufferPointer(rebasing: message[split...]))
            out.writeBytes(try ChaChaPoly.open(box, using: key))
        } catch {
            throw NoiseError(.decryptionFailed, "transport message failed authentication")
        }
    }
}
