import Basics
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// A small stub resolver: one question to one server over UDP, the answer checked against the
/// question (ID, source) and decoded within `DNSMessage.Limits`. For TXT lookups (`/dnsaddr`);
/// A/AAAA names (`/dns4`, `/dns6`) go through the system resolver in the transports.
public struct DNSClient: Sendable {
    /// The server asked (from /etc/resolv.conf by default).
    public var server: SocketAddress
    /// How long one query may take.
    public var timeout: Duration
    /// Decoding limits of answers.
    public var limits: DNSMessage.Limits
    let group: any EventLoopGroup

    /// A client of `server`.
    public init(
        server: SocketAddress, timeout: Duration = .seconds(5), limits: DNSMessage.Limits = .init(),
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) {
        self.server = server
        self.timeout = timeout
        self.limits = limits
        self.group = group
    }

    /// A client of the first `nameserver` in `/etc/resolv.conf` (port 53); nil when there is none.
    public static func system(timeout: Duration = .seconds(5)) -> DNSClient? {
        guard let text = try? String(contentsOfFile: "/etc/resolv.conf", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") {
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard fields.count >= 2, fields[0] == "nameserver",
                let address = try? SocketAddress(ipAddress: String(fields[1]), port: 53)
            else { continue }
            return DNSClient(server: address, timeout: timeout)
        }
        return nil
    }

    /// Asks for `type` records of `name`; returns the answer message. Throws `.queryFailed` on a
    /// timeout or an error rcode (other than "no such name", which is an empty answer).
    public func query(_ name: String, type: DNSMessage.RecordType) async throws -> DNSMessage {
        let id = UInt16.random(in: 0...UInt16.max)
        let question = try DNSMessage.query(id: id, name: name, type: type).encoded()
        let server = self.server
        let limits = self.limits
        let loop = group.next()
        let answer = loop.makePromise(of: DNSMessage.self)
        let bind = server.protocol == .inet6 ? "::" : "0.0.0.0"
        let channel = try await DatagramBootstrap(group: loop)
            // One datagram up to the limit (NIO's default reads 2 KiB and would cut larger answers).
            .channelOption(ChannelOptions.recvAllocator, value: FixedSizeRecvByteBufferAllocator(capacity: limits.maxMessageSize))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(AnswerHandler(id: id, server: server, limits: limits, answer: answer))
                }
            }
            .bind(host: bind, port: 0).get()
        let timer = Deadline.after(timeout).schedule(on: loop) {
            answer.fail(DNSError(.queryFailed, "no answer from \(server) for \(name) in time"))
        }
        defer {
            timer.cancel()
            channel.close(promise: nil)
        }
        let envelope = AddressedEnvelope(remoteAddress: server, data: ByteBuffer(bytes: question))
        try await channel.writeAndFlush(envelope)
        let message = try await answer.futureResult.get()
        // TC: the server cut the answer to fit UDP; we do not retry over TCP.
        guard message.flags & 0x0200 == 0 else {
            throw DNSError(.limitExceeded, "\(server) truncated its answer for \(name) (no TCP fallback)")
        }
        guard message.rcode == 0 || message.rcode == 3 else {
            throw DNSError(.queryFailed, "\(server) answered \(name) with rcode \(message.rcode)")
        }
        return message
    }

    /// Takes the first datagram from the server with the query's ID; ignores everything else
    /// (a spoofed or stray datagram cannot fail the query, only the timeout can).
    private final class AnswerHandler: ChannelInboundHandler, Sendable {
        typealias InboundIn = AddressedEnvelope<ByteBuffer>
        let id: UInt16
        let server: SocketAddress
        let limits: DNSMessage.Limits
        let answer: EventLoopPromise<DNSMessage>

        init(id: UInt16, server: SocketAddress, limits: DNSMessage.Limits, answer: EventLoopPromise<DNSMessage>) {
            self.id = id
            self.server = server
            self.limits = limits
            self.answer = answer
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let envelope = unwrapInboundIn(data)
            guard envelope.remoteAddress == server else { return }
            let bytes = Array(envelope.data.readableBytesView)
            do {
                let message = try DNSMessage(decoding: bytes, limits: limits)
                guard message.id == id, message.isResponse else { return }
                answer.succeed(message)
            } catch {
                answer.fail(error)
            }
        }
    }
}
