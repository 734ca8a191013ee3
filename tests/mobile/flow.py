"""The tablet flow through the generated Python bindings (sync is a coroutine).
Usage: flow.py BINDINGS_DIR URL TOKEN FINGERPRINT REPLICA_DIR CONTROL_DIR
Prints `MIDSYNC` when a sync is under way and waits for CONTROL_DIR/resumed (the test restarts
the server meanwhile). Prints {"interaction": id, "reading": id, ...} on success."""
import asyncio
import datetime
import json
import os
import sys
import time

sys.path.insert(0, sys.argv[1])
import rounds_mobile as rm  # noqa: E402


async def main():
    url, token, fingerprint, replica_dir, control = sys.argv[2:7]
    replica = rm.RoundsReplica.open(replica_dir, bytes([7] * 32))
    replica.join_facility("sunnyvale")

    class Progress(rm.SyncProgress):
        def __init__(self):
            self.calls = []

        def on_progress(self, done, total):
            self.calls.append((done, total))


    progress = Progress()
    result = await replica.sync(url, token, fingerprint, progress)
    assert result.unsent == 0, result
    assert progress.calls and progress.calls[-1][0] == progress.calls[-1][1], progress.calls
    assert len(replica.patients()) == 20

    class Observer(rm.ChangeObserver):
        def __init__(self):
            self.changes = []
            self.states = []

        def on_changed(self, changes):
            # The lock is free here: a screen may query the replica at once.
            assert replica.patients()
            self.changes.extend(changes)

        def on_sync_state(self, state):
            self.states.append(state)


    observer = Observer()
    replica.set_observer(observer)
    timer = replica.start_timer("p-001", "rn-lee", rm.Program.CCM)
    assert [t.id for t in replica.running_timers()] == [timer.id]
    entry = replica.stop_timer(timer.id, True, "call from the Python flow")
    assert entry.program == rm.Program.CCM and entry.seconds >= 0
    assert entry.started_at <= entry.ended_at, entry
    today = entry.month + "-01"  # a day of the entry's month on the facility's calendar
    month_changes = [c for c in observer.changes if c.kind == rm.DocumentKind.PATIENT_MONTH]
    assert month_changes and month_changes[-1].patient == "p-001", observer.changes
    assert month_changes[-1].month == entry.month, month_changes
    assert not [c for c in observer.changes if c.patient not in (None, "p-001")], observer.changes
    reading = replica.record_reading(rm.ReadingInput(
        patient="p-007", kind=rm.ReadingKind.BLOOD_PRESSURE, systolic=131.0, diastolic=82.0,
        value=None, unit="mm[Hg]", device="cuff-07"))
    try:
        replica.record_reading(rm.ReadingInput(
            patient="p-007", kind=rm.ReadingKind.BLOOD_PRESSURE, systolic=400.0, diastolic=82.0,
            value=None, unit="mm[Hg]", device="cuff-07"))
        raise SystemExit("an impossible reading was accepted")
    except rm.RoundsError.Invalid as e:
        assert e.field == "systolic", repr(e)
    # A reading the cuff took an hour ago, handed over now: it counts when it was measured.
    taken = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1)
    earlier = replica.record_reading(rm.ReadingInput(
        patient="p-007", kind=rm.ReadingKind.HEART_RATE, systolic=None, diastolic=None,
        value=72.0, unit="/min", device="cuff-07", measured_at=taken))
    assert len(earlier) == 36, earlier
    try:
        replica.record_reading(rm.ReadingInput(
            patient="p-007", kind=rm.ReadingKind.HEART_RATE, systolic=None, diastolic=None,
            value=72.0, unit="/min", device="cuff-07",
            measured_at=datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=2)))
        raise SystemExit("a reading from the future was accepted")
    except rm.RoundsError.Invalid as e:
        assert e.entry.startswith("reading") and e.field == "measured_at", repr(e)
    # A consent captured at the bedside, with where the signed form is kept.
    consent = replica.record_consent(rm.ConsentInput(
        patient="p-012", program=rm.Program.CCM, given_on=today, method="written",
        by="rn-lee", document="scan://consents/p-012-ccm.pdf"))
    assert consent, consent
    try:
        replica.record_consent(rm.ConsentInput(
            patient="p-012", program=rm.Program.CCM, given_on="last tuesday", method=None, by=None,
            document=None))
        raise SystemExit("a bad consent date was accepted")
    except rm.RoundsError.Invalid as e:
        assert (e.entry, e.field) == ("consent", "given_on"), repr(e)
    replica.set_sync_window(rm.SyncWindowSettings(today=today, grace_days=7,
                                                   retention_months=1))
    summary = replica.patient_month_summary("p-007", entry.month)
    assert summary.reading_days >= 1
    assert replica.worklist(today)
    observer.states.clear()
    result = await replica.sync(url, token, fingerprint, None)
    assert result.unsent == 0, result
    assert isinstance(observer.states[0], rm.SyncState.STARTED), observer.states
    assert isinstance(observer.states[-1], rm.SyncState.FINISHED), observer.states
    assert observer.states[-1].unsent == 0, observer.states
    replica.set_observer(None)
    # Recovery after a refusal, through the bindings: reset the month, sync the server's copy back,
    # write back what it lacks (nothing: the server has every entry), sync again.
    month_doc = replica.patient_month_document("p-007", entry.month)
    assert replica.reset_document(month_doc) >= 1
    assert replica.pending_relogs() == [month_doc]
    await replica.sync(url, token, fingerprint, None)
    relogged = replica.apply_relogs()
    assert (relogged.written, relogged.dropped) == (0, 0), relogged
    assert replica.pending_relogs() == []
    assert replica.patient_month_summary("p-007", entry.month).reading_days >= 1
    try:
        replica.reset_document("not-a-document")
        raise SystemExit("a bad document id was accepted")
    except rm.RoundsError.Invalid as e:
        assert e.field == "document", repr(e)
    # A stay reported at the bedside: an event the server takes, folded into the resident's stays.
    report = replica.report_stay("p-002", rm.StayKind.INPATIENT, "2026-11-10", "2026-11-12",
                                 "rn-lee")
    assert len(report) == 36, report
    try:
        replica.report_stay("p-002", rm.StayKind.PART_A, "10/11/2026", "2026-11-12", "rn-lee")
        raise SystemExit("a bad stay date was accepted")
    except rm.RoundsError.Invalid as e:
        assert (e.entry, e.field) == ("stay", "from"), repr(e)
    try:
        replica.report_death("p-002", "yesterday", "rn-lee")
        raise SystemExit("a bad date was accepted")
    except rm.RoundsError.Invalid as e:
        assert (e.entry, e.field) == ("death", "on"), repr(e)
    result = await replica.sync(url, token, fingerprint, None)
    assert result.unsent == 0, result
    # A sync the task's cancellation stops (an unreachable server: it would retry for long).
    task = asyncio.ensure_future(replica.sync("wss://127.0.0.1:9/sync", token, fingerprint, None))
    await asyncio.sleep(0.2)
    task.cancel()
    try:
        await asyncio.wait_for(task, 5)
        raise SystemExit("a cancelled sync finished")
    except asyncio.CancelledError:
        pass
    result = await replica.sync(url, token, fingerprint, None)
    assert result.unsent == 0, result

    # Writes from another thread while a sync runs: neither waits for the other.
    def write_some():
        return [replica.record_reading(rm.ReadingInput(
            patient="p-008", kind=rm.ReadingKind.HEART_RATE, systolic=None, diastolic=None,
            value=60.0 + i, unit="/min", device="cuff-08",
            measured_at=datetime.datetime.now(datetime.timezone.utc)
            - datetime.timedelta(minutes=i))) for i in range(10)]
    syncing = asyncio.ensure_future(replica.sync(url, token, fingerprint, None))
    concurrent = await asyncio.to_thread(write_some)
    await syncing

    # A sync the server's restart interrupts: it reconnects and finishes, nothing lost.
    class RestartMidSync(rm.SyncProgress):
        paused = False

        def on_progress(self, done, total):
            if self.paused:
                return
            self.paused = True
            print("MIDSYNC", flush=True)
            until = time.time() + 60
            while not os.path.exists(os.path.join(control, "resumed")):
                assert time.time() < until, "the test never restarted the server"
                time.sleep(0.05)

    restart = RestartMidSync()
    around = [replica.record_reading(rm.ReadingInput(
        patient="p-009", kind=rm.ReadingKind.HEART_RATE, systolic=None, diastolic=None,
        value=80.0 + i, unit="/min", device="cuff-09")) for i in range(5)]
    survived = await asyncio.wait_for(replica.sync(url, token, fingerprint, restart), 120)
    assert restart.paused, "no progress was reported"
    assert survived.unsent == 0 and survived.attempts >= 2, survived
    print(json.dumps({"interaction": entry.id, "reading": reading, "earlier": earlier,
                      "consent": consent, "entries": concurrent + around}))


asyncio.run(main())
