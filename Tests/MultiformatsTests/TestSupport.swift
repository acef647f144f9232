import Multiformats

/// Deterministic RNG so property tests are reproducible.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

extension RandomNumberGenerator {
    mutating func bytes(_ count: Int) -> [UInt8] {
        (0..<count).map { _ in UInt8.random(in: 0...255, using: &self) }
    }
}

func hex(_ s: String) -> [UInt8] {
    try! Base16.decode(s)
}

/// Parses at run time. (`Multiaddr("literal")` is literal coercion via
/// `ExpressibleByStringLiteral`, which traps instead of throwing.)
func parse(_ text: String) throws -> Multiaddr {
    try Multiaddr(text)
}
