// The SDK layer in Swift, against the real `communesync serve` of scripts/test.d/20-bindings.sh:
// the sync status as an AsyncStream, the engine's logs reaching a logger the app installs,
// instants as `Date` and civil dates as `DateComponents`, and key rotation.
// The same story runs in Kotlin (android/src/test/kotlin/org/communesync/SdkStory.kt).
import CommuneSync
import Foundation

/// Log records received, from the engine's log thread.
final class CollectingLogger: EngineLogger, @unchecked Sendable {
    private let lock = NSLock()
    private var records: [LogRecord] = []

    func log(record: LogRecord) {
        lock.lock(); defer { lock.unlock() }
        records.append(record)
    }

    var all: [LogRecord] {
        lock.lock(); defer { lock.unlock() }
        return records
    }
}

/// Statuses received from the stream.
final class StatusLog: @unchecked Sendable {
    private let lock = NSLock()
    private var statuses: [SyncStatus] = []

    func append(_ status: SyncStatus) {
        lock.lock(); defer { lock.unlock() }
        statuses.append(status)
    }

    var all: [SyncStatus] {
        lock.lock(); defer { lock.unlock() }
        return statuses
    }

    var latest: SyncStatus? { all.last }
}

enum SdkStory {
    /// Runs the story; returns the failed checks (empty when all passed).
    static func run() async -> [String] {
        let checks = Checks()
        do {
            try await story(checks)
        } catch {
            checks.expect("unexpected error: \(error)", false)
        }
        print(checks.failures.isEmpty
            ? "swift sdk story: all \(checks.count) checks passed"
            : "swift sdk story: \(checks.failures.count) of \(checks.count) checks FAILED")
        return checks.failures
    }

    static func story(_ c: Checks) async throws {
        let env = { (name: String) throws -> String in try EndToEndStory.env(name) }
        let work = URL(fileURLWithPath: try env("COMMUNESYNC_WORK_DIR"))
        try FileManager.default.createDirectory(at: work, withIntermediateDirectories: true)
        let commune = try env("COMMUNESYNC_COMMUNE")
        let server = try env("COMMUNESYNC_SERVER_URL")
        let storePath = work.appendingPathComponent("tablet-sdk.db").path
        let oldKey = Data(repeating: 3, count: 32)
        let newKey = Data(repeating: 5, count: 32)
        func config(_ key: Data, _ credential: DeviceCredential? = nil) -> EngineConfig {
            EngineConfig(storePath: storePath, encryptionKey: key, serverUrl: server, credential: credential)
        }

        // --- the app's logger, installed before anything runs ---
        let logs = CollectingLogger()
        setLogger(logger: logs, minLevel: .info)

        let engine = try await Engine.open(config: config(oldKey))

        // --- the sync status as an AsyncStream ---
        let statuses = StatusLog()
        let stream = try engine.syncStatusUpdates()
        let watching = Task { for await status in stream { statuses.append(status) } }
        c.expect("the stream starts with the status now", await waitFor(10) {
            statuses.latest.map { !$0.enrolled && $0.pendingChanges == 0 && $0.lastSuccess == nil } ?? false
        })
        let credential = try await engine.enroll(code: try env("COMMUNESYNC_CODE_SDK"), label: "Máy tính bảng SDK")
        c.expect("enrollment shows in the stream", await waitFor(10) {
            statuses.latest.map { $0.enrolled && $0.enrolledCommune == commune } ?? false
        })
        _ = try await engine.syncNow() // the catalogue

        // --- instants and civil dates ---
        let received = Date(timeIntervalSince1970: 1_795_401_000.25) // 2026-11-23 09:30:00.250 in Vietnam
        let app = try await engine.createApplication(officer: "can-bo.lan", new: NewApplication(
            communeCode: commune, procedureCode: "1.000894",
            applicant: Applicant(name: "Lường Văn Thắng", village: "Bản Phăng"), receivedAt: received))
        let readBack = try await engine.getApplication(id: app.id)
        c.expect("a Date round-trips to the millisecond",
                 abs(app.receivedAt.timeIntervalSince(received)) < 0.0005 && readBack.receivedAt == app.receivedAt)
        c.expect("the due date is DateComponents: 3 working days after Monday 23 November 2026 (\(app.dueDate))",
                 app.dueDate == .civil(2026, 11, 26))
        c.expect("the civil date of an instant in Vietnam", DateComponents.civilInVietnam(received) == .civil(2026, 11, 23))
        let byDue = try await engine.queryApplications(query: ApplicationQuery(dueFrom: app.dueDate, dueUntil: app.dueDate))
        c.expect("a query by civil date finds it", byDue.items.contains { $0.id == app.id })
        let byReceipt = try await engine.queryApplications(query: ApplicationQuery(
            receivedFrom: app.receivedAt, receivedUntil: app.receivedAt.addingTimeInterval(0.001)))
        c.expect("a query by Date finds it", byReceipt.items.map { $0.id } == [app.id])
        c.expect("the pending edit shows in the stream", await waitFor(10) { statuses.latest?.pendingChanges == 1 })

        // --- a sync: seen running, then done ---
        let before = Date().addingTimeInterval(-1)
        let report = try await engine.syncNow()
        c.expect("the sync pushed the application", report.pushedDocs == 1)
        c.expect("after the sync: nothing pending, idle, a last success now", await waitFor(10) {
            statuses.latest.map {
                $0.pendingChanges == 0 && !$0.syncing && ($0.lastSuccess.map { $0 > before } ?? false)
                    && $0.lastReport?.pushedDocs == 1
            } ?? false
        })
        c.expect("the stream showed the sync running", statuses.all.contains { $0.syncing })
        let history = try await engine.history(id: app.id)
        c.expect("the server's receive time is a Date",
                 history.first?.serverReceivedAt.map { $0 > Date(timeIntervalSince1970: 1_767_225_600) } ?? false)

        // --- the engine's logs reach the app, without secrets ---
        c.expect("a real log line of the sync reached the logger", await waitFor(10) {
            logs.all.contains { $0.level == .info && $0.target.hasPrefix("communesync_core::sync") && $0.message.hasPrefix("sync done") }
        })
        c.expect("no log line holds the token", !logs.all.contains { $0.message.contains(credential.token) })
        c.expect("nothing below the chosen level", !logs.all.contains { $0.level == .debug || $0.level == .trace })

        // --- key rotation ---
        await c.expectError("a 16-byte new key is refused", .invalidInput) { try await engine.rekey(newKey: Data(count: 16)) }
        try await engine.rekey(newKey: newKey)
        c.expect("the engine goes on after a rekey",
                 try await engine.getApplication(id: app.id).applicant.name == "Lường Văn Thắng")
        watching.cancel()
        await c.expectError("the old key no longer opens the store", .storage) {
            _ = try await Engine.open(config: config(oldKey, credential))
        }
        let reopened = try await Engine.open(config: config(newKey, credential))
        c.expect("the new key opens it, with its records", try await reopened.getApplication(id: app.id).receivedAt == app.receivedAt)
        c.expect("and it syncs", try await reopened.syncNow().requests >= 1)
        setLogger(logger: nil, minLevel: .info)
    }
}
