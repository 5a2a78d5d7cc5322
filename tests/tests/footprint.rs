//! The agent's footprint with the real binaries: `portwatch-agent run`
//! enrolled with `portwatch-collector serve`, running 1,000 and 10,000 TCP
//! monitors at 30 s and 1 s intervals against a loopback listener (backlog
//! 4096). Prints, per case, the agent's resident memory (now and peak), its
//! CPU as a share of one core over a steady window, the checks it ran, and
//! how late it started them (p50/p99/max, from the agent's own heartbeat),
//! and the collector's CPU and memory for the same window. A measurement,
//! not a check (it asserts only that the checks ran and succeeded):
//!
//! ```sh
//! cargo build --release --workspace --bins
//! cargo test --release -p portwatch-e2e --test footprint -- --ignored --nocapture
//! ```
//!
//! `PW_FOOTPRINT_CASES="1000@30s,10000@1s"` picks cases; `PW_BENCH_QUICK=1`
//! runs 200 monitors at 1 s for a short window. Only 127.0.0.1 is contacted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use portwatch_e2e::pair::{Pair, usage};
use portwatch_harness as h;
use serde_json::Value;

/// A loopback listener with a 4096 backlog whose thread accepts and drops.
struct Listener {
    addr: SocketAddr,
    accepted: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Listener {
    fn start() -> Listener {
        let sock = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .expect("socket");
        sock.set_reuse_address(true).expect("SO_REUSEADDR");
        sock.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .expect("bind");
        sock.listen(4096).expect("listen");
        sock.set_nonblocking(true).expect("non-blocking");
        let addr = sock.local_addr().unwrap().as_socket().unwrap();
        let listener = std::net::TcpListener::from(sock);
        let (accepted, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (a, s) = (Arc::clone(&accepted), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok(_) => {
                        a.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(_) => {}
                }
            }
        });
        Listener {
            addr,
            accepted,
            stop,
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn config(n: usize, interval: &str, target: SocketAddr) -> String {
    let mut c = String::from("public_probes = false\n");
    for i in 0..n {
        c.push_str(&format!(
            "[[monitors]]\nname = \"m{i}\"\ntarget = \"tcp://{target}\"\ninterval = \"{interval}\"\ntimeout = \"500ms\"\nlocations = [\"footprint\"]\n"
        ));
    }
    c
}

/// The agent's health as its last heartbeat said.
fn health(pair: &Pair) -> Option<Value> {
    pair.agent_info()
        .map(|a| a["health"].clone())
        .filter(|h| h.is_object())
}

fn measure(n: usize, interval: Duration, window: Duration) {
    let listener = Listener::start();
    let label = humantime::format_duration(interval).to_string();
    let mut pair = Pair::enrolled(&config(n, &label, listener.addr), "footprint");
    let agent = pair.start_agent(&[]);
    let collector = pair.collector.service.pid();

    // Running every monitor: the heartbeat (every 20 s) says so.
    let ready = h::wait_for(Duration::from_secs(90), || {
        health(&pair).filter(|h| h["monitors"].as_u64() == Some(n as u64))
    });
    assert!(
        ready.is_some(),
        "the agent never said it runs {n} monitors: {:?}",
        pair.agent_info()
    );
    // Let one whole interval pass so every monitor has started its grid.
    std::thread::sleep(interval.min(Duration::from_secs(30)));

    let (a0, c0, k0, t0) = (
        usage(agent),
        usage(collector),
        listener.accepted.load(Ordering::Relaxed),
        Instant::now(),
    );
    std::thread::sleep(window);
    let (a1, c1, k1, secs) = (
        usage(agent),
        usage(collector),
        listener.accepted.load(Ordering::Relaxed),
        t0.elapsed().as_secs_f64(),
    );
    // The next heartbeat covers the whole window.
    let before = health(&pair).and_then(|h| h["checks_started"].as_u64());
    let hb = h::wait_for(Duration::from_secs(30), || {
        health(&pair).filter(|h| h["checks_started"].as_u64() != before)
    })
    .expect("a heartbeat after the window");
    let ms = |key: &str| hb[key].as_u64().unwrap_or(0) as f64 / 1000.0;
    let checks = k1 - k0;
    let expected = n as f64 * secs / interval.as_secs_f64();
    println!(
        "{n} monitors @ {label}: agent RSS {:.1} MiB (peak {:.1} MiB; heap and stacks {:.1} MiB, code {:.1} MiB), CPU {:.1}% of one core; \
         {checks} checks in {secs:.0} s ({:.0}/s, {:.0}% of the {expected:.0} due); lateness p50 {:.3} ms, \
         p99 {:.3} ms, max {:.3} ms; skipped {} (goals: RSS < 20 MB at 10k, p99 < 5 ms) | collector CPU {:.1}%, RSS {:.1} MiB",
        a1.rss_kib as f64 / 1024.0,
        a1.peak_kib as f64 / 1024.0,
        a1.anon_kib as f64 / 1024.0,
        a1.file_kib as f64 / 1024.0,
        100.0 * (a1.cpu_s - a0.cpu_s) / secs,
        checks as f64 / secs,
        100.0 * checks as f64 / expected,
        ms("lateness_p50_us"),
        ms("lateness_p99_us"),
        ms("lateness_max_us"),
        hb["skipped_overlap"].as_u64().unwrap_or(0) + hb["missed"].as_u64().unwrap_or(0),
        100.0 * (c1.cpu_s - c0.cpu_s) / secs,
        c1.rss_kib as f64 / 1024.0,
    );
    assert!(
        checks as f64 > 0.9 * expected,
        "{checks} checks where {expected:.0} were due"
    );
}

#[test]
#[ignore = "a measurement, not a check"]
fn agent_footprint_at_1k_and_10k_monitors() {
    let quick = std::env::var("PW_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let cases = std::env::var("PW_FOOTPRINT_CASES").unwrap_or_else(|_| {
        if quick {
            "200@1s".into()
        } else {
            "1000@30s,1000@1s,10000@30s,10000@1s".into()
        }
    });
    if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
        let load: Vec<&str> = load.split_whitespace().take(3).collect();
        println!("load average: {}", load.join(" "));
    }
    for case in cases.split(',') {
        let (n, interval) = case
            .trim()
            .split_once('@')
            .unwrap_or_else(|| panic!("{case:?} is not like 1000@30s"));
        let n: usize = n.parse().expect("a monitor count");
        let interval = humantime::parse_duration(interval).expect("an interval");
        let window = if quick {
            Duration::from_secs(5)
        } else {
            (interval * 2).max(Duration::from_secs(30))
        };
        measure(n, interval, window);
    }
}
