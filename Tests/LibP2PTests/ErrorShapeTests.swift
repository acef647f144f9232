import NIOCore
import NIOPosix
import PointSub
import Resources
import Testing
import Yamux

/// Issue 11: every error type is one shape (`CodedError`: code, message, cause), and an error's
/// text says its cause once, at the end, never inside its own message.
@Suite struct ErrorShapeTests {
    /// How many times `part` occurs in `text`.
    static func occurrences(of part: String, in text: String) -> Int {
        guard !part.isEmpty else { return 0 }
        return text.components(separatedBy: part).count - 1
    }

    /// Checks each link of `error`'s cause chain: the message does not repeat the cause's text,
    /// and the whole description holds the innermost error's text exactly once.
    static func expectCausesSaidOnce(_ error: any CodedError, sourceLocation: SourceLocation = #_sourceLocation) {
        let chain = error.causeChain
        for (parent, child) in zip(chain, chain.dropFirst()) {
            guard let parent = parent as? any CodedError else { continue }
            #expect(!parent.message.contains("\(child)"), "\(parent.message)", sourceLocation: sourceLocation)
            if let child = child as? any CodedError, !child.message.isEmpty {
                #expect(!parent.message.contains(child.message), "\(parent.message)", sourceLocation: sourceLocation)
            }
        }
        let root = "\(chain.last!)"
        #expect(occurrences(of: root, in: error.description) == 1, "\(error)", sourceLocation: sourceLocation)
    }

    @Test func theDescriptionIsTypeCodeMessageThenTheCauseOnce() {
        let root = ResourceError(scope: "peer", scopeName: "12D3Koo", resource: .streamsOutbound, limit: 4, requested: 1)
        let yamux = YamuxError(.resourceLimit, "stream refused", cause: root)
        #expect(yamux.description == "YamuxError.resourceLimit: stream refused (cause: \(root))")
        #expect(root.description == "ResourceError.streamsOutbound: peer 12D3Koo: limit 4 reached")
        #expect(yamux.resourceError == root)
        // Without a message or cause, the code alone.
        #expect(YamuxError(.streamReset).description == "YamuxError.streamReset")
        Self.expectCausesSaidOnce(yamux)
    }

    @Test func causeChainWalksFromTheTopLayerDown() {
        let yamux = YamuxError(.sessionClosed, "the session ended")
        let host = HostError(.dialFailed, "could not connect", cause: yamux)
        let pointSub = PointSubError(.connectionFailed(requestSent: false), "could not open a stream", cause: host)
        let chain = pointSub.causeChain
        #expect(chain.count == 3)
        #expect(chain[0] is PointSubError)
        #expect((chain[1] as? HostError)?.code == .dialFailed)
        #expect((chain[2] as? YamuxError)?.code == .sessionClosed)
        #expect(pointSub.firstCause(as: YamuxError.self)?.message == "the session ended")
        #expect(pointSub.firstCause(as: NoiseError.self) == nil)
        Self.expectCausesSaidOnce(pointSub)
    }

    @Test func anErrorListIsOneCauseSayingEachError() {
        let refused = TransportError(.connectionRefused, "cannot connect to /ip4/127.0.0.1/tcp/1", reason: "connection refused")
        let noise = NoiseError(.peerIDMismatch, "the remote is another peer")
        let list = ErrorList([refused, noise])
        #expect(list.description == "\(refused); \(noise)")
        let host = HostError(.dialFailed, "could not connect to the peer", causes: [refused, noise])
        #expect(host.cause is ErrorList)
        #expect(host.causes.count == 2)
        #expect(host.description == "HostError.dialFailed: could not connect to the peer (cause: \(refused); \(noise))")
        // firstCause looks into each error of the list.
        #expect(host.firstCause(as: NoiseError.self) == noise)
        // One cause is itself, not a list of one.
        #expect(HostError(.dialFailed, "x", causes: [refused]).cause is TransportError)
        #expect(HostError(.dialFailed, "x", causes: []).cause == nil)
    }

    @Test func aRealDialFailureSaysEachCauseOnce() async throws {
        // A port nothing listens on: bind, note the port, close.
        let group = MultiThreadedEventLoopGroup.singleton
        let channel = try await ServerBootstrap(group: group).bind(host: "127.0.0.1", port: 0).get()
        let port = channel.localAddress!.port!
        try await channel.close()
        try await withHost { client in
            let someone = PeerID(publicKey: PrivateKey.ed25519(seed: 31).publicKey)
            let address = try Multiaddr("/ip4/127.0.0.1/tcp/\(port)").appending(peerID: someone)
            do {
                _ = try await client.connect(to: address)
                Issue.record("connected to a closed port")
            } catch let error as HostError {
                #expect(error.firstCause(as: TransportError.self)?.code == .connectionRefused, "\(error)")
                #expect(error.causeChain.count >= 3, "host, transport, NIO: \(error)")
                Self.expectCausesSaidOnce(error)
            }
        }
    }

    @Test func parseFailuresKeepTheirCause() {
        // Multiformats: a /p2p value that is no base58btc.
        let text = "/ip4/1.2.3.4/tcp/1/p2p/Qm0OIl"  // a String value: the throwing parser, not the literal
        do {
            _ = try Multiaddr(text)
            Issue.record("parsed an invalid /p2p value")
        } catch {
            let error = error as? MultiformatsError
            #expect(error?.code == .malformedMultiaddr)
            #expect(error?.cause is MultiformatsError, "\(String(describing: error))")
            if let error { Self.expectCausesSaidOnce(error) }
        }
        // Identity: a peer ID that is neither base58btc nor a CID.
        do throws(IdentityError) {
            _ = try PeerID("not a peer id")
            Issue.record("parsed an invalid peer ID")
        } catch {
            #expect(error == .invalidPeerID)
            #expect(error.cause is MultiformatsError, "\(error)")
            Self.expectCausesSaidOnce(error)
        }
    }

    /// One of each public error type, each the one shape: the description starts with the type
    /// and code, has the message, and says the cause once.
    @Test func everyErrorTypeIsACodedError() {
        let cause = TransportError(.connectionFailed, "cannot connect", reason: "no route to host")
        let errors: [any CodedError] = [
            MultiformatsError.malformedMultiaddr("bad /p2p value", cause: cause),
            IdentityError(.invalidKey, "bad key", cause: cause),
            RecordError(.malformed, "bad record", cause: cause),
            ResourceError(scope: "system", resource: .memory, limit: 1024, requested: 2048),
            cause,
            MultistreamError(.invalidLength, "invalid length prefix", cause: cause),
            NoiseError(.invalidPayload, "bad payload", cause: cause),
            TLSError(.malformedCertificate, "bad certificate", cause: cause),
            YamuxError(.sessionClosed, "channel error", cause: cause),
            HostError(.dialFailed, "could not connect", cause: cause),
            ObservedAddressTable.Rejection.transportMismatch,
            PointSubError(.connectionFailed(requestSent: true), "reading the reply failed", cause: cause),
            PointSubNetError(.reset, "read: the stream was reset", cause: cause),
            NodeListError(.localPeer, "refusing to add our own peer ID"),
            PubSubError.malformedRPC("not valid protobuf", cause: cause),
            MessageSigning.Failure.badSignature,
            GossipSubConfigurationError(parameter: "d", problem: "must be at least 1"),
            RouteError(.connectionFailed, "dispatch to b failed", route: "b", cause: cause),
            DNSError(.queryFailed, "no answer from 127.0.0.53", cause: cause),
            KademliaError(.notFound, "no peer had the value"),
        ]
        for error in errors {
            let type = "\(type(of: error))"
            #expect(error.description.hasPrefix("\(type).\(error.code)"), "\(error)")
            #expect(error.description.contains(error.message), "\(error)")
            if let cause = error.cause {
                #expect(Self.occurrences(of: "\(cause)", in: error.description) == 1, "\(error)")
                #expect(!error.message.contains("\(cause)"), "\(error)")
            }
        }
        // Security errors are coded errors too: the host classifies handshake failures by them.
        let security: [any SecurityError] = [NoiseError(.decryptionFailed, ""), TLSError(.handshakeFailed, "")]
        #expect(security.map { "\($0.code)" } == ["decryptionFailed", "handshakeFailed"])
    }

    @Test func equalityKeepsWhatTestsMatchOn() {
        // Identity and record errors compare codes only, so the static values match any message.
        #expect(IdentityError(.invalidKey, "RSA key refused", cause: ErrorList([])) == .invalidKey)
        #expect(RecordError(.malformed, "envelope protobuf") == .malformed)
        // Converted enums compare code and message, as their cases' values did.
        #expect(MultiformatsError.unknownProtocolName("foo") == MultiformatsError(.unknownProtocolName, "unknown multiaddr protocol \"foo\""))
        #expect(MultiformatsError.unknownProtocolName("foo") != .unknownProtocolName("bar"))
        #expect(PubSubError.notEnoughPeers(topic: "t", known: 0, required: 1) != .notEnoughPeers(topic: "t", known: 1, required: 2))
        #expect(MessageSigning.Failure(.badSignature, "another text") == .badSignature)
    }
}
