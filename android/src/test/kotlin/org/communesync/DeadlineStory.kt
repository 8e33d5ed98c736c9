// Statutory time through the Kotlin bindings, on one tablet's store (no server needed): a dossier
// received before Tết 2026 is paused for a supplement (off the overdue list), completed, extended
// with an apology slip, and returned; the verdict is recorded and listed. The same story runs in
// Swift (ios/Tests/CommuneSyncTests/DeadlineStory.swift).
// Run: java -Djna.library.path=<dir of libcommunesync_ffi.so> -cp ... org.communesync.DeadlineStory
@file:JvmName("DeadlineStoryKt")

package org.communesync

import java.io.File
import java.time.LocalDate
import java.time.LocalDateTime
import java.time.ZoneOffset
import kotlin.system.exitProcess
import kotlinx.coroutines.runBlocking

private var checks = 0
private val failures = mutableListOf<String>()

private fun expect(what: String, ok: Boolean) {
    checks++
    if (ok) println("ok   $what") else { println("FAIL $what"); failures += what }
}

// A 5-working-day procedure and Tết Bính Ngọ (16-20 February 2026) off.
private const val CATALOGUE = """{"procedures":[{"code":"1.001193","name":"Đăng ký khai sinh",
  "processing":{"working_days":5}}],
  "calendar":[{"day":"2026-02-16","working":false},{"day":"2026-02-17","working":false},
    {"day":"2026-02-18","working":false},{"day":"2026-02-19","working":false},
    {"day":"2026-02-20","working":false}]}"""

object DeadlineStory {
    @JvmStatic
    fun main(args: Array<String>) {
        try {
            runBlocking { story() }
        } catch (e: Throwable) {
            e.printStackTrace()
            failures += "unexpected ${e::class.simpleName}: ${e.message}"
        }
        if (failures.isNotEmpty()) {
            println("kotlin deadline story: ${failures.size} of $checks checks FAILED:")
            failures.forEach { println("  - $it") }
            exitProcess(1)
        }
        println("kotlin deadline story: all $checks checks passed")
        exitProcess(0)
    }
}

private suspend fun story() {
    val work = File(System.getenv("COMMUNESYNC_WORK_DIR") ?: error("COMMUNESYNC_WORK_DIR is not set"))
        .apply { mkdirs() }
    val engine = Engine.open(EngineConfig(
        storePath = File(work, "deadline.db").path,
        encryptionKey = ByteArray(32) { (it * 7 + 1).toByte() },
        serverUrl = "http://127.0.0.1:9",
        credential = null,
    ))
    engine.installCatalogueFile(CATALOGUE)
    val received = LocalDateTime.of(2026, 2, 12, 9, 0).toInstant(ZoneOffset.ofHours(7))
    val app = engine.createApplication("can-bo.lan", NewApplication(
        communeCode = "DB-MUONGPHANG", procedureCode = "1.001193",
        applicant = Applicant(name = "Lò Thị Mai"), receivedAt = received))
    expect("5 working days across Tết: due 26 February", app.dueDate == LocalDate.of(2026, 2, 26))
    engine.updateApplication("can-bo.lan", app.id, ApplicationUpdate(status = ApplicationStatus.IN_PROGRESS))
    suspend fun overdue() = engine.overdue(50u, 0u).items.map { it.id }
    expect("overdue today", overdue() == listOf(app.id))

    try {
        engine.requestSupplement("can-bo.lan", app.id, " ")
        expect("a supplement without saying what is missing is refused", false)
    } catch (e: CommuneSyncException.InvalidInput) {
        expect("a supplement without saying what is missing is refused", true)
    }
    val paused = engine.requestSupplement("can-bo.lan", app.id, "Bản sao giấy chứng sinh")
    expect("the supplement moves the status", paused.status == ApplicationStatus.SUPPLEMENT_REQUESTED)
    expect("not overdue while the clock is stopped", overdue().isEmpty())
    val deadline = engine.dossierDeadline(app.id)
    expect("the pause is recorded", deadline.pausedSince != null &&
        deadline.events.single().kind == DeadlineEventKind.PAUSE &&
        deadline.events.single().reason == "Bản sao giấy chứng sinh")

    engine.markComplete("can-bo.lan", app.id)
    expect("complete again: the clock runs", engine.dossierDeadline(app.id).pausedSince == null)
    val appointment = LocalDate.now(ZoneOffset.ofHours(7)).plusDays(20)
    engine.extendDeadline("can-bo.lan", app.id, "Chờ xác minh", appointment)
    val extended = engine.dossierDeadline(app.id)
    expect("the extension sets the due date", extended.extended && extended.dueDate == appointment &&
        extended.statutoryDue == LocalDate.of(2026, 2, 26))
    expect("extended: off the overdue list", overdue().isEmpty())

    engine.updateApplication("can-bo.lan", app.id, ApplicationUpdate(status = ApplicationStatus.READY))
    val returned = engine.returnDossier("can-bo.lan", app.id)
    expect("returned", returned.status == ApplicationStatus.RETURNED)
    val verdict = engine.dossierDeadline(app.id)
    expect("returned on time, with its time", verdict.returnedOnTime == true && verdict.returnedAt != null)
    expect("listed on time", engine.returnedDossiers(true, 10u, 0u).map { it.id } == listOf(app.id))
    expect("not listed late", engine.returnedDossiers(false, 10u, 0u).isEmpty())
}
