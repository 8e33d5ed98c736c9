// The end-to-end story of the bindings in Swift, against a real `communesync serve` started by
// scripts/test.d/20-bindings.sh (on Linux: compiled with swiftc in the trixie chroot and run with
// StoryMain.swift; in Xcode: run by EndToEndTests.swift when the same environment is set).
// Then, against the scripted server of the same script (tests/src/bin/scripted_server.rs), the
// integrity cases: records set aside in the quarantine and fixed, "upgrade required", a wipe.
// The same story runs in Kotlin (android/src/test/kotlin/org/communesync/EndToEndStory.kt).
import CommuneSync
import Foundation

/// Collects checks; the story fails when one fails.
final class Checks: @unchecked Sendable {
    private(set) var count = 0
    private(set) var failures: [String] = []

    func expect(_ what: String, _ ok: Bool) {
        count += 1
        if ok {
            print("ok   \(what)")
        } else {
            print("FAIL \(what)")
            failures.append(what)
        }
    }

    func expectError(_ what: String, _ kind: ErrorKind, _ body: () throws -> Void) {
        do {
            try body()
            expect("\(what) (no error was raised)", false)
        } catch let error as CommuneSyncError {
            expect("\(what) -> \(error)", error.kind == kind && !error.message.isEmpty)
        } catch {
            expect("\(what) -> unexpected \(error)", false)
        }
    }

    func expectError(_ what: String, _ kind: ErrorKind, _ body: () async throws -> Void) async {
        do {
            try await body()
            expect("\(what) (no error was raised)", false)
        } catch let error as CommuneSyncError {
            expect("\(what) -> \(error)", error.kind == kind && !error.message.isEmpty)
        } catch {
            expect("\(what) -> unexpected \(error)", false)
        }
    }
}

extension CommuneSyncError {
    var kind: ErrorKind {
        switch self {
        case .Offline: return .offline
        case .Unauthorized: return .unauthorized
        case .Revoked: return .revoked
        case .Wiped: return .wiped
        case .UntrustedServer: return .untrustedServer
        case .UpgradeRequired: return .upgradeRequired
        case .InvalidInput: return .invalidInput
        case .NotFound: return .notFound
        case .Conflict: return .conflict
        case .Storage: return .storage
        }
    }

    var message: String {
        switch self {
        case .Offline(let m), .Unauthorized(let m), .Revoked(let m), .Wiped(let m),
             .UntrustedServer(let m), .UpgradeRequired(let m), .InvalidInput(let m), .NotFound(let m), .Conflict(let m),
             .Storage(let m):
            return m
        }
    }
}

/// Events seen by an observer, from the engine's observer thread.
final class EventLog: @unchecked Sendable {
    private let lock = NSLock()
    private var events: [EngineEvent] = []

    func append(_ event: EngineEvent) {
        lock.lock(); defer { lock.unlock() }
        events.append(event)
    }

    var progress: [SyncProgress] {
        lock.lock(); defer { lock.unlock() }
        return events.compactMap { if case .progress(let p) = $0 { return p } else { return nil } }
    }

    var changes: [ChangeEvent] {
        lock.lock(); defer { lock.unlock() }
        return events.compactMap { if case .changed(let c) = $0 { return c } else { return nil } }
    }

    var wipes: [WipeEvent] {
        lock.lock(); defer { lock.unlock() }
        return events.compactMap { if case .wiped(let w) = $0 { return w } else { return nil } }
    }
}

/// An observer implemented directly (without the AsyncStream helper).
final class CountingObserver: SyncObserver, @unchecked Sendable {
    let log = EventLog()
    func onProgress(progress: SyncProgress) { log.append(.progress(progress)) }
    func onChanged(event: ChangeEvent) { log.append(.changed(event)) }
    func onWiped(event: WipeEvent) { log.append(.wiped(event)) }
}

/// Polls `cond` every 50 ms for at most `seconds`.
func waitFor(_ seconds: Double, _ cond: () -> Bool) async -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if cond() { return true }
        try? await Task.sleep(nanoseconds: 50_000_000)
    }
    return cond()
}

enum EndToEndStory {
    static func env(_ name: String) throws -> String {
        guard let value = ProcessInfo.processInfo.environment[name] else {
            throw CommuneSyncError.InvalidInput(message: "\(name) is not set")
        }
        return value
    }

    /// Runs the story; returns the failed checks (empty when all passed).
    static func run() async -> [String] {
        let checks = Checks()
        do {
            try await story(checks)
        } catch {
            checks.expect("unexpected error: \(error)", false)
        }
        print(checks.failures.isEmpty
            ? "swift story: all \(checks.count) checks passed"
            : "swift story: \(checks.failures.count) of \(checks.count) checks FAILED")
        return checks.failures
    }

    static func story(_ c: Checks) async throws {
        let server = try env("COMMUNESYNC_SERVER_URL")
        let commune = try env("COMMUNESYNC_COMMUNE")
        let work = URL(fileURLWithPath: try env("COMMUNESYNC_WORK_DIR"))
        let hooks = URL(fileURLWithPath: try env("COMMUNESYNC_HOOK_DIR"))
        try FileManager.default.createDirectory(at: work, withIntermediateDirectories: true)
        let key = Data((0..<32).map { UInt8(($0 * 7 + 1) & 0xff) })
        func config(_ name: String, _ credential: DeviceCredential? = nil, key: Data = key) -> EngineConfig {
            EngineConfig(storePath: work.appendingPathComponent("\(name).db").path,
                         encryptionKey: key, serverUrl: server, credential: credential)
        }

        // --- opening and the errors an app acts on, before enrollment ---
        await c.expectError("a 3-byte key is refused", .invalidInput) {
            _ = try await Engine.open(config: config("bad", key: Data([1, 2, 3])))
        }
        var a = try await Engine.open(config: config("tablet-a"))
        let b = try await Engine.open(config: config("tablet-b"))
        c.expect("two stores, two device ids", a.deviceId() != b.deviceId())
        await c.expectError("sync before enrolling", .unauthorized) { _ = try await a.syncNow() }
        c.expect("not enrolled: the policy says stop", try await a.nextSyncAfter(metered: false) == .stop)
        await c.expectError("enroll with a bad code", .unauthorized) {
            _ = try await a.enroll(code: "NOT-A-CODE", label: "tablet A")
        }

        // --- observing tablet A through the AsyncStream helper ---
        let events = EventLog()
        let stream = try a.events()
        let collector = Task { for await event in stream { events.append(event) } }

        // --- enrollment ---
        let credA = try await a.enroll(code: try env("COMMUNESYNC_CODE_A"), label: "Máy tính bảng A")
        let credB = try await b.enroll(code: try env("COMMUNESYNC_CODE_B"), label: "Máy tính bảng B")
        c.expect("A enrolled in \(commune)", credA.communeCode == commune && credA.deviceId == a.deviceId())
        c.expect("B enrolled in \(commune)", credB.communeCode == commune && credB.deviceId == b.deviceId())
        c.expect("the engine keeps the credential", a.credential() == credA)
        let first = try await a.syncNow()
        c.expect("first sync of A: nothing pushed", first.pushedDocs == 0 && first.requests >= 1)
        c.expect("the catalogue came with it", try await a.procedure(code: "1.001193").name == "Đăng ký khai sinh")

        // --- offline intake with Vietnamese text ---
        let huong = try await a.createApplication(officer: "can-bo.lan", new: NewApplication(
            communeCode: commune, procedureCode: "1.001193",
            applicant: Applicant(name: "Nguyễn Thị Hương", phone: "0912345678", village: "Bản Phăng"),
            documents: [ReceivedDocument(name: "Tờ khai đăng ký khai sinh", copies: 1, original: true)],
            fees: [Fee(name: "Lệ phí", amountVnd: 8000)],
            notes: "Giấy chứng sinh bản chính"))
        let duc = try await a.createApplication(officer: "can-bo.lan", new: NewApplication(
            communeCode: commune, procedureCode: "1.001193",
            applicant: Applicant(name: "Đặng Văn Đức", village: "Bản Co Mị")))
        let road = try await a.createCitizenRequest(officer: "can-bo.lan", new: NewCitizenRequest(
            communeCode: commune, category: "road",
            description: "Đường vào bản Phăng bị sạt lở sau mưa lũ",
            village: "Bản Phăng", reporterName: "Lò Văn Khánh"))
        c.expect("new applications are received, with a due date (DateComponents)",
                 huong.status == .received && huong.dueDate.year.map { $0 >= 2024 } == true && huong.dueDate.day != nil)
        let readBack = try await a.getApplication(id: huong.id)
        let roadBack = try await a.getCitizenRequest(id: road.id)
        c.expect("Vietnamese text round-trips",
                 readBack.applicant.name == "Nguyễn Thị Hương" && roadBack.description.hasPrefix("Đường vào bản"))
        c.expect("3 records wait for the server", try await a.syncStatus().pendingChanges == 3)
        let page1 = try await a.queryApplications(query: ApplicationQuery(status: .received, sort: .applicantName, limit: 1))
        let page2 = try await a.queryApplications(query: ApplicationQuery(
            status: .received, sort: .applicantName, limit: 1, offset: page1.nextOffset ?? 0))
        c.expect("pagination: 2 in all, one per page",
                 page1.total == 2 && page1.items.count == 1 && page1.nextOffset == 1 && page2.nextOffset == nil)
        c.expect("the two pages hold both applications",
                 Set((page1.items + page2.items).map { $0.applicantName }) == ["Đặng Văn Đức", "Nguyễn Thị Hương"])
        c.expect("counts by status", try await a.countsByStatus().first { $0.status == .received }?.count == 2)
        c.expect("nothing overdue yet", try await a.overdue(limit: 10, offset: 0).total == 0)
        c.expect("due soon (1 working day procedure)", try await a.dueSoon(workingDays: 5, limit: 50, offset: 0).total == 2)
        await c.expectError("an incomplete date in a query", .invalidInput) {
            _ = try await a.queryApplications(query: ApplicationQuery(dueFrom: DateComponents(year: 2026)))
        }
        c.expect("a query by due date (DateComponents)",
                 try await a.queryApplications(query: ApplicationQuery(dueFrom: huong.dueDate, dueUntil: huong.dueDate)).total == 2)

        // --- sync: A pushes, B sees them ---
        let pushed = try await a.syncNow()
        c.expect("A pushed 3 records", pushed.pushedDocs == 3 && pushed.pendingDocs == 0)
        let pulled = try await b.syncNow()
        c.expect("B pulled 3 records", pulled.pulledDocs == 3)
        c.expect("B reads the application", try await b.getApplication(id: huong.id).applicant.name == "Nguyễn Thị Hương")
        c.expect("B reads the request", try await b.getCitizenRequest(id: road.id).reporterName == "Lò Văn Khánh")
        c.expect("search without diacritics: nguyen thi huong",
                 try await b.search(text: "nguyen thi huong", limit: 10).map { $0.id } == [huong.id])
        c.expect("search without diacritics: dang van duc (đ -> d)",
                 try await b.search(text: "dang van duc", limit: 10).map { $0.id } == [duc.id])
        c.expect("search a request by prefix: sat l",
                 try await b.search(text: "sat l", limit: 10).contains { $0.id == road.id && $0.kind == .citizenRequest })

        // --- concurrent edits of one field -> a conflict ---
        _ = try await a.updateApplication(officer: "can-bo.lan", id: huong.id, update: ApplicationUpdate(assignee: "Lò Văn Minh"))
        _ = try await b.updateApplication(officer: "can-bo.tuan", id: huong.id, update: ApplicationUpdate(assignee: "Quàng Thị Lan"))
        _ = try await a.syncNow()
        let bSync = try await b.syncNow()
        _ = try await a.syncNow()
        c.expect("B's sync reports the conflict", bSync.conflicts == 1)
        let assigneeConflict = try await b.conflicts(id: huong.id).first { $0.field == "assignee" }
        c.expect("B sees both values of assignee",
                 Set(assigneeConflict?.values.map { $0.value } ?? [])
                    == [.text(value: "Lò Văn Minh"), .text(value: "Quàng Thị Lan")])
        c.expect("each value says who wrote it",
                 Set(assigneeConflict?.values.compactMap { $0.officer } ?? []) == ["can-bo.lan", "can-bo.tuan"])
        c.expect("A sees the same conflict",
                 try await a.conflicts(id: huong.id).contains { $0.field == "assignee" && $0.values.count == 2 })
        c.expect("query: records with conflicts",
                 try await a.queryApplications(query: ApplicationQuery(withConflicts: true)).items.map { $0.id } == [huong.id])

        // --- resolve, and the resolution travels ---
        let resolved = try await b.resolve(officer: "can-bo.tuan", id: huong.id, field: "assignee",
                                     value: .text(value: "Quàng Thị Lan"))
        if case .application(let app) = resolved {
            c.expect("resolve returns the record", app.assignee == "Quàng Thị Lan")
        } else {
            c.expect("resolve returns the application", false)
        }
        c.expect("no conflict left on B", try await b.conflicts(id: huong.id).isEmpty)
        _ = try await b.syncNow()
        _ = try await a.syncNow()
        let resolvedOnA = try await a.getApplication(id: huong.id)
        let conflictsOnA = try await a.conflicts(id: huong.id)
        c.expect("A has the resolution", resolvedOnA.assignee == "Quàng Thị Lan" && conflictsOnA.isEmpty)

        // --- history ---
        let history = try await a.history(id: huong.id)
        c.expect("history: created, two edits, the resolution", history.count == 4 && history.first?.fields == ["created"])
        c.expect("history names officers and devices",
                 Set(history.map { $0.officer }) == ["can-bo.lan", "can-bo.tuan"]
                    && Set(history.compactMap { $0.deviceId }) == [a.deviceId(), b.deviceId()])
        c.expect("history: assignee edited 3 times", history.filter { $0.fields.contains("assignee") }.count == 3)

        // --- workflow and lookups ---
        let inProgress = try await a.updateApplication(officer: "can-bo.lan", id: duc.id, update: ApplicationUpdate(
            status: .inProgress, notes: "Đã chuyển bộ phận tư pháp"))
        c.expect("status moves along the workflow", inProgress.status == .inProgress && inProgress.assignee == nil)
        await c.expectError("in progress -> returned skips a step", .conflict) {
            _ = try await a.updateApplication(officer: "can-bo.lan", id: duc.id, update: ApplicationUpdate(status: .returned))
        }
        await c.expectError("an unknown id", .notFound) { _ = try await a.getApplication(id: "018f0000-0000-7000-8000-000000000000") }
        await c.expectError("a request read as an application", .notFound) { _ = try await a.getApplication(id: road.id) }
        await c.expectError("a malformed id", .invalidInput) { _ = try await a.getApplication(id: "not-an-id") }
        await c.expectError("an unknown procedure", .invalidInput) {
            _ = try await a.createApplication(officer: "can-bo.lan", new: NewApplication(
                communeCode: commune, procedureCode: "9.999999", applicant: Applicant(name: "Vi Thị Mai")))
        }
        await c.expectError("a bad phone number", .invalidInput) {
            var applicant = huong.applicant
            applicant.phone = "12"
            _ = try await a.updateApplication(officer: "can-bo.lan", id: huong.id, update: ApplicationUpdate(applicant: applicant))
        }

        // --- status and background policy ---
        _ = try await a.syncNow()
        let status = try await a.syncStatus()
        c.expect("status: enrolled, idle, nothing pending, a report",
                 status.enrolled && !status.syncing && status.pendingChanges == 0 && status.lastReport != nil && status.lastError == nil)
        let next = try await a.nextSyncAfter(metered: false)
        if case .after(let delayMs) = next {
            c.expect("after a sync with nothing pending: in about an hour (\(delayMs) ms)", (3_500_000...3_600_000).contains(delayMs))
        } else {
            c.expect("after a sync with nothing pending: a delay, not \(next)", false)
        }
        c.expect("delaySeconds helper", next.delaySeconds.map { $0 > 3000 } ?? false && SyncDecision.stop.delaySeconds == nil)
        c.expect("the free policy function: never synced -> run",
                 nextSyncAfter(input: PolicyInput(pendingChanges: 0, lastSuccessMs: nil, consecutiveFailures: 0,
                                                  metered: false, nowMs: 0, lastError: nil), policy: nil) == .run)

        // --- progress callbacks ---
        c.expect("progress callbacks arrived", await waitFor(10) { events.progress.contains { $0.phase == .done } })
        c.expect("progress counted pushed records", events.progress.contains { $0.pushedDocs == 3 })
        c.expect("change events: local edits with ids",
                 events.changes.contains { $0.origin == .local && $0.recordIds == [huong.id] })
        c.expect("change events: pulled records", events.changes.contains { $0.origin == .sync && $0.changedCount > 0 })
        collector.cancel()
        let direct = CountingObserver()
        let handle = try a.observe(observer: direct)
        _ = try await a.updateApplication(officer: "can-bo.lan", id: duc.id, update: ApplicationUpdate(
            notes: "Đã chuyển bộ phận tư pháp, chờ xác minh"))
        _ = try await a.syncNow()
        c.expect("a direct observer gets progress",
                 await waitFor(10) { direct.log.progress.contains { $0.phase == .done && $0.pushedDocs == 1 } })
        c.expect("observer handle is active", handle.isActive())
        handle.stop()
        c.expect("observer handle stopped", !handle.isActive())

        // --- reopening with the stored credential; wrong key; someone else's credential ---
        a = try await Engine.open(config: config("tablet-a", credA))
        c.expect("reopened: records are there", try await a.getApplication(id: huong.id).assignee == "Quàng Thị Lan")
        c.expect("reopened: syncs with the stored credential", try await a.syncNow().requests >= 1)
        await c.expectError("the wrong key", .storage) {
            _ = try await Engine.open(config: config("tablet-a", key: Data(repeating: 9, count: 32)))
        }
        await c.expectError("another device's credential", .invalidInput) {
            _ = try await Engine.open(config: config("tablet-a", credB))
        }

        // --- revocation ---
        let request = hooks.appendingPathComponent("revoke-request")
        try b.deviceId().write(to: hooks.appendingPathComponent("revoke-request.tmp"), atomically: true, encoding: .utf8)
        try FileManager.default.moveItem(at: hooks.appendingPathComponent("revoke-request.tmp"), to: request)
        c.expect("the operator revoked B", await waitFor(30) {
            FileManager.default.fileExists(atPath: hooks.appendingPathComponent("revoke-done").path)
        })
        await c.expectError("B syncs after revocation", .revoked) { _ = try await b.syncNow() }
        c.expect("revoked: the policy says stop", try await b.nextSyncAfter(metered: false) == .stop)
        let revokedStatus = try await b.syncStatus()
        c.expect("revoked: the status says so",
                 revokedStatus.lastErrorKind == .revoked && revokedStatus.consecutiveFailures == 1)
        c.expect("A still syncs", try await a.syncNow().requests >= 1)

        // --- the README's example, run for real ---
        let fromReadme = try await intakeAndSync(engine: a, commune: commune)
        c.expect("the README example takes an application and syncs it", fromReadme.pushedDocs == 1)

        try await integrityStory(c, scripted: try env("COMMUNESYNC_SCRIPTED_URL"), commune: commune,
                                 work: work, key: key)
    }

    /// Quarantine, "upgrade required" and a wipe order, against the scripted server.
    static func integrityStory(_ c: Checks, scripted: String, commune: String, work: URL, key: Data) async throws {
        func config(_ name: String, appVersion: String? = nil, credential: DeviceCredential? = nil) -> EngineConfig {
            EngineConfig(storePath: work.appendingPathComponent("\(name).db").path, encryptionKey: key,
                         serverUrl: scripted, credential: credential, appVersion: appVersion)
        }
        func request(_ communeCode: String, _ description: String, notes: String = "") -> NewCitizenRequest {
            NewCitizenRequest(communeCode: communeCode, category: "road", description: description,
                              village: "Bản Phăng", reporterName: "Lò Văn Khánh", notes: notes)
        }

        // --- quarantine: records of another commune typed offline before enrollment ---
        let q = try await Engine.open(config: config("tablet-q"))
        let stray = try await q.createCitizenRequest(officer: "can-bo.lan", new: request("DB-OTHER", "Đường vào bản bị sạt lở"))
        let twice = try await q.createCitizenRequest(officer: "can-bo.lan", new: request("DB-OTHER", "Đường vào bản bị sạt lở"))
        _ = try await q.enroll(code: "commune:\(commune)", label: "Máy tính bảng Q")
        c.expect("enrollment records the commune", try await q.enrolledCommune() == commune)
        let atEnrollment = try await q.quarantined()
        c.expect("records of another commune are set aside at enrollment",
                 Set(atEnrollment.map { $0.recordId }) == [stray.id, twice.id]
                    && atEnrollment.allSatisfy { $0.code == "not_yours" && $0.direction == .outgoing && $0.attempts == 1 })
        await c.expectError("creating for another commune once enrolled", .invalidInput) {
            _ = try await q.createCitizenRequest(officer: "can-bo.lan", new: request("DB-OTHER", "Cầu treo hỏng"))
        }
        let fixMe = try await q.createCitizenRequest(officer: "can-bo.lan", new: request(commune, "Đèn đường hỏng", notes: "#refuse"))
        let fine = try await q.createCitizenRequest(officer: "can-bo.lan", new: request(commune, "Cống thoát nước tắc"))
        let first = try await q.syncNow()
        c.expect("the server refused one record and the sync went on",
                 first.refused == 1 && first.pushedDocs == 1 && first.quarantined == 3 && first.pendingDocs == 0)
        c.expect("its reason is listed",
                 try await q.quarantined().contains { $0.recordId == fixMe.id && $0.code == "invalid_field" && !$0.message.isEmpty })
        let quarantineStatus = try await q.syncStatus()
        c.expect("the status counts it", quarantineStatus.quarantined == 3 && quarantineStatus.pendingChanges == 0)
        _ = try await q.updateCitizenRequest(officer: "can-bo.lan", id: fixMe.id, update: CitizenRequestUpdate(notes: "Đã kiểm tra"))
        c.expect("an edit of a refused record is not pushed behind the app's back", try await q.syncNow().pushedDocs == 0)
        c.expect("retry puts it back in the outbox", try await q.retryQuarantined(id: fixMe.id))
        let retried = try await q.syncNow()
        c.expect("and it goes", retried.pushedDocs == 1 && retried.refused == 0)
        let copy = try await q.copyQuarantinedAsNew(officer: "can-bo.minh", id: stray.id)
        guard case .citizenRequest(let copied) = copy else {
            c.expect("copy as new returns a citizen request", false)
            return
        }
        c.expect("copy as new: this commune, the same content",
                 copied.communeCode == commune && copied.description == stray.description && copied.id != stray.id)
        await c.expectError("the original is gone", .notFound) { _ = try await q.getCitizenRequest(id: stray.id) }
        try await q.discardQuarantined(officer: "can-bo.minh", id: twice.id, reason: "nhập trùng")
        c.expect("nothing left in the quarantine", try await q.quarantined().isEmpty)
        let audit = try await q.auditLog()
        c.expect("the audit log says who did what and why",
                 audit.map { $0.action } == [.copiedAsNew, .discarded] && audit.allSatisfy { $0.officer == "can-bo.minh" }
                    && audit[1].reason == "nhập trùng" && audit[0].replacementId == copied.id)
        await c.expectError("discarding what is not quarantined", .notFound) {
            try await q.discardQuarantined(officer: "can-bo.minh", id: fine.id, reason: "x")
        }
        c.expect("the copy goes", try await q.syncNow().pushedDocs == 1)
        c.expect("history has the server's receive time", try await q.history(id: fine.id).first?.serverReceivedAt != nil)

        // --- an app too old for the server ---
        let u = try await Engine.open(config: config("tablet-u", appVersion: "1.0"))
        let credU = try await u.enroll(code: "upgrade", label: "Máy tính bảng U")
        await c.expectError("an old app syncs", .upgradeRequired) { _ = try await u.syncNow() }
        c.expect("upgrade required: the policy says stop", try await u.nextSyncAfter(metered: false) == .stop)
        let upgradeStatus = try await u.syncStatus()
        c.expect("upgrade required: the status says so",
                 upgradeStatus.upgradeRequired && upgradeStatus.lastErrorKind == .upgradeRequired)
        let same = try await Engine.open(config: config("tablet-u", appVersion: "1.0", credential: credU))
        c.expect("restarted, the same version still stops", try await same.nextSyncAfter(metered: false) == .stop)
        let upgraded = try await Engine.open(config: config("tablet-u", appVersion: "1.1", credential: credU))
        c.expect("an upgraded app schedules again", try await upgraded.nextSyncAfter(metered: false) != .stop)

        // --- a wipe order ---
        let w = try await Engine.open(config: config("tablet-w"))
        let seen = EventLog()
        let stream = try w.events()
        let watching = Task { for await event in stream { seen.append(event) } }
        _ = try await w.enroll(code: "wipe", label: "Máy tính bảng W")
        let kept = try await w.createCitizenRequest(officer: "can-bo.lan", new: request(commune, "Hồ sơ trên máy bị mất"))
        await c.expectError("a wiped device syncs", .wiped) { _ = try await w.syncNow() }
        let files = ["", "-wal", "-shm"].map { work.appendingPathComponent("tablet-w.db\($0)").path }
        c.expect("the store's files are gone", files.allSatisfy { !FileManager.default.fileExists(atPath: $0) })
        let device = w.deviceId()
        c.expect("the app was told", await waitFor(10) { seen.wipes.contains { $0.deviceId == device } })
        await c.expectError("nothing works after a wipe", .wiped) { _ = try await w.getCitizenRequest(id: kept.id) }
        c.expect("a wiped engine schedules nothing", try await w.nextSyncAfter(metered: false) == .stop)
        watching.cancel()
    }
}
