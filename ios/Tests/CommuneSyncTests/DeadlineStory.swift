// Statutory time through the bindings in Swift, on one tablet's store (no server needed): a
// dossier received before Tết 2026 is paused for a supplement (off the overdue list), completed,
// extended with an apology slip, and returned; the verdict is recorded and listed.
// The same story runs in Kotlin (android/src/test/kotlin/org/communesync/DeadlineStory.kt).
import CommuneSync
import Foundation

enum DeadlineStory {
    // A 5-working-day procedure and Tết Bính Ngọ (16-20 February 2026) off.
    static let catalogue = """
        {"procedures":[{"code":"1.001193","name":"Đăng ký khai sinh","processing":{"working_days":5}}],
         "calendar":[{"day":"2026-02-16","working":false},{"day":"2026-02-17","working":false},
           {"day":"2026-02-18","working":false},{"day":"2026-02-19","working":false},
           {"day":"2026-02-20","working":false}]}
        """

    static func run() async -> [String] {
        let c = Checks()
        do {
            try await story(c)
        } catch {
            c.expect("unexpected error: \(error)", false)
        }
        print(c.failures.isEmpty
            ? "swift deadline story: all \(c.count) checks passed"
            : "swift deadline story: \(c.failures.count) of \(c.count) checks FAILED")
        return c.failures
    }

    static func story(_ c: Checks) async throws {
        struct MissingEnvironment: Error {}
        guard let dir = ProcessInfo.processInfo.environment["COMMUNESYNC_WORK_DIR"] else {
            throw MissingEnvironment()
        }
        let work = URL(fileURLWithPath: dir)
        try FileManager.default.createDirectory(at: work, withIntermediateDirectories: true)
        let engine = try await Engine.open(config: EngineConfig(
            storePath: work.appendingPathComponent("deadline.db").path,
            encryptionKey: Data((0..<32).map { UInt8(($0 * 7 + 1) & 0xff) }),
            serverUrl: "http://127.0.0.1:9", credential: nil))
        _ = try await engine.installCatalogueFile(json: catalogue)
        var vietnam = Calendar(identifier: .gregorian)
        vietnam.timeZone = TimeZone(secondsFromGMT: 7 * 3600)!
        let received = vietnam.date(from: DateComponents(year: 2026, month: 2, day: 12, hour: 9))!
        let app = try await engine.createApplication(officer: "can-bo.lan", new: NewApplication(
            communeCode: "DB-MUONGPHANG", procedureCode: "1.001193",
            applicant: Applicant(name: "Lò Thị Mai"), receivedAt: received))
        func ymd(_ d: DateComponents) -> [Int?] { [d.year, d.month, d.day] }
        c.expect("5 working days across Tết: due 26 February", ymd(app.dueDate) == [2026, 2, 26])
        _ = try await engine.updateApplication(officer: "can-bo.lan", id: app.id,
                                               update: ApplicationUpdate(status: .inProgress))
        func overdue() async throws -> [String] { try await engine.overdue(limit: 50, offset: 0).items.map { $0.id } }
        c.expect("overdue today", try await overdue() == [app.id])

        await c.expectError("a supplement without saying what is missing", .invalidInput) {
            _ = try await engine.requestSupplement(officer: "can-bo.lan", id: app.id, missing: " ")
        }
        let paused = try await engine.requestSupplement(officer: "can-bo.lan", id: app.id,
                                                        missing: "Bản sao giấy chứng sinh")
        c.expect("the supplement moves the status", paused.status == .supplementRequested)
        c.expect("not overdue while the clock is stopped", try await overdue().isEmpty)
        let deadline = try await engine.dossierDeadline(id: app.id)
        c.expect("the pause is recorded", deadline.pausedSince != nil && deadline.events.count == 1
            && deadline.events[0].kind == .pause && deadline.events[0].reason == "Bản sao giấy chứng sinh")

        _ = try await engine.markComplete(officer: "can-bo.lan", id: app.id)
        c.expect("complete again: the clock runs", try await engine.dossierDeadline(id: app.id).pausedSince == nil)
        let later = vietnam.date(byAdding: .day, value: 20, to: Date())!
        let appointment = vietnam.dateComponents([.year, .month, .day], from: later)
        _ = try await engine.extendDeadline(officer: "can-bo.lan", id: app.id, reason: "Chờ xác minh",
                                            appointment: appointment)
        let extended = try await engine.dossierDeadline(id: app.id)
        c.expect("the extension sets the due date", extended.extended
            && ymd(extended.dueDate) == ymd(appointment) && ymd(extended.statutoryDue) == [2026, 2, 26])
        c.expect("extended: off the overdue list", try await overdue().isEmpty)

        _ = try await engine.updateApplication(officer: "can-bo.lan", id: app.id,
                                               update: ApplicationUpdate(status: .ready))
        let returned = try await engine.returnDossier(officer: "can-bo.lan", id: app.id)
        c.expect("returned", returned.status == .returned)
        let verdict = try await engine.dossierDeadline(id: app.id)
        c.expect("returned on time, with its time", verdict.returnedOnTime == true && verdict.returnedAt != nil)
        c.expect("listed on time", try await engine.returnedDossiers(onTime: true, limit: 10, offset: 0).map { $0.id } == [app.id])
        c.expect("not listed late", try await engine.returnedDossiers(onTime: false, limit: 10, offset: 0).isEmpty)
    }
}
