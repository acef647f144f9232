import Basics
import Security

/// Why a Noise handshake or transport message failed.
public struct NoiseError: SecurityError, Hashable {
    /// The kinds of failure.
    public enum Code: String, ErrorCode {
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

    /// What kind of failure.
    public var code: Code
    /// What went wrong at this layer.
    public var message: String
    /// The lower-level failure behind this one, if any.
    public var cause: (any Error)?

    /// An error of kind `code`, with the lower-level `cause`, if any.
    public init(_ code: Code, _ message: String, cause: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.cause = cause
    }

    /// Equal when code and message are (the cause is not compared).
    public static func == (lhs: Self, rhs: Self) -> Bool { lhs.code == rhs.code && lhs.message == rhs.message }
    /// Hashes code and message, consistent with `==`.
    public func hash(into hasher: inout Hasher) {
        hasher.combine(code)
        hasher.combine(message)
    }
}
