//! Figures for incident detection (prints them; asserts nothing): how fast
//! results are taken in (`observe`, on the ingest path), and what a step
//! costs when every monitor has new results, at 10,000 monitors x 2
//! locations at a 30 s interval and 1,000 monitors x 2 locations at 1 s, each
//! with a full 15 min horizon. Incidents are stored in a real redb store.
//!
//! `cargo bench -p portwatch-collector --bench incidents`
//! (`PW_BENCH_QUICK=1` for a small run that takes seconds).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use portwatch_collector::incident::engine::{
    Clock, EngineConfig, IncidentEngine, NoAgents, NoMaintenance, NoOutbox,
};
use portwatch_collector::monitors::registry::MonitorRegistry;
use portwatch_collector::monitors::{Located, Origin, Parents, RawMonitor, validate_all};
use portwatch_collector::store::{RedbStore, Sample, Store, StoreConfig};
use portwatch_proto::v1 as pb;

const LOCATIONS: [&str; 2] = ["agent:hq", "public:eu-west"];
const T0: i64 = 1_795_860_000_000;

fn registry(n: usize, interval: &str) -> MonitorRegistry {
    let located: Vec<Located> = (0..n)
        .map(|i| Located {
            raw: RawMonitor {
                name: format!("m{i:05}"),
                target: format!("tcp://127.0.0.1:{}", 1024 + i % 60_000),
                interval: Some(interval.to_owned()),
                locations: vec!["hq".into(), "public:eu-west".into()],
                ..RawMonitor::default()
            },
            line: None,
            path: format!("monitors[{i}]"),
        })
        .collect();
    let monitors =
        validate_all(&located, "bench", Origin::File, &[], Parents::MustExist).expect("valid");
    MonitorRegistry::open(monitors, None).expect("registry")
}

fn sample(monitor: usize, location: &str, ts: i64, down: bool) -> Sample {
    Sample {
        monitor_id: format!("m{monitor:05}"),
        location: location.to_owned(),
        seq: 0,
        result: pb::CheckResult {
            monitor_id: format!("m{monitor:05}"),
            scheduled_at_unix_ms: ts,
            status: if down {
                pb::Status::Down as i32
            } else {
                pb::Status::Up as i32
            },
            reason: if down {
                pb::Reason::Refused as i32
            } else {
                pb::Reason::Ok as i32
            },
            ..Default::default()
        },
    }
}

fn run(monitors: usize, interval_s: i64, quick: bool) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(RedbStore::open(dir.path(), StoreConfig::default()).unwrap());
    let registry = registry(monitors, &format!("{interval_s}s"));
    let now = Arc::new(Mutex::new(T0));
    let clock: Clock = {
        let now = now.clone();
        Arc::new(move || *now.lock().unwrap())
    };
    let engine = IncidentEngine::open(
        store,
        registry,
        Arc::new(NoAgents),
        Arc::new(NoMaintenance),
        Arc::new(NoOutbox),
        clock,
        EngineConfig::default(),
    )
    .unwrap();
    let horizon_s = if quick { 120 } else { 15 * 60 };
    let rounds = horizon_s / interval_s;
    // Fill the horizon: every monitor up everywhere, one result per interval.
    let t = Instant::now();
    let mut fed = 0u64;
    for round in 0..rounds {
        let ts = T0 + round * interval_s * 1000;
        let batch: Vec<Sample> = (0..monitors)
            .flat_map(|m| {
                LOCATIONS
                    .iter()
                    .map(move |l| sample(m, l, ts + m as i64 % 1000, false))
            })
            .collect();
        for chunk in batch.chunks(1000) {
            engine.observe(chunk);
        }
        fed += batch.len() as u64;
    }
    let took = t.elapsed();
    println!(
        "{monitors} monitors x 2 at {interval_s}s: observe {:>10.0} results/s ({fed} results)",
        fed as f64 / took.as_secs_f64()
    );
    // The first step judges every monitor over its whole horizon.
    let end = T0 + rounds * interval_s * 1000;
    *now.lock().unwrap() = end;
    let t = Instant::now();
    engine.step(end);
    println!(
        "{monitors} monitors x 2 at {interval_s}s: a step over every monitor ({} results each) {:?}",
        2 * rounds,
        t.elapsed()
    );
    // One more interval of results, 1 % of monitors failing twice: the
    // steady-state cost of a step, incidents included.
    for k in 0..2 {
        let ts = end + (k + 1) * interval_s * 1000;
        let batch: Vec<Sample> = (0..monitors)
            .flat_map(|m| {
                LOCATIONS
                    .iter()
                    .map(move |l| sample(m, l, ts + m as i64 % 1000, m % 100 == 0))
            })
            .collect();
        for chunk in batch.chunks(1000) {
            engine.observe(chunk);
        }
        let at = ts + 1000;
        *now.lock().unwrap() = at;
        let t = Instant::now();
        engine.step(at);
        println!(
            "{monitors} monitors x 2 at {interval_s}s: a step after one interval of results {:?} ({} open incidents)",
            t.elapsed(),
            engine.open_incidents().len()
        );
    }
}

fn main() {
    let quick = std::env::var_os("PW_BENCH_QUICK").is_some();
    if quick {
        run(500, 30, true);
        run(100, 1, true);
    } else {
        run(10_000, 30, false);
        run(1_000, 1, false);
    }
}
