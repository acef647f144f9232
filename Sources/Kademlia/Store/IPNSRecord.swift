import Foundation
import Identity
import Multiformats

/// An IPNS record (IPFS spec "IPNS Record and Protocol"; boxo's `ipns` package): a signed,
/// versioned pointer stored in the DHT under `/ipns/<peer ID bytes>`.
///
/// On the wire it is the protobuf `IpnsEntry`: value 1, signatureV1 2, validityType 3,
/// validity 4, sequence 5, ttl 6 (fields 1–6 are the legacy V1 copies), pubKey 7,
/// signatureV2 8, data 9. `data` is DAG-CBOR with `Value`, `Validity` (RFC 3339 text as bytes),
/// `ValidityType` (0 = EOL), `Sequence` and `TTL` (nanoseconds); `signatureV2` signs
/// `"ipns-signature:" ‖ data`. A record is at most 10 KiB.
public struct IPNSRecord: Sendable, Hashable {
    /// The largest serialized record (the spec's 10 KiB; boxo's `MaxRecordSize`).
    public static let maxSize = 10 << 10
    /// The prefix of the bytes `signatureV2` signs.
    public static let signaturePrefix = Array("ipns-signature:".utf8)

    /// `IpnsEntry` field 1: the legacy copy of `data[Value]`.
    public var value: [UInt8]?
    /// Field 2: the legacy signature over `value ‖ validity ‖ "EOL"` (never verified).
    public var signatureV1: [UInt8]?
    /// Field 3: the legacy copy of `data[ValidityType]`.
    public var validityType: UInt64?
    /// Field 4: the legacy copy of `data[Validity]`.
    public var validity: [UInt8]?
    /// Field 5: the legacy copy of `data[Sequence]`.
    public var sequence: UInt64?
    /// Field 6: the legacy copy of `data[TTL]`.
    public var ttl: UInt64?
    /// Field 7: the marshalled public key, for keys a peer ID does not inline (RSA, ECDSA).
    public var publicKey: [UInt8]?
    /// Field 8: the signature over `"ipns-signature:" ‖ data`.
    public var signatureV2: [UInt8]?
    /// Field 9: the DAG-CBOR document, as signed.
    public var data: [UInt8]
    /// `data`, decoded (a map).
    public let document: DAGCBOR

    /// A moment as IPNS writes it: RFC 3339 in UTC with up to nine fractional digits, as Go's
    /// `time.RFC3339Nano` formats it (trailing zeros dropped).
    public struct Time: Sendable, Hashable, Comparable {
        /// Seconds since 1970-01-01T00:00:00Z.
        public var seconds: Int64
        /// Nanoseconds within the second (0 ..< 1e9).
        public var nanoseconds: Int32

        /// A moment.
        public init(seconds: Int64, nanoseconds: Int32 = 0) {
            self.seconds = seconds
            self.nanoseconds = nanoseconds
        }

        /// `date`, to the nanosecond a `Double` holds.
        public init(_ date: Date) {
            // Clamped to ±10^12 s (years ±33,000), far beyond any EOL.
            let raw = date.timeIntervalSince1970
            let interval = raw.isFinite ? min(max(raw, -1e12), 1e12) : 0
            let whole = interval.rounded(.down)
            var nanos = Int32(((interval - whole) * 1e9).rounded())
            var seconds = Int64(whole)
            if nanos >= 1_000_000_000 {
                nanos -= 1_000_000_000
                seconds += 1
            }
            self.init(seconds: seconds, nanoseconds: nanos)
        }

        /// The moment as a `Date` (sub-microsecond digits may round).
        public var date: Date { Date(timeIntervalSince1970: Double(seconds) + Double(nanoseconds) / 1e9) }

        /// Earlier.
        public static func < (a: Time, b: Time) -> Bool { (a.seconds, a.nanoseconds) < (b.seconds, b.nanoseconds) }

        /// Parses RFC 3339 (`YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`, as Go's `time.Parse`
        /// with `RFC3339Nano` accepts it); nil for anything else.
        public init?(rfc3339 text: String) {
            let b = Array(text.utf8)
            guard b.count >= 20, b.count <= 64 else { return nil }
            func digits(_ at: Int, _ count: Int) -> Int? {
                guard at + count <= b.count else { return nil }
                var value = 0
                for byte in b[at..<at + count] {
                    guard (0x30...0x39).contains(byte) else { return nil }
                    value = value * 10 + Int(byte - 0x30)
                }
                return value
            }
            guard let year = digits(0, 4), b[4] == UInt8(ascii: "-"), let month = digits(5, 2), b[7] == UInt8(ascii: "-"),
                let day = digits(8, 2), b[10] == UInt8(ascii: "T"), let hour = digits(11, 2), b[13] == UInt8(ascii: ":"),
                let minute = digits(14, 2), b[16] == UInt8(ascii: ":"), let second = digits(17, 2)
            else { return nil }
            guard (1...12).contains(month), (1...Self.daysIn(month: month, year: year)).contains(day), hour < 24,
                minute < 60, second < 60
            else { return nil }
            var at = 19
            var nanos = 0
            if b[at] == UInt8(ascii: ".") {
                at += 1
                var count = 0
                while at < b.count, (0x30...0x39).contains(b[at]) {
                    if count < 9 { nanos = nanos * 10 + Int(b[at] - 0x30) }
                    count += 1
                    at += 1
                }
                guard count > 0 else { return nil }
                for _ in count..<max(count, 9) { nanos *= 10 }
            }
            guard at < b.count else { return nil }
            var offset = 0
            if b[at] == UInt8(ascii: "Z") {
                at += 1
            } else if b[at] == UInt8(ascii: "+") || b[at] == UInt8(ascii: "-") {
                guard let oh = digits(at + 1, 2), b.count > at + 3, b[at + 3] == UInt8(ascii: ":"), let om = digits(at + 4, 2),
                    oh < 24, om < 60
                else { return nil }
                offset = (oh * 60 + om) * 60 * (b[at] == UInt8(ascii: "-") ? -1 : 1)
                at += 6
            } else {
                return nil
            }
            guard at == b.count else { return nil }
            let days = Self.daysFromCivil(year: year, month: month, day: day)
            self.init(seconds: Int64(days) * 86_400 + Int64(hour * 3600 + minute * 60 + second - offset), nanoseconds: Int32(nanos))
        }

        /// RFC 3339 in UTC with the fraction's trailing zeros dropped (Go's `RFC3339Nano`).
        public var rfc3339: String {
            let days = Int(seconds >= 0 ? seconds / 86_400 : (seconds - 86_399) / 86_400)
            let secondOfDay = Int(seconds - Int64(days) * 86_400)
            let (year, month, day) = Self.civil(fromDays: days)
            func pad(_ value: Int, _ width: Int) -> String {
                let text = String(value)
                return String(repeating: "0", count: max(0, width - text.count)) + text
            }
            var text = "\(pad(year, 4))-\(pad(month, 2))-\(pad(day, 2))T"
            text += "\(pad(secondOfDay / 3600, 2)):\(pad(secondOfDay / 60 % 60, 2)):\(pad(secondOfDay % 60, 2))"
            if nanoseconds > 0 {
                var fraction = pad(Int(nanoseconds), 9)
                while fraction.hasSuffix("0") { fraction.removeLast() }
                text += "." + fraction
            }
            return text + "Z"
        }

        static func daysIn(month: Int, year: Int) -> Int {
            switch month {
            case 2: return (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 ? 29 : 28
            case 4, 6, 9, 11: return 30
            default: return 31
            }
        }

        /// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
        static func daysFromCivil(year: Int, month: Int, day: Int) -> Int {
            let y = month <= 2 ? year - 1 : year
            let era = (y >= 0 ? y : y - 399) / 400
            let yoe = y - era * 400
            let doy = (153 * (month + (month > 2 ? -3 : 9)) + 2) / 5 + day - 1
            let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
            return era * 146_097 + doe - 719_468
        }

        static func civil(fromDays days: Int) -> (year: Int, month: Int, day: Int) {
            let z = days + 719_468
            let era = (z >= 0 ? z : z - 146_096) / 146_097
            let doe = z - era * 146_097
            let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365
            let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
            let mp = (5 * doy + 2) / 153
            let day = doy - (153 * mp + 2) / 5 + 1
            let month = mp < 10 ? mp + 3 : mp - 9
            return (yoe + era * 400 + (month <= 2 ? 1 : 0), month, day)
        }
    }

    // MARK: Creating

    /// A new record pointing at `value` (e.g. `/ipfs/<cid>`), version `sequence`, valid until
    /// `validity`, cacheable for `ttl`, signed with `key` — as boxo's `NewRecord` makes it: the
    /// DAG-CBOR data and signatureV2, by default also the V1 fields and signatureV1 for legacy
    /// readers, and the public key when the peer ID cannot inline it (RSA, ECDSA).
    public static func make(
        value: [UInt8], sequence: UInt64, validity: Date, ttl: Duration, key: PrivateKey, v1Compatible: Bool = true
    ) throws(KademliaError) -> IPNSRecord {
        let eol = Array(Time(validity).rfc3339.utf8)
        let (whole, overflow) = ttl.components.seconds.multipliedReportingOverflow(by: 1_000_000_000)
        let ttlNanos = whole &+ ttl.components.attoseconds / 1_000_000_000
        guard !overflow, ttlNanos >= 0, ttlNanos >= whole else {
            throw KademliaError(.invalidRecord, "an IPNS TTL must be 0 to 292 years")
        }
        // go writes the sequence as a signed CBOR integer (int64(seq)): the same bits come back.
        let document = DAGCBOR.map([
            ("Value", .bytes(value)), ("Validity", .bytes(eol)), ("ValidityType", .unsigned(0)),
            ("Sequence", .int(Int64(bitPattern: sequence))), ("TTL", .int(ttlNanos)),
        ])
        let data = document.encoded()
        var record = try IPNSRecord(data: data, document: document)
        do {
            record.signatureV2 = try key.sign(signaturePrefix + data)
            if v1Compatible {
                record.value = value
                record.validityType = 0
                record.validity = eol
                record.sequence = sequence
                record.ttl = UInt64(ttlNanos)
                record.signatureV1 = try key.sign(value + eol + Array("EOL".utf8))
            }
        } catch {
            throw KademliaError(.invalidRecord, "cannot sign the IPNS record", cause: error)
        }
        if PeerID(publicKey: key.publicKey).publicKey == nil { record.publicKey = key.publicKey.marshal() }
        guard record.encoded().count <= maxSize else {
            throw KademliaError(.limitExceeded, "the IPNS record exceeds \(maxSize) bytes")
        }
        return record
    }

    /// A new record with a text value (a path such as `/ipfs/bafy…`).
    public static func make(
        value: String, sequence: UInt64, validity: Date, ttl: Duration, key: PrivateKey, v1Compatible: Bool = true
    ) throws(KademliaError) -> IPNSRecord {
        try make(value: Array(value.utf8), sequence: sequence, validity: validity, ttl: ttl, key: key, v1Compatible: v1Compatible)
    }

    private init(data: [UInt8], document: DAGCBOR) throws(KademliaError) {
        guard case .map = document else { throw KademliaError(.invalidRecord, "IPNS data is not a DAG-CBOR map") }
        self.data = data
        self.document = document
    }

    /// The DHT key of `peer`'s IPNS records: `/ipns/` and the peer ID's bytes.
    public static func routingKey(for peer: PeerID) -> [UInt8] { Array("/ipns/".utf8) + peer.bytes }

    // MARK: Wire

    /// The `IpnsEntry` protobuf (fields in number order, absent ones not written).
    public func encoded() -> [UInt8] {
        var writer = ProtobufWriter()
        if let value { writer.writeBytesField(1, value) }
        if let signatureV1 { writer.writeBytesField(2, signatureV1) }
        if let validityType { writer.writeVarintField(3, validityType) }
        if let validity { writer.writeBytesField(4, validity) }
        if let sequence { writer.writeVarintField(5, sequence) }
        if let ttl { writer.writeVarintField(6, ttl) }
        if let publicKey { writer.writeBytesField(7, publicKey) }
        if let signatureV2 { writer.writeBytesField(8, signatureV2) }
        writer.writeBytesField(9, data)
        return writer.bytes
    }

    /// Decodes an `IpnsEntry` (boxo's `UnmarshalRecord`): at most `maxSize` bytes, valid
    /// protobuf, with `data` that is a DAG-CBOR map. Does not verify it (see `validate`).
    /// Throws `KademliaError` (`.limitExceeded` for size, `.invalidRecord` otherwise).
    public init(decoding bytes: [UInt8]) throws(KademliaError) {
        guard bytes.count <= Self.maxSize else {
            throw KademliaError(.limitExceeded, "an IPNS record of \(bytes.count) bytes exceeds \(Self.maxSize)")
        }
        var fields: [Int: ProtobufValue] = [:]
        do {
            var reader = ProtobufReader(bytes)
            while let (field, value) = try reader.next() {
                let wantsVarint = field == 3 || field == 5 || field == 6
                switch (field, value) {
                case (1...9, .varint) where wantsVarint, (1...9, .bytes) where !wantsVarint:
                    fields[field] = value  // the last occurrence wins, as in protobuf
                case (1...9, _):
                    throw KademliaError(.invalidRecord, "IpnsEntry field \(field) has the wrong wire type")
                default:
                    continue  // unknown fields are skipped
                }
            }
        } catch let error as KademliaError {
            throw error
        } catch {
            throw KademliaError(.invalidRecord, "an IPNS record that is not protobuf", cause: error)
        }
        guard let data = fields[9]?.bytesValue, !data.isEmpty else {
            throw KademliaError(.invalidRecord, "an IPNS record without data")
        }
        let document: DAGCBOR
        do {
            document = try DAGCBOR(decoding: data)
        } catch {
            throw KademliaError(.invalidRecord, "the IPNS record's data is not DAG-CBOR", cause: error)
        }
        try self.init(data: data, document: document)
        value = fields[1]?.bytesValue
        signatureV1 = fields[2]?.bytesValue
        validityType = fields[3]?.varintValue
        validity = fields[4]?.bytesValue
        sequence = fields[5]?.varintValue
        ttl = fields[6]?.varintValue
        publicKey = fields[7]?.bytesValue
        signatureV2 = fields[8]?.bytesValue
    }

    // MARK: Signed fields (from data)

    /// `data[Value]`: what the name points at (usually a path, `/ipfs/<cid>`).
    public var signedValue: [UInt8]? { document["Value"]?.bytesValue }
    /// `data[Sequence]`: the version (go reads it as int64 and converts the bits).
    public var signedSequence: UInt64? { document["Sequence"]?.int64Value.map { UInt64(bitPattern: $0) } }
    /// `data[ValidityType]` (0: EOL, the only one defined).
    public var signedValidityType: Int64? { document["ValidityType"]?.int64Value }
    /// `data[TTL]` in nanoseconds.
    public var signedTTL: Int64? { document["TTL"]?.int64Value }
    /// `data[Validity]` as an end of life, when the validity type is EOL and it parses.
    public var expiry: Time? {
        guard signedValidityType == 0, let bytes = document["Validity"]?.bytesValue,
            let text = String(validating: bytes, as: UTF8.self)
        else { return nil }
        return Time(rfc3339: text)
    }

    // MARK: Verification

    /// The public key that signs `name`'s records: the record's own (which must hash to
    /// `name`), else the one inlined in `name`, else `keyBook`'s. Throws `.invalidRecord`.
    public func signingKey(for name: PeerID, keyBook: (@Sendable (PeerID) -> PublicKey?)? = nil) throws(KademliaError)
        -> PublicKey
    {
        if let publicKey, !publicKey.isEmpty {
            let key: PublicKey
            do {
                key = try PublicKey(marshaled: publicKey)
            } catch {
                throw KademliaError(.invalidRecord, "the IPNS record's public key does not parse", cause: error)
            }
            guard name.matches(key) else {
                throw KademliaError(.invalidRecord, "the IPNS record's public key is not the name's")
            }
            return key
        }
        if let key = name.publicKey ?? keyBook?(name) { return key }
        throw KademliaError(.invalidRecord, "no public key for the IPNS name \(name)")
    }

    /// Verifies the record for `name` at `now`, in the spec's order (boxo's `Validate`):
    /// size, signatureV2 and data present, signatureV2 over `"ipns-signature:" ‖ data`, the V1
    /// fields equal to the signed ones when `value` or signatureV1 is present, then the EOL.
    /// Throws `KademliaError(.invalidRecord)` (`.limitExceeded` for size).
    public func validate(for name: PeerID, now: Date = Date(), keyBook: (@Sendable (PeerID) -> PublicKey?)? = nil)
        throws(KademliaError)
    {
        guard encoded().count <= Self.maxSize else {
            throw KademliaError(.limitExceeded, "the IPNS record exceeds \(Self.maxSize) bytes")
        }
        guard let signatureV2, !signatureV2.isEmpty else {
            throw KademliaError(.invalidRecord, "the IPNS record has no signatureV2")
        }
        let key = try signingKey(for: name, keyBook: keyBook)
        guard key.verify(signature: signatureV2, for: Self.signaturePrefix + data) else {
            throw KademliaError(.invalidRecord, "the IPNS record's signatureV2 does not verify")
        }
        if !(signatureV1 ?? []).isEmpty || !(value ?? []).isEmpty {
            // proto2 getters: an absent field reads as its default.
            guard signedValue == (value ?? []) else { throw mismatch("Value") }
            guard document["Validity"]?.bytesValue == (validity ?? []) else { throw mismatch("Validity") }
            guard signedValidityType == Int64(bitPattern: validityType ?? 0) else { throw mismatch("ValidityType") }
            guard let signedSequence, signedSequence == (sequence ?? 0) else { throw mismatch("Sequence") }
            guard let signedTTL, UInt64(bitPattern: signedTTL) == (ttl ?? 0) else { throw mismatch("TTL") }
        }
        guard let type = signedValidityType else {
            throw KademliaError(.invalidRecord, "the IPNS record's data has no ValidityType")
        }
        guard type == 0 else { throw KademliaError(.invalidRecord, "unknown IPNS validity type \(type)") }
        guard let expiry else { throw KademliaError(.invalidRecord, "the IPNS record's Validity is not RFC 3339") }
        guard Time(now) <= expiry else {
            throw KademliaError(.invalidRecord, "the IPNS record expired at \(expiry.rfc3339)")
        }
    }

    private func mismatch(_ field: String) -> KademliaError {
        KademliaError(.invalidRecord, "the IPNS record's \(field) differs between protobuf and signed data")
    }

    /// Whether this record is newer than `other` (boxo's `compare`): one with a signatureV2
    /// beats one without, then the higher sequence, then the later validity; nil when neither.
    public func isNewer(than other: IPNSRecord) -> Bool? {
        let (a, b) = (!(signatureV2 ?? []).isEmpty, !(other.signatureV2 ?? []).isEmpty)
        if a != b { return a }
        let (sa, sb) = (signedSequence ?? 0, other.signedSequence ?? 0)
        if sa != sb { return sa > sb }
        guard let ea = expiry, let eb = other.expiry, ea != eb else { return nil }
        return ea > eb
    }

    /// Records with the same encoding.
    public static func == (a: IPNSRecord, b: IPNSRecord) -> Bool { a.encoded() == b.encoded() }

    /// Hashes the encoding.
    public func hash(into hasher: inout Hasher) { hasher.combine(encoded()) }
}

/// `/ipns/<peer ID bytes>` → an `IPNSRecord` signed by that peer's key (boxo's `ipns.Validator`,
/// which go-libp2p-kad-dht registers next to `/pk`): valid when it verifies for the name and has
/// not expired; of several, the newest wins (sequence, then validity, then the larger bytes).
public struct IPNSValidator: RecordValidator {
    /// `ipns`.
    public let namespace = "ipns"
    /// The key of a name whose peer ID does not inline it (RSA): go asks its peerstore.
    let keyBook: (@Sendable (PeerID) -> PublicKey?)?
    /// The clock (for EOL checks).
    let now: @Sendable () -> Date

    /// A validator; `keyBook` finds the keys of names that do not inline theirs.
    public init(keyBook: (@Sendable (PeerID) -> PublicKey?)? = nil, now: @escaping @Sendable () -> Date = { Date() }) {
        self.keyBook = keyBook
        self.now = now
    }

    /// Valid when `key` is `/ipns/<peer ID>` and `value` an IPNS record that verifies for it.
    public func validate(key: [UInt8], value: [UInt8]) throws(KademliaError) {
        let prefix = Array("/ipns/".utf8)
        guard key.starts(with: prefix), let name = try? PeerID(bytes: Array(key.dropFirst(prefix.count))) else {
            throw KademliaError(.invalidRecord, "an /ipns record key must be /ipns/<peer ID bytes>")
        }
        try IPNSRecord(decoding: value).validate(for: name, now: now(), keyBook: keyBook)
    }

    /// The newest of `values` (boxo's `selectRecord`); ties go to the bytewise larger value.
    public func select(key: [UInt8], values: [[UInt8]]) -> Int {
        let records = values.map { try? IPNSRecord(decoding: $0) }
        var best = 0
        for index in values.indices.dropFirst() {
            guard let candidate = records[index] else { continue }
            guard let current = records[best] else {
                best = index
                continue
            }
            switch candidate.isNewer(than: current) {
            case true?: best = index
            case false?: break
            case nil: if values[best].lexicographicallyPrecedes(values[index]) { best = index }
            }
        }
        return best
    }
}
