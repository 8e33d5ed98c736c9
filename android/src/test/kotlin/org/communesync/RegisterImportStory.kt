// The register import (issue 15) through the Kotlin bindings, against the real `communesync serve`
// started by scripts/test.d/20-bindings.sh, in a commune of its own (COMMUNESYNC_IMPORT_COMMUNE) so
// that its counts are exact. A tablet imports a commune's register (CSV) with dossiers returned
// (with its return time), in progress and received: states, received times, due dates, original
// references and import markers read back; two malformed lines are reported with their line and
// import nothing; a second import changes nothing; the sync sends one change per dossier, and a
// second tablet pulls the same dossiers (and its own import of the file finds them present). A file
// that is not a register is refused whole. The same story runs in Swift
// (ios/Tests/CommuneSyncTests/RegisterImportStory.swift).
// Run: java -Djna.library.path=<dir of libcommunesync_ffi.so> -cp ... org.communesync.RegisterImportStory
@file:JvmName("RegisterImportStoryKt")

package org.communesync

import java.io.File
import java.time.Instant
import java.time.LocalDate
import kotlin.system.exitProcess
import kotlinx.coroutines.runBlocking

private var checks = 0
private val failures = mutableListOf<String>()

private fun expect(what: String, ok: Boolean) {
    checks++
    if (ok) println("ok   $what") else { println("FAIL $what"); failures += what }
}

private fun env(name: String): String = System.getenv(name) ?: error("$name is not set")

object RegisterImportStory {
    @JvmStatic
    fun main(args: Array<String>) {
        try {
            runBlocking { story() }
        } catch (e: Throwable) {
            e.printStackTrace()
            failures += "unexpected ${e::class.simpleName}: ${e.message}"
        }
        if (failures.isNotEmpty()) {
            println("kotlin register import story: ${failures.size} of $checks checks FAILED:")
            failures.forEach { println("  - $it") }
            exitProcess(1)
        }
        println("kotlin register import story: all $checks checks passed")
        exitProcess(0)
    }
}

// Line 1 is the header. Line 4 quotes a name holding a comma; lines 5 and 6 are malformed (a
// 31 February, a status the format does not know).
private const val REGISTER = """external_id,procedure_code,applicant_name,status,received_at,due_date,original_reference,returned_at,applicant_village
SK-2025-0101,1.001193,Lò Văn Pọm,returned,2025-03-14 09:30,2025-03-17,12/HT-2025,2025-03-17 15:00,Bản Phăng
SK-2025-0102,1.000894,Lò Thị Xuân,in_progress,03/11/2025 08:00,,13/HT-2025,,Bản Noong Bua
SK-2025-0103,1.001193,"Quàng Văn Ún, con ông Sáng",received,2025-11-20,2025-11-21,,,Bản Phăng
SK-2025-0104,1.001193,Cầm Thị Én,received,31/02/2025,,,,
SK-2025-0105,1.001193,Vì Văn Sơn,đang xử lý,2025-11-21,,,,
"""

private const val OFFICER = "can-bo.lan"

private suspend fun open(work: File, name: String): Engine = Engine.open(EngineConfig(
    storePath = File(work, "$name.db").path,
    encryptionKey = ByteArray(32) { (it * 11 + 3).toByte() },
    serverUrl = env("COMMUNESYNC_SERVER_URL"),
    credential = null,
))

private suspend fun total(engine: Engine): ULong = engine.queryApplications(ApplicationQuery()).total

private suspend fun story() {
    val commune = env("COMMUNESYNC_IMPORT_COMMUNE")
    val work = File(env("COMMUNESYNC_WORK_DIR")).apply { mkdirs() }
    val a = open(work, "import-a")
    a.enroll(env("COMMUNESYNC_IMPORT_CODE_A"), "Máy tính bảng nhập sổ A")
    a.syncNow() // the catalogue: the in-progress entry's due date is computed from its procedure
    expect("the commune starts empty", total(a) == 0uL)

    // The import: three entries, two malformed lines reported with their line.
    val before = Instant.now()
    val first = a.importRegister(OFFICER, null, REGISTER.toByteArray())
    val after = Instant.now()
    expect("three entries imported (${first.imported}), none present before", first.imported == 3uL && first.alreadyPresent == 0uL)
    expect("the malformed lines are reported by line: ${first.errors}", first.errors.map { it.line } == listOf(5uL, 6uL))
    val (badDate, badStatus) = first.errors
    expect("line 5: the date that does not exist", badDate.externalId == "SK-2025-0104" &&
        badDate.reason.contains("received_at") && badDate.reason.contains("31/02/2025"))
    expect("line 6: the unknown status", badStatus.externalId == "SK-2025-0105" &&
        badStatus.reason.contains("status") && badStatus.reason.contains("đang xử lý"))
    expect("nothing of the malformed lines is imported", total(a) == 3uL &&
        a.importedApplicationId(commune, "SK-2025-0104") == null && a.importedApplicationId(commune, "SK-2025-0105") == null)

    val ids = listOf("SK-2025-0101", "SK-2025-0102", "SK-2025-0103").map { a.importedApplicationId(commune, it) }
    expect("each entry has its dossier", ids.all { it != null } && ids.toSet().size == 3)
    val (returnedId, inProgressId, receivedId) = ids.map { it!! }

    val returned = a.getApplication(returnedId)
    expect("returned, in its state", returned.status == ApplicationStatus.RETURNED && returned.procedureCode == "1.001193" &&
        returned.applicant.name == "Lò Văn Pọm" && returned.applicant.village == "Bản Phăng" && returned.communeCode == commune)
    expect("received at 09:30 Vietnam time (${returned.receivedAt})", returned.receivedAt == Instant.parse("2025-03-14T02:30:00Z"))
    expect("the register's due date (${returned.dueDate})", returned.dueDate == LocalDate.of(2025, 3, 17))
    val returnedMarker = a.importMarker(returnedId)
    expect("marked as imported, with its reference and return time: $returnedMarker",
        returnedMarker != null && returnedMarker.externalId == "SK-2025-0101" && returnedMarker.originalReference == "12/HT-2025" &&
            returnedMarker.returnedAt == Instant.parse("2025-03-17T08:00:00Z"))
    expect("imported now, not at the register's times",
        returnedMarker != null && !returnedMarker.importedAt.isBefore(before.minusSeconds(1)) && !returnedMarker.importedAt.isAfter(after.plusSeconds(1)))
    val history = a.history(returnedId)
    expect("its history is one import, not the transitions of 2025: ${history.map { it.fields }}",
        history.size == 1 && history[0].fields == listOf("imported") && history[0].officer == OFFICER)

    val inProgress = a.getApplication(inProgressId)
    expect("in progress, received 03/11/2025 08:00", inProgress.status == ApplicationStatus.IN_PROGRESS &&
        inProgress.receivedAt == Instant.parse("2025-11-03T01:00:00Z"))
    expect("no due date in the register: 3 working days from Monday 3 November (${inProgress.dueDate})",
        inProgress.dueDate == LocalDate.of(2025, 11, 6))
    val inProgressMarker = a.importMarker(inProgressId)
    expect("its reference, no return time", inProgressMarker != null && inProgressMarker.originalReference == "13/HT-2025" && inProgressMarker.returnedAt == null)

    val received = a.getApplication(receivedId)
    expect("received at midnight, the quoted name whole", received.status == ApplicationStatus.RECEIVED &&
        received.receivedAt == Instant.parse("2025-11-19T17:00:00Z") && received.applicant.name == "Quàng Văn Ún, con ông Sáng" &&
        received.dueDate == LocalDate.of(2025, 11, 21))
    expect("no reference: empty", a.importMarker(receivedId)?.originalReference == "")

    // A dossier taken on the tablet carries no marker.
    val taken = a.createApplication(OFFICER, NewApplication(
        communeCode = commune, procedureCode = "1.001193", applicant = Applicant(name = "Lường Thị Hoa"),
    ))
    expect("a dossier taken today has no import marker", a.importMarker(taken.id) == null)

    // The same file again: nothing written, and the summary says so.
    val second = a.importRegister(OFFICER, null, REGISTER.toByteArray())
    expect("a second import imports nothing: all three present", second.imported == 0uL && second.alreadyPresent == 3uL &&
        second.errors.map { it.line } == listOf(5uL, 6uL))
    expect("the same dossiers, no duplicate", total(a) == 4uL &&
        listOf("SK-2025-0101", "SK-2025-0102", "SK-2025-0103").map { a.importedApplicationId(commune, it) } == ids &&
        a.history(returnedId).size == 1)

    // A file that is not a register: refused whole.
    try {
        a.importRegister(OFFICER, null, "external_id,procedure_code,applicant_name,status\nSK-9,1.001193,A,received\n".toByteArray())
        expect("a register without received_at is refused", false)
    } catch (e: CommuneSyncException.InvalidInput) {
        expect("a register without received_at is refused: ${e.message}", e.message?.contains("received_at") == true)
    }
    expect("and imports nothing", total(a) == 4uL && a.importedApplicationId(commune, "SK-9") == null)

    // The sync: one document per dossier, then nothing more after a re-import.
    val sent = a.syncNow()
    expect("the sync sends the four dossiers, one change each (${sent.pushedDocs} docs, ${sent.pushedChanges} changes, ${sent.refused} refused)",
        sent.pushedDocs == 4uL && sent.pushedChanges == 4uL && sent.refused == 0uL && sent.quarantined == 0uL)
    expect("a re-import after the sync imports nothing", a.importRegister(OFFICER, null, REGISTER.toByteArray()).imported == 0uL)
    expect("and the next sync sends nothing", a.syncNow().pushedDocs == 0uL)

    // A second tablet of the commune pulls them in their state.
    val b = open(work, "import-b")
    b.enroll(env("COMMUNESYNC_IMPORT_CODE_B"), "Máy tính bảng nhập sổ B")
    val pulled = b.syncNow()
    expect("the second tablet pulls the four dossiers (${pulled.pulledDocs})", total(b) == 4uL)
    val idsOnB = listOf("SK-2025-0101", "SK-2025-0102", "SK-2025-0103").map { b.importedApplicationId(commune, it) }
    expect("under the same ids", idsOnB == ids)
    val returnedOnB = b.getApplication(returnedId)
    expect("returned, with the same times and due date", returnedOnB.status == ApplicationStatus.RETURNED &&
        returnedOnB.receivedAt == returned.receivedAt && returnedOnB.dueDate == returned.dueDate)
    expect("the same marker", b.importMarker(returnedId) == returnedMarker)
    expect("the in-progress and received dossiers in their state", b.getApplication(inProgressId).status == ApplicationStatus.IN_PROGRESS &&
        b.getApplication(inProgressId).dueDate == LocalDate.of(2025, 11, 6) &&
        b.getApplication(receivedId).status == ApplicationStatus.RECEIVED && b.importMarker(inProgressId) == inProgressMarker)
    expect("its history on the second tablet is the one import",
        b.history(returnedId).let { it.size == 1 && it[0].fields == listOf("imported") && it[0].serverReceivedAt != null })
    expect("the taken dossier has no marker there either", b.importMarker(taken.id) == null)
    val onB = b.importRegister(OFFICER, null, REGISTER.toByteArray())
    expect("the file imported on the second tablet finds them present", onB.imported == 0uL && onB.alreadyPresent == 3uL)
    expect("and it sends nothing", total(b) == 4uL && b.syncNow().pushedDocs == 0uL)
    a.close()
    b.close()
}
