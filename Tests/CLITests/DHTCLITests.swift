import Foundation
import TestSupport
import Testing

/// `pointsub dht`: a server node, then one-shot commands through it (each a separate process).
@Suite(.serialized, .timeLimit(.minutes(3)))
struct DHTCLITests {
    @Test func serveProvideFindPutGet() async throws {
        let server = try ChildProcess.Running(try CLI.binary, ["dht", "serve", "--seed", "1", "-l", "0"])
        do {
            try await check(server)
        } catch {
            _ = try? await server.stop(signal: SIGKILL)
            throw error
        }
        #expect(try await server.stop(signal: SIGINT) == 130)
    }

    func check(_ server: ChildProcess.Running) async throws {
        let address = try await server.firstLine(timeout: .seconds(30)) { $0.contains("/p2p/") }
        #expect(address.hasSuffix("/p2p/12D3KooWPjceQrSwdWXPyLLeABRXmuqt69Rg3sBYbU1Nft9HyQ6X"))
        // CIDv1, raw codec, sha2-256 of "pointsub".
        let cid = "bafkreib3v3e7p5guushhn65mandpcwidh4oc7sxq46ncwonvunjvwf7xd4"

        // A provider that stays online while another process looks it up.
        let provider = try ChildProcess.Running(
            try CLI.binary, ["dht", "provide", cid, "--seed", "7", "--bootstrap", address, "--stay", "20"])
        defer { Task { _ = try? await provider.stop(signal: SIGKILL) } }
        let announced = try await provider.firstLine(timeout: .seconds(30)) { $0.hasPrefix("announced") }
        #expect(announced.contains("12D3KooWLnZUpcaBwbz9uD1XsyyHnbXUrJRmxnsMiRnuCmvPix67"))

        let found = try await CLI.run(["dht", "find-providers", cid, "--seed", "8", "--bootstrap", address, "--json"])
        #expect(found.status == 0, "\(found.stderr)")
        #expect(found.stdout.contains("\"peer\":\"12D3KooWLnZUpcaBwbz9uD1XsyyHnbXUrJRmxnsMiRnuCmvPix67\""), "\(found.stdout)")

        let peer = try await CLI.run([
            "dht", "find-peer", "12D3KooWLnZUpcaBwbz9uD1XsyyHnbXUrJRmxnsMiRnuCmvPix67", "--seed", "9", "--bootstrap", address,
        ])
        #expect(peer.status == 0, "\(peer.stderr)")
        #expect(peer.stdout.contains("/p2p/12D3KooWLnZUpcaBwbz9uD1XsyyHnbXUrJRmxnsMiRnuCmvPix67"), "\(peer.stdout)")

        // A /pk record: a key file's public key under its peer ID, stored and read back by others.
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("dht-cli-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let keyFile = directory.appendingPathComponent("node.key").path
        let keygen = try await CLI.run(["keygen", keyFile])
        #expect(keygen.status == 0, "\(keygen.stderr)")
        let id = String(keygen.stdout.split(separator: "\n")[0]).split(separator: " ").last.map(String.init) ?? ""
        let put = try await CLI.run(["dht", "put", "/pk/\(id)", "--public-key-of", keyFile, "--seed", "10", "--bootstrap", address])
        #expect(put.status == 0, "\(put.stderr)")
        #expect(put.stdout.contains("stored"), "\(put.stdout)")
        let get = try await CLI.run(["dht", "get", "/pk/\(id)", "--seed", "11", "--bootstrap", address, "--json"])
        #expect(get.status == 0, "\(get.stderr)")
        #expect(get.stdout.contains("value_base64"), "\(get.stdout)")
        // An IPNS record signed with the key file, made by `put`, read back decoded by `get`; an
        // older sequence is refused by the server that holds the newer one.
        let published = try await CLI.run([
            "dht", "put", "/ipns/\(id)", "--ipns-key", keyFile, "--value", "/ipfs/\(cid)", "--sequence", "5",
            "--lifetime", "3600", "--seed", "13", "--bootstrap", address,
        ])
        #expect(published.status == 0, "\(published.stderr)")
        #expect(published.stdout.contains("stored") && !published.stdout.contains("at 0 peer(s)"), "\(published.stdout)")
        let resolved = try await CLI.run(["dht", "get", "/ipns/\(id)", "--seed", "14", "--bootstrap", address, "--json"])
        #expect(resolved.status == 0, "\(resolved.stderr)")
        #expect(resolved.stdout.contains("\"value\":\"/ipfs/\(cid)\""), "\(resolved.stdout)")
        #expect(resolved.stdout.contains("\"sequence\":\"5\""), "\(resolved.stdout)")
        let text = try await CLI.run(["dht", "get", "/ipns/\(id)", "--seed", "15", "--bootstrap", address])
        #expect(text.stdout.contains("value: /ipfs/\(cid)"), "\(text.stdout)")
        let older = try await CLI.run([
            "dht", "put", "/ipns/\(id)", "--ipns-key", keyFile, "--value", "/ipfs/\(cid)", "--sequence", "4",
            "--seed", "16", "--bootstrap", address,
        ])
        #expect(older.stdout.contains("at 0 peer(s)"), "\(older.stdout) \(older.stderr)")
        let wrongKey = try await CLI.run([
            "dht", "put", "/ipns/12D3KooWLnZUpcaBwbz9uD1XsyyHnbXUrJRmxnsMiRnuCmvPix67", "--ipns-key", keyFile, "--value", "/ipfs/x",
            "--seed", "17", "--bootstrap", address,
        ])
        #expect(wrongKey.status != 0)

        // A record that its namespace does not accept is refused with a clear error.
        let bad = try await CLI.run(["dht", "put", "/other/key", "--public-key-of", keyFile, "--seed", "12", "--bootstrap", address])
        #expect(bad.status != 0)
        #expect(bad.stderr.contains("invalidRecord"), "\(bad.stderr)")
    }
}
