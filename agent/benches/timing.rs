//! Timing truth: how exactly the engine's reported TCP connect phase matches
//! the handshake on the wire, side by side with blackbox_exporter's
//! probe_duration_seconds, in one run.
//!
//! The truth is a packet capture (tshark on the loopback of a network
//! namespace this bench makes): from the client's first SYN to the server's
//! SYN-ACK. Two cases: a plain loopback handshake (tens of microseconds) and
//! one made slow for real: iptables drops each connection's first SYN, so
//! the kernel's 1 s SYN retransmit sets the handshake time (this kernel has
//! no tc netem). Checks run one at a time, so the n-th check of a phase is
//! the n-th handshake of the capture.
//!
//! `cargo bench -p portwatch-agent --bench timing` (root, iproute2,
//! iptables, tshark; `deploy/install-bench-deps.sh`). `PW_BENCH_QUICK=1`:
//! fewer checks. Prints figures; asserts nothing timed.
//!
//! Traffic stays inside the bench's own namespace; every loop is bounded.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use portwatch_agent::check::CheckSpec;
use portwatch_agent::probe::Engine;
use portwatch_agent::resolve::Resolver;
use portwatch_agent::result::Reason;
use portwatch_harness::netns::{self, Netns};

// Shared with the engine bench; each uses part of it.
#[allow(dead_code)]
#[path = "common/blackbox.rs"]
mod blackbox;

/// The listener's port inside the namespace.
const PORT: u16 = 7000;
/// blackbox_exporter's port inside the namespace.
const EXPORTER_PORT: u16 = 9115;

fn main() {
    let quick = std::env::var("PW_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let (plain_n, slow_n) = if quick { (20, 3) } else { (300, 30) };
    println!(
        "portwatch timing-truth benchmark{}",
        if quick { " (quick mode)" } else { "" }
    );
    if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
        let load: Vec<&str> = load.split_whitespace().take(3).collect();
        println!("load average: {}", load.join(" "));
    }
    for tool in ["ip", "iptables", "tshark"] {
        if which(tool).is_none() {
            println!("{tool} not found: skipped (deploy/install-bench-deps.sh installs it)");
            return;
        }
    }
    if !portwatch_harness::netns::available() {
        println!("cannot create network namespaces (needs root): skipped");
        return;
    }

    let ns = Netns::new("timing");
    let target = SocketAddr::from(([127, 0, 0, 1], PORT));
    let listener = ns.within(|| {
        let sock = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .expect("socket");
        sock.set_reuse_address(true).expect("SO_REUSEADDR");
        sock.bind(&target.into()).expect("bind in the namespace");
        sock.listen(4096).expect("listen");
        std::net::TcpListener::from(sock)
    });
    // Accepts and drops until the bench ends (the process exit ends it).
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            drop(conn);
        }
    });
    let exporter = blackbox::Exporter::available()
        .then(|| blackbox::Exporter::start(1, &["ip", "netns", "exec", &ns.name], EXPORTER_PORT));
    if let Some(e) = &exporter {
        ns.within(|| e.wait_ready());
    } else {
        println!("blackbox_exporter not installed: portwatch only");
    }
    let capture = Capture::start(&ns);

    for (case, n, slow) in [
        ("plain loopback handshake", plain_n, false),
        ("first SYN dropped (1 s retransmit)", slow_n, true),
    ] {
        if slow {
            ns.rule("-A", &netns::drop_nth_syn(PORT, 2));
        }
        println!("\n{case}: {n} checks each, one at a time");
        let engine_says = ns.within(|| portwatch_checks(target, n));
        let truth = capture.take(n, Duration::from_secs(10));
        report("portwatch connect phase", &engine_says, &truth);
        if let Some(e) = &exporter {
            let says = ns.within(|| blackbox_checks(e, target, n));
            let truth = capture.take(n, Duration::from_secs(10));
            report("blackbox_exporter probe_duration_seconds", &says, &truth);
        }
        if slow {
            ns.iptables(&["-F", "INPUT"]);
        }
    }
    drop(capture);
    drop(exporter);
}

/// `n` engine checks of `target`, one at a time: the reported connect phases.
fn portwatch_checks(target: SocketAddr, n: usize) -> Vec<Duration> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let engine = Engine::with_resolver(
        Resolver::with_nameserver(
            SocketAddr::from(([127, 0, 0, 1], 53)),
            Duration::from_secs(1),
        )
        .expect("resolver"),
    );
    let mut spec = CheckSpec::new(format!("tcp://{target}").parse().expect("target"));
    spec.timeout = Duration::from_secs(5);
    rt.block_on(async {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let r = engine.run(&spec).await;
            assert_eq!(r.reason, Reason::Ok, "{}", r.message);
            out.push(Duration::from_micros(
                r.phases.connect.expect("a connect phase"),
            ));
            // Lets the capture keep this handshake apart from the next.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        out
    })
}

/// `n` scrapes of blackbox_exporter, one at a time: probe_duration_seconds.
fn blackbox_checks(e: &blackbox::Exporter, target: SocketAddr, n: usize) -> Vec<Duration> {
    let agent = blackbox::agent();
    (0..n)
        .map(|_| {
            let d = e.probe(&agent, target).expect("a successful probe");
            std::thread::sleep(Duration::from_millis(5));
            d
        })
        .collect()
}

/// Reported minus true, per check: p50/p99/max of the absolute error.
fn report(label: &str, says: &[Duration], truth: &[Duration]) {
    if says.len() != truth.len() {
        println!(
            "  {label}: {} checks but {} handshakes captured: not comparable",
            says.len(),
            truth.len()
        );
        return;
    }
    let mut errors: Vec<f64> = says
        .iter()
        .zip(truth)
        .map(|(s, t)| s.as_secs_f64() * 1e3 - t.as_secs_f64() * 1e3)
        .collect();
    let mean_truth =
        truth.iter().map(Duration::as_secs_f64).sum::<f64>() * 1e3 / truth.len() as f64;
    let mean_err = errors.iter().sum::<f64>() / errors.len() as f64;
    errors.sort_by(|a, b| a.abs().total_cmp(&b.abs()));
    let abs = |q: f64| {
        let i = ((errors.len() as f64 * q).ceil() as usize).clamp(1, errors.len()) - 1;
        errors[i].abs()
    };
    println!(
        "  {label}: true handshake {mean_truth:.3} ms on average; |reported - true| p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms; mean signed error {mean_err:+.3} ms (goal p99 < 1 ms)",
        abs(0.5),
        abs(0.99),
        abs(1.0)
    );
}

/// tshark on the namespace's loopback, reporting each handshake on `PORT`
/// (first SYN to SYN-ACK) in the order the handshakes began.
struct Capture {
    child: Child,
    handshakes: mpsc::Receiver<Duration>,
}

impl Capture {
    fn start(ns: &Netns) -> Capture {
        let mut child = ns
            .command("tshark")
            .args([
                "-i",
                "lo",
                "-n",
                "-l",
                "-f",
                &format!("tcp port {PORT} and tcp[tcpflags] & tcp-syn != 0"),
                "-T",
                "fields",
                "-e",
                "frame.time_epoch",
                "-e",
                "tcp.srcport",
                "-e",
                "tcp.dstport",
                "-e",
                "tcp.flags.ack",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tshark");
        let (ready_tx, ready_rx) = mpsc::channel();
        let stderr = child.stderr.take().expect("tshark stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("Capturing on") {
                    let _ = ready_tx.send(());
                } else if !line.contains("Running as user") && !line.contains("[Main MESSAGE]") {
                    eprintln!("tshark: {line}");
                }
            }
        });
        let (tx, handshakes) = mpsc::channel();
        let stdout = child.stdout.take().expect("tshark stdout");
        std::thread::spawn(move || {
            // Client port -> time of its first SYN.
            let mut syn_at: HashMap<u16, f64> = HashMap::new();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let f: Vec<&str> = line.split('\t').collect();
                let [at, src, dst, ack] = f[..] else { continue };
                let (Ok(at), Ok(src), Ok(dst)) =
                    (at.parse::<f64>(), src.parse::<u16>(), dst.parse::<u16>())
                else {
                    continue;
                };
                let is_ack = ack == "1" || ack == "True";
                if !is_ack && dst == PORT {
                    syn_at.entry(src).or_insert(at);
                } else if is_ack
                    && src == PORT
                    && let Some(first) = syn_at.remove(&dst)
                {
                    let _ = tx.send(Duration::from_secs_f64((at - first).max(0.0)));
                }
            }
        });
        // tshark takes a moment to start capturing.
        ready_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("tshark started capturing within 20 s");
        std::thread::sleep(Duration::from_millis(500));
        Capture { child, handshakes }
    }

    /// The next `n` handshakes, waiting at most `within` for stragglers.
    fn take(&self, n: usize, within: Duration) -> Vec<Duration> {
        let deadline = Instant::now() + within;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.handshakes.recv_timeout(left) {
                Ok(d) => out.push(d),
                Err(_) => break,
            }
        }
        out
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn which(tool: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|d| std::path::Path::new(d).join(tool))
        .find(|p| p.exists())
}
