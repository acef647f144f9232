import NIOConcurrencyHelpers
import NIOCore

/// Waits for `task` until `deadline` at most: its value, nil if the deadline came first, or
/// `CancellationError` if the caller is cancelled first. The task is never cancelled nor waited
/// for beyond that (awaiting `Task.value` ignores the waiter's cancellation, and a task group
/// would wait for its child), so whatever the task does after the deadline is its own business —
/// e.g. a host dial, which cannot be cancelled and completes on its own schedule. The timer runs
/// on `eventLoop`.
func waitForValue<T: Sendable>(
    of task: Task<T, any Error>, until deadline: ContinuousClock.Instant, on eventLoop: any EventLoop
) async throws -> T? {
    let race = DeadlineRace<T?>()
    return try await withTaskCancellationHandler {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T?, any Error>) in
            guard race.wait(continuation) else { return }
            let timer = eventLoop.scheduleTask(in: TimeAmount(deadline - .now)) { race.decide(.success(nil)) }
            Task {
                let result: Result<T?, any Error>
                do {
                    result = .success(try await task.value)
                } catch {
                    result = .failure(error)
                }
                timer.cancel()
                race.decide(result)
            }
        }
    } onCancel: {
        race.decide(.failure(CancellationError()))
    }
}

/// One continuation, resumed by whoever decides first; later decisions are dropped.
private final class DeadlineRace<T: Sendable>: Sendable {
    private enum State {
        case idle
        case waiting(CheckedContinuation<T, any Error>)
        /// Decided before anyone waited (cancelled before the continuation existed).
        case early(Result<T, any Error>)
        case done
    }

    private let state = NIOLockedValueBox(State.idle)

    /// Registers the waiter; false when the outcome was known already (it is resumed here).
    func wait(_ continuation: CheckedContinuation<T, any Error>) -> Bool {
        let early = state.withLockedValue { s -> Result<T, any Error>? in
            switch s {
            case .idle:
                s = .waiting(continuation)
                return nil
            case .early(let result):
                s = .done
                return result
            case .waiting, .done:
                preconditionFailure("a deadline race is waited for once")
            }
        }
        guard let early else { return true }
        continuation.resume(with: early)
        return false
    }

    func decide(_ result: Result<T, any Error>) {
        let continuation = state.withLockedValue { s -> CheckedContinuation<T, any Error>? in
            switch s {
            case .idle:
                s = .early(result)
                return nil
            case .waiting(let continuation):
                s = .done
                return continuation
            case .early, .done:
                return nil
            }
        }
        continuation?.resume(with: result)
    }
}
