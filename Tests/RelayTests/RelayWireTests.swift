import Foundation
import Identity
import Multiformats
import Relay
import Testing

/// Hop and stop messages and vouchers, byte by byte.
struct RelayWireTests {
    @Test func reserveIsTwoBytes() throws {
        // type = RESERVE (0): field 1 varint.
        #expect(HopMessage(type: .reserve).encoded() == [0x08, 0x00])
        let decoded = try HopMessage(decoding: [0x08, 0x00])
        #expect(decoded == HopMessage(type: .reserve))
    }

    @Test func connectCarriesThePeer() throws {
        let peer = PeerID(publicKey: PrivateKey.ed25519(seed: 1).publicKey)
        let message = HopMessage(type: .connect, peer: RelayPeer(id: peer.bytes))
        let bytes = message.encoded()
        // 08 01 | 12 len (0a len id)
        #expect(Array(bytes.prefix(3)) == [0x08, 0x01, 0x12])
        #expect(Int(bytes[3]) == 2 + peer.bytes.count)
        #expect(Array(bytes[4...5]) == [0x0a, UInt8(peer.bytes.count)])
        #expect(try HopMessage(decoding: bytes) == message)
    }

    @Test func statusWithReservationAndLimitRoundTrips() throws {
        let message = HopMessage(
            type: .status,
            reservation: RelayReservationInfo(
                expire: 1_700_000_000, addresses: [Multiaddr("/ip4/127.0.0.1/tcp/4001")], voucher: [1, 2, 3]),
            limit: RelayLimit(duration: 120, data: 131_072), status: .ok)
        let decoded = try HopMessage(decoding: message.encoded())
        #expect(decoded == message)
        // status OK is field 5 = 100 at the end.
        #expect(Array(message.encoded().suffix(2)) == [0x28, 0x64])
    }

    @Test func limitEncodingMatchesTheSpec() throws {
        // Limit { duration 1: 120, data 2: 128 KiB } inside HopMessage field 4.
        let bytes = HopMessage(type: .status, limit: RelayLimit(duration: 120, data: 1 << 17), status: .ok).encoded()
        #expect(bytes == [0x08, 0x02, 0x22, 0x06, 0x08, 0x78, 0x10, 0x80, 0x80, 0x08, 0x28, 0x64])
    }

    @Test func stopMessagesRoundTrip() throws {
        let peer = PeerID(publicKey: PrivateKey.ed25519(seed: 2).publicKey)
        let connect = StopMessage(type: .connect, peer: RelayPeer(id: peer.bytes), limit: RelayLimit(duration: 60))
        #expect(try StopMessage(decoding: connect.encoded()) == connect)
        #expect(StopMessage(type: .status, status: .ok).encoded() == [0x08, 0x01, 0x20, 0x64])
    }

    @Test func badInputIsTypedErrors() {
        func code(_ bytes: [UInt8]) -> RelayError.Code? {
            do {
                _ = try HopMessage(decoding: bytes)
                return nil
            } catch {
                return error.code
            }
        }
        #expect(code([]) == .malformedMessage)                       // no type
        #expect(code([0x08, 0x07]) == .malformedMessage)             // unknown type
        #expect(code([0x08, 0x02, 0x28, 0x05]) == .malformedMessage) // unknown status
        #expect(code([0x08, 0x01, 0x12, 0x05, 0x0a]) == .malformedMessage) // truncated peer
        #expect(code([0x08, 0x01, 0x12, 0x00]) == .malformedMessage) // peer without id
        #expect(code([0x0a, 0x00]) == .malformedMessage)             // type with the wrong wire type
        #expect(code([UInt8](repeating: 0, count: RelayWire.maxMessageSize + 1)) == .limitExceeded)
        // Unknown fields are skipped.
        #expect(code([0x08, 0x00, 0x78, 0x01]) == nil)
    }

    @Test func addressListsAreBounded() throws {
        var reservation = RelayReservationInfo(expire: 1)
        reservation.addresses = Array(repeating: Multiaddr("/ip4/10.0.0.1/tcp/1"), count: 60)
        let decoded = try HopMessage(decoding: HopMessage(type: .status, reservation: reservation, status: .ok).encoded())
        #expect(decoded.reservation?.addresses.count == RelayWire.maxAddresses)
    }

    @Test func voucherSignsAndVerifies() throws {
        let relayKey = PrivateKey.ed25519(seed: 10)
        let relay = PeerID(publicKey: relayKey.publicKey)
        let peer = PeerID(publicKey: PrivateKey.ed25519(seed: 11).publicKey)
        let voucher = ReservationVoucher(relay: relay, peer: peer, expiration: 1_800_000_000)
        let sealed = try voucher.sealed(with: relayKey)
        #expect(try ReservationVoucher.open(sealed) == voucher)
        // Payload: relay 1, peer 2, expiration 3, in that order.
        let payload = voucher.encoded()
        #expect(payload.first == 0x0a)
        #expect(payload[2 + relay.bytes.count] == 0x12)
        // Signed by someone other than the relay it names: refused.
        let forged = try voucher.sealed(with: PrivateKey.ed25519(seed: 12))
        #expect(throws: RelayError.self) { try ReservationVoucher.open(forged) }
        // A flipped byte breaks the signature.
        var broken = sealed
        broken[broken.count - 1] ^= 1
        #expect(throws: RelayError.self) { try ReservationVoucher.open(broken) }
    }
}
