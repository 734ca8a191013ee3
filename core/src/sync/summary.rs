//! The batched summary exchange (`rounds/summary/1`): a reconnecting device states in one message
//! which documents it holds unchanged, and the server names the few that changed, so an idle
//! reconnect costs one round trip and 14 bytes per document instead of one automerge-repo round
//! trip (~480 bytes) per document.
//!
//! **Entries.** A device summarizes only documents whose heads equal the heads it last shared
//! with this server (its own unsent changes always go through per-document sync). Each entry is
//! 14 bytes: the first [`PREFIX`] bytes of the document id, then the [`FINGERPRINT`]-byte
//! [`fingerprint`] of the document's heads under the connection's salt.
//!
//! **The fingerprint** is the first 8 bytes of SHA-256(`rounds-summary/1` ‖ salt ‖ document id ‖
//! heads sorted, 32 bytes each). The salt is chosen at random by the device for every connection.
//! Why 8 bytes is enough, and why a collision cannot hide a change for good:
//! - an accidental collision (the server's heads differ, the fingerprints agree) has probability
//!   2⁻⁶⁴ per document and connection; the next connection draws a new salt, so the same
//!   pair of heads does not collide twice except by the same chance;
//! - nobody can aim at a collision: the salt is unknown until the device sends it, and the
//!   server's heads are fixed by then (another device would have to guess the salt first);
//! - it can only ever hide a change *from the device*: the device's own changes never go
//!   through the summary (a document with unconfirmed local changes is synced in full).
//!
//! **Prefixes.** A 6-byte prefix (48 bits: document ids are SHA-256-derived, and their first six
//! bytes hold no UUID version or variant bits) names a document within the server's store; a
//! store of a million documents holds some pair sharing a prefix with probability ≈ 0.2 %, and
//! such a pair only costs those two documents a per-document sync. When a prefix matches no
//! stored document the device may see, or more than one, the server lists it as unknown and the
//! device syncs those documents one by one (a device also never summarizes two documents that
//! share a prefix). Either way, nothing is skipped on a guess.
//!
//! **The reply** lists, in full, the ids of the summarized documents whose heads differ on the
//! server and the prefixes it could not resolve. Every other summarized document is in sync: the
//! server watches it for the connection and starts a per-document sync when it changes later in
//! the connection. Documents the device lacks (a new resident, a new month) reach it through the
//! facility document, which lists them, as with plain automerge-repo peers.

use automerge::ChangeHash;
use sha2::{Digest, Sha256};

use crate::ids::DocumentId;

/// Bytes of a document-id prefix in an entry.
pub const PREFIX: usize = 6;
/// Bytes of a fingerprint in an entry.
pub const FINGERPRINT: usize = 8;
/// Bytes of one entry.
pub const ENTRY: usize = PREFIX + FINGERPRINT;
/// Salt length bounds.
pub const MIN_SALT: usize = 8;
pub const MAX_SALT: usize = 32;

/// A document-id prefix.
pub type Prefix = [u8; PREFIX];

/// The prefix of a document id.
pub fn prefix(doc: &DocumentId) -> Prefix {
    let mut p = [0u8; PREFIX];
    p.copy_from_slice(&doc.as_bytes()[..PREFIX]);
    p
}

/// The fingerprint of a document's heads under `salt` (the order of `heads` does not matter).
pub fn fingerprint(salt: &[u8], doc: &DocumentId, heads: &[ChangeHash]) -> [u8; FINGERPRINT] {
    let mut sorted: Vec<&ChangeHash> = heads.iter().collect();
    sorted.sort();
    let mut h = Sha256::new();
    h.update(b"rounds-summary/1");
    h.update([salt.len() as u8]);
    h.update(salt);
    h.update(doc.as_bytes());
    for head in sorted {
        h.update(head.0);
    }
    let digest = h.finalize();
    let mut out = [0u8; FINGERPRINT];
    out.copy_from_slice(&digest[..FINGERPRINT]);
    out
}

/// One entry's bytes.
pub fn entry(salt: &[u8], doc: &DocumentId, heads: &[ChangeHash]) -> [u8; ENTRY] {
    let mut e = [0u8; ENTRY];
    e[..PREFIX].copy_from_slice(&prefix(doc));
    e[PREFIX..].copy_from_slice(&fingerprint(salt, doc, heads));
    e
}

/// Split concatenated entries (a length not a multiple of [`ENTRY`] is refused by the decoder;
/// a trailing partial entry is ignored here).
pub fn entries(bytes: &[u8]) -> impl Iterator<Item = (Prefix, [u8; FINGERPRINT])> + '_ {
    bytes.chunks_exact(ENTRY).map(|e| {
        let mut p = [0u8; PREFIX];
        let mut f = [0u8; FINGERPRINT];
        p.copy_from_slice(&e[..PREFIX]);
        f.copy_from_slice(&e[PREFIX..]);
        (p, f)
    })
}

/// Split concatenated document ids.
pub fn document_ids(bytes: &[u8]) -> impl Iterator<Item = DocumentId> + '_ {
    bytes.chunks_exact(16).map(|b| {
        let mut id = [0u8; 16];
        id.copy_from_slice(b);
        DocumentId::from_bytes(id)
    })
}

/// Split concatenated prefixes.
pub fn prefixes(bytes: &[u8]) -> impl Iterator<Item = Prefix> + '_ {
    bytes.chunks_exact(PREFIX).map(|b| {
        let mut p = [0u8; PREFIX];
        p.copy_from_slice(b);
        p
    })
}

/// What a store knows of a prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolved {
    /// No stored document has it.
    None,
    /// Exactly this one.
    One(DocumentId),
    /// Several documents share it: the device must sync them one by one.
    Many,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(b: u8) -> ChangeHash {
        ChangeHash([b; 32])
    }

    #[test]
    fn the_fingerprint_depends_on_salt_document_and_heads_not_their_order() {
        let doc = DocumentId::from_bytes([1; 16]);
        let other = DocumentId::from_bytes([2; 16]);
        let f = fingerprint(b"saltsalt", &doc, &[hash(1), hash(2)]);
        assert_eq!(f, fingerprint(b"saltsalt", &doc, &[hash(2), hash(1)]));
        assert_ne!(f, fingerprint(b"saltsalT", &doc, &[hash(1), hash(2)]));
        assert_ne!(f, fingerprint(b"saltsalt", &other, &[hash(1), hash(2)]));
        assert_ne!(f, fingerprint(b"saltsalt", &doc, &[hash(1)]));
        let e = entry(b"saltsalt", &doc, &[hash(1)]);
        assert_eq!(
            entries(&e).collect::<Vec<_>>(),
            vec![(prefix(&doc), fingerprint(b"saltsalt", &doc, &[hash(1)]))]
        );
    }
}
