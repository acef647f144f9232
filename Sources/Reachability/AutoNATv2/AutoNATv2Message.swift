import Basics
import Multiformats

/// The messages of AutoNAT v2 (autonat-v2 spec). On `/libp2p/autonat/2/dial-request` every
/// message is a `Message` with one of `dialRequest` 1, `dialResponse` 2, `dialDataRequest` 3,
/// `dialDataResponse` 4 set; on `/libp2p/autonat/2/dial-back` the server sends a bare `DialBack`
/// and the client answers a bare `DialBackResponse`. Each is `uvarint(length) ‖ protobuf`.
public enum AutoNATv2Message: Sendable, Hashable {
    /// The client asks to have one of `addresses` dialed (first = most wanted), with a nonce the
    /// dial-back must carry.
    case dialRequest(DialRequest)
    /// The server's verdict.
    case dialResponse(DialResponse)
    /// The server asks for `byteCount` bytes before dialing an address on another IP than the
    /// client's (amplification-attack prevention).
    case dialDataRequest(DialDataRequest)
    /// Some of those bytes (at most `maxDialDataChunk` counted per message).
    case dialDataResponse(DialDataResponse)

    /// `DialRequest { repeated bytes addrs = 1; fixed64 nonce = 2; }`.
    public struct DialRequest: Sendable, Hashable {
        /// The addresses, in the client's order of priority (unparsable ones kept as `nil` so
        /// that indices stay those of the wire).
        public var addresses: [Multiaddr?]
        /// The nonce the dial-back must carry.
        public var nonce: UInt64

        /// A request.
        public init(addresses: [Multiaddr], nonce: UInt64) {
            self.addresses = addresses
            self.nonce = nonce
        }

        /// A request with raw address slots (unparsable ones `nil`).
        init(slots: [Multiaddr?], nonce: UInt64) {
            self.addresses = slots
            self.nonce = nonce
        }
    }

    /// `DialResponse { ResponseStatus status = 1; uint32 addrIdx = 2; DialStatus dialStatus = 3; }`.
    public struct DialResponse: Sendable, Hashable {
        /// Whether the server served the request.
        public var status: ResponseStatus
        /// The index of the address it dialed (meaningful when `status` is `.ok`).
        public var addressIndex: Int
        /// What the dial gave (meaningful when `status` is `.ok`).
        public var dialStatus: DialStatus

        /// A response.
        public init(status: ResponseStatus, addressIndex: Int = 0, dialStatus: DialStatus = .unused) {
            self.status = status
            self.addressIndex = addressIndex
            self.dialStatus = dialStatus
        }
    }

    /// `DialDataRequest { uint32 addrIdx = 1; uint64 numBytes = 2; }`.
    public struct DialDataRequest: Sendable, Hashable {
        /// The address the server chose.
        public var addressIndex: Int
        /// How many bytes of `DialDataResponse.data` it wants first.
        public var byteCount: UInt64

        /// A request for data.
        public init(addressIndex: Int, byteCount: UInt64) {
            self.addressIndex = addressIndex
            self.byteCount = byteCount
        }
    }

    /// `DialDataResponse { bytes data = 1; }`. Only the count matters, so the content is not kept.
    public struct DialDataResponse: Sendable, Hashable {
        /// How many bytes `data` held.
        public var count: Int

        /// A message carrying `count` zero bytes.
        public init(count: Int) {
            self.count = count
        }
    }

    /// `DialResponse.ResponseStatus`.
    public enum ResponseStatus: UInt64, Sendable, Hashable {
        /// The server failed.
        case internalError = 0
        /// Rate limit, resource limit or block list.
        case requestRejected = 100
        /// No address it would dial.
        case dialRefused = 101
        /// It dialed (successfully or not): see the dial status.
        case ok = 200
    }

    /// `DialStatus`.
    public enum DialStatus: UInt64, Sendable, Hashable {
        /// Not set.
        case unused = 0
        /// The server could not connect to the address.
        case dialError = 100
        /// It connected, but sending the nonce failed.
        case dialBackError = 101
        /// It connected and delivered the nonce.
        case ok = 200
    }

    /// The protocol ID of requests.
    public static let dialRequestProtocol = "/libp2p/autonat/2/dial-request"
    /// The protocol ID of dial-backs.
    public static let dialBackProtocol = "/libp2p/autonat/2/dial-back"
    /// Largest message accepted or sent (go-libp2p's limit, 8 KiB).
    public static let maxMessageSize = 8192
    /// Most `data` counted from one `DialDataResponse` (the spec's 4096).
    public static let maxDialDataChunk = 4096
    /// Most addresses read from a request.
    public static let maxAddresses = 16

    /// The protobuf bytes (without the length prefix).
    public func encoded() -> [UInt8] {
        var inner = ProtobufWriter()
        let field: Int
        switch self {
        case .dialRequest(let request):
            field = 1
            for address in request.addresses { inner.writeBytesField(1, address?.bytes ?? []) }
            inner.writeFixed64Field(2, request.nonce)
        case .dialResponse(let response):
            field = 2
            inner.writeVarintField(1, response.status.rawValue)
            inner.writeVarintField(2, UInt64(response.addressIndex))
            inner.writeVarintField(3, response.dialStatus.rawValue)
        case .dialDataRequest(let request):
            field = 3
            inner.writeVarintField(1, UInt64(request.addressIndex))
            inner.writeVarintField(2, request.byteCount)
        case .dialDataResponse(let response):
            field = 4
            inner.writeBytesField(1, [UInt8](repeating: 0, count: response.count))
        }
        var outer = ProtobufWriter()
        outer.writeBytesField(field, inner.bytes)
        return outer.bytes
    }

    /// Parses a `Message` of at most `maxMessageSize` bytes. Unknown fields are skipped; a
    /// message with none of the four set, or with an unknown status, is malformed (the spec: a
    /// response with a status we do not understand is discarded).
    public init(decoding bytes: some Collection<UInt8>) throws(AutoNATError) {
        guard bytes.count <= Self.maxMessageSize else {
            throw AutoNATError(.limitExceeded, "AutoNAT v2 message of \(bytes.count) bytes (limit \(Self.maxMessageSize))")
        }
        var message: AutoNATv2Message?
        try AutoNATWire.fields(bytes, "AutoNAT v2 message") { (field, value) throws(AutoNATError) in
            guard (1...4).contains(field) else { return }
            let body = try AutoNATWire.bytes(value, "message body")
            switch field {
            case 1: message = .dialRequest(try Self.decodeRequest(body))
            case 2: message = .dialResponse(try Self.decodeResponse(body))
            case 3: message = .dialDataRequest(try Self.decodeDataRequest(body))
            default:
                var count = 0
                try AutoNATWire.fields(body, "AutoNAT v2 dial data") { (field, value) throws(AutoNATError) in
                    if field == 1 { count = try AutoNATWire.bytes(value, "dial data").count }
                }
                message = .dialDataResponse(DialDataResponse(count: count))
            }
        }
        guard let message else { throw AutoNATError(.malformedMessage, "AutoNAT v2 message with no known body") }
        self = message
    }

    private static func index(_ value: ProtobufValue) throws(AutoNATError) -> Int {
        let raw = try AutoNATWire.varint(value, "address index")
        guard raw <= UInt64(UInt32.max) else { throw AutoNATError(.malformedMessage, "address index beyond uint32") }
        return Int(raw)
    }

    private static func decodeRequest(_ bytes: [UInt8]) throws(AutoNATError) -> DialRequest {
        var slots: [Multiaddr?] = []
        var nonce: UInt64?
        try AutoNATWire.fields(bytes, "AutoNAT v2 dial request") { (field, value) throws(AutoNATError) in
            switch field {
            case 1:
                let raw = try AutoNATWire.bytes(value, "address")
                guard slots.count < maxAddresses else { return }
                // An empty address is no address (and would not survive a round trip as one).
                slots.append(raw.isEmpty ? nil : try? Multiaddr(bytes: raw))
            case 2: nonce = try AutoNATWire.fixed64(value, "nonce")
            default: break
            }
        }
        guard let nonce else { throw AutoNATError(.malformedMessage, "dial request without a nonce") }
        return DialRequest(slots: slots, nonce: nonce)
    }

    private static func decodeResponse(_ bytes: [UInt8]) throws(AutoNATError) -> DialResponse {
        // proto3: absent fields are zero (status 0 = E_INTERNAL_ERROR, dial status 0 = UNUSED).
        var response = DialResponse(status: .internalError)
        try AutoNATWire.fields(bytes, "AutoNAT v2 dial response") { (field, value) throws(AutoNATError) in
            switch field {
            case 1:
                guard let status = ResponseStatus(rawValue: try AutoNATWire.varint(value, "status")) else {
                    throw AutoNATError(.malformedMessage, "unknown AutoNAT v2 response status")
                }
                response.status = status
            case 2: response.addressIndex = try index(value)
            case 3:
                guard let status = DialStatus(rawValue: try AutoNATWire.varint(value, "dial status")) else {
                    throw AutoNATError(.malformedMessage, "unknown AutoNAT v2 dial status")
                }
                response.dialStatus = status
            default: break
            }
        }
        return response
    }

    private static func decodeDataRequest(_ bytes: [UInt8]) throws(AutoNATError) -> DialDataRequest {
        var request = DialDataRequest(addressIndex: 0, byteCount: 0)
        try AutoNATWire.fields(bytes, "AutoNAT v2 dial data request") { (field, value) throws(AutoNATError) in
            switch field {
            case 1: request.addressIndex = try index(value)
            case 2: request.byteCount = try AutoNATWire.varint(value, "byte count")
            default: break
            }
        }
        return request
    }
}

/// The dial-back stream's messages: `DialBack { fixed64 nonce = 1; }` from the server and
/// `DialBackResponse { DialBackStatus status = 1; }` (only `OK = 0`) from the client.
public enum AutoNATv2DialBack {
    /// `DialBack` carrying `nonce`.
    public static func encode(nonce: UInt64) -> [UInt8] {
        var w = ProtobufWriter()
        w.writeFixed64Field(1, nonce)
        return w.bytes
    }

    /// The nonce of a `DialBack` of at most `AutoNATv2Message.maxMessageSize` bytes.
    public static func decodeNonce(_ bytes: some Collection<UInt8>) throws(AutoNATError) -> UInt64 {
        guard bytes.count <= AutoNATv2Message.maxMessageSize else {
            throw AutoNATError(.limitExceeded, "dial-back of \(bytes.count) bytes")
        }
        var nonce: UInt64?
        try AutoNATWire.fields(bytes, "AutoNAT v2 dial-back") { (field, value) throws(AutoNATError) in
            if field == 1 { nonce = try AutoNATWire.fixed64(value, "nonce") }
        }
        guard let nonce else { throw AutoNATError(.malformedMessage, "dial-back without a nonce") }
        return nonce
    }

    /// `DialBackResponse` with status OK. proto3 omits a zero enum, so this is empty; go-libp2p
    /// writes it the same way, and a reader must accept the empty message.
    public static func encodeResponse() -> [UInt8] { [] }

    /// Checks a `DialBackResponse`: status OK (0, or absent).
    public static func decodeResponse(_ bytes: some Collection<UInt8>) throws(AutoNATError) {
        guard bytes.count <= AutoNATv2Message.maxMessageSize else {
            throw AutoNATError(.limitExceeded, "dial-back response of \(bytes.count) bytes")
        }
        try AutoNATWire.fields(bytes, "AutoNAT v2 dial-back response") { (field, value) throws(AutoNATError) in
            if field == 1, try AutoNATWire.varint(value, "dial-back status") != 0 {
                throw AutoNATError(.malformedMessage, "unknown dial-back status")
            }
        }
    }
}
