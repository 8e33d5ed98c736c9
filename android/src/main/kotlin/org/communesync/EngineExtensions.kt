// Hand-written Kotlin layer over the generated bindings (communesync_ffi.kt): Flow and StateFlow.
// Plain Kotlin + kotlinx.coroutines, no Android APIs: compiled and run on the JVM by the tests.
// Store calls need no wrapper: they are `suspend` functions that run on the engine's own pool.
package org.communesync

import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.channels.Channel
import kotlinx.coroutines.channels.awaitClose
import kotlinx.coroutines.flow.Flow
import kotlinx.coroutines.flow.StateFlow
import kotlinx.coroutines.flow.buffer
import kotlinx.coroutines.flow.callbackFlow
import kotlinx.coroutines.flow.conflate
import kotlinx.coroutines.flow.stateIn
import kotlinx.coroutines.withContext

/** One event of [Engine.events]: sync progress, changed records, or the store wiped. */
sealed interface EngineEvent {
    /** After each completed request of a sync. */
    data class Progress(val progress: SyncProgress) : EngineEvent

    /** Records changed, locally or by a sync: refresh what shows them. */
    data class Changed(val change: ChangeEvent) : EngineEvent

    /**
     * The province ordered this device wiped and the engine destroyed the store (the last
     * event): delete the key and the credential from the keystore and tell the officer.
     */
    data class Wiped(val wipe: WipeEvent) : EngineEvent
}

/**
 * Sync progress, record changes and a wipe as a cold [Flow]. Collecting starts an observation
 * ([Engine.observe]); cancelling the collector stops it. Events are never dropped (the buffer
 * is unbounded; they are small and few: one per request or edit).
 */
fun Engine.events(): Flow<EngineEvent> = callbackFlow {
    val handle = observe(object : SyncObserver {
        override fun onProgress(progress: SyncProgress) {
            trySend(EngineEvent.Progress(progress))
        }

        override fun onChanged(event: ChangeEvent) {
            trySend(EngineEvent.Changed(event))
        }

        override fun onWiped(event: WipeEvent) {
            trySend(EngineEvent.Wiped(event))
        }
    })
    awaitClose {
        handle.stop()
        handle.close()
    }
}.buffer(Channel.UNLIMITED)

/**
 * The sync status as it changes: the status now, then a new one after each change (a sync
 * starting, each request, a sync ending, an edit, an enrollment, a wipe). Conflated: a slow
 * collector gets the latest. Collecting starts a watch ([Engine.watchSyncStatus]); cancelling
 * the collector stops it.
 */
fun Engine.syncStatusUpdates(): Flow<SyncStatus> = callbackFlow {
    val handle = watchSyncStatus(object : SyncStatusListener {
        override fun onStatus(status: SyncStatus) {
            trySend(status)
        }
    })
    awaitClose {
        handle.stop()
        handle.close()
    }
}.conflate()

/**
 * Bytes of each attachment uploaded by `syncNow` or downloaded (on open or prefetch), as a cold
 * [Flow]: one [AttachmentProgress] per chunk. Collecting starts a watch
 * ([Engine.watchAttachmentProgress]); cancelling the collector stops it. Never dropped (one
 * event per 64 KiB chunk is few).
 */
fun Engine.attachmentProgressFlow(): Flow<AttachmentProgress> = callbackFlow {
    val handle = watchAttachmentProgress(object : AttachmentProgressListener {
        override fun onAttachmentProgress(progress: AttachmentProgress) {
            trySend(progress)
        }
    })
    awaitClose {
        handle.stop()
        handle.close()
    }
}.buffer(Channel.UNLIMITED)

/**
 * The sync status as a [StateFlow] for a status bar, alive while [scope] is (e.g.
 * `viewModelScope`): suspends until the first status is read, then stays current.
 */
suspend fun Engine.syncStatusFlow(scope: CoroutineScope): StateFlow<SyncStatus> =
    syncStatusUpdates().stateIn(scope)

/** Before store calls were `suspend`, this moved them to [Dispatchers.IO]; they need no wrapper now. */
@Deprecated(
    "Store calls are suspend functions that run off the caller's thread: call them directly",
    ReplaceWith("block()"),
)
suspend fun <T> Engine.io(block: suspend Engine.() -> T): T = withContext(Dispatchers.IO) { block() }

/** The delay in milliseconds before the next background sync: 0 to run now, `null` to stop. */
fun SyncDecision.delayMillis(): Long? = when (this) {
    is SyncDecision.Run -> 0L
    is SyncDecision.After -> delayMs.toLong()
    is SyncDecision.Stop -> null
}
