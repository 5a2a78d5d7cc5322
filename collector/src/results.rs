//! The collector's durable result store: every result an agent streams in is
//! written here, keyed by (agent id, buffer sequence number), and flushed to
//! disk before the agent is told it may delete it. Keying on the agent's own
//! sequence number makes a resent result (after a reconnect, or an ack lost
//! with the connection) land on the same key: storage ends exactly-once.
//!
//! Layout (one sled tree, so every batch is one atomic write):
//! - `r` + agent id + `0x00` + seq (u64 BE): the encoded `portwatch.v1.CheckResult`
//! - `m` + monitor id length (u16 BE) + monitor id + agent id + `0x00` + seq:
//!   empty; the per-monitor index `results_for` scans
//! - `g` + agent id + `0x00` + first seq (BE): a gap the agent reported,
//!   `last seq (8) || count (8)`, shown as "unknown" for that span later
//!
//! Agent ids are validated by the CA (`[a-z0-9_-]`), so `0x00` never occurs in one.
//!
//! This is the minimal store issue 3 asks for; the collector-monitors issue
//! replaces it with the real model.

use std::path::Path;
use std::sync::Mutex;

use portwatch_proto::v1 as pb;
use prost::Message;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("opening the result store at {path}: {source}")]
    Open { path: String, source: sled::Error },
    #[error("result store: {0}")]
    Storage(#[from] sled::Error),
    #[error("monitor id of {0} bytes is too long")]
    MonitorIdTooLong(usize),
}

/// One stored result, as the query API returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResult {
    pub agent_id: String,
    pub seq: u64,
    pub result: pb::CheckResult,
}

/// A span of results an agent dropped (its buffer was full): seqs `from..=to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredGap {
    pub from: u64,
    pub to: u64,
    pub count: u64,
}

/// What storing one batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Results written for the first time.
    pub stored: u64,
    /// Results whose (agent, seq) was already stored: not written again.
    pub duplicates: u64,
    /// Gaps written (a gap already stored, with the same or a later end, is not counted).
    pub gaps: u64,
}

/// The sled-backed store.
pub struct ResultStore {
    db: sled::Db,
    /// Serialises the check-then-write of deduplication: two streams of one
    /// agent can overlap for a moment while the newer replaces the older.
    write: Mutex<()>,
}

fn agent_prefix(tag: u8, agent_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(agent_id.len() + 10);
    k.push(tag);
    k.extend_from_slice(agent_id.as_bytes());
    k.push(0);
    k
}

fn agent_key(tag: u8, agent_id: &str, seq: u64) -> Vec<u8> {
    let mut k = agent_prefix(tag, agent_id);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn monitor_prefix(monitor_id: &str) -> Result<Vec<u8>, StoreError> {
    let len = u16::try_from(monitor_id.len())
        .map_err(|_| StoreError::MonitorIdTooLong(monitor_id.len()))?;
    let mut k = Vec::with_capacity(monitor_id.len() + 3);
    k.push(b'm');
    k.extend_from_slice(&len.to_be_bytes());
    k.extend_from_slice(monitor_id.as_bytes());
    Ok(k)
}

/// Splits `agent id 0x00 seq` (the tail of every agent-scoped key).
fn split_agent_seq(tail: &[u8]) -> Option<(String, u64)> {
    let nul = tail.iter().position(|&b| b == 0)?;
    let agent = std::str::from_utf8(&tail[..nul]).ok()?.to_owned();
    let seq = u64::from_be_bytes(tail.get(nul + 1..nul + 9)?.try_into().ok()?);
    Some((agent, seq))
}

fn be_u64(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.get(..8)?.try_into().ok()?))
}

impl ResultStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<ResultStore, StoreError> {
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(16 * 1024 * 1024)
            .mode(sled::Mode::LowSpace);
        let db =
            portwatch_agent::buffer::open_sled(&config).map_err(|source| StoreError::Open {
                path: dir.display().to_string(),
                source,
            })?;
        Ok(ResultStore {
            db,
            write: Mutex::new(()),
        })
    }

    /// Stores one batch from `agent_id` atomically and fsyncs it: when this
    /// returns Ok, every result and gap in it survives a crash. A result whose
    /// (agent, seq) is already stored is skipped (and counted as a duplicate).
    pub fn store_batch(
        &self,
        agent_id: &str,
        results: &[(u64, pb::CheckResult)],
        gaps: &[pb::Gap],
    ) -> Result<BatchOutcome, StoreError> {
        let _guard = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = BatchOutcome::default();
        let mut batch = sled::Batch::default();
        let mut in_batch = std::collections::HashSet::new();
        for (seq, result) in results {
            let key = agent_key(b'r', agent_id, *seq);
            if !in_batch.insert(*seq) || self.db.contains_key(&key)? {
                out.duplicates += 1;
                continue;
            }
            let mut index = monitor_prefix(&result.monitor_id)?;
            index.extend_from_slice(&agent_key(0, agent_id, *seq)[1..]);
            batch.insert(key, result.encode_to_vec());
            batch.insert(index, &[][..]);
            out.stored += 1;
        }
        for g in gaps {
            let key = agent_key(b'g', agent_id, g.from_seq);
            // The agent extends its newest gap while its buffer stays full:
            // the same start with a later end replaces the stored one.
            if let Some(old) = self.db.get(&key)?
                && be_u64(&old).is_some_and(|to| to >= g.to_seq)
            {
                continue;
            }
            let mut v = Vec::with_capacity(16);
            v.extend_from_slice(&g.to_seq.to_be_bytes());
            v.extend_from_slice(&g.count.to_be_bytes());
            batch.insert(key, v);
            out.gaps += 1;
        }
        self.db.apply_batch(batch)?;
        self.db.flush()?;
        Ok(out)
    }

    /// Every stored result of `monitor_id`, from all agents, ordered by agent
    /// then sequence number.
    pub fn results_for(&self, monitor_id: &str) -> Result<Vec<StoredResult>, StoreError> {
        let prefix = monitor_prefix(monitor_id)?;
        let mut out = Vec::new();
        for kv in self.db.scan_prefix(&prefix) {
            let (k, _) = kv?;
            let Some((agent_id, seq)) = split_agent_seq(&k[prefix.len()..]) else {
                continue;
            };
            if let Some(v) = self.db.get(agent_key(b'r', &agent_id, seq))?
                && let Ok(result) = pb::CheckResult::decode(&*v)
            {
                out.push(StoredResult {
                    agent_id,
                    seq,
                    result,
                });
            }
        }
        Ok(out)
    }

    /// Every stored result of one agent, oldest sequence number first.
    pub fn results_of_agent(&self, agent_id: &str) -> Result<Vec<StoredResult>, StoreError> {
        let prefix = agent_prefix(b'r', agent_id);
        let mut out = Vec::new();
        for kv in self.db.scan_prefix(&prefix) {
            let (k, v) = kv?;
            let (Some(seq), Ok(result)) = (
                k.get(prefix.len()..).and_then(be_u64),
                pb::CheckResult::decode(&*v),
            ) else {
                continue;
            };
            out.push(StoredResult {
                agent_id: agent_id.to_owned(),
                seq,
                result,
            });
        }
        Ok(out)
    }

    /// How many results are stored, over all agents.
    pub fn count(&self) -> usize {
        self.db.scan_prefix([b'r']).count()
    }

    /// How many results of one agent are stored.
    pub fn count_for_agent(&self, agent_id: &str) -> usize {
        self.db.scan_prefix(agent_prefix(b'r', agent_id)).count()
    }

    /// The gaps one agent reported, oldest first.
    pub fn gaps_of_agent(&self, agent_id: &str) -> Result<Vec<StoredGap>, StoreError> {
        let prefix = agent_prefix(b'g', agent_id);
        let mut out = Vec::new();
        for kv in self.db.scan_prefix(&prefix) {
            let (k, v) = kv?;
            if let (Some(from), Some(to), Some(count)) = (
                k.get(prefix.len()..).and_then(be_u64),
                be_u64(&v),
                v.get(8..).and_then(be_u64),
            ) {
                out.push(StoredGap { from, to, count });
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(monitor: &str) -> pb::CheckResult {
        pb::CheckResult {
            monitor_id: monitor.into(),
            message: "ok".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_resent_seq_is_stored_once_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = ResultStore::open(dir.path()).unwrap();
            let out = store
                .store_batch("a1", &[(1, result("m1")), (2, result("m2"))], &[])
                .unwrap();
            assert_eq!((out.stored, out.duplicates), (2, 0));
            let out = store
                .store_batch("a1", &[(2, result("m2")), (3, result("m1"))], &[])
                .unwrap();
            assert_eq!((out.stored, out.duplicates), (1, 1));
            // The same seq from another agent is a different result.
            store.store_batch("a2", &[(1, result("m1"))], &[]).unwrap();
        }
        let store = ResultStore::open(dir.path()).unwrap();
        assert_eq!(store.count(), 4);
        assert_eq!(store.count_for_agent("a1"), 3);
        let m1: Vec<(String, u64)> = store
            .results_for("m1")
            .unwrap()
            .into_iter()
            .map(|r| (r.agent_id, r.seq))
            .collect();
        assert_eq!(m1, [("a1".into(), 1), ("a1".into(), 3), ("a2".into(), 1)]);
        let seqs: Vec<u64> = store
            .results_of_agent("a1")
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(seqs, [1, 2, 3]);
    }

    #[test]
    fn gaps_are_kept_per_agent() {
        let dir = tempfile::tempdir().unwrap();
        let store = ResultStore::open(dir.path()).unwrap();
        let gap = pb::Gap {
            from_seq: 5,
            to_seq: 9,
            count: 5,
        };
        assert_eq!(store.store_batch("a1", &[], &[gap]).unwrap().gaps, 1);
        assert_eq!(store.store_batch("a1", &[], &[gap]).unwrap().gaps, 0);
        let extended = pb::Gap {
            to_seq: 12,
            count: 8,
            ..gap
        };
        assert_eq!(store.store_batch("a1", &[], &[extended]).unwrap().gaps, 1);
        assert_eq!(
            store.gaps_of_agent("a1").unwrap(),
            [StoredGap {
                from: 5,
                to: 12,
                count: 8
            }]
        );
        assert!(store.gaps_of_agent("a2").unwrap().is_empty());
    }
}
