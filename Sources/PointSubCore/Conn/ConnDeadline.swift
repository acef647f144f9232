import Basics
import NIOConcurrencyHelpers
import NIOCore

/// One direction's deadline (read or write) of a `PointSubConnection`: a `Deadline` that can be
/// moved or cleared at any time, as Go's `net.Conn` deadlines.
///
/// An operation that waits `watch`es it: its handler runs once the deadline (as it is then)
/// passes, from the timer on the connection's event loop (`Deadline.schedule`), which `set`
/// re-arms whenever the deadline moves. So a deadline set, moved or cleared while an operation is
/// pending takes effect for that operation too.
final class ConnDeadline: Sendable {
    private struct State {
        var deadline: Deadline?
        var timer: Scheduled<Void>?
        /// The handlers of the pending operations, by ID (so one can remove itself).
        var watchers: [UInt64: @Sendable () -> Void] = [:]
        var nextID: UInt64 = 0
    }

    private let eventLoop: any EventLoop
    private let state = NIOLockedValueBox(State())

    /// A deadline with none set; its timer runs on `eventLoop`.
    init(eventLoop: any EventLoop) { self.eventLoop = eventLoop }

    /// The deadline now; nil: none.
    var deadline: Deadline? { state.withLockedValue { $0.deadline } }

    /// Whether a deadline is set and has passed.
    var hasPassed: Bool { deadline?.hasPassed ?? false }

    /// Sets (nil: clears) the deadline; the pending operations' handlers run when it passes (at
    /// once if it has).
    func set(_ deadline: Deadline?) {
        let (old, expired) = state.withLockedValue { s in
            let old = s.timer
            s.timer = nil
            s.deadline = deadline
            return (old, arm(&s))
        }
        old?.cancel()
        for handler in expired { handler() }
    }

    /// Runs `expired` once the deadline passes (at once, before returning, if it has), unless
    /// `unwatch` comes first. Returns the ID for `unwatch`.
    func watch(_ expired: @escaping @Sendable () -> Void) -> UInt64 {
        let (id, now) = state.withLockedValue { s -> (UInt64, [@Sendable () -> Void]) in
            defer { s.nextID &+= 1 }
            s.watchers[s.nextID] = expired
            return (s.nextID, arm(&s))
        }
        for handler in now { handler() }
        return id
    }

    /// Forgets an operation's handler (the operation ended).
    func unwatch(_ id: UInt64) {
        let idle = state.withLockedValue { s -> Scheduled<Void>? in
            s.watchers[id] = nil
            guard s.watchers.isEmpty else { return nil }
            defer { s.timer = nil }
            return s.timer
        }
        idle?.cancel()
    }

    /// Under the lock: returns the handlers to run now (and forgets them) if the deadline has
    /// passed; otherwise arms the timer for it if someone watches it and none is armed.
    private func arm(_ s: inout State) -> [@Sendable () -> Void] {
        guard let deadline = s.deadline, !s.watchers.isEmpty else { return [] }
        if deadline.hasPassed {
            defer { s.watchers = [:] }
            return Array(s.watchers.values)
        }
        if s.timer == nil {
            s.timer = deadline.schedule(on: eventLoop) { [weak self] in self?.timerFired(for: deadline) }
        }
        return []
    }

    private func timerFired(for deadline: Deadline) {
        let expired = state.withLockedValue { s -> [@Sendable () -> Void] in
            // A timer of a deadline moved since does nothing; one that fired a hair early re-arms.
            guard s.deadline == deadline else { return [] }
            s.timer = nil
            return arm(&s)
        }
        for handler in expired { handler() }
    }
}

/// A one-shot signal: `wait()` returns once `fire()` was called (before or after), or when the
/// waiting task is cancelled. A listener's stream handler waits on it so the host keeps the stream
/// open until the accepted connection is done with it.
final class ConnSignal: Sendable {
    private struct State {
        var fired = false
        var waiters: [UInt64: CheckedContinuation<Void, Never>] = [:]
        var nextID: UInt64 = 0
    }

    private let state = NIOLockedValueBox(State())

    func fire() {
        let waiters = state.withLockedValue { s -> [CheckedContinuation<Void, Never>] in
            s.fired = true
            defer { s.waiters = [:] }
            return Array(s.waiters.values)
        }
        for waiter in waiters { waiter.resume() }
    }

    func wait() async {
        let id = state.withLockedValue { s in
            defer { s.nextID &+= 1 }
            return s.nextID
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let now = state.withLockedValue { s -> Bool in
                    if s.fired || Task.isCancelled { return true }
                    s.waiters[id] = continuation
                    return false
                }
                if now { continuation.resume() }
            }
        } onCancel: {
            let waiter = state.withLockedValue { $0.waiters.removeValue(forKey: id) }
            waiter?.resume()
        }
    }
}
