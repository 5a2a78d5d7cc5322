//! Address policies through the real engine, a real DNS server (dnsmasq) and
//! real listeners on loopback.
//!
//! DNS rebinding: a name answers a public address when it is checked and a
//! private one when it is dialled. The engine defeats it by resolving once,
//! checking every address and dialling only one it checked; here dnsmasq's
//! query log shows the name was asked exactly once and the listener shows
//! nothing connected.
//!
//! NETWORK RULE: only 127.0.0.0/8 and ::1 are ever dialled. The public-looking
//! addresses (1.1.1.1, 8.8.8.8) appear only in dnsmasq's answers for names the
//! engine must refuse; in case the engine ever regressed, the TCP prober in
//! these engines is wrapped in a guard that refuses to dial anything but
//! loopback (and records the attempt, which fails the test).

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use portwatch_agent::check::{CheckSpec, Family, Target};
use portwatch_agent::cli::{Cli, Command as AgentCommand};
use portwatch_agent::probe::tcp::TcpProber;
use portwatch_agent::probe::{
    AddressPolicy, Engine, ProbeCtx, ProbeFuture, Prober, PublicOnly, Registry, Restricted,
};
use portwatch_agent::resolve::Resolver;
use portwatch_agent::result::{CheckResult, Reason, Status};
use portwatch_harness as h;

const TIMEOUT: Duration = Duration::from_millis(800);

/// The real TCP prober, which it only lets dial loopback; it records every
/// address the engine handed it.
#[derive(Default)]
struct LoopbackGuard {
    dialled: Mutex<Vec<SocketAddr>>,
}

impl Prober for LoopbackGuard {
    fn protocol(&self) -> portwatch_agent::check::Protocol {
        portwatch_agent::check::Protocol::Tcp
    }

    fn probe<'a>(&'a self, ctx: ProbeCtx<'a>) -> ProbeFuture<'a> {
        self.dialled.lock().unwrap().push(ctx.addr);
        if ctx.addr.ip().is_loopback() {
            TcpProber.probe(ctx)
        } else {
            Box::pin(async move {
                CheckResult::new(
                    Status::Down,
                    Reason::Internal,
                    format!("test guard: refused to dial {}", ctx.addr),
                )
            })
        }
    }
}

impl LoopbackGuard {
    fn dialled(&self) -> Vec<SocketAddr> {
        self.dialled.lock().unwrap().clone()
    }
}

/// An engine with `policy`, asking only the dnsmasq on `ns_port`, whose TCP
/// prober is the guard.
fn engine(ns_port: u16, policy: impl AddressPolicy + 'static) -> (Engine, Arc<LoopbackGuard>) {
    let ns = SocketAddr::from(([127, 0, 0, 1], ns_port));
    let guard = Arc::new(LoopbackGuard::default());
    let mut registry = Registry::standard();
    registry.register(guard.clone());
    let resolver = Resolver::with_nameserver(ns, TIMEOUT).expect("resolver");
    (Engine::new(resolver, registry, Arc::new(policy)), guard)
}

fn spec(target: &str) -> CheckSpec {
    let mut s = CheckSpec::new(target.parse::<Target>().expect("target"));
    s.timeout = TIMEOUT;
    s.validate().expect("valid spec");
    s
}

/// dnsmasq authoritative for `.example` (a missing type is NODATA, not
/// REFUSED), logging every query it receives.
fn dns(dir: &Path, records: &[&str]) -> (h::Service, u16) {
    let port = h::free_port_both();
    let mut args = vec!["--local=/example/", "--log-queries"];
    args.extend_from_slice(records);
    (h::dnsmasq(dir, port, &args), port)
}

/// A listener on `ip` that tells whether anything connected.
struct Listener {
    inner: TcpListener,
}

impl Listener {
    fn on(ip: &str) -> Listener {
        let inner = TcpListener::bind((ip.parse::<IpAddr>().unwrap(), 0)).expect("bind");
        inner.set_nonblocking(true).unwrap();
        Listener { inner }
    }

    fn addr(&self) -> SocketAddr {
        self.inner.local_addr().unwrap()
    }

    /// Connections accepted within a short wait. A connect the engine made has
    /// completed its handshake before `run` returned, so it is already queued;
    /// the wait only covers scheduling noise.
    fn connections(&self) -> usize {
        let mut n = 0;
        h::poll_until(Duration::from_millis(200), || {
            while self.inner.accept().is_ok() {
                n += 1;
            }
            n > 0
        });
        n
    }
}

/// dnsmasq's log once it holds everything about the queries made so far.
/// dnsmasq handles queries one at a time and logs them in order, but the log
/// reaches the file a little later: a sentinel query sent now is logged after
/// every earlier query and answer, so once it shows, nothing is missing.
async fn settled_log(s: &mut h::Service, ns: u16) -> String {
    let fresh = Resolver::with_nameserver(SocketAddr::from(([127, 0, 0, 1], ns)), TIMEOUT)
        .expect("resolver");
    let _ = fresh.resolve("sentinel.example", Family::V4).await;
    s.wait_log("query[A] sentinel.example from ", Duration::from_secs(5));
    s.log()
}

/// Counts, per query type, the queries for `name` dnsmasq received.
async fn queries(s: &mut h::Service, ns: u16, name: &str) -> Vec<(String, usize)> {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for line in settled_log(s, ns).await.lines() {
        let Some((_, rest)) = line.split_once("query[") else {
            continue;
        };
        let Some((qtype, rest)) = rest.split_once("] ") else {
            continue;
        };
        if rest.starts_with(&format!("{name} from ")) {
            match counts.iter_mut().find(|(t, _)| t == qtype) {
                Some((_, n)) => *n += 1,
                None => counts.push((qtype.to_owned(), 1)),
            }
        }
    }
    counts.sort();
    counts
}

fn assert_blocked(r: &CheckResult, at: SocketAddr) {
    assert_eq!(
        (r.status, r.reason),
        (Status::Down, Reason::BlockedAddress),
        "{r:?}"
    );
    assert_eq!(
        r.address,
        Some(at),
        "the refused address is reported: {r:?}"
    );
}

#[tokio::test]
async fn rebinding_name_is_resolved_once_and_refused_before_any_connect() {
    let dir = h::temp_dir();
    let (mut dnsmasq, ns) = dns(dir.path(), &["--host-record=rebind.example,127.0.0.1"]);
    let listener = Listener::on("127.0.0.1");
    let port = listener.addr().port();
    let (engine, guard) = engine(ns, PublicOnly::new());

    let s = spec(&format!("tcp://rebind.example:{port}"));
    assert_eq!(s.family, Family::Any);
    let r = engine.run(&s).await;

    assert_blocked(&r, listener.addr());
    assert_eq!(
        r.message,
        "127.0.0.1 is in 127.0.0.0/8 (loopback), which public probes never connect to: \
         run this check from an agent inside that network"
    );
    assert!(r.phases.dns.is_some(), "the name was resolved: {r:?}");
    assert_eq!(guard.dialled(), vec![], "the prober never ran");
    assert_eq!(listener.connections(), 0, "nothing connected");
    // Family any: one A and one AAAA query (the resolver asks both in
    // parallel), each exactly once. A second resolution for the connect,
    // which is what rebinding exploits, would show as a second pair.
    assert_eq!(
        queries(&mut dnsmasq, ns, "rebind.example").await,
        vec![("A".to_owned(), 1), ("AAAA".to_owned(), 1)],
        "{}",
        dnsmasq.log()
    );
}

#[tokio::test]
async fn a_name_with_a_public_and_a_loopback_address_is_refused_whole() {
    let dir = h::temp_dir();
    let (mut dnsmasq, ns) = dns(
        dir.path(),
        &[
            // Two A records.
            "--host-record=two.example,1.1.1.1",
            "--host-record=two.example,127.0.0.1",
            // A public-looking A and a loopback AAAA.
            "--host-record=mixed.example,8.8.8.8,::1",
        ],
    );
    let v4 = Listener::on("127.0.0.1");
    let v6 = Listener::on("::1");

    let (engine, guard) = engine(ns, PublicOnly::new());
    // dnsmasq rotates a name's A records from one answer to the next, so over
    // two runs the public-looking address comes first once: an engine that
    // checked only the address it dials would pass it and (try to) dial it.
    for _ in 0..2 {
        let r = engine
            .run(&spec(&format!("tcp://two.example:{}", v4.addr().port())))
            .await;
        assert_blocked(&r, v4.addr());
        assert!(
            r.message
                .starts_with("127.0.0.1 is in 127.0.0.0/8 (loopback)"),
            "{r:?}"
        );
    }
    // Here the order is fixed: the resolver puts IPv4 first.
    let r = engine
        .run(&spec(&format!("tcp://mixed.example:{}", v6.addr().port())))
        .await;
    assert_blocked(&r, v6.addr());
    assert!(
        r.message.starts_with("::1 is in ::1/128 (loopback)"),
        "{r:?}"
    );

    // The answers the engine got, in order: the public address led at least once.
    let log = settled_log(&mut dnsmasq, ns).await;
    let answers: Vec<&str> = log
        .lines()
        .filter_map(|l| l.split_once("config two.example is ").map(|(_, ip)| ip))
        // The AAAA answers are NODATA-IPv6.
        .filter(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok())
        .collect();
    assert_eq!(
        answers.len(),
        4,
        "two answers of two A records each:\n{log}"
    );
    assert!(
        answers.chunks(2).any(|pair| pair[0] == "1.1.1.1"),
        "1.1.1.1 never came first:\n{log}"
    );

    assert_eq!(
        guard.dialled(),
        vec![],
        "no address of either name was dialled"
    );
    assert_eq!(v4.connections() + v6.connections(), 0);
}

#[tokio::test]
async fn allowing_private_connects_to_loopback() {
    let dir = h::temp_dir();
    let (_dnsmasq, ns) = dns(dir.path(), &["--host-record=rebind.example,127.0.0.1"]);
    let listener = Listener::on("127.0.0.1");
    let (engine, guard) = engine(ns, PublicOnly::allowing_private());

    let r = engine
        .run(&spec(&format!(
            "tcp://rebind.example:{}",
            listener.addr().port()
        )))
        .await;

    assert_eq!((r.status, r.reason), (Status::Up, Reason::Ok), "{r:?}");
    assert_eq!(r.address, Some(listener.addr()));
    assert_eq!(guard.dialled(), vec![listener.addr()]);
    // The same listener check that must read 0 above reads 1 here.
    assert_eq!(listener.connections(), 1);
}

#[tokio::test]
async fn restricted_allows_its_port_and_refuses_another() {
    let dir = h::temp_dir();
    let (_dnsmasq, ns) = dns(dir.path(), &[]);
    let listener = Listener::on("127.0.0.1");
    let port = listener.addr().port();
    // Bound but not listening: were it dialled, the check would say refused.
    let closed = h::ClosedPort::on("127.0.0.1");
    let policy = Restricted::parse(Some("127.0.0.1/32"), Some(&port.to_string())).unwrap();
    let (engine, guard) = engine(ns, policy);

    let r = engine.run(&spec(&format!("tcp://127.0.0.1:{port}"))).await;
    assert_eq!((r.status, r.reason), (Status::Up, Reason::Ok), "{r:?}");
    assert_eq!(listener.connections(), 1);

    let r = engine
        .run(&spec(&format!("tcp://127.0.0.1:{}", closed.port())))
        .await;
    assert_blocked(&r, closed.addr);
    assert_eq!(
        r.message,
        format!(
            "127.0.0.1:{} is outside this agent's allowed targets (127.0.0.1/32 ports {port})",
            closed.port()
        )
    );

    // Another loopback address on the allowed port: outside the network.
    let other = SocketAddr::from(([127, 0, 0, 2], port));
    let r = engine.run(&spec(&format!("tcp://{other}"))).await;
    assert_blocked(&r, other);

    // ICMP has no port: the port list does not block it, the network does.
    let r = engine.run(&spec("icmp://127.0.0.1")).await;
    assert_eq!((r.status, r.reason), (Status::Up, Reason::Ok), "{r:?}");
    let r = engine.run(&spec("icmp://127.0.0.2")).await;
    assert_eq!(r.reason, Reason::BlockedAddress, "{r:?}");
    assert_eq!(
        r.message,
        format!("127.0.0.2 is outside this agent's allowed targets (127.0.0.1/32 ports {port})")
    );

    assert_eq!(
        guard.dialled(),
        vec![listener.addr()],
        "only the allowed target was dialled"
    );
}

fn run_args(extra: &[&str]) -> portwatch_agent::cli::RunArgs {
    let mut argv = vec!["portwatch-agent", "run"];
    argv.extend_from_slice(extra);
    match Cli::try_parse_from(argv).expect("parse").command {
        AgentCommand::Run(args) => args,
        other => panic!("not run: {other:?}"),
    }
}

#[test]
fn run_flags_build_the_policy() {
    let at = |s: &str| s.parse::<SocketAddr>().unwrap();
    let all = run_args(&[]).address_policy().unwrap();
    assert_eq!(all.check(at("192.0.2.1:25")), Ok(()));

    let p = run_args(&[
        "--allow-targets",
        "10.0.0.0/8,2001:db8::/32",
        "--allow-ports",
        "22,5000-5999",
    ])
    .address_policy()
    .unwrap();
    assert_eq!(p.check(at("10.9.9.9:5432")), Ok(()));
    assert_eq!(p.check(at("[2001:db8::1]:22")), Ok(()));
    assert_eq!(
        p.check(at("10.9.9.9:80")).unwrap_err(),
        "10.9.9.9:80 is outside this agent's allowed targets (10.0.0.0/8,2001:db8::/32 ports 22,5000-5999)"
    );
    assert!(p.check(at("192.168.0.1:22")).is_err());

    let ports_only = run_args(&["--allow-ports", "443"])
        .address_policy()
        .unwrap();
    assert_eq!(ports_only.check(at("192.168.0.1:443")), Ok(()));
    assert!(ports_only.check(at("192.168.0.1:444")).is_err());
}

#[test]
fn bad_run_flags_exit_64_with_one_line_naming_the_flag() {
    let dir = h::temp_dir();
    for (flag, value, says) in [
        (
            "--allow-targets",
            "10.0.0.1/8",
            "portwatch-agent run: --allow-targets: \"10.0.0.1/8\" is not an IP address or network like \
             10.0.0.0/8 or 2001:db8::/32: 10.0.0.1/8 has bits set after the prefix: did you mean 10.0.0.0/8?",
        ),
        (
            "--allow-ports",
            "22,ssh",
            "portwatch-agent run: --allow-ports: \"ssh\" is not a port or port range like 22 or 5000-5999: \
             \"ssh\" is not a number",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_portwatch-agent"))
            .args(["run", "--data-dir"])
            .arg(dir.path())
            .args([flag, value])
            .output()
            .expect("run portwatch-agent");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{stderr}");
        assert_eq!(stderr.trim_end(), says);
    }
}

/// `run --config FILE` (the package's /etc/portwatch/agent.toml): the file's
/// options apply, a flag given on the command line wins field by field.
#[test]
fn the_config_file_sets_run_options_and_flags_win() {
    let at = |s: &str| s.parse::<SocketAddr>().unwrap();
    let dir = h::temp_dir();
    let file = dir.path().join("agent.toml");
    std::fs::write(
        &file,
        "buffer_mib = 16\nallow_targets = \"10.0.0.0/8\"\nallow_ports = \"22\"\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();

    let s = run_args(&["--config", f]).settings().unwrap();
    assert_eq!(s.buffer_bytes, 16 * 1024 * 1024);
    assert_eq!(s.policy.check(at("10.1.2.3:22")), Ok(()));
    assert!(s.policy.check(at("10.1.2.3:80")).is_err());
    assert!(s.policy.check(at("192.168.0.1:22")).is_err());

    // Flags win, each over its own field only.
    let s = run_args(&["--config", f, "--allow-ports", "80", "--buffer-mib", "2"])
        .settings()
        .unwrap();
    assert_eq!(s.buffer_bytes, 2 * 1024 * 1024);
    assert_eq!(s.policy.check(at("10.1.2.3:80")), Ok(()));
    assert!(s.policy.check(at("10.1.2.3:22")).is_err());
    assert!(s.policy.check(at("192.168.0.1:80")).is_err());

    // No file, no flags: the defaults (every address, 256 MiB).
    let s = run_args(&[]).settings().unwrap();
    assert_eq!(s.buffer_bytes, 256 * 1024 * 1024);
    assert_eq!(s.policy.check(at("192.0.2.1:25")), Ok(()));
}

#[test]
fn a_bad_config_file_exits_64_with_one_line_naming_the_file_and_field() {
    let dir = h::temp_dir();
    let file = dir.path().join("agent.toml");
    let path = file.display().to_string();
    let prefix = format!("portwatch-agent run: {path}: ");
    for (text, says) in [
        (
            "allow_ports = \"22,ssh\"\n",
            "allow_ports: \"ssh\" is not a port or port range like 22 or 5000-5999: \"ssh\" is not a number",
        ),
        (
            "buffer_mib = 0\n",
            "buffer_mib: 0 is not a size in MiB from 1 up",
        ),
        ("buffer_mb = 16\n", "unknown field `buffer_mb`"),
    ] {
        std::fs::write(&file, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_portwatch-agent"))
            .args(["run", "--data-dir"])
            .arg(dir.path())
            .arg("--config")
            .arg(&file)
            .output()
            .expect("run portwatch-agent");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(
            stderr.starts_with(&prefix) && stderr.contains(says),
            "{stderr}\nwanted {prefix}...{says}"
        );
    }
    // A config file that is not there is an error too, not silent defaults.
    let out = Command::new(env!("CARGO_BIN_EXE_portwatch-agent"))
        .args(["run", "--data-dir"])
        .arg(dir.path())
        .args(["--config", "/nonexistent/agent.toml"])
        .output()
        .expect("run portwatch-agent");
    assert_eq!(out.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/nonexistent/agent.toml"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
