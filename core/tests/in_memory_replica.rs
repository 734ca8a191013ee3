//! An in-memory replica (the server's staging writes, the import) builds the same documents as
//! a replica on disk, and touches no file.

use chrono::{TimeZone, Utc};
use rounds_core::{Replica, parse_data_file};

#[test]
fn an_in_memory_replica_builds_what_a_replica_on_disk_builds() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/sunnyvale.json"
    ))
    .unwrap();
    let data = parse_data_file(&text).unwrap();
    let now = Utc.with_ymd_and_hms(2026, 11, 1, 8, 0, 0).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut on_disk = Replica::open_scratch(dir.path()).unwrap();
    on_disk.import(&data, now).unwrap();
    let cwd_before: Vec<_> = std::fs::read_dir(".")
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    let mut memory = Replica::in_memory();
    memory.import(&data, now).unwrap();
    assert_eq!(memory.document_ids(), on_disk.document_ids());
    let (a, pa) = memory.export().unwrap();
    let (b, pb) = on_disk.export().unwrap();
    assert_eq!(a, b);
    assert_eq!(pa, pb);
    // Each document also loads into a plain Automerge document on its own.
    for id in memory.document_ids() {
        let bytes = memory.document(id).unwrap().save();
        assert!(automerge::Automerge::load(&bytes).is_ok(), "{id}");
    }
    // Nothing was written: not in the working directory, nowhere a path could point.
    let cwd_after: Vec<_> = std::fs::read_dir(".")
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(cwd_before, cwd_after);
    assert_eq!(memory.dir(), std::path::Path::new(""));
    memory.save_sync_states("peer").unwrap();
    assert!(memory.pending_relogs().is_empty());
}
