import NIOCore
import NIOPosix
import PointSub

/// The physical limit `rr` compares with (issue 11): request/response with PointSub's framing
/// over plain TCP, in channel handlers only — no Swift task on the request path, one connection
/// per request in flight. The server answers in the read that completed the request and flushes
/// once per read; the client handler sends the next request from the read that completed the
/// reply. What PointSub could reach if libp2p (security, muxer, negotiation) and Swift
/// concurrency cost nothing.
enum PureNIOEcho {
    static let maxBlockSize = PlainTCPEchoServer.maxBlockSize

    /// Answers every request with a response of the same payload.
    final class ServerHandler: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer
        private var parser = PointSubMessageParser(maxBlockSize: maxBlockSize, accepting: [.request])

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            parser.append(unwrapInboundIn(data))
            do {
                while let request = try parser.next() {
                    let payload = try request.decodedPayload(maxBlockSize: maxBlockSize)
                    context.write(wrapOutboundOut(PointSubMessage(kind: .response, payload: payload).encoded()), promise: nil)
                }
            } catch {
                context.close(promise: nil)
            }
        }

        func channelReadComplete(context: ChannelHandlerContext) {
            context.flush()
        }
    }

    /// Sends a request, waits for its reply, sends the next, until the window closes; then
    /// completes `done` with its samples and closes the connection.
    final class ClientHandler: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer
        private let payload: ByteBuffer
        private let window: RequestResponseBench.Window
        private let done: EventLoopPromise<[RequestResponseBench.Sample]>
        private var parser = PointSubMessageParser(maxBlockSize: maxBlockSize, accepting: [.response, .error])
        private var samples: [RequestResponseBench.Sample] = []
        private var started = ContinuousClock.now
        private var finished = false

        init(payload: ByteBuffer, window: RequestResponseBench.Window, done: EventLoopPromise<[RequestResponseBench.Sample]>) {
            self.payload = payload
            self.window = window
            self.done = done
            samples.reserveCapacity(4096)
        }

        func channelActive(context: ChannelHandlerContext) {
            send(context: context)
            context.fireChannelActive()
        }

        private func send(context: ChannelHandlerContext) {
            started = .now
            // Encoded per request, as PointSub's client and the task-based TCP side do.
            context.writeAndFlush(wrapOutboundOut(PointSubMessage(kind: .request, payload: payload).encoded()), promise: nil)
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            guard !finished else { return }
            parser.append(unwrapInboundIn(data))
            do {
                guard let reply = try parser.next() else { return }
                guard reply.kind == .response, reply.payload.readableBytes == payload.readableBytes else {
                    throw BenchError("reply of \(reply.payload.readableBytes) bytes to \(payload.readableBytes)")
                }
                let end = ContinuousClock.now
                samples.append(RequestResponseBench.Sample(start: started, end: end))
                if samples.count == 1 { window.workerReady() }
                if window.completed(at: end) {
                    finished = true
                    done.succeed(samples)
                    context.close(promise: nil)
                } else {
                    send(context: context)
                }
            } catch {
                fail(context: context, error)
            }
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            fail(context: context, error)
        }

        func channelInactive(context: ChannelHandlerContext) {
            if !finished {
                finished = true
                done.fail(BenchError("the connection closed before the window did"))
            }
            context.fireChannelInactive()
        }

        private func fail(context: ChannelHandlerContext, _ error: any Error) {
            guard !finished else { return }
            finished = true
            done.fail(error)
            context.close(promise: nil)
        }
    }

    /// A listener on 127.0.0.1 with a `ServerHandler` per connection.
    static func startServer(on group: any EventLoopGroup) async throws -> any Channel {
        try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(ServerHandler()) }
            }
            .bind(host: "127.0.0.1", port: 0)
            .get()
    }

    /// `inFlight` connections, each a `ClientHandler` (one task per connection waits for its
    /// samples; none runs per request).
    static func measure(
        _ address: SocketAddress, from group: any EventLoopGroup, payload: ByteBuffer, inFlight: Int,
        phases: RequestResponseBench.Phases
    ) async throws -> RequestResponseBench.Result {
        try await RequestResponseBench.measure(inFlight: inFlight, phases: phases) { _, window in
            let loop = group.next()
            let done = loop.makePromise(of: [RequestResponseBench.Sample].self)
            _ = try await ClientBootstrap(group: loop)
                .channelOption(.socketOption(.tcp_nodelay), value: 1)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(
                            ClientHandler(payload: payload, window: window, done: done))
                    }
                }
                .connect(to: address)
                .get()
            return try await done.futureResult.get()
        }
    }
}
