import Multiformats

/// A message ID as routers exchange it in IHAVE/IWANT: opaque bytes, computed by each node with its
/// own message-ID function (so two implementations using different functions still interoperate —
/// they just ask for a message they already have and drop the copy as a duplicate).
public typealias MessageID = [UInt8]

/// The pubsub RPC protobuf (libp2p pubsub spec, `pubsub/README.md`; gossipsub control messages from
/// `pubsub/gossipsub/gossipsub-v1.0.md` / `-v1.1.md`, IDONTWANT from `-v1.2.md`):
///
///     message RPC { repeated SubOpts subscriptions = 1; repeated Message publish = 2;
///                   optional ControlMessage control = 3; }
///     message SubOpts { optional bool subscribe = 1; optional string topicid = 2; }
///     message Message { optional bytes from = 1; optional bytes data = 2; optional bytes seqno = 3;
///                       optional string topic = 4; optional bytes signature = 5; optional bytes key = 6; }
///     message ControlMessage { repeated ControlIHave ihave = 1; repeated ControlIWant iwant = 2;
///                              repeated ControlGraft graft = 3; repeated ControlPrune prune = 4;
///                              repeated ControlIDontWant idontwant = 5; }
///     message ControlIDontWant { repeated bytes messageIDs = 1; }
///
/// Decoding skips unknown fields everywhere: py-libp2p 0.8.1 puts a non-standard field 4 in the
/// first RPC it sends on a stream.
public struct PubSubRPC: Sendable, Equatable {
    public struct SubOpts: Sendable, Equatable, Hashable {
        public var subscribe: Bool
        public var topic: String
        public init(subscribe: Bool, topic: String) {
            self.subscribe = subscribe
            self.topic = topic
        }
    }

    /// A pubsub message exactly as on the wire. Field 4 was `repeated string topicIDs` in the first
    /// version of the spec and is a single `topic` now; both encode the same way for one topic.
    public struct Message: Sendable, Equatable, Hashable {
        public var from: [UInt8]?
        public var data: [UInt8]
        public var seqno: [UInt8]?
        public var topic: String
        public var signature: [UInt8]?
        public var key: [UInt8]?

        public init(from: [UInt8]? = nil, data: [UInt8], seqno: [UInt8]? = nil, topic: String,
                    signature: [UInt8]? = nil, key: [UInt8]? = nil) {
            self.from = from
            self.data = data
            self.seqno = seqno
            self.topic = topic
            self.signature = signature
            self.key = key
        }

        /// The bytes the StrictSign signature covers (after the `"libp2p-pubsub:"` prefix): the
        /// message protobuf without `signature` and `key`, fields in number order.
        public func signableBytes() -> [UInt8] {
            signableBytes(after: [])
        }

        /// `prefix` followed by `signableBytes()`, in one buffer.
        func signableBytes(after prefix: [UInt8]) -> [UInt8] {
            var w = ProtobufWriter(reservingCapacity: prefix.count + encodedSizeBound)
            w.writeRaw(prefix)
            encodeUnsigned(into: &w)
            return w.bytes
        }

        /// At least the encoded size (each field's key and length take at most 1 + 5 bytes here).
        var encodedSizeBound: Int {
            (from?.count ?? 0) + data.count + (seqno?.count ?? 0) + topic.utf8.count + (signature?.count ?? 0)
                + (key?.count ?? 0) + 6 * 6
        }

        func encodeUnsigned(into w: inout ProtobufWriter) {
            if let from { w.writeBytesField(1, from) }
            w.writeBytesField(2, data)
            if let seqno { w.writeBytesField(3, seqno) }
            w.writeStringField(4, topic)
        }

        public func encoded() -> [UInt8] {
            var w = ProtobufWriter(reservingCapacity: encodedSizeBound)
            encodeUnsigned(into: &w)
            if let signature { w.writeBytesField(5, signature) }
            if let key { w.writeBytesField(6, key) }
            return w.bytes
        }

        public init(decoding bytes: [UInt8]) throws(PubSubError) {
            var from: [UInt8]?, data: [UInt8] = [], seqno: [UInt8]?, topic: String?
            var signature: [UInt8]?, key: [UInt8]?
            try PubSubRPC.forEachField(bytes) { field, value throws(PubSubError) in
                switch field {
                case 1: from = try PubSubRPC.bytes(value, "from")
                case 2: data = try PubSubRPC.bytes(value, "data")
                case 3: seqno = try PubSubRPC.bytes(value, "seqno")
                // A second topic (old `topicIDs` form) is not supported: keep the first.
                case 4: if topic == nil { topic = try PubSubRPC.string(value, "topic") }
                case 5: signature = try PubSubRPC.bytes(value, "signature")
                case 6: key = try PubSubRPC.bytes(value, "key")
                default: break
                }
            }
            guard let topic else { throw .malformedRPC("message without a topic") }
            self.init(from: from, data: data, seqno: seqno, topic: topic, signature: signature, key: key)
        }
    }

    public struct IHave: Sendable, Equatable, Hashable {
        public var topic: String
        public var messageIDs: [MessageID]
        public init(topic: String, messageIDs: [MessageID]) {
            self.topic = topic
            self.messageIDs = messageIDs
        }
    }

    public struct IWant: Sendable, Equatable, Hashable {
        public var messageIDs: [MessageID]
        public init(messageIDs: [MessageID]) { self.messageIDs = messageIDs }
    }

    public struct Graft: Sendable, Equatable, Hashable {
        public var topic: String
        public init(topic: String) { self.topic = topic }
    }

    /// PRUNE with v1.1 peer exchange (`peers`, signed peer records are carried but not verified)
    /// and `backoff` in seconds.
    public struct Prune: Sendable, Equatable, Hashable {
        public struct PeerInfo: Sendable, Equatable, Hashable {
            public var peerID: [UInt8]?
            public var signedPeerRecord: [UInt8]?
            public init(peerID: [UInt8]?, signedPeerRecord: [UInt8]? = nil) {
                self.peerID = peerID
                self.signedPeerRecord = signedPeerRecord
            }
        }
        public var topic: String
        public var peers: [PeerInfo]
        public var backoff: UInt64?
        public init(topic: String, peers: [PeerInfo] = [], backoff: UInt64? = nil) {
            self.topic = topic
            self.peers = peers
            self.backoff = backoff
        }
    }

    /// Gossipsub v1.2 IDONTWANT (`ControlIDontWant`, control field 5): the sender has these
    /// messages (or is about to), so copies of them need not be sent to it. Only `/meshsub/1.2.0`
    /// peers send and receive it.
    public struct IDontWant: Sendable, Equatable, Hashable {
        public var messageIDs: [MessageID]
        public init(messageIDs: [MessageID]) { self.messageIDs = messageIDs }
    }

    public struct Control: Sendable, Equatable {
        public var ihave: [IHave] = []
        public var iwant: [IWant] = []
        public var graft: [Graft] = []
        public var prune: [Prune] = []
        /// Gossipsub v1.2 (control field 5).
        public var idontwant: [IDontWant] = []
        public init(ihave: [IHave] = [], iwant: [IWant] = [], graft: [Graft] = [], prune: [Prune] = [],
                    idontwant: [IDontWant] = []) {
            self.ihave = ihave
            self.iwant = iwant
            self.graft = graft
            self.prune = prune
            self.idontwant = idontwant
        }
        public var isEmpty: Bool {
            ihave.isEmpty && iwant.isEmpty && graft.isEmpty && prune.isEmpty && idontwant.isEmpty
        }
    }

    public var subscriptions: [SubOpts] = []
    public var messages: [Message] = []
    public var control: Control?

    public init(subscriptions: [SubOpts] = [], messages: [Message] = [], control: Control? = nil) {
        self.subscriptions = subscriptions
        self.messages = messages
        self.control = control
    }

    public var isEmpty: Bool { subscriptions.isEmpty && messages.isEmpty && (control?.isEmpty ?? true) }

    // MARK: - Encoding

    public func encoded() -> [UInt8] {
        var w = ProtobufWriter(reservingCapacity: messages.reduce(16) { $0 + $1.encodedSizeBound + 6 })
        for sub in subscriptions {
            var s = ProtobufWriter()
            s.writeBoolField(1, sub.subscribe)
            s.writeStringField(2, sub.topic)
            w.writeBytesField(1, s.bytes)
        }
        for message in messages { w.writeBytesField(2, message.encoded()) }
        if let control, !control.isEmpty { w.writeBytesField(3, Self.encode(control)) }
        return w.bytes
    }

    static func encode(_ control: Control) -> [UInt8] {
        var w = ProtobufWriter()
        for ihave in control.ihave {
            var m = ProtobufWriter()
            m.writeStringField(1, ihave.topic)
            for id in ihave.messageIDs { m.writeBytesField(2, id) }
            w.writeBytesField(1, m.bytes)
        }
        for iwant in control.iwant {
            var m = ProtobufWriter()
            for id in iwant.messageIDs { m.writeBytesField(1, id) }
            w.writeBytesField(2, m.bytes)
        }
        for graft in control.graft {
            var m = ProtobufWriter()
            m.writeStringField(1, graft.topic)
            w.writeBytesField(3, m.bytes)
        }
        for prune in control.prune {
            var m = ProtobufWriter()
            m.writeStringField(1, prune.topic)
            for peer in prune.peers {
                var p = ProtobufWriter()
                if let id = peer.peerID { p.writeBytesField(1, id) }
                if let record = peer.signedPeerRecord { p.writeBytesField(2, record) }
                m.writeBytesField(2, p.bytes)
            }
            if let backoff = prune.backoff { m.writeVarintField(3, backoff) }
            w.writeBytesField(4, m.bytes)
        }
        for idontwant in control.idontwant {
            var m = ProtobufWriter()
            for id in idontwant.messageIDs { m.writeBytesField(1, id) }
            w.writeBytesField(5, m.bytes)
        }
        return w.bytes
    }

    // MARK: - Decoding

    /// Decodes one RPC (the caller has already enforced the frame size limit).
    public init(decoding bytes: [UInt8]) throws(PubSubError) {
        try Self.forEachField(bytes) { field, value throws(PubSubError) in
            switch field {
            case 1:
                var subscribe: Bool?, topic: String?
                try Self.forEachField(try Self.bytes(value, "subscription")) { f, v throws(PubSubError) in
                    switch f {
                    case 1: subscribe = v.boolValue
                    case 2: topic = try Self.string(v, "subscription topic")
                    default: break
                    }
                }
                // A SubOpts without a topic carries nothing we can act on; skip it.
                if let topic { subscriptions.append(SubOpts(subscribe: subscribe ?? false, topic: topic)) }
            case 2:
                messages.append(try Message(decoding: try Self.bytes(value, "message")))
            case 3:
                let decoded = try Self.decodeControl(try Self.bytes(value, "control"))
                if var existing = control {
                    existing.ihave += decoded.ihave
                    existing.iwant += decoded.iwant
                    existing.graft += decoded.graft
                    existing.prune += decoded.prune
                    existing.idontwant += decoded.idontwant
                    control = existing
                } else {
                    control = decoded
                }
            default:
                break
            }
        }
    }

    static func decodeControl(_ bytes: [UInt8]) throws(PubSubError) -> Control {
        var control = Control()
        try forEachField(bytes) { field, value throws(PubSubError) in
            let body = try Self.bytes(value, "control entry")
            switch field {
            case 1:
                var topic: String?, ids: [MessageID] = []
                try forEachField(body) { f, v throws(PubSubError) in
                    if f == 1 { topic = try Self.string(v, "ihave topic") }
                    if f == 2 { ids.append(try Self.bytes(v, "ihave id")) }
                }
                control.ihave.append(IHave(topic: topic ?? "", messageIDs: ids))
            case 2:
                var ids: [MessageID] = []
                try forEachField(body) { f, v throws(PubSubError) in
                    if f == 1 { ids.append(try Self.bytes(v, "iwant id")) }
                }
                control.iwant.append(IWant(messageIDs: ids))
            case 3:
                var topic: String?
                try forEachField(body) { f, v throws(PubSubError) in
                    if f == 1 { topic = try Self.string(v, "graft topic") }
                }
                if let topic { control.graft.append(Graft(topic: topic)) }
            case 4:
                var topic: String?, peers: [Prune.PeerInfo] = [], backoff: UInt64?
                try forEachField(body) { f, v throws(PubSubError) in
                    switch f {
                    case 1: topic = try Self.string(v, "prune topic")
                    case 2:
                        var id: [UInt8]?, record: [UInt8]?
                        try forEachField(try Self.bytes(v, "prune peer")) { pf, pv throws(PubSubError) in
                            if pf == 1 { id = try Self.bytes(pv, "prune peer id") }
                            if pf == 2 { record = try Self.bytes(pv, "signed peer record") }
                        }
                        peers.append(Prune.PeerInfo(peerID: id, signedPeerRecord: record))
                    case 3: backoff = v.varintValue
                    default: break
                    }
                }
                if let topic { control.prune.append(Prune(topic: topic, peers: peers, backoff: backoff)) }
            case 5:
                // How many IDs a peer may make us remember is the router's business (per RPC and
                // per peer); here the frame size bounds them.
                var ids: [MessageID] = []
                try forEachField(body) { f, v throws(PubSubError) in
                    if f == 1 { ids.append(try Self.bytes(v, "idontwant id")) }
                }
                control.idontwant.append(IDontWant(messageIDs: ids))
            default:
                break
            }
        }
        return control
    }

    static func forEachField(
        _ bytes: [UInt8], _ body: (Int, ProtobufValue) throws(PubSubError) -> Void
    ) throws(PubSubError) {
        try ProtobufReader.forEachField(in: bytes, malformed: { .malformedRPC("not valid protobuf", cause: $0) }, body)
    }

    static func bytes(_ value: ProtobufValue, _ what: String) throws(PubSubError) -> [UInt8] {
        guard let b = value.bytesValue else { throw .malformedRPC("\(what): wrong wire type") }
        return b
    }

    static func string(_ value: ProtobufValue, _ what: String) throws(PubSubError) -> String {
        guard let s = value.stringValue else { throw .malformedRPC("\(what): not UTF-8 text") }
        return s
    }
}
