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
                since_ms: Some(1_795_860_000_000),
            },
            LocationView {
                location: "public:eu".into(),
                state: "down".into(),
                reason: Some("timeout".into()),
                since_ms: Some(1_795_860_002_000),
            },
        ],
        diagnosis: "service down: every location fails (agent:fra-1, public:eu)".into(),
        reason: Some("refused".into()),
        since_ms: 1_795_860_000_000,
        resolved_ms: (event == NotifyEvent::Resolved).then_some(1_795_860_095_000),
        runbook: Some("https://wiki.example/redis".into()),
        dashboard_url: None,
        owner: Some("team-payments (+49 30 1234)".into()),
        last_ok_ms: Some(1_795_859_995_000),
        change: None,
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
        "Resolved:   2026-11-28T10:01:35Z (the outage lasted 1m 35s)",
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

/// The recovery of `note`: both locations succeed again, each since when.
fn recovered() -> Notification {
    let mut n = note(NotifyEvent::Resolved);
    n.locations[0].state = "up".into();
    n.locations[0].reason = None;
    n.locations[0].since_ms = Some(1_795_860_090_000);
    n.locations[1].state = "up".into();
    n.locations[1].reason = None;
    n.locations[1].since_ms = Some(1_795_860_095_000);
    n
}

/// An outside-only block that became a full outage.
fn updated() -> Notification {
    let mut n = note(NotifyEvent::Updated);
    n.change = Some("every location fails now (was: reachable inside only)".into());
    n
}

#[test]
fn an_opened_message_says_who_how_grave_last_healthy_where_why_and_first_steps() {
    let body = text_body(&note(NotifyEvent::Opened));
    for want in [
        "Owner:      team-payments (+49 30 1234)",
        "Severity:   high   Tags: db, team=payments",
        "Last OK:    2026-11-28T09:59:55Z (the last healthy check, 5s before the failing began)",
        "agent:fra-1                  down (refused) since 2026-11-28T10:00:00Z",
        "public:eu                    down (timeout) since 2026-11-28T10:00:02Z",
        "First steps:\n  refused: is the process running and bound to this address and port?\n  timeout: a firewall or routing between this location and the host drops packets\n",
    ] {
        assert!(body.contains(want), "{want:?} not in\n{body}");
    }
    assert!(!body.contains("Changed:"), "{body}");
    // A location that is up gives no first step; a reason seen twice, one.
    let mut n = note(NotifyEvent::Opened);
    n.locations[1].state = "up".into();
    n.locations.push(LocationView {
        location: "agent:ber-1".into(),
        state: "down".into(),
        reason: Some("refused".into()),
        since_ms: None,
    });
    assert_eq!(
        n.first_steps(),
        vec![(
            "refused",
            "is the process running and bound to this address and port?"
        )]
    );
    // The payloads give no hint for a location that succeeds either.
    let w = webhook_body(&n);
    assert_eq!(w["locations"][1]["reason"], "timeout");
    assert_eq!(w["locations"][1]["hint"], serde_json::Value::Null);
    assert_eq!(w["locations"][2]["hint"], w["hint"]);
    // Nothing known: no line rather than a guess.
    n.owner = None;
    n.last_ok_ms = None;
    let body = text_body(&n);
    assert!(
        !body.contains("Owner:") && !body.contains("Last OK:"),
        "{body}"
    );
}

#[test]
fn a_recovery_says_which_locations_succeed_since_when_and_how_long_it_lasted() {
    let n = recovered();
    assert_eq!(
        subject(&n),
        "TCP Port Reachable Again: redis-main (10.0.0.5:6379)"
    );
    let body = text_body(&n);
    for want in [
        "Resolved:   2026-11-28T10:01:35Z (the outage lasted 1m 35s)",
        "Last OK:    2026-11-28T09:59:55Z",
        "Locations now:\n  agent:fra-1                  up since 2026-11-28T10:01:30Z\n  public:eu                    up since 2026-11-28T10:01:35Z",
        "Owner:      team-payments",
    ] {
        assert!(body.contains(want), "{want:?} not in\n{body}");
    }
    assert!(
        !body.contains("First steps"),
        "nothing to do once it is over:\n{body}"
    );
    let w = webhook_body(&n);
    assert_eq!(w["event"], "resolved");
    assert_eq!(w["duration_ms"], 95_000);
    assert_eq!(w["resolved"], "2026-11-28T10:01:35Z");
    assert_eq!(w["locations"][0]["state"], "up");
    assert_eq!(w["locations"][0]["since"], "2026-11-28T10:01:30Z");
    assert_eq!(w["locations"][0]["hint"], serde_json::Value::Null);
    assert_eq!(w["first_steps"], serde_json::json!([]));
    let facts = n.facts();
    assert!(
        facts.contains(&("Outage lasted", "1m 35s".into())),
        "{facts:?}"
    );
    let pd = pagerduty_body(&n, "KEY");
    assert_eq!(pd["event_action"], "resolve");
}

#[test]
fn an_update_says_what_changed_in_every_channel_and_pages_into_the_same_alert() {
    let n = updated();
    assert_eq!(
        subject(&n),
        "TCP Port Unreachable (update): redis-main (10.0.0.5:6379)"
    );
    let mut edge = updated();
    edge.kind = "edge".into();
    assert_eq!(
        subject(&edge),
        "TCP Port Unreachable from Outside (update): redis-main (10.0.0.5:6379)"
    );
    let mut agent = updated();
    agent.kind = "agent_offline".into();
    agent.monitor = "agent:fra-1".into();
    assert_eq!(subject(&agent), "Agent Offline (update): agent:fra-1");
    let change = "every location fails now (was: reachable inside only)";
    let body = text_body(&n);
    assert!(
        body.contains(&format!("\n\nChanged:    {change}\nMonitor:")),
        "the change comes first:\n{body}"
    );
    assert!(body.contains("First steps:"), "{body}");

    let w = webhook_body(&n);
    assert_eq!(w["event"], "updated");
    assert_eq!(w["change"], change);
    let s = slack_body(&n);
    assert!(
        s["attachments"][0]["fields"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!({ "title": "Changed", "value": change, "short": false })),
        "{s}"
    );
    assert!(s["text"].as_str().unwrap().contains("(update)"));
    let d = discord_body(&n);
    assert!(
        d["embeds"][0]["fields"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["name"] == "Changed" && f["value"] == change),
        "{d}"
    );
    let t = teams_body(&n);
    assert!(
        t["sections"][0]["facts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["name"] == "Changed" && f["value"] == change),
        "{t}"
    );
    // PagerDuty merges a trigger with the open alert's dedup key.
    let opened = pagerduty_body(&note(NotifyEvent::Opened), "KEY");
    let pd = pagerduty_body(&n, "KEY");
    assert_eq!(pd["event_action"], "trigger");
    assert_eq!(pd["dedup_key"], opened["dedup_key"]);
    assert_eq!(pd["payload"]["custom_details"]["event"], "updated");
    assert_eq!(pd["payload"]["custom_details"]["change"], change);
    assert!(
        pd["payload"]["summary"]
            .as_str()
            .unwrap()
            .contains("(update)")
    );
    // A change kept on the incident is not repeated by other events.
    let mut later = recovered();
    later.change = Some(change.into());
    assert!(!text_body(&later).contains("Changed"));
    assert_eq!(webhook_body(&later)["change"], serde_json::Value::Null);
}

#[test]
fn every_channel_carries_owner_severity_last_healthy_reasons_and_hints() {
    let n = note(NotifyEvent::Opened);
    let owner = "team-payments (+49 30 1234)";
    let refused = "is the process running and bound to this address and port?";
    let timeout = "a firewall or routing between this location and the host drops packets";

    let w = webhook_body(&n);
    assert_eq!(w["owner"], owner);
    assert_eq!(w["severity"], "high");
    assert_eq!(w["last_ok"], "2026-11-28T09:59:55Z");
    assert_eq!(w["last_ok_ms"], 1_795_859_995_000_i64);
    assert_eq!(w["hint"], refused);
    assert_eq!(w["locations"][1]["reason"], "timeout");
    assert_eq!(w["locations"][1]["since_ms"], 1_795_860_002_000_i64);
    assert_eq!(w["locations"][1]["hint"], timeout);
    assert_eq!(
        w["first_steps"],
        serde_json::json!([format!("refused: {refused}"), format!("timeout: {timeout}")])
    );
    // The fields receivers already read are all still there.
    for old in [
        "version",
        "event",
        "subject",
        "incident_id",
        "kind",
        "monitor",
        "protocol",
        "target",
        "severity",
        "tags",
        "diagnosis",
        "reason",
        "since",
        "since_ms",
        "resolved_ms",
        "locations",
        "runbook",
        "dashboard_url",
        "text",
    ] {
        assert!(w.get(old).is_some(), "{old} left the webhook payload");
    }

    let fact = |v: &serde_json::Value, key: &str, name: &str, value: &str| {
        v.as_array()
            .unwrap()
            .iter()
            .any(|f| f[key] == name && f["value"] == value)
    };
    let s = slack_body(&n);
    let fields = &s["attachments"][0]["fields"];
    assert!(fact(fields, "title", "Owner", owner), "{s}");
    assert!(fact(fields, "title", "Severity", "high"), "{s}");
    assert!(
        fact(fields, "title", "Last healthy", "2026-11-28T09:59:55Z"),
        "{s}"
    );
    let d = discord_body(&n);
    assert!(
        fact(&d["embeds"][0]["fields"], "name", "Owner", owner),
        "{d}"
    );
    let t = teams_body(&n);
    assert!(
        fact(&t["sections"][0]["facts"], "name", "Owner", owner),
        "{t}"
    );
    // The text of each card has the reasons per location and the hints.
    for text in [
        s["attachments"][0]["text"].as_str().unwrap(),
        d["embeds"][0]["description"].as_str().unwrap(),
        t["text"].as_str().unwrap(),
        w["text"].as_str().unwrap(),
    ] {
        for want in [
            "down (timeout) since",
            refused,
            timeout,
            "Last OK:",
            "Owner:",
        ] {
            assert!(text.contains(want), "{want:?} not in {text}");
        }
    }

    let pd = pagerduty_body(&n, "KEY");
    let details = &pd["payload"]["custom_details"];
    assert_eq!(details["owner"], owner);
    assert_eq!(details["last_ok"], "2026-11-28T09:59:55Z");
    assert_eq!(details["locations"][0]["hint"], refused);
    assert_eq!(details["first_steps"][1], format!("timeout: {timeout}"));
    assert_eq!(pd["payload"]["severity"], "error");
}

#[test]
fn hostile_owner_and_change_text_stays_text_in_every_card() {
    let mut n = updated();
    n.owner = Some("<!channel> @everyone <b>".into());
    n.change = Some("<script>x</script>".into());
    let s = slack_body(&n).to_string();
    assert!(!s.contains("<!channel>"), "{s}");
    let t = teams_body(&n).to_string();
    assert!(!t.contains("<script>") && !t.contains("<b>"), "{t}");
    let d = discord_body(&n);
    assert_eq!(d["allowed_mentions"]["parse"], serde_json::json!([]));
    // An empty value is left out (Discord refuses the message for one).
    n.change = Some(" ".into());
    assert!(n.facts().iter().all(|(k, _)| *k != "Changed"));
    // A change longer than a Discord field holds is cut, not refused.
    n.change = Some("x".repeat(5000));
    let d = discord_body(&n);
    let f = d["embeds"][0]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "Changed")
        .unwrap()
        .clone();
    assert!(f["value"].as_str().unwrap().len() <= 512);
}

/// One monitor as the config file would define it.
fn monitor(toml_text: &str) -> crate::monitors::Monitor {
    use crate::monitors::{Located, Origin, Parents, RawMonitor, validate_all};
    let raw: RawMonitor = toml::from_str(toml_text).expect("test toml parses");
    let located = Located {
        raw,
        line: None,
        path: "monitors[0]".into(),
    };
    validate_all(&[located], "test", Origin::File, &[], Parents::MustExist)
        .expect("a valid monitor")
        .remove(0)
}

#[test]
fn an_incident_becomes_a_notification_with_owner_last_healthy_and_since_per_location() {
    use crate::incident::engine::Outbound;
    use crate::incident::{Incident, Kind, LocState, Phase};
    let m = monitor(
        "name = \"redis-main\"\ntarget = \"tcp://10.0.0.5:6379\"\nseverity = \"critical\"\nowner = \"team-payments\"\ntags = [\"db\"]\nlocations = [\"fra-1\", \"public\"]\n",
    );
    let location =
        |name: &str, state, down: Option<i64>, up: Option<i64>| crate::incident::LocationView {
            location: name.into(),
            state,
            reason: down.map(|_| "refused".into()),
            down_since_ms: down,
            last_check_ms: Some(1_900),
            up_since_ms: up,
        };
    let mut inc = Incident {
        id: 42,
        locations: vec![
            location("agent:fra-1", LocState::Down, Some(1_000), None),
            location("public:eu", LocState::Up, None, Some(1_500)),
        ],
        last_ok_ms: Some(900),
        change: Some("the public locations fail too now".into()),
        ..Incident::new(
            "redis-main",
            Kind::Down,
            2_000,
            1_000,
            "service down".into(),
            Some("refused".into()),
        )
    };
    let out = |phase, inc: &Incident| Outbound {
        phase,
        incident: inc.clone(),
        monitor: Some(m.clone()),
        skip: Vec::new(),
    };
    let n = crate::incident::notification(&out(Phase::Opened, &inc), Some("https://pw.example"));
    assert_eq!(n.event, NotifyEvent::Opened);
    assert_eq!(n.owner.as_deref(), Some("team-payments"));
    assert_eq!(n.severity, Severity::Critical);
    assert_eq!(n.last_ok_ms, Some(900));
    assert_eq!(n.change, None, "only an update says what changed");
    assert_eq!(n.protocol, "TCP");
    assert_eq!(
        n.locations.iter().map(|l| l.since_ms).collect::<Vec<_>>(),
        [Some(1_000), Some(1_500)],
        "down since while down, up since while up"
    );
    assert_eq!(
        n.dashboard_url.as_deref(),
        Some("https://pw.example/incidents/42")
    );
    let n = crate::incident::notification(&out(Phase::Updated, &inc), None);
    assert_eq!(n.event, NotifyEvent::Updated);
    assert_eq!(
        n.change.as_deref(),
        Some("the public locations fail too now")
    );
    inc.resolved_ms = Some(3_000);
    let n = crate::incident::notification(&out(Phase::Resolved, &inc), None);
    assert_eq!(
        (n.event, n.resolved_ms),
        (NotifyEvent::Resolved, Some(3_000))
    );

    // Reports map back to the phase they were about.
    for (event, phase) in [
        (NotifyEvent::Opened, Phase::Opened),
        (NotifyEvent::Updated, Phase::Updated),
        (NotifyEvent::Resolved, Phase::Resolved),
    ] {
        let d = crate::incident::delivery(&DeliveryReport {
            incident_id: 42,
            event,
            channel: "ops".into(),
            attempt: 1,
            at_ms: 5,
            outcome: Outcome::Delivered,
        });
        assert_eq!((d.phase, d.state.as_str()), (phase, "delivered"));
    }
}

#[test]
fn incidents_stored_before_the_new_fields_still_parse_and_none_is_not_written() {
    use crate::incident::{Delivery, Incident, Phase};
    // An incident row as an older collector wrote it.
    let old = r#"{"id":3,"monitor":"pg","kind":"down","opened_ms":2000,"since_ms":1000,
        "diagnosis":"service down","reason":"refused",
        "locations":[{"location":"agent:a","state":"down","reason":"refused","down_since_ms":1000}],
        "deliveries":[{"channel":"ops","phase":"opened","attempt":1,"at_ms":2100,"state":"delivered"}]}"#;
    let inc: Incident = serde_json::from_str(old).expect("an old row parses");
    assert_eq!(
        (
            inc.last_ok_ms,
            inc.change.as_deref(),
            inc.notified_update_ms
        ),
        (None, None, None)
    );
    assert_eq!(inc.locations[0].up_since_ms, None);
    let again = serde_json::to_string(&inc).unwrap();
    for new in ["last_ok_ms", "change", "notified_update_ms", "up_since_ms"] {
        assert!(!again.contains(new), "{new} written as null: {again}");
    }
    let mut inc = inc;
    inc.last_ok_ms = Some(900);
    inc.change = Some("edge -> down".into());
    inc.notified_update_ms = Some(2_500);
    inc.locations[0].up_since_ms = Some(1_800);
    let back: Incident = serde_json::from_str(&serde_json::to_string(&inc).unwrap()).unwrap();
    assert_eq!(back, inc);
    let d: Delivery = serde_json::from_str(
        r#"{"channel":"ops","phase":"updated","attempt":1,"at_ms":1,"state":"delivered"}"#,
    )
    .unwrap();
    assert_eq!(d.phase, Phase::Updated);
    assert_eq!(
        serde_json::to_value(NotifyEvent::Updated).unwrap(),
        "updated"
    );
}
