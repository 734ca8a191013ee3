//! Password hashing on a few dedicated threads.
//!
//! An argon2 hash takes ~19 MiB. On the shared blocking pool every thread that ever hashed keeps
//! that memory in its allocator arena, so a flood of sign-ins spread over many threads grows the
//! server by hundreds of MiB and it stays there. A fixed set of threads, one per hashing slot
//! (`Shared::sign_in_slots`), bounds it to a few hashes' worth.
//!
//! Even one thread is not enough on its own: each hash allocated and freed ~19 MiB, and the small
//! allocations made between two hashes (the audit record, the response) split the freed block, so
//! the next hash took fresh memory — the heap grew by about one hash per sign-in up to ~350 MB.
//! So each thread hashes in its own work area, allocated once and reused for every hash
//! ([`verify`], [`hash_unknown_user`]), and the memory stays flat.

use std::cell::RefCell;
use std::sync::{Arc, Mutex, mpsc};

use argon2::password_hash::{PasswordHash, Salt};
use argon2::{Algorithm, Argon2, Block, Params, Version};

thread_local! {
    /// This thread's argon2 work area, grown to the largest memory cost seen and then reused.
    static WORK_AREA: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

/// Run argon2 with `params` into `out`, in this thread's reusable work area.
fn argon2_into(
    algorithm: Algorithm,
    version: Version,
    params: Params,
    password: &[u8],
    salt: &[u8],
    out: &mut [u8],
) -> Result<(), argon2::Error> {
    let blocks = params.block_count();
    let argon = Argon2::new(algorithm, version, params);
    WORK_AREA.with(|area| {
        let mut area = area.borrow_mut();
        if area.len() < blocks {
            area.resize(blocks, Block::new());
        }
        argon.hash_password_into_with_memory(password, salt, out, &mut area[..blocks])
    })
}

/// Whether `password` matches the stored PHC string `phc` (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`),
/// hashed in this thread's reusable work area. A stored string that does not parse never matches.
pub fn verify(phc: &str, password: &[u8]) -> bool {
    let Ok(hash) = PasswordHash::new(phc) else {
        return false;
    };
    let (Ok(algorithm), Ok(params)) =
        (Algorithm::try_from(hash.algorithm), Params::try_from(&hash))
    else {
        return false;
    };
    let version = match hash.version.map(Version::try_from) {
        None => Version::default(),
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let (Some(salt), Some(expected)) = (hash.salt, hash.hash) else {
        return false;
    };
    let mut salt_buf = [0u8; Salt::MAX_LENGTH];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let mut out = vec![0u8; expected.len()];
    if argon2_into(algorithm, version, params, password, salt, &mut out).is_err() {
        return false;
    }
    crate::services::auth::constant_time_eq(&out, expected.as_bytes())
}

/// The same work as checking a real account's password, for a username that does not exist (so
/// timing does not tell which usernames exist), in this thread's reusable work area.
pub fn hash_unknown_user(password: &[u8]) {
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    let _ = argon2_into(
        Algorithm::default(),
        Version::default(),
        Params::default(),
        password,
        b"rounds-unknown-user-salt",
        &mut out,
    );
}

type Job = Box<dyn FnOnce() + Send>;

pub struct Hashers {
    jobs: Mutex<mpsc::Sender<Job>>,
}

impl Hashers {
    /// Start `threads` hashing threads (at least one).
    pub fn start(threads: usize) -> Hashers {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("password-hash-{i}"))
                .spawn(move || {
                    loop {
                        let job = match rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(p) => p.into_inner().recv(),
                        };
                        match job {
                            Ok(job) => job(),
                            // The server is gone.
                            Err(_) => return,
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "could not start a password-hashing thread");
            }
        }
        Hashers {
            jobs: Mutex::new(tx),
        }
    }

    /// Run `f` on a hashing thread; None if it could not run.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(job)
            .ok()?;
        rx.await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_agrees_with_the_argon2_crate_on_its_own_hashes() {
        use argon2::password_hash::{PasswordHasher, SaltString, rand_core::OsRng};
        let salt = SaltString::generate(&mut OsRng);
        let phc = Argon2::default()
            .hash_password(b"correct horse battery", &salt)
            .unwrap()
            .to_string();
        assert!(verify(&phc, b"correct horse battery"));
        assert!(!verify(&phc, b"correct horse batterY"));
        assert!(!verify(&phc, b""));
        // Again, in the now reused work area.
        assert!(verify(&phc, b"correct horse battery"));
        // Other parameters (a smaller memory cost, argon2i) verify too.
        let small = Argon2::new(
            Algorithm::Argon2i,
            Version::V0x13,
            Params::new(64, 1, 1, None).unwrap(),
        )
        .hash_password(b"pw", &salt)
        .unwrap()
        .to_string();
        assert!(verify(&small, b"pw") && !verify(&small, b"pW"));
        hash_unknown_user(b"whatever");
    }

    #[test]
    fn malformed_stored_hashes_never_match() {
        for bad in [
            "",
            "plain",
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ",
            "$argon2id$v=99$m=19456,t=2,p=1$c2FsdHNhbHQ$AAAA",
            "$argon2id$v=19$m=1,t=2,p=1$c2FsdHNhbHQ$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "$scrypt$ln=4,r=8,p=1$c2FsdHNhbHQ$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            assert!(!verify(bad, b""), "{bad}");
        }
    }

    #[tokio::test]
    async fn jobs_run_on_the_fixed_hashing_threads_only() {
        let hashers = Hashers::start(2);
        let mut names = std::collections::BTreeSet::new();
        for i in 0..20u32 {
            let (n, name) = hashers
                .run(move || {
                    let name = std::thread::current().name().map(str::to_string);
                    (i * 2, name)
                })
                .await
                .unwrap();
            assert_eq!(n, i * 2);
            names.insert(name.unwrap_or_default());
        }
        assert!(!names.is_empty() && names.len() <= 2, "{names:?}");
        assert!(names.iter().all(|n| n.starts_with("password-hash-")));
    }
}
