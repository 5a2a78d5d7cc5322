//! `/incidents/{id}`: one incident as a responder needs it: who owns the
//! monitor and how grave it is, the diagnosis and what last changed, when
//! it was last healthy, each location's state and reason since when, the
//! first step per reason (the same hints as the messages, `notify::hint`),
//! and every notification attempt.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{Markup, html};

use super::page::{ago, badge, layout, span, untrusted, utc};
use super::{Viewer, Web, WebBackend, html_page, now_ms, page, urlencode};
use crate::incident::{Incident, LocState, LocationView};
use crate::notify::{self, hint};

/// A location's first step: only a failing location has one.
fn location_hint(l: &LocationView) -> Option<&'static str> {
    matches!(l.state, LocState::Down | LocState::Degraded)
        .then_some(l.reason.as_deref())
        .flatten()
        .and_then(hint)
}

/// The first steps of an open incident: `(reason, hint)` per reason its
/// failing locations (or the incident itself) name, once each.
fn first_steps(i: &Incident) -> Vec<(&str, &'static str)> {
    if !i.is_open() {
        return Vec::new();
    }
    let failing = i
        .locations
        .iter()
        .filter(|l| location_hint(l).is_some())
        .filter_map(|l| l.reason.as_deref());
    notify::first_steps(failing.chain(i.reason.as_deref()))
}

/// `down since <t>` / `up since <t>`: when the location's current state began.
fn since(l: &LocationView) -> Markup {
    let (word, at) = match (l.down_since_ms, l.up_since_ms) {
        (Some(d), _) => ("down since ", d),
        (None, Some(u)) => ("up since ", u),
        (None, None) => return html! {},
    };
    html! { (word) (utc(at)) }
}

pub(super) async fn page<B: WebBackend>(
    State(web): State<Arc<Web<B>>>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Response {
    let nav = viewer.nav("incidents");
    let found = match id.parse::<u64>() {
        Ok(n) => web.backend.incident(n).await.ok(),
        Err(_) => None,
    };
    let Some(i) = found else {
        return html_page(
            StatusCode::NOT_FOUND,
            page::problem(
                "No such incident",
                Some(&nav),
                &format!("There is no incident {id:?}."),
            ),
        );
    };
    // The monitor as defined now (gone for an agent incident or a deleted
    // monitor): its owner and severity.
    let monitor = web.backend.monitor_registry().get(&i.monitor);
    let steps = first_steps(&i);
    let now = now_ms();
    let body = html! {
        h1 {
            "Incident #" (i.id) " "
            @if i.resolved_ms.is_some() { span.st.st-up { "resolved" } } @else { span.st.st-down { "open" } }
        }
        div.card {
            p { b { (i.diagnosis) } }
            @if let Some(c) = &i.change { p { "Latest change: " (c) } }
            dl.kv {
                dt { "monitor" }
                dd {
                    @if i.monitor.starts_with("agent:") { a href="/agents" { (i.monitor) } }
                    @else { a href={"/monitors/" (urlencode(&i.monitor))} { (i.monitor) } }
                }
                @if let Some(m) = &monitor {
                    dt { "owner" } dd { (m.owner.as_deref().unwrap_or("-")) }
                    dt { "severity" } dd { (m.severity.as_str()) }
                }
                dt { "kind" } dd { (i.kind.as_str()) }
                @if let Some(r) = &i.reason { dt { "reason" } dd { (r) } }
                dt { "failing since" } dd { (utc(i.since_ms)) " (" (ago(now, i.since_ms)) ")" }
                dt { "last healthy" }
                dd {
                    @if let Some(ok) = i.last_ok_ms { (utc(ok)) " (" (span(i.since_ms - ok)) " before the failing began)" }
                    @else { span.muted { "none on record" } }
                }
                dt { "opened" } dd { (utc(i.opened_ms)) }
                @if let Some(r) = i.resolved_ms { dt { "resolved" } dd { (utc(r)) ": the outage lasted " (span(r - i.since_ms)) } }
                @if i.backfilled { dt { "backfilled" } dd { "yes: opened from results an agent delivered late" } }
                @if let Some(m) = &i.maintenance { dt { "maintenance" } dd { (m) } }
                @if let Some(h) = &i.held { dt { "held" } dd { (h) } }
                @if let Some(p) = i.suppressed_by { dt { "suppressed by" } dd { a href={"/incidents/" (p)} { "#" (p) } } }
            }
        }
        @if !steps.is_empty() {
            h2 { "First steps" }
            ul {
                @for (r, h) in &steps { li { b { (r) } ": " (h) } }
            }
        }
        h2 { @if i.is_open() { "Locations" } @else { "Locations (last picture while open)" } }
        table {
            thead { tr { th { "location" } th { "state" } th { "reason" } th { "since" } th { "last check" } th { "first step" } } }
            tbody {
                @for l in &i.locations {
                    tr {
                        td { (l.location) } td { (badge(l.state.as_str())) } td { (l.reason.as_deref().unwrap_or("")) }
                        td { (since(l)) }
                        td { @if let Some(c) = l.last_check_ms { (utc(c)) } }
                        td.muted { (location_hint(l).unwrap_or("")) }
                    }
                }
            }
        }
        h2 { "Notifications" }
        @if i.deliveries.is_empty() {
            p.muted { @if i.silent { "Not notified: " (i.held.as_deref().or(i.maintenance.as_deref()).unwrap_or("silenced")) "." } @else { "No delivery yet." } }
        } @else {
            table {
                thead { tr { th { "channel" } th { "phase" } th { "outcome" } th { "attempt" } th { "at" } } }
                tbody {
                    @for d in &i.deliveries {
                        tr {
                            td { (d.channel) } td { (format!("{:?}", d.phase).to_lowercase()) }
                            td {
                                (d.state)
                                @if let Some(e) = &d.error { ": " span.mono { (untrusted(e, 200)) } }
                                @if let Some(r) = d.retry_at_ms { span.muted { " (retry " (ago(now, r)) ")" } }
                            }
                            td { (d.attempt) } td { (utc(d.at_ms)) }
                        }
                    }
                }
            }
        }
    };
    html_page(
        StatusCode::OK,
        layout(&format!("Incident #{}", i.id), Some(&nav), body),
    )
}
