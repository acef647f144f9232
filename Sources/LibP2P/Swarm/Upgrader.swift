import Identity
import Multistream
import NIOCore
import Resources
import Security
import Yamux

/// Upgrades a raw channel to a secured, multiplexed libp2p connection: multistream-select one of
/// the configured security protocols (Noise, TLS) → its handshake → multistream-select
/// `/yamux/1.0.0` (unless the security handshake agreed on the muxer already) → Yamux.
///
/// Each step's handler is added when the previous one finishes, in that promise's callback on the
/// event loop, so no bytes can slip between steps; a finished multistream handler hands the bytes
/// that followed negotiation to its successor when it is removed.
struct Upgrader: Sendable {
    static let muxerProtocol = "/yamux/1.0.0"

    enum Role {
        case initiator(expectedPeer: PeerID?)
        case responder
    }

    /// In order of preference (a dialer proposes them in this order; a listener accepts any).
    let security: [any SecurityProtocol]
    let yamux: YamuxConfiguration
    let timeout: TimeAmount
    let metrics: HostMetrics

    struct Result: Sendable {
        let remote: SecuredConnection
        /// The security protocol negotiated ("/noise", "/tls/1.0.0").
        let securityProtocol: String
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
        let securityRole: SecurityRole
        switch role {
        case .initiator(let peer): securityRole = .initiator(expectedRemotePeer: peer)
        case .responder: securityRole = .responder
        }
        let isInitiator = securityRole.isInitiator
        @Sendable func negotiation(_ protocols: [String]) -> (NIOLoopBound<MultistreamNegotiationHandler>, EventLoopFuture<String>) {
            let promise = loop.makePromise(of: String.self)
            let role: MultistreamNegotiator.Role = isInitiator ? .dialer(proposals: protocols) : .listener(protocols: protocols)
            // A dialer with one proposal does not wait for the listener's confirmation (one round
            // trip saved per step); the handler checks it later and removes itself.
            let handler = MultistreamNegotiationHandler(role: role, promise: promise, optimistic: isInitiator)
            return (NIOLoopBound(handler, eventLoop: loop), promise.futureResult)
        }
        let securityProtocols = self.security
        let yamux = self.yamux
        let muxers = [Self.muxerProtocol]
        do {
            try channel.pipeline.syncOperations.addHandler(ByteCountingHandler(metrics: metrics))
            // Handlers are not Sendable: NIOLoopBound carries them into callbacks, which all run on `loop`.
            let (negotiator, negotiated) = negotiation(securityProtocols.map(\.protocolID))
            try channel.pipeline.syncOperations.addHandler(negotiator.value)
            return negotiated.flatMapThrowing { chosen -> EventLoopFuture<(SecuredConnection, String)> in
                guard let security = securityProtocols.first(where: { $0.protocolID == chosen }) else {
                    throw MultistreamError(.noProtocolInCommon, "negotiated \(chosen), which is not offered")
                }
                let secured = try security.secure(
                    channel: channel, position: .after(negotiator.value), role: securityRole, muxers: muxers)
                if !negotiator.value.isOptimistic { _ = channel.pipeline.syncOperations.removeHandler(negotiator.value) }
                return secured.map { ($0, chosen) }
            }
            .flatMap { $0 }
            .flatMapThrowing { remote, securityProtocol -> EventLoopFuture<Result> in
                @Sendable func install() throws -> Result {
                    let session = try YamuxSession.install(
                        on: channel, role: isInitiator ? .initiator : .responder, configuration: yamux,
                        resourceScope: resourceScope)
                    return Result(remote: remote, securityProtocol: securityProtocol, session: session)
                }
                // Spec (tls): a muxer agreed in the handshake's ALPN replaces the muxer negotiation.
                if let muxer = remote.muxer {
                    guard muxer == Self.muxerProtocol else {
                        throw MultistreamError(.noProtocolInCommon, "the handshake agreed on \(muxer), which is not offered")
                    }
                    return loop.makeCompletedFuture { try install() }
                }
                let (muxer, muxerDone) = negotiation(muxers)
                try channel.pipeline.syncOperations.addHandler(muxer.value)
                return muxerDone.flatMapThrowing { _ in
                    let result = try install()
                    if !muxer.value.isOptimistic { _ = channel.pipeline.syncOperations.removeHandler(muxer.value) }
                    return result
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
        case is any SecurityError: return "security"
        case is MultistreamError: return "negotiation"
        case is YamuxError: return "muxer"
        case is ChannelError: return "closed"
        default: return "other"
        }
    }
}
