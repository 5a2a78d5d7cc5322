//! Consensus rules as tables on fixed times, and the engine over a real store.

use std::sync::{Arc, Mutex};

use portwatch_proto::v1 as pb;

use super::consensus::{LocState, Obs, Rules, Series, Sweep, diagnose, sweep};
use super::engine::{
    AgentPresence, Clock, EngineConfig, IncidentEngine, NoAgents, NoMaintenance, Outbound, Outbox,
    Presence, Silencer,
};
use super::{Kind, Phase};
use crate::monitors::registry::MonitorRegistry;
use crate::monitors::{Located, Monitor, Origin, Parents, RawMonitor, validate_all};
use crate::store::{IncidentQuery, RedbStore, Sample, Store, StoreConfig};

mod model;

const S: i64 = 1000;
/// A fixed start: 2026-11-28T10:00:00Z.
const T0: i64 = 1_795_860_000_000;

fn rules(cd: u32, cu: u32) -> Rules {
    Rules {
        consecutive_down: cd,
        consecutive_up: cu,
        locations_down: None,
        failure_rate: None,
        edge: true,
        expect_closed: false,
        degraded_is_down: false,
        stale_ms: 2 * 10 * S + 15 * S,
        settle_ms: 10 * S + 3 * S + 2 * S,
    }
}

fn obs(t: i64, status: pb::Status, reason: pb::Reason) -> Obs {
    Obs {
        ts_ms: T0 + t * S,
        status: status as i32,
        reason: reason as i32,
    }
}

/// A location's checks every 10 s from `start_s`: `U` up, `D` down
/// (refused), `T` down (timeout), `S` degraded (slow), `.` no result.
fn feed(series: &mut Series, location: &str, start_s: i64, pattern: &str) {
    for (i, c) in pattern.chars().enumerate() {
        let t = start_s + 10 * i as i64;
        let o = match c {
            'U' => obs(t, pb::Status::Up, pb::Reason::Ok),
            'D' => obs(t, pb::Status::Down, pb::Reason::Refused),
            'T' => obs(t, pb::Status::Down, pb::Reason::Timeout),
            'S' => obs(t, pb::Status::Degraded, pb::Reason::Slow),
            'B' => obs(t, pb::Status::Down, pb::Reason::BlockedAddress),
            '.' => continue,
            other => panic!("bad pattern char {other}"),
        };
        series.insert(location, o);
    }
}

/// (kind, open s, close s) of every span, times relative to T0.
fn spans(series: &Series, r: &Rules, now_s: i64) -> Vec<(Kind, i64, Option<i64>)> {
    sweep(series, r, T0 + now_s * S)
        .spans
        .iter()
        .map(|s| {
            (
                s.kind,
                (s.open_ms - T0) / S,
                s.close_ms.map(|c| (c - T0) / S),
            )
        })
        .collect()
}

#[test]
fn the_default_quorum_is_two_thirds_rounded_up() {
    let r = rules(2, 1);
    let got: Vec<usize> = (1..=7).map(|n| r.quorum(n)).collect();
    assert_eq!(got, vec![1, 2, 2, 3, 4, 4, 5]);
    let explicit = Rules {
        locations_down: Some(3),
        ..rules(2, 1)
    };
    assert_eq!(explicit.quorum(5), 3);
    // More than there are: all of them.
    assert_eq!(explicit.quorum(2), 2);
    let exposure = Rules {
        expect_closed: true,
        ..rules(2, 1)
    };
    assert_eq!(exposure.quorum(4), 1);
}

struct Case {
    name: &'static str,
    rules: Rules,
    /// (location, first check s, pattern every 10 s)
    /// (`B`: the location's policy refused the target.)
    locations: &'static [(&'static str, i64, &'static str)],
    now_s: i64,
    want: &'static [(Kind, i64, Option<i64>)],
}

#[test]
fn quorum_and_window_rules() {
    let cases = [
        Case {
            name: "one location: down on the second failure, up on the first success",
            rules: rules(2, 1),
            locations: &[("agent:a", 0, "UUDDDUU")],
            now_s: 65,
            want: &[(Kind::Down, 30, Some(50))],
        },
        Case {
            name: "a single failure opens nothing at consecutive_down 2",
            rules: rules(2, 1),
            locations: &[("agent:a", 0, "UDUDUDU")],
            now_s: 65,
            want: &[],
        },
        Case {
            name: "consecutive_up 2 waits for two successes",
            rules: rules(2, 2),
            locations: &[("agent:a", 0, "UDDUDUUU")],
            now_s: 75,
            want: &[(Kind::Down, 20, Some(60))],
        },
        Case {
            name: "2 of 3: one location down is not enough",
            rules: rules(2, 1),
            locations: &[
                ("agent:a", 0, "UDDDDU"),
                ("agent:b", 1, "UUUUUU"),
                ("public:x", 2, "UUUUUU"),
            ],
            now_s: 55,
            want: &[],
        },
        Case {
            name: "2 of 3: two locations down open it, every location up closes it",
            rules: rules(2, 1),
            locations: &[
                ("agent:a", 0, "UDDDDUU"),
                ("agent:b", 1, "UUDDDDU"),
                ("public:x", 2, "UUUUUUU"),
            ],
            now_s: 65,
            // b's second failure at 31 makes two down; a recovers at 50, b at 61.
            want: &[(Kind::Down, 31, Some(61))],
        },
        Case {
            name: "3 of 4",
            rules: rules(1, 1),
            locations: &[
                ("agent:a", 0, "UDDU"),
                ("agent:b", 1, "UDDU"),
                ("public:x", 2, "UUDU"),
                ("public:y", 3, "UUUU"),
            ],
            now_s: 35,
            // Three are down at 22; y's newest success (13) ran before the
            // third failure, so the verdict waits for y's check at 23.
            want: &[(Kind::Down, 23, Some(32))],
        },
        Case {
            name: "explicit locations_down 1 of 3",
            rules: Rules {
                locations_down: Some(1),
                ..rules(2, 1)
            },
            locations: &[
                ("agent:a", 0, "UDDU"),
                ("agent:b", 1, "UUUU"),
                ("public:x", 2, "UUUU"),
            ],
            now_s: 35,
            want: &[(Kind::Down, 20, Some(30))],
        },
        Case {
            name: "public down while the agent succeeds: edge below the quorum",
            rules: rules(2, 1),
            locations: &[("agent:a", 0, "UUUUUU"), ("public:x", 1, "UDDDUU")],
            now_s: 55,
            want: &[(Kind::Edge, 21, Some(41))],
        },
        Case {
            name: "edge off: nothing",
            rules: Rules {
                edge: false,
                ..rules(2, 1)
            },
            locations: &[("agent:a", 0, "UUUUUU"), ("public:x", 1, "UDDDUU")],
            now_s: 55,
            want: &[],
        },
        Case {
            name: "an edge incident becomes a down incident when the inside fails too",
            rules: rules(2, 1),
            locations: &[("agent:a", 0, "UUUDDDU"), ("public:x", 1, "UDDDDDU")],
            now_s: 65,
            // One incident: opened as edge, down from 40, over at 61.
            want: &[(Kind::Down, 21, Some(61))],
        },
        Case {
            name: "failure rate 20% over 2 min: 1 failure in 12 is not",
            rules: Rules {
                failure_rate: Some((20, 120 * S)),
                ..rules(2, 1)
            },
            locations: &[("agent:a", 0, "UUUUUDUUUUUUUU")],
            now_s: 135,
            want: &[],
        },
        Case {
            name: "failure rate 20% over 2 min: scattered failures open it",
            rules: Rules {
                failure_rate: Some((20, 120 * S)),
                ..rules(2, 1)
            },
            locations: &[("agent:a", 0, "UDUUDUUDUUUUUUUUUUUUUUU")],
            now_s: 225,
            // 1 of 3 at 20 s is 33 %; an open rate incident holds down to
            // half its threshold: (10, 130] holds 2 failures in 12 (17 %),
            // (40, 160] 1 in 12 (8 %) and the location is up: closed.
            want: &[(Kind::Down, 20, Some(160))],
        },
        Case {
            name: "failure rate 20%: a steady rate near the threshold does not flap",
            rules: Rules {
                failure_rate: Some((20, 120 * S)),
                ..rules(2, 1)
            },
            // One check in five fails: 17-25 % of any 2 min window.
            locations: &[("agent:a", 0, "UUUUDUUUUDUUUUDUUUUDUUUUDUUUUDUUUUDUUUUD")],
            now_s: 395,
            want: &[(Kind::Down, 40, None)],
        },
        Case {
            name: "an expect-closed port found open: exposure from one location",
            rules: Rules {
                expect_closed: true,
                ..rules(1, 1)
            },
            locations: &[("agent:a", 0, "UUDU"), ("public:x", 1, "UUUU")],
            now_s: 35,
            want: &[(Kind::Exposure, 20, Some(30))],
        },
        Case {
            name: "degraded (slow) is not down",
            rules: rules(1, 1),
            locations: &[("agent:a", 0, "USSSU")],
            now_s: 45,
            want: &[],
        },
        Case {
            name: "a public location refused a private target: unknown, not an edge incident",
            rules: rules(2, 1),
            locations: &[("agent:a", 0, "UUUUUU"), ("public:x", 1, "BBBBBB")],
            now_s: 55,
            want: &[],
        },
        Case {
            name: "degraded counts as down when the policy says so",
            rules: Rules {
                degraded_is_down: true,
                ..rules(2, 1)
            },
            locations: &[("agent:a", 0, "USSSU")],
            now_s: 45,
            want: &[(Kind::Down, 20, Some(40))],
        },
        Case {
            name: "a silent location is unknown: never down, and it does not close an incident",
            rules: rules(2, 1),
            // a stops reporting at 30 while down; b keeps failing then recovers.
            locations: &[("agent:a", 0, "UDDD"), ("agent:b", 1, "UDDDDDDDU")],
            now_s: 85,
            // Opened at 21 (both down); a is stale from 65 (30 + 35) on; b
            // recovers at 81: every location with a current result is up.
            want: &[(Kind::Down, 21, Some(81))],
        },
    ];
    for c in &cases {
        let mut s = Series::default();
        for (loc, start, pattern) in c.locations {
            feed(&mut s, loc, *start, pattern);
        }
        assert_eq!(spans(&s, &c.rules, c.now_s), c.want, "case: {}", c.name);
    }
}

#[test]
fn results_that_arrive_late_land_where_the_checks_ran() {
    let r = rules(2, 1);
    // In check order.
    let mut in_order = Series::default();
    feed(&mut in_order, "public:x", 1, "UUUUUUUUUU");
    feed(&mut in_order, "agent:a", 0, "UUDDDUUUUU");
    // The agent's results arrive after the public ones, newest first.
    let mut late = Series::default();
    feed(&mut late, "public:x", 1, "UUUUUUUUUU");
    let mut backlog: Vec<Obs> = Vec::new();
    for i in (0..10).rev() {
        let t = T0 + i * 10 * S;
        backlog.push(Obs {
            ts_ms: t,
            status: if (2..5).contains(&i) {
                pb::Status::Down as i32
            } else {
                pb::Status::Up as i32
            },
            reason: if (2..5).contains(&i) {
                pb::Reason::Refused as i32
            } else {
                pb::Reason::Ok as i32
            },
        });
    }
    for o in backlog {
        assert!(late.insert("agent:a", o));
    }
    // A resend changes nothing.
    assert!(!late.insert("agent:a", obs(20, pb::Status::Down, pb::Reason::Refused)));
    let a = sweep(
        &in_order,
        &Rules {
            edge: false,
            ..r.clone()
        },
        T0 + 100 * S,
    );
    let b = sweep(&late, &Rules { edge: false, ..r }, T0 + 100 * S);
    assert_eq!(a, b);
    // 1 of 2 locations down: below the quorum, so no incident, but the
    // location view says when it was down.
    assert!(a.spans.is_empty());
}

#[test]
fn a_down_incident_whose_inside_answers_becomes_an_edge_incident() {
    // The outside alone reports first (the agent joins late): 1 of 1 down
    // is a quorum. Once the agent sees the service up and the outside is
    // down again after that, the service is not down; the outside still
    // cannot reach it: the same incident, now an edge incident.
    let mut s = Series::default();
    feed(&mut s, "public:x", 0, "TTTTTTTT");
    feed(&mut s, "agent:a", 41, "UUUU");
    assert_eq!(spans(&s, &rules(2, 1), 75), vec![(Kind::Edge, 10, None)]);
    let out = sweep(&s, &rules(2, 1), T0 + 75 * S);
    let span = &out.spans[0];
    assert_eq!(span.first_kind, Kind::Down);
    assert!(
        span.diagnosis.starts_with("reachable inside only"),
        "{}",
        span.diagnosis
    );
    let (at, what) = span.change.clone().expect("the change of kind is said");
    assert_eq!(at, T0 + 60 * S, "the outside failed twice after 41");
    assert!(
        what.starts_with("the service answers inside again"),
        "{what}"
    );
    assert_eq!(span.since_ms, T0, "the outside fails since its first check");
    // With edge incidents off, the outside alone failing is below the
    // quorum: the down incident closes once that stands.
    let no_edge = Rules {
        edge: false,
        ..rules(2, 1)
    };
    assert_eq!(spans(&s, &no_edge, 75), vec![(Kind::Down, 10, Some(60))]);
    // Both failed, then the inside recovers first (31) and the outside at
    // its next check: a recovery in progress, one incident.
    let mut s = Series::default();
    feed(&mut s, "public:x", 0, "TTTTUUU");
    feed(&mut s, "agent:a", 1, "DDDUUUU");
    assert_eq!(
        spans(&s, &rules(2, 1), 75),
        vec![(Kind::Down, 11, Some(40))]
    );
    // The outside keeps failing after the inside recovered: the outage is
    // over (closed at 50, once the outside failed twice after 31) and a
    // standing outside block is an edge incident of its own.
    let mut s = Series::default();
    feed(&mut s, "public:x", 0, "TTTTTTTU");
    feed(&mut s, "agent:a", 1, "DDDUUUUU");
    assert_eq!(
        spans(&s, &rules(2, 1), 75),
        vec![(Kind::Down, 11, Some(50)), (Kind::Edge, 50, Some(70))]
    );
}

#[test]
fn a_diagnosis_says_where_and_why() {
    let mut s = Series::default();
    feed(&mut s, "agent:a", 0, "UDD");
    feed(&mut s, "public:x", 1, "UDD");
    let out = sweep(&s, &rules(2, 1), T0 + 25 * S);
    assert_eq!(out.spans.len(), 1);
    assert!(
        out.spans[0]
            .diagnosis
            .starts_with("service down: every location fails"),
        "{}",
        out.spans[0].diagnosis
    );
    assert_eq!(out.spans[0].reason.as_deref(), Some("refused"));
    assert_eq!(out.spans[0].since_ms, T0 + 10 * S);

    let mut s = Series::default();
    feed(&mut s, "agent:a", 0, "UUU");
    feed(&mut s, "public:x", 1, "UTT");
    let out = sweep(&s, &rules(2, 1), T0 + 25 * S);
    assert_eq!(out.spans[0].kind, Kind::Edge);
    assert!(
        out.spans[0]
            .diagnosis
            .starts_with("reachable inside only: edge, firewall or routing"),
        "{}",
        out.spans[0].diagnosis
    );
    assert_eq!(out.spans[0].reason.as_deref(), Some("timeout"));

    let views = |states: &[(&str, LocState, &str)]| -> Vec<super::LocationView> {
        states
            .iter()
            .map(|(l, s, r)| super::LocationView {
                location: (*l).into(),
                state: *s,
                reason: (!r.is_empty()).then(|| (*r).into()),
                down_since_ms: None,
                up_since_ms: None,
                last_check_ms: None,
            })
            .collect()
    };
    let (text, reason) = diagnose(
        &views(&[
            ("public:eu", LocState::Down, "timeout"),
            ("public:us", LocState::Up, ""),
            ("public:ap", LocState::Down, "refused"),
            ("public:sa", LocState::Down, "timeout"),
        ]),
        false,
    );
    assert!(
        text.starts_with("regional path: down from public:eu, public:ap, public:sa"),
        "{text}"
    );
    assert_eq!(reason.as_deref(), Some("timeout"));
    let (text, _) = diagnose(
        &views(&[
            ("agent:a", LocState::Down, "refused"),
            ("public:x", LocState::Up, ""),
            ("agent:b", LocState::Unknown, ""),
        ]),
        false,
    );
    assert!(text.starts_with("reachable from outside only"), "{text}");
    assert!(text.ends_with("no current results from agent:b"), "{text}");
}

// ---------------------------------------------------------------------------
// The engine over a real store.
// ---------------------------------------------------------------------------

fn monitors(toml_text: &str) -> Vec<Monitor> {
    #[derive(serde::Deserialize)]
    struct F {
        monitors: Vec<RawMonitor>,
    }
    let f: F = toml::from_str(toml_text).expect("test toml parses");
    let located: Vec<Located> = f
        .monitors
        .into_iter()
        .enumerate()
        .map(|(i, raw)| Located {
            line: None,
            raw,
            path: format!("monitors[{i}]"),
        })
        .collect();
    validate_all(&located, "test", Origin::File, &[], Parents::MustExist).expect("valid monitors")
}

#[derive(Default)]
struct Sent(Mutex<Vec<Outbound>>);

impl Outbox for Sent {
    fn send(&self, out: Outbound) {
        self.0.lock().unwrap().push(out);
    }
}

impl Sent {
    fn take(&self) -> Vec<(Phase, String, Kind)> {
        self.0
            .lock()
            .unwrap()
            .drain(..)
            .map(|o| (o.phase, o.incident.monitor, o.incident.kind))
            .collect()
    }
}

struct Rig {
    _dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    registry: MonitorRegistry,
    sent: Arc<Sent>,
    engine: IncidentEngine,
    now: Arc<Mutex<i64>>,
}

#[derive(Default)]
struct Agents(Mutex<Vec<AgentPresence>>);

impl Presence for Agents {
    fn agents(&self) -> Vec<AgentPresence> {
        self.0.lock().unwrap().clone()
    }
}

/// A maintenance window over one monitor, [from, to).
struct Window(&'static str, i64, i64);

impl Silencer for Window {
    fn active(&self, monitor: &str, _tags: &[String], ts_ms: i64) -> Option<String> {
        (monitor == self.0 && (self.1..self.2).contains(&ts_ms)).then(|| "patching".to_owned())
    }
}

fn rig_with(
    toml_text: &str,
    presence: Arc<dyn Presence>,
    silencer: Arc<dyn Silencer>,
    dir: Option<tempfile::TempDir>,
) -> Rig {
    let dir = dir.unwrap_or_else(|| tempfile::tempdir().unwrap());
    let store: Arc<dyn Store> =
        Arc::new(RedbStore::open(dir.path(), StoreConfig::default()).unwrap());
    let registry = MonitorRegistry::open(monitors(toml_text), None).unwrap();
    let sent = Arc::new(Sent::default());
    let now = Arc::new(Mutex::new(T0));
    let clock: Clock = {
        let now = now.clone();
        Arc::new(move || *now.lock().unwrap())
    };
    let engine = IncidentEngine::open(
        store.clone(),
        registry.clone(),
        presence,
        silencer,
        sent.clone(),
        clock,
        EngineConfig::default(),
    )
    .unwrap();
    Rig {
        _dir: dir,
        store,
        registry,
        sent,
        engine,
        now,
    }
}

fn rig(toml_text: &str) -> Rig {
    rig_with(toml_text, Arc::new(NoAgents), Arc::new(NoMaintenance), None)
}

impl Rig {
    /// Stores and observes one result of `monitor` at `location`, checked at `t` s.
    fn result(&self, monitor: &str, location: &str, t: i64, up: bool) {
        let (status, reason) = if up {
            (pb::Status::Up, pb::Reason::Ok)
        } else {
            (pb::Status::Down, pb::Reason::Refused)
        };
        let sample = Sample {
            monitor_id: monitor.into(),
            location: location.into(),
            seq: (t + 1) as u64,
            result: pb::CheckResult {
                monitor_id: monitor.into(),
                scheduled_at_unix_ms: T0 + t * S,
                started_at_unix_ms: T0 + t * S,
                status: status as i32,
                reason: reason as i32,
                ..Default::default()
            },
        };
        let samples = [sample];
        self.store
            .ingest(location, 1, T0 + t * S, &samples, &[])
            .unwrap();
        self.engine.observe(&samples);
    }

    /// Runs a step at `t` s.
    fn step(&self, t: i64) {
        *self.now.lock().unwrap() = T0 + t * S;
        self.engine.step(T0 + t * S);
    }

    fn incidents(&self) -> Vec<super::Incident> {
        let mut v: Vec<super::Incident> = self
            .store
            .incidents(&IncidentQuery::default())
            .unwrap()
            .iter()
            .map(|r| super::engine::parse(r).unwrap())
            .collect();
        v.reverse();
        v
    }
}

const REDIS: &str = r#"
[[monitors]]
name = "redis"
target = "tcp://127.0.0.1:6379"
interval = "10s"
locations = ["agent-a"]
"#;

#[test]
fn an_incident_opens_is_notified_and_resolves() {
    let r = rig(REDIS);
    for (t, up) in [(0, true), (10, false)] {
        r.result("redis", "agent:agent-a", t, up);
        r.step(t);
    }
    assert!(r.sent.take().is_empty(), "one failure is not an incident");
    r.result("redis", "agent:agent-a", 20, false);
    r.step(20);
    assert_eq!(
        r.sent.take(),
        vec![(Phase::Opened, "redis".into(), Kind::Down)]
    );
    let inc = &r.incidents()[0];
    assert_eq!(inc.opened_ms, T0 + 20 * S);
    assert_eq!(inc.since_ms, T0 + 10 * S);
    assert_eq!(inc.reason.as_deref(), Some("refused"));
    assert!(inc.is_open());
    assert_eq!(r.engine.status()[0].state, "down");
    // More failures: the same incident, nothing sent again.
    r.result("redis", "agent:agent-a", 30, false);
    r.step(30);
    assert!(r.sent.take().is_empty());
    r.result("redis", "agent:agent-a", 40, true);
    r.step(40);
    assert_eq!(
        r.sent.take(),
        vec![(Phase::Resolved, "redis".into(), Kind::Down)]
    );
    let all = r.incidents();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].resolved_ms, Some(T0 + 40 * S));
    assert_eq!(r.engine.status()[0].state, "up");
    // The event log tells the story.
    let events = r
        .store
        .events(&crate::store::EventQuery {
            from_ms: i64::MIN,
            to_ms: i64::MAX,
            kind: Some("incident".into()),
            limit: 100,
        })
        .unwrap();
    let actions: Vec<String> = events
        .iter()
        .map(|(_, e)| {
            serde_json::from_str::<serde_json::Value>(&e.body).unwrap()["action"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(actions, vec!["opened", "notified", "resolved", "notified"]);
}

#[test]
fn the_notification_delay_holds_and_an_incident_that_heals_in_time_is_never_sent() {
    let r = rig(r#"
[[monitors]]
name = "redis"
target = "tcp://127.0.0.1:6379"
interval = "10s"
locations = ["agent-a"]
alert = { notification_delay = "30s" }
"#);
    // Down at 20, healed at 40: inside the 30 s delay.
    for (t, up) in [(0, true), (10, false), (20, false), (30, false), (40, true)] {
        r.result("redis", "agent:agent-a", t, up);
        r.step(t);
    }
    r.step(120);
    assert!(r.sent.take().is_empty());
    let inc = &r.incidents()[0];
    assert!(inc.silent);
    assert_eq!(
        inc.held.as_deref(),
        Some("healed within the notification delay")
    );
    // Down again from 60 on and still down 30 s later: sent then, not before.
    for (t, up) in [(50, false), (60, false), (70, false), (80, false)] {
        r.result("redis", "agent:agent-a", t, up);
        r.step(t);
    }
    assert!(r.sent.take().is_empty(), "held for the delay");
    r.result("redis", "agent:agent-a", 90, false);
    r.step(90);
    assert_eq!(
        r.sent.take(),
        vec![(Phase::Opened, "redis".into(), Kind::Down)]
    );
}

#[test]
fn a_backlog_replayed_after_a_cut_puts_the_incident_where_it_happened() {
    let r = rig(r#"
[[monitors]]
name = "redis"
target = "tcp://127.0.0.1:6379"
interval = "10s"
locations = ["agent-a"]
"#);
    r.result("redis", "agent:agent-a", 0, true);
    r.step(0);
    // The link is cut from 5 s to 95 s; the agent keeps checking and buffers.
    // Meanwhile the collector sees nothing: unknown, not down.
    r.step(60);
    let st = &r.engine.status()[0];
    assert_eq!(st.state, "unknown");
    assert_eq!(st.locations[0].state, LocState::Unknown);
    assert!(r.sent.take().is_empty());
    // The backlog arrives: down from 20 to 50, up again at 60.
    for (t, up) in [
        (10, true),
        (20, false),
        (30, false),
        (40, false),
        (50, false),
        (60, true),
        (70, true),
        (80, true),
        (90, true),
    ] {
        r.result("redis", "agent:agent-a", t, up);
    }
    r.step(96);
    let all = r.incidents();
    assert_eq!(all.len(), 1, "{all:?}");
    let inc = &all[0];
    assert_eq!(inc.since_ms, T0 + 20 * S);
    assert_eq!(inc.opened_ms, T0 + 30 * S);
    assert_eq!(inc.resolved_ms, Some(T0 + 60 * S));
    assert!(inc.backfilled);
    // It did happen: both messages go out, in order.
    assert_eq!(
        r.sent.take(),
        vec![
            (Phase::Opened, "redis".into(), Kind::Down),
            (Phase::Resolved, "redis".into(), Kind::Down)
        ]
    );
    // The same backlog again (a resend after a lost ack) changes nothing.
    for t in [20, 30, 40] {
        r.result("redis", "agent:agent-a", t, false);
    }
    r.step(100);
    assert_eq!(r.incidents().len(), 1);
    assert!(r.sent.take().is_empty());
}

#[test]
fn an_offline_agent_raises_one_incident_and_its_monitors_show_unknown() {
    let agents = Arc::new(Agents::default());
    *agents.0.lock().unwrap() = vec![AgentPresence {
        location: "agent:agent-a".into(),
        connected: true,
        since_ms: Some(T0),
        revoked: false,
        enrolled_ms: T0 - 3600 * S,
    }];
    let r = rig_with(REDIS, agents.clone(), Arc::new(NoMaintenance), None);
    r.result("redis", "agent:agent-a", 0, true);
    r.step(0);
    // The stream goes away at 5 s.
    agents.0.lock().unwrap()[0] = AgentPresence {
        location: "agent:agent-a".into(),
        connected: false,
        since_ms: Some(T0 + 5 * S),
        revoked: false,
        enrolled_ms: T0 - 3600 * S,
    };
    r.step(30);
    assert!(r.incidents().is_empty(), "inside the grace period");
    for t in [40, 64, 66, 90, 120] {
        r.step(t);
    }
    let all = r.incidents();
    assert_eq!(all.len(), 1, "one incident, however long: {all:?}");
    assert_eq!(all[0].kind, Kind::AgentOffline);
    assert_eq!(all[0].monitor, "agent:agent-a");
    assert_eq!(all[0].opened_ms, T0 + 65 * S);
    assert_eq!(
        r.sent.take(),
        vec![(Phase::Opened, "agent:agent-a".into(), Kind::AgentOffline)]
    );
    let st = &r.engine.status()[0];
    assert_eq!(st.state, "unknown", "never down for an agent that is away");
    // Back: resolved.
    agents.0.lock().unwrap()[0] = AgentPresence {
        location: "agent:agent-a".into(),
        connected: true,
        since_ms: Some(T0 + 125 * S),
        revoked: false,
        enrolled_ms: T0 - 3600 * S,
    };
    r.step(126);
    assert_eq!(r.incidents()[0].resolved_ms, Some(T0 + 125 * S));
    assert_eq!(
        r.sent.take(),
        vec![(Phase::Resolved, "agent:agent-a".into(), Kind::AgentOffline)]
    );
    // Revoked: at once, with the reason.
    agents.0.lock().unwrap()[0].revoked = true;
    r.step(130);
    let all = r.incidents();
    assert_eq!(all.len(), 2);
    assert_eq!(all[1].reason.as_deref(), Some("revoked"));
    assert!(all[1].diagnosis.contains("revoked"), "{}", all[1].diagnosis);
}

#[test]
fn a_child_under_a_down_parent_is_suppressed_and_linked() {
    let r = rig(r#"
[[monitors]]
name = "host"
target = "tcp://127.0.0.1:22"
interval = "10s"
locations = ["agent-a"]

[[monitors]]
name = "redis"
target = "tcp://127.0.0.1:6379"
interval = "10s"
locations = ["agent-a"]
depends_on = "host"
"#);
    for (t, up) in [(0, true), (10, false), (20, false), (30, false)] {
        // The child sees it first (checks a little earlier).
        r.result("redis", "agent:agent-a", t, up);
        r.step(t);
        r.result("host", "agent:agent-a", t, up);
        r.step(t);
    }
    let sent = r.sent.take();
    assert_eq!(
        sent,
        vec![(Phase::Opened, "host".into(), Kind::Down)],
        "only the parent pages"
    );
    let all = r.incidents();
    let parent = all.iter().find(|i| i.monitor == "host").unwrap();
    let child = all.iter().find(|i| i.monitor == "redis").unwrap();
    assert_eq!(child.suppressed_by, Some(parent.id));
    assert!(child.held.as_deref().unwrap().contains("depends_on"));
    // Both recover; the child was never told, so no "reachable again" either.
    for t in [40, 50] {
        r.result("redis", "agent:agent-a", t, true);
        r.result("host", "agent:agent-a", t, true);
        r.step(t);
    }
    assert_eq!(
        r.sent.take(),
        vec![(Phase::Resolved, "host".into(), Kind::Down)]
    );
}

#[test]
fn inside_a_maintenance_window_incidents_are_recorded_but_not_notified() {
    let r = rig_with(
        REDIS,
        Arc::new(NoAgents),
        Arc::new(Window("redis", T0 + 5 * S, T0 + 65 * S)),
        None,
    );
    for (t, up) in [(0, true), (10, false), (20, false), (30, false), (40, true)] {
        r.result("redis", "agent:agent-a", t, up);
        r.step(t);
    }
    assert!(r.sent.take().is_empty());
    let inc = &r.incidents()[0];
    assert_eq!(inc.maintenance.as_deref(), Some("patching"));
    assert!(inc.silent);
    // Down again inside the window and still down after it ends: sent then.
    for (t, up) in [(50, false), (60, false)] {
        r.result("redis", "agent:agent-a", t, up);
        r.step(t);
    }
    assert!(r.sent.take().is_empty(), "opened inside the window");
    assert_eq!(r.engine.status()[0].state, "maintenance");
    // The window ends at 65 with Redis still down: the page goes out then.
    r.result("redis", "agent:agent-a", 70, false);
    r.step(70);
    assert_eq!(
        r.sent.take(),
        vec![(Phase::Opened, "redis".into(), Kind::Down)]
    );
}

#[test]
fn a_restart_neither_forgets_nor_duplicates_an_open_incident() {
    let r = rig(REDIS);
    for (t, up) in [(0, true), (10, false), (20, false)] {
        r.result("redis", "agent:agent-a", t, up);
        r.step(t);
    }
    assert_eq!(r.sent.take().len(), 1);
    let Rig {
        _dir,
        store,
        engine,
        ..
    } = r;
    drop(engine);
    drop(store);
    let r = rig_with(
        REDIS,
        Arc::new(NoAgents),
        Arc::new(NoMaintenance),
        Some(_dir),
    );
    r.result("redis", "agent:agent-a", 30, false);
    r.step(30);
    assert_eq!(r.incidents().len(), 1);
    assert!(
        r.sent.take().is_empty(),
        "already notified before the restart"
    );
    r.result("redis", "agent:agent-a", 40, true);
    r.step(40);
    assert_eq!(
        r.sent.take(),
        vec![(Phase::Resolved, "redis".into(), Kind::Down)]
    );
    let _ = &r.registry;
}

/// The run loop on tokio's paused clock: a held notification goes out on the
/// engine's own tick when the delay is over, with no new result to wake it.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_run_loop_sends_a_delayed_notification_on_its_own_tick() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(RedbStore::open(dir.path(), StoreConfig::default()).unwrap());
    let registry = MonitorRegistry::open(
        monitors(
            r#"
[[monitors]]
name = "redis"
target = "tcp://127.0.0.1:6379"
interval = "10s"
locations = ["agent-a"]
alert = { notification_delay = "30s" }
"#,
        ),
        None,
    )
    .unwrap();
    let base = tokio::time::Instant::now();
    let clock: Clock = Arc::new(move || T0 + base.elapsed().as_millis() as i64);
    let sent = Arc::new(Sent::default());
    let engine = IncidentEngine::open(
        store.clone(),
        registry,
        Arc::new(NoAgents),
        Arc::new(NoMaintenance),
        sent.clone(),
        clock,
        EngineConfig::default(),
    )
    .unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(engine.clone().run(stopped));
    let feed = |t: i64, up: bool| {
        let (status, reason) = if up {
            (pb::Status::Up, pb::Reason::Ok)
        } else {
            (pb::Status::Down, pb::Reason::Refused)
        };
        engine.observe(&[Sample {
            monitor_id: "redis".into(),
            location: "agent:agent-a".into(),
            seq: t as u64 + 1,
            result: pb::CheckResult {
                monitor_id: "redis".into(),
                scheduled_at_unix_ms: T0 + t * S,
                status: status as i32,
                reason: reason as i32,
                ..Default::default()
            },
        }]);
    };
    let at =
        |t: i64| tokio::time::sleep_until(base + std::time::Duration::from_millis((t * S) as u64));
    for (t, up) in [(0, true), (10, false), (20, false)] {
        at(t).await;
        feed(t, up);
    }
    // Opened at 20 s, held until 50 s; the results stop (still within their staleness).
    at(49).await;
    assert!(sent.take().is_empty(), "sent before the delay was over");
    let open = engine.open_incidents();
    assert_eq!(open.len(), 1);
    assert!(
        open[0]
            .held
            .as_deref()
            .unwrap()
            .starts_with("notification delay")
    );
    at(52).await;
    assert_eq!(
        sent.take(),
        vec![(Phase::Opened, "redis".into(), Kind::Down)]
    );
    stop.send(true).unwrap();
    task.await.unwrap();
}

#[test]
fn after_a_restart_a_notification_not_confirmed_is_sent_again_to_the_channels_that_lack_it() {
    let r = rig(REDIS);
    for (t, up) in [(0, true), (10, false), (20, false)] {
        r.result("redis", "agent:agent-a", t, up);
        r.step(t);
    }
    assert_eq!(r.sent.take().len(), 1);
    let id = r.incidents()[0].id;
    let report = |channel: &str, state: &str| super::Delivery {
        channel: channel.into(),
        phase: Phase::Opened,
        attempt: 1,
        at_ms: T0 + 21 * S,
        state: state.into(),
        error: (state != "delivered").then(|| "HTTP 503: busy".into()),
        retry_at_ms: (state == "retrying").then_some(T0 + 22 * S),
    };
    r.engine.delivered(id, report("hook", "delivered"));
    r.engine.delivered(id, report("pager", "retrying"));
    let stored = r.incidents();
    assert_eq!(stored[0].deliveries.len(), 2);
    let Rig {
        _dir,
        store,
        engine,
        ..
    } = r;
    drop((engine, store));
    let r = rig_with(
        REDIS,
        Arc::new(NoAgents),
        Arc::new(NoMaintenance),
        Some(_dir),
    );
    r.engine.resume_deliveries();
    let again = r.sent.0.lock().unwrap().drain(..).collect::<Vec<_>>();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].phase, Phase::Opened);
    assert_eq!(again[0].skip, vec!["hook".to_owned()]);
    // Once every channel confirmed, nothing is resent.
    r.engine.delivered(id, report("pager", "delivered"));
    r.engine.resume_deliveries();
    assert!(r.sent.take().is_empty());
}

/// A sweep kept where results are in and advanced, at uneven instants, judges exactly
/// as a fresh sweep of everything would: same incidents, same picture now.
/// Several rule sets over pseudo-random flapping, gaps (stale locations)
/// and results arriving out of order (which start the sweep over).
#[test]
fn a_sweep_advanced_step_by_step_judges_as_a_full_sweep() {
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let rule_sets = [
        rules(2, 1),
        rules(1, 2),
        Rules {
            failure_rate: Some((50, 60 * S)),
            ..rules(1, 1)
        },
        Rules {
            locations_down: Some(1),
            degraded_is_down: true,
            ..rules(3, 1)
        },
        Rules {
            expect_closed: true,
            ..rules(1, 1)
        },
    ];
    let locations = ["agent:a", "agent:b", "public:eu"];
    let mut restarts = 0;
    let mut compared = 0;
    for r in &rule_sets {
        let mut s = Series::default();
        let mut kept: Option<Sweep> = None;
        let mut t = 0i64;
        for _ in 0..600 {
            t += 1 + (next() % 4) as i64;
            let loc = locations[(next() % 3) as usize];
            // Mostly in order; one in twenty lands 30 s in the past.
            let at = if next() % 20 == 0 { t - 30 } else { t };
            // Long runs of one state, and now and then a silent spell.
            let status = match (t / 40 + next() as i64 % 2) % 4 {
                0 | 1 => pb::Status::Up,
                2 => pb::Status::Down,
                _ => pb::Status::Degraded,
            };
            if next() % 50 == 0 {
                t += 60;
            }
            let reason = if status == pb::Status::Down {
                pb::Reason::Refused
            } else {
                pb::Reason::Ok
            };
            s.insert(loc, obs(at, status, reason));
            if next() % 3 != 0 {
                continue;
            }
            let now = T0 + (t + (next() % 20) as i64) * S;
            let inserted_from = s.take_inserted_from();
            let w = match kept.as_mut() {
                Some(w) if w.can_go_on(&s, r, inserted_from, now) => w,
                _ => {
                    restarts += 1;
                    kept.insert(Sweep::start(&s, r))
                }
            };
            // As the engine does: keep it where the results are in, and
            // judge the rest on a copy.
            w.advance(&s, s.settled_to(now, r.stale_ms));
            let mut ahead = w.clone();
            ahead.advance(&s, now);
            assert_eq!(
                ahead.outcome(now),
                sweep(&s, r, now),
                "at {now} under {r:?}"
            );
            compared += 1;
        }
    }
    assert!(compared > 500, "only {compared} comparisons");
    // Both paths ran: most steps went on, late results started over.
    assert!(
        restarts > 20 && restarts < compared / 2,
        "{restarts} restarts in {compared}"
    );
}

/// A late result, a changed rule or a new location cannot go on.
#[test]
fn a_sweep_starts_over_on_a_late_result_a_rule_change_or_a_new_location() {
    let r = rules(2, 1);
    let mut s = Series::default();
    feed(&mut s, "agent:a", 0, "UUDDUU");
    s.take_inserted_from();
    let mut w = Sweep::start(&s, &r);
    w.advance(&s, T0 + 55 * S);
    feed(&mut s, "agent:a", 60, "D");
    assert!(w.can_go_on(&s, &r, s.clone().take_inserted_from(), T0 + 70 * S));
    feed(&mut s, "agent:a", 45, "D");
    assert!(!w.can_go_on(&s, &r, s.clone().take_inserted_from(), T0 + 70 * S));
    s.take_inserted_from();
    assert!(!w.can_go_on(&s, &rules(3, 1), None, T0 + 70 * S));
    feed(&mut s, "public:eu", 70, "U");
    assert!(!w.can_go_on(&s, &r, None, T0 + 70 * S));
}

const EDGE: &str = r#"
[[monitors]]
name = "svc"
target = "tcp://127.0.0.1:6379"
interval = "10s"
locations = ["agent-a", "public"]
"#;

#[test]
fn an_outside_block_that_becomes_an_outage_is_one_incident_with_updates() {
    let r = rig(EDGE);
    // (time s, agent up, public up): the outside is blocked from 11, the
    // service dies at 30, answers inside again at 50, the block lifts at 71.
    let timeline = [
        (0, true, true),
        (10, true, false),
        (20, true, false),
        (30, false, false),
        (40, false, false),
        (50, true, false),
        (60, true, false),
        (70, true, true),
    ];
    let mut sent = Vec::new();
    for (t, agent, public) in timeline {
        r.result("svc", "agent:agent-a", t, agent);
        r.step(t);
        r.result("svc", "public:lab", t + 1, public);
        r.step(t + 1);
        for o in r.sent.0.lock().unwrap().drain(..) {
            sent.push((o.phase, o.incident.kind, o.incident.change.clone()));
        }
    }
    let phases: Vec<(Phase, Kind)> = sent.iter().map(|s| (s.0, s.1)).collect();
    assert_eq!(
        phases,
        vec![
            (Phase::Opened, Kind::Edge),
            (Phase::Updated, Kind::Down),
            (Phase::Updated, Kind::Edge),
            (Phase::Resolved, Kind::Edge),
        ],
        "{sent:#?}"
    );
    let said = |i: usize| sent[i].2.clone().unwrap_or_default();
    assert!(
        said(1).starts_with("the service now fails from inside too"),
        "{}",
        said(1)
    );
    assert!(
        said(2).starts_with("the service answers inside again"),
        "{}",
        said(2)
    );
    let incidents = r.incidents();
    assert_eq!(incidents.len(), 1, "one incident: {incidents:#?}");
    assert_eq!(incidents[0].since_ms, T0 + 11 * S);
    assert_eq!(
        incidents[0].last_ok_ms,
        Some(T0 + S),
        "the public's last success"
    );
}
