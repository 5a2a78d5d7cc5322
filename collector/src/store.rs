//! The collector's result store: every check result an agent (or the
//! collector's own public probes) produced, one-minute rollups of them, the
//! gaps sources reported, and the incident and audit event log. The collector
//! acks an agent's results only after [`Store::ingest`] returned Ok, and the
//! agent then deletes them: ingest is durable when it returns.
//!
//! The [`Store`] trait is what the rest of the collector sees, so a PostgreSQL
//! backend can come later; [`redb::RedbStore`] is the embedded one, one file
//! in the collector's data dir.
//!
//! ## Model
//! - A **location** is where a check ran: `agent:<agent name>` or
//!   `public:<region>`. The caller decides it; the store treats it as opaque.
//! - A **source** numbered the sequence numbers: an agent id, or
//!   `public:<region>`. Its **epoch** names one sequence space (an agent that
//!   lost its buffer starts again at seq 1 in a new epoch).
//! - **Deduplication** is a watermark per source, `(epoch, highest seq)`,
//!   updated in the ingest transaction: a sample at or below it (same epoch)
//!   was stored before and is counted as a duplicate. Sources send in seq
//!   order and resend from their last ack, so this is exact and costs no
//!   lookup per result. A higher epoch resets the watermark; samples of a
//!   lower one (an old stream still draining) are counted as duplicates.
//! - **Rollups**: one per (monitor, location, UTC minute): checks, failures
//!   (down), degraded, and per phase count/min/avg/p95/max. Ingest marks the
//!   minute dirty; [`Store::roll_up`] recomputes dirty minutes from the raw
//!   results and clears their markers in the same transaction (idempotent:
//!   a result arriving later, even a replay of an old minute, marks its
//!   minute again and the next roll-up folds it in). A minute is thus
//!   recomputed once per roll-up that follows new data for it, not once per
//!   roll-up during a grace period: at 10,000 monitors x 2 locations and a
//!   roll-up every 10 s that is ~20,000 recomputations a minute instead of
//!   ~360,000.
//! - **Summaries**: one per (monitor, location, UTC hour), the sum of its
//!   minutes, updated by the same roll-up transaction by difference (the
//!   minute's old rollup out, the new one in), so they always equal the sum
//!   of the minutes. Daily figures fold 24 hours. Uptime figures read them
//!   through [`summaries_excluding`], which leaves out the minutes a
//!   maintenance window touched (from those minutes' rollups).
//! - **Retention** is per UTC day: raw results and rollups live in one
//!   partition per day, dropped whole by [`Store::retain`] once the day is
//!   older than the retention (7 days raw, 90 days rollups by default).
//!   Events are kept.
//!
//! Time is always passed in (`now_ms`, Unix milliseconds), never read here,
//! so tests run on fixed times.
//!
//! ## redb layout (see `store/redb.rs`)
//! Text keys are length-prefixed (`u16` BE length + bytes), numbers are BE
//! (timestamps with the sign bit flipped so they sort as signed), so one
//! monitor+location's results over a time range are one contiguous range.
//!
//! | table | key | value |
//! |---|---|---|
//! | `raw_YYYYMMDD` | monitor, location, ts, seq | `CheckResult` (protobuf, monitor id stripped) |
//! | `rollup_YYYYMMDD` | monitor, location, minute | [`Rollup`] (varints, present phases only) |
//! | `hourly_YYYYMMDD` | monitor, location, hour | [`Summary`] (varints) |
//! | `dirty` | minute, monitor, location | - |
//! | `latest` | monitor, location | ts, seq, `CheckResult` |
//! | `watermarks` | source | (epoch, high seq) |
//! | `gaps` | source, epoch, from seq | to seq, count, times, location |
//! | `events` | (ts, id) | JSON `{kind, subject, body}` |
//! | `incidents` | id | JSON [`IncidentRow`] |
//! | `incidents_open` | id | - (the open ones, read at start) |
//! | `meta` | name | u64 (the next event id) |
//!
//! ## Costs (`benches/store.rs`, 10,000 monitors x 2 locations x 120 results)
//! Keys are series-major so reads are range scans (a 1 h range ~80 us, 24 h
//! of rollups ~40 us, `latest` ~4 us). The price is on writes: a batch that
//! spans 1,000 series dirties ~1,000 B-tree leaves, so interleaved ingest
//! runs at ~30,000 results/s in durable batches of 1,000 (one series: ~400,000/s).
//! Raw results take ~190 bytes each on disk, rollups ~85.

use std::time::Duration;

use portwatch_proto::v1 as pb;

pub mod observed;
pub mod redb;

#[cfg(test)]
mod tests;

pub use self::redb::RedbStore;

/// Milliseconds in a UTC day and minute.
pub const DAY_MS: i64 = 86_400_000;
pub const HOUR_MS: i64 = 3_600_000;
pub const MINUTE_MS: i64 = 60_000;

/// A result from a timestamp further ahead than this (the source's clock is
/// wrong) is rejected rather than stored in a partition retention would keep
/// until that date.
pub const MAX_FUTURE_MS: i64 = DAY_MS;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("opening the result store at {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("result store: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("{what} of {len} bytes is too long for a key")]
    KeyTooLong { what: &'static str, len: usize },
    #[error("result store: corrupt {0}")]
    Corrupt(String),
}

/// Retention and roll-up timings.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// How long raw results are kept (whole UTC days are dropped).
    pub raw_retention: Duration,
    /// How long one-minute rollups are kept.
    pub rollup_retention: Duration,
    /// The embedded engine's page cache.
    pub cache_bytes: usize,
}

pub const DEFAULT_RAW_RETENTION: Duration = Duration::from_secs(7 * 86_400);
pub const DEFAULT_ROLLUP_RETENTION: Duration = Duration::from_secs(90 * 86_400);

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            raw_retention: DEFAULT_RAW_RETENTION,
            rollup_retention: DEFAULT_ROLLUP_RETENTION,
            cache_bytes: 128 * 1024 * 1024,
        }
    }
}

/// One result to store. Its time is the result's `scheduled_at_unix_ms`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub monitor_id: String,
    pub location: String,
    pub seq: u64,
    pub result: pb::CheckResult,
}

/// Seqs `from_seq..=to_seq` of a source that were dropped before being sent
/// (the agent's buffer was full): shown as "unknown" for that span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceGap {
    pub location: String,
    pub from_seq: u64,
    pub to_seq: u64,
    pub count: u64,
    pub from_ts_ms: Option<i64>,
    pub to_ts_ms: Option<i64>,
}

/// A stored gap, with the epoch it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredGap {
    pub epoch: u64,
    pub gap: SourceGap,
}

/// What one [`Store::ingest`] did. Every sample is counted in exactly one of
/// `stored`, `duplicates`, `expired`, `rejected`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Written for the first time.
    pub stored: u64,
    /// At or below the source's watermark: stored before.
    pub duplicates: u64,
    /// Older than the raw retention already: acked, not stored.
    pub expired: u64,
    /// Timestamped more than [`MAX_FUTURE_MS`] ahead: acked, not stored.
    pub rejected: u64,
    /// Gaps written (one already stored with the same or a later end is not counted).
    pub gaps: u64,
}

/// Which end of a range a query starts from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Order {
    #[default]
    OldestFirst,
    NewestFirst,
}

/// Raw results of one monitor, optionally one location, with timestamps in
/// `[from_ms, to_ms)`, at most `limit`, in `order` by (time, location, seq).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultQuery {
    pub monitor_id: String,
    pub location: Option<String>,
    pub from_ms: i64,
    pub to_ms: i64,
    pub limit: usize,
    pub order: Order,
}

impl ResultQuery {
    /// Everything stored for `monitor_id`, oldest first.
    pub fn monitor(monitor_id: &str) -> ResultQuery {
        ResultQuery {
            monitor_id: monitor_id.to_owned(),
            location: None,
            from_ms: i64::MIN,
            to_ms: i64::MAX,
            limit: usize::MAX,
            order: Order::OldestFirst,
        }
    }

    pub fn location(mut self, location: &str) -> ResultQuery {
        self.location = Some(location.to_owned());
        self
    }

    pub fn range(mut self, from_ms: i64, to_ms: i64) -> ResultQuery {
        self.from_ms = from_ms;
        self.to_ms = to_ms;
        self
    }

    pub fn limit(mut self, limit: usize) -> ResultQuery {
        self.limit = limit;
        self
    }

    pub fn newest_first(mut self) -> ResultQuery {
        self.order = Order::NewestFirst;
        self
    }
}

/// One stored raw result.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResult {
    pub monitor_id: String,
    pub location: String,
    pub seq: u64,
    pub result: pb::CheckResult,
}

impl StoredResult {
    pub fn ts_ms(&self) -> i64 {
        self.result.scheduled_at_unix_ms
    }
}

/// Rollups of one monitor at one location for minutes starting in `[from_ms, to_ms)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollupQuery {
    pub monitor_id: String,
    pub location: String,
    pub from_ms: i64,
    pub to_ms: i64,
}

/// One phase's timings over a minute, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PhaseStats {
    /// Samples that had this phase.
    pub count: u32,
    pub min_us: u64,
    pub sum_us: u64,
    /// Nearest-rank 95th percentile.
    pub p95_us: u64,
    pub max_us: u64,
}

impl PhaseStats {
    /// The mean, or None when no sample had the phase.
    pub fn avg_us(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum_us as f64 / f64::from(self.count))
    }

    /// Stats of `values` (any order).
    pub fn of(values: &mut [u64]) -> PhaseStats {
        if values.is_empty() {
            return PhaseStats::default();
        }
        values.sort_unstable();
        let n = values.len();
        // Nearest rank: the smallest value with at least 95 % of the samples
        // at or below it, rank ceil(0.95 n) counted from 1.
        let rank = (95 * n).div_ceil(100).max(1);
        PhaseStats {
            count: u32::try_from(n).unwrap_or(u32::MAX),
            min_us: values[0],
            sum_us: values.iter().fold(0u64, |a, v| a.saturating_add(*v)),
            p95_us: values[rank - 1],
            max_us: values[n - 1],
        }
    }
}

/// The phases a rollup keeps, in [`Rollup::phases`] order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Dns,
    Connect,
    Tls,
    FirstByte,
    Total,
}

impl Phase {
    pub const ALL: [Phase; 5] = [
        Phase::Dns,
        Phase::Connect,
        Phase::Tls,
        Phase::FirstByte,
        Phase::Total,
    ];

    /// This phase's time in a result, None when the result has none.
    pub fn of(self, r: &pb::CheckResult) -> Option<u64> {
        let p = r.phases.as_ref()?;
        match self {
            Phase::Dns => p.dns_us,
            Phase::Connect => p.connect_us,
            Phase::Tls => p.tls_us,
            Phase::FirstByte => p.first_byte_us,
            Phase::Total => Some(p.total_us),
        }
    }
}

/// One monitor at one location over one UTC minute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rollup {
    pub minute_start_ms: i64,
    pub checks: u32,
    /// Results with status down.
    pub failures: u32,
    /// Results with status degraded.
    pub degraded: u32,
    /// Indexed like [`Phase::ALL`].
    pub phases: [PhaseStats; 5],
}

impl Rollup {
    /// The rollup of the results of one minute.
    pub fn compute<'a>(
        minute_start_ms: i64,
        results: impl IntoIterator<Item = &'a pb::CheckResult>,
    ) -> Rollup {
        let mut r = Rollup {
            minute_start_ms,
            ..Rollup::default()
        };
        let mut values: [Vec<u64>; 5] = Default::default();
        for res in results {
            r.checks += 1;
            match pb::Status::try_from(res.status) {
                Ok(pb::Status::Down) => r.failures += 1,
                Ok(pb::Status::Degraded) => r.degraded += 1,
                _ => {}
            }
            for (i, phase) in Phase::ALL.iter().enumerate() {
                if let Some(v) = phase.of(res) {
                    values[i].push(v);
                }
            }
        }
        for (i, v) in values.iter_mut().enumerate() {
            r.phases[i] = PhaseStats::of(v);
        }
        r
    }

    pub fn phase(&self, phase: Phase) -> &PhaseStats {
        &self.phases[phase as usize]
    }
}

/// How long a [`Summary`] spans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    Hour,
    /// A UTC day.
    Day,
}

impl Bucket {
    /// The start of the bucket containing `ts_ms`.
    pub fn start_of(self, ts_ms: i64) -> i64 {
        let len = match self {
            Bucket::Hour => HOUR_MS,
            Bucket::Day => DAY_MS,
        };
        ts_ms - ts_ms.rem_euclid(len)
    }
}

/// One monitor at one location over an hour or a UTC day: what the uptime
/// figures, the long charts and the status page's bars read, so a 30-day
/// uptime costs 720 rows instead of 43,200 minutes. Phase times are kept as
/// count and sum (averages combine; percentiles do not).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub start_ms: i64,
    pub checks: u64,
    /// Results with status down.
    pub failures: u64,
    /// Results with status degraded.
    pub degraded: u64,
    /// Samples that had each phase, indexed like [`Phase::ALL`].
    pub phase_count: [u64; 5],
    /// The sum of each phase's times, in microseconds.
    pub phase_sum_us: [u64; 5],
}

impl Summary {
    /// Folds a minute in.
    pub fn add(&mut self, r: &Rollup) {
        self.checks += u64::from(r.checks);
        self.failures += u64::from(r.failures);
        self.degraded += u64::from(r.degraded);
        for (i, p) in r.phases.iter().enumerate() {
            self.phase_count[i] += u64::from(p.count);
            self.phase_sum_us[i] = self.phase_sum_us[i].saturating_add(p.sum_us);
        }
    }

    /// Takes a minute that was folded in back out (it is being recomputed).
    pub fn remove(&mut self, r: &Rollup) {
        self.checks = self.checks.saturating_sub(u64::from(r.checks));
        self.failures = self.failures.saturating_sub(u64::from(r.failures));
        self.degraded = self.degraded.saturating_sub(u64::from(r.degraded));
        for (i, p) in r.phases.iter().enumerate() {
            self.phase_count[i] = self.phase_count[i].saturating_sub(u64::from(p.count));
            self.phase_sum_us[i] = self.phase_sum_us[i].saturating_sub(p.sum_us);
        }
    }

    /// Folds another summary in (hours into a day, locations into one).
    pub fn merge(&mut self, o: &Summary) {
        self.checks += o.checks;
        self.failures += o.failures;
        self.degraded += o.degraded;
        for i in 0..5 {
            self.phase_count[i] += o.phase_count[i];
            self.phase_sum_us[i] = self.phase_sum_us[i].saturating_add(o.phase_sum_us[i]);
        }
    }

    /// The phase's mean, None when no sample had it.
    pub fn avg_us(&self, phase: Phase) -> Option<f64> {
        let i = phase as usize;
        (self.phase_count[i] > 0).then(|| self.phase_sum_us[i] as f64 / self.phase_count[i] as f64)
    }

    /// The share of checks that were not down, None without checks.
    pub fn availability(&self) -> Option<f64> {
        (self.checks > 0).then(|| 1.0 - self.failures as f64 / self.checks as f64)
    }
}

/// Summaries of one monitor at one location for buckets starting in
/// `[from_ms, to_ms)`, oldest first; buckets without checks are left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SummaryQuery {
    pub monitor_id: String,
    pub location: String,
    pub from_ms: i64,
    pub to_ms: i64,
    pub bucket: Bucket,
}

/// Does any of `intervals` (sorted, disjoint `[start, end)`) overlap `[from_ms, to_ms)`?
fn overlaps(intervals: &[(i64, i64)], from_ms: i64, to_ms: i64) -> bool {
    let i = intervals.partition_point(|(_, end)| *end <= from_ms);
    intervals.get(i).is_some_and(|(start, _)| *start < to_ms)
}

/// [`Store::summaries`] without the checks of the minutes that `excluded`
/// touches: the uptime figures' read, with `excluded` the maintenance
/// windows [`crate::maintenance::covered`] lists (sorted, disjoint
/// `[start, end)` intervals).
///
/// The unit is the rollup's minute. A minute any excluded interval touches
/// is left out whole: a window from 02:00:30 to 03:00:30 leaves out the
/// minutes 02:00 to 03:00 inclusive, so no check that ran inside a window is
/// ever counted, at the price of up to a minute of checks either side of it.
/// A minute belongs to the range when it starts in `[q.from_ms, q.to_ms)`,
/// and buckets hold only the range's minutes (a day bucket cut by `from_ms`
/// holds the rest of that day). Hours whole inside the range and untouched
/// come from the hourly summaries as they are; only the others read their
/// minute rollups, so without maintenance this costs what
/// [`Store::summaries`] costs plus at most two hours of rollups. Buckets
/// left without checks are left out.
pub fn summaries_excluding(
    store: &dyn Store,
    q: &SummaryQuery,
    excluded: &[(i64, i64)],
) -> Result<Vec<Summary>, StoreError> {
    let hourly = store.summaries(&SummaryQuery {
        from_ms: Bucket::Hour.start_of(q.from_ms),
        bucket: Bucket::Hour,
        ..q.clone()
    })?;
    let touched = |minute: i64| overlaps(excluded, minute, minute + MINUTE_MS);
    let mut out: Vec<Summary> = Vec::new();
    for hour in hourly {
        let (from, to) = (
            hour.start_ms.max(q.from_ms),
            (hour.start_ms + HOUR_MS).min(q.to_ms),
        );
        let whole = from == hour.start_ms && to == hour.start_ms + HOUR_MS;
        let kept = if whole && !overlaps(excluded, from, to) {
            hour
        } else {
            // The minutes starting in [from, to).
            let first = minute_of(from + MINUTE_MS - 1);
            if (first..to).step_by(MINUTE_MS as usize).all(touched) {
                continue;
            }
            let mut part = Summary {
                start_ms: hour.start_ms,
                ..Summary::default()
            };
            let minutes = store.rollups(&RollupQuery {
                monitor_id: q.monitor_id.clone(),
                location: q.location.clone(),
                from_ms: from,
                to_ms: to,
            })?;
            for r in minutes.iter().filter(|r| !touched(r.minute_start_ms)) {
                part.add(r);
            }
            part
        };
        if kept.checks == 0 {
            continue;
        }
        let start = q.bucket.start_of(kept.start_ms);
        match out.last_mut() {
            Some(last) if last.start_ms == start => last.merge(&kept),
            _ => out.push(Summary {
                start_ms: start,
                ..kept
            }),
        }
    }
    Ok(out)
}

/// An incident or audit event. `body` is a JSON document the kind defines.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Event {
    pub ts_ms: i64,
    pub kind: String,
    pub subject: String,
    pub body: String,
}

/// Events with `ts_ms` in `[from_ms, to_ms)`, of one kind or all, at most
/// `limit`, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventQuery {
    pub from_ms: i64,
    pub to_ms: i64,
    pub kind: Option<String>,
    pub limit: usize,
}

/// An incident as the store keeps it: the fields it indexes, and the
/// incident engine's JSON record in `body`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IncidentRow {
    /// 0 on the first [`Store::put_incident`]: the store assigns one.
    pub id: u64,
    /// The monitor, or `agent:<name>` for an agent's own incident.
    pub subject: String,
    pub opened_ms: i64,
    pub resolved_ms: Option<i64>,
    pub body: String,
}

/// Incidents, newest (highest id) first: open ones only or all, of one
/// subject or all, at most `limit`; `before_id` pages back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncidentQuery {
    pub subject: Option<String>,
    pub open_only: bool,
    pub before_id: Option<u64>,
    pub limit: usize,
}

impl Default for IncidentQuery {
    fn default() -> Self {
        IncidentQuery {
            subject: None,
            open_only: false,
            before_id: None,
            limit: usize::MAX,
        }
    }
}

/// What one [`Store::roll_up`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RollupOutcome {
    /// Minutes recomputed.
    pub recomputed: u64,
    /// Dirty markers cleared (recomputed, or their raw results already expired).
    pub cleared: u64,
}

/// What one [`Store::retain`] dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionOutcome {
    /// Raw day partitions dropped (`YYYYMMDD`).
    pub raw_days: Vec<String>,
    /// Raw results in them.
    pub raw_results: u64,
    /// Rollup day partitions dropped.
    pub rollup_days: Vec<String>,
}

/// One day partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// `YYYYMMDD` (UTC).
    pub day: String,
    pub rows: u64,
    /// Pages the partition's tree holds, in bytes (counting them walks the tree).
    pub bytes: u64,
}

/// Sizes, for metrics and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// The store's file(s) on disk.
    pub file_bytes: u64,
    pub raw: Vec<Partition>,
    pub rollups: Vec<Partition>,
    /// Minutes waiting for [`Store::roll_up`].
    pub dirty: u64,
    pub events: u64,
    /// (monitor, location) pairs with a latest result.
    pub series: u64,
}

/// The collector's storage. Every write method is one transaction, durable
/// when it returns Ok.
pub trait Store: Send + Sync {
    /// Stores `samples` (in increasing seq order) and `gaps` from `source`'s
    /// sequence space `epoch`, in one transaction. See the module doc for
    /// deduplication; a sample older than the raw retention (at `now_ms`) is
    /// counted as expired, never an error.
    fn ingest(
        &self,
        source: &str,
        epoch: u64,
        now_ms: i64,
        samples: &[Sample],
        gaps: &[SourceGap],
    ) -> Result<BatchOutcome, StoreError>;

    fn results(&self, q: &ResultQuery) -> Result<Vec<StoredResult>, StoreError>;

    /// The newest result of `monitor_id` at each location, by location.
    fn latest(&self, monitor_id: &str) -> Result<Vec<(String, pb::CheckResult)>, StoreError>;

    /// The newest result of every (monitor, location), by monitor then location.
    fn latest_all(&self) -> Result<Vec<(String, String, pb::CheckResult)>, StoreError>;

    /// Locations that ever reported `monitor_id`, sorted.
    fn locations_of(&self, monitor_id: &str) -> Result<Vec<String>, StoreError>;

    /// Gaps `source` reported, by epoch then first seq.
    fn gaps(&self, source: &str) -> Result<Vec<StoredGap>, StoreError>;

    /// The source's watermark: (epoch, highest seq handled).
    fn watermark(&self, source: &str) -> Result<Option<(u64, u64)>, StoreError>;

    fn rollups(&self, q: &RollupQuery) -> Result<Vec<Rollup>, StoreError>;

    /// Hourly or daily summaries, kept up to date by [`Store::roll_up`] and
    /// retained like the rollups.
    fn summaries(&self, q: &SummaryQuery) -> Result<Vec<Summary>, StoreError>;

    /// Recomputes every dirty minute and clears its marker. `now_ms` is for
    /// the log and future policies; rolling up twice changes nothing.
    fn roll_up(&self, now_ms: i64) -> Result<RollupOutcome, StoreError>;

    /// Drops raw and rollup day partitions older than their retention at `now_ms`.
    fn retain(&self, now_ms: i64) -> Result<RetentionOutcome, StoreError>;

    /// Appends an event; returns its id.
    fn append_event(&self, event: &Event) -> Result<u64, StoreError>;

    fn events(&self, q: &EventQuery) -> Result<Vec<(u64, Event)>, StoreError>;

    /// Writes an incident (a new one when `row.id` is 0); returns its id.
    fn put_incident(&self, row: &IncidentRow) -> Result<u64, StoreError>;

    fn incident(&self, id: u64) -> Result<Option<IncidentRow>, StoreError>;

    fn incidents(&self, q: &IncidentQuery) -> Result<Vec<IncidentRow>, StoreError>;

    /// Raw results stored, over all partitions.
    fn count_results(&self) -> Result<u64, StoreError>;

    fn stats(&self) -> Result<StoreStats, StoreError>;
}

/// The UTC day number (days since 1970-01-01) of a Unix time in ms.
pub fn day_of(ts_ms: i64) -> i64 {
    ts_ms.div_euclid(DAY_MS)
}

/// The start of the minute containing `ts_ms`.
pub fn minute_of(ts_ms: i64) -> i64 {
    ts_ms - ts_ms.rem_euclid(MINUTE_MS)
}

/// `YYYYMMDD` of a day number (proleptic Gregorian, H. Hinnant's algorithm).
pub fn day_name(day: i64) -> String {
    let z = day + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}{m:02}{d:02}")
}

/// The day number of a `YYYYMMDD` name, None if it is not one.
pub fn parse_day_name(name: &str) -> Option<i64> {
    if name.len() != 8 || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let y: i64 = name[..4].parse().ok()?;
    let m: i64 = name[4..6].parse().ok()?;
    let d: i64 = name[6..].parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let day = era * 146_097 + doe - 719_468;
    // Reject dates like 20260231 that normalise to another day.
    (day_name(day) == name).then_some(day)
}

/// Milliseconds of a retention, saturating.
pub(crate) fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
