import Basics

/// Every error of the DNS module.
public struct DNSError: CodedError {
    /// The kind of failure.
    public enum Code: String, Sendable, Hashable, CustomStringConvertible {
        /// An answer that is not a well-formed DNS message (truncated, bad name, pointer loop…).
        case malformedMessage
        /// An answer, a name or a resolution beyond its limit (size, records, depth, addresses).
        case limitExceeded
        /// The server answered with an error code (`rcode`), or not at all in time.
        case queryFailed
        /// A name that cannot be queried (too long, empty label).
        case invalidName

        /// The code's name.
        public var description: String { rawValue }
    }

    /// The kind of failure.
    public var code: Code
    /// What went wrong.
    public var message: String
    /// The lower-level error, if any.
    public var cause: (any Error)?

    /// An error of kind `code`.
    public init(_ code: Code, _ message: String, cause: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.cause = cause
    }
}

/// A DNS message (RFC 1035 §4) as far as this package needs it: a query for one name and type,
/// and answers whose TXT (and A/AAAA) records it reads. Names in answers may be compressed
/// (pointers, §4.1.4); the decoder follows at most a bounded number of them, so a loop is an error.
public struct DNSMessage: Sendable, Hashable {
    /// Record types used here.
    public enum RecordType: UInt16, Sendable, Hashable {
        /// IPv4 address.
        case a = 1
        /// Text strings (dnsaddr, mDNS peer records).
        case txt = 16
        /// IPv6 address.
        case aaaa = 28
        /// A service instance (mDNS).
        case ptr = 12
    }

    /// A question.
    public struct Question: Sendable, Hashable {
        /// The name, without the final dot (`_dnsaddr.example.com`).
        public var name: String
        /// The record type's number.
        public var type: UInt16
        /// The class (1 = IN; mDNS uses the top bit for "unicast response wanted").
        public var recordClass: UInt16 = 1

        /// A question.
        public init(name: String, type: UInt16, recordClass: UInt16 = 1) {
            self.name = name
            self.type = type
            self.recordClass = recordClass
        }
    }

    /// A resource record of the answer section.
    public struct Record: Sendable, Hashable {
        /// The owner name.
        public var name: String
        /// The type's number.
        public var type: UInt16
        /// The class (1 = IN; mDNS uses the top bit for "cache flush").
        public var recordClass: UInt16
        /// Seconds it may be cached.
        public var ttl: UInt32
        /// The raw data.
        public var data: [UInt8]

        /// A record.
        public init(name: String, type: UInt16, recordClass: UInt16 = 1, ttl: UInt32, data: [UInt8]) {
            self.name = name
            self.type = type
            self.recordClass = recordClass
            self.ttl = ttl
            self.data = data
        }

        /// The strings of a TXT record (each up to 255 bytes); nil for another type or a bad one.
        public var txtStrings: [String]? {
            guard type == RecordType.txt.rawValue else { return nil }
            var strings: [String] = []
            var at = 0
            while at < data.count {
                let length = Int(data[at])
                at += 1
                guard at + length <= data.count else { return nil }
                strings.append(String(decoding: data[at..<at + length], as: UTF8.self))
                at += length
            }
            return strings
        }
    }

    /// Hard limits of the decoder.
    public struct Limits: Sendable, Hashable {
        /// A whole message (UDP answers without EDNS are at most 512 bytes; we accept up to 64 KiB
        /// minus headers, as a TCP answer could be).
        public var maxMessageSize = 65_535
        /// Records in all sections together.
        public var maxRecords = 256
        /// Compression pointers followed for one name (a loop ends here).
        public var maxPointers = 16

        /// The defaults.
        public init() {}
    }

    /// The transaction ID.
    public var id: UInt16
    /// Header flags (QR, opcode, AA, TC, RD, RA, rcode).
    public var flags: UInt16
    /// The questions.
    public var questions: [Question]
    /// The answer section.
    public var answers: [Record]
    /// The additional section (mDNS puts the TXT and addresses there).
    public var additional: [Record]

    /// The response code (0: no error, 3: no such name).
    public var rcode: UInt16 { flags & 0x000F }
    /// Whether this is a response.
    public var isResponse: Bool { flags & 0x8000 != 0 }

    /// A message.
    public init(id: UInt16, flags: UInt16, questions: [Question], answers: [Record] = [], additional: [Record] = []) {
        self.id = id
        self.flags = flags
        self.questions = questions
        self.answers = answers
        self.additional = additional
    }

    /// A recursive query (RD set) for `name` and `type`.
    public static func query(id: UInt16, name: String, type: RecordType) -> DNSMessage {
        DNSMessage(id: id, flags: 0x0100, questions: [Question(name: name, type: type.rawValue)])
    }

    /// The wire form, without name compression. Throws `.invalidName` for a name that does not fit.
    public func encoded() throws(DNSError) -> [UInt8] {
        var out: [UInt8] = []
        func u16(_ value: UInt16) { out += [UInt8(value >> 8), UInt8(value & 0xFF)] }
        u16(id)
        u16(flags)
        u16(UInt16(questions.count))
        u16(UInt16(answers.count))
        u16(0)
        u16(UInt16(additional.count))
        for question in questions {
            try Self.encodeName(question.name, into: &out)
            u16(question.type)
            u16(question.recordClass)
        }
        for record in answers + additional {
            try Self.encodeName(record.name, into: &out)
            u16(record.type)
            u16(record.recordClass)
            out += [UInt8(record.ttl >> 24), UInt8(record.ttl >> 16 & 0xFF), UInt8(record.ttl >> 8 & 0xFF), UInt8(record.ttl & 0xFF)]
            guard record.data.count <= 65_535 else { throw DNSError(.invalidName, "record data over 65535 bytes") }
            u16(UInt16(record.data.count))
            out += record.data
        }
        return out
    }

    /// TXT record data from strings (each at most 255 bytes).
    public static func txtData(_ strings: [String]) throws(DNSError) -> [UInt8] {
        var out: [UInt8] = []
        for string in strings {
            let bytes = Array(string.utf8)
            guard bytes.count <= 255 else { throw DNSError(.invalidName, "a TXT string over 255 bytes") }
            out.append(UInt8(bytes.count))
            out += bytes
        }
        return out
    }

    static func encodeName(_ name: String, into out: inout [UInt8]) throws(DNSError) {
        var total = 0
        for label in name.split(separator: ".", omittingEmptySubsequences: false) where !(label.isEmpty && name.hasSuffix(".")) {
            let bytes = Array(label.utf8)
            guard !bytes.isEmpty, bytes.count <= 63 else { throw DNSError(.invalidName, "a label of \(bytes.count) bytes in \(name)") }
            total += bytes.count + 1
            guard total <= 254 else { throw DNSError(.invalidName, "\(name) is longer than 253 bytes") }
            out.append(UInt8(bytes.count))
            out += bytes
        }
        out.append(0)
    }

    /// Decodes a message within `limits`. Throws `DNSError` (`.malformedMessage`, `.limitExceeded`).
    public init(decoding bytes: [UInt8], limits: Limits = Limits()) throws(DNSError) {
        guard bytes.count <= limits.maxMessageSize else {
            throw DNSError(.limitExceeded, "a DNS message of \(bytes.count) bytes")
        }
        var reader = Reader(bytes: bytes, maxPointers: limits.maxPointers)
        let id = try reader.u16()
        let flags = try reader.u16()
        let counts = [try reader.u16(), try reader.u16(), try reader.u16(), try reader.u16()].map(Int.init)
        guard counts.reduce(0, +) <= limits.maxRecords else {
            throw DNSError(.limitExceeded, "\(counts.reduce(0, +)) records in one message")
        }
        var questions: [Question] = []
        for _ in 0..<counts[0] {
            questions.append(Question(name: try reader.name(), type: try reader.u16(), recordClass: try reader.u16()))
        }
        func records(_ count: Int) throws(DNSError) -> [Record] {
            var out: [Record] = []
            for _ in 0..<count {
                let name = try reader.name()
                let type = try reader.u16()
                let recordClass = try reader.u16()
                let ttl = UInt32(try reader.u16()) << 16 | UInt32(try reader.u16())
                let length = Int(try reader.u16())
                out.append(Record(name: name, type: type, recordClass: recordClass, ttl: ttl, data: try reader.take(length)))
            }
            return out
        }
        let answers = try records(counts[1])
        _ = try records(counts[2])  // authority: not used
        let additional = try records(counts[3])
        self.init(id: id, flags: flags, questions: questions, answers: answers, additional: additional)
    }

    /// Reads big-endian fields and (compressed) names, every read bounds-checked.
    private struct Reader {
        let bytes: [UInt8]
        let maxPointers: Int
        var at = 0

        mutating func u16() throws(DNSError) -> UInt16 {
            guard at + 2 <= bytes.count else { throw DNSError(.malformedMessage, "truncated message") }
            defer { at += 2 }
            return UInt16(bytes[at]) << 8 | UInt16(bytes[at + 1])
        }

        mutating func take(_ count: Int) throws(DNSError) -> [UInt8] {
            guard count <= bytes.count - at else { throw DNSError(.malformedMessage, "truncated record data") }
            defer { at += count }
            return Array(bytes[at..<at + count])
        }

        /// A name at the cursor; the cursor moves past its first pointer or its end.
        mutating func name() throws(DNSError) -> String {
            var labels: [String] = []
            var position = at
            var jumped = false
            var pointers = 0
            var length = 0
            while true {
                guard position < bytes.count else { throw DNSError(.malformedMessage, "truncated name") }
                let byte = bytes[position]
                switch byte & 0xC0 {
                case 0x00:
                    if byte == 0 {
                        if !jumped { at = position + 1 }
                        return labels.joined(separator: ".")
                    }
                    let count = Int(byte)
                    guard position + 1 + count <= bytes.count else { throw DNSError(.malformedMessage, "truncated label") }
                    length += count + 1
                    guard length <= 255 else { throw DNSError(.malformedMessage, "a name over 255 bytes") }
                    labels.append(String(decoding: bytes[position + 1..<position + 1 + count], as: UTF8.self))
                    position += 1 + count
                case 0xC0:
                    guard position + 1 < bytes.count else { throw DNSError(.malformedMessage, "truncated pointer") }
                    pointers += 1
                    guard pointers <= maxPointers else { throw DNSError(.malformedMessage, "too many compression pointers (a loop?)") }
                    let target = Int(byte & 0x3F) << 8 | Int(bytes[position + 1])
                    if !jumped { at = position + 2 }
                    jumped = true
                    position = target
                default:
                    throw DNSError(.malformedMessage, "a label type that is not used (0x\(String(byte, radix: 16)))")
                }
            }
        }
    }
}
