import Multiformats

/// The protobuf field readers of AutoNAT v1 and v2 messages, each failure an
/// `AutoNATError(.malformedMessage)` naming what was being read.
enum AutoNATWire {
    /// Calls `body` with each field of `bytes`; malformed protobuf throws, naming `what`.
    static func fields(
        _ bytes: some Collection<UInt8>, _ what: String, _ body: (Int, ProtobufValue) throws(AutoNATError) -> Void
    ) throws(AutoNATError) {
        try ProtobufReader.forEachField(
            in: bytes, malformed: { AutoNATError(.malformedMessage, "\(what) is not valid protobuf", cause: $0) }, body)
    }

    /// A length-delimited field's bytes.
    static func bytes(_ value: ProtobufValue, _ what: String) throws(AutoNATError) -> [UInt8] {
        guard let bytes = value.bytesValue else { throw AutoNATError(.malformedMessage, "\(what) is not length-delimited") }
        return bytes
    }

    /// A varint field's value.
    static func varint(_ value: ProtobufValue, _ what: String) throws(AutoNATError) -> UInt64 {
        guard let raw = value.varintValue else { throw AutoNATError(.malformedMessage, "\(what) is not a varint") }
        return raw
    }

    /// A fixed64 field's value.
    static func fixed64(_ value: ProtobufValue, _ what: String) throws(AutoNATError) -> UInt64 {
        guard case .fixed64(let raw) = value else { throw AutoNATError(.malformedMessage, "\(what) is not a fixed64") }
        return raw
    }
}
