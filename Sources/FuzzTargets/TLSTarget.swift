import Identity
import TLS

extension FuzzTargets {
    /// The libp2p TLS certificate checks (issue 11): the first byte picks the piece.
    /// - 0: the whole verification of a one-certificate chain (DER X.509 parsing, validity,
    ///   self-signature, extensions, `SignedKey`, identity key and its signature);
    /// - 1: a chain of two certificates, split at a length byte (always refused);
    /// - otherwise: the `SignedKey` DER decoder alone, which must re-encode what it accepts to the
    ///   same bytes (DER is canonical).
    static func fuzzTLSCertificate(_ input: [UInt8], _ check: inout Checker) throws(FuzzInvariantFailure) {
        var reader = FuzzReader(input)
        switch reader.byte() {
        case 0:
            let der = reader.rest()
            guard let peer = try? LibP2PCertificate.verify(chain: [der]) else { return }
            try check(peer.peerID == PeerID(publicKey: peer.publicKey), "peer ID does not match the certificate's key")
            try check((try? LibP2PCertificate.verify(chain: [der], expectedPeer: peer.peerID)) == peer,
                      "a verified certificate is refused for its own peer ID")
        case 1:
            let first = reader.take(Int(reader.uint16()))
            let second = reader.rest()
            try check((try? LibP2PCertificate.verify(chain: [first, second])) == nil, "a chain of two certificates was accepted")
        default:
            let bytes = reader.rest()
            guard let (publicKey, signature) = try? LibP2PCertificate.decodeSignedKey(bytes[...]) else { return }
            try check(LibP2PCertificate.encodeSignedKey(publicKey: publicKey, signature: signature) == bytes,
                      "SignedKey re-encodes differently")
        }
    }
}
