#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Persistent identities: a file holding the raw libp2p `PrivateKey` protobuf
/// bytes (go-libp2p convention).
public enum KeyFile {
    /// Key files are tiny; anything much larger is not a key file.
    static let maxSize = 64 * 1024

    public static func read(path: String) throws(IdentityError) -> PrivateKey {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw IdentityError(.keyFile, "cannot open \(path): \(errnoString())") }
        defer { close(fd) }
        var data: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = chunk.withUnsafeMutableBytes { Glue.read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw IdentityError(.keyFile, "cannot read \(path): \(errnoString())")
            }
            if n == 0 { break }
            data.append(contentsOf: chunk[0..<n])
            guard data.count <= maxSize else { throw IdentityError(.keyFile, "\(path) is too large to be a key file") }
        }
        return try PrivateKey(marshaled: data)
    }

    /// Writes the key with permissions 0600. The data goes to a temporary file in the
    /// same directory first and is renamed over `path`, so a crash never leaves a
    /// truncated key behind.
    public static func write(_ key: PrivateKey, to path: String) throws(IdentityError) {
        let bytes = key.marshal()
        let tmp = path + ".tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw IdentityError(.keyFile, "cannot create \(tmp): \(errnoString())") }
        var ok = false
        defer {
            if !ok { unlink(tmp) }
        }
        do {
            defer { close(fd) }
            // The umask may have narrowed the mode further but never widened it; make it exact.
            guard fchmod(fd, 0o600) == 0 else { throw IdentityError(.keyFile, "chmod \(tmp): \(errnoString())") }
            var offset = 0
            while offset < bytes.count {
                let n = bytes[offset...].withUnsafeBytes { Glue.write(fd, $0.baseAddress, $0.count) }
                if n < 0 {
                    if errno == EINTR { continue }
                    throw IdentityError(.keyFile, "cannot write \(tmp): \(errnoString())")
                }
                offset += n
            }
            guard fsync(fd) == 0 else { throw IdentityError(.keyFile, "fsync \(tmp): \(errnoString())") }
        }
        guard rename(tmp, path) == 0 else {
            throw IdentityError(.keyFile, "cannot rename \(tmp) to \(path): \(errnoString())")
        }
        ok = true
    }

    private static func errnoString() -> String {
        String(cString: strerror(errno))
    }
}

/// Disambiguates the libc I/O calls from `KeyFile.read` / `KeyFile.write`.
private enum Glue {
    static func read(_ fd: Int32, _ buf: UnsafeMutableRawPointer?, _ count: Int) -> Int {
        #if canImport(Glibc)
        return Glibc.read(fd, buf, count)
        #elseif canImport(Musl)
        return Musl.read(fd, buf, count)
        #else
        return Darwin.read(fd, buf, count)
        #endif
    }

    static func write(_ fd: Int32, _ buf: UnsafeRawPointer?, _ count: Int) -> Int {
        #if canImport(Glibc)
        return Glibc.write(fd, buf, count)
        #elseif canImport(Musl)
        return Musl.write(fd, buf, count)
        #else
        return Darwin.write(fd, buf, count)
        #endif
    }
}
