//! Who is on the other end of a connection. `Security::authenticate` is the single place that
//! decides; this module holds the shapes it uses.

/// The authenticated device behind a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub name: String,
    /// The facility the device belongs to (`None`: not bound to one, development only).
    pub facility: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no token: send `Authorization: Bearer <token>` or `?token=<token>`")]
    Missing,
    #[error("token not accepted")]
    Rejected,
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
