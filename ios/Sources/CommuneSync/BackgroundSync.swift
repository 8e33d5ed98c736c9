// iOS-only glue (BackgroundTasks): compiled on Apple platforms only, not by the Linux tests.
// It decides nothing itself: the engine's background policy says when the next sync runs.
#if canImport(BackgroundTasks)
import BackgroundTasks
import Foundation
import Network

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
                // Records always go; attachments within the byte budget on a metered link
                // (cellular, a hotspot, Low Data Mode), as on Android.
                let metered = await currentPathIsMetered()
                var settings = current.attachmentSettings()
                settings.metered = metered
                try? current.setAttachmentSettings(settings: settings)
                _ = try? await current.syncNow()
                await schedule(engine: current, metered: metered)
                task.setTaskCompleted(success: !Task.isCancelled)
            }
            task.expirationHandler = { work.cancel() }
        }
    }

    /// Whether the current network path costs the user (expensive or constrained), read once from
    /// `NWPathMonitor`; `true` when no path is reported within two seconds.
    static func currentPathIsMetered() async -> Bool {
        final class Once: @unchecked Sendable {
            private let lock = NSLock()
            private var continuation: CheckedContinuation<Bool, Never>?
            init(_ continuation: CheckedContinuation<Bool, Never>) { self.continuation = continuation }
            func resume(_ value: Bool) {
                lock.lock()
                let pending = continuation
                continuation = nil
                lock.unlock()
                pending?.resume(returning: value)
            }
        }
        let monitor = NWPathMonitor()
        let queue = DispatchQueue(label: "org.communesync.path")
        let metered = await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
            let once = Once(continuation)
            monitor.pathUpdateHandler = { path in once.resume(path.isExpensive || path.isConstrained) }
            monitor.start(queue: queue)
            queue.asyncAfter(deadline: .now() + 2) { once.resume(true) }
        }
        monitor.cancel()
        return metered
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
