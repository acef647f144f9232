import Identity
import Multiformats
import Multistream
import NIOCore
import Protocols

extension FuzzTargets {
    static func fuzzIdentify(_ input: [UInt8], _ check: inout Checker) throws(FuzzInvariantFailure) {
        guard let message = try? IdentifyMessage(decoding: input) else { return }
        let again: IdentifyMessage?
        do {
            again = try IdentifyMessage(decoding: message.encoded())
        } catch {
            throw FuzzInvariantFailure(target: .identify, message: "re-encoded identify message does not parse", cause: error)
        }
        try check(again == message, "identify round trip differs")
    }

    static let listenerProtocols = ["/noise", "/yamux/1.0.0", "/ipfs/id/1.0.0", "/meshsub/1.1.0"]
    static let dialerProposals = ["/yamux/1.0.0", "/mplex/6.7.0"]

    static func fuzzMultistream(_ input: [UInt8], _ check: inout Checker) throws(FuzzInvariantFailure) {
        var reader = FuzzReader(input)
        let mode = reader.byte()
        let body = reader.rest()
        let role: MultistreamNegotiator.Role =
            mode & 0x80 == 0 ? .listener(protocols: listenerProtocols) : .dialer(proposals: dialerProposals)
        let allowed = mode & 0x80 == 0 ? listenerProtocols : dialerProposals
        var negotiator = MultistreamNegotiator(role: role)
        _ = negotiator.start()
        var fed = 0
        for piece in chunks(body, mode: mode) {
            fed += piece.count
            guard let step = try? negotiator.receive(ByteBuffer(bytes: piece)) else { return }
            if let agreed = step.negotiated {
                try check(allowed.contains(agreed), "negotiated \(agreed), which was never offered")
                try check(negotiator.negotiatedProtocol == agreed, "negotiatedProtocol disagrees with the step")
                let leftover = negotiator.takeLeftover()
                try check(leftover.readableBytes <= fed, "more leftover bytes than were received")
                return
            }
            try check(negotiator.negotiatedProtocol == nil, "negotiatedProtocol set without a step saying so")
        }
    }
}
