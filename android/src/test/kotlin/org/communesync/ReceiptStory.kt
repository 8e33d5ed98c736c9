// Receipts through the bindings on a plain JVM, against the `communesync serve` of
// scripts/test.d/20-bindings.sh: two tablets enroll (registering their keys), one takes a dossier
// and issues its signed receipt (payload and PDF), both sync (the key list comes with it), the
// other verifies the receipt offline, and an altered payload is refused with its reason.
// The same story runs in Swift (ios/Tests/CommuneSyncTests/ReceiptStory.swift).
package org.communesync.receipt

import java.io.File
import kotlin.system.exitProcess
import kotlinx.coroutines.runBlocking
import org.communesync.*

private var checks = 0
private val failures = mutableListOf<String>()

private fun expect(what: String, ok: Boolean) {
    checks++
    if (ok) println("ok   $what") else { println("FAIL $what"); failures += what }
}

private fun env(name: String): String = System.getenv(name) ?: error("$name is not set")

fun main() {
    try {
        runBlocking { story() }
    } catch (e: Throwable) {
        e.printStackTrace()
        failures += "unexpected ${e::class.simpleName}: ${e.message}"
    }
    if (failures.isNotEmpty()) {
        println("kotlin receipt story: ${failures.size} of $checks checks FAILED:")
        failures.forEach { println("  - $it") }
        exitProcess(1)
    }
    println("kotlin receipt story: all $checks checks passed")
    exitProcess(0)
}

private suspend fun story() {
    val commune = env("COMMUNESYNC_COMMUNE")
    val work = File(env("COMMUNESYNC_WORK_DIR")).apply { mkdirs() }
    fun config(name: String) = EngineConfig(
        storePath = File(work, "$name.db").path,
        encryptionKey = ByteArray(32) { (it * 3 + 5).toByte() },
        serverUrl = env("COMMUNESYNC_SERVER_URL"),
        credential = null,
    )
    val a = Engine.open(config("receipt-a"))
    val b = Engine.open(config("receipt-b"))
    a.enroll(env("COMMUNESYNC_CODE_A"), "Máy A")
    b.enroll(env("COMMUNESYNC_CODE_B"), "Máy B")
    a.syncNow()
    val app = a.createApplication(
        "can-bo.lan",
        NewApplication(
            communeCode = commune,
            procedureCode = "1.001193",
            applicant = Applicant(name = "Nguyễn Thị Hương", village = "Bản Phăng"),
            documents = listOf(ReceivedDocument(name = "Tờ khai đăng ký khai sinh", copies = 1u, original = true)),
        ),
    )
    val receipt = a.issueReceipt(app.id)
    expect("the QR payload fits (${receipt.payload.length} chars)",
        receipt.payload.length <= receiptPayloadMaxChars().toInt())
    expect("the receipt names the applicant", receipt.applicantName == "Nguyễn Thị Hương")
    expect("a reprint is the same receipt", a.issueReceipt(app.id) == receipt)
    val pdf = a.receiptPdf(app.id)
    expect("the PDF is a PDF (${pdf.size} bytes)", pdf.size > 1000 && String(pdf.copyOfRange(0, 5)) == "%PDF-")
    a.syncNow()
    b.syncNow()
    val verdict = b.verifyReceipt(receipt.payload)
    expect("B verifies A's receipt offline: ${verdict.code}", verdict.valid && verdict.receipt?.recordId == app.id)
    val altered = receipt.payload.toCharArray().also { it[40] = if (it[40] == '0') '1' else '0' }.concatToString()
    val refused = b.verifyReceipt(altered)
    expect("an altered receipt is refused: ${refused.code}",
        !refused.valid && (refused.code == "bad_signature" || refused.code == "malformed"))
    expect("A's history: signed by this device", a.history(app.id).all { it.signedByThisDevice })
}
