//! Channel validation, routing, redaction and what messages say.

use super::send::{discord_body, pagerduty_body, signature, slack_body, teams_body, webhook_body};
use super::*;

fn channels(toml_text: &str) -> Result<Vec<Channel>, Vec<String>> {
    #[derive(Deserialize)]
    struct F {
        notifications: Vec<RawChannel>,
    }
    let f: F = toml::from_str(toml_text).expect("test toml parses");
    validate_channels(&f.notifications)
}

fn note(event: NotifyEvent) -> Notification {
    Notification {
        event,
        incident_id: 42,
        kind: "down".into(),
        monitor: "redis-main".into(),
        protocol: "TCP".into(),
        target: "10.0.0.5:6379".into(),
        severity: Severity::High,
        tags: vec!["db".into(), "team=payments".into()],
        locations: vec![
            LocationView {
                location: "agent:fra-1".into(),
                state: "down".into(),
                reason: Some("refused".into()),
            },
            LocationView {
                location: "public:eu".into(),
                state: "down".into(),
                reason: Some("timeout".into()),
            },
        ],
        diagnosis: "service down: every location fails (agent:fra-1, public:eu)".into(),
        reason: Some("refused".into()),
        since_ms: 1_795_860_000_000,
        resolved_ms: (event == NotifyEvent::Resolved).then_some(1_795_860_095_000),
        runbook: Some("https://wiki.example/redis".into()),
        dashboard_url: None,
    }
}

#[test]
fn bad_channels_say_which_field_and_why() {
    let cases = [
        (
            "name = \"a\"\nkind = \"carrier-pigeon\"",
            r#"notifications[0] ("a").kind: "carrier-pigeon" is not one of"#,
        ),
        (
            "name = \"a\"\nkind = \"webhook\"",
            r#"notifications[0] ("a").url: is required"#,
        ),
        (
            "name = \"a\"\nkind = \"webhook\"\nurl = \"ftp://x\"",
            r#"notifications[0] ("a").url: "ftp://x" must start with https:// or http://"#,
        ),
        (
            "name = \"a\"\nkind = \"webhook\"\nurl = \"https://x\"\nsecret = \"short\"",
            r#"notifications[0] ("a").secret: must be at least 16 characters"#,
        ),
        (
            "name = \"a\"\nkind = \"webhook\"\nurl = \"https://x\"\nheaders = { \"X-Portwatch-Signature\" = \"forged\" }",
            r#"notifications[0] ("a").headers: "X-Portwatch-Signature" is not a header name you may set"#,
        ),
        (
            "name = \"a\"\nkind = \"slack\"\nurl = \"https://hooks.slack.com/x\"\nto = [\"a@b.c\"]",
            r#"notifications[0] ("a").to: is not used by kind "slack""#,
        ),
        (
            "name = \"a\"\nkind = \"pagerduty\"",
            r#"notifications[0] ("a").routing_key: is required"#,
        ),
        (
            "name = \"a\"\nkind = \"email\"\nsmtp_host = \"mx\"\nsmtp_port = 70000\nfrom = \"pw@example.com\"\nto = [\"ops@example.com\"]",
            r#"notifications[0] ("a").smtp_port: must be 1-65535"#,
        ),
        (
            "name = \"a\"\nkind = \"email\"\nsmtp_host = \"mx\"\nfrom = \"not an address\"\nto = [\"ops@example.com\"]",
            r#"notifications[0] ("a").from: "not an address" is not an email address"#,
        ),
        (
            "name = \"a\"\nkind = \"email\"\nsmtp_host = \"mx\"\nfrom = \"pw@example.com\"",
            r#"notifications[0] ("a").to: needs at least one recipient"#,
        ),
        (
            "name = \"a\"\nkind = \"email\"\nsmtp_host = \"mx\"\ntls = \"none\"\nusername = \"u\"\npassword = \"p\"\nfrom = \"pw@example.com\"\nto = [\"ops@example.com\"]",
            r#"notifications[0] ("a").password: would cross the network in clear text"#,
        ),
        (
            "name = \"a\"\nkind = \"webhook\"\nurl = \"https://x\"\nca_file = \"/nonexistent/ca.pem\"",
            r#"notifications[0] ("a").ca_file: /nonexistent/ca.pem"#,
        ),
        (
            "name = \"a\"\nkind = \"webhook\"\nurl = \"https://x\"\ntimeout = \"5m\"",
            r#"notifications[0] ("a").timeout: must be a duration between 1s and 2m"#,
        ),
    ];
    for (body, want) in cases {
        let text = format!("[[notifications]]\n{body}\n");
        let problems = channels(&text).expect_err(body);
        assert!(
            problems.iter().any(|p| p.starts_with(want)),
            "want {want:?} in {problems:?}"
        );
    }
    let twice = "[[notifications]]\nname = \"a\"\nkind = \"webhook\"\nurl = \"https://x\"\n[[notifications]]\nname = \"a\"\nkind = \"webhook\"\nurl = \"https://y\"\n";
    assert!(channels(twice).unwrap_err()[0].contains("used twice"));
}

#[test]
fn routes_select_by_monitor_tag_and_severity() {
    let c = channels(
        r#"
[[notifications]]
name = "db-pager"
kind = "pagerduty"
routing_key = "R0UT1NGK3Y"
tags = ["db"]
min_severity = "high"
"#,
    )
    .unwrap()
    .remove(0);
    let mut n = note(NotifyEvent::Opened);
    assert!(c.routes(&n));
    n.severity = Severity::Critical;
    assert!(c.routes(&n), "graver than the minimum");
    n.severity = Severity::Medium;
    assert!(!c.routes(&n), "milder than the minimum");
    n.severity = Severity::High;
    n.tags = vec!["web".into()];
    assert!(!c.routes(&n), "no matching tag");
    let by_name = channels(
        "[[notifications]]\nname = \"a\"\nkind = \"webhook\"\nurl = \"https://x\"\nmonitors = [\"redis-main\"]\n",
    )
    .unwrap()
    .remove(0);
    assert!(by_name.routes(&note(NotifyEvent::Opened)));
    let mut other = note(NotifyEvent::Opened);
    other.monitor = "pg".into();
    assert!(!by_name.routes(&other));
}

#[test]
fn secrets_never_show_in_debug_output_or_the_channel_list() {
    let text = r#"
[[notifications]]
name = "hook"
kind = "webhook"
url = "https://user:pw@hooks.example/in?token=TOKEN-SECRET"
secret = "hmac-secret-0123456789"

[[notifications]]
name = "slack"
kind = "slack"
url = "https://hooks.slack.com/services/T000/B000/XXXXSECRETXXXX"

[[notifications]]
name = "pd"
kind = "pagerduty"
routing_key = "R0UT1NGK3Y-SECRET"

[[notifications]]
name = "mail"
kind = "email"
smtp_host = "mx.example"
username = "pw"
password = "smtp-pass-SECRET"
from = "pw@example.com"
to = ["ops@example.com"]
"#;
    let all = channels(text).unwrap();
    let debug = format!("{all:?}");
    let listed = serde_json::to_string(&all.iter().map(Channel::info).collect::<Vec<_>>()).unwrap();
    #[derive(Deserialize)]
    struct F {
        notifications: Vec<RawChannel>,
    }
    let raw_debug = format!("{:?}", toml::from_str::<F>(text).unwrap().notifications);
    for secret in [
        "hmac-secret-0123456789",
        "XXXXSECRETXXXX",
        "T000/B000",
        "R0UT1NGK3Y-SECRET",
        "smtp-pass-SECRET",
        "TOKEN-SECRET",
        "user:pw",
    ] {
        assert!(!debug.contains(secret), "{secret} in {debug}");
        assert!(!listed.contains(secret), "{secret} in {listed}");
        assert!(!raw_debug.contains(secret), "{secret} in {raw_debug}");
    }
    assert!(listed.contains("https://hooks.slack.com"), "{listed}");
    assert!(
        listed.contains("smtp://mx.example:587 -> ops@example.com"),
        "{listed}"
    );
}

#[test]
fn subjects_and_bodies_say_what_where_why_and_since_when() {
    let open = note(NotifyEvent::Opened);
    assert_eq!(
        subject(&open),
        "TCP Port Unreachable: redis-main (10.0.0.5:6379)"
    );
    let resolved = note(NotifyEvent::Resolved);
    assert_eq!(
        subject(&resolved),
        "TCP Port Reachable Again: redis-main (10.0.0.5:6379)"
    );
    let body = text_body(&resolved);
    for want in [
        "Diagnosis:  service down: every location fails",
        "Reason:     refused",
        "Since:      2026-11-28T10:00:00Z (check time)",
        "Resolved:   2026-11-28T10:01:35Z (after 1m 35s)",
        "agent:fra-1",
        "down (refused)",
        "Runbook:    https://wiki.example/redis",
        "Incident:   #42",
    ] {
        assert!(body.contains(want), "{want:?} not in\n{body}");
    }
    let mut udp = note(NotifyEvent::Opened);
    udp.protocol = "UDP".into();
    assert!(subject(&udp).starts_with("UDP Port Unreachable"));
    let mut icmp = note(NotifyEvent::Opened);
    icmp.protocol = "ICMP".into();
    assert!(subject(&icmp).starts_with("ICMP Host Unreachable"));
    let mut edge = note(NotifyEvent::Opened);
    edge.kind = "edge".into();
    assert!(subject(&edge).starts_with("TCP Port Unreachable from Outside"));
    let mut exposure = note(NotifyEvent::Opened);
    exposure.kind = "exposure".into();
    assert!(subject(&exposure).starts_with("TCP Port Exposed"));
    let mut agent = note(NotifyEvent::Opened);
    agent.kind = "agent_offline".into();
    agent.monitor = "agent:fra-1".into();
    assert_eq!(subject(&agent), "Agent Offline: agent:fra-1");
}

#[test]
fn each_kind_builds_its_documented_json() {
    let open = note(NotifyEvent::Opened);
    let w = webhook_body(&open);
    assert_eq!(w["event"], "opened");
    assert_eq!(w["reason"], "refused");
    assert_eq!(w["locations"][1]["location"], "public:eu");
    let pd = pagerduty_body(&open, "KEY");
    assert_eq!(pd["event_action"], "trigger");
    assert_eq!(pd["dedup_key"], "portwatch-42");
    assert_eq!(pd["payload"]["severity"], "error");
    assert_eq!(pd["payload"]["source"], "10.0.0.5:6379");
    let pd = pagerduty_body(&note(NotifyEvent::Resolved), "KEY");
    assert_eq!(pd["event_action"], "resolve");
    assert_eq!(pd["dedup_key"], "portwatch-42");
    // Untrusted text cannot become markup, links or mentions.
    let mut hostile = note(NotifyEvent::Opened);
    hostile.monitor = "<script>@everyone <!channel>".into();
    let s = slack_body(&hostile).to_string();
    assert!(
        !s.contains("<!channel>") && s.contains("&lt;!channel&gt;"),
        "{s}"
    );
    let d = discord_body(&hostile);
    assert_eq!(d["allowed_mentions"]["parse"], serde_json::json!([]));
    let t = teams_body(&hostile).to_string();
    assert!(!t.contains("<script>"), "{t}");
}

#[test]
fn the_signature_is_hmac_sha256_over_timestamp_dot_body() {
    let body = br#"{"event":"opened"}"#;
    let sig = signature("hmac-secret-0123456789", "1795860000", body);
    let hex = sig.strip_prefix("sha256=").unwrap();
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"hmac-secret-0123456789");
    ring::hmac::verify(&key, b"1795860000.{\"event\":\"opened\"}", &bytes).unwrap();
    assert!(ring::hmac::verify(&key, b"1795860001.{\"event\":\"opened\"}", &bytes).is_err());
}
