//! Figures for the dashboard and the API (prints them; asserts nothing):
//! p50/p99 latency of the overview page, a monitor page, the public status
//! page and the API's list and history calls, against a real collector
//! (`server::serve` on loopback, real HTTP) holding 10,000 monitors x 5
//! locations x 7 days of results.
//!
//! The history is one result per monitor and location per hour (8.4 M
//! results: every hourly summary the overview and 7/30-day views read
//! exists), plus every minute of the last 24 h for the monitor whose page is
//! measured (what its 24 h chart reads at a 1-minute interval). Every series
//! also gets a current result through the ingest path, so the incident
//! engine's status (the grid) covers all 50,000 cells.
//!
//! `cargo bench -p portwatch-collector --bench dashboard`
//! (`PW_BENCH_QUICK=1`: 500 monitors x 2 locations x 1 day, seconds).
//! The data dir goes under `PW_BENCH_DIR` (default the temp dir) and is
//! removed at the end.

use std::time::{Duration, Instant};

use portwatch_collector::admin::{AdminToken, Discovery};
use portwatch_collector::config::Config;
use portwatch_collector::monitors::{Located, Origin, Parents, RawMonitor, validate_all};
use portwatch_collector::server;
use portwatch_collector::store::{HOUR_MS, MINUTE_MS, RedbStore, Sample, Store, StoreConfig};
use portwatch_collector::web::status::RawGroup;
use portwatch_proto::v1 as pb;

struct Scale {
    monitors: usize,
    locations: usize,
    days: i64,
    requests: usize,
}

fn name(i: usize) -> String {
    format!("m{i:05}")
}

fn result(monitor: usize, ts: i64, down: bool) -> pb::CheckResult {
    pb::CheckResult {
        monitor_id: name(monitor),
        scheduled_at_unix_ms: ts,
        started_at_unix_ms: ts,
        status: if down {
            pb::Status::Down
        } else {
            pb::Status::Up
        } as i32,
        reason: if down {
            pb::Reason::Refused
        } else {
            pb::Reason::Ok
        } as i32,
        address: format!("10.0.{}.{}:5432", monitor / 250, monitor % 250),
        phases: Some(pb::Phases {
            connect_us: (!down).then_some(800 + (ts as u64 / 60_000 % 7) * 150),
            total_us: 1_200,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn now_ms() -> i64 {
    portwatch_collector::state::unix_ms(std::time::SystemTime::now())
}

/// Writes the history straight into the store, series by series (the
/// order that ingests fastest), then rolls it up.
fn history(dir: &std::path::Path, s: &Scale, now: i64) {
    let store = RedbStore::open(&dir.join("store"), StoreConfig::default()).expect("store");
    let start = now - s.days * 24 * HOUR_MS;
    let mut seq = 0u64;
    let mut batch: Vec<Sample> = Vec::with_capacity(20_000);
    let t = Instant::now();
    let mut total = 0u64;
    let mut flush = |batch: &mut Vec<Sample>| {
        if !batch.is_empty() {
            store.ingest("bench", 0, now, batch, &[]).expect("ingest");
            total += batch.len() as u64;
            batch.clear();
        }
    };
    for m in 0..s.monitors {
        for l in 0..s.locations {
            let location = format!("agent:site-{l}");
            let mut ts = start + (m as i64 * 7_919) % HOUR_MS;
            // The measured monitor: every minute of the last day.
            let dense = m == 42;
            while ts < now - 2 * MINUTE_MS {
                seq += 1;
                let down = (ts / HOUR_MS + m as i64) % 97 == 0;
                batch.push(Sample {
                    monitor_id: name(m),
                    location: location.clone(),
                    seq,
                    result: result(m, ts, down),
                });
                if batch.len() >= 20_000 {
                    flush(&mut batch);
                }
                ts += if dense && ts > now - 24 * HOUR_MS {
                    MINUTE_MS
                } else {
                    HOUR_MS
                };
            }
        }
    }
    flush(&mut batch);
    let ingest_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let rolled = store.roll_up(now).expect("roll up");
    println!(
        "history: {total} results ingested in {ingest_s:.1} s ({:.0}/s), {} minutes rolled up in {:.1} s",
        total as f64 / ingest_s,
        rolled.recomputed,
        t.elapsed().as_secs_f64()
    );
}

fn config(s: &Scale) -> Config {
    let located: Vec<Located> = (0..s.monitors)
        .map(|i| Located {
            raw: RawMonitor {
                name: name(i),
                target: format!("tcp://10.0.{}.{}:5432", i / 250, i % 250),
                interval: Some("30s".into()),
                locations: (0..s.locations).map(|l| format!("site-{l}")).collect(),
                tags: vec![format!("team-{}", i % 20)],
                ..RawMonitor::default()
            },
            line: None,
            path: format!("monitors[{i}]"),
        })
        .collect();
    let status_page = portwatch_collector::web::status::StatusPage {
        groups: vec![RawGroup {
            name: "Databases".into(),
            monitors: (0..50).map(name).collect(),
            tags: Vec::new(),
        }],
        ..Default::default()
    };
    Config {
        monitors: validate_all(&located, "bench", Origin::File, &[], Parents::MustExist)
            .expect("valid"),
        monitor_sources: located,
        public_probes: false,
        status_page,
        ..Config::default()
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

fn measure(agent: &ureq::Agent, url: &str, token: &str, label: &str, path: &str, n: usize) {
    let mut times = Vec::with_capacity(n);
    let mut bytes = 0;
    for _ in 0..n {
        let t = Instant::now();
        let mut resp = agent
            .get(&format!("{url}{path}"))
            .header("Authorization", &format!("Bearer {token}"))
            .call()
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        let body = resp.body_mut().read_to_string().expect("body");
        assert_eq!(resp.status().as_u16(), 200, "{path}: {body}");
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        bytes = body.len();
    }
    times.sort_by(f64::total_cmp);
    println!(
        "{label:<34} p50 {:>7.1} ms  p99 {:>7.1} ms  max {:>7.1} ms  ({} KiB, n={n})",
        percentile(&times, 50.0),
        percentile(&times, 99.0),
        times[times.len() - 1],
        bytes / 1024
    );
}

fn main() {
    let quick = std::env::var_os("PW_BENCH_QUICK").is_some();
    let s = if quick {
        Scale {
            monitors: 500,
            locations: 2,
            days: 1,
            requests: 20,
        }
    } else {
        Scale {
            monitors: 10_000,
            locations: 5,
            days: 7,
            requests: 200,
        }
    };
    println!(
        "dashboard bench: {} monitors x {} locations x {} days",
        s.monitors, s.locations, s.days
    );
    let base = std::env::var_os("PW_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::Builder::new()
        .prefix("portwatch-bench-dashboard-")
        .tempdir_in(base)
        .expect("temp dir");
    let data = dir.path().join("collector");
    std::fs::create_dir_all(&data).unwrap();
    let now = now_ms();
    history(&data, &s, now);

    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let collector = rt.block_on(async {
        let agent_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = agent_listener.local_addr().unwrap();
        let (collector, admin) = server::open(&data, config(&s), addr).expect("open");
        let c = collector.clone();
        let data = data.clone();
        tokio::spawn(async move {
            server::serve(&data, c, admin, agent_listener, http_listener, async {
                let _ = stop_rx.await;
            })
            .await
        });
        collector
    });
    // A current result per cell, through the ingest path the engine watches.
    let t = Instant::now();
    let mut seq = 0;
    let fresh = now_ms();
    for chunk in (0..s.monitors).collect::<Vec<_>>().chunks(1_000) {
        let batch: Vec<Sample> = chunk
            .iter()
            .flat_map(|m| (0..s.locations).map(move |l| (*m, l)))
            .map(|(m, l)| {
                seq += 1;
                Sample {
                    monitor_id: name(m),
                    location: format!("agent:site-{l}"),
                    seq,
                    result: result(m, fresh, m % 250 == 7),
                }
            })
            .collect();
        collector
            .results
            .ingest("live", 0, fresh, &batch, &[])
            .expect("live ingest");
    }
    println!(
        "live: {seq} current results in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let deadline = Instant::now() + Duration::from_secs(30);
    let discovery = loop {
        if let Ok(d) = Discovery::read(&data) {
            break d;
        }
        assert!(Instant::now() < deadline, "the collector did not start");
        std::thread::sleep(Duration::from_millis(50));
    };
    let token = AdminToken::read(&data.join("admin.token")).unwrap();
    let token = token.secret();
    let url = discovery.url;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into();
    // Until the engine has judged every cell (its step follows the ingest).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut resp = agent
            .get(&format!("{url}/?state=down"))
            .header("Authorization", &format!("Bearer {token}"))
            .call()
            .unwrap();
        let body = resp.body_mut().read_to_string().unwrap();
        if body.contains("cell down") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the grid never showed a down cell"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let n = s.requests;
    let m = name(42);
    measure(
        &agent,
        &url,
        token,
        "status page, first render (50)",
        "/status",
        1,
    );
    let pages = s.monitors / 50;
    for (label, path) in [
        ("overview, first page (50 rows)", "/".to_owned()),
        ("overview, a middle page", format!("/?page={}", pages / 2)),
        ("overview, 500 rows", "/?per=500".to_owned()),
        ("overview, search", "/?q=m0042".to_owned()),
        ("overview, filter down", "/?state=down".to_owned()),
        ("monitor page, 24 h", format!("/monitors/{m}?range=24h")),
        ("monitor page, 7 d", format!("/monitors/{m}?range=7d")),
        ("monitor page, 30 d", format!("/monitors/{m}?range=30d")),
        ("status page (50 monitors, cached)", "/status".to_owned()),
        ("api: monitors (all)", "/api/v1/monitors".to_owned()),
        ("api: status (all cells)", "/api/v1/status".to_owned()),
        (
            "api: results (100, one monitor)",
            format!("/api/v1/results?monitor={m}&limit=100"),
        ),
        (
            "api: rollups (24 h, one location)",
            format!(
                "/api/v1/rollups?monitor={m}&location=agent:site-0&from={}",
                now - 24 * HOUR_MS
            ),
        ),
        ("api: incidents (100)", "/api/v1/incidents".to_owned()),
    ] {
        measure(&agent, &url, token, label, &path, n);
    }
    let _ = stop_tx.send(());
    rt.shutdown_timeout(Duration::from_secs(5));
    drop(dir);
}
