//! The incident engine: feeds results into per-monitor series, sweeps the
//! monitors that changed, turns what the sweeps find into incident records
//! (stored, with an event log entry per change), watches agent presence, and
//! decides when an incident is notified.
//!
//! [`IncidentEngine::observe`] is cheap (a lock and an insert) and is called
//! from the store's ingest path; the work happens in [`IncidentEngine::step`],
//! which [`IncidentEngine::run`] calls when results arrived (at most every
//! 50 ms) and once a second for time-driven changes (staleness, notification
//! delays, maintenance ending, agents going offline). `step` takes the time
//! as an argument so tests drive it on fixed clocks.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, watch};

use super::consensus::{LocState, LocationView, Obs, Outcome, Rules, Series, Span, Sweep};
use super::{Delivery, Incident, Kind, Phase};
use crate::monitors::Monitor;
use crate::monitors::registry::MonitorRegistry;
use crate::store::{Event, IncidentQuery, IncidentRow, Sample, Store, StoreError};

/// An incident first seen this long after the check that opened it (or
/// already over when first seen) came from results that arrived late.
pub const LATE_MS: i64 = 5_000;

/// Timings of the engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// How far back results are kept to judge a monitor (and so how old a
    /// replayed result can be and still be placed in an incident).
    pub horizon: Duration,
    /// At most this many results per monitor and location are kept.
    pub max_per_location: usize,
    /// An agent whose stream is gone this long gets an agent offline incident.
    pub agent_offline_after: Duration,
    /// How often time-driven changes are looked at.
    pub tick: Duration,
    /// Steps triggered by results are at least this far apart.
    pub min_step_gap: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            horizon: Duration::from_secs(15 * 60),
            max_per_location: 2048,
            agent_offline_after: Duration::from_secs(60),
            tick: Duration::from_secs(1),
            min_step_gap: Duration::from_millis(50),
        }
    }
}

/// An agent as the engine needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentPresence {
    /// `agent:<name>`: the location its results are stored under.
    pub location: String,
    pub connected: bool,
    /// Since when it is connected or disconnected; None = unknown (not seen
    /// since the collector started).
    pub since_ms: Option<i64>,
    pub revoked: bool,
    /// When it enrolled: one that never connected is offline from here (or
    /// from the collector's start, whichever is later).
    pub enrolled_ms: i64,
}

/// Where the engine learns which agents exist and which are connected.
pub trait Presence: Send + Sync {
    fn agents(&self) -> Vec<AgentPresence>;
}

/// No agents (tests of monitors alone).
pub struct NoAgents;

impl Presence for NoAgents {
    fn agents(&self) -> Vec<AgentPresence> {
        Vec::new()
    }
}

/// Maintenance windows, as the engine asks about them.
pub trait Silencer: Send + Sync {
    /// The window covering `monitor` (with `tags`) at `ts_ms`, by name.
    fn active(&self, monitor: &str, tags: &[String], ts_ms: i64) -> Option<String>;
}

/// No maintenance windows.
pub struct NoMaintenance;

impl Silencer for NoMaintenance {
    fn active(&self, _monitor: &str, _tags: &[String], _ts_ms: i64) -> Option<String> {
        None
    }
}

/// One notification to send.
#[derive(Debug, Clone)]
pub struct Outbound {
    pub phase: Phase,
    pub incident: Incident,
    /// The monitor as defined when it was sent (None for agent incidents or
    /// a monitor deleted since).
    pub monitor: Option<Monitor>,
    /// Channels that already have it (a resend after a restart skips them).
    pub skip: Vec<String>,
}

/// Where notifications go (the dispatcher, or a channel in tests).
pub trait Outbox: Send + Sync {
    fn send(&self, out: Outbound);
}

/// Sends nowhere; incidents are still recorded.
pub struct NoOutbox;

impl Outbox for NoOutbox {
    fn send(&self, _out: Outbound) {}
}

/// Unix ms now; tests pass one that follows tokio's paused clock.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The wall clock.
pub fn wall_clock() -> Clock {
    Arc::new(|| crate::state::unix_ms(std::time::SystemTime::now()))
}

/// One monitor's current picture, for the API and the dashboard.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct MonitorStatus {
    pub monitor: String,
    /// `up`, `degraded`, `down` (an open incident), `unknown`, `maintenance`.
    pub state: String,
    pub locations: Vec<LocationView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incident: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<String>,
}

#[derive(Default)]
struct Feed {
    series: HashMap<String, Series>,
    dirty: HashSet<String>,
    /// Per monitor: the judgement so far, advanced by new results.
    sweeps: HashMap<String, Sweep>,
    /// Per monitor and agent location: the newest check time loaded from
    /// the store at start. Until each agent reports past it (or its offline
    /// grace passes) the monitor is not judged: a restart is quiet.
    loaded: HashMap<String, HashMap<String, i64>>,
}

#[derive(Default)]
struct Book {
    /// Open incidents, and closed ones still within the horizon.
    incidents: BTreeMap<u64, Incident>,
    /// Per monitor: every location now, and when a location turns stale next.
    status: HashMap<String, (Vec<LocationView>, Option<i64>)>,
    /// When agent presence was last looked at (it reads the agent registry).
    presence_at_ms: Option<i64>,
}

struct Shared {
    feed: Mutex<Feed>,
    book: Mutex<Book>,
    wake: Notify,
    store: Arc<dyn Store>,
    monitors: MonitorRegistry,
    presence: Arc<dyn Presence>,
    silencer: Arc<dyn Silencer>,
    outbox: Arc<dyn Outbox>,
    clock: Clock,
    config: EngineConfig,
    /// When this engine started: agents never seen since are offline from here.
    started_ms: i64,
}

/// The engine handle. Cheap to clone.
#[derive(Clone)]
pub struct IncidentEngine {
    shared: Arc<Shared>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl IncidentEngine {
    /// The engine over `store`: loads open (and recently closed) incidents and
    /// the last `horizon` of results of every monitor, so a restart neither
    /// forgets an incident nor opens it twice.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        store: Arc<dyn Store>,
        monitors: MonitorRegistry,
        presence: Arc<dyn Presence>,
        silencer: Arc<dyn Silencer>,
        outbox: Arc<dyn Outbox>,
        clock: Clock,
        config: EngineConfig,
    ) -> Result<IncidentEngine, StoreError> {
        let now = clock();
        let horizon = crate::store::ms(config.horizon);
        let mut book = Book::default();
        for row in store.incidents(&IncidentQuery {
            open_only: true,
            ..IncidentQuery::default()
        })? {
            let inc = parse(&row)?;
            book.incidents.insert(inc.id, inc);
        }
        for row in store.incidents(&IncidentQuery {
            limit: 1000,
            ..IncidentQuery::default()
        })? {
            if row.resolved_ms.is_some_and(|r| r >= now - horizon) {
                let inc = parse(&row)?;
                book.incidents.insert(inc.id, inc);
            }
        }
        let mut feed = Feed::default();
        for m in monitors.monitors() {
            let q = crate::store::ResultQuery::monitor(&m.name).range(now - horizon, i64::MAX);
            let mut s = Series::default();
            for r in store.results(&q)? {
                s.insert(&r.location, Obs::of(&r.result));
            }
            s.trim(now - horizon, config.max_per_location);
            let agents: HashMap<String, i64> = s
                .latest()
                .filter(|(l, _)| !l.starts_with("public:"))
                .map(|(l, t)| (l.to_owned(), t))
                .collect();
            if !agents.is_empty() {
                feed.loaded.insert(m.name.clone(), agents);
            }
            if !s.is_empty() {
                feed.dirty.insert(m.name.clone());
                feed.series.insert(m.name, s);
            }
        }
        Ok(IncidentEngine {
            shared: Arc::new(Shared {
                feed: Mutex::new(feed),
                book: Mutex::new(book),
                wake: Notify::new(),
                store,
                monitors,
                presence,
                silencer,
                outbox,
                clock,
                config,
                started_ms: now,
            }),
        })
    }

    /// Sends again what was handed to the dispatcher before a restart but
    /// not confirmed delivered: the dispatcher's queues live in memory. A
    /// channel that delivered it, or gave up for good, is skipped.
    pub fn resume_deliveries(&self) {
        let book = lock(&self.shared.book);
        for inc in book.incidents.values() {
            for (phase, sent) in [
                (Phase::Opened, inc.notified_open_ms),
                // Not when the opening message covered the change.
                (
                    Phase::Updated,
                    inc.notified_update_ms
                        .filter(|u| inc.is_open() && Some(*u) > inc.notified_open_ms),
                ),
                (Phase::Resolved, inc.notified_resolve_ms),
            ] {
                if sent.is_none() {
                    continue;
                }
                let done: Vec<String> = inc
                    .deliveries
                    .iter()
                    .filter(|d| d.phase == phase && d.state != "retrying")
                    .map(|d| d.channel.clone())
                    .collect();
                let pending = inc
                    .deliveries
                    .iter()
                    .any(|d| d.phase == phase && d.state == "retrying")
                    || !inc.deliveries.iter().any(|d| d.phase == phase);
                if pending {
                    tracing::info!(incident = inc.id, phase = ?phase, "resending a notification not confirmed before the restart");
                    self.shared.outbox.send(Outbound {
                        phase,
                        incident: inc.clone(),
                        monitor: self.shared.monitors.get(&inc.monitor),
                        skip: done,
                    });
                }
            }
        }
    }

    /// Takes results the store has just made durable.
    pub fn observe(&self, samples: &[Sample]) {
        if samples.is_empty() {
            return;
        }
        let horizon = crate::store::ms(self.shared.config.horizon);
        let max = self.shared.config.max_per_location;
        let mut feed = lock(&self.shared.feed);
        let Feed { series, dirty, .. } = &mut *feed;
        for s in samples {
            let obs = Obs::of(&s.result);
            let series = match series.get_mut(&s.monitor_id) {
                Some(x) => x,
                None => series.entry(s.monitor_id.clone()).or_default(),
            };
            series.insert(&s.location, obs);
            if series.len() > max {
                let newest = series.latest().map(|(_, t)| t).max().unwrap_or(obs.ts_ms);
                series.trim(newest - horizon, max);
            }
            if !dirty.contains(&s.monitor_id) {
                dirty.insert(s.monitor_id.clone());
            }
        }
        drop(feed);
        self.shared.wake.notify_one();
    }

    /// Runs [`step`](Self::step) on new results and every tick until `stop`.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.shared.config.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                _ = self.shared.wake.notified() => {}
                _ = tick.tick() => {}
            }
            let me = self.clone();
            let now = (self.shared.clock)();
            if let Err(e) = tokio::task::spawn_blocking(move || me.step(now)).await {
                tracing::error!(error = %e, "incident step failed");
            }
            tokio::time::sleep(self.shared.config.min_step_gap).await;
        }
    }

    /// Judges everything that changed, and everything time changed, at `now_ms`.
    pub fn step(&self, now_ms: i64) {
        let horizon = crate::store::ms(self.shared.config.horizon);
        // Monitors with new results, and those where a location went stale.
        let mut due: Vec<String> = std::mem::take(&mut lock(&self.shared.feed).dirty)
            .into_iter()
            .collect();
        {
            let book = lock(&self.shared.book);
            for (m, (_, next)) in &book.status {
                if next.is_some_and(|t| t <= now_ms) && !due.contains(m) {
                    due.push(m.clone());
                }
            }
        }
        due.sort();
        for name in due {
            let Some(monitor) = self.shared.monitors.get(&name) else {
                let mut feed = lock(&self.shared.feed);
                feed.series.remove(&name);
                feed.sweeps.remove(&name);
                drop(feed);
                lock(&self.shared.book).status.remove(&name);
                continue;
            };
            let rules = Rules::for_monitor(&monitor);
            let Some((outcome, settled)) = self.judge(&name, &rules, now_ms - horizon, now_ms)
            else {
                continue;
            };
            let warming = self.warming(&name, now_ms);
            let mut book = lock(&self.shared.book);
            book.status.insert(
                name.clone(),
                (
                    outcome.now.clone(),
                    // Judged again when the warm-up ends at the latest.
                    match warming {
                        Some(end) => Some(outcome.next_stale_ms.map_or(end, |t| t.min(end))),
                        None => outcome.next_stale_ms,
                    },
                ),
            );
            if warming.is_none() {
                self.reconcile(&mut book, &monitor, &outcome, settled, now_ms);
            }
        }
        let mut book = lock(&self.shared.book);
        if book
            .presence_at_ms
            .is_none_or(|at| now_ms - at >= 1000 || now_ms < at)
        {
            book.presence_at_ms = Some(now_ms);
            self.agents(&mut book, now_ms);
        }
        self.forget_deleted(&mut book, now_ms);
        self.settle_all(&mut book, now_ms);
        book.incidents
            .retain(|_, i| i.resolved_ms.is_none_or(|r| r >= now_ms - horizon));
    }

    /// Judges monitor `name` at `now_ms`. Its sweep is kept up to where the
    /// results are in ([`Series::settled_to`]) and a copy goes on to `now_ms`,
    /// so a step costs the results since then, not a replay of the history.
    /// A late result, a rule change or a new location starts the sweep over
    /// on a copy of the series (outside the lock: ingest goes on). None: no
    /// results.
    /// Also returns up to when the results are in ([`Series::settled_to`]).
    fn judge(
        &self,
        name: &str,
        rules: &Rules,
        from_ms: i64,
        now_ms: i64,
    ) -> Option<(Outcome, i64)> {
        let mut feed = lock(&self.shared.feed);
        let Feed { series, sweeps, .. } = &mut *feed;
        let Some(s) = series.get_mut(name) else {
            sweeps.remove(name);
            return None;
        };
        s.trim(from_ms, self.shared.config.max_per_location);
        let inserted_from = s.take_inserted_from();
        let settled = s.settled_to(now_ms, rules.stale_ms);
        if let Some(w) = sweeps
            .get_mut(name)
            .filter(|w| w.can_go_on(s, rules, inserted_from, now_ms))
        {
            w.advance(s, settled);
            w.forget_closed_before(from_ms);
            return Some((provisional(w, s, now_ms), settled));
        }
        let copy = s.clone();
        drop(feed);
        let mut w = Sweep::start(&copy, rules);
        w.advance(&copy, settled);
        w.forget_closed_before(from_ms);
        let outcome = provisional(&w, &copy, now_ms);
        lock(&self.shared.feed).sweeps.insert(name.to_owned(), w);
        Some((outcome, settled))
    }

    /// Until when monitor `name` is not judged after the collector started:
    /// an agent whose results were loaded from the store has not reported
    /// since, and its offline grace has not passed. Recorded incidents
    /// continue meanwhile; nothing opens, closes or is sent on a picture
    /// that is missing locations that are merely reconnecting.
    fn warming(&self, name: &str, now_ms: i64) -> Option<i64> {
        let end = self.shared.started_ms + crate::store::ms(self.shared.config.agent_offline_after);
        let mut feed = lock(&self.shared.feed);
        if now_ms >= end {
            feed.loaded.clear();
            return None;
        }
        let Feed { series, loaded, .. } = &mut *feed;
        let at_start = loaded.get_mut(name)?;
        if let Some(s) = series.get(name) {
            for (loc, t) in s.latest() {
                if at_start.get(loc).is_some_and(|t0| t > *t0) {
                    at_start.remove(loc);
                }
            }
        }
        if at_start.is_empty() {
            loaded.remove(name);
            return None;
        }
        Some(end)
    }

    /// Turns a sweep's spans into incident changes.
    fn reconcile(
        &self,
        book: &mut Book,
        monitor: &Monitor,
        outcome: &Outcome,
        settled_ms: i64,
        now_ms: i64,
    ) {
        let recorded: Vec<u64> = book
            .incidents
            .values()
            .filter(|i| i.monitor == monitor.name && i.kind != Kind::AgentOffline)
            .map(|i| i.id)
            .collect();
        let mut matched: HashSet<u64> = HashSet::new();
        for span in outcome.spans.iter().cloned() {
            // The same kind, or the other kind of a span that changed kind
            // while open (edge <-> down): one incident either way. An open
            // incident first: one that was told over stays over, and a span
            // it no longer covers must not make a new incident every step.
            let candidate = |id: &u64| {
                !matched.contains(id) && {
                    let i = &book.incidents[id];
                    (i.kind == span.kind
                        || (span.change.is_some() && matches!(i.kind, Kind::Down | Kind::Edge)))
                        && overlaps(i, &span)
                }
            };
            let found = recorded
                .iter()
                .copied()
                .filter(candidate)
                .find(|id| book.incidents[id].is_open())
                .or_else(|| recorded.iter().copied().find(candidate));
            match found {
                Some(id) => {
                    matched.insert(id);
                    let mut inc = book.incidents[&id].clone();
                    let before = inc.clone();
                    if inc.resolved_ms.is_some() && span.close_ms.is_none() {
                        if inc.notified_resolve_ms.is_some() {
                            // Told it was over: late results that say it was
                            // not are a new incident, once every location has
                            // reported past that end (a backlog still being
                            // replayed says nothing yet about after it).
                            if settled_ms >= inc.resolved_ms.unwrap_or(i64::MAX) {
                                self.create(book, monitor, span, now_ms);
                            }
                            continue;
                        }
                        inc.resolved_ms = None;
                        inc.silent = false;
                    }
                    if inc.notified_resolve_ms.is_none() {
                        inc.resolved_ms = span.close_ms;
                    }
                    if inc.kind != span.kind && inc.is_open() {
                        inc.kind = span.kind;
                        inc.change = span.change.map(|(_, what)| what);
                        // An incident already paged is told the change;
                        // one still held opens with its current kind.
                        inc.notified_update_ms = None;
                    }
                    inc.since_ms = inc.since_ms.min(span.since_ms);
                    inc.last_ok_ms = inc.last_ok_ms.or(span.last_ok_ms);
                    inc.diagnosis = span.diagnosis;
                    inc.reason = span.reason.or(inc.reason);
                    inc.locations = span.locations;
                    if inc != before {
                        let action = if before.is_open() && !inc.is_open() {
                            "resolved"
                        } else {
                            "updated"
                        };
                        self.save(book, inc, action, now_ms);
                    }
                }
                None => self.create(book, monitor, span, now_ms),
            }
        }
        // Open incidents no span supports any more (late results cleared
        // them, or the collector restarted after the service recovered);
        // not while a verdict is still waiting for locations to report.
        if outcome.waiting {
            return;
        }
        for id in recorded {
            if matched.contains(&id) {
                continue;
            }
            let Some(inc) = book.incidents.get(&id) else {
                continue;
            };
            if inc.is_open() {
                let mut inc = inc.clone();
                inc.resolved_ms = Some(now_ms.max(inc.opened_ms));
                inc.diagnosis
                    .push_str("; resolved: the results now at hand show no failure");
                self.save(book, inc, "resolved", now_ms);
            }
        }
    }

    fn create(&self, book: &mut Book, monitor: &Monitor, span: Span, now_ms: i64) {
        let inc = Incident {
            resolved_ms: span.close_ms,
            locations: span.locations,
            last_ok_ms: span.last_ok_ms,
            // Results normally arrive well within a second of their check.
            backfilled: span.close_ms.is_some() || now_ms - span.open_ms > LATE_MS,
            ..Incident::new(
                &monitor.name,
                span.kind,
                span.open_ms,
                span.since_ms,
                span.diagnosis,
                span.reason,
            )
        };
        self.save(book, inc, "opened", now_ms);
    }

    /// Stores `inc` (assigning its id when new), logs the change, keeps it.
    fn save(&self, book: &mut Book, mut inc: Incident, action: &str, now_ms: i64) -> u64 {
        let body = match serde_json::to_string(&inc) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(monitor = %inc.monitor, error = %e, "encoding an incident failed");
                return inc.id;
            }
        };
        let row = IncidentRow {
            id: inc.id,
            subject: inc.monitor.clone(),
            opened_ms: inc.opened_ms,
            resolved_ms: inc.resolved_ms,
            body,
        };
        match self.shared.store.put_incident(&row) {
            // The row's id is the one that counts: `parse` puts it on the
            // incident, so the body written with id 0 needs no second write.
            Ok(id) => inc.id = id,
            Err(e) => {
                // Kept in memory; the next change writes it again.
                tracing::error!(monitor = %inc.monitor, error = %e, "storing an incident failed");
            }
        }
        if action != "updated" {
            tracing::info!(incident = inc.id, monitor = %inc.monitor, kind = inc.kind.as_str(), action, diagnosis = %inc.diagnosis, "incident {action}");
        }
        let event = Event {
            ts_ms: now_ms,
            kind: "incident".into(),
            subject: inc.monitor.clone(),
            body: serde_json::json!({
                "id": inc.id,
                "action": action,
                "incident_kind": inc.kind,
                "diagnosis": inc.diagnosis,
                "reason": inc.reason,
                "opened_ms": inc.opened_ms,
                "resolved_ms": inc.resolved_ms,
            })
            .to_string(),
        };
        if action != "updated"
            && let Err(e) = self.shared.store.append_event(&event)
        {
            tracing::error!(error = %e, "recording an incident event failed");
        }
        let id = inc.id;
        book.incidents.insert(id, inc);
        id
    }

    /// Agent offline incidents: open after the grace (at once when revoked),
    /// resolved when the agent's stream is back.
    fn agents(&self, book: &mut Book, now_ms: i64) {
        let grace = crate::store::ms(self.shared.config.agent_offline_after);
        for a in self.shared.presence.agents() {
            let open = book
                .incidents
                .values()
                .find(|i| i.kind == Kind::AgentOffline && i.monitor == a.location && i.is_open())
                .cloned();
            let since = a
                .since_ms
                .unwrap_or(self.shared.started_ms.max(a.enrolled_ms));
            match open {
                None if a.revoked || (!a.connected && now_ms - since >= grace) => {
                    let (diagnosis, reason) = if a.revoked {
                        (
                            format!(
                                "{} was revoked: its stream is closed and it may not reconnect; its monitors show unknown for it",
                                a.location
                            ),
                            "revoked",
                        )
                    } else {
                        (
                            format!(
                                "{} has had no stream to the collector for {} s; its monitors show unknown for it, never down",
                                a.location,
                                (now_ms - since) / 1000
                            ),
                            "disconnected",
                        )
                    };
                    let inc = Incident::new(
                        &a.location,
                        Kind::AgentOffline,
                        if a.revoked { now_ms } else { since + grace },
                        since,
                        diagnosis,
                        Some(reason.into()),
                    );
                    self.save(book, inc, "opened", now_ms);
                }
                Some(mut inc) if a.revoked && inc.reason.as_deref() != Some("revoked") => {
                    inc.reason = Some("revoked".into());
                    inc.diagnosis = format!(
                        "{} was revoked: its stream is closed and it may not reconnect; its monitors show unknown for it",
                        a.location
                    );
                    self.save(book, inc, "updated", now_ms);
                }
                Some(mut inc) if a.connected && !a.revoked => {
                    inc.resolved_ms = Some(a.since_ms.unwrap_or(now_ms).max(inc.opened_ms));
                    self.save(book, inc, "resolved", now_ms);
                }
                _ => {}
            }
        }
    }

    /// Resolves incidents of monitors that no longer exist.
    fn forget_deleted(&self, book: &mut Book, now_ms: i64) {
        let gone: Vec<Incident> = book
            .incidents
            .values()
            .filter(|i| {
                i.is_open()
                    && i.kind != Kind::AgentOffline
                    && self.shared.monitors.get(&i.monitor).is_none()
            })
            .cloned()
            .collect();
        for mut inc in gone {
            inc.resolved_ms = Some(now_ms);
            inc.diagnosis
                .push_str("; resolved: the monitor was removed");
            book.status.remove(&inc.monitor);
            self.save(book, inc, "resolved", now_ms);
        }
    }

    /// Decides, for every incident not settled yet, whether to notify now.
    fn settle_all(&self, book: &mut Book, now_ms: i64) {
        let ids: Vec<u64> = book
            .incidents
            .values()
            .filter(|i| {
                !i.silent
                    && (i.notified_open_ms.is_none()
                        || (i.resolved_ms.is_some() && i.notified_resolve_ms.is_none())
                        || (i.change.is_some() && i.notified_update_ms.is_none()))
            })
            .map(|i| i.id)
            .collect();
        for id in ids {
            let inc = book.incidents[&id].clone();
            let monitor = self.shared.monitors.get(&inc.monitor);
            let mut next = inc.clone();
            let mut send = Vec::new();
            if next.notified_open_ms.is_none() {
                match self.hold(book, &next, monitor.as_ref(), now_ms) {
                    Hold::No => {
                        next.held = None;
                        next.notified_open_ms = Some(now_ms);
                        // The opening message shows the kind as it is now.
                        if next.change.is_some() {
                            next.notified_update_ms = Some(now_ms);
                        }
                        send.push(Phase::Opened);
                    }
                    Hold::For {
                        why,
                        maintenance,
                        parent,
                    } => {
                        next.held = Some(why);
                        next.maintenance = maintenance.or(next.maintenance);
                        next.suppressed_by = parent.or(next.suppressed_by);
                        // Over before anyone had to be told: it never will be.
                        next.silent = next.resolved_ms.is_some();
                    }
                }
            }
            // A change of kind while open, told once; one that the end
            // overtook is said by the resolution.
            if next.notified_open_ms.is_some()
                && next.change.is_some()
                && next.notified_update_ms.is_none()
            {
                next.notified_update_ms = Some(now_ms);
                if next.resolved_ms.is_none() {
                    send.push(Phase::Updated);
                }
            }
            if next.notified_open_ms.is_some()
                && next.resolved_ms.is_some()
                && next.notified_resolve_ms.is_none()
            {
                next.notified_resolve_ms = Some(now_ms);
                send.push(Phase::Resolved);
            }
            if next != inc {
                let action = if send.is_empty() { "held" } else { "notified" };
                self.save(book, next.clone(), action, now_ms);
            }
            for phase in send {
                self.shared.outbox.send(Outbound {
                    phase,
                    incident: next.clone(),
                    monitor: monitor.clone(),
                    skip: Vec::new(),
                });
            }
        }
    }

    /// Why `inc` may not be notified yet, if it may not.
    fn hold(&self, book: &Book, inc: &Incident, monitor: Option<&Monitor>, now_ms: i64) -> Hold {
        let Some(m) = monitor else {
            // Agent incidents (and a deleted monitor's last one) go out as they are.
            return Hold::No;
        };
        let delay = crate::store::ms(m.alert.notification_delay);
        if let Some(res) = inc.resolved_ms
            && res - inc.opened_ms < delay
        {
            return Hold::reason("healed within the notification delay".into());
        }
        if inc.is_open() && now_ms < inc.opened_ms + delay {
            return Hold::reason(format!(
                "notification delay: sent at {} if still down",
                crate::cli::fmt_ms(inc.opened_ms + delay)
            ));
        }
        // Open: silenced while a window covers it now; still down after the
        // window is over, it is sent then. Over: silenced when it began and
        // ended inside windows.
        let window = match inc.resolved_ms {
            None => self.shared.silencer.active(&m.name, &m.tags, now_ms),
            Some(res) => self
                .shared
                .silencer
                .active(&m.name, &m.tags, inc.opened_ms)
                .filter(|_| {
                    self.shared
                        .silencer
                        .active(&m.name, &m.tags, (res - 1).max(inc.opened_ms))
                        .is_some()
                }),
        };
        if let Some(w) = window {
            return Hold::For {
                why: format!("maintenance window {w}"),
                maintenance: Some(w),
                parent: None,
            };
        }
        if let Some(parent) = &m.depends_on {
            let at = inc.opened_ms;
            let parent_incident = book
                .incidents
                .values()
                .find(|p| {
                    p.monitor == *parent
                        && p.kind != Kind::AgentOffline
                        && p.since_ms <= inc.resolved_ms.unwrap_or(now_ms)
                        && p.resolved_ms.is_none_or(|r| r >= at)
                })
                .map(|p| p.id);
            if let Some(pid) = parent_incident {
                return Hold::For {
                    why: format!("{parent} (depends_on) is down: incident {pid}"),
                    maintenance: None,
                    parent: Some(pid),
                };
            }
            let parent_down = book
                .status
                .get(parent)
                .is_some_and(|(locs, _)| locs.iter().any(|l| l.state == LocState::Down));
            // The parent may simply not have been judged yet: give it the
            // time it needs to detect the same outage.
            let parent_grace = self.shared.monitors.get(parent).map_or(0, |p| {
                i64::from(p.spec.interval_ms) * i64::from(p.alert.consecutive_down) + 2_000
            });
            if inc.is_open() && (parent_down || now_ms < inc.opened_ms + parent_grace) {
                return Hold::reason(format!("waiting for {parent} (depends_on) to be judged"));
            }
        }
        Hold::No
    }

    /// Records a delivery report on its incident.
    pub fn delivered(&self, incident_id: u64, d: Delivery) {
        let now = (self.shared.clock)();
        let mut book = lock(&self.shared.book);
        let inc = match book.incidents.get(&incident_id) {
            Some(i) => Some(i.clone()),
            None => self
                .shared
                .store
                .incident(incident_id)
                .ok()
                .flatten()
                .and_then(|r| parse(&r).ok()),
        };
        let Some(mut inc) = inc else {
            return;
        };
        let failed = d.state != "delivered";
        inc.deliveries
            .retain(|x| !(x.channel == d.channel && x.phase == d.phase));
        inc.deliveries.push(d.clone());
        let action = if failed {
            "delivery_failed"
        } else {
            "delivered"
        };
        let _ = self.shared.store.append_event(&Event {
            ts_ms: now,
            kind: "notification".into(),
            subject: inc.monitor.clone(),
            body: serde_json::json!({ "incident": incident_id, "action": action, "delivery": d })
                .to_string(),
        });
        let keep = book.incidents.contains_key(&incident_id);
        self.save(&mut book, inc, "updated", now);
        if !keep {
            book.incidents.remove(&incident_id);
        }
    }

    /// Every monitor's current picture, by name.
    pub fn status(&self) -> Vec<MonitorStatus> {
        self.status_where(|_| true)
    }

    /// One monitor's current picture.
    pub fn status_of(&self, name: &str) -> Option<MonitorStatus> {
        self.status_where(|m| m.name == name).pop()
    }

    fn status_where(&self, pick: impl Fn(&Monitor) -> bool) -> Vec<MonitorStatus> {
        let now = (self.shared.clock)();
        let monitors = self.shared.monitors.snapshot();
        let book = lock(&self.shared.book);
        // The newest open incident per monitor, in one pass.
        let mut open: HashMap<&str, u64> = HashMap::new();
        for i in book.incidents.values().filter(|i| i.is_open()) {
            open.insert(i.monitor.as_str(), i.id);
        }
        let mut out = Vec::new();
        for m in monitors.iter().filter(|m| pick(m)) {
            let locations = book
                .status
                .get(&m.name)
                .map(|(l, _)| l.clone())
                .unwrap_or_default();
            let incident = open.get(m.name.as_str()).copied();
            let maintenance = self.shared.silencer.active(&m.name, &m.tags, now);
            let all_unknown = locations.iter().all(|l| l.state == LocState::Unknown);
            let state = if maintenance.is_some() {
                "maintenance"
            } else if incident.is_some() {
                "down"
            } else if all_unknown {
                "unknown"
            } else if locations
                .iter()
                .any(|l| matches!(l.state, LocState::Down | LocState::Degraded))
            {
                "degraded"
            } else {
                "up"
            };
            out.push(MonitorStatus {
                monitor: m.name.clone(),
                state: state.into(),
                locations,
                incident,
                maintenance,
            });
        }
        out
    }

    /// The open incidents held in memory (all of them), newest first.
    pub fn open_incidents(&self) -> Vec<Incident> {
        lock(&self.shared.book)
            .incidents
            .values()
            .rev()
            .filter(|i| i.is_open())
            .cloned()
            .collect()
    }
}

enum Hold {
    No,
    For {
        why: String,
        maintenance: Option<String>,
        parent: Option<u64>,
    },
}

impl Hold {
    fn reason(why: String) -> Hold {
        Hold::For {
            why,
            maintenance: None,
            parent: None,
        }
    }
}

/// What `w` says at `now_ms` once it has judged the rest of `series`,
/// leaving `w` where it is.
fn provisional(w: &Sweep, series: &Series, now_ms: i64) -> Outcome {
    if now_ms <= w.judged_to() {
        return w.outcome(now_ms);
    }
    let mut ahead = w.clone();
    ahead.advance(series, now_ms);
    ahead.outcome(now_ms)
}

/// Does the recorded incident cover some of the span's time?
fn overlaps(i: &Incident, s: &Span) -> bool {
    let (a0, a1) = (i.opened_ms, i.resolved_ms.unwrap_or(i64::MAX));
    let (b0, b1) = (s.open_ms, s.close_ms.unwrap_or(i64::MAX));
    // A span starting where the recorded one ended continues it (the sweep
    // restarted from a trimmed series); an instant span still counts.
    a0 <= b1 && b0 <= a1
}

/// The incident in a stored row.
pub fn parse(row: &IncidentRow) -> Result<Incident, StoreError> {
    let mut inc: Incident = serde_json::from_str(&row.body)
        .map_err(|e| StoreError::Corrupt(format!("incident {}: {e}", row.id)))?;
    inc.id = row.id;
    Ok(inc)
}
