//! What a notification says: the event, the message every channel renders
//! (subject, plain-text body, the short facts chat cards show), and the test
//! message. The channels' own shapes (JSON, SMTP) are built from these in
//! `send`.
//!
//! A message is written for a responder woken at night: who owns the
//! monitor, how grave it is, when it was last healthy, what each location
//! sees and why (and since when), and the first step per reason
//! ([`hint`](super::hint)). A recovery says which locations succeed again
//! since when and how long the outage lasted; an update says what changed.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::monitors::Severity;

/// Which notification of an incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyEvent {
    Opened,
    /// The open incident's picture changed (kind or diagnosis).
    Updated,
    Resolved,
}

impl NotifyEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            NotifyEvent::Opened => "opened",
            NotifyEvent::Updated => "updated",
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
    /// Down since (while down) or up since (while up): check time, Unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_ms: Option<i64>,
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
    /// Who answers for the monitor (its `owner`).
    pub owner: Option<String>,
    /// The newest check time at which a location succeeded before the
    /// failing began: when the monitor was last known healthy.
    pub last_ok_ms: Option<i64>,
    /// What changed, one line (an update).
    pub change: Option<String>,
}

impl Notification {
    /// How long the outage lasted, once resolved.
    pub fn duration_ms(&self) -> Option<i64> {
        self.resolved_ms.map(|r| (r - self.since_ms).max(0))
    }

    /// The first steps to show: `(reason, hint)` for each reason a failing
    /// location (or the incident) names, in the order they appear, once.
    /// None once resolved: there is nothing left to do.
    pub fn first_steps(&self) -> Vec<(&str, &'static str)> {
        if self.event == NotifyEvent::Resolved {
            return Vec::new();
        }
        let failing = self
            .locations
            .iter()
            .filter(|l| l.state != "up" && l.state != "unknown")
            .filter_map(|l| l.reason.as_deref());
        super::hint::first_steps(failing.chain(self.reason.as_deref()))
    }

    /// The short facts a chat card shows beside the text: severity, owner,
    /// last healthy, what changed (update), how long it lasted (resolved).
    pub fn facts(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![("Severity", self.severity.as_str().to_owned())];
        if let Some(o) = &self.owner {
            out.push(("Owner", o.clone()));
        }
        if let Some(ok) = self.last_ok_ms {
            out.push(("Last healthy", rfc3339(ok)));
        }
        if self.event == NotifyEvent::Updated
            && let Some(c) = &self.change
        {
            out.push(("Changed", c.clone()));
        }
        if let Some(d) = self.duration_ms() {
            out.push(("Outage lasted", human(d)));
        }
        // Discord refuses a whole message over one empty field value.
        out.retain(|(_, v)| !v.trim().is_empty());
        out
    }
}

/// The subject line, e.g. `TCP Port Unreachable: redis-main (10.0.0.5:6379)`,
/// `TCP Port Unreachable (update): ...` for an update.
pub fn subject(n: &Notification) -> String {
    let opened = n.event != NotifyEvent::Resolved;
    let proto = if n.protocol.is_empty() {
        "TCP"
    } else {
        n.protocol.as_str()
    };
    let what = if proto == "ICMP" { "Host" } else { "Port" };
    let update = if n.event == NotifyEvent::Updated {
        " (update)"
    } else {
        ""
    };
    let head = match (n.kind.as_str(), opened) {
        (TEST_KIND, _) => return format!("Test Notification: {}", n.monitor),
        ("agent_offline", true) => return format!("Agent Offline{update}: {}", n.monitor),
        ("agent_offline", false) => return format!("Agent Back Online: {}", n.monitor),
        ("exposure", true) => format!("{proto} {what} Exposed"),
        ("exposure", false) => format!("{proto} {what} Closed Again"),
        ("edge", true) => format!("{proto} {what} Unreachable from Outside"),
        ("edge", false) => format!("{proto} {what} Reachable Again from Outside"),
        (_, true) => format!("{proto} {what} Unreachable"),
        (_, false) => format!("{proto} {what} Reachable Again"),
    };
    format!("{head}{update}: {} ({})", n.monitor, n.target)
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
        owner: None,
        last_ok_ms: None,
        change: None,
    }
}

pub(super) fn rfc3339(ms: i64) -> String {
    crate::cli::fmt_ms(ms)
}

pub(super) fn human(ms: i64) -> String {
    let s = (ms / 1000).max(0) as u64;
    humantime::format_duration(Duration::from_secs(s)).to_string()
}

/// One location's line: `down (refused) since <t>`, `up since <t>`.
fn location_line(l: &LocationView) -> String {
    let mut s = format!("  {:<28} {}", l.location, l.state);
    if let Some(r) = &l.reason {
        s.push_str(&format!(" ({r})"));
    }
    if let Some(t) = l.since_ms {
        s.push_str(&format!(" since {}", rfc3339(t)));
    }
    s
}

/// The plain-text body every channel builds on (the whole email; the text
/// of the chat cards and the webhook's `text`).
pub fn text_body(n: &Notification) -> String {
    let mut lines = vec![subject(n), String::new()];
    if n.event == NotifyEvent::Updated
        && let Some(c) = &n.change
    {
        lines.push(format!("Changed:    {c}"));
    }
    lines.push(format!("Monitor:    {}", n.monitor));
    if !n.target.is_empty() {
        lines.push(format!(
            "Target:     {} {}",
            n.protocol.to_ascii_lowercase(),
            n.target
        ));
    }
    if let Some(o) = &n.owner {
        lines.push(format!("Owner:      {o}"));
    }
    let mut meta = format!("Severity:   {}", n.severity.as_str());
    if !n.tags.is_empty() {
        meta.push_str(&format!("   Tags: {}", n.tags.join(", ")));
    }
    lines.push(meta);
    lines.push(format!("Diagnosis:  {}", n.diagnosis));
    if let Some(r) = &n.reason {
        lines.push(format!("Reason:     {r}"));
    }
    lines.push(format!("Since:      {} (check time)", rfc3339(n.since_ms)));
    if let (Some(r), Some(d)) = (n.resolved_ms, n.duration_ms()) {
        lines.push(format!(
            "Resolved:   {} (the outage lasted {})",
            rfc3339(r),
            human(d)
        ));
    }
    if let Some(ok) = n.last_ok_ms {
        lines.push(format!(
            "Last OK:    {} (the last healthy check, {} before the failing began)",
            rfc3339(ok),
            human(n.since_ms - ok)
        ));
    }
    if !n.locations.is_empty() {
        lines.push(
            if n.event == NotifyEvent::Resolved {
                "Locations now:"
            } else {
                "Locations:"
            }
            .into(),
        );
        lines.extend(n.locations.iter().map(location_line));
    }
    let steps = n.first_steps();
    if !steps.is_empty() {
        lines.push("First steps:".into());
        lines.extend(steps.iter().map(|(r, h)| format!("  {r}: {h}")));
    }
    if let Some(r) = &n.runbook {
        lines.push(format!("Runbook:    {r}"));
    }
    if let Some(d) = &n.dashboard_url {
        lines.push(format!("Dashboard:  {d}"));
    }
    lines.push(format!("Incident:   #{}", n.incident_id));
    lines.join("\n")
}
