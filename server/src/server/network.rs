//! What the server allows anyone on the network before any credential is checked: how many
//! connections (in all and per client address), how long a client has for its TLS handshake and
//! each request's headers, how large a request body may be, how many password hashes run at
//! once, whether a token may ride in the sync URL, and which reverse proxies' forwarded addresses
//! are believed.
//!
//! Architecture invariant: the connection caps are taken in the acceptor, before the TLS
//! handshake and before any byte is parsed, and released when the connection's stream is
//! dropped — whatever the connection turns into (a page, an API call, a WebSocket).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::HeaderMap;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Half the cores (at least one, at most four): a sign-in flood keeps the other half for sync.
fn default_password_hashes() -> usize {
    (std::thread::available_parallelism().map_or(2, |n| n.get()) / 2).clamp(1, 4)
}

/// `rounds serve`'s network limits (see SECURITY.md, "Limits").
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct NetworkLimits {
    /// Connections open at once, over all clients (more are closed as they arrive).
    #[arg(long, default_value_t = 4096, env = "ROUNDS_MAX_CONNECTIONS")]
    pub max_connections: usize,
    /// Connections open at once from one client address. A facility's tablets behind one NAT
    /// share an address, and behind a reverse proxy every client has the proxy's.
    #[arg(
        long,
        default_value_t = 512,
        env = "ROUNDS_MAX_CONNECTIONS_PER_ADDRESS"
    )]
    pub max_connections_per_address: usize,
    /// Seconds a new connection has to finish its TLS handshake, and then to send each
    /// request's complete headers; a client that trickles them (slowloris) is closed.
    #[arg(long, default_value_t = 10, env = "ROUNDS_HEADER_TIMEOUT_SECONDS")]
    pub header_timeout_seconds: u64,
    /// Largest request body accepted on any endpoint except the data-file import, in bytes
    /// (more: 413, nothing read further).
    #[arg(long, default_value_t = 2 << 20, env = "ROUNDS_MAX_BODY_BYTES")]
    pub max_body_bytes: usize,
    /// Largest data file `POST /api/v1/import` accepts, in bytes.
    #[arg(long, default_value_t = 64 << 20, env = "ROUNDS_MAX_IMPORT_BYTES")]
    pub max_import_bytes: usize,
    /// Console password checks (argon2, ~19 MiB each) computed at once, each on its own
    /// thread; a sign-in waits at most 3 s for one, then gets 429. Default: half the cores, at
    /// least 1 and at most 4, so a flood of sign-ins leaves the rest to sync.
    #[arg(long, default_value_t = default_password_hashes(), env = "ROUNDS_PASSWORD_HASHES_AT_ONCE")]
    pub password_hashes_at_once: usize,
    /// Refuse a device token in the sync URL's query string (`/sync?token=…`). Browser
    /// WebSocket clients cannot set an Authorization header and need it; apps send the header.
    #[arg(long, env = "ROUNDS_NO_QUERY_TOKENS")]
    pub no_query_tokens: bool,
    /// Seconds over which audit records anyone can cause (unauthenticated or rate-limited
    /// requests, a device's repeated denials) are folded into one record per source and reason.
    #[arg(long, default_value_t = 60, env = "ROUNDS_AUDIT_AGGREGATE_SECONDS")]
    pub audit_aggregate_seconds: u64,
    /// A reverse proxy's address whose `X-Forwarded-For` header names the real client (repeat
    /// for several). Without it the header is ignored: anyone could write it.
    #[arg(
        long = "trusted-proxy",
        env = "ROUNDS_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<IpAddr>,
}

impl Default for NetworkLimits {
    fn default() -> NetworkLimits {
        NetworkLimits {
            max_connections: 4096,
            max_connections_per_address: 512,
            header_timeout_seconds: 10,
            max_body_bytes: 2 << 20,
            max_import_bytes: 64 << 20,
            password_hashes_at_once: default_password_hashes(),
            no_query_tokens: false,
            audit_aggregate_seconds: 60,
            trusted_proxies: Vec::new(),
        }
    }
}

impl NetworkLimits {
    pub fn header_timeout(&self) -> Duration {
        Duration::from_secs(self.header_timeout_seconds.max(1))
    }

    /// The client a request comes from: the TCP peer, or — when the peer is a trusted proxy —
    /// the nearest address in `X-Forwarded-For` that is not itself a trusted proxy.
    pub fn client_ip(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.ip();
        if !self.trusted_proxies.contains(&peer) {
            return peer;
        }
        headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .map(|a| a.parse::<IpAddr>())
            .find(|a| {
                a.as_ref()
                    .map_or(true, |ip| !self.trusted_proxies.contains(ip))
            })
            // A malformed entry ends the trusted chain: the proxy itself is the client.
            .and_then(Result::ok)
            .unwrap_or(peer)
    }
}

/// Why a connection was closed as it arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `--max-connections` connections are open.
    Total,
    /// `--max-connections-per-address` connections are open from this address.
    PerAddress,
}

/// Open connections, in all and per client address.
pub struct ConnectionCaps {
    total: usize,
    per_address: usize,
    open: Mutex<Open>,
    pub refused_total: AtomicU64,
    pub refused_per_address: AtomicU64,
}

#[derive(Default)]
struct Open {
    total: usize,
    /// Only addresses with at least one open connection: at most `total` entries.
    by_address: HashMap<IpAddr, usize>,
}

impl ConnectionCaps {
    pub fn new(total: usize, per_address: usize) -> Arc<ConnectionCaps> {
        Arc::new(ConnectionCaps {
            total: total.max(1),
            per_address: per_address.max(1),
            open: Mutex::new(Open::default()),
            refused_total: AtomicU64::new(0),
            refused_per_address: AtomicU64::new(0),
        })
    }

    /// A place for one more connection from `ip`, held until the permit is dropped.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionPermit, Refusal> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.total >= self.total {
            self.refused_total.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::Total);
        }
        let n = open.by_address.get(&ip).copied().unwrap_or(0);
        if n >= self.per_address {
            self.refused_per_address.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::PerAddress);
        }
        open.total += 1;
        open.by_address.insert(ip, n + 1);
        Ok(ConnectionPermit {
            caps: self.clone(),
            ip,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).total
    }
}

/// One admitted connection's place; dropping it frees the place.
pub struct ConnectionPermit {
    caps: Arc<ConnectionCaps>,
    ip: IpAddr,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut open = self.caps.open.lock().unwrap_or_else(|p| p.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_address.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.by_address.remove(&self.ip);
            }
        }
    }
}

/// A TCP stream that holds its connection's permit for as long as it lives.
pub struct Admitted {
    stream: TcpStream,
    _permit: ConnectionPermit,
}

impl AsyncRead for Admitted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The acceptor that applies the connection caps (under TLS, before the handshake). A refused
/// connection is closed at once, without a byte written.
#[derive(Clone)]
pub struct CappedAcceptor {
    caps: Arc<ConnectionCaps>,
}

impl CappedAcceptor {
    pub fn new(caps: Arc<ConnectionCaps>) -> CappedAcceptor {
        CappedAcceptor { caps }
    }
}

impl<S> axum_server::accept::Accept<TcpStream, S> for CappedAcceptor {
    type Stream = Admitted;
    type Service = S;
    type Future = std::future::Ready<io::Result<(Admitted, S)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let admitted = stream
            .peer_addr()
            .and_then(|peer| {
                self.caps
                    .admit(peer.ip())
                    .map_err(|r| io::Error::other(format!("connection refused: {r:?} cap")))
            })
            .map(|permit| Admitted {
                stream,
                _permit: permit,
            });
        std::future::ready(admitted.map(|a| (a, service)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_count_per_address_and_in_all_and_free_on_drop() {
        let caps = ConnectionCaps::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = caps.admit(a).unwrap();
        let _a2 = caps.admit(a).unwrap();
        assert_eq!(caps.admit(a).err(), Some(Refusal::PerAddress));
        let _b1 = caps.admit(b).unwrap();
        assert_eq!(caps.admit(b).err(), Some(Refusal::Total));
        assert_eq!(caps.open(), 3);
        drop(a1);
        assert_eq!(caps.open(), 2);
        let _b2 = caps.admit(b).unwrap();
        assert_eq!(caps.refused_total.load(Ordering::Relaxed), 1);
        assert_eq!(caps.refused_per_address.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn forwarded_addresses_are_believed_only_from_a_trusted_proxy() {
        let proxy: IpAddr = "10.0.0.9".parse().unwrap();
        let limits = NetworkLimits {
            trusted_proxies: vec![proxy, "10.0.0.8".parse().unwrap()],
            ..NetworkLimits::default()
        };
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            "1.2.3.4, 5.6.7.8, 10.0.0.8".parse().unwrap(),
        );
        // From the proxy: the nearest untrusted hop (what the client wrote first is not trusted).
        assert_eq!(
            limits.client_ip(SocketAddr::new(proxy, 1), &h),
            "5.6.7.8".parse::<IpAddr>().unwrap()
        );
        // From anyone else: the header is ignored.
        let stranger: IpAddr = "9.9.9.9".parse().unwrap();
        assert_eq!(limits.client_ip(SocketAddr::new(stranger, 1), &h), stranger);
        // A malformed hop ends the chain at the proxy.
        h.insert(
            "x-forwarded-for",
            "1.2.3.4, not-an-address".parse().unwrap(),
        );
        assert_eq!(limits.client_ip(SocketAddr::new(proxy, 1), &h), proxy);
        // No header: the proxy.
        assert_eq!(
            limits.client_ip(SocketAddr::new(proxy, 1), &HeaderMap::new()),
            proxy
        );
    }
}
