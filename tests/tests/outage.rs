//! Outages between the site and headquarters, end to end: the agent's link
//! cut inside the site (iptables DROP towards the collector), the collector
//! killed (kill -9), the agent itself killed while it holds a backlog, or
//! restarted while the collector is down (it resumes its saved assignment). A
//! service fails and recovers while nobody can hear about it. Each test
//! asserts what the user relies on: every check that was buffered arrives
//! once, stamped with the time it ran; the incident lands where it happened
//! and is paged once each way; while the agent is away its monitors are
//! unknown, never down, and ONE agent offline incident says so.
//!
//! See `portwatch_e2e::lab` for the topology; no packet leaves the lab's
//! namespaces.

use std::path::Path;
use std::time::{Duration, Instant};

use portwatch_agent::buffer::{DEFAULT_MAX_BYTES, ResultBuffer, SledBuffer};
use portwatch_e2e::lab::{AGENT_LOC, Lab, SITE_ADDR, now_ms};
use portwatch_harness as h;
use portwatch_proto::v1 as pb;
use prost::Message;
use serde_json::Value;

/// Checks run every second: consecutive check times further apart than this
/// are a hole in the series.
const MAX_STEP_MS: i64 = 2500;
/// A restarted agent resumes its saved assignment: its first check comes
/// within the process's start (opening the buffer, ~0.1-0.5 s) plus one
/// interval (1 s), with slack for a loaded machine.
const RESUMED_WITHIN_MS: i64 = 3000;

/// Redis on the site, checked by the agent every second.
fn redis_monitor() -> String {
    format!(
        r#"
[[monitors]]
name = "redis"
target = "tcp://{SITE_ADDR}:6379"
preset = "redis"
interval = "1s"
timeout = "500ms"
locations = ["site=lab"]
"#
    )
}

/// One stored check of the series, as the collector has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Check {
    seq: u64,
    at_ms: i64,
    up: bool,
}

/// The agent's Redis results, oldest first.
fn series(lab: &Lab) -> Vec<Check> {
    lab.results("redis", Some(AGENT_LOC))
        .iter()
        .map(|r| Check {
            seq: r["seq"].as_u64().unwrap_or_else(|| panic!("no seq: {r}")),
            at_ms: r["scheduled_at_unix_ms"]
                .as_i64()
                .unwrap_or_else(|| panic!("no scheduled_at_unix_ms: {r}")),
            up: r["status"] == "up",
        })
        .collect()
}

/// Waits until the collector holds a result the agent checked at or after
/// `after_ms`. The agent sends its buffer in order, so by then everything it
/// checked before is stored too: its backlog has drained.
fn wait_drained(lab: &Lab, after_ms: i64, within: Duration) -> Vec<Check> {
    h::wait_for(within, || {
        let s = series(lab);
        s.last().is_some_and(|c| c.at_ms >= after_ms).then_some(s)
    })
    .unwrap_or_else(|| {
        panic!(
            "no redis result checked after {after_ms} reached the collector within {within:?} \
             (the backlog did not drain); newest: {:?}\n{}",
            series(lab).last(),
            lab.logs()
        )
    })
}

/// The holes (consecutive check times more than [`MAX_STEP_MS`] apart) of a
/// series, as (last check before, first check after), after asserting that
/// it is one agent's series with nothing twice: seqs 1, 2, 3... in check-time
/// order (only this monitor is assigned, so every buffered check takes the
/// next seq) and no check time twice.
fn holes(s: &[Check], logs: &str) -> Vec<(i64, i64)> {
    for (i, c) in s.iter().enumerate() {
        assert_eq!(
            c.seq,
            i as u64 + 1,
            "stored seqs are not 1, 2, 3... in check-time order (lost or duplicated) at index {i}: \
             {:?}\n{logs}",
            &s[i.saturating_sub(3)..(i + 3).min(s.len())]
        );
    }
    for w in s.windows(2) {
        assert!(
            w[1].at_ms > w[0].at_ms,
            "one check time twice or out of order: {w:?}\n{logs}"
        );
    }
    s.windows(2)
        .filter(|w| w[1].at_ms - w[0].at_ms > MAX_STEP_MS)
        .map(|w| (w[0].at_ms, w[1].at_ms))
        .collect()
}

/// The first stored check failing at or after `from_ms - 1000` and the first
/// good one after it: the outage as the series shows it.
fn outage_in(s: &[Check], from_ms: i64) -> Option<(i64, i64)> {
    let first_down = s.iter().position(|c| !c.up && c.at_ms >= from_ms - 1000)?;
    let first_up = s[first_down..].iter().find(|c| c.up)?;
    Some((s[first_down].at_ms, first_up.at_ms))
}

/// The Redis incident that began near `killed_ms`, once it is resolved.
fn wait_resolved_incident(lab: &Lab, killed_ms: i64, within: Duration) -> Value {
    h::wait_for(within, || {
        lab.incidents(Some("redis")).into_iter().find(|i| {
            i["kind"] == "down"
                && i["resolved_ms"].is_i64()
                && i["since_ms"]
                    .as_i64()
                    .is_some_and(|s| (s - killed_ms).abs() <= 5000)
        })
    })
    .unwrap_or_else(|| {
        panic!(
            "no resolved redis incident near the kill at {killed_ms} within {within:?}: {:?}\n{}",
            lab.incidents(Some("redis")),
            lab.logs()
        )
    })
}

/// Asserts the incident sits on the real outage: it began within ~2.5 s of
/// the kill and ended within ~2.5 s of the restart (checks run every
/// second), exactly where the stored checks fail and succeed again, from the
/// backlog, with the reason the checks saw.
fn assert_where_it_happened(
    incident: &Value,
    s: &[Check],
    killed_ms: i64,
    (restarting_ms, back_ms): (i64, i64),
    logs: &str,
) {
    let since = incident["since_ms"].as_i64().expect("since_ms");
    let resolved = incident["resolved_ms"].as_i64().expect("resolved_ms");
    assert!(
        (killed_ms - 1000..=killed_ms + MAX_STEP_MS).contains(&since),
        "since {since} vs Redis killed at {killed_ms}: {incident}\n{logs}"
    );
    assert!(
        (restarting_ms - 1000..=back_ms + MAX_STEP_MS).contains(&resolved),
        "resolved {resolved} vs Redis restarted at {restarting_ms}..{back_ms}: {incident}\n{logs}"
    );
    let seen = outage_in(s, killed_ms).unwrap_or_else(|| {
        panic!("the stored series shows no outage after {killed_ms}: {s:?}\n{logs}")
    });
    assert_eq!(
        (since, resolved),
        seen,
        "the incident is not where the stored checks fail: {incident}\n{logs}"
    );
    assert_eq!(incident["backfilled"], true, "{incident}");
    assert_eq!(incident["reason"], "refused", "{incident}");
}

/// The webhook's events about `monitor` for the incident `id`, in order.
fn events_of(lab: &Lab, monitor: &str, id: &Value) -> Vec<String> {
    lab.hooks
        .about(monitor)
        .iter()
        .filter(|m| m["incident_id"] == *id)
        .map(|m| m["event"].as_str().unwrap_or("?").to_owned())
        .collect()
}

/// Waits until the incident `id` of `monitor` was sent opened and resolved.
fn wait_paged_both_ways(lab: &Lab, monitor: &str, id: &Value, within: Duration) {
    assert!(
        h::poll_until(within, || events_of(lab, monitor, id).len() >= 2),
        "incident {id} of {monitor} was not sent opened and resolved within {within:?}: {:?}\n{}",
        lab.hooks.about(monitor),
        lab.logs()
    );
}

/// The agent_offline incidents, newest first.
fn offline_incidents(lab: &Lab) -> Vec<Value> {
    lab.incidents(None)
        .into_iter()
        .filter(|i| i["kind"] == "agent_offline")
        .collect()
}

/// (seq, check time) of every result in the agent's on-disk buffer. Only
/// while no agent runs: sled locks its files.
fn buffered(agent_dir: &Path) -> Vec<(u64, i64)> {
    let b = SledBuffer::open(&agent_dir.join("buffer"), DEFAULT_MAX_BYTES)
        .expect("open the agent's buffer");
    b.read_after(0, usize::MAX)
        .expect("read the agent's buffer")
        .iter()
        .map(|r| {
            let result = pb::CheckResult::decode(&*r.payload).expect("a buffered CheckResult");
            (r.seq, result.scheduled_at_unix_ms)
        })
        .collect()
}

/// Scenario 6. A 60 s cut of the site's uplink with a Redis outage entirely
/// inside it, then a collector kill -9 with a second outage while it is
/// down. During the cut the collector shows Redis unknown, never down, and
/// opens ONE agent offline incident; after the heal (and after the restart)
/// the backlog drains with every check once at its own time, each outage
/// becomes a backfilled incident where it happened, paged once each way.
#[test]
fn a_cut_link_and_a_killed_collector_lose_nothing_and_put_outages_where_they_happened() {
    let begun = Instant::now();
    let mut lab = Lab::new(&format!(
        "agent_offline_after = \"20s\"\n{}",
        redis_monitor()
    ));
    let mut redis = lab.redis();
    lab.enroll();
    lab.start_agent();
    lab.wait_state("redis", "up", Duration::from_secs(30));
    let first = wait_drained(&lab, now_ms(), Duration::from_secs(10));
    assert!(first.iter().all(|c| c.up), "{first:?}");

    // --- The uplink cut for 60 s.
    lab.cut_link();
    let cut = Instant::now();
    let cut_ms = now_ms();
    // Real time passes: a few healthy checks go into the buffer first.
    std::thread::sleep(Duration::from_secs(3));
    redis.kill();
    let killed_ms = now_ms();
    // The outage lasts 8 s of real time.
    std::thread::sleep(Duration::from_secs(8));
    let restarting_ms = now_ms();
    let mut redis = lab.redis();
    let back_ms = now_ms();

    // The collector has heard nothing since the cut: after the staleness
    // (2 intervals + 15 s) Redis is unknown there, and never down.
    let mut seen = Vec::new();
    let unknown = h::poll_until(Duration::from_secs(30), || {
        let s = lab.location_state("redis", AGENT_LOC);
        let done = s.as_deref() == Some("unknown");
        seen.push(s);
        done
    });
    assert!(
        unknown,
        "redis at {AGENT_LOC} did not become unknown during the cut: {:?}\n{}",
        lab.monitor("redis"),
        lab.logs()
    );
    let unknown_after = cut.elapsed();
    assert!(
        !seen.iter().any(|s| s.as_deref() == Some("down")),
        "redis was shown down during the cut: {seen:?}"
    );
    // ONE agent offline incident, listed ~20 s into the cut: the collector
    // notices the silent stream (~15 s) before agent_offline_after is up.
    let offline = h::wait_for(
        Duration::from_secs(27).saturating_sub(cut.elapsed()),
        || offline_incidents(&lab).into_iter().next(),
    )
    .unwrap_or_else(|| {
        panic!(
            "no agent_offline incident {:?} into the cut: {:?}\n{}",
            cut.elapsed(),
            lab.incidents(None),
            lab.logs()
        )
    });
    let offline_after = cut.elapsed();
    assert_eq!(offline["monitor"], AGENT_LOC, "{offline}");
    assert!(offline["resolved_ms"].is_null(), "{offline}");
    let opened = offline["opened_ms"].as_i64().expect("opened_ms");
    assert!(
        (cut_ms + 19_000..=cut_ms + 23_000).contains(&opened),
        "agent_offline_after is 20 s: opened at {opened}, cut at {cut_ms}: {offline}"
    );
    // The rest of the 60 s: still unknown, never down, still one incident.
    while cut.elapsed() < Duration::from_secs(60) {
        let m = lab.monitor("redis").expect("the redis monitor");
        let state = lab.location_state("redis", AGENT_LOC);
        assert_eq!(state.as_deref(), Some("unknown"), "during the cut: {m}");
        assert_ne!(m["state"], "down", "during the cut: {m}");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(
        offline_incidents(&lab).len(),
        1,
        "{:?}",
        lab.incidents(None)
    );
    lab.heal_link();
    let heal_ms = now_ms();
    let cut_for = cut.elapsed();

    // The backlog drains: every check, once, at the time it ran.
    let s = wait_drained(&lab, heal_ms, Duration::from_secs(60));
    let drained_after = Duration::from_millis((now_ms() - heal_ms) as u64);
    let logs = lab.logs();
    assert_eq!(holes(&s, &logs), vec![], "a hole in the series: {s:?}");
    assert!(s[0].at_ms < cut_ms, "{s:?}");
    let during = s
        .iter()
        .filter(|c| (cut_ms..heal_ms).contains(&c.at_ms))
        .count();
    assert!(
        during >= 55,
        "{during} checks stored from a 60 s cut (1 s interval): {s:?}"
    );
    let first_incident = wait_resolved_incident(&lab, killed_ms, Duration::from_secs(20));
    assert_where_it_happened(
        &first_incident,
        &s,
        killed_ms,
        (restarting_ms, back_ms),
        &logs,
    );
    let first_id = first_incident["id"].clone();
    wait_paged_both_ways(&lab, "redis", &first_id, Duration::from_secs(15));
    // Resolved, and its "back online" notification delivered AND recorded:
    // a collector killed between sending and recording sends it again after
    // the restart (at least once), which is not what this step is about.
    let offline = h::wait_for(Duration::from_secs(20), || {
        offline_incidents(&lab).into_iter().find(|i| {
            i["resolved_ms"].is_i64()
                && i["deliveries"].as_array().is_some_and(|d| {
                    d.iter()
                        .any(|d| d["phase"] == "resolved" && d["state"] == "delivered")
                })
        })
    })
    .unwrap_or_else(|| {
        panic!(
            "the agent_offline incident was not resolved and its resolution delivered after the heal: {:?}\n{}",
            offline_incidents(&lab),
            lab.logs()
        )
    });
    let back_online = offline["resolved_ms"].as_i64().expect("resolved_ms");
    assert!(
        back_online >= heal_ms - 1000,
        "resolved at {back_online}, before the heal at {heal_ms}: {offline}"
    );

    // --- The collector killed (kill -9) while Redis fails and recovers.
    let before = series(&lab).len();
    lab.kill_collector();
    // Real time passes in each step: the collector is gone for ~9 s, the
    // outage lasts 5 s of it.
    std::thread::sleep(Duration::from_secs(1));
    redis.kill();
    let killed2_ms = now_ms();
    std::thread::sleep(Duration::from_secs(5));
    let restarting2_ms = now_ms();
    let _redis = lab.redis();
    let back2_ms = now_ms();
    std::thread::sleep(Duration::from_secs(2));
    lab.start_collector();
    let started_ms = now_ms();
    let s = wait_drained(&lab, started_ms, Duration::from_secs(60));
    let logs = lab.logs();
    assert_eq!(holes(&s, &logs), vec![], "a hole in the series: {s:?}");
    assert!(s.len() > before + 8, "{before} then {}: {s:?}", s.len());
    let second = wait_resolved_incident(&lab, killed2_ms, Duration::from_secs(20));
    assert_ne!(second["id"], first_id);
    assert_where_it_happened(&second, &s, killed2_ms, (restarting2_ms, back2_ms), &logs);
    wait_paged_both_ways(&lab, "redis", &second["id"], Duration::from_secs(15));

    // Once each way per incident, nothing else about Redis, and the
    // collector's short absence raised no agent offline incident.
    let downs: Vec<Value> = lab
        .incidents(Some("redis"))
        .into_iter()
        .filter(|i| i["kind"] == "down")
        .collect();
    assert_eq!(downs.len(), 2, "{downs:?}");
    for id in [&first_id, &second["id"]] {
        assert_eq!(
            events_of(&lab, "redis", id),
            vec!["opened", "resolved"],
            "incident {id}: {:?}",
            lab.hooks.about("redis")
        );
    }
    assert_eq!(
        lab.hooks.about("redis").len(),
        4,
        "{:?}",
        lab.hooks.about("redis")
    );
    let offline = offline_incidents(&lab);
    assert_eq!(offline.len(), 1, "{offline:?}");
    assert_eq!(
        lab.hooks
            .about(AGENT_LOC)
            .iter()
            .map(|m| m["event"].as_str().unwrap_or("?").to_owned())
            .collect::<Vec<_>>(),
        vec!["opened", "resolved"],
        "{:?}",
        lab.hooks.about(AGENT_LOC)
    );
    lab.assert_running();
    eprintln!(
        "cut for {cut_for:?}: unknown after {unknown_after:?}, agent_offline listed after \
         {offline_after:?}, drained {drained_after:?} after the heal; test took {:?}",
        begun.elapsed()
    );
}

/// Scenario 7. The agent killed (kill -9) while the uplink is cut and ~10 s
/// of checks wait in its buffer, restarted still cut, then the link healed:
/// every check the buffer held at the kill reaches the collector with its
/// seq and check time, nothing twice, and the only hole in the series is
/// the agent's own absence.
#[test]
fn an_agent_killed_during_a_backlog_loses_nothing_it_buffered_and_duplicates_nothing() {
    let begun = Instant::now();
    let mut lab = Lab::new(&redis_monitor());
    let _redis = lab.redis();
    lab.enroll();
    lab.start_agent();
    lab.wait_state("redis", "up", Duration::from_secs(30));
    wait_drained(&lab, now_ms(), Duration::from_secs(10));

    lab.cut_link();
    let cut_ms = now_ms();
    // Real time passes: ~10 checks pile up in the agent's buffer.
    std::thread::sleep(Duration::from_secs(10));
    lab.kill_agent();
    let killed_ms = now_ms();
    // What the dead agent left on disk: at least every check since the cut.
    let left = buffered(&lab.agent_dir());
    let since_cut: Vec<i64> = left
        .iter()
        .map(|&(_, at)| at)
        .filter(|&at| at >= cut_ms)
        .collect();
    assert!(
        since_cut.len() >= 8,
        "{} checks buffered in the 10 s cut: {left:?}\n{}",
        since_cut.len(),
        lab.logs()
    );
    assert!(
        left.windows(2).all(|w| w[1].0 == w[0].0 + 1),
        "the buffer's seqs have holes: {left:?}"
    );
    let &(last_seq, last_at) = left.last().expect("a buffered check");
    assert!(
        last_at >= killed_ms - MAX_STEP_MS,
        "the newest buffered check ran at {last_at}, the kill was at {killed_ms}: {left:?}"
    );

    lab.start_agent();
    let restarted_ms = now_ms();
    // Real time passes: the restarted agent runs 5 s with the link still cut.
    std::thread::sleep(Duration::from_secs(5));
    lab.heal_link();
    let heal_ms = now_ms();

    let s = wait_drained(&lab, heal_ms, Duration::from_secs(60));
    let drained_after = Duration::from_millis((now_ms() - heal_ms) as u64);
    let logs = lab.logs();
    for &(seq, at) in &left {
        assert!(
            s.iter().any(|c| c.seq == seq && c.at_ms == at),
            "buffered check seq {seq} at {at} never reached the collector: {s:?}\n{logs}"
        );
    }
    // At most one hole, from the newest check the dead agent had buffered
    // to the restarted agent's first, which it ran at once from its saved
    // assignment with the link still cut (not after the heal): a quick
    // restart leaves no hole at all.
    let hs = holes(&s, &logs);
    assert!(
        hs.len() <= 1 && hs.iter().all(|&(before, _)| before == last_at),
        "holes {hs:?} other than the restart's in {s:?}\n{logs}"
    );
    let resumed = s
        .iter()
        .find(|c| c.at_ms > last_at)
        .expect("the first check after the restart");
    let (before, after) = (last_at, resumed.at_ms);
    assert!(
        after > restarted_ms && after <= restarted_ms + RESUMED_WITHIN_MS,
        "the restarted agent's first check ran at {after}: restarted at {restarted_ms}, healed \
         at {heal_ms}: {s:?}\n{logs}"
    );
    assert_eq!(resumed.seq, last_seq + 1, "{s:?}");
    assert!(s.iter().all(|c| c.up), "Redis stayed up: {s:?}");
    lab.assert_running();
    eprintln!(
        "last check before and first after {:?} (kill at +0, restart at +{} ms, heal at +{} ms); \
         drained {drained_after:?} after the heal; test took {:?}",
        (before - killed_ms, after - killed_ms),
        restarted_ms - killed_ms,
        heal_ms - killed_ms,
        begun.elapsed()
    );
}

/// Scenario 8. The collector killed (kill -9), then, while it is still down,
/// the agent killed and restarted (2 s apart): the restarted agent resumes
/// its saved assignment at once and buffers checks while it cannot reach
/// the collector; once the collector is back, the stored series has no gap
/// beyond the restart itself (about the restart's duration plus one
/// interval; it used to run nothing until it had reached the collector).
#[test]
fn an_agent_restarted_while_the_collector_is_down_leaves_no_gap_beyond_its_restart() {
    let begun = Instant::now();
    let mut lab = Lab::new(&redis_monitor());
    let _redis = lab.redis();
    lab.enroll();
    lab.start_agent();
    lab.wait_state("redis", "up", Duration::from_secs(30));
    wait_drained(&lab, now_ms(), Duration::from_secs(10));

    lab.kill_collector();
    let collector_killed_ms = now_ms();
    // Real time passes in each step: the agent buffers ~3 checks, is down
    // for 2 s, then runs 8 s more before the collector comes back.
    std::thread::sleep(Duration::from_secs(3));
    lab.kill_agent();
    let killed_ms = now_ms();
    let left = buffered(&lab.agent_dir());
    let &(_, last_before) = left.last().expect("checks buffered before the kill");
    std::thread::sleep(Duration::from_secs(2));
    lab.start_agent();
    let restarted_ms = now_ms();
    std::thread::sleep(Duration::from_secs(8));
    lab.start_collector();
    let collector_back_ms = now_ms();

    let s = wait_drained(&lab, collector_back_ms, Duration::from_secs(60));
    let logs = lab.logs();
    // Seqs 1, 2, 3... in check-time order: nothing lost, nothing twice.
    let hs = holes(&s, &logs);
    let after: Vec<&Check> = s.iter().filter(|c| c.at_ms > last_before).collect();
    let resumed = after.first().expect("checks after the restart");
    assert!(
        resumed.at_ms > restarted_ms && resumed.at_ms <= restarted_ms + RESUMED_WITHIN_MS,
        "the restarted agent's first check ran at {} ms, restarted at {restarted_ms} \
         (collector back at {collector_back_ms}): {s:?}\n{logs}",
        resumed.at_ms
    );
    // It kept checking while the collector was down: every second from the
    // restart to the collector's return, stored from its buffer.
    let offline = after.iter().filter(|c| c.at_ms < collector_back_ms).count();
    assert!(
        offline >= 6,
        "{offline} checks between the restart at {restarted_ms} and the collector's return at \
         {collector_back_ms}: {s:?}\n{logs}"
    );
    let largest = s
        .windows(2)
        .filter(|w| w[0].at_ms >= collector_killed_ms - 2000)
        .map(|w| w[1].at_ms - w[0].at_ms)
        .max()
        .expect("a series");
    let restart_gap = restarted_ms - last_before;
    assert!(
        largest <= restart_gap + RESUMED_WITHIN_MS,
        "the largest gap is {largest} ms; the restart took {restart_gap} ms (last check before \
         the kill at {last_before}, killed at {killed_ms}, restarted at {restarted_ms}): {hs:?} \
         in {s:?}\n{logs}"
    );
    assert!(s.iter().all(|c| c.up), "Redis stayed up: {s:?}");
    lab.assert_running();
    eprintln!(
        "largest gap {largest} ms (restart {restart_gap} ms from the last check before the kill, \
         first check {} ms after the restart); {offline} checks while the collector was down; \
         test took {:?}",
        resumed.at_ms - restarted_ms,
        begun.elapsed()
    );
}
