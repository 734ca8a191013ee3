//! The write path's cost per change on each store engine: `Store::persist_with_heads` (what the
//! server does: the chunk and its document's heads; on PostgreSQL also the change feed's entry
//! and notification) of a typical tablet
//! change (one time entry: an incremental Automerge chunk of a few hundred bytes) followed by the
//! flush the flusher does before anything is acknowledged — one change per flush (a lone tablet)
//! and 32 per flush (a burst of frames). sled in a temporary directory; PostgreSQL when
//! `ROUNDS_BENCH_POSTGRES` names a cluster (`postgres://USER@HOST:PORT/postgres`; a database
//! `rounds_bench_<pid>` is created and dropped).
//!
//!     cargo bench -p rounds-server --bench store_writes
//!     ROUNDS_BENCH_POSTGRES=postgres://postgres@127.0.0.1:5432/postgres cargo bench -p rounds-server --bench store_writes

use std::time::Instant;

use automerge::transaction::Transactable;
use rounds_core::DocumentId;
use rounds_server::sync::store::{Store, StoreLocation};

const CHANGES: usize = 2_000;

/// `CHANGES` chunks, each one time entry added to a month document, with the heads after it.
fn chunks() -> Vec<(Vec<u8>, Vec<automerge::ChangeHash>)> {
    let mut doc = automerge::Automerge::new();
    let mut out = Vec::with_capacity(CHANGES);
    for i in 0..CHANGES {
        let before = doc.get_heads();
        let mut tx = doc.transaction();
        let entry = tx
            .put_object(
                automerge::ROOT,
                format!("entry-{i}"),
                automerge::ObjType::Map,
            )
            .unwrap();
        for (k, v) in [
            ("staff", "rn-lee"),
            ("program", "ccm"),
            ("started_at", "2026-12-02T14:00:00-05:00"),
            ("ended_at", "2026-12-02T14:11:00-05:00"),
            ("note", "reviewed the BP log with the resident"),
        ] {
            tx.put(&entry, k, v).unwrap();
        }
        tx.put(&entry, "interactive", true).unwrap();
        tx.commit();
        out.push((doc.save_after(&before), doc.get_heads()));
    }
    out
}

/// Microseconds per change: (one flush per change, one flush per 32 changes).
fn run(store: &Store, chunks: &[(Vec<u8>, Vec<automerge::ChangeHash>)]) -> (f64, f64) {
    use rounds_core::sync::hub::Loader;
    let doc = DocumentId::facility("bench-single");
    let mut seq = store.written_seq();
    // Loaded first, as the hub does before it writes.
    let mut loader = store;
    let _ = loader.load(&doc);
    let t = Instant::now();
    for (c, h) in chunks {
        seq += 1;
        store
            .persist_with_heads(&doc, seq, c, false, Some(h))
            .unwrap();
        store.flush().unwrap();
    }
    let single = t.elapsed().as_secs_f64() * 1e6 / chunks.len() as f64;
    let doc = DocumentId::facility("bench-burst");
    let _ = loader.load(&doc);
    let t = Instant::now();
    for burst in chunks.chunks(32) {
        for (c, h) in burst {
            seq += 1;
            store
                .persist_with_heads(&doc, seq, c, false, Some(h))
                .unwrap();
        }
        store.flush().unwrap();
    }
    let burst = t.elapsed().as_secs_f64() * 1e6 / chunks.len() as f64;
    (single, burst)
}

fn main() {
    let chunks = chunks();
    let avg = chunks.iter().map(|(c, _)| c.len()).sum::<usize>() / chunks.len();
    println!("{CHANGES} changes, {avg} bytes per chunk on average");
    let dir = tempfile::tempdir().unwrap();
    let sled = Store::open(dir.path()).unwrap();
    let (single, burst) = run(&sled, &chunks);
    println!(
        "sled:       {single:8.1} µs/change (flush each), {burst:8.1} µs/change (flush per 32)"
    );
    drop(sled);
    let Ok(cluster) = std::env::var("ROUNDS_BENCH_POSTGRES") else {
        println!("postgres:   skipped (set ROUNDS_BENCH_POSTGRES to a cluster URL)");
        return;
    };
    let name = format!("rounds_bench_{}", std::process::id());
    let admin = |sql: String| {
        let cluster = cluster.clone();
        std::thread::spawn(move || {
            let mut c = postgres::Client::connect(&cluster, postgres::NoTls).unwrap();
            c.batch_execute(&sql).unwrap();
        })
        .join()
        .unwrap();
    };
    admin(format!("CREATE DATABASE {name}"));
    let base = cluster
        .rsplit_once('/')
        .map_or(cluster.as_str(), |(b, _)| b);
    let pg = Store::open_at(&StoreLocation::Postgres(format!("{base}/{name}"))).unwrap();
    let (single, burst) = run(&pg, &chunks);
    println!(
        "postgres:   {single:8.1} µs/change (flush each), {burst:8.1} µs/change (flush per 32)"
    );
    drop(pg);
    admin(format!("DROP DATABASE {name} WITH (FORCE)"));
}
