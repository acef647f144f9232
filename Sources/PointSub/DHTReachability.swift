extension KademliaDHT {
    /// Switches this DHT between server and client mode as `autonat` (AutoNAT v1 or v2) learns our reachability
    /// (go-libp2p-kad-dht's ModeAuto): server while we are publicly reachable, client while we
    /// are private (others could not reach us to ask, and would only waste lookups on us), no
    /// change while unknown. Runs until the reporter stops (`stop()` ends its updates) or the returned task is
    /// cancelled.
    @discardableResult
    public func followReachability(of autonat: some ReachabilityReporting) -> Task<Void, Never> {
        let updates = autonat.updates()
        return Task { [weak self] in
            for await reachability in updates {
                guard let self else { return }
                switch reachability {
                case .public: try? self.setMode(.server)
                case .private: try? self.setMode(.client)
                case .unknown: continue
                }
            }
        }
    }
}
