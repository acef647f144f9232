import Basics
import Identity
import NIOCore

/// Which side of a security handshake we are.
public enum SecurityRole: Sendable, Equatable {
    /// We opened the connection; `expectedRemotePeer` (when known, from the dialed `/p2p/…`
    /// address) must be who answers, or the handshake fails.
    case initiator(expectedRemotePeer: PeerID?)
    /// The remote opened the connection: any authenticated peer is accepted.
    case responder

    /// Whether we opened the connection.
    public var isInitiator: Bool {
        if case .initiator = self { true } else { false }
    }

    /// The peer the initiator dialed, if it named one.
    public var expectedRemotePeer: PeerID? {
        if case .initiator(let peer) = self { peer } else { nil }
    }
}

/// What a finished security handshake established.
public struct SecuredConnection: Sendable {
    /// The authenticated remote peer.
    public var remotePeer: PeerID
    /// The remote's identity key (its `PeerID` is derived from it).
    public var remotePublicKey: PublicKey
    /// The stream muxer both sides agreed on during the handshake (TLS ALPN, as the libp2p TLS
    /// spec allows), if they did: the upgrader then skips its own muxer negotiation.
    public var muxer: String?

    /// A handshake result.
    public init(remotePeer: PeerID, remotePublicKey: PublicKey, muxer: String? = nil) {
        self.remotePeer = remotePeer
        self.remotePublicKey = remotePublicKey
        self.muxer = muxer
    }
}

/// A libp2p security protocol (Noise, TLS 1.3): turns a raw byte channel into an authenticated,
/// encrypted one. The upgrader negotiates one of the host's configured security protocols with
/// multistream-select, then hands the channel to it.
///
/// Adding a security protocol means conforming to this and registering it in the host's
/// configuration; nothing else in the host changes.
public protocol SecurityProtocol: Sendable {
    /// The multistream-select protocol ID, e.g. "/noise" or "/tls/1.0.0".
    var protocolID: String { get }

    /// Adds this protocol's handler(s) to `channel`'s pipeline at `position` and starts the
    /// handshake. Called on the channel's event loop.
    ///
    /// The future succeeds once the remote is authenticated (and, for an initiator, is the
    /// expected peer). From then on the handlers after this protocol's read and write plaintext
    /// `ByteBuffer`s; bytes that arrived right behind the handshake are not lost. On failure the
    /// future fails with a typed error and the caller closes the channel.
    ///
    /// - Parameter muxers: the muxer protocol IDs we support, in order of preference, for
    ///   protocols that can agree on one during the handshake (`SecuredConnection.muxer`).
    func secure(
        channel: any Channel, position: ChannelPipeline.SynchronousOperations.Position, role: SecurityRole,
        muxers: [String]
    ) throws -> EventLoopFuture<SecuredConnection>
}

/// The errors of a security protocol's handshake conform (``NoiseError``, `TLSError`), so the
/// host can tell a failed authentication from a failed negotiation or a closed socket.
public protocol SecurityError: CodedError {}
