/// A topic validator's verdict (gossipsub v1.1 "Extended Validators"), applied before a message is
/// delivered or forwarded.
public enum PubSubValidationResult: Sendable, Hashable {
    /// Deliver and forward.
    case accept
    /// Invalid: drop it, count it as rejected, and tell the router (a scoring router penalises the
    /// peer that sent it).
    case reject
    /// Drop it without a penalty (e.g. not interesting, or validation timed out).
    case ignore
}
