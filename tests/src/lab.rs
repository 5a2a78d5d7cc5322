//! A private site and a headquarters, built for one test out of network
//! namespaces and torn down when it ends (also when it fails):
//!
//! ```text
//!   hq (namespace)                            site (namespace)
//!   collector  10.99.0.1:7443 (agents)  <-- agent (outbound only)
//!              127.0.0.1:8080 (API)         services on 10.77.0.10 (its lo):
//!   webhook    127.0.0.1:9000               redis 6379, postgres 5432, ssh 22,
//!   public probe -> 10.77.0.10 (dropped)    dnsmasq 53/udp, chrony 123/udp
//!        up0 10.99.0.1/30 ---- veth ---- dn0 10.99.0.2/30
//! ```
//!
//! iptables in `site` drops every NEW connection that comes in on its uplink:
//! there is no inbound rule, so only the agent inside sees the services. Every
//! address lives inside these two namespaces; nothing here touches the root
//! namespace's network, so no packet can leave the machine. Ports are fixed:
//! each lab has namespaces of its own, so parallel labs never collide.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use portwatch_harness::netns::{self, Netns};
use portwatch_harness::{self as h, Host, Service};
use serde_json::Value;

/// The collector's address in `hq`, the one agents dial.
pub const HQ_ADDR: &str = "10.99.0.1";
/// The site's end of the uplink.
pub const SITE_UPLINK: &str = "10.99.0.2";
/// The address the site's services listen on (on the site's loopback).
pub const SITE_ADDR: &str = "10.77.0.10";
pub const AGENT_PORT: u16 = 7443;
pub const HTTP_PORT: u16 = 8080;
pub const HOOK_PORT: u16 = 9000;
/// The secret the lab's webhook channel signs with.
pub const HOOK_SECRET: &str = "lab-webhook-secret-for-tests-only";
/// The agent's name and its location as the collector names it.
pub const AGENT: &str = "bastion-1";
pub const AGENT_LOC: &str = "agent:bastion-1";

/// Milliseconds since the Unix epoch, the clock results are stamped with.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

/// Both output streams of a command, for failure messages.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// One request the lab's webhook receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("the webhook body is JSON")
    }

    /// Whether the HMAC signature verifies with [`HOOK_SECRET`].
    pub fn signed(&self) -> bool {
        let (Some(ts), Some(sig)) = (
            self.header("x-portwatch-timestamp"),
            self.header("x-portwatch-signature"),
        ) else {
            return false;
        };
        let Some(hex) = sig.strip_prefix("sha256=") else {
            return false;
        };
        let Ok(bytes) = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(hex.get(i..i + 2).unwrap_or("zz"), 16))
            .collect::<Result<Vec<u8>, _>>()
        else {
            return false;
        };
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, HOOK_SECRET.as_bytes());
        let mut signed = format!("{ts}.").into_bytes();
        signed.extend_from_slice(&self.body);
        ring::hmac::verify(&key, &signed, &bytes).is_ok()
    }
}

/// What the webhook receiver has got so far.
#[derive(Clone, Default)]
pub struct Hooks {
    got: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
}

impl Hooks {
    pub fn all(&self) -> Vec<Received> {
        self.got.lock().expect("hooks lock").clone()
    }

    /// Stops the receiver: it closes its listener within 20 ms.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Bodies of the messages about `monitor`, in arrival order.
    pub fn about(&self, monitor: &str) -> Vec<Value> {
        self.all()
            .iter()
            .map(Received::json)
            .filter(|v| v["monitor"] == monitor)
            .collect()
    }

    /// The first message about `monitor` whose event is `event` (opened, resolved...).
    pub fn find(&self, monitor: &str, event: &str) -> Option<Received> {
        self.all()
            .into_iter()
            .find(|r| r.json()["monitor"] == monitor && r.json()["event"] == event)
    }
}

/// An HTTP receiver on `host`:`port` that records every POST and answers
/// 200, until [`Hooks::stop`].
pub fn webhook_receiver(host: Host<'_>, port: u16) -> Hooks {
    let l = host.within(|| TcpListener::bind(host.addr(port)).expect("bind the webhook receiver"));
    l.set_nonblocking(true).expect("a non-blocking listener");
    let hooks = Hooks::default();
    let (sink, stop) = (hooks.got.clone(), hooks.stop.clone());
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let mut conn = match l.accept() {
                Ok((conn, _)) => conn,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                Err(_) => continue,
            };
            let _ = conn.set_nonblocking(false);
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let Ok(read) = conn.try_clone() else { continue };
            let mut r = BufReader::new(read);
            let mut headers = Vec::new();
            let mut line = String::new();
            if r.read_line(&mut line).is_err() {
                continue;
            }
            loop {
                line.clear();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((k, v)) = line.trim_end().split_once(':') {
                    headers.push((k.trim().to_owned(), v.trim().to_owned()));
                }
            }
            let len: usize = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0; len.min(1 << 20)];
            if r.read_exact(&mut body).is_err() {
                continue;
            }
            sink.lock().expect("hooks lock").push(Received {
                at: Instant::now(),
                headers,
                body,
            });
            let _ = conn
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    hooks
}

/// The two namespaces, the collector in one, the agent in the other, the
/// webhook receiver next to the collector.
pub struct Lab {
    // Processes go first (fields drop in order), then the namespaces.
    collector: Option<Service>,
    agent: Option<Service>,
    pub hooks: Hooks,
    pub hq: Netns,
    pub site: Netns,
    pub dir: tempfile::TempDir,
    config: PathBuf,
    /// The agent's join string, once a token was made.
    pub join: Option<String>,
}

impl Lab {
    /// Builds the topology and starts the collector with `config_body`
    /// (TOML; the lab adds its webhook channel, addresses and fast timings).
    pub fn new(config_body: &str) -> Lab {
        assert!(
            netns::available(),
            "the end-to-end lab needs root and iproute2 (network namespaces)"
        );
        let dir = h::temp_dir();
        // PostgreSQL runs as its own user and must reach its folder in here.
        let _ = std::process::Command::new("chmod")
            .arg("755")
            .arg(dir.path())
            .status();
        let hq = Netns::new("hq");
        let site = Netns::new("site");
        netns::veth(&hq, HQ_ADDR, &site, SITE_UPLINK, 30);
        site.ip(&["addr", "add", &format!("{SITE_ADDR}/32"), "dev", "lo"]);
        hq.ip(&["route", "add", "10.77.0.0/24", "via", SITE_UPLINK]);
        // No inbound firewall rule: replies to what the site opened come
        // back, every new connection from outside is dropped.
        site.iptables(&[
            "-A",
            "INPUT",
            "-i",
            "dn0",
            "-m",
            "conntrack",
            "--ctstate",
            "ESTABLISHED,RELATED",
            "-j",
            "ACCEPT",
        ]);
        site.iptables(&["-A", "INPUT", "-i", "dn0", "-j", "DROP"]);
        let hooks = webhook_receiver(Host::inside(&hq, "127.0.0.1"), HOOK_PORT);
        let config = dir.path().join("collector.toml");
        std::fs::write(
            &config,
            format!(
                r#"agent_addr = "{HQ_ADDR}:{AGENT_PORT}"
http_addr = "127.0.0.1:{HTTP_PORT}"
public_region = "hq"
allow_private_targets = true

{config_body}

[[notifications]]
name = "lab-hook"
kind = "webhook"
url = "http://127.0.0.1:{HOOK_PORT}/hook"
secret = "{HOOK_SECRET}"
"#
            ),
        )
        .expect("write collector.toml");
        let mut lab = Lab {
            collector: None,
            agent: None,
            hooks,
            hq,
            site,
            dir,
            config,
            join: None,
        };
        lab.start_collector();
        lab
    }

    /// Where the site's services listen.
    pub fn site_host(&self) -> Host<'_> {
        Host::inside(&self.site, SITE_ADDR)
    }

    /// Redis on the site's address, port 6379.
    pub fn redis(&self) -> Service {
        h::redis_on(self.site_host(), &self.service_dir("redis"), 6379, &[])
    }

    /// PostgreSQL on the site's address, port 5432.
    pub fn postgres(&self) -> Service {
        h::postgres_on(self.site_host(), &self.service_dir("postgres"), 5432, &[])
    }

    /// OpenSSH on the site's address, port 22.
    pub fn sshd(&self) -> Service {
        h::sshd_on(self.site_host(), &self.service_dir("sshd"), 22)
    }

    /// dnsmasq on the site's address, port 53, answering `db.site.test`.
    pub fn dnsmasq(&self) -> Service {
        h::dnsmasq_on(
            self.site_host(),
            &self.service_dir("dnsmasq"),
            53,
            &[&format!("--host-record=db.site.test,{SITE_ADDR}")],
        )
    }

    /// chrony serving NTP on the site's address, port 123.
    pub fn chrony(&self) -> Service {
        h::chrony_on(self.site_host(), &self.service_dir("chrony"), 123)
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("collector")
    }

    pub fn agent_dir(&self) -> PathBuf {
        self.dir.path().join("agent")
    }

    /// A folder for a service's files.
    pub fn service_dir(&self, name: &str) -> PathBuf {
        let d = self.dir.path().join(name);
        std::fs::create_dir_all(&d).expect("create a service dir");
        d
    }

    /// `portwatch-collector serve` in `hq`, once its API answers.
    pub fn start_collector(&mut self) {
        assert!(self.collector.is_none(), "the collector is running");
        let data = self.data();
        let _ = std::fs::remove_file(data.join("collector.json"));
        let mut cmd = self.hq.command(h::cargo_bin("portwatch-collector"));
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(&data)
            .arg("--config")
            .arg(&self.config);
        let mut c = Service::spawn("collector", cmd, self.dir.path());
        c.wait_tcp_on(
            Host::inside(&self.hq, "127.0.0.1"),
            ([127, 0, 0, 1], HTTP_PORT).into(),
            Duration::from_secs(30),
        );
        assert!(
            h::poll_until(Duration::from_secs(10), || data
                .join("collector.json")
                .exists()),
            "the collector wrote no collector.json:\n{}",
            c.log()
        );
        self.collector = Some(c);
    }

    /// kill -9 the collector.
    pub fn kill_collector(&mut self) {
        self.collector
            .take()
            .expect("the collector is running")
            .kill();
    }

    pub fn collector_log(&self) -> String {
        self.collector
            .as_ref()
            .map(Service::log)
            .unwrap_or_default()
    }

    pub fn agent_log(&self) -> String {
        self.agent.as_ref().map(Service::log).unwrap_or_default()
    }

    /// Both logs, for failure messages.
    pub fn logs(&self) -> String {
        format!(
            "--- collector:\n{}\n--- agent:\n{}",
            tail(&self.collector_log()),
            tail(&self.agent_log())
        )
    }

    /// `portwatch-collector ARGS --data-dir <lab>` run inside `hq`.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = self.hq.command(h::cargo_bin("portwatch-collector"));
        cmd.args(args).arg("--data-dir").arg(self.data());
        cmd.output().expect("run portwatch-collector")
    }

    /// [`Lab::cli`] with `--json`, parsed; panics if it fails.
    pub fn cli_json(&self, args: &[&str]) -> Value {
        let mut full = args.to_vec();
        full.push("--json");
        let o = self.cli(&full);
        assert!(o.status.success(), "{args:?}: {}", text(&o));
        serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {}", text(&o)))
    }

    /// `portwatch-agent ARGS` run inside `site`.
    pub fn agent_cli(&self, args: &[&str]) -> Output {
        self.site
            .command(h::cargo_bin("portwatch-agent"))
            .args(args)
            .output()
            .expect("run portwatch-agent")
    }

    /// A one-time token for [`AGENT`] (labels `site=lab`), then
    /// `portwatch-agent enroll` inside `site`.
    pub fn enroll(&mut self) {
        let o = self.cli(&["token", "create", "--name", AGENT, "--labels", "site=lab"]);
        assert!(o.status.success(), "{}", text(&o));
        let join = String::from_utf8_lossy(&o.stdout)
            .lines()
            .last()
            .expect("a join string")
            .to_owned();
        let a = self.agent_dir();
        let o = self.agent_cli(&[
            "enroll",
            &join,
            "--data-dir",
            a.to_str().expect("utf-8 path"),
        ]);
        assert!(o.status.success(), "enroll: {}\n{}", text(&o), self.logs());
        self.join = Some(join);
    }

    /// `portwatch-agent run` inside `site`.
    pub fn start_agent(&mut self) {
        assert!(self.agent.is_none(), "the agent is running");
        let mut cmd = self.site.command(h::cargo_bin("portwatch-agent"));
        cmd.arg("run").arg("--data-dir").arg(self.agent_dir());
        self.agent = Some(Service::spawn("agent", cmd, self.dir.path()));
    }

    /// kill -9 the agent.
    pub fn kill_agent(&mut self) {
        self.agent.take().expect("the agent is running").kill();
    }

    /// Panics with the logs if the agent or the collector exited.
    pub fn assert_running(&mut self) {
        if let Some(a) = self.agent.as_mut() {
            a.assert_running();
        }
        if let Some(c) = self.collector.as_mut() {
            c.assert_running();
        }
    }

    /// Whether the agent process has exited.
    pub fn agent_exited(&mut self) -> bool {
        self.agent.as_mut().is_none_or(Service::exited)
    }

    /// Every monitor's state now (`status --json`).
    pub fn status(&self) -> Vec<Value> {
        as_vec(self.cli_json(&["status"]))
    }

    /// One monitor's status entry.
    pub fn monitor(&self, name: &str) -> Option<Value> {
        self.status().into_iter().find(|m| m["monitor"] == name)
    }

    /// The state of `monitor` at `location`, as the status shows it.
    pub fn location_state(&self, monitor: &str, location: &str) -> Option<String> {
        let m = self.monitor(monitor)?;
        m["locations"]
            .as_array()?
            .iter()
            .find(|l| l["location"] == location)
            .and_then(|l| l["state"].as_str().map(str::to_owned))
    }

    /// Waits until `monitor` is in `state`; panics saying what was awaited.
    pub fn wait_state(&self, monitor: &str, state: &str, within: Duration) {
        let ok = h::poll_until(within, || {
            self.monitor(monitor).is_some_and(|m| m["state"] == state)
        });
        assert!(
            ok,
            "{monitor} was not {state} within {within:?}: {:?}\n{}",
            self.monitor(monitor),
            self.logs()
        );
    }

    /// Up to 10,000 newest results of `monitor` (at `location` if given), oldest first.
    pub fn results(&self, monitor: &str, location: Option<&str>) -> Vec<Value> {
        let mut args = vec!["results", "--monitor", monitor, "--limit", "10000"];
        if let Some(l) = location {
            args.extend(["--location", l]);
        }
        let mut v = as_vec(self.cli_json(&args));
        v.sort_by_key(|r| (r["scheduled_at_unix_ms"].as_i64(), r["seq"].as_u64()));
        v
    }

    /// Incidents, newest first (of `monitor` if given).
    pub fn incidents(&self, monitor: Option<&str>) -> Vec<Value> {
        let mut args = vec!["incidents", "--limit", "500"];
        if let Some(m) = monitor {
            args.extend(["--monitor", m]);
        }
        as_vec(self.cli_json(&args))
    }

    /// Drops the site's packets towards the collector (the agent's only way out).
    pub fn cut_link(&self) {
        self.site
            .iptables(&["-I", "OUTPUT", "-d", HQ_ADDR, "-j", "DROP"]);
    }

    pub fn heal_link(&self) {
        self.site
            .iptables(&["-D", "OUTPUT", "-d", HQ_ADDR, "-j", "DROP"]);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Its socket would keep the hq namespace alive after it is deleted.
        self.hooks.stop();
    }
}

fn as_vec(v: Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a,
        other => panic!("expected a JSON array, got {other}"),
    }
}

/// The last 60 lines of a log.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}
