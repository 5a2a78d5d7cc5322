//! Scheduling tests on paused tokio time (exact to the millisecond), with an
//! executor that records when each check started and takes a controlled time;
//! plus one real-clock test with the real Engine against a local listener.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, sleep, sleep_until};

use super::*;
use crate::check::{CheckSpec, Host, Protocol, Target};
use crate::result::{CheckResult, Reason, Status};

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

/// Test monitors carry their number in the target port, so the executor (which
/// only sees the spec) knows whose check it runs. Nothing is ever sent there.
fn monitor(n: u16, interval: Duration) -> Monitor {
    let target = Target {
        protocol: Protocol::Tcp,
        host: Host::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        port: n,
    };
    Monitor {
        id: format!("m{n}"),
        interval,
        spec: Arc::new(CheckSpec::new(target)),
    }
}

fn monitors(count: u16, interval: Duration) -> Vec<Monitor> {
    (1..=count).map(|n| monitor(n, interval)).collect()
}

/// Records (monitor number, start instant) and holds each check for `delay`.
#[derive(Clone)]
struct Recorder {
    starts: Arc<Mutex<Vec<(u16, Instant)>>>,
    delay: Duration,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
}

impl Recorder {
    fn new(delay: Duration) -> Recorder {
        Recorder {
            starts: Arc::default(),
            delay,
            in_flight: Arc::default(),
            max_in_flight: Arc::default(),
        }
    }

    fn starts(&self) -> Vec<(u16, Instant)> {
        self.starts.lock().unwrap().clone()
    }

    /// Start instants of monitor `n`, in order.
    fn starts_of(&self, n: u16) -> Vec<Instant> {
        self.starts()
            .into_iter()
            .filter(|(m, _)| *m == n)
            .map(|(_, t)| t)
            .collect()
    }
}

struct Leave(Arc<AtomicUsize>);

impl Drop for Leave {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Executor for Recorder {
    fn execute(&self, spec: Arc<CheckSpec>) -> BoxFuture<'static, CheckResult> {
        let this = self.clone();
        Box::pin(async move {
            this.starts
                .lock()
                .unwrap()
                .push((spec.target.port, Instant::now()));
            let now = this.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            this.max_in_flight.fetch_max(now, Ordering::SeqCst);
            let _leave = Leave(Arc::clone(&this.in_flight));
            if !this.delay.is_zero() {
                sleep(this.delay).await;
            }
            CheckResult::new(Status::Up, Reason::Ok, "")
        })
    }
}

/// Drains the result channel into a shared vector, as a consumer would.
fn collect(mut rx: mpsc::Receiver<ScheduledResult>) -> Arc<Mutex<Vec<ScheduledResult>>> {
    let out: Arc<Mutex<Vec<ScheduledResult>>> = Arc::default();
    let sink = Arc::clone(&out);
    tokio::spawn(async move {
        while let Some(r) = rx.recv().await {
            sink.lock().unwrap().push(r);
        }
    });
    out
}

fn start(
    set: Vec<Monitor>,
    exec: &Recorder,
    max_in_flight: usize,
) -> (SchedulerHandle, Arc<Mutex<Vec<ScheduledResult>>>) {
    let (tx, rx) = mpsc::channel(1024);
    let handle = Scheduler::spawn(set, exec.clone(), max_in_flight, tx).expect("spawn scheduler");
    (handle, collect(rx))
}

#[tokio::test(start_paused = true)]
async fn thousand_monitors_spread_evenly_over_the_interval() {
    let exec = Recorder::new(Duration::ZERO);
    let (handle, _results) = start(monitors(1000, 10 * SEC), &exec, 1000);
    let (origin, _) = handle.origin();
    sleep_until(origin + 10 * SEC + 500 * MS).await;

    let first: Vec<(u16, Instant)> = exec
        .starts()
        .into_iter()
        .filter(|(_, t)| *t < origin + 10 * SEC)
        .collect();
    let mut once: HashMap<u16, usize> = HashMap::new();
    let mut buckets = [0usize; 10];
    for (n, t) in &first {
        *once.entry(*n).or_default() += 1;
        buckets[(*t - origin).as_secs() as usize] += 1;
    }
    assert_eq!(once.len(), 1000, "every monitor runs in its first interval");
    assert!(once.values().all(|&c| c == 1), "and only once");
    let mean = 1000.0 / 10.0;
    for (second, &count) in buckets.iter().enumerate() {
        assert!(
            (count as f64 - mean).abs() <= 0.15 * mean,
            "second {second} has {count} starts, mean {mean}: {buckets:?}"
        );
    }
    handle.shutdown(SEC).await;
}

#[tokio::test(start_paused = true)]
async fn three_monitors_at_30s_are_at_least_5s_apart() {
    let exec = Recorder::new(Duration::ZERO);
    let (handle, _results) = start(monitors(3, 30 * SEC), &exec, 10);
    let (origin, _) = handle.origin();
    sleep_until(origin + 30 * SEC - MS).await;

    let mut t: Vec<Duration> = exec.starts().iter().map(|(_, t)| *t - origin).collect();
    t.sort();
    assert_eq!(t.len(), 3, "{t:?}");
    let gaps = [t[1] - t[0], t[2] - t[1], t[0] + 30 * SEC - t[2]];
    assert!(
        gaps.iter().all(|g| *g >= 5 * SEC),
        "starts {t:?}, gaps {gaps:?}"
    );
    handle.shutdown(SEC).await;
}

#[test]
fn offsets_depend_on_the_set_not_its_order() {
    let set = monitors(50, 10 * SEC);
    let mut reversed = set.clone();
    reversed.reverse();
    assert_eq!(assign_offsets(&set), assign_offsets(&reversed));
    // The hash is part of the schedule's contract: changing it shifts every
    // monitor's phase on upgrade. Pinned so that cannot happen by accident.
    assert_eq!(
        stable_hash("db-1"),
        0xd73d_4ac3_10f2_df57,
        "stable_hash changed: {:#x}",
        stable_hash("db-1")
    );
}

#[test]
fn adding_to_a_group_moves_its_members_by_at_most_interval_over_n() {
    let interval = 10 * SEC;
    let before = monitors(100, interval);
    let mut after = before.clone();
    after.push(monitor(101, interval));
    let (old, new) = (assign_offsets(&before), assign_offsets(&after));
    let bound = interval / 101 + MS; // + 1 ms of rounding to whole milliseconds
    let mut moved = 0;
    for (id, o) in &old {
        let n = new[id];
        let shift = n.abs_diff(*o);
        assert!(shift <= bound, "{id} moved by {shift:?} > {bound:?}");
        moved += usize::from(shift > Duration::ZERO);
    }
    assert!(
        moved > 0,
        "ranks must re-spread the group, or it would not stay even"
    );
    // Monitors of another interval are not affected at all.
    let mut mixed = before.clone();
    mixed.push(monitor(200, 7 * SEC));
    let with_other = assign_offsets(&mixed);
    assert!(old.iter().all(|(id, o)| with_other[id] == *o));
}

#[tokio::test(start_paused = true)]
async fn no_drift_over_a_thousand_intervals() {
    // Each check takes 300 ms of a 1 s interval: a sleep-after-work loop would
    // drift by 300 ms per run.
    let exec = Recorder::new(300 * MS);
    let (handle, results) = start(monitors(3, SEC), &exec, 10);
    let (origin, origin_wall) = handle.origin();
    let offsets = handle.offsets().await.unwrap();
    sleep_until(origin + 1000 * SEC + 900 * MS).await;

    let mut distinct: Vec<Duration> = offsets.values().copied().collect();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        3,
        "three monitors, three phases: {offsets:?}"
    );
    for n in 1..=3u16 {
        let offset = offsets[&format!("m{n}")];
        let starts = exec.starts_of(n);
        assert_eq!(starts.len(), 1001, "m{n}: runs at 0..=1000 s");
        for (k, t) in starts.iter().enumerate() {
            assert_eq!(*t, origin + offset + SEC * k as u32, "m{n} run {k} drifted");
        }
    }
    let results = results.lock().unwrap().clone();
    assert!(results.len() >= 3000);
    for r in results.iter() {
        assert_eq!(r.lateness, Duration::ZERO);
        let due = r.scheduled_at.duration_since(origin_wall).unwrap();
        let offset = offsets[&r.monitor_id];
        assert_eq!(
            (due - offset).as_nanos() % SEC.as_nanos(),
            0,
            "{} scheduled off its grid",
            r.monitor_id
        );
    }
    handle.shutdown(SEC).await;
}

#[tokio::test(start_paused = true)]
async fn never_more_than_max_in_flight_and_everyone_gets_a_turn() {
    // 100 monitors due within 2 s (50 per second) against 5 slots of 1 s
    // checks (5 per second): without the bound about 50 would run at once.
    let exec = Recorder::new(SEC);
    let (handle, results) = start(monitors(100, 2 * SEC), &exec, 5);
    let (origin, _) = handle.origin();
    sleep_until(origin + 25 * SEC).await;

    assert_eq!(
        exec.max_in_flight.load(Ordering::SeqCst),
        5,
        "the bound must be reached and never passed"
    );
    let ran: std::collections::HashSet<u16> = exec.starts().iter().map(|(n, _)| *n).collect();
    assert_eq!(ran.len(), 100, "every monitor ran at least once");
    let stats = handle.stats();
    assert!(
        stats.skipped_overlap > 0,
        "monitors due while queued are skipped: {stats:?}"
    );
    assert!(
        stats.lateness.max >= 15 * SEC,
        "waiting for a permit counts as lateness: {stats:?}"
    );
    assert!(
        results
            .lock()
            .unwrap()
            .iter()
            .any(|r| r.lateness > Duration::ZERO)
    );
    handle.shutdown(SEC).await;
}

#[tokio::test(start_paused = true)]
async fn a_check_slower_than_its_interval_is_not_started_twice() {
    let exec = Recorder::new(2500 * MS);
    let (handle, results) = start(monitors(1, SEC), &exec, 10);
    let (origin, _) = handle.origin();
    sleep_until(origin + 9500 * MS).await;

    let starts: Vec<Duration> = exec.starts_of(1).iter().map(|t| *t - origin).collect();
    assert_eq!(
        starts,
        [0, 3, 6, 9].map(|s| s * SEC),
        "runs only on slots where the previous one had finished"
    );
    assert_eq!(exec.max_in_flight.load(Ordering::SeqCst), 1);
    let stats = handle.stats();
    assert_eq!(
        stats.skipped_overlap, 6,
        "slots at 1, 2, 4, 5, 7, 8 s skipped: {stats:?}"
    );
    assert_eq!(results.lock().unwrap().len(), 3);
    handle.shutdown(SEC).await;
}

#[tokio::test(start_paused = true)]
async fn a_stalled_loop_runs_once_late_then_returns_to_its_grid() {
    let exec = Recorder::new(Duration::ZERO);
    let (handle, _results) = start(monitors(1, SEC), &exec, 10);
    let (origin, _) = handle.origin();
    sleep_until(origin + 500 * MS).await;
    // Jumps the clock 5 s at once, as a blocked runtime would: every timer is late.
    tokio::time::advance(5 * SEC).await;
    sleep_until(origin + 7500 * MS).await;

    let starts: Vec<Duration> = exec.starts_of(1).iter().map(|t| *t - origin).collect();
    assert_eq!(
        starts,
        [0, 5500, 6000, 7000].map(|ms| ms * MS),
        "one late run, no burst of catch-up runs"
    );
    let stats = handle.stats();
    assert_eq!(
        stats.missed, 4,
        "slots at 2, 3, 4 and 5 s passed over: {stats:?}"
    );
    assert_eq!(stats.lateness.max, 4500 * MS);
    handle.shutdown(SEC).await;
}

#[tokio::test(start_paused = true)]
async fn live_updates_take_effect_and_unrelated_monitors_keep_their_phase() {
    let exec = Recorder::new(100 * MS);
    // m1 and m2 at 10 s; m7 alone at 7 s, the bystander.
    let (handle, _results) = start(
        vec![
            monitor(1, 10 * SEC),
            monitor(2, 10 * SEC),
            monitor(7, 7 * SEC),
        ],
        &exec,
        10,
    );
    let (origin, _) = handle.origin();
    let offset7 = handle.offsets().await.unwrap()["m7"];
    sleep_until(origin + 20 * SEC + 500 * MS).await;

    // Remove m2, add m3; m1 and m7 stay.
    let update1 = Instant::now();
    let summary = handle
        .update(vec![
            monitor(1, 10 * SEC),
            monitor(3, 10 * SEC),
            monitor(7, 7 * SEC),
        ])
        .await
        .unwrap();
    assert_eq!((summary.added, summary.removed), (1, 1), "{summary:?}");
    assert_eq!(handle.stats().monitors, 3);
    sleep_until(origin + 40 * SEC + 500 * MS).await;

    // Change m1's interval to 5 s.
    let update2 = Instant::now();
    let summary = handle
        .update(vec![
            monitor(1, 5 * SEC),
            monitor(3, 10 * SEC),
            monitor(7, 7 * SEC),
        ])
        .await
        .unwrap();
    // m1 moves; m3, now alone in the 10 s group, may move to offset 0 too.
    assert!(
        summary.added == 0 && summary.removed == 0 && summary.rescheduled >= 1,
        "{summary:?}"
    );
    sleep_until(origin + 70 * SEC + 500 * MS).await;

    let m2 = exec.starts_of(2);
    assert!(
        !m2.is_empty() && m2.iter().all(|t| *t < update1),
        "m2 ran before and never after its removal: {m2:?}"
    );
    let m3 = exec.starts_of(3);
    assert!(
        m3.len() >= 4 && m3[0] >= update1 && m3[0] < update1 + 10 * SEC,
        "m3 started after being added: {m3:?}"
    );
    let m1 = exec.starts_of(1);
    let after: Vec<&Instant> = m1.iter().filter(|t| **t >= update2).collect();
    assert!(
        after.len() >= 5,
        "m1 runs every 5 s after the change: {m1:?}"
    );
    assert!(
        after.windows(2).all(|w| *w[1] - *w[0] == 5 * SEC),
        "m1 after the change: {after:?}"
    );
    assert!(
        m1.windows(2).all(|w| w[1] - w[0] >= 5 * SEC),
        "a phase change never runs m1 twice in a row: {m1:?}"
    );
    // The bystander ran on its original grid the whole time, without a gap.
    let m7 = exec.starts_of(7);
    assert_eq!(
        m7.len(),
        11,
        "m7 alone in its group, offset 0: 0, 7, ..., 70 s: {m7:?}"
    );
    for (k, t) in m7.iter().enumerate() {
        assert_eq!(
            *t,
            origin + offset7 + 7 * SEC * k as u32,
            "m7 run {k} lost its phase"
        );
    }
    handle.shutdown(SEC).await;
}

/// `monitor(n, interval)` with another timeout: the same check, changed.
fn changed(n: u16, interval: Duration) -> Monitor {
    let mut m = monitor(n, interval);
    let mut spec = (*m.spec).clone();
    spec.timeout = 2 * SEC;
    m.spec = Arc::new(spec);
    m
}

#[tokio::test(start_paused = true)]
async fn a_new_monitor_runs_at_once_then_on_its_grid_never_twice_back_to_back() {
    let interval = 60 * SEC;
    let exec = Recorder::new(10 * MS);
    let (handle, _results) = start(monitors(10, interval), &exec, 10);
    let (origin, _) = handle.origin();
    // Offsets depend only on the set: where m11 will sit once it is added.
    let mut with_m11 = monitors(10, interval);
    with_m11.push(monitor(11, interval));
    let offset = assign_offsets(&with_m11)["m11"];

    // Case 1: its phase slot is far (more than half an interval) away: it
    // runs now and at that slot. Case 2 (m12, below): the slot is near, so
    // the slot is skipped and the one after is its second run.
    let far = origin + interval + offset - 40 * SEC;
    let far = if far > origin { far } else { far + interval };
    sleep_until(far).await;
    let summary = handle.update(with_m11.clone()).await.unwrap();
    assert_eq!((summary.added, summary.run_now), (1, 1), "{summary:?}");
    sleep_until(far + 5 * interval).await;
    let starts = exec.starts_of(11);
    assert_eq!(starts[0], far, "the first check runs at once: {starts:?}");
    let grid: Vec<Instant> = starts[1..].to_vec();
    assert!(!grid.is_empty());
    for t in &grid {
        let since = *t - (origin + offset);
        assert_eq!(
            since.as_millis() % interval.as_millis(),
            0,
            "then on its phase grid: {starts:?}"
        );
    }
    assert_eq!(starts[1] - starts[0], 40 * SEC, "the far slot is kept");
    assert!(grid.windows(2).all(|w| w[1] - w[0] == interval));

    let mut with_m12 = with_m11.clone();
    with_m12.push(monitor(12, interval));
    let offset12 = assign_offsets(&with_m12)["m12"];
    // The next m12 slot 10 s after the update: within half an interval.
    let slot = first_due_after(origin, offset12, interval, Instant::now() + 20 * SEC);
    let near = slot - 10 * SEC;
    sleep_until(near).await;
    handle.update(with_m12).await.unwrap();
    sleep_until(near + 3 * interval).await;
    let starts = exec.starts_of(12);
    assert_eq!(starts[0], near, "{starts:?}");
    assert_eq!(
        starts[1],
        slot + interval,
        "the slot 10 s after the immediate run is skipped: {starts:?}"
    );
    for w in exec.starts_of(11).windows(2).chain(starts.windows(2)) {
        assert!(w[1] - w[0] >= interval / 2, "twice back to back: {w:?}");
    }
    // The others were never disturbed beyond the rank shift of their group.
    assert_eq!(handle.stats().skipped_overlap, 0);
    handle.shutdown(SEC).await;
}

/// The first `origin + offset + k * interval` strictly after `t`.
fn first_due_after(origin: Instant, offset: Duration, interval: Duration, t: Instant) -> Instant {
    let mut at = origin + offset;
    while at <= t {
        at += interval;
    }
    at
}

#[tokio::test(start_paused = true)]
async fn a_changed_spec_runs_at_once_an_unchanged_one_keeps_its_slot() {
    let interval = 30 * SEC;
    let exec = Recorder::new(10 * MS);
    let (handle, _results) = start(monitors(3, interval), &exec, 10);
    let (origin, _) = handle.origin();
    let offsets = handle.offsets().await.unwrap();
    sleep_until(origin + 45 * SEC).await;
    let before = exec.starts().len();

    // The same set again, built anew (new Arcs, equal specs): nothing runs.
    let summary = handle.update(monitors(3, interval)).await.unwrap();
    assert_eq!((summary.kept, summary.run_now), (3, 0), "{summary:?}");
    sleep(MS).await;
    assert_eq!(
        exec.starts().len(),
        before,
        "an unchanged spec waits for its slot"
    );

    // m2's timeout changes: m2 runs now, m1 and m3 do not.
    let changed_at = Instant::now();
    let summary = handle
        .update(vec![
            monitor(1, interval),
            changed(2, interval),
            monitor(3, interval),
        ])
        .await
        .unwrap();
    assert_eq!((summary.kept, summary.run_now), (3, 1), "{summary:?}");
    sleep_until(origin + 150 * SEC).await;
    let m2 = exec.starts_of(2);
    assert!(m2.contains(&changed_at), "m2 ran at the change: {m2:?}");
    for n in [1u16, 3] {
        let offset = offsets[&format!("m{n}")];
        for (k, t) in exec.starts_of(n).iter().enumerate() {
            assert_eq!(*t, origin + offset + interval * k as u32, "m{n} disturbed");
        }
    }
    for w in m2.windows(2) {
        assert!(w[1] - w[0] >= interval / 2, "m2 twice back to back: {m2:?}");
    }

    // FirstRun::AtPhase: the change is used from the next slot on, no extra run.
    let runs = exec.starts_of(1).len();
    let at = Instant::now();
    handle
        .update_with(
            vec![
                changed(1, interval),
                changed(2, interval),
                monitor(3, interval),
            ],
            FirstRun::AtPhase,
        )
        .await
        .unwrap();
    sleep(MS).await;
    assert_eq!(exec.starts_of(1).len(), runs);
    assert!(exec.starts_of(1).iter().all(|t| *t < at));
    handle.shutdown(SEC).await;
}

#[tokio::test(start_paused = true)]
async fn a_changed_spec_still_in_flight_skips_the_immediate_run() {
    let exec = Recorder::new(5 * SEC);
    let (handle, results) = start(monitors(1, 20 * SEC), &exec, 10);
    let (origin, _) = handle.origin();
    sleep_until(origin + SEC).await;
    assert_eq!(handle.stats().in_flight, 1);
    handle.update(vec![changed(1, 20 * SEC)]).await.unwrap();
    sleep_until(origin + 19 * SEC).await;
    assert_eq!(
        exec.starts_of(1),
        vec![origin],
        "no overlap with the old run"
    );
    assert_eq!(handle.stats().skipped_overlap, 1);
    sleep_until(origin + 21 * SEC).await;
    assert_eq!(exec.starts_of(1), vec![origin, origin + 20 * SEC]);
    assert_eq!(results.lock().unwrap().len(), 1);
    handle.shutdown(10 * SEC).await;
}

#[tokio::test(start_paused = true)]
async fn ten_thousand_monitors_arriving_at_once_keep_their_phases() {
    // An agent starting: the scheduler is spawned empty and its first set
    // (restored or the collector's first assignment) comes at phase.
    let interval = 60 * SEC;
    let exec = Recorder::new(Duration::ZERO);
    let (handle, _results) = start(Vec::new(), &exec, 256);
    let (origin, _) = handle.origin();
    sleep_until(origin + 2 * SEC).await;
    let set = monitors(10_000, interval);
    let offsets: HashMap<String, Duration> = assign_offsets(&set)
        .into_iter()
        .map(|(id, o)| (id.to_owned(), o))
        .collect();
    let at = Instant::now();
    let summary = handle.update_with(set, FirstRun::AtPhase).await.unwrap();
    assert_eq!((summary.added, summary.run_now), (10_000, 0), "{summary:?}");
    sleep_until(at + SEC).await;
    let first_second = exec.starts().len();
    assert!(
        first_second <= 10_000 / 60 + 1,
        "{first_second} checks in the first second: a burst"
    );
    sleep_until(at + interval).await;
    let starts = exec.starts();
    assert_eq!(starts.len(), 10_000, "each once in its first interval");
    for (n, t) in starts {
        let offset = offsets[&format!("m{n}")];
        let since = t - (origin + offset);
        assert_eq!(
            since.as_nanos() % interval.as_nanos(),
            0,
            "m{n} off its phase"
        );
    }
    handle.shutdown(SEC).await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_starts_nothing_new_and_delivers_the_runs_in_flight() {
    // 10 monitors 100 ms apart, 3 slots, 2 s checks: at 1.55 s m1-m3 run, the rest wait.
    let exec = Recorder::new(2 * SEC);
    let (handle, results) = start(monitors(10, SEC), &exec, 3);
    let (origin, _) = handle.origin();
    sleep_until(origin + 1550 * MS).await;
    assert_eq!(handle.stats().in_flight, 3);
    assert_eq!(handle.stats().queued, 7);

    let asked = Instant::now();
    let report = handle.shutdown(10 * SEC).await;
    let took = Instant::now() - asked;
    assert_eq!(
        report,
        ShutdownReport {
            drained: 3,
            cancelled: 7,
            abandoned: 0
        }
    );
    assert!(
        took < SEC,
        "returns when the runs in flight are done, not after the grace: {took:?}"
    );
    let starts = exec.starts();
    assert_eq!(starts.len(), 3, "{starts:?}");
    assert!(
        starts.iter().all(|(_, t)| *t < asked),
        "nothing starts after shutdown"
    );
    // The collector has had its chance to drain the channel by now.
    sleep(MS).await;
    let results = results.lock().unwrap();
    assert_eq!(results.len(), 3, "every run in flight delivered its result");
}

#[tokio::test(start_paused = true)]
async fn shutdown_gives_up_on_checks_after_the_grace_period() {
    let exec = Recorder::new(60 * SEC);
    let (handle, results) = start(monitors(1, 10 * SEC), &exec, 3);
    sleep(SEC).await;
    let asked = Instant::now();
    let report = handle.shutdown(2 * SEC).await;
    assert_eq!(
        report,
        ShutdownReport {
            drained: 0,
            cancelled: 0,
            abandoned: 1
        }
    );
    assert_eq!(Instant::now() - asked, 2 * SEC);
    assert_eq!(
        exec.in_flight.load(Ordering::SeqCst),
        0,
        "the aborted check was dropped"
    );
    sleep(MS).await;
    assert!(results.lock().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn bad_monitor_sets_are_refused() {
    let exec = Recorder::new(Duration::ZERO);
    let (tx, _rx) = mpsc::channel(1);
    let err = Scheduler::spawn(
        vec![monitor(1, SEC), monitor(1, SEC)],
        exec.clone(),
        1,
        tx.clone(),
    )
    .err();
    assert_eq!(err, Some(ScheduleError::DuplicateId { id: "m1".into() }));
    let err = Scheduler::spawn(
        vec![monitor(1, Duration::ZERO)],
        exec.clone(),
        1,
        tx.clone(),
    )
    .err();
    assert_eq!(err, Some(ScheduleError::BadInterval { id: "m1".into() }));
    assert!(matches!(
        Scheduler::spawn(vec![], exec.clone(), 0, tx.clone()),
        Err(ScheduleError::BadConcurrency { got: 0, .. })
    ));
    let handle = Scheduler::spawn(vec![monitor(1, SEC)], exec, 1, tx).unwrap();
    let err = handle
        .update(vec![monitor(2, 500 * MICRO), monitor(3, SEC)])
        .await
        .err();
    assert_eq!(err, Some(ScheduleError::BadInterval { id: "m2".into() }));
    assert_eq!(
        handle.stats().monitors,
        1,
        "a refused update changes nothing"
    );
    handle.shutdown(SEC).await;
}

const MICRO: Duration = Duration::from_micros(1);

#[tokio::test(start_paused = true)]
async fn the_scheduler_stops_when_nobody_reads_results() {
    let exec = Recorder::new(Duration::ZERO);
    let (tx, rx) = mpsc::channel(16);
    let handle = Scheduler::spawn(monitors(5, SEC), exec.clone(), 5, tx).unwrap();
    sleep(2 * SEC).await;
    drop(rx);
    sleep(MS).await;
    assert_eq!(
        handle.update(monitors(5, SEC)).await,
        Err(ScheduleError::Stopped)
    );
    let before = exec.starts().len();
    sleep(5 * SEC).await;
    assert_eq!(exec.starts().len(), before, "no checks without a consumer");
}

/// Real clock, real engine, real socket: the pieces fit together.
#[tokio::test]
async fn real_engine_against_a_local_listener() {
    use crate::probe::Engine;
    use crate::resolve::Resolver;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    let acceptor = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    // The targets are IP literals: this resolver is never asked anything.
    let resolver = Resolver::with_nameserver("127.0.0.1:53".parse().unwrap(), SEC).unwrap();
    let engine = Arc::new(Engine::with_resolver(resolver));
    let interval = 200 * MS;
    let set: Vec<Monitor> = (0..5)
        .map(|i| {
            let mut spec = CheckSpec::new(format!("tcp://127.0.0.1:{port}").parse().unwrap());
            spec.timeout = SEC;
            Monitor {
                id: format!("local-{i}"),
                interval,
                spec: Arc::new(spec),
            }
        })
        .collect();
    let (tx, mut rx) = mpsc::channel(256);
    let handle = Scheduler::spawn(set, engine, 8, tx).unwrap();
    let (_, origin_wall) = handle.origin();
    let offsets = handle.offsets().await.unwrap();

    let mut results = Vec::new();
    let until = Instant::now() + SEC;
    while let Ok(Some(r)) = tokio::time::timeout_at(until, rx.recv()).await {
        results.push(r);
    }
    let report = handle.shutdown(2 * SEC).await;
    while let Some(r) = rx.recv().await {
        results.push(r);
    }
    acceptor.abort();

    assert_eq!(report.abandoned, 0);
    assert!(
        results.len() >= 20,
        "5 monitors x ~5 runs in 1 s, got {}",
        results.len()
    );
    let mut by_monitor: HashMap<&str, Vec<&ScheduledResult>> = HashMap::new();
    for r in &results {
        assert_eq!(
            (r.result.status, r.result.reason),
            (Status::Up, Reason::Ok),
            "{:?}",
            r.result
        );
        assert_eq!(
            r.result.address,
            Some(format!("127.0.0.1:{port}").parse().unwrap())
        );
        // Sane: the machine may be busy, but a check never waits anywhere near an interval.
        assert!(
            r.lateness < 100 * MS,
            "{} started {:?} late",
            r.monitor_id,
            r.lateness
        );
        assert!(r.started_at >= r.scheduled_at);
        by_monitor.entry(&r.monitor_id).or_default().push(r);
    }
    assert_eq!(by_monitor.len(), 5);
    for (id, rs) in &by_monitor {
        // The first run is on the first slot of its phase, even for phase 0
        // on a real clock (the set is applied as of the origin).
        assert_eq!(
            rs[0].scheduled_at,
            origin_wall + offsets[*id],
            "{id}'s first run is not its first slot"
        );
        // Due times come from the monotonic grid: consecutive ones are exactly one interval apart.
        for w in rs.windows(2) {
            assert_eq!(
                w[1].scheduled_at.duration_since(w[0].scheduled_at).unwrap(),
                interval,
                "{id}"
            );
        }
    }
    assert!(
        accepted.load(Ordering::SeqCst) >= 1,
        "the listener saw the checks"
    );
}
