//! The automerge-repo v1 wire messages (`docs/sync-protocol.md`): one CBOR map per WebSocket
//! binary frame, text keys, byte strings for `data`. Decoding is lenient where real peers are
//! (integers as floats, `undefined` metadata, unknown keys, document ids as bytes) and strict
//! where it matters (a frame that is not a CBOR map with a known `type` is an error).

use std::collections::BTreeMap;

use ciborium::Value;

/// The only protocol version we speak.
pub const PROTOCOL_VERSION: &str = "1";

/// A Rounds server's capability: it answers every `sync` message, even about a document that is
/// unchanged on both sides, so a device may wait for an answer per document instead of settling
/// by silence.
pub const CAP_ANSWERS_EVERY_SYNC: &str = "rounds/answers-every-sync/1";

/// The batched summary exchange (`rounds-summary` / `rounds-summary-reply`, see
/// [`super::summary`]): listed by a device in `join` and by the server in `peer`; a device sends a
/// summary only to a server that listed it.
pub const CAP_SUMMARY: &str = "rounds/summary/1";

/// Capabilities a peer may list; more than this many, or longer names, are ignored.
const MAX_CAPABILITIES: usize = 16;
const MAX_CAPABILITY_LEN: usize = 64;

/// Peer metadata sent in `join` and `peer`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerMetadata {
    pub storage_id: Option<String>,
    pub is_ephemeral: bool,
    /// Rounds extensions the peer speaks (`roundsCapabilities`: a list of text in the metadata
    /// map; automerge-repo peers ignore the key and send none). Empty for plain peers.
    pub capabilities: Vec<String>,
}

impl PeerMetadata {
    /// Whether the peer listed `capability`.
    pub fn has(&self, capability: &str) -> bool {
        self.capabilities.iter().any(|c| c == capability)
    }
}

/// One wire message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Join {
        sender_id: String,
        peer_metadata: PeerMetadata,
        supported_protocol_versions: Vec<String>,
    },
    Peer {
        sender_id: String,
        target_id: String,
        peer_metadata: PeerMetadata,
        selected_protocol_version: String,
    },
    Request {
        sender_id: String,
        target_id: String,
        document_id: String,
        data: Vec<u8>,
    },
    Sync {
        sender_id: String,
        target_id: String,
        document_id: String,
        data: Vec<u8>,
    },
    DocUnavailable {
        sender_id: String,
        target_id: String,
        document_id: String,
    },
    Ephemeral {
        sender_id: String,
        target_id: String,
        document_id: String,
        session_id: String,
        count: u64,
        data: Vec<u8>,
    },
    RemoteSubscriptionChange {
        sender_id: String,
        target_id: String,
        add: Vec<String>,
        remove: Vec<String>,
    },
    RemoteHeadsChanged {
        sender_id: String,
        target_id: String,
        document_id: String,
    },
    Error {
        sender_id: Option<String>,
        target_id: Option<String>,
        message: String,
    },
    Leave {
        sender_id: String,
    },
    /// `rounds-summary` (Rounds peers only): the documents a device holds unchanged since its
    /// last confirmed sync, as 14-byte entries (see [`super::summary`]).
    Summary {
        sender_id: String,
        target_id: String,
        /// The device's random per-connection key for the fingerprints (8 to 32 bytes).
        salt: Vec<u8>,
        /// Concatenated entries: 6-byte document-id prefix, 8-byte fingerprint of the heads.
        entries: Vec<u8>,
    },
    /// `rounds-summary-reply`: which summarized documents to sync document by document.
    SummaryReply {
        sender_id: String,
        target_id: String,
        /// Concatenated 16-byte ids of the documents whose heads differ.
        differ: Vec<u8>,
        /// Concatenated 6-byte prefixes the server could not resolve to exactly one document.
        unknown: Vec<u8>,
    },
}

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("frame is not CBOR: {0}")]
    NotCbor(String),
    #[error("frame is not a CBOR map")]
    NotAMap,
    #[error("message has no `type`")]
    NoType,
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    #[error("message {kind:?}: field `{field}` is missing or has the wrong type")]
    Field { kind: String, field: &'static str },
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::Text(s) => Some(s.clone()),
        // Old peers send document ids as bytes: take them as bs58check.
        Value::Bytes(b) if b.len() == 16 => Some(bs58::encode(b).with_check().into_string()),
        _ => None,
    }
}

fn uint(v: &Value) -> Option<u64> {
    match v {
        Value::Integer(i) => u64::try_from(i128::from(*i)).ok(),
        Value::Float(f) if *f >= 0.0 && f.fract() == 0.0 && *f < 1.8e19 => Some(*f as u64),
        _ => None,
    }
}

fn text_list(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(items)) => items.iter().filter_map(text).collect(),
        _ => Vec::new(),
    }
}

struct Fields<'a> {
    kind: String,
    map: BTreeMap<&'a str, &'a Value>,
}

impl<'a> Fields<'a> {
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).copied()
    }

    fn text(&self, field: &'static str) -> Result<String, WireError> {
        self.get(field).and_then(text).ok_or(WireError::Field {
            kind: self.kind.clone(),
            field,
        })
    }

    fn field(&self, field: &'static str) -> WireError {
        WireError::Field {
            kind: self.kind.clone(),
            field,
        }
    }

    fn opt_text(&self, field: &str) -> Option<String> {
        self.get(field).and_then(text)
    }

    fn bytes(&self, field: &'static str) -> Result<Vec<u8>, WireError> {
        match self.get(field) {
            Some(Value::Bytes(b)) => Ok(b.clone()),
            _ => Err(WireError::Field {
                kind: self.kind.clone(),
                field,
            }),
        }
    }

    fn metadata(&self) -> PeerMetadata {
        let m = self.get("peerMetadata").or_else(|| self.get("metadata"));
        let Some(Value::Map(entries)) = m else {
            return PeerMetadata::default();
        };
        let mut md = PeerMetadata::default();
        for (k, v) in entries {
            match (k, v) {
                (Value::Text(k), v) if k == "storageId" => md.storage_id = text(v),
                (Value::Text(k), Value::Bool(b)) if k == "isEphemeral" => md.is_ephemeral = *b,
                (Value::Text(k), Value::Array(caps)) if k == "roundsCapabilities" => {
                    // Lenient: entries that are not short text are skipped, the list is capped.
                    md.capabilities = caps
                        .iter()
                        .filter_map(|c| match c {
                            Value::Text(c) if c.len() <= MAX_CAPABILITY_LEN => Some(c.clone()),
                            _ => None,
                        })
                        .take(MAX_CAPABILITIES)
                        .collect();
                }
                _ => {}
            }
        }
        md
    }
}

impl Message {
    /// Decode one frame.
    pub fn decode(frame: &[u8]) -> Result<Message, WireError> {
        let value: Value =
            ciborium::de::from_reader(frame).map_err(|e| WireError::NotCbor(e.to_string()))?;
        let Value::Map(entries) = &value else {
            return Err(WireError::NotAMap);
        };
        let mut map = BTreeMap::new();
        for (k, v) in entries {
            if let Value::Text(k) = k {
                map.insert(k.as_str(), v);
            }
        }
        let kind = match map.get("type") {
            Some(Value::Text(t)) => t.clone(),
            _ => return Err(WireError::NoType),
        };
        let f = Fields { kind, map };
        Ok(match f.kind.as_str() {
            "join" => Message::Join {
                sender_id: f.text("senderId")?,
                peer_metadata: f.metadata(),
                supported_protocol_versions: match f.get("supportedProtocolVersions") {
                    None => vec![PROTOCOL_VERSION.to_string()],
                    v => text_list(v),
                },
            },
            "peer" => Message::Peer {
                sender_id: f.text("senderId")?,
                target_id: f.text("targetId")?,
                peer_metadata: f.metadata(),
                selected_protocol_version: f
                    .opt_text("selectedProtocolVersion")
                    .unwrap_or_else(|| PROTOCOL_VERSION.to_string()),
            },
            "request" | "sync" => {
                let (sender_id, target_id) = (f.text("senderId")?, f.text("targetId")?);
                let (document_id, data) = (f.text("documentId")?, f.bytes("data")?);
                if f.kind == "request" {
                    Message::Request {
                        sender_id,
                        target_id,
                        document_id,
                        data,
                    }
                } else {
                    Message::Sync {
                        sender_id,
                        target_id,
                        document_id,
                        data,
                    }
                }
            }
            "doc-unavailable" => Message::DocUnavailable {
                sender_id: f.text("senderId")?,
                target_id: f.text("targetId")?,
                document_id: f.text("documentId")?,
            },
            "ephemeral" => Message::Ephemeral {
                sender_id: f.text("senderId")?,
                target_id: f.text("targetId")?,
                document_id: f.text("documentId")?,
                session_id: f.text("sessionId")?,
                count: f.get("count").and_then(uint).ok_or(WireError::Field {
                    kind: f.kind.clone(),
                    field: "count",
                })?,
                data: f.bytes("data")?,
            },
            "remote-subscription-change" => Message::RemoteSubscriptionChange {
                sender_id: f.text("senderId")?,
                target_id: f.text("targetId")?,
                add: text_list(f.get("add")),
                remove: text_list(f.get("remove")),
            },
            "remote-heads-changed" => Message::RemoteHeadsChanged {
                sender_id: f.text("senderId")?,
                target_id: f.text("targetId")?,
                document_id: f.text("documentId")?,
            },
            "error" => Message::Error {
                sender_id: f.opt_text("senderId"),
                target_id: f.opt_text("targetId"),
                message: f.opt_text("message").unwrap_or_default(),
            },
            "leave" => Message::Leave {
                sender_id: f.text("senderId")?,
            },
            "rounds-summary" => {
                let salt = f.bytes("salt")?;
                let entries = f.bytes("entries")?;
                if !(super::summary::MIN_SALT..=super::summary::MAX_SALT).contains(&salt.len()) {
                    return Err(f.field("salt"));
                }
                if !entries.len().is_multiple_of(super::summary::ENTRY) {
                    return Err(f.field("entries"));
                }
                Message::Summary {
                    sender_id: f.text("senderId")?,
                    target_id: f.text("targetId")?,
                    salt,
                    entries,
                }
            }
            "rounds-summary-reply" => {
                let differ = f.bytes("differ")?;
                let unknown = f.bytes("unknown")?;
                if !differ.len().is_multiple_of(16) {
                    return Err(f.field("differ"));
                }
                if !unknown.len().is_multiple_of(super::summary::PREFIX) {
                    return Err(f.field("unknown"));
                }
                Message::SummaryReply {
                    sender_id: f.text("senderId")?,
                    target_id: f.text("targetId")?,
                    differ,
                    unknown,
                }
            }
            other => return Err(WireError::UnknownType(other.to_string())),
        })
    }

    /// Encode as one CBOR map (definite length, text keys, byte strings for data).
    pub fn encode(&self) -> Vec<u8> {
        let t = |s: &str| Value::Text(s.to_string());
        let mut m: Vec<(Value, Value)> = Vec::new();
        let mut put = |k: &str, v: Value| m.push((t(k), v));
        let md = |md: &PeerMetadata| {
            let mut e = vec![(t("isEphemeral"), Value::Bool(md.is_ephemeral))];
            if let Some(s) = &md.storage_id {
                e.insert(0, (t("storageId"), t(s)));
            }
            if !md.capabilities.is_empty() {
                e.push((
                    t("roundsCapabilities"),
                    Value::Array(md.capabilities.iter().map(|c| t(c)).collect()),
                ));
            }
            Value::Map(e)
        };
        match self {
            Message::Join {
                sender_id,
                peer_metadata,
                supported_protocol_versions,
            } => {
                put("type", t("join"));
                put("senderId", t(sender_id));
                put("peerMetadata", md(peer_metadata));
                put(
                    "supportedProtocolVersions",
                    Value::Array(supported_protocol_versions.iter().map(|v| t(v)).collect()),
                );
            }
            Message::Peer {
                sender_id,
                target_id,
                peer_metadata,
                selected_protocol_version,
            } => {
                put("type", t("peer"));
                put("senderId", t(sender_id));
                put("targetId", t(target_id));
                put("peerMetadata", md(peer_metadata));
                put("selectedProtocolVersion", t(selected_protocol_version));
            }
            Message::Request {
                sender_id,
                target_id,
                document_id,
                data,
            }
            | Message::Sync {
                sender_id,
                target_id,
                document_id,
                data,
            } => {
                let kind = if matches!(self, Message::Request { .. }) {
                    "request"
                } else {
                    "sync"
                };
                put("type", t(kind));
                put("senderId", t(sender_id));
                put("targetId", t(target_id));
                put("documentId", t(document_id));
                put("data", Value::Bytes(data.clone()));
            }
            Message::DocUnavailable {
                sender_id,
                target_id,
                document_id,
            } => {
                put("type", t("doc-unavailable"));
                put("senderId", t(sender_id));
                put("targetId", t(target_id));
                put("documentId", t(document_id));
            }
            Message::Ephemeral {
                sender_id,
                target_id,
                document_id,
                session_id,
                count,
                data,
            } => {
                put("type", t("ephemeral"));
                put("senderId", t(sender_id));
                put("targetId", t(target_id));
                put("documentId", t(document_id));
                put("sessionId", t(session_id));
                put("count", Value::Integer((*count).into()));
                put("data", Value::Bytes(data.clone()));
            }
            Message::RemoteSubscriptionChange {
                sender_id,
                target_id,
                add,
                remove,
            } => {
                put("type", t("remote-subscription-change"));
                put("senderId", t(sender_id));
                put("targetId", t(target_id));
                put("add", Value::Array(add.iter().map(|v| t(v)).collect()));
                put(
                    "remove",
                    Value::Array(remove.iter().map(|v| t(v)).collect()),
                );
            }
            Message::RemoteHeadsChanged {
                sender_id,
                target_id,
                document_id,
            } => {
                put("type", t("remote-heads-changed"));
                put("senderId", t(sender_id));
                put("targetId", t(target_id));
                put("documentId", t(document_id));
                put("newHeads", Value::Map(Vec::new()));
            }
            Message::Error {
                sender_id,
                target_id,
                message,
            } => {
                put("type", t("error"));
                if let Some(s) = sender_id {
                    put("senderId", t(s));
                }
                if let Some(s) = target_id {
                    put("targetId", t(s));
                }
                put("message", t(message));
            }
            Message::Leave { sender_id } => {
                put("type", t("leave"));
                put("senderId", t(sender_id));
            }
            Message::Summary {
                sender_id,
                target_id,
                salt,
                entries,
            } => {
                put("type", t("rounds-summary"));
                put("senderId", t(sender_id));
                put("targetId", t(target_id));
                put("salt", Value::Bytes(salt.clone()));
                put("entries", Value::Bytes(entries.clone()));
            }
            Message::SummaryReply {
                sender_id,
                target_id,
                differ,
                unknown,
            } => {
                put("type", t("rounds-summary-reply"));
                put("senderId", t(sender_id));
                put("targetId", t(target_id));
                put("differ", Value::Bytes(differ.clone()));
                put("unknown", Value::Bytes(unknown.clone()));
            }
        }
        let mut out = Vec::new();
        // Writing CBOR into a Vec cannot fail.
        let _ = ciborium::ser::into_writer(&Value::Map(m), &mut out);
        out
    }

    /// The document a message is about, if any.
    pub fn document_id(&self) -> Option<&str> {
        match self {
            Message::Request { document_id, .. }
            | Message::Sync { document_id, .. }
            | Message::DocUnavailable { document_id, .. }
            | Message::Ephemeral { document_id, .. }
            | Message::RemoteHeadsChanged { document_id, .. } => Some(document_id),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DocumentId;
    use automerge::ChangeHash;

    #[test]
    fn round_trips() {
        let msgs = vec![
            Message::Join {
                sender_id: "peer-a".into(),
                peer_metadata: PeerMetadata {
                    storage_id: Some("s-1".into()),
                    is_ephemeral: false,
                    capabilities: Vec::new(),
                },
                supported_protocol_versions: vec!["1".into()],
            },
            Message::Sync {
                sender_id: "a".into(),
                target_id: "b".into(),
                document_id: "doc".into(),
                data: vec![0x42, 1, 2],
            },
            Message::Ephemeral {
                sender_id: "a".into(),
                target_id: "b".into(),
                document_id: "doc".into(),
                session_id: "s".into(),
                count: 7,
                data: vec![1],
            },
            Message::DocUnavailable {
                sender_id: "a".into(),
                target_id: "b".into(),
                document_id: "d".into(),
            },
        ];
        for m in msgs {
            assert_eq!(Message::decode(&m.encode()).unwrap(), m);
        }
    }

    #[test]
    fn lenient_where_peers_are() {
        // {"type":"join","senderId":"p","peerMetadata":{"storageId":undefined},"extra":1}, count as float.
        let mut frame = vec![0xa4];
        for (k, v) in [("type", "join"), ("senderId", "p")] {
            frame.push(0x60 + k.len() as u8);
            frame.extend(k.as_bytes());
            frame.push(0x60 + v.len() as u8);
            frame.extend(v.as_bytes());
        }
        frame.push(0x6c);
        frame.extend(b"peerMetadata");
        frame.extend([0xa1, 0x69]);
        frame.extend(b"storageId");
        frame.push(0xf7);
        frame.push(0x65);
        frame.extend(b"extra");
        frame.push(0x01);
        let m = Message::decode(&frame).unwrap();
        assert!(
            matches!(m, Message::Join { ref peer_metadata, ref supported_protocol_versions, .. }
            if peer_metadata.storage_id.is_none() && supported_protocol_versions == &["1"])
        );
        assert_eq!(uint(&Value::Float(3.0)), Some(3));
    }

    #[test]
    fn capabilities_round_trip_and_are_read_leniently() {
        let m = Message::Peer {
            sender_id: "s".into(),
            target_id: "t".into(),
            peer_metadata: PeerMetadata {
                storage_id: Some("st".into()),
                is_ephemeral: false,
                capabilities: vec![CAP_ANSWERS_EVERY_SYNC.into()],
            },
            selected_protocol_version: "1".into(),
        };
        let back = Message::decode(&m.encode()).unwrap();
        assert_eq!(back, m);
        // A plain peer's metadata has no key for it, and encodes none.
        let plain = PeerMetadata {
            storage_id: Some("st".into()),
            ..PeerMetadata::default()
        };
        let join = Message::Join {
            sender_id: "p".into(),
            peer_metadata: plain,
            supported_protocol_versions: vec!["1".into()],
        };
        assert!(!String::from_utf8_lossy(&join.encode()).contains("roundsCapabilities"));
        // Entries that are not short text are skipped; the list is capped.
        let t = |s: &str| Value::Text(s.into());
        let mut caps = vec![Value::Integer(7.into()), t(&"x".repeat(65)), t("a")];
        caps.extend((0..40).map(|i| t(&format!("c{i}"))));
        let frame = {
            let mut out = Vec::new();
            let map = Value::Map(vec![
                (t("type"), t("join")),
                (t("senderId"), t("p")),
                (
                    t("peerMetadata"),
                    Value::Map(vec![(t("roundsCapabilities"), Value::Array(caps))]),
                ),
            ]);
            ciborium::ser::into_writer(&map, &mut out).unwrap();
            out
        };
        let Message::Join { peer_metadata, .. } = Message::decode(&frame).unwrap() else {
            panic!("not a join");
        };
        assert_eq!(peer_metadata.capabilities.len(), MAX_CAPABILITIES);
        assert_eq!(peer_metadata.capabilities[0], "a");
        assert!(!peer_metadata.has(CAP_ANSWERS_EVERY_SYNC));
    }

    #[test]
    fn strict_where_it_matters() {
        assert!(matches!(
            Message::decode(b"\xff\x00"),
            Err(WireError::NotCbor(_))
        ));
        assert!(matches!(Message::decode(&[0x01]), Err(WireError::NotAMap)));
        let unknown = {
            let mut out = Vec::new();
            ciborium::ser::into_writer(
                &Value::Map(vec![(
                    Value::Text("type".into()),
                    Value::Text("bogus".into()),
                )]),
                &mut out,
            )
            .unwrap();
            out
        };
        assert!(matches!(
            Message::decode(&unknown),
            Err(WireError::UnknownType(_))
        ));
    }

    #[test]
    fn summary_messages_round_trip() {
        let doc = DocumentId::from_bytes([9; 16]);
        let msgs = [
            Message::Summary {
                sender_id: "d".into(),
                target_id: "s".into(),
                salt: vec![7; 16],
                entries: crate::sync::summary::entry(&[7; 16], &doc, &[ChangeHash([3; 32])])
                    .to_vec(),
            },
            Message::SummaryReply {
                sender_id: "s".into(),
                target_id: "d".into(),
                differ: doc.as_bytes().to_vec(),
                unknown: vec![1; crate::sync::summary::PREFIX],
            },
        ];
        for m in msgs {
            assert_eq!(Message::decode(&m.encode()).unwrap(), m);
        }
    }

    #[test]
    fn malformed_summaries_are_refused_naming_the_field() {
        let field = |m: Message| match Message::decode(&m.encode()) {
            Err(WireError::Field { field, .. }) => field,
            other => panic!("accepted: {other:?}"),
        };
        let summary = |salt: Vec<u8>, entries: Vec<u8>| Message::Summary {
            sender_id: "d".into(),
            target_id: "s".into(),
            salt,
            entries,
        };
        assert_eq!(
            field(summary(vec![1; 4], vec![0; crate::sync::summary::ENTRY])),
            "salt"
        );
        assert_eq!(
            field(summary(vec![1; 33], vec![0; crate::sync::summary::ENTRY])),
            "salt"
        );
        assert_eq!(field(summary(vec![1; 8], vec![0; 17])), "entries");
        let reply = |differ: Vec<u8>, unknown: Vec<u8>| Message::SummaryReply {
            sender_id: "s".into(),
            target_id: "d".into(),
            differ,
            unknown,
        };
        assert_eq!(field(reply(vec![0; 15], vec![])), "differ");
        assert_eq!(field(reply(vec![], vec![0; 9])), "unknown");
    }
}
