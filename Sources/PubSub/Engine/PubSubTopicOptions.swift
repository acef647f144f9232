/// Settings of one topic that override the service-wide ones (`PubSubConfiguration.topics`).
public struct PubSubTopicOptions: Sendable {
    /// The topic's signature policy; nil: `PubSubConfiguration.signaturePolicy`.
    public var signaturePolicy: MessageSignaturePolicy?
    /// The topic's message-ID function; nil: the service's function for the topic's policy
    /// (`PubSubConfiguration.messageID` or `unsignedMessageID`).
    public var messageID: PubSubConfiguration.MessageIDFunction?

    /// Options with the given overrides (nil: the service's setting).
    public init(
        signaturePolicy: MessageSignaturePolicy? = nil, messageID: PubSubConfiguration.MessageIDFunction? = nil
    ) {
        self.signaturePolicy = signaturePolicy
        self.messageID = messageID
    }
}
