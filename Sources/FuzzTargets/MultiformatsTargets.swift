import Multiformats
import NIOCore

extension FuzzTargets {
    static func fuzzVarint(_ input: [UInt8], _ check: inout Checker) throws(FuzzInvariantFailure) {
        let decoded = try? Varint.decode(input)
        var buffer = ByteBuffer(bytes: input)
        let viaBuffer = try? buffer.readVarint()
        guard let (value, length) = decoded else {
            try check(viaBuffer == nil, "ByteBuffer.readVarint read \(String(describing: viaBuffer)) where Varint.decode did not")
            return
        }
        try check(length >= 1 && length <= Varint.maxLength && length <= input.count, "varint length \(length) out of range")
        // The decoder rejects non-minimal encodings, so the encoding is unique.
        try check(Varint.encode(value) == Array(input[..<length]), "varint \(value) re-encodes differently")
        try check(Varint.encodedLength(value) == length, "encodedLength(\(value)) is not \(length)")
        try check(viaBuffer == value, "ByteBuffer.readVarint gave \(String(describing: viaBuffer)), not \(value)")
        try check(buffer.readerIndex == length, "ByteBuffer.readVarint consumed \(buffer.readerIndex) bytes, not \(length)")
    }

    static func fuzzMultibase(_ input: [UInt8], _ check: inout Checker) throws(FuzzInvariantFailure) {
        let text = String(decoding: input, as: UTF8.self)
        if let bytes = try? Multibase.decode(text) {
            for encoding in Multibase.Encoding.allCases {
                let again = try? Multibase.decode(Multibase.encode(bytes, as: encoding))
                try check(again == bytes, "multibase \(encoding) round trip differs")
            }
        }
        // Each base on its own: decode → encode → decode gives the same bytes.
        if let bytes = try? Base58.decode(text) {
            try check((try? Base58.decode(Base58.encode(bytes))) == bytes, "base58 round trip differs")
        }
        if let bytes = try? Base32.decode(text) {
            try check((try? Base32.decode(Base32.encode(bytes))) == bytes, "base32 round trip differs")
        }
        for urlSafe in [true, false] {
            if let bytes = try? Base64.decode(text, urlSafe: urlSafe) {
                let again = try? Base64.decode(Base64.encode(bytes, urlSafe: urlSafe), urlSafe: urlSafe)
                try check(again == bytes, "base64 (urlSafe \(urlSafe)) round trip differs")
            }
        }
        if let bytes = try? Base16.decode(text) {
            try check((try? Base16.decode(Base16.encode(bytes))) == bytes, "base16 round trip differs")
        }
    }

    static func fuzzMultihash(_ input: [UInt8], _ check: inout Checker) throws(FuzzInvariantFailure) {
        var reader = FuzzReader(input)
        let mode = reader.byte()
        let body = reader.rest()
        switch mode % 3 {
        case 0:
            guard let hash = try? Multihash(bytes: body) else { return }
            try check(hash.digest.count <= Multihash.maxDigestLength, "digest of \(hash.digest.count) bytes accepted")
            try check((try? Multihash(bytes: hash.bytes)) == hash, "multihash round trip differs")
        case 1:
            guard let cid = try? CID(bytes: body) else { return }
            try check((try? CID(bytes: cid.bytes)) == cid, "CID bytes round trip differs")
            for encoding in Multibase.Encoding.allCases {
                try check((try? CID(cid.string(encoding))) == cid, "CID text (\(encoding)) round trip differs")
            }
        default:
            guard let cid = try? CID(String(decoding: body, as: UTF8.self)) else { return }
            try check((try? CID(bytes: cid.bytes)) == cid, "CID bytes round trip differs")
            try check((try? CID(cid.string())) == cid, "CID text round trip differs")
        }
    }

    static func fuzzMultiaddr(_ input: [UInt8], _ check: inout Checker) throws(FuzzInvariantFailure) {
        var reader = FuzzReader(input)
        let mode = reader.byte()
        let body = reader.rest()
        if mode & 1 == 0 {
            guard let address = try? Multiaddr(bytes: body) else { return }
            let again = try? Multiaddr(bytes: address.bytes)
            try check(again == address, "multiaddr bytes round trip differs: \(address)")
        } else {
            guard let text = String(validating: body, as: UTF8.self), let address = try? Multiaddr(text) else { return }
            try check((try? Multiaddr(bytes: address.bytes)) == address, "multiaddr text → bytes round trip differs: \(address)")
            try check((try? Multiaddr(address.description)) == address, "multiaddr text round trip differs: \(address)")
            // The helpers that look into an address must not trap on anything that parsed.
            _ = address.peerIDBytes
            _ = address.tcpPort
            _ = address.udpPort
            _ = address.ipAddress
            _ = address.removingPeerID()
            _ = try? address.socketAddress()
        }
    }

    static func fuzzProtobuf(_ input: [UInt8], _ check: inout Checker) throws(FuzzInvariantFailure) {
        var reader = ProtobufReader(input)
        var fields: [(field: Int, value: ProtobufValue)] = []
        var steps = 0
        // Every call either consumes bytes or ends, so `input.count + 1` calls are enough.
        while steps <= input.count, let next = try? reader.next() {
            fields.append(next)
            steps += 1
        }
        try check(steps <= input.count, "protobuf reader returned more fields than there are bytes")
        // Re-encode what was read: reading it back gives the same fields.
        var writer = ProtobufWriter()
        for (field, value) in fields {
            try check(field >= 1 && field <= ProtobufReader.maxFieldNumber, "field number \(field) out of range")
            switch value {
            case .varint(let v): writer.writeVarintField(field, v)
            case .bytes(let b): writer.writeBytesField(field, b)
            case .fixed64(let v): writer.writeFixed64Field(field, v)
            case .fixed32(let v): writer.writeFixed32Field(field, v)
            }
        }
        var again = ProtobufReader(writer.bytes)
        var reread: [(field: Int, value: ProtobufValue)] = []
        do {
            while let next = try again.next() { reread.append(next) }
        } catch {
            throw FuzzInvariantFailure(target: .protobuf, message: "re-encoded fields do not parse", cause: error)
        }
        try check(reread.map(\.field) == fields.map(\.field) && reread.map(\.value) == fields.map(\.value),
                  "protobuf round trip differs")
    }
}
