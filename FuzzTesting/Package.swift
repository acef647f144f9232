// swift-tools-version:6.1
// The libFuzzer driver for the fuzz targets of the main package (module FuzzTargets, issue 10).
// Build and run with scripts/fuzz.sh (it passes -sanitize=fuzzer,address); `FUZZ_TARGET=<name>`
// picks the target. Crash inputs go to FuzzTesting/Regressions/<target>/ and become regression
// tests in the normal suite (FuzzRegressionTests).
import PackageDescription

let package = Package(
    name: "PointSubFuzz",
    dependencies: [.package(name: "PointSub", path: "..")],
    targets: [
        .executableTarget(
            name: "pointsub-fuzz",
            dependencies: [.product(name: "FuzzTargets", package: "PointSub")],
            swiftSettings: [.swiftLanguageMode(.v6), .unsafeFlags(["-parse-as-library"])]
        )
    ]
)
