// The procedure catalogue and dossier forms through the Swift bindings, against the real
// `communesync serve` started by scripts/test.d/20-bindings.sh (run by StoryMain.swift), which
// published catalogue version 1 (exported to COMMUNESYNC_CATALOGUE_FILE) and then version 2 (a new
// procedure, a new version of the death registration form). A tablet installs the version 1 file
// before its first sync, searches "khai sinh" without diacritics, takes a dossier with form values
// (a form breaking its schema refused), syncs and receives the delta; its dossier keeps the version
// it pinned. The same story runs in Kotlin (android/src/test/kotlin/org/communesync/CatalogueStory.kt).
import CommuneSync
import Foundation

enum CatalogueStory {
    /// Runs the story; returns the failed checks (empty when all passed).
    static func run() async -> [String] {
        let checks = Checks()
        do {
            try await story(checks)
        } catch {
            checks.expect("unexpected error: \(error)", false)
        }
        print(checks.failures.isEmpty
            ? "swift catalogue story: all \(checks.count) checks passed"
            : "swift catalogue story: \(checks.failures.count) of \(checks.count) checks FAILED")
        return checks.failures
    }

    static func story(_ c: Checks) async throws {
        let env = EndToEndStory.env
        let commune = try env("COMMUNESYNC_COMMUNE")
        let work = URL(fileURLWithPath: try env("COMMUNESYNC_WORK_DIR"))
        try FileManager.default.createDirectory(at: work, withIntermediateDirectories: true)
        let engine = try await Engine.open(config: EngineConfig(
            storePath: work.appendingPathComponent("catalogue.db").path,
            encryptionKey: Data((0..<32).map { UInt8(($0 * 7 + 1) & 0xff) }),
            serverUrl: try env("COMMUNESYNC_SERVER_URL"), credential: nil))

        // Before the first sync: the exported file of version 1.
        let file = try String(contentsOfFile: try env("COMMUNESYNC_CATALOGUE_FILE"), encoding: .utf8)
        let installed = try await engine.installCatalogueFile(json: file)
        c.expect("the file installs its procedures (\(installed))", installed == 3)
        c.expect("the file's version is held", try await engine.catalogueVersion() == 1)
        let found = try await engine.searchProcedures(query: "khai sinh", limit: 10)
        c.expect("\"khai sinh\" finds \"Đăng ký khai sinh\"", found.first?.name == "Đăng ký khai sinh")

        // A dossier with its form, offline.
        let death = try await engine.procedureDetails(code: "1.001022")
        c.expect("the form of version 1", death.version == 1 && death.form.count == 2)
        var new = try await engine.prefilledApplication(communeCode: commune, procedureCode: "1.001022")
        new.applicant = Applicant(name: "Lò Văn Pọm")
        let form = [
            FormEntry(name: "deceased_name", value: .text(value: "Lò Văn Sáng")),
            FormEntry(name: "death_date", value: .date(value: "2026-11-30")),
        ]
        do {
            _ = try await engine.createDossier(officer: "can-bo.lan", new: new, form: [form[0]])
            c.expect("a form without its required date is refused", false)
        } catch CommuneSyncError.InvalidInput(let message) {
            c.expect("a form without its required date is refused: \(message)", message.contains("death_date"))
        }
        let dossier = try await engine.createDossier(officer: "can-bo.lan", new: new, form: form)
        c.expect("the dossier pins version 1", try await engine.dossierForm(id: dossier.id).procedureVersion == 1)

        // The sync brings the delta to version 2.
        _ = try await engine.enroll(code: try env("COMMUNESYNC_CATALOGUE_CODE"), label: "Máy tính bảng danh mục")
        let report = try await engine.syncNow()
        c.expect("the dossier is accepted (\(report.refused) refused)", report.refused == 0)
        c.expect("version 2 is held", try await engine.catalogueVersion() == 2)
        let renewed = try await engine.searchProcedures(query: "dang ky lai khai sinh", limit: 10)
        c.expect("the new procedure is found", renewed.contains { $0.code == "1.000656" })
        c.expect("the new version of the form", try await engine.procedureDetails(code: "1.001022").version == 2)
        let kept = try await engine.dossierForm(id: dossier.id)
        c.expect("the dossier keeps version 1 and its values", kept.procedureVersion == 1 && kept.values.count == 2)
    }
}
