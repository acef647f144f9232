import Foundation

extension ChildProcess {
    /// The built `pointsub` binary (`swift build --build-tests` builds it), debug or release.
    public static var pointsubBinary: URL {
        get throws {
            for config in ["debug", "release"] {
                let url = repoRoot.appendingPathComponent(".build/\(config)/pointsub")
                if FileManager.default.isExecutableFile(atPath: url.path) { return url }
            }
            throw Failure("pointsub is not built (swift build --build-tests builds it)")
        }
    }
}
