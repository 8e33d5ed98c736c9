// Dossier numbers through the Kotlin bindings, against the real `communesync serve` started by
// scripts/test.d/20-bindings.sh: two tablets of one commune get blocks of numbers at their first
// sync, number applications offline, and find each other's applications by number (exact and by
// text search) after syncing. The same story runs in Swift (ios/Tests/CommuneSyncTests/DossierNumberTests.swift).
// Run: java -Djna.library.path=<dir of libcommunesync_ffi.so> -cp ... org.communesync.DossierNumberStory
@file:JvmName("DossierNumberStoryKt")

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

object DossierNumberStory {
    @JvmStatic
    fun main(args: Array<String>) {
        try {
            runBlocking { story() }
        } catch (e: Throwable) {
            e.printStackTrace()
            failures += "unexpected ${e::class.simpleName}: ${e.message}"
        }
        if (failures.isNotEmpty()) {
            println("kotlin numbers story: ${failures.size} of $checks checks FAILED:")
            failures.forEach { println("  - $it") }
            exitProcess(1)
        }
        println("kotlin numbers story: all $checks checks passed")
        exitProcess(0)
    }
}

private suspend fun story() {
    val server = env("COMMUNESYNC_SERVER_URL")
    val commune = env("COMMUNESYNC_COMMUNE")
    val work = File(env("COMMUNESYNC_WORK_DIR")).apply { mkdirs() }
    val key = ByteArray(32) { (it * 5 + 3).toByte() }
    fun config(name: String) = EngineConfig(
        storePath = File(work, "$name.db").path,
        encryptionKey = key,
        serverUrl = server,
        credential = null,
    )
    val a = Engine.open(config("numbers-a"))
    val b = Engine.open(config("numbers-b"))
    a.enroll(env("COMMUNESYNC_NUMBER_CODE_A"), "Máy tính bảng số A")
    b.enroll(env("COMMUNESYNC_NUMBER_CODE_B"), "Máy tính bảng số B")
    a.syncNow()
    b.syncNow()

    val state = a.dossierNumberState()
    expect("the first sync granted a block", state.blocks == 1u && state.remaining > 0uL)
    expect("the default format", state.format == "{agency}-{yymmdd}-{seq:6}")

    suspend fun intake(engine: Engine, name: String) = engine.createApplication(
        "can-bo.lan",
        NewApplication(communeCode = commune, procedureCode = "1.001193", applicant = Applicant(name = name)),
    )
    val huong = intake(a, "Lò Thị Hương")
    val pom = intake(b, "Lò Văn Pọm")
    val shape = Regex("""[A-Z0-9]+-\d{6}-\d{6}""")
    val numberA = huong.dossierNumber ?: ""
    val numberB = pom.dossierNumber ?: ""
    expect("offline intake gives a number of the block: $numberA", shape.matches(numberA) && !huong.dossierNumberFallback)
    expect("two tablets, two numbers", shape.matches(numberB) && numberA != numberB)
    expect("the state counts the number used", a.dossierNumberState().remaining == state.remaining - 1uL)
    expect("found by number on its tablet", a.applicationByNumber(numberA)?.id == huong.id)
    expect("an unknown number finds nothing", a.applicationByNumber("KHONG-000000-000000") == null)

    a.syncNow()
    b.syncNow()
    a.syncNow()
    expect("B finds A's dossier by number", b.applicationByNumber(numberA)?.id == huong.id)
    expect("A finds B's dossier by number", a.applicationByNumber(numberB)?.applicant?.name == "Lò Văn Pọm")
    expect("the number is found by text search", b.search(numberA, 5u).any { it.id == huong.id })
    expect("the number is on the record as read", b.getApplication(huong.id).dossierNumber == numberA)
}
