import CommuneSync
import Foundation

// Open the engine: the key (see "Keys" below) and the stored credential come from the Keychain.
// The engine copies the key once and overwrites its copies. The province's CA certificate (PEM)
// is the only one trusted for its server (during a rotation, old and new).
func openEngine(
    storePath: String, key: Data, credential: DeviceCredential?, provinceCaPem: String
) async throws -> Engine {
    try await Engine.open(config: EngineConfig(
        storePath: storePath,
        encryptionKey: key,
        serverUrl: "https://sync.dienbien.example.vn",
        credential: credential,
        trustedCaPem: [provinceCaPem]))
}

// Offline intake, a search without diacritics, then a sync when a link exists. Every store call
// is async and runs on the engine's own threads: call it from any task, the main actor included.
func intakeAndSync(engine: Engine, commune: String) async throws -> SyncReport {
    let app = try await engine.createApplication(
        officer: "can-bo.lan",
        new: NewApplication(
            communeCode: commune,
            procedureCode: "1.001193",
            applicant: Applicant(name: "Vi Thị Mai", village: "Bản Phăng")))
    let hits = try await engine.search(text: "vi thi mai", limit: 10)
    precondition(hits.contains { $0.id == app.id })
    return try await engine.syncNow()
}

// Dates: instants are `Date` (receivedAt, lastSuccess...), due dates are `DateComponents`
// (Gregorian year, month, day: civil dates in Vietnam).
func dueThisWeek(engine: Engine) async throws -> [ApplicationSummary] {
    let today = DateComponents.civilInVietnam(Date())
    let inAWeek = DateComponents.civilInVietnam(Date().addingTimeInterval(7 * 86_400))
    let query = ApplicationQuery(dueFrom: today, dueUntil: inAWeek, sort: .dueDate)
    return try await engine.queryApplications(query: query).items
}

// The sync status for a status bar, as an AsyncStream (ending the loop stops the watch).
func showStatus(engine: Engine, show: (String) -> Void) async throws {
    for await status in try engine.syncStatusUpdates() {
        if status.syncing {
            show("đang đồng bộ…")
        } else {
            show("last sync \(status.lastSuccess.map { "\($0)" } ?? "never"), \(status.pendingChanges) to send")
        }
    }
}

// The errors an app acts on.
func syncMessage(engine: Engine) async -> String {
    do {
        let report = try await engine.syncNow()
        return "sent \(report.pushedDocs), received \(report.pulledDocs)"
    } catch CommuneSyncError.Offline {
        return "offline: will retry"
    } catch CommuneSyncError.UntrustedServer(let message) {
        return "the server's certificate is not trusted: \(message)"
    } catch CommuneSyncError.Unauthorized {
        return "enroll this tablet again"
    } catch CommuneSyncError.Revoked {
        return "this tablet was revoked"
    } catch CommuneSyncError.UpgradeRequired {
        return "update the app to sync again"
    } catch CommuneSyncError.Wiped {
        return "this tablet was wiped by the province"
    } catch {
        return "\(error)"
    }
}

// Progress and changes as an AsyncStream; ending the loop stops the observation.
func followSync(engine: Engine) async throws {
    for await event in try engine.events() {
        switch event {
        case .progress(let progress): print("sync: \(progress.phase), \(progress.pendingDocs) to send")
        case .changed(let change): print("\(change.changedCount) records changed")
        case .wiped: print("store wiped: delete the key and the credential")
        }
    }
}

// Records the server refused: show why, and let the officer fix, copy or discard them.
func settleQuarantine(engine: Engine, officer: String) async throws {
    for record in try await engine.quarantined() {
        switch record.code {
        case "not_yours": _ = try await engine.copyQuarantinedAsNew(officer: officer, id: record.recordId)
        case "too_large", "invalid_field": _ = try await engine.retryQuarantined(id: record.recordId) // after an edit
        default: try await engine.discardQuarantined(officer: officer, id: record.recordId, reason: "refused: \(record.message)")
        }
    }
}

// Attachments: scans and photos of the dossier's papers. A camera photo is prepared for 2G
// (upright, 1600 px, gray, about 150 KB); syncNow sends the records first, then the contents
// (receipts and ID cards first) within the settings; another tablet opens a content by its hash
// (downloaded on demand, the same bytes). Progress comes as an AsyncStream, one event per chunk.
func attachIdCard(engine: Engine, officer: String, recordId: String, photoPath: String) async throws -> Attachment? {
    try await engine.attachPhoto(
        officer: officer, recordId: recordId,
        new: NewAttachment(mime: "image/jpeg", category: .identityCard,
                           caption: "CCCD mặt trước", document: "CCCD", page: 1),
        path: photoPath, options: PhotoOptions(grayscale: true)
    ).first
}

func onMobileData(engine: Engine, metered: Bool) throws {
    var settings = engine.attachmentSettings()
    settings.metered = metered
    settings.meteredBudgetBytes = 2_000_000
    try engine.setAttachmentSettings(settings: settings)
}

func openFirstAttachment(engine: Engine, recordId: String, cacheDir: URL) async throws -> URL? {
    guard let attachment = try await engine.attachments(recordId: recordId).first else { return nil }
    let file = cacheDir.appendingPathComponent(attachment.sha256)
    _ = try await engine.openAttachment(sha256: attachment.sha256, path: file.path)
    return file
}

func followAttachments(engine: Engine) async throws {
    for await p in try engine.attachmentProgressUpdates() {
        print("\(p.upload ? "sent" : "received") \(p.doneBytes) of \(p.totalBytes) bytes")
    }
}

// The commune's existing register (CSV saved from its spreadsheet), imported once with each
// dossier's state; the next sync sends them. A re-run imports nothing twice (the external id is
// the key); a bad line is listed with its number, the rest imported.
func importRegister(engine: Engine, officer: String, csv: URL) async throws -> String {
    let summary = try await engine.importRegister(officer: officer, communeCode: nil, csv: try Data(contentsOf: csv))
    let errors = summary.errors.map { "line \($0.line): \($0.reason)" }
    return (["\(summary.imported) imported, \(summary.alreadyPresent) already present"] + errors)
        .joined(separator: "\n")
}

// Where an imported dossier came from: its number in the commune's register (from its marker).
func registerReference(engine: Engine, commune: String, externalId: String) async throws -> String? {
    guard let id = try await engine.importedApplicationId(communeCode: commune, externalId: externalId),
          let marker = try await engine.importMarker(recordId: id) else { return nil }
    return marker.originalReference
}

#if canImport(os)
import os

// The engine's logs in the unified log (Console.app, `log stream`). Install once per process:
// `setLogger(logger: OSLogEngineLogger(), minLevel: .info)`.
final class OSLogEngineLogger: EngineLogger {
    private let logger = os.Logger(subsystem: "org.communesync", category: "engine")

    func log(record: LogRecord) {
        let text = "\(record.target): \(record.message)"
        switch record.level {
        case .error: logger.error("\(text, privacy: .public)")
        case .warn: logger.warning("\(text, privacy: .public)")
        case .info: logger.info("\(text, privacy: .public)")
        case .debug, .trace: logger.debug("\(text, privacy: .public)")
        }
    }
}
#endif

#if canImport(Security)
import Security

// Keys: a random 32-byte store key kept in the Keychain, on this device only, readable after the
// first unlock (background syncs run while the screen is locked). Never synced, never backed up.
enum StoreKeychain {
    static let service = "org.communesync.store-key"

    static func query(_ account: String) -> [String: Any] {
        [kSecClass as String: kSecClassGenericPassword,
         kSecAttrService as String: service,
         kSecAttrAccount as String: account]
    }

    /// The key saved as `account` ("current" or "next"), if any.
    static func existingKey(account: String) -> Data? {
        var item: CFTypeRef?
        var lookup = query(account)
        lookup[kSecReturnData as String] = true
        guard SecItemCopyMatching(lookup as CFDictionary, &item) == errSecSuccess else { return nil }
        return item as? Data
    }

    /// The keys to try at open, in order: "next" if a rotation was cut short (the store opens
    /// with exactly one of the two), then "current", created at the first start.
    static func keysToTry() throws -> [Data] {
        var keys: [Data] = []
        if let next = existingKey(account: "next") { keys.append(next) }
        if let current = existingKey(account: "current") {
            keys.append(current)
        } else {
            keys.append(try save(newKey(), account: "current"))
        }
        return keys
    }

    static func newKey() throws -> Data {
        var bytes = [UInt8](repeating: 0, count: 32)
        guard SecRandomCopyBytes(kSecRandomDefault, bytes.count, &bytes) == errSecSuccess else {
            throw CommuneSyncError.Storage(message: "no random bytes for the store key")
        }
        defer { bytes.withUnsafeMutableBufferPointer { $0.update(repeating: 0) } }
        return Data(bytes)
    }

    @discardableResult
    static func save(_ key: Data, account: String) throws -> Data {
        SecItemDelete(query(account) as CFDictionary)
        var add = query(account)
        add[kSecValueData as String] = key
        add[kSecAttrAccessible as String] = kSecAttrAccessibleAfterFirstUnlockThisDeviceOnly
        guard SecItemAdd(add as CFDictionary, nil) == errSecSuccess else {
            throw CommuneSyncError.Storage(message: "the Keychain refused the store key")
        }
        return key
    }

    /// Rotation: the new key is saved as "next" before the rekey, and becomes "current" after it;
    /// a crash in between leaves both, and the app opens with "next" first, then "current".
    static func rotate(engine: Engine) async throws {
        let next = try save(newKey(), account: "next")
        try await engine.rekey(newKey: next)
        try save(next, account: "current")
        SecItemDelete(query("next") as CFDictionary)
    }
}
#endif
