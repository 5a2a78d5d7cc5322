//! The dispatcher against real receivers on loopback: an HTTP receiver that
//! records requests and answers what the test says, and Debian's aiosmtpd as
//! the SMTP server (plain, and STARTTLS with a CA made by the test); and a
//! real collector whose channel is created through its API.
//!
//! Only 127.0.0.1 is ever contacted.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use portwatch_collector::monitors::Severity;
use portwatch_collector::notify::{
    Backoff, Channel, DeliveryReport, Dispatcher, LocationView, Notification, NotifyEvent, Outcome,
    RawChannel, validate_channels,
};
use portwatch_harness as h;
use tokio::sync::mpsc;

mod support;

#[derive(Clone, Debug)]
struct Got {
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Got {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// An HTTP receiver: records every POST, answers the queued statuses, then 200.
#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Got>>>,
    answers: Arc<Mutex<VecDeque<u16>>>,
}

impl Receiver {
    async fn start() -> (Receiver, String) {
        let r = Receiver::default();
        let state = r.clone();
        let app = axum::Router::new().route(
            "/{*path}",
            axum::routing::post(
                move |axum::extract::Path(path): axum::extract::Path<String>,
                      headers: HeaderMap,
                      body: Bytes| {
                    let state = state.clone();
                    async move {
                        state.got.lock().unwrap().push(Got {
                            path,
                            headers,
                            body,
                        });
                        let code = state.answers.lock().unwrap().pop_front().unwrap_or(200);
                        (StatusCode::from_u16(code).unwrap(), "receiver says so")
                    }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (r, url)
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }
}

fn channels(text: &str) -> Vec<Channel> {
    #[derive(serde::Deserialize)]
    struct F {
        notifications: Vec<RawChannel>,
    }
    let f: F = toml::from_str(text).unwrap();
    validate_channels(&f.notifications).unwrap_or_else(|p| panic!("{p:?}"))
}

fn note(id: u64, event: NotifyEvent) -> Notification {
    Notification {
        event,
        incident_id: id,
        kind: "down".into(),
        monitor: "redis-main".into(),
        protocol: "TCP".into(),
        target: "127.0.0.1:6379".into(),
        severity: Severity::High,
        tags: vec!["db".into()],
        locations: vec![LocationView {
            location: "agent:site-a".into(),
            state: "down".into(),
            reason: Some("refused".into()),
            since_ms: Some(1_795_860_000_000),
        }],
        diagnosis: "service down, seen from agent:site-a".into(),
        reason: Some("refused".into()),
        since_ms: 1_795_860_000_000,
        resolved_ms: (event == NotifyEvent::Resolved).then_some(1_795_860_060_000),
        runbook: None,
        dashboard_url: None,
        owner: Some("team-db".into()),
        last_ok_ms: Some(1_795_859_998_000),
        change: (event == NotifyEvent::Updated)
            .then(|| "every location fails now (was: reachable inside only)".into()),
    }
}

/// The first step messages give for `refused`.
const REFUSED_HINT: &str = "is the process running and bound to this address and port?";

/// A mail as its reader sees it: quoted-printable (which the sender picks
/// for lines of 76 characters or more) undone.
fn unquote(raw: &str) -> String {
    let joined = raw.replace("=\r\n", "").replace("=\n", "");
    let b = joined.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'=', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).replace("\r\n", "\n")
}

fn quick() -> Backoff {
    Backoff {
        first: Duration::from_millis(50),
        max: Duration::from_millis(200),
        give_up_after: Duration::from_secs(60),
    }
}

async fn reports_until(
    rx: &mut mpsc::UnboundedReceiver<DeliveryReport>,
    n: usize,
    within: Duration,
) -> Vec<DeliveryReport> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while out.len() < n {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(r)) => out.push(r),
            _ => break,
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_is_signed_and_a_failing_receiver_is_retried_in_order() {
    let (recv, url) = Receiver::start().await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let d = Dispatcher::new(
        channels(&format!(
            "[[notifications]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{url}/hook\"\nsecret = \"hmac-secret-0123456789\"\nheaders = {{ \"X-Team\" = \"ops\" }}\n"
        )),
        quick(),
        tx,
    );
    // Twice 500, then 200: the opened message is delivered on attempt 3, and
    // the resolved one queued behind it only after it.
    recv.answers.lock().unwrap().extend([500, 503]);
    d.notify(note(7, NotifyEvent::Opened));
    d.notify(note(7, NotifyEvent::Resolved));
    let reports = reports_until(&mut rx, 4, Duration::from_secs(10)).await;
    let summary: Vec<(NotifyEvent, u32, bool)> = reports
        .iter()
        .map(|r| (r.event, r.attempt, r.outcome == Outcome::Delivered))
        .collect();
    assert_eq!(
        summary,
        vec![
            (NotifyEvent::Opened, 1, false),
            (NotifyEvent::Opened, 2, false),
            (NotifyEvent::Opened, 3, true),
            (NotifyEvent::Resolved, 1, true),
        ]
    );
    match &reports[0].outcome {
        Outcome::Failed { error, retry_at_ms } => {
            assert!(error.starts_with("HTTP 500"), "{error}");
            assert!(retry_at_ms.unwrap() > reports[0].at_ms);
        }
        o => panic!("{o:?}"),
    }
    let got = recv.got();
    assert_eq!(got.len(), 4);
    let last_open = &got[2];
    assert_eq!(last_open.path, "hook");
    assert_eq!(last_open.json()["event"], "opened");
    assert_eq!(got[3].json()["event"], "resolved");
    assert_eq!(last_open.headers["x-team"], "ops");
    // The receiver checks the signature over "<timestamp>.<body>".
    let ts = last_open.headers["x-portwatch-timestamp"].to_str().unwrap();
    let sig = last_open.headers["x-portwatch-signature"].to_str().unwrap();
    let hex = sig.strip_prefix("sha256=").unwrap();
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"hmac-secret-0123456789");
    let mut signed = format!("{ts}.").into_bytes();
    signed.extend_from_slice(&last_open.body);
    ring::hmac::verify(&key, &signed, &bytes).expect("signature verifies");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_error_fails_at_once_and_a_dead_receiver_is_given_up() {
    let (recv, url) = Receiver::start().await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let d = Dispatcher::new(
        channels(&format!(
            "[[notifications]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{url}/hook\"\n"
        )),
        Backoff {
            give_up_after: Duration::from_millis(400),
            ..quick()
        },
        tx,
    );
    recv.answers.lock().unwrap().push_back(400);
    d.notify(note(1, NotifyEvent::Opened));
    let r = reports_until(&mut rx, 1, Duration::from_secs(5)).await;
    assert!(
        matches!(&r[0].outcome, Outcome::Failed { error, retry_at_ms: None } if error.contains("HTTP 400") && error.contains("receiver says so")),
        "{r:?}"
    );
    // Always 500: retried with growing delays, then given up (retry_at None).
    recv.answers.lock().unwrap().extend([500; 50]);
    let started = Instant::now();
    d.notify(note(2, NotifyEvent::Opened));
    let mut attempts = Vec::new();
    loop {
        let r = reports_until(&mut rx, 1, Duration::from_secs(5)).await;
        let r = r.into_iter().next().expect("a report");
        let done = matches!(
            r.outcome,
            Outcome::Failed {
                retry_at_ms: None,
                ..
            }
        );
        attempts.push(r);
        if done {
            break;
        }
    }
    assert!(attempts.len() >= 3, "{attempts:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(attempts.iter().all(|a| a.outcome != Outcome::Delivered));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_discord_teams_and_pagerduty_get_their_shapes_and_routing_holds() {
    let (recv, url) = Receiver::start().await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let d = Dispatcher::new(
        channels(&format!(
            r#"
[[notifications]]
name = "slack"
kind = "slack"
url = "{url}/slack"

[[notifications]]
name = "discord"
kind = "discord"
url = "{url}/discord"

[[notifications]]
name = "teams"
kind = "teams"
url = "{url}/teams"

[[notifications]]
name = "pd"
kind = "pagerduty"
url = "{url}/pd"
routing_key = "R0UT1NGK3Y"
min_severity = "critical"
"#
        )),
        quick(),
        tx,
    );
    d.notify(note(9, NotifyEvent::Opened));
    let reports = reports_until(&mut rx, 3, Duration::from_secs(10)).await;
    assert_eq!(
        reports.len(),
        3,
        "a high incident skips the critical-only pager"
    );
    assert!(reports.iter().all(|r| r.outcome == Outcome::Delivered));
    let mut crit = note(10, NotifyEvent::Opened);
    crit.severity = Severity::Critical;
    d.notify(crit.clone());
    crit.event = NotifyEvent::Resolved;
    crit.resolved_ms = Some(crit.since_ms + 1000);
    d.notify(crit);
    reports_until(&mut rx, 8, Duration::from_secs(10)).await;
    let got = recv.got();
    let by = |p: &str| -> Vec<serde_json::Value> {
        got.iter().filter(|g| g.path == p).map(Got::json).collect()
    };
    let slack = by("slack");
    assert!(
        slack[0]["text"]
            .as_str()
            .unwrap()
            .starts_with("TCP Port Unreachable")
    );
    assert_eq!(slack[0]["attachments"][0]["color"], "#d00000");
    let discord = by("discord");
    assert!(
        discord[0]["embeds"][0]["description"]
            .as_str()
            .unwrap()
            .contains("refused")
    );
    let teams = by("teams");
    assert_eq!(teams[0]["@type"], "MessageCard");
    let pd = by("pd");
    assert_eq!(pd.len(), 2);
    assert_eq!(pd[0]["event_action"], "trigger");
    assert_eq!(pd[0]["payload"]["severity"], "critical");
    assert_eq!(pd[1]["event_action"], "resolve");
    assert_eq!(pd[0]["dedup_key"], pd[1]["dedup_key"]);
    assert_eq!(pd[0]["routing_key"], "R0UT1NGK3Y");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_reaches_a_real_smtp_server_plain_and_over_starttls() {
    let dir = h::temp_dir();
    // A throwaway CA and a server certificate for 127.0.0.1.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "portwatch test smtp ca");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let srv_key = rcgen::KeyPair::generate().unwrap();
    let srv_params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let srv = srv_params.signed_by(&srv_key, &issuer).unwrap();
    let (ca_file, cert_file, key_file) = (
        dir.path().join("ca.pem"),
        dir.path().join("smtp.pem"),
        dir.path().join("smtp.key"),
    );
    std::fs::write(&ca_file, ca.pem()).unwrap();
    std::fs::write(&cert_file, srv.pem()).unwrap();
    std::fs::write(&key_file, srv_key.serialize_pem()).unwrap();

    let plain_port = h::free_tcp_port();
    let mut plain = h::smtp_sink(dir.path(), plain_port, None);
    let tls_port = h::free_tcp_port();
    let mut secure = h::smtp_sink(dir.path(), tls_port, Some((&cert_file, &key_file)));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let d = Dispatcher::new(
        channels(&format!(
            r#"
[[notifications]]
name = "mail-plain"
kind = "email"
smtp_host = "127.0.0.1"
smtp_port = {plain_port}
tls = "none"
from = "portwatch <portwatch@example.test>"
to = ["ops@example.test"]

[[notifications]]
name = "mail-starttls"
kind = "email"
smtp_host = "127.0.0.1"
smtp_port = {tls_port}
tls = "starttls"
ca_file = "{}"
from = "portwatch@example.test"
to = ["oncall@example.test", "db@example.test"]
"#,
            ca_file.display()
        )),
        quick(),
        tx,
    );
    d.notify(note(5, NotifyEvent::Opened));
    let reports = reports_until(&mut rx, 2, Duration::from_secs(20)).await;
    assert_eq!(reports.len(), 2, "{reports:?}");
    for r in &reports {
        assert_eq!(r.outcome, Outcome::Delivered, "{r:?}");
    }
    for (sink, rcpt) in [
        (&mut plain, "ops@example.test"),
        (&mut secure, "db@example.test"),
    ] {
        assert!(
            h::poll_until(Duration::from_secs(10), || {
                let log = sink.log();
                log.contains("Subject: TCP Port Unreachable: redis-main (127.0.0.1:6379)")
                    && log.contains("Diagnosis:  service down, seen from agent:site-a")
                    && log.contains(rcpt)
            }),
            "{}",
            sink.log()
        );
    }
    // What a responder needs, in the mail as delivered.
    let mail = unquote(&plain.log());
    for want in [
        "Owner:      team-db",
        "Severity:   high",
        "Last OK:    2026-11-28T09:59:58Z (the last healthy check, 2s before the failing began)",
        "agent:site-a                 down (refused) since 2026-11-28T10:00:00Z",
        &format!("First steps:\n  refused: {REFUSED_HINT}"),
    ] {
        assert!(mail.contains(want), "{want:?} not in\n{mail}");
    }
    // The STARTTLS sink refuses mail without TLS: a channel that does not
    // trust its CA fails (and says why), it never falls back to clear text.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let d = Dispatcher::new(
        channels(&format!(
            "[[notifications]]\nname = \"mail-untrusted\"\nkind = \"email\"\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {tls_port}\nfrom = \"portwatch@example.test\"\nto = [\"ops@example.test\"]\n"
        )),
        Backoff {
            give_up_after: Duration::from_millis(100),
            ..quick()
        },
        tx,
    );
    d.notify(note(6, NotifyEvent::Opened));
    let r = reports_until(&mut rx, 1, Duration::from_secs(10)).await;
    assert!(
        matches!(&r[0].outcome, Outcome::Failed { error, .. } if error.starts_with("SMTP")),
        "{r:?}"
    );
}

/// An update goes out between "opened" and "resolved" on every channel, in
/// that order: a webhook that names it, a PagerDuty trigger that merges into
/// the open alert, chat cards and a mail that say what changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_reaches_every_channel_between_opened_and_resolved() {
    let (recv, url) = Receiver::start().await;
    let dir = h::temp_dir();
    let smtp_port = h::free_tcp_port();
    let sink = h::smtp_sink(dir.path(), smtp_port, None);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let d = Dispatcher::new(
        channels(&format!(
            r#"
[[notifications]]
name = "hook"
kind = "webhook"
url = "{url}/hook"
secret = "hmac-secret-0123456789"

[[notifications]]
name = "slack"
kind = "slack"
url = "{url}/slack"

[[notifications]]
name = "discord"
kind = "discord"
url = "{url}/discord"

[[notifications]]
name = "teams"
kind = "teams"
url = "{url}/teams"

[[notifications]]
name = "pd"
kind = "pagerduty"
url = "{url}/pd"
routing_key = "R0UT1NGK3Y"

[[notifications]]
name = "mail"
kind = "email"
smtp_host = "127.0.0.1"
smtp_port = {smtp_port}
tls = "none"
from = "portwatch@example.test"
to = ["oncall@example.test"]
"#
        )),
        quick(),
        tx,
    );
    for event in [
        NotifyEvent::Opened,
        NotifyEvent::Updated,
        NotifyEvent::Resolved,
    ] {
        d.notify(note(11, event));
    }
    let reports = reports_until(&mut rx, 18, Duration::from_secs(20)).await;
    assert_eq!(reports.len(), 18, "{reports:?}");
    assert!(
        reports.iter().all(|r| r.outcome == Outcome::Delivered),
        "{reports:?}"
    );
    let change = "every location fails now (was: reachable inside only)";
    let got = recv.got();
    let by = |p: &str| -> Vec<Got> { got.iter().filter(|g| g.path == p).cloned().collect() };

    let hook = by("hook");
    let events: Vec<String> = hook
        .iter()
        .map(|g| g.json()["event"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(events, ["opened", "updated", "resolved"]);
    verify_signature(&hook[1], "hmac-secret-0123456789");
    assert_eq!(hook[1].headers["x-portwatch-event"], "updated");
    let update = hook[1].json();
    assert_eq!(update["change"], change);
    assert_eq!(
        update["subject"],
        "TCP Port Unreachable (update): redis-main (127.0.0.1:6379)"
    );
    assert_eq!(update["locations"][0]["hint"], REFUSED_HINT);
    let resolved = hook[2].json();
    assert_eq!(resolved["duration_ms"], 60_000);
    assert_eq!(resolved["change"], serde_json::Value::Null);

    let pd: Vec<serde_json::Value> = by("pd").iter().map(Got::json).collect();
    let actions: Vec<&str> = pd
        .iter()
        .map(|p| p["event_action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["trigger", "trigger", "resolve"]);
    assert!(pd.iter().all(|p| p["dedup_key"] == "portwatch-11"));
    assert_eq!(pd[1]["payload"]["custom_details"]["change"], change);
    assert_eq!(pd[1]["payload"]["custom_details"]["owner"], "team-db");

    let slack = by("slack")[1].json();
    assert!(
        slack["text"].as_str().unwrap().contains("(update)"),
        "{slack}"
    );
    assert!(slack.to_string().contains(change), "{slack}");
    let discord = by("discord")[1].json();
    assert!(discord.to_string().contains(change), "{discord}");
    let teams = by("teams")[1].json();
    assert!(teams.to_string().contains(change), "{teams}");

    assert!(
        h::poll_until(Duration::from_secs(10), || sink
            .log()
            .contains("Subject: TCP Port Reachable Again")),
        "{}",
        sink.log()
    );
    let mail = unquote(&sink.log());
    let (opened_at, update_at, resolved_at) = (
        mail.find("Subject: TCP Port Unreachable: redis-main")
            .unwrap(),
        mail.find("Subject: TCP Port Unreachable (update): redis-main")
            .unwrap(),
        mail.find("Subject: TCP Port Reachable Again: redis-main")
            .unwrap(),
    );
    assert!(opened_at < update_at && update_at < resolved_at, "{mail}");
    assert!(
        mail[update_at..resolved_at].contains(&format!("Changed:    {change}")),
        "{mail}"
    );
    assert!(
        mail[resolved_at..].contains("the outage lasted 1m"),
        "{mail}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_reload_replaces_channels_and_routes_follow_at_once() {
    let (recv, url) = Receiver::start().await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let one = format!("[[notifications]]\nname = \"a\"\nkind = \"webhook\"\nurl = \"{url}/a\"\n");
    let d = Dispatcher::new(channels(&one), quick(), tx);
    d.notify(note(1, NotifyEvent::Opened));
    assert_eq!(
        reports_until(&mut rx, 1, Duration::from_secs(5))
            .await
            .len(),
        1
    );
    // Channel a goes, b comes: the next notification reaches b only.
    d.set_channels(channels(&format!(
        "[[notifications]]\nname = \"b\"\nkind = \"webhook\"\nurl = \"{url}/b\"\n"
    )));
    assert_eq!(d.channels().len(), 1);
    assert_eq!(d.channels()[0].name, "b");
    d.notify(note(2, NotifyEvent::Opened));
    let r = reports_until(&mut rx, 1, Duration::from_secs(5)).await;
    assert_eq!(r[0].channel, "b");
    let paths: Vec<String> = recv.got().into_iter().map(|g| g.path).collect();
    assert_eq!(paths, vec!["a", "b"]);
    // A resend after a restart skips the channels that already have it.
    d.notify_skipping(note(2, NotifyEvent::Opened), &["b".to_owned()]);
    assert!(
        reports_until(&mut rx, 1, Duration::from_millis(300))
            .await
            .is_empty()
    );
}

fn verify_signature(got: &Got, secret: &str) {
    let ts = got.headers["x-portwatch-timestamp"].to_str().unwrap();
    let sig = got.headers["x-portwatch-signature"].to_str().unwrap();
    let hex = sig.strip_prefix("sha256=").unwrap();
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let mut signed = format!("{ts}.").into_bytes();
    signed.extend_from_slice(&got.body);
    ring::hmac::verify(&key, &signed, &bytes).expect("signature verifies");
}

/// The receiver's POSTs to `path` about `monitor` for `event`, waited for.
async fn wait_for_post(recv: &Receiver, path: &str, event: &str, within: Duration) -> Got {
    let deadline = Instant::now() + within;
    loop {
        if let Some(g) = recv
            .got()
            .into_iter()
            .find(|g| g.path == path && g.json()["event"] == event && g.json()["monitor"] == "lab")
        {
            return g;
        }
        assert!(
            Instant::now() < deadline,
            "no {event} notification at /{path}: {:?}",
            recv.got()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The whole journey through a real collector: a webhook and a mail channel
/// created through the API (persisted 0600, the secret never shown) receive
/// a real incident of a service that was healthy, then refused: signed, with
/// the owner, severity, last healthy time, each location's reason and the
/// first step, as the incident page shows them too; a config file reload
/// adds a file channel and keeps the API's, and all get the resolution.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_created_through_the_api_receives_a_real_incident_and_survives_a_reload() {
    use portwatch_collector::client::AdminClient;
    use portwatch_collector::monitors::{Origin, RawMonitor};
    use std::os::unix::fs::PermissionsExt;

    let (recv, hook) = Receiver::start().await;
    let smtp_port = h::free_tcp_port();
    let mail_dir = h::temp_dir();
    let sink = h::smtp_sink(mail_dir.path(), smtp_port, None);
    // The service answers at first; the test stops it later.
    let service = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = service.local_addr().unwrap().port();
    let (stop_service, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(async move {
        tokio::pin!(stopped);
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                Ok((s, _)) = service.accept() => drop(s),
            }
        }
    });
    let r = support::start_from_file("allow_private_targets = true\n").await;
    let data = r.dir.path().join("collector");
    let secret = "hmac-secret-0123456789";
    let owner = "team-lab (+1 555 0100)";
    let client = {
        let data = data.clone();
        move || {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                match AdminClient::from_data_dir(&data) {
                    Ok(c) => return c,
                    Err(e) if Instant::now() > deadline => panic!("{e}"),
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
    };
    let c = tokio::task::spawn_blocking(client).await.unwrap();
    let c = Arc::new(c);
    let api = c.clone();
    let hook_url = format!("{hook}/hook");
    tokio::task::spawn_blocking(move || {
        let view = api
            .put_channel(
                "ops-hook",
                &serde_json::json!({
                    "kind": "webhook",
                    "url": hook_url,
                    "secret": secret,
                    "monitors": ["lab"],
                }),
            )
            .unwrap();
        assert_eq!(view.origin, Origin::Api);
        api.put_channel(
            "ops-mail",
            &serde_json::json!({
                "kind": "email",
                "smtp_host": "127.0.0.1",
                "smtp_port": smtp_port,
                "tls": "none",
                "from": "portwatch@example.test",
                "to": ["oncall@example.test"],
                "monitors": ["lab"],
            }),
        )
        .unwrap();
        let shown = serde_json::to_string(&api.list_channels().unwrap()).unwrap();
        assert!(!shown.contains(secret), "{shown}");
        api.put_monitor(&RawMonitor {
            name: "lab".into(),
            target: format!("tcp://127.0.0.1:{port}"),
            interval: Some("1s".into()),
            locations: vec!["public:collector".into()],
            owner: Some(owner.into()),
            severity: Some("critical".into()),
            ..Default::default()
        })
        .unwrap();
    })
    .await
    .unwrap();

    // The API channel lives in a 0600 file, secret included.
    let file = data.join("notifications.json");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{mode:o}");
    let stored: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(stored["channels"][0]["secret"], secret);

    // Healthy first, then the service stops: refused.
    let deadline = Instant::now() + Duration::from_secs(20);
    while r
        .collector
        .incidents
        .status_of("lab")
        .is_none_or(|s| s.state != "up")
    {
        assert!(Instant::now() < deadline, "lab never came up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_service.send(()).unwrap();
    serving.await.unwrap();

    // An incident opens; the API channels get it, the webhook signed.
    let opened = wait_for_post(&recv, "hook", "opened", Duration::from_secs(20)).await;
    verify_signature(&opened, secret);
    let note = opened.json();
    assert_eq!(note["kind"], "down");
    assert_eq!(note["reason"], "refused");
    assert_eq!(note["owner"], owner);
    assert_eq!(note["severity"], "critical");
    let at = &note["locations"][0];
    assert_eq!(
        (&at["location"], &at["state"], &at["reason"], &at["hint"]),
        (
            &"public:collector".into(),
            &"down".into(),
            &"refused".into(),
            &REFUSED_HINT.into()
        ),
        "{note}"
    );
    assert!(at["since_ms"].as_i64().unwrap() >= note["since_ms"].as_i64().unwrap());
    assert_eq!(note["first_steps"][0], format!("refused: {REFUSED_HINT}"));
    assert_eq!(opened.headers["x-portwatch-event"], "opened");
    let id = note["incident_id"].as_u64().unwrap();
    // And the delivery is written on the incident.
    let deadline = Instant::now() + Duration::from_secs(10);
    let inc = loop {
        let inc = r
            .collector
            .incidents
            .open_incidents()
            .into_iter()
            .find(|i| i.id == id)
            .expect("the incident is open");
        if ["ops-hook", "ops-mail"].iter().all(|c| {
            inc.deliveries
                .iter()
                .any(|d| d.channel == *c && d.state == "delivered")
        }) {
            break inc;
        }
        assert!(Instant::now() < deadline, "{:?}", inc.deliveries);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The last healthy time is the engine's to find: every channel says
    // what it found.
    assert_eq!(note["last_ok_ms"].as_i64(), inc.last_ok_ms, "{note}");

    // The mail, as delivered, says the same.
    let mail = unquote(&sink.log());
    let mut wants = vec![
        format!("Subject: TCP Port Unreachable: lab (127.0.0.1:{port})"),
        format!("Owner:      {owner}"),
        "Severity:   critical".to_owned(),
        "public:collector             down (refused) since ".to_owned(),
        format!("First steps:\n  refused: {REFUSED_HINT}"),
    ];
    if let Some(ok) = note["last_ok"].as_str() {
        wants.push(format!("Last OK:    {ok} (the last healthy check"));
    }
    for want in &wants {
        assert!(mail.contains(want.as_str()), "{want:?} not in\n{mail}");
    }

    // The incident page shows it to whoever follows the message's link.
    let discovery = r.discovery().await;
    let token = portwatch_collector::admin::AdminToken::read(&data.join("admin.token")).unwrap();
    let page_url = format!("{}/incidents/{id}", discovery.url);
    let bearer = format!("Bearer {}", token.secret());
    let page = tokio::task::spawn_blocking(move || {
        ureq::get(&page_url)
            .header("Authorization", &bearer)
            .call()
            .unwrap()
            .into_body()
            .read_to_string()
            .unwrap()
    })
    .await
    .unwrap();
    for want in [
        "<dt>owner</dt><dd>team-lab (+1 555 0100)</dd>",
        "<dt>severity</dt><dd>critical</dd>",
        "<dt>last healthy</dt>",
        "First steps",
        REFUSED_HINT,
        "down since ",
    ] {
        assert!(page.contains(want), "{want:?} not in\n{page}");
    }

    // A reload brings a file channel; the API's stay, and are still served.
    let config = r.config_path();
    let tmp = config.with_extension("toml.new");
    std::fs::write(
        &tmp,
        format!(
            "allow_private_targets = true\n[[notifications]]\nname = \"file-hook\"\nkind = \"webhook\"\nurl = \"{hook}/file\"\nmonitors = [\"lab\"]\n"
        ),
    )
    .unwrap();
    std::fs::rename(&tmp, &config).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while r.collector.channels.get("file-hook").is_none() {
        assert!(Instant::now() < deadline, "the reload was not applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let api = c.clone();
    let listed = tokio::task::spawn_blocking(move || api.list_channels().unwrap())
        .await
        .unwrap();
    let listed: Vec<(String, Origin)> = listed.into_iter().map(|v| (v.name, v.origin)).collect();
    assert_eq!(
        listed,
        [
            ("file-hook".to_owned(), Origin::File),
            ("ops-hook".to_owned(), Origin::Api),
            ("ops-mail".to_owned(), Origin::Api),
        ]
    );

    // The service comes up again: every channel gets the resolution, which
    // says the location succeeds again and how long the outage lasted.
    let service = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = service.accept().await {
            drop(s);
        }
    });
    let resolved = wait_for_post(&recv, "hook", "resolved", Duration::from_secs(20)).await;
    verify_signature(&resolved, secret);
    let done = resolved.json();
    assert_eq!(done["incident_id"], id);
    assert_eq!(
        done["duration_ms"].as_i64(),
        Some(done["resolved_ms"].as_i64().unwrap() - done["since_ms"].as_i64().unwrap())
    );
    assert_eq!(done["first_steps"], serde_json::json!([]));
    let file = wait_for_post(&recv, "file", "resolved", Duration::from_secs(10)).await;
    assert!(file.headers.get("x-portwatch-signature").is_none());
    assert!(
        h::poll_until(Duration::from_secs(10), || sink.log().contains(&format!(
            "Subject: TCP Port Reachable Again: lab (127.0.0.1:{port})"
        ))),
        "{}",
        sink.log()
    );
    assert!(unquote(&sink.log()).contains("(the outage lasted "));
}
