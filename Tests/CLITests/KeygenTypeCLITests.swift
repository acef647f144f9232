import Foundation
import TestSupport
import Testing

/// `pointsub keygen --type …` and `pointsub id` with each key type (issue 11).
@Suite(.serialized, .timeLimit(.minutes(2)))
struct KeygenTypeCLITests {
    static func temporaryKeyPath() -> String {
        FileManager.default.temporaryDirectory.appendingPathComponent("pointsub-\(UUID()).key").path
    }

    /// keygen writes a key file of the type asked for; `id --key` prints the same peer ID and type.
    @Test(arguments: [
        // (option, libp2p KeyType number, peer ID prefix, printed type)
        ("ed25519", 1, "12D3KooW", "Ed25519"),
        ("secp256k1", 2, "16Uiu2", "Secp256k1"),
        ("ecdsa", 3, "Qm", "ECDSA"),
        ("rsa", 0, "Qm", "RSA"),
    ])
    func keygenTypeThenId(option: String, number: Int, prefix: String, name: String) async throws {
        let path = Self.temporaryKeyPath()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let made = try await CLI.run(["keygen", path, "--type", option])
        #expect(made.status == 0, "\(made.stderr)")
        let lines = made.stdout.split(separator: "\n").map(String.init)
        #expect(lines.count == 2, "\(made.stdout)")
        #expect(lines.first?.hasPrefix(prefix) == true, "\(made.stdout)")
        #expect(lines.last == "key type: \(name)")
        let id = try await CLI.run(["id", "--key", path])
        #expect(id.status == 0, "\(id.stderr)")
        #expect(id.stdout == made.stdout)
        // The file is a libp2p PrivateKey protobuf: field 1 (varint) = the key type first.
        let data = try #require(FileManager.default.contents(atPath: path))
        #expect(Array(data.prefix(2)) == [0x08, UInt8(number)])
    }

    @Test func unknownTypeIsAUsageError() async throws {
        let path = Self.temporaryKeyPath()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let run = try await CLI.run(["keygen", path, "--type", "dsa"])
        #expect(run.status == 64, "\(run.stderr)")
        #expect(run.stderr.contains("secp256k1"), "the usage error lists the types: \(run.stderr)")
        #expect(!FileManager.default.fileExists(atPath: path))
    }

    /// Without libsecp256k1 (here: pointed at a file that does not exist), secp256k1 fails with one
    /// line saying what to install, and nothing else is affected.
    @Test func withoutLibsecp256k1OnlySecp256k1Fails() async throws {
        let env = URL(fileURLWithPath: "/usr/bin/env")
        let missing = "POINTSUB_LIBSECP256K1=/nonexistent/libsecp256k1.so"
        let secpPath = Self.temporaryKeyPath()
        let edPath = Self.temporaryKeyPath()
        defer {
            try? FileManager.default.removeItem(atPath: secpPath)
            try? FileManager.default.removeItem(atPath: edPath)
        }
        let binary = try CLI.binary.path
        let refused = try await ChildProcess.run(env, [missing, binary, "keygen", secpPath, "--type", "secp256k1"], timeout: 60)
        #expect(refused.status == 1)
        #expect(refused.stderr.contains("libsecp256k1-dev"), "\(refused.stderr)")
        #expect(refused.stderr.split(separator: "\n").count == 1, "\(refused.stderr)")
        #expect(!FileManager.default.fileExists(atPath: secpPath))

        // Ed25519 works as before.
        let ed = try await ChildProcess.run(env, [missing, binary, "keygen", edPath], timeout: 60)
        #expect(ed.status == 0, "\(ed.stderr)")
        #expect(ed.stdout.hasPrefix("12D3KooW"))

        // A secp256k1 key file made with the library cannot be used without it: a typed error.
        let made = try await CLI.run(["keygen", secpPath, "--type", "secp256k1"])
        #expect(made.status == 0, "\(made.stderr)")
        let id = try await ChildProcess.run(env, [missing, binary, "id", "--key", secpPath], timeout: 60)
        #expect(id.status == 1)
        #expect(id.stderr.contains("libraryUnavailable"), "\(id.stderr)")
    }
}
