//! Collector ingest with 100 concurrent agent streams (issue 8, item 4): the
//! real `portwatch-collector serve` in its own process and data dir, 100
//! agents really enrolled with one-time tokens (the collector's API client,
//! the agent library's `enroll`), and this process as the load generator: 100
//! instances of the agent's real link (`portwatch_agent::link::Link`, batches
//! of 500, a window of 4, each batch acked before the window moves) over real
//! mutual TLS, each draining a pre-filled buffer of results for monitors the
//! collector assigned to that agent.
//!
//! The buffer is in memory by default ([`MemBuffer`], a `ResultBuffer` kept in
//! a map): the measurement is of the collector, and 100 sled buffers
//! fsyncing every ack on the same two cores would measure the agents' disks
//! instead. `PW_INGEST_BUFFER=sled` uses the agent's real `SledBuffer` (what a
//! replay after an outage costs end to end).
//!
//! Prints streams, results, seconds, results/s, the collector's CPU (% of one
//! core) and peak RSS, and this load generator's CPU. Asserts only that the
//! collector stored exactly what was sent (counted in its store after it
//! stopped: no loss, no duplicates). A measurement, not a check:
//!
//! ```sh
//! cargo build --release -p portwatch-collector --bins
//! cargo test --release -p portwatch-e2e --test ingest -- --ignored --nocapture
//! ```
//!
//! `PW_BENCH_QUICK=1` is a few-second smoke run; `PW_INGEST_AGENTS` and
//! `PW_INGEST_PER_AGENT` change the size. Only 127.0.0.1 is contacted.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use portwatch_agent::buffer::{
    BufferError, BufferStats, DEFAULT_MAX_BYTES, Gap, Record, ResultBuffer, SledBuffer,
};
use portwatch_agent::check::CheckSpec;
use portwatch_agent::enroll::{EnrollOptions, enroll};
use portwatch_agent::identity::AgentIdentity;
use portwatch_agent::join::JoinString;
use portwatch_agent::link::{Link, LinkConfig, LinkIdentity};
use portwatch_agent::result::CheckResult;
use portwatch_agent::scheduler::{BoxFuture, Executor};
use portwatch_collector::client::AdminClient;
use portwatch_collector::http::CreateToken;
use portwatch_collector::store::{RedbStore, Store, StoreConfig};
use portwatch_e2e::local::Collector;
use portwatch_harness as h;
use portwatch_proto::v1 as pb;
use prost::Message;

/// Monitors every agent runs (all assigned to every bench agent by label).
const MONITORS: usize = 20;

/// A `ResultBuffer` in memory: the same contract as `SledBuffer` (ordered
/// seqs, read after, delete through an ack) without the disk.
struct MemBuffer {
    records: Mutex<BTreeMap<u64, Vec<u8>>>,
    next_seq: Mutex<u64>,
    epoch: u64,
}

impl MemBuffer {
    fn new(epoch: u64) -> MemBuffer {
        MemBuffer {
            records: Mutex::new(BTreeMap::new()),
            next_seq: Mutex::new(1),
            epoch,
        }
    }
}

impl ResultBuffer for MemBuffer {
    fn append(&self, payloads: &[Vec<u8>]) -> Result<Vec<u64>, BufferError> {
        let mut records = self.records.lock().unwrap();
        let mut next = self.next_seq.lock().unwrap();
        let mut seqs = Vec::with_capacity(payloads.len());
        for p in payloads {
            records.insert(*next, p.clone());
            seqs.push(*next);
            *next += 1;
        }
        Ok(seqs)
    }

    fn read_after(&self, after: u64, max: usize) -> Result<Vec<Record>, BufferError> {
        let records = self.records.lock().unwrap();
        Ok(records
            .range(after + 1..)
            .take(max)
            .map(|(&seq, p)| Record {
                seq,
                payload: p.clone(),
            })
            .collect())
    }

    fn ack_through(&self, seq: u64) -> Result<u64, BufferError> {
        let mut records = self.records.lock().unwrap();
        let keep = records.split_off(&(seq + 1));
        let removed = records.len() as u64;
        *records = keep;
        Ok(removed)
    }

    fn gaps(&self) -> Result<Vec<Gap>, BufferError> {
        Ok(Vec::new())
    }

    fn stats(&self) -> BufferStats {
        let records = self.records.lock().unwrap();
        BufferStats {
            records: records.len() as u64,
            bytes: records.values().map(|p| p.len() as u64).sum(),
            next_seq: *self.next_seq.lock().unwrap(),
            epoch: self.epoch,
            ..BufferStats::default()
        }
    }
}

/// Runs no check: the monitors are assigned so their results are kept, and
/// the load is the pre-filled backlog alone (no probe traffic at all).
struct Idle;

impl Executor for Idle {
    fn execute(&self, _spec: Arc<CheckSpec>) -> BoxFuture<'static, CheckResult> {
        Box::pin(std::future::pending())
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// user + system CPU time of a process, in clock ticks (/proc/PID/stat).
fn cpu_ticks(pid: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name may hold spaces: fields count from after its ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

/// Nanoseconds the process's threads spent runnable but waiting for a core
/// (field 2 of /proc/PID/task/*/schedstat): what other load on the machine
/// took from it. Threads that exited are not counted.
fn runqueue_wait_ns(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

fn ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// What agent `agent` (0-based) has buffered: `n` results, monitor by
/// monitor, one check a second per monitor, ending now.
fn backlog(agent: usize, n: u64, target: &str, end_ms: i64) -> Vec<Vec<u8>> {
    let rounds = n.div_ceil(MONITORS as u64) as i64;
    (0..n)
        .map(|j| {
            let m = (j as usize) % MONITORS;
            let at = end_ms - (rounds - (j / MONITORS as u64) as i64) * 1000 - agent as i64;
            pb::CheckResult {
                monitor_id: format!("m{m:02}"),
                status: pb::Status::Up as i32,
                reason: pb::Reason::Ok as i32,
                address: target.to_owned(),
                message: "connected".into(),
                scheduled_at_unix_ms: at,
                started_at_unix_ms: at,
                phases: Some(pb::Phases {
                    connect_us: Some(150 + j % 97),
                    total_us: 200 + j % 97,
                    ..Default::default()
                }),
                ..Default::default()
            }
            .encode_to_vec()
        })
        .collect()
}

#[test]
#[ignore = "a measurement, not a check"]
fn collector_ingest_from_100_agent_streams() {
    let quick = std::env::var_os("PW_BENCH_QUICK").is_some();
    let agents = env_u64("PW_INGEST_AGENTS").unwrap_or(100) as usize;
    let per_agent = env_u64("PW_INGEST_PER_AGENT").unwrap_or(if quick { 200 } else { 10_000 });
    let sled = std::env::var("PW_INGEST_BUFFER").is_ok_and(|v| v == "sled");
    let total = agents as u64 * per_agent;
    let started = Instant::now();

    let dir = h::temp_dir();
    // Never contacted: the agents run no checks.
    let target = h::ClosedPort::on("127.0.0.1");
    let target_addr = target.addr.to_string();
    // Every agent enrolls from 127.0.0.1: lift the per-address limit.
    let mut config = String::from("public_probes = false\nenroll_rate_limit = 1000\n");
    for m in 0..MONITORS {
        config.push_str(&format!(
            "[[monitors]]\nname = \"m{m:02}\"\ntarget = \"tcp://{target_addr}\"\ninterval = \"24h\"\nlocations = [\"bench=ingest\"]\n"
        ));
    }
    let mut coll = Collector::serve(dir.path(), &config);
    let data = coll.data.clone();
    let coll_pid = coll.service.pid();

    // One-time tokens through the collector's API, one per agent.
    let api = AdminClient::from_data_dir(&data).expect("the collector's API");
    let joins: Vec<String> = (0..agents)
        .map(|i| {
            api.create_token(&CreateToken {
                name: format!("bench-{i:03}"),
                labels: [("bench".to_owned(), "ingest".to_owned())].into(),
                ttl: None,
                public_region: None,
            })
            .unwrap_or_else(|e| panic!("token {i}: {e}\n{}", coll.service.log()))
            .join
        })
        .collect();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let agent_dirs: Vec<PathBuf> = (0..agents)
        .map(|i| dir.path().join(format!("agent-{i:03}")))
        .collect();
    let identities: Vec<AgentIdentity> = rt.block_on(async {
        let mut tasks = Vec::new();
        for (join, d) in joins.iter().zip(&agent_dirs) {
            let join = JoinString::parse(join).expect("a join string");
            let d = d.clone();
            tasks.push(tokio::spawn(async move {
                let opts = EnrollOptions {
                    hostname: Some("bench".into()),
                    ..EnrollOptions::default()
                };
                enroll(&join, &d, &opts).await
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap().expect("enroll"));
        }
        out
    });
    let enrolled = started.elapsed();

    // The backlogs, stamped over the last minutes (inside the retention).
    let fill = Instant::now();
    let end_ms = now_ms();
    let buffers: Vec<Arc<dyn ResultBuffer>> = agent_dirs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let b: Arc<dyn ResultBuffer> = if sled {
                Arc::new(SledBuffer::open(&d.join("buffer"), 4 * DEFAULT_MAX_BYTES).unwrap())
            } else {
                Arc::new(MemBuffer::new(1 + i as u64))
            };
            for chunk in backlog(i, per_agent, &target_addr, end_ms).chunks(1000) {
                b.append(chunk).unwrap();
            }
            b
        })
        .collect();
    let fill = fill.elapsed();
    let epochs: Vec<u64> = buffers.iter().map(|b| b.stats().epoch).collect();

    let tps = ticks_per_second();
    let coll_pid_s = coll_pid.to_string();
    let (coll_cpu0, self_cpu0) = (cpu_ticks(&coll_pid_s), cpu_ticks("self"));
    let coll_rss0 = status_kib(coll_pid, "VmRSS:");
    let coll_wait0 = runqueue_wait_ns(coll_pid);
    let start = Instant::now();
    let (took, peak_rss_seen) = rt.block_on(async {
        let mut links = Vec::new();
        for (id, buffer) in identities.iter().zip(&buffers) {
            let identity = LinkIdentity {
                collector: id.collector_addr().to_owned(),
                server_name: "127.0.0.1".into(),
                cert_pem: id.cert_pem().to_owned(),
                key_pem: id.key_pem().to_owned(),
                ca_pem: id.ca_pem().to_owned(),
            };
            let config = LinkConfig {
                shutdown_grace: Duration::from_millis(200),
                ..LinkConfig::default()
            };
            let link = Link::new(identity, Arc::clone(buffer), config);
            let status = link.status();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(link.run(Idle, async {
                let _ = stopped.await;
            }));
            links.push((status, stop, task));
        }
        let mut peak = 0;
        let deadline = Instant::now() + Duration::from_secs(if quick { 60 } else { 600 });
        loop {
            peak = peak.max(status_kib(coll_pid, "VmRSS:"));
            let done = links
                .iter()
                .filter(|(s, _, _)| s.borrow().acked_through >= per_agent)
                .count();
            if done == links.len() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "only {done} of {} agents were acked through {per_agent}: {:?}\n{}",
                links.len(),
                links
                    .iter()
                    .map(|(s, _, _)| s.borrow().clone())
                    .find(|s| s.acked_through < per_agent),
                coll.service.log()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let took = start.elapsed();
        for (_, stop, task) in links {
            let _ = stop.send(());
            let ended = tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("the link stops within 10 s")
                .unwrap();
            assert!(ended.is_ok(), "a link failed: {ended:?}");
        }
        (took, peak)
    });
    let coll_cpu = (cpu_ticks(&coll_pid_s) - coll_cpu0) as f64 / tps;
    let self_cpu = (cpu_ticks("self") - self_cpu0) as f64 / tps;
    let coll_hwm = status_kib(coll_pid, "VmHWM:");
    let coll_wait = runqueue_wait_ns(coll_pid).saturating_sub(coll_wait0) as f64 / 1e9;

    // Stop the collector (SIGTERM: its clean shutdown) and count what its
    // store holds.
    coll.stop(Duration::from_secs(30));
    let store = RedbStore::open(&data.join("store"), StoreConfig::default()).unwrap();
    let stored = store.count_results().unwrap();
    for (id, epoch) in identities.iter().zip(&epochs) {
        let wm = store.watermark(id.agent_id()).unwrap();
        assert_eq!(
            wm,
            Some((*epoch, per_agent)),
            "agent {}'s watermark",
            id.agent_id()
        );
    }

    let secs = took.as_secs_f64();
    println!(
        "collector ingest: {agents} streams ({} buffers), {total} results in {secs:.2} s = {:.0} results/s durably stored",
        if sled { "sled" } else { "in-memory" },
        total as f64 / secs
    );
    println!(
        "  collector: CPU {:.0}% of one core ({coll_cpu:.2} s, {:.1} us per result), runnable but waiting for a core {coll_wait:.2} s (the machine's other load); RSS {} MiB before, peak {} MiB (VmHWM {} MiB)",
        100.0 * coll_cpu / secs,
        coll_cpu * 1e6 / total as f64,
        coll_rss0 / 1024,
        peak_rss_seen / 1024,
        coll_hwm / 1024
    );
    println!(
        "  load generator (100 real links, mTLS, batches of 500, window 4): CPU {:.0}% of one core ({self_cpu:.2} s)",
        100.0 * self_cpu / secs
    );
    println!(
        "  setup: {agents} agents enrolled in {enrolled:.2?}, buffers filled in {fill:.2?}; store holds {stored} results; total {:.2?}",
        started.elapsed()
    );
    assert_eq!(
        stored, total,
        "the collector stored {stored} results of {total} sent"
    );
}
