//! The public status page, `/status`: no sign-in, so it shows only what the
//! `[status_page]` config chooses. Groups of monitors with their state and
//! 90-day uptime bars, open incidents, scheduled maintenance and the last
//! two weeks' incidents. Targets (hostnames, addresses, ports) are hidden
//! unless `hide_targets = false`: the page is meant for outsiders.
//!
//! ```toml
//! [status_page]
//! title = "Acme services"
//! hide_targets = true          # default
//! [[status_page.groups]]
//! name = "Databases"
//! monitors = ["pg-main"]
//! tags = ["db"]
//! ```
//!
//! Without groups, one group "Services" shows every monitor. The rendered
//! page is cached for 10 s so a busy public page costs the store little.
//!
//! Maintenance is maintenance here: a monitor inside a window is "under
//! maintenance", its open incident is shown with the windows rather than
//! under "Current incidents", an incident that ran wholly inside a window is
//! not listed, and the bars and the 90-day figure leave out the checks
//! during windows (a day with nothing else is a maintenance bar) and say how
//! much they left out. Every one of these reads the same intervals,
//! [`crate::maintenance::covered`].

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use maud::{Markup, html};
use serde::Deserialize;

use super::chart::{self, Bar};
use super::page::{ago, layout, percent, span, utc};
use crate::incident::Incident;
use crate::incident::engine::MonitorStatus;
use crate::maintenance::MaintenanceRegistry;
use crate::maintenance::registry::Occurrence;
use crate::monitors::Monitor;
use crate::store::{Bucket, DAY_MS, Store, Summary, SummaryQuery, summaries_excluding};

/// `[status_page]` as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStatusPage {
    /// Serve `/status`. Default true.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// The page's heading. Default "Service status".
    #[serde(default)]
    pub title: Option<String>,
    /// Hide every monitor's target (hostnames, addresses, ports). Default true.
    #[serde(default)]
    pub hide_targets: Option<bool>,
    /// The groups, in order. Default: one group "Services" with every monitor.
    #[serde(default)]
    pub groups: Vec<RawGroup>,
}

/// `[[status_page.groups]]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGroup {
    pub name: String,
    /// Monitors by name, in the order shown; `"*"` means every monitor.
    #[serde(default)]
    pub monitors: Vec<String>,
    /// And monitors having any of these tags (by name).
    #[serde(default)]
    pub tags: Vec<String>,
}

/// The checked settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusPage {
    pub enabled: bool,
    pub title: String,
    pub hide_targets: bool,
    pub groups: Vec<RawGroup>,
}

impl Default for StatusPage {
    fn default() -> Self {
        StatusPage {
            enabled: true,
            title: "Service status".into(),
            hide_targets: true,
            groups: vec![RawGroup {
                name: "Services".into(),
                monitors: vec!["*".into()],
                tags: Vec::new(),
            }],
        }
    }
}

/// Checks `[status_page]`; every problem, one per entry.
pub fn validate(raw: &RawStatusPage) -> Result<StatusPage, Vec<String>> {
    let mut problems = Vec::new();
    let defaults = StatusPage::default();
    let title = raw.title.clone().unwrap_or(defaults.title);
    if title.trim().is_empty() || title.chars().count() > 120 {
        problems.push("status_page.title: must be 1-120 characters".into());
    }
    let mut seen = BTreeSet::new();
    for (i, g) in raw.groups.iter().enumerate() {
        let at = format!("status_page.groups[{i}]");
        if g.name.trim().is_empty() || g.name.chars().count() > 80 {
            problems.push(format!("{at}.name: must be 1-80 characters"));
        } else if !seen.insert(g.name.clone()) {
            problems.push(format!("{at}.name: {:?} is used twice", g.name));
        }
        if g.monitors.is_empty() && g.tags.is_empty() {
            problems.push(format!("{at}: selects nothing: give monitors or tags"));
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(StatusPage {
        enabled: raw.enabled.unwrap_or(true),
        title,
        hide_targets: raw.hide_targets.unwrap_or(true),
        groups: if raw.groups.is_empty() {
            defaults.groups
        } else {
            raw.groups.clone()
        },
    })
}

/// The monitors a group shows, in order: named ones first, then tagged
/// ones by name; each once.
pub fn members<'a>(group: &RawGroup, monitors: &'a [Monitor]) -> Vec<&'a Monitor> {
    let mut out: Vec<&Monitor> = Vec::new();
    let push = |m: &'a Monitor, out: &mut Vec<&'a Monitor>| {
        if !out.iter().any(|x| x.name == m.name) {
            out.push(m);
        }
    };
    let mut sorted: Vec<&Monitor> = monitors.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    for name in &group.monitors {
        if name == "*" {
            for m in &sorted {
                push(m, &mut out);
            }
        } else if let Some(m) = sorted.iter().find(|m| &m.name == name) {
            push(m, &mut out);
        }
    }
    for m in &sorted {
        if m.tags.iter().any(|t| group.tags.contains(t)) {
            push(m, &mut out);
        }
    }
    out
}

/// The live settings: set at start, replaced by each accepted config reload.
#[derive(Clone, Default)]
pub struct Live(std::sync::Arc<std::sync::RwLock<StatusPage>>);

impl Live {
    pub fn new(page: StatusPage) -> Live {
        Live(std::sync::Arc::new(std::sync::RwLock::new(page)))
    }

    pub fn get(&self) -> StatusPage {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set(&self, page: StatusPage) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = page;
    }
}

/// The rendered page, kept for a few seconds.
#[derive(Default)]
pub struct Cache(Mutex<Option<(i64, Markup)>>);

const CACHE_MS: i64 = 10_000;

impl Cache {
    pub fn get(&self, now_ms: i64) -> Option<Markup> {
        let c = self.0.lock().unwrap_or_else(|e| e.into_inner());
        c.as_ref()
            .filter(|(at, _)| now_ms - at < CACHE_MS && now_ms >= *at)
            .map(|(_, m)| m.clone())
    }

    pub fn put(&self, now_ms: i64, page: Markup) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some((now_ms, page));
    }
}

/// What the page is made of.
pub struct Inputs<'a> {
    pub now_ms: i64,
    /// Maintenance windows: what a monitor's bars, uptime and incidents leave out.
    pub windows: &'a MaintenanceRegistry,
    pub monitors: &'a [Monitor],
    pub statuses: &'a [MonitorStatus],
    pub incidents: &'a [Incident],
    pub upcoming: &'a [Occurrence],
    pub store: &'a dyn Store,
}

/// Days of bars.
pub const DAYS: i64 = 90;

/// Public wording of a state.
fn public_state(state: &str) -> (&'static str, &'static str) {
    match state {
        "up" => ("up", "operational"),
        "degraded" => ("degraded", "degraded performance"),
        "down" => ("down", "outage"),
        "maintenance" => ("maintenance", "under maintenance"),
        _ => ("unknown", "no data"),
    }
}

/// Daily summaries of a monitor over every location, by day index
/// (0 = the oldest of the 90 days), without the checks during `maintenance`.
fn days(
    store: &dyn Store,
    monitor: &str,
    locations: &[String],
    first_day_ms: i64,
    to_ms: i64,
    maintenance: &[(i64, i64)],
) -> Vec<Summary> {
    let mut out = vec![Summary::default(); DAYS as usize];
    for loc in locations {
        let q = SummaryQuery {
            monitor_id: monitor.to_owned(),
            location: loc.clone(),
            from_ms: first_day_ms,
            to_ms,
            bucket: Bucket::Day,
        };
        for s in summaries_excluding(store, &q, maintenance).unwrap_or_default() {
            if let Some(d) = usize::try_from((s.start_ms - first_day_ms) / DAY_MS)
                .ok()
                .and_then(|i| out.get_mut(i))
            {
                d.merge(&s);
            }
        }
    }
    out
}

/// How much of `[from_ms, to_ms)` the (merged) `intervals` cover.
fn covered_within(intervals: &[(i64, i64)], from_ms: i64, to_ms: i64) -> i64 {
    intervals
        .iter()
        .map(|(s, e)| (e.min(&to_ms) - s.max(&from_ms)).max(0))
        .sum()
}

/// Did the incident run wholly inside maintenance? Then the page shows it
/// as maintenance, not as an incident.
fn during_maintenance(i: &Incident, intervals: &[(i64, i64)], now: i64) -> bool {
    let end = i.resolved_ms.unwrap_or(now);
    intervals.iter().any(|(s, e)| *s <= i.since_ms && end <= *e)
}

fn selects(o: &Occurrence, m: &Monitor) -> bool {
    o.monitors.iter().any(|n| n == "*" || *n == m.name) || m.tags.iter().any(|t| o.tags.contains(t))
}

pub fn render(config: &StatusPage, x: &Inputs<'_>) -> Markup {
    let now = x.now_ms;
    let first_day = Bucket::Day.start_of(now) - (DAYS - 1) * DAY_MS;
    let groups: Vec<(&RawGroup, Vec<&Monitor>)> = config
        .groups
        .iter()
        .map(|g| (g, members(g, x.monitors)))
        .filter(|(_, m)| !m.is_empty())
        .collect();
    let shown: BTreeSet<&str> = groups
        .iter()
        .flat_map(|(_, ms)| ms.iter().map(|m| m.name.as_str()))
        .collect();
    let shown_monitors: Vec<&Monitor> =
        groups.iter().flat_map(|(_, m)| m.iter().copied()).collect();
    // Each shown monitor's maintenance over the 90 days, up to now: one
    // answer for its bars, its incidents and whether it is in maintenance now.
    let maintenance_of: HashMap<&str, Vec<(i64, i64)>> = shown_monitors
        .iter()
        .map(|m| {
            let covered = x.windows.covered(&m.name, &m.tags, first_day, now + 1);
            (m.name.as_str(), covered)
        })
        .collect();
    let no_maintenance = Vec::new();
    let covered_of = |name: &str| maintenance_of.get(name).unwrap_or(&no_maintenance);
    let in_maintenance_now =
        |name: &str| covered_of(name).iter().any(|(s, e)| *s <= now && now < *e);
    let state_of = |name: &str| {
        if in_maintenance_now(name) {
            return "maintenance";
        }
        x.statuses
            .iter()
            .find(|s| s.monitor == name)
            .map_or("unknown", |s| s.state.as_str())
    };
    let states: Vec<&str> = shown.iter().map(|n| state_of(n)).collect();
    let down = states.iter().filter(|s| **s == "down").count();
    let (class, headline) = if down > 0 && down * 2 >= states.len() {
        ("down", "Major outage")
    } else if down > 0 {
        ("down", "Partial outage")
    } else if states.contains(&"degraded") {
        ("degraded", "Degraded performance")
    } else if states.contains(&"maintenance") {
        ("maintenance", "Maintenance in progress")
    } else {
        ("up", "All systems operational")
    };
    // Incidents that ran wholly inside maintenance are maintenance here.
    let relevant: Vec<&Incident> = x
        .incidents
        .iter()
        .filter(|i| shown.contains(i.monitor.as_str()))
        .filter(|i| !during_maintenance(i, covered_of(&i.monitor), now))
        .collect();
    let open: Vec<&&Incident> = relevant
        .iter()
        .filter(|i| i.resolved_ms.is_none() && !in_maintenance_now(&i.monitor))
        .collect();
    // An open incident of a monitor in maintenance now is not current: it
    // is shown with the window covering it.
    let held: Vec<&Incident> = x
        .incidents
        .iter()
        .filter(|i| {
            i.resolved_ms.is_none()
                && shown.contains(i.monitor.as_str())
                && in_maintenance_now(&i.monitor)
        })
        .collect();
    let past: Vec<&&Incident> = relevant
        .iter()
        .filter(|i| i.resolved_ms.is_some_and(|r| r >= now - 14 * DAY_MS))
        .collect();
    let maintenance: Vec<(&Occurrence, Vec<&str>)> = x
        .upcoming
        .iter()
        .filter_map(|o| {
            let covered: Vec<&str> = shown_monitors
                .iter()
                .filter(|m| selects(o, m))
                .map(|m| m.name.as_str())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            (!covered.is_empty()).then_some((o, covered))
        })
        .collect();
    let body = html! {
        div.status-page data-refresh="60" {
            h1 { (config.title) }
            div class={"overall " (class)} { (headline) }
            @if !open.is_empty() {
                h2 { "Current incidents" }
                @for i in &open {
                    div.card {
                        b { (i.monitor) } " · " (i.diagnosis)
                        div.muted { "since " (utc(i.since_ms)) " (" (ago(now, i.since_ms)) ")" }
                    }
                }
            }
            @if !maintenance.is_empty() {
                h2 { "Scheduled maintenance" }
                @for i in &held {
                    div.card.held {
                        b { (i.monitor) } " " span.st.st-maintenance { "under maintenance" }
                        div.muted { "down since " (utc(i.since_ms)) ", inside a maintenance window: not an incident" }
                    }
                }
                @for (o, covered) in &maintenance {
                    div.card {
                        b { (o.name) }
                        @if o.start_ms <= now { " " span.st.st-maintenance { "in progress" } }
                        @if let Some(r) = &o.reason { " · " (r) }
                        div.muted { (utc(o.start_ms)) " → " (utc(o.end_ms)) " (" (span(o.end_ms - o.start_ms)) ") · " (covered.join(", ")) }
                    }
                }
            }
            @for (g, members) in &groups {
                h2 { (g.name) }
                div.card {
                    @for m in members {
                        @let status = x.statuses.iter().find(|s| s.monitor == m.name);
                        @let locations: Vec<String> = status.map(|s| s.locations.iter().map(|l| l.location.clone()).collect()).unwrap_or_default();
                        @let covered = covered_of(&m.name);
                        @let daily = days(x.store, &m.name, &locations, first_day, now + 1, covered);
                        @let mut total = Summary::default();
                        @let bars: Vec<Bar> = daily.iter().enumerate().map(|(d, s)| {
                            total.merge(s);
                            let day_start = first_day + d as i64 * DAY_MS;
                            let n = relevant.iter().filter(|i| i.monitor == m.name && i.since_ms < day_start + DAY_MS && i.resolved_ms.unwrap_or(now) >= day_start).count();
                            let maintenance_ms = covered_within(covered, day_start, day_start + DAY_MS);
                            let day = utc(day_start);
                            let mut title = format!("{}: {}", &day[..10], match s.availability() {
                                Some(_) => format!("{} up ({} checks)", percent(s.availability()), s.checks),
                                None if maintenance_ms > 0 => "maintenance".into(),
                                None => "no data".into(),
                            });
                            if maintenance_ms > 0 && s.checks > 0 {
                                title.push_str(&format!(", excluding {} of maintenance", span(maintenance_ms)));
                            } else if maintenance_ms > 0 {
                                title.push_str(&format!(" ({})", span(maintenance_ms)));
                            }
                            if n > 0 { title.push_str(&format!(", {n} incident{}", if n == 1 { "" } else { "s" })); }
                            Bar { availability: s.availability(), maintenance: s.checks == 0 && maintenance_ms > 0, title }
                        }).collect();
                        @let excluded_ms = crate::maintenance::total_ms(covered);
                        @let (st, words) = public_state(state_of(&m.name));
                        div.svc {
                            div.head {
                                span {
                                    b { (m.name) }
                                    @if !config.hide_targets { " " span.muted.mono { (m.spec.target) } }
                                }
                                span class={"st st-" (st)} { (words) }
                            }
                            (chart::bars(&bars, &format!("{} uptime, last {DAYS} days", m.name)))
                            div.foot {
                                span { (DAYS) " days ago" }
                                span {
                                    (percent(total.availability())) " uptime"
                                    @if excluded_ms > 0 { " (excluding " (span(excluded_ms)) " of maintenance)" }
                                }
                                span { "today" }
                            }
                        }
                    }
                }
            }
            h2 { "Past incidents (14 days)" }
            @if past.is_empty() {
                p.muted { "No incidents." }
            } @else {
                @for i in &past {
                    div.card {
                        b { (i.monitor) } " · " (i.diagnosis)
                        div.muted { (utc(i.since_ms)) ", lasted " (span(i.resolved_ms.unwrap_or(now) - i.since_ms)) }
                    }
                }
            }
            p.muted { "Updated " (utc(now)) ". Times in UTC." }
        }
    };
    layout(&config.title, None, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_is_checked_and_defaults_are_private() {
        let d = validate(&RawStatusPage::default()).unwrap();
        assert!(d.enabled && d.hide_targets);
        assert_eq!(d.groups[0].monitors, ["*"]);
        let bad = RawStatusPage {
            title: Some(String::new()),
            groups: vec![
                RawGroup {
                    name: "db".into(),
                    ..RawGroup::default()
                },
                RawGroup {
                    name: "db".into(),
                    tags: vec!["x".into()],
                    ..RawGroup::default()
                },
            ],
            ..RawStatusPage::default()
        };
        let problems = validate(&bad).unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("title"));
        assert!(problems[1].contains("selects nothing"));
        assert!(problems[2].contains("used twice"));
    }
}
