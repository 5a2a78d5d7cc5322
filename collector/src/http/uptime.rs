//! `GET /api/v1/uptime`: a monitor's uptime over a range, per location and
//! over all of them, with maintenance left out and said so. The dashboard's
//! monitor page shows this same report, so the page and the API agree.
//!
//! Uptime is the share of checks that were not down. Checks that ran inside
//! a maintenance window covering the monitor count neither as up nor as down
//! (the windows come from [`crate::maintenance::covered`], the minutes they
//! touch are left out whole: see [`crate::store::summaries_excluding`]), so
//! the figure is over the rest of the range.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{AdminBackend, Api, ApiError, ErrorBody, QueryParams, authorize, now_ms, query_params};
use crate::maintenance::MaintenanceRegistry;
use crate::monitors::Monitor;
use crate::store::{Bucket, DAY_MS, Store, StoreError, Summary, SummaryQuery};

/// The longest range one report covers: the summaries' default retention.
pub const MAX_RANGE_MS: i64 = 90 * DAY_MS;

/// `GET /api/v1/uptime?monitor=NAME[&from=MS][&to=MS]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UptimeQuery {
    /// The monitor's name.
    pub monitor: String,
    /// From this time (unix ms; the minute starting at or after it is the
    /// first counted); default: 30 days before `to`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<i64>,
    /// Before this time (unix ms), at most 90 days after `from`; default: now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<i64>,
}

/// One interval, unix ms, `[start_ms, end_ms)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Interval {
    pub start_ms: i64,
    pub end_ms: i64,
}

/// One location's checks over the range, maintenance left out.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LocationUptime {
    /// `agent:<name>` or `public:<region>`.
    pub location: String,
    /// Checks counted (not in maintenance).
    pub checks: u64,
    /// Of those, checks that were down.
    pub failures: u64,
    /// The share of counted checks not down (0-1); null without checks.
    pub uptime: Option<f64>,
}

/// A monitor's uptime over a range (`GET /api/v1/uptime`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UptimeReport {
    pub monitor: String,
    pub from_ms: i64,
    pub to_ms: i64,
    /// Checks counted over every location (not in maintenance).
    pub checks: u64,
    /// Of those, checks that were down.
    pub failures: u64,
    /// The share of counted checks not down (0-1), over every location;
    /// null without checks. Maintenance is excluded.
    pub uptime: Option<f64>,
    /// How long maintenance windows covered the monitor inside the range
    /// (ms): their checks are not counted (the minutes a window touches are
    /// left out whole, so up to a minute more either side of each).
    pub maintenance_excluded_ms: i64,
    /// Those windows, merged and clipped to the range, in order.
    pub maintenance: Vec<Interval>,
    /// Per location, by location.
    pub locations: Vec<LocationUptime>,
}

/// `monitor`'s uptime at `locations` over `[from_ms, to_ms)`, leaving out
/// the maintenance `windows` list for it.
pub fn report(
    store: &dyn Store,
    windows: &MaintenanceRegistry,
    monitor: &Monitor,
    locations: &[String],
    from_ms: i64,
    to_ms: i64,
) -> Result<UptimeReport, StoreError> {
    let covered = windows.covered(&monitor.name, &monitor.tags, from_ms, to_ms);
    let mut all = Summary::default();
    let mut per = Vec::with_capacity(locations.len());
    for location in locations {
        let q = SummaryQuery {
            monitor_id: monitor.name.clone(),
            location: location.clone(),
            from_ms,
            to_ms,
            bucket: Bucket::Day,
        };
        let mut sum = Summary::default();
        for s in crate::store::summaries_excluding(store, &q, &covered)? {
            sum.merge(&s);
        }
        all.merge(&sum);
        per.push(LocationUptime {
            location: location.clone(),
            checks: sum.checks,
            failures: sum.failures,
            uptime: sum.availability(),
        });
    }
    Ok(UptimeReport {
        monitor: monitor.name.clone(),
        from_ms,
        to_ms,
        checks: all.checks,
        failures: all.failures,
        uptime: all.availability(),
        maintenance_excluded_ms: crate::maintenance::total_ms(&covered),
        maintenance: covered
            .into_iter()
            .map(|(start_ms, end_ms)| Interval { start_ms, end_ms })
            .collect(),
        locations: per,
    })
}

/// A monitor's uptime over a range, maintenance excluded
///
/// Per location that ever reported it and over all of them: the share of
/// checks not down, leaving out the checks that ran inside maintenance
/// windows covering the monitor (whole minutes: a window touching a minute
/// leaves that minute out). `maintenance_excluded_ms` says how much
/// maintenance time was left out.
#[utoipa::path(
    get,
    path = "/api/v1/uptime",
    tag = "results",
    security(("admin_token" = [])),
    params(UptimeQuery),
    responses(
        (status = 200, description = "The monitor's uptime over the range", body = UptimeReport),
        (status = 400, description = "A missing, malformed or unknown query parameter, `from` not before `to`, or a range over 90 days", body = ErrorBody),
        (status = 401, description = "No valid admin bearer token", body = ErrorBody),
        (status = 404, description = "No such monitor", body = ErrorBody),
        (status = 500, description = "The collector failed, e.g. its store", body = ErrorBody),
    )
)]
pub(super) async fn uptime<B: AdminBackend>(
    State(api): State<Arc<Api<B>>>,
    headers: HeaderMap,
    query: QueryParams<UptimeQuery>,
) -> Result<Json<UptimeReport>, ApiError> {
    authorize(&api, &headers)?;
    let q = query_params(query)?;
    let to = q.to.unwrap_or_else(now_ms);
    let from = q.from.unwrap_or(to - 30 * DAY_MS);
    if from >= to {
        return Err(ApiError::bad_request("from: must be before to"));
    }
    if to - from > MAX_RANGE_MS {
        return Err(ApiError::bad_request(
            "from: the range is at most 90 days (the summaries' retention)",
        ));
    }
    let monitor = api
        .backend
        .monitor_registry()
        .get(&q.monitor)
        .ok_or_else(|| ApiError::not_found(format!("no monitor is named {:?}", q.monitor)))?;
    let store = api.backend.store();
    let windows = api.backend.maintenance_registry().clone();
    let report = tokio::task::spawn_blocking(move || {
        let locations = store.locations_of(&monitor.name)?;
        report(store.as_ref(), &windows, &monitor, &locations, from, to)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
    .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Json(report))
}
