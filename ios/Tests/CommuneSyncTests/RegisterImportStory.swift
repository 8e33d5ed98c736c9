// The register import (issue 15) through the Swift bindings, against the real `communesync serve`
// started by scripts/test.d/20-bindings.sh (run by StoryMain.swift), in a commune of its own
// (COMMUNESYNC_IMPORT_COMMUNE) so that its counts are exact. A tablet imports a commune's register
// (CSV) with dossiers returned (with its return time), in progress and received: states, received
// times, due dates, original references and import markers read back; two malformed lines are
// reported with their line and import nothing; a second import changes nothing; the sync sends one
// change per dossier, and a second tablet pulls the same dossiers (and its own import of the file
// finds them present). A file that is not a register is refused whole. The same story runs in
// Kotlin (android/src/test/kotlin/org/communesync/RegisterImportStory.kt).
import CommuneSync
import Foundation

enum RegisterImportStory {
    // Line 1 is the header. Line 4 quotes a name holding a comma; lines 5 and 6 are malformed (a
    // 31 February, a status the format does not know).
    static let register = """
        external_id,procedure_code,applicant_name,status,received_at,due_date,original_reference,returned_at,applicant_village
        SK-2025-0101,1.001193,Lò Văn Pọm,returned,2025-03-14 09:30,2025-03-17,12/HT-2025,2025-03-17 15:00,Bản Phăng
        SK-2025-0102,1.000894,Lò Thị Xuân,in_progress,03/11/2025 08:00,,13/HT-2025,,Bản Noong Bua
        SK-2025-0103,1.001193,"Quàng Văn Ún, con ông Sáng",received,2025-11-20,2025-11-21,,,Bản Phăng
        SK-2025-0104,1.001193,Cầm Thị Én,received,31/02/2025,,,,
        SK-2025-0105,1.001193,Vì Văn Sơn,đang xử lý,2025-11-21,,,,

        """
    static let externalIds = ["SK-2025-0101", "SK-2025-0102", "SK-2025-0103"]
    static let officer = "can-bo.lan"

    /// Runs the story; returns the failed checks (empty when all passed).
    static func run() async -> [String] {
        let checks = Checks()
        do {
            try await story(checks)
        } catch {
            checks.expect("unexpected error: \(error)", false)
        }
        print(checks.failures.isEmpty
            ? "swift register import story: all \(checks.count) checks passed"
            : "swift register import story: \(checks.failures.count) of \(checks.count) checks FAILED")
        return checks.failures
    }

    static func story(_ c: Checks) async throws {
        let env = EndToEndStory.env
        let commune = try env("COMMUNESYNC_IMPORT_COMMUNE")
        let work = URL(fileURLWithPath: try env("COMMUNESYNC_WORK_DIR"))
        try FileManager.default.createDirectory(at: work, withIntermediateDirectories: true)
        let serverUrl = try env("COMMUNESYNC_SERVER_URL")
        func open(_ name: String) async throws -> Engine {
            try await Engine.open(config: EngineConfig(
                storePath: work.appendingPathComponent("\(name).db").path,
                encryptionKey: Data((0..<32).map { UInt8(($0 * 11 + 3) & 0xff) }),
                serverUrl: serverUrl, credential: nil))
        }
        func total(_ engine: Engine) async throws -> UInt64 {
            try await engine.queryApplications(query: ApplicationQuery()).total
        }
        func importedIds(_ engine: Engine) async throws -> [String?] {
            var ids: [String?] = []
            for externalId in externalIds {
                ids.append(try await engine.importedApplicationId(communeCode: commune, externalId: externalId))
            }
            return ids
        }
        var vietnam = Calendar(identifier: .gregorian)
        vietnam.timeZone = TimeZone(secondsFromGMT: 7 * 3600)!
        func at(_ y: Int, _ m: Int, _ d: Int, _ h: Int = 0, _ min: Int = 0) -> Date {
            vietnam.date(from: DateComponents(year: y, month: m, day: d, hour: h, minute: min))!
        }
        func ymd(_ d: DateComponents) -> [Int?] { [d.year, d.month, d.day] }
        let csv = Data(register.utf8)

        let a = try await open("register-import-a")
        _ = try await a.enroll(code: try env("COMMUNESYNC_IMPORT_CODE_A"), label: "Máy tính bảng nhập sổ A")
        _ = try await a.syncNow() // the catalogue: the in-progress entry's due date comes from its procedure
        c.expect("the commune starts empty", try await total(a) == 0)

        // The import: three entries, two malformed lines reported with their line.
        let before = Date()
        let first = try await a.importRegister(officer: officer, communeCode: nil, csv: csv)
        let after = Date()
        c.expect("three entries imported (\(first.imported)), none present before",
                 first.imported == 3 && first.alreadyPresent == 0)
        c.expect("the malformed lines are reported by line: \(first.errors)", first.errors.map { $0.line } == [5, 6])
        if first.errors.count == 2 {
            let (badDate, badStatus) = (first.errors[0], first.errors[1])
            c.expect("line 5: the date that does not exist", badDate.externalId == "SK-2025-0104"
                && badDate.reason.contains("received_at") && badDate.reason.contains("31/02/2025"))
            c.expect("line 6: the unknown status", badStatus.externalId == "SK-2025-0105"
                && badStatus.reason.contains("status") && badStatus.reason.contains("đang xử lý"))
        }
        let dateLine = try await a.importedApplicationId(communeCode: commune, externalId: "SK-2025-0104")
        let statusLine = try await a.importedApplicationId(communeCode: commune, externalId: "SK-2025-0105")
        let notImported = dateLine == nil && statusLine == nil
        c.expect("nothing of the malformed lines is imported", try await total(a) == 3 && notImported)

        let ids = try await importedIds(a)
        c.expect("each entry has its dossier", ids.allSatisfy { $0 != nil } && Set(ids).count == 3)
        guard let returnedId = ids[0], let inProgressId = ids[1], let receivedId = ids[2] else { return }

        let returned = try await a.getApplication(id: returnedId)
        c.expect("returned, in its state", returned.status == .returned && returned.procedureCode == "1.001193"
            && returned.applicant.name == "Lò Văn Pọm" && returned.applicant.village == "Bản Phăng"
            && returned.communeCode == commune)
        c.expect("received at 09:30 Vietnam time (\(returned.receivedAt))", returned.receivedAt == at(2025, 3, 14, 9, 30))
        c.expect("the register's due date (\(returned.dueDate))", ymd(returned.dueDate) == [2025, 3, 17])
        let returnedMarker = try await a.importMarker(recordId: returnedId)
        c.expect("marked as imported, with its reference and return time: \(String(describing: returnedMarker))",
                 returnedMarker?.externalId == "SK-2025-0101" && returnedMarker?.originalReference == "12/HT-2025"
                     && returnedMarker?.returnedAt == at(2025, 3, 17, 15))
        c.expect("imported now, not at the register's times", returnedMarker.map {
            $0.importedAt >= before.addingTimeInterval(-1) && $0.importedAt <= after.addingTimeInterval(1)
        } ?? false)
        let history = try await a.history(id: returnedId)
        c.expect("its history is one import, not the transitions of 2025: \(history.map { $0.fields })",
                 history.count == 1 && history[0].fields == ["imported"] && history[0].officer == officer)

        let inProgress = try await a.getApplication(id: inProgressId)
        c.expect("in progress, received 03/11/2025 08:00",
                 inProgress.status == .inProgress && inProgress.receivedAt == at(2025, 11, 3, 8))
        c.expect("no due date in the register: 3 working days from Monday 3 November (\(inProgress.dueDate))",
                 ymd(inProgress.dueDate) == [2025, 11, 6])
        let inProgressMarker = try await a.importMarker(recordId: inProgressId)
        c.expect("its reference, no return time",
                 inProgressMarker != nil && inProgressMarker?.originalReference == "13/HT-2025"
                     && inProgressMarker?.returnedAt == nil)

        let received = try await a.getApplication(id: receivedId)
        c.expect("received at midnight, the quoted name whole", received.status == .received
            && received.receivedAt == at(2025, 11, 20) && received.applicant.name == "Quàng Văn Ún, con ông Sáng"
            && ymd(received.dueDate) == [2025, 11, 21])
        c.expect("no reference: empty", try await a.importMarker(recordId: receivedId)?.originalReference == "")

        // A dossier taken on the tablet carries no marker.
        let taken = try await a.createApplication(officer: officer, new: NewApplication(
            communeCode: commune, procedureCode: "1.001193", applicant: Applicant(name: "Lường Thị Hoa")))
        c.expect("a dossier taken today has no import marker", try await a.importMarker(recordId: taken.id) == nil)

        // The same file again: nothing written, and the summary says so.
        let second = try await a.importRegister(officer: officer, communeCode: nil, csv: csv)
        c.expect("a second import imports nothing: all three present", second.imported == 0
            && second.alreadyPresent == 3 && second.errors.map { $0.line } == [5, 6])
        let sameIds = try await importedIds(a) == ids
        let historyAfter = try await a.history(id: returnedId)
        c.expect("the same dossiers, no duplicate", try await total(a) == 4 && sameIds && historyAfter.count == 1)

        // A file that is not a register: refused whole.
        let noReceipt = "external_id,procedure_code,applicant_name,status\nSK-9,1.001193,A,received\n"
        do {
            _ = try await a.importRegister(officer: officer, communeCode: nil, csv: Data(noReceipt.utf8))
            c.expect("a register without received_at is refused", false)
        } catch CommuneSyncError.InvalidInput(let message) {
            c.expect("a register without received_at is refused: \(message)", message.contains("received_at"))
        }
        let nineAbsent = try await a.importedApplicationId(communeCode: commune, externalId: "SK-9") == nil
        c.expect("and imports nothing", try await total(a) == 4 && nineAbsent)

        // The sync: one document per dossier, then nothing more after a re-import.
        let sent = try await a.syncNow()
        c.expect("the sync sends the four dossiers, one change each (\(sent.pushedDocs) docs, \(sent.pushedChanges) changes, \(sent.refused) refused)",
                 sent.pushedDocs == 4 && sent.pushedChanges == 4 && sent.refused == 0 && sent.quarantined == 0)
        c.expect("a re-import after the sync imports nothing",
                 try await a.importRegister(officer: officer, communeCode: nil, csv: csv).imported == 0)
        c.expect("and the next sync sends nothing", try await a.syncNow().pushedDocs == 0)

        // A second tablet of the commune pulls them in their state.
        let b = try await open("register-import-b")
        _ = try await b.enroll(code: try env("COMMUNESYNC_IMPORT_CODE_B"), label: "Máy tính bảng nhập sổ B")
        let pulled = try await b.syncNow()
        c.expect("the second tablet pulls the four dossiers (\(pulled.pulledDocs))", try await total(b) == 4)
        c.expect("under the same ids", try await importedIds(b) == ids)
        let returnedOnB = try await b.getApplication(id: returnedId)
        c.expect("returned, with the same times and due date", returnedOnB.status == .returned
            && returnedOnB.receivedAt == returned.receivedAt && ymd(returnedOnB.dueDate) == ymd(returned.dueDate))
        c.expect("the same marker", try await b.importMarker(recordId: returnedId) == returnedMarker)
        let inProgressOnB = try await b.getApplication(id: inProgressId)
        let receivedOnB = try await b.getApplication(id: receivedId)
        c.expect("the in-progress and received dossiers in their state", inProgressOnB.status == .inProgress
            && ymd(inProgressOnB.dueDate) == [2025, 11, 6] && receivedOnB.status == .received)
        c.expect("the in-progress marker too", try await b.importMarker(recordId: inProgressId) == inProgressMarker)
        let historyOnB = try await b.history(id: returnedId)
        c.expect("its history on the second tablet is the one import", historyOnB.count == 1
            && historyOnB[0].fields == ["imported"] && historyOnB[0].serverReceivedAt != nil)
        c.expect("the taken dossier has no marker there either", try await b.importMarker(recordId: taken.id) == nil)
        let onB = try await b.importRegister(officer: officer, communeCode: nil, csv: csv)
        c.expect("the file imported on the second tablet finds them present", onB.imported == 0 && onB.alreadyPresent == 3)
        let totalOnB = try await total(b)
        c.expect("and it sends nothing", try await b.syncNow().pushedDocs == 0 && totalOnB == 4)
    }
}
