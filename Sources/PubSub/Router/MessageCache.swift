import Identity

/// The gossipsub message cache (`mcache`, `gossipsub-v1.0.md` "Message Cache"): recent messages by
/// ID, in history windows of one heartbeat each. `put` adds to the current window; `shift` (at the
/// end of each heartbeat, after gossip) opens a new window and drops the messages of the oldest
/// one, so a message stays `historyLength` heartbeats; gossip advertises the IDs of the newest
/// `historyGossip` windows only.
///
/// v1.1 "Spam Protection Measures": IWANT answers are limited per peer and message, so the cache
/// also counts how often each peer was given each message.
struct MessageCache: Sendable {
    private struct Entry: Sendable {
        var message: PubSubRPC.Message
        var transmissions: [PeerID: Int] = [:]
    }

    private struct Key: Sendable {
        var id: MessageKey
        var topic: String
    }

    let historyLength: Int
    let historyGossip: Int
    private var entries: [MessageKey: Entry] = [:]
    /// `windows[0]` is the current window.
    private var windows: [[Key]]

    init(historyLength: Int, historyGossip: Int) {
        precondition(historyLength >= 1 && (0...historyLength).contains(historyGossip))
        self.historyLength = historyLength
        self.historyGossip = historyGossip
        windows = [[]]
    }

    var count: Int { entries.count }

    /// Adds a message to the current window (a message already cached keeps its window).
    mutating func put(_ message: PubSubRPC.Message, id: MessageID) {
        let key = MessageKey(id)
        guard entries[key] == nil else { return }
        entries[key] = Entry(message: message)
        windows[0].append(Key(id: key, topic: message.topic))
    }

    func get(_ id: MessageID) -> PubSubRPC.Message? { entries[MessageKey(id)]?.message }

    /// The message for an IWANT from `peer`, with how many times `peer` has now asked for it
    /// (this request included).
    mutating func get(_ id: MessageID, for peer: PeerID) -> (message: PubSubRPC.Message, count: Int)? {
        let key = MessageKey(id)
        guard var entry = entries.removeValue(forKey: key) else { return nil }
        let count = entry.transmissions[peer, default: 0] + 1
        entry.transmissions[peer] = count
        entries[key] = entry
        return (entry.message, count)
    }

    /// IDs of the messages in `topic` from the newest `historyGossip` windows, newest first.
    func gossipIDs(topic: String) -> [MessageID] {
        var ids: [MessageID] = []
        for window in windows.prefix(historyGossip) {
            for key in window.reversed() where key.topic == topic { ids.append(key.id.id) }
        }
        return ids
    }

    /// Opens a new current window; forgets the messages of windows older than `historyLength`.
    mutating func shift() {
        windows.insert([], at: 0)
        while windows.count > historyLength {
            for key in windows.removeLast() { entries[key.id] = nil }
        }
    }
}
