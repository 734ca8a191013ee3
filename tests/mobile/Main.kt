// The tablet flow through the generated Kotlin bindings, on the JVM, with coroutines.
// Usage: MainKt HTTPS_URL WSS_URL CODE FINGERPRINT REPLICA_DIR CONTROL_DIR
// Prints `MIDSYNC` when a sync is under way and waits for CONTROL_DIR/resumed (the test restarts
// the server meanwhile); prints {"entries": [...ids...]} on success.
import java.io.File
import java.time.Instant
import java.util.concurrent.ConcurrentLinkedQueue
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.async
import kotlinx.coroutines.delay
import kotlinx.coroutines.launch
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withContext
import kotlinx.coroutines.withTimeout
import uniffi.rounds_mobile.*

/** The app's keystore stand-in: enrol hands the token over once. */
class Keychain : TokenStore {
    @Volatile var token: String? = null
    override fun save(token: String) {
        check(this.token == null) { "token saved twice" }
        this.token = token
    }
}

class Observer(private val replica: () -> RoundsReplica) : ChangeObserver {
    val changes = ConcurrentLinkedQueue<DocumentChange>()
    val states = ConcurrentLinkedQueue<SyncState>()
    override fun onChanged(changes: List<DocumentChange>) {
        // The replica's lock is free here: a screen may refresh from the callback.
        check(replica().patients().isNotEmpty())
        this.changes.addAll(changes)
    }
    override fun onSyncState(state: SyncState) {
        states.add(state)
    }
}

/** Blocks the first progress report until the test has restarted the server. */
class RestartMidSync(private val control: File) : SyncProgress {
    @Volatile var paused = false
    override fun onProgress(done: UInt, total: UInt) {
        if (paused) return
        paused = true
        println("MIDSYNC")
        System.out.flush()
        val resumed = File(control, "resumed")
        val until = System.currentTimeMillis() + 60_000
        while (!resumed.exists()) {
            check(System.currentTimeMillis() < until) { "the test never restarted the server" }
            Thread.sleep(50)
        }
    }
}

fun reading(patient: String, bpm: Double, measuredAt: Instant?) =
    ReadingInput(patient, ReadingKind.HEART_RATE, null, null, bpm, "/min", "cuff-07",
        measuredAt = measuredAt)

fun main(args: Array<String>) = runBlocking {
    val https = args[0]
    val wss = args[1]
    val code = args[2]
    val fingerprint = args[3]
    val dir = args[4]
    val control = File(args[5])
    // The Android app's start-up call, through the same JNI entry point (a no-op off Android).
    System.load(File(System.getProperty("jna.library.path"), "librounds_mobile.so").path)
    check(org.rounds.mobile.RoundsPlatform.init(Any())) { "RoundsPlatform.init" }
    val replica = RoundsReplica.open(dir, ByteArray(32) { 9 })
    val ids = ConcurrentLinkedQueue<String>()

    // Enrol with the one-time code: the token goes to the keychain, the replica joins.
    val keychain = Keychain()
    val enrolled = withContext(Dispatchers.IO) {
        replica.enrol(https, code, "tablet-kt", fingerprint, keychain)
    }
    check(enrolled.facility == "sunnyvale") { "enrolled: $enrolled" }
    val token = checkNotNull(keychain.token)
    try {
        replica.enrol(https, code, "tablet-kt-2", fingerprint, Keychain())
        error("a used code was accepted twice")
    } catch (e: RoundsException.Refused) {
        check(e.document.isEmpty() && e.detail.contains("enrolment")) { "refused: $e" }
    }

    val observer = Observer { replica }
    replica.setObserver(observer)

    // The first sync (the roster and every resident) while another coroutine writes: the
    // writes do not wait for the sync.
    val writer = launch(Dispatchers.IO) {
        // Wait for the roster, then log against it during the sync.
        while (replica.patients().isEmpty()) delay(5)
        repeat(20) { i ->
            val taken = Instant.now().minusSeconds(60L * (i + 1))
            ids.add(replica.recordReading(reading("p-007", 60.0 + i, taken)))
        }
    }
    val first = withContext(Dispatchers.IO) { replica.sync(wss, token, fingerprint, null) }
    writer.join()
    check(replica.patients().size == 20) { "patients: ${replica.patients().size}" }
    check(observer.states.first() is SyncState.Started) { "states: ${observer.states}" }
    check(observer.states.last() is SyncState.Finished) { "states: ${observer.states}" }
    check(observer.changes.any { it.kind == DocumentKind.FACILITY }) { "changes: ${observer.changes}" }
    check(first.documents > 20u) { "first: $first" }

    // Time, a consent, readings with the time the device measured them.
    val timer = replica.startTimer("p-002", "rn-okafor", Program.CCM)
    check(replica.runningTimers().map { it.id } == listOf(timer.id))
    val entry = replica.stopTimer(timer.id, true, "call from the Kotlin flow")
    ids.add(entry.id)
    check(!entry.startedAt.isAfter(entry.endedAt))
    val monthChanges = observer.changes.filter { it.kind == DocumentKind.PATIENT_MONTH && it.patient == "p-002" }
    check(monthChanges.any { it.month == entry.month }) { "changes: ${observer.changes}" }
    replica.recordConsent(ConsentInput("p-012", Program.CCM, entry.month + "-01", "verbal", "rn-okafor"))
    try {
        replica.recordReading(reading("p-007", 72.0, Instant.now().plusSeconds(86_400)))
        error("a reading from tomorrow was accepted")
    } catch (e: RoundsException.Invalid) {
        check(e.field == "measured_at") { "invalid: $e" }
    }
    try {
        replica.recordReading(ReadingInput("p-007", ReadingKind.SPO2, null, null, 140.0, "%", null,
            source = ReadingSource.MANUAL))
        error("an impossible reading was accepted")
    } catch (e: RoundsException.Invalid) {
        check(e.field == "value") { "invalid: $e" }
    }
    val summary = replica.patientMonthSummary("p-002", entry.month)
    check(summary.ccmMinutes >= 0u)

    // A sync the server's restart interrupts: it reconnects and finishes, nothing lost.
    repeat(5) { i -> ids.add(replica.recordReading(reading("p-008", 80.0 + i, null))) }
    val restart = RestartMidSync(control)
    val survived = withContext(Dispatchers.IO) {
        withTimeout(120_000) { replica.sync(wss, token, fingerprint, restart) }
    }
    check(restart.paused) { "no progress was reported" }
    check(survived.unsent == 0u && survived.attempts >= 2u) { "after the restart: $survived" }

    // Cancelling the coroutine cancels the sync.
    val cancelled = async(Dispatchers.IO) {
        try {
            replica.sync("wss://127.0.0.1:9/sync", token, fingerprint, null)
            "finished"
        } catch (e: RoundsException) {
            e.toString()
        }
    }
    delay(200)
    cancelled.cancel()
    withTimeout(5_000) { cancelled.join() }
    check(cancelled.isCancelled)

    val last = withContext(Dispatchers.IO) { replica.sync(wss, token, fingerprint, null) }
    check(last.unsent == 0u) { "last: $last" }
    replica.setObserver(null)
    replica.close()
    println("{\"entries\":[${ids.joinToString(",") { "\"$it\"" }}]}")
}
