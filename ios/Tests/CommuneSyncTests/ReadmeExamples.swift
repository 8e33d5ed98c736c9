import CommuneSync
import Foundation

// Open the engine: the key and the stored credential come from the Keychain; the province's CA
// certificate (PEM) is the only one trusted for its server (during a rotation, old and new).
func openEngine(storePath: String, key: Data, credential: DeviceCredential?, provinceCaPem: String) throws -> Engine {
    try Engine.open(config: EngineConfig(
        storePath: storePath,
        encryptionKey: key,
        serverUrl: "https://sync.dienbien.example.vn",
        credential: credential,
        trustedCaPem: [provinceCaPem]))
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
func settleQuarantine(engine: Engine, officer: String) throws {
    for record in try engine.quarantined() {
        switch record.code {
        case "not_yours": _ = try engine.copyQuarantinedAsNew(officer: officer, id: record.recordId)
        case "too_large", "invalid_field": _ = try engine.retryQuarantined(id: record.recordId) // after an edit
        default: try engine.discardQuarantined(officer: officer, id: record.recordId, reason: "refused: \(record.message)")
        }
    }
}
