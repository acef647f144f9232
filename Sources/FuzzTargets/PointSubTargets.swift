import Multiformats
import NIOCore
import PointSubCore

extension FuzzTargets {
    static func fuzzPointSubParser(_ input: [UInt8], _ check: inout Checker) throws(FuzzInvariantFailure) {
        var reader = FuzzReader(input)
        let mode = reader.byte()
        let settings = reader.byte()
        let body = reader.rest()
        let maxBlockSize = [64, 1024, 64 * 1024, 1024 * 1024][Int(settings % 4)]
        var accepted = Set<PointSubMessage.Kind>()
        for (bit, kind) in PointSubMessage.Kind.allCases.enumerated() where settings >> (2 + bit) & 1 == 0 {
            accepted.insert(kind)
        }
        var parser = PointSubMessageParser(maxBlockSize: maxBlockSize, accepting: accepted)
        var fed = 0
        var reencoded = ByteBuffer()
        var failed = false
        reading: for piece in chunks(body, mode: mode) {
            parser.append(ByteBuffer(bytes: piece))
            fed += piece.count
            while true {
                let message: PointSubMessage?
                do {
                    message = try parser.next()
                } catch {
                    failed = true
                    break reading
                }
                guard let message else { break }
                try check(accepted.contains(message.kind), "a \(message.kind) message passed though not accepted")
                try check(message.payload.readableBytes <= maxBlockSize, "payload over maxBlockSize")
                if let original = message.originalLength {
                    try check(original <= maxBlockSize, "original size over maxBlockSize")
                }
                message.encode(into: &reencoded)
                if let payload = try? message.decodedPayload(maxBlockSize: maxBlockSize) {
                    try check(payload.readableBytes == (message.originalLength ?? message.payload.readableBytes),
                              "decoded payload is not of the declared size")
                    if message.kind == .error { _ = try? RemoteErrorPayload(decoding: payload) }
                }
            }
            try check(parser.bufferedBytes <= fed, "parser holds more bytes than it was given")
        }
        // Every byte is accounted for: the messages re-encode to exactly the bytes consumed
        // (headers are canonical: minimal varints, no reserved flags).
        let consumed = fed - parser.bufferedBytes
        try check(Array(reencoded.readableBytesView) == Array(body[..<consumed]), "messages re-encode to different bytes")
        if !failed {
            let finished = (try? parser.finish()) != nil
            try check(finished == (parser.bufferedBytes == 0), "finish() disagrees with the buffered bytes")
        }
    }

    static func fuzzPointSubDecompress(_ input: [UInt8], _ check: inout Checker) throws(FuzzInvariantFailure) {
        var reader = FuzzReader(input)
        let mode = reader.byte()
        let maxBlockSize = [256, 4096, 64 * 1024, 1024 * 1024][Int(mode % 4)]
        // Declared size: near the limit, or anywhere up to twice it.
        let declared = Int(reader.uint32()) % (2 * maxBlockSize + 1)
        let body = reader.rest()
        if mode & 0x80 == 0 {
            // The input is the zlib data itself.
            try checkDecompress(body, declared: declared, maxBlockSize: maxBlockSize, &check)
        } else {
            // The input is a payload: compress it, maybe corrupt one byte, and decompress it
            // declaring its true size (or the fuzzed one).
            guard let compressed = PointSubCompression.compress(ByteBuffer(bytes: body)) else {
                throw FuzzInvariantFailure(target: .pointsubDecompress, message: "zlib could not compress \(body.count) bytes")
            }
            var data = Array(compressed.readableBytesView)
            let corrupt = mode & 0x40 != 0 && !data.isEmpty
            if corrupt {
                let at = Int(declared) % data.count
                data[at] ^= UInt8(truncatingIfNeeded: declared >> 8) | 1
            }
            let size = mode & 0x20 == 0 ? body.count : declared
            let output = try checkDecompress(data, declared: size, maxBlockSize: maxBlockSize, &check)
            if !corrupt && size == body.count && body.count <= maxBlockSize {
                try check(output.map { Array($0.readableBytesView) } == body, "compress → decompress does not give the payload back")
            }
        }
    }

    @discardableResult
    private static func checkDecompress(
        _ data: [UInt8], declared: Int, maxBlockSize: Int, _ check: inout Checker
    ) throws(FuzzInvariantFailure) -> ByteBuffer? {
        let output: ByteBuffer
        do {
            output = try PointSubCompression.decompress(ByteBuffer(bytes: data), originalLength: declared, maxBlockSize: maxBlockSize)
        } catch {
            if declared > maxBlockSize {
                try check(error.code == .messageTooLarge, "declared size over the limit refused with \(error.code), not messageTooLarge")
            }
            return nil
        }
        try check(declared <= maxBlockSize, "declared size \(declared) over the limit \(maxBlockSize) accepted")
        try check(output.readableBytes == declared, "decompressed \(output.readableBytes) bytes, declared \(declared)")
        // The output buffer holds no more than the limit allows (plus one growth step).
        try check(output.capacity <= max(2 * maxBlockSize, 64 * 1024), "output buffer of capacity \(output.capacity)")
        return output
    }
}
