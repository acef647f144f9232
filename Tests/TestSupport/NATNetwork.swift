import Foundation
import NIOConcurrencyHelpers

/// Real NATs on this machine, built from Linux network namespaces (iproute2, iptables), for the
/// reachability tests: a "public" namespace whose bridge carries a /24 (198.51.100.0/24 unless
/// `publicPrefix` says otherwise; the internet: nothing leaves the machine), and private hosts
/// each behind a NAT namespace of their own that masquerades its LAN (10.0.N.0/24) onto the
/// public bridge.
///
/// ```
/// pub (P.1, bridge) ── natN (wan P.(N+2), MASQUERADE) ── privN (10.0.(N+1).2)      P = publicPrefix
/// ```
///
/// `NATNetwork.with` removes every namespace (and so every link and rule) at the end, also when
/// the body throws. A kernel or container that refuses namespaces makes it throw: the test
/// fails, it never skips.
public struct NATNetwork: Sendable {
    /// How a NAT maps a private host's connections.
    public enum Mapping: Sendable {
        /// Endpoint-independent as far as Linux gives it: MASQUERADE keeps the source port when
        /// it can, so one private port maps to one public port for every destination.
        case endpointIndependent
        /// Symmetric: `--random-fully` picks a new random public port for each connection.
        case symmetric
    }

    /// The public namespace's name.
    public let publicNamespace: String
    /// The private hosts' namespaces, in order.
    public let privateNamespaces: [String]
    /// The NAT namespaces, in order.
    public let natNamespaces: [String]
    /// The first three octets of the public /24 (e.g. "198.51.100").
    public let publicPrefix: String
    /// The public namespace's address on the bridge.
    public var publicAddress: String { "\(publicPrefix).1" }

    /// The public (WAN) address of NAT `index`.
    public func natAddress(_ index: Int) -> String { "\(publicPrefix).\(index + 2)" }
    /// The LAN address of private host `index`.
    public func privateAddress(_ index: Int) -> String { "10.0.\(index + 1).2" }

    /// The `ip` command.
    public static let ip = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"].first {
        FileManager.default.isExecutableFile(atPath: $0)
    }

    /// Runs `ip arguments`; throws with its stderr when it fails.
    public static func ipCommand(_ arguments: [String]) async throws {
        guard let ip else { throw ChildProcess.Failure("iproute2 (the ip command) is needed; scripts/setup-interop.sh installs it") }
        let result = try await ChildProcess.run(URL(fileURLWithPath: ip), arguments, timeout: 10)
        guard result.status == 0 else {
            throw ChildProcess.Failure("ip \(arguments.joined(separator: " ")) failed: \(result.stderr)")
        }
    }

    /// Builds the network with one private host per entry of `mappings`, runs `body`, removes it.
    /// `publicPrefix`: the first three octets of the public /24. The default, 198.51.100
    /// (TEST-NET-2), is one that go-libp2p calls unroutable (its AutoNAT server never dials it);
    /// tests with go pass a prefix it calls public.
    public static func with<T: Sendable>(
        mappings: [Mapping], publicPrefix: String = "198.51.100", _ body: (NATNetwork) async throws -> T
    ) async throws -> T {
        // Unique per network: the test targets share one process, whose suites may run at once;
        // a letter after the pid (interface names derived from the tag must stay within 15 bytes).
        let n = counter.withLockedValue { $0 += 1; return $0 % 26 }
        let tag = "ps\(getpid() % 100_000)\(Character(Unicode.Scalar(UInt8(ascii: "a") + UInt8(n))))"
        let network = NATNetwork(
            publicNamespace: "\(tag)pub",
            privateNamespaces: mappings.indices.map { "\(tag)priv\($0)" },
            natNamespaces: mappings.indices.map { "\(tag)nat\($0)" },
            publicPrefix: publicPrefix)
        let all = [network.publicNamespace] + network.natNamespaces + network.privateNamespaces
        do {
            try await network.build(mappings)
            let result = try await body(network)
            await remove(all)
            return result
        } catch {
            await remove(all)
            throw error
        }
    }

    private static let counter = NIOLockedValueBox(0)

    private static func remove(_ namespaces: [String]) async {
        for namespace in namespaces { try? await ipCommand(["netns", "del", namespace]) }
    }

    private func build(_ mappings: [Mapping]) async throws {
        let run = Self.ipCommand
        let pub = publicNamespace
        try await run(["netns", "add", pub])
        try await run(["-n", pub, "link", "set", "lo", "up"])
        try await run(["-n", pub, "link", "add", "br0", "type", "bridge"])
        try await run(["-n", pub, "addr", "add", "\(publicAddress)/24", "dev", "br0"])
        try await run(["-n", pub, "link", "set", "br0", "up"])
        for (index, mapping) in mappings.enumerated() {
            let nat = natNamespaces[index], host = privateNamespaces[index]
            try await run(["netns", "add", nat])
            try await run(["netns", "add", host])
            try await run(["-n", nat, "link", "set", "lo", "up"])
            try await run(["-n", host, "link", "set", "lo", "up"])
            // WAN: a veth from the bridge to the NAT.
            let port = "\(pub)p\(index)"
            try await run(["link", "add", port, "netns", pub, "type", "veth", "peer", "name", "wan", "netns", nat])
            try await run(["-n", pub, "link", "set", port, "master", "br0"])
            try await run(["-n", pub, "link", "set", port, "up"])
            try await run(["-n", nat, "addr", "add", "\(natAddress(index))/24", "dev", "wan"])
            try await run(["-n", nat, "link", "set", "wan", "up"])
            // LAN: a veth from the NAT to the private host, its default route through the NAT.
            try await run(["link", "add", "lan", "netns", nat, "type", "veth", "peer", "name", "eth0", "netns", host])
            try await run(["-n", nat, "addr", "add", "10.0.\(index + 1).1/24", "dev", "lan"])
            try await run(["-n", nat, "link", "set", "lan", "up"])
            try await run(["-n", host, "addr", "add", "\(privateAddress(index))/24", "dev", "eth0"])
            try await run(["-n", host, "link", "set", "eth0", "up"])
            try await run(["-n", host, "route", "add", "default", "via", "10.0.\(index + 1).1"])
            try await run(["netns", "exec", nat, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
            // As home routers do: unsolicited connection attempts from outside are dropped, not
            // answered with a reset (a reset would abort the other side's hole-punching SYN).
            try await run(["netns", "exec", nat, "iptables", "-A", "INPUT", "-i", "wan", "-p", "tcp", "--syn", "-j", "DROP"])
            var masquerade = ["netns", "exec", nat, "iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "wan", "-j", "MASQUERADE"]
            if case .symmetric = mapping { masquerade.append("--random-fully") }
            try await run(masquerade)
        }
    }

    /// Adds `address` (in the public /24) to the public namespace's bridge: a second public host
    /// in that namespace (removed with the namespace).
    public func addPublicAddress(_ address: String) async throws {
        try await Self.ipCommand(["-n", publicNamespace, "addr", "add", "\(address)/24", "dev", "br0"])
    }

    /// Arguments that run `command` inside `namespace` (for `ChildProcess` with `NATNetwork.ip`).
    public static func exec(in namespace: String, _ command: [String]) -> [String] {
        ["netns", "exec", namespace] + command
    }
}
