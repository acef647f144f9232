import Identity

/// A message delivered to a subscription (or handed to a validator), checked under its topic's
/// signature policy: under StrictSign signed and with a known author, under StrictNoSign without
/// author (`from` and `seqno` nil).
public struct PubSubMessage: Sendable, Hashable {
    /// The message's topic.
    public var topic: String
    /// The payload.
    public var data: [UInt8]
    /// The verified author (the message's `from`), not necessarily the peer that passed it to us;
    /// nil on StrictNoSign topics.
    public var from: PeerID?
    /// The author's sequence number; nil on StrictNoSign topics.
    public var seqno: UInt64?
    /// The ID the message-ID function of its topic gave it.
    public var id: MessageID
    /// The neighbour it arrived from; the local peer for our own messages.
    public var receivedFrom: PeerID

    /// A message as delivered; `from` and `seqno` nil for an unsigned (StrictNoSign) one.
    public init(topic: String, data: [UInt8], from: PeerID?, seqno: UInt64?, id: MessageID, receivedFrom: PeerID) {
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
