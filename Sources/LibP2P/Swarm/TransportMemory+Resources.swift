import Resources
import Transport

extension TransportMemory {
    /// Charges `account` (a connection's resource scope, or a service scope): what a transport
    /// buffers on a peer's behalf counts against the host's limits like any other memory.
    init(_ account: some MemoryAccount) {
        self.init(reserve: { try account.reserveMemory($0) }, release: { account.releaseMemory($0) })
    }
}
