// The generated Kotlin bindings on the JVM (JNA + kotlinx-coroutines), against a real node over
// QUIC: what an Android app does, minus Android. `cargo xtask test-mobile` compiles this with
// the generated `switchboard_mobile.kt` and runs it; it prints "N passed, M failed" and exits
// non-zero on a failure. Environment: SWITCHBOARD_BIN (the node binary), and the folder of
// libswitchboard_mobile on `jna.library.path`.

import java.io.File
import java.nio.file.Files
import java.util.concurrent.LinkedBlockingQueue
import java.util.concurrent.TimeUnit
import kotlinx.coroutines.runBlocking
import uniffi.switchboard_mobile.*

const val WAIT_SECONDS = 20L

class Node(dataDir: File) {
    val process: Process = ProcessBuilder(
        System.getenv("SWITCHBOARD_BIN") ?: "switchboard",
        "dev", "--data-dir", dataDir.path,
        "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
    ).redirectError(ProcessBuilder.Redirect.DISCARD).start()
    val port: Int
    val tokens = mutableListOf<String>()
    val cert: ByteArray

    init {
        val out = process.inputStream.bufferedReader()
        var found: Int? = null
        while (true) {
            val line = out.readLine() ?: error("the node exited before it was ready")
            Regex("""listening on 127\.0\.0\.1:(\d+)""").find(line)?.let { found = it.groupValues[1].toInt() }
            Regex("""SWITCHBOARD_TOKEN=(\S+)""").find(line)?.let { tokens.add(it.groupValues[1]) }
            if (line.startsWith("Ctrl-C stops the node")) break
        }
        port = found ?: error("no address in the node's banner")
        cert = File(dataDir, "cert.der").readBytes()
    }

    fun options(token: String) = ClientOptions(
        server = "localhost:$port",
        token = token,
        caCertificates = listOf(cert),
    )

    fun stop() {
        process.destroy() // SIGTERM: the node drains and exits
        if (!process.waitFor(WAIT_SECONDS, TimeUnit.SECONDS)) process.destroyForcibly()
    }
}

class Events : EventListener {
    val queue = LinkedBlockingQueue<ClientEvent>()

    override fun onEvent(event: ClientEvent) {
        queue.put(event)
    }

    fun <T : ClientEvent> expect(what: String, pick: (ClientEvent) -> T?): T {
        val deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(WAIT_SECONDS)
        while (true) {
            val left = deadline - System.nanoTime()
            check(left > 0) { "no $what within ${WAIT_SECONDS}s" }
            val event = queue.poll(left, TimeUnit.NANOSECONDS) ?: continue
            pick(event)?.let { return it }
        }
    }

    fun message(): GroupMessage = expect("message") { it as? ClientEvent.Message }.message
}

fun chatOverQuic(node: Node): Unit = runBlocking {
    val aliceEvents = Events()
    val bobEvents = Events()
    val alice = connect(node.options(node.tokens[0]), aliceEvents)
    val bob = connect(node.options(node.tokens[1]), bobEvents)
    bobEvents.expect("Connected") { it as? ClientEvent.Connected }
    alice.join("general")
    bob.join("general")
    val receipt = alice.send("general", "hello from kotlin".toByteArray())
    check(receipt.seq == 1UL) { "seq ${receipt.seq}" }
    val m = bobEvents.message()
    check(m.sender == "alice" && String(m.body) == "hello from kotlin") { "got $m" }

    // Paused, bob misses two messages; resumed, he gets exactly those.
    bob.pause()
    bobEvents.expect("Disconnected") { it as? ClientEvent.Disconnected }
    alice.send("general", "one".toByteArray())
    alice.send("general", "two".toByteArray())
    bob.resume()
    val caughtUp = listOf(bobEvents.message(), bobEvents.message())
    check(caughtUp.map { it.seq } == listOf(2UL, 3UL)) { "caught up ${caughtUp.map { it.seq }}" }

    alice.shutdown()
    bob.shutdown()
}

fun typedErrors(node: Node): Unit = runBlocking {
    try {
        connect(node.options("sb1.not.valid"), Events())
        error("a bad token was accepted")
    } catch (e: SwitchboardException.Unauthorized) {
        check(e.code == 10.toUShort()) { "code ${e.code}" }
    }
    val alice = connect(node.options(node.tokens[0]), Events())
    try {
        alice.send("general", "not joined yet".toByteArray())
        error("a non-member could send")
    } catch (e: SwitchboardException.NotMember) {
        // expected
    }
    alice.shutdown()
}

fun main() {
    val tests: List<Pair<String, (Node) -> Unit>> =
        listOf("chat over QUIC" to ::chatOverQuic, "typed errors" to ::typedErrors)
    var passed = 0
    var failed = 0
    for ((name, test) in tests) {
        val dir = Files.createTempDirectory("sb-kotlin-").toFile()
        val node = Node(File(dir, "node"))
        try {
            test(node)
            println("test $name ... ok")
            passed++
        } catch (e: Throwable) {
            println("test $name ... FAILED: $e")
            e.printStackTrace()
            failed++
        } finally {
            node.stop()
            dir.deleteRecursively()
        }
    }
    println("$passed passed, $failed failed")
    if (failed > 0) kotlin.system.exitProcess(1)
}
