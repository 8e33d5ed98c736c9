// Hand-written Swift layer over the generated bindings (CommuneSync.swift): AsyncStream for the
// observer, async wrappers for store calls. Plain Swift: compiled and run on Linux by the tests.
import Foundation

/// One event of `Engine.events()`: sync progress, changed records, or the store wiped.
public enum EngineEvent: @unchecked Sendable {
    /// After each completed request of a sync.
    case progress(SyncProgress)
    /// Records changed, locally or by a sync: refresh what shows them.
    case changed(ChangeEvent)
    /// The province ordered this device wiped and the engine destroyed the store (the last
    /// event): delete the key and the credential from the Keychain and tell the officer.
    case wiped(WipeEvent)
}

/// Forwards observer callbacks (on the engine's observer thread) into an AsyncStream.
final class StreamObserver: SyncObserver, @unchecked Sendable {
    private let continuation: AsyncStream<EngineEvent>.Continuation

    init(_ continuation: AsyncStream<EngineEvent>.Continuation) {
        self.continuation = continuation
    }

    func onProgress(progress: SyncProgress) {
        continuation.yield(.progress(progress))
    }

    func onChanged(event: ChangeEvent) {
        continuation.yield(.changed(event))
    }

    func onWiped(event: WipeEvent) {
        continuation.yield(.wiped(event))
    }
}

extension Engine {
    /// Sync progress, record changes and a wipe as an `AsyncStream`. The observation stops when the
    /// stream terminates (the consuming loop ends or its task is cancelled). Events are never
    /// dropped (unbounded buffer; they are small and few: one per request or edit).
    public func events() throws -> AsyncStream<EngineEvent> {
        let (stream, continuation) = AsyncStream<EngineEvent>.makeStream(bufferingPolicy: .unbounded)
        let handle = try observe(observer: StreamObserver(continuation))
        continuation.onTermination = { _ in handle.stop() }
        return stream
    }

    /// Runs store calls (milliseconds of disk I/O) off the caller's actor:
    /// `let page = try await engine.io { try $0.queryApplications(query: q) }`.
    public func io<T>(_ body: @escaping @Sendable (Engine) throws -> T) async throws -> T {
        let engine = self
        return try await withCheckedThrowingContinuation { continuation in
            DispatchQueue.global(qos: .utility).async {
                continuation.resume(with: Result { try body(engine) })
            }
        }
    }
}

extension SyncDecision {
    /// Seconds before the next background sync: 0 to run now, `nil` to stop.
    public var delaySeconds: TimeInterval? {
        switch self {
        case .run: return 0
        case .after(let delayMs): return TimeInterval(delayMs) / 1000
        case .stop: return nil
        }
    }
}
