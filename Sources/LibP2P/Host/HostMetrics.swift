import Metrics
import NIOCore

/// The host's swift-metrics instruments, created once (a factory lookup per event would cost
/// more than the event). Labels start with `pointsub_`; dimension values are from fixed sets.
struct HostMetrics: Sendable {
    let bytesIn = Counter(label: "pointsub_transport_bytes_total", dimensions: [("direction", "in")])
    let bytesOut = Counter(label: "pointsub_transport_bytes_total", dimensions: [("direction", "out")])

    func connectionOpened(_ direction: Connection.Direction, transport: String = "tcp") {
        Counter(
            label: "pointsub_connections_opened_total",
            dimensions: [("direction", direction.rawValue), ("transport", transport)]
        ).increment()
    }

    func connectionClosed(_ direction: Connection.Direction, transport: String = "tcp") {
        Counter(
            label: "pointsub_connections_closed_total",
            dimensions: [("direction", direction.rawValue), ("transport", transport)]
        ).increment()
    }

    /// `reason`: timeout, security, muxer, resource, other.
    func handshakeFailed(_ direction: Connection.Direction, reason: String) {
        Counter(
            label: "pointsub_handshake_failures_total", dimensions: [("direction", direction.rawValue), ("reason", reason)]
        ).increment()
    }

    func connectionRefused(reason: String) {
        Counter(label: "pointsub_connections_refused_total", dimensions: [("reason", reason)]).increment()
    }

    func connectionTrimmed(_ reason: ConnectionManager.TrimReason) {
        Counter(label: "pointsub_connections_trimmed_total", dimensions: [("reason", reason.rawValue)]).increment()
    }

    /// `protocolID` must be one of ours (a registered handler or a protocol we asked for), never a
    /// string the remote chose.
    func streamOpened(_ direction: Connection.Direction, protocolID: String) {
        Counter(
            label: "pointsub_streams_opened_total", dimensions: [("direction", direction.rawValue), ("protocol", protocolID)]
        ).increment()
    }

    func streamRefused(reason: String) {
        Counter(label: "pointsub_streams_refused_total", dimensions: [("reason", reason)]).increment()
    }
}

/// First handler of every connection: counts the bytes that cross the socket.
final class ByteCountingHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let metrics: HostMetrics

    init(metrics: HostMetrics) {
        self.metrics = metrics
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        metrics.bytesIn.increment(by: Int64(unwrapInboundIn(data).readableBytes))
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        metrics.bytesOut.increment(by: Int64(unwrapOutboundIn(data).readableBytes))
        context.write(data, promise: promise)
    }
}
