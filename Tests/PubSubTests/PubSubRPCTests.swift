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
                           prune: [.init(topic: "old", peers: [.init(peerID: [5], signedPeerRecord: [6])], backoff: 60)],
                           idontwant: [.init(messageIDs: [[7, 7], [8]])]))
        #expect(try PubSubRPC(decoding: rpc.encoded()) == rpc)
    }

    /// gossipsub-v1.2.md: `ControlMessage.idontwant = 5`, `ControlIDontWant.messageIDs = 1`.
    @Test func encodesIDontWantByteByByte() throws {
        let rpc = PubSubRPC(control: .init(idontwant: [.init(messageIDs: [[0xAA, 0xBB], [0xCC]]), .init(messageIDs: [])]))
        let expected: [UInt8] = [
            0x1A, 0x0B,  // RPC.control (field 3, length-delimited), 11 bytes
            0x2A, 0x07,  // ControlMessage.idontwant (field 5), 7 bytes
            0x0A, 0x02, 0xAA, 0xBB,  // messageIDs (field 1): AA BB
            0x0A, 0x01, 0xCC,  // messageIDs: CC
            0x2A, 0x00,  // an empty IDONTWANT
        ]
        #expect(rpc.encoded() == expected)
        #expect(try PubSubRPC(decoding: expected) == rpc)
        #expect(!rpc.isEmpty && !(rpc.control?.isEmpty ?? true))
    }

    /// IDONTWANTs in two control fields of one RPC are both kept; unknown fields inside are skipped;
    /// an ID of the wrong wire type is malformed.
    @Test func decodesIDontWantLeniently() throws {
        let twoControls: [UInt8] = [0x1A, 0x04, 0x2A, 0x02, 0x0A, 0x00, 0x1A, 0x07, 0x2A, 0x05, 0x10, 0x01, 0x0A, 0x01, 0x09]
        #expect(try PubSubRPC(decoding: twoControls).control?.idontwant == [.init(messageIDs: [[]]), .init(messageIDs: [[9]])])
        #expect(throws: PubSubError.self) { try PubSubRPC(decoding: [0x1A, 0x04, 0x2A, 0x02, 0x08, 0x01]) }
        // Truncated: the IDONTWANT claims 5 bytes and has 2.
        #expect(throws: PubSubError.self) { try PubSubRPC(decoding: [0x1A, 0x04, 0x2A, 0x05, 0x0A, 0x00]) }
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
