//! The agent's last assignment, kept in its data dir beside the result buffer
//! (`assignment.pb`), so an agent restarted while the collector is
//! unreachable goes on checking at once instead of waiting for the collector.
//!
//! - **What is kept**: the `Assignment` message exactly as the collector sent
//!   it (version, monitors, `public_only`), so on load the same spec builder
//!   (`check::spec_from_proto`) validates every monitor again, and a restored
//!   public-only flag tightens the address policy before any check runs.
//! - **When**: each time an assignment is applied, one that says "no
//!   monitors" included (it empties the saved one). A resend of the same
//!   assignment (each new stream starts with one) is not written again.
//! - **How**: a header (magic, CRC-32 of the message) and the message, written
//!   with `identity::write_atomic` (temporary file, fsync, rename, directory
//!   fsync; mode 0600): a reader finds the old file or the new one, never half.
//! - **Damage**: a file that is truncated, foreign or fails its checksum is an
//!   error for the caller to log; the agent then starts empty and waits for
//!   the collector, as an agent that never had an assignment does.

use std::path::{Path, PathBuf};

use portwatch_proto::v1 as pb;
use prost::Message;

/// The file's name in the agent's data dir.
pub const FILE: &str = "assignment.pb";
/// The first bytes of the file: what it is, and its format's version.
const MAGIC: &[u8; 8] = b"PWASGN1\n";

/// Why the saved assignment could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SavedError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a saved assignment (unknown header)")]
    Header { path: PathBuf },
    #[error("{path}: checksum mismatch, the file is damaged")]
    Checksum { path: PathBuf },
    #[error("{path}: the assignment does not decode: {source}")]
    Decode {
        path: PathBuf,
        source: prost::DecodeError,
    },
}

/// Where the last assignment is kept.
#[derive(Debug, Clone)]
pub struct SavedAssignment {
    path: PathBuf,
}

impl SavedAssignment {
    /// The saved assignment in the agent's data dir.
    pub fn in_dir(data_dir: &Path) -> SavedAssignment {
        SavedAssignment {
            path: data_dir.join(FILE),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved assignment; `None` when there is none (never assigned).
    pub fn load(&self) -> Result<Option<pb::Assignment>, SavedError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(SavedError::Io {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        decode(&bytes)
            .map(Some)
            .map_err(|why| why.at(self.path.clone()))
    }

    /// Replaces the saved assignment with `a`, durably.
    pub fn save(&self, a: &pb::Assignment) -> Result<(), SavedError> {
        crate::identity::write_atomic(&self.path, &encode(a), 0o600).map_err(|source| {
            SavedError::Io {
                path: self.path.clone(),
                source,
            }
        })
    }
}

/// The file's bytes for `a`: magic, CRC-32 (big-endian) of the message, message.
pub fn encode(a: &pb::Assignment) -> Vec<u8> {
    let body = a.encode_to_vec();
    let mut out = Vec::with_capacity(MAGIC.len() + 4 + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&crc32fast::hash(&body).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// What went wrong with the bytes, before the path is known.
enum Damage {
    Header,
    Checksum,
    Decode(prost::DecodeError),
}

impl Damage {
    fn at(self, path: PathBuf) -> SavedError {
        match self {
            Damage::Header => SavedError::Header { path },
            Damage::Checksum => SavedError::Checksum { path },
            Damage::Decode(source) => SavedError::Decode { path, source },
        }
    }
}

fn decode(bytes: &[u8]) -> Result<pb::Assignment, Damage> {
    let rest = bytes.strip_prefix(MAGIC).ok_or(Damage::Header)?;
    let (crc, body) = rest.split_at_checked(4).ok_or(Damage::Checksum)?;
    let crc = u32::from_be_bytes(crc.try_into().map_err(|_| Damage::Checksum)?);
    if crc != crc32fast::hash(body) {
        return Err(Damage::Checksum);
    }
    pb::Assignment::decode(body).map_err(Damage::Decode)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn assignment(version: u64, targets: &[&str]) -> pb::Assignment {
        pb::Assignment {
            version,
            monitors: targets
                .iter()
                .enumerate()
                .map(|(i, t)| pb::MonitorSpec {
                    id: format!("m{i}"),
                    target: (*t).to_owned(),
                    interval_ms: 5000,
                    ..Default::default()
                })
                .collect(),
            public_only: version % 2 == 1,
        }
    }

    #[test]
    fn saved_is_loaded_exactly_replaced_by_the_next_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let saved = SavedAssignment::in_dir(dir.path());
        assert!(saved.load().unwrap().is_none(), "nothing saved yet");

        let first = assignment(7, &["tcp://10.0.0.5:6379", "udp://10.0.0.53:53"]);
        saved.save(&first).unwrap();
        assert_eq!(saved.load().unwrap(), Some(first));
        let mode = std::fs::metadata(saved.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");

        let next = assignment(8, &["icmp://10.0.0.1"]);
        saved.save(&next).unwrap();
        assert_eq!(saved.load().unwrap(), Some(next));
        // "No monitors" is saved as such: a restart restores nothing to run.
        let empty = assignment(9, &[]);
        saved.save(&empty).unwrap();
        assert_eq!(saved.load().unwrap(), Some(empty));
        // Only the file itself is left: no temporary file behind.
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec![FILE.to_owned()]);
    }

    #[test]
    fn damaged_files_are_errors_that_name_the_file_never_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let saved = SavedAssignment::in_dir(dir.path());
        let good = encode(&assignment(3, &["tcp://db:5432"]));
        let write = |b: &[u8]| std::fs::write(saved.path(), b).unwrap();

        write(b"garbage that is no assignment");
        let e = saved.load().unwrap_err();
        assert!(matches!(e, SavedError::Header { .. }), "{e}");
        assert!(e.to_string().contains(FILE), "{e}");
        // Every truncation and every flipped byte after the magic is caught.
        for cut in 0..good.len() {
            write(&good[..cut]);
            assert!(saved.load().is_err(), "cut at {cut} loaded");
        }
        for i in MAGIC.len()..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x41;
            write(&bad);
            assert!(
                matches!(saved.load(), Err(SavedError::Checksum { .. })),
                "byte {i} flipped"
            );
        }
        // A right checksum over bytes that are no message.
        let junk = [0xffu8, 0xff, 0xff];
        let mut forged = MAGIC.to_vec();
        forged.extend_from_slice(&crc32fast::hash(&junk).to_be_bytes());
        forged.extend_from_slice(&junk);
        write(&forged);
        assert!(matches!(saved.load(), Err(SavedError::Decode { .. })));
        // Unreadable (a directory where the file should be).
        std::fs::remove_file(saved.path()).unwrap();
        std::fs::create_dir(saved.path()).unwrap();
        assert!(matches!(saved.load(), Err(SavedError::Io { .. })));
    }
}
