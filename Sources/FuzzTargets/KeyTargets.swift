import Foundation
import Identity
import Multiformats

/// TODO(issue 10, lead): remove this skip once the RSA double free is fixed. A `PublicKey`
/// protobuf of type RSA whose Data is malformed DER (smallest case: `08 00 12 00`) makes the
/// process abort with a double free inside swift-crypto 3.12.3's RSA public key init; the lead
/// is fixing it in Sources/Identity. Until then the targets skip every key of type RSA (0) so
/// that fuzz runs find other things. `FuzzTesting/Regressions/keys/rsa-double-free` holds the
/// crashing input; it replays for real once this returns false. `FUZZ_INCLUDE_RSA=1` in the
/// environment turns the skip off (to check the fix: `FUZZ_INCLUDE_RSA=1 scripts/fuzz.sh 60 keys`).
func declaresRSAKey(_ keyProtobuf: [UInt8]) -> Bool {
    guard !includeRSAKeys else { return false }
    var reader = ProtobufReader(keyProtobuf)
    var fields = 0
    while fields <= keyProtobuf.count, let (field, value) = try? reader.next() {
        if field == 1, value == .varint(UInt64(KeyType.rsa.rawValue)) { return true }
        fields += 1
    }
    return false
}

/// Read once: whether `FUZZ_INCLUDE_RSA` is set (see `declaresRSAKey`).
private let includeRSAKeys = ProcessInfo.processInfo.environment["FUZZ_INCLUDE_RSA"].map { !$0.isEmpty && $0 != "0" } ?? false

/// Whether a binary peer ID inlines an RSA key (see `declaresRSAKey`).
func peerIDInlinesRSAKey(_ bytes: [UInt8]) -> Bool {
    guard let hash = try? Multihash(bytes: bytes), hash.code == Multihash.identityCode else { return false }
    return declaresRSAKey(hash.digest)
}

/// The binary form of a peer ID string as `PeerID(_:)` would decode it, for the RSA skip.
func peerIDStringBytes(_ text: String) -> [UInt8]? {
    if text.hasPrefix("1") || text.hasPrefix("Qm") { return try? Base58.decode(text) }
    return (try? CID(text))?.multihash.bytes
}

extension FuzzTargets {
    static let signedMessage = Array("pointsub fuzz".utf8)

    static func fuzzKeys(_ input: [UInt8], _ check: inout Checker) throws(FuzzInvariantFailure) {
        var reader = FuzzReader(input)
        let mode = reader.byte()
        switch mode % 5 {
        case 0:
            // A public key protobuf: deterministic encoding, so it re-marshals to the same bytes.
            let body = reader.rest()
            guard !declaresRSAKey(body), let key = try? PublicKey(marshaled: body) else { return }
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
            guard !declaresRSAKey(keyBytes), let key = try? PublicKey(marshaled: keyBytes) else { return }
            _ = key.verify(signature: signature, for: signedMessage)
            _ = try? key.verifyThrowing(signature: signature, for: signature)
        case 2:
            // A private key protobuf: it round-trips, and its signatures verify with its public key.
            let body = reader.rest()
            guard !declaresRSAKey(body), let key = try? PrivateKey(marshaled: body) else { return }
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
            guard !peerIDInlinesRSAKey(body), let id = try? PeerID(bytes: body) else { return }
            try check(id.bytes == body, "peer ID bytes changed")
            try check((try? PeerID(id.b58String)) == id, "peer ID base58 round trip differs")
            try check((try? PeerID(id.cidString)) == id, "peer ID CID round trip differs")
            _ = id.publicKey
        default:
            let text = String(decoding: reader.rest(), as: UTF8.self)
            if let bytes = peerIDStringBytes(text), peerIDInlinesRSAKey(bytes) { return }
            guard let id = try? PeerID(text) else { return }
            try check((try? PeerID(bytes: id.bytes)) == id, "peer ID from text does not parse from its bytes")
            try check((try? PeerID(id.b58String)) == id, "peer ID base58 round trip differs")
        }
    }
}
