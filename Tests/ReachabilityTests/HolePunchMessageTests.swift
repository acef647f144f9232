import PointSub
import Testing

/// DCUtR messages byte by byte; hole punching itself runs across real NATs in NATCLITests.
struct HolePunchMessageTests {
    @Test func connectAndSyncBytes() throws {
        let address = Multiaddr("/ip4/198.51.100.2/tcp/4001")
        let connect = HolePunchMessage(type: .connect, addresses: [address])
        // type CONNECT = 100 (0x64), ObsAddrs field 2.
        #expect(connect.encoded() == [0x08, 0x64, 0x12, UInt8(address.bytes.count)] + address.bytes)
        #expect(try HolePunchMessage(decoding: connect.encoded()) == connect)
        // type SYNC = 300: varint 0xac 0x02.
        #expect(HolePunchMessage(type: .sync).encoded() == [0x08, 0xac, 0x02])
        #expect(try HolePunchMessage(decoding: [0x08, 0xac, 0x02]) == HolePunchMessage(type: .sync))
    }

    @Test func badInputIsTypedErrors() {
        func code(_ bytes: [UInt8]) -> HolePunchError.Code? {
            do { _ = try HolePunchMessage(decoding: bytes); return nil } catch { return error.code }
        }
        #expect(code([]) == .malformedMessage)                      // no type
        #expect(code([0x08, 0x01]) == .malformedMessage)            // unknown type
        #expect(code([0x08, 0x64, 0x12, 0x05, 0x04]) == .malformedMessage)  // truncated address
        #expect(code([0x08, 0x64, 0x10, 0x01]) == .malformedMessage)  // address with the wrong wire type
        #expect(code([UInt8](repeating: 0, count: HolePunchMessage.maxMessageSize + 1)) == .limitExceeded)
        #expect(code([0x08, 0x64, 0x12, 0x02, 0xff, 0xff]) == nil)  // an unparsable address is dropped
    }

    @Test func addressListsAreBounded() throws {
        let many = Array(repeating: Multiaddr("/ip4/198.51.100.2/tcp/4001"), count: 40)
        let decoded = try HolePunchMessage(decoding: HolePunchMessage(type: .connect, addresses: many).encoded())
        #expect(decoded.addresses.count == HolePunchMessage.maxAddresses)
    }
}
