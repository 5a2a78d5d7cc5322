//! The embedded [`Store`]: one redb file (`store.redb`) in a directory of the
//! collector's data dir. The table layout is in the parent module's doc.
//!
//! redb commits with immediate durability by default: when a write
//! transaction's `commit` returns, it is on disk (one fsync pair per commit),
//! which is what lets the collector ack. One write transaction runs at a
//! time (redb serialises them), so the watermark check-then-write needs no
//! lock of ours; readers never block on writers.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use ::redb::{
    Database, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition, TableHandle, WriteTransaction,
};
use portwatch_proto::v1 as pb;
use prost::Message;

use super::Bucket;
use super::{
    BatchOutcome, DAY_MS, Event, EventQuery, IncidentQuery, IncidentRow, MAX_FUTURE_MS, MINUTE_MS,
    Order, Partition, PhaseStats, ResultQuery, RetentionOutcome, Rollup, RollupOutcome,
    RollupQuery, Sample, SourceGap, Store, StoreConfig, StoreError, StoreStats, StoredGap,
    StoredResult, Summary, SummaryQuery, day_name, day_of, minute_of, ms, parse_day_name,
};

type Bytes = &'static [u8];

const WATERMARKS: TableDefinition<'_, &str, (u64, u64)> = TableDefinition::new("watermarks");
const GAPS: TableDefinition<'_, Bytes, Bytes> = TableDefinition::new("gaps");
const LATEST: TableDefinition<'_, Bytes, Bytes> = TableDefinition::new("latest");
const DIRTY: TableDefinition<'_, Bytes, ()> = TableDefinition::new("dirty");
const EVENTS: TableDefinition<'_, (i64, u64), &str> = TableDefinition::new("events");
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
const INCIDENTS: TableDefinition<'_, u64, &str> = TableDefinition::new("incidents");
const INCIDENTS_OPEN: TableDefinition<'_, u64, ()> = TableDefinition::new("incidents_open");

const RAW_PREFIX: &str = "raw_";
const ROLLUP_PREFIX: &str = "rollup_";
const HOURLY_PREFIX: &str = "hourly_";

/// Dirty minutes recomputed per write transaction, so a long roll-up does not
/// hold ingest off for long.
const ROLLUP_CHUNK: usize = 2_000;

/// The file inside the store's directory.
pub const FILE_NAME: &str = "store.redb";

fn backend(e: impl Into<::redb::Error>) -> StoreError {
    StoreError::Backend(Box::new(e.into()))
}

fn raw_table(day: i64) -> String {
    format!("{RAW_PREFIX}{}", day_name(day))
}

fn rollup_table(day: i64) -> String {
    format!("{ROLLUP_PREFIX}{}", day_name(day))
}

fn hourly_table(day: i64) -> String {
    format!("{HOURLY_PREFIX}{}", day_name(day))
}

fn def(name: &str) -> TableDefinition<'_, Bytes, Bytes> {
    TableDefinition::new(name)
}

// ---- key encoding ----------------------------------------------------------

fn push_str(k: &mut Vec<u8>, what: &'static str, s: &str) -> Result<(), StoreError> {
    let len = u16::try_from(s.len()).map_err(|_| StoreError::KeyTooLong { what, len: s.len() })?;
    k.extend_from_slice(&len.to_be_bytes());
    k.extend_from_slice(s.as_bytes());
    Ok(())
}

/// Signed time as an order-preserving unsigned.
fn ts_key(ts: i64) -> [u8; 8] {
    ((ts as u64) ^ (1 << 63)).to_be_bytes()
}

fn ts_from(b: &[u8]) -> Option<i64> {
    Some((u64::from_be_bytes(b.get(..8)?.try_into().ok()?) ^ (1 << 63)) as i64)
}

fn u64_from(b: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(..8)?.try_into().ok()?))
}

/// `monitor, location`: the prefix of every per-series key.
fn series_key(monitor: &str, location: &str) -> Result<Vec<u8>, StoreError> {
    let mut k = Vec::with_capacity(monitor.len() + location.len() + 24);
    push_str(&mut k, "monitor id", monitor)?;
    push_str(&mut k, "location", location)?;
    Ok(k)
}

fn monitor_prefix(monitor: &str) -> Result<Vec<u8>, StoreError> {
    let mut k = Vec::with_capacity(monitor.len() + 2);
    push_str(&mut k, "monitor id", monitor)?;
    Ok(k)
}

/// Splits a length-prefixed string off the front of `b`.
fn take_str(b: &[u8]) -> Option<(String, &[u8])> {
    let len = usize::from(u16::from_be_bytes(b.get(..2)?.try_into().ok()?));
    let s = std::str::from_utf8(b.get(2..2 + len)?).ok()?.to_owned();
    Some((s, &b[2 + len..]))
}

/// `monitor, location, rest` of a series key.
fn split_series(k: &[u8]) -> Option<(String, String, &[u8])> {
    let (m, rest) = take_str(k)?;
    let (l, rest) = take_str(rest)?;
    Some((m, l, rest))
}

fn gap_key(source: &str, epoch: u64, from_seq: u64) -> Result<Vec<u8>, StoreError> {
    let mut k = Vec::with_capacity(source.len() + 18);
    push_str(&mut k, "source", source)?;
    k.extend_from_slice(&epoch.to_be_bytes());
    k.extend_from_slice(&from_seq.to_be_bytes());
    Ok(k)
}

fn encode_gap(g: &SourceGap) -> Vec<u8> {
    let mut v = Vec::with_capacity(34 + g.location.len());
    v.extend_from_slice(&g.to_seq.to_be_bytes());
    v.extend_from_slice(&g.count.to_be_bytes());
    v.push(u8::from(g.from_ts_ms.is_some()) | (u8::from(g.to_ts_ms.is_some()) << 1));
    v.extend_from_slice(&g.from_ts_ms.unwrap_or(0).to_be_bytes());
    v.extend_from_slice(&g.to_ts_ms.unwrap_or(0).to_be_bytes());
    v.extend_from_slice(g.location.as_bytes());
    v
}

fn decode_gap(from_seq: u64, v: &[u8]) -> Option<SourceGap> {
    let flags = *v.get(16)?;
    let from_ts = i64::from_be_bytes(v.get(17..25)?.try_into().ok()?);
    let to_ts = i64::from_be_bytes(v.get(25..33)?.try_into().ok()?);
    Some(SourceGap {
        location: std::str::from_utf8(v.get(33..)?).ok()?.to_owned(),
        from_seq,
        to_seq: u64_from(v)?,
        count: u64_from(v.get(8..)?)?,
        from_ts_ms: (flags & 1 != 0).then_some(from_ts),
        to_ts_ms: (flags & 2 != 0).then_some(to_ts),
    })
}

/// A result as stored: protobuf without the monitor id (it is in the key).
fn encode_result(r: &pb::CheckResult) -> Vec<u8> {
    if r.monitor_id.is_empty() {
        return r.encode_to_vec();
    }
    let stripped = pb::CheckResult {
        monitor_id: String::new(),
        ..r.clone()
    };
    stripped.encode_to_vec()
}

fn decode_result(monitor: &str, v: &[u8]) -> Result<pb::CheckResult, StoreError> {
    let mut r = pb::CheckResult::decode(v)
        .map_err(|e| StoreError::Corrupt(format!("result of {monitor}: {e}")))?;
    r.monitor_id = monitor.to_owned();
    Ok(r)
}

/// A rollup as stored, varint-packed since most minutes hold one or a few
/// checks with two or three phases (about 10 bytes instead of 200 fixed):
/// checks, failures, degraded, a bitmask of the phases present, then per
/// present phase its count and either its one value (count 1) or
/// min, sum, p95, max. The minute is in the key.
fn encode_rollup(r: &Rollup) -> Vec<u8> {
    use prost::encoding::encode_varint;
    let mut v = Vec::with_capacity(24);
    for n in [r.checks, r.failures, r.degraded] {
        encode_varint(u64::from(n), &mut v);
    }
    let mask = r
        .phases
        .iter()
        .enumerate()
        .filter(|(_, p)| p.count > 0)
        .fold(0u8, |m, (i, _)| m | (1 << i));
    v.push(mask);
    for p in r.phases.iter().filter(|p| p.count > 0) {
        encode_varint(u64::from(p.count), &mut v);
        if p.count == 1 {
            encode_varint(p.sum_us, &mut v);
        } else {
            for n in [p.min_us, p.sum_us, p.p95_us, p.max_us] {
                encode_varint(n, &mut v);
            }
        }
    }
    v
}

fn decode_rollup(minute_start_ms: i64, mut v: &[u8]) -> Option<Rollup> {
    let mut next = || prost::encoding::decode_varint(&mut v).ok();
    let mut small = || u32::try_from(next()?).ok();
    let mut r = Rollup {
        minute_start_ms,
        checks: small()?,
        failures: small()?,
        degraded: small()?,
        ..Rollup::default()
    };
    let (&mask, rest) = v.split_first()?;
    v = rest;
    let mut next = || prost::encoding::decode_varint(&mut v).ok();
    for (i, p) in r.phases.iter_mut().enumerate() {
        if mask & (1 << i) == 0 {
            continue;
        }
        let count = u32::try_from(next()?).ok()?;
        *p = if count == 1 {
            let x = next()?;
            PhaseStats {
                count,
                min_us: x,
                sum_us: x,
                p95_us: x,
                max_us: x,
            }
        } else {
            PhaseStats {
                count,
                min_us: next()?,
                sum_us: next()?,
                p95_us: next()?,
                max_us: next()?,
            }
        };
    }
    Some(r)
}

/// A summary as stored: checks, failures, degraded, then count and sum of
/// each phase, all varints. The hour is in the key.
fn encode_summary(s: &Summary) -> Vec<u8> {
    use prost::encoding::encode_varint;
    let mut v = Vec::with_capacity(24);
    for n in [s.checks, s.failures, s.degraded] {
        encode_varint(n, &mut v);
    }
    for i in 0..5 {
        encode_varint(s.phase_count[i], &mut v);
        encode_varint(s.phase_sum_us[i], &mut v);
    }
    v
}

fn decode_summary(start_ms: i64, mut v: &[u8]) -> Option<Summary> {
    let mut next = || prost::encoding::decode_varint(&mut v).ok();
    let mut s = Summary {
        start_ms,
        checks: next()?,
        failures: next()?,
        degraded: next()?,
        ..Summary::default()
    };
    for i in 0..5 {
        s.phase_count[i] = next()?;
        s.phase_sum_us[i] = next()?;
    }
    Some(s)
}

/// The day partitions (by day number) of one kind.
fn partitions(names: impl Iterator<Item = String>, prefix: &str) -> BTreeMap<i64, String> {
    names
        .filter_map(|n| {
            let day = parse_day_name(n.strip_prefix(prefix)?)?;
            Some((day, n))
        })
        .collect()
}

/// The days a `[from, to)` range touches, among `parts`.
fn days_in(parts: &BTreeMap<i64, String>, from_ms: i64, to_ms: i64) -> Vec<(i64, String)> {
    if to_ms <= from_ms {
        return Vec::new();
    }
    let (first, last) = (day_of(from_ms), day_of(to_ms.saturating_sub(1)));
    parts
        .range(first..=last)
        .map(|(d, n)| (*d, n.clone()))
        .collect()
}

/// Calls `each` with every `(time, value)` of one series (key `prefix`) in
/// `[from_ms, to_ms)` of the day partitions `parts`, oldest first: the
/// rollup and hourly tables, keyed series then time.
fn each_timed(
    txn: &ReadTransaction,
    parts: &BTreeMap<i64, String>,
    prefix: &[u8],
    from_ms: i64,
    to_ms: i64,
    mut each: impl FnMut(i64, &[u8]) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    for (_, table) in days_in(parts, from_ms, to_ms) {
        let t = txn.open_table(def(&table)).map_err(backend)?;
        let mut lo = prefix.to_vec();
        lo.extend_from_slice(&ts_key(from_ms));
        let mut hi = prefix.to_vec();
        hi.extend_from_slice(&ts_key(to_ms));
        for kv in t
            .range::<&[u8]>(lo.as_slice()..hi.as_slice())
            .map_err(backend)?
        {
            let (k, v) = kv.map_err(backend)?;
            let ts = ts_from(&k.value()[prefix.len()..])
                .ok_or_else(|| StoreError::Corrupt("a key without its time".into()))?;
            each(ts, v.value())?;
        }
    }
    Ok(())
}

// ---- the store -------------------------------------------------------------

/// The redb-backed [`Store`].
pub struct RedbStore {
    db: Database,
    path: PathBuf,
    config: StoreConfig,
}

impl RedbStore {
    /// Opens (or creates) the store in `dir` (created if missing).
    pub fn open(dir: &Path, config: StoreConfig) -> Result<RedbStore, StoreError> {
        let path = dir.join(FILE_NAME);
        let open_err = |source: Box<dyn std::error::Error + Send + Sync>| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(|e| open_err(Box::new(e)))?;
        let db = Database::builder()
            .set_cache_size(config.cache_bytes)
            .create(&path)
            .map_err(|e| open_err(Box::new(e)))?;
        // Create the fixed tables so readers never meet a missing one.
        let txn = db.begin_write().map_err(|e| open_err(Box::new(e)))?;
        {
            let create = || -> Result<(), ::redb::TableError> {
                txn.open_table(WATERMARKS)?;
                txn.open_table(GAPS)?;
                txn.open_table(LATEST)?;
                txn.open_table(DIRTY)?;
                txn.open_table(EVENTS)?;
                txn.open_table(META)?;
                txn.open_table(INCIDENTS)?;
                txn.open_table(INCIDENTS_OPEN)?;
                Ok(())
            };
            create().map_err(|e| open_err(Box::new(e)))?;
        }
        txn.commit().map_err(|e| open_err(Box::new(e)))?;
        Ok(RedbStore { db, path, config })
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read(&self) -> Result<ReadTransaction, StoreError> {
        self.db.begin_read().map_err(backend)
    }

    fn write(&self) -> Result<WriteTransaction, StoreError> {
        self.db.begin_write().map_err(backend)
    }

    fn table_names_read(txn: &ReadTransaction) -> Result<Vec<String>, StoreError> {
        Ok(txn
            .list_tables()
            .map_err(backend)?
            .map(|t| t.name().to_owned())
            .collect())
    }

    fn table_names_write(txn: &WriteTransaction) -> Result<Vec<String>, StoreError> {
        Ok(txn
            .list_tables()
            .map_err(backend)?
            .map(|t| t.name().to_owned())
            .collect())
    }

    /// Results of one series in `[from, to)` from one day partition, in
    /// `order`, at most `limit`.
    fn scan_series(
        txn: &ReadTransaction,
        table: &str,
        monitor: &str,
        location: &str,
        q: &ResultQuery,
        limit: usize,
        out: &mut Vec<StoredResult>,
    ) -> Result<(), StoreError> {
        let t = txn.open_table(def(table)).map_err(backend)?;
        let prefix = series_key(monitor, location)?;
        let mut lo = prefix.clone();
        lo.extend_from_slice(&ts_key(q.from_ms));
        let mut hi = prefix.clone();
        hi.extend_from_slice(&ts_key(q.to_ms));
        let range = t
            .range::<&[u8]>(lo.as_slice()..hi.as_slice())
            .map_err(backend)?;
        let mut push = |k: &[u8], v: &[u8]| -> Result<(), StoreError> {
            let tail = &k[prefix.len()..];
            let seq = tail.get(8..).and_then(u64_from).unwrap_or(0);
            out.push(StoredResult {
                monitor_id: monitor.to_owned(),
                location: location.to_owned(),
                seq,
                result: decode_result(monitor, v)?,
            });
            Ok(())
        };
        match q.order {
            Order::OldestFirst => {
                for kv in range.take(limit) {
                    let (k, v) = kv.map_err(backend)?;
                    push(k.value(), v.value())?;
                }
            }
            Order::NewestFirst => {
                for kv in range.rev().take(limit) {
                    let (k, v) = kv.map_err(backend)?;
                    push(k.value(), v.value())?;
                }
            }
        }
        Ok(())
    }

    fn locations_in(txn: &ReadTransaction, monitor: &str) -> Result<Vec<String>, StoreError> {
        let t = txn.open_table(LATEST).map_err(backend)?;
        let prefix = monitor_prefix(monitor)?;
        let mut out = Vec::new();
        for kv in t.range::<&[u8]>(prefix.as_slice()..).map_err(backend)? {
            let (k, _) = kv.map_err(backend)?;
            if !k.value().starts_with(&prefix) {
                break;
            }
            if let Some((m, l, _)) = split_series(k.value())
                && m == monitor
            {
                out.push(l);
            }
        }
        Ok(out)
    }

    /// Recomputes one dirty minute inside `txn`; false when there was
    /// nothing to recompute from (its raw results expired).
    fn roll_minute(
        txn: &WriteTransaction,
        raw_tables: &BTreeSet<String>,
        key: &[u8],
    ) -> Result<bool, StoreError> {
        let (Some(minute), Some(series)) = (ts_from(key), key.get(8..)) else {
            return Ok(false);
        };
        let Some((monitor, _, _)) = split_series(series) else {
            return Ok(false);
        };
        let day = day_of(minute);
        let raw_name = raw_table(day);
        if !raw_tables.contains(&raw_name) {
            return Ok(false);
        }
        let mut lo = series.to_vec();
        lo.extend_from_slice(&ts_key(minute));
        let mut hi = series.to_vec();
        hi.extend_from_slice(&ts_key(minute + MINUTE_MS));
        let results = {
            let raw = txn.open_table(def(&raw_name)).map_err(backend)?;
            let mut results = Vec::new();
            for kv in raw
                .range::<&[u8]>(lo.as_slice()..hi.as_slice())
                .map_err(backend)?
            {
                let (_, v) = kv.map_err(backend)?;
                results.push(decode_result(&monitor, v.value())?);
            }
            results
        };
        let name = rollup_table(day);
        let mut t = txn.open_table(def(&name)).map_err(backend)?;
        // Rollups are series-major (queries read one series' minutes).
        let new = (!results.is_empty()).then(|| Rollup::compute(minute, &results));
        let old = match &new {
            None => t.remove(lo.as_slice()).map_err(backend)?,
            Some(r) => t
                .insert(lo.as_slice(), encode_rollup(r).as_slice())
                .map_err(backend)?,
        }
        .map(|v| {
            decode_rollup(minute, v.value())
                .ok_or_else(|| StoreError::Corrupt(format!("rollup of {monitor}")))
        })
        .transpose()?;
        // The hour's summary changes by the difference.
        let hour = Bucket::Hour.start_of(minute);
        let mut key = series.to_vec();
        key.extend_from_slice(&ts_key(hour));
        let mut h = txn.open_table(def(&hourly_table(day))).map_err(backend)?;
        let mut sum = match h.get(key.as_slice()).map_err(backend)? {
            Some(v) => decode_summary(hour, v.value())
                .ok_or_else(|| StoreError::Corrupt(format!("summary of {monitor}")))?,
            None => Summary {
                start_ms: hour,
                ..Summary::default()
            },
        };
        if let Some(old) = &old {
            sum.remove(old);
        }
        if let Some(new) = &new {
            sum.add(new);
        }
        if sum.checks == 0 {
            h.remove(key.as_slice()).map_err(backend)?;
        } else {
            h.insert(key.as_slice(), encode_summary(&sum).as_slice())
                .map_err(backend)?;
        }
        Ok(true)
    }
}

/// One sample accepted for writing.
struct Row<'a> {
    day: i64,
    key: Vec<u8>,
    sample: &'a Sample,
}

impl Store for RedbStore {
    fn ingest(
        &self,
        source: &str,
        epoch: u64,
        now_ms: i64,
        samples: &[Sample],
        gaps: &[SourceGap],
    ) -> Result<BatchOutcome, StoreError> {
        let mut out = BatchOutcome::default();
        let cutoff = now_ms.saturating_sub(ms(self.config.raw_retention));
        let txn = self.write()?;
        {
            let mut wm = txn.open_table(WATERMARKS).map_err(backend)?;
            let (stored_epoch, mut high) = match wm.get(source).map_err(backend)? {
                Some(v) => v.value(),
                None => (epoch, 0),
            };
            let stale = epoch < stored_epoch;
            if epoch > stored_epoch {
                tracing::warn!(source = %source, old_epoch = stored_epoch, new_epoch = epoch, old_high = high, "source started a new sequence epoch: its watermark resets");
                high = 0;
            }
            if stale && !samples.is_empty() {
                // Only an older stream of this source still draining can
                // send these; its seqs are not comparable with the current
                // epoch's, and a source that moved on cannot resend them.
                tracing::warn!(source = %source, epoch, current = stored_epoch, samples = samples.len(), "samples from an older epoch ignored");
            }
            let mut rows = Vec::with_capacity(samples.len());
            for s in samples {
                if stale || s.seq <= high {
                    out.duplicates += 1;
                    continue;
                }
                high = s.seq;
                let ts = s.result.scheduled_at_unix_ms;
                if ts < cutoff {
                    out.expired += 1;
                    continue;
                }
                if ts > now_ms.saturating_add(MAX_FUTURE_MS) {
                    tracing::warn!(source = %source, monitor = %s.monitor_id, ts_ms = ts, now_ms, "result timestamped in the future rejected");
                    out.rejected += 1;
                    continue;
                }
                let mut key = series_key(&s.monitor_id, &s.location)?;
                key.extend_from_slice(&ts_key(ts));
                key.extend_from_slice(&s.seq.to_be_bytes());
                rows.push(Row {
                    day: day_of(ts),
                    key,
                    sample: s,
                });
            }
            if !stale {
                wm.insert(source, (epoch, high)).map_err(backend)?;
            }
            drop(wm);

            // In key order per partition: B-tree inserts stay local.
            rows.sort_unstable_by(|a, b| (a.day, &a.key).cmp(&(b.day, &b.key)));
            let mut latest: HashMap<&[u8], (i64, &Sample)> = HashMap::new();
            let mut dirty: BTreeSet<Vec<u8>> = BTreeSet::new();
            for chunk in rows.chunk_by(|a, b| a.day == b.day) {
                let name = raw_table(chunk[0].day);
                let mut t = txn.open_table(def(&name)).map_err(backend)?;
                for row in chunk {
                    t.insert(
                        row.key.as_slice(),
                        encode_result(&row.sample.result).as_slice(),
                    )
                    .map_err(backend)?;
                    let series = &row.key[..row.key.len() - 16];
                    let ts = row.sample.result.scheduled_at_unix_ms;
                    match latest.get(series) {
                        Some((old, _)) if *old > ts => {}
                        _ => {
                            latest.insert(series, (ts, row.sample));
                        }
                    }
                    // Minute-major: one minute's markers are neighbours, so
                    // a batch touches few pages of the table.
                    let mut d = ts_key(minute_of(ts)).to_vec();
                    d.extend_from_slice(series);
                    dirty.insert(d);
                }
                out.stored += chunk.len() as u64;
            }

            let mut lt = txn.open_table(LATEST).map_err(backend)?;
            for (series, (ts, s)) in latest {
                let newer = match lt.get(series).map_err(backend)? {
                    Some(old) => ts_from(old.value()).is_none_or(|old_ts| ts >= old_ts),
                    None => true,
                };
                if newer {
                    let mut v = Vec::with_capacity(16 + s.result.encoded_len());
                    v.extend_from_slice(&ts_key(ts));
                    v.extend_from_slice(&s.seq.to_be_bytes());
                    v.extend_from_slice(&encode_result(&s.result));
                    lt.insert(series, v.as_slice()).map_err(backend)?;
                }
            }
            drop(lt);
            let mut dt = txn.open_table(DIRTY).map_err(backend)?;
            for d in &dirty {
                dt.insert(d.as_slice(), ()).map_err(backend)?;
            }
            drop(dt);

            let mut gt = txn.open_table(GAPS).map_err(backend)?;
            for g in gaps {
                let key = gap_key(source, epoch, g.from_seq)?;
                // The agent extends its newest gap while its buffer stays
                // full: the same start with a later end replaces it.
                if let Some(old) = gt.get(key.as_slice()).map_err(backend)?
                    && u64_from(old.value()).is_some_and(|to| to >= g.to_seq)
                {
                    continue;
                }
                gt.insert(key.as_slice(), encode_gap(g).as_slice())
                    .map_err(backend)?;
                out.gaps += 1;
            }
        }
        txn.commit().map_err(backend)?;
        Ok(out)
    }

    fn results(&self, q: &ResultQuery) -> Result<Vec<StoredResult>, StoreError> {
        let txn = self.read()?;
        let parts = partitions(Self::table_names_read(&txn)?.into_iter(), RAW_PREFIX);
        let mut days = days_in(&parts, q.from_ms, q.to_ms);
        if q.order == Order::NewestFirst {
            days.reverse();
        }
        let locations = match &q.location {
            Some(l) => vec![l.clone()],
            None => Self::locations_in(&txn, &q.monitor_id)?,
        };
        let mut out = Vec::new();
        for (_, table) in days {
            let remaining = q.limit - out.len();
            if remaining == 0 {
                break;
            }
            // Every result of one day sorts before (or after) the next
            // day's: merge the locations within the day, then move on.
            let mut day = Vec::new();
            for l in &locations {
                Self::scan_series(&txn, &table, &q.monitor_id, l, q, remaining, &mut day)?;
            }
            if locations.len() > 1 {
                let key = |r: &StoredResult| (r.ts_ms(), r.location.clone(), r.seq);
                match q.order {
                    Order::OldestFirst => day.sort_by_key(key),
                    Order::NewestFirst => day.sort_by_key(|r| std::cmp::Reverse(key(r))),
                }
            }
            day.truncate(remaining);
            out.extend(day);
        }
        Ok(out)
    }

    fn latest(&self, monitor_id: &str) -> Result<Vec<(String, pb::CheckResult)>, StoreError> {
        let txn = self.read()?;
        let t = txn.open_table(LATEST).map_err(backend)?;
        let prefix = monitor_prefix(monitor_id)?;
        let mut out = Vec::new();
        for kv in t.range::<&[u8]>(prefix.as_slice()..).map_err(backend)? {
            let (k, v) = kv.map_err(backend)?;
            if !k.value().starts_with(&prefix) {
                break;
            }
            if let Some((m, l, _)) = split_series(k.value())
                && m == monitor_id
            {
                let v = v.value();
                out.push((
                    l,
                    decode_result(monitor_id, v.get(16..).unwrap_or_default())?,
                ));
            }
        }
        Ok(out)
    }

    fn latest_all(&self) -> Result<Vec<(String, String, pb::CheckResult)>, StoreError> {
        let txn = self.read()?;
        let t = txn.open_table(LATEST).map_err(backend)?;
        let mut out = Vec::new();
        for kv in t.iter().map_err(backend)? {
            let (k, v) = kv.map_err(backend)?;
            if let Some((m, l, _)) = split_series(k.value()) {
                let r = decode_result(&m, v.value().get(16..).unwrap_or_default())?;
                out.push((m, l, r));
            }
        }
        // Keys sort by monitor id length first: sort by name for callers.
        out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        Ok(out)
    }

    fn locations_of(&self, monitor_id: &str) -> Result<Vec<String>, StoreError> {
        let txn = self.read()?;
        Self::locations_in(&txn, monitor_id)
    }

    fn gaps(&self, source: &str) -> Result<Vec<StoredGap>, StoreError> {
        let txn = self.read()?;
        let t = txn.open_table(GAPS).map_err(backend)?;
        let mut prefix = Vec::new();
        push_str(&mut prefix, "source", source)?;
        let mut out = Vec::new();
        for kv in t.range::<&[u8]>(prefix.as_slice()..).map_err(backend)? {
            let (k, v) = kv.map_err(backend)?;
            let Some(tail) = k.value().strip_prefix(prefix.as_slice()) else {
                break;
            };
            let (Some(epoch), Some(from)) = (u64_from(tail), tail.get(8..).and_then(u64_from))
            else {
                continue;
            };
            let gap = decode_gap(from, v.value())
                .ok_or_else(|| StoreError::Corrupt(format!("gap of {source}")))?;
            out.push(StoredGap { epoch, gap });
        }
        Ok(out)
    }

    fn watermark(&self, source: &str) -> Result<Option<(u64, u64)>, StoreError> {
        let txn = self.read()?;
        let t = txn.open_table(WATERMARKS).map_err(backend)?;
        Ok(t.get(source).map_err(backend)?.map(|v| v.value()))
    }

    fn rollups(&self, q: &RollupQuery) -> Result<Vec<Rollup>, StoreError> {
        let txn = self.read()?;
        let parts = partitions(Self::table_names_read(&txn)?.into_iter(), ROLLUP_PREFIX);
        let prefix = series_key(&q.monitor_id, &q.location)?;
        let mut out = Vec::new();
        each_timed(&txn, &parts, &prefix, q.from_ms, q.to_ms, |minute, v| {
            out.push(
                decode_rollup(minute, v)
                    .ok_or_else(|| StoreError::Corrupt(format!("rollup of {}", q.monitor_id)))?,
            );
            Ok(())
        })?;
        Ok(out)
    }

    fn summaries(&self, q: &SummaryQuery) -> Result<Vec<Summary>, StoreError> {
        let txn = self.read()?;
        let parts = partitions(Self::table_names_read(&txn)?.into_iter(), HOURLY_PREFIX);
        let prefix = series_key(&q.monitor_id, &q.location)?;
        // Hours from the start of the first bucket, so a day is whole.
        let from = q.bucket.start_of(q.from_ms);
        let mut out: Vec<Summary> = Vec::new();
        each_timed(&txn, &parts, &prefix, from, q.to_ms, |hour, v| {
            let s = decode_summary(hour, v)
                .ok_or_else(|| StoreError::Corrupt(format!("summary of {}", q.monitor_id)))?;
            let start = q.bucket.start_of(s.start_ms);
            if start < q.from_ms {
                return Ok(());
            }
            match out.last_mut() {
                Some(last) if last.start_ms == start => last.merge(&s),
                _ => out.push(Summary {
                    start_ms: start,
                    ..s
                }),
            }
            Ok(())
        })?;
        Ok(out)
    }

    fn roll_up(&self, _now_ms: i64) -> Result<RollupOutcome, StoreError> {
        let mut out = RollupOutcome::default();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let txn = self.write()?;
            let raw_tables: BTreeSet<String> = Self::table_names_write(&txn)?
                .into_iter()
                .filter(|n| n.starts_with(RAW_PREFIX))
                .collect();
            let keys: Vec<Vec<u8>> = {
                let t = txn.open_table(DIRTY).map_err(backend)?;
                let range = match &after {
                    Some(a) => t.range::<&[u8]>((
                        std::ops::Bound::Excluded(a.as_slice()),
                        std::ops::Bound::Unbounded,
                    )),
                    None => t.range::<&[u8]>(..),
                }
                .map_err(backend)?;
                let mut keys = Vec::new();
                for kv in range.take(ROLLUP_CHUNK) {
                    keys.push(kv.map_err(backend)?.0.value().to_vec());
                }
                keys
            };
            if keys.is_empty() {
                break;
            }
            for k in &keys {
                if Self::roll_minute(&txn, &raw_tables, k)? {
                    out.recomputed += 1;
                }
            }
            {
                // Cleared in the transaction that read the raw results: a
                // result committed after it marks the minute again.
                let mut t = txn.open_table(DIRTY).map_err(backend)?;
                for k in &keys {
                    t.remove(k.as_slice()).map_err(backend)?;
                }
            }
            out.cleared += keys.len() as u64;
            txn.commit().map_err(backend)?;
            let full = keys.len() == ROLLUP_CHUNK;
            after = keys.into_iter().last();
            if !full {
                break;
            }
        }
        Ok(out)
    }

    fn retain(&self, now_ms: i64) -> Result<RetentionOutcome, StoreError> {
        let mut out = RetentionOutcome::default();
        let raw_cutoff = now_ms.saturating_sub(ms(self.config.raw_retention));
        let rollup_cutoff = now_ms.saturating_sub(ms(self.config.rollup_retention));
        let txn = self.write()?;
        let names = Self::table_names_write(&txn)?;
        // A day goes once all of it is older than the cutoff.
        let expired = |day: i64, cutoff: i64| (day + 1).saturating_mul(DAY_MS) <= cutoff;
        for (day, name) in partitions(names.iter().cloned(), RAW_PREFIX) {
            if expired(day, raw_cutoff) {
                out.raw_results += txn
                    .open_table(def(&name))
                    .map_err(backend)?
                    .len()
                    .map_err(backend)?;
                txn.delete_table(def(&name)).map_err(backend)?;
                out.raw_days.push(day_name(day));
            }
        }
        for (day, name) in partitions(names.iter().cloned(), ROLLUP_PREFIX) {
            if expired(day, rollup_cutoff) {
                txn.delete_table(def(&name)).map_err(backend)?;
                out.rollup_days.push(day_name(day));
            }
        }
        for (day, name) in partitions(names.into_iter(), HOURLY_PREFIX) {
            if expired(day, rollup_cutoff) {
                txn.delete_table(def(&name)).map_err(backend)?;
            }
        }
        txn.commit().map_err(backend)?;
        if !out.raw_days.is_empty() || !out.rollup_days.is_empty() {
            tracing::info!(raw_days = ?out.raw_days, raw_results = out.raw_results, rollup_days = ?out.rollup_days, "expired partitions dropped");
        }
        Ok(out)
    }

    fn append_event(&self, event: &Event) -> Result<u64, StoreError> {
        let txn = self.write()?;
        let id = {
            let mut meta = txn.open_table(META).map_err(backend)?;
            let id = meta
                .get("next_event_id")
                .map_err(backend)?
                .map_or(1, |v| v.value());
            meta.insert("next_event_id", id + 1).map_err(backend)?;
            let json =
                serde_json::to_string(event).map_err(|e| StoreError::Backend(Box::new(e)))?;
            txn.open_table(EVENTS)
                .map_err(backend)?
                .insert((event.ts_ms, id), json.as_str())
                .map_err(backend)?;
            id
        };
        txn.commit().map_err(backend)?;
        Ok(id)
    }

    fn events(&self, q: &EventQuery) -> Result<Vec<(u64, Event)>, StoreError> {
        let txn = self.read()?;
        let t = txn.open_table(EVENTS).map_err(backend)?;
        let mut out = Vec::new();
        if q.to_ms <= q.from_ms {
            return Ok(out);
        }
        for kv in t
            .range((q.from_ms, 0u64)..(q.to_ms, 0u64))
            .map_err(backend)?
        {
            if out.len() >= q.limit {
                break;
            }
            let (k, v) = kv.map_err(backend)?;
            let event: Event = serde_json::from_str(v.value())
                .map_err(|e| StoreError::Corrupt(format!("event {:?}: {e}", k.value())))?;
            if q.kind.as_ref().is_none_or(|kind| *kind == event.kind) {
                out.push((k.value().1, event));
            }
        }
        Ok(out)
    }

    fn put_incident(&self, row: &IncidentRow) -> Result<u64, StoreError> {
        let txn = self.write()?;
        let id = {
            let id = if row.id == 0 {
                let mut meta = txn.open_table(META).map_err(backend)?;
                let id = meta
                    .get("next_incident_id")
                    .map_err(backend)?
                    .map_or(1, |v| v.value());
                meta.insert("next_incident_id", id + 1).map_err(backend)?;
                id
            } else {
                row.id
            };
            let stored = IncidentRow { id, ..row.clone() };
            let json =
                serde_json::to_string(&stored).map_err(|e| StoreError::Backend(Box::new(e)))?;
            txn.open_table(INCIDENTS)
                .map_err(backend)?
                .insert(id, json.as_str())
                .map_err(backend)?;
            let mut open = txn.open_table(INCIDENTS_OPEN).map_err(backend)?;
            if row.resolved_ms.is_none() {
                open.insert(id, ()).map_err(backend)?;
            } else {
                open.remove(id).map_err(backend)?;
            }
            id
        };
        txn.commit().map_err(backend)?;
        Ok(id)
    }

    fn incident(&self, id: u64) -> Result<Option<IncidentRow>, StoreError> {
        let txn = self.read()?;
        let t = txn.open_table(INCIDENTS).map_err(backend)?;
        match t.get(id).map_err(backend)? {
            Some(v) => Ok(Some(parse_incident(id, v.value())?)),
            None => Ok(None),
        }
    }

    fn incidents(&self, q: &IncidentQuery) -> Result<Vec<IncidentRow>, StoreError> {
        let txn = self.read()?;
        let t = txn.open_table(INCIDENTS).map_err(backend)?;
        let end = q.before_id.unwrap_or(u64::MAX);
        let mut out = Vec::new();
        let mut keep = |id: u64, json: &str| -> Result<bool, StoreError> {
            let row = parse_incident(id, json)?;
            if q.subject.as_ref().is_none_or(|s| *s == row.subject) {
                out.push(row);
            }
            Ok(out.len() < q.limit)
        };
        if q.limit == 0 {
            return Ok(Vec::new());
        }
        if q.open_only {
            let open = txn.open_table(INCIDENTS_OPEN).map_err(backend)?;
            for kv in open.range(..end).map_err(backend)?.rev() {
                let id = kv.map_err(backend)?.0.value();
                let Some(v) = t.get(id).map_err(backend)? else {
                    return Err(StoreError::Corrupt(format!(
                        "open incident {id} has no record"
                    )));
                };
                if !keep(id, v.value())? {
                    break;
                }
            }
        } else {
            for kv in t.range(..end).map_err(backend)?.rev() {
                let (k, v) = kv.map_err(backend)?;
                if !keep(k.value(), v.value())? {
                    break;
                }
            }
        }
        Ok(out)
    }

    fn count_results(&self) -> Result<u64, StoreError> {
        let txn = self.read()?;
        let mut n = 0;
        for name in Self::table_names_read(&txn)? {
            if name.starts_with(RAW_PREFIX) {
                n += txn
                    .open_table(def(&name))
                    .map_err(backend)?
                    .len()
                    .map_err(backend)?;
            }
        }
        Ok(n)
    }

    fn stats(&self) -> Result<StoreStats, StoreError> {
        let txn = self.read()?;
        let names = Self::table_names_read(&txn)?;
        let rows = |name: &str| -> Result<u64, StoreError> {
            txn.open_table(def(name))
                .map_err(backend)?
                .len()
                .map_err(backend)
        };
        let bytes = |name: &str| -> Result<u64, StoreError> {
            let s = txn
                .open_table(def(name))
                .map_err(backend)?
                .stats()
                .map_err(backend)?;
            // redb's page size is fixed at 4 KiB (part of the file format).
            Ok((s.leaf_pages() + s.branch_pages()) * 4096)
        };
        let mut stats = StoreStats {
            file_bytes: std::fs::metadata(&self.path).map_or(0, |m| m.len()),
            ..StoreStats::default()
        };
        for (day, name) in partitions(names.iter().cloned(), RAW_PREFIX) {
            stats.raw.push(Partition {
                day: day_name(day),
                rows: rows(&name)?,
                bytes: bytes(&name)?,
            });
        }
        for (day, name) in partitions(names.into_iter(), ROLLUP_PREFIX) {
            stats.rollups.push(Partition {
                day: day_name(day),
                rows: rows(&name)?,
                bytes: bytes(&name)?,
            });
        }
        stats.dirty = txn
            .open_table(DIRTY)
            .map_err(backend)?
            .len()
            .map_err(backend)?;
        stats.events = txn
            .open_table(EVENTS)
            .map_err(backend)?
            .len()
            .map_err(backend)?;
        stats.series = txn
            .open_table(LATEST)
            .map_err(backend)?
            .len()
            .map_err(backend)?;
        Ok(stats)
    }
}

fn parse_incident(id: u64, json: &str) -> Result<IncidentRow, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("incident {id}: {e}")))
}
