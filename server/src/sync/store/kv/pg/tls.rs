//! How a connection reaches the database: plain TCP, or TLS with the server's certificate
//! verified (`sslmode=require`, `verify-ca` or `verify-full` in the URL); and Rounds' own URL
//! options (`notify=off`).
//!
//! Rounds always verifies what it encrypts to: the certificate chain against `sslrootcert=FILE`
//! (PEM; the database's own CA) or else the system's roots, and the host name or address in the
//! URL against the certificate — stricter than libpq's `require`, which encrypts without
//! checking whom to. `sslmode=disable`, `allow`, `prefer` or none: plain TCP (reach the database
//! over a private network).

use std::str::FromStr;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::PoolError;

/// Plain TCP or TLS.
#[derive(Clone)]
pub enum Transport {
    Plain,
    Tls(tokio_postgres_rustls::MakeRustlsConnect),
}

impl Transport {
    /// Open a connection with `config` over this transport.
    pub fn connect(&self, config: &postgres::Config) -> Result<postgres::Client, postgres::Error> {
        match self {
            Transport::Plain => config.connect(postgres::NoTls),
            Transport::Tls(t) => config.connect(t.clone()),
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }
}

/// What a `postgres://` URL asks of Rounds besides the driver's options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// `notify=off`: the change feed polls only, as on an engine without `LISTEN`/`NOTIFY`
    /// (default on where the database has them).
    pub notify: bool,
}

/// The driver's configuration, the transport and Rounds' own options, from a `postgres://`
/// URL. `sslrootcert` and `notify` are taken out (the driver does not know them) and the
/// `verify-*` modes become the driver's `require`; the redacted URL names the database in
/// errors.
pub fn parse(
    url: &str,
    redacted: &str,
) -> Result<(postgres::Config, Transport, Options), PoolError> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut kept = Vec::new();
    let (mut mode, mut root) = (None, None);
    let mut options = Options { notify: true };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("sslmode", m)) => mode = Some(m.to_string()),
            Some(("sslrootcert", f)) => root = Some(f.to_string()),
            Some(("notify", "off")) => options.notify = false,
            Some(("notify", "on")) => options.notify = true,
            Some(("notify", other)) => {
                return Err(PoolError::Tls(format!(
                    "notify={other}: the change feed's notifications are on or off"
                )));
            }
            _ => kept.push(pair.to_string()),
        }
    }
    let tls = match mode.as_deref() {
        None | Some("disable" | "allow" | "prefer") => false,
        Some("require" | "verify-ca" | "verify-full") => true,
        Some(other) => {
            return Err(PoolError::Tls(format!(
                "sslmode={other} is not one of disable, prefer, require, verify-ca, verify-full"
            )));
        }
    };
    if tls {
        kept.push("sslmode=require".into());
    } else if let Some(m) = &mode {
        kept.push(format!("sslmode={m}"));
    }
    let cleaned = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    let config = postgres::Config::from_str(&cleaned).map_err(|source| PoolError::Url {
        url: redacted.to_string(),
        source,
    })?;
    if !tls {
        if root.is_some() {
            return Err(PoolError::Tls(
                "sslrootcert is given but sslmode does not ask for TLS (use sslmode=verify-full)"
                    .into(),
            ));
        }
        return Ok((config, Transport::Plain, options));
    }
    let mut roots = rustls::RootCertStore::empty();
    match &root {
        Some(file) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(file)
                .and_then(|it| it.collect::<Result<_, _>>())
                .map_err(|e| PoolError::Tls(format!("sslrootcert {file}: {e}")))?;
            if certs.is_empty() {
                return Err(PoolError::Tls(format!(
                    "sslrootcert {file}: no certificate in it"
                )));
            }
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| PoolError::Tls(format!("sslrootcert {file}: {e}")))?;
            }
        }
        None => {
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(c);
            }
            if roots.is_empty() {
                return Err(PoolError::Tls(
                    "no system root certificates: give the database's CA with sslrootcert=FILE"
                        .into(),
                ));
            }
        }
    }
    let client = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| PoolError::Tls(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok((
        config,
        Transport::Tls(tokio_postgres_rustls::MakeRustlsConnect::new(client)),
        options,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_tls_modes_and_bad_ones() {
        let (c, t, o) = parse("postgres://u@h:5432/d", "-").unwrap();
        assert!(!t.is_tls());
        assert!(o.notify);
        assert_eq!(c.get_dbname(), Some("d"));
        let (_, t, o) = parse("postgres://u@h:5432/d?sslmode=disable&notify=off", "-").unwrap();
        assert!(!t.is_tls());
        assert!(!o.notify);
        let (c, t, _) = parse(
            "postgres://u@h:5432/d?application_name=x&sslmode=verify-full",
            "-",
        )
        .unwrap();
        assert!(t.is_tls());
        assert_eq!(c.get_ssl_mode(), postgres::config::SslMode::Require);
        assert_eq!(c.get_application_name(), Some("x"));
        for bad in [
            "postgres://u@h/d?sslmode=sometimes",
            "postgres://u@h/d?sslrootcert=/nonexistent&sslmode=verify-full",
            "postgres://u@h/d?sslrootcert=/etc/hostname&sslmode=verify-full",
            "postgres://u@h/d?sslrootcert=/etc/hostname",
            "postgres://u@h/d?notify=maybe",
        ] {
            assert!(
                matches!(parse(bad, "-"), Err(PoolError::Tls(_))),
                "{bad} accepted"
            );
        }
    }
}
