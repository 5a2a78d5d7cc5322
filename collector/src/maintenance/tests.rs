//! Maintenance windows: validation, one-off edges, recurrence across both DST
//! changes of 2026 in two zones (checked against UTC instants worked out by
//! hand), selection, and the registry's persistence and ownership rules.

use super::registry::{MaintenanceError, MaintenanceRegistry};
use super::*;

fn utc(s: &str) -> i64 {
    s.parse::<Timestamp>().unwrap().as_millisecond()
}

fn window(toml_text: &str) -> Result<Window, Vec<String>> {
    let raw: RawWindow = toml::from_str(toml_text).expect("test toml parses");
    validate(&raw, "maintenance[0]", WindowOrigin::File)
}

fn ok(toml_text: &str) -> Window {
    window(toml_text).unwrap_or_else(|p| panic!("{p:?}"))
}

#[test]
fn bad_windows_say_which_field_and_why() {
    let cases = [
        (
            r#"name = "w"
               monitors = ["db"]
               start = "2026-11-28 02:00"
               duration = "2h"
               time_zone = "Mars/Base""#,
            r#"maintenance[0] ("w").time_zone: unknown time zone "Mars/Base""#,
        ),
        (
            r#"name = "w"
               start = "2026-11-28 02:00"
               duration = "2h""#,
            r#"maintenance[0] ("w").monitors: select monitors"#,
        ),
        (
            r#"name = "w"
               monitors = ["db"]
               start = "2026-11-28 02:00"
               end = "2026-11-28 01:00""#,
            r#"maintenance[0] ("w").end: must be after start"#,
        ),
        (
            r#"name = "w"
               monitors = ["db"]
               start = "2026-11-28 02:00"
               duration = "30s""#,
            r#"maintenance[0] ("w").duration: must be between 1m and 7d"#,
        ),
        (
            r#"name = "w"
               monitors = ["db"]
               start = "2026-11-28 02:00"
               duration = "8d""#,
            r#"maintenance[0] ("w").duration: must be between 1m and 7d"#,
        ),
        (
            r#"name = "w"
               monitors = ["db"]
               start = "next tuesday"
               duration = "1h""#,
            r#"maintenance[0] ("w").start: "next tuesday" is not a time"#,
        ),
        (
            r#"name = "w"
               monitors = ["db"]
               days = ["funday"]
               at = "02:00"
               duration = "1h""#,
            r#"maintenance[0] ("w").days: "funday" is not a day"#,
        ),
        (
            r#"name = "w"
               monitors = ["db"]
               days = ["mon"]
               at = "25:00"
               duration = "1h""#,
            r#"maintenance[0] ("w").at: "25:00" is not a local time"#,
        ),
        (
            r#"name = "w"
               monitors = ["db"]
               days = ["mon"]
               at = "02:00""#,
            r#"maintenance[0] ("w").duration: a recurring window needs a duration"#,
        ),
        (
            r#"name = "w"
               monitors = ["db"]
               days = ["mon"]
               at = "02:00"
               duration = "1h"
               start = "2026-11-28 02:00""#,
            r#"maintenance[0] ("w").start: a window is one-off"#,
        ),
        (
            r#"name = "w"
               monitors = ["db"]
               days = ["mon"]
               at = "02:00"
               duration = "1h"
               from = "2026-12-01"
               until = "2026-11-01""#,
            r#"maintenance[0] ("w").until: is before from"#,
        ),
        (
            r#"name = "-bad"
               monitors = ["db"]
               start = "2026-11-28 02:00"
               duration = "1h""#,
            r#"maintenance[0] ("-bad").name: must be"#,
        ),
        (
            r#"name = "w"
               monitors = ["db"]"#,
            r#"maintenance[0] ("w").start: give start"#,
        ),
    ];
    for (text, want) in cases {
        let problems = window(text).expect_err(text);
        assert!(
            problems.iter().any(|p| p.starts_with(want)),
            "want {want:?} in {problems:?}"
        );
    }
    // Unknown fields are refused by the parser itself.
    assert!(toml::from_str::<RawWindow>("name = \"w\"\nmonitor = [\"db\"]").is_err());
}

#[test]
fn a_one_off_window_starts_inclusive_and_ends_exclusive() {
    let w = ok(r#"name = "patch"
                  monitors = ["db"]
                  start = "2026-11-28 02:00"
                  end = "2026-11-28 04:00"
                  time_zone = "Europe/Berlin""#);
    // 02:00 CET = 01:00Z.
    let start = utc("2026-11-28T01:00:00Z");
    let end = utc("2026-11-28T03:00:00Z");
    assert_eq!(w.occurrence_at(start - 1), None);
    assert_eq!(w.occurrence_at(start), Some((start, end)));
    assert_eq!(w.occurrence_at(end - 1), Some((start, end)));
    assert_eq!(w.occurrence_at(end), None);
    // RFC 3339 with an offset and a duration mean the same.
    let same = ok(r#"name = "patch"
                     monitors = ["db"]
                     start = "2026-11-28T02:00:00+01:00"
                     duration = "2h""#);
    assert_eq!(same.occurrence_at(start), Some((start, end)));
    assert!(w.over_before(end) && !w.over_before(end - 1));
}

#[test]
fn a_daily_window_in_berlin_follows_both_dst_changes_of_2026() {
    let w = ok(r#"name = "nightly"
                  monitors = ["*"]
                  days = ["daily"]
                  at = "02:30"
                  duration = "1h"
                  time_zone = "Europe/Berlin""#);
    let starts: Vec<i64> = w
        .occurrences(utc("2026-03-28T00:00:00Z"), utc("2026-03-31T00:00:00Z"))
        .iter()
        .map(|o| o.0)
        .collect();
    assert_eq!(
        starts,
        vec![
            utc("2026-03-28T01:30:00Z"), // CET, +01
            // 02:30 does not exist on Mar 29: "compatible" moves it to 03:30 CEST.
            utc("2026-03-29T01:30:00Z"),
            utc("2026-03-30T00:30:00Z"), // CEST, +02
        ]
    );
    let starts: Vec<i64> = w
        .occurrences(utc("2026-10-24T00:00:00Z"), utc("2026-10-27T00:00:00Z"))
        .iter()
        .map(|o| o.0)
        .collect();
    assert_eq!(
        starts,
        vec![
            utc("2026-10-24T00:30:00Z"), // CEST
            // 02:30 happens twice on Oct 25: the earlier one (still CEST).
            utc("2026-10-25T00:30:00Z"),
            utc("2026-10-26T01:30:00Z"), // CET
        ]
    );
    // An hour of elapsed time, whatever the clocks did.
    for (s, e) in w.occurrences(utc("2026-03-28T00:00:00Z"), utc("2026-10-27T00:00:00Z")) {
        assert_eq!(e - s, 3_600_000);
    }
    assert!(w.occurrence_at(utc("2026-03-29T02:29:59Z")).is_some());
    assert!(w.occurrence_at(utc("2026-03-29T02:30:00Z")).is_none());
}

#[test]
fn a_weekly_window_in_new_york_follows_both_dst_changes_of_2026() {
    let spring = ok(r#"name = "sunday"
                       tags = ["db"]
                       days = ["sun"]
                       at = "02:30"
                       duration = "2h"
                       time_zone = "America/New_York""#);
    let starts: Vec<i64> = spring
        .occurrences(utc("2026-03-01T00:00:00Z"), utc("2026-03-16T00:00:00Z"))
        .iter()
        .map(|o| o.0)
        .collect();
    assert_eq!(
        starts,
        vec![
            utc("2026-03-01T07:30:00Z"), // EST, -05
            utc("2026-03-08T07:30:00Z"), // 02:30 skipped: 03:30 EDT
            utc("2026-03-15T06:30:00Z"), // EDT, -04
        ]
    );
    let fall = ok(r#"name = "sunday-early"
                     tags = ["db"]
                     days = ["sun"]
                     at = "01:30"
                     duration = "2h"
                     time_zone = "America/New_York""#);
    let starts: Vec<i64> = fall
        .occurrences(utc("2026-10-25T00:00:00Z"), utc("2026-11-09T00:00:00Z"))
        .iter()
        .map(|o| o.0)
        .collect();
    assert_eq!(
        starts,
        vec![
            utc("2026-10-25T05:30:00Z"), // EDT
            utc("2026-11-01T05:30:00Z"), // 01:30 twice: the earlier (EDT)
            utc("2026-11-08T06:30:00Z"), // EST
        ]
    );
}

#[test]
fn a_window_past_midnight_covers_the_next_day_and_until_ends_the_recurrence() {
    let w = ok(r#"name = "weekend-late"
                  monitors = ["db"]
                  days = ["sat"]
                  at = "23:00"
                  duration = "3h"
                  until = "2026-12-05""#);
    // Saturday 2026-11-28 23:00Z to Sunday 02:00Z.
    assert_eq!(
        w.occurrence_at(utc("2026-11-29T01:59:59Z")),
        Some((utc("2026-11-28T23:00:00Z"), utc("2026-11-29T02:00:00Z")))
    );
    assert_eq!(w.occurrence_at(utc("2026-11-29T02:00:00Z")), None);
    assert!(w.occurrence_at(utc("2026-12-05T23:30:00Z")).is_some());
    assert!(
        w.occurrence_at(utc("2026-12-12T23:30:00Z")).is_none(),
        "after until"
    );
    assert_eq!(
        w.next(utc("2026-11-30T00:00:00Z")),
        Some((utc("2026-12-05T23:00:00Z"), utc("2026-12-06T02:00:00Z")))
    );
    assert_eq!(w.next(utc("2026-12-07T00:00:00Z")), None);
}

#[test]
fn windows_select_by_name_tag_or_everything() {
    let by_name = ok(r#"name = "a"
                        monitors = ["db"]
                        start = "2026-11-28T00:00:00Z"
                        duration = "1h""#);
    assert!(by_name.selects("db", &[]));
    assert!(!by_name.selects("web", &[]));
    let by_tag = ok(r#"name = "b"
                       tags = ["team=payments"]
                       start = "2026-11-28T00:00:00Z"
                       duration = "1h""#);
    assert!(by_tag.selects("web", &["x".into(), "team=payments".into()]));
    assert!(!by_tag.selects("web", &["x".into()]));
    let all = ok(r#"name = "c"
                    monitors = ["*"]
                    start = "2026-11-28T00:00:00Z"
                    duration = "1h""#);
    assert!(all.selects("anything", &[]));
}

fn raw(name: &str, start: &str) -> RawWindow {
    RawWindow {
        name: name.into(),
        monitors: vec!["redis".into()],
        start: Some(start.into()),
        duration: Some("1h".into()),
        reason: Some("patching".into()),
        ..RawWindow::default()
    }
}

#[test]
fn the_registry_adds_cancels_persists_and_keeps_file_windows_to_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("maintenance.json");
    let file = validate_all(
        &[RawWindow {
            name: "nightly".into(),
            tags: vec!["db".into()],
            days: vec!["daily".into()],
            at: Some("02:00".into()),
            duration: Some("30m".into()),
            ..RawWindow::default()
        }],
        "maintenance",
        WindowOrigin::File,
    )
    .unwrap();
    let r = MaintenanceRegistry::open(file.clone(), Some(&path)).unwrap();
    let now = utc("2026-11-28T00:00:00Z");
    r.add(raw("redis-upgrade", "2026-11-28T10:00:00Z"), now)
        .unwrap();
    assert!(matches!(
        r.add(raw("redis-upgrade", "2026-11-29T10:00:00Z"), now),
        Err(MaintenanceError::Exists(_))
    ));
    assert!(matches!(
        r.add(raw("nightly", "2026-11-29T10:00:00Z"), now),
        Err(MaintenanceError::Exists(_))
    ));
    assert!(matches!(
        r.add(RawWindow { duration: Some("9d".into()), ..raw("x", "2026-11-29T10:00:00Z") }, now),
        Err(MaintenanceError::Invalid(p)) if p[0].contains("duration")
    ));
    let active = r
        .active_for("redis", &[], utc("2026-11-28T10:30:00Z"))
        .unwrap();
    assert_eq!(active.name, "redis-upgrade");
    assert_eq!(active.ends_ms, utc("2026-11-28T11:00:00Z"));
    assert_eq!(active.reason.as_deref(), Some("patching"));
    assert_eq!(
        r.active_for("pg", &["db".into()], utc("2026-11-28T02:10:00Z"))
            .unwrap()
            .name,
        "nightly"
    );
    assert!(
        r.active_for("pg", &[], utc("2026-11-28T02:10:00Z"))
            .is_none()
    );
    // Reopened from disk: the API window is back.
    drop(r);
    let r = MaintenanceRegistry::open(file.clone(), Some(&path)).unwrap();
    assert_eq!(r.list().len(), 2);
    let upcoming = r.upcoming(now, now + 86_400_000);
    let names: Vec<&str> = upcoming.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, vec!["nightly", "redis-upgrade"]);
    // A file window is the file's; cancelling an API window removes it for good.
    assert!(matches!(
        r.cancel("nightly"),
        Err(MaintenanceError::ManagedByFile(_))
    ));
    assert!(matches!(
        r.cancel("nope"),
        Err(MaintenanceError::NotFound(_))
    ));
    r.cancel("redis-upgrade").unwrap();
    assert!(
        r.active_for("redis", &[], utc("2026-11-28T10:30:00Z"))
            .is_none()
    );
    let r = MaintenanceRegistry::open(file, Some(&path)).unwrap();
    assert_eq!(r.list().len(), 1);
    // A reload that brings a name the API uses is refused, nothing changes.
    r.add(raw("api-one", "2026-11-28T10:00:00Z"), now).unwrap();
    let err = r
        .replace_file(&[raw("api-one", "2026-11-30T10:00:00Z")])
        .unwrap_err();
    assert!(err[0].contains("an API window has this name"), "{err:?}");
    assert_eq!(r.list().len(), 2);
}

#[test]
fn a_corrupt_windows_file_is_an_error_not_an_empty_set() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("maintenance.json");
    std::fs::write(&path, "{\"windows\": [ {\"name\": ").unwrap();
    let err = MaintenanceRegistry::open(Vec::new(), Some(&path))
        .err()
        .expect("refused");
    assert!(matches!(err, MaintenanceError::Storage { .. }), "{err}");
    assert!(err.to_string().contains("maintenance.json"), "{err}");
}

#[test]
fn api_windows_that_ended_long_ago_are_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("maintenance.json");
    let r = MaintenanceRegistry::open(Vec::new(), Some(&path)).unwrap();
    r.add(
        raw("old", "2026-01-01T00:00:00Z"),
        utc("2026-01-01T00:00:00Z"),
    )
    .unwrap();
    r.add(
        raw("recent", "2026-11-01T00:00:00Z"),
        utc("2026-11-01T00:00:00Z"),
    )
    .unwrap();
    r.add(
        raw("new", "2026-11-28T00:00:00Z"),
        utc("2026-11-22T00:00:00Z"),
    )
    .unwrap();
    let names: Vec<String> = r.list().into_iter().map(|w| w.name).collect();
    assert_eq!(names, vec!["new", "recent"]);
}

#[test]
fn covered_follows_a_recurring_window_across_both_dst_changes() {
    let nightly = ok(r#"name = "nightly"
                        tags = ["db"]
                        days = ["daily"]
                        at = "02:30"
                        duration = "1h"
                        time_zone = "Europe/Berlin""#);
    let db = ["db".to_owned()];
    // Spring: 02:30 CET, then the skipped 02:30 (03:30 CEST), then 02:30 CEST.
    assert_eq!(
        covered(
            [&nightly],
            "pg",
            &db,
            utc("2026-03-28T00:00:00Z"),
            utc("2026-03-31T00:00:00Z")
        ),
        vec![
            (utc("2026-03-28T01:30:00Z"), utc("2026-03-28T02:30:00Z")),
            (utc("2026-03-29T01:30:00Z"), utc("2026-03-29T02:30:00Z")),
            (utc("2026-03-30T00:30:00Z"), utc("2026-03-30T01:30:00Z")),
        ]
    );
    // Autumn: the repeated 02:30 is the earlier one (CEST), then CET.
    let autumn = covered(
        [&nightly],
        "pg",
        &db,
        utc("2026-10-24T00:00:00Z"),
        utc("2026-10-27T00:00:00Z"),
    );
    assert_eq!(
        autumn,
        vec![
            (utc("2026-10-24T00:30:00Z"), utc("2026-10-24T01:30:00Z")),
            (utc("2026-10-25T00:30:00Z"), utc("2026-10-25T01:30:00Z")),
            (utc("2026-10-26T01:30:00Z"), utc("2026-10-26T02:30:00Z")),
        ]
    );
    assert_eq!(
        total_ms(&autumn),
        3 * 3_600_000,
        "an hour of elapsed time each"
    );
    // Not selected: nothing.
    assert!(
        covered(
            [&nightly],
            "pg",
            &[],
            utc("2026-10-24T00:00:00Z"),
            utc("2026-10-27T00:00:00Z")
        )
        .is_empty()
    );
}

#[test]
fn covered_merges_overlapping_and_touching_windows_of_every_origin() {
    let nightly = ok(r#"name = "nightly"
                        monitors = ["*"]
                        days = ["daily"]
                        at = "02:00"
                        duration = "1h""#);
    // Overlaps the end of the 2026-11-28 night and runs past it.
    let patch = ok(r#"name = "patch"
                      tags = ["db"]
                      start = "2026-11-28T02:30:00Z"
                      end = "2026-11-28T04:00:00Z""#);
    // Starts exactly where patch ends.
    let reboot = ok(r#"name = "reboot"
                       monitors = ["pg"]
                       start = "2026-11-28T04:00:00Z"
                       duration = "10m""#);
    // Inside nightly the next night: adds nothing.
    let inside = ok(r#"name = "inside"
                       monitors = ["pg"]
                       start = "2026-11-29T02:10:00Z"
                       duration = "5m""#);
    let got = covered(
        [&reboot, &nightly, &inside, &patch],
        "pg",
        &["db".to_owned()],
        utc("2026-11-28T00:00:00Z"),
        utc("2026-11-30T00:00:00Z"),
    );
    assert_eq!(
        got,
        vec![
            (utc("2026-11-28T02:00:00Z"), utc("2026-11-28T04:10:00Z")),
            (utc("2026-11-29T02:00:00Z"), utc("2026-11-29T03:00:00Z")),
        ]
    );
    assert_eq!(total_ms(&got), 130 * 60_000 + 3_600_000);
    // Through the registry: the file's and the API's windows together.
    let r = MaintenanceRegistry::open(vec![nightly.clone()], None).unwrap();
    r.add(patch.raw.clone(), utc("2026-11-27T00:00:00Z"))
        .unwrap();
    r.add(reboot.raw.clone(), utc("2026-11-27T00:00:00Z"))
        .unwrap();
    r.add(inside.raw.clone(), utc("2026-11-27T00:00:00Z"))
        .unwrap();
    assert_eq!(
        r.covered(
            "pg",
            &["db".to_owned()],
            utc("2026-11-28T00:00:00Z"),
            utc("2026-11-30T00:00:00Z")
        ),
        got
    );
}

#[test]
fn covered_clips_windows_that_run_past_either_end_of_the_range() {
    let w = ok(r#"name = "long"
                  monitors = ["pg"]
                  start = "2026-11-28T22:00:00Z"
                  duration = "4h""#);
    let from = utc("2026-11-29T00:00:00Z");
    assert_eq!(
        covered([&w], "pg", &[], from, from + 3_600_000),
        vec![(from, from + 3_600_000)],
        "covers the whole range"
    );
    assert_eq!(
        covered([&w], "pg", &[], from, from + 86_400_000),
        vec![(from, utc("2026-11-29T02:00:00Z"))],
        "began before the range"
    );
    assert_eq!(
        covered(
            [&w],
            "pg",
            &[],
            utc("2026-11-28T00:00:00Z"),
            utc("2026-11-28T23:00:00Z")
        ),
        vec![(utc("2026-11-28T22:00:00Z"), utc("2026-11-28T23:00:00Z"))],
        "ends after the range"
    );
    assert!(
        covered(
            [&w],
            "pg",
            &[],
            utc("2026-11-29T02:00:00Z"),
            utc("2026-11-30T00:00:00Z")
        )
        .is_empty()
    );
    // A recurring window whose occurrence began the day before the range.
    let late = ok(r#"name = "late"
                     monitors = ["pg"]
                     days = ["sat"]
                     at = "23:00"
                     duration = "3h""#);
    assert_eq!(
        covered([&late], "pg", &[], from, from + 86_400_000),
        vec![(from, utc("2026-11-29T02:00:00Z"))]
    );
}
