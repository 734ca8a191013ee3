// The tablet flow through the generated Kotlin bindings, on the JVM.
// Usage: MainKt URL TOKEN FINGERPRINT REPLICA_DIR — prints {"interaction": id, "reading": id}.
import uniffi.rounds_mobile.*

class Progress : SyncProgress {
    val calls = mutableListOf<Pair<UInt, UInt>>()
    override fun onProgress(done: UInt, total: UInt) {
        calls.add(done to total)
    }
}

fun main(args: Array<String>) {
    val (url, token, fingerprint, dir) = args
    val replica = RoundsReplica.open(dir, ByteArray(32) { 9 })
    replica.joinFacility("sunnyvale")
    val progress = Progress()
    val first = replica.sync(url, token, fingerprint, progress)
    check(first.unsent == 0u) { "unsent after first sync: $first" }
    check(progress.calls.isNotEmpty() && progress.calls.last().first == progress.calls.last().second)
    check(replica.patients().size == 20)

    val timer = replica.startTimer("p-002", "rn-okafor", Program.CCM)
    check(replica.runningTimers().map { it.id } == listOf(timer.id))
    val entry = replica.stopTimer(timer.id, true, "call from the Kotlin flow")
    val reading = replica.recordReading(ReadingInput("p-007", ReadingKind.HEART_RATE, null, null, 72.0, "/min", "cuff-07", false))
    try {
        replica.recordReading(ReadingInput("p-007", ReadingKind.SPO2, null, null, 140.0, "%", null, true))
        error("an impossible reading was accepted")
    } catch (e: RoundsException.Invalid) {
        check(e.message?.contains("value") == true) { "message: ${e.message}" }
    }
    val summary = replica.patientMonthSummary("p-002", entry.startedAt.substring(0, 7))
    check(summary.ccmMinutes >= 0u)
    val second = replica.sync(url, token, fingerprint, null)
    check(second.unsent == 0u) { "unsent after second sync: $second" }
    // Recovery after a refusal: reset the month, sync the server's copy, write back what it lacks.
    val monthDoc = replica.patientMonthDocument("p-002", entry.startedAt.substring(0, 7))
    check(replica.resetDocument(monthDoc) >= 1u)
    check(replica.pendingRelogs() == listOf(monthDoc))
    replica.sync(url, token, fingerprint, null)
    val relogged = replica.applyRelogs()
    check(relogged.written == 0u && relogged.dropped == 0u) { "relogged: $relogged" }
    check(replica.pendingRelogs().isEmpty())
    // A death reported at the bedside: a write-once event the server takes.
    val death = replica.reportDeath("p-003", "2026-11-20", "rn-lee")
    check(death.length == 36) { "report id: $death" }
    val third = replica.sync(url, token, fingerprint, null)
    check(third.unsent == 0u) { "unsent after recovery: $third" }
    replica.close()
    println("{\"interaction\":\"${entry.id}\",\"reading\":\"$reading\"}")
}
