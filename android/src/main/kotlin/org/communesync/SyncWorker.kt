// Android-only glue (androidx.work): not compiled by the JVM tests, which have no Android SDK.
// It decides nothing itself: the engine's background policy says when the next sync runs.
package org.communesync

import android.content.Context
import android.net.ConnectivityManager
import androidx.work.Constraints
import androidx.work.CoroutineWorker
import androidx.work.ExistingWorkPolicy
import androidx.work.NetworkType
import androidx.work.OneTimeWorkRequestBuilder
import androidx.work.WorkManager
import androidx.work.WorkerParameters
import java.util.concurrent.TimeUnit

/** Implemented by the app's `Application` class: the one [Engine] of the process. */
interface CommuneSyncEngineProvider {
    /** The open engine, or `null` while no officer has unlocked the store. */
    fun communeSyncEngine(): Engine?
}

/**
 * Runs [Engine.syncNow] when a network is available, then schedules the next run where the
 * engine's policy says ([Engine.nextSyncAfter]). Start it once at app start with
 * [SyncWorker.schedule]`(context, engine.nextSyncAfter(metered))`.
 */
class SyncWorker(context: Context, params: WorkerParameters) : CoroutineWorker(context, params) {
    override suspend fun doWork(): Result {
        val engine = (applicationContext as? CommuneSyncEngineProvider)?.communeSyncEngine()
            ?: return Result.success() // locked: the app schedules again when it opens the engine
        val connectivity = applicationContext.getSystemService(ConnectivityManager::class.java)
        val metered = connectivity?.isActiveNetworkMetered ?: true
        try {
            // Records always go; attachments within the byte budget on mobile data.
            engine.setAttachmentSettings(engine.attachmentSettings().copy(metered = metered))
            engine.syncNow()
        } catch (e: CommuneSyncException) {
            // Recorded by the engine (syncStatus, policy); the policy decides the retry.
        }
        schedule(applicationContext, engine.nextSyncAfter(metered))
        return Result.success()
    }

    companion object {
        /** Unique work name: at most one pending background sync. */
        const val WORK_NAME = "communesync-sync"

        /** Schedules (or, for [SyncDecision.Stop], cancels) the next background sync. */
        fun schedule(context: Context, decision: SyncDecision) {
            val work = WorkManager.getInstance(context)
            val delay = decision.delayMillis()
            if (delay == null) {
                work.cancelUniqueWork(WORK_NAME)
                return
            }
            val request = OneTimeWorkRequestBuilder<SyncWorker>()
                .setConstraints(
                    Constraints.Builder().setRequiredNetworkType(NetworkType.CONNECTED).build(),
                )
                .setInitialDelay(delay, TimeUnit.MILLISECONDS)
                .build()
            // APPEND_OR_REPLACE: called from a running worker, the next run waits for it to end
            // instead of cancelling it.
            work.enqueueUniqueWork(WORK_NAME, ExistingWorkPolicy.APPEND_OR_REPLACE, request)
        }
    }
}
