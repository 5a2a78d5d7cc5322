//! Maintenance windows: when checks still run and are stored but incidents
//! are not notified, and the status page shows scheduled maintenance.
//!
//! A window selects monitors by name (`"*"` for all) and/or tag, and is
//! either **one-off** (`start` + `end` or `duration`) or **recurring**
//! (`days` + local time `at` + `duration` in a `time_zone`, optionally
//! bounded by `from`/`until` dates). Recurring windows are local-time: a
//! daily 02:00 window in Europe/Berlin starts at 01:00 UTC in winter and
//! 00:00 UTC in summer. A local start that does not exist (the hour skipped
//! in spring) or exists twice (the hour repeated in autumn) follows jiff's
//! "compatible" rule, the one RFC 5545 calendars use: a skipped time moves
//! forward by the gap (02:30 becomes 03:30), a repeated one takes the
//! earlier instant. The duration is elapsed time.
//!
//! Windows come from the config file (`[[maintenance]]`, replaced on each
//! reload) and from the API/CLI (kept in `maintenance.json` in the data dir,
//! written atomically); one namespace, and a file window is changed in the
//! file.

pub mod registry;

#[cfg(test)]
mod tests;

use std::time::Duration;

use jiff::civil::{Date, DateTime, Time, Weekday};
use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};
use serde::{Deserialize, Serialize};

pub use registry::{Active, MaintenanceError, MaintenanceRegistry};

/// Shortest and longest window.
pub const MIN_DURATION: Duration = Duration::from_secs(60);
pub const MAX_DURATION: Duration = Duration::from_secs(7 * 86_400);

/// A window as written (TOML `[[maintenance]]` or API JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawWindow {
    /// Unique name, like a monitor name.
    pub name: String,
    /// Shown on the status page and in the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Monitors by name; `"*"` selects every monitor.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub monitors: Vec<String>,
    /// Monitors having any of these tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// One-off: RFC 3339 (`2026-11-28T02:00:00Z`) or civil time
    /// (`2026-11-28 02:00`) in `time_zone`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// One-off: the end, like `start` (or give `duration`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<String>,
    /// Recurring: `["mon", "thu"]` or `["daily"]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub days: Vec<String>,
    /// Recurring: local start time, `"02:30"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
    /// How long, e.g. "2h" (1 min to 7 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    /// IANA time zone, default "UTC".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// Recurring: first and last date (inclusive, `YYYY-MM-DD`, local).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
}

/// When a window is.
#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    Once {
        start_ms: i64,
        end_ms: i64,
    },
    Weekly {
        /// Indexed Monday = 0.
        days: [bool; 7],
        at: Time,
        duration_ms: i64,
        tz: TimeZone,
        from: Option<Date>,
        until: Option<Date>,
    },
}

/// Where a window's definition lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum WindowOrigin {
    File,
    Api,
}

/// A checked window.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub name: String,
    pub reason: Option<String>,
    pub monitors: Vec<String>,
    pub tags: Vec<String>,
    pub schedule: Schedule,
    pub origin: WindowOrigin,
    /// As written.
    pub raw: RawWindow,
}

/// A window as the API shows it, with its next (or current) occurrence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WindowInfo {
    pub name: String,
    pub origin: WindowOrigin,
    pub definition: RawWindow,
    /// The occurrence in progress or the next one within 400 days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_start_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_end_ms: Option<i64>,
    pub active: bool,
}

/// At most this many occurrences are listed by one query.
const MAX_OCCURRENCES: usize = 1000;

fn ts_ms(z: &Zoned) -> i64 {
    z.timestamp().as_millisecond()
}

fn weekday_index(w: Weekday) -> usize {
    w.to_monday_zero_offset() as usize
}

impl Window {
    /// Does this window cover the monitor `name` with `tags`?
    pub fn selects(&self, name: &str, tags: &[String]) -> bool {
        self.monitors.iter().any(|m| m == "*" || m == name)
            || self.tags.iter().any(|t| tags.contains(t))
    }

    /// The local start of a recurrence on `day`, if the window runs that day.
    fn start_on(&self, day: Date) -> Option<i64> {
        let Schedule::Weekly {
            days,
            at,
            tz,
            from,
            until,
            ..
        } = &self.schedule
        else {
            return None;
        };
        if !days[weekday_index(day.weekday())]
            || from.is_some_and(|f| day < f)
            || until.is_some_and(|u| day > u)
        {
            return None;
        }
        // `to_zoned` resolves gaps and folds with the "compatible" rule.
        let z = DateTime::from_parts(day, *at).to_zoned(tz.clone()).ok()?;
        Some(ts_ms(&z))
    }

    /// The occurrence covering `ts_ms` (start inclusive, end exclusive).
    pub fn occurrence_at(&self, ts_ms: i64) -> Option<(i64, i64)> {
        match &self.schedule {
            Schedule::Once { start_ms, end_ms } => {
                (*start_ms <= ts_ms && ts_ms < *end_ms).then_some((*start_ms, *end_ms))
            }
            Schedule::Weekly {
                duration_ms, tz, ..
            } => {
                let local = Timestamp::from_millisecond(ts_ms)
                    .ok()?
                    .to_zoned(tz.clone())
                    .date();
                // An occurrence may have started up to 7 days (the longest
                // window) before, plus a day for zone offsets.
                let mut day = local.checked_sub(jiff::Span::new().days(8)).ok()?;
                while day <= local {
                    if let Some(start) = self.start_on(day)
                        && start <= ts_ms
                        && ts_ms < start + duration_ms
                    {
                        return Some((start, start + duration_ms));
                    }
                    day = day.tomorrow().ok()?;
                }
                None
            }
        }
    }

    /// Every occurrence overlapping `[from_ms, to_ms)`, in order (at most 1,000).
    pub fn occurrences(&self, from_ms: i64, to_ms: i64) -> Vec<(i64, i64)> {
        let mut out = Vec::new();
        match &self.schedule {
            Schedule::Once { start_ms, end_ms } => {
                if *start_ms < to_ms && from_ms < *end_ms {
                    out.push((*start_ms, *end_ms));
                }
            }
            Schedule::Weekly {
                duration_ms, tz, ..
            } => {
                let (Ok(a), Ok(b)) = (
                    Timestamp::from_millisecond(from_ms),
                    Timestamp::from_millisecond(to_ms),
                ) else {
                    return out;
                };
                let (Ok(mut day), last) = (
                    a.to_zoned(tz.clone())
                        .date()
                        .checked_sub(jiff::Span::new().days(8)),
                    b.to_zoned(tz.clone()).date(),
                ) else {
                    return out;
                };
                while day <= last && out.len() < MAX_OCCURRENCES {
                    if let Some(start) = self.start_on(day)
                        && start < to_ms
                        && from_ms < start + duration_ms
                    {
                        out.push((start, start + duration_ms));
                    }
                    match day.tomorrow() {
                        Ok(d) => day = d,
                        Err(_) => break,
                    }
                }
            }
        }
        out
    }

    /// The occurrence in progress at `now_ms`, else the next one (within 400 days).
    pub fn next(&self, now_ms: i64) -> Option<(i64, i64)> {
        self.occurrence_at(now_ms).or_else(|| {
            self.occurrences(now_ms, now_ms + 400 * 86_400_000)
                .into_iter()
                .find(|(s, _)| *s >= now_ms)
        })
    }

    pub fn info(&self, now_ms: i64) -> WindowInfo {
        let next = self.next(now_ms);
        WindowInfo {
            name: self.name.clone(),
            origin: self.origin,
            definition: self.raw.clone(),
            next_start_ms: next.map(|n| n.0),
            next_end_ms: next.map(|n| n.1),
            active: next.is_some_and(|(s, e)| s <= now_ms && now_ms < e),
        }
    }

    /// Has it no occurrence at or after `ms` any more?
    pub fn over_before(&self, ms: i64) -> bool {
        match &self.schedule {
            Schedule::Once { end_ms, .. } => *end_ms <= ms,
            Schedule::Weekly { until, tz, .. } => until.is_some_and(|u| {
                Timestamp::from_millisecond(ms)
                    .map(|t| t.to_zoned(tz.clone()).date() > u.tomorrow().unwrap_or(u))
                    .unwrap_or(false)
            }),
        }
    }
}

/// The time `windows` covered the monitor `name` (with `tags`) within
/// `[from_ms, to_ms)`: every occurrence of every window that selects it,
/// clipped to the range, overlapping and touching ones merged into one
/// interval, in order. Every face that leaves maintenance out of an uptime
/// figure (dashboard, status page, API) asks this, so they agree.
///
/// It reads the windows as they are defined now: a window cancelled through
/// the API no longer covers its past either.
pub fn covered<'a>(
    windows: impl IntoIterator<Item = &'a Window>,
    name: &str,
    tags: &[String],
    from_ms: i64,
    to_ms: i64,
) -> Vec<(i64, i64)> {
    let mut all: Vec<(i64, i64)> = windows
        .into_iter()
        .filter(|w| w.selects(name, tags))
        .flat_map(|w| w.occurrences(from_ms, to_ms))
        .map(|(s, e)| (s.max(from_ms), e.min(to_ms)))
        .filter(|(s, e)| s < e)
        .collect();
    all.sort_unstable();
    let mut merged: Vec<(i64, i64)> = Vec::with_capacity(all.len());
    for (s, e) in all {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    merged
}

/// How long `intervals` (disjoint, as [`covered`] gives them) last together.
pub fn total_ms(intervals: &[(i64, i64)]) -> i64 {
    intervals.iter().map(|(s, e)| e - s).sum()
}

fn parse_day(s: &str) -> Option<Vec<usize>> {
    let d = match s.to_ascii_lowercase().as_str() {
        "daily" | "every day" => return Some((0..7).collect()),
        "weekdays" => return Some((0..5).collect()),
        "weekends" => return Some(vec![5, 6]),
        "mon" | "monday" => 0,
        "tue" | "tuesday" => 1,
        "wed" | "wednesday" => 2,
        "thu" | "thursday" => 3,
        "fri" | "friday" => 4,
        "sat" | "saturday" => 5,
        "sun" | "sunday" => 6,
        _ => return None,
    };
    Some(vec![d])
}

/// An instant: RFC 3339 with an offset, or a civil time in `tz`.
fn parse_instant(s: &str, tz: &TimeZone) -> Result<i64, String> {
    if let Ok(t) = s.parse::<Timestamp>() {
        return Ok(t.as_millisecond());
    }
    let dt: DateTime = s.parse().map_err(|_| {
        format!("{s:?} is not a time like 2026-11-28T02:00:00Z or 2026-11-28 02:00")
    })?;
    dt.to_zoned(tz.clone())
        .map(|z| ts_ms(&z))
        .map_err(|e| format!("{s:?}: {e}"))
}

/// Checks one window; `path` names it in errors (e.g. `maintenance[0]`).
pub fn validate(raw: &RawWindow, path: &str, origin: WindowOrigin) -> Result<Window, Vec<String>> {
    let mut problems = Vec::new();
    let here = format!("{path} ({:?})", raw.name);
    let mut bad = |field: &str, why: String| problems.push(format!("{here}.{field}: {why}"));
    if !crate::monitors::valid_name(&raw.name) {
        bad(
            "name",
            "must be 1-128 letters, digits, '_', '.', '-', starting with a letter or digit".into(),
        );
    }
    if raw.monitors.is_empty() && raw.tags.is_empty() {
        bad(
            "monitors",
            "select monitors by name (\"*\" for all) and/or tags".into(),
        );
    }
    for m in &raw.monitors {
        if m != "*" && !crate::monitors::valid_name(m) {
            bad("monitors", format!("{m:?} is not a monitor name"));
        }
    }
    if raw.reason.as_ref().is_some_and(|r| r.len() > 500) {
        bad("reason", "at most 500 characters".into());
    }
    let tz_name = raw.time_zone.as_deref().unwrap_or("UTC");
    let tz = match TimeZone::get(tz_name) {
        Ok(tz) => Some(tz),
        Err(_) => {
            bad("time_zone", format!("unknown time zone {tz_name:?}"));
            None
        }
    };
    let duration = match raw.duration.as_deref().map(humantime::parse_duration) {
        None => None,
        Some(Ok(d)) if (MIN_DURATION..=MAX_DURATION).contains(&d) => Some(d),
        Some(Ok(_)) => {
            bad("duration", "must be between 1m and 7d".into());
            None
        }
        Some(Err(e)) => {
            bad(
                "duration",
                format!(
                    "{:?} is not a duration like 2h: {e}",
                    raw.duration.as_deref().unwrap_or("")
                ),
            );
            None
        }
    };
    let recurring = !raw.days.is_empty() || raw.at.is_some();
    let one_off = raw.start.is_some() || raw.end.is_some();
    let mut schedule = None;
    if recurring && one_off {
        bad(
            "start",
            "a window is one-off (start, end or duration) or recurring (days, at, duration), not both".into(),
        );
    } else if recurring {
        let mut days = [false; 7];
        for d in &raw.days {
            match parse_day(d) {
                Some(idx) => idx.into_iter().for_each(|i| days[i] = true),
                None => bad(
                    "days",
                    format!("{d:?} is not a day (mon..sun, daily, weekdays, weekends)"),
                ),
            }
        }
        if raw.days.is_empty() {
            bad("days", "a recurring window needs days".into());
        }
        let at = match raw.at.as_deref().map(str::parse::<Time>) {
            Some(Ok(t)) => Some(t),
            Some(Err(_)) => {
                bad(
                    "at",
                    format!(
                        "{:?} is not a local time like 02:30",
                        raw.at.as_deref().unwrap_or("")
                    ),
                );
                None
            }
            None => {
                bad("at", "a recurring window needs a start time".into());
                None
            }
        };
        if duration.is_none() && raw.duration.is_none() {
            bad("duration", "a recurring window needs a duration".into());
        }
        let date = |field: &str, v: &Option<String>, bad: &mut dyn FnMut(&str, String)| match v {
            None => None,
            Some(s) => match s.parse::<Date>() {
                Ok(d) => Some(d),
                Err(_) => {
                    bad(field, format!("{s:?} is not a date like 2026-12-31"));
                    None
                }
            },
        };
        let from = date("from", &raw.from, &mut bad);
        let until = date("until", &raw.until, &mut bad);
        if let (Some(f), Some(u)) = (from, until)
            && u < f
        {
            bad("until", "is before from".into());
        }
        if let (Some(at), Some(d), Some(tz)) = (at, duration, tz.clone()) {
            schedule = Some(Schedule::Weekly {
                days,
                at,
                duration_ms: crate::store::ms(d),
                tz,
                from,
                until,
            });
        }
    } else if one_off {
        if raw.from.is_some() || raw.until.is_some() {
            bad("from", "from/until bound recurring windows only".into());
        }
        let start = match (&raw.start, &tz) {
            (Some(s), Some(tz)) => parse_instant(s, tz).map_err(|e| bad("start", e)).ok(),
            (None, _) => {
                bad("start", "a one-off window needs a start".into());
                None
            }
            _ => None,
        };
        let end = match (&raw.end, duration, start, &tz) {
            (Some(_), Some(_), _, _) => {
                bad("end", "give end or duration, not both".into());
                None
            }
            (Some(e), None, _, Some(tz)) => parse_instant(e, tz).map_err(|e| bad("end", e)).ok(),
            (None, Some(d), Some(s), _) => Some(s + crate::store::ms(d)),
            (None, None, _, _) if raw.duration.is_none() => {
                bad("end", "a one-off window needs an end or a duration".into());
                None
            }
            _ => None,
        };
        if let (Some(s), Some(e)) = (start, end) {
            let len = e - s;
            if len <= 0 {
                bad("end", "must be after start".into());
            } else if len > crate::store::ms(MAX_DURATION) || len < crate::store::ms(MIN_DURATION) {
                bad("end", "a window lasts between 1m and 7d".into());
            } else {
                schedule = Some(Schedule::Once {
                    start_ms: s,
                    end_ms: e,
                });
            }
        }
    } else {
        bad(
            "start",
            "give start + end/duration (one-off) or days + at + duration (recurring)".into(),
        );
    }
    match schedule {
        Some(schedule) if problems.is_empty() => Ok(Window {
            name: raw.name.clone(),
            reason: raw.reason.clone(),
            monitors: raw.monitors.clone(),
            tags: raw.tags.clone(),
            schedule,
            origin,
            raw: raw.clone(),
        }),
        _ => Err(problems),
    }
}

/// Checks a list of windows (names unique among them).
pub fn validate_all(
    raws: &[RawWindow],
    prefix: &str,
    origin: WindowOrigin,
) -> Result<Vec<Window>, Vec<String>> {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for (i, raw) in raws.iter().enumerate() {
        let path = format!("{prefix}[{i}]");
        if raws[..i].iter().any(|r| r.name == raw.name) {
            problems.push(format!("{path} ({:?}).name: used twice", raw.name));
        }
        match validate(raw, &path, origin) {
            Ok(w) => out.push(w),
            Err(p) => problems.extend(p),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}
