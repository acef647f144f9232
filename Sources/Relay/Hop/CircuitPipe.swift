import LibP2P
import NIOCore

/// Joins the relay's two streams of a relayed connection (the initiator's hop stream and the
/// target's stop stream), byte for byte in both directions, within the circuit's limits.
enum CircuitPipe {
    /// How a relayed connection ended.
    enum Outcome: String, Sendable {
        /// Both directions ended normally (each side closed its writing).
        case closed
        /// A direction reached the data limit; both streams were reset.
        case dataLimit
        /// The duration limit passed; both streams were reset.
        case durationLimit
        /// A stream failed (reset or connection lost); both streams were reset.
        case failed
    }

    /// Copies `a` → `b` and `b` → `a` until both directions end, or a limit or a failure resets
    /// both streams. A half-close in one direction is passed on and the other keeps flowing.
    static func run(_ a: P2PStream, _ b: P2PStream, limit: RelayLimit?) async -> Outcome {
        let maxBytes = limit?.data.flatMap { $0 > 0 ? $0 : nil }
        let maxDuration = limit?.duration.flatMap { $0 > 0 ? Duration.seconds(Int64($0)) : nil }
        return await withTaskGroup(of: Outcome?.self) { group in
            group.addTask { await copy(from: a, to: b, maxBytes: maxBytes) }
            group.addTask { await copy(from: b, to: a, maxBytes: maxBytes) }
            if let maxDuration {
                group.addTask {
                    // Cancelled when both directions are done first.
                    guard (try? await Task.sleep(for: maxDuration)) != nil else { return nil }
                    return .durationLimit
                }
            }
            var outcome = Outcome.closed
            var copiesLeft = 2
            while copiesLeft > 0, let next = await group.next() {
                guard let result = next else { continue }
                if result == .durationLimit {
                    outcome = .durationLimit
                    a.reset()
                    b.reset()
                    continue
                }
                copiesLeft -= 1
                if result != .closed {
                    if outcome == .closed { outcome = result }
                    a.reset()
                    b.reset()
                }
            }
            group.cancelAll()
            return outcome
        }
    }

    /// One direction: `.closed` when the source ended and the end was passed on.
    private static func copy(from source: P2PStream, to sink: P2PStream, maxBytes: UInt64?) async -> Outcome {
        var sent: UInt64 = 0
        do {
            while var buffer = try await source.read() {
                if let maxBytes {
                    let allowed = maxBytes - sent
                    if UInt64(buffer.readableBytes) > allowed {
                        // Pass on what the allowance covers, then end the circuit.
                        if allowed > 0, let part = buffer.readSlice(length: Int(allowed)) { try await sink.write(part) }
                        return .dataLimit
                    }
                    sent += UInt64(buffer.readableBytes)
                }
                try await sink.write(buffer)
            }
            try await sink.closeWrite()
            return .closed
        } catch {
            return .failed
        }
    }
}
