import Basics
import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import Testing

/// The timeout error the tests' operations throw.
private struct TestTimeout: Error {}

/// A flag set from another task.
private final class Flag: Sendable {
    private let value = NIOLockedValueBox(false)
    var isSet: Bool { value.withLockedValue { $0 } }
    func set() { value.withLockedValue { $0 = true } }
}

/// Waits (bounded: about 5 s) until `condition` holds; returns whether it did.
private func eventually(_ condition: () -> Bool) async -> Bool {
    for _ in 0..<1000 {
        if condition() { return true }
        try? await Task.sleep(for: .milliseconds(5))
    }
    return condition()
}

/// Advances `loop`'s virtual time by `step` until `done` is set (bounded), so a timer scheduled
/// after the first advance is reached as well.
private func advance(_ loop: NIOAsyncTestingEventLoop, by step: TimeAmount, until done: Flag) async {
    for _ in 0..<100 where !done.isSet {
        await loop.advanceTime(by: step)
        try? await Task.sleep(for: .milliseconds(5))
    }
}

/// Shuts `loop` down once the work queued on it ran: a timer cancelled from outside the loop
/// finishes cancelling there (shutting down first would drop that and trip NIO's promise-leak check).
private func finish(_ loop: NIOAsyncTestingEventLoop) async {
    await loop.run()
    await loop.shutdownGracefully()
}

@Suite struct DeadlineTests {
    @Test func afterRemainingAndOrder() {
        let soon = Deadline.after(.seconds(10))
        let later = Deadline.after(.seconds(20))
        #expect(soon < later)
        #expect(!soon.hasPassed)
        #expect(soon.remaining > .seconds(9) && soon.remaining <= .seconds(10))
        #expect(soon.timeAmount > .seconds(9) && soon.timeAmount <= .seconds(10))
        #expect(soon.earlier(later) == soon)
        #expect(later.earlier(soon) == soon)
        #expect(soon.earlier(nil) == soon)
        let past = Deadline(.now - .seconds(1))
        #expect(past.hasPassed)
        #expect(past.remaining == .zero)
        #expect(past.timeAmount == .zero)
        #expect(Deadline.now.hasPassed)
    }

    @Test func durationInSeconds() {
        #expect(Duration.seconds(3).seconds == 3)
        #expect(Duration.milliseconds(1500).seconds == 1.5)
        #expect(Duration.milliseconds(-250).seconds == -0.25)
    }

    @Test func scheduleRunsWhenTheDeadlinePasses() async {
        let loop = NIOAsyncTestingEventLoop()
        let fired = Flag()
        Deadline.after(.seconds(30)).schedule(on: loop) { fired.set() }
        await loop.advanceTime(by: .seconds(29))
        #expect(!fired.isSet)
        await loop.advanceTime(by: .seconds(2))
        #expect(fired.isSet)
        await finish(loop)
    }
}

@Suite struct WithDeadlineTests {
    @Test func resultBeforeTheDeadlineIsReturnedAndTheTimerCancelled() async throws {
        let loop = NIOAsyncTestingEventLoop()
        let timedOut = Flag()
        let value = try await withDeadline(.after(.seconds(10)), on: loop, onTimeout: {
            timedOut.set()
            return TestTimeout()
        }) { 5 }
        #expect(value == 5)
        await loop.advanceTime(by: .seconds(20))
        #expect(!timedOut.isSet)
        await finish(loop)
    }

    @Test func timeoutThrowsTheLayersErrorAndCancelsTheOperation() async throws {
        let loop = NIOAsyncTestingEventLoop()
        let operationCancelled = Flag()
        let done = Flag()
        let call = Task {
            defer { done.set() }
            return try await withDeadline(.after(.seconds(10)), on: loop, onTimeout: { TestTimeout() }) {
                try? await Task.sleep(for: .seconds(3600))
                if Task.isCancelled { operationCancelled.set() }
                return 1
            }
        }
        await advance(loop, by: .seconds(11), until: done)
        await #expect(throws: TestTimeout.self) { try await call.value }
        #expect(await eventually { operationCancelled.isSet })
        await finish(loop)
    }

    @Test func aLateResultGoesToDiscard() async throws {
        let loop = NIOAsyncTestingEventLoop()
        let discarded = NIOLockedValueBox<[Int]>([])
        let done = Flag()
        let call = Task {
            defer { done.set() }
            return try await withDeadline(
                .after(.seconds(10)), on: loop, onTimeout: { TestTimeout() },
                discard: { value in discarded.withLockedValue { $0.append(value) } }
            ) {
                // Ignores cancellation: a future's get() waits for the future.
                try await loop.scheduleTask(in: .seconds(30)) { 42 }.futureResult.get()
            }
        }
        await advance(loop, by: .seconds(11), until: done)
        await #expect(throws: TestTimeout.self) { try await call.value }
        #expect(discarded.withLockedValue { $0 }.isEmpty)
        for _ in 0..<20 where discarded.withLockedValue({ $0 }).isEmpty {
            await loop.advanceTime(by: .seconds(30))
            _ = await eventually { !discarded.withLockedValue { $0 }.isEmpty }
        }
        #expect(discarded.withLockedValue { $0 } == [42])
        await finish(loop)
    }

    @Test func callerCancellationThrowsCancellationErrorAndCancelsTheOperation() async throws {
        let loop = NIOAsyncTestingEventLoop()
        let running = Flag()
        let operationCancelled = Flag()
        let startedTask = NIOLockedValueBox<Task<Void, Never>?>(nil)
        let call = Task {
            try await withDeadline(
                nil, on: loop, onTimeout: { TestTimeout() }, started: { task in startedTask.withLockedValue { $0 = task } }
            ) {
                running.set()
                try? await Task.sleep(for: .seconds(3600))
                if Task.isCancelled { operationCancelled.set() }
                return 1
            }
        }
        #expect(await eventually { running.isSet })
        #expect(startedTask.withLockedValue { $0 } != nil)
        call.cancel()
        await #expect(throws: CancellationError.self) { try await call.value }
        #expect(await eventually { operationCancelled.isSet })
        await finish(loop)
    }

    @Test func aCancelledCallerDoesNotStartTheOperation() async throws {
        let loop = NIOAsyncTestingEventLoop()
        let ran = Flag()
        let call = Task {
            withUnsafeCurrentTask { $0?.cancel() }
            return try await withDeadline(nil, on: loop, onTimeout: { TestTimeout() }) {
                ran.set()
                return 1
            }
        }
        await #expect(throws: CancellationError.self) { try await call.value }
        #expect(!ran.isSet)
        await finish(loop)
    }

    @Test func aNilDeadlineNeverFires() async throws {
        let loop = NIOAsyncTestingEventLoop()
        let timedOut = Flag()
        let done = Flag()
        let call = Task {
            defer { done.set() }
            return try await withDeadline(nil, on: loop, onTimeout: {
                timedOut.set()
                return TestTimeout()
            }) {
                try await loop.scheduleTask(in: .hours(2)) { 7 }.futureResult.get()
            }
        }
        // Hours of virtual time pass on the loop the timer would run on.
        await advance(loop, by: .hours(1), until: done)
        #expect(try await call.value == 7)
        #expect(!timedOut.isSet)
        await finish(loop)
    }

    @Test func aPassedDeadlineFiresAtOnceWithoutStartingTheOperation() async throws {
        let loop = NIOAsyncTestingEventLoop()
        let ran = Flag()
        let started = Flag()
        for deadline in [Deadline(.now - .seconds(1)), Deadline.now, Deadline.after(.zero)] {
            // The loop's time never moves: no timer is needed for a deadline that has passed.
            await #expect(throws: TestTimeout.self) {
                try await withDeadline(deadline, on: loop, onTimeout: { TestTimeout() }, started: { _ in started.set() }) {
                    ran.set()
                    return 1
                }
            }
        }
        #expect(!ran.isSet)
        #expect(!started.isSet)
        await finish(loop)
    }

    @Test func theOperationsErrorIsThrown() async throws {
        struct Refused: Error {}
        let loop = NIOAsyncTestingEventLoop()
        await #expect(throws: Refused.self) {
            try await withDeadline(.after(.seconds(10)), on: loop, onTimeout: { TestTimeout() }) { () async throws -> Int in
                throw Refused()
            }
        }
        await finish(loop)
    }
}

@Suite struct FirstOutcomeTests {
    @Test func theFirstDecisionWins() async throws {
        let outcome = FirstOutcome<Int>()
        #expect(outcome.decide(.success(1)))
        #expect(!outcome.decide(.success(2)))
        #expect(!outcome.decide(.failure(TestTimeout())))
        #expect(try await outcome.wait() == 1)
    }

    @Test func aWaiterIsResumedByALaterDecision() async throws {
        let outcome = FirstOutcome<Int>()
        let waiter = Task { try await outcome.wait() }
        try await Task.sleep(for: .milliseconds(20))
        #expect(outcome.decide(.failure(TestTimeout())))
        await #expect(throws: TestTimeout.self) { try await waiter.value }
    }

    @Test func cancellingTheWaiterDecidesCancellation() async throws {
        let outcome = FirstOutcome<Int>()
        let onCancelled = Flag()
        let waiter = Task { try await outcome.wait(onCancelled: { onCancelled.set() }) }
        waiter.cancel()
        await #expect(throws: CancellationError.self) { try await waiter.value }
        #expect(onCancelled.isSet)
        #expect(!outcome.decide(.success(3)))
    }
}
