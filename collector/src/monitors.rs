//! The monitor model: one definition, whether it comes from the config file
//! (config as code, reloaded on change or SIGHUP) or from the REST API.
//!
//! A `RawMonitor` is what a user writes (TOML table or JSON object, the same
//! fields); `validate_all` turns a list of them into checked `Monitor`s and
//! reports EVERY problem, each with where it is (file and line, or "api") and
//! which field. A monitor the collector accepts is one every agent can run:
//! its check is built with the agent's own rules (`build_spec`).
//!
//! `registry.rs` holds the live set (file monitors + API monitors), decides
//! which agents and public regions run what, and pushes changes.

pub mod registry;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::time::Duration;

use portwatch_agent::check::{CheckOptions, Family, TlsSettings, build_spec, unescape};
use portwatch_proto::v1 as pb;
use serde::{Deserialize, Serialize};

/// Default interval of a monitor.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
/// Default check timeout (the agent's own default, spelled out for the docs).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);

/// A monitor as written, in TOML (`[[monitors]]`) or JSON (the REST API).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawMonitor {
    /// Unique name: letters, digits, `_`, `.`, `-` (1-128), starting with a
    /// letter or digit. It names the monitor everywhere (API paths, metrics).
    pub name: String,
    /// `tcp://host:port`, `udp://host:port` or `icmp://host`.
    pub target: String,
    /// Where it is checked from: `public` (every public region),
    /// `public:<region>`, an agent's name (or `agent:<name>`), or an agent
    /// label selector `key=value`.
    #[serde(default)]
    pub locations: Vec<String>,
    /// e.g. "30s" (>= 1 s). Default 30 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// e.g. "3s". Default 3 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// A handshake slower than this is `degraded` (reason slow).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded_ms: Option<u64>,
    /// "open" (default) or "closed": a closed port that is found open is an exposure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<String>,
    /// "any" (default), "ipv4" or "ipv6".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
    /// A protocol preset (redis, postgres, ssh, dns, ntp, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    /// Bytes to send, escaped (\r \n \t \0 \\ \xNN).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send: Option<String>,
    /// A regex the reply must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_regex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RawTls>,
    /// UDP: silence counts as up.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_reply_ok: bool,
    /// The name a `dns` preset asks for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_name: Option<String>,
    /// The `ntp` preset's largest acceptable clock offset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ntp_max_offset_ms: Option<u64>,
    /// When an incident opens and closes (the incidents issue acts on it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert: Option<RawAlert>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// "critical", "high", "medium" (default) or "low".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
    /// An http(s) URL shown with every alert.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runbook: Option<String>,
    /// Another monitor (e.g. an ICMP check of the host): while it is down this
    /// one's incidents are suppressed and linked to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depends_on: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// PEM file of the CA that signs the server's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub ca_file: Option<std::path::PathBuf>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_verify: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiring_days: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAlert {
    /// Failures in a row before a location counts as down. Default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_down: Option<u32>,
    /// Successes in a row before a location counts as up again. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_up: Option<u32>,
    /// Failing locations that open an incident (default: a quorum by count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locations_down: Option<u32>,
    /// Alternative rule: this share of checks failed over `failure_window`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_percent: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_window: Option<String>,
    /// Hold the notification this long while the incident may still heal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notification_delay: Option<String>,
    /// Open an "edge" incident when every public location fails while the
    /// agents succeed. Default on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge: Option<bool>,
    /// Count a degraded check (slow handshake, expiring certificate, NTP
    /// offset) as a failure for incidents. Default off: degraded is shown,
    /// not paged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded_is_down: Option<bool>,
}

/// Where a monitor is checked from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LocationSel {
    /// `public` (None: every public region) or `public:<region>`.
    Public(Option<String>),
    /// An agent by name.
    Agent(String),
    /// Agents carrying this label.
    Label(String, String),
}

impl LocationSel {
    pub fn parse(s: &str) -> Result<LocationSel, String> {
        let s = s.trim();
        if s == "public" {
            return Ok(LocationSel::Public(None));
        }
        if let Some(region) = s.strip_prefix("public:") {
            return if valid_word(region, 64) {
                Ok(LocationSel::Public(Some(region.to_owned())))
            } else {
                Err(format!(
                    "{s:?}: a region is 1-64 letters, digits, '_', '.', '-'"
                ))
            };
        }
        if let Some((k, v)) = s.split_once('=') {
            return if valid_word(k, 64) && !v.is_empty() && v.len() <= 128 {
                Ok(LocationSel::Label(k.to_owned(), v.to_owned()))
            } else {
                Err(format!("{s:?} is not a label selector key=value"))
            };
        }
        let name = s.strip_prefix("agent:").unwrap_or(s);
        if name.is_empty() || name.len() > 128 || name.chars().any(|c| c.is_control()) {
            return Err(format!("{s:?} is not an agent name"));
        }
        Ok(LocationSel::Agent(name.to_owned()))
    }

    /// Does it select the agent with this name and labels?
    pub fn selects_agent(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        match self {
            LocationSel::Agent(n) => n == name,
            LocationSel::Label(k, v) => labels.get(k) == Some(v),
            LocationSel::Public(_) => false,
        }
    }

    /// Does it select the collector's public region `region`?
    pub fn selects_public(&self, region: &str) -> bool {
        match self {
            LocationSel::Public(None) => true,
            LocationSel::Public(Some(r)) => r == region,
            _ => false,
        }
    }
}

impl fmt::Display for LocationSel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LocationSel::Public(None) => f.write_str("public"),
            LocationSel::Public(Some(r)) => write!(f, "public:{r}"),
            LocationSel::Agent(n) => f.write_str(n),
            LocationSel::Label(k, v) => write!(f, "{k}={v}"),
        }
    }
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Critical,
    High,
    Medium,
    Low,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::High => "high",
            Severity::Medium => "medium",
            Severity::Low => "low",
        }
    }
}

/// The checked alert policy. The incidents issue applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertPolicy {
    pub consecutive_down: u32,
    pub consecutive_up: u32,
    pub locations_down: Option<u32>,
    /// (percent, window): the "% of checks failed over a window" rule.
    pub failure_rate: Option<(u8, Duration)>,
    pub notification_delay: Duration,
    pub edge: bool,
    pub degraded_is_down: bool,
}

impl Default for AlertPolicy {
    fn default() -> Self {
        AlertPolicy {
            consecutive_down: 2,
            consecutive_up: 1,
            locations_down: None,
            failure_rate: None,
            notification_delay: Duration::ZERO,
            edge: true,
            degraded_is_down: false,
        }
    }
}

/// Where a monitor's definition lives: only API monitors can be changed
/// through the API; file monitors change with the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    File,
    Api,
}

/// A checked monitor.
#[derive(Debug, Clone, PartialEq)]
pub struct Monitor {
    pub name: String,
    /// What agents (and the public prober) run; `spec.id` is the name.
    pub spec: pb::MonitorSpec,
    pub locations: Vec<LocationSel>,
    pub alert: AlertPolicy,
    pub tags: Vec<String>,
    pub owner: Option<String>,
    pub severity: Severity,
    pub runbook: Option<String>,
    pub depends_on: Option<String>,
    pub origin: Origin,
    /// The definition as written (what the API returns and persists).
    pub raw: RawMonitor,
}

impl Monitor {
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.spec.interval_ms.into())
    }

    /// Run by the agent with this name and labels?
    pub fn runs_on_agent(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        self.locations.iter().any(|l| l.selects_agent(name, labels))
    }

    /// Run by the collector's public region `region`?
    pub fn runs_on_public(&self, region: &str) -> bool {
        self.locations.iter().any(|l| l.selects_public(region))
    }
}

/// One problem with a monitor definition: where and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// A file path, or "api".
    pub origin: String,
    /// 1-based line of the monitor's table in a file.
    pub line: Option<usize>,
    /// e.g. `monitors[2] ("pg-main").interval`.
    pub field: String,
    pub why: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}: {}", self.origin, self.field, self.why),
            None => write!(f, "{}: {}: {}", self.origin, self.field, self.why),
        }
    }
}

/// Every problem found, one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// A raw monitor and where it was written.
#[derive(Debug, Clone)]
pub struct Located {
    pub raw: RawMonitor,
    pub line: Option<usize>,
    /// What to call it in errors, e.g. `monitors[3]`.
    pub path: String,
}

fn valid_word(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Is `name` a valid monitor name?
pub fn valid_name(name: &str) -> bool {
    valid_word(name, 128)
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?} is not a duration like 30s or 1h: {e}"))
}

fn ms_u32(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

/// Checks one monitor, pushing every problem into `problems`.
fn validate_one(
    m: &Located,
    origin: &str,
    kind: Origin,
    problems: &mut Vec<Problem>,
) -> Option<Monitor> {
    let raw = &m.raw;
    let before = problems.len();
    let at = if raw.name.is_empty() {
        m.path.clone()
    } else {
        format!("{} ({:?})", m.path, raw.name)
    };
    let mut bad = |field: &str, why: String| {
        problems.push(Problem {
            origin: origin.to_owned(),
            line: m.line,
            field: if field.is_empty() {
                at.clone()
            } else {
                format!("{at}.{field}")
            },
            why,
        });
    };
    if !valid_name(&raw.name) {
        bad(
            "name",
            "must be 1-128 letters, digits, '_', '.', '-', starting with a letter or digit".into(),
        );
    }
    let interval = match raw.interval.as_deref().map(duration).transpose() {
        Ok(i) => i.unwrap_or(DEFAULT_INTERVAL),
        Err(e) => {
            bad("interval", e);
            DEFAULT_INTERVAL
        }
    };
    if interval < Duration::from_secs(1) {
        bad("interval", "must be at least 1s".into());
    }
    if interval > Duration::from_secs(24 * 3600) {
        bad("interval", "must be at most 24h".into());
    }
    let timeout = match raw.timeout.as_deref().map(duration).transpose() {
        Ok(t) => t,
        Err(e) => {
            bad("timeout", e);
            None
        }
    };
    if let Some(t) = timeout
        && t > interval
    {
        bad(
            "timeout",
            format!(
                "{} is longer than the interval ({}): checks would pile up",
                humantime::format_duration(t),
                humantime::format_duration(interval)
            ),
        );
    }
    let expect_closed = match raw.expect.as_deref() {
        None | Some("open") => false,
        Some("closed") => true,
        Some(other) => {
            bad("expect", format!("{other:?} is not open or closed"));
            false
        }
    };
    let family = match raw.family.as_deref() {
        None | Some("any") => Family::Any,
        Some("ipv4") => Family::V4,
        Some("ipv6") => Family::V6,
        Some(other) => {
            bad("family", format!("{other:?} is not any, ipv4 or ipv6"));
            Family::Any
        }
    };
    let ca_pem = match raw.tls.as_ref().and_then(|t| t.ca_file.as_ref()) {
        Some(p) => match crate::config::read_ca_file(p) {
            Ok(pem) => Some(pem),
            Err(e) => {
                bad("tls.ca_file", e);
                None
            }
        },
        None => None,
    };
    let send = match raw.send.as_deref().map(unescape).transpose() {
        Ok(s) => s,
        Err(e) => {
            bad("send", e.to_string());
            None
        }
    };
    let opts = CheckOptions {
        timeout,
        degraded_after: raw.degraded_ms.map(Duration::from_millis),
        expect_closed,
        family,
        preset: raw.preset.clone(),
        send: send.clone(),
        expect_regex: raw.expect_regex.clone(),
        tls: raw.tls.as_ref().map(|t| TlsSettings {
            server_name: t.server_name.clone(),
            ca_pem: ca_pem.clone(),
            no_verify: t.no_verify,
            expiring_days: t.expiring_days,
        }),
        no_reply_is_up: raw.no_reply_ok,
        dns_name: raw.dns_name.clone(),
        ntp_max_offset: raw.ntp_max_offset_ms.map(Duration::from_millis),
    };
    // The agent's own rules: what passes here runs there.
    if let Err(e) = build_spec(&raw.target, &opts) {
        bad("target", e.to_string());
    }
    let mut locations = Vec::new();
    if raw.locations.is_empty() {
        bad(
            "locations",
            "name at least one location: public, public:<region>, an agent name or a label selector key=value".into(),
        );
    }
    for l in &raw.locations {
        match LocationSel::parse(l) {
            Ok(sel) if !locations.contains(&sel) => locations.push(sel),
            Ok(_) => bad("locations", format!("{l:?} is listed twice")),
            Err(e) => bad("locations", e),
        }
    }
    let alert = alert_policy(raw.alert.as_ref(), &mut bad);
    let mut tags = Vec::new();
    for t in &raw.tags {
        if t.is_empty()
            || t.len() > 64
            || t.chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == ',')
        {
            bad(
                "tags",
                format!("{t:?}: a tag is 1-64 characters without spaces or commas"),
            );
        } else if !tags.contains(t) {
            tags.push(t.clone());
        }
    }
    if let Some(o) = &raw.owner
        && (o.is_empty() || o.len() > 128 || o.chars().any(char::is_control))
    {
        bad("owner", "must be 1-128 printable characters".into());
    }
    let severity = match raw.severity.as_deref() {
        None | Some("medium") => Severity::Medium,
        Some("critical") => Severity::Critical,
        Some("high") => Severity::High,
        Some("low") => Severity::Low,
        Some(other) => {
            bad(
                "severity",
                format!("{other:?} is not critical, high, medium or low"),
            );
            Severity::Medium
        }
    };
    if let Some(url) = &raw.runbook
        && !((url.starts_with("https://") || url.starts_with("http://"))
            && url.len() > "https://".len()
            && url.len() <= 2048
            && !url.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        bad("runbook", format!("{url:?} is not an http(s) URL"));
    }
    if let Some(d) = &raw.depends_on {
        if d == &raw.name {
            bad("depends_on", "a monitor cannot depend on itself".into());
        } else if !valid_name(d) {
            bad("depends_on", format!("{d:?} is not a monitor name"));
        }
    }
    if problems.len() > before {
        return None;
    }
    let spec = pb::MonitorSpec {
        id: raw.name.clone(),
        target: raw.target.clone(),
        interval_ms: ms_u32(interval),
        options: Some(pb::CheckOptions {
            timeout_ms: timeout.map(ms_u32).unwrap_or(0),
            degraded_ms: raw
                .degraded_ms
                .map(|d| u32::try_from(d).unwrap_or(u32::MAX))
                .unwrap_or(0),
            expect_closed,
            family: raw.family.clone().unwrap_or_default(),
            preset: raw.preset.clone().unwrap_or_default(),
            send: send.unwrap_or_default(),
            expect_regex: raw.expect_regex.clone().unwrap_or_default(),
            tls: raw.tls.as_ref().map(|t| pb::TlsOptions {
                server_name: t.server_name.clone().unwrap_or_default(),
                ca_pem: ca_pem.unwrap_or_default(),
                no_verify: t.no_verify,
                expiring_days: t.expiring_days.unwrap_or(0),
            }),
            no_reply_is_up: raw.no_reply_ok,
            dns_name: raw.dns_name.clone().unwrap_or_default(),
            ntp_max_offset_ms: raw
                .ntp_max_offset_ms
                .map(|d| u32::try_from(d).unwrap_or(u32::MAX))
                .unwrap_or(0),
        }),
    };
    Some(Monitor {
        name: raw.name.clone(),
        spec,
        locations,
        alert,
        tags,
        owner: raw.owner.clone(),
        severity,
        runbook: raw.runbook.clone(),
        depends_on: raw.depends_on.clone(),
        origin: kind,
        raw: raw.clone(),
    })
}

fn alert_policy(raw: Option<&RawAlert>, bad: &mut impl FnMut(&str, String)) -> AlertPolicy {
    let mut p = AlertPolicy::default();
    let Some(raw) = raw else { return p };
    let count =
        |v: Option<u32>, field: &str, default: u32, bad: &mut dyn FnMut(&str, String)| match v {
            None => default,
            Some(n) if (1..=100).contains(&n) => n,
            Some(_) => {
                bad(field, "must be between 1 and 100".into());
                default
            }
        };
    p.consecutive_down = count(raw.consecutive_down, "alert.consecutive_down", 2, bad);
    p.consecutive_up = count(raw.consecutive_up, "alert.consecutive_up", 1, bad);
    if raw.locations_down.is_some() {
        p.locations_down = Some(count(raw.locations_down, "alert.locations_down", 1, bad));
    }
    match (raw.failure_percent, raw.failure_window.as_deref()) {
        (None, None) => {}
        (Some(pct), Some(w)) => match duration(w) {
            Ok(w) if (1..=100).contains(&pct) && w >= Duration::from_secs(10) => {
                p.failure_rate = Some((pct, w));
            }
            Ok(_) => bad(
                "alert.failure_percent",
                "needs 1-100 percent over a window of at least 10s".into(),
            ),
            Err(e) => bad("alert.failure_window", e),
        },
        _ => bad(
            "alert.failure_percent",
            "failure_percent and failure_window go together".into(),
        ),
    }
    if let Some(d) = raw.notification_delay.as_deref() {
        match duration(d) {
            Ok(d) => p.notification_delay = d,
            Err(e) => bad("alert.notification_delay", e),
        }
    }
    p.edge = raw.edge.unwrap_or(true);
    p.degraded_is_down = raw.degraded_is_down.unwrap_or(false);
    p
}

/// Whether a `depends_on` naming no known monitor is a problem. A config file
/// checked on its own (at load, or `monitors check`) may depend on monitors
/// defined through the API, which only the running registry knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parents {
    MustExist,
    MayBeElsewhere,
}

/// Checks every monitor and the relations between them (unique names,
/// `depends_on` naming an existing monitor, no dependency cycle). `others`
/// are monitors already in place from elsewhere (the API's when checking the
/// file, the file's when checking the API's): names must not collide with
/// them and `depends_on` may point at them.
pub fn validate_all(
    raws: &[Located],
    origin: &str,
    kind: Origin,
    others: &[Monitor],
    parents: Parents,
) -> Result<Vec<Monitor>, Problems> {
    let mut problems = Vec::new();
    let mut out = Vec::new();
    let mut seen: HashMap<&str, &Located> = HashMap::new();
    for m in raws {
        let monitor = validate_one(m, origin, kind, &mut problems);
        if !m.raw.name.is_empty() {
            if let Some(first) = seen.get(m.raw.name.as_str()) {
                problems.push(Problem {
                    origin: origin.to_owned(),
                    line: m.line,
                    field: format!("{} ({:?}).name", m.path, m.raw.name),
                    why: format!("is used by another monitor ({})", first.path),
                });
                continue;
            }
            seen.insert(&m.raw.name, m);
            if let Some(other) = others.iter().find(|o| o.name == m.raw.name) {
                let elsewhere = match other.origin {
                    Origin::File => "the config file",
                    Origin::Api => "the API",
                };
                problems.push(Problem {
                    origin: origin.to_owned(),
                    line: m.line,
                    field: format!("{} ({:?}).name", m.path, m.raw.name),
                    why: format!("is already defined through {elsewhere}"),
                });
                continue;
            }
        }
        out.extend(monitor);
    }
    // Relations, over everything that will be live together.
    let all: HashMap<&str, Option<&str>> = out
        .iter()
        .chain(others)
        .map(|m| (m.name.as_str(), m.depends_on.as_deref()))
        .collect();
    for m in raws {
        let Some(parent) = m.raw.depends_on.as_deref() else {
            continue;
        };
        let at = format!("{} ({:?}).depends_on", m.path, m.raw.name);
        if !all.contains_key(parent) {
            // A parent that is defined but invalid has its own problems listed.
            if parents == Parents::MustExist && !raws.iter().any(|r| r.raw.name == parent) {
                problems.push(Problem {
                    origin: origin.to_owned(),
                    line: m.line,
                    field: at,
                    why: format!("no monitor is named {parent:?}"),
                });
            }
            continue;
        }
        // Walk up the chain; coming back to this monitor is a cycle.
        let mut visited = HashSet::new();
        let mut cur = Some(parent);
        while let Some(c) = cur {
            if c == m.raw.name {
                problems.push(Problem {
                    origin: origin.to_owned(),
                    line: m.line,
                    field: at.clone(),
                    why: format!("{parent:?} depends back on {:?}: a cycle", m.raw.name),
                });
                break;
            }
            if !visited.insert(c) {
                break;
            }
            cur = all.get(c).copied().flatten();
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(Problems(problems))
    }
}

#[cfg(test)]
mod tests;
