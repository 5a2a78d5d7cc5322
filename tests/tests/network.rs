//! Real network failure modes, produced for real: a private "site" namespace
//! runs Redis on its own address, a "client" namespace joined to it by a veth
//! runs `portwatch-agent check`, and iptables inside the site drops, rejects or
//! slows the handshake. Nothing runs in or leaves through the root namespace.

use std::process::Command;
use std::time::Duration;

use portwatch_harness::netns::{self, Netns};
use portwatch_harness::{self as h, Service};
use serde_json::Value;

const SITE_ADDR: &str = "10.203.0.2";
const CLIENT_ADDR: &str = "10.203.0.1";

struct Lab {
    client: Netns,
    site: Netns,
    port: u16,
    _redis: Service,
    _dir: tempfile::TempDir,
}

impl Lab {
    fn new() -> Lab {
        assert!(
            netns::available(),
            "these tests need root and iproute2 (network namespaces)"
        );
        let dir = h::temp_dir();
        let client = Netns::new("cli");
        let site = Netns::new("site");
        netns::veth(&client, CLIENT_ADDR, &site, SITE_ADDR, 30);
        let port = 6379;
        let mut cmd = site.command(
            h::require_binary("redis-server", "redis-server")
                .to_str()
                .unwrap(),
        );
        cmd.args([
            "--bind",
            SITE_ADDR,
            "--port",
            &port.to_string(),
            "--protected-mode",
            "no",
        ])
        .args([
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
        ])
        .arg(dir.path());
        let mut redis = Service::spawn("redis-site", cmd, dir.path());
        redis.wait_log("Ready to accept connections", Duration::from_secs(10));
        Lab {
            client,
            site,
            port,
            _redis: redis,
            _dir: dir,
        }
    }

    fn target(&self) -> String {
        format!("tcp://{SITE_ADDR}:{}", self.port)
    }

    /// Runs `portwatch-agent check ... --json` inside the client namespace.
    fn check(&self, target: &str, extra: &[&str]) -> (i32, Value) {
        let bin = h::cargo_bin("portwatch-agent");
        let out = Command::new("ip")
            .args(["netns", "exec", &self.client.name])
            .arg(bin)
            .args(["check", target, "--json"])
            .args(extra)
            .output()
            .expect("run portwatch-agent");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let json: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {stdout} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code().unwrap_or(-1), json)
    }

    fn site_iptables(&self, rule: &[&str]) {
        self.site.iptables(rule);
    }
}

fn phase_ms(v: &Value, phase: &str) -> f64 {
    v["phases_us"][phase]
        .as_u64()
        .unwrap_or_else(|| panic!("no {phase} phase in {v}")) as f64
        / 1000.0
}

#[test]
fn baseline_up_then_drop_is_a_timeout_within_the_timeout() {
    let lab = Lab::new();
    let (code, v) = lab.check(&lab.target(), &["--timeout", "1s"]);
    assert_eq!(
        (code, v["status"].as_str(), v["reason"].as_str()),
        (0, Some("up"), Some("ok")),
        "{v}"
    );
    assert_eq!(v["address"], format!("{SITE_ADDR}:{}", lab.port));

    let port = lab.port.to_string();
    lab.site_iptables(&["-A", "INPUT", "-p", "tcp", "--dport", &port, "-j", "DROP"]);
    let (code, v) = lab.check(&lab.target(), &["--timeout", "1s"]);
    assert_eq!((code, v["reason"].as_str()), (2, Some("timeout")), "{v}");
    let total = phase_ms(&v, "total");
    assert!(
        (950.0..1500.0).contains(&total),
        "timeout honoured: total {total} ms"
    );
}

#[test]
fn reject_with_tcp_reset_is_refused_and_icmp_rejects_are_unreachable() {
    let lab = Lab::new();
    let port = lab.port.to_string();
    lab.site_iptables(&[
        "-A",
        "INPUT",
        "-p",
        "tcp",
        "--dport",
        &port,
        "-j",
        "REJECT",
        "--reject-with",
        "tcp-reset",
    ]);
    let (code, v) = lab.check(&lab.target(), &["--timeout", "1s"]);
    assert_eq!((code, v["reason"].as_str()), (2, Some("refused")), "{v}");

    lab.site_iptables(&["-F", "INPUT"]);
    lab.site_iptables(&[
        "-A",
        "INPUT",
        "-p",
        "tcp",
        "--dport",
        &port,
        "-j",
        "REJECT",
        "--reject-with",
        "icmp-host-unreachable",
    ]);
    let (_, v) = lab.check(&lab.target(), &["--timeout", "1s"]);
    assert_eq!(v["reason"].as_str(), Some("host_unreachable"), "{v}");

    lab.site_iptables(&["-F", "INPUT"]);
    lab.site_iptables(&[
        "-A",
        "INPUT",
        "-p",
        "tcp",
        "--dport",
        &port,
        "-j",
        "REJECT",
        "--reject-with",
        "icmp-admin-prohibited",
    ]);
    let (_, v) = lab.check(&lab.target(), &["--timeout", "1s"]);
    assert_eq!(v["reason"].as_str(), Some("host_unreachable"), "{v}");

    lab.site_iptables(&["-F", "INPUT"]);
    let (code, v) = lab.check(&lab.target(), &["--timeout", "1s", "--expect", "redis"]);
    assert_eq!(code, 0, "redis answers again once the rules are gone: {v}");
}

#[test]
fn first_syn_dropped_makes_a_slow_handshake() {
    let lab = Lab::new();
    // Drop every other SYN: each connect loses its first SYN and the kernel's
    // 1 s retransmit sets the handshake time.
    lab.site.rule("-A", &netns::drop_nth_syn(lab.port, 2));
    let (code, v) = lab.check(&lab.target(), &["--timeout", "3s", "--degraded-ms", "500"]);
    assert_eq!(
        (code, v["status"].as_str(), v["reason"].as_str()),
        (1, Some("degraded"), Some("slow")),
        "{v}"
    );
    let connect = phase_ms(&v, "connect");
    assert!(
        (900.0..2000.0).contains(&connect),
        "connect phase shows the retransmit: {connect} ms"
    );

    // The same slow handshake without a threshold is simply up.
    let (code, v) = lab.check(&lab.target(), &["--timeout", "3s"]);
    assert_eq!((code, v["status"].as_str()), (0, Some("up")), "{v}");
    assert!(phase_ms(&v, "connect") >= 900.0, "{v}");
}

#[test]
fn no_route_is_net_unreachable_and_expect_closed_sees_a_filtered_port_as_closed() {
    let lab = Lab::new();
    // The client namespace only has a route to its /30: this address has none,
    // so the kernel refuses to send anything at all.
    let (code, v) = lab.check("tcp://10.204.0.9:80", &["--timeout", "1s"]);
    assert_eq!(
        (code, v["reason"].as_str()),
        (2, Some("net_unreachable")),
        "{v}"
    );

    let port = lab.port.to_string();
    let (code, v) = lab.check(&lab.target(), &["--timeout", "1s", "--expect-closed"]);
    assert_eq!((code, v["reason"].as_str()), (2, Some("exposed")), "{v}");
    lab.site_iptables(&["-A", "INPUT", "-p", "tcp", "--dport", &port, "-j", "DROP"]);
    let (code, v) = lab.check(&lab.target(), &["--timeout", "500ms", "--expect-closed"]);
    assert_eq!(
        (code, v["status"].as_str(), v["reason"].as_str()),
        (0, Some("up"), Some("timeout")),
        "{v}"
    );
}
