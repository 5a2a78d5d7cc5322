//! Prometheus blackbox_exporter (Debian's `prometheus-blackbox-exporter`) as
//! the benchmarks' point of comparison: started on a loopback port of its
//! own with a `tcp_connect` module, and scraped the way Prometheus scrapes
//! it, `GET /probe?module=tcp_connect&target=...`, by many scrapers at once.
//!
//! Only 127.0.0.1 (of the caller's network namespace) is contacted; every
//! loop is bounded in count and time.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian installs it; `deploy/install-bench-deps.sh` installs it.
pub const BINARY: &str = "/usr/bin/prometheus-blackbox-exporter";

/// Upper bound on the scrapes of one scraper, whatever the clock says.
const MAX_SCRAPES: u64 = 1_000_000;

pub struct Exporter {
    child: Child,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Exporter {
    /// Is the exporter installed?
    pub fn available() -> bool {
        std::path::Path::new(BINARY).exists()
    }

    /// Starts the exporter with `GOMAXPROCS=procs` (1: Go code runs on one
    /// core at a time, like the engine's current_thread runtime), on a free
    /// loopback port. `wrap` is the command prefix to run it under, e.g.
    /// `["ip", "netns", "exec", NS]` (empty: run it directly). `port` is the
    /// port to listen on (0: a free one; inside a namespace pick one there).
    pub fn start(procs: u32, wrap: &[&str], port: u16) -> Exporter {
        let dir = tempfile::tempdir().expect("a temp dir");
        let config = dir.path().join("blackbox.yml");
        std::fs::write(
            &config,
            "modules:\n  tcp_connect:\n    prober: tcp\n    timeout: 5s\n    tcp:\n      preferred_ip_protocol: ip4\n",
        )
        .expect("write blackbox.yml");
        let port = if port == 0 {
            TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port()
        } else {
            port
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut cmd = match wrap.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(BINARY);
                c
            }
            None => Command::new(BINARY),
        };
        let mut child = cmd
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=error")
            .env("GOMAXPROCS", procs.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start prometheus-blackbox-exporter");
        // Keeps its stderr drained (and shows it if it says anything).
        if let Some(err) = child.stderr.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    eprintln!("blackbox_exporter: {line}");
                }
            });
        }
        Exporter {
            child,
            addr,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (at most 10 s) until it answers `/metrics`. Call it where its
    /// loopback is reachable (inside its namespace, for one started in one).
    pub fn wait_ready(&self) {
        let agent = agent();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if agent
                .get(&format!("http://{}/metrics", self.addr))
                .call()
                .is_ok_and(|r| r.status() == 200)
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "blackbox_exporter did not answer on {} within 10 s",
            self.addr
        );
    }

    /// One scrape of `target`: probe_success and probe_duration_seconds.
    pub fn probe(&self, agent: &ureq::Agent, target: SocketAddr) -> Result<Duration, String> {
        let url = format!(
            "http://{}/probe?module=tcp_connect&target={target}",
            self.addr
        );
        let mut resp = agent.get(&url).call().map_err(|e| e.to_string())?;
        let body = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| e.to_string())?;
        let metric = |name: &str| {
            body.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .and_then(|v| v.trim().parse::<f64>().ok())
        };
        match metric("probe_success") {
            Some(1.0) => {}
            other => return Err(format!("probe_success {other:?}")),
        }
        metric("probe_duration_seconds")
            .map(Duration::from_secs_f64)
            .ok_or_else(|| "no probe_duration_seconds".to_owned())
    }

    /// `scrapers` threads scrape `target` back to back for `dur`.
    /// Returns (successful scrapes, failures, elapsed, exporter CPU seconds).
    pub fn throughput(&self, target: SocketAddr, scrapers: u64, dur: Duration) -> Scrapes {
        let cpu0 = process_cpu_seconds(self.pid());
        let start = Instant::now();
        let per = MAX_SCRAPES / scrapers;
        let (ok, failed, first_error) = std::thread::scope(|s| {
            let handles: Vec<_> = (0..scrapers)
                .map(|_| {
                    s.spawn(move || {
                        let agent = agent();
                        let (mut ok, mut failed, mut first_error) = (0u64, 0u64, None);
                        for _ in 0..per {
                            if start.elapsed() >= dur {
                                break;
                            }
                            match self.probe(&agent, target) {
                                Ok(_) => ok += 1,
                                Err(e) => {
                                    failed += 1;
                                    first_error.get_or_insert(e);
                                }
                            }
                        }
                        (ok, failed, first_error)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("scraper thread"))
                .fold((0, 0, None), |(a, b, e), (x, y, f)| (a + x, b + y, e.or(f)))
        });
        let elapsed = start.elapsed();
        Scrapes {
            ok,
            failed,
            first_error,
            elapsed,
            exporter_cpu: process_cpu_seconds(self.pid()) - cpu0,
        }
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Scrapes {
    pub ok: u64,
    pub failed: u64,
    pub first_error: Option<String>,
    pub elapsed: Duration,
    /// CPU time the exporter process used meanwhile, in seconds.
    pub exporter_cpu: f64,
}

impl Scrapes {
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
}

/// A scraper: keep-alive, no proxy, short timeouts.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .proxy(None)
        .build()
        .into()
}

/// User + system CPU seconds a process has used (all its threads).
pub fn process_cpu_seconds(pid: u32) -> f64 {
    stat_cpu_seconds(&format!("/proc/{pid}/stat"))
}

/// User + system CPU seconds the calling thread has used.
pub fn thread_cpu_seconds() -> f64 {
    stat_cpu_seconds("/proc/thread-self/stat")
}

/// utime + stime of a /proc stat file, in seconds (USER_HZ is 100 on Linux).
fn stat_cpu_seconds(path: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(path) else {
        return 0.0;
    };
    // The command name (field 2) may hold spaces: count from after its ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state): utime is field 14, stime field 15.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) as f64 / 100.0
}
