/// The one shape of every error this package throws: a machine-checkable `code`, a `message` for
/// people, and the lower-level error that caused it, if any (as grpc-swift-2's `RPCError`).
///
/// Each layer has its own error type of this shape (`IdentityError`, `YamuxError`, `HostError`,
/// `PointSubError`…), so a `catch` can match one layer's codes. The message says what went wrong
/// at this layer only and never repeats the cause's text: `description` appends the cause once.
public protocol CodedError: Error, Sendable, CustomStringConvertible {
    /// The kind of failure; what code should switch on.
    associatedtype Code: Hashable, Sendable, CustomStringConvertible

    /// The kind of failure.
    var code: Code { get }
    /// What went wrong, for people; does not include the cause's text.
    var message: String { get }
    /// The lower-level error behind this one, if any.
    var cause: (any Error)? { get }
}

extension CodedError {
    /// `Type.code: message`, then the cause, e.g.
    /// `HostError.dialFailed: no address answered (cause: …)`.
    public var description: String { codedDescription }

    /// The standard description (`Type.code: message (cause: …)`), for a type that adds to it in
    /// its own `description`.
    public var codedDescription: String {
        var text = "\(Self.self).\(code)"
        if !message.isEmpty { text += ": \(message)" }
        if let cause { text += " (cause: \(cause))" }
        return text
    }

    /// The chain of causes from this error down, this error first.
    public var causeChain: [any Error] {
        var chain: [any Error] = [self]
        var next = cause
        // Bounded: a cause chain is a handful of layers deep.
        while let error = next, chain.count < 32 {
            chain.append(error)
            next = (error as? any CodedError)?.cause
        }
        return chain
    }

    /// The first error of type `E` among this error and its causes, depth first, looking into
    /// each error of an `ErrorList` (e.g. the `NoiseError` behind one of a dial's addresses).
    public func firstCause<E: Error>(as type: E.Type = E.self) -> E? {
        findError(E.self, in: self, depth: 0)
    }
}

private func findError<E: Error>(_ type: E.Type, in error: any Error, depth: Int) -> E? {
    if let error = error as? E { return error }
    guard depth < 32 else { return nil }
    if let list = error as? ErrorList {
        for error in list.errors {
            if let found = findError(type, in: error, depth: depth + 1) { return found }
        }
        return nil
    }
    guard let cause = (error as? any CodedError)?.cause else { return nil }
    return findError(type, in: cause, depth: depth + 1)
}

/// Several errors behind one failure (e.g. each address a dial tried), as one cause.
public struct ErrorList: Error, Sendable, CustomStringConvertible {
    /// The errors, in the order they happened.
    public var errors: [any Error]

    /// A list of `errors`, in order.
    public init(_ errors: [any Error]) { self.errors = errors }

    /// The errors' descriptions joined by "; ".
    public var description: String { errors.map { "\($0)" }.joined(separator: "; ") }
}

/// A `Code` that is a string-backed enum, named by its case: `enum Code: String, ErrorCode`.
public protocol ErrorCode: Hashable, Sendable, CustomStringConvertible, RawRepresentable where RawValue == String {}

extension ErrorCode {
    /// The case's name, e.g. `dialFailed`.
    public var description: String { rawValue }
}
