//! Sending one notification to one channel: the JSON each HTTP kind
//! documents (built with serde_json, never by pasting strings), and SMTP for
//! email. The blocking clients (ureq, lettre) run on the blocking pool.

use std::time::Duration;

use serde_json::{Value, json};

use super::message::rfc3339;
use super::{Channel, Notification, NotifyEvent, SmtpTls, Target, subject, text_body};
use crate::monitors::Severity;

/// At most this much of an error response's body is kept in a report.
const ERROR_EXCERPT: usize = 300;

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("HTTP {status}: {body}")]
    Status { status: u16, body: String },
    #[error("{0}")]
    Transport(String),
    #[error("SMTP: {0}")]
    Smtp(String),
    /// Our side cannot build the request (bad certificate file, bad address).
    #[error("{0}")]
    Setup(String),
}

impl SendError {
    /// Worth retrying: the receiver may take it later.
    pub fn is_transient(&self) -> bool {
        match self {
            SendError::Status { status, .. } => *status == 408 || *status == 429 || *status >= 500,
            SendError::Transport(_) => true,
            SendError::Smtp(_) => true,
            SendError::Setup(_) => false,
        }
    }
}

fn colour(n: &Notification) -> u32 {
    match n.event {
        NotifyEvent::Resolved => 0x2e_b8_86,
        NotifyEvent::Opened | NotifyEvent::Updated if n.kind == "edge" => 0xe0_a0_00,
        NotifyEvent::Opened | NotifyEvent::Updated => 0xd0_00_00,
    }
}

/// Slack treats `&`, `<` and `>` as control characters (links, mentions).
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn html_escape(s: &str) -> String {
    slack_escape(s).replace('"', "&quot;")
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// The locations as the JSON payloads carry them: the stored fields plus
/// `since` (RFC 3339) and the first-step `hint` of a failing location.
fn locations_json(n: &Notification) -> Value {
    n.locations
        .iter()
        .map(|l| {
            let failing = l.state != "up" && l.state != "unknown";
            json!({
                "location": l.location,
                "state": l.state,
                "reason": l.reason,
                "since_ms": l.since_ms,
                "since": l.since_ms.map(rfc3339),
                "hint": l.reason.as_deref().filter(|_| failing).and_then(super::hint),
            })
        })
        .collect()
}

/// `["refused: is the process running ...", ...]`.
fn first_steps(n: &Notification) -> Vec<String> {
    n.first_steps()
        .iter()
        .map(|(r, h)| format!("{r}: {h}"))
        .collect()
}

/// The generic webhook body (`version` 1: fields are only ever added).
pub fn webhook_body(n: &Notification) -> Value {
    json!({
        "version": 1,
        "event": n.event.as_str(),
        "subject": subject(n),
        "incident_id": n.incident_id,
        "kind": n.kind,
        "monitor": n.monitor,
        "protocol": n.protocol,
        "target": n.target,
        "severity": n.severity.as_str(),
        "owner": n.owner,
        "tags": n.tags,
        "diagnosis": n.diagnosis,
        "reason": n.reason,
        "hint": n.reason.as_deref().and_then(super::hint),
        "change": n.change.as_ref().filter(|_| n.event == NotifyEvent::Updated),
        "since": rfc3339(n.since_ms),
        "since_ms": n.since_ms,
        "resolved": n.resolved_ms.map(rfc3339),
        "resolved_ms": n.resolved_ms,
        "duration_ms": n.duration_ms(),
        "last_ok": n.last_ok_ms.map(rfc3339),
        "last_ok_ms": n.last_ok_ms,
        "locations": locations_json(n),
        "first_steps": first_steps(n),
        "runbook": n.runbook,
        "dashboard_url": n.dashboard_url,
        "text": text_body(n),
    })
}

pub fn slack_body(n: &Notification) -> Value {
    let fields: Vec<Value> = n
        .facts()
        .into_iter()
        .map(|(k, v)| json!({ "title": k, "value": slack_escape(&v), "short": k != "Changed" }))
        .collect();
    json!({
        "text": slack_escape(&subject(n)),
        "attachments": [{
            "color": format!("#{:06x}", colour(n)),
            "title": slack_escape(&subject(n)),
            "fields": fields,
            "text": format!("```{}```", slack_escape(&text_body(n))),
            "footer": "portwatch",
        }],
    })
}

pub fn discord_body(n: &Notification) -> Value {
    // An embed holds at most 6,000 characters in all: title 256 +
    // description 4,096 + the facts (an owner is at most 128, a change is
    // cut at 512) stay below.
    let fields: Vec<Value> = n
        .facts()
        .into_iter()
        .map(|(k, v)| json!({ "name": k, "value": truncate(&v, 512), "inline": k != "Changed" }))
        .collect();
    json!({
        "content": truncate(&subject(n), 2000),
        "embeds": [{
            "title": truncate(&subject(n), 256),
            "description": truncate(&format!("```\n{}\n```", text_body(n)), 4096),
            "color": colour(n),
            "fields": fields,
        }],
        // Monitor names are text from a config: never let them ping anyone.
        "allowed_mentions": { "parse": [] },
    })
}

pub fn teams_body(n: &Notification) -> Value {
    let facts: Vec<Value> = n
        .facts()
        .into_iter()
        .map(|(k, v)| json!({ "name": k, "value": html_escape(&v) }))
        .collect();
    json!({
        "@type": "MessageCard",
        "@context": "https://schema.org/extensions",
        "summary": html_escape(&subject(n)),
        "themeColor": format!("{:06X}", colour(n)),
        "title": html_escape(&subject(n)),
        "sections": [{ "facts": facts }],
        "text": format!("<pre>{}</pre>", html_escape(&text_body(n))),
    })
}

fn pagerduty_severity(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "critical",
        Severity::High => "error",
        Severity::Medium => "warning",
        Severity::Low => "info",
    }
}

/// The PagerDuty Events API v2 body, one dedup key per incident: trigger on
/// open; an update is another trigger with the same key (PagerDuty adds it
/// to the open alert, it opens no second one); resolve on close.
pub fn pagerduty_body(n: &Notification, routing_key: &str) -> Value {
    let dedup_key = format!("portwatch-{}", n.incident_id);
    match n.event {
        NotifyEvent::Resolved => json!({
            "routing_key": routing_key,
            "event_action": "resolve",
            "dedup_key": dedup_key,
        }),
        NotifyEvent::Opened | NotifyEvent::Updated => {
            let mut links = Vec::new();
            if let Some(r) = &n.runbook {
                links.push(json!({ "href": r, "text": "Runbook" }));
            }
            if let Some(d) = &n.dashboard_url {
                links.push(json!({ "href": d, "text": "portwatch" }));
            }
            json!({
                "routing_key": routing_key,
                "event_action": "trigger",
                "dedup_key": dedup_key,
                "payload": {
                    "summary": truncate(&subject(n), 1024),
                    "source": if n.target.is_empty() { &n.monitor } else { &n.target },
                    "severity": pagerduty_severity(n.severity),
                    "timestamp": rfc3339(n.since_ms),
                    "component": n.monitor,
                    "class": n.kind,
                    "custom_details": {
                        "event": n.event.as_str(),
                        "change": n.change.as_ref().filter(|_| n.event == NotifyEvent::Updated),
                        "owner": n.owner,
                        "diagnosis": n.diagnosis,
                        "reason": n.reason,
                        "last_ok": n.last_ok_ms.map(rfc3339),
                        "locations": locations_json(n),
                        "first_steps": first_steps(n),
                        "tags": n.tags,
                    },
                },
                "links": links,
            })
        }
    }
}

/// The signature header value: `sha256=<hex HMAC-SHA256 of "<ts>.<body>">`.
pub fn signature(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(timestamp.as_bytes());
    ctx.update(b".");
    ctx.update(body);
    let tag = ctx.sign();
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// Sends `n` to `channel` once.
pub async fn send(channel: &Channel, n: &Notification) -> Result<(), SendError> {
    let (channel, n) = (channel.clone(), n.clone());
    tokio::task::spawn_blocking(move || send_blocking(&channel, &n))
        .await
        .map_err(|e| SendError::Transport(format!("sender task: {e}")))?
}

fn send_blocking(channel: &Channel, n: &Notification) -> Result<(), SendError> {
    match &channel.target {
        Target::Webhook {
            url,
            secret,
            headers,
        } => {
            let body = serde_json::to_vec(&webhook_body(n))
                .map_err(|e| SendError::Setup(e.to_string()))?;
            let ts = (crate::state::unix_ms(std::time::SystemTime::now()) / 1000).to_string();
            let mut extra: Vec<(String, String)> = headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            extra.push(("X-Portwatch-Event".into(), n.event.as_str().into()));
            extra.push(("X-Portwatch-Timestamp".into(), ts.clone()));
            if let Some(s) = secret {
                extra.push((
                    "X-Portwatch-Signature".into(),
                    signature(s.expose(), &ts, &body),
                ));
            }
            post(channel, url.expose(), &body, &extra)
        }
        Target::Slack { url } => post_json(channel, url.expose(), &slack_body(n)),
        Target::Discord { url } => post_json(channel, url.expose(), &discord_body(n)),
        Target::Teams { url } => post_json(channel, url.expose(), &teams_body(n)),
        Target::PagerDuty { url, routing_key } => {
            post_json(channel, url, &pagerduty_body(n, routing_key.expose()))
        }
        Target::Email {
            host,
            port,
            tls,
            credentials,
            from,
            to,
        } => email(channel, host, *port, *tls, credentials, from, to, n),
    }
}

fn post_json(channel: &Channel, url: &str, body: &Value) -> Result<(), SendError> {
    let body = serde_json::to_vec(body).map_err(|e| SendError::Setup(e.to_string()))?;
    post(channel, url, &body, &[])
}

fn http_agent(channel: &Channel) -> Result<ureq::Agent, SendError> {
    use ureq::tls::{Certificate, RootCerts, TlsConfig};
    let mut tls = TlsConfig::builder();
    if let Some(pem) = &channel.ca_pem {
        let certs: Vec<Certificate<'static>> = ureq::tls::parse_pem(pem.as_bytes())
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        if certs.is_empty() {
            return Err(SendError::Setup(format!(
                "channel {}: ca_file holds no certificate",
                channel.name
            )));
        }
        tls = tls.root_certs(RootCerts::new_with_certs(&certs));
    }
    Ok(ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(channel.timeout))
        .user_agent(concat!("portwatch/", env!("CARGO_PKG_VERSION")))
        .tls_config(tls.build())
        .build()
        .into())
}

fn post(
    channel: &Channel,
    url: &str,
    body: &[u8],
    headers: &[(String, String)],
) -> Result<(), SendError> {
    let agent = http_agent(channel)?;
    let mut req = agent.post(url).header("Content-Type", "application/json");
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    // The URL may hold a credential (Slack, Discord, Teams): errors name the
    // channel, never the URL.
    let resp = req.send(body).map_err(|e| {
        SendError::Transport(format!(
            "channel {}: {}",
            channel.name,
            scrub(&e.to_string(), url)
        ))
    })?;
    let status = resp.status().as_u16();
    if (200..300).contains(&status) {
        return Ok(());
    }
    let text = resp
        .into_body()
        .with_config()
        .limit(4096)
        .read_to_string()
        .unwrap_or_default();
    Err(SendError::Status {
        status,
        body: portwatch_agent::result::escape_excerpt(text.as_bytes(), ERROR_EXCERPT),
    })
}

/// `text` with every occurrence of `url` (and its path) removed.
fn scrub(text: &str, url: &str) -> String {
    let mut out = text.replace(url, "[url]");
    if let Some((_, rest)) = url.split_once("://")
        && let Some((_, path)) = rest.split_once('/')
        && !path.is_empty()
    {
        out = out.replace(path, "[path]");
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn email(
    channel: &Channel,
    host: &str,
    port: u16,
    tls: SmtpTls,
    credentials: &Option<(String, super::Secret)>,
    from: &str,
    to: &[String],
    n: &Notification,
) -> Result<(), SendError> {
    use lettre::message::header::ContentType;
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
    use lettre::{Message, SmtpTransport, Transport};

    let setup =
        |e: &dyn std::fmt::Display| SendError::Setup(format!("channel {}: {e}", channel.name));
    let mut msg = Message::builder()
        .from(from.parse().map_err(|e| setup(&e))?)
        .subject(subject(n))
        .header(ContentType::TEXT_PLAIN);
    for t in to {
        msg = msg.to(t.parse().map_err(|e| setup(&e))?);
    }
    let msg = msg.body(text_body(n)).map_err(|e| setup(&e))?;
    let params = || -> Result<TlsParameters, SendError> {
        let mut b = TlsParameters::builder(host.to_owned());
        if let Some(pem) = &channel.ca_pem {
            let cert = Certificate::from_pem(pem.as_bytes()).map_err(|e| setup(&e))?;
            b = b.add_root_certificate(cert);
        }
        b.build_rustls().map_err(|e| setup(&e))
    };
    let tls = match tls {
        SmtpTls::StartTls => Tls::Required(params()?),
        SmtpTls::Tls => Tls::Wrapper(params()?),
        SmtpTls::None => Tls::None,
    };
    let mut transport = SmtpTransport::builder_dangerous(host)
        .port(port)
        .tls(tls)
        .timeout(Some(channel.timeout.max(Duration::from_secs(1))));
    if let Some((user, pass)) = credentials {
        transport = transport.credentials(Credentials::new(user.clone(), pass.expose().to_owned()));
    }
    transport
        .build()
        .send(&msg)
        .map(|_| ())
        .map_err(|e| SendError::Smtp(e.to_string()))
}
