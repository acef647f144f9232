import Foundation
import Identity
import Multiformats

extension FuzzTargets {
    static let signedMessage = Array("pointsub fuzz".utf8)

    static func fuzzKeys(_ input: [UInt8], _ check: inout Checker) throws(FuzzInvariantFailure) {
        var reader = FuzzReader(input)
        let mode = reader.byte()
        switch mode % 5 {
        case 0:
            // A public key protobuf: deterministic encoding, so it re-marshals to the same bytes.
            let body = reader.rest()
            guard let key = try? PublicKey(marshaled: body) else { return }
            try check(key.marshal() == body, "public key re-marshals differently")
            let id = PeerID(publicKey: key)
            try check(id.matches(key), "peer ID does not match its own key")
            try check((try? PeerID(bytes: id.bytes)) == id, "peer ID of a valid key does not parse")
            if let inlined = id.publicKey { try check(inlined == key, "inlined key differs") }
        case 1:
            // Key ‖ signature: the verification path must not trap on any signature bytes.
            let keyLength = Int(reader.byte())
            let keyBytes = reader.take(keyLength)
            let signature = reader.rest()
            guard let key = try? PublicKey(marshaled: keyBytes) else { return }
            _ = key.verify(signature: signature, for: signedMessage)
            _ = try? key.verifyThrowing(signature: signature, for: signature)
        case 2:
            // A private key protobuf: it round-trips, and its signatures verify with its public key.
            let body = reader.rest()
            guard let key = try? PrivateKey(marshaled: body) else { return }
            let again = try? PrivateKey(marshaled: key.marshal())
            try check(again?.publicKey == key.publicKey, "private key round trip changes the public key")
            try check((try? PublicKey(marshaled: key.publicKey.marshal())) == key.publicKey,
                      "public key of a valid private key does not parse")
            if let signature = try? key.sign(signedMessage) {
                try check(key.publicKey.verify(signature: signature, for: signedMessage),
                          "\(key.type) signature does not verify with its own public key")
            }
        case 3:
            let body = reader.rest()
            guard let id = try? PeerID(bytes: body) else { return }
            try check(id.bytes == body, "peer ID bytes changed")
            try check((try? PeerID(id.b58String)) == id, "peer ID base58 round trip differs")
            try check((try? PeerID(id.cidString)) == id, "peer ID CID round trip differs")
            _ = id.publicKey
        default:
            let text = String(decoding: reader.rest(), as: UTF8.self)
            guard let id = try? PeerID(text) else { return }
            try check((try? PeerID(bytes: id.bytes)) == id, "peer ID from text does not parse from its bytes")
            try check((try? PeerID(id.b58String)) == id, "peer ID base58 round trip differs")
        }
    }
}
