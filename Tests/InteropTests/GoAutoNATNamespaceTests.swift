import Foundation
import PointSub
import TestSupport
import Testing

/// AutoNAT v1 with go-libp2p 0.32 (`p2pd -autonat`) as the server, with real dial-backs: p2pd
/// and our `pointsub` nodes run in the network namespaces of `NATNetwork` (the test runs as root;
/// p2pd's control socket is a unix path, reachable from the test's namespace).
///
/// Quirks of go the tests depend on:
/// - go's server skips every address `manet.IsPublicAddr` rejects (private, loopback, TEST-NET
///   and other unroutable ranges, such as NATNetwork's default 198.51.100.0/24) and every
///   address on one of its own IPs, so the bridge here carries a prefix go calls public, and our
///   public node has an IP of its own beside go's.
/// - go dials the address it observes the requester at, plus the requested addresses with their
///   IP replaced by the observed one (ports kept), from a separate host (another peer ID, an
///   ephemeral port) with a 15 s timeout: a dial into a NAT without a mapping (the NAT drops the
///   SYN) is answered `E_DIAL_ERROR` after 15 s.
@Suite(.serialized, .timeLimit(.minutes(2)))
struct GoAutoNATNamespaceTests {
    /// A /24 go calls public. The namespaces are isolated (the bridge has no link to the outside
    /// and no namespace has a route out): nothing leaves the machine, nothing outside is reached.
    static let publicPrefix = "11.0.0"
    /// Our public node's address on the public bridge (go has `publicPrefix.1`).
    static let nodeIP = "\(publicPrefix).200"
    /// Fast AutoNAT for the CLI nodes: first probe after 1 s, again every 2 s until known.
    static let autonat = ["--autonat-boot-delay", "1", "--autonat-retry", "2", "--no-mdns"]

    /// Runs `pointsub arguments` in `namespace` (stderr captured) for `body`, then kills it and
    /// waits for its end, also when `body` throws (a process would keep its namespace alive).
    static func withNode<T: Sendable>(
        _ namespace: String, _ arguments: [String], _ body: (ChildProcess.Running) async throws -> T
    ) async throws -> T {
        let ip = try #require(NATNetwork.ip, "iproute2 is needed; scripts/setup-interop.sh installs it")
        let node = try ChildProcess.Running(
            URL(fileURLWithPath: ip), NATNetwork.exec(in: namespace, [try ChildProcess.pointsubBinary.path] + arguments),
            captureStderr: true)
        do {
            let result = try await body(node)
            _ = try? await node.stop(signal: SIGKILL, timeout: 10)
            return result
        } catch {
            _ = try? await node.stop(signal: SIGKILL, timeout: 10)
            throw ChildProcess.Failure("\(error)\n--- pointsub stderr ---\n\(node.errorLines.suffix(30).joined(separator: "\n"))")
        }
    }

    /// Waits until `node` printed a stderr line containing `text`.
    static func awaitError(_ node: ChildProcess.Running, _ text: String, timeout: Duration) async throws {
        try await GoInteropTests.until("\"\(text)\" on pointsub's stderr", timeout: timeout) {
            node.errorLines.contains { $0.contains(text) }
        }
    }

    /// (a) Our node on the public bridge (its own IP), go connects to it: go's dial-back reaches
    /// our listen address and our node learns it is public.
    @Test func goDialsBackOurPublicNode() async throws {
        try await NATNetwork.with(mappings: [], publicPrefix: Self.publicPrefix) { net in
            try await net.addPublicAddress(Self.nodeIP)
            try await withDaemon(seed: 161, ["-autonat"], namespace: net.publicNamespace, ip: net.publicAddress) { go in
                let arguments = ["echo", "--seed", "261", "--listen", "/ip4/\(Self.nodeIP)/tcp/4001"] + Self.autonat
                try await Self.withNode(net.publicNamespace, arguments) { node in
                    let line = try await node.firstLine(timeout: .seconds(30)) { $0.contains("/p2p/") }
                    let address = try Multiaddr(line)
                    #expect(address.removingPeerID() == (try Multiaddr("/ip4/\(Self.nodeIP)/tcp/4001")))
                    try await go.connect(try #require(address.peerID), [address.removingPeerID()])
                    try await Self.awaitError(node, "autonat: reachability public", timeout: .seconds(40))
                    #expect(!node.errorLines.contains { $0.contains("reachability private") }, "\(node.errorLines)")
                }
            }
        }
    }

    /// (b) Our node behind a NAT (private namespace) connects to go (reserving on go's relay, as
    /// a NATed node does): go's dial-back to the NAT's address finds no mapping, and our node
    /// learns it is private.
    @Test func goCannotDialBackOurNodeBehindANAT() async throws {
        try await NATNetwork.with(mappings: [.endpointIndependent], publicPrefix: Self.publicPrefix) { net in
            // go's relay service starts once go thinks it is public: forced, as nobody here tells it.
            let goArguments = ["-autonat", "-relay=true", "-relayService", "-forceReachabilityPublic"]
            try await withDaemon(seed: 162, goArguments, namespace: net.publicNamespace, ip: net.publicAddress) { go in
                let arguments = [
                    "echo", "--seed", "262", "--listen", "/ip4/0.0.0.0/tcp/4001", "--relay", go.fullAddress.description,
                ] + Self.autonat
                try await Self.withNode(net.privateNamespaces[0], arguments) { node in
                    // The reservation on go: the connection to go is up.
                    let circuit = try await node.firstLine(timeout: .seconds(30)) { $0.contains("/p2p-circuit/") }
                    #expect(circuit.hasPrefix(go.fullAddress.description), "\(circuit)")
                    // go's dial-back waits out its 15 s timeout.
                    try await Self.awaitError(node, "autonat: reachability private", timeout: .seconds(45))
                    #expect(!node.errorLines.contains { $0.contains("reachability public") }, "\(node.errorLines)")
                    // go saw our node at the NAT's public address.
                    let peers = try await go.peers()
                    let seen = peers.first { $0.id == PeerID(publicKey: PrivateKey.ed25519(seed: 262).publicKey) }
                    #expect(seen?.addresses.contains { $0.ipAddress?.description == net.natAddress(0) } == true, "\(peers.map(\.addresses))")
                }
            }
        }
    }
}
