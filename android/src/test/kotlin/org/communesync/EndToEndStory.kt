// The end-to-end story of the bindings on a plain JVM, against a real `communesync serve`
// started by scripts/test.d/20-bindings.sh: two tablets of one commune enroll, take applications
// offline, sync, edit concurrently, resolve, read history, search, and one is revoked. Then, against
// the scripted server of the same script (tests/src/bin/scripted_server.rs), the integrity cases:
// records set aside in the quarantine and fixed, "upgrade required", and a wipe order.
// The same story runs in Swift (ios/Tests/CommuneSyncTests/EndToEndStory.swift).
// Run: java -Djna.library.path=<dir of libcommunesync_ffi.so> -cp ... org.communesync.EndToEndStoryKt
package org.communesync

import java.io.File
import java.util.Collections
import kotlin.system.exitProcess
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.flow.launchIn
import kotlinx.coroutines.flow.onEach
import kotlinx.coroutines.launch
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout

private var checks = 0
private val failures = mutableListOf<String>()

private fun expect(what: String, ok: Boolean) {
    checks++
    if (ok) println("ok   $what") else { println("FAIL $what"); failures += what }
}

/** Runs [block], expecting a [CommuneSyncException] of type [E]. */
private inline fun <reified E : CommuneSyncException> expectError(what: String, block: () -> Unit) {
    try {
        block()
        expect("$what (no error was raised)", false)
    } catch (e: CommuneSyncException) {
        expect("$what -> ${e::class.simpleName}: ${e.message}", e is E && !e.message.isNullOrBlank())
    }
}

private suspend inline fun <reified E : CommuneSyncException> expectErrorAsync(what: String, block: () -> Unit) {
    try {
        block()
        expect("$what (no error was raised)", false)
    } catch (e: CommuneSyncException) {
        expect("$what -> ${e::class.simpleName}: ${e.message}", e is E && !e.message.isNullOrBlank())
    }
}

private fun env(name: String): String = System.getenv(name) ?: error("$name is not set")

/** Polls [cond] every 50 ms for at most [seconds]. */
private fun waitFor(seconds: Int, cond: () -> Boolean): Boolean {
    val deadline = System.nanoTime() + seconds * 1_000_000_000L
    while (System.nanoTime() < deadline) {
        if (cond()) return true
        Thread.sleep(50)
    }
    return cond()
}

fun main() {
    try {
        runBlocking { story() }
    } catch (e: Throwable) {
        e.printStackTrace()
        failures += "unexpected ${e::class.simpleName}: ${e.message}"
    }
    if (failures.isNotEmpty()) {
        println("kotlin story: ${failures.size} of $checks checks FAILED:")
        failures.forEach { println("  - $it") }
        exitProcess(1)
    }
    println("kotlin story: all $checks checks passed")
    exitProcess(0)
}

private suspend fun story() {
    val server = env("COMMUNESYNC_SERVER_URL")
    val commune = env("COMMUNESYNC_COMMUNE")
    val work = File(env("COMMUNESYNC_WORK_DIR")).apply { mkdirs() }
    val hooks = File(env("COMMUNESYNC_HOOK_DIR"))
    val key = ByteArray(32) { (it * 7 + 1).toByte() }
    fun config(name: String, credential: DeviceCredential? = null) = EngineConfig(
        storePath = File(work, "$name.db").path,
        encryptionKey = key,
        serverUrl = server,
        credential = credential,
    )

    // --- opening and the errors an app acts on, before enrollment ---
    expectError<CommuneSyncException.InvalidInput>("a 3-byte key is refused") {
        Engine.open(config("bad").copy(encryptionKey = byteArrayOf(1, 2, 3)))
    }
    var a = Engine.open(config("tablet-a"))
    val b = Engine.open(config("tablet-b"))
    expect("two stores, two device ids", a.deviceId() != b.deviceId())
    expectErrorAsync<CommuneSyncException.Unauthorized>("sync before enrolling") { a.syncNow() }
    expect("not enrolled: the policy says stop", a.nextSyncAfter(false) is SyncDecision.Stop)
    expectErrorAsync<CommuneSyncException.Unauthorized>("enroll with a bad code") {
        a.enroll("NOT-A-CODE", "tablet A")
    }

    // --- observing tablet A through the Flow helper ---
    val events = Collections.synchronizedList(mutableListOf<EngineEvent>())
    val observer = kotlinx.coroutines.CoroutineScope(Dispatchers.Default)
    val collecting = a.events().onEach { events += it }.launchIn(observer)

    // --- enrollment ---
    val credA = a.enroll(env("COMMUNESYNC_CODE_A"), "Máy tính bảng A")
    val credB = b.enroll(env("COMMUNESYNC_CODE_B"), "Máy tính bảng B")
    expect("A enrolled in $commune", credA.communeCode == commune && credA.deviceId == a.deviceId())
    expect("B enrolled in $commune", credB.communeCode == commune && credB.deviceId == b.deviceId())
    expect("the engine keeps the credential", a.credential() == credA)
    val first = a.syncNow()
    expect("first sync of A: one request, nothing pushed", first.pushedDocs == 0uL && first.requests >= 1uL)
    expect("the catalogue came with it", a.procedure("1.001193").name == "Đăng ký khai sinh")

    // --- offline intake with Vietnamese text ---
    val huong = a.createApplication(
        "can-bo.lan",
        NewApplication(
            communeCode = commune,
            procedureCode = "1.001193",
            applicant = Applicant(name = "Nguyễn Thị Hương", phone = "0912345678", village = "Bản Phăng"),
            documents = listOf(ReceivedDocument(name = "Tờ khai đăng ký khai sinh", copies = 1u, original = true)),
            fees = listOf(Fee(name = "Lệ phí", amountVnd = 8000uL)),
            notes = "Giấy chứng sinh bản chính",
        ),
    )
    val duc = a.createApplication(
        "can-bo.lan",
        NewApplication(
            communeCode = commune,
            procedureCode = "1.001193",
            applicant = Applicant(name = "Đặng Văn Đức", village = "Bản Co Mị"),
        ),
    )
    val road = a.createCitizenRequest(
        "can-bo.lan",
        NewCitizenRequest(
            communeCode = commune,
            category = "road",
            description = "Đường vào bản Phăng bị sạt lở sau mưa lũ",
            village = "Bản Phăng",
            reporterName = "Lò Văn Khánh",
        ),
    )
    expect("new applications are received, with a due date (LocalDate)", huong.status == ApplicationStatus.RECEIVED && huong.dueDate.year >= 2024)
    expect("Vietnamese text round-trips", a.getApplication(huong.id).applicant.name == "Nguyễn Thị Hương" && a.getCitizenRequest(road.id).description.startsWith("Đường vào bản"))
    expect("3 records wait for the server", a.syncStatus().pendingChanges == 3uL)
    val page1 = a.queryApplications(ApplicationQuery(status = ApplicationStatus.RECEIVED, sort = SortBy.APPLICANT_NAME, limit = 1u))
    val page2 = a.queryApplications(ApplicationQuery(status = ApplicationStatus.RECEIVED, sort = SortBy.APPLICANT_NAME, limit = 1u, offset = page1.nextOffset ?: 0u))
    expect("pagination: 2 in all, one per page", page1.total == 2uL && page1.items.size == 1 && page1.nextOffset == 1u && page2.nextOffset == null)
    expect("the two pages hold both applications", (page1.items + page2.items).map { it.applicantName }.toSet() == setOf("Đặng Văn Đức", "Nguyễn Thị Hương"))
    expect("counts by status", a.countsByStatus().first { it.status == ApplicationStatus.RECEIVED }.count == 2uL)
    expect("nothing overdue yet", a.overdue(10u, 0u).total == 0uL)
    expect("due soon (1 working day procedure)", a.dueSoon(5u, 50u, 0u).total == 2uL)
    expectError<CommuneSyncException.InvalidInput>("a date the engine cannot hold (year 10000)") {
        a.queryApplications(ApplicationQuery(dueFrom = java.time.LocalDate.of(10000, 1, 1)))
    }
    expect("a query by due date (LocalDate)", a.queryApplications(ApplicationQuery(dueFrom = huong.dueDate, dueUntil = huong.dueDate)).total == 2uL)

    // --- sync: A pushes, B sees them ---
    val pushed = a.syncNow()
    expect("A pushed 3 records", pushed.pushedDocs == 3uL && pushed.pendingDocs == 0uL)
    val pulled = b.syncNow()
    expect("B pulled 3 records", pulled.pulledDocs == 3uL)
    expect("B reads the application", b.getApplication(huong.id).applicant.name == "Nguyễn Thị Hương")
    expect("B reads the request", b.getCitizenRequest(road.id).reporterName == "Lò Văn Khánh")
    expect("search without diacritics: nguyen thi huong", b.search("nguyen thi huong", 10u).map { it.id } == listOf(huong.id))
    expect("search without diacritics: dang van duc (đ -> d)", b.search("dang van duc", 10u).map { it.id } == listOf(duc.id))
    expect("search a request by prefix: sat l", b.search("sat l", 10u).any { it.id == road.id && it.kind == RecordKind.CITIZEN_REQUEST })

    // --- concurrent edits of one field -> a conflict ---
    a.updateApplication("can-bo.lan", huong.id, ApplicationUpdate(assignee = "Lò Văn Minh"))
    b.updateApplication("can-bo.tuan", huong.id, ApplicationUpdate(assignee = "Quàng Thị Lan"))
    a.syncNow()
    val bSync = b.syncNow()
    a.syncNow()
    expect("B's sync reports the conflict", bSync.conflicts == 1uL)
    val conflictsB = b.conflicts(huong.id)
    val assigneeConflict = conflictsB.firstOrNull { it.field == "assignee" }
    val candidates = assigneeConflict?.values?.map { it.value }.orEmpty()
    expect("B sees both values of assignee", candidates.toSet() == setOf<ConflictValue>(ConflictValue.Text("Lò Văn Minh"), ConflictValue.Text("Quàng Thị Lan")))
    expect("each value says who wrote it", assigneeConflict?.values?.map { it.officer }?.toSet() == setOf("can-bo.lan", "can-bo.tuan"))
    expect("A sees the same conflict", a.conflicts(huong.id).any { it.field == "assignee" && it.values.size == 2 })
    expect("query: records with conflicts", a.queryApplications(ApplicationQuery(withConflicts = true)).items.map { it.id } == listOf(huong.id))

    // --- resolve, and the resolution travels ---
    val resolved = b.resolve("can-bo.tuan", huong.id, "assignee", ConflictValue.Text("Quàng Thị Lan"))
    expect("resolve returns the record", resolved is Record.Application && resolved.application.assignee == "Quàng Thị Lan")
    expect("no conflict left on B", b.conflicts(huong.id).isEmpty())
    b.syncNow()
    a.syncNow()
    expect("A has the resolution", a.getApplication(huong.id).assignee == "Quàng Thị Lan" && a.conflicts(huong.id).isEmpty())

    // --- history ---
    val history = a.history(huong.id)
    expect("history: created, two edits, the resolution", history.size == 4 && history.first().fields == listOf("created"))
    expect("history names officers and devices", history.map { it.officer }.toSet() == setOf("can-bo.lan", "can-bo.tuan") && history.map { it.deviceId }.toSet() == setOf(a.deviceId(), b.deviceId()))
    expect("history: assignee edited 3 times", history.count { "assignee" in it.fields } == 3)

    // --- workflow and lookups ---
    val inProgress = a.updateApplication("can-bo.lan", duc.id, ApplicationUpdate(status = ApplicationStatus.IN_PROGRESS, notes = "Đã chuyển bộ phận tư pháp"))
    expect("status moves along the workflow", inProgress.status == ApplicationStatus.IN_PROGRESS && inProgress.assignee == null)
    expectError<CommuneSyncException.Conflict>("in progress -> returned skips a step") {
        a.updateApplication("can-bo.lan", duc.id, ApplicationUpdate(status = ApplicationStatus.RETURNED))
    }
    expectError<CommuneSyncException.NotFound>("an unknown id") { a.getApplication("018f0000-0000-7000-8000-000000000000") }
    expectError<CommuneSyncException.NotFound>("a request read as an application") { a.getApplication(road.id) }
    expectError<CommuneSyncException.InvalidInput>("a malformed id") { a.getApplication("not-an-id") }
    expectError<CommuneSyncException.InvalidInput>("an unknown procedure") {
        a.createApplication("can-bo.lan", NewApplication(communeCode = commune, procedureCode = "9.999999", applicant = Applicant(name = "Vi Thị Mai")))
    }
    expectError<CommuneSyncException.InvalidInput>("a bad phone number") {
        a.updateApplication("can-bo.lan", huong.id, ApplicationUpdate(applicant = huong.applicant.copy(phone = "12")))
    }

    // --- status and background policy ---
    a.syncNow()
    val status = a.syncStatus()
    expect("status: enrolled, idle, nothing pending, a report", status.enrolled && !status.syncing && status.pendingChanges == 0uL && status.lastReport != null && status.lastError == null)
    val next = a.nextSyncAfter(false)
    expect("after a sync with nothing pending: in about an hour ($next)", next is SyncDecision.After && next.delayMs in 3_500_000uL..3_600_000uL)
    expect("the free policy function: never synced -> run", nextSyncAfter(PolicyInput(0uL, null, 0u, false, 0L, null), null) is SyncDecision.Run)

    // --- progress callbacks ---
    expect("progress callbacks arrived", waitFor(10) { events.any { it is EngineEvent.Progress && it.progress.phase == SyncPhase.DONE } })
    expect("progress counted pushed records", events.filterIsInstance<EngineEvent.Progress>().any { it.progress.pushedDocs == 3uL })
    expect("change events: local edits with ids", events.filterIsInstance<EngineEvent.Changed>().any { it.change.origin == ChangeOrigin.LOCAL && it.change.recordIds == listOf(huong.id) })
    expect("change events: pulled records", events.filterIsInstance<EngineEvent.Changed>().any { it.change.origin == ChangeOrigin.SYNC && it.change.changedCount > 0uL })
    collecting.cancel()
    val direct = Collections.synchronizedList(mutableListOf<SyncProgress>())
    val handle = a.observe(object : SyncObserver {
        override fun onProgress(progress: SyncProgress) { direct += progress }
        override fun onChanged(event: ChangeEvent) { throw IllegalStateException("an observer that throws") }
        override fun onWiped(event: WipeEvent) {}
    })
    a.updateApplication("can-bo.lan", duc.id, ApplicationUpdate(notes = "Đã chuyển bộ phận tư pháp, chờ xác minh"))
    a.syncNow()
    expect("a throwing observer breaks nothing and still gets progress", waitFor(10) { direct.any { it.phase == SyncPhase.DONE && it.pushedDocs == 1uL } })
    expect("observer handle is active", handle.isActive())
    handle.stop()
    expect("observer handle stopped", !handle.isActive())

    // --- reopening with the stored credential; wrong key; someone else's credential ---
    a.close()
    a = Engine.open(config("tablet-a", credA))
    expect("reopened: records are there", a.getApplication(huong.id).assignee == "Quàng Thị Lan")
    expect("reopened: syncs with the stored credential", a.syncNow().requests >= 1uL)
    expectError<CommuneSyncException.Storage>("the wrong key") {
        Engine.open(config("tablet-a").copy(encryptionKey = ByteArray(32) { 9 }))
    }
    expectError<CommuneSyncException.InvalidInput>("another device's credential") {
        Engine.open(config("tablet-a", credB))
    }

    // --- revocation ---
    File(hooks, "revoke-request.tmp").writeText(b.deviceId())
    File(hooks, "revoke-request.tmp").renameTo(File(hooks, "revoke-request"))
    expect("the operator revoked B", waitFor(30) { File(hooks, "revoke-done").exists() })
    expectErrorAsync<CommuneSyncException.Revoked>("B syncs after revocation") { b.syncNow() }
    expect("revoked: the policy says stop", b.nextSyncAfter(false) is SyncDecision.Stop)
    expect("revoked: the status says so", b.syncStatus().lastErrorKind == ErrorKind.REVOKED && b.syncStatus().consecutiveFailures == 1u)
    expect("A still syncs", a.syncNow().requests >= 1uL)

    // --- the README's example, run for real ---
    val fromReadme = org.communesync.readme.intakeAndSync(a, commune)
    expect("the README example takes an application and syncs it", fromReadme.pushedDocs == 1uL)
    a.close()
    b.close()

    integrityStory(env("COMMUNESYNC_SCRIPTED_URL"), commune, work, key)
}

/** Quarantine, "upgrade required" and a wipe order, against the scripted server. */
private suspend fun integrityStory(scripted: String, commune: String, work: File, key: ByteArray) {
    fun config(name: String, appVersion: String? = null, credential: DeviceCredential? = null) = EngineConfig(
        storePath = File(work, "$name.db").path,
        encryptionKey = key,
        serverUrl = scripted,
        credential = credential,
        appVersion = appVersion,
    )
    fun request(communeCode: String, description: String, notes: String = "") = NewCitizenRequest(
        communeCode = communeCode,
        category = "road",
        description = description,
        village = "Bản Phăng",
        reporterName = "Lò Văn Khánh",
        reporterContact = "",
        notes = notes,
    )

    // --- quarantine: records of another commune typed offline before enrollment ---
    val q = Engine.open(config("tablet-q"))
    val stray = q.createCitizenRequest("can-bo.lan", request("DB-OTHER", "Đường vào bản bị sạt lở"))
    val twice = q.createCitizenRequest("can-bo.lan", request("DB-OTHER", "Đường vào bản bị sạt lở"))
    q.enroll("commune:$commune", "Máy tính bảng Q")
    expect("enrollment records the commune", q.enrolledCommune() == commune)
    val atEnrollment = q.quarantined()
    expect(
        "records of another commune are set aside at enrollment",
        atEnrollment.map { it.recordId }.toSet() == setOf(stray.id, twice.id) &&
            atEnrollment.all { it.code == "not_yours" && it.direction == QuarantineDirection.OUTGOING && it.attempts == 1u },
    )
    expectError<CommuneSyncException.InvalidInput>("creating for another commune once enrolled") {
        q.createCitizenRequest("can-bo.lan", request("DB-OTHER", "Cầu treo hỏng"))
    }
    val fixMe = q.createCitizenRequest("can-bo.lan", request(commune, "Đèn đường hỏng", notes = "#refuse"))
    val fine = q.createCitizenRequest("can-bo.lan", request(commune, "Cống thoát nước tắc"))
    val first = q.syncNow()
    expect(
        "the server refused one record and the sync went on ($first)",
        first.refused == 1uL && first.pushedDocs == 1uL && first.quarantined == 3uL && first.pendingDocs == 0uL,
    )
    expect("its reason is listed", q.quarantined().any { it.recordId == fixMe.id && it.code == "invalid_field" && it.message.isNotBlank() })
    expect("the status counts it", q.syncStatus().quarantined == 3uL && q.syncStatus().pendingChanges == 0uL)
    q.updateCitizenRequest("can-bo.lan", fixMe.id, CitizenRequestUpdate(notes = "Đã kiểm tra"))
    expect("an edit of a refused record is not pushed behind the app's back", q.syncNow().pushedDocs == 0uL)
    expect("retry puts it back in the outbox", q.retryQuarantined(fixMe.id))
    val retried = q.syncNow()
    expect("and it goes", retried.pushedDocs == 1uL && retried.refused == 0uL)
    val copy = q.copyQuarantinedAsNew("can-bo.minh", stray.id)
    expect(
        "copy as new: this commune, the same content",
        copy is Record.CitizenRequest && copy.request.communeCode == commune && copy.request.description == stray.description && copy.request.id != stray.id,
    )
    expectError<CommuneSyncException.NotFound>("the original is gone") { q.getCitizenRequest(stray.id) }
    q.discardQuarantined("can-bo.minh", twice.id, "nhập trùng")
    expect("nothing left in the quarantine", q.quarantined().isEmpty())
    val audit = q.auditLog()
    expect(
        "the audit log says who did what and why",
        audit.map { it.action } == listOf(AuditAction.COPIED_AS_NEW, AuditAction.DISCARDED) &&
            audit.all { it.officer == "can-bo.minh" } && audit[1].reason == "nhập trùng" && audit[0].replacementId == (copy as Record.CitizenRequest).request.id,
    )
    expectError<CommuneSyncException.NotFound>("discarding what is not quarantined") { q.discardQuarantined("can-bo.minh", fine.id, "x") }
    expect("the copy goes", q.syncNow().pushedDocs == 1uL)
    expect("history has the server's receive time", q.history(fine.id).first().serverReceivedAt != null)
    q.close()

    // --- an app too old for the server ---
    val u = Engine.open(config("tablet-u", appVersion = "1.0"))
    val credU = u.enroll("upgrade", "Máy tính bảng U")
    expectErrorAsync<CommuneSyncException.UpgradeRequired>("an old app syncs") { u.syncNow() }
    expect("upgrade required: the policy says stop", u.nextSyncAfter(false) is SyncDecision.Stop)
    expect("upgrade required: the status says so", u.syncStatus().upgradeRequired && u.syncStatus().lastErrorKind == ErrorKind.UPGRADE_REQUIRED)
    u.close()
    val same = Engine.open(config("tablet-u", appVersion = "1.0", credential = credU))
    expect("restarted, the same version still stops", same.nextSyncAfter(false) is SyncDecision.Stop)
    same.close()
    val upgraded = Engine.open(config("tablet-u", appVersion = "1.1", credential = credU))
    expect("an upgraded app schedules again", upgraded.nextSyncAfter(false) !is SyncDecision.Stop)
    upgraded.close()

    // --- a wipe order ---
    val w = Engine.open(config("tablet-w"))
    val seen = Collections.synchronizedList(mutableListOf<EngineEvent>())
    val scope = kotlinx.coroutines.CoroutineScope(Dispatchers.Default)
    val watching = w.events().onEach { seen += it }.launchIn(scope)
    w.enroll("wipe", "Máy tính bảng W")
    val kept = w.createCitizenRequest("can-bo.lan", request(commune, "Hồ sơ trên máy bị mất"))
    expectErrorAsync<CommuneSyncException.Wiped>("a wiped device syncs") { w.syncNow() }
    val files = listOf("", "-wal", "-shm").map { File(work, "tablet-w.db$it") }
    expect("the store's files are gone", files.none { it.exists() })
    expect("the app was told", waitFor(10) { seen.any { it is EngineEvent.Wiped && it.wipe.deviceId == w.deviceId() } })
    expectError<CommuneSyncException.Wiped>("nothing works after a wipe") { w.getCitizenRequest(kept.id) }
    expect("a wiped engine schedules nothing", w.nextSyncAfter(false) is SyncDecision.Stop)
    watching.cancel()
    w.close()
}
