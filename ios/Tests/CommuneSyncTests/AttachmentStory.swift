// Attachments through the bindings in Swift, against the `communesync serve` of
// scripts/test.d/20-bindings.sh: tablet A attaches a scan (bytes), a page (file) and a photo
// (prepared for 2G) to a dossier, syncs (records first, then the contents, with progress
// events); tablet B syncs, sees the references, opens the scan (downloaded on demand) with the
// same bytes; a removal reaches B. The same story runs in Kotlin
// (android/src/test/kotlin/org/communesync/AttachmentStory.kt).
import CommuneSync
import Foundation

/// Collects attachment progress delivered on the engine's thread.
final class ProgressLog: AttachmentProgressListener, @unchecked Sendable {
    private let lock = NSLock()
    private var events: [AttachmentProgress] = []

    func onAttachmentProgress(progress: AttachmentProgress) {
        lock.lock()
        events.append(progress)
        lock.unlock()
    }

    var all: [AttachmentProgress] {
        lock.lock()
        defer { lock.unlock() }
        return events
    }
}

enum AttachmentStory {
    /// A 1x1 PNG: a valid image a camera could have written, small enough to inline.
    static let png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="

    static func run() async -> [String] {
        let c = Checks()
        do {
            try await story(c)
        } catch {
            c.expect("unexpected error: \(error)", false)
        }
        print(c.failures.isEmpty
            ? "swift attachment story: all \(c.count) checks passed"
            : "swift attachment story: \(c.failures.count) of \(c.count) checks FAILED")
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
        let key = Data((0..<32).map { UInt8(($0 * 7 + 1) & 0xff) })
        func config(_ name: String) throws -> EngineConfig {
            EngineConfig(storePath: work.appendingPathComponent("\(name).db").path,
                         encryptionKey: key, serverUrl: try env("COMMUNESYNC_SERVER_URL"), credential: nil)
        }
        let a = try await Engine.open(config: config("attach-a"))
        let b = try await Engine.open(config: config("attach-b"))
        _ = try await a.enroll(code: try env("COMMUNESYNC_ATTACH_CODE_A"), label: "Máy A")
        _ = try await b.enroll(code: try env("COMMUNESYNC_ATTACH_CODE_B"), label: "Máy B")
        _ = try await a.syncNow()
        let app = try await a.createApplication(officer: "can-bo.lan", new: NewApplication(
            communeCode: commune, procedureCode: "1.001193",
            applicant: Applicant(name: "Lò Văn Minh", village: "Bản Phăng"),
            documents: [ReceivedDocument(name: "CCCD", copies: 1, original: false)]))
        var settings = a.attachmentSettings()
        settings.metered = false
        try a.setAttachmentSettings(settings: settings)
        let log = ProgressLog()
        let watch = try a.watchAttachmentProgress(listener: log)

        let scan = Data((0..<200_000).map { UInt8(($0 * 31) % 241) })
        let card = try await a.attachBytes(
            officer: "can-bo.lan", recordId: app.id,
            new: NewAttachment(mime: "application/pdf", category: .identityCard,
                               caption: "CCCD mặt trước", document: "CCCD", page: 1),
            bytes: scan)
        c.expect("attached: its size, on this tablet, not yet on the server",
                 card.size == 200_000 && card.onDevice && !card.onServer && card.document == "CCCD")
        let pngFile = work.appendingPathComponent("page.png")
        try Data(base64Encoded: png)!.write(to: pngFile)
        let page = try await a.attachFile(
            officer: "can-bo.lan", recordId: app.id,
            new: NewAttachment(mime: "image/png", category: .document, caption: "Trang 2", page: 2),
            path: pngFile.path)
        let photos = try await a.attachPhoto(
            officer: "can-bo.lan", recordId: app.id,
            new: NewAttachment(mime: "image/jpeg", category: .photo, caption: "Ảnh"),
            path: pngFile.path, options: PhotoOptions(grayscale: true))
        c.expect("a photo is prepared as one JPEG", photos.count == 1 && photos[0].mime == "image/jpeg")
        let listed = try await a.attachments(recordId: app.id)
        c.expect("listed in the order attached", listed.map(\.id) == [card.id, page.id, photos[0].id])

        let report = try await a.syncNow()
        c.expect("the sync sent the record, then the three contents (\(report.attachmentsCompleted))",
                 report.pushedDocs >= 1 && report.attachmentsCompleted == 3 && report.attachmentError == nil)
        let sent = try await a.attachments(recordId: app.id)
        c.expect("the contents are on the server", sent.allSatisfy(\.onServer))
        for _ in 0..<300 where !log.all.contains(where: { $0.sha256 == card.sha256 && $0.doneBytes == $0.totalBytes }) {
            try await Task.sleep(nanoseconds: 100_000_000)
        }
        let events = log.all
        c.expect("progress reached the card's size (\(events.count) events, last \(String(describing: events.last)))", events.contains {
            $0.sha256 == card.sha256 && $0.upload && $0.doneBytes == 200_000 && $0.totalBytes == 200_000
        })
        watch.stop()

        _ = try await b.syncNow()
        let onB = try await b.attachments(recordId: app.id)
        c.expect("B has the three references, no content yet", onB.count == 3 && onB.allSatisfy { !$0.onDevice })
        let out = work.appendingPathComponent("card-on-b.pdf")
        let written = try await b.openAttachment(sha256: card.sha256, path: out.path)
        let opened = try Data(contentsOf: out)
        c.expect("B opens the card (downloaded on demand) with identical bytes",
                 written == 200_000 && opened == scan)
        let cardOnB = try await b.attachments(recordId: app.id).first { $0.id == card.id }
        c.expect("the card is now on B", cardOnB?.onDevice == true)
        _ = try await b.downloadAttachment(sha256: photos[0].sha256)
        let photoOut = work.appendingPathComponent("photo-on-b.jpg")
        _ = try await b.openAttachment(sha256: photos[0].sha256, path: photoOut.path)
        let photoBytes = try Data(contentsOf: photoOut)
        c.expect("B's photo is a JPEG of the prepared size",
                 UInt64(photoBytes.count) == photos[0].size && photoBytes.prefix(2) == Data([0xFF, 0xD8]))

        try await a.removeAttachment(officer: "can-bo.lan", recordId: app.id, attachmentId: page.id)
        _ = try await a.syncNow()
        _ = try await b.syncNow()
        let after = try await b.attachments(recordId: app.id)
        c.expect("the removal reached B", after.map(\.id) == [card.id, photos[0].id])
        var odd = a.attachmentSettings()
        odd.chunkSize = 1000
        do {
            try a.setAttachmentSettings(settings: odd)
            c.expect("a chunk size of 1000 is refused", false)
        } catch CommuneSyncError.InvalidInput {
            c.expect("a chunk size of 1000 is refused", true)
        }
    }
}
