import Basics
import Multiformats

/// Every error of AutoNAT: malformed messages, refusals, limits.
public struct AutoNATError: CodedError {
    /// The kind of failure.
    public enum Code: String, ErrorCode {
        /// A message that is not valid protobuf, misses a required part or has an unknown type.
        case malformedMessage
        /// A message over its size limit (checked before buffering).
        case limitExceeded
        /// The server answered with a status other than `OK`; `status` says which.
        case refused
        /// No AutoNAT server to ask.
        case noServer
    }

    /// The kind of failure.
    public var code: Code
    /// What went wrong.
    public var message: String
    /// The status the server answered with, for `.refused`.
    public var status: AutoNATMessage.Status?
    /// The lower-level error, if any.
    public var cause: (any Error)?

    /// An error of kind `code`.
    public init(_ code: Code, _ message: String, status: AutoNATMessage.Status? = nil, cause: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.status = status
        self.cause = cause
    }
}

/// An AutoNAT v1 message (`/libp2p/autonat/1.0.0`, autonat-v1 spec): `Message { type 1, dial 2,
/// dialResponse 3 }`, `Dial { peer 1 }`, `PeerInfo { id 1, addrs 2 }`, `DialResponse { status 1,
/// statusText 2, addr 3 }`. On a stream each message is `uvarint(length) ‖ protobuf`.
public struct AutoNATMessage: Sendable, Hashable {
    /// The message's type.
    public enum Kind: UInt64, Sendable, Hashable {
        /// The client asks the server to dial it back.
        case dial = 0
        /// The server's answer.
        case dialResponse = 1
    }

    /// The outcome of a dial-back.
    public enum Status: UInt64, Sendable, Hashable {
        /// An address was dialed successfully.
        case ok = 0
        /// Every dial failed.
        case dialError = 100
        /// The server would not dial (rate limit, no acceptable address, relayed connection).
        case dialRefused = 101
        /// The request was malformed.
        case badRequest = 200
        /// The server failed.
        case internalError = 300
    }

    /// The request: the peer to dial back and its addresses.
    public struct Dial: Sendable, Hashable {
        /// The requester's peer ID bytes.
        public var peerID: [UInt8]?
        /// The addresses it asks to be dialed on (unparsable ones dropped).
        public var addresses: [Multiaddr]

        /// A request.
        public init(peerID: [UInt8]?, addresses: [Multiaddr]) {
            self.peerID = peerID
            self.addresses = addresses
        }
    }

    /// The answer.
    public struct DialResponse: Sendable, Hashable {
        /// The outcome.
        public var status: Status
        /// Why, for people.
        public var statusText: String?
        /// The address that was dialed successfully.
        public var address: Multiaddr?

        /// An answer.
        public init(status: Status, statusText: String? = nil, address: Multiaddr? = nil) {
            self.status = status
            self.statusText = statusText
            self.address = address
        }
    }

    /// The protocol ID.
    public static let protocolID = "/libp2p/autonat/1.0.0"
    /// Largest message accepted or sent (go-libp2p's limit).
    public static let maxMessageSize = 4096
    /// Most addresses kept from a request (go-libp2p dials at most 16).
    public static let maxAddresses = 16

    /// The message's type.
    public var type: Kind
    /// The request of a `DIAL`.
    public var dial: Dial?
    /// The answer of a `DIAL_RESPONSE`.
    public var dialResponse: DialResponse?

    /// A message.
    public init(type: Kind, dial: Dial? = nil, dialResponse: DialResponse? = nil) {
        self.type = type
        self.dial = dial
        self.dialResponse = dialResponse
    }

    /// The protobuf bytes (without the length prefix).
    public func encoded() -> [UInt8] {
        var w = ProtobufWriter()
        w.writeVarintField(1, type.rawValue)
        if let dial {
            var peer = ProtobufWriter()
            if let id = dial.peerID { peer.writeBytesField(1, id) }
            for address in dial.addresses { peer.writeBytesField(2, address.bytes) }
            var d = ProtobufWriter()
            d.writeBytesField(1, peer.bytes)
            w.writeBytesField(2, d.bytes)
        }
        if let response = dialResponse {
            var r = ProtobufWriter()
            r.writeVarintField(1, response.status.rawValue)
            if let text = response.statusText { r.writeStringField(2, text) }
            if let address = response.address { r.writeBytesField(3, address.bytes) }
            w.writeBytesField(3, r.bytes)
        }
        return w.bytes
    }

    /// Parses a message of at most `maxMessageSize` bytes; unknown fields are skipped.
    public init(decoding bytes: some Collection<UInt8>) throws(AutoNATError) {
        guard bytes.count <= Self.maxMessageSize else {
            throw AutoNATError(.limitExceeded, "AutoNAT message of \(bytes.count) bytes (limit \(Self.maxMessageSize))")
        }
        var type: Kind?
        var dial: Dial?
        var response: DialResponse?
        try AutoNATWire.fields(bytes, "AutoNAT message") { (field, value) throws(AutoNATError) in
            switch field {
            case 1:
                guard let raw = value.varintValue, let kind = Kind(rawValue: raw) else {
                    throw AutoNATError(.malformedMessage, "unknown AutoNAT message type")
                }
                type = kind
            case 2: dial = try Self.decodeDial(try AutoNATWire.bytes(value, "dial"))
            case 3: response = try Self.decodeResponse(try AutoNATWire.bytes(value, "dial response"))
            default: break
            }
        }
        guard let type else { throw AutoNATError(.malformedMessage, "AutoNAT message without a type") }
        self.init(type: type, dial: dial, dialResponse: response)
    }

    private static func decodeDial(_ bytes: [UInt8]) throws(AutoNATError) -> Dial {
        var dial = Dial(peerID: nil, addresses: [])
        try AutoNATWire.fields(bytes, "AutoNAT dial") { (field, value) throws(AutoNATError) in
            guard field == 1 else { return }
            try AutoNATWire.fields(try AutoNATWire.bytes(value, "peer info"), "AutoNAT peer info") { (field, value) throws(AutoNATError) in
                switch field {
                case 1: dial.peerID = try AutoNATWire.bytes(value, "peer id")
                case 2:
                    let raw = try AutoNATWire.bytes(value, "address")
                    if dial.addresses.count < maxAddresses, let address = try? Multiaddr(bytes: raw) {
                        dial.addresses.append(address)
                    }
                default: break
                }
            }
        }
        return dial
    }

    private static func decodeResponse(_ bytes: [UInt8]) throws(AutoNATError) -> DialResponse {
        var status: Status?
        var text: String?
        var address: Multiaddr?
        try AutoNATWire.fields(bytes, "AutoNAT dial response") { (field, value) throws(AutoNATError) in
            switch field {
            case 1:
                guard let raw = value.varintValue, let known = Status(rawValue: raw) else {
                    throw AutoNATError(.malformedMessage, "unknown AutoNAT status")
                }
                status = known
            case 2: text = value.stringValue
            case 3: address = try? Multiaddr(bytes: try AutoNATWire.bytes(value, "address"))
            default: break
            }
        }
        guard let status else { throw AutoNATError(.malformedMessage, "dial response without a status") }
        return DialResponse(status: status, statusText: text, address: address)
    }
}
