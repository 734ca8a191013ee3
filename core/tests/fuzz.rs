//! Fuzzing without a nightly toolchain (cargo-fuzz needs one): a mutation fuzzer over the CBOR
//! frame decoder, the server hub, and reading documents with the schema. It starts from the
//! corpus in `fuzz/corpus/` and runs for `ROUNDS_FUZZ_SECONDS` (default 3) per target; CI runs
//! it longer. A failure prints the input as hex; add it to the corpus once fixed.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use rounds_core::DocumentId;
use rounds_core::document::{self, DocKind};
use rounds_core::sync::hub::{AllowAll, EmptyStore, Hub, HubConfig};
use rounds_core::sync::wire::{Message, PeerMetadata};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn budget() -> Duration {
    let secs = std::env::var("ROUNDS_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(3.0);
    Duration::from_secs_f64(secs)
}

fn corpus(dir: &str) -> Vec<Vec<u8>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(dir);
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(&path)
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read(e.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    assert!(!out.is_empty(), "empty corpus at {}", path.display());
    out
}

fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(6) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = rng.next() as u8;
            }
            2 => {
                let i = rng.below(v.len() + 1);
                v.insert(i, rng.next() as u8);
            }
            3 if !v.is_empty() => {
                let i = rng.below(v.len());
                v.truncate(i);
            }
            4 if v.len() > 1 => {
                let i = rng.below(v.len());
                v.remove(i);
            }
            _ => {
                let interesting = [0x00, 0xff, 0xf7, 0xf6, 0x7f, 0x9f, 0xbf, 0xfb, 0x1b, 0x5b];
                let i = rng.below(v.len() + 1);
                v.insert(i, interesting[rng.below(interesting.len())]);
            }
        }
    }
    v
}

fn seed() -> u64 {
    std::env::var("ROUNDS_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64 | 1)
                .unwrap_or(1)
        })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn fuzz_frame_decoder() {
    let seeds = corpus("frames");
    let s = seed();
    let mut rng = Rng(s);
    let deadline = Instant::now() + budget();
    let mut runs = 0u64;
    while Instant::now() < deadline {
        let i = rng.below(seeds.len());
        let input = mutate(&mut rng, &seeds[i]);
        let result = std::panic::catch_unwind(|| {
            if let Ok(m) = Message::decode(&input) {
                // Whatever decodes re-encodes to something that decodes the same.
                assert_eq!(Message::decode(&m.encode()).as_ref(), Ok(&m));
            }
        });
        assert!(
            result.is_ok(),
            "seed {s}: frame decoder failed on {}",
            hex(&input)
        );
        runs += 1;
    }
    eprintln!("fuzz_frame_decoder: {runs} inputs, seed {s}");
}

#[test]
fn fuzz_hub() {
    let seeds = corpus("frames");
    let s = seed();
    let mut rng = Rng(s ^ 0x9e37_79b9);
    let deadline = Instant::now() + budget();
    let mut runs = 0u64;
    while Instant::now() < deadline {
        let mut hub = Hub::new("server".into(), "storage".into(), 0, HubConfig::default());
        hub.connect(1, std::sync::Arc::new(AllowAll));
        let join = Message::Join {
            sender_id: "p".into(),
            peer_metadata: PeerMetadata::default(),
            supported_protocol_versions: vec!["1".into()],
        }
        .encode();
        let frames: Vec<Vec<u8>> = (0..1 + rng.below(6))
            .map(|_| {
                let i = rng.below(seeds.len());
                mutate(&mut rng, &seeds[i])
            })
            .collect();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            hub.receive(1, &join, &mut EmptyStore);
            for f in &frames {
                hub.receive(1, f, &mut EmptyStore);
            }
            hub.flushed(hub.seq());
            hub.disconnect(1);
        }));
        assert!(
            result.is_ok(),
            "seed {s}: hub failed on frames {:?}",
            frames.iter().map(|f| hex(f)).collect::<Vec<_>>()
        );
        runs += 1;
    }
    eprintln!("fuzz_hub: {runs} sequences, seed {s}");
}

#[test]
fn fuzz_reading_documents() {
    let seeds = corpus("entries");
    let s = seed();
    let mut rng = Rng(s ^ 0x51ed);
    let deadline = Instant::now() + budget();
    let mut runs = 0u64;
    while Instant::now() < deadline {
        // Mutated JSON entries written into the schema's maps, then read back.
        let mut doc = document::genesis(DocKind::PatientMonth).expect("genesis");
        doc.set_actor(automerge::ActorId::random());
        let containers = [
            document::INTERACTIONS,
            document::READINGS,
            document::TIMERS,
            document::TIMER_STOPS,
            document::CORRECTIONS,
        ];
        let mut written = Vec::new();
        let _ = doc.transact::<_, _, automerge::AutomergeError>(|tx| {
            for k in 0..1 + rng.below(4) {
                let i = rng.below(seeds.len());
                let raw = mutate(&mut rng, &seeds[i]);
                let value: serde_json::Value =
                    serde_json::from_slice(&raw).unwrap_or(serde_json::Value::String(hex(&raw)));
                let c = containers[rng.below(containers.len())];
                if let Some(map) = document::container(tx, c) {
                    document::put_json(tx, &map, format!("k{k}").as_str(), &value)?;
                }
                written.push(raw);
            }
            Ok(())
        });
        let bytes = doc.save();
        let mangled = mutate(&mut rng, &bytes);
        let result = std::panic::catch_unwind(|| {
            let _ = rounds_core::replica::read_month(&doc);
            if let Ok(other) = automerge::Automerge::load(&mangled) {
                let _ = rounds_core::replica::read_month(&other);
            }
        });
        assert!(
            result.is_ok(),
            "seed {s}: reading failed; entries {:?}",
            written
                .iter()
                .map(|w| String::from_utf8_lossy(w).to_string())
                .collect::<Vec<_>>()
        );
        runs += 1;
    }
    eprintln!("fuzz_reading_documents: {runs} documents, seed {s}");
}

/// The committed seeds are valid inputs (every frame decodes, every entry is JSON), so the
/// fuzzers mutate from meaningful starting points.
#[test]
fn corpus_seeds_are_valid() {
    for frame in corpus("frames") {
        assert!(
            Message::decode(&frame).is_ok(),
            "corpus frame does not decode: {}",
            hex(&frame)
        );
    }
    for entry in corpus("entries") {
        assert!(
            serde_json::from_slice::<serde_json::Value>(&entry).is_ok(),
            "corpus entry is not JSON"
        );
    }
}

/// Regenerate the seed corpus: `ROUNDS_WRITE_CORPUS=1 cargo test -p rounds-core --test fuzz`
/// (does nothing otherwise).
#[test]
fn write_corpus_when_asked() {
    if std::env::var("ROUNDS_WRITE_CORPUS").is_err() {
        return;
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let doc = DocumentId::facility("sunnyvale").to_string();
    let frames = vec![
        (
            "join",
            Message::Join {
                sender_id: "peer-1".into(),
                peer_metadata: PeerMetadata {
                    storage_id: Some("s".into()),
                    is_ephemeral: false,
                    capabilities: vec!["rounds/answers-every-sync/1".into()],
                },
                supported_protocol_versions: vec!["1".into()],
            },
        ),
        (
            "peer",
            Message::Peer {
                sender_id: "server".into(),
                target_id: "peer-1".into(),
                peer_metadata: PeerMetadata::default(),
                selected_protocol_version: "1".into(),
            },
        ),
        (
            "request",
            Message::Request {
                sender_id: "peer-1".into(),
                target_id: "server".into(),
                document_id: doc.clone(),
                data: vec![0x42, 0, 0, 1, 0, 0],
            },
        ),
        (
            "sync",
            Message::Sync {
                sender_id: "peer-1".into(),
                target_id: "server".into(),
                document_id: doc.clone(),
                data: vec![0x42, 0, 0, 1, 0, 0],
            },
        ),
        (
            "doc-unavailable",
            Message::DocUnavailable {
                sender_id: "s".into(),
                target_id: "p".into(),
                document_id: doc.clone(),
            },
        ),
        (
            "ephemeral",
            Message::Ephemeral {
                sender_id: "peer-1".into(),
                target_id: "server".into(),
                document_id: doc.clone(),
                session_id: "x".into(),
                count: 3,
                data: vec![0xa0],
            },
        ),
        (
            "remote-subscription-change",
            Message::RemoteSubscriptionChange {
                sender_id: "p".into(),
                target_id: "s".into(),
                add: vec!["a".into()],
                remove: vec![],
            },
        ),
        (
            "error",
            Message::Error {
                sender_id: Some("p".into()),
                target_id: None,
                message: "boom".into(),
            },
        ),
        (
            "leave",
            Message::Leave {
                sender_id: "p".into(),
            },
        ),
    ];
    for (name, m) in frames {
        std::fs::write(dir.join("frames").join(format!("{name}.cbor")), m.encode()).unwrap();
    }
    let entries = [
        (
            "interaction",
            r#"{"id":"01930c1e-7c1a-7cc2-a5d1-2b9e1f0e4a11","patient":"p-001","staff":"rn-lee","program":"ccm","started_at":"2026-11-03T14:00:00-05:00","ended_at":"2026-11-03T14:12:30-05:00","interactive":true,"activity":"phone_call","note":"n"}"#,
        ),
        (
            "reading",
            r#"{"id":"01930c1f-0000-7000-8000-000000000001","patient":"p-001","kind":"blood_pressure","systolic":142,"diastolic":88,"unit":"mm[Hg]","measured_at":"2026-11-03T08:01:00-05:00","device":"cuff-77","source":"device"}"#,
        ),
        (
            "timer",
            r#"{"id":"01930c1f-0000-7000-8000-000000000002","patient":"p-001","staff":"rn-lee","program":"rpm","started_at":"2026-11-03T08:01:00-05:00"}"#,
        ),
        (
            "stop",
            r#"{"ended_at":"2026-11-03T08:21:00-05:00","interactive":true,"note":null}"#,
        ),
        (
            "correction",
            r#"{"id":"01930c1f-0000-7000-8000-000000000003","target":"01930c1f-0000-7000-8000-000000000001","kind":"void","at":"2026-11-04T08:00:00-05:00","by":"rn-lee"}"#,
        ),
    ];
    for (name, e) in entries {
        std::fs::write(dir.join("entries").join(format!("{name}.json")), e).unwrap();
    }
}

/// Change chunks of a real tablet: a month's root fields, an interaction, and a large change that
/// Automerge sends compressed.
fn change_seeds() -> (automerge::Automerge, Vec<Vec<u8>>) {
    use automerge::transaction::Transactable;
    let base = document::genesis(DocKind::PatientMonth).unwrap();
    let mut doc = base.fork();
    doc.set_actor(automerge::ActorId::from(b"tablet-1".as_slice()));
    let mut seeds = Vec::new();
    doc.transact::<_, _, automerge::AutomergeError>(|tx| {
        tx.put(automerge::ROOT, "facility", "f")?;
        tx.put(automerge::ROOT, "patient", "p-1")?;
        tx.put(automerge::ROOT, "month", "2026-11")
    })
    .unwrap();
    seeds.push(doc.get_last_local_change().unwrap().raw_bytes().to_vec());
    let entry = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/entries/interaction.json"),
    )
    .unwrap();
    let json: serde_json::Value = serde_json::from_str(&entry).unwrap();
    doc.transact::<_, _, automerge::AutomergeError>(|tx| {
        let m = document::container(tx, document::INTERACTIONS).unwrap();
        document::put_json(tx, &m, "0193b2a4-5c6d-7e8f-9a0b-1c2d3e4f5a6b", &json)
    })
    .unwrap();
    seeds.push(doc.get_last_local_change().unwrap().raw_bytes().to_vec());
    doc.transact::<_, _, automerge::AutomergeError>(|tx| {
        let m = document::container(tx, document::READINGS).unwrap();
        let long = "x".repeat(600);
        tx.put(&m, "k", long)
    })
    .unwrap();
    let mut big = doc.get_last_local_change().unwrap();
    seeds.push(big.bytes().to_vec());
    (base, seeds)
}

#[test]
fn fuzz_gate_and_policy() {
    use rounds_core::policy::{DocScope, Pending, check_device_change};
    use rounds_core::sync::gate::{GateLimits, expand, screen};
    let (doc, seeds) = change_seeds();
    let scope = DocScope::patient_month("f", "p-1", "2026-11".parse().unwrap());
    let limits = GateLimits::default();
    // The seeds themselves pass the gate.
    for s in &seeds {
        screen([s.as_slice()].into_iter(), &limits).unwrap();
    }
    let s = seed();
    let mut rng = Rng(s ^ 0x51ed_270b);
    let deadline = Instant::now() + budget();
    let mut runs = 0u64;
    while Instant::now() < deadline {
        let i = rng.below(seeds.len());
        let input = mutate(&mut rng, &seeds[i]);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if let Ok(changes) = screen([input.as_slice()].into_iter(), &limits) {
                let mut pending = Pending::default();
                for c in &changes {
                    if let Some(e) = expand(c) {
                        let _ = check_device_change(
                            &doc,
                            &doc.get_heads(),
                            &scope,
                            &e,
                            &[],
                            &mut pending,
                        );
                    }
                }
            }
        }));
        assert!(result.is_ok(), "seed {s}: gate failed on {}", hex(&input));
        runs += 1;
    }
    eprintln!("fuzz_gate_and_policy: {runs} inputs, seed {s}");
}

/// The seeds of the cargo-fuzz targets (`fuzz/fuzz_targets/`): real change chunks for `gate`,
/// sync frames carrying them for `hub_frame`. Written with `ROUNDS_WRITE_CORPUS=1`; checked
/// always.
fn cargo_fuzz_seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let (_, changes) = change_seeds();
    let mut out = Vec::new();
    for (i, c) in changes.iter().enumerate() {
        out.push(("gate", format!("change-{i}.bin"), c.clone()));
        let data = automerge::sync::Message {
            heads: Vec::new(),
            need: Vec::new(),
            have: vec![automerge::sync::Have::default()],
            changes: automerge::sync::ChunkList::from(changes[..=i].to_vec()),
            flags: None,
            version: automerge::sync::MessageVersion::V1,
        }
        .encode();
        let frame = Message::Sync {
            sender_id: "p".into(),
            target_id: "server".into(),
            document_id: DocumentId::from_bytes([7; 16]).to_string(),
            data,
        }
        .encode();
        out.push(("hub_frame", format!("sync-{i}.cbor"), frame));
    }
    out
}

#[test]
fn cargo_fuzz_seeds_are_committed_and_valid() {
    use rounds_core::sync::gate::{GateLimits, screen};
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    for (target, name, bytes) in cargo_fuzz_seeds() {
        let path = dir.join(target).join(&name);
        if std::env::var("ROUNDS_WRITE_CORPUS").is_ok() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &bytes).unwrap();
        }
        let committed = std::fs::read(&path).unwrap_or_else(|e| {
            panic!("{}: {e} (ROUNDS_WRITE_CORPUS=1 writes it)", path.display())
        });
        match target {
            "gate" => {
                screen([committed.as_slice()].into_iter(), &GateLimits::default())
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
            }
            _ => assert!(
                Message::decode(&committed).is_ok(),
                "{name} does not decode"
            ),
        }
    }
}
