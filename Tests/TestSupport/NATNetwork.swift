import Foundation

/// Real NATs on this machine, built from Linux network namespaces (iproute2, iptables), for the
/// reachability tests: a "public" namespace whose bridge carries 198.51.100.0/24 (the internet;
/// nothing leaves the machine), and private hosts each behind a NAT namespace of their own that
/// masquerades its LAN (10.0.N.0/24) onto the public bridge.
///
/// ```
/// pub (198.51.100.1, bridge) ── natN (wan 198.51.100.(N+1), MASQUERADE) ── privN (10.0.N.2)
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
    /// The public namespace's address on the bridge.
    public let publicAddress = "198.51.100.1"

    /// The public (WAN) address of NAT `index`.
    public func natAddress(_ index: Int) -> String { "198.51.100.\(index + 2)" }
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
    public static func with<T: Sendable>(
        mappings: [Mapping], _ body: (NATNetwork) async throws -> T
    ) async throws -> T {
        let tag = "ps\(getpid() % 100_000)"
        let network = NATNetwork(
            publicNamespace: "\(tag)pub",
            privateNamespaces: mappings.indices.map { "\(tag)priv\($0)" },
            natNamespaces: mappings.indices.map { "\(tag)nat\($0)" })
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
            var masquerade = ["netns", "exec", nat, "iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "wan", "-j", "MASQUERADE"]
            if case .symmetric = mapping { masquerade.append("--random-fully") }
            try await run(masquerade)
        }
    }

    /// Arguments that run `command` inside `namespace` (for `ChildProcess` with `NATNetwork.ip`).
    public static func exec(in namespace: String, _ command: [String]) -> [String] {
        ["netns", "exec", namespace] + command
    }
}
