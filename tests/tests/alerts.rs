//! The alert a user waits for, with the real binaries: a real Redis watched
//! by a really enrolled agent is killed, and a local webhook receiver gets
//! "TCP Port Unreachable" with reason `refused` within interval x
//! consecutive_down + 1 s, signed with the channel's secret; Redis restarted,
//! it gets "Reachable Again". The same messages reach an SMTP server
//! (Debian's aiosmtpd) by email. Inside a maintenance window the next outage
//! is recorded and shown but not sent, until the window is cancelled.
//!
//! Only 127.0.0.1 is ever contacted.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use portwatch_e2e::lab::{Hooks, webhook_receiver};
use portwatch_harness::{self as h, Service};
use serde_json::Value;

fn collector(args: &[&str]) -> Output {
    Command::new(h::cargo_bin("portwatch-collector"))
        .args(args)
        .output()
        .expect("run portwatch-collector")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A webhook receiver on a free loopback port.
fn receiver() -> (u16, Hooks) {
    let port = h::free_tcp_port();
    (port, webhook_receiver(h::Host::LOOPBACK, port))
}

fn status(data: &Path) -> Vec<Value> {
    let o = collector(&["status", "--data-dir", data.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// `portwatch-collector serve` on the given ports, once its API answers.
fn serve(dir: &Path, data: &Path, config: &Path, agent_port: u16, http_port: u16) -> Service {
    let _ = std::fs::remove_file(data.join("collector.json"));
    let mut cmd = Command::new(h::cargo_bin("portwatch-collector"));
    cmd.arg("serve")
        .arg("--data-dir")
        .arg(data)
        .arg("--config")
        .arg(config)
        .args([
            "--agent-addr",
            &format!("127.0.0.1:{agent_port}"),
            "--http-addr",
            &format!("127.0.0.1:{http_port}"),
        ]);
    let mut coll = Service::spawn("collector", cmd, dir);
    coll.wait_tcp(([127, 0, 0, 1], http_port).into(), Duration::from_secs(20));
    assert!(h::poll_until(Duration::from_secs(10), || data
        .join("collector.json")
        .exists()));
    coll
}

/// A one-time token, `portwatch-agent enroll`, then `portwatch-agent run`.
fn enroll_and_run(dir: &Path, data: &Path) -> Service {
    let d = data.to_str().unwrap();
    let o = collector(&[
        "token",
        "create",
        "--data-dir",
        d,
        "--name",
        "bastion-1",
        "--labels",
        "site=lab",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let join = String::from_utf8_lossy(&o.stdout)
        .lines()
        .last()
        .unwrap()
        .to_owned();
    let agent_dir = dir.join("agent");
    let a = agent_dir.to_str().unwrap();
    let o = Command::new(h::cargo_bin("portwatch-agent"))
        .args(["enroll", &join, "--data-dir", a])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let mut cmd = Command::new(h::cargo_bin("portwatch-agent"));
    cmd.args(["run", "--data-dir", a]);
    Service::spawn("agent", cmd, dir)
}

const SECRET: &str = "webhook-secret-for-tests-only";

#[test]
fn a_killed_redis_pages_the_webhook_and_its_restart_says_reachable_again() {
    let dir = h::temp_dir();
    let data = dir.path().join("collector");
    let d = data.to_str().unwrap().to_owned();
    let redis_port = h::free_tcp_port();
    let mut redis = h::redis(dir.path(), redis_port);
    let (hook_port, hooks) = receiver();
    // Debian's aiosmtpd as the mail relay: prints every message it accepts.
    let smtp_port = h::free_tcp_port();
    let smtp = h::smtp_sink(dir.path(), smtp_port, None);
    let (agent_port, http_port) = (h::free_tcp_port(), h::free_tcp_port());
    let config = dir.path().join("collector.toml");
    std::fs::write(
        &config,
        format!(
            r#"public_probes = false

[[monitors]]
name = "redis-main"
target = "tcp://127.0.0.1:{redis_port}"
preset = "redis"
interval = "1s"
timeout = "500ms"
locations = ["site=lab"]
runbook = "https://wiki.example/redis"

[[notifications]]
name = "ops-hook"
kind = "webhook"
url = "http://127.0.0.1:{hook_port}/hook"
secret = "{SECRET}"

[[notifications]]
name = "ops-mail"
kind = "email"
smtp_host = "127.0.0.1"
smtp_port = {smtp_port}
tls = "none"
from = "portwatch@example.test"
to = ["oncall@example.test"]
"#
        ),
    )
    .unwrap();
    let coll = serve(dir.path(), &data, &config, agent_port, http_port);
    let mut agent = enroll_and_run(dir.path(), &data);
    assert!(
        h::poll_until(Duration::from_secs(30), || status(&data)
            .iter()
            .any(|m| m["monitor"] == "redis-main" && m["state"] == "up")),
        "redis never up: {:?}\n{}\n{}",
        status(&data),
        agent.log(),
        coll.log()
    );

    // Kill Redis: refused from now on.
    redis.kill();
    let killed = Instant::now();
    let down = h::wait_for(Duration::from_secs(15), || {
        hooks
            .all()
            .into_iter()
            .find(|r| r.json()["event"] == "opened")
    })
    .unwrap_or_else(|| panic!("no page: {:?}\n{}", status(&data), coll.log()));
    let took = down.at - killed;
    println!("redis killed -> webhook received in {took:?}");
    assert!(
        took <= Duration::from_secs(3),
        "the page took {took:?}, more than interval x consecutive_down + 1 s"
    );
    let v = down.json();
    assert!(
        v["subject"]
            .as_str()
            .unwrap()
            .starts_with("TCP Port Unreachable"),
        "{v}"
    );
    assert_eq!(v["reason"], "refused", "{v}");
    assert_eq!(v["monitor"], "redis-main", "{v}");
    assert_eq!(v["target"], format!("127.0.0.1:{redis_port}"), "{v}");
    assert_eq!(v["runbook"], "https://wiki.example/redis", "{v}");
    // The signature covers "<timestamp>.<body>" with the channel's secret.
    let ts = down
        .header("x-portwatch-timestamp")
        .expect("timestamp header");
    let sig = down
        .header("x-portwatch-signature")
        .expect("signature header");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
    let mut signed = format!("{ts}.").into_bytes();
    signed.extend_from_slice(&down.body);
    let hex_sig = sig.strip_prefix("sha256=").expect("sha256= prefix");
    let bytes: Vec<u8> = (0..hex_sig.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex_sig[i..i + 2], 16).unwrap())
        .collect();
    ring::hmac::verify(&key, &signed, &bytes).expect("the signature verifies");

    // Restart it: "Reachable Again", once.
    let mut redis = h::redis(dir.path(), redis_port);
    let up = h::wait_for(Duration::from_secs(15), || {
        hooks
            .all()
            .into_iter()
            .find(|r| r.json()["event"] == "resolved")
    })
    .unwrap_or_else(|| panic!("no resolve: {:?}\n{}", status(&data), coll.log()));
    let v = up.json();
    assert!(
        v["subject"]
            .as_str()
            .unwrap()
            .starts_with("TCP Port Reachable Again"),
        "{v}"
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(hooks.all().len(), 2, "one page and one all-clear");

    // The same two messages by email.
    assert!(
        h::poll_until(Duration::from_secs(10), || {
            let log = smtp.log();
            log.contains(&format!(
                "Subject: TCP Port Unreachable: redis-main (127.0.0.1:{redis_port})"
            )) && log.contains(&format!(
                "Subject: TCP Port Reachable Again: redis-main (127.0.0.1:{redis_port})"
            )) && log.contains("Reason:     refused")
        }),
        "{}",
        smtp.log()
    );

    // The incident as the CLI shows it.
    let o = collector(&["incidents", "--data-dir", &d, "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let incidents: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(incidents.len(), 1, "{incidents:?}");
    let i = &incidents[0];
    assert_eq!(i["kind"], "down");
    assert_eq!(i["reason"], "refused");
    assert!(
        i["resolved_ms"].is_i64() && i["notified_resolve_ms"].is_i64(),
        "{i}"
    );
    assert!(
        i["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["state"] == "delivered"),
        "{i}"
    );
    let o = collector(&["status", "--data-dir", &d]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("redis-main"));

    // A maintenance window over Redis: stopped inside it, the incident is
    // recorded and shown, and nobody is paged.
    let o = collector(&[
        "maintenance",
        "add",
        "--data-dir",
        &d,
        "--name",
        "redis-work",
        "--monitors",
        "redis-main",
        "--start",
        "now",
        "--duration",
        "1h",
        "--reason",
        "upgrade",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    redis.kill();
    let held = h::wait_for(Duration::from_secs(15), || {
        let o = collector(&["incidents", "--data-dir", &d, "--open", "--json"]);
        let v: Vec<Value> = serde_json::from_slice(&o.stdout).ok()?;
        v.into_iter().find(|i| i["maintenance"] == "redis-work")
    })
    .unwrap_or_else(|| panic!("no incident inside the window: {}", coll.log()));
    assert!(
        held["held"]
            .as_str()
            .unwrap()
            .contains("maintenance window redis-work"),
        "{held}"
    );
    assert!(
        status(&data)
            .iter()
            .any(|m| m["monitor"] == "redis-main" && m["state"] == "maintenance")
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(hooks.all().len(), 2, "paged inside a maintenance window");
    // The window is cancelled with Redis still down: the page goes out now.
    let o = collector(&["maintenance", "cancel", "--data-dir", &d, "redis-work"]);
    assert!(o.status.success(), "{}", text(&o));
    let cancelled = Instant::now();
    let late = h::wait_for(Duration::from_secs(10), || hooks.all().get(2).cloned())
        .expect("no page once the window was over");
    assert_eq!(late.json()["event"], "opened");
    assert!(late.at - cancelled < Duration::from_secs(3));
    let mut redis = h::redis(dir.path(), redis_port);
    assert!(h::wait_for(Duration::from_secs(15), || hooks.all().get(3).cloned()).is_some());
    redis.assert_running();
    agent.assert_running();
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The collector is down (kill -9) while Redis fails and recovers; the agent
/// keeps checking into its buffer. When the collector is back, the replayed
/// backlog puts the incident where the checks saw it (since and resolved
/// within a check of the real kill and restart), marked as backfilled, and
/// the webhook still hears about it, once each way.
#[test]
fn an_outage_seen_only_in_the_agents_backlog_lands_where_it_happened() {
    let dir = h::temp_dir();
    let data = dir.path().join("collector");
    let d = data.to_str().unwrap().to_owned();
    let redis_port = h::free_tcp_port();
    let mut redis = h::redis(dir.path(), redis_port);
    let (hook_port, hooks) = receiver();
    let (agent_port, http_port) = (h::free_tcp_port(), h::free_tcp_port());
    let config = dir.path().join("collector.toml");
    std::fs::write(
        &config,
        format!(
            r#"public_probes = false

[[monitors]]
name = "redis-main"
target = "tcp://127.0.0.1:{redis_port}"
preset = "redis"
interval = "1s"
timeout = "500ms"
locations = ["site=lab"]

[[notifications]]
name = "ops-hook"
kind = "webhook"
url = "http://127.0.0.1:{hook_port}/hook"
"#
        ),
    )
    .unwrap();
    let mut coll = serve(dir.path(), &data, &config, agent_port, http_port);
    let mut agent = enroll_and_run(dir.path(), &data);
    assert!(
        h::poll_until(Duration::from_secs(30), || status(&data)
            .iter()
            .any(|m| m["monitor"] == "redis-main" && m["state"] == "up")),
        "{}",
        agent.log()
    );
    coll.kill();
    std::thread::sleep(Duration::from_secs(1));
    redis.kill();
    let killed_ms = unix_now() * 1000;
    std::thread::sleep(Duration::from_secs(5));
    let mut redis = h::redis(dir.path(), redis_port);
    let back_ms = unix_now() * 1000;
    std::thread::sleep(Duration::from_secs(2));
    let mut coll = serve(dir.path(), &data, &config, agent_port, http_port);
    let incident = h::wait_for(Duration::from_secs(40), || {
        let o = collector(&["incidents", "--data-dir", &d, "--json"]);
        let v: Vec<Value> = serde_json::from_slice(&o.stdout).ok()?;
        v.into_iter().find(|i| i["resolved_ms"].is_i64())
    })
    .unwrap_or_else(|| {
        panic!(
            "no incident from the backlog\n{}\n{}",
            coll.log(),
            agent.log()
        )
    });
    let since = incident["since_ms"].as_i64().unwrap();
    let resolved = incident["resolved_ms"].as_i64().unwrap();
    // Checks run every second: the first failing one within ~1 s of the
    // kill (the clock above is read in whole seconds), the first good one
    // within ~1 s of the restart.
    assert!(
        since >= killed_ms - 1000 && since <= killed_ms + 2500,
        "since {since} vs kill {killed_ms}: {incident}"
    );
    assert!(
        resolved >= back_ms - 1000 && resolved <= back_ms + 2500,
        "resolved {resolved} vs restart {back_ms}: {incident}"
    );
    assert_eq!(incident["backfilled"], true, "{incident}");
    assert_eq!(incident["reason"], "refused", "{incident}");
    let got = h::wait_for(Duration::from_secs(15), || {
        let g = hooks.all();
        (g.len() >= 2).then_some(g)
    })
    .expect("the backfilled incident was not sent");
    let events: Vec<Value> = got.iter().map(|r| r.json()["event"].clone()).collect();
    assert_eq!(events, vec!["opened", "resolved"]);
    assert_eq!(got[0].json()["since_ms"], since);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(hooks.all().len(), 2, "sent twice");
    let o = collector(&["incidents", "--data-dir", &d, "--json"]);
    let all: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        all.len(),
        1,
        "one incident, not one per replayed batch: {all:?}"
    );
    redis.assert_running();
    agent.assert_running();
    coll.assert_running();
}
