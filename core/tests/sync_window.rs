//! The device's sync window: a tablet keeps the facility document, the current residents'
//! documents and the month documents of open months; what falls outside leaves once the server
//! has confirmed it, and a late entry for a closed month still syncs.

mod common;

use std::collections::BTreeSet;

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use common::*;
use rounds_core::replica::NewInteraction;
use rounds_core::{DocumentId, Month, Program, Replica, SyncWindow};

const SERVER_KEY: &str = "server-storage";

fn window(y: i32, m: u32, d: u32) -> Option<SyncWindow> {
    Some(SyncWindow::new(NaiveDate::from_ymd_opt(y, m, d).unwrap()))
}

fn months_held(t: &Replica) -> BTreeSet<Month> {
    t.month_docs().into_iter().map(|(_, m, _)| m).collect()
}

fn call(patient: &str, at: DateTime<Utc>, minutes: i64) -> NewInteraction {
    NewInteraction {
        patient: patient.into(),
        staff: "rn-lee".into(),
        program: Program::Ccm,
        started_at: at,
        ended_at: at + Duration::minutes(minutes),
        interactive: true,
        activity: None,
        note: None,
    }
}

/// Sync and apply the window, as `net::sync` does after a completed session.
fn sync(server: &mut Server, conn: u64, t: &mut Replica) -> (Sent, Vec<DocumentId>) {
    let (s, sent) = connect(server, conn, t);
    disconnect(server, conn, t, s);
    let dropped = t.drop_outside_window(SERVER_KEY).unwrap();
    (sent, dropped)
}

#[test]
fn a_closed_confirmed_month_leaves_and_a_late_entry_for_it_still_syncs() {
    let (mut server, facility, _) = server_with_facility();
    let dir = tempfile::tempdir().unwrap();
    let mut tab = tablet(&dir, &facility);
    let nov: Month = "2026-11".parse().unwrap();

    // In November, November is open: its documents come to the tablet and stay.
    tab.set_sync_window(window(2026, 11, 25));
    let (_, dropped) = sync(&mut server, 1, &mut tab);
    assert!(dropped.is_empty());
    assert!(months_held(&tab).contains(&nov), "{:?}", months_held(&tab));
    let nov_docs: Vec<DocumentId> = tab
        .month_docs()
        .into_iter()
        .filter(|(_, m, _)| *m == nov)
        .map(|(_, _, d)| d)
        .collect();

    // Still open during its grace window (7 days after its end).
    tab.set_sync_window(window(2026, 12, 7));
    let (_, dropped) = sync(&mut server, 2, &mut tab);
    assert!(dropped.is_empty());

    // Past it, November is closed: confirmed by the server, its documents leave the tablet,
    // files and all, and they are not fetched again.
    tab.set_sync_window(window(2026, 12, 20));
    let (_, dropped) = sync(&mut server, 3, &mut tab);
    assert_eq!(
        dropped.iter().copied().collect::<BTreeSet<_>>(),
        nov_docs.iter().copied().collect::<BTreeSet<_>>()
    );
    assert!(!months_held(&tab).contains(&nov));
    for d in &nov_docs {
        assert!(!dir.path().join("docs").join(format!("{d}.log")).exists());
    }
    let (sent, dropped) = sync(&mut server, 4, &mut tab);
    assert!(dropped.is_empty());
    assert!(
        sent.per_document.iter().all(|d| !nov_docs.contains(d)),
        "{sent:?}"
    );

    // A late entry for November: its document comes back on the tablet with the entry, is not
    // dropped while unsent, reaches the server, and then leaves again.
    let at = Utc.with_ymd_and_hms(2026, 11, 20, 20, 0, 0).unwrap();
    let late = tab
        .log_interaction(
            call("p-002", at, 16),
            Utc.with_ymd_and_hms(2026, 12, 20, 9, 0, 0).unwrap(),
        )
        .unwrap();
    let doc = DocumentId::patient_month(&facility, "p-002", nov);
    assert!(
        tab.drop_outside_window(SERVER_KEY).unwrap().is_empty(),
        "unsent: kept"
    );
    let (sent, dropped) = sync(&mut server, 5, &mut tab);
    assert!(sent.per_document.contains(&doc), "{sent:?}");
    assert_eq!(dropped, vec![doc]);
    let on_server = automerge::Automerge::load(&server.store.chunks[&doc].concat()).unwrap();
    let ids: Vec<String> = {
        use automerge::ReadDoc;
        let map = rounds_core::document::container(&on_server, rounds_core::document::INTERACTIONS)
            .unwrap();
        on_server.keys(&map).collect()
    };
    assert!(
        ids.contains(&late.id.to_string()),
        "the late entry reached the server"
    );
    // And the entries other tablets made in November are all still there.
    assert!(ids.len() > 1, "{ids:?}");
}

#[test]
fn a_discharged_residents_documents_leave_the_tablet() {
    let (mut server, facility, patients) = server_with_facility();
    let dir = tempfile::tempdir().unwrap();
    let mut tab = tablet(&dir, &facility);
    tab.set_sync_window(window(2026, 11, 25));
    sync(&mut server, 1, &mut tab);
    let gone = patients[0].clone();
    let patient_doc = DocumentId::patient(&facility, &gone);
    assert!(tab.has_document(patient_doc));
    let theirs: Vec<DocumentId> = tab
        .month_docs()
        .into_iter()
        .filter(|(p, _, _)| *p == gone)
        .map(|(_, _, d)| d)
        .collect();
    assert!(!theirs.is_empty());

    // The office takes the resident off the facility's roster (on the server).
    let fdoc = DocumentId::facility(&facility);
    let mut copy = automerge::Automerge::load(&server.store.chunks[&fdoc].concat()).unwrap();
    let before = copy.get_heads();
    {
        use automerge::transaction::Transactable;
        let mut tx = copy.transaction();
        let roster =
            rounds_core::document::container(&tx, rounds_core::document::PATIENTS).unwrap();
        tx.delete(&roster, gone.as_str()).unwrap();
        tx.commit();
    }
    server.merge(fdoc, &copy.save_after(&before));

    let (_, dropped) = sync(&mut server, 2, &mut tab);
    let mut expected = theirs.clone();
    expected.push(patient_doc);
    assert_eq!(
        dropped.into_iter().collect::<BTreeSet<_>>(),
        expected.into_iter().collect::<BTreeSet<_>>()
    );
    assert!(!tab.has_document(patient_doc));
    assert!(tab.month_docs().iter().all(|(p, _, _)| *p != gone));
    // Everyone else is still on the tablet.
    for p in &patients[1..] {
        assert!(tab.has_document(DocumentId::patient(&facility, p)), "{p}");
    }
}

#[test]
fn a_new_tablet_after_two_years_of_history_holds_what_one_after_a_month_holds() {
    // Two servers: one with the example's single month, one with 24 more months of entries for
    // every resident.
    let (mut young, facility, patients) = server_with_facility();
    let (mut old, _, _) = server_with_facility();
    let mut writer = Replica::in_memory();
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/sunnyvale.json"
    ))
    .unwrap();
    writer
        .import(&rounds_core::parse_data_file(&text).unwrap(), now())
        .unwrap();
    let mut month: Month = "2024-10".parse().unwrap();
    for _ in 0..24 {
        let at = Utc
            .from_local_datetime(&month.first_day().and_hms_opt(15, 0, 0).unwrap())
            .unwrap();
        for p in &patients {
            writer.log_interaction(call(p, at, 5), at).unwrap();
        }
        month = month.next();
    }
    for id in writer.document_ids() {
        old.merge(id, &writer.document(id).unwrap().save());
    }

    let today = window(2026, 11, 25);
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut after_a_month = tablet(&da, &facility);
    let mut after_two_years = tablet(&db, &facility);
    after_a_month.set_sync_window(today);
    after_two_years.set_sync_window(today);
    let (first_young, _) = sync(&mut young, 1, &mut after_a_month);
    let (first_old, _) = sync(&mut old, 1, &mut after_two_years);
    let held = |t: &Replica| t.document_ids().len();
    eprintln!(
        "documents held: {} after a month, {} after two years; first sync: {} vs {} per-document frames",
        held(&after_a_month),
        held(&after_two_years),
        first_young.per_document_frames,
        first_old.per_document_frames
    );
    // The same documents on both (the history stays on the server).
    assert_eq!(held(&after_a_month), held(&after_two_years));
    assert!(
        months_held(&after_two_years)
            .iter()
            .all(|m| *m >= "2026-11".parse().unwrap())
    );
    // The first sync is as long; the idle reconnect, one summary of the same size.
    assert!(first_old.per_document_frames <= first_young.per_document_frames * 11 / 10);
    let (idle_young, _) = sync(&mut young, 2, &mut after_a_month);
    let (idle_old, _) = sync(&mut old, 2, &mut after_two_years);
    assert_eq!(idle_young.summary.bytes, idle_old.summary.bytes);
    assert_eq!(idle_old.per_document_frames, 0);
}

#[test]
fn the_window_holds_open_months_and_the_retention() {
    let on = |y, m, d, retention| SyncWindow {
        retention_months: retention,
        ..SyncWindow::new(NaiveDate::from_ymd_opt(y, m, d).unwrap())
    };
    let m = |s: &str| s.parse::<Month>().unwrap();
    let w = on(2026, 12, 7, 0);
    assert!(w.holds(m("2026-12")) && w.holds(m("2027-01")));
    assert!(w.holds(m("2026-11")), "in its grace window");
    assert!(!w.holds(m("2026-10")));
    let w = on(2026, 12, 8, 0);
    assert!(!w.holds(m("2026-11")), "grace passed");
    let w = on(2027, 1, 20, 2);
    assert!(
        w.holds(m("2026-11")) && !w.holds(m("2026-10")),
        "two months kept"
    );
}
