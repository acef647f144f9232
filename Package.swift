// swift-tools-version:6.1
import PackageDescription

// One module per layer, bottom to top:
// Basics → Multiformats → Identity → Resources → Transport / Multistream / Security (Noise, TLS) / Yamux → LibP2P (host)
// → Protocols → PointSubCore → PubSub → PointSub (the umbrella: withHost and re-exports)
let strict: [SwiftSetting] = [.swiftLanguageMode(.v6)]

let package = Package(
    name: "PointSub",
    platforms: [.macOS(.v14), .iOS(.v17)],
    products: [
        .library(name: "PointSub", targets: ["PointSub"]),
        .library(name: "LibP2P", targets: ["LibP2P"]),
        .library(name: "PubSub", targets: ["PubSub"]),
        // For the libFuzzer package in FuzzTesting/ (not a public API).
        .library(name: "FuzzTargets", targets: ["FuzzTargets"]),
        .executable(name: "pointsub", targets: ["pointsub"]),
        .executable(name: "pointsub-bench", targets: ["pointsub-bench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-crypto.git", from: "3.12.3"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-atomics.git", from: "1.3.0"),
        .package(url: "https://github.com/adam-fowler/compress-nio.git", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        // TLS 1.3 security (/tls/1.0.0): the handshake, and the libp2p certificate (X.509, DER).
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-certificates.git", from: "1.21.1"),
        .package(url: "https://github.com/apple/swift-asn1.git", from: "1.7.4"),
    ],
    targets: [
        // What every layer shares: the error shape (code, message, cause) and deadlines.
        .target(name: "Basics", dependencies: [
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
        ], swiftSettings: strict),
        .target(name: "Multiformats", dependencies: [
            "Basics",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "Crypto", package: "swift-crypto"),
        ], swiftSettings: strict),
        .target(name: "Identity", dependencies: [
            "Basics", "Multiformats",
            .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "_CryptoExtras", package: "swift-crypto"),
        ], swiftSettings: strict),
        // Resource accounting shared by every layer: scopes, limits, memory reservations, refusals.
        .target(name: "Resources", dependencies: [
            "Basics",
            .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "Metrics", package: "swift-metrics"),
        ], swiftSettings: strict),
        .target(name: "Transport", dependencies: [
            "Basics", "Multiformats",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            // The in-memory transport's process-wide listener registry (Memory/MemoryTransport.swift).
            .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            // The WebSocket transport (/ws): an HTTP/1.1 upgrade, then binary frames.
            .product(name: "NIOHTTP1", package: "swift-nio"),
            .product(name: "NIOWebSocket", package: "swift-nio"),
            // Secure WebSocket (/tls/ws, /wss).
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
        ], swiftSettings: strict),
        // A small DNS stub resolver (UDP) for /dnsaddr TXT records, and the DNS message codec (mDNS too).
        .target(name: "DNS", dependencies: [
            "Basics", "Multiformats", "Identity",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
        ], swiftSettings: strict),
        .target(name: "Multistream", dependencies: [
            "Basics", "Multiformats",
            .product(name: "NIOCore", package: "swift-nio"),
        ], swiftSettings: strict),
        // The seam for security protocols (Noise, TLS): a raw channel in, an authenticated one out.
        .target(name: "Security", dependencies: [
            "Basics", "Identity",
            .product(name: "NIOCore", package: "swift-nio"),
        ], swiftSettings: strict),
        // ChaCha20-Poly1305 into caller-owned memory (BoringSSL's AEAD as swift-crypto links it, on Linux).
        .target(name: "CNoiseAEAD"),
        .target(name: "Noise", dependencies: [
            "Basics", "Identity", "Security", "CNoiseAEAD",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "Crypto", package: "swift-crypto"),
        ], swiftSettings: strict),
        // TLS 1.3 (libp2p TLS spec): a self-signed certificate carrying the libp2p identity key.
        .target(name: "TLS", dependencies: [
            "Basics", "Identity", "Security",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOTLS", package: "swift-nio"),
            .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
            .product(name: "X509", package: "swift-certificates"),
            .product(name: "SwiftASN1", package: "swift-asn1"),
            .product(name: "Crypto", package: "swift-crypto"),
        ], swiftSettings: strict),
        .target(name: "Yamux", dependencies: [
            "Basics", "Resources",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            .product(name: "Atomics", package: "swift-atomics"),
        ], swiftSettings: strict),
        .target(name: "LibP2P", dependencies: [
            "Basics", "Multiformats", "Identity", "Transport", "DNS", "Multistream", "Security", "Noise", "TLS", "Yamux", "Resources",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "Metrics", package: "swift-metrics"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        ], swiftSettings: strict),
        .target(name: "Protocols", dependencies: [
            "Basics", "LibP2P",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
        ], swiftSettings: strict),
        // Kademlia DHT (libp2p kad-dht spec): the wire messages, XOR keys, the routing table and the
        // iterative lookup as value types.
        .target(name: "Kademlia", dependencies: [
            "Basics", "Multiformats", "Identity", "LibP2P",
            .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
        ], swiftSettings: strict),
        // Circuit Relay v2 (libp2p relay spec): the hop service (a relay), the client (reservations,
        // the stop protocol) and the circuit transport that carries relayed connections.
        .target(name: "Relay", dependencies: [
            "Basics", "Multiformats", "Identity", "Transport", "LibP2P",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
        ], swiftSettings: strict),
        // Reachability: AutoNAT (is this node publicly reachable?), later hole punching (DCUtR).
        .target(name: "Reachability", dependencies: [
            "Basics", "Multiformats", "Identity", "LibP2P",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
        ], swiftSettings: strict),
        // Peer discovery on the local network: mDNS (libp2p mDNS spec).
        .target(name: "Discovery", dependencies: [
            "LibP2P", "DNS", "Identity", "Multiformats",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
        ], swiftSettings: strict),
        .target(name: "PointSubCore", dependencies: [
            "Basics", "LibP2P", "Protocols", "Multiformats", "Identity", "Multistream", "Noise", "Transport", "Yamux",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            .product(name: "CompressNIO", package: "compress-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "Metrics", package: "swift-metrics"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        ], swiftSettings: strict),
        .target(name: "PubSub", dependencies: [
            "Basics", "LibP2P", "Protocols", "PointSubCore", "Multiformats", "Identity",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "Metrics", package: "swift-metrics"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        ], swiftSettings: strict),
        // The umbrella: `import PointSub` gives the whole stack (and NIOCore's ByteBuffer, which is
        // public API everywhere), plus `withHost`.
        .target(name: "PointSub", dependencies: [
            "Basics", "Multiformats", "Identity", "Resources", "Transport", "DNS", "Multistream", "Security", "Noise", "TLS", "Yamux",
            "LibP2P", "Protocols", "PointSubCore", "PubSub", "Kademlia", "Discovery", "Relay", "Reachability",
            .product(name: "NIOCore", package: "swift-nio"),
            // DHTClosestNodes keeps its lookup cache under a lock.
            .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
        ], swiftSettings: strict),
        .executableTarget(name: "pointsub", dependencies: [
            "Basics", "PointSub", "PubSub",
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
            .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Metrics", package: "swift-metrics"),
            .product(name: "Prometheus", package: "swift-prometheus"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        ], swiftSettings: strict),
        .executableTarget(name: "pointsub-bench", dependencies: [
            "PointSub", "PubSub", "Noise",
            .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
        ], swiftSettings: strict),
        // Fuzz entry points (issue 10): run by libFuzzer in FuzzTesting/ and replayed by FuzzRegressionTests.
        .target(name: "FuzzTargets", dependencies: [
            "Basics", "Multiformats", "Identity", "Multistream", "Noise", "TLS", "Yamux", "Protocols", "PointSubCore", "PubSub",
            "Kademlia", "DNS", "Transport", "Relay", "Reachability",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "Crypto", package: "swift-crypto"),
            // The WebSocket targets run the transport's pipelines in an EmbeddedChannel.
            .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            .product(name: "NIOEmbedded", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
            .product(name: "NIOWebSocket", package: "swift-nio"),
        ], swiftSettings: strict),
        .testTarget(name: "FuzzRegressionTests", dependencies: [
            "FuzzTargets", "PointSub", .product(name: "NIOCore", package: "swift-nio"),
        ], swiftSettings: strict),
        .testTarget(name: "BasicsTests", dependencies: [
            "Basics",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            .product(name: "NIOEmbedded", package: "swift-nio"),
        ], swiftSettings: strict),
        .testTarget(name: "MultiformatsTests", dependencies: ["Multiformats"], swiftSettings: strict),
        .testTarget(name: "IdentityTests", dependencies: ["Identity"], swiftSettings: strict),
        .testTarget(name: "MultistreamTests", dependencies: [
            "Multistream", .product(name: "NIOEmbedded", package: "swift-nio"),
        ], swiftSettings: strict),
        .testTarget(name: "NoiseTests", dependencies: [
            "Noise", .product(name: "NIOEmbedded", package: "swift-nio"),
        ], swiftSettings: strict),
        .testTarget(name: "TLSTests", dependencies: [
            "TLS", "Identity", "Security", "PointSub",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            .product(name: "NIOEmbedded", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
            .product(name: "X509", package: "swift-certificates"),
            .product(name: "SwiftASN1", package: "swift-asn1"),
            .product(name: "Crypto", package: "swift-crypto"),
        ], swiftSettings: strict),
        .testTarget(name: "ResourcesTests", dependencies: ["Resources"], swiftSettings: strict),
        .testTarget(name: "DNSTests", dependencies: [
            "DNS", "PointSub", "Multiformats", .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"), .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
        ], swiftSettings: strict),
        .testTarget(name: "KademliaTests", dependencies: [
            "Kademlia", "Identity", "Multiformats", "PointSub", .product(name: "NIOCore", package: "swift-nio"),
        ], swiftSettings: strict),
        .testTarget(name: "ReachabilityTests", dependencies: [
            "Reachability", "Identity", "Multiformats", "PointSub", .product(name: "NIOCore", package: "swift-nio"),
        ], swiftSettings: strict),
        .testTarget(name: "RelayTests", dependencies: [
            "Relay", "Identity", "Multiformats", "PointSub", .product(name: "NIOCore", package: "swift-nio"),
        ], swiftSettings: strict),
        .testTarget(name: "YamuxTests", dependencies: [
            "Yamux", "Resources", .product(name: "NIOEmbedded", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
        ], swiftSettings: strict),
        .testTarget(name: "LibP2PTests", dependencies: [
            "PointSub", "Multistream", "Noise", "Yamux", "Resources", "TestSupport", "Transport",
            .product(name: "NIOEmbedded", package: "swift-nio"),
            .product(name: "NIOWebSocket", package: "swift-nio"),
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "Metrics", package: "swift-metrics"),
            .product(name: "Prometheus", package: "swift-prometheus"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        ], swiftSettings: strict),
        .testTarget(name: "PubSubTests", dependencies: [
            "PubSub", "PointSub", "TestSupport", .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            .product(name: "NIOEmbedded", package: "swift-nio"),
        ], swiftSettings: strict),
        .testTarget(name: "PointSubTests", dependencies: [
            "PointSub", "PointSubCore", "TestSupport", .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"), "CHeapInfo",
        ], swiftSettings: strict),
        // glibc's mallinfo2() for tests that measure heap per object (not in Swift's Glibc module).
        .target(name: "CHeapInfo", path: "Tests/CHeapInfo"),
        .target(name: "TestSupport", dependencies: [
            .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
        ], path: "Tests/TestSupport", swiftSettings: strict),
        .testTarget(name: "CLITests", dependencies: ["TestSupport"], swiftSettings: strict),
        // README.md's Swift examples, compiled (see ReadmeExamples.swift).
        // Only what a README reader would add: no swift-nio, no second PointSub module.
        .testTarget(name: "ReadmeTests", dependencies: [
            "PointSub",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "Metrics", package: "swift-metrics"),
            .product(name: "Prometheus", package: "swift-prometheus"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        ], swiftSettings: strict),
        .testTarget(name: "InteropTests", dependencies: [
            "PointSub", "PubSub", "TestSupport", "TLS",
            // NIOSSL: certificates for the secure WebSocket interop tests.
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
            // NIOPosix: unix domain sockets to drive the go-libp2p daemon (P2PDaemon.swift).
            .product(name: "NIOCore", package: "swift-nio"),
            // Crypto: hand-made Noise handshakes with bad identities (Secp256k1BadInputTests).
            .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
        ], swiftSettings: strict),
    ]
)
