import CommuneSync
import Foundation

// Open the engine: the key and the stored credential come from the Keychain.
func openEngine(storePath: String, key: Data, credential: DeviceCredential?) throws -> Engine {
    try Engine.open(config: EngineConfig(
        storePath: storePath,
        encryptionKey: key,
        serverUrl: "https://sync.dienbien.example.vn",
        credential: credential))
}

// Offline intake, a search without diacritics, then a sync when a link exists.
func intakeAndSync(engine: Engine, commune: String) async throws -> SyncReport {
    let app = try engine.createApplication(
        officer: "can-bo.lan",
        new: NewApplication(
            communeCode: commune,
            procedureCode: "1.001193",
            applicant: Applicant(name: "Vi Thị Mai", village: "Bản Phăng")))
    let hits = try engine.search(text: "vi thi mai", limit: 10)
    precondition(hits.contains { $0.id == app.id })
    return try await engine.syncNow()
}

// The errors an app acts on.
func syncMessage(engine: Engine) async -> String {
    do {
        let report = try await engine.syncNow()
        return "sent \(report.pushedDocs), received \(report.pulledDocs)"
    } catch CommuneSyncError.Offline {
        return "offline: will retry"
    } catch CommuneSyncError.Unauthorized {
        return "enroll this tablet again"
    } catch CommuneSyncError.Revoked {
        return "this tablet was revoked"
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
        }
    }
}
