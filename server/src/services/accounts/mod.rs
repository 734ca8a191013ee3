//! Staff accounts of the web console: roles, facilities, argon2 password hashes, lockout after
//! repeated failures, and sessions (stored by the SHA-256 of their cookie value) with a CSRF
//! token each.

pub mod hashing;

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHasher, SaltString};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything, including devices and the audit log.
    Admin,
    /// Worklist, patients, month close, push, downloads.
    Billing,
    /// Worklist and patients.
    Nurse,
    /// The care-management company: every practice and facility, billing and the company's view.
    Company,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Billing => "billing",
            Role::Nurse => "nurse",
            Role::Company => "company",
        }
    }

    pub fn can_bill(self) -> bool {
        matches!(self, Role::Admin | Role::Billing | Role::Company)
    }

    pub fn is_admin(self) -> bool {
        self == Role::Admin
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct User {
    pub username: String,
    pub role: Role,
    pub facilities: Vec<String>,
    /// A practice's staff: the practices whose patients they see, in any facility.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub practices: Vec<String>,
    pub created_at: DateTime<Utc>,
    password_hash: String,
    #[serde(default)]
    failed_attempts: u32,
    #[serde(default)]
    locked_until: Option<DateTime<Utc>>,
}

/// Who sees what — the one place the console's scoping is decided. Three kinds of users:
/// the company (`Role::Company`: every practice and facility), a practice's staff (`practices`
/// given: billing or nurse, their practices' patients in any facility) and facility staff (their
/// facilities' residents, whatever the practice).
impl User {
    pub fn is_company(&self) -> bool {
        self.role == Role::Company
    }

    /// A practice's billing or clinical staff.
    pub fn is_practice_staff(&self) -> bool {
        !self.is_company() && !self.practices.is_empty()
    }

    /// May open a facility's pages (a practice's staff see only their patients on them).
    pub fn sees(&self, facility: &str) -> bool {
        self.is_company()
            || self.is_practice_staff()
            || self.facilities.iter().any(|f| f == facility)
    }

    /// May see a patient of `facility` whose practitioners of record belong to `practices`.
    pub fn sees_patient(&self, facility: &str, practices: &[String]) -> bool {
        if self.is_company() {
            true
        } else if self.is_practice_staff() {
            practices.iter().any(|p| self.practices.contains(p))
        } else {
            self.facilities.iter().any(|f| f == facility)
        }
    }

    /// May see a practice's summary and packages.
    pub fn sees_practice(&self, practice: &str) -> bool {
        self.is_company() || self.practices.iter().any(|p| p == practice)
    }

    /// May see a package (an outbox item) of `facility` for `practice` (None: the facility's
    /// own practice).
    pub fn sees_package(&self, facility: &str, practice: Option<&str>) -> bool {
        if self.is_company() {
            true
        } else if self.is_practice_staff() {
            self.sees_practice(practice.unwrap_or(facility))
        } else {
            self.facilities.iter().any(|f| f == facility)
        }
    }

    /// The practices whose lines the user's downloads and pushes are limited to (None: all).
    pub fn practice_scope(&self) -> Option<&[String]> {
        self.is_practice_staff()
            .then_some(self.practices.as_slice())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    pub username: String,
    pub csrf: String,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("{0}")]
    Invalid(String),
    #[error("user {0:?} exists")]
    Exists(String),
    #[error("wrong username or password")]
    BadCredentials,
    #[error("too many failed attempts: the account is locked until {0}")]
    Locked(DateTime<Utc>),
    #[error("store: {0}")]
    Store(String),
}

impl From<crate::sync::store::kv::KvError> for AccountError {
    fn from(e: crate::sync::store::kv::KvError) -> Self {
        AccountError::Store(e.to_string())
    }
}

/// Failed logins in a row before the account locks, and for how long.
pub const MAX_FAILURES: u32 = 5;
pub const LOCKOUT_MINUTES: i64 = 15;
pub const SESSION_HOURS: i64 = 12;

pub struct Accounts {
    users: crate::sync::store::kv::Tree,
    sessions: crate::sync::store::kv::Tree,
    /// One lock per account, held from reading its failure count to saving it: parallel wrong
    /// passwords are checked one after the other, so the lockout takes effect after exactly
    /// `MAX_FAILURES` checks whatever the concurrency.
    checking:
        std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<std::sync::Mutex<()>>>>,
    /// Password hashes computed (real checks and the equal work done for unknown users).
    hashes: std::sync::atomic::AtomicU64,
}

/// A random token (`bytes` random bytes, base58).
pub fn random_token(bytes: usize) -> Result<String, AccountError> {
    crate::services::security::random_secret("", bytes)
        .map_err(|e| AccountError::Store(e.to_string()))
}

use crate::services::security::sha256_hex;

impl Accounts {
    pub fn open(db: &crate::sync::store::kv::Db) -> Result<Accounts, AccountError> {
        Ok(Accounts {
            users: db.open_tree("console_users")?,
            sessions: db.open_tree("console_sessions")?,
            checking: std::sync::Mutex::new(std::collections::HashMap::new()),
            hashes: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn save(&self, u: &User) -> Result<(), AccountError> {
        let bytes = serde_json::to_vec(u).map_err(|e| AccountError::Store(e.to_string()))?;
        self.users.insert(u.username.as_bytes(), bytes)?;
        self.users.flush()?;
        Ok(())
    }

    pub fn user(&self, username: &str) -> Option<User> {
        serde_json::from_slice(&self.users.get(username.as_bytes()).ok()??).ok()
    }

    pub fn users(&self) -> Vec<User> {
        self.users
            .iter()
            .values()
            .flatten()
            .filter_map(|v| serde_json::from_slice(&v).ok())
            .collect()
    }

    /// Create an account. Passwords: at least 12 characters.
    pub fn add_user(
        &self,
        username: &str,
        password: &str,
        role: Role,
        facilities: &[String],
        practices: &[String],
    ) -> Result<User, AccountError> {
        let ok = !username.is_empty()
            && username.len() <= 64
            && username
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c));
        if !ok {
            return Err(AccountError::Invalid(format!(
                "username {:?}: use 1–64 letters, digits, '-', '_', '.' or '@'",
                username.chars().take(32).collect::<String>()
            )));
        }
        if password.chars().count() < 12 {
            return Err(AccountError::Invalid(
                "password: use at least 12 characters".into(),
            ));
        }
        if role != Role::Company && facilities.is_empty() && practices.is_empty() {
            return Err(AccountError::Invalid(
                "facility: give at least one facility id (facility staff) or practice id (a practice's staff)".into(),
            ));
        }
        if !practices.is_empty() && !matches!(role, Role::Billing | Role::Nurse) {
            return Err(AccountError::Invalid(format!(
                "practice: a practice's staff are billing or nurse users, not {}",
                role.as_str()
            )));
        }
        for f in facilities {
            rounds_core::ids::check_id("facility", f)
                .map_err(|e| AccountError::Invalid(e.to_string()))?;
        }
        for p in practices {
            rounds_core::ids::check_id("practice", p)
                .map_err(|e| AccountError::Invalid(e.to_string()))?;
        }
        if self.users.contains_key(username.as_bytes())? {
            return Err(AccountError::Exists(username.to_string()));
        }
        let salt = SaltString::generate(&mut OsRng);
        let hash = Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map_err(|e| AccountError::Store(e.to_string()))?
            .to_string();
        let u = User {
            username: username.to_string(),
            role,
            facilities: facilities.to_vec(),
            practices: practices.to_vec(),
            created_at: Utc::now(),
            password_hash: hash,
            failed_attempts: 0,
            locked_until: None,
        };
        self.save(&u)?;
        Ok(u)
    }

    /// Password hashes computed so far (for `/metrics` and tests).
    pub fn password_hashes(&self) -> u64 {
        self.hashes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Check a password; returns a new session (its cookie value and record). Blocking (an
    /// argon2 hash, ~19 MiB and tens of milliseconds): call it on a hashing thread
    /// (`hashing::Hashers`), a bounded number at a time.
    pub fn login(
        &self,
        username: &str,
        password: &str,
        now: DateTime<Utc>,
    ) -> Result<(String, Session), AccountError> {
        use std::sync::atomic::Ordering::Relaxed;
        if self.user(username).is_none() {
            // Same work as a real check, so timing does not tell which usernames exist.
            self.hashes.fetch_add(1, Relaxed);
            hashing::hash_unknown_user(password.as_bytes());
            return Err(AccountError::BadCredentials);
        }
        // This account's checks one at a time (accounts that exist only: the map stays as small
        // as the user list).
        let lock = self
            .checking
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(username.to_string())
            .or_default()
            .clone();
        let _one_at_a_time = lock.lock().unwrap_or_else(|p| p.into_inner());
        // Read again under the lock: the failure count another check just saved counts.
        let Some(mut u) = self.user(username) else {
            return Err(AccountError::BadCredentials);
        };
        if let Some(until) = u.locked_until
            && until > now
        {
            return Err(AccountError::Locked(until));
        }
        self.hashes.fetch_add(1, Relaxed);
        let ok = hashing::verify(&u.password_hash, password.as_bytes());
        if !ok {
            u.failed_attempts += 1;
            let locked = u.failed_attempts >= MAX_FAILURES;
            if locked {
                u.locked_until = Some(now + Duration::minutes(LOCKOUT_MINUTES));
                u.failed_attempts = 0;
            }
            self.save(&u)?;
            return Err(match u.locked_until {
                Some(until) if locked => AccountError::Locked(until),
                _ => AccountError::BadCredentials,
            });
        }
        u.failed_attempts = 0;
        u.locked_until = None;
        self.save(&u)?;
        let id = random_token(32)?;
        let s = Session {
            username: u.username.clone(),
            csrf: random_token(32)?,
            expires_at: now + Duration::hours(SESSION_HOURS),
        };
        let bytes = serde_json::to_vec(&s).map_err(|e| AccountError::Store(e.to_string()))?;
        self.sessions.insert(sha256_hex(&id).as_bytes(), bytes)?;
        Ok((id, s))
    }

    /// The live session and its user for a cookie value.
    pub fn session(&self, id: &str, now: DateTime<Utc>) -> Option<(Session, User)> {
        let key = sha256_hex(id);
        let s: Session = serde_json::from_slice(&self.sessions.get(key.as_bytes()).ok()??).ok()?;
        if s.expires_at <= now {
            let _ = self.sessions.remove(key.as_bytes());
            return None;
        }
        let u = self.user(&s.username)?;
        Some((s, u))
    }

    pub fn logout(&self, id: &str) {
        let _ = self.sessions.remove(sha256_hex(id).as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_wrong_passwords_are_checked_at_most_max_failures_times() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::sync::store::kv::Db::Sled(sled::open(dir.path()).unwrap());
        let a = std::sync::Arc::new(Accounts::open(&db).unwrap());
        a.add_user(
            "ana",
            "correct horse battery",
            Role::Admin,
            &["sunnyvale".into()],
            &[],
        )
        .unwrap();
        let before = a.password_hashes();
        let now = Utc::now();
        let threads: Vec<_> = (0..40)
            .map(|i| {
                let a = a.clone();
                std::thread::spawn(move || a.login("ana", &format!("wrong guess {i}"), now))
            })
            .collect();
        let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let checks = a.password_hashes() - before;
        assert_eq!(checks, u64::from(MAX_FAILURES), "{results:?}");
        let bad = results
            .iter()
            .filter(|r| matches!(r, Err(AccountError::BadCredentials)))
            .count();
        assert_eq!(bad, MAX_FAILURES as usize - 1);
        assert!(results.iter().all(|r| r.is_err()));
        // Locked: the right password is refused without a check.
        assert!(matches!(
            a.login("ana", "correct horse battery", now),
            Err(AccountError::Locked(_))
        ));
        assert_eq!(a.password_hashes() - before, u64::from(MAX_FAILURES));
    }

    #[test]
    fn scopes_decide_who_sees_which_patient_practice_and_package() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::sync::store::kv::Db::Sled(sled::open(dir.path()).unwrap());
        let a = Accounts::open(&db).unwrap();
        let pw = "correct horse battery";
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let facility = a
            .add_user("fac", pw, Role::Billing, &s(&["oak"]), &[])
            .unwrap();
        let practice = a
            .add_user("prac", pw, Role::Billing, &[], &s(&["north"]))
            .unwrap();
        let company = a.add_user("co", pw, Role::Company, &[], &[]).unwrap();
        let (north, south) = (s(&["north"]), s(&["south"]));
        // Facility staff: their facility's residents, any practice; no practice's summary.
        assert!(facility.sees_patient("oak", &south));
        assert!(!facility.sees_patient("elm", &north));
        assert!(!facility.sees_practice("north"));
        assert!(facility.sees_package("oak", Some("south")));
        // A practice's staff: its patients in any facility, only its packages.
        assert!(practice.sees_patient("elm", &north));
        assert!(!practice.sees_patient("oak", &south));
        assert!(practice.sees_practice("north") && !practice.sees_practice("south"));
        assert!(practice.sees_package("elm", Some("north")));
        assert!(!practice.sees_package("oak", Some("south")));
        assert!(
            !practice.sees_package("oak", None),
            "oak's own practice is not north"
        );
        // The company: everything.
        assert!(company.sees_patient("elm", &south) && company.sees_practice("south"));
        // Invalid scopes are refused.
        for (role, f, p) in [
            (Role::Nurse, vec![], vec![]),
            (Role::Admin, vec![], s(&["north"])),
            (Role::Billing, vec![], s(&["../x"])),
        ] {
            assert!(matches!(
                a.add_user("bad", pw, role, &f, &p),
                Err(AccountError::Invalid(_))
            ));
        }
    }

    #[test]
    fn passwords_are_hashed_and_five_failures_lock_the_account() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::sync::store::kv::Db::Sled(sled::open(dir.path()).unwrap());
        let a = Accounts::open(&db).unwrap();
        let pw = "correct horse battery";
        a.add_user("nina", pw, Role::Nurse, &["sunnyvale".into()], &[])
            .unwrap();
        let raw = String::from_utf8_lossy(
            &db.open_tree("console_users")
                .unwrap()
                .get("nina")
                .unwrap()
                .unwrap(),
        )
        .to_string();
        assert!(!raw.contains(pw) && raw.contains("$argon2"), "{raw}");
        assert!(matches!(
            a.add_user("x", "short", Role::Nurse, &["f".into()], &[]),
            Err(AccountError::Invalid(_))
        ));
        let now = Utc::now();
        let (id, s) = a.login("nina", pw, now).unwrap();
        assert_eq!(a.session(&id, now).unwrap().0.csrf, s.csrf);
        a.logout(&id);
        assert!(a.session(&id, now).is_none());
        for _ in 0..4 {
            assert!(matches!(
                a.login("nina", "wrong password!", now),
                Err(AccountError::BadCredentials)
            ));
        }
        assert!(matches!(
            a.login("nina", "wrong password!", now),
            Err(AccountError::Locked(_))
        ));
        // Locked: even the right password is refused until the lock ends.
        assert!(matches!(
            a.login("nina", pw, now),
            Err(AccountError::Locked(_))
        ));
        assert!(
            a.login("nina", pw, now + Duration::minutes(LOCKOUT_MINUTES + 1))
                .is_ok()
        );
        assert!(matches!(
            a.login("nobody", pw, now),
            Err(AccountError::BadCredentials)
        ));
    }
}
