import Atomics
import NIOCore
import Resources

/// Receive-side credit accounting and window auto-tuning for one stream.
///
/// It only sees what the *application consumed*; the state machine separately tracks how
/// much the peer may still send. Together: `peer's remaining credit + bytes queued for the
/// reader + consumed-but-not-credited == windowSize`.
///
/// Credit rule: a WINDOW_UPDATE is due once the consumed-but-not-credited amount reaches half
/// of the current window (as go-yamux / rust-yamux do). Credit is only given for consumed
/// data, so a slow reader exerts back-pressure on the sender, and what is queued per stream
/// never exceeds the window we granted. Crediting at half the window (not at the very end)
/// keeps the sender busy and ensures a sender never sits on an empty window while we still
/// owe it credit (py-libp2p resets a stream after 5 s without a WINDOW_UPDATE).
///
/// Auto-tune rule (same idea as go-yamux and rust-yamux): an "epoch" is the time between two
/// credits, i.e. the time the application took to consume half a window. If that took less
/// than 2 × RTT, the window rather than the reader limits throughput (a window-limited sender
/// consumes W per RTT, so W/2 per RTT/2), and the window is doubled, up to `maxWindowSize`;
/// the growth is given to the sender with the same WINDOW_UPDATE. The RTT comes from the
/// session's pings; it is floored at `minimumRTT`, which also stands in while no RTT has been
/// measured yet: on loopback or a LAN the measured RTT is far below the scheduling latency of
/// the reading task, so the raw value would never allow growth. The cost of growing is memory
/// only, bounded by `maxWindowSize` per stream, and only paid while the reader keeps up; growth
/// is reserved in the session's budget and in the stream's resource scope before it is granted,
/// and a refusal just keeps the window where it is.
///
/// The session-wide allowance for window growth beyond the streams' initial windows, shared by
/// all streams of a session: without it 1,024 streams auto-tuned to 16 MiB could make one peer
/// buffer 16 GiB. A stream that cannot reserve growth keeps its current window (still correct
/// flow control, only slower); growth is returned when the stream goes away.
final class YamuxWindowBudget: Sendable {
    private let remaining: ManagedAtomic<Int>
    let limit: Int

    init(limit: Int) {
        self.limit = limit
        self.remaining = ManagedAtomic(limit)
    }

    var available: Int { remaining.load(ordering: .relaxed) }

    /// Takes up to `wanted` bytes; returns how much was granted.
    func reserve(upTo wanted: Int) -> Int {
        var current = remaining.load(ordering: .relaxed)
        while true {
            let granted = min(wanted, current)
            guard granted > 0 else { return 0 }
            let (exchanged, original) = remaining.compareExchange(
                expected: current, desired: current - granted, ordering: .relaxed)
            if exchanged { return granted }
            current = original
        }
    }

    func release(_ bytes: Int) {
        guard bytes > 0 else { return }
        remaining.wrappingIncrement(by: bytes, ordering: .relaxed)
    }
}

struct YamuxReceiveWindow: Sendable {
    static let minimumRTT: TimeAmount = .milliseconds(5)

    /// The current target window (grows by auto-tuning).
    private(set) var windowSize: UInt32
    let maxWindowSize: UInt32
    let initialWindowSize: UInt32
    /// Consumed by the application, not yet credited to the peer.
    private(set) var consumedUncredited: UInt32 = 0
    /// Start of the current epoch (creation, or the last credit).
    private(set) var epochStart: NIODeadline

    init(initialWindow: UInt32, maxWindow: UInt32, now: NIODeadline) {
        self.windowSize = initialWindow
        self.initialWindowSize = initialWindow
        self.maxWindowSize = max(maxWindow, initialWindow)
        self.epochStart = now
    }

    /// Growth this window holds beyond its initial size (released when the stream goes away).
    var reservedGrowth: Int { Int(windowSize - initialWindowSize) }

    /// Records that the application consumed `bytes`. Returns the delta of a WINDOW_UPDATE
    /// to send now, or nil if none is due yet. Growth is reserved first in `budget` (the
    /// session's, nil: unlimited) and `account` (the stream's resource scope, nil: none).
    mutating func consumed(
        _ bytes: Int, now: NIODeadline, rtt: TimeAmount?,
        budget: YamuxWindowBudget? = nil, account: StreamScope? = nil
    ) -> UInt32? {
        precondition(bytes >= 0)
        consumedUncredited &+= UInt32(clamping: bytes)
        guard consumedUncredited >= windowSize / 2 else { return nil }

        var delta = consumedUncredited
        let effectiveRTT = max(rtt ?? .zero, Self.minimumRTT)
        let epoch = now - epochStart
        if windowSize < maxWindowSize && epoch < effectiveRTT * 2 {
            var growth = UInt32(min(UInt64(windowSize) * 2, UInt64(maxWindowSize))) - windowSize
            if let budget { growth = UInt32(budget.reserve(upTo: Int(growth))) }
            if growth > 0, let account {
                do {
                    try account.reserveMemory(Int(growth))
                } catch {
                    // Refused: the window stays as it is (flow control is still correct).
                    budget?.release(Int(growth))
                    growth = 0
                }
            }
            delta += growth
            windowSize += growth
        }
        consumedUncredited = 0
        epochStart = now
        return delta
    }
}
