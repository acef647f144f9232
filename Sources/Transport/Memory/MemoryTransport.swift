import Multiformats
import NIOConcurrencyHelpers
import NIOCore

/// The in-memory transport: listens on and dials `/memory/<n>` within this process, over
/// ``MemoryChannel`` pairs (no sockets or file descriptors), for in-process networks and tests.
///
/// Listeners live in one process-wide registry. `/memory/0` binds a fresh unused number;
/// `/memory/<n>` binds `n` or fails with `listenFailed` if it is taken. A dial to a number nobody
/// listens on fails with `connectionRefused`.
///
/// The accepting side learns the dialer as `/memory/<d>`, where `d` is a number taken for the
/// connection's lifetime (like an ephemeral port; nobody can listen on it meanwhile), and as the
/// source `memory-<t>`, where `t` identifies the dialing transport instance: a host builds one
/// transport, so the resource manager's per-address limits count connections per dialing host,
/// as they count them per remote machine over TCP.
public struct MemoryTransport: Transport {
    /// Where this transport's ends of connections run (dialed and accepted ones alike).
    public let group: any EventLoopGroup
    private let instance: UInt64

    /// A transport on `group` (never shut down by the transport).
    public init(group: any EventLoopGroup) {
        self.group = group
        self.instance = MemoryRegistry.shared.takeInstanceNumber()
    }

    /// The number of a `/memory/<n>` address (a trailing `/p2p/…` is ignored), nil for another.
    public static func memoryNumber(_ address: Multiaddr) -> UInt64? {
        let parts = address.removingPeerID().components
        guard parts.count == 1, case .memory(let number) = parts[0] else { return nil }
        return number
    }

    /// Whether `address` is `/memory/<n>`.
    public func canDial(_ address: Multiaddr) -> Bool { Self.memoryNumber(address) != nil }

    /// Whether `address` is `/memory/<n>`.
    public func canListen(_ address: Multiaddr) -> Bool { Self.memoryNumber(address) != nil }

    /// Connects to the listener on `address`: `initializer` runs on this end, the listener's
    /// acceptor on the other, and this end becomes active once its initializer is done. The
    /// connection is made at once, so `options` do not apply.
    public func dial(
        _ address: Multiaddr, options: DialOptions, initializer: @escaping ConnectionInitializer
    ) async throws -> any Channel {
        guard let number = Self.memoryNumber(address) else {
            throw TransportError(.unsupportedAddress, "not a memory address: \(address)")
        }
        guard let (listener, dialerNumber) = MemoryRegistry.shared.connect(to: number) else {
            throw TransportError(
                .connectionRefused, "cannot connect to \(address): connection refused", reason: "connection refused")
        }
        // Each end has an address of its own, as TCP's ends have (the dialer's like an ephemeral port).
        let (local, remote) = MemoryChannel.makePair(
            group.next(), listener.group.next(),
            firstAddress: Multiaddr([.memory(dialerNumber)]), secondAddress: Multiaddr([.memory(number)]))
        local.closeFuture.whenComplete { _ in MemoryRegistry.shared.release(dialerNumber: dialerNumber) }
        let endpoint = RemoteEndpoint(
            address: Multiaddr([.memory(dialerNumber)]), source: "memory-\(instance)")
        remote.eventLoop.execute {
            listener.acceptor(remote, endpoint).whenComplete { result in
                switch result {
                case .success: remote.activate().whenFailure { _ in remote.close(promise: nil) }
                case .failure: remote.close(promise: nil)
                }
            }
        }
        let loop = local.eventLoop
        do {
            try await loop.flatSubmit { initializer(local).flatMap { local.activate() } }.get()
        } catch ChannelError.ioOnClosedChannel {
            // The acceptor closed the connection before this end was active (e.g. a limit).
            throw TransportError(
                .connectionFailed, "cannot connect to \(address): closed by the listener",
                reason: "closed by the listener")
        } catch {
            local.close(promise: nil)
            throw TransportError(
                .connectionFailed, "cannot connect to \(address)", reason: "\(error)", cause: error)
        }
        return local
    }

    /// Listens on `/memory/<n>` (`/memory/0`: a fresh number); `acceptor` runs for each accepted
    /// connection on its event loop, before the connection is active.
    public func listen(
        on address: Multiaddr,
        acceptor: @escaping @Sendable (any Channel, RemoteEndpoint) -> EventLoopFuture<Void>
    ) async throws -> any TransportListener {
        guard let requested = Self.memoryNumber(address) else {
            throw TransportError(.unsupportedAddress, "not a memory address: \(address)")
        }
        let entry = MemoryRegistry.Listener(group: group, acceptor: acceptor)
        guard let (number, token) = MemoryRegistry.shared.bind(requested == 0 ? nil : requested, entry) else {
            throw TransportError(
                .listenFailed, "cannot listen on \(address): address in use", reason: "address in use")
        }
        return MemoryListener(number: number, token: token)
    }
}

/// A bound in-memory listener.
public struct MemoryListener: TransportListener {
    /// The bound number (`/memory/<number>`).
    public let number: UInt64
    /// Tells this binding from a later one of the same number.
    let token: UInt64

    /// `/memory/<number>`.
    public var address: Multiaddr { Multiaddr([.memory(number)]) }

    /// Stops listening: the number is free again and dials to it are refused (accepted connections
    /// are not affected).
    public func close() async {
        MemoryRegistry.shared.unbind(number, token: token)
    }
}

/// The process-wide table of in-memory listeners and of the numbers dialers hold.
final class MemoryRegistry: Sendable {
    struct Listener: Sendable {
        let group: any EventLoopGroup
        let acceptor: @Sendable (any Channel, RemoteEndpoint) -> EventLoopFuture<Void>
    }

    private struct Binding {
        let listener: Listener
        let token: UInt64
    }

    private struct State {
        var listeners: [UInt64: Binding] = [:]
        var dialers: Set<UInt64> = []
        var nextNumber: UInt64 = 1
        var nextInstance: UInt64 = 1
        var nextToken: UInt64 = 1

        /// A number neither listened on nor held by a dialer (never 0, which means "any").
        /// Terminates: fewer numbers are taken than there are 64-bit values.
        mutating func fresh() -> UInt64 {
            while true {
                let candidate = nextNumber
                nextNumber = nextNumber == .max ? 1 : nextNumber + 1
                if listeners[candidate] == nil && !dialers.contains(candidate) { return candidate }
            }
        }
    }

    static let shared = MemoryRegistry()

    private let state = NIOLockedValueBox(State())

    func takeInstanceNumber() -> UInt64 {
        state.withLockedValue { s in
            defer { s.nextInstance &+= 1 }
            return s.nextInstance
        }
    }

    /// Binds `number` (nil: a fresh one): the number and the binding's token, nil if it is taken.
    func bind(_ number: UInt64?, _ listener: Listener) -> (number: UInt64, token: UInt64)? {
        state.withLockedValue { s in
            let chosen = number ?? s.fresh()
            guard s.listeners[chosen] == nil, !s.dialers.contains(chosen) else { return nil }
            let token = s.nextToken
            s.nextToken &+= 1
            s.listeners[chosen] = Binding(listener: listener, token: token)
            return (chosen, token)
        }
    }

    /// Unbinds `number` if it is still the binding `token` (a second close of a listener must not
    /// remove a later listener on the same number).
    func unbind(_ number: UInt64, token: UInt64) {
        state.withLockedValue { s in
            if s.listeners[number]?.token == token { s.listeners[number] = nil }
        }
    }

    /// The listener on `number` and a fresh number for the dialer's end, held until
    /// ``release(dialerNumber:)``; nil if nobody listens on `number`.
    func connect(to number: UInt64) -> (Listener, UInt64)? {
        state.withLockedValue { s in
            guard let listener = s.listeners[number]?.listener else { return nil }
            let dialer = s.fresh()
            s.dialers.insert(dialer)
            return (listener, dialer)
        }
    }

    func release(dialerNumber: UInt64) {
        _ = state.withLockedValue { $0.dialers.remove(dialerNumber) }
    }
}
