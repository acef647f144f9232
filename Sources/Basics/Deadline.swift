import NIOConcurrencyHelpers
import NIOCore

/// The one way to bound an operation in time: a point on the continuous clock by which it must
/// finish. Configuration speaks in `Duration`s; code turns one into a `Deadline` once (`after`) and
/// passes the deadline down, so nested steps share one budget instead of each starting its own.
public struct Deadline: Sendable, Hashable, Comparable, CustomStringConvertible {
    /// When the deadline passes.
    public var instant: ContinuousClock.Instant

    /// The deadline at `instant`.
    public init(_ instant: ContinuousClock.Instant) { self.instant = instant }

    /// The deadline `duration` from now.
    public static func after(_ duration: Duration) -> Deadline { Deadline(.now + duration) }

    /// A deadline that has passed already (no time at all, e.g. a stop without grace).
    public static var now: Deadline { Deadline(.now) }

    /// The time left (zero once passed).
    public var remaining: Duration { max(.zero, instant - .now) }

    /// Whether the deadline has passed.
    public var hasPassed: Bool { instant <= .now }

    /// The time left, for NIO APIs (connect timeouts, scheduled tasks).
    public var timeAmount: TimeAmount { TimeAmount(remaining) }

    /// Runs `body` on `eventLoop` when the deadline passes, unless the returned task is cancelled
    /// first: the timer of an event-loop state machine (a handshake, a negotiation, an upgrade).
    @discardableResult
    public func schedule(on eventLoop: any EventLoop, _ body: @escaping @Sendable () -> Void) -> Scheduled<Void> {
        eventLoop.scheduleTask(in: timeAmount, body)
    }

    /// The earlier of two deadlines.
    public func earlier(_ other: Deadline?) -> Deadline {
        guard let other else { return self }
        return min(self, other)
    }

    /// Orders by instant.
    public static func < (lhs: Deadline, rhs: Deadline) -> Bool { lhs.instant < rhs.instant }

    /// The time left, e.g. `in 1.5 seconds`.
    public var description: String { "in \(remaining)" }
}

extension Duration {
    /// The duration in seconds, e.g. 1.5 (for rates, reports and JSON). The package's one
    /// conversion of a `Duration` to a number; NIO's `TimeAmount(_:)` converts to NIO's type.
    public var seconds: Double {
        let (seconds, attoseconds) = components
        return Double(seconds) + Double(attoseconds) / 1e18
    }
}

/// Runs `operation` in its own task and returns its result, unless `deadline` passes first (throws
/// what `onTimeout` returns) or the calling task is cancelled (throws `CancellationError`).
///
/// In both cases the operation's task is cancelled but not waited for, so an operation that ignores
/// cancellation cannot hold the caller (a task group would wait for it). `started` receives the
/// operation's task (to cancel it from elsewhere); `discard` receives a result that came too late
/// to be delivered (to close a stream nobody will use). A nil deadline never passes. The timer
/// runs on `eventLoop` (cheaper than a sleeping task).
///
/// A deadline that has passed already, or a caller cancelled already, ends the call at once
/// without starting the operation (`started` is not called then).
///
/// To wait for a task without cancelling it (e.g. a dial others may share), await its `value` in
/// the operation: awaiting a task's value ignores the waiter's cancellation.
public func withDeadline<T: Sendable>(
    _ deadline: Deadline?,
    on eventLoop: any EventLoop,
    onTimeout: @escaping @Sendable () -> any Error,
    started: (Task<Void, Never>) -> Void = { _ in },
    discard: @escaping @Sendable (T) -> Void = { _ in },
    _ operation: @escaping @Sendable () async throws -> T
) async throws -> T {
    if Task.isCancelled { throw CancellationError() }
    if let deadline, deadline.hasPassed { throw onTimeout() }
    let outcome = FirstOutcome<T>()
    let task = Task {
        do {
            let value = try await operation()
            if !outcome.decide(.success(value)) { discard(value) }
        } catch {
            outcome.decide(.failure(error))
        }
    }
    started(task)
    let timer = deadline.map { deadline in
        deadline.schedule(on: eventLoop) {
            if outcome.decide(.failure(onTimeout())) { task.cancel() }
        }
    }
    defer { timer?.cancel() }
    return try await outcome.wait(onCancelled: { task.cancel() })
}

/// A result decided once and awaited by one task: the first `decide` wins, later ones are
/// dropped. The rendezvous of `withDeadline` (operation, timer, caller's cancellation), and of
/// any wait with more contenders (e.g. a write, its connection's deadline and `close()`).
/// All state is under the lock.
package final class FirstOutcome<T: Sendable>: Sendable {
    private enum State {
        case pending(CheckedContinuation<T, any Error>?)
        case decided(Result<T, any Error>)
        case delivered
    }

    private let state = NIOLockedValueBox<State>(.pending(nil))

    /// An undecided outcome.
    package init() {}

    /// Decides the outcome if nobody did yet. Returns whether this call decided it.
    @discardableResult
    package func decide(_ result: Result<T, any Error>) -> Bool {
        let (won, continuation) = state.withLockedValue { s -> (Bool, CheckedContinuation<T, any Error>?) in
            guard case .pending(let continuation) = s else { return (false, nil) }
            if let continuation {
                s = .delivered
                return (true, continuation)
            }
            s = .decided(result)
            return (true, nil)
        }
        continuation?.resume(with: result)
        return won
    }

    /// Waits for the outcome (once). Cancelling the waiting task decides it as `CancellationError`;
    /// `onCancelled` then runs if that decision won.
    package func wait(onCancelled: @escaping @Sendable () -> Void = {}) async throws -> T {
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { register($0) }
        } onCancel: {
            if self.decide(.failure(CancellationError())) { onCancelled() }
        }
    }

    private func register(_ continuation: CheckedContinuation<T, any Error>) {
        let result = state.withLockedValue { s -> Result<T, any Error>? in
            switch s {
            case .pending(nil):
                s = .pending(continuation)
                return nil
            case .decided(let result):
                s = .delivered
                return result
            case .pending(.some), .delivered:
                preconditionFailure("an outcome is waited for once")
            }
        }
        if let result { continuation.resume(with: result) }
    }
}
