//! Figures for the collector's result store (prints them; asserts nothing):
//! ingest rate in batches of 1,000, bytes per result on disk, and query
//! latencies at 10,000 monitors x 2 locations x 120 results (2.4 M results).
//!
//! `cargo bench -p portwatch-collector --bench store`
//! (`PW_BENCH_QUICK=1` for a small fill that runs in seconds;
//! `PW_BENCH_DIR=/path` to put the file on another disk than the temp dir's;
//! `PW_BENCH_MONITORS`, `PW_BENCH_RESULTS`, `PW_BENCH_CACHE_MB` to vary the fill).

use std::time::{Duration, Instant};

use portwatch_collector::store::{
    DAY_MS, MINUTE_MS, RedbStore, ResultQuery, RollupQuery, Sample, Store, StoreConfig,
    parse_day_name,
};
use portwatch_proto::v1 as pb;
use rand::Rng;

const BATCH: usize = 1000;
const LOCATIONS: [&str; 2] = ["agent:hq", "public:eu-west"];
const SOURCES: [&str; 2] = ["a7f3c9d2e1b04a6f", "public:eu-west"];

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Runs `f` `n` times, prints p50/p99 and what one call returned.
fn measure(what: &str, n: usize, mut f: impl FnMut() -> usize) {
    let mut times = Vec::with_capacity(n);
    let mut rows = 0;
    for _ in 0..n {
        let t = Instant::now();
        rows = f();
        times.push(t.elapsed());
    }
    times.sort();
    println!(
        "{what:<44} p50 {:>9.3?}  p99 {:>9.3?}  ({rows} rows, {n} runs)",
        percentile(&times, 0.50),
        percentile(&times, 0.99),
    );
}

fn result(monitor: &str, ts: i64, i: u64) -> pb::CheckResult {
    let connect = 180 + i % 400;
    pb::CheckResult {
        monitor_id: monitor.to_owned(),
        scheduled_at_unix_ms: ts,
        started_at_unix_ms: ts + 2,
        status: if i.is_multiple_of(97) {
            pb::Status::Down as i32
        } else {
            pb::Status::Up as i32
        },
        reason: pb::Reason::Ok as i32,
        message: "connected".into(),
        address: "10.20.30.40:5432".into(),
        phases: Some(pb::Phases {
            connect_us: Some(connect),
            total_us: connect + 20,
            ..Default::default()
        }),
        details: None,
    }
}

/// The backlog replay's pattern: one source, one monitor, seq order, in
/// batches of `batch`.
fn replay(n: usize, batch: usize) {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path(), StoreConfig::default()).unwrap();
    let start = parse_day_name("20261120").unwrap() * DAY_MS + DAY_MS / 2;
    let samples: Vec<Sample> = (0..n)
        .map(|i| Sample {
            monitor_id: "m1".into(),
            location: LOCATIONS[0].into(),
            seq: i as u64 + 1,
            result: result("m1", start + i as i64, i as u64),
        })
        .collect();
    let t = Instant::now();
    for chunk in samples.chunks(batch) {
        store.ingest(SOURCES[0], 0, start, chunk, &[]).unwrap();
    }
    let took = t.elapsed();
    println!(
        "replay pattern (1 monitor, {n} results, batches of {batch}): {took:.2?} = {:.0} results/s",
        n as f64 / took.as_secs_f64()
    );
}

fn main() {
    let quick = std::env::var_os("PW_BENCH_QUICK").is_some();
    let (monitors, per_series) = if quick { (500, 24) } else { (10_000, 120) };
    let env = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let monitors = env("PW_BENCH_MONITORS", monitors);
    let per_series = env("PW_BENCH_RESULTS", per_series);
    let runs = if quick { 200 } else { 1000 };
    let replay_n = if quick { 20_000 } else { 200_000 };
    replay(replay_n, BATCH);
    replay(replay_n, 16 * BATCH);
    let dir = match std::env::var_os("PW_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    let mut config = StoreConfig::default();
    config.cache_bytes = env("PW_BENCH_CACHE_MB", config.cache_bytes >> 20) << 20;
    println!("page cache: {} MiB", config.cache_bytes >> 20);
    let store = RedbStore::open(dir.path(), config).unwrap();
    let ids: Vec<String> = (0..monitors).map(|i| format!("mon-{i:05}")).collect();
    // Noon, so the fill stays within one day partition like a normal day.
    let start = parse_day_name("20261120").unwrap() * DAY_MS + DAY_MS / 2;
    let now = start + per_series as i64 * MINUTE_MS;

    // Each location checks every monitor once a minute; its results arrive
    // in seq order, cut into batches of 1,000 (the agent's batch size).
    let total = monitors * per_series * LOCATIONS.len();
    let mut ingest_time = Duration::ZERO;
    let mut seqs = [0u64; 2];
    let mut pending: [Vec<Sample>; 2] = Default::default();
    let mut roll_time = Duration::ZERO;
    let mut rolled = 0;
    for minute in 0..per_series {
        // The collector rolls up every ~10 s; here once per simulated minute.
        if minute > 0 {
            let t = Instant::now();
            rolled += store
                .roll_up(start + minute as i64 * MINUTE_MS)
                .unwrap()
                .recomputed;
            roll_time += t.elapsed();
        }
        for (i, id) in ids.iter().enumerate() {
            for l in 0..LOCATIONS.len() {
                seqs[l] += 1;
                let ts = start + minute as i64 * MINUTE_MS + (i as i64 * 6) % MINUTE_MS;
                pending[l].push(Sample {
                    monitor_id: id.clone(),
                    location: LOCATIONS[l].to_owned(),
                    seq: seqs[l],
                    result: result(id, ts, seqs[l]),
                });
                if pending[l].len() == BATCH {
                    let batch = std::mem::take(&mut pending[l]);
                    let t = Instant::now();
                    store.ingest(SOURCES[l], 0, now, &batch, &[]).unwrap();
                    ingest_time += t.elapsed();
                }
            }
        }
    }
    for (l, batch) in pending.iter().enumerate() {
        if !batch.is_empty() {
            let t = Instant::now();
            store.ingest(SOURCES[l], 0, now, batch, &[]).unwrap();
            ingest_time += t.elapsed();
        }
    }
    let stats = store.stats().unwrap();
    println!(
        "fill: {monitors} monitors x {} locations x {per_series} results = {total} results",
        LOCATIONS.len()
    );
    println!(
        "ingest (batches of {BATCH}, one durable commit each): {:.2?} = {:.0} results/s",
        ingest_time,
        total as f64 / ingest_time.as_secs_f64()
    );
    println!(
        "on disk: {} bytes = {:.1} bytes/result (payload {} bytes protobuf)",
        stats.file_bytes,
        stats.file_bytes as f64 / total as f64,
        {
            use prost::Message;
            result("mon-00000", start, 1).encoded_len()
        }
    );
    let t = Instant::now();
    rolled += store.roll_up(now + DAY_MS).unwrap().recomputed;
    roll_time += t.elapsed();
    println!(
        "roll_up (once per simulated minute): {rolled} minute recomputations in {:.2?} ({:.0}/s)",
        roll_time,
        rolled as f64 / roll_time.as_secs_f64()
    );
    let stats = store.stats().unwrap();
    let raw_bytes: u64 = stats.raw.iter().map(|p| p.bytes).sum();
    let rollup_bytes: u64 = stats.rollups.iter().map(|p| p.bytes).sum();
    let rollups: u64 = stats.rollups.iter().map(|p| p.rows).sum();
    println!(
        "after roll-up: file {} bytes; raw partitions {raw_bytes} bytes = {:.1} bytes/result; \
         {rollups} rollups {rollup_bytes} bytes = {:.1} bytes/rollup",
        stats.file_bytes,
        raw_bytes as f64 / total as f64,
        rollup_bytes as f64 / rollups.max(1) as f64,
    );

    let mut rng = rand::rng();
    let mut pick = || {
        (
            ids[rng.random_range(0..ids.len())].clone(),
            LOCATIONS[rng.random_range(0..LOCATIONS.len())],
        )
    };
    let hour = 60 * MINUTE_MS;
    measure("raw 1 h range, one monitor+location", runs, || {
        let (m, l) = pick();
        let from = start + (per_series as i64 * MINUTE_MS - hour).max(0) / 2;
        store
            .results(
                &ResultQuery::monitor(&m)
                    .location(l)
                    .range(from, from + hour),
            )
            .unwrap()
            .len()
    });
    measure("raw newest 100, one monitor, all locations", runs, || {
        let (m, _) = pick();
        store
            .results(&ResultQuery::monitor(&m).newest_first().limit(100))
            .unwrap()
            .len()
    });
    measure("latest, one monitor", runs, || {
        let (m, _) = pick();
        store.latest(&m).unwrap().len()
    });
    measure("rollups 24 h, one monitor+location", runs, || {
        let (m, l) = pick();
        store
            .rollups(&RollupQuery {
                monitor_id: m,
                location: l.to_owned(),
                from_ms: now - DAY_MS,
                to_ms: now,
            })
            .unwrap()
            .len()
    });
    measure(&format!("latest_all ({monitors} monitors)"), 20, || {
        store.latest_all().unwrap().len()
    });
    measure(
        &format!("latest x {monitors} monitors, one by one"),
        3,
        || ids.iter().map(|m| store.latest(m).unwrap().len()).sum(),
    );
}
