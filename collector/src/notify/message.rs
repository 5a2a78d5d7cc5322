//! What a notification says: the event, the message every channel renders
//! (subject and plain-text body), and the test message. The channels' own
//! shapes (JSON, SMTP) are built from these in `send`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::monitors::Severity;

/// Which notification of an incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyEvent {
    Opened,
    Resolved,
}

impl NotifyEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            NotifyEvent::Opened => "opened",
            NotifyEvent::Resolved => "resolved",
        }
    }
}

/// One location in a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocationView {
    pub location: String,
    /// `up`, `degraded`, `down`, `unknown`.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What one notification says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub event: NotifyEvent,
    pub incident_id: u64,
    /// `down`, `edge`, `exposure`, `agent_offline`.
    pub kind: String,
    /// The monitor, or `agent:<name>` for an agent incident.
    pub monitor: String,
    /// `TCP`, `UDP`, `ICMP` (empty for an agent incident).
    pub protocol: String,
    /// `host:port` (or the host for ICMP).
    pub target: String,
    pub severity: Severity,
    pub tags: Vec<String>,
    pub locations: Vec<LocationView>,
    pub diagnosis: String,
    pub reason: Option<String>,
    /// When the failing began (check time, Unix ms).
    pub since_ms: i64,
    pub resolved_ms: Option<i64>,
    pub runbook: Option<String>,
    pub dashboard_url: Option<String>,
}

/// The subject line, e.g. `TCP Port Unreachable: redis-main (10.0.0.5:6379)`.
pub fn subject(n: &Notification) -> String {
    let opened = n.event == NotifyEvent::Opened;
    let proto = if n.protocol.is_empty() {
        "TCP"
    } else {
        n.protocol.as_str()
    };
    let what = if proto == "ICMP" { "Host" } else { "Port" };
    let head = match (n.kind.as_str(), opened) {
        (TEST_KIND, _) => return format!("Test Notification: {}", n.monitor),
        ("agent_offline", true) => return format!("Agent Offline: {}", n.monitor),
        ("agent_offline", false) => return format!("Agent Back Online: {}", n.monitor),
        ("exposure", true) => format!("{proto} {what} Exposed"),
        ("exposure", false) => format!("{proto} {what} Closed Again"),
        ("edge", true) => format!("{proto} {what} Unreachable from Outside"),
        ("edge", false) => format!("{proto} {what} Reachable Again from Outside"),
        (_, true) => format!("{proto} {what} Unreachable"),
        (_, false) => format!("{proto} {what} Reachable Again"),
    };
    format!("{head}: {} ({})", n.monitor, n.target)
}

/// The `kind` of a test notification.
pub const TEST_KIND: &str = "test";

/// What `POST /api/v1/notifications/channels/{name}/test` sends: an
/// "opened" message about no incident (id 0), saying so in every field a
/// person reads. A PagerDuty channel gets a real trigger (dedup key
/// `portwatch-0`) to resolve by hand.
pub fn test_notification(channel: &str, dashboard_url: Option<&str>) -> Notification {
    Notification {
        event: NotifyEvent::Opened,
        incident_id: 0,
        kind: TEST_KIND.into(),
        monitor: format!("portwatch channel {channel}"),
        protocol: String::new(),
        target: String::new(),
        severity: Severity::Low,
        tags: Vec::new(),
        locations: Vec::new(),
        diagnosis: "a test sent by an operator: no incident, nothing to do".into(),
        reason: None,
        since_ms: super::now_ms(),
        resolved_ms: None,
        runbook: None,
        dashboard_url: dashboard_url.map(str::to_owned),
    }
}

pub(super) fn rfc3339(ms: i64) -> String {
    crate::cli::fmt_ms(ms)
}

fn human(ms: i64) -> String {
    let s = (ms / 1000).max(0) as u64;
    humantime::format_duration(Duration::from_secs(s)).to_string()
}

/// The plain-text body every channel builds on.
pub fn text_body(n: &Notification) -> String {
    let mut lines = vec![subject(n), String::new()];
    lines.push(format!("Monitor:    {}", n.monitor));
    if !n.target.is_empty() {
        lines.push(format!(
            "Target:     {} {}",
            n.protocol.to_ascii_lowercase(),
            n.target
        ));
    }
    lines.push(format!("Diagnosis:  {}", n.diagnosis));
    if let Some(r) = &n.reason {
        lines.push(format!("Reason:     {r}"));
    }
    lines.push(format!("Since:      {} (check time)", rfc3339(n.since_ms)));
    if let Some(r) = n.resolved_ms {
        lines.push(format!(
            "Resolved:   {} (after {})",
            rfc3339(r),
            human(r - n.since_ms)
        ));
    }
    if !n.locations.is_empty() {
        lines.push("Locations:".into());
        for l in &n.locations {
            match &l.reason {
                Some(r) => lines.push(format!("  {:<28} {} ({r})", l.location, l.state)),
                None => lines.push(format!("  {:<28} {}", l.location, l.state)),
            }
        }
    }
    let mut meta = format!("Severity:   {}", n.severity.as_str());
    if !n.tags.is_empty() {
        meta.push_str(&format!("   Tags: {}", n.tags.join(", ")));
    }
    lines.push(meta);
    if let Some(r) = &n.runbook {
        lines.push(format!("Runbook:    {r}"));
    }
    if let Some(d) = &n.dashboard_url {
        lines.push(format!("Dashboard:  {d}"));
    }
    lines.push(format!("Incident:   #{}", n.incident_id));
    lines.join("\n")
}
