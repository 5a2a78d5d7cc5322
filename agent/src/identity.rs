//! The agent's identity on disk, written by `enroll` and read by `run`:
//!
//! - `agent.key`: the private key generated on this machine (mode 0600);
//! - `agent.pem`: its certificate, identity `portwatch://agent/<id>`;
//! - `ca.pem`: the collector's CA (the one the join string pinned);
//! - `agent.json`: collector address, agent id, name, labels, enrollment time.
//!
//! `AgentIdentity::load` checks that the files belong together (the key
//! matches the certificate, the certificate names the agent in agent.json) so
//! a half-written or mixed-up directory is reported here, not as a TLS
//! failure later.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub const KEY_FILE: &str = "agent.key";
pub const CERT_FILE: &str = "agent.pem";
pub const CA_FILE: &str = "ca.pem";
pub const INFO_FILE: &str = "agent.json";
/// A renewed key and certificate, written before they replace the current pair.
pub const NEXT_KEY_FILE: &str = "agent.key.next";
pub const NEXT_CERT_FILE: &str = "agent.pem.next";
/// The URI SAN prefix of an agent identity (as the collector's CA writes it).
pub const AGENT_URI_PREFIX: &str = "portwatch://agent/";

const ENROLL_HINT: &str =
    "enroll this agent with `portwatch-agent enroll '<join string>' --data-dir DIR`";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{path} not found: this agent is not enrolled; {ENROLL_HINT}")]
    Missing { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {why}; {ENROLL_HINT} --force to replace the identity")]
    Invalid { path: PathBuf, why: String },
}

/// What `agent.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentInfo {
    /// The collector's agent port, `host:port`, from the join string.
    pub collector_addr: String,
    pub agent_id: String,
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub enrolled_at_unix_ms: i64,
}

/// An enrolled agent's identity, as loaded from its data dir.
#[derive(Clone)]
pub struct AgentIdentity {
    pub info: AgentInfo,
    cert_pem: String,
    key_pem: String,
    ca_pem: String,
    cert_not_after: SystemTime,
}

impl AgentIdentity {
    /// Reads and cross-checks the identity files in `data_dir`, first
    /// finishing a certificate rotation a crash interrupted.
    pub fn load(data_dir: &Path) -> Result<AgentIdentity, IdentityError> {
        recover_rotation(data_dir).map_err(|source| IdentityError::Io {
            path: data_dir.to_owned(),
            source,
        })?;
        let read = |name: &str| {
            let path = data_dir.join(name);
            fs::read_to_string(&path).map_err(|source| match source.kind() {
                std::io::ErrorKind::NotFound => IdentityError::Missing { path: path.clone() },
                _ => IdentityError::Io {
                    path: path.clone(),
                    source,
                },
            })
        };
        let invalid = |name: &str, why: String| IdentityError::Invalid {
            path: data_dir.join(name),
            why,
        };
        let info: AgentInfo = serde_json::from_str(&read(INFO_FILE)?)
            .map_err(|e| invalid(INFO_FILE, format!("not valid agent info: {e}")))?;
        let cert_pem = read(CERT_FILE)?;
        let key_pem = read(KEY_FILE)?;
        let ca_pem = read(CA_FILE)?;

        let cert_der = pem_cert(&cert_pem).map_err(|why| invalid(CERT_FILE, why))?;
        pem_cert(&ca_pem).map_err(|why| invalid(CA_FILE, why))?;
        let (_, cert) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|e| invalid(CERT_FILE, format!("not a valid certificate: {e}")))?;
        let key = rcgen::KeyPair::from_pem(&key_pem)
            .map_err(|e| invalid(KEY_FILE, format!("not a valid private key: {e}")))?;
        if rcgen::PublicKeyData::subject_public_key_info(&key)
            != cert.tbs_certificate.subject_pki.raw
        {
            return Err(invalid(
                KEY_FILE,
                format!("this key does not belong to {CERT_FILE}"),
            ));
        }
        let ids = uri_ids(&cert);
        if ids != [info.agent_id.as_str()] {
            return Err(invalid(
                CERT_FILE,
                format!(
                    "the certificate is for agent {ids:?}, {INFO_FILE} says {:?}",
                    info.agent_id
                ),
            ));
        }
        let not_after = cert.validity().not_after.timestamp();
        let cert_not_after = if not_after >= 0 {
            UNIX_EPOCH + Duration::from_secs(not_after.unsigned_abs())
        } else {
            UNIX_EPOCH
        };
        Ok(AgentIdentity {
            info,
            cert_pem,
            key_pem,
            ca_pem,
            cert_not_after,
        })
    }

    /// Replaces the key and certificate after a renewal, crash-safely: the new
    /// pair is written in full as `.next` files, then renamed over the current
    /// one (key first); `load` completes whatever a crash left half done.
    pub fn save_rotated(
        data_dir: &Path,
        key_pem: &str,
        cert_pem: &str,
    ) -> Result<(), IdentityError> {
        let io = |path: PathBuf| move |source| IdentityError::Io { path, source };
        let next_key = data_dir.join(NEXT_KEY_FILE);
        let next_cert = data_dir.join(NEXT_CERT_FILE);
        write_atomic(&next_key, key_pem.as_bytes(), 0o600).map_err(io(next_key.clone()))?;
        write_atomic(&next_cert, cert_pem.as_bytes(), 0o644).map_err(io(next_cert.clone()))?;
        recover_rotation(data_dir).map_err(io(data_dir.to_owned()))
    }

    /// Whether any identity file exists in `data_dir` (a previous enrollment,
    /// complete or not, that `enroll` must not overwrite without `--force`).
    pub fn exists(data_dir: &Path) -> bool {
        [CERT_FILE, INFO_FILE, CA_FILE]
            .iter()
            .any(|f| data_dir.join(f).exists())
    }

    pub fn agent_id(&self) -> &str {
        &self.info.agent_id
    }

    pub fn collector_addr(&self) -> &str {
        &self.info.collector_addr
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The private key. Never log it.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// When the certificate expires; the agent renews well before.
    pub fn cert_not_after(&self) -> SystemTime {
        self.cert_not_after
    }
}

impl fmt::Debug for AgentIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentIdentity")
            .field("info", &self.info)
            .field("cert_not_after", &self.cert_not_after)
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// Finishes or discards a rotation: both `.next` files present means the new
/// pair is complete (each was written and synced before its rename), so it
/// replaces the current one; only the certificate left means the key was
/// already moved; only the key means the new pair never got its
/// certificate, and the current pair is still whole.
fn recover_rotation(dir: &Path) -> std::io::Result<()> {
    let (next_key, next_cert) = (dir.join(NEXT_KEY_FILE), dir.join(NEXT_CERT_FILE));
    match (next_key.exists(), next_cert.exists()) {
        (true, true) => {
            fs::rename(&next_key, dir.join(KEY_FILE))?;
            fs::rename(&next_cert, dir.join(CERT_FILE))?;
        }
        (false, true) => fs::rename(&next_cert, dir.join(CERT_FILE))?,
        (true, false) => fs::remove_file(&next_key)?,
        (false, false) => return Ok(()),
    }
    fs::File::open(dir)?.sync_all()
}

fn pem_cert(pem: &str) -> Result<Vec<u8>, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|c| c.to_vec())
        .map_err(|e| format!("not a PEM certificate: {e}"))
}

/// The agent ids in a certificate's URI SANs.
pub(crate) fn uri_ids<'a>(cert: &'a x509_parser::certificate::X509Certificate<'_>) -> Vec<&'a str> {
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|g| match g {
            x509_parser::extensions::GeneralName::URI(u) => u.strip_prefix(AGENT_URI_PREFIX),
            _ => None,
        })
        .collect()
}

/// PEM text of a DER certificate.
pub(crate) fn cert_to_pem(der: &[u8]) -> String {
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ascii"));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Writes `body` to `path` through a temporary file in the same directory
/// and a rename, so a reader sees the old file or the new one, never half of
/// one. The temporary file is created with `mode` (never wider first).
pub(crate) fn write_atomic(path: &Path, body: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(body)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        // The rename is durable once the directory is synced.
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path) -> (String, String) {
        (
            fs::read_to_string(dir.join(KEY_FILE)).unwrap_or_default(),
            fs::read_to_string(dir.join(CERT_FILE)).unwrap_or_default(),
        )
    }

    /// Each point where a crash can stop `save_rotated` leaves a directory
    /// from which the next `load` gets a matching pair: the new one once both
    /// halves were complete, the old one otherwise.
    #[test]
    fn an_interrupted_rotation_is_finished_or_undone() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let reset = || {
            for f in [KEY_FILE, CERT_FILE, NEXT_KEY_FILE, NEXT_CERT_FILE] {
                let _ = fs::remove_file(d.join(f));
            }
            fs::write(d.join(KEY_FILE), "old key").unwrap();
            fs::write(d.join(CERT_FILE), "old cert").unwrap();
        };
        // Crashed after writing the new key only: the old pair stays.
        reset();
        fs::write(d.join(NEXT_KEY_FILE), "new key").unwrap();
        recover_rotation(d).unwrap();
        assert_eq!(files(d), ("old key".into(), "old cert".into()));
        assert!(!d.join(NEXT_KEY_FILE).exists());
        // Crashed with both halves written: the new pair takes over.
        reset();
        fs::write(d.join(NEXT_KEY_FILE), "new key").unwrap();
        fs::write(d.join(NEXT_CERT_FILE), "new cert").unwrap();
        recover_rotation(d).unwrap();
        assert_eq!(files(d), ("new key".into(), "new cert".into()));
        // Crashed between the two renames: the certificate follows its key.
        reset();
        fs::write(d.join(KEY_FILE), "new key").unwrap();
        fs::write(d.join(NEXT_CERT_FILE), "new cert").unwrap();
        recover_rotation(d).unwrap();
        assert_eq!(files(d), ("new key".into(), "new cert".into()));
        assert!(!d.join(NEXT_CERT_FILE).exists());
        // Nothing pending: nothing changes.
        reset();
        recover_rotation(d).unwrap();
        assert_eq!(files(d), ("old key".into(), "old cert".into()));
    }
}
