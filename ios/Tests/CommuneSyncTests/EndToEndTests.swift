// XCTest entry for `swift test` / Xcode: runs the end-to-end story when a test server is
// configured (COMMUNESYNC_SERVER_URL and the codes, as scripts/test.d/20-bindings.sh sets them);
// skipped otherwise. On Linux CI the story runs through StoryMain.swift instead (no XCTest there).
#if canImport(XCTest)
import XCTest

final class EndToEndTests: XCTestCase {
    func testStory() async throws {
        try XCTSkipIf(ProcessInfo.processInfo.environment["COMMUNESYNC_SERVER_URL"] == nil,
                      "no test server configured")
        let failures = await EndToEndStory.run()
        XCTAssertEqual(failures, [])
    }

    func testSdk() async throws {
        try XCTSkipIf(ProcessInfo.processInfo.environment["COMMUNESYNC_CODE_SDK"] == nil,
                      "no test server configured")
        let failures = await SdkStory.run()
        XCTAssertEqual(failures, [])
    }

    func testHttpsStory() async throws {
        try XCTSkipIf(ProcessInfo.processInfo.environment["COMMUNESYNC_SCRIPTED_HTTPS_URL"] == nil,
                      "no HTTPS test server configured")
        let failures = await HttpsStory.run()
        XCTAssertEqual(failures, [])
    }

    func testRegisterImportStory() async throws {
        try XCTSkipIf(ProcessInfo.processInfo.environment["COMMUNESYNC_IMPORT_CODE_A"] == nil,
                      "no test server configured")
        let failures = await RegisterImportStory.run()
        XCTAssertEqual(failures, [])
    }
}
#endif
