import Identity
import NIOCore
import Security

/// libp2p Noise (`/noise`, XX with X25519, ChaCha20-Poly1305 and SHA-256) as a ``SecurityProtocol``.
public struct NoiseSecurity: SecurityProtocol {
    /// The multistream-select protocol ID of libp2p Noise.
    public static let protocolID = "/noise"

    /// "/noise".
    public var protocolID: String { Self.protocolID }
    private let local: NoiseLocalIdentity

    /// Noise for `identity`: a fresh static X25519 key, signed once with the identity key.
    public init(identity: PrivateKey) throws {
        self.local = try NoiseLocalIdentity(identity: identity)
    }

    /// Adds a ``NoiseHandler`` at `position` and runs the XX handshake. Noise agrees on no muxer
    /// here (the spec's early muxer negotiation in the handshake's extensions is not used: go,
    /// rust and py-libp2p all fall back to multistream-select for the muxer without it).
    public func secure(
        channel: any Channel, position: ChannelPipeline.SynchronousOperations.Position, role: SecurityRole,
        muxers: [String]
    ) throws -> EventLoopFuture<SecuredConnection> {
        let promise = channel.eventLoop.makePromise(of: NoiseHandshakeResult.self)
        let handshake = NoiseLibp2pHandshake(
            role: role.isInitiator ? .initiator : .responder, local: local,
            expectedRemotePeer: role.expectedRemotePeer)
        try channel.pipeline.syncOperations.addHandler(NoiseHandler(handshake: handshake, promise: promise), position: position)
        return promise.futureResult.map { SecuredConnection(remotePeer: $0.remotePeer, remotePublicKey: $0.remotePublicKey) }
    }
}
