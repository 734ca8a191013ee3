//! The gate: bounded screening of the changes in an incoming sync message, before Automerge
//! parses, inflates or applies anything.
//!
//! Automerge trusts its input's sizes: a compressed change chunk inflates without limit, a
//! run-length column can claim 2^60 operations in ten bytes, and a count prefix can ask for a
//! huge allocation. So every change chunk of a message is read here first, with work bounded by
//! [`GateLimits`]:
//! - only change chunks (type 1) and compressed change chunks (type 2) pass; whole documents
//!   (type 0) and bundles (type 3) are refused — the hub asks peers for changes only;
//! - a compressed chunk is inflated through a reader that stops one byte past the cap, so a
//!   deflate bomb costs at most the cap in memory and time;
//! - the change header's counts (dependencies, actors, columns) are checked against the bytes
//!   that are really there, actor indexes against the actors named;
//! - every column's rows are counted from its run headers, stopping as soon as the count passes
//!   the operation cap (per change and per message), so a forged run length is never expanded.
//!
//! Only then is the change handed to Automerge (`Change::try_from`), whose own verification is
//! now bounded by what was counted here. Expansion into operations runs behind `catch_unwind`
//! as a second line of defence (a fuzzer once found a panic there).

use std::io::Read;

use automerge::Change;

/// Caps on the work one message may cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateLimits {
    /// Inflated bytes of one change.
    pub max_change_bytes: usize,
    /// Inflated bytes of all changes of one message.
    pub max_message_bytes: usize,
    /// Operations (and list elements of grouped columns) of one change.
    pub max_change_ops: u64,
    /// Operations of all changes of one message.
    pub max_message_ops: u64,
    /// Changes in one message.
    pub max_changes: usize,
}

impl Default for GateLimits {
    fn default() -> GateLimits {
        GateLimits {
            max_change_bytes: 4 << 20,
            max_message_bytes: 16 << 20,
            max_change_ops: 50_000,
            max_message_ops: 200_000,
            max_changes: 10_000,
        }
    }
}

/// Why a message's changes were refused before Automerge saw them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GateError {
    #[error("change {index}: {what} exceeds the limit of {limit}")]
    TooLarge {
        index: usize,
        what: &'static str,
        limit: u64,
    },
    #[error("change {index}: {what}")]
    Malformed { index: usize, what: String },
    #[error("change {index}: whole-document chunks are not accepted; send changes")]
    DocumentChunk { index: usize },
}

const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
/// Columns a change may have (Automerge writes 11–13).
const MAX_COLUMNS: u64 = 64;
/// Actors a change may name besides its own.
const MAX_ACTORS: u64 = 1024;
/// Bytes of one actor id.
const MAX_ACTOR_BYTES: u64 = 128;

/// Screen every change chunk of a sync message; returns the parsed changes, in order.
pub fn screen<'a>(
    chunks: impl Iterator<Item = &'a [u8]>,
    limits: &GateLimits,
) -> Result<Vec<Change>, GateError> {
    let mut out = Vec::new();
    let mut bytes_total = 0usize;
    let mut ops_total = 0u64;
    for entry in chunks {
        let mut rest = entry;
        // One entry may hold several concatenated chunks.
        while !rest.is_empty() {
            let index = out.len();
            if index >= limits.max_changes {
                return Err(GateError::TooLarge {
                    index,
                    what: "the number of changes in one message",
                    limit: limits.max_changes as u64,
                });
            }
            let malformed = |what: &str| GateError::Malformed {
                index,
                what: what.to_string(),
            };
            if rest.len() < 9 || rest[..4] != MAGIC {
                return Err(malformed("not an Automerge chunk (bad magic bytes)"));
            }
            let checksum = [rest[4], rest[5], rest[6], rest[7]];
            let chunk_type = rest[8];
            let mut r = Reader::new(&rest[9..]);
            let len = r.uleb().ok_or_else(|| malformed("bad chunk length"))?;
            let header_len = 9 + r.pos;
            let body = r
                .take(len)
                .ok_or_else(|| malformed("chunk length past the end of the message"))?;
            let chunk_end = header_len + body.len();
            // The change chunk as Automerge will parse it (compressed ones rebuilt uncompressed,
            // same checksum), and its body.
            let (chunk, change_body): (std::borrow::Cow<'_, [u8]>, usize) = match chunk_type {
                1 => (std::borrow::Cow::Borrowed(&rest[..chunk_end]), header_len),
                2 => {
                    let inflated =
                        inflate(body, limits.max_change_bytes).ok_or(GateError::TooLarge {
                            index,
                            what: "the inflated size of a change",
                            limit: limits.max_change_bytes as u64,
                        })?;
                    let inflated = inflated.map_err(|e| malformed(&format!("deflate: {e}")))?;
                    let mut chunk = Vec::with_capacity(inflated.len() + 16);
                    chunk.extend_from_slice(&MAGIC);
                    chunk.extend_from_slice(&checksum);
                    chunk.push(1);
                    write_uleb(&mut chunk, inflated.len() as u64);
                    let start = chunk.len();
                    chunk.extend_from_slice(&inflated);
                    (std::borrow::Cow::Owned(chunk), start)
                }
                0 | 3 => return Err(GateError::DocumentChunk { index }),
                t => return Err(malformed(&format!("unknown chunk type {t}"))),
            };
            check_size(index, chunk.len() - change_body, bytes_total, limits)?;
            let ops =
                count_ops(&chunk[change_body..], limits.max_change_ops).map_err(|e| match e {
                    Count::TooMany => GateError::TooLarge {
                        index,
                        what: "the operation count of a change",
                        limit: limits.max_change_ops,
                    },
                    Count::Malformed(what) => malformed(what),
                })?;
            ops_total += ops;
            if ops_total > limits.max_message_ops {
                return Err(GateError::TooLarge {
                    index,
                    what: "the operation count of one message",
                    limit: limits.max_message_ops,
                });
            }
            bytes_total += chunk.len();
            let change = Change::try_from(&chunk[..])
                .map_err(|e| malformed(&format!("not a valid change: {e}")))?;
            out.push(change);
            rest = &rest[chunk_end..];
        }
    }
    Ok(out)
}

/// The operations of a change, expanded; `None` when Automerge cannot expand it.
pub fn expand(change: &Change) -> Option<automerge::ExpandedChange> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| change.decode())).ok()
}

fn check_size(
    index: usize,
    len: usize,
    total: usize,
    limits: &GateLimits,
) -> Result<(), GateError> {
    if len > limits.max_change_bytes {
        return Err(GateError::TooLarge {
            index,
            what: "the size of a change",
            limit: limits.max_change_bytes as u64,
        });
    }
    if total + len > limits.max_message_bytes {
        return Err(GateError::TooLarge {
            index,
            what: "the inflated size of one message",
            limit: limits.max_message_bytes as u64,
        });
    }
    Ok(())
}

/// Inflate raw deflate data; `None` when it would exceed `cap` bytes.
fn inflate(data: &[u8], cap: usize) -> Option<std::io::Result<Vec<u8>>> {
    let decoder = flate2::bufread::DeflateDecoder::new(data);
    let mut out = Vec::new();
    match decoder.take(cap as u64 + 1).read_to_end(&mut out) {
        Ok(_) if out.len() > cap => None,
        Ok(_) => Some(Ok(out)),
        Err(e) => Some(Err(e)),
    }
}

fn write_uleb(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

enum Count {
    TooMany,
    Malformed(&'static str),
}

/// Count the rows of every column of a change body; the largest is the operation count.
fn count_ops(body: &[u8], cap: u64) -> Result<u64, Count> {
    let bad = Count::Malformed;
    let mut r = Reader::new(body);
    let deps = r.uleb().ok_or(bad("bad dependency count"))?;
    if deps > (r.remaining() / 32) as u64 {
        return Err(bad("dependency count past the end of the change"));
    }
    r.take(deps * 32).ok_or(bad("dependencies"))?;
    let actor_len = r.uleb().ok_or(bad("bad actor"))?;
    if actor_len > MAX_ACTOR_BYTES {
        return Err(bad("actor id too long"));
    }
    r.take(actor_len).ok_or(bad("actor past the end"))?;
    r.uleb().ok_or(bad("bad seq"))?;
    r.uleb().ok_or(bad("bad start op"))?;
    r.sleb().ok_or(bad("bad time"))?;
    let message_len = r.uleb().ok_or(bad("bad message length"))?;
    r.take(message_len).ok_or(bad("message past the end"))?;
    let others = r.uleb().ok_or(bad("bad actor count"))?;
    if others > MAX_ACTORS {
        return Err(bad("too many actors"));
    }
    for _ in 0..others {
        let l = r.uleb().ok_or(bad("bad actor"))?;
        if l > MAX_ACTOR_BYTES {
            return Err(bad("actor id too long"));
        }
        r.take(l).ok_or(bad("actor past the end"))?;
    }
    let actors = others + 1;
    let ncols = r.uleb().ok_or(bad("bad column count"))?;
    if ncols > MAX_COLUMNS {
        return Err(bad("too many columns"));
    }
    let mut cols = Vec::with_capacity(ncols as usize);
    for _ in 0..ncols {
        let spec = r.uleb().ok_or(bad("bad column spec"))?;
        let len = r.uleb().ok_or(bad("bad column length"))?;
        cols.push((spec, len));
    }
    let mut max_rows = 0u64;
    for (spec, len) in cols {
        let data = r.take(len).ok_or(bad("column data past the end"))?;
        if spec & 0b1000 != 0 {
            return Err(bad("compressed columns are not allowed in a change"));
        }
        let rows = match spec & 0b111 {
            // Group cardinality: rows, and the elements of the grouped columns.
            0 => {
                let (rows, sum) = rle_rows(data, cap, Val::Group)?;
                if sum > cap {
                    return Err(Count::TooMany);
                }
                rows.max(sum)
            }
            1 => rle_rows(data, cap, Val::Uleb { max: Some(actors) })?.0,
            2 | 6 => rle_rows(data, cap, Val::Uleb { max: None })?.0,
            3 => rle_rows(data, cap, Val::Sleb)?.0,
            4 => bool_rows(data, cap)?,
            5 => rle_rows(data, cap, Val::Str)?.0,
            // Raw values: bytes, no rows of their own.
            _ => 0,
        };
        max_rows = max_rows.max(rows);
    }
    Ok(max_rows)
}

#[derive(Clone, Copy)]
enum Val {
    /// Unsigned values; actor columns must stay below the number of actors.
    Uleb {
        max: Option<u64>,
    },
    /// Group cardinalities: their sum is capped too.
    Group,
    Sleb,
    Str,
}

/// Rows of a run-length encoded column and the sum of its unsigned values (for groups).
fn rle_rows(data: &[u8], cap: u64, val: Val) -> Result<(u64, u64), Count> {
    let bad = Count::Malformed;
    let mut r = Reader::new(data);
    let mut rows = 0u64;
    let mut sum = 0u64;
    let group = matches!(val, Val::Group);
    let value = |r: &mut Reader<'_>| -> Result<u64, Count> {
        match val {
            Val::Uleb { max } => {
                let v = r.uleb().ok_or(bad("bad column value"))?;
                if max.is_some_and(|m| v >= m) {
                    return Err(bad("actor index out of range"));
                }
                Ok(v)
            }
            Val::Group => r.uleb().ok_or(bad("bad column value")),
            Val::Sleb => r.sleb().map(|_| 0).ok_or(bad("bad column value")),
            Val::Str => {
                let l = r.uleb().ok_or(bad("bad string length"))?;
                r.take(l).ok_or(bad("string past the end"))?;
                Ok(0)
            }
        }
    };
    while r.remaining() > 0 {
        let count = r.sleb().ok_or(bad("bad run header"))?;
        if count > 0 {
            let n = count as u64;
            let v = value(&mut r)?;
            rows = rows.saturating_add(n);
            if group {
                sum = sum.saturating_add(n.saturating_mul(v));
            }
        } else if count < 0 {
            let n = count.unsigned_abs();
            if n > r.remaining() as u64 {
                return Err(bad("literal run past the end"));
            }
            for _ in 0..n {
                let v = value(&mut r)?;
                if group {
                    sum = sum.saturating_add(v);
                }
            }
            rows = rows.saturating_add(n);
        } else {
            let n = r.uleb().ok_or(bad("bad null run"))?;
            rows = rows.saturating_add(n);
        }
        if rows > cap || sum > cap {
            return Err(Count::TooMany);
        }
    }
    Ok((rows, sum))
}

fn bool_rows(data: &[u8], cap: u64) -> Result<u64, Count> {
    let mut r = Reader::new(data);
    let mut rows = 0u64;
    while r.remaining() > 0 {
        let n = r.uleb().ok_or(Count::Malformed("bad boolean run"))?;
        rows = rows.saturating_add(n);
        if rows > cap {
            return Err(Count::TooMany);
        }
    }
    Ok(rows)
}

/// A cursor over bytes with LEB128 reads that never panic.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(data: &'a [u8]) -> Reader<'a> {
        Reader { data, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    fn take(&mut self, n: u64) -> Option<&'a [u8]> {
        let n = usize::try_from(n).ok()?;
        let end = self.pos.checked_add(n)?;
        let s = self.data.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }

    fn uleb(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.data.get(self.pos)?;
            self.pos += 1;
            let part = u64::from(b & 0x7f);
            if shift == 63 && part > 1 {
                return None;
            }
            v |= part << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    fn sleb(&mut self) -> Option<i64> {
        let mut v = 0i64;
        let mut shift = 0u32;
        loop {
            let b = *self.data.get(self.pos)?;
            self.pos += 1;
            if shift >= 64 {
                return None;
            }
            v |= i64::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                if shift < 64 && b & 0x40 != 0 {
                    v |= -1i64 << shift;
                }
                return Some(v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::transaction::Transactable;
    use automerge::{ActorId, AutoCommit, ROOT};

    /// A change chunk around a hand-made body (checksum left zero: the gate refuses first).
    fn chunk_with_body(body: &[u8]) -> Vec<u8> {
        let mut chunk = MAGIC.to_vec();
        chunk.extend_from_slice(&[0, 0, 0, 0, 1]);
        write_uleb(&mut chunk, body.len() as u64);
        chunk.extend_from_slice(body);
        chunk
    }

    fn a_change() -> Change {
        let mut doc = AutoCommit::new();
        doc.set_actor(ActorId::from(b"tablet".as_slice()));
        doc.put(ROOT, "k", "v").unwrap();
        doc.put(ROOT, "n", 5).unwrap();
        doc.commit();
        doc.get_last_local_change().unwrap().clone()
    }

    #[test]
    fn real_changes_pass_plain_and_compressed() {
        let mut c = a_change();
        let raw = c.raw_bytes().to_vec();
        let got = screen([raw.as_slice()].into_iter(), &GateLimits::default()).unwrap();
        assert_eq!(got[0].hash(), c.hash());
        // A big change is sent compressed.
        let mut doc = AutoCommit::new();
        let text: String = "abc".repeat(2000);
        doc.put(ROOT, "t", text.as_str()).unwrap();
        doc.commit();
        let mut big = doc.get_last_local_change().unwrap().clone();
        let compressed = big.bytes().to_vec();
        assert_eq!(compressed[8], 2, "compressed chunk");
        let got = screen([compressed.as_slice()].into_iter(), &GateLimits::default()).unwrap();
        assert_eq!(got[0].hash(), big.hash());
        let _ = c.bytes();
    }

    #[test]
    fn a_deflate_bomb_is_refused_at_the_cap() {
        // 64 MiB of zeros, deflated to a few kB, in a compressed-change chunk.
        let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut enc, &vec![0u8; 64 << 20]).unwrap();
        let body = enc.finish().unwrap();
        let mut chunk = MAGIC.to_vec();
        chunk.extend_from_slice(&[0, 0, 0, 0, 2]);
        write_uleb(&mut chunk, body.len() as u64);
        chunk.extend_from_slice(&body);
        let err = screen([chunk.as_slice()].into_iter(), &GateLimits::default()).unwrap_err();
        assert!(matches!(err, GateError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn forged_run_lengths_are_counted_not_expanded() {
        // A hand-made body: no deps, actor "a", seq 1, start op 1, time 0, no message, no other
        // actors, one uLEB column (action, id 4) holding one run of 2^40 rows.
        let mut body = vec![0, 1, b'a', 1, 1, 0, 0, 0, 1, (4 << 4) | 2];
        let mut col = Vec::new();
        write_uleb(&mut col, 1 << 40); // a positive sLEB of this size needs the sign bit clear
        col.push(1);
        write_uleb(&mut body, col.len() as u64);
        body.extend_from_slice(&col);
        let chunk = chunk_with_body(&body);
        let err = screen([chunk.as_slice()].into_iter(), &GateLimits::default()).unwrap_err();
        assert!(
            matches!(
                err,
                GateError::TooLarge {
                    what: "the operation count of a change",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn document_chunks_and_garbage_are_refused() {
        let mut doc = AutoCommit::new();
        doc.put(ROOT, "k", "v").unwrap();
        let saved = doc.save();
        assert!(matches!(
            screen([saved.as_slice()].into_iter(), &GateLimits::default()),
            Err(GateError::DocumentChunk { .. })
        ));
        for junk in [
            &b""[..],
            b"\x85\x6f\x4a\x83",
            b"hello world",
            b"\x85\x6f\x4a\x83\0\0\0\0\x01\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
        ] {
            let r = screen([junk].into_iter(), &GateLimits::default());
            assert!(r.is_err() || junk.is_empty(), "{junk:?}");
        }
    }

    #[test]
    fn an_out_of_range_actor_index_is_malformed() {
        // One actor column (id 0) naming actor index 9 of a change that has one actor.
        let mut body = vec![0, 1, b'a', 1, 1, 0, 0, 0, 1, 1 /* column 0, actor */];
        let col = [1u8, 9];
        write_uleb(&mut body, col.len() as u64);
        body.extend_from_slice(&col);
        let chunk = chunk_with_body(&body);
        let err = screen([chunk.as_slice()].into_iter(), &GateLimits::default()).unwrap_err();
        assert!(matches!(err, GateError::Malformed { .. }), "{err}");
        assert!(
            err.to_string().contains("actor index out of range"),
            "{err}"
        );
    }
}
