import NIOConcurrencyHelpers

/// A one-shot gate tests open to let a handler go on.
public final class Gate: Sendable {
    private let state = NIOLockedValueBox<(open: Bool, waiters: [CheckedContinuation<Void, Never>])>((false, []))

    public init() {}

    public func wait() async {
        await withCheckedContinuation { continuation in
            let resume = state.withLockedValue { s -> Bool in
                if s.open { return true }
                s.waiters.append(continuation)
                return false
            }
            if resume { continuation.resume() }
        }
    }

    public func open() {
        let waiters = state.withLockedValue { s in
            s.open = true
            defer { s.waiters = [] }
            return s.waiters
        }
        for waiter in waiters { waiter.resume() }
    }

    public var isOpen: Bool { state.withLockedValue { $0.open } }
}
