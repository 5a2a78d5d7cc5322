//! The user journey of issue 3 with the real binaries: `serve`, `token
//! create`, `enroll`, `run`, `agents`, results arriving over mTLS, token
//! replay refused, the collector killed -9 and restarted with nothing lost or
//! duplicated, and revocation stopping the agent.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use portwatch_harness::{self as h, Service};
use serde_json::Value;

fn collector(args: &[&str]) -> Output {
    Command::new(h::cargo_bin("portwatch-collector"))
        .args(args)
        .output()
        .expect("run portwatch-collector")
}

fn agent(args: &[&str]) -> Output {
    Command::new(h::cargo_bin("portwatch-agent"))
        .args(args)
        .output()
        .expect("run portwatch-agent")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn start_collector(
    dir: &Path,
    data: &Path,
    config: &Path,
    agent_port: u16,
    http_port: u16,
) -> Service {
    let _ = std::fs::remove_file(data.join("collector.json"));
    let mut cmd = Command::new(h::cargo_bin("portwatch-collector"));
    cmd.arg("serve")
        .arg("--data-dir")
        .arg(data)
        .arg("--config")
        .arg(config);
    cmd.args([
        "--agent-addr",
        &format!("127.0.0.1:{agent_port}"),
        "--http-addr",
        &format!("127.0.0.1:{http_port}"),
    ]);
    let mut s = Service::spawn("collector", cmd, dir);
    s.wait_tcp(([127, 0, 0, 1], http_port).into(), Duration::from_secs(20));
    assert!(h::poll_until(Duration::from_secs(10), || data
        .join("collector.json")
        .exists()));
    s
}

/// A local service for the monitors: accepts and closes every connection, so
/// its accept queue never fills however long the test runs.
fn accepting_listener() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            drop(conn);
        }
    });
    port
}

fn results(data: &Path, monitor: &str) -> Vec<Value> {
    let o = collector(&[
        "results",
        "--data-dir",
        data.to_str().unwrap(),
        "--monitor",
        monitor,
        "--limit",
        "10000",
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_slice::<Vec<Value>>(&o.stdout).unwrap()
}

fn agents(data: &Path) -> Vec<Value> {
    let o = collector(&["agents", "--data-dir", data.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_slice::<Vec<Value>>(&o.stdout).unwrap()
}

#[test]
fn enroll_stream_outage_and_revocation_with_the_real_binaries() {
    let dir = h::temp_dir();
    let data = dir.path().join("collector");
    let agent_dir = dir.path().join("agent");
    let target_port = accepting_listener();
    let (agent_port, http_port) = (h::free_tcp_port(), h::free_tcp_port());
    let config = dir.path().join("collector.toml");
    std::fs::write(
        &config,
        format!(
            // The public location checks it too: a lab collector may reach loopback.
            "allow_private_targets = true\n[[monitors]]\nname = \"svc\"\ntarget = \"tcp://127.0.0.1:{target_port}\"\ninterval = \"1s\"\nlocations = [\"site=lab\", \"public\"]\n"
        ),
    )
    .unwrap();
    let mut coll = start_collector(dir.path(), &data, &config, agent_port, http_port);
    let d = data.to_str().unwrap();

    // 1. A one-time token; the join string is the last line.
    let o = collector(&[
        "token",
        "create",
        "--data-dir",
        d,
        "--name",
        "bastion-1",
        "--labels",
        "site=lab,env=test",
        "--ttl",
        "10m",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let join = String::from_utf8_lossy(&o.stdout)
        .lines()
        .last()
        .unwrap()
        .to_owned();
    assert!(join.starts_with("pwjoin1:"), "{join}");

    // 2. Enroll: key generated here, mode 0600.
    let a = agent_dir.to_str().unwrap();
    let o = agent(&["enroll", &join, "--data-dir", a]);
    assert!(o.status.success(), "{}", text(&o));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(agent_dir.join("agent.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    // The same token again: refused.
    let other = dir.path().join("agent-2");
    let o = agent(&["enroll", &join, "--data-dir", other.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("invalid or expired token"),
        "{}",
        text(&o)
    );

    // Enrolled already: --if-not-enrolled (an init container's restart) does
    // nothing, spends nothing and leaves the key alone, even with a spent token.
    let key_before = std::fs::read(agent_dir.join("agent.key")).unwrap();
    let o = Command::new(h::cargo_bin("portwatch-agent"))
        .args(["enroll", "--if-not-enrolled", "--data-dir", a])
        .env("PORTWATCH_JOIN", &join)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("already enrolled as bastion-1"),
        "{}",
        text(&o)
    );
    assert_eq!(
        std::fs::read(agent_dir.join("agent.key")).unwrap(),
        key_before
    );

    // 3. Run: connected, results stored.
    let mut cmd = Command::new(h::cargo_bin("portwatch-agent"));
    cmd.args(["run", "--data-dir", a]);
    let mut run = Service::spawn("agent", cmd, dir.path());
    assert!(
        h::poll_until(Duration::from_secs(20), || agents(&data)
            .iter()
            .any(
                |x| x["name"] == "bastion-1" && x["connected_since_unix_ms"].is_i64()
            )),
        "agent never connected: {}\n{}",
        run.log(),
        coll.log()
    );
    let at = |loc: &str| {
        results(&data, "svc")
            .into_iter()
            .filter(|x| x["location"] == loc)
            .collect::<Vec<_>>()
    };
    assert!(
        h::poll_until(Duration::from_secs(20), || at("agent:bastion-1").len() >= 3
            && at("public:collector").len() >= 3),
        "{}",
        run.log()
    );
    // Both locations' results, side by side in one query.
    let r = results(&data, "svc");
    assert!(
        r.iter().all(|x| x["status"] == "up"
            && x["reason"] == "ok"
            && (x["location"] == "agent:bastion-1" || x["location"] == "public:collector")),
        "{r:?}"
    );

    // 4. The collector dies (kill -9) for a while; the agent keeps checking.
    let before = at("agent:bastion-1").len();
    coll.kill();
    // The outage itself (60 s, as an operator's restart or a network cut might
    // last): time has to pass for checks to pile up in the agent's buffer.
    // PW_E2E_OUTAGE_SECS shortens it for quick local runs.
    let outage: u64 = std::env::var("PW_E2E_OUTAGE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    std::thread::sleep(Duration::from_secs(outage));
    let coll = start_collector(dir.path(), &data, &config, agent_port, http_port);
    assert!(
        // The agent's backoff may have grown to ~40 s during the outage.
        h::poll_until(Duration::from_secs(90), || at("agent:bastion-1").len()
            >= before + outage as usize / 2),
        "backlog never arrived: {}",
        run.log()
    );
    let r = at("agent:bastion-1");
    let mut seqs: Vec<u64> = r.iter().map(|x| x["seq"].as_u64().unwrap()).collect();
    let n = seqs.len();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), n, "no duplicates after the outage");
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "no holes: every result arrived: {seqs:?}"
    );

    // 5. Revoke: the agent's stream closes and it stops with a clear error.
    let o = collector(&["agent", "revoke", "--data-dir", d, "bastion-1"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        h::poll_until(Duration::from_secs(15), || run.exited()),
        "agent still running after revocation"
    );
    assert!(run.log().contains("revoked"), "{}", run.log());
    drop(coll);
}

/// Every result the agent flushed reaches the collector exactly once, however
/// often the agent dies: kill -9 at random points, 20 times, then let it drain.
/// Sequence numbers are given only to flushed results, so after the final
/// drain the stored sequence numbers of each monitor-set must be exactly
/// 1..=N with no hole and no duplicate.
#[test]
fn agent_killed_at_random_points_loses_and_duplicates_nothing() {
    let dir = h::temp_dir();
    let data = dir.path().join("collector");
    let agent_dir = dir.path().join("agent");
    let target_port = accepting_listener();
    let closed = h::ClosedPort::on("127.0.0.1");
    let closed_port = closed.port();
    let (agent_port, http_port) = (h::free_tcp_port(), h::free_tcp_port());
    let config = dir.path().join("collector.toml");
    let mut monitors = String::new();
    for (id, port) in [
        ("up-a", target_port),
        ("up-b", target_port),
        ("down-c", closed_port),
    ] {
        monitors.push_str(&format!(
            "[[monitors]]\nname = \"{id}\"\ntarget = \"tcp://127.0.0.1:{port}\"\ninterval = \"1s\"\ntimeout = \"500ms\"\nlocations = [\"crashy\"]\n"
        ));
    }
    std::fs::write(&config, monitors).unwrap();
    let coll = start_collector(dir.path(), &data, &config, agent_port, http_port);
    let d = data.to_str().unwrap();
    let o = collector(&["token", "create", "--data-dir", d, "--name", "crashy"]);
    assert!(o.status.success(), "{}", text(&o));
    let join = String::from_utf8_lossy(&o.stdout)
        .lines()
        .last()
        .unwrap()
        .to_owned();
    let a = agent_dir.to_str().unwrap();
    let o = agent(&["enroll", &join, "--data-dir", a]);
    assert!(o.status.success(), "{}", text(&o));

    // A deterministic spread of kill points (no RNG crate needed): 150..1450 ms.
    for i in 0..20u64 {
        let mut cmd = Command::new(h::cargo_bin("portwatch-agent"));
        cmd.args(["run", "--data-dir", a]);
        let mut run = Service::spawn(&format!("agent-{i}"), cmd, dir.path());
        let after = Duration::from_millis(150 + (i * 7919) % 1300);
        // Waiting here is the point: the agent must be killed mid-work.
        std::thread::sleep(after);
        assert!(
            !run.exited(),
            "agent exited by itself in iteration {i}:\n{}",
            run.log()
        );
        run.kill(); // SIGKILL
    }
    // A last, undisturbed run drains whatever the crashes left in the buffer.
    let mut cmd = Command::new(h::cargo_bin("portwatch-agent"));
    cmd.args(["run", "--data-dir", a]);
    let run = Service::spawn("agent-final", cmd, dir.path());
    let all_seqs = || {
        let mut seqs: Vec<u64> = ["up-a", "up-b", "down-c"]
            .iter()
            .flat_map(|m| results(&data, m))
            .map(|x| x["seq"].as_u64().unwrap())
            .collect();
        seqs.sort_unstable();
        seqs
    };
    let contiguous =
        |s: &[u64]| !s.is_empty() && s[0] == 1 && s.windows(2).all(|w| w[1] == w[0] + 1);
    assert!(
        h::poll_until(Duration::from_secs(30), || {
            let s = all_seqs();
            contiguous(&s) && s.len() >= 20
        }),
        "stored seqs have holes or duplicates: {:?}\n{}",
        all_seqs(),
        run.log()
    );
    let s = all_seqs();
    let mut dedup = s.clone();
    dedup.dedup();
    assert_eq!(dedup.len(), s.len(), "no duplicates");
    let down = results(&data, "down-c");
    assert!(down.iter().all(|x| x["reason"] == "refused"), "{down:?}");
    drop(run);
    drop(coll);
}

/// Monitors as code with the real binary: `monitors check` reports every
/// problem with its line and exits 64; SIGHUP reloads the file (even
/// unchanged); a broken file is rejected and the last good set keeps running.
#[test]
fn config_reload_on_sighup_and_offline_check_with_the_real_binary() {
    let dir = h::temp_dir();
    let data = dir.path().join("collector");
    let (agent_port, http_port) = (h::free_tcp_port(), h::free_tcp_port());
    let config = dir.path().join("collector.toml");
    let good = "public_probes = false\n[[monitors]]\nname = \"redis\"\ntarget = \"tcp://127.0.0.1:6379\"\nlocations = [\"site=lab\"]\n";
    let broken = format!(
        "{good}\n[[monitors]]\nname = \"bad one\"\ntarget = \"tcp://127.0.0.1:0\"\nlocations = []\n"
    );
    std::fs::write(&config, good).unwrap();
    let coll = start_collector(dir.path(), &data, &config, agent_port, http_port);
    let d = data.to_str().unwrap();

    // Offline check of a broken copy: every problem, its line, exit 64.
    let bad_copy = dir.path().join("bad.toml");
    std::fs::write(&bad_copy, &broken).unwrap();
    let o = collector(&["monitors", "check", bad_copy.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(64), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    for field in ["name", "target", "locations"] {
        assert!(
            err.contains(&format!("bad.toml:7: monitors[1] (\"bad one\").{field}")),
            "{err}"
        );
    }
    let o = collector(&["monitors", "check", config.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));

    let status = || text(&collector(&["monitors", "status", "--data-dir", d]));
    assert!(
        status().contains("no config file reload yet"),
        "{}",
        status()
    );
    let hup = || {
        let o = Command::new("kill")
            .args(["-HUP", &coll.pid().to_string()])
            .output()
            .unwrap();
        assert!(o.status.success());
    };
    // The content did not change: only SIGHUP makes it reload.
    hup();
    assert!(
        h::poll_until(Duration::from_secs(5), || status()
            .contains("last reload ok")),
        "{}",
        status()
    );
    std::fs::write(&config, &broken).unwrap();
    hup();
    assert!(
        h::poll_until(Duration::from_secs(5), || status().contains("rejected")),
        "{}",
        status()
    );
    assert!(status().contains("collector.toml:7:"), "{}", status());
    let o = collector(&["monitors", "list", "--data-dir", d, "--json"]);
    let list: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(list.len(), 1, "the last good set keeps running: {list:?}");
    assert_eq!(list[0]["name"], "redis");
    drop(coll);
}
