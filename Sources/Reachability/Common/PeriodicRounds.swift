/// A background task that runs `round` on `owner` after `bootDelay`, then again after the wait
/// each round returns, until it is cancelled or the owner is gone (it holds the owner weakly).
func periodicRounds<Owner: AnyObject & Sendable>(
    of owner: Owner, bootDelay: Duration, _ round: @escaping @Sendable (Owner) async -> Duration
) -> Task<Void, Never> {
    Task { [weak owner] in
        guard (try? await Task.sleep(for: bootDelay)) != nil else { return }
        while !Task.isCancelled {
            guard let current = owner else { return }
            let wait = await round(current)
            guard (try? await Task.sleep(for: wait)) != nil else { return }
        }
    }
}
