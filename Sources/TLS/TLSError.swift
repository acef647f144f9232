import Basics
import Security

/// Why a libp2p TLS handshake failed, or why a peer's certificate was refused (libp2p TLS spec).
public struct TLSError: SecurityError, Hashable {
    /// One code per rule of the spec's peer authentication, plus the transport failures.
    public enum Code: String, ErrorCode, CaseIterable {
        /// The peer presented no certificate (a server must require one from the client).
        case noCertificate
        /// The peer presented more than one certificate (the spec allows exactly one).
        case certificateChainTooLong
        /// The certificate is larger than `LibP2PCertificate.maxCertificateBytes`.
        case certificateTooLarge
        /// The certificate is not valid DER X.509.
        case malformedCertificate
        /// The certificate's validity period has not started yet.
        case certificateNotYetValid
        /// The certificate's validity period is over.
        case certificateExpired
        /// The certificate's self-signature does not verify with its own key.
        case invalidCertificateSignature
        /// The certificate lacks the libp2p public key extension (1.3.6.1.4.1.53594.1.1).
        case missingExtension
        /// The certificate holds a critical extension we do not understand.
        case unknownCriticalExtension
        /// The extension's value is not a DER `SignedKey` within the size limits.
        case malformedExtension
        /// The `SignedKey` public key is not a valid libp2p public key (or of an unsupported type).
        case invalidPublicKey
        /// The `SignedKey` signature over the certificate's key does not verify with the identity key.
        case invalidSignedKeySignature
        /// The remote authenticated as a peer other than the one we dialed.
        case peerIDMismatch
        /// The peer tried to negotiate a TLS version below 1.3.
        case unsupportedTLSVersion
        /// The TLS handshake failed (alert, garbage, or a peer that rejected us).
        case handshakeFailed
        /// The connection closed before the handshake finished.
        case connectionClosed
        /// Building our own certificate or TLS context failed.
        case localSetupFailed
    }

    /// What kind of failure.
    public var code: Code
    /// What went wrong at this layer.
    public var message: String
    /// What BoringSSL, swift-certificates or the identity layer reported, if anything.
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
