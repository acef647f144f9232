import Foundation
import NIOCore
import PointSub
import Testing

@testable import FuzzTargets

/// `FuzzTesting/` at the top of the repository (this file is Tests/FuzzRegressionTests/…).
private let fuzzTesting = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    .appendingPathComponent("FuzzTesting")

/// The files of `FuzzTesting/<kind>/<target>/` (none when the directory does not exist).
private func inputs(_ kind: String, _ target: FuzzTarget) -> [(name: String, bytes: [UInt8])] {
    let directory = fuzzTesting.appendingPathComponent(kind).appendingPathComponent(target.rawValue)
    let names = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
    return names.filter { !$0.hasPrefix(".") }.sorted().compactMap { name in
        guard let data = FileManager.default.contents(atPath: directory.appendingPathComponent(name).path) else { return nil }
        return (name, [UInt8](data))
    }
}

/// Runs the fuzz targets without libFuzzer: every input a fuzz run found a problem with
/// (`FuzzTesting/Regressions/<target>/`), every committed seed, and a few hundred pseudo-random
/// inputs per target (random bytes and mutated seeds, from a fixed seed so a failure repeats).
@Suite struct FuzzRegressionTests {
    @Test(arguments: FuzzTarget.allCases)
    func replaysRegressionInputs(_ target: FuzzTarget) {
        for input in inputs("Regressions", target) {
            #expect(throws: Never.self, "Regressions/\(target.rawValue)/\(input.name)") {
                try FuzzTargets.run(target, input.bytes)
            }
        }
    }

    @Test(arguments: FuzzTarget.allCases)
    func replaysCommittedSeeds(_ target: FuzzTarget) {
        let committed = inputs("Seeds", target)
        // Every target that can run has seeds, so the fuzzer starts from real structure.
        #expect(!committed.isEmpty || !target.isAvailable, "no seeds in FuzzTesting/Seeds/\(target.rawValue)")
        for input in committed {
            #expect(throws: Never.self, "Seeds/\(target.rawValue)/\(input.name)") {
                try FuzzTargets.run(target, input.bytes)
            }
        }
    }

    @Test(arguments: FuzzTarget.allCases)
    func generatedSeedsPassTheirTarget(_ target: FuzzTarget) {
        for (index, seed) in FuzzTargets.seeds(for: target).enumerated() {
            #expect(throws: Never.self, "seed \(index)") { try FuzzTargets.run(target, seed) }
        }
    }

    @Test(arguments: FuzzTarget.allCases)
    func pseudoRandomInputs(_ target: FuzzTarget) {
        var rng = SplitMix64(seed: UInt64(target.rawValue.utf8.reduce(0) { $0 &* 31 &+ Int($1) }.magnitude))
        let seeds = FuzzTargets.seeds(for: target)
        for round in 0..<300 {
            let input: [UInt8]
            if round % 2 == 0 || seeds.isEmpty {
                input = (0..<Int.random(in: 0...512, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            } else {
                input = mutate(seeds[Int.random(in: 0..<seeds.count, using: &rng)], &rng)
            }
            #expect(throws: Never.self, "round \(round): \(input)") { try FuzzTargets.run(target, input) }
        }
    }

    /// A few byte-level mutations like libFuzzer's: flip, overwrite, insert, erase, truncate.
    private func mutate(_ seed: [UInt8], _ rng: inout SplitMix64) -> [UInt8] {
        var bytes = seed
        for _ in 0..<Int.random(in: 1...4, using: &rng) {
            let at = bytes.isEmpty ? 0 : Int.random(in: 0..<bytes.count, using: &rng)
            switch Int.random(in: 0..<5, using: &rng) {
            case 0 where !bytes.isEmpty: bytes[at] ^= 1 << UInt8.random(in: 0..<8, using: &rng)
            case 1 where !bytes.isEmpty: bytes[at] = UInt8.random(in: 0...255, using: &rng)
            case 2: bytes.insert(UInt8.random(in: 0...255, using: &rng), at: at)
            case 3 where !bytes.isEmpty: bytes.remove(at: at)
            default: bytes = Array(bytes.prefix(at))
            }
        }
        return bytes
    }

    /// The fuzz harness itself must be able to fail: an invariant that does not hold is reported.
    @Test func brokenInvariantIsReported() {
        let check = Checker(target: .varint)
        let failure = #expect(throws: FuzzInvariantFailure.self) { try check(false, "deliberately false") }
        // The one error shape: the target is the code.
        #expect(failure?.code == .varint)
        #expect(failure?.description == "FuzzInvariantFailure.varint: deliberately false")
    }

    /// A zlib bomb: under 100 KiB (a payload the parser accepts) that inflates to 16 MiB, declared
    /// as 64 KiB. Decompression stops at the declared size instead of inflating (and allocating)
    /// the rest.
    @Test func decompressionBombIsRefusedAtTheDeclaredSize() throws {
        let huge = ByteBuffer(repeating: 0, count: 16 * 1024 * 1024)
        let bomb = try #require(PointSubCompression.compress(huge))
        #expect(bomb.readableBytes < 100 * 1024)
        let error = #expect(throws: PointSubError.self) {
            try PointSubCompression.decompress(bomb, originalLength: 64 * 1024, maxBlockSize: 1024 * 1024)
        }
        #expect(error?.code == .protocolViolation)
        // Declaring the true size does not help when it is over the limit: refused before inflating.
        let tooLarge = #expect(throws: PointSubError.self) {
            try PointSubCompression.decompress(bomb, originalLength: 16 * 1024 * 1024, maxBlockSize: 1024 * 1024)
        }
        #expect(tooLarge?.code == .messageTooLarge)
    }
}
