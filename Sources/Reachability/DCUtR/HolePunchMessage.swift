import Basics
import Multiformats

/// A DCUtR message (`/libp2p/dcutr`, relay/DCUtR spec): `HolePunch { type 1, ObsAddrs 2 }`, each
/// `uvarint(length) ‖ protobuf`, at most 4 KiB.
public struct HolePunchMessage: Sendable, Hashable {
    /// The message's type.
    public enum Kind: UInt64, Sendable, Hashable {
        /// Our addresses; answered with the other side's.
        case connect = 100
        /// Dial now (sent by the side that measured the round trip).
        case sync = 300
    }

    /// The protocol ID.
    public static let protocolID = "/libp2p/dcutr"
    /// Largest message accepted or sent (the spec's 4 KiB).
    public static let maxMessageSize = 4096
    /// Most addresses kept from a message.
    public static let maxAddresses = 16

    /// The message's type.
    public var type: Kind
    /// The sender's observed (and predicted) addresses; unparsable ones are dropped.
    public var addresses: [Multiaddr]

    /// A message.
    public init(type: Kind, addresses: [Multiaddr] = []) {
        self.type = type
        self.addresses = addresses
    }

    /// The protobuf bytes (without the length prefix).
    public func encoded() -> [UInt8] {
        var w = ProtobufWriter()
        w.writeVarintField(1, type.rawValue)
        for address in addresses { w.writeBytesField(2, address.bytes) }
        return w.bytes
    }

    /// Parses a message of at most `maxMessageSize` bytes; unknown fields are skipped.
    public init(decoding bytes: some Collection<UInt8>) throws(HolePunchError) {
        guard bytes.count <= Self.maxMessageSize else {
            throw HolePunchError(.limitExceeded, "DCUtR message of \(bytes.count) bytes (limit \(Self.maxMessageSize))")
        }
        var type: Kind?
        var addresses: [Multiaddr] = []
        try ProtobufReader.forEachField(
            in: bytes, malformed: { HolePunchError(.malformedMessage, "DCUtR message is not valid protobuf", cause: $0) }
        ) { (field, value) throws(HolePunchError) in
            switch field {
            case 1:
                guard let raw = value.varintValue, let kind = Kind(rawValue: raw) else {
                    throw HolePunchError(.malformedMessage, "unknown DCUtR message type")
                }
                type = kind
            case 2:
                guard let raw = value.bytesValue else {
                    throw HolePunchError(.malformedMessage, "DCUtR address is not length-delimited")
                }
                if addresses.count < Self.maxAddresses, let address = try? Multiaddr(bytes: raw) { addresses.append(address) }
            default:
                break
            }
        }
        guard let type else { throw HolePunchError(.malformedMessage, "DCUtR message without a type") }
        self.init(type: type, addresses: addresses)
    }
}

/// Every error of DCUtR hole punching.
public struct HolePunchError: CodedError {
    /// The kind of failure.
    public enum Code: String, ErrorCode {
        /// A message that is not valid protobuf or has an unknown or unexpected type.
        case malformedMessage
        /// A message over its size limit.
        case limitExceeded
        /// The other side gave no address we could dial.
        case noAddresses
        /// Every attempt's dials failed.
        case dialsFailed
    }

    /// The kind of failure.
    public var code: Code
    /// What went wrong.
    public var message: String
    /// The lower-level error, if any.
    public var cause: (any Error)?

    /// An error of kind `code`.
    public init(_ code: Code, _ message: String, cause: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.cause = cause
    }
}
