import Identity

/// Promises made by IHAVE (v1.1 "Spam Protection Measures"): for each IWANT we send in answer to an
/// IHAVE, one random ID of it is tracked; if that message has not arrived — from any peer — by the
/// deadline, the advertising peer broke its promise and gets a behaviour penalty (P₇).
struct GossipPromises: Sendable {
    private var deadlines: [MessageKey: [PeerID: ContinuousClock.Instant]] = [:]

    var isEmpty: Bool { deadlines.isEmpty }

    /// `peer` advertised `id` and we asked for it; it is due by `deadline` (an earlier promise for
    /// the same message and peer keeps its deadline).
    mutating func add(_ peer: PeerID, id: MessageID, deadline: ContinuousClock.Instant) {
        let key = MessageKey(id)
        if deadlines[key]?[peer] == nil { deadlines[key, default: [:]][peer] = deadline }
    }

    /// The message arrived (valid or not): every promise for it is kept.
    mutating func fulfil(_ id: MessageID) {
        guard !deadlines.isEmpty else { return }
        deadlines[MessageKey(id)] = nil
    }

    /// Forgets the promises whose deadline has passed and returns how many each peer broke.
    mutating func removeBroken(now: ContinuousClock.Instant) -> [PeerID: Int] {
        var broken: [PeerID: Int] = [:]
        for (id, peers) in deadlines {
            var kept = peers
            for (peer, deadline) in peers where deadline <= now {
                broken[peer, default: 0] += 1
                kept[peer] = nil
            }
            deadlines[id] = kept.isEmpty ? nil : kept
        }
        return broken
    }
}
