// The HTTPS story of the bindings on a plain JVM, against the scripted server of
// scripts/test.d/20-bindings.sh serving HTTPS with a certificate from a test CA
// (tests/src/bin/scripted_server.rs --tls): the province's CA given in EngineConfig.trustedCaPem
// makes enrollment and sync work with no platform hook; another CA, or none (the bundled web
// roots), gives CommuneSyncException.UntrustedServer, not Offline, and the background policy
// waits instead of retrying at once. The same story runs in Swift
// (ios/Tests/CommuneSyncTests/HttpsStory.swift).
// Run: java -Djna.library.path=<dir of libcommunesync_ffi.so> -cp ... org.communesync.https.HttpsStoryKt
package org.communesync.https

import java.io.File
import kotlin.system.exitProcess
import kotlinx.coroutines.runBlocking
import org.communesync.CommuneSyncException
import org.communesync.Engine
import org.communesync.EngineConfig
import org.communesync.ErrorKind
import org.communesync.NewCitizenRequest
import org.communesync.SyncDecision

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
        println("kotlin https story: ${failures.size} of $checks checks FAILED:")
        failures.forEach { println("  - $it") }
        exitProcess(1)
    }
    println("kotlin https story: all $checks checks passed")
    exitProcess(0)
}

private suspend fun story() {
    val server = env("COMMUNESYNC_SCRIPTED_HTTPS_URL")
    val provinceCa = File(env("COMMUNESYNC_TEST_CA")).readText()
    val otherCa = File(env("COMMUNESYNC_OTHER_CA")).readText()
    val commune = env("COMMUNESYNC_COMMUNE")
    val work = File(env("COMMUNESYNC_WORK_DIR"), "https").apply { mkdirs() }
    val key = ByteArray(32) { (it * 5 + 3).toByte() }
    fun config(name: String, trusted: List<String>) = EngineConfig(
        storePath = File(work, "$name.db").path,
        encryptionKey = key,
        serverUrl = server,
        trustedCaPem = trusted,
    )

    // --- the province's CA: enrollment and sync over HTTPS ---
    val t = Engine.open(config("tablet-tls", listOf(provinceCa)))
    t.enroll("commune:$commune", "Máy tính bảng TLS")
    t.createCitizenRequest(
        "can-bo.lan",
        NewCitizenRequest(
            communeCode = commune,
            category = "road",
            description = "Cầu treo bản Phăng bị hỏng",
            village = "Bản Phăng",
            reporterName = "Lò Văn Khánh",
            reporterContact = "",
            notes = "",
        ),
    )
    val report = t.syncNow()
    expect("over HTTPS with the province's CA: the record is pushed", report.pushedDocs == 1uL)

    // --- another CA, and no CA at all (the bundled web roots): not trusted, not offline ---
    for ((name, trusted) in listOf("another CA" to listOf(otherCa), "the web roots" to emptyList())) {
        val u = Engine.open(config("tablet-untrusted-${trusted.size}", trusted))
        try {
            u.enroll("commune:$commune", "Máy tính bảng")
            expect("trusting $name: enrollment must fail", false)
        } catch (e: CommuneSyncException) {
            expect(
                "trusting $name -> ${e::class.simpleName}: ${e.message}",
                e is CommuneSyncException.UntrustedServer && e.message!!.contains("not signed by a trusted authority"),
            )
        }
    }
    // The same through a sync of an enrolled store whose trust is wrong: the status says so and
    // the policy waits (an hour), it does not stop nor retry at once.
    val credential = t.credential()!!
    t.close()
    val wrong = Engine.open(config("tablet-tls", listOf(otherCa)).copy(credential = credential))
    try {
        wrong.syncNow()
        expect("a sync trusting another CA must fail", false)
    } catch (e: CommuneSyncException) {
        expect("a sync trusting another CA -> ${e::class.simpleName}", e is CommuneSyncException.UntrustedServer)
    }
    expect("the status records UntrustedServer", wrong.syncStatus().lastErrorKind == ErrorKind.UNTRUSTED_SERVER)
    val next = wrong.nextSyncAfter(false)
    expect("the policy waits an hour: $next", next is SyncDecision.After && next.delayMs >= 3_600_000uL)
}
