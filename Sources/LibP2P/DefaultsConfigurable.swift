/// A configuration with sensible defaults and a builder for changing a few of them, as in
/// `P2PHost.Configuration.defaults { $0.dialTimeout = .seconds(5) }`.
public protocol DefaultsConfigurable {
    init()
}

extension DefaultsConfigurable {
    public static var defaults: Self { Self() }

    public static func defaults(_ configure: (inout Self) -> Void) -> Self {
        var configuration = Self()
        configure(&configuration)
        return configuration
    }
}
