import Basics

/// Every error of Circuit Relay v2: malformed messages, refusals by a relay or by the target, limits.
public struct RelayError: CodedError {
    /// The kind of failure.
    public enum Code: String, ErrorCode {
        /// A hop or stop message that is not valid protobuf, misses a required field or has an
        /// unknown type.
        case malformedMessage
        /// A message of a type the other side must not send at this point (e.g. `STATUS` as a
        /// request).
        case unexpectedMessage
        /// A message, an address list or a voucher over its limit (checked before buffering).
        case limitExceeded
        /// The relay or the target answered with a status other than `OK`; `status` says which.
        case refused
        /// A reservation voucher that does not verify, or one for another relay or peer.
        case invalidVoucher
        /// A relayed connection ran out of its data or time allowance.
        case circuitLimitReached
        /// An address that is not a circuit address (`…/p2p/<relay>/p2p-circuit/p2p/<target>`).
        case invalidAddress
    }

    /// The kind of failure.
    public var code: Code
    /// What went wrong.
    public var message: String
    /// The status the other side answered with, for `.refused`.
    public var status: RelayStatus?
    /// The lower-level error, if any.
    public var cause: (any Error)?

    /// An error of kind `code`.
    public init(_ code: Code, _ message: String, status: RelayStatus? = nil, cause: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.status = status
        self.cause = cause
    }
}
