import Reachability
import Relay

extension FuzzTargets {
    /// Circuit relay v2 input: byte 0 picks a hop message (0), a stop message (1) or a voucher
    /// envelope (2), the rest is the message. Messages that decode re-encode to the same value; a
    /// voucher that opens names its signer as the relay.
    static func fuzzRelayMessage(_ input: [UInt8], _ check: inout Checker) throws(FuzzInvariantFailure) {
        guard let kind = input.first else { return }
        let body = Array(input.dropFirst())
        switch kind % 3 {
        case 0:
            guard let message = try? HopMessage(decoding: body) else { return }
            try check((try? HopMessage(decoding: message.encoded())) == message, "hop message round trip differs")
        case 1:
            guard let message = try? StopMessage(decoding: body) else { return }
            try check((try? StopMessage(decoding: message.encoded())) == message, "stop message round trip differs")
        default:
            _ = try? ReservationVoucher.open(body)
        }
    }
}

extension FuzzTargets {
    /// An AutoNAT v1 message: whatever decodes re-encodes to a message that decodes the same.
    static func fuzzAutoNATMessage(_ input: [UInt8], _ check: inout Checker) throws(FuzzInvariantFailure) {
        guard let message = try? AutoNATMessage(decoding: input) else { return }
        try check((try? AutoNATMessage(decoding: message.encoded())) == message, "AutoNAT message round trip differs")
    }
}

extension FuzzTargets {
    /// AutoNAT v2 input: byte 0 picks a `Message` (0), a `DialBack` (1) or a `DialBackResponse`
    /// (2). Messages that decode re-encode to the same value; a dial-back's nonce survives a
    /// round trip.
    static func fuzzAutoNATv2Message(_ input: [UInt8], _ check: inout Checker) throws(FuzzInvariantFailure) {
        guard let kind = input.first else { return }
        let body = Array(input.dropFirst())
        switch kind % 3 {
        case 0:
            guard let message = try? AutoNATv2Message(decoding: body) else { return }
            try check((try? AutoNATv2Message(decoding: message.encoded())) == message, "AutoNAT v2 message round trip differs")
        case 1:
            guard let nonce = try? AutoNATv2DialBack.decodeNonce(body) else { return }
            try check((try? AutoNATv2DialBack.decodeNonce(AutoNATv2DialBack.encode(nonce: nonce))) == nonce, "dial-back nonce differs")
        default:
            _ = try? AutoNATv2DialBack.decodeResponse(body)
        }
    }
}

extension FuzzTargets {
    /// A DCUtR message: whatever decodes re-encodes to a message that decodes the same.
    static func fuzzHolePunchMessage(_ input: [UInt8], _ check: inout Checker) throws(FuzzInvariantFailure) {
        guard let message = try? HolePunchMessage(decoding: input) else { return }
        try check((try? HolePunchMessage(decoding: message.encoded())) == message, "DCUtR message round trip differs")
    }
}
