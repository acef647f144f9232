import Identity
import Multistream
import NIOCore
import Noise
import Resources
import Yamux

/// Upgrades a raw TCP channel to a secured, multiplexed libp2p connection:
/// multistream-select `/noise` → Noise XX → multistream-select `/yamux/1.0.0` → Yamux.
///
/// Each step's handler is added when the previous one finishes, in that promise's callback on the
/// event loop, so no bytes can slip between steps; a finished multistream handler hands the bytes
/// that followed negotiation to its successor when it is removed.
struct Upgrader: Sendable {
    static let securityProtocol = "/noise"
    static let muxerProtocol = "/yamux/1.0.0"

    enum Role {
        case initiator(expectedPeer: PeerID?)
        case responder
    }

    let local: NoiseLocalIdentity
    let yamux: YamuxConfiguration
    let timeout: TimeAmount
    let metrics: HostMetrics

    struct Result: Sendable {
        let remote: NoiseHandshakeResult
        let session: YamuxSession
    }

    /// Call it from the channel's initializer, before the channel is active.
    /// `timeout` overrides the configured handshake timeout (a dial passes its whole budget, which
    /// then also covers the TCP connect, since the timer starts in the initializer).
    /// `resourceScope`: the connection's scope; the Yamux session opens a stream scope in it for
    /// every stream and reserves its receive window there (nil: no accounting).
    func upgrade(
        channel: Channel, role: Role, timeout: TimeAmount? = nil, resourceScope: ConnectionScope? = nil
    ) -> EventLoopFuture<Result> {
        let loop = channel.eventLoop
        let done = loop.makePromise(of: Result.self)
        let limit = timeout ?? self.timeout
        let deadline = loop.scheduleTask(in: limit) {
            if case .initiator = role {
                done.fail(HostError(.dialTimeout, "dial timed out after \(limit)"))
            } else {
                done.fail(HostError(.upgradeFailed, "connection upgrade timed out after \(limit)"))
            }
            channel.close(promise: nil)
        }
        done.futureResult.whenComplete { _ in deadline.cancel() }
        done.futureResult.whenFailure { _ in channel.close(promise: nil) }
        // Called from a channel initializer, the first handler goes in before the channel can read:
        // the remote's first bytes (its multistream header) must not reach an empty pipeline.
        if loop.inEventLoop {
            start(channel: channel, role: role, resourceScope: resourceScope).cascade(to: done)
        } else {
            loop.execute { self.start(channel: channel, role: role, resourceScope: resourceScope).cascade(to: done) }
        }
        return done.futureResult
    }

    private func start(channel: Channel, role: Role, resourceScope: ConnectionScope?) -> EventLoopFuture<Result> {
        let loop = channel.eventLoop
        let isInitiator: Bool
        let expectedPeer: PeerID?
        switch role {
        case .initiator(let peer):
            isInitiator = true
            expectedPeer = peer
        case .responder:
            isInitiator = false
            expectedPeer = nil
        }
        @Sendable func negotiation(_ proto: String) -> (NIOLoopBound<MultistreamNegotiationHandler>, EventLoopFuture<String>) {
            let promise = loop.makePromise(of: String.self)
            let role: MultistreamNegotiator.Role = isInitiator ? .dialer(proposals: [proto]) : .listener(protocols: [proto])
            // The dialer does not wait for the listener's confirmation (one round trip saved per
            // step); the handler checks it later and removes itself.
            let handler = MultistreamNegotiationHandler(role: role, promise: promise, optimistic: isInitiator)
            return (NIOLoopBound(handler, eventLoop: loop), promise.futureResult)
        }
        let local = self.local
        let yamux = self.yamux
        do {
            try channel.pipeline.syncOperations.addHandler(ByteCountingHandler(metrics: metrics))
            // Handlers are not Sendable: NIOLoopBound carries them into callbacks, which all run on `loop`.
            let (security, securityDone) = negotiation(Self.securityProtocol)
            try channel.pipeline.syncOperations.addHandler(security.value)
            return securityDone.flatMapThrowing { _ -> EventLoopFuture<NoiseHandshakeResult> in
                let promise = loop.makePromise(of: NoiseHandshakeResult.self)
                let handshake = NoiseLibp2pHandshake(
                    role: isInitiator ? .initiator : .responder, local: local, expectedRemotePeer: expectedPeer)
                try channel.pipeline.syncOperations.addHandler(
                    NoiseHandler(handshake: handshake, promise: promise), position: .after(security.value))
                if !isInitiator { _ = channel.pipeline.syncOperations.removeHandler(security.value) }
                return promise.futureResult
            }
            .flatMap { $0 }
            .flatMapThrowing { remote -> EventLoopFuture<Result> in
                let (muxer, muxerDone) = negotiation(Self.muxerProtocol)
                try channel.pipeline.syncOperations.addHandler(muxer.value)
                return muxerDone.flatMapThrowing { _ in
                    let session = try YamuxSession.install(
                        on: channel, role: isInitiator ? .initiator : .responder, configuration: yamux,
                        resourceScope: resourceScope)
                    if !isInitiator { _ = channel.pipeline.syncOperations.removeHandler(muxer.value) }
                    return Result(remote: remote, session: session)
                }
            }
            .flatMap { $0 }
        } catch {
            return loop.makeFailedFuture(error)
        }
    }
}

extension Upgrader {
    /// A short, fixed-set name for why an upgrade failed (a metrics dimension and a log key).
    static func failureReason(_ error: any Error) -> String {
        switch error {
        case let error as HostError where error.code == .dialTimeout || error.code == .upgradeFailed:
            return "timeout"
        case is NoiseError: return "security"
        case is MultistreamError: return "negotiation"
        case is YamuxError: return "muxer"
        case is ChannelError: return "closed"
        default: return "other"
        }
    }
}
