import Identity
import Testing
@testable import PubSub

/// `PeerScore` counters (P₁–P₄, P₇), decay and retention.
@Suite struct GossipSubPeerScoreTests {
    let t0 = ContinuousClock.now
    let peer = testPeer(1)
    let other = testPeer(2)

    /// A score table knowing `peer` and `other`, with only the weights `configure` sets.
    func makeScore(_ configure: (inout TopicScoreParameters) -> Void = { _ in },
                   global: (inout PeerScoreParameters) -> Void = { _ in }) -> PeerScore {
        var topic = TopicScoreParameters()
        topic.timeInMeshWeight = 0
        topic.firstMessageDeliveriesWeight = 0
        topic.invalidMessageDeliveriesWeight = 0
        configure(&topic)
        var parameters = PeerScoreParameters()
        parameters.defaultTopicParameters = nil
        parameters.topics = ["t": topic]
        global(&parameters)
        var score = PeerScore(parameters: parameters)
        score.addPeer(peer)
        score.addPeer(other)
        score.refresh(now: t0)
        return score
    }

    func approx(_ a: Double, _ b: Double) -> Bool { abs(a - b) < 1e-9 }

    @Test func timeInMeshCountsWholeQuantaUpToTheCap() {
        var score = makeScore { $0.timeInMeshWeight = 0.01 }
        score.graft(peer, topic: "t", now: t0)
        score.refresh(now: t0 + .milliseconds(10_500))
        #expect(approx(score.score(of: peer), 0.1))
        score.refresh(now: t0 + .seconds(500))
        #expect(approx(score.score(of: peer), 1.0))
        score.prune(peer, topic: "t")
        #expect(score.score(of: peer) == 0)
    }

    @Test func firstDeliveriesAreCappedAndDecay() {
        var score = makeScore { $0.firstMessageDeliveriesWeight = 0.1; $0.firstMessageDeliveriesCap = 2 }
        score.messageValidated(id: [1], topic: "t", from: peer, now: t0)
        #expect(approx(score.score(of: peer), 0.1))
        score.messageValidated(id: [1], topic: "t", from: peer, now: t0)  // same message: once
        score.messageValidated(id: [2], topic: "t", from: peer, now: t0)
        score.messageValidated(id: [3], topic: "t", from: peer, now: t0)
        #expect(approx(score.score(of: peer), 0.2))
        score.messageValidated(id: [4], topic: "u", from: peer, now: t0)  // topic not scored
        #expect(approx(score.score(of: peer), 0.2))
        score.refresh(now: t0 + .seconds(2))
        #expect(approx(score.score(of: peer), 0.2 * 0.99 * 0.99))
    }

    @Test func meshDeliveryDeficitAppliesAfterActivationAndCountsNearFirstCopies() {
        var score = makeScore {
            $0.meshMessageDeliveriesWeight = -1
            $0.meshMessageDeliveriesThreshold = 4
            $0.meshMessageDeliveriesActivation = .seconds(5)
            $0.meshMessageDeliveriesWindow = .milliseconds(10)
            $0.meshFailurePenaltyWeight = -2
        }
        score.graft(peer, topic: "t", now: t0)
        score.refresh(now: t0 + .milliseconds(3_500))
        #expect(score.score(of: peer) == 0)  // not active yet
        let now = t0 + .milliseconds(6_500)
        score.refresh(now: now)
        #expect(approx(score.score(of: peer), -16))

        score.messageValidated(id: [1], topic: "t", from: peer, now: now)  // first delivery
        #expect(approx(score.score(of: peer), -9))
        score.messageValidated(id: [2], topic: "t", from: other, now: now)
        score.duplicateDelivered(id: [2], topic: "t", from: peer, now: now + .milliseconds(5))  // near-first
        #expect(approx(score.score(of: peer), -4))
        score.messageValidated(id: [3], topic: "t", from: other, now: now)
        score.duplicateDelivered(id: [3], topic: "t", from: peer, now: now + .milliseconds(20))  // too late
        #expect(approx(score.score(of: peer), -4))
        score.duplicateDelivered(id: [4], topic: "t", from: peer, now: now)  // while being validated
        score.messageValidated(id: [4], topic: "t", from: other, now: now + .milliseconds(50))
        #expect(approx(score.score(of: peer), -1))

        // P₃b: pruned with a deficit of 1 → failure penalty 1 × -2; P₃ no longer applies.
        score.prune(peer, topic: "t")
        #expect(approx(score.score(of: peer), -2))
    }

    @Test func invalidMessagesCountForEverySender() {
        var score = makeScore { $0.invalidMessageDeliveriesWeight = -10 }
        score.messageRejected(id: [1], topic: "t", from: peer, now: t0)
        #expect(score.score(of: peer) == -10)
        score.messageRejected(id: [2], topic: "t", from: peer, now: t0)
        #expect(score.score(of: peer) == -40)
        // A copy of an invalid message counts against its sender too…
        score.duplicateDelivered(id: [1], topic: "t", from: other, now: t0)
        #expect(score.score(of: other) == -10)
        score.duplicateDelivered(id: [1], topic: "t", from: other, now: t0)  // …once
        #expect(score.score(of: other) == -10)
        // …also when it arrived while the first copy was being validated.
        score.duplicateDelivered(id: [3], topic: "t", from: other, now: t0)
        score.messageRejected(id: [3], topic: "t", from: peer, now: t0)
        #expect(score.score(of: other) == -40)
        #expect(score.score(of: peer) == -90)
    }

    @Test func behaviourPenaltyIsSquaredAndDecaysToZero() {
        var score = makeScore(global: { $0.behaviourPenaltyWeight = -10; $0.behaviourPenaltyDecay = 0.5; $0.decayToZero = 0.1 })
        score.addPenalty(peer, 3)
        #expect(score.score(of: peer) == -90)
        score.refresh(now: t0 + .seconds(1))
        #expect(approx(score.score(of: peer), -10 * 1.5 * 1.5))
        score.refresh(now: t0 + .seconds(5))  // 1.5 × 0.5⁴ < 0.1
        #expect(score.score(of: peer) == 0)
    }

    @Test func capAndApplicationSpecificScore() {
        let peer = self.peer
        var score = makeScore({ $0.firstMessageDeliveriesWeight = 1 }, global: {
            $0.topicScoreCap = 0.5
            $0.appSpecificScore = { p in p == peer ? 5 : 0 }
            $0.appSpecificWeight = 2
        })
        score.messageValidated(id: [1], topic: "t", from: peer, now: t0)
        score.messageValidated(id: [1, 1], topic: "t", from: other, now: t0)
        #expect(score.score(of: peer) == 10.5)
        #expect(score.score(of: other) == 0.5)
    }

    @Test func nonPositiveScoresAreRetainedAfterDisconnecting() {
        var score = makeScore({ $0.invalidMessageDeliveriesWeight = -1; $0.firstMessageDeliveriesWeight = 1 },
                              global: { $0.retainScore = .seconds(60) })
        score.messageRejected(id: [1], topic: "t", from: peer, now: t0)
        score.messageValidated(id: [2], topic: "t", from: other, now: t0)
        score.removePeer(peer, now: t0)
        score.removePeer(other, now: t0)
        #expect(score.score(of: peer) == -1)
        #expect(score.score(of: other) == 0)  // positive: forgotten
        score.refresh(now: t0 + .seconds(30))
        score.addPeer(peer)
        #expect(score.score(of: peer) == -1)  // reconnected within retainScore, not decayed meanwhile
        score.removePeer(peer, now: t0 + .seconds(30))
        score.refresh(now: t0 + .seconds(91))
        #expect(score.stats[peer] == nil)
    }

    @Test func deliveryRecordsExpireInOrderAfterTheirRetention() {
        var score = makeScore({ $0.invalidMessageDeliveriesWeight = -1 },
                              global: { $0.deliveryRecordRetention = .seconds(10) })
        score.messageRejected(id: [1], topic: "t", from: peer, now: t0)
        score.messageRejected(id: [2], topic: "t", from: peer, now: t0 + .seconds(5))
        score.refresh(now: t0 + .seconds(11))  // [1] is forgotten, [2] is kept
        score.duplicateDelivered(id: [1], topic: "t", from: other, now: t0 + .seconds(11))  // a new record: pending
        #expect(score.score(of: other) == 0)
        score.duplicateDelivered(id: [2], topic: "t", from: other, now: t0 + .seconds(11))  // still known invalid
        #expect(score.score(of: other) == -1)
        score.refresh(now: t0 + .seconds(16))  // [2] goes; the new [1] (seen at 11 s) stays
        score.messageRejected(id: [1], topic: "t", from: peer, now: t0 + .seconds(16))  // other's pending copy counts
        let counter = 0.99 * 0.99 * 0.99 * 0.99 * 0.99 + 1  // the first copy decayed for 5 s, plus this one
        #expect(approx(score.score(of: other), -counter * counter))
    }
}
