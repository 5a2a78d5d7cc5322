//! Notifications: the channels incidents are sent to (generic webhook with an
//! HMAC-SHA256 signature, Slack, Discord, Microsoft Teams, PagerDuty Events
//! v2, email over SMTP), what a message says, and the dispatcher that
//! delivers them with retries and reports every attempt.
//!
//! Channels are configured as `[[notifications]]` in the collector's config
//! file or through the API (the same fields in JSON; [`registry`] keeps both
//! in one namespace and persists the API's), each with an optional route
//! (monitor names, tags, minimum severity).
//!
//! What a message says is in `message` (subject, text, facts) and `hint`
//! (the first step per failure reason); `send` shapes it per channel. An
//! incident sends "opened", at most one "updated" when its picture changes
//! while open, and "resolved".
//!
//! The dispatcher keeps one FIFO worker per channel, so a channel sees an
//! incident's "opened" before its "resolved" (PagerDuty would otherwise keep
//! an incident open forever), and a slow or dead channel never holds up the
//! others. Transient failures (connection, timeout, 408/429/5xx) are retried
//! with exponential backoff and jitter, 1 s doubling to 5 min, for up to 24 h;
//! a permanent one (another 4xx, a bad address) fails at once. Every attempt
//! becomes a [`DeliveryReport`]: the incident engine writes it on the
//! incident, so a failure is visible in the API, never lost silently.
//!
//! Webhook receivers verify `X-Portwatch-Signature: sha256=<hex>`, the
//! HMAC-SHA256 with the channel's secret over `"<X-Portwatch-Timestamp>.<body>"`,
//! and should refuse a timestamp older than a few minutes (replays).
//!
//! Secrets (webhook secret and headers, SMTP password, PagerDuty routing key,
//! and the webhook/Slack/Discord/Teams URLs, which are credentials
//! themselves) are never logged, never in `Debug` output and never served back
//! by the API: they are write-only ([`WRITE_ONLY`]).

mod hint;
mod message;
pub mod registry;
mod send;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::monitors::Severity;

pub use hint::{first_steps, hint};
pub use message::{
    LocationView, Notification, NotifyEvent, TEST_KIND, subject, test_notification, text_body,
};
pub use registry::{ChannelEntry, ChannelError, ChannelRegistry};
pub use send::{SendError, send};

/// A secret: its value is never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A channel as written: TOML `[[notifications]]` in the config file, or the
/// JSON body of `PUT /api/v1/notifications/channels/{name}`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawChannel {
    /// Unique name (file and API channels share one namespace), shown in
    /// delivery reports.
    pub name: String,
    /// `webhook`, `slack`, `discord`, `teams`, `pagerduty` or `email`.
    pub kind: String,
    /// Where to POST (every kind but email; PagerDuty defaults to its Events
    /// API v2). Write-only except for PagerDuty: it may carry a credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Webhook: the HMAC-SHA256 key of `X-Portwatch-Signature`, at least 16
    /// characters. Write-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Webhook: extra request headers. Write-only (they may carry a token).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// PagerDuty: the integration's routing key. Write-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing_key: Option<String>,
    /// Email: the SMTP relay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp_host: Option<String>,
    /// Email: default 587 (starttls), 465 (tls) or 25 (none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp_port: Option<u32>,
    /// Email: `starttls` (default), `tls` or `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<String>,
    /// Email: the SMTP login (with `password`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Email: the SMTP password (with `username`). Write-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Email: sender, e.g. "portwatch <portwatch@example.com>".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Email: recipients.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<String>,
    /// A PEM CA to trust (a private relay or receiver) instead of the public
    /// roots: a file on the collector's host, read when the channel is checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub ca_file: Option<PathBuf>,
    /// Per request, e.g. "10s" (default), between 1s and 2m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Route: only these monitors (empty: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub monitors: Vec<String>,
    /// Route: only monitors with any of these tags (empty: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Route: only this severity or graver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_severity: Option<Severity>,
}

/// Every field that may hold a credential. The API accepts them, stores them
/// (in a 0600 file) and never shows them: an answer lists which are set.
/// `url` is one except for PagerDuty, whose URL is the public Events API.
pub const WRITE_ONLY: [&str; 5] = ["url", "secret", "headers", "routing_key", "password"];

impl RawChannel {
    /// Is `field` (one of [`WRITE_ONLY`]) write-only for this channel's kind?
    fn write_only(&self, field: &str) -> bool {
        WRITE_ONLY.contains(&field) && !(field == "url" && self.kind == "pagerduty")
    }

    fn is_set(&self, field: &str) -> bool {
        match field {
            "url" => self.url.is_some(),
            "secret" => self.secret.is_some(),
            "headers" => !self.headers.is_empty(),
            "routing_key" => self.routing_key.is_some(),
            "password" => self.password.is_some(),
            _ => false,
        }
    }

    /// Sets `field` to its value in `from`.
    fn copy_field(&mut self, from: &RawChannel, field: &str) {
        match field {
            "url" => self.url.clone_from(&from.url),
            "secret" => self.secret.clone_from(&from.secret),
            "headers" => self.headers.clone_from(&from.headers),
            "routing_key" => self.routing_key.clone_from(&from.routing_key),
            "password" => self.password.clone_from(&from.password),
            _ => {}
        }
    }

    /// The write-only fields this definition sets, in [`WRITE_ONLY`] order.
    pub fn write_only_set(&self) -> Vec<String> {
        WRITE_ONLY
            .iter()
            .filter(|f| self.write_only(f) && self.is_set(f))
            .map(|f| (*f).to_owned())
            .collect()
    }

    /// This definition without its write-only fields: what may be shown.
    pub fn redacted(&self) -> RawChannel {
        let mut out = self.clone();
        let empty = RawChannel::default();
        for f in WRITE_ONLY {
            if self.write_only(f) {
                out.copy_field(&empty, f);
            }
        }
        out
    }

    /// Takes from `stored` the write-only fields named in `omitted` (left
    /// out of a replacing definition), when both are of the same kind: a
    /// client that read the channel back (secrets redacted) can change it
    /// without sending its secrets again.
    pub fn keep_write_only(&mut self, stored: &RawChannel, omitted: &[&str]) {
        if stored.kind != self.kind {
            return;
        }
        for f in omitted {
            if self.write_only(f) && !self.is_set(f) {
                self.copy_field(stored, f);
            }
        }
    }
}

impl fmt::Debug for RawChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawChannel")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("smtp_host", &self.smtp_host)
            .field("to", &self.to)
            .finish_non_exhaustive()
    }
}

/// How an email channel talks TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    StartTls,
    Tls,
    None,
}

/// What a checked channel sends to.
#[derive(Clone, PartialEq, Eq)]
pub enum Target {
    Webhook {
        /// A URL may carry a token (query string, user info).
        url: Secret,
        secret: Option<Secret>,
        headers: BTreeMap<String, String>,
    },
    Slack {
        url: Secret,
    },
    Discord {
        url: Secret,
    },
    Teams {
        url: Secret,
    },
    PagerDuty {
        url: String,
        routing_key: Secret,
    },
    Email {
        host: String,
        port: u16,
        tls: SmtpTls,
        credentials: Option<(String, Secret)>,
        from: String,
        to: Vec<String>,
    },
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Header values may carry a token: names only.
            Target::Webhook {
                url,
                secret,
                headers,
            } => f
                .debug_struct("Webhook")
                .field("url", url)
                .field("secret", secret)
                .field("header_names", &headers.keys().collect::<Vec<_>>())
                .finish(),
            Target::Slack { url } => f.debug_struct("Slack").field("url", url).finish(),
            Target::Discord { url } => f.debug_struct("Discord").field("url", url).finish(),
            Target::Teams { url } => f.debug_struct("Teams").field("url", url).finish(),
            Target::PagerDuty { url, routing_key } => f
                .debug_struct("PagerDuty")
                .field("url", url)
                .field("routing_key", routing_key)
                .finish(),
            Target::Email {
                host,
                port,
                tls,
                credentials,
                from,
                to,
            } => f
                .debug_struct("Email")
                .field("host", host)
                .field("port", port)
                .field("tls", tls)
                .field("credentials", credentials)
                .field("from", from)
                .field("to", to)
                .finish(),
        }
    }
}

/// Which incidents a channel gets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Route {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub monitors: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_severity: Option<Severity>,
}

/// A checked channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channel {
    pub name: String,
    pub target: Target,
    pub route: Route,
    pub timeout: Duration,
    /// PEM of `ca_file`, read when the config was checked.
    pub ca_pem: Option<String>,
}

/// A channel as the API lists it: nothing secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChannelInfo {
    pub name: String,
    pub kind: String,
    /// Where it goes, without credentials: the URL's scheme and host, or
    /// the SMTP relay and recipients.
    pub destination: String,
    pub route: Route,
}

impl Channel {
    pub fn kind(&self) -> &'static str {
        match self.target {
            Target::Webhook { .. } => "webhook",
            Target::Slack { .. } => "slack",
            Target::Discord { .. } => "discord",
            Target::Teams { .. } => "teams",
            Target::PagerDuty { .. } => "pagerduty",
            Target::Email { .. } => "email",
        }
    }

    /// Does this channel get `n`?
    pub fn routes(&self, n: &Notification) -> bool {
        let r = &self.route;
        (r.monitors.is_empty() || r.monitors.contains(&n.monitor))
            && (r.tags.is_empty() || r.tags.iter().any(|t| n.tags.contains(t)))
            // Severity orders from critical (graver) to low.
            && r.min_severity.is_none_or(|min| n.severity <= min)
    }

    pub fn info(&self) -> ChannelInfo {
        let host_of = |url: &str| match url.split_once("://") {
            Some((scheme, rest)) => {
                let host = rest.split(['/', '?', '#']).next().unwrap_or("");
                // user:password@host: keep the host only.
                let host = host.rsplit('@').next().unwrap_or(host);
                format!("{scheme}://{host}")
            }
            None => "?".into(),
        };
        let destination = match &self.target {
            Target::PagerDuty { url, .. } => host_of(url),
            Target::Webhook { url, .. }
            | Target::Slack { url }
            | Target::Discord { url }
            | Target::Teams { url } => host_of(url.expose()),
            Target::Email { host, port, to, .. } => {
                format!("smtp://{host}:{port} -> {}", to.join(", "))
            }
        };
        ChannelInfo {
            name: self.name.clone(),
            kind: self.kind().into(),
            destination,
            route: self.route.clone(),
        }
    }
}

fn http_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| format!("{url:?} must start with https:// or http://"))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err("has no host".into());
    }
    Ok(())
}

/// Checks every channel; each problem names the channel and the field.
pub fn validate_channels(raws: &[RawChannel]) -> Result<Vec<Channel>, Vec<String>> {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for (i, raw) in raws.iter().enumerate() {
        let here = format!("notifications[{i}] ({:?})", raw.name);
        let twice = raws[..i].iter().any(|r| r.name == raw.name);
        out.extend(check_channel(raw, &here, twice, &mut problems));
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// Checks one channel (`here` names it in every problem, e.g. `channel
/// "ops"`): the channel, or every problem.
pub fn validate_channel(raw: &RawChannel, here: &str) -> Result<Channel, Vec<String>> {
    let mut problems = Vec::new();
    match check_channel(raw, here, false, &mut problems) {
        Some(c) if problems.is_empty() => Ok(c),
        _ => Err(problems),
    }
}

/// One channel's checks (`twice`: an earlier one has its name): its
/// problems go to `problems`.
fn check_channel(
    raw: &RawChannel,
    here: &str,
    twice: bool,
    problems: &mut Vec<String>,
) -> Option<Channel> {
    let mut bad = |field: &str, why: String| problems.push(format!("{here}.{field}: {why}"));
    if !crate::monitors::valid_name(&raw.name) {
        bad(
            "name",
            "must be 1-128 letters, digits, '_', '.', '-', starting with a letter or digit".into(),
        );
    }
    if twice {
        bad("name", "used twice".into());
    }
    let timeout = match raw.timeout.as_deref().map(humantime::parse_duration) {
        None => Duration::from_secs(10),
        Some(Ok(d)) if d >= Duration::from_secs(1) && d <= Duration::from_secs(120) => d,
        Some(_) => {
            bad("timeout", "must be a duration between 1s and 2m".into());
            Duration::from_secs(10)
        }
    };
    let ca_pem = match &raw.ca_file {
        None => None,
        Some(p) => match crate::config::read_ca_file(p) {
            Ok(pem) if pem.contains("-----BEGIN CERTIFICATE-----") => Some(pem),
            Ok(_) => {
                bad(
                    "ca_file",
                    format!("{} holds no PEM certificate", p.display()),
                );
                None
            }
            Err(e) => {
                bad("ca_file", e);
                None
            }
        },
    };
    let url = |bad: &mut dyn FnMut(&str, String)| -> Option<String> {
        match raw.url.as_deref() {
            None => {
                bad("url", "is required for this kind".into());
                None
            }
            Some(u) => match http_url(u) {
                Ok(()) => Some(u.to_owned()),
                Err(e) => {
                    bad("url", e);
                    None
                }
            },
        }
    };
    let not_for = |fields: &[(&str, bool)], bad: &mut dyn FnMut(&str, String)| {
        for (f, set) in fields {
            if *set {
                bad(f, format!("is not used by kind {:?}", raw.kind));
            }
        }
    };
    let email_fields = [
        ("smtp_host", raw.smtp_host.is_some()),
        ("smtp_port", raw.smtp_port.is_some()),
        ("tls", raw.tls.is_some()),
        ("username", raw.username.is_some()),
        ("password", raw.password.is_some()),
        ("from", raw.from.is_some()),
        ("to", !raw.to.is_empty()),
    ];
    let target = match raw.kind.as_str() {
        "webhook" => {
            not_for(&email_fields, &mut bad);
            not_for(&[("routing_key", raw.routing_key.is_some())], &mut bad);
            for k in raw.headers.keys() {
                if k.is_empty()
                    || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    || k.to_ascii_lowercase().starts_with("x-portwatch-")
                {
                    bad("headers", format!("{k:?} is not a header name you may set"));
                }
            }
            if raw.secret.as_ref().is_some_and(|s| s.len() < 16) {
                bad("secret", "must be at least 16 characters".into());
            }
            url(&mut bad).map(|url| Target::Webhook {
                url: Secret(url),
                secret: raw.secret.clone().map(Secret),
                headers: raw.headers.clone(),
            })
        }
        "slack" | "discord" | "teams" => {
            not_for(&email_fields, &mut bad);
            not_for(
                &[
                    ("routing_key", raw.routing_key.is_some()),
                    ("secret", raw.secret.is_some()),
                    ("headers", !raw.headers.is_empty()),
                ],
                &mut bad,
            );
            url(&mut bad).map(|u| {
                let url = Secret(u);
                match raw.kind.as_str() {
                    "slack" => Target::Slack { url },
                    "discord" => Target::Discord { url },
                    _ => Target::Teams { url },
                }
            })
        }
        "pagerduty" => {
            not_for(&email_fields, &mut bad);
            let url = match raw.url.as_deref() {
                None => Some("https://events.pagerduty.com/v2/enqueue".to_owned()),
                Some(_) => url(&mut bad),
            };
            match raw.routing_key.as_deref() {
                Some(k) if !k.trim().is_empty() => url.map(|url| Target::PagerDuty {
                    url,
                    routing_key: Secret(k.to_owned()),
                }),
                _ => {
                    bad("routing_key", "is required for kind \"pagerduty\"".into());
                    None
                }
            }
        }
        "email" => {
            not_for(
                &[
                    ("url", raw.url.is_some()),
                    ("secret", raw.secret.is_some()),
                    ("routing_key", raw.routing_key.is_some()),
                    ("headers", !raw.headers.is_empty()),
                ],
                &mut bad,
            );
            let tls = match raw.tls.as_deref().unwrap_or("starttls") {
                "starttls" => Some(SmtpTls::StartTls),
                "tls" => Some(SmtpTls::Tls),
                "none" => Some(SmtpTls::None),
                other => {
                    bad("tls", format!("{other:?} is not starttls, tls or none"));
                    None
                }
            };
            let port = match raw.smtp_port {
                None => Some(match tls {
                    Some(SmtpTls::Tls) => 465,
                    Some(SmtpTls::None) => 25,
                    _ => 587,
                }),
                Some(p) if (1..=65535).contains(&p) => Some(p as u16),
                Some(_) => {
                    bad("smtp_port", "must be 1-65535".into());
                    None
                }
            };
            let host = match raw.smtp_host.as_deref() {
                Some(h) if !h.is_empty() && !h.contains(char::is_whitespace) => Some(h),
                _ => {
                    bad("smtp_host", "is required for kind \"email\"".into());
                    None
                }
            };
            let mailbox_ok = |m: &str| m.parse::<lettre::message::Mailbox>().is_ok();
            let from = match raw.from.as_deref() {
                Some(f) if mailbox_ok(f) => Some(f),
                Some(f) => {
                    bad("from", format!("{f:?} is not an email address"));
                    None
                }
                None => {
                    bad("from", "is required for kind \"email\"".into());
                    None
                }
            };
            if raw.to.is_empty() {
                bad("to", "needs at least one recipient".into());
            }
            for t in &raw.to {
                if !mailbox_ok(t) {
                    bad("to", format!("{t:?} is not an email address"));
                }
            }
            let credentials = match (&raw.username, &raw.password) {
                (Some(u), Some(p)) => Some((u.clone(), Secret(p.clone()))),
                (None, None) => None,
                _ => {
                    bad("username", "username and password go together".into());
                    None
                }
            };
            if credentials.is_some() && tls == Some(SmtpTls::None) {
                bad(
                    "password",
                    "would cross the network in clear text: use tls = \"starttls\" or \"tls\""
                        .into(),
                );
            }
            match (host, port, tls, from) {
                (Some(h), Some(port), Some(tls), Some(from)) => Some(Target::Email {
                    host: h.to_owned(),
                    port,
                    tls,
                    credentials,
                    from: from.to_owned(),
                    to: raw.to.clone(),
                }),
                _ => None,
            }
        }
        other => {
            bad(
                "kind",
                format!("{other:?} is not one of webhook, slack, discord, teams, pagerduty, email"),
            );
            None
        }
    };
    target.map(|target| Channel {
        name: raw.name.clone(),
        target,
        route: Route {
            monitors: raw.monitors.clone(),
            tags: raw.tags.clone(),
            min_severity: raw.min_severity,
        },
        timeout,
        ca_pem,
    })
}

/// Retry timings.
#[derive(Debug, Clone)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
    /// Stop retrying a notification this long after its first attempt.
    pub give_up_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            first: Duration::from_secs(1),
            max: Duration::from_secs(300),
            give_up_after: Duration::from_secs(24 * 3600),
        }
    }
}

/// The outcome of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// `retry_at_ms` None: given up (permanent error or too old).
    Failed {
        error: String,
        retry_at_ms: Option<i64>,
    },
}

/// One attempt to deliver one notification to one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryReport {
    pub incident_id: u64,
    pub event: NotifyEvent,
    pub channel: String,
    pub attempt: u32,
    pub at_ms: i64,
    pub outcome: Outcome,
}

struct Worker {
    channel: Arc<Channel>,
    queue: mpsc::UnboundedSender<Notification>,
}

/// Attempts per channel since start: (delivered, failed).
type Counts = Arc<std::sync::Mutex<BTreeMap<String, (u64, u64)>>>;

/// Routes notifications to channel workers. Cheap to clone.
#[derive(Clone)]
pub struct Dispatcher {
    workers: Arc<RwLock<Vec<Worker>>>,
    reports: mpsc::UnboundedSender<DeliveryReport>,
    backoff: Backoff,
    counts: Counts,
}

impl Dispatcher {
    /// A dispatcher over `channels`; every attempt's outcome goes to `reports`.
    /// Must be created inside a tokio runtime (workers are tasks).
    pub fn new(
        channels: Vec<Channel>,
        backoff: Backoff,
        reports: mpsc::UnboundedSender<DeliveryReport>,
    ) -> Dispatcher {
        let d = Dispatcher {
            workers: Arc::new(RwLock::new(Vec::new())),
            reports,
            backoff,
            counts: Counts::default(),
        };
        d.set_channels(channels);
        d
    }

    /// Replaces the channels (config reload). A channel whose definition did
    /// not change keeps its worker and its queue.
    pub fn set_channels(&self, channels: Vec<Channel>) {
        let mut workers = self.workers.write().unwrap_or_else(|e| e.into_inner());
        let mut next = Vec::new();
        for c in channels {
            if let Some(i) = workers.iter().position(|w| *w.channel == c) {
                next.push(workers.swap_remove(i));
                continue;
            }
            let channel = Arc::new(c);
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(work(
                channel.clone(),
                rx,
                self.backoff.clone(),
                self.reports.clone(),
                self.counts.clone(),
            ));
            next.push(Worker { channel, queue: tx });
        }
        // Dropping the other senders ends their workers once their queues are done.
        *workers = next;
    }

    /// Queues `n` on every channel whose route takes it. Never blocks.
    pub fn notify(&self, n: Notification) {
        self.notify_skipping(n, &[]);
    }

    /// Like [`notify`](Self::notify), except on the channels named in `skip`.
    pub fn notify_skipping(&self, n: Notification, skip: &[String]) {
        let workers = self.workers.read().unwrap_or_else(|e| e.into_inner());
        for w in workers
            .iter()
            .filter(|w| w.channel.routes(&n) && !skip.contains(&w.channel.name))
        {
            let _ = w.queue.send(n.clone());
        }
    }

    /// (channel, delivered, failed) attempts since the collector started.
    pub fn counts(&self) -> Vec<(String, u64, u64)> {
        self.counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(c, (d, f))| (c.clone(), *d, *f))
            .collect()
    }

    pub fn channels(&self) -> Vec<ChannelInfo> {
        let workers = self.workers.read().unwrap_or_else(|e| e.into_inner());
        workers.iter().map(|w| w.channel.info()).collect()
    }
}

fn now_ms() -> i64 {
    crate::state::unix_ms(std::time::SystemTime::now())
}

/// One channel's worker: delivers its queue in order, retrying each
/// notification until it is delivered, fails for good, or is too old.
async fn work(
    channel: Arc<Channel>,
    mut queue: mpsc::UnboundedReceiver<Notification>,
    backoff: Backoff,
    reports: mpsc::UnboundedSender<DeliveryReport>,
    counts: Counts,
) {
    let count = |ok: bool| {
        let mut c = counts.lock().unwrap_or_else(|e| e.into_inner());
        let e = c.entry(channel.name.clone()).or_default();
        if ok {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
    };
    while let Some(n) = queue.recv().await {
        let first = tokio::time::Instant::now();
        let mut delay = backoff.first;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let result = send(&channel, &n).await;
            let mut report = DeliveryReport {
                incident_id: n.incident_id,
                event: n.event,
                channel: channel.name.clone(),
                attempt,
                at_ms: now_ms(),
                outcome: Outcome::Delivered,
            };
            match result {
                Ok(()) => {
                    count(true);
                    tracing::info!(channel = %channel.name, incident = n.incident_id, event = n.event.as_str(), attempt, "notification delivered");
                    let _ = reports.send(report);
                    break;
                }
                Err(e) => {
                    count(false);
                    // +-20 % so channels that failed together do not retry together.
                    let jitter = 0.8 + rand::random::<f64>() * 0.4;
                    let wait = delay.mul_f64(jitter);
                    let give_up =
                        !e.is_transient() || first.elapsed() + wait > backoff.give_up_after;
                    let error = e.to_string();
                    tracing::warn!(channel = %channel.name, incident = n.incident_id, event = n.event.as_str(), attempt, error = %error, give_up, "notification failed");
                    report.outcome = Outcome::Failed {
                        error,
                        retry_at_ms: (!give_up)
                            .then(|| report.at_ms + i64::try_from(wait.as_millis()).unwrap_or(0)),
                    };
                    let _ = reports.send(report);
                    if give_up {
                        break;
                    }
                    tokio::time::sleep(wait).await;
                    delay = (delay * 2).min(backoff.max);
                }
            }
        }
    }
}
