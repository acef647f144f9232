import Foundation
import TestSupport
import Testing

/// `--help`, `-h` and `help COMMAND` print the help on stdout and exit 0 (they printed
/// "error: CommandError(…helpRequested…)" and exited 1: ArgumentParser's help request was taken
/// for a runtime error).
@Suite(.timeLimit(.minutes(1)))
struct HelpCLITests {
    @Test(arguments: [["--help"], ["-h"], ["ping", "--help"], ["echo", "-h"], ["help", "serve"], ["keygen", "--help"]])
    func helpIsPrintedAndExitsZero(_ arguments: [String]) async throws {
        let result = try await CLI.run(arguments)
        #expect(result.status == 0, "\(result.stdout)\(result.stderr)")
        #expect(result.stdout.contains("USAGE: pointsub"), "\(result.stdout)")
        #expect(!result.stderr.contains("CommandError"), "\(result.stderr)")
    }
}
