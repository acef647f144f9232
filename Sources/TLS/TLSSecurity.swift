import Crypto
import Foundation
import Identity
import NIOConcurrencyHelpers
import NIOCore
import NIOSSL
import NIOTLS
import Security

/// libp2p's TLS 1.3 security protocol, `/tls/1.0.0` (libp2p TLS spec).
///
/// Each side presents one self-signed certificate carrying its identity key in the libp2p
/// extension (`LibP2PCertificate`); both sides authenticate (the server requires the client's
/// certificate), only TLS 1.3 is negotiated, and an initiator checks that the peer is the one it
/// dialed. ALPN offers the muxers given to `secure` and then `"libp2p"`: when both sides list a
/// muxer, it is agreed in the handshake and reported in `SecuredConnection.muxer` (the spec's
/// inlined muxer negotiation); `"libp2p"` means the muxer is negotiated afterwards as usual.
///
/// The certificate is made once per instance (the spec allows reuse) and is valid for a long time.
public struct TLSSecurity: SecurityProtocol {
    /// `/tls/1.0.0`.
    public static let protocolID = "/tls/1.0.0"
    /// The ALPN protocol every libp2p TLS endpoint offers last.
    public static let alpnProtocol = "libp2p"

    /// `/tls/1.0.0`.
    public var protocolID: String { Self.protocolID }

    /// The local identity.
    public let identity: PrivateKey
    /// The certificate presented to peers.
    public let certificate: LibP2PCertificate
    private let sslCertificate: NIOSSLCertificate
    private let sslKey: NIOSSLPrivateKey
    /// BoringSSL contexts, made once per (side, muxer list): a host passes the same muxers to
    /// every handshake, so this holds two.
    private let contexts = NIOLockedValueBox<[ContextKey: NIOSSLContext]>([:])

    private struct ContextKey: Hashable {
        var isServer: Bool
        var muxers: [String]
    }

    /// Makes a fresh certificate for `identity`.
    public init(identity: PrivateKey) throws(TLSError) {
        try self.init(identity: identity, certificate: LibP2PCertificate.generate(identity: identity))
    }

    /// Uses `certificate` (tests pass deliberately broken ones to exercise the peer's checks).
    public init(identity: PrivateKey, certificate: LibP2PCertificate) throws(TLSError) {
        self.identity = identity
        self.certificate = certificate
        do {
            sslCertificate = try NIOSSLCertificate(bytes: certificate.der, format: .der)
            sslKey = try NIOSSLPrivateKey(bytes: Array(certificate.certificateKey.derRepresentation), format: .der)
        } catch {
            throw TLSError(.localSetupFailed, "BoringSSL refused our certificate or key", cause: error)
        }
    }

    /// The BoringSSL configuration for one side: TLS 1.3 only; our certificate; the peer's
    /// certificate required and checked by our callback alone (it is self-signed, so BoringSSL's
    /// chain building has nothing to do, and no system trust roots are loaded); ALPN as described
    /// on the type; no renegotiation (TLS 1.3 has none).
    func configuration(isServer: Bool, muxers: [String]) -> TLSConfiguration {
        var configuration = isServer
            ? TLSConfiguration.makeServerConfiguration(
                certificateChain: [.certificate(sslCertificate)], privateKey: .privateKey(sslKey))
            : TLSConfiguration.makeClientConfiguration()
        configuration.certificateChain = [.certificate(sslCertificate)]
        configuration.privateKey = .privateKey(sslKey)
        configuration.minimumTLSVersion = .tlsv13
        // Servers require the client's certificate with this mode (SSL_VERIFY_FAIL_IF_NO_PEER_CERT).
        configuration.certificateVerification = .noHostnameVerification
        configuration.trustRoots = .certificates([])
        configuration.applicationProtocols = muxers + [Self.alpnProtocol]
        configuration.renegotiationSupport = .none
        return configuration
    }

    /// The BoringSSL context for one side and muxer list, made on first use. (Only our own
    /// configuration picks the key, so the cache stays small; it is reset past 8 entries anyway.)
    func context(isServer: Bool, muxers: [String]) throws(TLSError) -> NIOSSLContext {
        let key = ContextKey(isServer: isServer, muxers: muxers)
        if let context = contexts.withLockedValue({ $0[key] }) { return context }
        let context: NIOSSLContext
        do {
            context = try NIOSSLContext(configuration: configuration(isServer: isServer, muxers: muxers))
        } catch {
            throw TLSError(.localSetupFailed, "could not make the TLS context", cause: error)
        }
        contexts.withLockedValue {
            if $0.count >= 8 { $0.removeAll() }
            $0[key] = context
        }
        return context
    }

    /// Adds the TLS handler (and a small one after it that reports the handshake's outcome) at
    /// `position` and starts the handshake. See `SecurityProtocol.secure`.
    public func secure(
        channel: any Channel, position: ChannelPipeline.SynchronousOperations.Position, role: SecurityRole,
        muxers: [String]
    ) throws -> EventLoopFuture<SecuredConnection> {
        let context = try self.context(isServer: !role.isInitiator, muxers: muxers)
        let state = TLSHandshakeState()
        let expected = role.expectedRemotePeer
        // Runs on the event loop during the handshake; a refusal makes BoringSSL send an alert and
        // fail the handshake, and the typed reason is kept for the outcome handler.
        let verify: NIOSSLCustomVerificationCallback = { certificates, promise in
            do {
                let chain = try certificates.map { try $0.toDERBytes() }
                state.verified = try LibP2PCertificate.verify(chain: chain, expectedPeer: expected)
                promise.succeed(.certificateVerified)
            } catch let error as TLSError {
                state.error = error
                promise.succeed(.failed)
            } catch {
                state.error = TLSError(.malformedCertificate, "certificate could not be read", cause: error)
                promise.succeed(.failed)
            }
        }
        let tls: NIOSSLHandler
        if role.isInitiator {
            // No SNI: the spec forbids a value in it for this version of the handshake.
            tls = try NIOSSLClientHandler(context: context, serverHostname: nil, customVerificationCallback: verify)
        } else {
            tls = NIOSSLServerHandler(context: context, customVerificationCallback: verify)
        }
        let promise = channel.eventLoop.makePromise(of: SecuredConnection.self)
        let outcome = TLSHandshakeOutcomeHandler(state: state, promise: promise, muxers: muxers)
        try channel.pipeline.syncOperations.addHandler(tls, position: position)
        try channel.pipeline.syncOperations.addHandler(outcome, position: .after(tls))
        return promise.futureResult
    }
}

/// What the verification callback learnt, read by the outcome handler. Only touched on the
/// channel's event loop.
final class TLSHandshakeState {
    var verified: VerifiedPeer?
    var error: TLSError?
}

/// Sits right after the TLS handler until the handshake ends: completes the promise with the
/// authenticated peer (and the ALPN-agreed muxer), or fails it with a typed `TLSError` and closes
/// the channel; then removes itself, so plaintext flows straight to the handlers the caller adds.
final class TLSHandshakeOutcomeHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private let state: TLSHandshakeState
    private let promise: EventLoopPromise<SecuredConnection>
    private let muxers: [String]
    private var done = false

    init(state: TLSHandshakeState, promise: EventLoopPromise<SecuredConnection>, muxers: [String]) {
        self.state = state
        self.promise = promise
        self.muxers = muxers
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard !done, let event = event as? TLSUserEvent, case .handshakeCompleted(let alpn) = event else {
            context.fireUserInboundEventTriggered(event)
            return
        }
        done = true
        guard let peer = state.verified else {
            promise.fail(state.error ?? TLSError(.noCertificate, "the handshake ended without a verified certificate"))
            context.close(promise: nil)
            return
        }
        // "libp2p" (or no ALPN at all): the muxer is negotiated after the handshake.
        let muxer = alpn.flatMap { muxers.contains($0) ? $0 : nil }
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        promise.succeed(SecuredConnection(remotePeer: peer.peerID, remotePublicKey: peer.publicKey, muxer: muxer))
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard !done else {
            context.fireErrorCaught(error)
            return
        }
        done = true
        promise.fail(state.error ?? Self.classify(error))
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !done {
            done = true
            promise.fail(state.error ?? TLSError(.connectionClosed, "the connection closed during the TLS handshake"))
        }
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        if !done {
            done = true
            promise.fail(TLSError(.connectionClosed, "the TLS handler was removed before the handshake finished"))
        }
    }

    /// Names a BoringSSL failure by the reason it carries, when it is one the spec cares about.
    static func classify(_ error: any Error) -> TLSError {
        let text = String(describing: error)
        if text.contains("UNSUPPORTED_PROTOCOL") || text.contains("PROTOCOL_VERSION") {
            return TLSError(.unsupportedTLSVersion, "the peer does not speak TLS 1.3: \(text)")
        }
        if text.contains("PEER_DID_NOT_RETURN_A_CERTIFICATE") || text.contains("CERTIFICATE_REQUIRED") {
            return TLSError(.noCertificate, "the peer presented no certificate: \(text)")
        }
        if let error = error as? NIOSSLError, case .uncleanShutdown = error {
            return TLSError(.connectionClosed, "the connection closed during the TLS handshake")
        }
        return TLSError(.handshakeFailed, "TLS handshake failed: \(text)")
    }
}
