import Testing
@testable import PubSub

@Suite struct GossipSubConfigurationTests {
    func failure(_ configure: (inout GossipSubConfiguration) -> Void) -> GossipSubConfigurationError? {
        var configuration = GossipSubConfiguration()
        configure(&configuration)
        do {
            try configuration.validate()
            return nil
        } catch {
            return error
        }
    }

    @Test func defaultsFollowTheSpecs() throws {
        let c = GossipSubConfiguration()
        #expect([c.d, c.dLow, c.dHigh, c.dLazy, c.dScore, c.dOut] == [6, 4, 12, 6, 4, 2])
        #expect(c.heartbeatInterval == .seconds(1) && c.fanoutTTL == .seconds(60))
        #expect(c.historyLength == 5 && c.historyGossip == 3)
        #expect(c.pruneBackoff == .seconds(60) && c.floodPublish && c.gossipFactor == 0.25)
        try c.validate()
        let router = try GossipSubRouter()
        #expect(router.heartbeatInterval == .seconds(1))
        #expect(router.protocols == ["/meshsub/1.2.0", "/meshsub/1.1.0", "/meshsub/1.0.0", "/floodsub/1.0.0"])
        // v1.2: go-libp2p-pubsub's IDONTWANT defaults (the spec leaves them open).
        #expect(c.meshsubV12 && c.idontwantMessageThreshold == 1024 && c.idontwantTTL == 3)
        #expect(c.maxIDontWantLength == 10 && c.maxIDontWantMessages == 1000)
    }

    @Test func rejectsInconsistentMeshDegrees() {
        #expect(failure { $0.dLow = 7 }?.parameter == "d")
        #expect(failure { $0.dHigh = 5 }?.parameter == "d")
        #expect(failure { $0.dScore = 7 }?.parameter == "dScore")
        #expect(failure { $0.dOut = 4 }?.parameter == "dOut")  // not below D_lo
        #expect(failure { $0.dOut = 3; $0.d = 5; $0.dLow = 4 }?.parameter == "dOut")  // above D/2
        #expect(failure { $0.gossipFactor = 1.5 }?.parameter == "gossipFactor")
        #expect(failure { $0.historyGossip = 6 }?.parameter == "historyGossip")
        #expect(failure { $0.idontwantTTL = 0 }?.parameter == "idontwantTTL")
        #expect(failure { $0.maxIDontWantIDsPerPeer = -1 }?.parameter == "maxIDontWantIDsPerPeer")
        #expect(failure { $0.heartbeatInterval = .zero }?.parameter == "heartbeatInterval")
        // A bootstrapper without a mesh (v1.1 "Recommendations for Network Operators") is valid.
        #expect(failure { $0.d = 0; $0.dLow = 0; $0.dHigh = 0; $0.dOut = 0; $0.dScore = 0 } == nil)
    }

    @Test func rejectsMisorderedThresholdsAndBadScoreParameters() {
        #expect(failure { $0.thresholds.gossip = 1 }?.parameter == "thresholds.gossip")
        #expect(failure { $0.thresholds.publish = -5 }?.parameter == "thresholds.publish")
        #expect(failure { $0.thresholds.graylist = -50 }?.parameter == "thresholds.graylist")
        #expect(failure { $0.thresholds.acceptPX = -1 }?.parameter == "thresholds.acceptPX")
        #expect(failure { $0.score.behaviourPenaltyWeight = 1 }?.parameter == "score.behaviourPenaltyWeight")
        #expect(failure { $0.score.decayToZero = 0 }?.parameter == "score.decayToZero")
        #expect(failure {
            $0.score.topics["news"] = .defaults { $0.invalidMessageDeliveriesWeight = 1 }
        }?.parameter == "score.topics[news].invalidMessageDeliveriesWeight")
        #expect(failure {
            $0.score.defaultTopicParameters?.meshMessageDeliveriesCap = 0.5
        }?.parameter == "score.defaultTopicParameters.meshMessageDeliveriesCap")
        #expect(failure { $0.score = .disabled } == nil)
    }

    @Test func routerRefusesAnInvalidConfiguration() {
        #expect(throws: GossipSubConfigurationError.self) {
            try GossipSubRouter(configuration: .defaults { $0.dLow = 10 })
        }
    }
}
