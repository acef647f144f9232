import NIOCore
import PointSub
import Testing

/// A started host without the identify service, answering identify with `message(connection)`
/// instead (to send records a real host never would).
private func withLiar<T: Sendable>(
    identity: PrivateKey, _ message: @escaping @Sendable (Connection) -> IdentifyMessage,
    _ body: (P2PHost) async throws -> T
) async throws -> T {
    let host = P2PHost(identity: identity, configuration: listeningConfig([EchoService()]))
    do {
        try await host.start()
        try host.setStreamHandler(IdentifyService.protocolID) { stream in
            try await stream.writeLengthPrefixed(message(stream.connection).encoded())
            try await stream.closeWrite()
        }
        let result = try await body(host)
        await host.shutdown()
        return result
    } catch {
        await host.shutdown()
        throw error
    }
}

@Suite(.timeLimit(.minutes(2)))
struct SignedRecordHostTests {
    @Test func identifyExchangesCertifiedAddressesBothWays() async throws {
        try await withHost(identity: .ed25519(seed: 31), configuration: listeningConfig()) { server in
            try await withHost(identity: .ed25519(seed: 32), configuration: listeningConfig()) { client in
                let connection = try await client.connect(to: server.addresses[0])
                let message = try await IdentifyService.identify(connection, host: client)
                #expect(message.signedPeerRecord != nil)
                // The client verified the server's record...
                let record = try #require(client.peerstore.signedRecord(for: server.peerID))
                #expect(record.addresses == server.listenAddresses)
                #expect(client.peerstore.certifiedAddresses(for: server.peerID) == server.listenAddresses)
                for address in server.listenAddresses {
                    #expect(client.peerstore.isCertified(address, for: server.peerID))
                    #expect(client.peerstore.isCertified(address.appending(peerID: server.peerID), for: server.peerID))
                }
                #expect(!client.peerstore.isCertified("/ip4/127.0.0.1/tcp/1", for: server.peerID))
                // ... and keeps the envelope to pass on: it opens to the same record.
                #expect(try SignedPeerRecord(opening: record.bytes).record == record.record)
                #expect(client.peerstore.recordCounts.accepted >= 1)
                #expect(client.peerstore.recordCounts.rejected == 0)
                // Dials try certified addresses first.
                let known = client.peerstore.addresses(for: server.peerID)
                #expect(Array(known.prefix(server.listenAddresses.count)) == server.listenAddresses)

                // The server asks the dialer shortly after accepting: it stores the client's record.
                try await eventually("the server storing the client's record") {
                    server.peerstore.signedRecord(for: client.peerID) != nil
                }
                #expect(server.peerstore.certifiedAddresses(for: client.peerID) == client.listenAddresses)

                // Asking again sends the same record (signed once per set of addresses): refreshed.
                let again = try await IdentifyService.identify(connection, host: client)
                #expect(again.signedPeerRecord == message.signedPeerRecord)
                #expect(client.peerstore.signedRecord(for: server.peerID)?.seq == record.seq)
            }
        }
    }

    @Test func forgedOrForeignRecordsAreIgnoredNotFatal() async throws {
        let liarKey = PrivateKey.ed25519(seed: 41)
        let thirdKey = PrivateKey.ed25519(seed: 42)
        let fake: [Multiaddr] = ["/ip4/192.0.2.9/tcp/9"]
        // A valid record of a third peer; one claiming the liar's ID, signed by the third key;
        // one with its signature flipped; bytes that are no envelope at all.
        let foreign = try SignedPeerRecord.seal(PeerRecord(peerID: thirdKey.peerID, addresses: fake), with: thirdKey).bytes
        let claimed = try SignedEnvelope.seal(
            payload: PeerRecord(peerID: liarKey.peerID, addresses: fake).encoded(),
            payloadType: PeerRecord.payloadType, domain: PeerRecord.domain, with: thirdKey
        ).marshal()
        var flipped = try SignedPeerRecord.seal(PeerRecord(peerID: liarKey.peerID, addresses: fake), with: liarKey).bytes
        flipped[flipped.count - 1] ^= 1
        let garbage: [UInt8] = [0x0a, 0xff, 0x01, 0x02]
        for (index, bad) in [foreign, claimed, flipped, garbage].enumerated() {
            try await withLiar(identity: liarKey, { connection in
                var message = IdentifyMessage()
                message.publicKey = liarKey.publicKey
                message.listenAddresses = fake
                message.protocols = [IdentifyService.protocolID, EchoService.protocolID]
                message.signedPeerRecord = bad
                return message
            }) { liar in
                try await withHost(identity: .ed25519(seed: 43)) { client in
                    let connection = try await client.connect(to: liar.addresses[0])
                    let rejectedBefore = client.peerstore.recordCounts.rejected
                    _ = try await IdentifyService.identify(connection, host: client)
                    #expect(client.peerstore.recordCounts.rejected > rejectedBefore, "case \(index)")
                    #expect(client.peerstore.signedRecord(for: liarKey.peerID) == nil, "case \(index)")
                    #expect(client.peerstore.signedRecord(for: thirdKey.peerID) == nil, "case \(index)")
                    #expect(client.peerstore.certifiedAddresses(for: liarKey.peerID).isEmpty, "case \(index)")
                    // The rest of the message counts (unverified), and the connection lives on.
                    #expect(client.peerstore.info(for: liarKey.peerID)?.addresses.keys.contains(fake[0]) == true)
                    #expect(!client.peerstore.isCertified(fake[0], for: liarKey.peerID))
                    #expect(!connection.isClosed)
                    #expect(try await echo(client, to: liarKey.peerID, "still here") == "still here")
                }
            }
        }
    }

    @Test func observedAddressIsRecordedPerReporter() async throws {
        try await withHost(identity: .ed25519(seed: 51), configuration: listeningConfig()) { server in
            try await withHost(identity: .ed25519(seed: 52)) { client in
                let connection = try await client.connect(to: server.addresses[0])
                let message = try await IdentifyService.identify(connection, host: client)
                // The server reports where it sees us: our side of the connection.
                let local = try #require(connection.localAddress)
                #expect(message.observedAddress == local)
                let seen = try #require(client.observedAddresses[local])
                #expect(seen.reporters == 1)
                #expect(seen.groups == 1)
                // Asking again does not count the same peer twice.
                _ = try await IdentifyService.identify(connection, host: client)
                #expect(client.observedAddresses[local]?.reporters == 1)
                #expect(client.observedAddresses.all.count == 1)
            }
        }
    }
}

@Suite struct PeerstoreRecordTests {
    static let key = PrivateKey.ed25519(seed: 61)

    static func signed(seq: UInt64, _ addresses: [Multiaddr]) throws -> SignedPeerRecord {
        try SignedPeerRecord.seal(PeerRecord(peerID: key.peerID, seq: seq, addresses: addresses), with: key)
    }

    @Test func newerSeqReplacesOlderIsIgnored() throws {
        let store = Peerstore()
        let peer = Self.key.peerID
        let first: [Multiaddr] = ["/ip4/192.0.2.1/tcp/1", "/ip4/192.0.2.1/tcp/2"]
        let second: [Multiaddr] = ["/ip4/192.0.2.2/tcp/3"]
        #expect(store.addSignedRecord(try Self.signed(seq: 10, first), ttl: .permanent) == .accepted)
        #expect(store.certifiedAddresses(for: peer) == first)
        #expect(store.addSignedRecord(try Self.signed(seq: 20, second), ttl: .permanent) == .accepted)
        #expect(store.certifiedAddresses(for: peer) == second)
        #expect(!store.isCertified(first[0], for: peer))
        #expect(store.addSignedRecord(try Self.signed(seq: 15, first), ttl: .permanent) == .stale(current: 20))
        #expect(store.certifiedAddresses(for: peer) == second)
        #expect(store.signedRecord(for: peer)?.seq == 20)
        #expect(store.addSignedRecord(try Self.signed(seq: 20, second), ttl: .permanent) == .refreshed)
        let counts = store.recordCounts
        #expect(counts.accepted == 3 && counts.stale == 1 && counts.rejected == 0)
    }

    @Test func certifiedAndUnverifiedAreKeptApartAndCertifiedDialFirst() throws {
        let store = Peerstore()
        let peer = Self.key.peerID
        let unverified: [Multiaddr] = ["/ip4/10.0.0.1/tcp/1", "/ip4/192.0.2.7/tcp/7"]
        store.addAddresses(unverified, for: peer, ttl: .permanent)
        #expect(store.certifiedAddresses(for: peer).isEmpty)
        let certified: [Multiaddr] = ["/ip4/192.0.2.7/tcp/7", "/ip4/203.0.113.5/tcp/5"]
        try store.consumeSignedRecord(try Self.signed(seq: 1, certified).bytes, expectedPeer: peer, ttl: .permanent)
        #expect(store.addresses(for: peer) == certified + ["/ip4/10.0.0.1/tcp/1"])
        #expect(store.info(for: peer)?.addresses.count == 2)
        #expect(!store.isCertified("/ip4/10.0.0.1/tcp/1", for: peer))
        // An expired certified address is no longer certified (the record stays, for its seq).
        try store.consumeSignedRecord(try Self.signed(seq: 2, ["/ip4/10.9.9.9/tcp/9"]).bytes, expectedPeer: peer, ttl: .custom(.zero))
        #expect(store.certifiedAddresses(for: peer).isEmpty)
        #expect(store.signedRecord(for: peer)?.seq == 2)
    }

    @Test func consumeRefusesRecordsOfAnotherPeerAndCountsThem() throws {
        let store = Peerstore()
        let bytes = try Self.signed(seq: 1, ["/ip4/192.0.2.1/tcp/1"]).bytes
        #expect(throws: RecordError.unexpectedPeer) {
            try store.consumeSignedRecord(bytes, expectedPeer: PrivateKey.ed25519(seed: 62).peerID, ttl: .permanent)
        }
        #expect(throws: RecordError.malformed) {
            try store.consumeSignedRecord(Array(bytes.dropLast()), expectedPeer: nil, ttl: .permanent)
        }
        #expect(store.recordCounts.rejected == 2)
        #expect(store.signedRecord(for: Self.key.peerID) == nil)
        // Without an expected peer (a record passed on by someone else) it is the signer's.
        #expect(try store.consumeSignedRecord(bytes, expectedPeer: nil, ttl: .permanent).update == .accepted)
    }

    @Test func localRecordIsSignedOncePerSetOfAddresses() {
        let store = Peerstore()
        let a = store.localSignedRecord(addresses: ["/ip4/127.0.0.1/tcp/1"], key: Self.key)
        let b = store.localSignedRecord(addresses: ["/ip4/127.0.0.1/tcp/1"], key: Self.key)
        let c = store.localSignedRecord(addresses: ["/ip4/127.0.0.1/tcp/2"], key: Self.key)
        #expect(a != nil && a == b)
        #expect((c?.seq ?? 0) > (a?.seq ?? .max))
        #expect(c?.addresses == ["/ip4/127.0.0.1/tcp/2"])
    }
}

@Suite struct ObservedAddressTableTests {
    static let observed: Multiaddr = "/ip4/203.0.113.7/tcp/4001"
    static let local: Multiaddr = "/ip4/10.0.0.2/tcp/4001"

    static func peer(_ n: UInt64) -> PeerID { PrivateKey.ed25519(seed: 700 + n).peerID }

    @Test func countsDistinctPeersAndSourceGroups() throws {
        var table = ObservedAddressTable()
        let now = ContinuousClock.now
        // Three peers behind one IPv4 address, one elsewhere, two in one IPv6 /56.
        let sources: [Multiaddr] = [
            "/ip4/198.51.100.1/tcp/1000", "/ip4/198.51.100.1/tcp/1001", "/ip4/198.51.100.1/tcp/1002",
            "/ip4/198.51.100.2/tcp/1000", "/ip6/2001:db8:0:1::1/tcp/1", "/ip6/2001:db8:0:2::1/tcp/1",
        ]
        for (n, source) in sources.enumerated() {
            try table.record(
                Self.observed, reporter: Self.peer(UInt64(n)), reporterAddress: source, localAddress: Self.local,
                connectionID: UInt64(n), now: now)
        }
        let entry = try #require(table.addresses().first)
        #expect(entry.address == Self.observed)
        #expect(entry.reporters == 6)
        #expect(entry.groups == 3)
        // The same peer reporting again (or another address of the same shape) still counts once.
        try table.record(
            "/ip4/203.0.113.8/tcp/4001", reporter: Self.peer(0), reporterAddress: sources[0], localAddress: Self.local,
            connectionID: 0, now: now)
        #expect(table.addresses().first { $0.address == Self.observed }?.reporters == 5)
        #expect(table.addresses().first { $0.address == "/ip4/203.0.113.8/tcp/4001" }?.reporters == 1)
    }

    @Test func refusesAddressesNoPeerCanSeeUsAt() {
        var table = ObservedAddressTable()
        let now = ContinuousClock.now
        let bad: [(Multiaddr, ObservedAddressTable.Rejection)] = [
            ("/ip4/0.0.0.0/tcp/4001", .notAnObservableAddress),
            ("/ip4/203.0.113.7/tcp/0", .notAnObservableAddress),
            ("/dns4/example.com/tcp/4001", .notAnObservableAddress),
            ("/ip4/203.0.113.7", .notAnObservableAddress),
            (Self.observed.appending(peerID: Self.peer(1)).appending(.p2pCircuit), .notAnObservableAddress),
            ("/ip6/2001:db8::7/tcp/4001", .transportMismatch),
            ("/ip4/203.0.113.7/udp/4001/quic-v1", .transportMismatch),
        ]
        for (address, reason) in bad {
            #expect(throws: reason, "\(address)") {
                try table.record(
                    address, reporter: Self.peer(1), reporterAddress: "/ip4/198.51.100.1/tcp/1", localAddress: Self.local,
                    connectionID: 1, now: now)
            }
        }
        #expect(table.addresses().isEmpty)
        // Our own /p2p suffix is dropped.
        #expect(throws: Never.self) {
            try table.record(
                Self.observed.appending(peerID: Self.peer(9)), reporter: Self.peer(1),
                reporterAddress: "/ip4/198.51.100.1/tcp/1", localAddress: Self.local, connectionID: 1, now: now)
        }
        #expect(table.addresses().map(\.address) == [Self.observed])
    }

    @Test func boundedAndTheConfirmedAddressSurvivesAFlood() throws {
        var limits = ObservedAddressTable.Limits()
        limits.maxAddresses = 8
        limits.maxObservations = 32
        var table = ObservedAddressTable(limits: limits)
        let now = ContinuousClock.now
        for n in 0..<3 {
            try table.record(
                Self.observed, reporter: Self.peer(UInt64(n)), reporterAddress: try Multiaddr("/ip4/198.51.100.\(n + 1)/tcp/1"),
                localAddress: Self.local, connectionID: UInt64(n), now: now)
        }
        // Many peers from one address, each claiming another address of ours.
        for n in 10..<200 {
            try table.record(
                try Multiaddr("/ip4/192.0.2.1/tcp/\(n)"), reporter: Self.peer(UInt64(n)),
                reporterAddress: try Multiaddr("/ip4/198.51.100.99/tcp/\(n)"),
                localAddress: Self.local, connectionID: UInt64(n), now: now + .milliseconds(n))
        }
        #expect(table.addresses().count <= limits.maxAddresses)
        #expect(table.observationCount <= limits.maxObservations)
        let best = try #require(table.addresses().first)
        #expect(best.address == Self.observed)
        #expect(best.groups == 3)
    }

    @Test func observationsExpireAfterTheirConnectionCloses() throws {
        var table = ObservedAddressTable()
        let now = ContinuousClock.now
        try table.record(
            Self.observed, reporter: Self.peer(1), reporterAddress: "/ip4/198.51.100.1/tcp/1", localAddress: Self.local,
            connectionID: 7, now: now)
        table.expire(now: now + .seconds(3600))
        #expect(table.addresses().count == 1, "an open connection's observation stays")
        table.connectionClosed(7, now: now)
        table.expire(now: now + table.limits.ttlAfterClose - .seconds(1))
        #expect(table.addresses().count == 1)
        table.expire(now: now + table.limits.ttlAfterClose)
        #expect(table.addresses().isEmpty)
    }
}

@Suite struct IdentifySignedRecordFieldTests {
    @Test func field8RoundTripsAndEmptyIsAbsent() throws {
        let key = PrivateKey.ed25519(seed: 71)
        var message = IdentifyMessage()
        message.publicKey = key.publicKey
        message.signedPeerRecord = try SignedPeerRecord.seal(PeerRecord(peerID: key.peerID, addresses: []), with: key).bytes
        let encoded = message.encoded()
        #expect(try IdentifyMessage(decoding: encoded) == message)
        // Field 8 is written as bytes field 8 (key 0x42).
        var reader = ProtobufReader(encoded)
        var fields: [Int] = []
        while let (field, _) = try reader.next() { fields.append(field) }
        #expect(fields.last == 8)
        var w = ProtobufWriter()
        w.writeBytesField(8, [UInt8]())
        #expect(try IdentifyMessage(decoding: w.bytes).signedPeerRecord == nil)
    }
}
