//! Replay of a large agent backlog with the real binaries, each in its own
//! process as in production: the agent's buffer is filled while it is down,
//! then `portwatch-agent run` drains it into `portwatch-collector serve`.
//! Prints the end-to-end rate and the agent's peak RSS (VmHWM); asserts only
//! that every result arrived. A measurement, not a check:
//!
//! `PORTWATCH_REPLAY_N=1000000 cargo test --release -p portwatch-e2e --test replay -- --ignored --nocapture`
//!
//! Only 127.0.0.1 is contacted.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use portwatch_agent::buffer::{ResultBuffer, SledBuffer};
use portwatch_e2e::local::Collector;
use portwatch_harness::{self as h, Service};
use portwatch_proto::v1 as pb;
use prost::Message;

fn collector(args: &[&str]) -> Output {
    Command::new(h::cargo_bin("portwatch-collector"))
        .args(args)
        .output()
        .expect("run portwatch-collector")
}

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn acked_through(data: &Path) -> Option<u64> {
    let o = collector(&["agents", "--data-dir", data.to_str()?, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
    v.as_array()?.first()?["acked_through"].as_u64()
}

#[test]
#[ignore = "a measurement, not a check"]
fn replay_a_large_backlog_between_real_processes() {
    let n: u64 = std::env::var("PORTWATCH_REPLAY_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let dir = h::temp_dir();
    let agent_dir = dir.path().join("agent");
    let target = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target_port = target.local_addr().unwrap().port();
    let coll = Collector::serve(
        dir.path(),
        &format!(
            "public_probes = false\n[[monitors]]\nname = \"m1\"\ntarget = \"tcp://127.0.0.1:{target_port}\"\ninterval = \"24h\"\nlocations = [\"replayer\"]\n"
        ),
    );
    let data = coll.data.clone();
    coll.enroll("replayer", "role=replay", &agent_dir);

    // The backlog an agent builds while the collector is unreachable.
    let template = pb::CheckResult {
        monitor_id: "m1".into(),
        status: pb::Status::Up as i32,
        reason: pb::Reason::Ok as i32,
        address: format!("127.0.0.1:{target_port}"),
        message: "connected".into(),
        phases: Some(pb::Phases {
            connect_us: Some(180),
            total_us: 200,
            ..Default::default()
        }),
        ..Default::default()
    };
    let fill = Instant::now();
    {
        let buffer = SledBuffer::open(&agent_dir.join("buffer"), 4 << 30).unwrap();
        let mut at = 1_763_800_000_000i64;
        for chunk in 0..n.div_ceil(1000) {
            let k = 1000.min(n - chunk * 1000);
            let payloads: Vec<Vec<u8>> = (0..k)
                .map(|_| {
                    at += 1000;
                    pb::CheckResult {
                        scheduled_at_unix_ms: at,
                        started_at_unix_ms: at,
                        ..template.clone()
                    }
                    .encode_to_vec()
                })
                .collect();
            buffer.append(&payloads).unwrap();
        }
    }
    let fill = fill.elapsed();

    let start = Instant::now();
    let mut cmd = Command::new(h::cargo_bin("portwatch-agent"));
    cmd.arg("run")
        .arg("--data-dir")
        .arg(&agent_dir)
        .args(["--buffer-mib", "4096"]);
    let agent = Service::spawn("agent", cmd, dir.path());
    let pid = agent.pid();
    let mut peak = 0;
    let drained = h::poll_until(Duration::from_secs(900), || {
        peak = peak.max(vm_hwm_kib(pid).unwrap_or(0));
        acked_through(&data).is_some_and(|a| a >= n)
    });
    let took = start.elapsed();
    peak = peak.max(vm_hwm_kib(pid).unwrap_or(0));
    assert!(drained, "the backlog did not drain");
    let collector_peak = vm_hwm_kib(coll.service.pid()).unwrap_or(0);
    drop(agent);
    drop(coll);
    println!(
        "replayed {n} results between real processes in {took:.2?}: {:.0} results/s (buffer fill {fill:.2?}); agent peak RSS {} MiB, collector peak RSS {} MiB",
        n as f64 / took.as_secs_f64(),
        peak / 1024,
        collector_peak / 1024,
    );
}
