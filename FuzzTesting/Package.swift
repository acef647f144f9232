// swift-tools-version:6.1
// libFuzzer targets for every parser that reads bytes from the network. Build and run with
// scripts/fuzz.sh (it passes -sanitize=fuzzer,address); crashes found are kept as regression
// inputs under FuzzTesting/Regressions/ and replayed by the script.
import PackageDescription

let package = Package(
    name: "PointSubFuzz",
    dependencies: [.package(name: "PointSub", path: "..")],
    targets: [
        .executableTarget(
            name: "pointsub-fuzz",
            dependencies: [.product(name: "PointSub", package: "PointSub")],
            swiftSettings: [.swiftLanguageMode(.v6), .unsafeFlags(["-parse-as-library"])]
        )
    ]
)
