// The SDK layer on a plain JVM, against the real `communesync serve` of
// scripts/test.d/20-bindings.sh: the sync status as a StateFlow, the engine's logs reaching a
// logger the app installs, instants and civil dates as java.time types, and key rotation.
// The same story runs in Swift (ios/Tests/CommuneSyncTests/SdkStory.swift).
// Run: java -Djna.library.path=<dir of libcommunesync_ffi.so> -cp ... org.communesync.SdkStoryKt
package org.communesync

import java.io.File
import java.time.Instant
import java.time.LocalDate
import java.util.Collections
import kotlin.system.exitProcess
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.cancel
import kotlinx.coroutines.flow.launchIn
import kotlinx.coroutines.flow.onEach
import kotlinx.coroutines.runBlocking

private var sdkChecks = 0
private val sdkFailures = mutableListOf<String>()

private fun check(what: String, ok: Boolean) {
    sdkChecks++
    if (ok) println("ok   $what") else { println("FAIL $what"); sdkFailures += what }
}

private inline fun <reified E : CommuneSyncException> checkError(what: String, block: () -> Unit) {
    try {
        block()
        check("$what (no error was raised)", false)
    } catch (e: CommuneSyncException) {
        check("$what -> ${e::class.simpleName}: ${e.message}", e is E)
    }
}

/** Polls [cond] every 20 ms for at most [seconds]. */
private fun eventually(seconds: Int, cond: () -> Boolean): Boolean {
    val deadline = System.nanoTime() + seconds * 1_000_000_000L
    while (System.nanoTime() < deadline) {
        if (cond()) return true
        Thread.sleep(20)
    }
    return cond()
}

fun main() {
    try {
        runBlocking { sdkStory() }
    } catch (e: Throwable) {
        e.printStackTrace()
        sdkFailures += "unexpected ${e::class.simpleName}: ${e.message}"
    }
    if (sdkFailures.isNotEmpty()) {
        println("kotlin sdk story: ${sdkFailures.size} of $sdkChecks checks FAILED:")
        sdkFailures.forEach { println("  - $it") }
        exitProcess(1)
    }
    println("kotlin sdk story: all $sdkChecks checks passed")
    exitProcess(0)
}

private suspend fun sdkStory() {
    fun env(name: String): String = System.getenv(name) ?: error("$name is not set")
    val work = File(env("COMMUNESYNC_WORK_DIR")).apply { mkdirs() }
    val commune = env("COMMUNESYNC_COMMUNE")
    val storePath = File(work, "tablet-sdk.db").path
    val oldKey = ByteArray(32) { 3 }
    val newKey = ByteArray(32) { 5 }
    fun config(key: ByteArray, credential: DeviceCredential? = null) =
        EngineConfig(storePath = storePath, encryptionKey = key, serverUrl = env("COMMUNESYNC_SERVER_URL"), credential = credential)

    // --- the app's logger, installed before anything runs ---
    val logs = Collections.synchronizedList(mutableListOf<LogRecord>())
    setLogger(object : EngineLogger {
        override fun log(record: LogRecord) { logs += record }
    }, LogLevel.INFO)

    val engine = Engine.open(config(oldKey.copyOf()))
    val scope = CoroutineScope(Dispatchers.Default)

    // --- the sync status as a StateFlow ---
    val status = engine.syncStatusFlow(scope)
    check("the StateFlow starts with the status now", !status.value.enrolled && status.value.pendingChanges == 0uL && status.value.lastSuccess == null)
    val seen = Collections.synchronizedList(mutableListOf<SyncStatus>())
    status.onEach { seen += it }.launchIn(scope)
    val credential = engine.enroll(env("COMMUNESYNC_CODE_SDK"), "Máy tính bảng SDK")
    check("enrollment shows in the StateFlow", eventually(10) { status.value.enrolled && status.value.enrolledCommune == commune })
    engine.syncNow() // the catalogue

    // --- instants and civil dates ---
    val received = Instant.parse("2026-11-23T02:30:00.250Z")
    val app = engine.createApplication(
        "can-bo.lan",
        NewApplication(
            communeCode = commune,
            procedureCode = "1.000894",
            applicant = Applicant(name = "Lường Văn Thắng", village = "Bản Phăng"),
            receivedAt = received,
        ),
    )
    check("an Instant round-trips to the millisecond", app.receivedAt == received && engine.getApplication(app.id).receivedAt == received)
    check("the due date is a LocalDate: 3 working days after Monday 23 November 2026", app.dueDate == LocalDate.of(2026, 11, 26))
    check("a query by LocalDate finds it", engine.queryApplications(ApplicationQuery(dueFrom = app.dueDate, dueUntil = app.dueDate)).items.any { it.id == app.id && it.receivedAt == received })
    check("a query by Instant finds it", engine.queryApplications(ApplicationQuery(receivedFrom = received, receivedUntil = received.plusMillis(1))).items.map { it.id } == listOf(app.id))
    check("the pending edit shows in the StateFlow", eventually(10) { status.value.pendingChanges == 1uL })

    // --- a sync: seen running, then done ---
    val before = Instant.now().minusSeconds(1)
    val report = engine.syncNow()
    check("the sync pushed the application", report.pushedDocs == 1uL)
    check("after the sync: nothing pending, idle, a last success now", eventually(10) {
        val now = status.value
        now.pendingChanges == 0uL && !now.syncing && now.lastSuccess?.isAfter(before) == true && now.lastReport?.pushedDocs == 1uL
    })
    check("the StateFlow showed the sync running", seen.any { it.syncing })
    check("the server's receive time is an Instant", engine.history(app.id).first().serverReceivedAt?.isAfter(Instant.parse("2026-01-01T00:00:00Z")) == true)
    check("the last server sync is an Instant", status.value.lastServerSync != null)

    // --- the engine's logs reach the app, without secrets ---
    check("a real log line of the sync reached the logger", eventually(10) {
        logs.any { it.level == LogLevel.INFO && it.target.startsWith("communesync_core::sync") && it.message.startsWith("sync done") }
    })
    check("no log line holds the token", logs.none { credential.token in it.message })
    check("nothing below the chosen level", logs.none { it.level == LogLevel.DEBUG || it.level == LogLevel.TRACE })

    // --- key rotation ---
    checkError<CommuneSyncException.InvalidInput>("a 16-byte new key is refused") { engine.rekey(ByteArray(16)) }
    engine.rekey(newKey.copyOf())
    check("the engine goes on after a rekey", engine.getApplication(app.id).applicant.name == "Lường Văn Thắng")
    check("the rotation is logged", eventually(10) { logs.any { it.message.startsWith("store key rotated") } })
    scope.cancel()
    engine.close()
    checkError<CommuneSyncException.Storage>("the old key no longer opens the store") { Engine.open(config(oldKey.copyOf(), credential)) }
    val reopened = Engine.open(config(newKey.copyOf(), credential))
    check("the new key opens it, with its records", reopened.getApplication(app.id).receivedAt == received)
    check("and it syncs", reopened.syncNow().requests >= 1uL)
    reopened.close()

    fun opened() = logs.count { it.message.startsWith("engine opened") }
    check("each open is logged", eventually(10) { opened() == 2 })
    setLogger(null, LogLevel.INFO)
    Engine.open(config(newKey.copyOf(), credential)).close()
    Thread.sleep(300)
    check("once removed, the logger gets nothing", opened() == 2)
}
