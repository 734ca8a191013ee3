//! Encryption at rest for the device's files: XChaCha20-Poly1305 with a 256-bit key the app
//! passes in from the platform keystore. Each sealed blob is `nonce (24 bytes) ‖ ciphertext+tag`.

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};

/// A 256-bit key.
pub type KeyBytes = [u8; 32];

const NONCE: usize = 24;

/// Seals and opens blobs with one key.
#[derive(Clone)]
pub struct Sealer {
    cipher: XChaCha20Poly1305,
}

/// A blob that does not open with this key (wrong key, or damaged data).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot decrypt: wrong key or damaged data")]
pub struct OpenError;

impl Sealer {
    pub fn new(key: &KeyBytes) -> Sealer {
        Sealer {
            cipher: XChaCha20Poly1305::new(Key::from_slice(key)),
        }
    }

    /// Encrypt with a fresh random nonce.
    pub fn seal(&self, plaintext: &[u8]) -> Result<Vec<u8>, OpenError> {
        let mut nonce = [0u8; NONCE];
        getrandom::fill(&mut nonce).map_err(|_| OpenError)?;
        let ct = self
            .cipher
            .encrypt(XNonce::from_slice(&nonce), plaintext)
            .map_err(|_| OpenError)?;
        let mut out = Vec::with_capacity(NONCE + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Decrypt and authenticate.
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        if sealed.len() < NONCE {
            return Err(OpenError);
        }
        let (nonce, ct) = sealed.split_at(NONCE);
        self.cipher
            .decrypt(XNonce::from_slice(nonce), ct)
            .map_err(|_| OpenError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_wrong_key() {
        let a = Sealer::new(&[7; 32]);
        let sealed = a.seal(b"Jane Doe").unwrap();
        assert!(!sealed.windows(8).any(|w| w == b"Jane Doe"));
        assert_eq!(a.open(&sealed).unwrap(), b"Jane Doe");
        assert_eq!(Sealer::new(&[8; 32]).open(&sealed), Err(OpenError));
        assert_eq!(a.open(&sealed[..10]), Err(OpenError));
    }
}
