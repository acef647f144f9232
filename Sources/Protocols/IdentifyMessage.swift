import Identity
import LibP2P
import Multiformats

/// The identify protobuf (libp2p identify spec):
///
///     message Identify {
///       optional bytes publicKey = 1;        repeated bytes listenAddrs = 2;
///       repeated string protocols = 3;       optional bytes observedAddr = 4;
///       optional string protocolVersion = 5; optional string agentVersion = 6;
///       optional bytes signedPeerRecord = 8;
///     }
///
/// `signedPeerRecord` holds the envelope bytes as sent (RFC 0002/0003); they are verified where the
/// sender is known (`IdentifyService`, through `P2PHost.consumeSignedPeerRecord`), not here.
public struct IdentifyMessage: Sendable, Equatable {
    public var publicKey: PublicKey?
    public var listenAddresses: [Multiaddr] = []
    public var protocols: [String] = []
    public var observedAddress: Multiaddr?
    public var protocolVersion: String?
    public var agentVersion: String?
    /// Field 8: the sender's signed peer record (a marshalled `SignedEnvelope`), unverified.
    public var signedPeerRecord: [UInt8]?

    public init() {}

    public func encoded() -> [UInt8] {
        var w = ProtobufWriter()
        if let protocolVersion { w.writeStringField(5, protocolVersion) }
        if let agentVersion { w.writeStringField(6, agentVersion) }
        if let publicKey { w.writeBytesField(1, publicKey.marshal()) }
        for address in listenAddresses { w.writeBytesField(2, address.bytes) }
        if let observedAddress { w.writeBytesField(4, observedAddress.bytes) }
        for proto in protocols { w.writeStringField(3, proto) }
        if let signedPeerRecord { w.writeBytesField(8, signedPeerRecord) }
        return w.bytes
    }

    /// Decodes leniently where peers differ (an unparsable address is skipped, unknown fields are
    /// ignored) and strictly where it matters (a malformed protobuf or public key throws).
    public init(decoding bytes: [UInt8]) throws {
        var reader = ProtobufReader(bytes)
        while let (field, value) = try reader.next() {
            guard case .bytes(let data) = value else { continue }
            switch field {
            case 1: publicKey = try PublicKey(marshaled: data)
            case 2: if let a = try? Multiaddr(bytes: data) { listenAddresses.append(a) }
            case 3: protocols.append(String(decoding: data, as: UTF8.self))
            case 4: observedAddress = try? Multiaddr(bytes: data)
            case 5: protocolVersion = String(decoding: data, as: UTF8.self)
            case 6: agentVersion = String(decoding: data, as: UTF8.self)
            // go-libp2p treats an empty field as absent; so do we.
            case 8: signedPeerRecord = data.isEmpty ? nil : data
            default: continue
            }
        }
    }
}
