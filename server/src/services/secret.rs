//! A secret in a configuration file (webhook key, SMTP password, FHIR token): given inline, or
//! — so that it need never be in the file — read from a file (`{ file = "/run/secrets/x" }`,
//! trailing newline dropped) or an environment variable (`{ env = "ROUNDS_FHIR_TOKEN" }`) when
//! the file is loaded. Shown and serialized only as `<redacted>`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize, Serializer};

/// A resolved secret.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "SecretSpec")]
pub struct Secret {
    value: String,
    /// Where it came from, for `rounds config check` (never the value).
    origin: String,
}

/// How a secret is written in TOML.
#[derive(Deserialize)]
#[serde(untagged)]
enum SecretSpec {
    Inline(String),
    File { file: PathBuf },
    Env { env: String },
}

impl TryFrom<SecretSpec> for Secret {
    type Error = String;
    fn try_from(s: SecretSpec) -> Result<Secret, String> {
        match s {
            SecretSpec::Inline(value) => Ok(Secret {
                value,
                origin: "inline".into(),
            }),
            SecretSpec::File { file } => {
                let text = std::fs::read_to_string(&file)
                    .map_err(|e| format!("secret file {}: {e}", file.display()))?;
                let value = text.trim_end_matches(['\n', '\r']).to_string();
                if value.is_empty() {
                    return Err(format!("secret file {}: empty", file.display()));
                }
                Ok(Secret {
                    value,
                    origin: format!("file {}", file.display()),
                })
            }
            SecretSpec::Env { env } => {
                let value = std::env::var(&env)
                    .map_err(|_| format!("secret environment variable {env}: not set"))?;
                if value.is_empty() {
                    return Err(format!("secret environment variable {env}: empty"));
                }
                Ok(Secret {
                    value,
                    origin: format!("env {env}"),
                })
            }
        }
    }
}

impl Secret {
    /// The secret itself: only where it is used (a signature, a header, a login).
    pub fn expose(&self) -> &str {
        &self.value
    }

    /// The secret's length in bytes (checks such as "at least 16 characters").
    pub fn len(&self) -> usize {
        self.value.len()
    }

    pub fn is_empty(&self) -> bool {
        self.value.is_empty()
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Secret {
        Secret {
            value: s.to_string(),
            origin: "inline".into(),
        }
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<redacted, {}>", self.origin)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("<redacted, {}>", self.origin))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, Serialize)]
    struct C {
        secret: Secret,
    }

    #[test]
    fn inline_file_and_env_secrets_resolve_and_never_print() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("s");
        std::fs::write(&path, "from-the-file-0123\n").unwrap_or_else(|e| panic!("{e}"));
        let c: C = toml::from_str(&format!("secret = {{ file = {:?} }}", path.display()))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.secret.expose(), "from-the-file-0123");
        let shown = format!("{c:?} {}", toml::to_string(&c).unwrap_or_default());
        assert!(!shown.contains("from-the-file"), "{shown}");
        assert!(shown.contains("redacted"), "{shown}");
        let c: C = toml::from_str("secret = \"inline-one\"").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.secret.expose(), "inline-one");
        // PATH is always set; a missing variable and a missing file are errors naming them.
        let c: C = toml::from_str("secret = { env = \"PATH\" }").unwrap_or_else(|e| panic!("{e}"));
        assert!(!c.secret.is_empty());
        let e = toml::from_str::<C>("secret = { env = \"ROUNDS_TEST_NO_SUCH_VARIABLE\" }")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("ROUNDS_TEST_NO_SUCH_VARIABLE"), "{e}");
        let e = toml::from_str::<C>("secret = { file = \"/nonexistent/secret\" }")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("/nonexistent/secret"), "{e}");
    }
}
