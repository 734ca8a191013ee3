//! TLS: a given certificate, or a self-signed one generated into the store on first run.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("generating a self-signed certificate: {0}")]
    Generate(String),
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The server's TLS setup.
pub struct Tls {
    pub config: Arc<ServerConfig>,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    /// SHA-256 of the leaf certificate's DER, lowercase hex.
    pub fingerprint: String,
    pub generated: bool,
}

fn file_err(path: &Path) -> impl Fn(String) -> TlsError + '_ {
    move |message| TlsError::File {
        path: path.to_path_buf(),
        message,
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|e| file_err(path)(e.to_string()))?;
    f.write_all(bytes)
        .map_err(|e| file_err(path)(e.to_string()))?;
    f.sync_all().map_err(|e| file_err(path)(e.to_string()))
}

/// Load `cert`/`key`, or generate (once) and reuse `store/tls/{cert,key}.pem`.
pub fn setup(
    store: &crate::sync::store::StoreLocation,
    cert: Option<&Path>,
    key: Option<&Path>,
) -> Result<Tls, TlsError> {
    let (cert_path, key_path, generated) = match (cert, key, store.dir()) {
        (Some(c), Some(k), _) => (c.to_path_buf(), k.to_path_buf(), false),
        (None, None, None) => {
            return Err(TlsError::Config(
                "with a PostgreSQL store, give --tls-cert and --tls-key: every server on the database must present the same certificate".into(),
            ));
        }
        (None, None, Some(store)) => {
            let dir = store.join("tls");
            std::fs::create_dir_all(&dir).map_err(|e| file_err(&dir)(e.to_string()))?;
            let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
            let fresh = !c.exists() || !k.exists();
            if fresh {
                let generated = rcgen::generate_simple_self_signed(vec![
                    "localhost".to_string(),
                    "127.0.0.1".to_string(),
                    "::1".to_string(),
                ])
                .map_err(|e| TlsError::Generate(e.to_string()))?;
                write_private(&k, generated.signing_key.serialize_pem().as_bytes())?;
                write_private(&c, generated.cert.pem().as_bytes())?;
            }
            (c, k, fresh)
        }
        _ => {
            return Err(TlsError::Config(
                "--tls-cert and --tls-key go together".into(),
            ));
        }
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .map_err(|e| file_err(&cert_path)(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(&cert_path)(e.to_string()))?;
    let leaf = certs
        .first()
        .ok_or_else(|| file_err(&cert_path)("no certificate in the file".into()))?;
    let fingerprint = Sha256::digest(leaf.as_ref())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let key =
        PrivateKeyDer::from_pem_file(&key_path).map_err(|e| file_err(&key_path)(e.to_string()))?;
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Tls {
        config: Arc::new(config),
        cert_path,
        key_path,
        fingerprint,
        generated,
    })
}

/// The TLS configuration in use now: what the HTTPS listener's acceptor and the ADT listener
/// take for each new connection; [`spawn_reloader`] replaces it.
pub struct CurrentTls {
    config: std::sync::RwLock<Arc<ServerConfig>>,
}

impl CurrentTls {
    pub fn new(config: Arc<ServerConfig>) -> Arc<CurrentTls> {
        Arc::new(CurrentTls {
            config: std::sync::RwLock::new(config),
        })
    }

    pub fn get(&self) -> Arc<ServerConfig> {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set(&self, c: Arc<ServerConfig>) {
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = c;
    }
}

/// Where the certificate comes from: `--tls-cert`/`--tls-key`, or generated into the store.
#[derive(Debug, Clone)]
pub struct TlsSource {
    pub store: crate::sync::store::StoreLocation,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// What a reload did, for the log and the audit.
pub type ReloadOutcome = Result<String, String>;

fn stamp(p: &Path) -> Option<(std::time::SystemTime, u64)> {
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Re-read the certificate and key on SIGHUP, and when either file changes on disk (checked
/// every `poll`): the next connection gets the new certificate, open ones keep theirs. A pair
/// that does not load (a key that does not match, a half-written file) is reported and the
/// certificate in use stays.
pub fn spawn_reloader(
    source: TlsSource,
    in_use: &Tls,
    targets: (axum_server::tls_rustls::RustlsConfig, Arc<CurrentTls>),
    poll: std::time::Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    report: impl Fn(ReloadOutcome) + Send + 'static,
) {
    let files = (in_use.cert_path.clone(), in_use.key_path.clone());
    tokio::spawn(async move {
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut seen = (stamp(&files.0), stamp(&files.1));
        loop {
            #[cfg(unix)]
            let hangup = async {
                match hup.as_mut() {
                    Some(h) => {
                        h.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            #[cfg(not(unix))]
            let hangup = std::future::pending::<()>();
            let why = tokio::select! {
                _ = hangup => "SIGHUP",
                _ = tokio::time::sleep(poll) => {
                    let now = (stamp(&files.0), stamp(&files.1));
                    if now == seen {
                        continue;
                    }
                    seen = now;
                    "the files changed"
                }
                _ = shutdown.changed() => return,
            };
            let (s, c, k) = (
                source.store.clone(),
                source.cert.clone(),
                source.key.clone(),
            );
            let loaded =
                tokio::task::spawn_blocking(move || setup(&s, c.as_deref(), k.as_deref())).await;
            match loaded {
                Ok(Ok(tls)) => {
                    targets.0.reload_from_config(tls.config.clone());
                    targets.1.set(tls.config);
                    report(Ok(format!(
                        "TLS certificate reloaded ({why}): sha256 {}",
                        tls.fingerprint
                    )));
                }
                Ok(Err(e)) => report(Err(format!(
                    "TLS certificate not reloaded ({why}): {e}; the one in use stays"
                ))),
                Err(e) => report(Err(format!("TLS reload task: {e}"))),
            }
        }
    });
}
