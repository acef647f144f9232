import Security

/// Why a Noise handshake or transport message failed.
public struct NoiseError: SecurityError, Sendable, Hashable, CustomStringConvertible {
    public enum Code: Sendable, Hashable {
        /// A handshake message has the wrong length or arrived out of order.
        case malformedHandshakeMessage
        /// AEAD authentication failed: the peer does not hold the keys, or bytes were tampered with.
        case decryptionFailed
        /// The libp2p handshake payload is not a valid protobuf or lacks the identity key / signature.
        case invalidPayload
        /// The identity key's signature over the Noise static key does not verify.
        case invalidSignature
        /// The remote authenticated as a peer other than the one we dialed.
        case peerIDMismatch
        /// A frame is shorter than the AEAD tag, or a key or message is otherwise unusable.
        case invalidFrame
        /// A cipher's 64-bit nonce ran out (the spec forbids wrapping).
        case nonceExhausted
        /// The connection closed before the handshake finished.
        case connectionClosed
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "noise: \(message)" }
}
