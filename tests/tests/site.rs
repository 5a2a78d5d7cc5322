//! The production picture, end to end: a private site (its own network
//! namespace, no inbound firewall rule) runs Redis, PostgreSQL, dnsmasq,
//! chrony and OpenSSH on a private address, and the agent next to them; the
//! collector sits in headquarters (another namespace) and also probes the
//! site from outside. Failures are made for real: services killed, iptables
//! DROP and REJECT inside the site. Each test asserts what the user sees:
//! stored results, incidents and their diagnosis, and the webhook messages.
//!
//! See `portwatch_e2e::lab` for the topology; no packet leaves the lab's
//! namespaces.

use std::time::{Duration, Instant};

use portwatch_e2e::lab::{AGENT_LOC, Lab, SITE_ADDR, text};
use portwatch_harness as h;
use serde_json::Value;

/// A monitor of a site service, checked by the agent every second.
fn monitor(name: &str, target: &str, extra: &str) -> String {
    format!(
        r#"
[[monitors]]
name = "{name}"
target = "{target}"
interval = "1s"
timeout = "500ms"
locations = ["site=lab"]
{extra}
"#
    )
}

/// Every site service, watched by the agent.
fn site_monitors() -> String {
    [
        monitor(
            "redis",
            &format!("tcp://{SITE_ADDR}:6379"),
            "preset = \"redis\"",
        ),
        monitor(
            "postgres",
            &format!("tcp://{SITE_ADDR}:5432"),
            "preset = \"postgres\"",
        ),
        monitor("ssh", &format!("tcp://{SITE_ADDR}:22"), "preset = \"ssh\""),
        monitor(
            "dns",
            &format!("udp://{SITE_ADDR}:53"),
            "preset = \"dns\"\ndns_name = \"db.site.test\"",
        ),
        monitor("ntp", &format!("udp://{SITE_ADDR}:123"), "preset = \"ntp\""),
    ]
    .concat()
}

/// The newest result of `monitor` from the agent, once there is one that
/// satisfies `pred`.
fn wait_result(lab: &Lab, monitor: &str, within: Duration, pred: impl Fn(&Value) -> bool) -> Value {
    h::wait_for(within, || {
        lab.results(monitor, Some(AGENT_LOC))
            .into_iter()
            .rev()
            .find(|r| pred(r))
    })
    .unwrap_or_else(|| {
        panic!(
            "no {monitor} result as awaited within {within:?}; newest: {:?}\n{}",
            lab.results(monitor, Some(AGENT_LOC)).last(),
            lab.logs()
        )
    })
}

/// Scenario 1 and 5, and the outside view: enrolled with a one-time token,
/// the agent sees every site service up while the collector's own probe,
/// from outside, cannot get in: the combined view says "reachable inside
/// only". The token cannot be used twice. dnsmasq stopped: the UDP DNS
/// check is refused (ICMP port unreachable); chrony answers with an offset.
#[test]
fn the_agent_sees_the_site_up_and_the_outside_view_says_reachable_inside_only() {
    let mut lab = Lab::new(&site_monitors());
    let _redis = lab.redis();
    let _postgres = lab.postgres();
    let _sshd = lab.sshd();
    let mut dnsmasq = lab.dnsmasq();
    let _chrony = lab.chrony();
    lab.enroll();
    lab.start_agent();
    for m in ["redis", "postgres", "ssh", "dns", "ntp"] {
        lab.wait_state(m, "up", Duration::from_secs(30));
        assert_eq!(
            lab.location_state(m, AGENT_LOC).as_deref(),
            Some("up"),
            "{m}: {:?}",
            lab.monitor(m)
        );
    }
    // Each check's details, as stored.
    let pg = wait_result(&lab, "postgres", Duration::from_secs(5), |r| {
        r["status"] == "up"
    });
    assert_eq!(pg["address"], format!("{SITE_ADDR}:5432"), "{pg}");
    let ntp = wait_result(&lab, "ntp", Duration::from_secs(5), |r| r["status"] == "up");
    let offset = ntp["details"]["ntp_offset_us"]
        .as_i64()
        .unwrap_or_else(|| panic!("no NTP offset: {ntp}"));
    assert!(
        offset.abs() < 100_000,
        "same clock, offset {offset} us: {ntp}"
    );
    assert_eq!(
        ntp["details"]["ntp_stratum"], 8,
        "chrony serves its local stratum 8: {ntp}"
    );

    // The join string is spent.
    let join = lab.join.clone().expect("enrolled");
    let again = lab.dir.path().join("agent-again");
    let o = lab.agent_cli(&["enroll", &join, "--data-dir", again.to_str().unwrap()]);
    assert!(!o.status.success(), "a token enrolled twice: {}", text(&o));
    let err = text(&o);
    // Used, unknown or expired look the same from outside (no oracle).
    assert!(
        err.contains("token rejected"),
        "the refusal says why: {err}"
    );
    assert!(!again.join("agent.key").exists() || !again.join("cert.pem").exists());

    // A monitor that also looks from outside, added through the API: from
    // there nothing gets in, an edge incident, reachable inside only.
    let outside = lab.dir.path().join("outside.toml");
    std::fs::write(
        &outside,
        r#"name = "ssh-from-outside"
target = "tcp://10.77.0.10:22"
preset = "ssh"
interval = "1s"
timeout = "500ms"
locations = ["site=lab", "public"]
"#,
    )
    .unwrap();
    let o = lab.cli(&["monitors", "put", "-f", outside.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let edge = h::wait_for(Duration::from_secs(20), || {
        lab.incidents(Some("ssh-from-outside"))
            .into_iter()
            .find(|i| i["resolved_ms"].is_null())
    })
    .unwrap_or_else(|| {
        panic!(
            "no incident for the outside view: {:?}\n{}",
            lab.monitor("ssh-from-outside"),
            lab.logs()
        )
    });
    assert_eq!(edge["kind"], "edge", "{edge}");
    assert_eq!(edge["reason"], "timeout", "{edge}");
    assert!(
        edge["diagnosis"]
            .as_str()
            .unwrap()
            .starts_with("reachable inside only"),
        "{edge}"
    );
    assert_eq!(
        lab.location_state("ssh-from-outside", AGENT_LOC).as_deref(),
        Some("up")
    );
    assert_eq!(
        lab.location_state("ssh-from-outside", "public:hq")
            .as_deref(),
        Some("down")
    );
    let page = h::wait_for(Duration::from_secs(10), || {
        lab.hooks.find("ssh-from-outside", "opened")
    })
    .expect("the edge incident was not sent");
    assert!(page.signed(), "unsigned webhook");
    assert!(
        page.json()["diagnosis"]
            .as_str()
            .unwrap_or_default()
            .starts_with("reachable inside only"),
        "{}",
        page.json()
    );

    // dnsmasq stopped: ICMP port unreachable, so refused, not a timeout.
    dnsmasq.kill();
    let killed = Instant::now();
    let r = wait_result(&lab, "dns", Duration::from_secs(10), |r| {
        r["status"] == "down"
    });
    assert_eq!(r["reason"], "refused", "{r}");
    let page = h::wait_for(Duration::from_secs(10), || lab.hooks.find("dns", "opened"))
        .unwrap_or_else(|| panic!("no page for dns: {:?}\n{}", lab.monitor("dns"), lab.logs()));
    assert_eq!(page.json()["reason"], "refused");
    assert!(
        page.at - killed <= Duration::from_secs(3),
        "paged {:?} after the kill",
        page.at - killed
    );
    let _dnsmasq = lab.dnsmasq();
    h::wait_for(Duration::from_secs(10), || {
        lab.hooks.find("dns", "resolved")
    })
    .expect("no all-clear for dns");
    // Nothing else was paged: the site itself stayed up.
    for m in ["redis", "postgres", "ssh", "ntp"] {
        assert!(
            lab.hooks.about(m).is_empty(),
            "{m} paged: {:?}",
            lab.hooks.about(m)
        );
    }
    lab.assert_running();
}
