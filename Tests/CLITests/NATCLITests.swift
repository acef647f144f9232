import Foundation
import TestSupport
import Testing

/// `pointsub` processes across real NATs (network namespaces, `NATNetwork`): a relay on the
/// "public" bridge, two nodes each behind its own masquerading NAT.
@Suite(.serialized, .timeLimit(.minutes(3)))
struct NATCLITests {
    /// A serving command in `namespace`, stderr captured.
    static func start(_ namespace: String, _ arguments: [String]) throws -> ChildProcess.Running {
        let ip = try #require(NATNetwork.ip, "iproute2 is needed; scripts/setup-interop.sh installs it")
        return try ChildProcess.Running(
            URL(fileURLWithPath: ip), NATNetwork.exec(in: namespace, [try CLI.binary.path] + arguments), captureStderr: true)
    }

    /// Waits until `process` printed a stderr line containing `text`, and each of `also`.
    static func awaitError(
        _ process: ChildProcess.Running, _ text: String, also: [String] = [], timeout: Duration = .seconds(60)
    ) async throws {
        let deadline = ContinuousClock.now + timeout
        while !process.errorLines.contains(where: { line in ([text] + also).allSatisfy { line.contains($0) } }) {
            guard ContinuousClock.now < deadline else {
                throw ChildProcess.Failure("no \"\(text)\" on stderr within \(timeout): \(process.errorLines.suffix(20))")
            }
            try await Task.sleep(for: .milliseconds(100))
        }
    }

    /// (c) AutoNAT tells the two NATed nodes they are private and the relay that it is public
    /// (v1 for the node, v2 for each address);
    /// the nodes reserve on the relay and one reaches the other through it (relayed traffic
    /// crosses both NATs).
    @Test func autonatAndRelayAcrossNATs() async throws {
        try await NATNetwork.with(mappings: [.endpointIndependent, .endpointIndependent]) { net in
            let autonat = ["--autonat-boot-delay", "1", "--autonat-retry", "2", "--no-mdns"]
            let relay = try Self.start(
                net.publicNamespace, ["relay", "--seed", "31", "--listen", "/ip4/\(net.publicAddress)/tcp/4001"] + autonat)
            var processes = [relay]
            defer { for process in processes { Task { _ = try? await process.stop(signal: SIGKILL) } } }
            let relayAddress = try await relay.firstLine(timeout: .seconds(30)) { $0.contains("/p2p/") }
            #expect(relayAddress.hasPrefix("/ip4/198.51.100.1/tcp/4001/p2p/"))

            var circuits: [String] = []
            for (index, seed) in [32, 33].enumerated() {
                let node = try Self.start(net.privateNamespaces[index], [
                    "echo", "--seed", "\(seed)", "--listen", "/ip4/0.0.0.0/tcp/4001", "--relay", relayAddress,
                ] + autonat)
                processes.append(node)
                circuits.append(try await node.firstLine(timeout: .seconds(30)) { $0.contains("/p2p-circuit/") })
            }
            // The relay learns it is public from the nodes' dial-backs (through their NATs,
            // outward); each node learns it is private: the relay's dial-back to the NAT's
            // address finds no mapping.
            try await Self.awaitError(processes[1], "autonat: reachability private")
            try await Self.awaitError(processes[2], "autonat: reachability private")
            try await Self.awaitError(relay, "autonat: reachability public")
            // AutoNAT v2, per address: the relay's listen address is public (the nodes dialed
            // it back, outward through their NATs, and delivered the nonce); node 0's address
            // as the relay observes it (the NAT's, with the port of node 0's connection) is
            // private: three dial-backs to it found no mapping.
            try await Self.awaitError(relay, "autonat v2: /ip4/198.51.100.1/tcp/4001 public")
            try await Self.awaitError(
                processes[1], "autonat v2: /ip4/\(net.natAddress(0))/tcp/", also: [" private"], timeout: .seconds(90))

            // Node 1 pings node 0 through the relay, across both NATs.
            let ip = try #require(NATNetwork.ip)
            let ping = try await ChildProcess.run(
                URL(fileURLWithPath: ip),
                NATNetwork.exec(in: net.privateNamespaces[1], [try CLI.binary.path, "ping", circuits[0], "--count", "3", "--seed", "34", "--json"]),
                timeout: 30)
            #expect(ping.status == 0, "\(ping.stderr)")
            #expect(ping.stdout.contains("\"type\":\"final\""), "\(ping.stdout)")
        }
    }
}

extension NATCLITests {
    /// (a) Endpoint-independent NATs: A reserves on the relay, B dials A's circuit address, DCUtR
    /// makes it direct (a TCP simultaneous open through both NATs), and 16 MiB echo over the
    /// direct connection. (b) With a symmetric NAT on A's side the hole punch fails cleanly and
    /// the echo runs over the relay (within its limits).
    @Test(arguments: [true, false])
    func holePunchThroughNATs(endpointIndependent: Bool) async throws {
        let mappings: [NATNetwork.Mapping] = [endpointIndependent ? .endpointIndependent : .symmetric, .endpointIndependent]
        try await NATNetwork.with(mappings: mappings) { net in
            let quiet = ["--no-mdns", "--no-autonat"]
            let relay = try Self.start(
                net.publicNamespace,
                ["relay", "--seed", "41", "--listen", "/ip4/\(net.publicAddress)/tcp/4001", "--circuit-bytes", "\(4 << 20)"] + quiet)
            var processes = [relay]
            defer { for process in processes { Task { _ = try? await process.stop(signal: SIGKILL) } } }
            let relayAddress = try await relay.firstLine(timeout: .seconds(30)) { $0.contains("/p2p/") }
            let a = try Self.start(net.privateNamespaces[0], [
                "echo", "--seed", "42", "--listen", "/ip4/0.0.0.0/tcp/4001", "--relay", relayAddress,
            ] + quiet)
            processes.append(a)
            let circuit = try await a.firstLine(timeout: .seconds(30)) { $0.contains("/p2p-circuit/") }

            let ip = try #require(NATNetwork.ip)
            let size = endpointIndependent ? "16MiB" : "1MiB"
            let echo = try await ChildProcess.run(
                URL(fileURLWithPath: ip),
                NATNetwork.exec(in: net.privateNamespaces[1], [try CLI.binary.path, "echo", "-d", circuit, "--size", size, "--seed", "43"]),
                timeout: 90)
            #expect(echo.status == 0, "\(echo.stderr)")
            if endpointIndependent {
                #expect(echo.stderr.contains("direct via hole punching after"), "\(echo.stderr)")
                // Twenty more peers, one after another, each hole-punched: the relay frees each
                // circuit when its initiator leaves (they would fill A's 16 circuit slots).
                for n in 0..<20 {
                    let ping = try await ChildProcess.run(
                        URL(fileURLWithPath: ip),
                        NATNetwork.exec(in: net.privateNamespaces[1], [try CLI.binary.path, "ping", circuit, "--count", "1", "--seed", "\(100 + n)", "--json"]),
                        timeout: 60)
                    #expect(ping.stderr.contains("direct via hole punching"), "peer \(n): \(ping.stderr)")
                    #expect(ping.stdout.contains("\"direct\":true"), "peer \(n): \(ping.stdout)")
                }
            } else {
                #expect(echo.stderr.contains("relayed (failed: dialsFailed"), "\(echo.stderr)")
            }
        }
    }
}

extension NATCLITests {
    /// The unilateral upgrade: B is on the public network, A behind a NAT. B dials A's circuit
    /// address; A sees in identify that B has a public address and simply dials it (outward
    /// through its NAT): direct without a hole punch, and the ping runs over it.
    @Test func publicPeerIsDialedDirectly() async throws {
        try await NATNetwork.with(mappings: [.endpointIndependent]) { net in
            let quiet = ["--no-mdns", "--no-autonat"]
            let relay = try Self.start(
                net.publicNamespace, ["relay", "--seed", "51", "--listen", "/ip4/\(net.publicAddress)/tcp/4001"] + quiet)
            var processes = [relay]
            defer { for process in processes { Task { _ = try? await process.stop(signal: SIGKILL) } } }
            let relayAddress = try await relay.firstLine(timeout: .seconds(30)) { $0.contains("/p2p/") }
            let a = try Self.start(net.privateNamespaces[0], [
                "echo", "--seed", "52", "--listen", "/ip4/0.0.0.0/tcp/4001", "--relay", relayAddress,
            ] + quiet)
            processes.append(a)
            let circuit = try await a.firstLine(timeout: .seconds(30)) { $0.contains("/p2p-circuit/") }

            let ip = try #require(NATNetwork.ip)
            let ping = try await ChildProcess.run(
                URL(fileURLWithPath: ip),
                NATNetwork.exec(in: net.publicNamespace, [try CLI.binary.path, "ping", circuit, "--count", "3", "--seed", "53", "--json"]),
                timeout: 60)
            #expect(ping.status == 0, "\(ping.stderr)")
            #expect(ping.stderr.contains("direct (the peer dialed our public address)"), "\(ping.stderr)")
            #expect(ping.stdout.contains("\"direct\":true"), "\(ping.stdout)")
            #expect(ping.stdout.contains("\"type\":\"final\""), "\(ping.stdout)")
            try await Self.awaitError(a, "dialed its public address")
        }
    }
}
