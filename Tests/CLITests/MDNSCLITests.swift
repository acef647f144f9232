import Foundation
import TestSupport
import Testing

/// mDNS between two `pointsub` processes in a network namespace of the test's own (its loopback
/// device with multicast on; nothing leaves the namespace), removed afterwards.
@Suite(.serialized, .timeLimit(.minutes(2)))
struct MDNSCLITests {
    static let ip = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"].first { FileManager.default.isExecutableFile(atPath: $0) }

    static func run(_ arguments: [String]) async throws {
        let result = try await ChildProcess.run(URL(fileURLWithPath: ip!), arguments, timeout: 10)
        guard result.status == 0 else { throw ChildProcess.Failure("ip \(arguments.joined(separator: " ")): \(result.stderr)") }
    }

    @Test func twoServingProcessesFindEachOther() async throws {
        let ip = try #require(Self.ip, "iproute2 (the ip command) is needed; the test script installs it")
        let namespace = "pointsub-mdns-\(getpid())"
        try await Self.run(["netns", "add", namespace])
        do {
            try await Self.run(["netns", "exec", namespace, "ip", "link", "set", "lo", "up"])
            try await Self.run(["netns", "exec", namespace, "ip", "link", "set", "lo", "multicast", "on"])
            try await Self.run(["netns", "exec", namespace, "ip", "route", "add", "224.0.0.0/4", "dev", "lo"])
            let binary = try CLI.binary.path
            let first = try ChildProcess.Running(
                URL(fileURLWithPath: ip), ["netns", "exec", namespace, binary, "echo", "-l", "0", "--seed", "1"],
                captureStderr: true)
            let second = try ChildProcess.Running(
                URL(fileURLWithPath: ip), ["netns", "exec", namespace, binary, "echo", "-l", "0", "--seed", "2"],
                captureStderr: true)
            defer {
                Task {
                    _ = try? await first.stop(signal: SIGKILL)
                    _ = try? await second.stop(signal: SIGKILL)
                }
            }
            _ = try await first.firstLine(timeout: .seconds(30)) { $0.contains("/p2p/") }
            _ = try await second.firstLine(timeout: .seconds(30)) { $0.contains("/p2p/") }
            let peer1 = "12D3KooWPjceQrSwdWXPyLLeABRXmuqt69Rg3sBYbU1Nft9HyQ6X"
            let peer2 = "12D3KooWH3uVF6wv47WnArKHk5p6cvgCJEb74UTmxztmQDc298L3"
            let deadline = ContinuousClock.now + .seconds(20)
            while ContinuousClock.now < deadline {
                let found1 = first.errorLines.contains { $0.hasPrefix("mdns: found \(peer2)") }
                let found2 = second.errorLines.contains { $0.hasPrefix("mdns: found \(peer1)") }
                if found1 && found2 { break }
                try await Task.sleep(for: .milliseconds(100))
            }
            #expect(second.errorLines.contains { $0.hasPrefix("mdns: found \(peer1)") }, "\(second.errorLines)")
            #expect(first.errorLines.contains { $0.hasPrefix("mdns: found \(peer2)") }, "\(first.errorLines)")
        } catch {
            try? await Self.run(["netns", "del", namespace])
            throw error
        }
        try await Self.run(["netns", "del", namespace])
    }
}
