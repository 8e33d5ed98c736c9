// Attachments through the bindings on a plain JVM, against the `communesync serve` of
// scripts/test.d/20-bindings.sh: tablet A attaches a scan (bytes), a page (file) and a photo
// (prepared for 2G) to a dossier, syncs (records first, then the contents, with progress
// events); tablet B syncs, sees the references, opens the scan (downloaded on demand) with the
// same bytes; a removal reaches B. The same story runs in Swift
// (ios/Tests/CommuneSyncTests/AttachmentStory.swift).
package org.communesync.attachment

import java.io.File
import java.util.Base64
import java.util.concurrent.ConcurrentLinkedQueue
import kotlin.system.exitProcess
import kotlinx.coroutines.delay
import kotlinx.coroutines.runBlocking
import org.communesync.*

private var checks = 0
private val failures = mutableListOf<String>()

private fun expect(what: String, ok: Boolean) {
    checks++
    if (ok) println("ok   $what") else { println("FAIL $what"); failures += what }
}

private fun env(name: String): String = System.getenv(name) ?: error("$name is not set")

/** A 1x1 PNG: a valid image a camera could have written, small enough to inline. */
private const val PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="

fun main() {
    try {
        runBlocking { story() }
    } catch (e: Throwable) {
        e.printStackTrace()
        failures += "unexpected ${e::class.simpleName}: ${e.message}"
    }
    if (failures.isNotEmpty()) {
        println("kotlin attachment story: ${failures.size} of $checks checks FAILED:")
        failures.forEach { println("  - $it") }
        exitProcess(1)
    }
    println("kotlin attachment story: all $checks checks passed")
    exitProcess(0)
}

private suspend fun story() {
    val commune = env("COMMUNESYNC_COMMUNE")
    val work = File(env("COMMUNESYNC_WORK_DIR")).apply { mkdirs() }
    fun config(name: String) = EngineConfig(
        storePath = File(work, "$name.db").path,
        encryptionKey = ByteArray(32) { (it * 7 + 1).toByte() },
        serverUrl = env("COMMUNESYNC_SERVER_URL"),
        credential = null,
    )
    val a = Engine.open(config("attach-a"))
    val b = Engine.open(config("attach-b"))
    a.enroll(env("COMMUNESYNC_CODE_A"), "Máy A")
    b.enroll(env("COMMUNESYNC_CODE_B"), "Máy B")
    a.syncNow()
    val app = a.createApplication(
        "can-bo.lan",
        NewApplication(
            communeCode = commune,
            procedureCode = "1.001193",
            applicant = Applicant(name = "Lò Văn Minh", village = "Bản Phăng"),
            documents = listOf(ReceivedDocument(name = "CCCD", copies = 1u, original = false)),
        ),
    )
    a.setAttachmentSettings(a.attachmentSettings().copy(metered = false))
    val seen = ConcurrentLinkedQueue<AttachmentProgress>()
    val watch = a.watchAttachmentProgress(object : AttachmentProgressListener {
        override fun onAttachmentProgress(progress: AttachmentProgress) {
            seen.add(progress)
        }
    })

    val scan = ByteArray(200_000) { (it * 31 % 241).toByte() }
    val card = a.attachBytes(
        "can-bo.lan", app.id,
        NewAttachment(mime = "application/pdf", category = AttachmentCategory.IDENTITY_CARD,
            caption = "CCCD mặt trước", document = "CCCD", page = 1u),
        scan,
    )
    expect("attached: its size, on this tablet, not yet on the server",
        card.size == 200_000uL && card.onDevice && !card.onServer && card.document == "CCCD")
    val png = File(work, "page.png").apply { writeBytes(Base64.getDecoder().decode(PNG)) }
    val page = a.attachFile(
        "can-bo.lan", app.id,
        NewAttachment(mime = "image/png", category = AttachmentCategory.DOCUMENT, caption = "Trang 2", page = 2u),
        png.path,
    )
    val photos = a.attachPhoto(
        "can-bo.lan", app.id,
        NewAttachment(mime = "image/jpeg", category = AttachmentCategory.PHOTO, caption = "Ảnh"),
        png.path,
        PhotoOptions(grayscale = true),
    )
    expect("a photo is prepared as one JPEG", photos.size == 1 && photos[0].mime == "image/jpeg")
    expect("listed in the order attached",
        a.attachments(app.id).map { it.id } == listOf(card.id, page.id, photos[0].id))

    val report = a.syncNow()
    expect("the sync sent the record, then the three contents (${report.attachmentsCompleted})",
        report.pushedDocs >= 1uL && report.attachmentsCompleted == 3uL && report.attachmentError == null)
    expect("the contents are on the server", a.attachments(app.id).all { it.onServer })
    for (i in 0 until 300) {
        if (seen.any { it.sha256 == card.sha256 && it.doneBytes == it.totalBytes }) break
        delay(100)
    }
    expect("progress reached the card's size",
        seen.any { it.sha256 == card.sha256 && it.upload && it.doneBytes == 200_000uL && it.totalBytes == 200_000uL })
    watch.stop()

    b.syncNow()
    val onB = b.attachments(app.id)
    expect("B has the three references, no content yet", onB.size == 3 && onB.none { it.onDevice })
    val out = File(work, "card-on-b.pdf")
    val written = b.openAttachment(card.sha256, out.path)
    expect("B opens the card (downloaded on demand) with identical bytes",
        written == 200_000uL && out.readBytes().contentEquals(scan))
    expect("the card is now on B", b.attachments(app.id).first { it.id == card.id }.onDevice)
    val photoOnB = File(work, "photo-on-b.jpg")
    b.downloadAttachment(photos[0].sha256)
    b.openAttachment(photos[0].sha256, photoOnB.path)
    expect("B's photo is a JPEG of the prepared size",
        photoOnB.length() == photos[0].size.toLong() && photoOnB.readBytes().take(2) == listOf(0xFF.toByte(), 0xD8.toByte()))

    a.removeAttachment("can-bo.lan", app.id, page.id)
    a.syncNow()
    b.syncNow()
    expect("the removal reached B", b.attachments(app.id).map { it.id } == listOf(card.id, photos[0].id))
    try {
        a.setAttachmentSettings(a.attachmentSettings().copy(chunkSize = 1000u))
        expect("a chunk size of 1000 is refused", false)
    } catch (e: CommuneSyncException.InvalidInput) {
        expect("a chunk size of 1000 is refused", true)
    }
}
