//! Verdicts on a settled picture: at one instant of a sweep, whether an
//! incident opens, changes kind or closes, and how it is diagnosed.
//!
//! A location's newest result speaks for the time its check ran, no later.
//! So every verdict names the instant its change began (the onset: the
//! failing that makes the quorum, the outside starting to fail, the inside
//! answering again) and is taken only once every live location has spoken
//! for a time after it:
//! - a location whose newest check failed *fails* (whenever it ran: a
//!   failure is never outvoted by an older success);
//! - one whose newest check succeeded and ran after the onset *succeeds*;
//! - one whose newest success ran before the onset is *pending*: the
//!   verdict waits for it until the onset plus [`Rules::settle_ms`], after
//!   which it is *not seen* and the diagnosis says so.
//!
//! The kinds follow from the settled picture:
//! - **down** (or exposure): the quorum of locations is down;
//! - **edge**: every public location is down while the agents succeed in
//!   checks run after the outside began failing, and the outside is down
//!   again in checks run after the inside last recovered (so a recovery in
//!   progress, inside first, is never an edge incident);
//! - an edge incident that reaches the quorum becomes a down incident (one
//!   incident, its kind changed); a down incident that began as an edge
//!   block, or on the outside's results alone, returns to edge when the
//!   inside answers again; any other down incident closes then, and a
//!   standing outside block is an edge incident of its own;
//! - a down incident also closes when the locations still failing are down
//!   again after the others recovered: a standing condition below the
//!   quorum, shown with the recovery.

use super::{Kind, LocState, LocationView, Rules, Run, Span, Window};
use crate::incident::reason_name;

/// What a live location says about the time after an onset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Word {
    Fails,
    Succeeds,
    /// Its newest check ran before the onset; still waited for.
    Pending,
    /// Its newest check ran before the onset and the settle deadline passed.
    NotSeen,
}

/// Whether a verdict can be taken now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ready {
    No,
    /// Not yet: wait for more results, or until this settle deadline.
    Wait(Option<i64>),
    Yes,
}

/// One instant of a monitor: its locations and rules.
struct Picture<'a> {
    rules: &'a Rules,
    window: Option<&'a Window>,
    t: i64,
    /// Locations with any result, in name order.
    started: Vec<&'a Run>,
    /// Those with a current result (not stale, not refused by policy).
    live: Vec<&'a Run>,
}

impl<'a> Picture<'a> {
    fn failing(&self, r: &Run) -> bool {
        r.state == LocState::Down
            || r.last
                .is_some_and(|o| o.failing(self.rules.degraded_is_down))
    }

    fn word(&self, r: &Run, onset: i64) -> Word {
        if self.failing(r) {
            Word::Fails
        } else if r.last.is_some_and(|o| o.ts_ms >= onset) {
            Word::Succeeds
        } else if self.t < onset.saturating_add(self.rules.settle_ms) {
            Word::Pending
        } else {
            Word::NotSeen
        }
    }

    /// Whether every live location has spoken for the time after `onset`.
    /// An exposure needs no more than the one location that found the
    /// port open.
    fn settled(&self, onset: i64) -> Ready {
        if !self.rules.expect_closed
            && self
                .live
                .iter()
                .any(|r| self.word(r, onset) == Word::Pending)
        {
            Ready::Wait(Some(onset.saturating_add(self.rules.settle_ms)))
        } else {
            Ready::Yes
        }
    }

    fn down(&self) -> impl Iterator<Item = &&'a Run> {
        self.live.iter().filter(|r| r.state == LocState::Down)
    }

    /// The quorum of down locations (or the failure rate) holds. An open
    /// rate incident holds down to half its threshold.
    fn quorum(&self, open: bool) -> bool {
        match self.window {
            Some(w) if open => w.holds(),
            Some(w) => w.over(),
            None => {
                let n = self.started.len();
                n > 0 && self.down().count() >= self.rules.quorum(n)
            }
        }
    }

    /// The instant by which the quorum's failing had begun (the quorum-th
    /// earliest failing streak), and the earliest streak: when it began.
    fn quorum_onset(&self) -> (i64, i64) {
        let mut starts: Vec<i64> = self.down().map(|r| r.streak_start).collect();
        starts.sort_unstable();
        let rate = self.window.and_then(Window::first_failure);
        let since = match (starts.first().copied(), rate) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b).unwrap_or(self.t),
        };
        let onset = match rate {
            Some(r) => r,
            None => {
                let q = self.rules.quorum(self.started.len());
                starts
                    .get(q.saturating_sub(1))
                    .or(starts.last())
                    .copied()
                    .unwrap_or(self.t)
            }
        };
        (onset, since)
    }

    /// Every live location succeeds (a rate incident: the rate fell low
    /// enough and no location is down).
    fn clear(&self) -> bool {
        !self.live.is_empty()
            && match self.window {
                Some(w) => !w.holds() && self.down().next().is_none(),
                None => self.live.iter().all(|r| !self.failing(r)),
            }
    }

    /// Whether the picture is an outside-only block, settled; and since
    /// when the outside fails.
    fn edge(&self) -> (Ready, i64) {
        let r = self.rules;
        let (publics, agents): (Vec<&Run>, Vec<&Run>) =
            self.live.iter().copied().partition(|x| x.public);
        if !r.edge
            || r.expect_closed
            || publics.is_empty()
            || agents.is_empty()
            || publics.iter().any(|p| p.state != LocState::Down)
            || agents.iter().any(|a| self.failing(a))
        {
            return (Ready::No, self.t);
        }
        let since = publics
            .iter()
            .map(|p| p.streak_start)
            .min()
            .unwrap_or(self.t);
        // The agents succeed in checks run after the whole outside failed.
        let outside = publics
            .iter()
            .map(|p| p.streak_start)
            .max()
            .unwrap_or(self.t);
        let words: Vec<Word> = agents.iter().map(|a| self.word(a, outside)).collect();
        if words.contains(&Word::Pending) {
            return (
                Ready::Wait(Some(outside.saturating_add(r.settle_ms))),
                since,
            );
        }
        if !words.contains(&Word::Succeeds) {
            return (Ready::No, since);
        }
        // The outside is down again after the inside last recovered.
        let inside = agents.iter().map(|a| a.up_start).max().unwrap_or(self.t);
        if publics.iter().all(|p| self.down_after(p, inside)) {
            (Ready::Yes, since)
        } else {
            (Ready::Wait(None), since)
        }
    }

    /// `consecutive_down` failures in a row, all of checks run after `t`.
    fn down_after(&self, r: &Run, t: i64) -> bool {
        r.state == LocState::Down
            && r.fail_times.len() >= self.rules.consecutive_down as usize
            && r.fail_times.front().is_some_and(|f| *f > t)
    }

    /// The locations still failing are down again after the latest
    /// recovery among the others: a standing condition, not a recovery
    /// in progress.
    /// Only a recovery after the failing began (`since`) counts: a quorum
    /// broken by a location going silent is not a recovery.
    fn remainder_stands(&self, since: i64) -> Ready {
        let recovered = self
            .live
            .iter()
            .filter(|r| !self.failing(r))
            .map(|r| r.up_start)
            .max();
        let Some(recovered) = recovered.filter(|t| *t > since) else {
            return Ready::No;
        };
        if self
            .live
            .iter()
            .filter(|r| self.failing(r))
            .all(|r| self.down_after(r, recovered))
        {
            Ready::Yes
        } else {
            Ready::Wait(None)
        }
    }

    /// The locations as an incident shows them, judged against `onset`: a
    /// location whose newest check failed shows down.
    fn views(&self, onset: i64) -> (Vec<LocationView>, Vec<String>) {
        let mut not_seen = Vec::new();
        let views = self
            .started
            .iter()
            .map(|r| {
                let mut v = r.view(self.t, self.rules);
                if v.state != LocState::Unknown {
                    match self.word(r, onset) {
                        Word::Fails if v.state != LocState::Down => {
                            v.state = LocState::Down;
                            v.up_since_ms = None;
                            v.down_since_ms = Some(r.streak_start);
                            v.reason = r.last_failure.map(|o| reason_name(o.reason));
                        }
                        Word::NotSeen | Word::Pending => not_seen.push(v.location.clone()),
                        _ => {}
                    }
                }
                v
            })
            .collect();
        (views, not_seen)
    }

    /// The newest success of a failing location before its failing began.
    fn last_ok(&self) -> Option<i64> {
        self.live
            .iter()
            .filter(|r| self.failing(r))
            .filter_map(|r| r.ok_before_streak)
            .max()
    }

    fn outside_only(&self) -> bool {
        !self
            .started
            .iter()
            .any(|r| !r.public && r.at(self.t, self.rules) != LocState::Unknown)
    }

    fn span(&self, kind: Kind, since: i64) -> Span {
        let mut s = Span {
            kind,
            open_ms: self.t,
            since_ms: since,
            close_ms: None,
            diagnosis: String::new(),
            reason: None,
            locations: Vec::new(),
            first_kind: kind,
            change: None,
            last_ok_ms: self.last_ok(),
            outside_only: self.outside_only(),
        };
        self.describe(&mut s);
        s
    }

    /// At closing: the diagnosis stays what the trouble was; the locations
    /// show the recovery (who succeeds now and since when, who still fails).
    fn show_recovery(&self, s: &mut Span) {
        if !self.live.is_empty() {
            s.locations = self.views(s.since_ms).0;
        }
    }

    /// Puts the picture at this instant on `s` (when nothing is known any
    /// more, the last picture stays).
    fn describe(&self, s: &mut Span) {
        if self.live.is_empty() {
            return;
        }
        let (views, not_seen) = self.views(s.since_ms);
        let (diagnosis, reason) = diagnose_picture(&views, &not_seen, self.rules.expect_closed);
        s.diagnosis = diagnosis;
        s.reason = reason
            .or_else(|| {
                self.window
                    .and_then(Window::dominant_reason)
                    .map(reason_name)
            })
            .or(s.reason.take());
        s.locations = views;
        if s.last_ok_ms.is_none() {
            s.last_ok_ms = self.last_ok();
        }
    }
}

/// Whether a verdict is waiting for results, and until when at the latest.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Waiting {
    pub waiting: bool,
    pub until: Option<i64>,
}

/// Judges the monitor at `t`: opens, changes or closes the current span.
/// Returns whether a verdict waits for results (and its settle deadline).
pub(super) fn judge(
    runs: &[Run],
    rules: &Rules,
    window: Option<&Window>,
    t: i64,
    open: &mut Option<Span>,
    spans: &mut Vec<Span>,
) -> Waiting {
    let started: Vec<&Run> = runs.iter().filter(|r| r.last.is_some()).collect();
    let live = started
        .iter()
        .copied()
        .filter(|r| r.at(t, rules) != LocState::Unknown)
        .collect();
    let p = Picture {
        rules,
        window,
        t,
        started,
        live,
    };
    let down_kind = if rules.expect_closed {
        Kind::Exposure
    } else {
        Kind::Down
    };
    let mut wake = Waiting::default();
    let mut wait = |ready: Ready| {
        if let Ready::Wait(until) = ready {
            wake.waiting = true;
            if let Some(w) = until.filter(|w| *w > t) {
                wake.until = Some(wake.until.map_or(w, |x| x.min(w)));
            }
        }
    };
    match open.take() {
        None => {
            if p.quorum(false) {
                let (onset, since) = p.quorum_onset();
                match p.settled(onset) {
                    Ready::Yes => *open = Some(p.span(down_kind, since)),
                    other => wait(other),
                }
            } else {
                match p.edge() {
                    (Ready::Yes, since) => *open = Some(p.span(Kind::Edge, since)),
                    (other, _) => wait(other),
                }
            }
        }
        Some(mut s) if p.clear() => {
            p.show_recovery(&mut s);
            s.close_ms = Some(t);
            spans.push(s);
        }
        Some(mut s) if s.kind == Kind::Edge => {
            let ready = if p.quorum(false) {
                let (onset, since) = p.quorum_onset();
                let ready = p.settled(onset);
                if ready == Ready::Yes {
                    s.kind = down_kind;
                    s.since_ms = s.since_ms.min(since);
                }
                ready
            } else {
                Ready::No
            };
            p.describe(&mut s);
            if ready == Ready::Yes {
                s.change = Some((
                    t,
                    format!("the service now fails from inside too: {}", s.diagnosis),
                ));
            }
            wait(ready);
            *open = Some(s);
        }
        Some(mut s) if p.quorum(true) => {
            p.describe(&mut s);
            *open = Some(s);
        }
        Some(mut s) => {
            // The rule that opened it no longer holds, yet not everything
            // succeeds: a recovery in progress, or a condition of its own.
            match p.edge() {
                (Ready::Yes, _) if s.first_kind == Kind::Edge || s.outside_only => {
                    s.kind = Kind::Edge;
                    p.describe(&mut s);
                    s.change = Some((
                        t,
                        format!(
                            "the service answers inside again; outside still fails: {}",
                            s.diagnosis
                        ),
                    ));
                    *open = Some(s);
                }
                (Ready::Yes, edge_since) => {
                    p.show_recovery(&mut s);
                    s.close_ms = Some(t);
                    spans.push(s);
                    *open = Some(p.span(Kind::Edge, edge_since));
                }
                (Ready::Wait(w), _) => {
                    p.show_recovery(&mut s);
                    wait(Ready::Wait(w));
                    *open = Some(s);
                }
                (Ready::No, _) => {
                    if p.window.is_none() && p.remainder_stands(s.since_ms) == Ready::Yes {
                        p.show_recovery(&mut s);
                        s.close_ms = Some(t);
                        spans.push(s);
                    } else {
                        // A recovery in progress: the diagnosis stays what
                        // the trouble was.
                        p.show_recovery(&mut s);
                        *open = Some(s);
                    }
                }
            }
        }
    }
    wake
}

/// The diagnosis of an incident from where it fails and where it does not,
/// and the dominant reason among the failing locations.
pub fn diagnose(locations: &[LocationView], expect_closed: bool) -> (String, Option<String>) {
    diagnose_picture(locations, &[], expect_closed)
}

/// [`diagnose`], where `not_seen` are live locations with no check since
/// the failing began: they count neither as up nor as down.
fn diagnose_picture(
    locations: &[LocationView],
    not_seen: &[String],
    expect_closed: bool,
) -> (String, Option<String>) {
    let seen = |l: &LocationView| !not_seen.contains(&l.location);
    let names = |f: &dyn Fn(&LocationView) -> bool| -> Vec<&str> {
        locations
            .iter()
            .filter(|l| seen(l) && f(l))
            .map(|l| l.location.as_str())
            .collect()
    };
    let down = names(&|l| l.state == LocState::Down);
    let up = names(&|l| matches!(l.state, LocState::Up | LocState::Degraded));
    let unknown = names(&|l| l.state == LocState::Unknown);
    let public = |n: &&str| n.starts_with("public:");
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for l in locations.iter().filter(|l| l.state == LocState::Down) {
        if let Some(r) = l.reason.as_deref() {
            match counts.iter_mut().find(|c| c.0 == r) {
                Some(c) => c.1 += 1,
                None => counts.push((r, 1)),
            }
        }
    }
    // Most frequent; ties go to the first seen (locations are sorted).
    let reason = counts
        .iter()
        .fold(None::<(&str, usize)>, |best, c| match best {
            Some(b) if b.1 >= c.1 => Some(b),
            _ => Some(*c),
        })
        .map(|c| c.0.to_owned());
    let mut text = if expect_closed {
        format!(
            "exposed: the port is open but must be closed, seen from {}",
            down.join(", ")
        )
    } else if down.is_empty() {
        "failing checks across locations".to_owned()
    } else if up.is_empty() {
        if down.len() > 1 {
            format!("service down: every location fails ({})", down.join(", "))
        } else {
            format!("service down, seen from {}", down[0])
        }
    } else if down.iter().all(public) && !up.iter().any(public) {
        format!(
            "reachable inside only: edge, firewall or routing (down from {}, up from {})",
            down.join(", "),
            up.join(", ")
        )
    } else if !down.iter().any(public) && up.iter().all(public) {
        format!(
            "reachable from outside only: the inside network or the agent's host (down from {}, up from {})",
            down.join(", "),
            up.join(", ")
        )
    } else if down.iter().all(public) {
        format!(
            "regional path: down from {}, up from {}",
            down.join(", "),
            up.join(", ")
        )
    } else {
        format!(
            "partial: down from {}, up from {}",
            down.join(", "),
            up.join(", ")
        )
    };
    if !not_seen.is_empty() {
        text.push_str(&format!(
            "; no check since the failing began from {}",
            not_seen.join(", ")
        ));
    }
    if !unknown.is_empty() {
        text.push_str(&format!("; no current results from {}", unknown.join(", ")));
    }
    (text, reason)
}
