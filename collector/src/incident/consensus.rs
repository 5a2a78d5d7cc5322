//! The pure half of incident detection: from the recent results of one
//! monitor at each location, in the order the checks RAN, where incidents
//! open and close and what they are. No clock, no I/O: the engine passes
//! `now_ms` and gets [`Outcome`] back, so every rule is tested on fixed times.
//!
//! [`sweep`] replays the results of every location merged by check time and
//! judges the monitor after each instant. Results that arrive late (an
//! agent's buffer replayed after a cut) are inserted in their place in the
//! [`Series`] and the next sweep puts their incidents where they happened.
//! The engine keeps each monitor's [`Sweep`] and [`Sweep::advance`]s it over
//! results newer than what it judged last, so a result costs one judgement,
//! not a replay of the monitor's history; a late result starts it over.
//!
//! A location's result speaks only for the time its check ran. So a verdict
//! (open, kind, diagnosis, a change of kind, close) is taken on a *settled*
//! picture: every live location has reported a check that ran after the
//! change began, or a settle deadline has passed (`verdict`). An "up" from
//! before the failing began never outvotes a fresh failure.

use std::collections::{BTreeMap, VecDeque};

use portwatch_proto::v1 as pb;
use serde::{Deserialize, Serialize};

use super::{Kind, reason_name};
use crate::monitors::Monitor;

mod verdict;

pub use verdict::diagnose;

/// What incident detection keeps of one result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Obs {
    /// When the check was scheduled (Unix ms).
    pub ts_ms: i64,
    /// `pb::Status` as sent.
    pub status: i32,
    /// `pb::Reason` as sent.
    pub reason: i32,
}

impl Obs {
    pub fn of(r: &pb::CheckResult) -> Obs {
        Obs {
            ts_ms: r.scheduled_at_unix_ms,
            status: r.status,
            reason: r.reason,
        }
    }

    fn failing(&self, degraded_is_down: bool) -> bool {
        self.status == pb::Status::Down as i32 || (degraded_is_down && self.degraded())
    }

    fn degraded(&self) -> bool {
        self.status == pb::Status::Degraded as i32
    }

    /// The location's policy refused the target (a private address from a
    /// public location): says nothing about the service, so the location
    /// counts as unknown rather than down.
    fn blocked(&self) -> bool {
        self.reason == pb::Reason::BlockedAddress as i32
    }
}

/// The rules one monitor is judged by (from its alert policy).
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    pub consecutive_down: u32,
    pub consecutive_up: u32,
    pub locations_down: Option<u32>,
    /// (percent, window ms): open on this share of failed checks instead of
    /// a quorum of down locations.
    pub failure_rate: Option<(u8, i64)>,
    pub edge: bool,
    pub expect_closed: bool,
    /// A degraded check counts as a failure.
    pub degraded_is_down: bool,
    /// A location whose newest result is this old is unknown.
    pub stale_ms: i64,
    /// How long a verdict waits for a live location that has not reported a
    /// check run after the change began: one interval, the check's timeout
    /// and the link's batching. Past it the location is "not seen".
    pub settle_ms: i64,
}

/// Results younger than two intervals plus this are current: covers the
/// agent's send batching and a reconnect.
pub const STALE_SLACK_MS: i64 = 15_000;

/// The settle deadline beyond an interval plus a timeout: the agent's send
/// batching, the stream and the engine's step.
pub const SETTLE_SLACK_MS: i64 = 2_000;

/// A check's timeout when the monitor sets none (the probe engine's default).
const DEFAULT_TIMEOUT_MS: i64 = 3_000;

/// The rate rule needs at least this many checks in its window.
pub const RATE_MIN_CHECKS: usize = 3;

impl Rules {
    pub fn for_monitor(m: &Monitor) -> Rules {
        let interval = i64::from(m.spec.interval_ms);
        Rules {
            consecutive_down: m.alert.consecutive_down.max(1),
            consecutive_up: m.alert.consecutive_up.max(1),
            locations_down: m.alert.locations_down,
            failure_rate: m
                .alert
                .failure_rate
                .map(|(pct, w)| (pct, crate::store::ms(w))),
            edge: m.alert.edge,
            expect_closed: m.spec.options.as_ref().is_some_and(|o| o.expect_closed),
            degraded_is_down: m.alert.degraded_is_down,
            stale_ms: 2 * interval + STALE_SLACK_MS,
            settle_ms: interval
                + m.spec
                    .options
                    .as_ref()
                    .map(|o| i64::from(o.timeout_ms))
                    .filter(|t| *t > 0)
                    .unwrap_or(DEFAULT_TIMEOUT_MS)
                + SETTLE_SLACK_MS,
        }
    }

    /// Down locations that open an incident out of `n` locations: 1 of 1,
    /// 2 of 2, 2 of 3, 3 of 4, then two thirds rounded up (4 of 5, 4 of 6 ...),
    /// or `locations_down` (at most `n`, so it can still open when all fail).
    /// An expect-closed monitor opens on one location finding the port open.
    pub fn quorum(&self, n: usize) -> usize {
        let n = n.max(1);
        let want = match self.locations_down {
            Some(k) => k as usize,
            None if self.expect_closed => 1,
            None => (2 * n).div_ceil(3),
        };
        want.clamp(1, n)
    }
}

/// The recent results of one monitor, per location, in check-time order.
#[derive(Debug, Default, Clone)]
pub struct Series {
    locs: BTreeMap<String, VecDeque<Obs>>,
    /// The earliest check time inserted since [`Series::take_inserted_from`].
    inserted_from: Option<i64>,
}

impl Series {
    /// Inserts `obs` in its place by check time; one with the same time at
    /// the same location (a resend) replaces it. Returns false for a resend.
    pub fn insert(&mut self, location: &str, obs: Obs) -> bool {
        self.inserted_from = Some(self.inserted_from.map_or(obs.ts_ms, |t| t.min(obs.ts_ms)));
        let q = match self.locs.get_mut(location) {
            Some(q) => q,
            None => self.locs.entry(location.to_owned()).or_default(),
        };
        // The common case: newer than everything at this location.
        if q.back().is_none_or(|b| b.ts_ms < obs.ts_ms) {
            q.push_back(obs);
            return true;
        }
        match q.binary_search_by_key(&obs.ts_ms, |o| o.ts_ms) {
            Ok(i) => {
                q[i] = obs;
                false
            }
            Err(i) => {
                q.insert(i, obs);
                true
            }
        }
    }

    /// Drops results older than `from_ms` and keeps at most `max` per
    /// location (the newest); forgets locations left empty.
    pub fn trim(&mut self, from_ms: i64, max: usize) {
        for q in self.locs.values_mut() {
            while q.front().is_some_and(|o| o.ts_ms < from_ms) || q.len() > max {
                q.pop_front();
            }
        }
        self.locs.retain(|_, q| !q.is_empty());
    }

    pub fn is_empty(&self) -> bool {
        self.locs.is_empty()
    }

    /// The earliest check time inserted (or resent) since the last call: a
    /// [`Sweep`] that judged past it must start over.
    pub fn take_inserted_from(&mut self) -> Option<i64> {
        self.inserted_from.take()
    }

    pub fn len(&self) -> usize {
        self.locs.values().map(VecDeque::len).sum()
    }

    /// Up to when the results are in, as far as one can tell: the oldest of
    /// the newest results of the locations that reported within `recent_ms`
    /// of `now_ms` (each location sends in check-time order, so what comes
    /// next from them is newer). A location silent for longer is not waited
    /// for. Judging past this instant is provisional.
    pub fn settled_to(&self, now_ms: i64, recent_ms: i64) -> i64 {
        self.latest()
            .map(|(_, t)| t)
            .filter(|t| *t >= now_ms.saturating_sub(recent_ms))
            .min()
            .unwrap_or(now_ms)
            .min(now_ms)
    }

    /// The newest check time at each location.
    pub fn latest(&self) -> impl Iterator<Item = (&str, i64)> {
        self.locs
            .iter()
            .filter_map(|(l, q)| q.back().map(|o| (l.as_str(), o.ts_ms)))
    }
}

/// What a location's results say at one instant.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum LocState {
    /// No result yet, not enough failures yet to call it down after the
    /// first result, or no result for longer than the monitor's staleness.
    Unknown,
    Up,
    Degraded,
    Down,
}

impl LocState {
    pub fn as_str(self) -> &'static str {
        match self {
            LocState::Unknown => "unknown",
            LocState::Up => "up",
            LocState::Degraded => "degraded",
            LocState::Down => "down",
        }
    }
}

/// One location as an incident or the status shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LocationView {
    pub location: String,
    pub state: LocState,
    /// The reason of the newest failure while down (or of the newest result).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the current failing streak began, while down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub down_since_ms: Option<i64>,
    /// When the current run of successes began, while up or degraded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub up_since_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check_ms: Option<i64>,
}

/// One incident as a sweep sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    pub kind: Kind,
    /// The check time at which the rule was met on a settled picture.
    pub open_ms: i64,
    /// When the failing began: the earliest failing streak among the
    /// locations that count.
    pub since_ms: i64,
    /// The check time at which every location succeeded again (or the
    /// locations still failing were found to be a standing condition of
    /// their own).
    pub close_ms: Option<i64>,
    pub diagnosis: String,
    /// The dominant failure reason among the failing locations.
    pub reason: Option<String>,
    /// The locations at the last judgement while open (at closing: who
    /// succeeds now, since when, and who still fails).
    pub locations: Vec<LocationView>,
    /// The kind it opened as: an outside block that became a full outage
    /// opened as `Edge` and is `Down` now.
    pub first_kind: Kind,
    /// The latest change of kind while open: when, and what changed.
    pub change: Option<(i64, String)>,
    /// The newest successful check of a failing location before its
    /// failing began: the last time the service was seen healthy.
    pub last_ok_ms: Option<i64>,
    /// Opened on public results alone: no agent location had a current
    /// result then (e.g. it had not reported yet).
    pub outside_only: bool,
}

/// What a sweep found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Incidents in order of opening; only the last may be open.
    pub spans: Vec<Span>,
    /// Every location at `now_ms`.
    pub now: Vec<LocationView>,
    /// The next instant the picture changes without a new result (a
    /// location turns unknown, a verdict's settle deadline passes): the
    /// engine sweeps again then.
    pub next_stale_ms: Option<i64>,
    /// A verdict is waiting for locations to report: what is not decided
    /// yet must not undo what was recorded.
    pub waiting: bool,
}

/// One location during a sweep.
#[derive(Debug, Clone)]
struct Run {
    name: std::sync::Arc<str>,
    public: bool,
    /// Unknown until the first success or `consecutive_down` failures.
    state: LocState,
    fails: u32,
    oks: u32,
    /// When the current failing streak began.
    streak_start: i64,
    /// When the current run of successes began.
    up_start: i64,
    /// The check times of the newest failures of the current streak (at
    /// most `consecutive_down`): whether a location is down *again* after
    /// some instant.
    fail_times: VecDeque<i64>,
    /// The newest success before the current failing streak.
    ok_before_streak: Option<i64>,
    last_ok: Option<i64>,
    last: Option<Obs>,
    last_failure: Option<Obs>,
}

impl Run {
    fn new(name: &str) -> Run {
        Run {
            name: name.into(),
            public: name.starts_with("public:"),
            state: LocState::Unknown,
            fails: 0,
            oks: 0,
            streak_start: 0,
            up_start: 0,
            fail_times: VecDeque::new(),
            ok_before_streak: None,
            last_ok: None,
            last: None,
            last_failure: None,
        }
    }

    fn feed(&mut self, o: Obs, r: &Rules) {
        if o.blocked() {
            self.last = Some(o);
            return;
        }
        if o.failing(r.degraded_is_down) {
            if self.fails == 0 {
                self.streak_start = o.ts_ms;
                self.ok_before_streak = self.last_ok;
                self.fail_times.clear();
            }
            self.fails += 1;
            self.oks = 0;
            self.fail_times.push_back(o.ts_ms);
            if self.fail_times.len() > r.consecutive_down as usize {
                self.fail_times.pop_front();
            }
            self.last_failure = Some(o);
            if self.state != LocState::Down && self.fails >= r.consecutive_down {
                self.state = LocState::Down;
            }
        } else {
            if self.oks == 0 {
                self.up_start = o.ts_ms;
            }
            self.oks += 1;
            self.fails = 0;
            self.last_ok = Some(o.ts_ms);
            if self.state != LocState::Down || self.oks >= r.consecutive_up {
                self.state = LocState::Up;
            }
        }
        self.last = Some(o);
    }

    /// The state at `t`, counting staleness.
    fn at(&self, t: i64, r: &Rules) -> LocState {
        match self.last {
            None => LocState::Unknown,
            Some(l) if t >= l.ts_ms.saturating_add(r.stale_ms) || l.blocked() => LocState::Unknown,
            Some(l) => match self.state {
                LocState::Up if l.degraded() => LocState::Degraded,
                s => s,
            },
        }
    }

    fn view(&self, t: i64, r: &Rules) -> LocationView {
        let state = self.at(t, r);
        let reason = match state {
            LocState::Down => self.last_failure.map(|o| reason_name(o.reason)),
            _ => self
                .last
                .filter(|o| o.reason != pb::Reason::Ok as i32)
                .map(|o| reason_name(o.reason)),
        };
        LocationView {
            location: self.name.to_string(),
            state,
            reason,
            down_since_ms: (state == LocState::Down).then_some(self.streak_start),
            up_since_ms: matches!(state, LocState::Up | LocState::Degraded)
                .then_some(self.up_start),
            last_check_ms: self.last.map(|o| o.ts_ms),
        }
    }
}

/// The sliding window of the rate rule.
#[derive(Debug, Clone)]
struct Window {
    degraded_is_down: bool,
    ms: i64,
    pct: u8,
    /// (check time, failed, reason) of every check in the window.
    checks: VecDeque<(i64, bool, i32)>,
    failed: usize,
}

impl Window {
    fn push(&mut self, o: &Obs) {
        let failed = o.failing(self.degraded_is_down);
        self.checks.push_back((o.ts_ms, failed, o.reason));
        self.failed += usize::from(failed);
    }

    /// Forgets checks that left the window ending at `t` (it is `(t-ms, t]`).
    fn advance(&mut self, t: i64) {
        while let Some(&(ts, failed, _)) = self.checks.front() {
            if ts > t - self.ms {
                break;
            }
            self.checks.pop_front();
            self.failed -= usize::from(failed);
        }
    }

    /// The share of failed checks reaches the threshold: opens.
    fn over(&self) -> bool {
        self.share_at_least(u32::from(self.pct) * 2)
    }

    /// An open rate incident holds until the share falls below half the
    /// threshold: a steady failure rate near the threshold does not flap.
    fn holds(&self) -> bool {
        self.share_at_least(u32::from(self.pct))
    }

    /// `failed / checks >= half_pct / 200`.
    fn share_at_least(&self, half_pct: u32) -> bool {
        self.checks.len() >= RATE_MIN_CHECKS
            && self.failed * 200 >= half_pct as usize * self.checks.len()
    }

    fn first_failure(&self) -> Option<i64> {
        self.checks.iter().find(|c| c.1).map(|c| c.0)
    }

    /// The most frequent reason among the failed checks in the window.
    fn dominant_reason(&self) -> Option<i32> {
        let mut counts: Vec<(i32, usize)> = Vec::new();
        for c in self.checks.iter().filter(|c| c.1) {
            match counts.iter_mut().find(|x| x.0 == c.2) {
                Some(x) => x.1 += 1,
                None => counts.push((c.2, 1)),
            }
        }
        // Ties go to the reason seen first.
        counts
            .iter()
            .fold(None::<(i32, usize)>, |best, c| match best {
                Some(b) if b.1 >= c.1 => Some(b),
                _ => Some(*c),
            })
            .map(|c| c.0)
    }
}

/// Judges `series` under `rules` from its oldest result to `now_ms`.
pub fn sweep(series: &Series, rules: &Rules, now_ms: i64) -> Outcome {
    let mut s = Sweep::start(series, rules);
    s.advance(series, now_ms);
    s.outcome(now_ms)
}

/// A judgement of one monitor that goes on: every result and staleness up
/// to [`Sweep::judged_to`] is judged, and what it found is kept, so newer
/// results are judged without replaying the ones before.
#[derive(Debug, Clone)]
pub struct Sweep {
    rules: Rules,
    runs: Vec<Run>,
    window: Option<Window>,
    /// Closed incidents, in order of opening.
    closed: Vec<Span>,
    open: Option<Span>,
    /// A verdict waits for locations to report (until a settle deadline).
    wake: verdict::Waiting,
    /// Every instant up to this one is judged.
    upto: i64,
}

impl Sweep {
    /// A sweep of `series` that has judged nothing yet.
    pub fn start(series: &Series, rules: &Rules) -> Sweep {
        Sweep {
            rules: rules.clone(),
            runs: series.locs.keys().map(|name| Run::new(name)).collect(),
            window: rules.failure_rate.map(|(pct, ms)| Window {
                degraded_is_down: rules.degraded_is_down,
                ms,
                pct,
                checks: VecDeque::new(),
                failed: 0,
            }),
            closed: Vec::new(),
            open: None,
            wake: verdict::Waiting::default(),
            upto: i64::MIN,
        }
    }

    pub fn judged_to(&self) -> i64 {
        self.upto
    }

    /// Whether advancing this sweep over `series` judges it as a fresh sweep
    /// would: the same rules, the same locations, and nothing inserted at or
    /// before what is judged (`inserted_from`, from
    /// [`Series::take_inserted_from`]), and a clock that did not go back.
    pub fn can_go_on(
        &self,
        series: &Series,
        rules: &Rules,
        inserted_from: Option<i64>,
        now_ms: i64,
    ) -> bool {
        now_ms >= self.upto
            && self.rules == *rules
            && inserted_from.is_none_or(|t| t > self.upto)
            && self.runs.len() == series.locs.len()
            && self
                .runs
                .iter()
                .zip(series.locs.keys())
                .all(|(r, n)| *r.name == **n)
    }

    /// Judges the results of `series`, the instants its locations turn
    /// stale and the instants waiting verdicts settle, after what is judged
    /// and up to `now_ms`.
    pub fn advance(&mut self, series: &Series, now_ms: i64) {
        let lo = self.upto;
        if now_ms <= lo {
            return;
        }
        let stale_ms = self.rules.stale_ms;
        // Every result, and every instant a location turns stale, by time.
        // A stale instant sorts before a result at the same time (`false` first).
        let mut events: Vec<(i64, bool, usize, Obs)> = Vec::new();
        for (i, q) in series.locs.values().enumerate() {
            // Results judged already whose staleness is still ahead, then new ones.
            let from = q.partition_point(|o| o.ts_ms.saturating_add(stale_ms) <= lo);
            for j in from..q.len() {
                let o = q[j];
                if o.ts_ms > now_ms {
                    break;
                }
                if o.ts_ms > lo {
                    events.push((o.ts_ms, true, i, o));
                }
                let stale = o.ts_ms.saturating_add(stale_ms);
                let next = q.get(j + 1).map_or(i64::MAX, |n| n.ts_ms);
                if stale > lo && stale <= next && stale <= now_ms {
                    events.push((stale, false, i, o));
                }
            }
        }
        events.sort_unstable_by_key(|e| (e.0, e.1, e.2));
        let mut k = 0;
        loop {
            let next_event = events.get(k).map(|e| e.0);
            // A settle deadline that passes before the next result is an
            // instant of its own: the verdict waiting on it is taken then.
            let t = match (
                self.wake.until.filter(|w| *w > lo && *w <= now_ms),
                next_event,
            ) {
                (Some(w), Some(e)) => w.min(e),
                (Some(w), None) => w,
                (None, Some(e)) => e,
                (None, None) => break,
            };
            while k < events.len() && events[k].0 == t {
                let (_, is_result, i, o) = events[k];
                if is_result {
                    self.runs[i].feed(o, &self.rules);
                    if let Some(w) = self.window.as_mut().filter(|_| !o.blocked()) {
                        w.push(&o);
                    }
                }
                k += 1;
            }
            if let Some(w) = self.window.as_mut() {
                w.advance(t);
            }
            self.wake = verdict::judge(
                &self.runs,
                &self.rules,
                self.window.as_ref(),
                t,
                &mut self.open,
                &mut self.closed,
            );
        }
        self.upto = now_ms;
    }

    /// Forgets incidents that closed before `from_ms`.
    pub fn forget_closed_before(&mut self, from_ms: i64) {
        self.closed
            .retain(|s| s.close_ms.is_none_or(|c| c >= from_ms));
    }

    /// What is judged, with every location at `now_ms`.
    pub fn outcome(&self, now_ms: i64) -> Outcome {
        let rules = &self.rules;
        let next_stale_ms = self
            .runs
            .iter()
            .filter_map(|r| r.last.map(|l| l.ts_ms.saturating_add(rules.stale_ms)))
            .chain(self.wake.until)
            .filter(|s| *s > now_ms)
            .min();
        let mut spans = self.closed.clone();
        spans.extend(self.open.clone());
        Outcome {
            spans,
            now: self.runs.iter().map(|r| r.view(now_ms, rules)).collect(),
            next_stale_ms,
            waiting: self.wake.waiting,
        }
    }
}
