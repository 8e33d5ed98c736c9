// The procedure catalogue and dossier forms through the Kotlin bindings, against the real
// `communesync serve` started by scripts/test.d/20-bindings.sh, which published catalogue version 1
// (exported to COMMUNESYNC_CATALOGUE_FILE) and then version 2 (a new procedure, a new version of
// the death registration form). A tablet installs the version 1 file before its first sync,
// searches "khai sinh" without diacritics, takes a dossier with form values (a form breaking its
// schema refused), syncs and receives the delta: version 2, the new procedure, the new form; its
// dossier keeps the version it pinned. The same story runs in Swift
// (ios/Tests/CommuneSyncTests/CatalogueStory.swift).
// Run: java -Djna.library.path=<dir of libcommunesync_ffi.so> -cp ... org.communesync.CatalogueStory
@file:JvmName("CatalogueStoryKt")

package org.communesync

import java.io.File
import kotlin.system.exitProcess
import kotlinx.coroutines.runBlocking

private var checks = 0
private val failures = mutableListOf<String>()

private fun expect(what: String, ok: Boolean) {
    checks++
    if (ok) println("ok   $what") else { println("FAIL $what"); failures += what }
}

private fun env(name: String): String = System.getenv(name) ?: error("$name is not set")

object CatalogueStory {
    @JvmStatic
    fun main(args: Array<String>) {
        try {
            runBlocking { story() }
        } catch (e: Throwable) {
            e.printStackTrace()
            failures += "unexpected ${e::class.simpleName}: ${e.message}"
        }
        if (failures.isNotEmpty()) {
            println("kotlin catalogue story: ${failures.size} of $checks checks FAILED:")
            failures.forEach { println("  - $it") }
            exitProcess(1)
        }
        println("kotlin catalogue story: all $checks checks passed")
        exitProcess(0)
    }
}

private suspend fun story() {
    val commune = env("COMMUNESYNC_COMMUNE")
    val work = File(env("COMMUNESYNC_WORK_DIR")).apply { mkdirs() }
    val engine = Engine.open(EngineConfig(
        storePath = File(work, "catalogue.db").path,
        encryptionKey = ByteArray(32) { (it * 7 + 1).toByte() },
        serverUrl = env("COMMUNESYNC_SERVER_URL"),
        credential = null,
    ))

    // Before the first sync: the exported file of version 1.
    val installed = engine.installCatalogueFile(File(env("COMMUNESYNC_CATALOGUE_FILE")).readText())
    expect("the file installs its procedures ($installed)", installed == 3uL)
    expect("the file's version is held", engine.catalogueVersion() == 1uL)
    val found = engine.searchProcedures("khai sinh", 10u)
    expect("\"khai sinh\" finds \"Đăng ký khai sinh\"", found.firstOrNull()?.name == "Đăng ký khai sinh")

    // A dossier with its form, offline.
    val death = engine.procedureDetails("1.001022")
    expect("the form of version 1", death.version == 1uL && death.form.size == 2)
    val new = engine.prefilledApplication(commune, "1.001022").copy(applicant = Applicant(name = "Lò Văn Pọm"))
    val form = listOf(
        FormEntry("deceased_name", FormValue.Text("Lò Văn Sáng")),
        FormEntry("death_date", FormValue.Date("2026-11-30")),
    )
    try {
        engine.createDossier("can-bo.lan", new, form.take(1))
        expect("a form without its required date is refused", false)
    } catch (e: CommuneSyncException.InvalidInput) {
        expect("a form without its required date is refused: ${e.message}", e.message?.contains("death_date") == true)
    }
    val dossier = engine.createDossier("can-bo.lan", new, form)
    expect("the dossier pins version 1", engine.dossierForm(dossier.id).procedureVersion == 1uL)

    // The sync brings the delta to version 2.
    engine.enroll(env("COMMUNESYNC_CATALOGUE_CODE"), "Máy tính bảng danh mục")
    val report = engine.syncNow()
    expect("the dossier is accepted (${report.refused} refused)", report.refused == 0uL)
    expect("version 2 is held", engine.catalogueVersion() == 2uL)
    expect("the new procedure is found", engine.searchProcedures("dang ky lai khai sinh", 10u).any { it.code == "1.000656" })
    expect("the new version of the form", engine.procedureDetails("1.001022").version == 2uL)
    val kept = engine.dossierForm(dossier.id)
    expect("the dossier keeps version 1 and its values", kept.procedureVersion == 1uL && kept.values.size == 2)
    engine.close()
}
