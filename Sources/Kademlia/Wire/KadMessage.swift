import Multiformats

/// One kad-dht message (libp2p kad-dht spec, `Message`): a request, or the response of the same
/// type. On a stream, each is sent as `uvarint(length) ‖ protobuf`.
///
/// Field numbers (spec): type 1, key 2, record 3, closerPeers 8, providerPeers 9,
/// clusterLevelRaw 10 (unused, ignored). A response carries the request's type.
public struct KadMessage: Sendable, Hashable {
    /// The RPC; a response has its request's type.
    public enum MessageType: UInt64, Sendable, Hashable, CaseIterable {
        /// Store a record at the receiver.
        case putValue = 0
        /// Ask for a record (and closer peers).
        case getValue = 1
        /// Tell the receiver we provide the key.
        case addProvider = 2
        /// Ask for providers of the key (and closer peers).
        case getProviders = 3
        /// Ask for the peers closest to the key.
        case findNode = 4
        /// Deprecated in the spec (go answers it); a liveness probe.
        case ping = 5
    }

    /// What the sender knows of its connection to a peer it lists.
    public enum ConnectionType: UInt64, Sendable, Hashable {
        /// No connection, no information (the default).
        case notConnected = 0
        /// A live connection.
        case connected = 1
        /// Recently connected.
        case canConnect = 2
        /// Recently failed to connect, repeatedly.
        case cannotConnect = 3
    }

    /// A peer in `closerPeers` or `providerPeers`.
    public struct Peer: Sendable, Hashable {
        /// The peer ID's bytes (multihash).
        public var id: [UInt8]
        /// Its addresses, binary multiaddrs. Ones we cannot parse are dropped on decoding.
        public var addresses: [Multiaddr]
        /// The sender's connection to it.
        public var connection: ConnectionType

        /// A peer entry.
        public init(id: [UInt8], addresses: [Multiaddr], connection: ConnectionType = .notConnected) {
            self.id = id
            self.addresses = addresses
            self.connection = connection
        }
    }

    /// A value stored under a key (`Record`: key 1, value 2, timeReceived 5; fields 3 and 4 are
    /// obsolete).
    public struct Record: Sendable, Hashable {
        /// The record's key (e.g. `/pk/<multihash>`).
        public var key: [UInt8]
        /// The value.
        public var value: [UInt8]
        /// RFC 3339 time the receiver got it; set by the receiver, empty on the wire from senders.
        public var timeReceived: String

        /// A record.
        public init(key: [UInt8], value: [UInt8], timeReceived: String = "") {
            self.key = key
            self.value = value
            self.timeReceived = timeReceived
        }
    }

    /// Hard limits a decoder applies before keeping anything.
    public struct Limits: Sendable, Hashable {
        /// A whole message (go-libp2p-kad-dht reads at most 4 MiB).
        public var maxMessageSize = 4 << 20
        /// The key of a request or record.
        public var maxKeySize = 1024
        /// A record's value.
        public var maxValueSize = 64 << 10
        /// Peers per list (closer or provider peers); a lookup asks for k = 20.
        public var maxPeers = 64
        /// Addresses per peer entry.
        public var maxAddressesPerPeer = 32
        /// One address's binary form.
        public var maxAddressSize = 512

        /// The defaults above.
        public init() {}
    }

    /// The RPC.
    public var type: MessageType
    /// The key asked about (a peer ID's bytes for FIND_NODE, a multihash for providers, a record key).
    public var key: [UInt8]
    /// The record, for PUT_VALUE and GET_VALUE responses.
    public var record: Record?
    /// Peers closer to the key.
    public var closerPeers: [Peer]
    /// Providers of the key (GET_PROVIDERS response; ADD_PROVIDER request: the provider itself).
    public var providerPeers: [Peer]

    /// A message.
    public init(
        type: MessageType, key: [UInt8] = [], record: Record? = nil, closerPeers: [Peer] = [], providerPeers: [Peer] = []
    ) {
        self.type = type
        self.key = key
        self.record = record
        self.closerPeers = closerPeers
        self.providerPeers = providerPeers
    }

    /// The protobuf encoding (fields in number order; proto3 defaults are not written, except the
    /// type, which go always writes).
    public func encoded() -> [UInt8] {
        var writer = ProtobufWriter()
        writer.writeVarintField(1, type.rawValue)
        if !key.isEmpty { writer.writeBytesField(2, key) }
        if let record {
            var inner = ProtobufWriter()
            if !record.key.isEmpty { inner.writeBytesField(1, record.key) }
            if !record.value.isEmpty { inner.writeBytesField(2, record.value) }
            if !record.timeReceived.isEmpty { inner.writeStringField(5, record.timeReceived) }
            writer.writeBytesField(3, inner.bytes)
        }
        for peer in closerPeers { writer.writeBytesField(8, Self.encode(peer)) }
        for peer in providerPeers { writer.writeBytesField(9, Self.encode(peer)) }
        return writer.bytes
    }

    private static func encode(_ peer: Peer) -> [UInt8] {
        var writer = ProtobufWriter()
        writer.writeBytesField(1, peer.id)
        for address in peer.addresses { writer.writeBytesField(2, address.bytes) }
        if peer.connection != .notConnected { writer.writeVarintField(3, peer.connection.rawValue) }
        return writer.bytes
    }

    /// Decodes a message, enforcing `limits`; unknown fields are skipped (forward compatible).
    /// Throws `KademliaError` (`.malformedMessage`, `.limitExceeded`).
    public init(decoding bytes: [UInt8], limits: Limits = Limits()) throws(KademliaError) {
        guard bytes.count <= limits.maxMessageSize else {
            throw KademliaError(.limitExceeded, "a message of \(bytes.count) bytes exceeds \(limits.maxMessageSize)")
        }
        var type: MessageType?
        var key: [UInt8] = []
        var record: Record?
        var closer: [Peer] = []
        var providers: [Peer] = []
        do {
            var reader = ProtobufReader(bytes)
            while let (field, value) = try reader.next() {
                switch (field, value) {
                case (1, .varint(let raw)):
                    guard let known = MessageType(rawValue: raw) else {
                        throw KademliaError(.malformedMessage, "unknown message type \(raw)")
                    }
                    type = known
                case (2, .bytes(let data)):
                    guard data.count <= limits.maxKeySize else {
                        throw KademliaError(.limitExceeded, "a key of \(data.count) bytes exceeds \(limits.maxKeySize)")
                    }
                    key = data
                case (3, .bytes(let data)):
                    record = try Self.decodeRecord(data, limits: limits)
                case (8, .bytes(let data)), (9, .bytes(let data)):
                    guard (field == 8 ? closer.count : providers.count) < limits.maxPeers else {
                        throw KademliaError(.limitExceeded, "more than \(limits.maxPeers) peers in a list")
                    }
                    let peer = try Self.decodePeer(data, limits: limits)
                    if field == 8 { closer.append(peer) } else { providers.append(peer) }
                case (1, _), (2, _), (3, _), (8, _), (9, _):
                    throw KademliaError(.malformedMessage, "field \(field) has the wrong wire type")
                default:
                    continue  // clusterLevelRaw (10) and anything newer
                }
            }
        } catch let error as KademliaError {
            throw error
        } catch {
            throw KademliaError(.malformedMessage, "not a valid protobuf message", cause: error)
        }
        // proto3: an absent type is its default, PUT_VALUE (0); go writes it anyway.
        self.init(type: type ?? .putValue, key: key, record: record, closerPeers: closer, providerPeers: providers)
    }

    private static func decodeRecord(_ bytes: [UInt8], limits: Limits) throws -> Record {
        var record = Record(key: [], value: [])
        var reader = ProtobufReader(bytes)
        while let (field, value) = try reader.next() {
            guard case .bytes(let data) = value else { continue }
            switch field {
            case 1:
                guard data.count <= limits.maxKeySize else {
                    throw KademliaError(.limitExceeded, "a record key of \(data.count) bytes exceeds \(limits.maxKeySize)")
                }
                record.key = data
            case 2:
                guard data.count <= limits.maxValueSize else {
                    throw KademliaError(.limitExceeded, "a record value of \(data.count) bytes exceeds \(limits.maxValueSize)")
                }
                record.value = data
            case 5:
                guard data.count <= 64, let text = String(validating: data, as: UTF8.self) else {
                    throw KademliaError(.malformedMessage, "timeReceived is not a short UTF-8 string")
                }
                record.timeReceived = text
            default:
                continue  // author (3) and signature (4) are obsolete
            }
        }
        return record
    }

    private static func decodePeer(_ bytes: [UInt8], limits: Limits) throws -> Peer {
        var id: [UInt8]?
        var addresses: [Multiaddr] = []
        var connection = ConnectionType.notConnected
        var addressCount = 0
        var reader = ProtobufReader(bytes)
        while let (field, value) = try reader.next() {
            switch (field, value) {
            case (1, .bytes(let data)):
                // A multihash of an identity (≤ 42 bytes for inlined keys) or a SHA-256 (34 bytes).
                guard data.count <= 128 else {
                    throw KademliaError(.limitExceeded, "a peer ID of \(data.count) bytes")
                }
                id = data
            case (2, .bytes(let data)):
                addressCount += 1
                guard addressCount <= limits.maxAddressesPerPeer else {
                    throw KademliaError(.limitExceeded, "more than \(limits.maxAddressesPerPeer) addresses for one peer")
                }
                guard data.count <= limits.maxAddressSize else {
                    throw KademliaError(.limitExceeded, "an address of \(data.count) bytes")
                }
                // Peers list addresses we may not know (quic, webrtc…): skipped, not an error.
                if let address = try? Multiaddr(bytes: data) { addresses.append(address) }
            case (3, .varint(let raw)):
                connection = ConnectionType(rawValue: raw) ?? .notConnected
            default:
                continue
            }
        }
        guard let id, !id.isEmpty else { throw KademliaError(.malformedMessage, "a peer entry without an ID") }
        return Peer(id: id, addresses: addresses, connection: connection)
    }
}
