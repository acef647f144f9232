import NIOConcurrencyHelpers

/// One direction's deadline (read or write) of a `PointSubConnection`.
///
/// Operations race their work against `waitUntilPassed()`, which re-arms itself whenever `set`
/// changes the deadline: a deadline set (or moved) while an operation is pending takes effect
/// for that operation too.
final class ConnDeadline: Sendable {
    private struct State {
        var instant: ContinuousClock.Instant?
        /// Bumped by every `set`, so a waiter knows whether it saw the newest deadline.
        var generation: UInt64 = 0
        /// Waiters for the next change, by ID (so a cancelled one can remove itself).
        var waiters: [UInt64: CheckedContinuation<Void, Never>] = [:]
        var nextWaiterID: UInt64 = 0
    }

    private let state = NIOLockedValueBox(State())

    var instant: ContinuousClock.Instant? { state.withLockedValue { $0.instant } }

    /// Whether a deadline is set and has passed.
    var hasPassed: Bool {
        guard let instant else { return false }
        return instant <= .now
    }

    /// Sets (nil: clears) the deadline and wakes the waiters so they re-arm.
    func set(_ instant: ContinuousClock.Instant?) {
        let waiters = state.withLockedValue { s in
            s.instant = instant
            s.generation &+= 1
            defer { s.waiters = [:] }
            return Array(s.waiters.values)
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Returns once the deadline (as it is at that time) has passed. Throws `CancellationError`
    /// when the task is cancelled.
    func waitUntilPassed() async throws {
        while true {
            try Task.checkCancellation()
            let (instant, generation) = state.withLockedValue { ($0.instant, $0.generation) }
            guard let instant else {
                await changed(since: generation)
                continue
            }
            if instant <= .now { return }
            // Until the deadline, or until someone moves it, whichever is first.
            await withTaskGroup(of: Void.self) { group in
                group.addTask { try? await Task.sleep(until: instant, clock: .continuous) }
                group.addTask { await self.changed(since: generation) }
                await group.next()
                group.cancelAll()
            }
        }
    }

    /// Returns when the deadline changes after `generation`, or when the task is cancelled.
    private func changed(since generation: UInt64) async {
        let id = state.withLockedValue { s in
            defer { s.nextWaiterID &+= 1 }
            return s.nextWaiterID
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let resumeNow = state.withLockedValue { s -> Bool in
                    // Checked under the lock: either the cancellation is seen here, or the
                    // handler runs after the waiter is stored and resumes it.
                    if s.generation != generation || Task.isCancelled { return true }
                    s.waiters[id] = continuation
                    return false
                }
                if resumeNow { continuation.resume() }
            }
        } onCancel: {
            let waiter = state.withLockedValue { $0.waiters.removeValue(forKey: id) }
            waiter?.resume()
        }
    }
}

/// A result delivered at most once, awaited by one task: the first `complete` wins, later ones
/// are ignored. Used to race a write that cannot be cancelled against its deadline and `close()`.
final class ConnOutcome: Sendable {
    private enum State {
        case pending
        case waiting(CheckedContinuation<Void, any Error>)
        case done(Result<Void, any Error>)
        case delivered
    }

    private let state = NIOLockedValueBox(State.pending)

    /// Returns whether this call decided the outcome.
    @discardableResult
    func complete(_ result: Result<Void, any Error>) -> Bool {
        let (decided, waiter) = state.withLockedValue { s -> (Bool, CheckedContinuation<Void, any Error>?) in
            switch s {
            case .pending:
                s = .done(result)
                return (true, nil)
            case .waiting(let continuation):
                s = .delivered
                return (true, continuation)
            case .done, .delivered:
                return (false, nil)
            }
        }
        waiter?.resume(with: result)
        return decided
    }

    /// Waits for the outcome; cancelling the task completes it with `CancellationError`.
    func wait() async throws {
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let ready = state.withLockedValue { s -> Result<Void, any Error>? in
                    switch s {
                    case .pending:
                        s = .waiting(continuation)
                        return nil
                    case .done(let result):
                        s = .delivered
                        return result
                    case .waiting, .delivered:
                        return .failure(PointSubNetError(.closed, "outcome awaited twice"))
                    }
                }
                if let ready { continuation.resume(with: ready) }
            }
        } onCancel: {
            complete(.failure(CancellationError()))
        }
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
