//! The store against real redb files in temp dirs, on fixed times.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::time::{Duration, Instant};

use rand::Rng;

use super::*;

/// 2026-11-20 00:00:00 UTC.
fn t0() -> i64 {
    parse_day_name("20261120").unwrap() * DAY_MS
}

fn open(dir: &Path) -> RedbStore {
    RedbStore::open(dir, StoreConfig::default()).unwrap()
}

fn result(
    monitor: &str,
    ts: i64,
    status: pb::Status,
    phases: Option<pb::Phases>,
) -> pb::CheckResult {
    pb::CheckResult {
        monitor_id: monitor.into(),
        scheduled_at_unix_ms: ts,
        started_at_unix_ms: ts,
        status: status as i32,
        message: format!("at {ts}"),
        phases,
        ..Default::default()
    }
}

fn sample(monitor: &str, location: &str, seq: u64, ts: i64) -> Sample {
    Sample {
        monitor_id: monitor.into(),
        location: location.into(),
        seq,
        result: result(
            monitor,
            ts,
            pb::Status::Up,
            Some(pb::Phases {
                connect_us: Some(100),
                total_us: 120,
                ..Default::default()
            }),
        ),
    }
}

fn seqs(v: &[StoredResult]) -> Vec<u64> {
    v.iter().map(|r| r.seq).collect()
}

const A: &str = "agent:a";
const B: &str = "agent:b";

#[test]
fn day_names_round_trip() {
    assert_eq!(day_name(0), "19700101");
    assert_eq!(day_name(day_of(t0())), "20261120");
    assert_eq!(day_name(day_of(t0() - 1)), "20261119");
    for day in [-1000, 0, 59, 60, 365, 10_957, 20_000, 40_000] {
        assert_eq!(parse_day_name(&day_name(day)), Some(day), "{day}");
    }
    assert_eq!(
        parse_day_name("20240229").map(day_name).as_deref(),
        Some("20240229")
    );
    assert_eq!(parse_day_name("20260229"), None);
    assert_eq!(parse_day_name("2026112"), None);
    assert_eq!(parse_day_name("2026x120"), None);
}

#[test]
fn a_resent_seq_is_stored_once_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let now = t0() + 3_600_000;
    {
        let s = open(dir.path());
        let out = s
            .ingest(
                "a",
                0,
                now,
                &[sample("m1", A, 1, t0()), sample("m2", A, 2, t0() + 1)],
                &[],
            )
            .unwrap();
        assert_eq!((out.stored, out.duplicates), (2, 0));
        // Resent after a lost ack, with one new result.
        let out = s
            .ingest(
                "a",
                0,
                now,
                &[sample("m2", A, 2, t0() + 1), sample("m1", A, 3, t0() + 2)],
                &[],
            )
            .unwrap();
        assert_eq!((out.stored, out.duplicates), (1, 1));
        // The same seq from another source is another result.
        let out = s
            .ingest("b", 0, now, &[sample("m1", B, 1, t0())], &[])
            .unwrap();
        assert_eq!(out.stored, 1);
    }
    let s = open(dir.path());
    assert_eq!(s.count_results().unwrap(), 4);
    let out = s
        .ingest(
            "a",
            0,
            now,
            &[sample("m1", A, 3, t0() + 2), sample("m1", A, 1, t0())],
            &[],
        )
        .unwrap();
    assert_eq!(
        (out.stored, out.duplicates),
        (0, 2),
        "the watermark survived the reopen"
    );
    assert_eq!(s.watermark("a").unwrap(), Some((0, 3)));
    assert_eq!(
        seqs(&s.results(&ResultQuery::monitor("m1").location(A)).unwrap()),
        [1, 3]
    );
    assert_eq!(seqs(&s.results(&ResultQuery::monitor("m2")).unwrap()), [2]);
    let m1 = s.results(&ResultQuery::monitor("m1")).unwrap();
    assert_eq!(
        m1.iter()
            .map(|r| (r.location.as_str(), r.seq))
            .collect::<Vec<_>>(),
        [(A, 1), (B, 1), (A, 3)]
    );
    // The monitor id comes back although the stored value omits it.
    assert!(
        m1.iter()
            .all(|r| r.result.monitor_id == "m1" && r.monitor_id == "m1")
    );
    assert_eq!(m1[2].result, sample("m1", A, 3, t0() + 2).result);
}

#[test]
fn a_non_increasing_seq_inside_a_batch_is_a_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let out = s
        .ingest(
            "a",
            0,
            t0(),
            &[
                sample("m1", A, 5, t0()),
                sample("m1", A, 5, t0() + 1),
                sample("m1", A, 4, t0() + 2),
                sample("m1", A, 6, t0() + 3),
            ],
            &[],
        )
        .unwrap();
    assert_eq!((out.stored, out.duplicates), (2, 2));
    assert_eq!(
        seqs(&s.results(&ResultQuery::monitor("m1")).unwrap()),
        [5, 6]
    );
}

#[test]
fn a_new_epoch_resets_the_watermark_and_an_old_one_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.ingest(
        "a",
        0,
        t0(),
        &[sample("m1", A, 1, t0()), sample("m1", A, 2, t0() + 1)],
        &[],
    )
    .unwrap();
    // The agent lost its buffer and numbers from 1 again.
    let out = s
        .ingest(
            "a",
            1,
            t0(),
            &[sample("m1", A, 1, t0() + 10), sample("m1", A, 2, t0() + 11)],
            &[],
        )
        .unwrap();
    assert_eq!((out.stored, out.duplicates), (2, 0));
    assert_eq!(s.watermark("a").unwrap(), Some((1, 2)));
    // A late batch of the old epoch changes nothing.
    let out = s
        .ingest("a", 0, t0(), &[sample("m1", A, 3, t0() + 2)], &[])
        .unwrap();
    assert_eq!((out.stored, out.duplicates), (0, 1));
    assert_eq!(s.watermark("a").unwrap(), Some((1, 2)));
    assert_eq!(s.count_results().unwrap(), 4);
}

#[test]
fn gaps_are_kept_per_source_and_an_extended_gap_replaces_its_start() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let gap = SourceGap {
        location: A.into(),
        from_seq: 5,
        to_seq: 9,
        count: 5,
        from_ts_ms: Some(t0()),
        to_ts_ms: None,
    };
    assert_eq!(
        s.ingest("a", 0, t0(), &[], std::slice::from_ref(&gap))
            .unwrap()
            .gaps,
        1
    );
    assert_eq!(
        s.ingest("a", 0, t0(), &[], std::slice::from_ref(&gap))
            .unwrap()
            .gaps,
        0
    );
    let extended = SourceGap {
        to_seq: 12,
        count: 8,
        to_ts_ms: Some(t0() + 5),
        ..gap.clone()
    };
    assert_eq!(
        s.ingest("a", 0, t0(), &[], std::slice::from_ref(&extended))
            .unwrap()
            .gaps,
        1
    );
    // An older, shorter report of the same gap does not shrink it.
    assert_eq!(
        s.ingest("a", 0, t0(), &[], std::slice::from_ref(&gap))
            .unwrap()
            .gaps,
        0
    );
    let later = SourceGap {
        from_seq: 20,
        to_seq: 20,
        count: 1,
        ..gap.clone()
    };
    s.ingest("a", 0, t0(), &[], std::slice::from_ref(&later))
        .unwrap();
    assert_eq!(
        s.gaps("a").unwrap(),
        [
            StoredGap {
                epoch: 0,
                gap: extended
            },
            StoredGap {
                epoch: 0,
                gap: later
            }
        ]
    );
    assert!(s.gaps("b").unwrap().is_empty());
    // A source whose id is a prefix of another's sees only its own.
    assert!(s.gaps("").unwrap().is_empty());
}

#[test]
fn a_batch_that_fails_midway_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    // The third sample's monitor id cannot be a key: the error comes after
    // the first two were inserted into the open transaction.
    let too_long = "m".repeat(70_000);
    let batch = [
        sample("m1", A, 1, t0()),
        sample("m1", A, 2, t0() + 1),
        sample(&too_long, A, 3, t0() + 2),
    ];
    let gap = SourceGap {
        location: A.into(),
        from_seq: 10,
        to_seq: 11,
        count: 2,
        from_ts_ms: None,
        to_ts_ms: None,
    };
    let err = s
        .ingest("a", 0, t0(), &batch, std::slice::from_ref(&gap))
        .unwrap_err();
    assert!(matches!(err, StoreError::KeyTooLong { .. }), "{err}");
    assert_eq!(s.count_results().unwrap(), 0);
    assert_eq!(s.watermark("a").unwrap(), None);
    assert!(s.latest("m1").unwrap().is_empty());
    assert_eq!(s.stats().unwrap().dirty, 0);
    // Resent without the bad one: stored, not taken for duplicates.
    let out = s.ingest("a", 0, t0(), &batch[..2], &[gap]).unwrap();
    assert_eq!((out.stored, out.duplicates, out.gaps), (2, 0, 1));
}

/// Three days of one result per hour at two locations, seq = hour index.
fn three_days(s: &RedbStore) -> i64 {
    let now = t0() + 3 * DAY_MS;
    for (src, loc, offset) in [("a", A, 0), ("b", B, 1)] {
        let batch: Vec<Sample> = (0..72)
            .map(|h| sample("m1", loc, h + 1, t0() + h as i64 * 3_600_000 + offset))
            .collect();
        s.ingest(src, 0, now, &batch, &[]).unwrap();
    }
    // Another monitor whose id shares a prefix, to catch sloppy ranges.
    s.ingest("a", 0, now, &[sample("m10", A, 100, t0())], &[])
        .unwrap();
    now
}

#[test]
fn queries_by_monitor_location_range_and_limit_in_both_orders() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    three_days(&s);
    assert_eq!(s.stats().unwrap().raw.len(), 3);
    let h = |n: i64| t0() + n * 3_600_000;

    let all_a = s.results(&ResultQuery::monitor("m1").location(A)).unwrap();
    assert_eq!(seqs(&all_a), (1..=72).collect::<Vec<_>>());
    // [from, to) across a day boundary.
    let q = ResultQuery::monitor("m1").location(A).range(h(22), h(26));
    assert_eq!(seqs(&s.results(&q).unwrap()), [23, 24, 25, 26]);
    assert_eq!(
        seqs(&s.results(&q.clone().newest_first()).unwrap()),
        [26, 25, 24, 23]
    );
    assert_eq!(seqs(&s.results(&q.clone().limit(3)).unwrap()), [23, 24, 25]);
    assert_eq!(
        seqs(&s.results(&q.clone().newest_first().limit(3)).unwrap()),
        [26, 25, 24]
    );
    // The bound is exclusive at the end, inclusive at the start.
    let q = ResultQuery::monitor("m1")
        .location(B)
        .range(h(1) + 1, h(3) + 1);
    assert_eq!(seqs(&s.results(&q).unwrap()), [2, 3]);
    // Both locations, merged by time.
    let q = ResultQuery::monitor("m1").range(h(23), h(25));
    let both: Vec<(String, u64)> = s
        .results(&q)
        .unwrap()
        .into_iter()
        .map(|r| (r.location, r.seq))
        .collect();
    assert_eq!(
        both,
        [
            (A.into(), 24),
            (B.into(), 24),
            (A.into(), 25),
            (B.into(), 25)
        ]
    );
    let newest: Vec<(String, u64)> = s
        .results(&ResultQuery::monitor("m1").newest_first().limit(3))
        .unwrap()
        .into_iter()
        .map(|r| (r.location, r.seq))
        .collect();
    assert_eq!(newest, [(B.into(), 72), (A.into(), 72), (B.into(), 71)]);
    assert_eq!(
        seqs(&s.results(&ResultQuery::monitor("m10")).unwrap()),
        [100]
    );
    assert!(s.results(&ResultQuery::monitor("m")).unwrap().is_empty());
    assert!(
        s.results(&ResultQuery::monitor("m1").range(h(5), h(5)))
            .unwrap()
            .is_empty()
    );
    assert_eq!(s.locations_of("m1").unwrap(), [A, B]);
    assert_eq!(s.locations_of("m10").unwrap(), [A]);
}

#[test]
fn latest_keeps_the_newest_result_per_location() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let now = t0() + DAY_MS;
    s.ingest(
        "a",
        0,
        now,
        &[sample("m1", A, 1, t0() + 10), sample("m1", A, 2, t0() + 20)],
        &[],
    )
    .unwrap();
    s.ingest("b", 0, now, &[sample("m1", B, 1, t0() + 15)], &[])
        .unwrap();
    // A late result from an earlier time (a replayed backlog after a newer
    // one arrived by another path) does not replace the newer.
    s.ingest("a", 0, now, &[sample("m1", A, 3, t0() + 5)], &[])
        .unwrap();
    let latest = s.latest("m1").unwrap();
    let got: Vec<(&str, i64)> = latest
        .iter()
        .map(|(l, r)| (l.as_str(), r.scheduled_at_unix_ms))
        .collect();
    assert_eq!(got, [(A, t0() + 20), (B, t0() + 15)]);
    assert_eq!(latest[0].1.monitor_id, "m1");
    s.ingest("a", 0, now, &[sample("m2", A, 4, t0())], &[])
        .unwrap();
    let all: Vec<(String, String)> = s
        .latest_all()
        .unwrap()
        .into_iter()
        .map(|(m, l, _)| (m, l))
        .collect();
    assert_eq!(
        all,
        [
            ("m1".into(), A.into()),
            ("m1".into(), B.into()),
            ("m2".into(), A.into())
        ]
    );
    assert!(s.latest("m3").unwrap().is_empty());
}

fn phases(
    dns: Option<u64>,
    connect: Option<u64>,
    tls: Option<u64>,
    total: u64,
) -> Option<pb::Phases> {
    Some(pb::Phases {
        dns_us: dns,
        connect_us: connect,
        tls_us: tls,
        first_byte_us: None,
        total_us: total,
    })
}

#[test]
fn a_rollup_has_exact_counts_and_phase_statistics() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let minute = t0() + 10 * MINUTE_MS;
    // 20 samples in the minute: connect 1..=20 ms except two without a
    // connect phase (sample 3 failed before connecting; 7 has no phases).
    let mut batch = Vec::new();
    for i in 1..=20u64 {
        let status = match i {
            3 | 9 => pb::Status::Down,
            4 => pb::Status::Degraded,
            _ => pb::Status::Up,
        };
        let ph = match i {
            3 => phases(Some(50), None, None, 60),
            7 => None,
            _ => phases(
                None,
                Some(i * 1000),
                (i % 2 == 0).then_some(i * 10),
                i * 1000 + 5,
            ),
        };
        let mut r = sample("m1", A, i, minute + i as i64 * 2000);
        r.result = result("m1", minute + i as i64 * 2000, status, ph);
        batch.push(r);
    }
    // Neighbouring minutes stay out of this one.
    batch.push(sample("m1", A, 21, minute + MINUTE_MS));
    s.ingest("a", 0, minute + 5 * MINUTE_MS, &batch[..20], &[])
        .unwrap();
    s.ingest("a", 0, minute + 5 * MINUTE_MS, &batch[20..], &[])
        .unwrap();
    let mut before = sample("m1", A, 1, minute - 1);
    before.location = B.into();
    s.ingest("b", 0, minute + 5 * MINUTE_MS, &[before], &[])
        .unwrap();

    let out = s.roll_up(minute + 2 * MINUTE_MS).unwrap();
    assert_eq!((out.recomputed, out.cleared), (3, 3));
    let rollups = s
        .rollups(&RollupQuery {
            monitor_id: "m1".into(),
            location: A.into(),
            from_ms: minute,
            to_ms: minute + MINUTE_MS,
        })
        .unwrap();
    assert_eq!(rollups.len(), 1);
    let r = rollups[0];
    assert_eq!(r.minute_start_ms, minute);
    assert_eq!((r.checks, r.failures, r.degraded), (20, 2, 1));
    // connect: 18 values {1,2,4,5,6,8,...,20} ms. Nearest-rank p95 of 18 is
    // rank ceil(17.1) = 18: the largest.
    let connect = r.phase(Phase::Connect);
    let values: Vec<u64> = (1..=20)
        .filter(|i| *i != 3 && *i != 7)
        .map(|i| i * 1000)
        .collect();
    assert_eq!(connect.count, 18);
    assert_eq!(connect.min_us, 1000);
    assert_eq!(connect.max_us, 20_000);
    assert_eq!(connect.sum_us, values.iter().sum::<u64>());
    assert_eq!(
        connect.avg_us(),
        Some(values.iter().sum::<u64>() as f64 / 18.0)
    );
    assert_eq!(connect.p95_us, 20_000);
    // total: 19 samples (all but #7); rank ceil(18.05) = 19: the largest.
    let total = r.phase(Phase::Total);
    assert_eq!((total.count, total.min_us, total.max_us), (19, 60, 20_005));
    // tls only on even samples (10 of them, 20..200 x 10): rank ceil(9.5) = 10.
    let tls = r.phase(Phase::Tls);
    assert_eq!(
        (tls.count, tls.min_us, tls.p95_us, tls.max_us),
        (10, 20, 200, 200)
    );
    // dns only on #3.
    let dns = r.phase(Phase::Dns);
    assert_eq!(
        (dns.count, dns.min_us, dns.p95_us, dns.max_us, dns.sum_us),
        (1, 50, 50, 50, 50)
    );
    assert_eq!(r.phase(Phase::FirstByte), &PhaseStats::default());
    assert_eq!(r.phase(Phase::FirstByte).avg_us(), None);
}

#[test]
fn nearest_rank_p95() {
    let p = |v: &[u64]| PhaseStats::of(&mut v.to_vec()).p95_us;
    assert_eq!(p(&[7]), 7);
    // 100 values 1..=100: rank 95.
    assert_eq!(p(&(1..=100).rev().collect::<Vec<_>>()), 95);
    // 21 values: rank ceil(19.95) = 20.
    assert_eq!(p(&(1..=21).collect::<Vec<_>>()), 20);
    // 40 values: rank 38.
    assert_eq!(p(&(1..=40).collect::<Vec<_>>()), 38);
}

#[test]
fn a_late_sample_re_dirties_and_recomputes_an_old_minute() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let minute = t0();
    let q = RollupQuery {
        monitor_id: "m1".into(),
        location: A.into(),
        from_ms: minute,
        to_ms: minute + MINUTE_MS,
    };
    s.ingest("a", 0, minute + 10, &[sample("m1", A, 1, minute + 1)], &[])
        .unwrap();
    // While the minute is still running.
    let out = s.roll_up(minute + 20).unwrap();
    assert_eq!((out.recomputed, out.cleared), (1, 1));
    assert_eq!(s.rollups(&q).unwrap()[0].checks, 1);
    assert_eq!(
        s.roll_up(minute + 30).unwrap(),
        RollupOutcome::default(),
        "nothing new"
    );
    s.ingest("a", 0, minute + 40, &[sample("m1", A, 2, minute + 2)], &[])
        .unwrap();
    assert_eq!(
        s.roll_up(minute + 50).unwrap(),
        RollupOutcome {
            recomputed: 1,
            cleared: 1
        }
    );
    assert_eq!(s.rollups(&q).unwrap()[0].checks, 2);
    assert_eq!(s.stats().unwrap().dirty, 0);

    // An hour later a replayed backlog brings one more result for that minute.
    let hour = minute + 3_600_000;
    s.ingest("b", 0, hour, &[sample("m1", A, 1, minute + 30_000)], &[])
        .unwrap();
    assert_eq!(s.stats().unwrap().dirty, 1);
    assert_eq!(
        s.roll_up(hour).unwrap(),
        RollupOutcome {
            recomputed: 1,
            cleared: 1
        }
    );
    let r = s.rollups(&q).unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].checks, 3);
}

#[test]
fn roll_up_works_through_more_dirty_minutes_than_one_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    // 5,000 monitors, one result each in the same minute.
    let batch: Vec<Sample> = (0..5000)
        .map(|i| sample(&format!("m{i}"), A, i + 1, t0() + 1))
        .collect();
    s.ingest("a", 0, t0(), &batch, &[]).unwrap();
    let out = s.roll_up(t0() + MINUTE_MS).unwrap();
    assert_eq!((out.recomputed, out.cleared), (5000, 5000));
    assert_eq!(s.stats().unwrap().rollups[0].rows, 5000);
    assert_eq!(
        s.roll_up(t0() + MINUTE_MS).unwrap(),
        RollupOutcome::default()
    );
}

#[test]
fn retention_drops_raw_days_after_7_days_and_rollups_after_90() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    // One result per day for 100 days, rolled up as they come.
    for d in 0..100i64 {
        let ts = t0() + d * DAY_MS + 3_600_000;
        s.ingest("a", 0, ts, &[sample("m1", A, d as u64 + 1, ts)], &[])
            .unwrap();
        s.roll_up(ts + DAY_MS / 2).unwrap();
    }
    let stats = s.stats().unwrap();
    assert_eq!((stats.raw.len(), stats.rollups.len()), (100, 100));
    // Now: day 99, 12:00. Raw keeps days 92..=99 (day 92 still holds results
    // younger than 7 x 24 h), rollups days 9..=99.
    let now = t0() + 99 * DAY_MS + DAY_MS / 2;
    let out = s.retain(now).unwrap();
    assert_eq!(out.raw_days.len(), 92);
    assert_eq!(out.raw_results, 92);
    assert_eq!(out.rollup_days.len(), 9);
    assert_eq!(out.raw_days[0], day_name(day_of(t0())));
    let stats = s.stats().unwrap();
    assert_eq!(stats.raw.first().unwrap().day, day_name(day_of(t0()) + 92));
    assert_eq!(stats.raw.len(), 8);
    assert_eq!(
        stats.rollups.first().unwrap().day,
        day_name(day_of(t0()) + 9)
    );
    assert_eq!(stats.rollups.len(), 91);
    assert_eq!(s.count_results().unwrap(), 8);
    let kept = s.results(&ResultQuery::monitor("m1")).unwrap();
    assert_eq!(seqs(&kept), (93..=100).collect::<Vec<_>>());
    let rollups = s
        .rollups(&RollupQuery {
            monitor_id: "m1".into(),
            location: A.into(),
            from_ms: i64::MIN,
            to_ms: i64::MAX,
        })
        .unwrap();
    assert_eq!(rollups.len(), 91);
    assert_eq!(rollups[0].minute_start_ms, t0() + 9 * DAY_MS + 3_600_000);
    let days = s
        .summaries(&SummaryQuery {
            monitor_id: "m1".into(),
            location: A.into(),
            from_ms: i64::MIN / 2,
            to_ms: i64::MAX / 2,
            bucket: Bucket::Day,
        })
        .unwrap();
    assert_eq!(days.len(), 91, "summaries are retained like rollups");
    assert_eq!(days[0].start_ms, t0() + 9 * DAY_MS);
    // Nothing more to drop an hour later.
    let again = s.retain(now + 3_600_000).unwrap();
    assert!(again.raw_days.is_empty() && again.rollup_days.is_empty());
}

#[test]
fn a_dirty_minute_whose_raw_day_was_dropped_is_cleared_without_a_rollup() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.ingest("a", 0, t0(), &[sample("m1", A, 1, t0() + 1)], &[])
        .unwrap();
    let out = s.retain(t0() + 9 * DAY_MS).unwrap();
    assert_eq!(out.raw_results, 1);
    assert_eq!(
        s.roll_up(t0() + 9 * DAY_MS).unwrap(),
        RollupOutcome {
            recomputed: 0,
            cleared: 1
        }
    );
    assert!(s.stats().unwrap().rollups.is_empty());
}

#[test]
fn results_older_than_retention_are_acked_as_expired_and_future_ones_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let now = t0() + 30 * DAY_MS;
    let cutoff = now - ms(DEFAULT_RAW_RETENTION);
    let out = s
        .ingest(
            "a",
            0,
            now,
            &[
                sample("m1", A, 1, cutoff - 1),
                sample("m1", A, 2, cutoff),
                sample("m1", A, 3, now + 2 * DAY_MS),
                sample("m1", A, 4, now),
            ],
            &[],
        )
        .unwrap();
    assert_eq!(
        out,
        BatchOutcome {
            stored: 2,
            duplicates: 0,
            expired: 1,
            rejected: 1,
            gaps: 0
        }
    );
    // Handled seqs are behind the watermark even when not stored.
    assert_eq!(s.watermark("a").unwrap(), Some((0, 4)));
    assert_eq!(
        seqs(&s.results(&ResultQuery::monitor("m1")).unwrap()),
        [2, 4]
    );
    // The expired result created no partition retention would drop at once.
    assert_eq!(s.stats().unwrap().raw.len(), 2);
}

#[test]
fn events_are_appended_and_queried_by_time_and_kind() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path());
        for (i, kind) in ["incident", "audit", "incident", "audit"]
            .iter()
            .enumerate()
        {
            let id = s
                .append_event(&Event {
                    ts_ms: t0() + i as i64 * 1000,
                    kind: (*kind).into(),
                    subject: format!("m{i}"),
                    body: format!("{{\"n\":{i}}}"),
                })
                .unwrap();
            assert_eq!(id, i as u64 + 1);
        }
        // Same timestamp as an earlier one: both kept, in append order.
        s.append_event(&Event {
            ts_ms: t0(),
            kind: "audit".into(),
            subject: "x".into(),
            body: "{}".into(),
        })
        .unwrap();
    }
    let s = open(dir.path());
    let q = |from: i64, to: i64, kind: Option<&str>, limit: usize| {
        s.events(&EventQuery {
            from_ms: from,
            to_ms: to,
            kind: kind.map(str::to_owned),
            limit,
        })
        .unwrap()
        .into_iter()
        .map(|(id, e)| (id, e.subject))
        .collect::<Vec<_>>()
    };
    let all = q(i64::MIN, i64::MAX, None, 100);
    assert_eq!(
        all,
        [
            (1, "m0".into()),
            (5, "x".into()),
            (2, "m1".into()),
            (3, "m2".into()),
            (4, "m3".into())
        ]
    );
    assert_eq!(
        q(t0() + 1000, t0() + 3000, None, 100),
        [(2, "m1".into()), (3, "m2".into())]
    );
    assert_eq!(
        q(i64::MIN, i64::MAX, Some("incident"), 100),
        [(1, "m0".into()), (3, "m2".into())]
    );
    assert_eq!(
        q(i64::MIN, i64::MAX, Some("audit"), 2),
        [(5, "x".into()), (2, "m1".into())]
    );
    let next = s
        .append_event(&Event {
            ts_ms: t0(),
            kind: "audit".into(),
            subject: "y".into(),
            body: "{}".into(),
        })
        .unwrap();
    assert_eq!(next, 6, "ids continue after a reopen");
    let (_, e) = &s
        .events(&EventQuery {
            from_ms: t0() + 3000,
            to_ms: t0() + 3001,
            kind: None,
            limit: 1,
        })
        .unwrap()[0];
    assert_eq!(e.body, "{\"n\":3}");
}

/// The writer side of the crash test: ingests batches of 50 until killed
/// (bounded), printing each batch number once `ingest` has returned.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var("PW_STORE_CRASH_DIR") else {
        return;
    };
    let s = open(Path::new(&dir));
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut k = 0u64;
    while Instant::now() < deadline {
        let batch: Vec<Sample> = (0..50)
            .map(|i| {
                let seq = k * 50 + i + 1;
                sample(&format!("m{}", seq % 7), A, seq, t0() + seq as i64)
            })
            .collect();
        s.ingest("a", 0, t0(), &batch, &[]).unwrap();
        println!("acked {k}");
        k += 1;
    }
}

#[test]
fn kill_dash_nine_after_ingest_returned_loses_no_acked_batch() {
    let mut rng = rand::rng();
    for iteration in 0..8 {
        let dir = tempfile::tempdir().unwrap();
        let mut child = portwatch_harness::spawn_test_child(
            "store::tests::crash_child",
            "PW_STORE_CRASH_DIR",
            dir.path(),
        );
        let stdout = child.stdout.take().unwrap();
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut acked: Option<u64> = None;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(k) = line.strip_prefix("acked ") {
                    if acked.is_none() {
                        let _ = started_tx.send(());
                    }
                    acked = Some(k.parse().unwrap());
                }
            }
            acked
        });
        started_rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("iteration {iteration}: the writer never got going"));
        // Kill at a random point once the writer is under way.
        std::thread::sleep(Duration::from_millis(rng.random_range(5..300)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let acked = reader.join().unwrap().expect("at least one batch acked");

        let s = open(dir.path());
        let through = (acked + 1) * 50;
        let stored = s.count_results().unwrap();
        assert!(
            stored >= through,
            "iteration {iteration}: batches 0..={acked} were acked ({through} results) but {stored} survived"
        );
        // Whole batches only: a batch is one transaction.
        assert_eq!(stored % 50, 0, "iteration {iteration}: a torn batch");
        let (_, high) = s.watermark("a").unwrap().unwrap();
        assert_eq!(high, stored, "iteration {iteration}");
        let mut all: Vec<u64> = (0..7)
            .flat_map(|m| s.results(&ResultQuery::monitor(&format!("m{m}"))).unwrap())
            .map(|r| r.seq)
            .collect();
        all.sort_unstable();
        assert_eq!(
            all,
            (1..=stored).collect::<Vec<_>>(),
            "iteration {iteration}"
        );
    }
}

/// Hourly summaries equal the sum of their minutes through late arrivals
/// and recomputations; daily ones fold whole hours.
#[test]
fn summaries_follow_every_recomputed_minute() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let phases = |c: u64| {
        Some(pb::Phases {
            connect_us: Some(c),
            total_us: c + 10,
            ..Default::default()
        })
    };
    let at = |seq: u64, ts: i64, status: pb::Status, c: u64| Sample {
        monitor_id: "m1".into(),
        location: A.into(),
        seq,
        result: result("m1", ts, status, phases(c)),
    };
    // 10:00-10:02 and 11:30: four up, one down, one degraded.
    let h10 = t0() + 10 * HOUR_MS;
    let batch = [
        at(1, h10 + 1_000, pb::Status::Up, 100),
        at(2, h10 + 30_000, pb::Status::Up, 300),
        at(3, h10 + MINUTE_MS + 5, pb::Status::Down, 0),
        at(4, h10 + 2 * MINUTE_MS, pb::Status::Degraded, 900),
        at(5, h10 + 90 * MINUTE_MS, pb::Status::Up, 200),
    ];
    s.ingest("a", 0, h10 + 2 * HOUR_MS, &batch, &[]).unwrap();
    s.roll_up(h10 + 2 * HOUR_MS).unwrap();
    let q = |bucket| SummaryQuery {
        monitor_id: "m1".into(),
        location: A.into(),
        from_ms: t0(),
        to_ms: t0() + DAY_MS,
        bucket,
    };
    let hours = s.summaries(&q(Bucket::Hour)).unwrap();
    assert_eq!(
        hours
            .iter()
            .map(|h| (h.start_ms, h.checks, h.failures, h.degraded))
            .collect::<Vec<_>>(),
        [(h10, 4, 1, 1), (h10 + HOUR_MS, 1, 0, 0)]
    );
    assert_eq!(
        hours[0].avg_us(Phase::Connect),
        Some(325.0),
        "(100+300+0+900)/4"
    );
    assert_eq!(hours[0].availability(), Some(0.75));

    // A replayed result lands in the first minute again: the minute is
    // recomputed and the hour changes by the difference only.
    s.ingest(
        "b",
        0,
        h10 + 3 * HOUR_MS,
        &[at(1, h10 + 50_000, pb::Status::Down, 0)],
        &[],
    )
    .unwrap();
    s.roll_up(h10 + 3 * HOUR_MS).unwrap();
    s.roll_up(h10 + 3 * HOUR_MS).unwrap();
    let hours = s.summaries(&q(Bucket::Hour)).unwrap();
    assert_eq!((hours[0].checks, hours[0].failures), (5, 2));
    assert_eq!(hours[0].phase_count[Phase::Connect as usize], 5);
    assert_eq!(hours[0].phase_sum_us[Phase::Connect as usize], 1300);

    let days = s.summaries(&q(Bucket::Day)).unwrap();
    assert_eq!(days.len(), 1);
    assert_eq!(
        (days[0].start_ms, days[0].checks, days[0].failures),
        (t0(), 6, 2)
    );
    // A range starting mid-day leaves the partial day out rather than
    // report it as a whole one.
    let mut mid = q(Bucket::Day);
    mid.from_ms = h10 + 1;
    assert!(s.summaries(&mid).unwrap().is_empty());
    let mut mid = q(Bucket::Hour);
    mid.from_ms = h10 + 1;
    assert_eq!(
        s.summaries(&mid).unwrap().len(),
        1,
        "only 11:00 starts inside"
    );
}

/// What [`summaries_excluding`] must give, worked out the slow way: every
/// minute rollup of the range, the touched minutes dropped, folded by bucket.
fn by_minutes(s: &RedbStore, q: &SummaryQuery, excluded: &[(i64, i64)]) -> Vec<(i64, u64, u64)> {
    let all = s
        .rollups(&RollupQuery {
            monitor_id: q.monitor_id.clone(),
            location: q.location.clone(),
            from_ms: q.from_ms,
            to_ms: q.to_ms,
        })
        .unwrap();
    let mut out: Vec<(i64, u64, u64)> = Vec::new();
    for r in all {
        let m = r.minute_start_ms;
        if excluded.iter().any(|(a, b)| *a < m + MINUTE_MS && m < *b) {
            continue;
        }
        let start = q.bucket.start_of(m);
        match out.last_mut() {
            Some(last) if last.0 == start => {
                last.1 += u64::from(r.checks);
                last.2 += u64::from(r.failures);
            }
            _ => out.push((start, u64::from(r.checks), u64::from(r.failures))),
        }
    }
    out
}

/// Uptime without maintenance: minutes a window touches are left out whole,
/// the rest of every hour and day stays, and ranges cut mid-hour count only
/// their own minutes; checked against the minute rollups for many windows.
#[test]
fn summaries_excluding_leaves_out_exactly_the_touched_minutes() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    // Three days from 2026-11-20 00:00: a check every 20 s, down when the
    // minute of the day is a multiple of 7 (so every hour has some).
    let samples: Vec<Sample> = (0..3 * 24 * 180)
        .map(|i: i64| {
            let ts = t0() + i * 20_000 + 3;
            let down = (ts.rem_euclid(DAY_MS) / MINUTE_MS) % 7 == 0;
            let mut smp = sample("m1", A, i as u64 + 1, ts);
            if down {
                smp.result.status = pb::Status::Down as i32;
            }
            smp
        })
        .collect();
    let end = t0() + 3 * DAY_MS;
    s.ingest("a", 0, end, &samples, &[]).unwrap();
    s.roll_up(end).unwrap();
    let q = |from_ms, to_ms, bucket| SummaryQuery {
        monitor_id: "m1".into(),
        location: A.into(),
        from_ms,
        to_ms,
        bucket,
    };
    let h = |hours: i64| t0() + hours * HOUR_MS;
    let cases: Vec<(SummaryQuery, Vec<(i64, i64)>)> = vec![
        // Nothing excluded: the hourly summaries as they are.
        (q(t0(), end, Bucket::Hour), vec![]),
        // A window on whole minutes inside one hour.
        (
            q(t0(), end, Bucket::Hour),
            vec![(h(2) + 10 * MINUTE_MS, h(2) + 40 * MINUTE_MS)],
        ),
        // Starting and ending mid-minute: both edge minutes go.
        (
            q(t0(), end, Bucket::Hour),
            vec![(h(5) + 90_500, h(5) + 150_001)],
        ),
        // Several hours and a day boundary, plus one whole hour.
        (
            q(t0(), end, Bucket::Day),
            vec![
                (h(1), h(2)),
                (h(22) + 30_000, h(26) + 1),
                (h(50), h(50) + MINUTE_MS),
            ],
        ),
        // The range cut mid-hour at both ends, a window across the cut.
        (
            q(
                h(3) + 25 * MINUTE_MS + 7,
                h(9) + 5 * MINUTE_MS,
                Bucket::Hour,
            ),
            vec![(h(3), h(4))],
        ),
        (
            q(h(3) + 25 * MINUTE_MS, h(30) + 59 * MINUTE_MS, Bucket::Day),
            vec![(h(29), h(30) + 30 * MINUTE_MS)],
        ),
        // Everything excluded.
        (q(t0(), end, Bucket::Day), vec![(t0() - 1, end + 1)]),
    ];
    for (query, excluded) in &cases {
        let got: Vec<(i64, u64, u64)> = summaries_excluding(&s, query, excluded)
            .unwrap()
            .iter()
            .map(|x| (x.start_ms, x.checks, x.failures))
            .collect();
        assert_eq!(got, by_minutes(&s, query, excluded), "{excluded:?}");
    }
    // Without exclusions an hour-aligned range is exactly Store::summaries.
    let plain = q(t0(), end, Bucket::Day);
    assert_eq!(
        summaries_excluding(&s, &plain, &[]).unwrap(),
        s.summaries(&plain).unwrap()
    );
    // The figures a face shows: an hour with 30 of its 60 minutes excluded
    // keeps 30 minutes of 3 checks; a mid-minute window loses its edges.
    let hour2 = summaries_excluding(&s, &q(h(2), h(3), Bucket::Hour), &cases[1].1).unwrap();
    assert_eq!(hour2[0].checks, 30 * 3);
    let hour5 = summaries_excluding(&s, &q(h(5), h(6), Bucket::Hour), &cases[2].1).unwrap();
    assert_eq!(
        hour5[0].checks,
        58 * 3,
        "05:01:30.5-05:02:30.001 touches 05:01 and 05:02"
    );
    assert!(
        summaries_excluding(&s, &cases[6].0, &cases[6].1)
            .unwrap()
            .is_empty()
    );
}
