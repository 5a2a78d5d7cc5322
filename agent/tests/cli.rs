//! `portwatch-agent check` as a user and as Nagios see it: one line or one JSON
//! object, exit codes 0/1/2/3, and one clear line for bad input.

use std::net::TcpListener;
use std::process::{Command, Output};

use portwatch_harness as h;
use serde_json::Value;

fn agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portwatch-agent"))
        .args(args)
        .output()
        .expect("run portwatch-agent")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn up_prints_one_line_with_phases_and_exits_0() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = format!("tcp://127.0.0.1:{}", l.local_addr().unwrap().port());
    let o = agent(&["check", &target]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(
        out.starts_with(&format!("UP ok {target} (127.0.0.1:")),
        "{out}"
    );
    assert!(
        out.contains("| connect=") && out.contains(" total="),
        "nagios perfdata with phases: {out}"
    );
}

#[test]
fn json_has_every_phase_key_and_down_exits_2() {
    let closed = h::ClosedPort::on("127.0.0.1");
    let port = closed.port();
    let o = agent(&["check", &format!("tcp://127.0.0.1:{port}"), "--json"]);
    assert_eq!(o.status.code(), Some(2));
    let v: Value = serde_json::from_str(stdout(&o).trim()).expect("one JSON object");
    assert_eq!(v["status"], "down");
    assert_eq!(v["reason"], "refused");
    assert_eq!(v["address"], format!("127.0.0.1:{port}"));
    for k in ["dns", "connect", "tls", "first_byte", "total"] {
        assert!(
            v["phases_us"].get(k).is_some(),
            "phases_us.{k} present (null when absent): {v}"
        );
    }
    assert!(v["phases_us"]["total"].as_u64().is_some());
    assert!(v["details"].is_object());
}

#[test]
fn degraded_exits_1() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = format!("tcp://127.0.0.1:{}", l.local_addr().unwrap().port());
    let o = agent(&["check", &target, "--degraded-ms", "0"]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stdout(&o).starts_with("DEGRADED slow "), "{}", stdout(&o));
}

#[test]
fn bad_input_is_one_clear_line_and_exit_3() {
    let cases: &[(&[&str], &str)] = &[
        (&["check", "tcp://127.0.0.1:0"], "1-65535"),
        (&["check", "tcp://127.0.0.1:65536"], "1-65535"),
        (&["check", "http://127.0.0.1:80"], "unknown scheme"),
        (&["check", "tcp://127.0.0.1"], "port is required"),
        (
            &["check", "tcp://127.0.0.1:80", "--expect", "oracle"],
            "unknown for tcp",
        ),
        (
            &["check", "udp://127.0.0.1:53", "--expect", "redis"],
            "unknown for udp",
        ),
        (
            &["check", "tcp://127.0.0.1:80", "--expect-regex", "(unclosed"],
            "regex",
        ),
        (&["check", "tcp://127.0.0.1:80", "--send", "\\q"], "escape"),
        (
            &["check", "tcp://127.0.0.1:80", "--timeout", "soon"],
            "duration",
        ),
        (
            &[
                "check",
                "tcp://127.0.0.1:80",
                "--timeout",
                "1s",
                "--degraded-ms",
                "2000",
            ],
            "degraded threshold",
        ),
        (
            &["check", "icmp://127.0.0.1", "--expect", "dns"],
            "does not apply",
        ),
        (
            &[
                "check",
                "tcp://127.0.0.1:80",
                "--tls-ca",
                "/nonexistent.pem",
            ],
            "--tls",
        ),
        (
            &[
                "check",
                "tcp://127.0.0.1:80",
                "--tls",
                "--tls-ca",
                "/nonexistent.pem",
            ],
            "/nonexistent.pem",
        ),
        (&["bogus"], "unrecognized subcommand"),
    ];
    for (args, needle) in cases {
        let o = agent(args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(3), "{args:?}: {err}");
        assert!(stdout(&o).is_empty(), "{args:?}: nothing on stdout");
        assert!(
            err.contains(needle),
            "{args:?}: {err:?} should mention {needle:?}"
        );
        if err.starts_with("portwatch-agent check:") {
            assert_eq!(err.trim().lines().count(), 1, "{args:?}: one line: {err}");
        } else {
            // clap's own usage errors: the first line says what is wrong.
            let first = err.lines().next().unwrap_or("");
            assert!(first.starts_with("error:"), "{args:?}: {err}");
        }
    }
}

#[test]
fn help_and_version_exit_0() {
    let o = agent(&["--version"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).contains(env!("CARGO_PKG_VERSION")));
    let o = agent(&["check", "--help"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).contains("--expect"));
}

#[test]
fn names_resolve_through_nameserver_flag() {
    let dir = h::temp_dir();
    let dns_port = h::free_port_both();
    let _dns = h::dnsmasq(
        dir.path(),
        dns_port,
        &["--host-record=svc.test,127.0.0.1", "--address=/nx.test/"],
    );
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let ns = format!("127.0.0.1:{dns_port}");
    let o = agent(&[
        "check",
        &format!("tcp://svc.test:{port}"),
        "--nameserver",
        &ns,
        "--json",
    ]);
    let v: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(
        (o.status.code(), v["reason"].as_str()),
        (Some(0), Some("ok")),
        "{v}"
    );
    assert!(v["phases_us"]["dns"].as_u64().is_some(), "{v}");
    let o = agent(&[
        "check",
        &format!("tcp://nx.test:{port}"),
        "--nameserver",
        &ns,
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stdout(&o).starts_with("DOWN dns_nxdomain"),
        "{}",
        stdout(&o)
    );
}

fn enroll_cmd(data_dir: &std::path::Path, args: &[&str], join_env: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portwatch-agent"));
    cmd.arg("enroll")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("PORTWATCH_JOIN")
        .env_remove("PORTWATCH_AGENT_DATA_DIR");
    if let Some(join) = join_env {
        cmd.env("PORTWATCH_JOIN", join);
    }
    cmd.output().expect("run portwatch-agent")
}

/// What an init container relies on: `enroll --if-not-enrolled` needs no join
/// string to say "not enrolled" clearly, and a damaged identity is an error,
/// never a silent success.
#[test]
fn enroll_if_not_enrolled_without_a_join_string() {
    let dir = h::temp_dir();
    let o = enroll_cmd(dir.path(), &["--if-not-enrolled"], None);
    assert_eq!(o.status.code(), Some(64), "{}", stderr(&o));
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("no join string"), "{}", stderr(&o));
    // Without the flag the join string is simply required (a usage error).
    let o = enroll_cmd(dir.path(), &[], None);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));

    // A half-written identity: refused, with the way out.
    std::fs::write(dir.path().join("agent.json"), "{}").unwrap();
    let o = enroll_cmd(dir.path(), &["--if-not-enrolled"], Some("pwjoin1:spent"));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("--force"), "{}", stderr(&o));
    // --force and --if-not-enrolled contradict each other.
    let o = enroll_cmd(dir.path(), &["--if-not-enrolled", "--force"], None);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
}

/// The join string in PORTWATCH_JOIN is a secret: --help never prints it.
#[test]
fn enroll_help_does_not_show_the_join_string_from_the_environment() {
    let dir = h::temp_dir();
    let o = enroll_cmd(dir.path(), &["--help"], Some("pwjoin1:do-not-print-me"));
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).contains("PORTWATCH_JOIN"), "{}", stdout(&o));
    assert!(!stdout(&o).contains("do-not-print-me"), "{}", stdout(&o));
}
