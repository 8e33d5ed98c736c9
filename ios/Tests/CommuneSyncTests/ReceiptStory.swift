// Receipts through the bindings in Swift, against the `communesync serve` of
// scripts/test.d/20-bindings.sh: two tablets enroll (registering their keys), one takes a dossier
// and issues its signed receipt (payload and PDF), both sync (the key list comes with it), the
// other verifies the receipt offline, and an altered payload is refused with its reason.
// The same story runs in Kotlin (android/src/test/kotlin/org/communesync/ReceiptStory.kt).
import CommuneSync
import Foundation

enum ReceiptStory {
    static func run() async -> [String] {
        let c = Checks()
        do {
            try await story(c)
        } catch {
            c.expect("unexpected error: \(error)", false)
        }
        print(c.failures.isEmpty
            ? "swift receipt story: all \(c.count) checks passed"
            : "swift receipt story: \(c.failures.count) of \(c.count) checks FAILED")
        return c.failures
    }

    static func story(_ c: Checks) async throws {
        struct MissingEnvironment: Error { let name: String }
        func env(_ name: String) throws -> String {
            guard let value = ProcessInfo.processInfo.environment[name] else {
                throw MissingEnvironment(name: name)
            }
            return value
        }
        let commune = try env("COMMUNESYNC_COMMUNE")
        let work = URL(fileURLWithPath: try env("COMMUNESYNC_WORK_DIR"))
        try FileManager.default.createDirectory(at: work, withIntermediateDirectories: true)
        let key = Data((0..<32).map { UInt8(($0 * 3 + 5) & 0xff) })
        func config(_ name: String) throws -> EngineConfig {
            EngineConfig(storePath: work.appendingPathComponent("\(name).db").path,
                         encryptionKey: key, serverUrl: try env("COMMUNESYNC_SERVER_URL"), credential: nil)
        }
        let a = try await Engine.open(config: config("receipt-a"))
        let b = try await Engine.open(config: config("receipt-b"))
        _ = try await a.enroll(code: try env("COMMUNESYNC_RECEIPT_CODE_A"), label: "Máy A")
        _ = try await b.enroll(code: try env("COMMUNESYNC_RECEIPT_CODE_B"), label: "Máy B")
        _ = try await a.syncNow()
        let app = try await a.createApplication(officer: "can-bo.lan", new: NewApplication(
            communeCode: commune, procedureCode: "1.001193",
            applicant: Applicant(name: "Nguyễn Thị Hương", village: "Bản Phăng"),
            documents: [ReceivedDocument(name: "Tờ khai đăng ký khai sinh", copies: 1, original: true)]))
        let receipt = try await a.issueReceipt(recordId: app.id)
        c.expect("the QR payload fits (\(receipt.payload.count) chars)",
                 receipt.payload.utf8.count <= Int(receiptPayloadMaxChars()))
        c.expect("the receipt names the applicant", receipt.applicantName == "Nguyễn Thị Hương")
        let again = try await a.issueReceipt(recordId: app.id)
        c.expect("a reprint is the same receipt", again == receipt)
        let pdf = try await a.receiptPdf(recordId: app.id)
        c.expect("the PDF is a PDF (\(pdf.count) bytes)", pdf.count > 1000 && pdf.prefix(5) == Data("%PDF-".utf8))
        _ = try await a.syncNow()
        _ = try await b.syncNow()
        let verdict = try await b.verifyReceipt(payload: receipt.payload)
        c.expect("B verifies A's receipt offline: \(verdict.code ?? "valid")",
                 verdict.valid && verdict.receipt?.recordId == app.id)
        var chars = Array(receipt.payload)
        chars[40] = chars[40] == "0" ? "1" : "0"
        let refused = try await b.verifyReceipt(payload: String(chars))
        c.expect("an altered receipt is refused: \(refused.code ?? "-")",
                 !refused.valid && (refused.code == "bad_signature" || refused.code == "malformed"))
        let history = try await a.history(id: app.id)
        c.expect("A's history: signed by this device", history.allSatisfy { $0.signedByThisDevice })
    }
}
