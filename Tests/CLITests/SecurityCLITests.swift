import Foundation
import TestSupport
import Testing

/// `--security noise|tls|noise,tls`: the security protocols a command's host offers (issue 11).
@Suite(.serialized, .timeLimit(.minutes(3)))
struct SecurityCLITests {
    @Test func aTLSOnlyServerServesTLSDialersAndRefusesNoiseOnlyOnes() async throws {
        let server = try ChildProcess.Running(
            try CLI.binary, ["echo", "--seed", "1", "--listen", "/ip4/127.0.0.1/tcp/0", "--security", "tls"])
        do {
            let address = try await server.firstLine(timeout: .seconds(30)) { $0.contains("/p2p/") }
            let tls = try await CLI.run(["echo", "-d", address, "--size", "64KiB", "--security", "tls"])
            #expect(tls.status == 0, "\(tls.stdout)\(tls.stderr)")
            #expect(tls.stdout.contains("echoed 65536 bytes"))
            // Noise first, then TLS: the listener answers "na" to /noise and takes /tls/1.0.0.
            let both = try await CLI.run(["ping", address, "--count", "1", "--security", "noise,tls"])
            #expect(both.status == 0, "\(both.stderr)")
            let noise = try await CLI.run(["ping", address, "--count", "1", "--security", "noise"])
            #expect(noise.status == 1)
            #expect(noise.stderr.hasPrefix("error: "), "\(noise.stderr)")
        } catch {
            _ = try? await server.stop(signal: SIGKILL)
            throw error
        }
        #expect(try await server.stop(signal: SIGTERM) == 143)
    }

    @Test(arguments: ["quic", "noise,noise", ""])
    func anUnknownOrRepeatedProtocolIsAUsageError(_ value: String) async throws {
        let result = try await CLI.run(["id", "--seed", "1", "--security", value])
        #expect(result.status == 64, "\(result.stdout)\(result.stderr)")
    }
}
