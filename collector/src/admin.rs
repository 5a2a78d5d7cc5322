//! The admin credential and how the CLI finds a running collector.
//!
//! On first start the collector writes a random admin token to
//! `<data_dir>/admin.token` (mode 0600) and, once listening, its HTTP address to
//! `<data_dir>/collector.json`. Admin subcommands (`token create`, `agents`, ...)
//! read both from `--data-dir`, like kubectl with a kubeconfig, or take
//! `--url`/`--admin-token` (env `PORTWATCH_URL`, `PORTWATCH_ADMIN_TOKEN`).

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

pub const ADMIN_TOKEN_FILE: &str = "admin.token";
pub const DISCOVERY_FILE: &str = "collector.json";

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {why}")]
    Invalid { path: PathBuf, why: String },
}

/// The admin bearer token. Its Debug never shows the secret.
#[derive(Clone)]
pub struct AdminToken(String);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

impl AdminToken {
    /// Loads `<dir>/admin.token`, creating it (0600) with 256 random bits on first start.
    pub fn load_or_create(dir: &Path) -> Result<AdminToken, AdminError> {
        let path = dir.join(ADMIN_TOKEN_FILE);
        let io = |source| AdminError::Io {
            path: path.clone(),
            source,
        };
        if !path.exists() {
            let mut secret = [0u8; 32];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret).map_err(
                |_| AdminError::Invalid {
                    path: path.clone(),
                    why: "no system randomness".into(),
                },
            )?;
            let token: String = secret.iter().map(|b| format!("{b:02x}")).collect();
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(io)?;
            f.write_all(format!("{token}\n").as_bytes()).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        AdminToken::read(&path)
    }

    /// Reads an existing token file.
    pub fn read(path: &Path) -> Result<AdminToken, AdminError> {
        let text = fs::read_to_string(path).map_err(|source| AdminError::Io {
            path: path.to_owned(),
            source,
        })?;
        AdminToken::new(text.trim()).map_err(|why| AdminError::Invalid {
            path: path.to_owned(),
            why,
        })
    }

    pub fn new(token: &str) -> Result<AdminToken, String> {
        if token.len() < 32 || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("the admin token must be at least 32 printable characters".into());
        }
        Ok(AdminToken(token.to_owned()))
    }

    pub fn secret(&self) -> &str {
        &self.0
    }

    /// Constant-time check of an `Authorization: Bearer <token>` value.
    pub fn verify_bearer(&self, header: Option<&str>) -> bool {
        let Some(given) = header.and_then(|h| h.strip_prefix("Bearer ")) else {
            return false;
        };
        given.len() == self.0.len() && bool::from(given.as_bytes().ct_eq(self.0.as_bytes()))
    }
}

/// What a running collector publishes in its data dir.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Discovery {
    /// Base URL of the HTTP API, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    /// Address agents connect to, as given to `serve`.
    pub agent_addr: String,
    pub pid: u32,
}

impl Discovery {
    /// Writes `<dir>/collector.json` atomically.
    pub fn write(&self, dir: &Path) -> Result<(), AdminError> {
        let path = dir.join(DISCOVERY_FILE);
        let tmp = dir.join(format!("{DISCOVERY_FILE}.tmp"));
        let io = |source| AdminError::Io {
            path: path.clone(),
            source,
        };
        let body = serde_json::to_vec_pretty(self).map_err(|e| AdminError::Invalid {
            path: path.clone(),
            why: e.to_string(),
        })?;
        fs::write(&tmp, body).map_err(io)?;
        fs::rename(&tmp, &path).map_err(io)
    }

    pub fn read(dir: &Path) -> Result<Discovery, AdminError> {
        let path = dir.join(DISCOVERY_FILE);
        let text = fs::read_to_string(&path).map_err(|source| AdminError::Io {
            path: path.clone(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|e| AdminError::Invalid {
            path,
            why: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn admin_token_is_created_once_private_and_checked_in_constant_time() {
        let dir = tempfile::tempdir().unwrap();
        let t = AdminToken::load_or_create(dir.path()).unwrap();
        let mode = fs::metadata(dir.path().join(ADMIN_TOKEN_FILE))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(t.secret().len(), 64);
        assert_eq!(
            AdminToken::load_or_create(dir.path()).unwrap().secret(),
            t.secret(),
            "kept across restarts"
        );
        assert!(t.verify_bearer(Some(&format!("Bearer {}", t.secret()))));
        assert!(!t.verify_bearer(Some(t.secret())), "scheme required");
        assert!(!t.verify_bearer(Some("Bearer short")));
        assert!(!t.verify_bearer(None));
        assert!(!format!("{t:?}").contains(t.secret()), "never in logs");
    }

    #[test]
    fn discovery_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let d = Discovery {
            url: "http://127.0.0.1:1".into(),
            agent_addr: "127.0.0.1:2".into(),
            pid: 7,
        };
        d.write(dir.path()).unwrap();
        assert_eq!(Discovery::read(dir.path()).unwrap(), d);
        let err = Discovery::read(&dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("collector.json"), "{err}");
    }
}
