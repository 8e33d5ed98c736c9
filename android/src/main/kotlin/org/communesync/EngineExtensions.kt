// Hand-written Kotlin layer over the generated bindings (communesync_ffi.kt): coroutines and Flow.
// Plain Kotlin + kotlinx.coroutines, no Android APIs: compiled and run on the JVM by the tests.
package org.communesync

import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.channels.Channel
import kotlinx.coroutines.channels.awaitClose
import kotlinx.coroutines.flow.Flow
import kotlinx.coroutines.flow.buffer
import kotlinx.coroutines.flow.callbackFlow
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
 * Runs store calls (they do milliseconds of disk I/O) on [Dispatchers.IO]:
 * `val page = engine.io { queryApplications(ApplicationQuery(openOnly = true)) }`.
 */
suspend fun <T> Engine.io(block: Engine.() -> T): T = withContext(Dispatchers.IO) { block() }

/** The delay in milliseconds before the next background sync: 0 to run now, `null` to stop. */
fun SyncDecision.delayMillis(): Long? = when (this) {
    is SyncDecision.Run -> 0L
    is SyncDecision.After -> delayMs.toLong()
    is SyncDecision.Stop -> null
}
