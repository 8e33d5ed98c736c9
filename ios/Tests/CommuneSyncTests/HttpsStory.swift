// The HTTPS story of the bindings in Swift, against the scripted server of
// scripts/test.d/20-bindings.sh serving HTTPS with a certificate from a test CA
// (tests/src/bin/scripted_server.rs --tls): the province's CA given in
// EngineConfig.trustedCaPem makes enrollment and sync work with no platform hook (the chroot has
// no system certificates at all); another CA, or none (the bundled web roots), gives
// CommuneSyncError.UntrustedServer, not Offline, and the background policy waits.
// The same story runs in Kotlin (android/src/test/kotlin/org/communesync/https/HttpsStory.kt).
import CommuneSync
import Foundation

enum HttpsStory {
    /// Runs the story; returns the failed checks (empty when all passed).
    static func run() async -> [String] {
        let checks = Checks()
        do {
            try await story(checks)
        } catch {
            checks.expect("unexpected error: \(error)", false)
        }
        print(checks.failures.isEmpty
            ? "swift https story: all \(checks.count) checks passed"
            : "swift https story: \(checks.failures.count) of \(checks.count) checks FAILED")
        return checks.failures
    }

    static func story(_ c: Checks) async throws {
        let env = EndToEndStory.env
        let server = try env("COMMUNESYNC_SCRIPTED_HTTPS_URL")
        let provinceCa = try String(contentsOfFile: try env("COMMUNESYNC_TEST_CA"), encoding: .utf8)
        let otherCa = try String(contentsOfFile: try env("COMMUNESYNC_OTHER_CA"), encoding: .utf8)
        let commune = try env("COMMUNESYNC_COMMUNE")
        let work = URL(fileURLWithPath: try env("COMMUNESYNC_WORK_DIR")).appendingPathComponent("https")
        try FileManager.default.createDirectory(at: work, withIntermediateDirectories: true)
        let key = Data((0..<32).map { UInt8(($0 * 5 + 3) & 0xff) })
        func config(_ name: String, _ trusted: [String], _ credential: DeviceCredential? = nil) -> EngineConfig {
            EngineConfig(storePath: work.appendingPathComponent("\(name).db").path,
                         encryptionKey: key, serverUrl: server, credential: credential,
                         trustedCaPem: trusted)
        }

        // --- the province's CA: enrollment and sync over HTTPS ---
        let t = try await Engine.open(config: config("tablet-tls", [provinceCa]))
        let credential = try await t.enroll(code: "commune:\(commune)", label: "Máy tính bảng TLS")
        _ = try await t.createCitizenRequest(officer: "can-bo.lan", new: NewCitizenRequest(
            communeCode: commune, category: "road", description: "Cầu treo bản Phăng bị hỏng",
            village: "Bản Phăng", reporterName: "Lò Văn Khánh"))
        let report = try await t.syncNow()
        c.expect("over HTTPS with the province's CA: the record is pushed", report.pushedDocs == 1)

        // --- another CA, and no CA at all (the bundled web roots): not trusted, not offline ---
        for (name, trusted) in [("another CA", [otherCa]), ("the web roots", [])] {
            let u = try await Engine.open(config: config("tablet-untrusted-\(trusted.count)", trusted))
            do {
                _ = try await u.enroll(code: "commune:\(commune)", label: "Máy tính bảng")
                c.expect("trusting \(name): enrollment must fail", false)
            } catch let error as CommuneSyncError {
                c.expect("trusting \(name) -> \(error)",
                         error.kind == .untrustedServer && error.message.contains("not signed by a trusted authority"))
            }
        }
        // The same through a sync of an enrolled store whose trust is wrong: the status says so
        // and the policy waits (an hour), it does not stop nor retry at once.
        let wrong = try await Engine.open(config: config("tablet-tls", [otherCa], credential))
        await c.expectError("a sync trusting another CA", .untrustedServer) { _ = try await wrong.syncNow() }
        let status = try await wrong.syncStatus()
        c.expect("the status records UntrustedServer", status.lastErrorKind == .untrustedServer)
        let next = try await wrong.nextSyncAfter(metered: false)
        c.expect("the policy waits an hour: \(next)", next.delaySeconds.map { $0 >= 3600 } ?? false)
    }
}
