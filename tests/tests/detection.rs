//! Detection latency (issue 8, item 7), with the real binaries on loopback:
//! a real Redis watched by a really enrolled agent (interval 1 s,
//! consecutive_down 2), the collector's webhook channel pointing at a local
//! receiver. Each trial kills Redis (SIGKILL, at a point of the check
//! schedule that moves by 1/trials of the interval each time) and times the
//! webhook's "opened" event, then restarts Redis and times "resolved". Prints the
//! distribution over the trials and the goal (interval x consecutive_down +
//! 1 s = 3 s); asserts only that every outage was paged once and resolved
//! once. A measurement, not a check:
//!
//! ```sh
//! cargo build --release -p portwatch-collector -p portwatch-agent --bins
//! cargo test --release -p portwatch-e2e --test detection -- --ignored --nocapture
//! ```
//!
//! `PW_DETECTION_TRIALS` changes the number of trials (default 20). The
//! receiver polls for connections every 20 ms when idle, so a figure may carry
//! up to 20 ms of it. Only 127.0.0.1 is contacted.

use std::time::{Duration, Instant};

use portwatch_e2e::lab::{Hooks, webhook_receiver};
use portwatch_e2e::local::{Collector, run_agent};
use portwatch_harness::{self as h, Host};

const GOAL: Duration = Duration::from_secs(3);

/// Waits for the `n`-th (1-based) webhook whose event is `event`.
fn nth_event(hooks: &Hooks, event: &str, n: usize, within: Duration) -> Option<Instant> {
    h::wait_for(within, || {
        hooks
            .all()
            .into_iter()
            .filter(|r| r.json()["event"] == event)
            .nth(n - 1)
            .map(|r| r.at)
    })
}

fn count(hooks: &Hooks, event: &str) -> usize {
    hooks
        .all()
        .iter()
        .filter(|r| r.json()["event"] == event)
        .count()
}

/// min, p50, p90, max of `v` in milliseconds (nearest rank).
fn distribution(v: &[Duration]) -> String {
    let mut ms: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    let rank = |p: f64| ms[((p * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1];
    format!(
        "min {:.0} ms, p50 {:.0} ms, p90 {:.0} ms, max {:.0} ms",
        ms[0],
        rank(0.5),
        rank(0.9),
        ms[ms.len() - 1]
    )
}

#[test]
#[ignore = "a measurement, not a check"]
fn redis_killed_to_webhook_over_trials() {
    let trials: usize = std::env::var("PW_DETECTION_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
        .clamp(1, 200);
    let dir = h::temp_dir();
    let redis_port = h::free_tcp_port();
    let mut redis = h::redis(dir.path(), redis_port);
    let hook_port = h::free_tcp_port();
    let hooks = webhook_receiver(Host::LOOPBACK, hook_port);
    let collector = Collector::serve(
        dir.path(),
        &format!(
            r#"public_probes = false

[[monitors]]
name = "redis-main"
target = "tcp://127.0.0.1:{redis_port}"
preset = "redis"
interval = "1s"
timeout = "500ms"
locations = ["site=bench"]
alert = {{ consecutive_down = 2 }}

[[notifications]]
name = "bench-hook"
kind = "webhook"
url = "http://127.0.0.1:{hook_port}/hook"
secret = "webhook-secret-for-bench-only"
"#
        ),
    );
    let agent_dir = dir.path().join("agent");
    collector.enroll("bench-1", "site=bench", &agent_dir);
    let agent = run_agent(dir.path(), &agent_dir, &[]);
    assert!(
        h::poll_until(Duration::from_secs(30), || collector
            .status()
            .iter()
            .any(|m| m["monitor"] == "redis-main" && m["state"] == "up")),
        "redis never up: {:?}\n{}\n{}",
        collector.status(),
        agent.log(),
        collector.service.log()
    );

    let mut opened = Vec::with_capacity(trials);
    let mut resolved = Vec::with_capacity(trials);
    for trial in 1..=trials {
        // Each trial starts just after a resolve, i.e. just after a check:
        // killing at once would always hit the same point of the agent's
        // 1 s schedule. Spread the kills evenly over it instead.
        std::thread::sleep(Duration::from_millis(
            (trial as u64 - 1) * 1000 / trials as u64,
        ));
        redis.kill();
        let killed = Instant::now();
        let at = nth_event(&hooks, "opened", trial, Duration::from_secs(15)).unwrap_or_else(|| {
            panic!(
                "trial {trial}: no page within 15 s: {:?}\n{}",
                collector.status(),
                collector.service.log()
            )
        });
        opened.push(at - killed);
        redis = h::redis(dir.path(), redis_port);
        let restarted = Instant::now();
        let at =
            nth_event(&hooks, "resolved", trial, Duration::from_secs(15)).unwrap_or_else(|| {
                panic!(
                    "trial {trial}: no all-clear within 15 s: {:?}\n{}",
                    collector.status(),
                    collector.service.log()
                )
            });
        resolved.push(at.saturating_duration_since(restarted));
        println!(
            "trial {trial:>2}: killed -> opened {:>5.0} ms, restarted -> resolved {:>5.0} ms",
            opened[trial - 1].as_secs_f64() * 1000.0,
            resolved[trial - 1].as_secs_f64() * 1000.0
        );
    }
    // Anything late would show up now.
    std::thread::sleep(Duration::from_millis(1500));
    let within = opened.iter().filter(|d| **d <= GOAL).count();
    println!(
        "detection over {trials} trials (interval 1 s, consecutive_down 2): Redis killed -> webhook opened: {}; {within}/{trials} within the goal of {} s (interval x consecutive_down + 1 s)",
        distribution(&opened),
        GOAL.as_secs()
    );
    println!(
        "  Redis restarted (listening) -> webhook resolved: {}",
        distribution(&resolved)
    );
    assert_eq!(count(&hooks, "opened"), trials, "one page per outage");
    assert_eq!(
        count(&hooks, "resolved"),
        trials,
        "one all-clear per outage"
    );
    drop(agent);
}
