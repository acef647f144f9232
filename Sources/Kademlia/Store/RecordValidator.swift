import Identity
import Multiformats

/// Checks the records of one key namespace (`/pk`, `/ipns`, …) before they are stored or
/// believed, and picks the best of several (go-libp2p-record's `Validator`).
public protocol RecordValidator: Sendable {
    /// The namespace, without slashes (`pk` for keys `/pk/…`).
    var namespace: String { get }
    /// Throws `KademliaError(.invalidRecord)` when `value` is not a valid record for `key`.
    func validate(key: [UInt8], value: [UInt8]) throws(KademliaError)
    /// The index of the best of `values` (all valid) for `key`.
    func select(key: [UInt8], values: [[UInt8]]) -> Int
}

/// `/pk/<multihash of a peer ID>` → the peer's public key, protobuf-marshalled; valid when the key
/// hashes to that peer ID (go-libp2p-record's PublicKeyValidator). All valid values are equal.
public struct PublicKeyValidator: RecordValidator {
    /// `pk`.
    public let namespace = "pk"

    /// The validator.
    public init() {}

    /// Valid when the value is a public key whose peer ID is the key's multihash.
    public func validate(key: [UInt8], value: [UInt8]) throws(KademliaError) {
        let prefix = Array("/pk/".utf8)
        guard key.starts(with: prefix) else {
            throw KademliaError(.invalidRecord, "a /pk record key must start with /pk/")
        }
        let id = Array(key.dropFirst(prefix.count))
        let publicKey: PublicKey
        do {
            publicKey = try PublicKey(marshaled: value)
        } catch {
            throw KademliaError(.invalidRecord, "the /pk record's value is not a public key", cause: error)
        }
        guard PeerID(publicKey: publicKey).bytes == id else {
            throw KademliaError(.invalidRecord, "the public key does not match the /pk record's peer ID")
        }
    }

    /// Any: valid /pk records of one key are the same key.
    public func select(key: [UInt8], values: [[UInt8]]) -> Int { 0 }
}

/// The namespace of a record key: `pk` for `/pk/…`; nil when the key has no `/<ns>/` prefix.
func namespace(of key: [UInt8]) -> String? {
    guard key.first == UInt8(ascii: "/"), let end = key.dropFirst().firstIndex(of: UInt8(ascii: "/")) else { return nil }
    return String(decoding: key[1..<end], as: UTF8.self)
}
