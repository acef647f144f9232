import Multiformats

/// A status in hop and stop messages (circuit v2 spec, `enum Status`).
public enum RelayStatus: UInt64, Sendable, Hashable, CaseIterable {
    /// Accepted.
    case ok = 100
    /// The relay refused the reservation (e.g. too many reservations).
    case reservationRefused = 200
    /// Too many relayed connections from the initiator or to the target.
    case resourceLimitExceeded = 201
    /// Refused by an access rule.
    case permissionDenied = 202
    /// The relay could not reach the target, or the target could not take the connection.
    case connectionFailed = 203
    /// The target has no reservation with the relay.
    case noReservation = 204
    /// The request could not be parsed.
    case malformedMessage = 400
    /// The request's type is not one this side takes.
    case unexpectedMessage = 401
}

/// A peer in a hop or stop message (`Peer`: id 1, addrs 2).
public struct RelayPeer: Sendable, Hashable {
    /// The peer ID's bytes.
    public var id: [UInt8]
    /// Its addresses (for an "active relay", which we never do); unparsable ones are dropped.
    public var addresses: [Multiaddr]

    /// A peer entry.
    public init(id: [UInt8], addresses: [Multiaddr] = []) {
        self.id = id
        self.addresses = addresses
    }
}

/// What a relay grants with an accepted reservation (`Reservation`: expire 1, addrs 2, voucher 3).
public struct RelayReservationInfo: Sendable, Hashable {
    /// When the reservation ends, UNIX seconds (UTC); the client refreshes before.
    public var expire: UInt64?
    /// The relay's public addresses, ending in `/p2p/<relay>`, without `/p2p-circuit`.
    public var addresses: [Multiaddr]
    /// The signed reservation voucher (a ``ReservationVoucher`` envelope).
    public var voucher: [UInt8]?

    /// A reservation description.
    public init(expire: UInt64?, addresses: [Multiaddr] = [], voucher: [UInt8]? = nil) {
        self.expire = expire
        self.addresses = addresses
        self.voucher = voucher
    }
}

/// The limits a relay applies to each relayed connection (`Limit`: duration 1 in seconds, data 2
/// in bytes per direction); a missing or zero value means no limit.
public struct RelayLimit: Sendable, Hashable {
    /// Longest life of a relayed connection, in seconds.
    public var duration: UInt32?
    /// Most bytes relayed in each direction.
    public var data: UInt64?

    /// A limit.
    public init(duration: UInt32? = nil, data: UInt64? = nil) {
        self.duration = duration
        self.data = data
    }
}

/// A message of the hop protocol (`/libp2p/circuit/relay/0.2.0/hop`), between a client and the
/// relay: `HopMessage { type 1, peer 2, reservation 3, limit 4, status 5 }`. On a stream each
/// message is `uvarint(length) ‖ protobuf`.
public struct HopMessage: Sendable, Hashable {
    /// The message's type.
    public enum Kind: UInt64, Sendable, Hashable {
        /// A client asks for a reservation.
        case reserve = 0
        /// An initiator asks to be connected to `peer`.
        case connect = 1
        /// The relay's answer.
        case status = 2
    }

    /// The message's type.
    public var type: Kind
    /// The target of a `CONNECT`.
    public var peer: RelayPeer?
    /// What an accepted `RESERVE` grants.
    public var reservation: RelayReservationInfo?
    /// The limits per relayed connection.
    public var limit: RelayLimit?
    /// The status of a `STATUS`.
    public var status: RelayStatus?

    /// A hop message.
    public init(
        type: Kind, peer: RelayPeer? = nil, reservation: RelayReservationInfo? = nil,
        limit: RelayLimit? = nil, status: RelayStatus? = nil
    ) {
        self.type = type
        self.peer = peer
        self.reservation = reservation
        self.limit = limit
        self.status = status
    }

    /// The protobuf bytes (without the length prefix).
    public func encoded() -> [UInt8] {
        var w = ProtobufWriter()
        w.writeVarintField(1, type.rawValue)
        if let peer { w.writeBytesField(2, RelayWire.encode(peer)) }
        if let reservation { w.writeBytesField(3, RelayWire.encode(reservation)) }
        if let limit { w.writeBytesField(4, RelayWire.encode(limit)) }
        if let status { w.writeVarintField(5, status.rawValue) }
        return w.bytes
    }

    /// Parses a message of at most `RelayWire.maxMessageSize` bytes. Unknown fields are skipped;
    /// an unknown type or status, a missing type or a malformed field throws `.malformedMessage`.
    public init(decoding bytes: some Collection<UInt8>) throws(RelayError) {
        try RelayWire.checkSize(bytes.count)
        var type: Kind?
        var peer: RelayPeer?
        var reservation: RelayReservationInfo?
        var limit: RelayLimit?
        var status: RelayStatus?
        try RelayWire.forEachField(bytes, "hop message") { (field, value) throws(RelayError) in
            switch field {
            case 1: type = try RelayWire.enumValue(value, Kind.init(rawValue:), "hop message type")
            case 2: peer = try RelayWire.decodePeer(value)
            case 3: reservation = try RelayWire.decodeReservation(value)
            case 4: limit = try RelayWire.decodeLimit(value)
            case 5: status = try RelayWire.enumValue(value, RelayStatus.init(rawValue:), "status")
            default: break
            }
        }
        guard let type else { throw RelayError(.malformedMessage, "hop message without a type") }
        self.init(type: type, peer: peer, reservation: reservation, limit: limit, status: status)
    }
}

/// A message of the stop protocol (`/libp2p/circuit/relay/0.2.0/stop`), from the relay to the
/// target of a relayed connection: `StopMessage { type 1, peer 2, limit 3, status 4 }`.
public struct StopMessage: Sendable, Hashable {
    /// The message's type.
    public enum Kind: UInt64, Sendable, Hashable {
        /// The relay announces a relayed connection from `peer`.
        case connect = 0
        /// The target's answer.
        case status = 1
    }

    /// The message's type.
    public var type: Kind
    /// The initiator of a `CONNECT`.
    public var peer: RelayPeer?
    /// The limits of the relayed connection.
    public var limit: RelayLimit?
    /// The status of a `STATUS`.
    public var status: RelayStatus?

    /// A stop message.
    public init(type: Kind, peer: RelayPeer? = nil, limit: RelayLimit? = nil, status: RelayStatus? = nil) {
        self.type = type
        self.peer = peer
        self.limit = limit
        self.status = status
    }

    /// The protobuf bytes (without the length prefix).
    public func encoded() -> [UInt8] {
        var w = ProtobufWriter()
        w.writeVarintField(1, type.rawValue)
        if let peer { w.writeBytesField(2, RelayWire.encode(peer)) }
        if let limit { w.writeBytesField(3, RelayWire.encode(limit)) }
        if let status { w.writeVarintField(4, status.rawValue) }
        return w.bytes
    }

    /// Parses a message of at most `RelayWire.maxMessageSize` bytes, as `HopMessage` does.
    public init(decoding bytes: some Collection<UInt8>) throws(RelayError) {
        try RelayWire.checkSize(bytes.count)
        var type: Kind?
        var peer: RelayPeer?
        var limit: RelayLimit?
        var status: RelayStatus?
        try RelayWire.forEachField(bytes, "stop message") { (field, value) throws(RelayError) in
            switch field {
            case 1: type = try RelayWire.enumValue(value, Kind.init(rawValue:), "stop message type")
            case 2: peer = try RelayWire.decodePeer(value)
            case 3: limit = try RelayWire.decodeLimit(value)
            case 4: status = try RelayWire.enumValue(value, RelayStatus.init(rawValue:), "status")
            default: break
            }
        }
        guard let type else { throw RelayError(.malformedMessage, "stop message without a type") }
        self.init(type: type, peer: peer, limit: limit, status: status)
    }
}

/// Protocol IDs, limits and the shared protobuf parts of hop and stop messages.
public enum RelayWire {
    /// The hop protocol (client ↔ relay).
    public static let hopProtocol = "/libp2p/circuit/relay/0.2.0/hop"
    /// The stop protocol (relay → target).
    public static let stopProtocol = "/libp2p/circuit/relay/0.2.0/stop"
    /// Largest hop or stop message accepted or sent (go-libp2p's limit is 4 KiB too).
    public static let maxMessageSize = 4096
    /// Most addresses kept from one peer entry or reservation; the rest are dropped.
    public static let maxAddresses = 32

    static func checkSize(_ count: Int) throws(RelayError) {
        guard count <= maxMessageSize else {
            throw RelayError(.limitExceeded, "relay message of \(count) bytes (limit \(maxMessageSize))")
        }
    }

    static func forEachField(
        _ bytes: some Collection<UInt8>, _ what: String,
        _ body: (Int, ProtobufValue) throws(RelayError) -> Void
    ) throws(RelayError) {
        try ProtobufReader.forEachField(
            in: bytes, malformed: { RelayError(.malformedMessage, "\(what) is not valid protobuf", cause: $0) }, body)
    }

    static func enumValue<E>(_ value: ProtobufValue, _ make: (UInt64) -> E?, _ what: String) throws(RelayError) -> E {
        guard let raw = value.varintValue else { throw RelayError(.malformedMessage, "\(what) is not a varint") }
        guard let result = make(raw) else { throw RelayError(.malformedMessage, "unknown \(what) \(raw)") }
        return result
    }

    static func bytes(_ value: ProtobufValue, _ what: String) throws(RelayError) -> [UInt8] {
        guard let bytes = value.bytesValue else { throw RelayError(.malformedMessage, "\(what) is not length-delimited") }
        return bytes
    }

    static func varint(_ value: ProtobufValue, _ what: String) throws(RelayError) -> UInt64 {
        guard let number = value.varintValue else { throw RelayError(.malformedMessage, "\(what) is not a varint") }
        return number
    }

    /// Appends a binary multiaddr if it parses and the list is not full (others are dropped, as
    /// go-libp2p drops addresses it cannot parse).
    static func appendAddress(_ value: ProtobufValue, to list: inout [Multiaddr]) throws(RelayError) {
        let raw = try bytes(value, "address")
        guard list.count < maxAddresses, let address = try? Multiaddr(bytes: raw) else { return }
        list.append(address)
    }

    static func encode(_ peer: RelayPeer) -> [UInt8] {
        var w = ProtobufWriter()
        w.writeBytesField(1, peer.id)
        for address in peer.addresses { w.writeBytesField(2, address.bytes) }
        return w.bytes
    }

    static func encode(_ reservation: RelayReservationInfo) -> [UInt8] {
        var w = ProtobufWriter()
        if let expire = reservation.expire { w.writeVarintField(1, expire) }
        for address in reservation.addresses { w.writeBytesField(2, address.bytes) }
        if let voucher = reservation.voucher { w.writeBytesField(3, voucher) }
        return w.bytes
    }

    static func encode(_ limit: RelayLimit) -> [UInt8] {
        var w = ProtobufWriter()
        if let duration = limit.duration { w.writeVarintField(1, UInt64(duration)) }
        if let data = limit.data { w.writeVarintField(2, data) }
        return w.bytes
    }

    static func decodePeer(_ value: ProtobufValue) throws(RelayError) -> RelayPeer {
        var id: [UInt8]?
        var addresses: [Multiaddr] = []
        try forEachField(try bytes(value, "peer"), "peer") { (field, value) throws(RelayError) in
            switch field {
            case 1: id = try bytes(value, "peer id")
            case 2: try appendAddress(value, to: &addresses)
            default: break
            }
        }
        guard let id else { throw RelayError(.malformedMessage, "peer without an id") }
        return RelayPeer(id: id, addresses: addresses)
    }

    static func decodeReservation(_ value: ProtobufValue) throws(RelayError) -> RelayReservationInfo {
        var reservation = RelayReservationInfo(expire: nil)
        try forEachField(try bytes(value, "reservation"), "reservation") { (field, value) throws(RelayError) in
            switch field {
            case 1: reservation.expire = try varint(value, "reservation expiry")
            case 2: try appendAddress(value, to: &reservation.addresses)
            case 3: reservation.voucher = try bytes(value, "voucher")
            default: break
            }
        }
        return reservation
    }

    static func decodeLimit(_ value: ProtobufValue) throws(RelayError) -> RelayLimit {
        var limit = RelayLimit()
        try forEachField(try bytes(value, "limit"), "limit") { (field, value) throws(RelayError) in
            switch field {
            case 1:
                // uint32 on the wire; a larger value is clamped rather than wrapped.
                limit.duration = UInt32(clamping: try varint(value, "limit duration"))
            case 2: limit.data = try varint(value, "limit data")
            default: break
            }
        }
        return limit
    }
}
