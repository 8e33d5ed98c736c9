// Hand-written Swift layer over the generated bindings (CommuneSync.swift): AsyncStreams for the
// observer and the sync status. Plain Swift: compiled and run on Linux by the tests. Store calls
// need no wrapper: they are `async` and run on the engine's own pool.
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

    /// The sync status as it changes: the status now, then a new one after each change (a sync
    /// starting, each request, a sync ending, an edit, an enrollment, a wipe). Only the latest
    /// waits for a slow consumer. The watch stops when the stream terminates.
    public func syncStatusUpdates() throws -> AsyncStream<SyncStatus> {
        let (stream, continuation) = AsyncStream<SyncStatus>.makeStream(bufferingPolicy: .bufferingNewest(1))
        let handle = try watchSyncStatus(listener: StatusStreamListener(continuation))
        continuation.onTermination = { _ in handle.stop() }
        return stream
    }

    /// Bytes of each attachment uploaded by `syncNow` or downloaded (on open or prefetch): one
    /// `AttachmentProgress` per chunk, none dropped. The watch stops when the stream terminates.
    public func attachmentProgressUpdates() throws -> AsyncStream<AttachmentProgress> {
        let (stream, continuation) = AsyncStream<AttachmentProgress>.makeStream(bufferingPolicy: .unbounded)
        let handle = try watchAttachmentProgress(listener: AttachmentStreamListener(continuation))
        continuation.onTermination = { _ in handle.stop() }
        return stream
    }

    /// Before store calls were `async`, this moved them off the caller's actor; they need no
    /// wrapper now.
    @available(*, deprecated, message: "store calls are async and run off the caller's thread: call them directly")
    public func io<T>(_ body: @escaping @Sendable (Engine) async throws -> T) async throws -> T {
        try await body(self)
    }
}

/// Forwards sync statuses (on the engine's status thread) into an AsyncStream.
final class StatusStreamListener: SyncStatusListener, @unchecked Sendable {
    private let continuation: AsyncStream<SyncStatus>.Continuation

    init(_ continuation: AsyncStream<SyncStatus>.Continuation) {
        self.continuation = continuation
    }

    func onStatus(status: SyncStatus) {
        continuation.yield(status)
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

/// Forwards attachment progress (on the engine's attachment thread) into an AsyncStream.
final class AttachmentStreamListener: AttachmentProgressListener, @unchecked Sendable {
    private let continuation: AsyncStream<AttachmentProgress>.Continuation

    init(_ continuation: AsyncStream<AttachmentProgress>.Continuation) {
        self.continuation = continuation
    }

    func onAttachmentProgress(progress: AttachmentProgress) {
        continuation.yield(progress)
    }
}
