import Testing
@testable import PubSub

@Suite struct PubSubRPCTests {
    @Test func roundTripsEveryPart() throws {
        let rpc = PubSubRPC(
            subscriptions: [.init(subscribe: true, topic: "news"), .init(subscribe: false, topic: "old")],
            messages: [.init(from: [1, 2], data: Array("hi".utf8), seqno: [0, 0, 0, 0, 0, 0, 0, 7], topic: "news",
                             signature: [9, 9], key: [8])],
            control: .init(ihave: [.init(topic: "news", messageIDs: [[1], [2, 3]])],
                           iwant: [.init(messageIDs: [[4]])],
                           graft: [.init(topic: "news")],
                           prune: [.init(topic: "old", peers: [.init(peerID: [5], signedPeerRecord: [6])], backoff: 60)]))
        #expect(try PubSubRPC(decoding: rpc.encoded()) == rpc)
    }

    @Test func skipsUnknownFieldsLikePyLibp2psFieldFour() throws {
        var bytes = PubSubRPC(subscriptions: [.init(subscribe: true, topic: "t")]).encoded()
        bytes += [0x22, 0x02, 0xAA, 0xBB]  // field 4, length-delimited, 2 bytes
        #expect(try PubSubRPC(decoding: bytes).subscriptions == [.init(subscribe: true, topic: "t")])
    }

    @Test func rejectsMalformedInput() {
        #expect(throws: PubSubError.self) { try PubSubRPC(decoding: [0x12, 0x05, 0x01]) }
        // A message without a topic.
        #expect(throws: PubSubError.self) { try PubSubRPC(decoding: [0x12, 0x02, 0x12, 0x00]) }
    }
}
