//! Password hashing on a few dedicated threads.
//!
//! An argon2 hash takes ~19 MiB. On the shared blocking pool every thread that ever hashed keeps
//! that memory in its allocator arena, so a flood of sign-ins spread over many threads grows the
//! server by hundreds of MiB and it stays there. A fixed set of threads, one per hashing slot
//! (`Shared::sign_in_slots`), bounds it to a few hashes' worth.

use std::sync::{Arc, Mutex, mpsc};

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
