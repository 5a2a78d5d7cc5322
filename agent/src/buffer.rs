//! The agent's on-disk result buffer: every result is written here and fsynced
//! before it counts as produced, and deleted only when the collector acknowledges
//! "durable through N". A collector outage, a network cut or an agent crash
//! loses nothing; a full buffer drops the oldest results and records the gap,
//! never silently.
//!
//! Storage sits behind the `ResultBuffer` trait so its guarantees are tested
//! once, whatever backs it. `SledBuffer` is the implementation the design
//! mandates; sled's last stable release is old, so its durability is proven by
//! the crash tests in `buffer/tests.rs` rather than trusted.
//!
//! Layout (one sled tree, so every change is one atomic batch):
//! - `r` + seq (u64 big-endian): a record, `crc32 (4 bytes, BE) || payload`
//! - `g` + first seq (BE): a gap, `last seq (8) || count (8)`
//! - `q` + seq (BE): a quarantined (corrupt) record, kept for inspection
//! - `m:next_seq`, `m:dropped`, `m:quarantined`: counters (u64 BE); the byte
//!   total is recounted on open so a crash can never leave it wrong
//! - `m:epoch`: the random id of this buffer's sequence space (u64 BE), written
//!   when the buffer is created

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Default bound on the bytes of buffered payloads.
pub const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;

/// One buffered result: its sequence number and the payload (an encoded
/// `portwatch.v1.CheckResult`; the buffer treats it as opaque bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub payload: Vec<u8>,
}

/// Results dropped because the buffer was full: sequence numbers `from..=to`,
/// `count` of them. Sent upstream so the collector shows "unknown" for the span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    pub from: u64,
    pub to: u64,
    pub count: u64,
}

/// What the buffer holds and has lost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BufferStats {
    pub records: u64,
    pub bytes: u64,
    /// The sequence number the next appended result gets.
    pub next_seq: u64,
    /// Results dropped because the buffer was full, ever.
    pub dropped_total: u64,
    /// Corrupt records moved aside, ever.
    pub quarantined_total: u64,
    /// Random id of this buffer's sequence space (never 0): a new buffer
    /// numbers from 1 again, under a new epoch.
    pub epoch: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    #[error("opening the result buffer at {path}: {source}")]
    Open { path: String, source: sled::Error },
    #[error("result buffer storage: {0}")]
    Storage(#[from] sled::Error),
    #[error("{size} bytes of results do not fit in the whole buffer ({max} bytes)")]
    TooLarge { size: u64, max: u64 },
}

/// Durable FIFO of results awaiting the collector's acknowledgement.
pub trait ResultBuffer: Send + Sync {
    /// Appends payloads in order; when it returns Ok they are on disk (fsynced)
    /// with consecutive sequence numbers, which are returned.
    fn append(&self, payloads: &[Vec<u8>]) -> Result<Vec<u64>, BufferError>;
    /// Up to `max` records with a sequence number above `after`, oldest first.
    /// Corrupt records are quarantined and skipped.
    fn read_after(&self, after: u64, max: usize) -> Result<Vec<Record>, BufferError>;
    /// The collector made everything through `seq` durable: delete those records
    /// and the gaps they cover. Returns how many records were removed.
    fn ack_through(&self, seq: u64) -> Result<u64, BufferError>;
    /// Gaps not yet acknowledged, oldest first.
    fn gaps(&self) -> Result<Vec<Gap>, BufferError>;
    fn stats(&self) -> BufferStats;
}

const NEXT_SEQ: &[u8] = b"m:next_seq";
const DROPPED: &[u8] = b"m:dropped";
const QUARANTINED: &[u8] = b"m:quarantined";
const EPOCH: &[u8] = b"m:epoch";

fn key(prefix: u8, seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = prefix;
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn seq_of(k: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(k.get(1..9)?.try_into().ok()?))
}

fn be_u64(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.get(..8)?.try_into().ok()?))
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(payload.len() + 4);
    v.extend_from_slice(&crc32fast::hash(payload).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// The payload of a stored record, or `None` when it fails its checksum.
fn unframe(v: &[u8]) -> Option<&[u8]> {
    let (crc, payload) = v.split_at_checked(4)?;
    (u32::from_be_bytes(crc.try_into().ok()?) == crc32fast::hash(payload)).then_some(payload)
}

/// Opens a sled database, waiting (up to 5 s) for the file lock that sled's
/// background flusher keeps for a moment after the previous handle, or a
/// process that just exited, let go. Every sled store in portwatch opens here.
pub fn open_sled(config: &sled::Config) -> Result<sled::Db, sled::Error> {
    let give_up = Instant::now() + Duration::from_secs(5);
    loop {
        match config.open() {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock") && Instant::now() < give_up =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// In-memory mirror of the counters, guarded so appends and acks serialise.
#[derive(Debug, Default)]
struct State {
    next_seq: u64,
    bytes: u64,
    records: u64,
    dropped: u64,
    quarantined: u64,
    epoch: u64,
}

/// The sled-backed buffer.
pub struct SledBuffer {
    db: sled::Db,
    max_bytes: u64,
    state: Mutex<State>,
}

impl SledBuffer {
    /// Opens (or creates) the buffer in `dir`, bounded to `max_bytes` of payload.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<SledBuffer, BufferError> {
        let config = sled::Config::new()
            .path(dir)
            // Memory near DB size is a known sled problem: keep its cache small.
            .cache_capacity(8 * 1024 * 1024)
            .mode(sled::Mode::LowSpace);
        let db = open_sled(&config).map_err(|source| BufferError::Open {
            path: dir.display().to_string(),
            source,
        })?;
        let get = |k: &[u8]| -> Result<u64, BufferError> {
            Ok(db.get(k)?.as_deref().and_then(be_u64).unwrap_or(0))
        };
        let mut st = State {
            next_seq: get(NEXT_SEQ)?.max(1),
            bytes: 0,
            records: 0,
            dropped: get(DROPPED)?,
            quarantined: get(QUARANTINED)?,
            epoch: get(EPOCH)?,
        };
        if st.epoch == 0 {
            st.epoch = rand::random::<u64>().max(1);
            db.insert(EPOCH, &st.epoch.to_be_bytes())?;
            db.flush()?;
        }
        // Recount rather than trust the stored byte counter: a crash between
        // batches cannot leave the two disagreeing, and this also repairs
        // next_seq should a record ever be ahead of it.
        for kv in db.scan_prefix([b'r']) {
            let (k, v) = kv?;
            st.records += 1;
            st.bytes += v.len().saturating_sub(4) as u64;
            if let Some(seq) = seq_of(&k) {
                st.next_seq = st.next_seq.max(seq + 1);
            }
        }
        Ok(SledBuffer {
            db,
            max_bytes,
            state: Mutex::new(st),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves counters that are still
        // consistent with disk at the last applied batch: keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops the oldest records until `incoming` more bytes fit, recording the gap.
    fn make_room(
        &self,
        st: &mut State,
        batch: &mut sled::Batch,
        incoming: u64,
    ) -> Result<(), BufferError> {
        if st.bytes + incoming <= self.max_bytes {
            return Ok(());
        }
        let mut first: Option<u64> = None;
        let mut last = 0;
        let mut count = 0;
        for kv in self.db.scan_prefix([b'r']) {
            if st.bytes + incoming <= self.max_bytes {
                break;
            }
            let (k, v) = kv?;
            let Some(seq) = seq_of(&k) else { continue };
            batch.remove(k);
            st.bytes -= (v.len().saturating_sub(4) as u64).min(st.bytes);
            st.records = st.records.saturating_sub(1);
            first.get_or_insert(seq);
            last = seq;
            count += 1;
        }
        if let Some(from) = first {
            // Extend the newest gap when it ends right before this one.
            let (mut from, mut total) = (from, count);
            let newest = self.db.scan_prefix([b'g']).next_back().transpose()?;
            if let Some((gk, gv)) = newest
                && let (Some(gfrom), Some(gto), Some(gcount)) =
                    (seq_of(&gk), be_u64(&gv), gv.get(8..).and_then(be_u64))
                && gto + 1 == from
            {
                batch.remove(gk);
                from = gfrom;
                total += gcount;
            }
            let mut v = Vec::with_capacity(16);
            v.extend_from_slice(&last.to_be_bytes());
            v.extend_from_slice(&total.to_be_bytes());
            batch.insert(&key(b'g', from), v);
            st.dropped += count;
            batch.insert(DROPPED, &st.dropped.to_be_bytes());
            tracing::warn!(
                from,
                to = last,
                dropped = count,
                "result buffer full: dropped the oldest results"
            );
        }
        Ok(())
    }
}

impl ResultBuffer for SledBuffer {
    fn append(&self, payloads: &[Vec<u8>]) -> Result<Vec<u64>, BufferError> {
        if payloads.is_empty() {
            return Ok(Vec::new());
        }
        let incoming: u64 = payloads.iter().map(|p| p.len() as u64).sum();
        if incoming > self.max_bytes {
            return Err(BufferError::TooLarge {
                size: incoming,
                max: self.max_bytes,
            });
        }
        let mut st = self.lock();
        let mut batch = sled::Batch::default();
        self.make_room(&mut st, &mut batch, incoming)?;
        let first = st.next_seq;
        let seqs: Vec<u64> = (first..first + payloads.len() as u64).collect();
        for (seq, p) in seqs.iter().zip(payloads) {
            batch.insert(&key(b'r', *seq), frame(p));
        }
        let next = first + payloads.len() as u64;
        batch.insert(NEXT_SEQ, &next.to_be_bytes());
        self.db.apply_batch(batch)?;
        self.db.flush()?;
        st.next_seq = next;
        st.bytes += incoming;
        st.records += payloads.len() as u64;
        Ok(seqs)
    }

    fn read_after(&self, after: u64, max: usize) -> Result<Vec<Record>, BufferError> {
        let mut out = Vec::with_capacity(max.min(4096));
        let mut corrupt = Vec::new();
        let start = key(b'r', after.saturating_add(1));
        for kv in self.db.range(start..key(b'r' + 1, 0)) {
            if out.len() >= max {
                break;
            }
            let (k, v) = kv?;
            let Some(seq) = seq_of(&k) else { continue };
            match unframe(&v) {
                Some(payload) => out.push(Record {
                    seq,
                    payload: payload.to_vec(),
                }),
                None => corrupt.push((k, v)),
            }
        }
        if !corrupt.is_empty() {
            let mut st = self.lock();
            let mut batch = sled::Batch::default();
            for (k, v) in &corrupt {
                let seq = seq_of(k).unwrap_or(0);
                tracing::error!(seq, "corrupt record in the result buffer: quarantined");
                batch.remove(k.clone());
                batch.insert(&key(b'q', seq), v.clone());
                st.bytes -= (v.len().saturating_sub(4) as u64).min(st.bytes);
                st.records = st.records.saturating_sub(1);
            }
            st.quarantined += corrupt.len() as u64;
            batch.insert(QUARANTINED, &st.quarantined.to_be_bytes());
            self.db.apply_batch(batch)?;
            self.db.flush()?;
        }
        Ok(out)
    }

    fn ack_through(&self, seq: u64) -> Result<u64, BufferError> {
        let mut st = self.lock();
        let mut batch = sled::Batch::default();
        let mut removed = 0u64;
        let mut freed = 0u64;
        for kv in self.db.range(key(b'r', 0)..=key(b'r', seq)) {
            let (k, v) = kv?;
            batch.remove(k);
            removed += 1;
            freed += v.len().saturating_sub(4) as u64;
        }
        for kv in self.db.scan_prefix([b'g']) {
            let (k, v) = kv?;
            if be_u64(&v).is_some_and(|to| to <= seq) {
                batch.remove(k);
            }
        }
        self.db.apply_batch(batch)?;
        self.db.flush()?;
        st.records = st.records.saturating_sub(removed);
        st.bytes = st.bytes.saturating_sub(freed);
        Ok(removed)
    }

    fn gaps(&self) -> Result<Vec<Gap>, BufferError> {
        let mut out = Vec::new();
        for kv in self.db.scan_prefix([b'g']) {
            let (k, v) = kv?;
            if let (Some(from), Some(to), Some(count)) =
                (seq_of(&k), be_u64(&v), v.get(8..).and_then(be_u64))
            {
                out.push(Gap { from, to, count });
            }
        }
        Ok(out)
    }

    fn stats(&self) -> BufferStats {
        let st = self.lock();
        BufferStats {
            records: st.records,
            bytes: st.bytes,
            next_seq: st.next_seq,
            dropped_total: st.dropped,
            quarantined_total: st.quarantined,
            epoch: st.epoch,
        }
    }
}

#[cfg(test)]
mod tests;
