//! Incidents: when a monitor is down, from where, why, and who was told.
//!
//! Results reach [`engine::IncidentEngine::observe`] from the store once they
//! are durable (agents' streams and the public probes alike). The engine keeps
//! the last minutes of every monitor at every location (`consensus::Series`),
//! judges them in check-time order (`consensus::sweep`), and reconciles what
//! it finds with the incidents it recorded: so results replayed from an
//! agent's buffer after a cut put their incident where it happened.
//!
//! The rules, per monitor (`monitors::AlertPolicy`):
//! - a location is down after `consecutive_down` failures in a row and up
//!   again after `consecutive_up` successes; with no result for two intervals
//!   plus 15 s it is **unknown**, never down;
//! - an incident opens when the down locations reach the quorum (1 of 1, 2 of
//!   2, 2 of 3, 3 of 4, two thirds of 5+, or `locations_down`), or, with
//!   `failure_percent`, when that share of all checks failed over the window;
//! - an **edge** incident opens below the quorum when every public location
//!   fails while the agents succeed: the service is fine, outside users are
//!   cut off;
//! - an expect-closed monitor opens an **exposure** incident when one
//!   location finds the port open;
//! - it closes when every location with a current result succeeds again;
//! - an agent whose stream is gone longer than `agent_offline_after` (or that
//!   was revoked) opens ONE **agent offline** incident, subject `agent:<name>`.
//!
//! Notification is a separate decision (`engine`): held while the incident is
//! younger than `notification_delay` (one that heals in time is never sent),
//! inside a maintenance window, or while the monitor's `depends_on` parent is
//! down (the child is linked to the parent's incident instead).

pub mod consensus;
pub mod engine;

#[cfg(test)]
mod tests;

use portwatch_proto::v1 as pb;
use serde::{Deserialize, Serialize};

pub use consensus::{LocState, LocationView};
pub use engine::{EngineConfig, IncidentEngine};

/// What kind of incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The quorum of locations (or the failure rate) says down.
    Down,
    /// Every public location fails while the agents succeed.
    Edge,
    /// An expect-closed port was found open.
    Exposure,
    /// An agent's stream is gone (subject `agent:<name>`).
    AgentOffline,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Down => "down",
            Kind::Edge => "edge",
            Kind::Exposure => "exposure",
            Kind::AgentOffline => "agent_offline",
        }
    }
}

/// Which notification of an incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Opened,
    /// The picture of an open incident changed (kind or diagnosis).
    Updated,
    Resolved,
}

/// The outcome of one delivery attempt to one channel, as last reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Delivery {
    pub channel: String,
    pub phase: Phase,
    pub attempt: u32,
    pub at_ms: i64,
    /// `delivered`, `retrying` or `failed` (gave up).
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at_ms: Option<i64>,
}

/// One incident, as stored (JSON in the store's incident row) and shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Incident {
    pub id: u64,
    /// The monitor, or `agent:<name>` for an agent offline incident.
    pub monitor: String,
    pub kind: Kind,
    /// The check time at which the rule was met.
    pub opened_ms: i64,
    /// When the failing began (the first failed check of the streak).
    pub since_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_ms: Option<i64>,
    pub diagnosis: String,
    /// The dominant failure reason, e.g. `refused`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Which locations see what (the last picture while it was open).
    pub locations: Vec<LocationView>,
    /// Opened from results that arrived after the fact (an agent's backlog).
    #[serde(default)]
    pub backfilled: bool,
    /// Why it is not (or was never) notified, while that holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<String>,
    /// The maintenance window it fell in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<String>,
    /// The parent's incident that suppresses this one (`depends_on`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suppressed_by: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notified_open_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notified_resolve_ms: Option<i64>,
    /// The newest check time at which a location succeeded before the
    /// failing began: the last time the service was seen healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_ok_ms: Option<i64>,
    /// What changed at the latest change of kind while open (an outside
    /// block that became a full outage), said in an update message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<String>,
    /// When the update message for `change` was sent (or the change was
    /// covered by the opening message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notified_update_ms: Option<i64>,
    /// The last outcome per (channel, phase).
    #[serde(default)]
    pub deliveries: Vec<Delivery>,
    /// Decided: this incident is never notified (healed within the delay,
    /// or over inside a maintenance window or under its parent).
    #[serde(default)]
    pub silent: bool,
}

impl Incident {
    /// A new incident, not stored yet (id 0), not notified.
    pub fn new(
        monitor: &str,
        kind: Kind,
        opened_ms: i64,
        since_ms: i64,
        diagnosis: String,
        reason: Option<String>,
    ) -> Incident {
        Incident {
            id: 0,
            monitor: monitor.to_owned(),
            kind,
            opened_ms,
            since_ms,
            resolved_ms: None,
            diagnosis,
            reason,
            locations: Vec::new(),
            backfilled: false,
            held: None,
            maintenance: None,
            suppressed_by: None,
            notified_open_ms: None,
            notified_resolve_ms: None,
            last_ok_ms: None,
            change: None,
            notified_update_ms: None,
            deliveries: Vec::new(),
            silent: false,
        }
    }

    pub fn is_open(&self) -> bool {
        self.resolved_ms.is_none()
    }
}

/// `refused` for `pb::Reason::Refused`: the name the API and messages use.
pub fn reason_name(reason: i32) -> String {
    pb::Reason::try_from(reason)
        .map(|r| {
            r.as_str_name()
                .trim_start_matches("REASON_")
                .to_ascii_lowercase()
        })
        .unwrap_or_else(|_| format!("reason_{reason}"))
}

/// The message channels render for one notification of an incident.
pub fn notification(
    out: &engine::Outbound,
    dashboard_url: Option<&str>,
) -> crate::notify::Notification {
    let inc = &out.incident;
    let m = out.monitor.as_ref();
    let (protocol, target) = match m.map(|m| m.spec.target.as_str()) {
        Some(t) => match t.split_once("://") {
            Some((scheme, rest)) => (scheme.to_ascii_uppercase(), rest.to_owned()),
            None => (String::new(), t.to_owned()),
        },
        None => (String::new(), String::new()),
    };
    crate::notify::Notification {
        event: match out.phase {
            Phase::Opened => crate::notify::NotifyEvent::Opened,
            Phase::Updated => crate::notify::NotifyEvent::Updated,
            Phase::Resolved => crate::notify::NotifyEvent::Resolved,
        },
        incident_id: inc.id,
        kind: inc.kind.as_str().to_owned(),
        monitor: inc.monitor.clone(),
        protocol,
        target,
        // An agent going away matters about as much as a high-severity monitor.
        severity: m.map_or(crate::monitors::Severity::High, |m| m.severity),
        tags: m.map(|m| m.tags.clone()).unwrap_or_default(),
        locations: inc
            .locations
            .iter()
            .map(|l| crate::notify::LocationView {
                location: l.location.clone(),
                state: l.state.as_str().to_owned(),
                reason: l.reason.clone(),
                // Only a down location has a down_since.
                since_ms: l.down_since_ms.or(l.up_since_ms),
            })
            .collect(),
        diagnosis: inc.diagnosis.clone(),
        reason: inc.reason.clone(),
        since_ms: inc.since_ms,
        resolved_ms: inc.resolved_ms,
        runbook: m.and_then(|m| m.runbook.clone()),
        dashboard_url: dashboard_url.map(|u| format!("{u}/incidents/{}", inc.id)),
        owner: m.and_then(|m| m.owner.clone()),
        last_ok_ms: inc.last_ok_ms,
        // The incident keeps its latest change; only the update says it.
        change: inc.change.clone().filter(|_| out.phase == Phase::Updated),
    }
}

/// A dispatcher report as the incident keeps it.
pub fn delivery(r: &crate::notify::DeliveryReport) -> Delivery {
    let (state, error, retry_at_ms) = match &r.outcome {
        crate::notify::Outcome::Delivered => ("delivered", None, None),
        crate::notify::Outcome::Failed { error, retry_at_ms } => (
            if retry_at_ms.is_some() {
                "retrying"
            } else {
                "failed"
            },
            Some(error.clone()),
            *retry_at_ms,
        ),
    };
    Delivery {
        channel: r.channel.clone(),
        phase: match r.event {
            crate::notify::NotifyEvent::Opened => Phase::Opened,
            crate::notify::NotifyEvent::Updated => Phase::Updated,
            crate::notify::NotifyEvent::Resolved => Phase::Resolved,
        },
        attempt: r.attempt,
        at_ms: r.at_ms,
        state: state.into(),
        error,
        retry_at_ms,
    }
}
