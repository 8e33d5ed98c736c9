// Dossier numbers through the Swift bindings, against the real `communesync serve` started by
// scripts/test.d/20-bindings.sh (run by StoryMain.swift after the end-to-end story; in Xcode by the
// XCTest below when the same environment is set): two tablets of one commune get blocks of numbers
// at their first sync, number applications offline, and find each other's applications by number
// (exact and by text search) after syncing. The same story runs in Kotlin
// (android/src/test/kotlin/org/communesync/DossierNumberStory.kt).
import CommuneSync
import Foundation

enum DossierNumberStory {
    /// Runs the story; returns the failed checks (empty when all passed).
    static func run() async -> [String] {
        let checks = Checks()
        do {
            try await story(checks)
        } catch {
            checks.expect("unexpected error: \(error)", false)
        }
        print(checks.failures.isEmpty
            ? "swift numbers story: all \(checks.count) checks passed"
            : "swift numbers story: \(checks.failures.count) of \(checks.count) checks FAILED")
        return checks.failures
    }

    static func story(_ c: Checks) async throws {
        let env = EndToEndStory.env
        let server = try env("COMMUNESYNC_SERVER_URL")
        let commune = try env("COMMUNESYNC_COMMUNE")
        let work = URL(fileURLWithPath: try env("COMMUNESYNC_WORK_DIR"))
        try FileManager.default.createDirectory(at: work, withIntermediateDirectories: true)
        let key = Data((0..<32).map { UInt8(($0 * 5 + 3) & 0xff) })
        func config(_ name: String) -> EngineConfig {
            EngineConfig(storePath: work.appendingPathComponent("\(name).db").path,
                         encryptionKey: key, serverUrl: server, credential: nil)
        }
        let a = try await Engine.open(config: config("numbers-a"))
        let b = try await Engine.open(config: config("numbers-b"))
        _ = try await a.enroll(code: try env("COMMUNESYNC_NUMBER_CODE_A"), label: "Máy tính bảng số A")
        _ = try await b.enroll(code: try env("COMMUNESYNC_NUMBER_CODE_B"), label: "Máy tính bảng số B")
        _ = try await a.syncNow()
        _ = try await b.syncNow()

        let state = try await a.dossierNumberState()
        c.expect("the first sync granted a block", state.blocks == 1 && state.remaining > 0)
        c.expect("the default format", state.format == "{agency}-{yymmdd}-{seq:6}")

        func intake(_ engine: Engine, _ name: String) async throws -> Application {
            try await engine.createApplication(officer: "can-bo.lan", new: NewApplication(
                communeCode: commune, procedureCode: "1.001193", applicant: Applicant(name: name)))
        }
        let huong = try await intake(a, "Lò Thị Hương")
        let pom = try await intake(b, "Lò Văn Pọm")
        func shaped(_ number: String?) -> Bool {
            guard let parts = number?.split(separator: "-"), parts.count == 3 else { return false }
            return parts[1].count == 6 && parts[2].count == 6 && parts[2].allSatisfy(\.isNumber)
        }
        let numberA = huong.dossierNumber ?? ""
        let numberB = pom.dossierNumber ?? ""
        c.expect("offline intake gives a number of the block: \(numberA)",
                 shaped(numberA) && !huong.dossierNumberFallback)
        c.expect("two tablets, two numbers", shaped(numberB) && numberA != numberB)
        c.expect("the state counts the number used",
                 try await a.dossierNumberState().remaining == state.remaining - 1)
        c.expect("found by number on its tablet", try await a.applicationByNumber(number: numberA)?.id == huong.id)
        c.expect("an unknown number finds nothing",
                 try await a.applicationByNumber(number: "KHONG-000000-000000") == nil)

        _ = try await a.syncNow()
        _ = try await b.syncNow()
        _ = try await a.syncNow()
        c.expect("B finds A's dossier by number", try await b.applicationByNumber(number: numberA)?.id == huong.id)
        c.expect("A finds B's dossier by number",
                 try await a.applicationByNumber(number: numberB)?.applicant.name == "Lò Văn Pọm")
        c.expect("the number is found by text search",
                 try await b.search(text: numberA, limit: 5).contains { $0.id == huong.id })
        c.expect("the number is on the record as read", try await b.getApplication(id: huong.id).dossierNumber == numberA)
    }
}

#if canImport(XCTest)
import XCTest

final class DossierNumberTests: XCTestCase {
    func testStory() async throws {
        try XCTSkipIf(ProcessInfo.processInfo.environment["COMMUNESYNC_NUMBER_CODE_A"] == nil,
                      "no test server configured")
        let failures = await DossierNumberStory.run()
        XCTAssertEqual(failures, [])
    }
}
#endif
