/// A minimal protobuf (proto2/proto3 wire format) codec for the small messages
/// libp2p uses (keys, Noise handshake payload, identify, pubsub).
///
/// Wire format facts relied on: a field key is `varint(field_number << 3 | wire_type)`;
/// wire types are 0 varint, 1 fixed64 (little endian), 2 length-delimited,
/// 5 fixed32 (little endian); 3/4 are deprecated groups; 6/7 are invalid.
/// Protobuf varints may be up to 10 bytes (64 bits), unlike multiformats varints.

/// A decoded field value.
public enum ProtobufValue: Hashable, Sendable {
    case varint(UInt64)
    /// Wire type 2: bytes, strings and embedded messages.
    case bytes([UInt8])
    case fixed64(UInt64)
    case fixed32(UInt32)

    public var varintValue: UInt64? {
        if case .varint(let v) = self { return v }
        return nil
    }

    public var bytesValue: [UInt8]? {
        if case .bytes(let b) = self { return b }
        return nil
    }

    /// The value as UTF-8 text (nil when not wire type 2 or not valid UTF-8).
    public var stringValue: String? {
        guard case .bytes(let b) = self else { return nil }
        return String(validating: b, as: UTF8.self)
    }

    public var boolValue: Bool? {
        if case .varint(let v) = self { return v != 0 }
        return nil
    }
}

/// Serialises fields in the order they are written (write them in field-number
/// order for deterministic output).
public struct ProtobufWriter: Sendable {
    public private(set) var bytes: [UInt8] = []

    public init() {}

    /// A writer whose buffer has room for `capacity` bytes (no reallocation while it grows to that).
    public init(reservingCapacity capacity: Int) {
        bytes.reserveCapacity(capacity)
    }

    /// Appends `raw` as it is (no key, no length): a prefix before the message, for instance.
    public mutating func writeRaw(_ raw: some Collection<UInt8>) {
        bytes.append(contentsOf: raw)
    }

    public mutating func writeVarintField(_ field: Int, _ value: UInt64) {
        writeKey(field, wireType: 0)
        Self.appendVarint(value, to: &bytes)
    }

    public mutating func writeBoolField(_ field: Int, _ value: Bool) {
        writeVarintField(field, value ? 1 : 0)
    }

    public mutating func writeBytesField(_ field: Int, _ value: some Collection<UInt8>) {
        writeKey(field, wireType: 2)
        Self.appendVarint(UInt64(value.count), to: &bytes)
        bytes.append(contentsOf: value)
    }

    public mutating func writeStringField(_ field: Int, _ value: String) {
        writeBytesField(field, value.utf8)
    }

    public mutating func writeFixed64Field(_ field: Int, _ value: UInt64) {
        writeKey(field, wireType: 1)
        for i in 0..<8 { bytes.append(UInt8(truncatingIfNeeded: value >> (8 * UInt64(i)))) }
    }

    public mutating func writeFixed32Field(_ field: Int, _ value: UInt32) {
        writeKey(field, wireType: 5)
        for i in 0..<4 { bytes.append(UInt8(truncatingIfNeeded: value >> (8 * UInt32(i)))) }
    }

    private mutating func writeKey(_ field: Int, wireType: UInt64) {
        precondition(field >= 1 && field <= ProtobufReader.maxFieldNumber, "invalid protobuf field number \(field)")
        Self.appendVarint(UInt64(field) << 3 | wireType, to: &bytes)
    }

    static func appendVarint(_ value: UInt64, to out: inout [UInt8]) {
        var v = value
        while v >= 0x80 {
            out.append(UInt8(truncatingIfNeeded: v) | 0x80)
            v >>= 7
        }
        out.append(UInt8(v))
    }
}

/// Iterates over the fields of a message. Callers switch on `field` and ignore
/// numbers they do not know (unknown fields are returned like any other).
public struct ProtobufReader: Sendable {
    /// Largest legal field number (2^29 - 1).
    public static let maxFieldNumber = (1 << 29) - 1

    private let input: [UInt8]
    private var offset = 0

    public init(_ bytes: some Collection<UInt8>) {
        self.input = Array(bytes)
    }

    public var isAtEnd: Bool { offset >= input.count }

    /// The next field, or `nil` at the end of input.
    /// Throws `MultiformatsError.invalidProtobuf` on malformed input.
    public mutating func next() throws(MultiformatsError) -> (field: Int, value: ProtobufValue)? {
        guard offset < input.count else { return nil }
        let key = try readVarint()
        guard key >> 3 <= UInt64(Self.maxFieldNumber) else {
            throw .invalidProtobuf("field number too large")
        }
        let field = Int(key >> 3)
        guard field != 0 else { throw .invalidProtobuf("field number 0") }
        switch key & 7 {
        case 0:
            return (field, .varint(try readVarint()))
        case 1:
            let raw = try take(8)
            var v: UInt64 = 0
            for (i, b) in raw.enumerated() { v |= UInt64(b) << (8 * UInt64(i)) }
            return (field, .fixed64(v))
        case 2:
            let length = try readVarint()
            // Hard limit: a length-delimited field can never extend past the input.
            guard length <= UInt64(input.count - offset) else {
                throw .invalidProtobuf("field \(field) length \(length) exceeds remaining \(input.count - offset) bytes")
            }
            return (field, .bytes(try take(Int(length))))
        case 5:
            let raw = try take(4)
            var v: UInt32 = 0
            for (i, b) in raw.enumerated() { v |= UInt32(b) << (8 * UInt32(i)) }
            return (field, .fixed32(v))
        case let wireType:
            throw .invalidProtobuf("unsupported wire type \(wireType) for field \(field)")
        }
    }

    /// Calls `body` with each field of `bytes` in order; malformed protobuf throws what
    /// `malformed` makes of the reader's error (each protocol reports it in its own error type).
    public static func forEachField<E: Error>(
        in bytes: some Collection<UInt8>, malformed: (MultiformatsError) -> E,
        _ body: (Int, ProtobufValue) throws(E) -> Void
    ) throws(E) {
        var reader = ProtobufReader(bytes)
        while true {
            let next: (field: Int, value: ProtobufValue)?
            do {
                next = try reader.next()
            } catch {
                throw malformed(error)
            }
            guard let (field, value) = next else { return }
            try body(field, value)
        }
    }

    private mutating func take(_ n: Int) throws(MultiformatsError) -> [UInt8] {
        guard n <= input.count - offset else { throw .invalidProtobuf("truncated field") }
        defer { offset += n }
        return Array(input[offset..<offset + n])
    }

    private mutating func readVarint() throws(MultiformatsError) -> UInt64 {
        var value: UInt64 = 0
        var shift: UInt64 = 0
        while true {
            guard offset < input.count else { throw .invalidProtobuf("truncated varint") }
            let byte = input[offset]
            offset += 1
            // The 10th byte may only contribute the single remaining bit.
            if shift == 63 && byte > 1 { throw .invalidProtobuf("varint overflows 64 bits") }
            value |= UInt64(byte & 0x7f) << shift
            if byte & 0x80 == 0 { return value }
            shift += 7
        }
    }
}
