import NIOConcurrencyHelpers
import NIOCore
import PointSub
import Testing

@testable import PubSub

/// Signature policies (spec `pubsub/README.md`, "Signature Policy Options"): the checks alone,
/// the per-topic settings, and StrictNoSign end to end on small in-memory networks.
@Suite(.timeLimit(.minutes(2)))
struct SignaturePolicyTests {
    static let key = PrivateKey.ed25519(seed: 7)

    // MARK: - The checks

    @Test func strictNoSignAcceptsOnlyMessagesWithoutAuthorFields() throws {
        let unsigned = MessageSigning.unsignedMessage(topic: "t", data: [1, 2, 3])
        #expect(unsigned.from == nil && unsigned.seqno == nil && unsigned.signature == nil && unsigned.key == nil)
        // Absent from the protobuf, not empty: topic and data only.
        #expect(unsigned.encoded() == PubSubRPC.Message(data: [1, 2, 3], topic: "t").encoded())
        #expect(MessageSigning.precheck(unsigned, policy: .strictNoSign) == nil)
        #expect(try MessageSigning.check(unsigned, policy: .strictNoSign).get() == nil)

        let signed = try MessageSigning.signedMessage(topic: "t", data: [1], seqno: 1, key: Self.key)
        #expect(MessageSigning.precheck(signed, policy: .strictNoSign) == .unexpectedSignature)
        var withFrom = unsigned
        withFrom.from = Self.key.peerID.bytes
        var withSeqno = unsigned
        withSeqno.seqno = MessageSigning.encode(seqno: 1)
        var withKey = unsigned
        withKey.key = Self.key.publicKey.marshal()
        var emptyFrom = unsigned
        emptyFrom.from = []  // present though empty: still an author field on the wire
        for message in [withFrom, withSeqno, withKey, emptyFrom] {
            #expect(MessageSigning.precheck(message, policy: .strictNoSign) == .unexpectedAuthor)
            #expect(throws: MessageSigning.Failure.unexpectedAuthor) {
                try MessageSigning.check(message, policy: .strictNoSign).get()
            }
        }
    }

    @Test func strictSignStillVerifies() throws {
        let signed = try MessageSigning.signedMessage(topic: "t", data: [1], seqno: 5, key: Self.key)
        #expect(MessageSigning.precheck(signed, policy: .strictSign) == nil)
        #expect(try MessageSigning.check(signed, policy: .strictSign).get()?.seqno == 5)
        let unsigned = MessageSigning.unsignedMessage(topic: "t", data: [1])
        #expect(MessageSigning.precheck(unsigned, policy: .strictSign) == .missingSignature)
        var tampered = signed
        tampered.data = [2]
        #expect(MessageSigning.precheck(tampered, policy: .strictSign) == nil)  // only the full check sees it
        #expect(throws: MessageSigning.Failure.badSignature) { try MessageSigning.check(tampered, policy: .strictSign).get() }
    }

    // MARK: - Configuration

    @Test func policyAndMessageIDArePickedPerTopic() throws {
        let abc = PubSubRPC.Message(data: Array("abc".utf8), topic: "plain")
        // SHA-256("abc"), FIPS 180-2 appendix B.1.
        let abcDigest: [UInt8] = [
            0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40, 0xde, 0x5d, 0xae, 0x22, 0x23,
            0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17, 0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61, 0xf2, 0x00, 0x15, 0xad,
        ]
        #expect(PubSubConfiguration.dataSHA256(abc) == abcDigest)

        let configuration = PubSubConfiguration.defaults {
            $0.topics["eth"] = PubSubTopicOptions(signaturePolicy: .strictNoSign)
            $0.topics["custom"] = PubSubTopicOptions(signaturePolicy: .strictNoSign, messageID: { Array($0.data.prefix(1)) })
            $0.topics["signed-custom"] = PubSubTopicOptions(messageID: { _ in [42] })
        }
        #expect(configuration.signaturePolicy(of: "plain") == .strictSign)
        #expect(configuration.signaturePolicy(of: "eth") == .strictNoSign)
        #expect(configuration.signaturePolicy(of: "signed-custom") == .strictSign)
        let signed = try MessageSigning.signedMessage(topic: "plain", data: Array("abc".utf8), seqno: 9, key: Self.key)
        #expect(configuration.messageID(of: signed) == Self.key.peerID.bytes + MessageSigning.encode(seqno: 9))
        var eth = abc
        eth.topic = "eth"
        #expect(configuration.messageID(of: eth) == abcDigest)
        eth.topic = "custom"
        #expect(configuration.messageID(of: eth) == Array("a".utf8))
        eth.topic = "signed-custom"
        #expect(configuration.messageID(of: eth) == [42])

        // Service-wide StrictNoSign: every topic without its own takes the content ID.
        let noSign = PubSubConfiguration.defaults { $0.signaturePolicy = .strictNoSign }
        #expect(noSign.signaturePolicy(of: "anything") == .strictNoSign)
        #expect(noSign.messageID(of: abc) == abcDigest)
    }

    // MARK: - Networks

    @Test func strictNoSignMessagesTravelWithoutAuthorAndWithContentIDs() async throws {
        let noSign = PubSubConfiguration.defaults { $0.signaturePolicy = .strictNoSign }
        try await PubSubTestNetwork.with(
            nodes: 3, edges: PubSubTestNetwork.line(3), router: { _ in try! GossipSubRouter() },
            configuration: { _ in noSign }
        ) { net in
            let at2 = Collector(try net.services[2].subscribe("t"))
            let kept1 = Collector(try net.services[1].subscribe("t"))
            try await net.waitForSubscriptions("t", subscribers: [1, 2])
            try await net.waitUntil("node 0 knows node 1 in t") { net.services[0].peers(topic: "t").count == 1 }
            let first = try await net.services[0].publish("t", Array("one".utf8))
            let second = try await net.services[0].publish("t", Array("two".utf8))
            #expect(first == PubSubConfiguration.dataSHA256(PubSubRPC.Message(data: Array("one".utf8), topic: "t")))
            try await net.waitUntil("node 2 got both (through node 1)") { at2.texts.sorted() == ["one", "two"] }
            for message in at2.messages {
                #expect(message.from == nil)
                #expect(message.seqno == nil)
                #expect(message.receivedFrom == net.peerID(1))
            }
            #expect(Set(at2.messages.map(\.id)) == [first, second])
            #expect(net.counters.allSatisfy { $0.rejected == 0 })
            // Content IDs: the same bytes again is the same message, refused before it is sent.
            await #expect(throws: PubSubError.duplicateMessage(topic: "t")) {
                try await net.services[0].publish("t", Array("one".utf8))
            }
            #expect(net.counters[0].published == 2)
            withExtendedLifetime(kept1) {}
        }
    }

    @Test func aTopicCanBeStrictNoSignWhileTheServiceSigns() async throws {
        let mixed = PubSubConfiguration.defaults { $0.topics["eth"] = PubSubTopicOptions(signaturePolicy: .strictNoSign) }
        try await PubSubTestNetwork.with(nodes: 2, edges: [(0, 1)], configuration: { _ in mixed }) { net in
            let eth = Collector(try net.services[1].subscribe("eth"))
            let plain = Collector(try net.services[1].subscribe("plain"))
            try await net.waitForSubscriptions("eth", subscribers: [1])
            try await net.waitForSubscriptions("plain", subscribers: [1])
            try await net.services[0].publish("eth", Array("unsigned".utf8))
            try await net.services[0].publish("plain", Array("signed".utf8))
            try await net.waitUntil("both arrived") { eth.texts == ["unsigned"] && plain.texts == ["signed"] }
            #expect(eth.messages[0].from == nil)
            #expect(plain.messages[0].from == net.peerID(0))
            #expect(plain.messages[0].seqno != nil)
        }
    }

    @Test func messagesBreakingTheTopicPolicyAreRejectedAndScored() async throws {
        let configuration = PubSubConfiguration.defaults { $0.topics["eth"] = PubSubTopicOptions(signaturePolicy: .strictNoSign) }
        let router = try GossipSubRouter(configuration: .defaults {
            $0.score.topics["eth"] = .defaults
            $0.score.topics["t"] = .defaults
        })
        try await PubSubTestNetwork.with(
            nodes: 1, edges: [], router: { _ in router }, configuration: { _ in configuration }
        ) { net in
            let eth = Collector(try net.services[0].subscribe("eth"))
            let plain = Collector(try net.services[0].subscribe("t"))
            try await RawPeer.with(connectingTo: net.hosts[0]) { raw in
                try await net.waitUntil("the raw peer is a pubsub peer") {
                    net.services[0].peers.contains(raw.host.peerID)
                }
                let signedOnEth = try raw.signed("signed", topic: "eth", seqno: 1)
                var authorOnly = MessageSigning.unsignedMessage(topic: "eth", data: Array("author".utf8))
                authorOnly.from = raw.host.peerID.bytes
                authorOnly.seqno = MessageSigning.encode(seqno: 2)  // go's "-pubsubSign=false" messages
                var keyOnly = MessageSigning.unsignedMessage(topic: "eth", data: Array("key".utf8))
                keyOnly.key = raw.host.identity.publicKey.marshal()
                let unsignedOnT = MessageSigning.unsignedMessage(topic: "t", data: Array("unsigned".utf8))
                let good = MessageSigning.unsignedMessage(topic: "eth", data: Array("good".utf8))
                let goodSigned = try raw.signed("good signed", topic: "t", seqno: 3)
                // Last, a signed copy of the good message's bytes: rejected before the seen cache
                // (it has the good one's content ID), never counted as a duplicate. One RPC: after
                // it the peer's score is below the graylist threshold and its RPCs are ignored.
                let signedCopy = try raw.signed("good", topic: "eth", seqno: 4)
                try await raw.send(PubSubRPC(messages: [
                    signedOnEth, authorOnly, keyOnly, unsignedOnT, good, goodSigned, signedCopy,
                ]))
                try await net.waitUntil("all seven handled") { net.counters[0].received == 7 }
                try await net.waitUntil("the good ones delivered") { eth.texts == ["good"] && plain.texts == ["good signed"] }
                let counters = net.counters[0]
                #expect(counters.rejected == 5)
                #expect(counters.duplicates == 0)
                #expect(counters.delivered == 2)
                #expect(eth.messages[0].id == PubSubConfiguration.dataSHA256(good))
                // P₄ (weight −10, topic weight 1): four invalid messages in eth (4² × −10) and one
                // in t (−10).
                let score = net.services[0].withRouter { ($0 as! GossipSubRouter).score(of: raw.host.peerID) }
                #expect(score < -150)
                #expect(net.services[0].peers.contains(raw.host.peerID))  // bad messages drop, the peer stays
            }
        }
    }
}
