//! The store contract, run against both engines: sled in a temporary directory, and PostgreSQL
//! (a fresh database on the throwaway cluster `scripts/test` starts). Each `contract!` test
//! below becomes `on_sled::<name>` and `on_postgres::<name>`.

use std::sync::Arc;

use rounds_core::DocumentId;
use rounds_core::sync::hub::Loader;
use rounds_server::sync::store::kv::{Batch, Db};
use rounds_server::sync::store::{Store, StoreLocation};
use rounds_tests::pg::TestDatabase;

/// A place for a store: a directory or a database, kept alive with the test.
enum Place {
    Dir(tempfile::TempDir),
    Pg(TestDatabase),
}

impl Place {
    fn location(&self) -> StoreLocation {
        match self {
            Place::Dir(d) => StoreLocation::Dir(d.path().to_path_buf()),
            Place::Pg(db) => StoreLocation::Postgres(db.url.clone()),
        }
    }

    fn open(&self) -> Store {
        Store::open_at(&self.location()).unwrap()
    }
}

fn sled_place() -> Place {
    Place::Dir(tempfile::tempdir().unwrap())
}

fn pg_place() -> Place {
    Place::Pg(TestDatabase::create())
}

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod on_sled {
            $(#[test] fn $name() { super::$name(super::sled_place()) })*
        }
        mod on_postgres {
            $(#[test] fn $name() { super::$name(super::pg_place()) })*
        }
    };
}

contract!(
    reads_and_writes_return_what_they_replace,
    keys_iterate_in_byte_order_from_both_ends,
    prefixes_and_ranges_select_exactly,
    compare_and_swap_is_conditional,
    update_and_fetch_is_atomic_across_threads,
    pop_min_takes_the_smallest_once,
    a_batch_applies_together,
    ids_are_unique_across_two_openings,
    documents_persist_compact_and_reload,
    sync_states_heads_and_files_survive_reopening,
    a_file_has_one_first_writer,
);

fn db(store: &Store) -> Db {
    store.kv().clone()
}

fn reads_and_writes_return_what_they_replace(place: Place) {
    let store = place.open();
    let t = db(&store).open_tree("contract").unwrap();
    assert_eq!(t.get(b"a").unwrap(), None);
    assert_eq!(t.insert(b"a", b"1".to_vec()).unwrap(), None);
    assert_eq!(
        t.insert(b"a", b"2".to_vec()).unwrap().as_deref(),
        Some(&b"1"[..])
    );
    assert_eq!(t.get(b"a").unwrap().as_deref(), Some(&b"2"[..]));
    assert!(t.contains_key(b"a").unwrap());
    assert_eq!(t.len().unwrap(), 1);
    assert!(!t.is_empty().unwrap());
    assert_eq!(t.remove(b"a").unwrap().as_deref(), Some(&b"2"[..]));
    assert_eq!(t.remove(b"a").unwrap(), None);
    assert!(t.is_empty().unwrap());
    // Empty values and binary keys are values like any other.
    t.insert([0u8, 255, 0], Vec::new()).unwrap();
    assert_eq!(t.get([0u8, 255, 0]).unwrap().as_deref(), Some(&[][..]));
    t.clear().unwrap();
    assert_eq!(t.len().unwrap(), 0);
    assert_eq!(t.first().unwrap(), None);
    assert_eq!(t.last().unwrap(), None);
}

fn keys_iterate_in_byte_order_from_both_ends(place: Place) {
    let store = place.open();
    let t = db(&store).open_tree("ordered").unwrap();
    // 700 keys (more than two of PostgreSQL's pages), inserted out of order, with 0x00 and 0xff.
    let mut keys: Vec<Vec<u8>> = (0..700u32)
        .map(|i| {
            let mut k = vec![(i % 7) as u8 * 40, 0xff];
            k.extend_from_slice(&(i.wrapping_mul(2_654_435_761)).to_be_bytes());
            if i % 5 == 0 {
                k.push(0);
            }
            k
        })
        .collect();
    for (i, k) in keys.iter().enumerate().rev() {
        t.insert(k, (i as u32).to_be_bytes().to_vec()).unwrap();
    }
    keys.sort();
    let forward: Vec<Vec<u8>> = t.iter().keys().map(|k| k.unwrap().to_vec()).collect();
    assert_eq!(forward, keys);
    let keys_only: Vec<Vec<u8>> = t.iter_keys().map(|k| k.unwrap().to_vec()).collect();
    assert_eq!(keys_only, keys, "the keys alone, in the same order");
    let backward: Vec<Vec<u8>> = t.iter().rev().keys_of().collect();
    let mut reversed = keys.clone();
    reversed.reverse();
    assert_eq!(backward, reversed);
    // Both ends at once meet in the middle without repeating or skipping an entry.
    let mut it = t.iter();
    let mut seen = Vec::new();
    loop {
        let a = it.next();
        let b = it.next_back();
        if a.is_none() && b.is_none() {
            break;
        }
        seen.extend(a.map(|r| r.unwrap().0.to_vec()));
        seen.extend(b.map(|r| r.unwrap().0.to_vec()));
    }
    seen.sort();
    assert_eq!(seen, keys);
    assert_eq!(t.first().unwrap().unwrap().0.to_vec(), keys[0]);
    assert_eq!(t.last().unwrap().unwrap().0.to_vec(), keys[keys.len() - 1]);
    assert_eq!(t.len().unwrap(), 700);
}

fn prefixes_and_ranges_select_exactly(place: Place) {
    let store = place.open();
    let t = db(&store).open_tree("ranges").unwrap();
    let keys: [&[u8]; 8] = [
        b"a",
        b"ab",
        b"abc",
        b"ab\xff",
        b"ab\xff\xff",
        b"ac",
        b"b",
        b"\xff\xff",
    ];
    for k in keys {
        t.insert(k, k.to_vec()).unwrap();
    }
    let prefix = |p: &[u8]| -> Vec<Vec<u8>> {
        t.scan_prefix(p)
            .keys()
            .map(|k| k.unwrap().to_vec())
            .collect()
    };
    assert_eq!(
        prefix(b"ab"),
        vec![
            b"ab".to_vec(),
            b"abc".to_vec(),
            b"ab\xff".to_vec(),
            b"ab\xff\xff".to_vec()
        ]
    );
    assert_eq!(
        prefix(b"ab\xff"),
        vec![b"ab\xff".to_vec(), b"ab\xff\xff".to_vec()]
    );
    assert_eq!(prefix(b"\xff"), vec![b"\xff\xff".to_vec()]);
    assert_eq!(prefix(b"z"), Vec::<Vec<u8>>::new());
    assert_eq!(prefix(b"").len(), keys.len());
    let range = |r: (std::ops::Bound<&[u8]>, std::ops::Bound<&[u8]>)| -> Vec<Vec<u8>> {
        t.range::<&[u8], _>(r)
            .keys()
            .map(|k| k.unwrap().to_vec())
            .collect()
    };
    use std::ops::Bound::{Excluded, Included, Unbounded};
    assert_eq!(
        range((Included(b"ab"), Excluded(b"ac"))),
        vec![
            b"ab".to_vec(),
            b"abc".to_vec(),
            b"ab\xff".to_vec(),
            b"ab\xff\xff".to_vec()
        ]
    );
    assert_eq!(
        range((Excluded(b"ab\xff\xff"), Included(b"b"))),
        vec![b"ac".to_vec(), b"b".to_vec()]
    );
    assert_eq!(
        range((Included(b"b"), Unbounded)),
        vec![b"b".to_vec(), b"\xff\xff".to_vec()]
    );
    let last_two: Vec<Vec<u8>> = t.scan_prefix(b"ab").rev().take(2).keys_of().collect();
    assert_eq!(last_two, vec![b"ab\xff\xff".to_vec(), b"ab\xff".to_vec()]);
}

/// `.keys()` for an already-adapted iterator.
trait KeysOf {
    fn keys_of(self) -> impl Iterator<Item = Vec<u8>>;
}

impl<
    I: Iterator<
        Item = rounds_server::sync::store::kv::KvResult<(
            rounds_server::sync::store::kv::IVec,
            rounds_server::sync::store::kv::IVec,
        )>,
    >,
> KeysOf for I
{
    fn keys_of(self) -> impl Iterator<Item = Vec<u8>> {
        self.map(|r| r.unwrap().0.to_vec())
    }
}

fn compare_and_swap_is_conditional(place: Place) {
    let store = place.open();
    let t = db(&store).open_tree("cas").unwrap();
    // Absent → present.
    assert!(
        t.compare_and_swap(b"k", None::<&[u8]>, Some(b"1".to_vec()))
            .unwrap()
            .is_ok()
    );
    // A second "create" loses, and says what is there.
    let lost = t
        .compare_and_swap(b"k", None::<&[u8]>, Some(b"x".to_vec()))
        .unwrap()
        .unwrap_err();
    assert_eq!(lost.current.as_deref(), Some(&b"1"[..]));
    // The wrong old value loses; the right one wins.
    assert!(
        t.compare_and_swap(b"k", Some(b"0"), Some(b"2".to_vec()))
            .unwrap()
            .is_err()
    );
    assert!(
        t.compare_and_swap(b"k", Some(b"1"), Some(b"2".to_vec()))
            .unwrap()
            .is_ok()
    );
    // Delete only from the expected value.
    assert!(
        t.compare_and_swap(b"k", Some(b"1"), None::<Vec<u8>>)
            .unwrap()
            .is_err()
    );
    assert!(
        t.compare_and_swap(b"k", Some(b"2"), None::<Vec<u8>>)
            .unwrap()
            .is_ok()
    );
    assert_eq!(t.get(b"k").unwrap(), None);
}

fn update_and_fetch_is_atomic_across_threads(place: Place) {
    let store = Arc::new(place.open());
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            std::thread::spawn(move || {
                let t = store.kv().open_tree("counter").unwrap();
                for _ in 0..25 {
                    t.update_and_fetch(b"n", |old| {
                        let n = old
                            .and_then(|b| <[u8; 8]>::try_from(b).ok())
                            .map_or(0, u64::from_be_bytes);
                        Some((n + 1).to_be_bytes().to_vec())
                    })
                    .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let t = store.kv().open_tree("counter").unwrap();
    let n = u64::from_be_bytes(t.get(b"n").unwrap().unwrap().as_ref().try_into().unwrap());
    assert_eq!(n, 100, "no increment lost");
}

fn pop_min_takes_the_smallest_once(place: Place) {
    let store = place.open();
    let t = db(&store).open_tree("queue").unwrap();
    for k in [b"c", b"a", b"b"] {
        t.insert(k, k.to_vec()).unwrap();
    }
    let mut popped = Vec::new();
    while let Some((k, v)) = t.pop_min().unwrap() {
        assert_eq!(k, v);
        popped.push(k.to_vec());
    }
    assert_eq!(popped, vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
    assert!(t.is_empty().unwrap());
}

fn a_batch_applies_together(place: Place) {
    let store = place.open();
    let t = db(&store).open_tree("batch").unwrap();
    t.insert(b"old", b"x".to_vec()).unwrap();
    let mut b = Batch::default();
    for i in 0..50u8 {
        b.insert([b'n', i], [i]);
    }
    b.remove(b"old");
    b.insert(b"n\x00", b"last write wins");
    t.apply_batch(b).unwrap();
    assert_eq!(t.len().unwrap(), 50);
    assert_eq!(t.get(b"old").unwrap(), None);
    assert_eq!(
        t.get(b"n\x00").unwrap().as_deref(),
        Some(&b"last write wins"[..])
    );
}

fn ids_are_unique_across_two_openings(place: Place) {
    // Two servers on one database (PostgreSQL) draw from one sequence; sled has one opener.
    let a = place.open();
    let mut ids: Vec<u64> = (0..50).map(|_| a.kv().generate_id().unwrap()).collect();
    if matches!(place, Place::Pg(_)) {
        let b = place.open();
        ids.extend((0..50).map(|_| b.kv().generate_id().unwrap()));
        ids.extend((0..50).map(|_| a.kv().generate_id().unwrap()));
    }
    let n = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), n, "an id was handed out twice");
}

fn doc_with(n: usize) -> automerge::Automerge {
    use automerge::transaction::Transactable;
    let mut d = automerge::Automerge::new();
    for i in 0..n {
        let mut tx = d.transaction();
        tx.put(automerge::ROOT, format!("k{i}"), i as i64).unwrap();
        tx.commit();
    }
    d
}

fn documents_persist_compact_and_reload(place: Place) {
    let id = DocumentId::facility("contract");
    let other = DocumentId::facility("other");
    let mut doc = doc_with(3);
    {
        let store = place.open();
        // Three incremental chunks, then another document.
        let mut seq = store.written_seq();
        let mut since = Vec::new();
        for _ in 0..3 {
            seq += 1;
            let chunk = doc.save_after(&since);
            since = doc.get_heads();
            store.persist(&id, seq, &chunk, false).unwrap();
            use automerge::transaction::Transactable;
            let mut tx = doc.transaction();
            tx.put(automerge::ROOT, "more", seq as i64).unwrap();
            tx.commit();
        }
        seq += 1;
        store
            .persist(&other, seq, &doc_with(1).save(), false)
            .unwrap();
        assert_eq!(store.chunk_count(&id), 3);
        // A snapshot replaces the older chunks.
        seq += 1;
        store.persist(&id, seq, &doc.save(), true).unwrap();
        assert_eq!(store.chunk_count(&id), 1);
        assert_eq!(store.latest_seq(&id), Some(seq));
        store.flush().unwrap();
    }
    let store = place.open();
    let mut ids = store.document_ids();
    ids.sort();
    let mut want = vec![id, other];
    want.sort();
    assert_eq!(ids, want);
    let loaded = store.load_doc(&id).unwrap();
    assert_eq!(loaded.get_heads(), doc.get_heads());
    assert!(store.latest_seq(&id).unwrap() > store.latest_seq(&other).unwrap());
    assert!(store.written_seq() >= store.latest_seq(&id).unwrap());
    // The summary exchange's prefix lookup.
    let mut loader = &store;
    let mut prefix: rounds_core::sync::summary::Prefix = Default::default();
    let n = prefix.len();
    prefix.copy_from_slice(&id.as_bytes()[..n]);
    assert!(matches!(
        loader.resolve(&prefix),
        rounds_core::sync::summary::Resolved::One(d) if d == id
    ));
    assert!(
        loader
            .load(&DocumentId::facility("absent"))
            .unwrap()
            .is_none()
    );
}

fn sync_states_heads_and_files_survive_reopening(place: Place) {
    let id = DocumentId::facility("states");
    let doc = doc_with(2);
    let storage_id;
    {
        let store = place.open();
        storage_id = store.storage_id().to_string();
        store.persist(&id, 1, &doc.save(), true).unwrap();
        store.save_sync_state(&id, "peer-1", b"state-1").unwrap();
        store
            .persist_with_heads(&id, 2, &doc.save(), true, Some(&doc.get_heads()))
            .unwrap();
        store.flush().unwrap();
    }
    let store = place.open();
    assert_eq!(store.storage_id(), storage_id, "the storage id is stable");
    let mut loader = &store;
    assert_eq!(
        loader.load_sync_state(&id, "peer-1").as_deref(),
        Some(&b"state-1"[..])
    );
    assert_eq!(loader.load_sync_state(&id, "peer-2"), None);
    assert_eq!(store.stored_heads(&id).unwrap(), Some(doc.get_heads()));
    store.probe().unwrap();
}

fn a_file_has_one_first_writer(place: Place) {
    let a = place.open();
    assert_eq!(a.read_file("admin-token").unwrap(), None);
    assert_eq!(a.create_file("admin-token", b"first").unwrap(), b"first");
    // A second writer (on PostgreSQL: another server) gets what the first wrote.
    let b = if matches!(place, Place::Pg(_)) {
        place.open()
    } else {
        a
    };
    assert_eq!(b.create_file("admin-token", b"second").unwrap(), b"first");
    assert_eq!(
        b.read_file("admin-token").unwrap().as_deref(),
        Some(&b"first"[..])
    );
}

/// Hostile URLs are refused with what is wrong, and the password never shows.
#[test]
fn a_bad_postgres_url_is_refused_without_its_password() {
    let e = Store::open_at(
        &"postgres://rounds:hunter2@127.0.0.1:1/none"
            .parse()
            .unwrap(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("postgres://rounds:***@127.0.0.1:1/none"), "{e}");
    assert!(!e.contains("hunter2"), "{e}");
    let e = Store::open_at(&StoreLocation::Postgres(
        "postgres://u:hunter2@127.0.0.1:1/db?sslmode=sometimes".into(),
    ))
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("sslmode=sometimes is not one of"), "{e}");
    assert!(!e.contains("hunter2"), "{e}");
    let e = Store::open_at(&StoreLocation::Postgres(
        "postgres://u:hunter2@127.0.0.1:1/db?sslmode=verify-full&sslrootcert=/nonexistent.pem"
            .into(),
    ))
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("sslrootcert /nonexistent.pem"), "{e}");
    assert!(!e.contains("hunter2"), "{e}");
    let e = "mysql://x@y/z".parse::<StoreLocation>().unwrap_err();
    assert!(e.contains("directory or a postgres:// URL"), "{e}");
}

/// A database written by a newer rounds is refused, not rewritten.
#[test]
fn a_newer_schema_is_refused() {
    let db = TestDatabase::create();
    drop(Store::open_at(&StoreLocation::Postgres(db.url.clone())).unwrap());
    let mut c = postgres::Client::connect(&db.url, postgres::NoTls).unwrap();
    c.batch_execute("INSERT INTO rounds_schema (version) VALUES (999)")
        .unwrap();
    let e = Store::open_at(&StoreLocation::Postgres(db.url.clone()))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("999"), "{e}");
    assert_eq!(
        db.query_i64("SELECT count(*) FROM rounds_schema WHERE version = 999"),
        1
    );
}

/// Two servers on one database (two openings: two epochs) write the same document, each from
/// its own copy. The second copy never saw the first's change, so the heads it would record
/// are wrong: the store marks them invalid instead, and the next reader computes the heads of
/// everything stored.
#[test]
fn two_writers_never_record_heads_that_miss_the_others_change() {
    use automerge::transaction::Transactable;
    let place = pg_place();
    let (a, b) = (place.open(), place.open());
    assert_ne!(a.written_seq() >> 32, b.written_seq() >> 32, "two epochs");
    let id = DocumentId::facility("shared");
    let base = doc_with(1);
    a.persist(&id, a.written_seq() + 1, &base.save(), false)
        .unwrap();
    // Both load it (as their hubs would) ...
    let (mut la, mut lb) = (&a, &b);
    let mut da = automerge::Automerge::load(&la.load(&id).unwrap().unwrap()[0]).unwrap();
    let mut db_ = automerge::Automerge::load(&lb.load(&id).unwrap().unwrap()[0]).unwrap();
    // ... and each writes a change of its own.
    let write = |store: &Store, d: &mut automerge::Automerge, key: &str| {
        let before = d.get_heads();
        let mut tx = d.transaction();
        tx.put(automerge::ROOT, key, 1).unwrap();
        tx.commit();
        store
            .persist_with_heads(
                &id,
                store.written_seq() + 1,
                &d.save_after(&before),
                false,
                Some(&d.get_heads()),
            )
            .unwrap();
    };
    write(&a, &mut da, "from-a");
    assert_eq!(a.stored_heads(&id).unwrap(), Some(da.get_heads()));
    write(&b, &mut db_, "from-b");
    let mut both = da.clone();
    both.merge(&mut db_.clone()).unwrap();
    // A third reader, and B itself, see the heads of both changes, not B's copy's.
    let c = place.open();
    assert_eq!(c.stored_heads(&id).unwrap(), Some(both.get_heads()));
    assert_ne!(both.get_heads(), db_.get_heads());
    b.foreign_change(&id, a.written_seq());
    assert_eq!(b.stored_heads(&id).unwrap(), Some(both.get_heads()));
    // A's next write from its copy (which lacks B's change) is not trusted either.
    write(&a, &mut da, "again-a");
    let d = place.open();
    let mut all = both.clone();
    all.merge(&mut da.clone()).unwrap();
    assert_eq!(d.stored_heads(&id).unwrap(), Some(all.get_heads()));
}

/// A snapshot on one server replaces its own older chunks, and another server's only when it
/// holds their changes: a chunk the snapshot never saw stays.
#[test]
fn a_snapshot_keeps_another_writers_chunk_it_does_not_contain() {
    use automerge::transaction::Transactable;
    let place = pg_place();
    let (a, b) = (place.open(), place.open());
    let id = DocumentId::facility("compact");
    let mut da = doc_with(2);
    a.persist(&id, a.written_seq() + 1, &da.save(), false)
        .unwrap();
    // B writes a change A never loads.
    let mut db_ = da.clone();
    db_.set_actor(automerge::ActorId::random());
    let before = db_.get_heads();
    let mut tx = db_.transaction();
    tx.put(automerge::ROOT, "from-b", 1).unwrap();
    tx.commit();
    b.persist(&id, b.written_seq() + 1, &db_.save_after(&before), false)
        .unwrap();
    // A writes twice more, then compacts.
    for k in 0..2 {
        let before = da.get_heads();
        let mut tx = da.transaction();
        tx.put(automerge::ROOT, "a", k).unwrap();
        tx.commit();
        a.persist(&id, a.written_seq() + 1, &da.save_after(&before), false)
            .unwrap();
    }
    assert_eq!(a.chunk_count(&id), 4);
    a.persist(&id, a.written_seq() + 1, &da.save(), true)
        .unwrap();
    assert_eq!(a.chunk_count(&id), 2, "A's snapshot and B's chunk");
    let loaded = place.open().load_doc(&id).unwrap();
    let mut both = da.clone();
    both.merge(&mut db_.clone()).unwrap();
    assert_eq!(loaded.get_heads(), both.get_heads());
    // Once A's copy holds B's change, its next snapshot replaces B's chunk too.
    da.merge(&mut db_).unwrap();
    a.persist(&id, a.written_seq() + 1, &da.save(), true)
        .unwrap();
    assert_eq!(a.chunk_count(&id), 1);
    assert_eq!(
        place.open().load_doc(&id).unwrap().get_heads(),
        both.get_heads()
    );
}
