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
pub fn setup(store: &Path, cert: Option<&Path>, key: Option<&Path>) -> Result<Tls, TlsError> {
    let (cert_path, key_path, generated) = match (cert, key) {
        (Some(c), Some(k)) => (c.to_path_buf(), k.to_path_buf(), false),
        (None, None) => {
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
        fingerprint,
        generated,
    })
}
