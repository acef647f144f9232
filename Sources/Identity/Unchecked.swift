/// Carries a swift-crypto key across concurrency domains.
///
/// swift-crypto 3.x does not mark its Curve25519 / NIST-curve key structs `Sendable`
/// on Linux, although they are immutable value types (their backing storage is
/// written once at initialisation and only read afterwards). We only ever store
/// them in `let` properties and call non-mutating methods, so sharing is race-free.
struct SendableKey<Key>: @unchecked Sendable {
    let key: Key
    init(_ key: Key) { self.key = key }
}
