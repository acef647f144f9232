import NIOCore
import PointSub
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

@testable import PubSub

/// A TCP listener on 127.0.0.1 that never says a word: the kernel completes the TCP handshake,
/// then the dialer waits in vain for multistream-select (a hung peer, not a refused one).
private final class SilentListener: Sendable {
    let port: Int
    private let fd: Int32

    init() throws {
        #if os(Linux)
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        #else
        let fd = socket(AF_INET, SOCK_STREAM, 0)
        #endif
        guard fd >= 0 else { throw RouteError(.connectionFailed, "socket() failed") }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = 0
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, listen(fd, 16) == 0 else {
            close(fd)
            throw RouteError(.connectionFailed, "bind/listen failed")
        }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        self.fd = fd
        self.port = Int(UInt16(bigEndian: address.sin_port))
    }

    func stop() { close(fd) }
}

/// `dispatchAll`: every route at once, a result per name, a per-peer timeout.
@Suite(.timeLimit(.minutes(2)))
struct RouteDispatchAllTests {
    @Test func everyRouteGetsItsOwnResultWithinThePerPeerTimeout() async throws {
        let timeout = Duration.seconds(2)
        let configuration = RouteTable.Configuration.defaults { $0.timeout = timeout }
        // Node 2 is slow: it answers after a minute (its handler is cancelled when the sender gives up).
        try await RouteFixtures.withNodes(5, configuration: configuration, handler: { index in
            { sender, message in
                if index == 2 { try await Task.sleep(for: .seconds(60)) }
                return ByteBuffer(string: "\(index):\(sender):\(String(buffer: message))")
            }
        }) { nodes in
            let silent = try SilentListener()
            defer { silent.stop() }
            let a = nodes[0]
            try a.table.addRoute("n1", address: nodes[1].address)
            try a.table.addRoute("slow", address: nodes[2].address)
            try a.table.addRoute("n3", address: nodes[3].address)
            // Node 4 goes down: its address refuses connections.
            let downAddress = nodes[4].address
            await nodes[4].table.close()
            await nodes[4].host.shutdown(gracePeriod: .zero)
            try a.table.addRoute("down", address: downAddress)
            // A peer that accepts TCP and then hangs.
            try a.table.addRoute(
                "hung", address: Multiaddr("/ip4/127.0.0.1/tcp/\(silent.port)").appending(peerID: PrivateKey.generateEd25519().peerID))

            for round in 0..<2 {
                let start = ContinuousClock.now
                let results = try await a.table.dispatchAll(ByteBuffer(string: "round \(round)"))
                let elapsed = ContinuousClock.now - start
                #expect(Set(results.keys) == ["n1", "slow", "n3", "down", "hung"])
                #expect(RouteFixtures.text(results["n1"]) == "1:\(a.peer):round \(round)")
                #expect(RouteFixtures.text(results["n3"]) == "3:\(a.peer):round \(round)")
                func code(_ name: String) -> RouteError.Code? {
                    guard case .failure(let error)? = results[name] else { return nil }
                    #expect(error.route == name)
                    return error.code
                }
                #expect(code("slow") == .timeout)
                #expect(code("hung") == .timeout)
                #expect(code("down") == .connectionFailed)
                // The slow and the hung peer each cost the timeout, at the same time.
                #expect(elapsed >= timeout)
                #expect(elapsed < timeout + .seconds(2), "dispatchAll took \(elapsed)")
            }
            let stats = a.table.statistics
            #expect(stats.dispatches == 10 && stats.replies == 4 && stats.failures == 6)

            // A shorter timeout for one call.
            let start = ContinuousClock.now
            let quick = try await a.table.dispatchAll(ByteBuffer(string: "quick"), deadline: .after(.milliseconds(500)))
            #expect(ContinuousClock.now - start < .seconds(2))
            #expect(RouteFixtures.text(quick["n1"]) != nil)
            if case .failure(let error)? = quick["slow"] { #expect(error.code == .timeout) } else { Issue.record("slow answered") }
        }
    }

    @Test func dispatchAllWithoutRoutesIsEmpty() async throws {
        try await RouteFixtures.withNodes(1) { nodes in
            let results = try await nodes[0].table.dispatchAll(ByteBuffer(string: "anyone?"))
            #expect(results.isEmpty)
        }
    }

    @Test func routesAddedAndDeletedDuringDispatchAll() async throws {
        let gate = Gate()
        try await RouteFixtures.withNodes(4, handler: { index in
            { _, message in
                if index == 1 { await gate.wait() }
                return ByteBuffer(string: "\(index):\(String(buffer: message))")
            }
        }) { nodes in
            let a = nodes[0]
            try a.table.addRoute("n1", address: nodes[1].address)
            try a.table.addRoute("n2", address: nodes[2].address)
            let all = Task { try await a.table.dispatchAll(ByteBuffer(string: "x")) }
            // n1 is held at the gate: delete it meanwhile, and add n3 (too late for this call).
            await RouteFixtures.expectEventually { nodes[1].table.statistics.handled == 1 }
            try await a.table.deleteRoute("n1")
            try a.table.addRoute("n3", address: nodes[3].address)
            gate.open()
            let results = try await all.value
            #expect(Set(results.keys) == ["n1", "n2"])
            #expect(RouteFixtures.text(results["n1"]) == "1:x")
            #expect(RouteFixtures.text(results["n2"]) == "2:x")
            // The deleted route's connection went with its last dispatch.
            #expect(RouteFixtures.outbound(a.host, to: nodes[1].peer).isEmpty)
            let next = try await a.table.dispatchAll(ByteBuffer(string: "y"))
            #expect(Set(next.keys) == ["n2", "n3"])
        }
    }
}
