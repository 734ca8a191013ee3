//! The device's network shell (feature `net`): a WebSocket over TLS (tokio + rustls with the ring
//! provider) carrying a [`DeviceSession`], with retries and backoff.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};
use tokio_tungstenite::Connector;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::device::{DeviceSession, SessionError};
use crate::ids::DocumentId;
use crate::replica::Replica;

/// Which server certificates to trust.
#[derive(Debug, Clone)]
pub enum Trust {
    /// The operating system's root certificates, read from disk (servers and desktops).
    SystemRoots,
    /// The platform's own verifier (`rustls-platform-verifier`): the OS trust store and its
    /// revocation and policy checks — Android's TrustManager, Apple's Security framework,
    /// Windows' CryptoAPI, the system roots elsewhere. On Android it needs the app's context
    /// first (`rustls_platform_verifier::android::init_with_env`; the mobile bindings do it).
    Platform,
    /// Exactly this certificate (DER) as the root — a self-signed server certificate.
    Certificate(Vec<u8>),
    /// A certificate whose SHA-256 fingerprint (of its DER) is this.
    Fingerprint([u8; 32]),
}

/// How to sync.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// The device's bearer token.
    pub token: String,
    pub trust: Trust,
    /// Give up on a connection when nothing arrives for this long.
    pub idle_timeout: Duration,
    /// Connection attempts before giving up.
    pub attempts: u32,
    /// First retry delay; doubled after each failure, at most 10 s.
    pub backoff: Duration,
    /// Largest frame accepted from the server.
    pub max_frame: usize,
    /// Set to stop the sync (checked between frames and retries).
    pub cancel: Option<Arc<std::sync::atomic::AtomicBool>>,
}

impl SyncOptions {
    pub fn new(token: impl Into<String>, trust: Trust) -> SyncOptions {
        SyncOptions {
            token: token.into(),
            trust,
            idle_timeout: Duration::from_secs(20),
            attempts: 8,
            backoff: Duration::from_millis(200),
            max_frame: 64 << 20,
            cancel: None,
        }
    }
}

/// What a sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub documents: usize,
    /// Documents the server confirmed holding exactly what we hold.
    pub confirmed: usize,
    /// Documents neither side has.
    pub unavailable: usize,
    /// Documents whose changes the server has not confirmed (still unsent).
    pub unsent: Vec<DocumentId>,
    pub attempts: u32,
    pub frames_sent: u64,
    pub frames_received: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Documents that left the device after this sync: outside its sync window and confirmed
    /// by the server (see [`Replica::set_sync_window`]).
    pub dropped: usize,
    /// The summary exchange of the last attempt (zero when the server does not speak it).
    pub summary: super::device::SummaryStats,
}

/// Why a sync failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("bad server URL {0:?}")]
    Url(String),
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("connection: {0}")]
    Connection(String),
    #[error("no message from the server for {0:?}")]
    Timeout(Duration),
    #[error("the server closed the connection before the sync finished")]
    Closed,
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error("sync cancelled")]
    Cancelled,
    /// The server refused one of this device's changes (the write policy or the gate): retrying
    /// would send it again. Recover with [`Replica::reset_document`] on `document`, sync, then
    /// [`Replica::apply_relogs`] and sync again.
    #[error("the server refused a change: {message}")]
    Refused {
        document: Option<DocumentId>,
        message: String,
    },
    /// The server refused an enrolment (a used, expired or unknown code): status and reason.
    #[error("enrolment refused: {0}")]
    Enrolment(String),
    #[error("gave up after {attempts} attempts; last error: {last}")]
    GaveUp {
        attempts: u32,
        last: String,
        report: Box<SyncReport>,
    },
}

#[derive(Debug)]
struct PinnedFingerprint {
    sha256: [u8; 32],
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinnedFingerprint {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if got == self.sha256 {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "server certificate fingerprint does not match the pinned one".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A rustls client configuration (ring provider, TLS 1.2+) for `trust`.
pub fn client_config(trust: &Trust) -> Result<ClientConfig, NetError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| NetError::Tls(e.to_string()))?;
    Ok(match trust {
        Trust::SystemRoots => {
            let mut roots = RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::Platform => {
            let verifier = rustls_platform_verifier::Verifier::new(provider)
                .map_err(|e| NetError::Tls(e.to_string()))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_no_client_auth()
        }
        Trust::Certificate(der) => {
            let mut roots = RootCertStore::empty();
            roots
                .add(CertificateDer::from(der.clone()))
                .map_err(|e| NetError::Tls(e.to_string()))?;
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::Fingerprint(sha256) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedFingerprint {
                sha256: *sha256,
                provider,
            }))
            .with_no_client_auth(),
    })
}

/// How the sync shell reaches the replica: for the whole sync (`&mut Replica`), or one frame
/// at a time (`&Mutex<Replica>`): the session is sans-IO, so the lock is taken to feed it a
/// frame (or start, settle, save it) and released while the network is awaited — the app's
/// writes and queries run between frames instead of waiting for the sync.
pub trait ReplicaAccess {
    fn with<T>(&mut self, f: impl FnOnce(&mut Replica) -> T) -> T;
}

impl ReplicaAccess for &mut Replica {
    fn with<T>(&mut self, f: impl FnOnce(&mut Replica) -> T) -> T {
        f(self)
    }
}

impl ReplicaAccess for &std::sync::Mutex<Replica> {
    fn with<T>(&mut self, f: impl FnOnce(&mut Replica) -> T) -> T {
        let mut guard = self.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }
}

/// One connection: handshake, sync every document until all are confirmed, close.
pub async fn sync_once(
    replica: &mut Replica,
    url: &str,
    opts: &SyncOptions,
    progress: &mut (dyn FnMut(usize, usize) + Send),
    report: &mut SyncReport,
) -> Result<(), NetError> {
    let mut access = replica;
    sync_once_with(&mut access, url, opts, progress, report).await
}

/// [`sync_once`] through a [`ReplicaAccess`].
pub async fn sync_once_with<A: ReplicaAccess + Send>(
    replica: &mut A,
    url: &str,
    opts: &SyncOptions,
    progress: &mut (dyn FnMut(usize, usize) + Send),
    report: &mut SyncReport,
) -> Result<(), NetError> {
    let mut request = url
        .into_client_request()
        .map_err(|_| NetError::Url(url.to_string()))?;
    let bearer = format!("Bearer {}", opts.token)
        .parse()
        .map_err(|_| NetError::Url("token is not a valid header value".into()))?;
    request.headers_mut().insert("authorization", bearer);
    let connector = if url.starts_with("wss:") {
        Some(Connector::Rustls(Arc::new(client_config(&opts.trust)?)))
    } else {
        None
    };
    let config = WebSocketConfig::default()
        .max_message_size(Some(opts.max_frame))
        .max_frame_size(Some(opts.max_frame));
    let (mut ws, _) =
        tokio_tungstenite::connect_async_tls_with_config(request, Some(config), true, connector)
            .await
            .map_err(|e| NetError::Connection(e.to_string()))?;
    let (mut session, join) = replica.with(|r| DeviceSession::start(r));
    report.bytes_sent += join.len() as u64;
    report.frames_sent += 1;
    ws.send(WsMessage::Binary(join.into()))
        .await
        .map_err(|e| NetError::Connection(e.to_string()))?;
    let cancelled = || {
        opts.cancel
            .as_ref()
            .is_some_and(|c| c.load(std::sync::atomic::Ordering::SeqCst))
    };
    // Silence is measured from the last sync frame: the server's keep-alive pings are not
    // progress, so a session that stalls still ends at its idle timeout.
    let mut last_frame = tokio::time::Instant::now();
    let result = 'session: loop {
        if session.is_complete() {
            break Ok(());
        }
        if cancelled() {
            break Err(NetError::Cancelled);
        }
        let quiet = Duration::from_millis(1500).min(opts.idle_timeout);
        let quiet_left = quiet.saturating_sub(last_frame.elapsed());
        let next = match tokio::time::timeout(quiet_left, ws.next()).await {
            Err(_) if replica.with(|r| session.settle(r)) => break Ok(()),
            Err(_) => {
                let idle_left = opts.idle_timeout.saturating_sub(last_frame.elapsed());
                match tokio::time::timeout(idle_left, ws.next()).await {
                    Err(_) => break Err(NetError::Timeout(opts.idle_timeout)),
                    Ok(None) => break Err(NetError::Closed),
                    Ok(Some(Err(e))) => break Err(NetError::Connection(e.to_string())),
                    Ok(Some(Ok(m))) => m,
                }
            }
            Ok(None) => break Err(NetError::Closed),
            Ok(Some(Err(e))) => break Err(NetError::Connection(e.to_string())),
            Ok(Some(Ok(m))) => m,
        };
        let frame = match next {
            WsMessage::Binary(b) => {
                last_frame = tokio::time::Instant::now();
                b
            }
            WsMessage::Close(_) => break Err(NetError::Closed),
            _ => continue,
        };
        report.frames_received += 1;
        report.bytes_received += frame.len() as u64;
        let replies = match replica.with(|r| session.receive(r, &frame)) {
            Ok(r) => r,
            Err(e) => break Err(e.into()),
        };
        for r in replies {
            report.frames_sent += 1;
            report.bytes_sent += r.len() as u64;
            if let Err(e) = ws.send(WsMessage::Binary(r.into())).await {
                break 'session Err(NetError::Connection(e.to_string()));
            }
        }
        let (done, total) = session.progress();
        progress(done, total);
    };
    if let Err(e) = replica.with(|r| session.save(r)) {
        tracing::warn!(error = %e, "could not save sync states; the next sync starts over");
    }
    let docs = session.documents();
    report.documents = docs.len();
    report.confirmed = docs
        .values()
        .filter(|p| **p == super::device::DocProgress::Confirmed)
        .count();
    report.unavailable = docs
        .values()
        .filter(|p| **p == super::device::DocProgress::Unavailable)
        .count();
    report.unsent = session.unconfirmed();
    report.summary = session.summary();
    // The sync window: documents outside it that the server now holds leave the device.
    if result.is_ok()
        && let Some(key) = session.server_key()
    {
        match replica.with(|r| r.drop_outside_window(key)) {
            Ok(dropped) => report.dropped = dropped.len(),
            Err(e) => {
                tracing::warn!(error = %e, "could not drop documents outside the sync window")
            }
        }
    }
    let _ = ws.close(None).await;
    result
}

/// Sync with retries: reconnects with exponential backoff until every document is confirmed or
/// the attempts run out. `progress(done, total)` is called as documents complete.
pub async fn sync(
    replica: &mut Replica,
    url: &str,
    opts: &SyncOptions,
    progress: &mut (dyn FnMut(usize, usize) + Send),
) -> Result<SyncReport, NetError> {
    let mut access = replica;
    sync_with(&mut access, url, opts, progress).await
}

/// [`sync`] through a [`ReplicaAccess`]: with `&Mutex<Replica>`, the lock is held only while
/// a frame is applied, never across the network.
pub async fn sync_with<A: ReplicaAccess + Send>(
    replica: &mut A,
    url: &str,
    opts: &SyncOptions,
    progress: &mut (dyn FnMut(usize, usize) + Send),
) -> Result<SyncReport, NetError> {
    let mut report = SyncReport::default();
    let mut delay = opts.backoff;
    let mut last = String::new();
    for attempt in 1..=opts.attempts.max(1) {
        report.attempts = attempt;
        match sync_once_with(replica, url, opts, progress, &mut report).await {
            Ok(()) => return Ok(report),
            Err(e @ NetError::Url(_))
            | Err(e @ NetError::Tls(_))
            | Err(e @ NetError::Cancelled) => return Err(e),
            Err(NetError::Session(SessionError::Server(message)))
                if message.starts_with("refused: ") =>
            {
                let document = message
                    .strip_prefix("refused: document ")
                    .and_then(|r| r.split_whitespace().next())
                    .and_then(|d| d.parse().ok());
                return Err(NetError::Refused { document, message });
            }
            Err(e) => {
                tracing::info!(attempt, error = %e, "sync attempt failed; retrying");
                last = e.to_string();
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
    Err(NetError::GaveUp {
        attempts: report.attempts,
        last,
        report: Box::new(report),
    })
}

impl Replica {
    /// Sync every document this device holds, plus its facility's roster documents, with the
    /// server at `server_url` (`wss://host:port/sync`). Resumes from persisted sync states,
    /// retries with backoff, and reports what is still unsent.
    pub async fn sync(
        &mut self,
        server_url: &str,
        token: &str,
        trust: Trust,
    ) -> Result<SyncReport, NetError> {
        let opts = SyncOptions::new(token, trust);
        sync(self, server_url, &opts, &mut |_, _| {}).await
    }
}
