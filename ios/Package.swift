// swift-tools-version:5.9
// CommuneSync: the communesync engine for iOS. `scripts/build-xcframework.sh` (on a Mac) builds
// CommuneSyncFFI.xcframework (the Rust library for device, simulator and macOS, its C header and
// module map) next to this file; Sources/CommuneSync holds the uniffi-generated Swift plus a thin
// hand-written layer. A release instead names the zipped XCFramework by URL and checksum
// (`build-xcframework.sh --zip` prints them; see ios/README.md).
import PackageDescription

let package = Package(
    name: "CommuneSync",
    platforms: [.iOS(.v15), .macOS(.v12)],
    products: [
        .library(name: "CommuneSync", targets: ["CommuneSync"]),
    ],
    targets: [
        .binaryTarget(name: "CommuneSyncFFI", path: "CommuneSyncFFI.xcframework"),
        .target(
            name: "CommuneSync",
            dependencies: ["CommuneSyncFFI"],
            path: "Sources/CommuneSync"
        ),
        .testTarget(
            name: "CommuneSyncTests",
            dependencies: ["CommuneSync"],
            path: "Tests/CommuneSyncTests"
        ),
    ]
)
