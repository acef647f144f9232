/// A message ID as the key of the engine's and the routers' tables (seen cache, per-peer recent
/// IDs, delivery records, message cache, promises): the ID with its hash computed once, as one
/// block of bytes. A `[UInt8]` key is fed to the hasher one byte at a time, at every lookup; a
/// message ID (author ‖ seqno, 46 bytes for an Ed25519 author) is looked up in several tables for
/// every copy that arrives.
struct MessageKey: Hashable, Sendable {
    let id: MessageID
    private let hash: Int

    init(_ id: MessageID) {
        self.id = id
        var hasher = Hasher()
        id.withUnsafeBytes { hasher.combine(bytes: $0) }
        hash = hasher.finalize()
    }

    func hash(into hasher: inout Hasher) {
        hasher.combine(hash)
    }

    static func == (lhs: MessageKey, rhs: MessageKey) -> Bool {
        lhs.hash == rhs.hash && lhs.id == rhs.id
    }
}
