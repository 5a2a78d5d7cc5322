//! The collector's small durable state: one sled database at
//! `<data_dir>/state` shared by the stores that need atomic updates across
//! each other (enrollment tokens and the agent registry are changed in one
//! transaction when an agent enrolls).
//!
//! sled allows one open handle per directory and process; open the state once
//! and hand clones of it (cheap, reference counted) to every store.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// sled keeps a page cache per database; the state is a few thousand small
/// records, so a small cache is plenty and keeps memory predictable.
const CACHE_BYTES: u64 = 8 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: cannot open the collector state database: {source}")]
    Open { path: PathBuf, source: sled::Error },
    #[error("collector state database: {0}")]
    Db(#[from] sled::Error),
    #[error("collector state database: a stored record is corrupt: {0}")]
    Corrupt(String),
}

/// The collector's state database.
#[derive(Clone)]
pub struct State {
    db: sled::Db,
}

impl State {
    /// Opens (creating on first start) `<data_dir>/state`.
    pub fn open(data_dir: &Path) -> Result<State, StateError> {
        let path = data_dir.join("state");
        let config = sled::Config::new().path(&path).cache_capacity(CACHE_BYTES);
        let db = portwatch_agent::buffer::open_sled(&config)
            .map_err(|source| StateError::Open { path, source })?;
        Ok(State { db })
    }

    /// The named tree (a keyspace inside the database).
    pub fn tree(&self, name: &str) -> Result<sled::Tree, StateError> {
        Ok(self.db.open_tree(name)?)
    }

    /// Forces everything written so far to disk.
    pub async fn flush(&self) -> Result<(), StateError> {
        self.db.flush_async().await?;
        Ok(())
    }

    /// Forces everything written so far to disk, blocking.
    pub fn flush_blocking(&self) -> Result<(), StateError> {
        self.db.flush()?;
        Ok(())
    }
}

/// Milliseconds since the Unix epoch (negative before it): how the stores
/// keep timestamps so they serialize as plain numbers.
pub fn unix_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

/// Random bytes from the operating system's CSPRNG.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // The system RNG only fails when the kernel has no entropy source at all,
    // a machine on which no key or token can be made safely anyway.
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .expect("system randomness");
    b
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `bytes` to `path` as a whole or not at all: a temp file (mode
/// 0600), fsync, rename, fsync of the directory. A crash leaves the old file
/// or the new one, never half of one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}
