//! Replay of a large agent backlog with the real binaries, each in its own
//! process as in production: the agent's buffer is filled while it is down,
//! then `portwatch-agent run` drains it into `portwatch-collector serve`.
//! Prints the end-to-end rate and the agent's peak RSS (VmHWM); asserts only
//! that every result arrived. A measurement, not a check:
//!
//! `PORTWATCH_REPLAY_N=1000000 cargo test --release -p portwatch-e2e --test replay -- --ignored --nocapture`
//!
//! Only 127.0.0.1 is contacted.

use std::time::{Duration, Instant};

use portwatch_agent::buffer::{ResultBuffer, SledBuffer};
use portwatch_e2e::pair::{Pair, buffer_dir, usage};
use portwatch_harness as h;
use portwatch_proto::v1 as pb;
use prost::Message;

#[test]
#[ignore = "a measurement, not a check"]
fn replay_a_large_backlog_between_real_processes() {
    let n: u64 = std::env::var("PORTWATCH_REPLAY_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let target = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target_port = target.local_addr().unwrap().port();
    let mut pair = Pair::enrolled(
        &format!(
            "public_probes = false\n[[monitors]]\nname = \"m1\"\ntarget = \"tcp://127.0.0.1:{target_port}\"\ninterval = \"24h\"\nlocations = [\"replayer\"]\n"
        ),
        "replayer",
    );
    let acked_through = |pair: &Pair| pair.agent_info()?["acked_through"].as_u64();

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
        let buffer = SledBuffer::open(&buffer_dir(&pair.agent_dir), 4 << 30).unwrap();
        // Checks 10 ms apart, ending now: inside the raw retention, so
        // every one is stored, not acked as expired.
        let mut at = portwatch_e2e::lab::now_ms() - n as i64 * 10;
        for chunk in 0..n.div_ceil(1000) {
            let k = 1000.min(n - chunk * 1000);
            let payloads: Vec<Vec<u8>> = (0..k)
                .map(|_| {
                    at += 10;
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
    let pid = pair.start_agent(&["--buffer-mib", "4096"]);
    let mut peak = 0;
    let drained = h::poll_until(Duration::from_secs(900), || {
        peak = peak.max(usage(pid).peak_kib);
        acked_through(&pair).is_some_and(|a| a >= n)
    });
    let took = start.elapsed();
    peak = peak.max(usage(pid).peak_kib);
    assert!(drained, "the backlog did not drain");
    let collector_peak = usage(pair.collector.service.pid()).peak_kib;
    drop(pair);
    println!(
        "replayed {n} results between real processes in {took:.2?}: {:.0} results/s (buffer fill {fill:.2?}); agent peak RSS {} MiB, collector peak RSS {} MiB",
        n as f64 / took.as_secs_f64(),
        peak / 1024,
        collector_peak / 1024,
    );
}
