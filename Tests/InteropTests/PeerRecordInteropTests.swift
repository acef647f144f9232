import Foundation
import NIOCore
import PointSub
import TestSupport
import Testing

/// Signed envelopes and peer records (RFC 0002/0003) against py-libp2p 0.8.1 and go-libp2p 0.32.1:
/// records sealed by one verified by the other, offline (py's `seal_record` / `consume_envelope`
/// through Interop/peer_record.py) and live in identify (field 8) in both directions.
///
/// What the referees show of what they accepted: py-libp2p's certified address book
/// (`peerstore.get_peer_record`, printed by peer_record.py's listener); go-libp2p 0.32's peerstore,
/// read through the daemon's DHT FIND_PEER, which answers a connected peer from the peerstore.
/// go-libp2p 0.32 stores the addresses of a signed record that verifies *instead of* the listen
/// addresses (and the listen addresses when the record does not verify), so a record with an
/// address that is not among our listen addresses shows whether go verified our signature.
@Suite(.serialized, .timeLimit(.minutes(2)))
struct PeerRecordInteropTests {
    static var script: URL { ChildProcess.repoRoot.appendingPathComponent("Interop/peer_record.py") }
    static let timeout: Duration = .seconds(30)

    /// Runs `peer_record.py args…`; returns its JSON line (`ok` false included) and exit status.
    static func python(_ arguments: [String]) async throws -> (json: [String: Any], status: Int32) {
        try PyPeer.checkInstalled()
        let output = try await ChildProcess.run(PyPeer.python, [script.path] + arguments, timeout: 60)
        guard let last = output.stdout.split(separator: "\n").last,
            let json = try? JSONSerialization.jsonObject(with: Data(last.utf8)) as? [String: Any]
        else {
            throw ChildProcess.Failure(
                "peer_record.py \(arguments.first ?? "") exited \(output.status) without JSON\nstderr: \(output.stderr.suffix(3000))")
        }
        return (json, output.status)
    }

    static func addresses(_ json: [String: Any], _ key: String = "addrs") throws -> [Multiaddr] {
        try (json[key] as? [String] ?? []).map { try Multiaddr($0) }
    }

    // MARK: - Offline: sealed by one, opened by the other

    @Test func pySealsSwiftOpens() async throws {
        let addresses = ["/ip4/192.0.2.1/tcp/4001", "/ip6/2001:db8::1/tcp/4001", "/ip4/192.0.2.1/udp/4001/quic-v1"]
        let seq: UInt64 = 1_700_000_000_123_456_789
        let (json, status) = try await Self.python(["seal", "--seed", "77", "--seq", "\(seq)"] + addresses)
        #expect(status == 0)
        let envelope = try Base16.decode(try #require(json["envelope"] as? String))
        let signed = try SignedPeerRecord(opening: envelope)
        #expect(signed.peerID == PrivateKey.ed25519(seed: 77).peerID)
        #expect(signed.peerID.description == json["peer"] as? String)
        #expect(signed.seq == seq)
        #expect(signed.addresses == (try addresses.map { try Multiaddr($0) }))
        // Ed25519 is deterministic: sealing the same record here gives py's bytes.
        let ours = try SignedPeerRecord.seal(signed.record, with: .ed25519(seed: 77))
        #expect(ours.bytes == envelope)
    }

    @Test func swiftSealsPyOpens() async throws {
        let key = PrivateKey.ed25519(seed: 78)
        let addresses: [Multiaddr] = ["/ip4/198.51.100.4/tcp/4001", "/ip6/::1/tcp/5"]
        let signed = try SignedPeerRecord.seal(PeerRecord(peerID: key.peerID, addresses: addresses), with: key)
        let (json, status) = try await Self.python(["open", Base16.encode(signed.bytes)])
        #expect(status == 0, "py refused our record: \(json["error"] ?? "?")")
        #expect(json["peer"] as? String == key.peerID.description)
        #expect((json["seq"] as? NSNumber)?.uint64Value == signed.seq)
        #expect(try Self.addresses(json) == addresses)
        // An RSA signer (PKCS#1 v1.5 over SHA-256, a sha2-256 peer ID).
        let rsa = try PrivateKey.generateRSA(bits: 2048)
        let rsaRecord = try SignedPeerRecord.seal(PeerRecord(peerID: rsa.peerID, addresses: addresses), with: rsa)
        let (rsaJSON, rsaStatus) = try await Self.python(["open", Base16.encode(rsaRecord.bytes)])
        #expect(rsaStatus == 0, "py refused our RSA record: \(rsaJSON["error"] ?? "?")")
        #expect(rsaJSON["peer"] as? String == rsa.peerID.description)
        // py-libp2p 0.8.1's envelope code has no ECDSA public keys (pub_key_from_protobuf knows
        // RSA, Ed25519 and Secp256k1 only): it refuses such records whatever their signature.
        let ecdsa = PrivateKey.generateECDSA()
        let ecdsaRecord = try SignedPeerRecord.seal(PeerRecord(peerID: ecdsa.peerID, addresses: addresses), with: ecdsa)
        let (ecdsaJSON, _) = try await Self.python(["open", Base16.encode(ecdsaRecord.bytes)])
        #expect(ecdsaJSON["ok"] as? Bool == false)
        #expect((ecdsaJSON["error"] as? String ?? "").contains("Unknown key type"), "\(ecdsaJSON)")
    }

    /// py really checks: a flipped signature bit, another domain, a record of another peer.
    @Test func pyRefusesBrokenRecordsOfOurs() async throws {
        let key = PrivateKey.ed25519(seed: 79)
        let record = PeerRecord(peerID: key.peerID, addresses: ["/ip4/198.51.100.4/tcp/4001"])
        var flipped = try SignedPeerRecord.seal(record, with: key).bytes
        flipped[flipped.count - 1] ^= 0x01
        let otherDomain = try SignedEnvelope.seal(
            payload: record.encoded(), payloadType: PeerRecord.payloadType, domain: "libp2p-routing-state", with: key
        ).marshal()
        let otherSigner = try SignedEnvelope.seal(
            payload: record.encoded(), payloadType: PeerRecord.payloadType, domain: PeerRecord.domain,
            with: .ed25519(seed: 80)
        ).marshal()
        for (name, bytes) in [("flipped", flipped), ("domain", otherDomain), ("signer", otherSigner)] {
            let (json, status) = try await Self.python(["open", Base16.encode(bytes)])
            #expect(status == 1 && json["ok"] as? Bool == false, "\(name): \(json)")
            // And we refuse the same bytes.
            #expect(throws: RecordError.self, "\(name)") { try SignedPeerRecord(opening: bytes) }
        }
    }

    // MARK: - Live identify with py-libp2p

    @Test func identifyWithPyExchangesVerifiedRecords() async throws {
        try PyPeer.checkInstalled()
        let running = try ChildProcess.Running(PyPeer.python, [Self.script.path, "listen", "--seed", "81"])
        do {
            let line = try await running.firstLine(timeout: .seconds(60)) { $0.hasPrefix("LISTEN ") }
            let pyAddress = try Multiaddr(String(line.dropFirst("LISTEN ".count)))
            let pyPeer = try #require(pyAddress.peerID)
            try await withHost(identity: .ed25519(seed: 82), configuration: .defaults { $0.listenAddresses = ["/ip4/127.0.0.1/tcp/0"] }) { host in
                let connection = try await host.connect(to: pyAddress)
                let message = try await IdentifyService.identify(connection, host: host)
                // py sends its record in field 8, and it verifies here.
                #expect(message.signedPeerRecord != nil, "py-libp2p sent no signed peer record")
                let record = try #require(host.peerstore.signedRecord(for: pyPeer))
                #expect(host.peerstore.certifiedAddresses(for: pyPeer).contains(pyAddress.removingPeerID()))
                #expect(host.peerstore.isCertified(pyAddress, for: pyPeer))
                #expect(host.peerstore.recordCounts.rejected == 0)
                #expect(try SignedPeerRecord(opening: record.bytes).peerID == pyPeer)

                // py's identify of us: it got our record and stored it in its certified address book.
                let event = try await running.firstLine(timeout: .seconds(20)) { text in
                    text.contains("\"event\":\"record\"") && text.contains(host.peerID.description)
                }
                let json = try #require(try JSONSerialization.jsonObject(with: Data(event.utf8)) as? [String: Any])
                #expect(json["sent"] as? Bool == true)
                #expect(json["stored"] as? Bool == true, "py did not store our record: \(json)")
                let ours = try #require(host.signedPeerRecord)
                #expect((json["seq"] as? NSNumber)?.uint64Value == ours.seq)
                #expect(try Set(Self.addresses(json)) == Set(host.listenAddresses))
            }
        } catch {
            _ = try? await running.stop(signal: SIGKILL)
            throw error
        }
        _ = try? await running.stop()
    }

    // MARK: - Live identify with go-libp2p


    /// Go's peerstore addresses of `peer` (FIND_PEER answers a connected peer from its
    /// peerstore), once `condition` holds for them; the last answer after `timeout`.
    static func goAddresses(
        of peer: PeerID, at go: P2PDaemon, until condition: ([Multiaddr]) -> Bool
    ) async throws -> [Multiaddr] {
        let deadline = ContinuousClock.now + timeout
        var last: [Multiaddr] = []
        while ContinuousClock.now < deadline {
            if let info = try? await go.findPeer(peer, timeout: 5) {
                last = info.addresses
                if condition(last) { return last }
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        return last
    }

    @Test func identifyWithGoExchangesVerifiedRecords() async throws {
        try await withDaemon(seed: 130, ["-dhtClient"]) { go in
            try await withHost(identity: .ed25519(seed: 230), configuration: .defaults { $0.listenAddresses = ["/ip4/127.0.0.1/tcp/0"] }) { host in
                let connection = try await host.connect(to: go.fullAddress)
                let message = try await IdentifyService.identify(connection, host: host)
                // go sends its record in field 8, and it verifies here.
                #expect(message.signedPeerRecord != nil, "go-libp2p sent no signed peer record")
                let record = try #require(host.peerstore.signedRecord(for: go.peerID))
                #expect(record.addresses.map { $0.removingPeerID() }.contains(go.address))
                #expect(host.peerstore.isCertified(go.address, for: go.peerID))
                #expect(host.peerstore.recordCounts.rejected == 0)
                // go took our record: it knows our listen address (we dialed it from another port).
                let ours = host.listenAddresses
                let known = try await Self.goAddresses(of: host.peerID, at: go) { Set(ours).isSubset(of: $0) }
                #expect(Set(ours).isSubset(of: known), "go's addresses of us: \(known)")
                #expect(!go.log.contains("error getting peer record"), "go complained: \(go.log)")
            }
        }
    }

    /// Our record carries an address we do not list in identify's listen addresses: go stores the
    /// record's addresses only when our signature verified with its own code, and the listen
    /// addresses when it did not (a flipped signature bit).
    @Test(arguments: [false, true])
    func goVerifiesOurSignature(flipSignature: Bool) async throws {
        let key = PrivateKey.ed25519(seed: flipSignature ? 232 : 231)
        let extra = try Multiaddr("/ip4/127.0.0.1/tcp/\(flipSignature ? 9 : 7)")
        try await withDaemon(seed: flipSignature ? 132 : 131, ["-dhtClient"]) { go in
            let host = P2PHost(identity: key, configuration: .defaults { $0.listenAddresses = ["/ip4/127.0.0.1/tcp/0"] })
            do {
                try await host.start()
                try host.setStreamHandler(IdentifyService.protocolID) { stream in
                    var message = IdentifyMessage()
                    message.publicKey = key.publicKey
                    message.listenAddresses = host.listenAddresses
                    message.protocols = host.supportedProtocols
                    message.observedAddress = stream.connection.remoteAddress
                    var record = try SignedPeerRecord.seal(
                        PeerRecord(peerID: key.peerID, addresses: host.listenAddresses + [extra]), with: key
                    ).bytes
                    if flipSignature { record[record.count - 1] ^= 0x01 }
                    message.signedPeerRecord = record
                    try await stream.writeLengthPrefixed(message.encoded())
                    try await stream.closeWrite()
                }
                _ = try await host.connect(to: go.fullAddress)
                let ours = host.listenAddresses
                let known = try await Self.goAddresses(of: host.peerID, at: go) { Set(ours).isSubset(of: $0) }
                #expect(Set(ours).isSubset(of: known), "go's addresses of us: \(known)")
                if flipSignature {
                    #expect(!known.contains(extra), "go stored an address of a record whose signature is broken")
                    // go-libp2p logs the refusal at ERROR level (p2pd's default), to stderr.
                    #expect(go.log.contains("error getting peer record"), "go's log: \(go.log)")
                } else {
                    #expect(known.contains(extra), "go did not take our signed record: \(known)")
                    #expect(!go.log.contains("peer record"), "go complained: \(go.log)")
                }
                #expect(!host.connections(to: go.peerID).isEmpty, "the connection survives either way")
                await host.shutdown()
            } catch {
                await host.shutdown()
                throw error
            }
        }
    }
}
