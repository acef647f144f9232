import Multiformats

/// Orders a peer's addresses for dialing and says when to start each: the swarm dials the best
/// first and, while it has not answered, starts the next after a short delay (staggered parallel
/// dials, as go-libp2p's dial ranker and Happy Eyeballs do), so one black-holed address costs a
/// delay rather than a whole dial timeout.
///
/// Value type, no I/O: `rank` is pure and `DialSchedule` is the state machine the swarm drives.
public struct DialRanker: Sendable, Hashable {
    /// Delay between starting dials to loopback and private-network addresses, which answer fast
    /// or not at all (go-libp2p waits 30 ms between private TCP dials).
    public var localStagger: Duration = .milliseconds(30)
    /// Delay between starting dials to public addresses (go-libp2p: 250 ms before TCP when a
    /// faster transport was tried first; Happy Eyeballs v2 recommends 250 ms).
    public var publicStagger: Duration = .milliseconds(250)
    /// At most this many dials to one peer in flight at once.
    public var maxParallelDials = 8

    /// The defaults above.
    public init() {}

    /// Where an address leads: dialed in this order.
    package enum Locality: Int, Comparable {
        case inProcess, loopback, privateNetwork, publicNetwork, name

        package static func < (lhs: Locality, rhs: Locality) -> Bool { lhs.rawValue < rhs.rawValue }
    }

    /// One address and when its dial may start, counted from the start of the whole dial.
    public struct ScheduledDial: Sendable, Hashable {
        /// The address to dial.
        public var address: Multiaddr
        /// How long after the first dial this one starts (unless an earlier one fails first).
        public var delay: Duration
    }

    /// `addresses` best first, each with its start delay. Duplicates are dropped. Order: in-process
    /// (`/memory`), loopback, private networks, public addresses, then DNS names; within each, plain
    /// TCP before WebSocket (one handshake less) before secure WebSocket, IPv6 before IPv4 for the
    /// same transport (Happy Eyeballs), otherwise as given; relayed (`/p2p-circuit`) addresses
    /// come after all direct ones.
    public func rank(_ addresses: [Multiaddr]) -> [ScheduledDial] {
        var seen = Set<Multiaddr>()
        let unique = addresses.filter { seen.insert($0).inserted }
        let keyed = unique.enumerated().map { index, address in
            (address: address, locality: Self.locality(of: address), transport: Self.transportRank(of: address),
             family: Self.familyRank(of: address), index: index)
        }
        let sorted = keyed.sorted { a, b in
            // Relayed (circuit) addresses after every direct one: a relay is the fallback.
            if a.address.isCircuit != b.address.isCircuit { return !a.address.isCircuit }
            if a.locality != b.locality { return a.locality < b.locality }
            if a.transport != b.transport { return a.transport < b.transport }
            if a.family != b.family { return a.family < b.family }
            return a.index < b.index
        }
        var delay = Duration.zero
        var out: [ScheduledDial] = []
        for (position, entry) in sorted.enumerated() {
            if position > 0 {
                delay += entry.locality <= .privateNetwork ? localStagger : publicStagger
            }
            out.append(ScheduledDial(address: entry.address, delay: delay))
        }
        return out
    }

    package static func locality(of address: Multiaddr) -> Locality {
        guard let first = address.components.first else { return .name }
        switch first {
        case .memory: return .inProcess
        case .ip4(let ip):
            let bytes = ip.bytes
            if bytes[0] == 127 { return .loopback }
            // RFC 1918, link-local (169.254/16) and CGNAT (100.64/10) are not the open internet.
            if bytes[0] == 10 || (bytes[0] == 172 && (bytes[1] & 0xF0) == 16) || (bytes[0] == 192 && bytes[1] == 168)
                || (bytes[0] == 169 && bytes[1] == 254) || (bytes[0] == 100 && (bytes[1] & 0xC0) == 64)
            {
                return .privateNetwork
            }
            return .publicNetwork
        case .ip6(let ip):
            let bytes = ip.bytes
            if bytes.dropLast().allSatisfy({ $0 == 0 }) && bytes.last == 1 { return .loopback }
            // fc00::/7 unique local, fe80::/10 link-local.
            if (bytes[0] & 0xFE) == 0xFC || (bytes[0] == 0xFE && (bytes[1] & 0xC0) == 0x80) { return .privateNetwork }
            return .publicNetwork
        default: return .name
        }
    }

    static func transportRank(of address: Multiaddr) -> Int {
        var rank = 0
        for component in address.components {
            switch component {
            case .ws: rank = max(rank, 1)
            case .wss, .tls: rank = max(rank, 2)
            default: continue
            }
        }
        return rank
    }

    static func familyRank(of address: Multiaddr) -> Int {
        if case .ip6 = address.components.first { return 0 }
        return 1
    }
}

/// The staggered dial of one peer as a state machine: which addresses to start now, what to do
/// when one fails, and when to look again. The driver (the swarm) starts what `due` returns,
/// reports failures, and sleeps until `nextStart` when nothing is due.
struct DialSchedule: Sendable {
    private var pending: [DialRanker.ScheduledDial]
    private(set) var inFlight = 0
    private let maxParallel: Int
    private let start: ContinuousClock.Instant
    /// Shifted back when a dial fails, so the next one starts at once instead of after its delay.
    private var credit: Duration = .zero

    init(_ dials: [DialRanker.ScheduledDial], maxParallel: Int, start: ContinuousClock.Instant) {
        self.pending = dials
        self.maxParallel = max(1, maxParallel)
        self.start = start
    }

    /// Whether every dial has been started and finished.
    var isExhausted: Bool { pending.isEmpty && inFlight == 0 }

    /// The addresses to start at `now` (marked in flight).
    mutating func due(now: ContinuousClock.Instant) -> [Multiaddr] {
        var out: [Multiaddr] = []
        while inFlight < maxParallel, let next = pending.first, start + next.delay - credit <= now {
            pending.removeFirst()
            inFlight += 1
            out.append(next.address)
        }
        // Nothing in flight and something pending: start it now rather than leave the line idle.
        if inFlight == 0, !pending.isEmpty {
            let next = pending.removeFirst()
            credit = max(credit, (start + next.delay) - now)
            inFlight += 1
            out.append(next.address)
        }
        return out
    }

    /// A started dial failed: the next pending one may start at once.
    mutating func failed(now: ContinuousClock.Instant) {
        inFlight -= 1
        if let next = pending.first {
            credit = max(credit, (start + next.delay) - now)
        }
    }

    /// When the next pending dial is due (nil: none pending, or the parallel limit is reached).
    var nextStart: ContinuousClock.Instant? {
        guard inFlight < maxParallel, let next = pending.first else { return nil }
        return start + next.delay - credit
    }
}
