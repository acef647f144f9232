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

/// Runs `operation` in its own task and returns its result, unless `deadline` passes first (throws
/// what `onTimeout` returns) or the calling task is cancelled (throws `CancellationError`).
///
/// In both cases the operation's task is cancelled but not waited for, so an operation that ignores
/// cancellation cannot hold the caller (a task group would wait for it). `started` receives the
/// operation's task (to cancel it from elsewhere); `discard` receives a result that came too late
/// to be delivered (to close a stream nobody will use). A nil deadline never passes. The timer
/// runs on `eventLoop` (cheaper than a sleeping task).
public func withDeadline<T: Sendable>(
    _ deadline: Deadline?,
    on eventLoop: any EventLoop,
    onTimeout: @escaping @Sendable () -> any Error,
    started: (Task<Void, Never>) -> Void = { _ in },
    discard: @escaping @Sendable (T) -> Void = { _ in },
    _ operation: @escaping @Sendable () async throws -> T
) async throws -> T {
    let race = DeadlineRace<T>()
    let task = Task {
        do {
            let value = try await operation()
            if !race.decide(.success(value)) { discard(value) }
        } catch {
            race.decide(.failure(error))
        }
    }
    started(task)
    let timer = deadline.map { deadline in
        deadline.schedule(on: eventLoop) {
            if race.decide(.failure(onTimeout())) { task.cancel() }
        }
    }
    defer { timer?.cancel() }
    return try await withTaskCancellationHandler {
        try await withCheckedThrowingContinuation { race.wait($0) }
    } onCancel: {
        if race.decide(.failure(CancellationError())) { task.cancel() }
    }
}

/// The rendezvous between an operation's task, a timer and the waiting caller: whoever comes
/// first decides the outcome; the others find it decided. All state is under the lock.
private final class DeadlineRace<T: Sendable>: Sendable {
    private enum State {
        case pending(CheckedContinuation<T, any Error>?)
        case decided(Result<T, any Error>)
        case delivered
    }

    private let state = NIOLockedValueBox<State>(.pending(nil))

    /// Decides the outcome if nobody did yet. Returns whether this call decided it.
    @discardableResult
    func decide(_ result: Result<T, any Error>) -> Bool {
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

    func wait(_ continuation: CheckedContinuation<T, any Error>) {
        let result = state.withLockedValue { s -> Result<T, any Error>? in
            switch s {
            case .pending:
                s = .pending(continuation)
                return nil
            case .decided(let result):
                s = .delivered
                return result
            case .delivered:
                preconditionFailure("a deadline race is waited for once")
            }
        }
        if let result { continuation.resume(with: result) }
    }
}
