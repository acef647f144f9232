import Foundation
import Identity
import Multiformats

extension FuzzTargets {
    /// The fixed key of the signature modes (seed 9; `PrivateKey.secp256k1(seed:)`).
    static let secp256k1Key: PrivateKey? = try? PrivateKey.secp256k1(seed: 9)

    /// secp256k1 key and signature parsing (libsecp256k1 through `Identity`). Without the library
    /// every operation is `.libraryUnavailable` and the target checks nothing.
    static func fuzzSecp256k1(_ input: [UInt8], _ check: inout Checker) throws(FuzzInvariantFailure) {
        var reader = FuzzReader(input)
        let mode = reader.byte()
        switch mode % 4 {
        case 0:
            // Public key Data bytes: valid ones are canonical and make an inlined `16Uiu2…` peer ID.
            let raw = reader.rest()
            guard let key = try? PublicKey(type: .secp256k1, raw: raw) else { return }
            try check(raw.count == 33, "a \(raw.count)-byte secp256k1 public key was accepted")
            try check((try? PublicKey(marshaled: key.marshal())) == key, "secp256k1 key does not re-parse")
            let id = PeerID(publicKey: key)
            try check(id.b58String.hasPrefix("16Uiu2"), "secp256k1 peer ID \(id) is not inlined")
            try check(id.publicKey == key, "inlined secp256k1 key differs")
        case 1:
            // Private key Data bytes: valid ones round-trip and sign verifiably.
            let raw = reader.rest()
            guard let key = try? PrivateKey(type: .secp256k1, raw: raw) else { return }
            try check(raw.count == 32 && key.raw == raw, "secp256k1 private key bytes changed")
            try check((try? PrivateKey(marshaled: key.marshal()))?.publicKey == key.publicKey,
                      "secp256k1 private key round trip changes the public key")
            guard let signature = try? key.sign(signedMessage) else {
                throw FuzzInvariantFailure(target: .secp256k1, message: "a valid secp256k1 key cannot sign")
            }
            try check(signature.count <= 72, "secp256k1 signature of \(signature.count) bytes")
            try check(key.publicKey.verify(signature: signature, for: signedMessage),
                      "secp256k1 signature does not verify with its own key")
        case 2:
            // Signature bytes for a fixed key and message. Signing is deterministic (RFC 6979),
            // and malleated forms (high S, non-canonical DER) are refused, so the only signature
            // bytes that may verify are the key's own.
            guard let key = secp256k1Key, let own = try? key.sign(signedMessage) else { return }
            let signature = reader.rest()
            if key.publicKey.verify(signature: signature, for: signedMessage) {
                try check(signature == own, "a second encoding of a secp256k1 signature verifies: \(signature)")
            }
        default:
            // key length ‖ key ‖ signature length ‖ signature ‖ message: no trap on any of it.
            let keyBytes = reader.take(Int(reader.byte()))
            let signature = reader.take(Int(reader.byte()))
            let message = reader.rest()
            guard let key = try? PublicKey(type: .secp256k1, raw: keyBytes) else { return }
            _ = try? key.verifyThrowing(signature: signature, for: message)
        }
    }
}
