//! The facility's HL7 v2 ADT feed in: `rounds serve --adt-listen ADDR --adt-config FILE`.
//!
//! One MLLP listener (TLS with the server's certificate under `--adt-tls`), one task per sending
//! connection, messages of a connection applied in order and every connection's messages one at
//! a time (`AdtFeed::apply`): parse, map MSH-4 to a facility, drop a repeat (MSH-10 already
//! applied), [`rounds_core::adt::plan`] against the residents as the documents hold them, add a
//! new resident to the roster when the plan says so, write the events through a staging replica
//! (the server's actor), commit (persisted before the ACK), remember MSH-10, audit, and answer
//! `AA`. Anything that cannot be applied is answered `AE` with the field and reason, and
//! writes nothing.

use std::sync::Arc;
use std::time::Duration;

use rounds_core::DocumentId;
use rounds_core::adt::{AckCode, AdtMessage, AdtPlan, AdtSettings, Resident, ack};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::Shared;
use crate::services::security::AuditRecord;

/// Connections the listener serves at once (a facility's interface engine holds one or two).
const MAX_CONNECTIONS: usize = 32;
/// A connection with no complete message for this long is closed.
const IDLE: Duration = Duration::from_secs(15 * 60);
/// The TLS handshake must finish within this.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// The feed's settings and state.
pub struct AdtFeed {
    pub settings: AdtSettings,
    /// sending facility + MSH-10 → what it did (a repeat is acknowledged and changes nothing).
    seen: crate::sync::store::kv::Tree,
    /// One message at a time, across connections.
    apply: tokio::sync::Mutex<()>,
}

/// What one message did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdtOutcome {
    Applied(String),
    Duplicate(String),
    Ignored(String),
    Rejected(String),
}

impl AdtOutcome {
    fn code(&self) -> AckCode {
        match self {
            AdtOutcome::Rejected(_) => AckCode::Error,
            _ => AckCode::Accept,
        }
    }

    fn text(&self) -> &str {
        match self {
            AdtOutcome::Applied(t)
            | AdtOutcome::Duplicate(t)
            | AdtOutcome::Ignored(t)
            | AdtOutcome::Rejected(t) => t,
        }
    }
}

impl AdtFeed {
    pub fn open(
        db: &crate::sync::store::kv::Db,
        settings: AdtSettings,
    ) -> Result<AdtFeed, crate::sync::store::kv::KvError> {
        Ok(AdtFeed {
            settings,
            seen: db.open_tree("adt_messages")?,
            apply: tokio::sync::Mutex::new(()),
        })
    }

    fn seen_key(sender: &str, control: &str) -> Vec<u8> {
        let mut k = sender.to_ascii_uppercase().into_bytes();
        k.push(0);
        k.extend_from_slice(control.as_bytes());
        k
    }
}

/// Start the listener; it stops when the server shuts down.
pub fn start(
    shared: Arc<Shared>,
    feed: Arc<AdtFeed>,
    listener: tokio::net::TcpListener,
    tls: Option<Arc<crate::server::tls::CurrentTls>>,
) {
    let mut shutdown = shared.shutdown.clone();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let (stream, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "ADT listener: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = shutdown.changed() => return,
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                tracing::warn!(%peer, "ADT listener: too many connections; closing one");
                drop(stream);
                continue;
            };
            let shared = shared.clone();
            let feed = feed.clone();
            // The certificate in use now (a reload applies to the next connection).
            let acceptor = tls
                .as_ref()
                .map(|c| tokio_rustls::TlsAcceptor::from(c.get()));
            tokio::spawn(async move {
                let _permit = permit;
                let client = peer.ip().to_string();
                match acceptor {
                    None => serve_connection(&shared, &feed, stream, &client).await,
                    Some(a) => match tokio::time::timeout(HANDSHAKE, a.accept(stream)).await {
                        Ok(Ok(tls)) => serve_connection(&shared, &feed, tls, &client).await,
                        _ => tracing::debug!(%client, "ADT listener: TLS handshake failed"),
                    },
                }
            });
        }
    });
}

/// Reads MLLP frames (`0x0b` message `0x1c 0x0d`) from a stream, keeping what follows a frame.
struct MllpReader {
    buf: Vec<u8>,
}

enum Frame {
    Message(Vec<u8>),
    TooLarge,
}

impl MllpReader {
    async fn next<S: AsyncRead + Unpin>(&mut self, s: &mut S) -> std::io::Result<Option<Frame>> {
        let limit = rounds_core::adt::MAX_MESSAGE_BYTES + 3;
        loop {
            // Anything before the start byte (line noise, keep-alive newlines) is dropped.
            match self.buf.iter().position(|b| *b == 0x0b) {
                Some(i) => {
                    self.buf.drain(..i);
                }
                None => self.buf.clear(),
            }
            if let Some(end) = self.buf.windows(2).position(|w| w == [0x1c, 0x0d]) {
                let frame: Vec<u8> = self.buf.drain(..end + 2).collect();
                return Ok(Some(Frame::Message(frame[1..end].to_vec())));
            }
            if self.buf.len() > limit {
                return Ok(Some(Frame::TooLarge));
            }
            let mut chunk = [0u8; 8192];
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                return Ok(None);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

async fn write_ack<S: AsyncWrite + Unpin>(s: &mut S, ack: &str) -> std::io::Result<()> {
    let mut frame = Vec::with_capacity(ack.len() + 3);
    frame.push(0x0b);
    frame.extend_from_slice(ack.as_bytes());
    frame.extend_from_slice(&[0x1c, 0x0d]);
    s.write_all(&frame).await?;
    s.flush().await
}

async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    feed: &AdtFeed,
    mut stream: S,
    client: &str,
) {
    let mut reader = MllpReader { buf: Vec::new() };
    loop {
        let frame = match tokio::time::timeout(IDLE, reader.next(&mut stream)).await {
            Ok(Ok(Some(f))) => f,
            _ => return,
        };
        match frame {
            Frame::Message(bytes) => {
                let (msg, outcome) = shared.apply_adt(feed, &bytes, client).await;
                let answer = ack(
                    msg.as_ref(),
                    outcome.code(),
                    outcome.text(),
                    chrono::Utc::now(),
                );
                if write_ack(&mut stream, &answer).await.is_err() {
                    return;
                }
            }
            Frame::TooLarge => {
                let text = format!(
                    "message: larger than {} bytes",
                    rounds_core::adt::MAX_MESSAGE_BYTES
                );
                let mut a = AuditRecord::new("adt-rejected");
                a.detail = Some(format!("{text} (from {client})"));
                shared.audit_noisy(client, "oversized ADT message", a);
                let _ = write_ack(
                    &mut stream,
                    &ack(None, AckCode::Error, &text, chrono::Utc::now()),
                )
                .await;
                return;
            }
        }
    }
}

impl Shared {
    /// Apply one ADT message (the bytes inside its MLLP frame): what it did, and the message
    /// when it parsed (for the ACK's MSH and MSA-2).
    pub async fn apply_adt(
        &self,
        feed: &AdtFeed,
        bytes: &[u8],
        client: &str,
    ) -> (Option<AdtMessage>, AdtOutcome) {
        let _one = feed.apply.lock().await;
        let msg = match AdtMessage::parse(bytes) {
            Ok(m) => m,
            Err(e) => {
                let mut a = AuditRecord::new("adt-rejected");
                a.detail = Some(format!("{e} (from {client})"));
                self.audit_noisy(client, "unreadable ADT message", a);
                self.count_adt("rejected");
                return (None, AdtOutcome::Rejected(e.to_string()));
            }
        };
        let Some(settings) = feed.settings.feed_of(&msg.sending_facility).cloned() else {
            let text = format!(
                "MSH-4: sending facility {:?} is not configured on this server (--adt-config)",
                msg.sending_facility
            );
            let mut a = AuditRecord::new("adt-rejected");
            a.detail = Some(format!(
                "message {}: {text} (from {client})",
                msg.control_id
            ));
            self.audit_noisy(client, "unknown ADT sending facility", a);
            self.count_adt("rejected");
            return (Some(msg), AdtOutcome::Rejected(text));
        };
        let facility = settings.facility.clone();
        let key = AdtFeed::seen_key(&msg.sending_facility, &msg.control_id);
        if let Ok(Some(v)) = feed.seen.get(&key) {
            let before = String::from_utf8_lossy(&v).to_string();
            let mut a = AuditRecord::new("adt-duplicate");
            a.facility = Some(facility.clone());
            a.detail = Some(format!("{} message {}", msg.trigger, msg.control_id));
            self.security.record(a);
            self.count_adt("duplicate");
            return (
                Some(msg),
                AdtOutcome::Duplicate(format!("duplicate: already applied ({before})")),
            );
        }
        let outcome = match self.apply_adt_to(&settings, &msg).await {
            Ok(AdtPlan::Ignored { reason }) => AdtOutcome::Ignored(reason),
            Ok(AdtPlan::Apply {
                summary, events, ..
            }) => {
                let _ = feed.seen.insert(&key, summary.as_bytes());
                let _ = feed.seen.flush_async().await;
                for e in &events {
                    let mut a = AuditRecord::new("adt");
                    a.facility = Some(facility.clone());
                    a.patient = Some(e.patient.clone());
                    a.document = Some(DocumentId::patient(&facility, &e.patient).to_string());
                    a.detail = Some(format!(
                        "{} message {} from {}: {summary}",
                        msg.trigger, msg.control_id, msg.sending_facility
                    ));
                    self.security.record(a);
                }
                tracing::info!(%facility, trigger = %msg.trigger, control = %msg.control_id, "ADT message applied");
                AdtOutcome::Applied(summary)
            }
            Err(e) => {
                let mut a = AuditRecord::new("adt-rejected");
                a.facility = Some(facility.clone());
                a.detail = Some(format!("{} message {}: {e}", msg.trigger, msg.control_id));
                self.security.record(a);
                tracing::warn!(%facility, trigger = %msg.trigger, control = %msg.control_id, error = %e, "ADT message not applied");
                AdtOutcome::Rejected(e)
            }
        };
        let label = match &outcome {
            AdtOutcome::Applied(_) => "applied",
            AdtOutcome::Duplicate(_) => "duplicate",
            AdtOutcome::Ignored(_) => "ignored",
            AdtOutcome::Rejected(_) => "rejected",
        };
        self.count_adt(label);
        (Some(msg), outcome)
    }

    fn count_adt(&self, outcome: &str) {
        self.metrics.count_ingested("adt", outcome);
    }

    /// Plan against the residents as the documents hold them, then write (new resident first).
    async fn apply_adt_to(
        &self,
        settings: &rounds_core::adt::FeedSettings,
        msg: &AdtMessage,
    ) -> Result<AdtPlan, String> {
        let facility = settings.facility.as_str();
        let _guard = self.alerting.stage_lock.lock().await;
        let staged = self.stage_residents(facility)?;
        let roster = staged.replica.facility().map_err(|_| {
            format!(
                "MSH-4: facility {facility} has no data on this server (import its data file first)"
            )
        })?;
        let tz = rounds_core::validate::parse_zone(&roster.facility.timezone).ok_or_else(|| {
            format!(
                "facility {facility}: time zone {:?} is not valid",
                roster.facility.timezone
            )
        })?;
        let residents: Vec<Resident> = staged
            .replica
            .patient_ids()
            .into_iter()
            .filter_map(|id| {
                let doc = staged
                    .replica
                    .document(DocumentId::patient(facility, &id))?;
                let mrn = rounds_core::view::read_patient(doc, &id)
                    .ok()
                    .and_then(|p| p.mrn);
                let adt = rounds_core::view::read_adt(doc, &id);
                Some(Resident { id, mrn, adt })
            })
            .collect();
        let plan =
            rounds_core::adt::plan(msg, settings, &residents, tz).map_err(|e| e.to_string())?;
        let AdtPlan::Apply { new, events, .. } = &plan else {
            return Ok(plan);
        };
        let mut staged = staged;
        if let Some(n) = new {
            let mut data = rounds_core::DataFile::new(roster.facility.clone());
            data.practitioners = roster.practitioners.clone();
            data.staff = roster.staff.clone();
            let mut p = rounds_core::roster::blank_patient(
                n.id.clone(),
                n.name.clone(),
                n.practitioner.clone(),
            );
            p.mrn = Some(n.mrn.clone());
            p.birth_date = n.birth_date;
            data.patients.push(p);
            let problems = rounds_core::validate::validate(&data);
            if let Some(p) = problems.first() {
                return Err(format!(
                    "the new resident cannot be added ({}: {}); check the feed's practitioner in --adt-config",
                    p.field, p.message
                ));
            }
            self.import_parsed(data).await.map_err(|e| e.to_string())?;
            staged = self.stage_residents(facility)?;
        }
        let now = self.alerting.now();
        for e in events {
            staged
                .replica
                .record_adt_event(&e.patient, e.id, e.event.clone(), now)
                .map_err(|err| format!("patient {}: {err}", e.patient))?;
        }
        self.commit(&staged).await?;
        Ok(plan)
    }

    /// A staging replica with the facility document and every resident's patient document.
    fn stage_residents(&self, facility: &str) -> Result<crate::services::alerting::Staged, String> {
        let first = self.stage(facility, &[DocumentId::facility(facility)])?;
        let mut docs = vec![DocumentId::facility(facility)];
        docs.extend(
            first
                .replica
                .patient_ids()
                .iter()
                .map(|p| DocumentId::patient(facility, p)),
        );
        self.stage(facility, &docs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn frames(input: Vec<u8>) -> Vec<Option<Vec<u8>>> {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let writer = tokio::spawn(async move {
            let _ = a.write_all(&input).await;
        });
        let mut r = MllpReader { buf: Vec::new() };
        let mut out = Vec::new();
        loop {
            match r.next(&mut b).await {
                Ok(Some(Frame::Message(m))) => out.push(Some(m)),
                Ok(Some(Frame::TooLarge)) => {
                    out.push(None);
                    break;
                }
                _ => break,
            }
            if out.len() > 10 {
                break;
            }
            if writer.is_finished() && r.buf.is_empty() {
                break;
            }
        }
        out
    }

    #[tokio::test]
    async fn frames_are_cut_at_their_end_and_noise_between_them_is_dropped() {
        let mut input = b"\r\n".to_vec();
        input.extend_from_slice(b"\x0bMSH|one\x1c\x0d");
        input.extend_from_slice(b"junk\x0bMSH|two\x1c\x0d");
        let got = frames(input).await;
        assert_eq!(
            got,
            vec![Some(b"MSH|one".to_vec()), Some(b"MSH|two".to_vec())]
        );
    }

    #[tokio::test]
    async fn a_frame_without_end_stops_at_the_size_limit() {
        let mut input = vec![0x0b];
        input.extend(std::iter::repeat_n(
            b'x',
            rounds_core::adt::MAX_MESSAGE_BYTES + 10,
        ));
        let got = frames(input).await;
        assert_eq!(got, vec![None]);
    }
}
