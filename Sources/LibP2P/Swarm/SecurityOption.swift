import Identity
import Noise
import Security
import TLS

/// A security protocol a host offers (``noise``, and TLS once registered), built for the host's
/// identity when the host is created. `P2PHost.Configuration.security` lists them in order of
/// preference: a dialer proposes them in that order, a listener accepts any of them.
public struct SecurityOption: Sendable, CustomStringConvertible {
    /// The multistream-select protocol ID ("/noise").
    public let protocolID: String
    private let make: @Sendable (PrivateKey) throws -> any SecurityProtocol

    /// A security protocol under `protocolID`, built by `make` for the host's identity.
    public init(protocolID: String, make: @escaping @Sendable (PrivateKey) throws -> any SecurityProtocol) {
        self.protocolID = protocolID
        self.make = make
    }

    /// libp2p Noise (`/noise`).
    public static let noise = SecurityOption(protocolID: NoiseSecurity.protocolID) { try NoiseSecurity(identity: $0) }

    /// libp2p TLS 1.3 (`/tls/1.0.0`), with a fresh certificate for the host's identity.
    public static let tls = SecurityOption(protocolID: TLSSecurity.protocolID) { try TLSSecurity(identity: $0) }

    /// The protocol ID.
    public var description: String { protocolID }

    func build(for identity: PrivateKey) throws -> any SecurityProtocol {
        try make(identity)
    }
}
