//! The ICMP echo prober for real.
//!
//! In the root namespace (raw sockets; unprivileged ping sockets are off here):
//! 127.0.0.1 and ::1 answer; iptables INPUT rules on dedicated loopback
//! addresses (127.0.77.x, removed by a guard even on panic) drop the request
//! (timeout) or reject it with ICMP host-unreachable / admin-prohibited.
//!
//! Ping sockets and the permission fallback need a different sysctl and fewer
//! capabilities than this process has, so those tests re-run this test binary
//! (`inner_scenario`) inside a fresh network namespace, optionally without
//! CAP_NET_RAW, with the scenario in an environment variable.

use std::net::IpAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use portwatch_agent::check::{CheckSpec, Host, Protocol, Target};
use portwatch_agent::probe::icmp::{IcmpProber, IcmpSockets};
use portwatch_agent::probe::{AllowAll, Engine, Registry};
use portwatch_agent::resolve::Resolver;
use portwatch_agent::result::{CheckResult, Reason, Status};
use portwatch_harness::netns::Netns;

const TIMEOUT: Duration = Duration::from_millis(500);
const SCENARIO_VAR: &str = "PORTWATCH_ICMP_SCENARIO";

async fn ping_with(sockets: IcmpSockets, ip: &str) -> CheckResult {
    let mut registry = Registry::standard();
    registry.register(Arc::new(IcmpProber::with_sockets(sockets)));
    let resolver = Resolver::with_nameserver("127.0.0.1:9".parse().unwrap(), TIMEOUT).unwrap();
    let engine = Engine::new(resolver, registry, Arc::new(AllowAll));
    let ip: IpAddr = ip.parse().unwrap();
    let mut spec = CheckSpec::new(Target {
        protocol: Protocol::Icmp,
        host: Host::Ip(ip),
        port: 0,
    });
    spec.timeout = TIMEOUT;
    spec.validate().unwrap();
    engine.run(&spec).await
}

fn assert_up(r: &CheckResult, ip: &str) {
    assert_eq!(
        (r.status, r.reason),
        (Status::Up, Reason::Ok),
        "{ip}: {r:?}"
    );
    let rtt = r.phases.first_byte.expect("rtt measured");
    assert!(rtt > 0 && rtt < 100_000, "{ip}: rtt {rtt} us on loopback");
    assert_eq!(r.address_display(), ip);
}

/// An iptables rule in the root namespace, deleted on drop (also when the test panics).
struct Rule {
    args: Vec<String>,
}

impl Rule {
    fn insert(chain: &str, spec: &str) -> Rule {
        let args: Vec<String> = spec.split_whitespace().map(str::to_owned).collect();
        // A rule left behind by a killed earlier run would otherwise pile up.
        for _ in 0..10 {
            if !iptables("-D", chain, &args) {
                break;
            }
        }
        assert!(
            iptables("-I", chain, &args),
            "iptables -I {chain} {spec} failed"
        );
        Rule {
            args: [vec![chain.to_owned()], args].concat(),
        }
    }
}

fn iptables(op: &str, chain: &str, args: &[String]) -> bool {
    Command::new("iptables")
        .arg(op)
        .arg(chain)
        .args(args)
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

impl Drop for Rule {
    fn drop(&mut self) {
        let _ = iptables("-D", &self.args[0], &self.args[1..]);
    }
}

#[tokio::test]
async fn loopback_answers_over_raw_sockets() {
    for ip in ["127.0.0.1", "::1"] {
        assert_up(&ping_with(IcmpSockets::Raw, ip).await, ip);
    }
    // The default prober works here whichever socket kind the system allows.
    assert_up(
        &ping_with(IcmpSockets::Auto, "127.0.0.1").await,
        "127.0.0.1",
    );
}

#[tokio::test]
async fn dropped_echo_requests_time_out() {
    let _rule = Rule::insert(
        "INPUT",
        "-d 127.0.77.7 -p icmp --icmp-type echo-request -j DROP",
    );
    let started = Instant::now();
    let r = ping_with(IcmpSockets::Raw, "127.0.77.7").await;
    let took = started.elapsed();
    assert_eq!(
        (r.status, r.reason),
        (Status::Down, Reason::Timeout),
        "{r:?}"
    );
    assert!(
        took >= TIMEOUT && took < TIMEOUT + Duration::from_millis(200),
        "{took:?}"
    );
    assert_eq!(r.phases.first_byte, None);
}

#[tokio::test]
async fn rejected_echo_requests_are_host_unreachable() {
    for (ip, with) in [
        ("127.0.77.8", "icmp-host-unreachable"),
        ("127.0.77.9", "icmp-admin-prohibited"),
    ] {
        let _rule = Rule::insert(
            "INPUT",
            &format!("-d {ip} -p icmp --icmp-type echo-request -j REJECT --reject-with {with}"),
        );
        let started = Instant::now();
        let r = ping_with(IcmpSockets::Raw, ip).await;
        assert_eq!(
            (r.status, r.reason),
            (Status::Down, Reason::HostUnreachable),
            "{with}: {r:?}"
        );
        assert!(
            started.elapsed() < TIMEOUT,
            "the error ends the check before the timeout"
        );
        assert!(r.message.contains("icmp type 3"), "{}", r.message);
    }
}

/// Runs `inner_scenario` from this test binary inside `ns`, without CAP_NET_RAW when `drop_raw`.
fn run_inside(ns: &Netns, scenario: &str, drop_raw: bool) {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = if drop_raw {
        let mut c = ns.command("setpriv");
        c.args(["--bounding-set=-net_raw", "--inh-caps=-net_raw", "--"])
            .arg(&exe);
        c
    } else {
        ns.command(exe.to_str().unwrap())
    };
    cmd.args([
        "inner_scenario",
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ]);
    let out = cmd.env(SCENARIO_VAR, scenario).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "scenario {scenario} failed inside {}:\n{text}",
        ns.name
    );
    assert!(
        text.contains("1 passed"),
        "the inner test did not run:\n{text}"
    );
}

fn allow_ping_sockets(ns: &Netns, allow: bool) {
    // The sysctl is per network namespace; written through /proc so procps is not needed.
    let range = if allow { "0 2147483647" } else { "1 0" };
    let script = format!("echo '{range}' > /proc/sys/net/ipv4/ping_group_range");
    ns.exec("sh", &["-c", &script]);
    let now = ns.exec("cat", &["/proc/sys/net/ipv4/ping_group_range"]);
    assert_eq!(
        now.split_whitespace().collect::<Vec<_>>().join(" "),
        range,
        "the sysctl took"
    );
}

#[test]
fn ping_sockets_work_where_the_sysctl_allows_them() {
    let ns = Netns::new("icmp");
    allow_ping_sockets(&ns, true);
    ns.exec(
        "iptables",
        &[
            "-A",
            "INPUT",
            "-d",
            "127.0.77.9",
            "-p",
            "icmp",
            "-j",
            "REJECT",
            "--reject-with",
            "icmp-admin-prohibited",
        ],
    );
    ns.exec(
        "iptables",
        &[
            "-A",
            "INPUT",
            "-d",
            "127.0.77.8",
            "-p",
            "icmp",
            "-j",
            "REJECT",
            "--reject-with",
            "icmp-host-unreachable",
        ],
    );
    run_inside(&ns, "ping-sockets", false);
    // Without CAP_NET_RAW the default prober still works, through the ping socket.
    run_inside(&ns, "auto-without-raw", true);
}

#[test]
fn no_permission_for_either_socket_says_what_to_grant() {
    let ns = Netns::new("icmp");
    allow_ping_sockets(&ns, false);
    run_inside(&ns, "no-permission", true);
}

/// The half of the namespace tests that runs inside the namespace.
#[tokio::test]
#[ignore = "run by the namespace tests through a re-exec"]
async fn inner_scenario() {
    let scenario = std::env::var(SCENARIO_VAR).expect("only run by the namespace tests");
    match scenario.as_str() {
        "ping-sockets" => {
            for ip in ["127.0.0.1", "::1"] {
                assert_up(&ping_with(IcmpSockets::Ping, ip).await, ip);
            }
            // Admin-prohibited is a hard error: a connected ping socket reports it.
            let r = ping_with(IcmpSockets::Ping, "127.0.77.9").await;
            assert_eq!(
                (r.status, r.reason),
                (Status::Down, Reason::HostUnreachable),
                "{r:?}"
            );
            // Plain host-unreachable is soft: without IP_RECVERR a ping socket never
            // hears of it and the check times out (raw sockets see it; see above).
            let r = ping_with(IcmpSockets::Ping, "127.0.77.8").await;
            assert_eq!(
                (r.status, r.reason),
                (Status::Down, Reason::Timeout),
                "{r:?}"
            );
        }
        "auto-without-raw" => {
            let r = ping_with(IcmpSockets::Raw, "127.0.0.1").await;
            assert_eq!(
                r.reason,
                Reason::Internal,
                "CAP_NET_RAW really is gone: {r:?}"
            );
            for ip in ["127.0.0.1", "::1"] {
                assert_up(&ping_with(IcmpSockets::Auto, ip).await, ip);
            }
        }
        "no-permission" => {
            for ip in ["127.0.0.1", "::1"] {
                let r = ping_with(IcmpSockets::Auto, ip).await;
                assert_eq!(
                    (r.status, r.reason),
                    (Status::Down, Reason::Internal),
                    "{r:?}"
                );
                assert!(
                    r.message.contains("CAP_NET_RAW")
                        && r.message.contains("net.ipv4.ping_group_range"),
                    "{}",
                    r.message
                );
            }
        }
        other => panic!("unknown scenario {other}"),
    }
}
