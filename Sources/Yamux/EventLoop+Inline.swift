import NIOCore

extension EventLoop {
    /// Runs `body` on this loop and returns its future's value.
    ///
    /// Called from a task that already runs on this loop (NIO's event loops as the concurrency
    /// executor, as the CLI and the benchmarks install them), `body` runs right here: no job is
    /// queued on the loop, and when its future is complete already (a write the socket took at
    /// once) the task does not even suspend. Otherwise it is submitted to the loop as usual.
    /// Only for async callers: they never run inside a channel handler's callback, so `body`
    /// cannot re-enter one.
    func runInline<T: Sendable>(_ body: @escaping @Sendable () -> EventLoopFuture<T>) async throws -> T {
        guard inEventLoop else { return try await flatSubmit(body).get() }
        let future = body()
        if let completed = future.resultIfCompleted() { return try completed.get() }
        return try await future.get()
    }
}

extension EventLoopFuture {
    /// The result if the future is complete already. Call on its event loop.
    fileprivate func resultIfCompleted() -> Result<Value, any Error>? {
        var completed: Result<Value, any Error>?
        // On the loop, a completed future runs its callback synchronously.
        assumeIsolated().whenComplete { completed = $0 }
        return completed
    }
}
