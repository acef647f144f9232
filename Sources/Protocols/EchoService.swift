import LibP2P
import NIOCore

/// `/echo/1.0.0`: writes back everything it reads, then closes its side when the dialer closes its.
public struct EchoService: HostService {
    public static let protocolID = "/echo/1.0.0"

    public init() {}

    public func attach(to host: P2PHost) async throws {
        try host.setStreamHandler(Self.protocolID) { stream in
            while let chunk = try await stream.read() {
                try await stream.write(chunk)
            }
            try await stream.closeWrite()
        }
    }
}
