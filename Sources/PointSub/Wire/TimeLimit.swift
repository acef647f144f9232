import NIOConcurrencyHelpers
import NIOCore

/// Thrown by `runWithTimeLimit` when the limit passed.
struct TimeLimitExceeded: Error {}

/// The rendezvous between an operation task, a timer and the waiting caller: whoever comes
/// first decides the outcome; the others find it decided. All state is under the lock.
private final class Race<T: Sendable>: Sendable {
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
                preconditionFailure("a race is waited for once")
            }
        }
        if let result { continuation.resume(with: result) }
    }
}

/// Runs `operation` in its own task and returns its result, unless `limit` passes first (throws
/// `TimeLimitExceeded`) or the calling task is cancelled (throws `CancellationError`). In both
/// cases the operation task is cancelled but not waited for, so an operation that ignores
/// cancellation cannot hold the caller. `started` receives the operation task (e.g. to cancel
/// it from elsewhere); `discard` receives a result that came too late to be delivered (e.g. to
/// close a stream nobody will use). The timer runs on `eventLoop` (cheaper than a sleeping task).
func runWithTimeLimit<T: Sendable>(
    _ limit: Duration?,
    on eventLoop: any EventLoop,
    started: (Task<Void, Never>) -> Void = { _ in },
    discard: @escaping @Sendable (T) -> Void = { _ in },
    _ operation: @escaping @Sendable () async throws -> T
) async throws -> T {
    let race = Race<T>()
    let task = Task {
        do {
            let value = try await operation()
            if !race.decide(.success(value)) { discard(value) }
        } catch {
            race.decide(.failure(error))
        }
    }
    started(task)
    let timer = limit.map { limit in
        eventLoop.scheduleTask(in: TimeAmount(limit)) {
            if race.decide(.failure(TimeLimitExceeded())) { task.cancel() }
        }
    }
    defer { timer?.cancel() }
    return try await withTaskCancellationHandler {
        try await withCheckedThrowingContinuation { race.wait($0) }
    } onCancel: {
        if race.decide(.failure(CancellationError())) { task.cancel() }
    }
}

extension Duration {
    var seconds: Double {
        let (seconds, attoseconds) = components
        return Double(seconds) + Double(attoseconds) / 1e18
    }
}
