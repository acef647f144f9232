import FuzzTargets

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// The libFuzzer driver for one fuzz target, chosen by the environment variable `FUZZ_TARGET`
/// (its raw name, e.g. `yamux-session`; `scripts/fuzz.sh` sets it). Each run of the binary fuzzes
/// one target, so every target can run on its own for the time given, with its own corpus.
///
/// `FUZZ_WRITE_SEEDS=<dir>` instead writes every target's seeds to `<dir>/<target>/seed-<n>` and
/// exits (that is how `FuzzTesting/Seeds/` was made).
enum Driver {
    /// Set once by `LLVMFuzzerInitialize`, before the first input; only read afterwards.
    nonisolated(unsafe) static var target: FuzzTarget = .varint
}

/// libFuzzer's entry point: runs the chosen target on one input.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = size > 0 && data != nil ? Array(UnsafeBufferPointer(start: data, count: size)) : []
    do {
        try FuzzTargets.run(Driver.target, bytes)
    } catch {
        // A broken invariant: crash so that libFuzzer keeps the input.
        fatalError("fuzz invariant failure: \(error)")
    }
    return 0
}

/// Called by libFuzzer once before fuzzing (from its own `main` in a release build, from
/// `LLVMFuzzerRunDriver` in a debug one): picks the target, or writes the seeds and exits.
@_cdecl("LLVMFuzzerInitialize")
public func fuzzInitialize(
    _ argc: UnsafeMutablePointer<CInt>?, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>?
) -> CInt {
    if let directory = getenv("FUZZ_WRITE_SEEDS") {
        exit(writeSeeds(to: String(cString: directory)))
    }
    let name = getenv("FUZZ_TARGET").map { String(cString: $0) } ?? ""
    guard let target = FuzzTarget(rawValue: name) else {
        let names = FuzzTarget.allCases.map(\.rawValue).joined(separator: " ")
        print("set FUZZ_TARGET to one of: \(names)")
        exit(2)
    }
    guard target.isAvailable else {
        print("\(name) needs a build with -enable-testing -DFUZZING (it uses @testable import)")
        exit(2)
    }
    Driver.target = target
    return 0
}

private func writeSeeds(to directory: String) -> CInt {
    mkdir(directory, 0o755)
    for target in FuzzTarget.allCases {
        let folder = "\(directory)/\(target.rawValue)"
        mkdir(folder, 0o755)
        for (index, seed) in FuzzTargets.seeds(for: target).enumerated() {
            guard let file = fopen("\(folder)/seed-\(index)", "wb") else { return 1 }
            _ = seed.withUnsafeBytes { fwrite($0.baseAddress, 1, $0.count, file) }
            fclose(file)
        }
    }
    return 0
}

@_silgen_name("LLVMFuzzerRunDriver")
func runFuzzerDriver(
    _ argc: UnsafeMutablePointer<CInt>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt
) -> CInt

/// In a debug build SwiftPM links an executable's `main` to `<target>_main`; with
/// `-parse-as-library` there is none, so this one hands control to libFuzzer's driver. (A release
/// build uses libFuzzer's own `main`.)
@_cdecl("pointsub_fuzz_main")
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    var count = argc
    var arguments = argv
    return runFuzzerDriver(&count, &arguments) { data, size in fuzz(data, size) }
}
