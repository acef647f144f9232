import Kademlia

extension FuzzTargets {
    /// A kad-dht message as it comes off a stream: decode with the default limits; whatever
    /// decodes must re-encode to a message that decodes to the same value.
    static func fuzzKadMessage(_ input: [UInt8], _ check: inout Checker) throws(FuzzInvariantFailure) {
        guard let message = try? KadMessage(decoding: input) else { return }
        let again = try? KadMessage(decoding: message.encoded())
        try check(again == message, "kad message round trip differs")
    }
}
