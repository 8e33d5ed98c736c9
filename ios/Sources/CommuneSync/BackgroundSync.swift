// iOS-only glue (BackgroundTasks): compiled on Apple platforms only, not by the Linux tests.
// It decides nothing itself: the engine's background policy says when the next sync runs.
#if canImport(BackgroundTasks)
import BackgroundTasks
import Foundation

/// Background sync with `BGTaskScheduler`. Add `identifier` to `BGTaskSchedulerPermittedIdentifiers`
/// in Info.plist, call `register(engine:)` before the app finishes launching, then
/// `schedule(engine:)` once the engine is open.
public enum BackgroundSync {
    /// The task identifier.
    public static let identifier = "org.communesync.sync"

    /// Registers the task handler: it runs `syncNow()` and schedules the next run by the policy.
    public static func register(engine: @escaping @Sendable () -> Engine?) {
        BGTaskScheduler.shared.register(forTaskWithIdentifier: identifier, using: nil) { task in
            guard let task = task as? BGProcessingTask, let current = engine() else {
                task.setTaskCompleted(success: true)
                return
            }
            let work = Task {
                _ = try? await current.syncNow()
                await schedule(engine: current)
                task.setTaskCompleted(success: !Task.isCancelled)
            }
            task.expirationHandler = { work.cancel() }
        }
    }

    /// Schedules the next background sync where the engine's policy says (or cancels it).
    public static func schedule(engine: Engine, metered: Bool = true) async {
        guard let decision = try? await engine.nextSyncAfter(metered: metered),
              let delay = decision.delaySeconds else {
            BGTaskScheduler.shared.cancel(taskRequestWithIdentifier: identifier)
            return
        }
        let request = BGProcessingTaskRequest(identifier: identifier)
        request.requiresNetworkConnectivity = true
        request.earliestBeginDate = Date(timeIntervalSinceNow: delay)
        try? BGTaskScheduler.shared.submit(request)
    }
}
#endif
