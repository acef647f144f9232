import Identity

/// A message delivered to a subscription (or handed to a validator): signature checked, author
/// known.
public struct PubSubMessage: Sendable, Hashable {
    public var topic: String
    public var data: [UInt8]
    /// The author (the message's `from`), not necessarily the peer that passed it to us.
    public var from: PeerID
    /// The author's sequence number.
    public var seqno: UInt64
    /// The ID the configured message-ID function gave it.
    public var id: MessageID
    /// The neighbour it arrived from; the local peer for our own messages.
    public var receivedFrom: PeerID

    public init(topic: String, data: [UInt8], from: PeerID, seqno: UInt64, id: MessageID, receivedFrom: PeerID) {
        self.topic = topic
        self.data = data
        self.from = from
        self.seqno = seqno
        self.id = id
        self.receivedFrom = receivedFrom
    }

    /// `data` as UTF-8 text (invalid sequences replaced).
    public var text: String { String(decoding: data, as: UTF8.self) }
}
