//! A tablet's enrolment: exchange a one-time code (`rounds device code`) for the device's token
//! (`POST /api/v1/devices/enroll`), over TLS trusted as for sync. The app keeps the token in the
//! platform's secure store; the server never shows it again.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::net::{NetError, Trust, client_config};

/// What an enrolment gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrolment {
    pub token: String,
    pub facility: String,
    pub name: String,
}

/// The largest answer read.
const MAX_ANSWER: usize = 64 * 1024;
const TIMEOUT: Duration = Duration::from_secs(20);

/// Host and port of `https://host[:port]…` or `wss://host[:port]/sync`.
fn host_port(url: &str) -> Result<(String, u16), NetError> {
    let bad = || NetError::Url(url.to_string());
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("wss://"))
        .ok_or_else(bad)?;
    let authority = rest.split('/').next().unwrap_or("");
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => {
            (h, p.parse::<u16>().map_err(|_| bad())?)
        }
        _ => (authority, 443),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

/// The body of an HTTP/1.1 answer (`Content-Length` or chunked).
fn body_of(raw: &[u8]) -> Result<(u16, String), NetError> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| NetError::Connection("no HTTP answer".into()))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| NetError::Connection("no HTTP status".into()))?;
    let chunked = head
        .lines()
        .any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding:") && l.contains("chunked"));
    if !chunked {
        return Ok((status, body.to_string()));
    }
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16)
            .map_err(|_| NetError::Connection("bad chunked answer".into()))?;
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    Ok((status, out))
}

/// Exchange `code` for this device's token, naming the device `name`.
pub async fn enrol(
    server: &str,
    code: &str,
    name: &str,
    trust: &Trust,
) -> Result<Enrolment, NetError> {
    let (host, port) = host_port(server)?;
    let config = std::sync::Arc::new(client_config(trust)?);
    let body = serde_json::json!({"code": code, "name": name}).to_string();
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| NetError::Connection(e.to_string()))?;
        let server_name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|_| NetError::Url(server.to_string()))?;
        let mut tls = tokio_rustls::TlsConnector::from(config)
            .connect(server_name, tcp)
            .await
            .map_err(|e| NetError::Tls(e.to_string()))?;
        let request = format!(
            "POST /api/v1/devices/enroll HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        tls.write_all(request.as_bytes())
            .await
            .map_err(|e| NetError::Connection(e.to_string()))?;
        let mut raw = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match tls.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => {
                    raw.extend_from_slice(&chunk[..n]);
                    if raw.len() > MAX_ANSWER {
                        return Err(NetError::Connection("answer too large".into()));
                    }
                }
                // A server closing without TLS close_notify after a complete answer.
                Err(_) if !raw.is_empty() => break,
                Err(e) => return Err(NetError::Connection(e.to_string())),
            }
        }
        Ok::<_, NetError>(raw)
    };
    let raw = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| NetError::Timeout(TIMEOUT))??;
    let (status, body) = body_of(&raw)?;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    if status != 200 {
        let detail = v["detail"].as_str().unwrap_or(body.trim());
        return Err(NetError::Enrolment(format!("{status}: {detail}")));
    }
    let field = |k: &str| {
        v[k].as_str()
            .map(str::to_string)
            .ok_or_else(|| NetError::Enrolment(format!("the answer has no {k}")))
    };
    Ok(Enrolment {
        token: field("token")?,
        facility: field("facility")?,
        name: field("name")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_give_host_and_port() {
        let hp = |u: &str| host_port(u).ok();
        assert_eq!(
            hp("https://rounds.example:8443"),
            Some(("rounds.example".into(), 8443))
        );
        assert_eq!(hp("wss://127.0.0.1:9/sync"), Some(("127.0.0.1".into(), 9)));
        assert_eq!(
            hp("https://rounds.example/"),
            Some(("rounds.example".into(), 443))
        );
        assert_eq!(hp("https://[::1]:8443"), Some(("::1".into(), 8443)));
        assert!(hp("http://rounds.example").is_none());
        assert!(hp("https://:8443").is_none());
        assert!(hp("https://h:port").is_none());
    }

    #[test]
    fn answers_are_read_plain_or_chunked() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(body_of(plain).ok(), Some((200, "{}".into())));
        let chunked = b"HTTP/1.1 409 Conflict\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(body_of(chunked).ok(), Some((409, "abcde".into())));
        assert!(body_of(b"garbage").is_err());
    }
}
