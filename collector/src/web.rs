//! The dashboard: server-rendered pages over the same backend as the REST
//! API, served by the collector's HTTP listener next to `/api/v1`.
//!
//! - `/` the overview: every monitor x every location as a grid of states,
//!   with the open incident's diagnosis, a 24 h latency sparkline and 24 h
//!   uptime (maintenance left out); filters by text, state, tag and location; paginated, so 10,000
//!   monitors cost one page of store reads.
//! - `/monitors/{name}`: latency per location and the phase breakdown as
//!   SVG charts (`web/chart.rs`), uptime 24 h / 7 d / 30 d (the API's
//!   uptime report: maintenance left out and said so), incidents, raw
//!   results with reasons, maintenance windows.
//! - `/agents`, `/incidents[/{id}]`, `/maintenance` (create and cancel).
//! - `/status`: the public status page (`web/status.rs`), no sign-in.
//!
//! Every read-only page works without JavaScript; the one script only
//! refreshes the overview and incident lists in place. Sign-in is the admin
//! token, exchanged for a session cookie (`web/session.rs`); a bearer
//! header works too (scripts, tests). Every text reaches the page through
//! maud, which escapes it.

pub mod chart;
mod incident;
pub mod page;
pub mod session;
pub mod status;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{Markup, html};
use portwatch_proto::v1 as pb;
use serde::Deserialize;

use crate::admin::AdminToken;
use crate::http::uptime::{self, UptimeReport};
use crate::http::{AdminBackend, AgentInfo, IncidentsQuery};
use crate::incident::Incident;
use crate::incident::engine::MonitorStatus;
use crate::maintenance::{MaintenanceRegistry, RawWindow};
use crate::store::{
    Bucket, HOUR_MS, MINUTE_MS, Phase, ResultQuery, Rollup, RollupQuery, Store, Summary,
    SummaryQuery, summaries_excluding,
};

use self::page::{Nav, ago, badge, layout, percent, span, untrusted, utc};
use self::session::{Session, Sessions};
use self::status::StatusPage;

/// What the dashboard reads beyond the API's backend (whose store holds
/// the rollups, summaries, raw results and gaps).
pub trait WebBackend: AdminBackend {
    /// The public status page's settings.
    fn status_page(&self) -> StatusPage;
    /// Cookies only over https (the dashboard URL says which).
    fn secure_cookies(&self) -> bool;
    /// One monitor's current picture (the status of all, for one).
    fn monitor_status(&self, name: &str) -> Option<MonitorStatus>;
}

struct Web<B> {
    backend: B,
    admin: AdminToken,
    sessions: Sessions,
    status_cache: status::Cache,
}

/// The dashboard's routes.
pub fn router<B: WebBackend>(backend: B, admin: AdminToken) -> Router {
    let web = Arc::new(Web {
        backend,
        admin,
        sessions: Sessions::default(),
        status_cache: status::Cache::default(),
    });
    Router::new()
        .route("/", get(overview::<B>))
        .route("/login", get(login_page).post(login::<B>))
        .route("/logout", post(logout::<B>))
        .route("/monitors/{name}", get(monitor::<B>))
        .route("/agents", get(agents::<B>))
        .route("/agents/{name}/revoke", post(revoke::<B>))
        .route("/incidents", get(incidents::<B>))
        .route("/incidents/{id}", get(incident::page::<B>))
        .route(
            "/maintenance",
            get(maintenance::<B>).post(add_maintenance::<B>),
        )
        .route("/maintenance/{name}/cancel", post(cancel_maintenance::<B>))
        .route("/status", get(status_page::<B>))
        .route("/assets/portwatch.css", get(css))
        .route("/assets/portwatch.js", get(js))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(web)
}

/// Headers every page gets: no framing, no sniffing, scripts and styles
/// from this origin only (the charts use presentation attributes, which a
/// CSP does not govern), no referrer leaking monitor names.
async fn security_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}

async fn css() -> Response {
    asset("text/css; charset=utf-8", page::CSS)
}

async fn js() -> Response {
    asset("text/javascript; charset=utf-8", page::JS)
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

fn now_ms() -> i64 {
    crate::http::now_ms()
}

/// Who is looking: a session, or a bearer token (no CSRF needed: browsers
/// never add one by themselves).
enum Viewer {
    Session(Session),
    Bearer,
}

impl Viewer {
    fn nav(&self, active: &'static str) -> Nav<'_> {
        Nav {
            active,
            csrf: self.csrf(),
        }
    }

    fn csrf(&self) -> &str {
        match self {
            Viewer::Session(s) => &s.csrf,
            Viewer::Bearer => "",
        }
    }

    /// May this viewer's form change something?
    fn may_post(&self, csrf: &str) -> bool {
        match self {
            Viewer::Session(s) => session::csrf_ok(s, csrf),
            Viewer::Bearer => true,
        }
    }
}

fn viewer<B>(web: &Web<B>, headers: &HeaderMap) -> Option<Viewer> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if web.admin.verify_bearer(bearer) {
        return Some(Viewer::Bearer);
    }
    let cookie = headers.get(header::COOKIE)?.to_str().ok()?;
    let value = session::cookie_value(cookie)?;
    web.sessions.check(value, now_ms()).map(Viewer::Session)
}

/// A page for signed-in viewers: the viewer, or the response to send
/// (a redirect to the sign-in page, which comes back to `path`).
/// Pages for signed-in viewers take a `Viewer`; without a session they
/// answer with a redirect to the sign-in page, which comes back to the page
/// (to the overview after a form post).
impl<B: WebBackend> axum::extract::FromRequestParts<Arc<Web<B>>> for Viewer {
    type Rejection = Redirect;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        web: &Arc<Web<B>>,
    ) -> Result<Viewer, Redirect> {
        viewer(web, &parts.headers).ok_or_else(|| {
            let path = match parts.method {
                axum::http::Method::GET => parts.uri.path_and_query().map_or("/", |p| p.as_str()),
                _ => "/",
            };
            let next = serde_urlencoded::to_string([("next", path)]).unwrap_or_default();
            Redirect::to(&format!("/login?{next}"))
        })
    }
}

fn html_page(status: StatusCode, markup: Markup) -> Response {
    (status, markup).into_response()
}

// ---- sign-in ------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
struct LoginQuery {
    next: Option<String>,
}

type QueryResult<T> = Result<Query<T>, axum::extract::rejection::QueryRejection>;
type FormResult<T> = Result<Form<T>, axum::extract::rejection::FormRejection>;

async fn login_page(query: QueryResult<LoginQuery>) -> Response {
    let next = query.ok().and_then(|Query(q)| q.next);
    html_page(StatusCode::OK, login_form(next.as_deref(), None))
}

fn login_form(next: Option<&str>, error: Option<&str>) -> Markup {
    layout(
        "Sign in",
        None,
        html! {
            div.card.login {
                h1 { "Sign in" }
                @if let Some(e) = error { p.notice.error { (e) } }
                p.muted { "Paste the collector's admin token (" code { "admin.token" } " in its data dir)." }
                form method="post" action="/login" {
                    input type="hidden" name="next" value=(session::safe_next(next));
                    label for="token" { "Admin token" }
                    input #token type="password" name="token" autocomplete="current-password" required autofocus;
                    button type="submit" { "Sign in" }
                }
            }
        },
    )
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    token: String,
    #[serde(default)]
    next: Option<String>,
}

async fn login<B: WebBackend>(
    State(web): State<Arc<Web<B>>>,
    form: Result<Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Ok(Form(form)) = form else {
        return html_page(
            StatusCode::BAD_REQUEST,
            login_form(None, Some("The form was incomplete.")),
        );
    };
    let next = session::safe_next(form.next.as_deref());
    if !web
        .admin
        .verify_bearer(Some(&format!("Bearer {}", form.token.trim())))
    {
        tracing::warn!("dashboard sign-in with a wrong token");
        return html_page(
            StatusCode::UNAUTHORIZED,
            login_form(Some(&next), Some("That is not the admin token.")),
        );
    }
    let value = web.sessions.create(now_ms());
    web.backend
        .audit("dashboard.login", "admin", serde_json::Value::Null);
    (
        StatusCode::SEE_OTHER,
        [
            (
                header::SET_COOKIE,
                session::set_cookie(&value, web.backend.secure_cookies()),
            ),
            (header::LOCATION, next),
        ],
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout<B: WebBackend>(
    State(web): State<Arc<Web<B>>>,
    headers: HeaderMap,
    form: FormResult<CsrfForm>,
) -> Response {
    let csrf = form.map(|Form(f)| f.csrf).unwrap_or_default();
    if let Some(Viewer::Session(s)) = viewer(&web, &headers)
        && session::csrf_ok(&s, &csrf)
        && let Some(value) = headers
            .get(header::COOKIE)
            .and_then(|c| c.to_str().ok())
            .and_then(session::cookie_value)
    {
        web.sessions.remove(value);
    }
    (
        StatusCode::SEE_OTHER,
        [
            (
                header::SET_COOKIE,
                session::set_cookie("", web.backend.secure_cookies()),
            ),
            (header::LOCATION, "/login".to_owned()),
        ],
    )
        .into_response()
}

fn forbidden(nav: &Nav<'_>) -> Response {
    html_page(
        StatusCode::FORBIDDEN,
        page::problem(
            "Form expired",
            Some(nav),
            "The form's security token did not match this session: reload the page and try again.",
        ),
    )
}

// ---- the overview -------------------------------------------------------------

/// `/?q=&state=&tag=&location=&page=&per=`
#[derive(Debug, Default, Clone, Deserialize)]
struct OverviewQuery {
    #[serde(default)]
    q: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    tag: Option<String>,
    #[serde(default)]
    location: Option<String>,
    #[serde(default)]
    page: Option<usize>,
    #[serde(default)]
    per: Option<usize>,
}

impl OverviewQuery {
    /// The query string with one field changed (links keep the others).
    fn with(&self, field: &str, value: Option<&str>) -> String {
        let mut pairs: Vec<(&str, String)> = Vec::new();
        let mut put = |k: &'static str, v: Option<String>| {
            if let Some(v) = v.filter(|v| !v.is_empty()) {
                pairs.push((k, v));
            }
        };
        let pick = |k: &str, own: &Option<String>| {
            if k == field {
                value.map(str::to_owned)
            } else {
                own.clone()
            }
        };
        put("q", pick("q", &self.q));
        put("state", pick("state", &self.state));
        put("tag", pick("tag", &self.tag));
        put("location", pick("location", &self.location));
        put("per", self.per.map(|p| p.to_string()));
        if field == "page" {
            put("page", value.map(str::to_owned));
        }
        let qs = serde_urlencoded::to_string(&pairs).unwrap_or_default();
        if qs.is_empty() {
            "/".into()
        } else {
            format!("/?{qs}")
        }
    }
}

const STATES: [&str; 5] = ["down", "degraded", "unknown", "maintenance", "up"];

fn severity(state: &str) -> usize {
    STATES.iter().position(|s| *s == state).unwrap_or(2)
}

/// The latency a chart or sparkline shows for a bucket: the TCP handshake
/// when the check has one, else the whole check.
fn latency_ms(s: &Summary) -> Option<f64> {
    s.avg_us(Phase::Connect)
        .or_else(|| s.avg_us(Phase::Total))
        .map(|us| us / 1000.0)
}

/// One overview row's history: 24 hourly latencies over every location,
/// and the 24 h uptime with the checks during the monitor's maintenance
/// windows left out.
struct History {
    spark: Vec<Option<f64>>,
    uptime: Option<f64>,
    /// Maintenance time those 24 h held (its checks are not counted).
    maintenance_ms: i64,
}

fn row_history(
    store: &dyn Store,
    windows: &MaintenanceRegistry,
    monitor: &str,
    tags: &[String],
    locations: &[String],
    now: i64,
) -> History {
    let first_hour = Bucket::Hour.start_of(now) - 23 * HOUR_MS;
    let covered = windows.covered(monitor, tags, first_hour, now + 1);
    let mut hours = vec![Summary::default(); 24];
    let mut all = Summary::default();
    for loc in locations {
        let q = SummaryQuery {
            monitor_id: monitor.to_owned(),
            location: loc.clone(),
            from_ms: first_hour,
            to_ms: now + 1,
            bucket: Bucket::Hour,
        };
        for s in store.summaries(&q).unwrap_or_default() {
            let i = ((s.start_ms - first_hour) / HOUR_MS) as usize;
            if let Some(h) = hours.get_mut(i) {
                h.merge(&s);
            }
        }
        for s in summaries_excluding(store, &q, &covered).unwrap_or_default() {
            all.merge(&s);
        }
    }
    History {
        spark: hours.iter().map(latency_ms).collect(),
        uptime: all.availability(),
        maintenance_ms: crate::maintenance::total_ms(&covered),
    }
}

struct Row {
    status: MonitorStatus,
    target: String,
    tags: Vec<String>,
    diagnosis: Option<String>,
    history: History,
}

async fn overview<B: WebBackend>(
    State(web): State<Arc<Web<B>>>,
    viewer: Viewer,
    query: Result<Query<OverviewQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let nav = viewer.nav("overview");
    let q = match query {
        Ok(Query(q)) => q,
        Err(e) => {
            return html_page(
                StatusCode::BAD_REQUEST,
                page::problem("Bad filter", Some(&nav), &e.body_text()),
            );
        }
    };
    let statuses = match web.backend.status().await {
        Ok(s) => s,
        Err(e) => {
            return html_page(
                StatusCode::SERVICE_UNAVAILABLE,
                page::problem("Overview unavailable", Some(&nav), &e.message),
            );
        }
    };
    let snapshot = web.backend.monitor_registry().snapshot();
    let monitors: HashMap<&str, &crate::monitors::Monitor> =
        snapshot.iter().map(|m| (m.name.as_str(), m)).collect();
    let no_tags: Vec<String> = Vec::new();
    let open: HashMap<u64, String> = web
        .backend
        .incidents(&IncidentsQuery {
            open: true,
            limit: usize::MAX,
            ..IncidentsQuery::default()
        })
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|i| (i.id, i.diagnosis))
        .collect();

    let needle =
        q.q.as_deref()
            .map(str::to_lowercase)
            .filter(|s| !s.is_empty());
    let tag = q.tag.as_deref().filter(|s| !s.is_empty());
    let location = q.location.as_deref().filter(|s| !s.is_empty());
    let state = q.state.as_deref().filter(|s| !s.is_empty());
    let mut all_tags: BTreeSet<String> = BTreeSet::new();
    let mut all_locations: BTreeSet<String> = BTreeSet::new();
    let mut counts: HashMap<&'static str, usize> = HashMap::new();
    let mut matching: Vec<(MonitorStatus, &str, &Vec<String>)> = Vec::new();
    for s in statuses {
        let (target, tags) = monitors
            .get(s.monitor.as_str())
            .map_or(("", &no_tags), |m| (m.spec.target.as_str(), &m.tags));
        for t in tags {
            if !all_tags.contains(t.as_str()) {
                all_tags.insert(t.clone());
            }
        }
        for l in &s.locations {
            if !all_locations.contains(l.location.as_str()) {
                all_locations.insert(l.location.clone());
            }
        }
        if let Some(n) = &needle
            && !s.monitor.to_lowercase().contains(n)
            && !target.to_lowercase().contains(n)
        {
            continue;
        }
        if let Some(t) = tag
            && !tags.iter().any(|x| x == t)
        {
            continue;
        }
        if let Some(l) = location
            && !s.locations.iter().any(|x| x.location == l)
        {
            continue;
        }
        *counts.entry(page::state_class(&s.state)).or_default() += 1;
        if let Some(st) = state
            && page::state_class(&s.state) != st
        {
            continue;
        }
        matching.push((s, target, tags));
    }
    matching.sort_by(|a, b| {
        severity(&a.0.state)
            .cmp(&severity(&b.0.state))
            .then_with(|| a.0.monitor.cmp(&b.0.monitor))
    });
    let per = q.per.unwrap_or(50).clamp(10, 500);
    let pages = matching.len().div_ceil(per).max(1);
    let page_no = q.page.unwrap_or(1).clamp(1, pages);
    let total = matching.len();
    let visible: Vec<(MonitorStatus, String, Vec<String>)> = matching
        .into_iter()
        .skip((page_no - 1) * per)
        .take(per)
        .map(|(s, target, tags)| (s, target.to_owned(), tags.clone()))
        .collect();
    let store = web.backend.store();
    let windows = web.backend.maintenance_registry().clone();
    let now = now_ms();
    let rows: Vec<Row> = tokio::task::spawn_blocking(move || {
        visible
            .into_iter()
            .map(|(status, target, tags)| {
                let locs: Vec<String> = status
                    .locations
                    .iter()
                    .map(|l| l.location.clone())
                    .collect();
                let history =
                    row_history(store.as_ref(), &windows, &status.monitor, &tags, &locs, now);
                Row {
                    diagnosis: None,
                    status,
                    target,
                    tags,
                    history,
                }
            })
            .collect()
    })
    .await
    .unwrap_or_default();
    let rows: Vec<Row> = rows
        .into_iter()
        .map(|mut r| {
            r.diagnosis = r.status.incident.and_then(|id| open.get(&id).cloned());
            r
        })
        .collect();
    let columns: Vec<String> = match location {
        Some(l) => vec![l.to_owned()],
        None => rows
            .iter()
            .flat_map(|r| r.status.locations.iter().map(|l| l.location.clone()))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect(),
    };
    let body = html! {
        h1 { "Overview" }
        form.filters method="get" action="/" {
            input type="search" name="q" placeholder="name or target" value=[q.q.as_deref()];
            select name="state" {
                option value="" { "any state" }
                @for s in STATES { option value=(s) selected[state == Some(s)] { (s) } }
            }
            select name="tag" {
                option value="" { "any tag" }
                @for t in &all_tags { option value=(t) selected[tag == Some(t.as_str())] { (t) } }
            }
            select name="location" {
                option value="" { "every location" }
                @for l in &all_locations { option value=(l) selected[location == Some(l.as_str())] { (l) } }
            }
            button type="submit" { "filter" }
            @if needle.is_some() || tag.is_some() || location.is_some() || state.is_some() {
                a href="/" { "clear" }
            }
        }
        div data-refresh="10" {
            div.summary {
                @for s in STATES {
                    a class=[(state == Some(s)).then_some("on")] href=(q.with("state", if state == Some(s) { None } else { Some(s) })) {
                        span class={"cell " (s)} {} b { (counts.get(s).copied().unwrap_or(0)) } (s)
                    }
                }
            }
            @if total == 0 {
                p.card.muted { "No monitor matches. Monitors come from the config file's " code { "[[monitors]]" } " or " code { "PUT /api/v1/monitors/<name>" } "." }
            } @else {
                table.grid {
                    thead { tr {
                        th { "monitor" } th { "state" }
                        @for c in &columns { th.loc title=(c) { (c.strip_prefix("agent:").unwrap_or(c)) } }
                        th { "latency 24 h" } th.num title="checks during maintenance windows are not counted" { "uptime 24 h" }
                    } }
                    tbody {
                        @for r in &rows {
                            tr {
                                td {
                                    a href={"/monitors/" (urlencode(&r.status.monitor))} { b { (r.status.monitor) } }
                                    br;
                                    span.muted.mono { (r.target) }
                                    " "
                                    @for t in &r.tags { span.tag { (t) } }
                                    @if let Some(d) = &r.diagnosis { div.diag { (d) } }
                                    @if let Some(m) = &r.status.maintenance { div.muted { "maintenance: " (m) } }
                                }
                                td { (badge(&r.status.state)) }
                                @for c in &columns {
                                    td.loc {
                                        @match r.status.locations.iter().find(|l| &l.location == c) {
                                            Some(l) => {
                                                @let st = if r.status.maintenance.is_some() { "maintenance" } else { l.state.as_str() };
                                                span class={"cell " (st)} title=(cell_title(l, now)) {}
                                            }
                                            None => { span.cell.none title="not checked here" {} }
                                        }
                                    }
                                }
                                td { (chart::sparkline(&r.history.spark, "average handshake latency per hour")) }
                                td.num {
                                    (percent(r.history.uptime))
                                    @if r.history.maintenance_ms > 0 {
                                        div.muted.excl { "excl. " (span(r.history.maintenance_ms)) " maintenance" }
                                    }
                                }
                            }
                        }
                    }
                }
                div.pager {
                    @if page_no > 1 { a href=(q.with("page", Some(&(page_no - 1).to_string()))) { "← previous" } }
                    span.muted { (total) " monitors · page " (page_no) " of " (pages) }
                    @if page_no < pages { a href=(q.with("page", Some(&(page_no + 1).to_string()))) { "next →" } }
                }
            }
            p.muted { "Updated " (utc(now)) }
        }
        (page::refresh_hint())
    };
    html_page(StatusCode::OK, layout("Overview", Some(&nav), body))
}

fn cell_title(l: &crate::incident::consensus::LocationView, now: i64) -> String {
    let mut t = format!("{}: {}", l.location, l.state.as_str());
    if let Some(r) = &l.reason {
        t.push_str(&format!(" ({r})"));
    }
    if let Some(s) = l.down_since_ms {
        t.push_str(&format!(", down for {}", span(now - s)));
    }
    if let Some(c) = l.last_check_ms {
        t.push_str(&format!(", checked {} ago", span(now - c)));
    }
    t
}

/// A path segment, percent-encoded.
fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// ---- one monitor ----------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
struct MonitorQuery {
    #[serde(default)]
    range: Option<String>,
    #[serde(default)]
    location: Option<String>,
}

const RANGES: [(&str, i64); 5] = [
    ("1h", HOUR_MS),
    ("6h", 6 * HOUR_MS),
    ("24h", 24 * HOUR_MS),
    ("7d", 7 * 24 * HOUR_MS),
    ("30d", 30 * 24 * HOUR_MS),
];

/// One chart bucket over the locations being shown.
#[derive(Default, Clone)]
struct Cell {
    checks: u64,
    failures: u64,
    count: [u64; 5],
    sum_us: [f64; 5],
}

impl Cell {
    fn add_rollup(&mut self, r: &Rollup) {
        self.checks += u64::from(r.checks);
        self.failures += u64::from(r.failures);
        for (i, p) in r.phases.iter().enumerate() {
            self.count[i] += u64::from(p.count);
            self.sum_us[i] += p.sum_us as f64;
        }
    }

    fn add_summary(&mut self, s: &Summary) {
        self.checks += s.checks;
        self.failures += s.failures;
        for i in 0..5 {
            self.count[i] += s.phase_count[i];
            self.sum_us[i] += s.phase_sum_us[i] as f64;
        }
    }

    fn avg_ms(&self, p: Phase) -> Option<f64> {
        let i = p as usize;
        (self.count[i] > 0).then(|| self.sum_us[i] / self.count[i] as f64 / 1000.0)
    }
}

/// Buckets of one location over a range: minute rollups folded into
/// `bucket_ms` cells up to a day, hourly summaries beyond.
fn cells(
    store: &dyn Store,
    monitor: &str,
    location: &str,
    from: i64,
    to: i64,
    bucket_ms: i64,
) -> Vec<Cell> {
    let n = ((to - from) / bucket_ms).max(1) as usize;
    let mut out = vec![Cell::default(); n];
    let slot = |ts: i64| {
        usize::try_from((ts - from) / bucket_ms)
            .ok()
            .filter(|i| *i < n)
    };
    if bucket_ms < HOUR_MS {
        let q = RollupQuery {
            monitor_id: monitor.to_owned(),
            location: location.to_owned(),
            from_ms: from,
            to_ms: to,
        };
        for r in store.rollups(&q).unwrap_or_default() {
            if let Some(i) = slot(r.minute_start_ms) {
                out[i].add_rollup(&r);
            }
        }
    } else {
        let q = SummaryQuery {
            monitor_id: monitor.to_owned(),
            location: location.to_owned(),
            from_ms: from,
            to_ms: to,
            bucket: Bucket::Hour,
        };
        for s in store.summaries(&q).unwrap_or_default() {
            if let Some(i) = slot(s.start_ms) {
                out[i].add_summary(&s);
            }
        }
    }
    out
}

/// The monitor page's uptime periods: the last 24 h, 7 d and 30 d (from
/// the start of the hour).
const UPTIME_DAYS: [i64; 3] = [1, 7, 30];

struct MonitorData {
    charts: Vec<(String, Vec<Cell>)>,
    /// One report per [`UPTIME_DAYS`] period: what `GET /api/v1/uptime` says.
    uptimes: Vec<UptimeReport>,
    results: Vec<crate::store::StoredResult>,
}

async fn monitor<B: WebBackend>(
    State(web): State<Arc<Web<B>>>,
    viewer: Viewer,
    Path(name): Path<String>,
    query: Result<Query<MonitorQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let nav = viewer.nav("overview");
    let q = query.map(|Query(q)| q).unwrap_or_default();
    let Some(m) = web.backend.monitor_registry().get(&name) else {
        return html_page(
            StatusCode::NOT_FOUND,
            page::problem(
                "No such monitor",
                Some(&nav),
                &format!("There is no monitor named {name:?}."),
            ),
        );
    };
    let (range_name, range_ms) = RANGES
        .iter()
        .find(|(n, _)| Some(*n) == q.range.as_deref())
        .copied()
        .unwrap_or(RANGES[2]);
    let now = now_ms();
    let status = web.backend.monitor_status(&name);
    let store = web.backend.store();
    let mut locations: Vec<String> = status
        .as_ref()
        .map(|s| s.locations.iter().map(|l| l.location.clone()).collect())
        .unwrap_or_default();
    for l in store.locations_of(&name).unwrap_or_default() {
        if !locations.contains(&l) {
            locations.push(l);
        }
    }
    locations.sort();
    let shown: Vec<String> = match q.location.as_deref().filter(|l| !l.is_empty()) {
        Some(l) => locations.iter().filter(|x| *x == l).cloned().collect(),
        None => locations.clone(),
    };
    // Buckets: 1 min up to 6 h, 5 min for a day, hours beyond.
    let bucket_ms = match range_ms {
        r if r <= 6 * HOUR_MS => MINUTE_MS,
        r if r <= 24 * HOUR_MS => 5 * MINUTE_MS,
        _ => HOUR_MS,
    };
    let to = Bucket::Hour.start_of(now) + HOUR_MS;
    let to = if bucket_ms < HOUR_MS {
        now - now.rem_euclid(bucket_ms) + bucket_ms
    } else {
        to
    };
    let from = to - range_ms;
    let data = {
        let (store, name, shown, locations, windows, monitor) = (
            store.clone(),
            name.clone(),
            shown.clone(),
            locations.clone(),
            web.backend.maintenance_registry().clone(),
            m.clone(),
        );
        tokio::task::spawn_blocking(move || MonitorData {
            charts: shown
                .iter()
                .map(|l| {
                    (
                        l.clone(),
                        cells(store.as_ref(), &name, l, from, to, bucket_ms),
                    )
                })
                .collect(),
            uptimes: UPTIME_DAYS
                .iter()
                .map(|days| {
                    let from = Bucket::Hour.start_of(now - days * 24 * HOUR_MS);
                    uptime::report(
                        store.as_ref(),
                        &windows,
                        &monitor,
                        &locations,
                        from,
                        now + 1,
                    )
                    .unwrap_or_default()
                })
                .collect(),
            results: store
                .results(
                    &ResultQuery::monitor(&name)
                        .range(now - 7 * 24 * HOUR_MS, now + 60_000)
                        .limit(50)
                        .newest_first(),
                )
                .unwrap_or_default(),
        })
        .await
    };
    let Ok(data) = data else {
        return html_page(
            StatusCode::INTERNAL_SERVER_ERROR,
            page::problem(
                "Monitor unavailable",
                Some(&nav),
                "reading its history failed",
            ),
        );
    };
    let incidents = web
        .backend
        .incidents(&IncidentsQuery {
            monitor: Some(name.clone()),
            limit: 20,
            ..IncidentsQuery::default()
        })
        .await
        .unwrap_or_default();
    let windows: Vec<_> = web
        .backend
        .maintenance_registry()
        .list()
        .into_iter()
        .filter(|w| w.selects(&name, &m.tags))
        .collect();

    // The latency chart: one line per location, the handshake if the check
    // has one.
    let has_connect = data
        .charts
        .iter()
        .any(|(_, c)| c.iter().any(|c| c.count[Phase::Connect as usize] > 0));
    let phase = if has_connect {
        Phase::Connect
    } else {
        Phase::Total
    };
    let t = |i: usize| from + i as i64 * bucket_ms + bucket_ms / 2;
    let lines: Vec<chart::Line> = data
        .charts
        .iter()
        .map(|(loc, cells)| chart::Line {
            label: loc.clone(),
            points: cells
                .iter()
                .enumerate()
                .map(|(i, c)| (t(i), c.avg_ms(phase)))
                .collect(),
        })
        .collect();
    let mut spans: Vec<chart::Span> = Vec::new();
    for (loc, cells) in &data.charts {
        for (i, c) in cells.iter().enumerate().filter(|(_, c)| c.failures > 0) {
            spans.push(chart::Span {
                from_ms: from + i as i64 * bucket_ms,
                to_ms: from + (i as i64 + 1) * bucket_ms,
                kind: chart::SpanKind::Failure,
                title: format!("{loc}: {} of {} checks down", c.failures, c.checks),
            });
        }
    }
    for i in &incidents {
        let end = i.resolved_ms.unwrap_or(now);
        if end >= from && i.since_ms < to {
            spans.push(chart::Span {
                from_ms: i.since_ms,
                to_ms: end,
                kind: chart::SpanKind::Incident,
                title: format!("incident #{}: {}", i.id, i.diagnosis),
            });
        }
    }
    for w in &windows {
        for (s, e) in w.occurrences(from, to) {
            spans.push(chart::Span {
                from_ms: s,
                to_ms: e,
                kind: chart::SpanKind::Maintenance,
                title: format!("maintenance {}", w.name),
            });
        }
    }
    // The phase breakdown over the shown locations together.
    let n = data.charts.first().map_or(0, |c| c.1.len());
    let mut merged = vec![Cell::default(); n];
    for (_, cells) in &data.charts {
        for (i, c) in cells.iter().enumerate() {
            let m = &mut merged[i];
            m.checks += c.checks;
            m.failures += c.failures;
            for p in 0..5 {
                m.count[p] += c.count[p];
                m.sum_us[p] += c.sum_us[p];
            }
        }
    }
    let layers: Vec<chart::Line> = [
        (Phase::Dns, "dns"),
        (Phase::Connect, "connect"),
        (Phase::Tls, "tls"),
        (Phase::FirstByte, "first byte"),
    ]
    .into_iter()
    .filter(|(p, _)| merged.iter().any(|c| c.count[*p as usize] > 0))
    .map(|(p, label)| chart::Line {
        label: label.into(),
        points: merged
            .iter()
            .enumerate()
            .map(|(i, c)| (t(i), c.avg_ms(p)))
            .collect(),
    })
    .collect();
    let range_link = |r: &str| {
        let mut pairs = vec![("range", r.to_owned())];
        if let Some(l) = q.location.as_deref().filter(|l| !l.is_empty()) {
            pairs.push(("location", l.to_owned()));
        }
        format!(
            "?{}",
            serde_urlencoded::to_string(&pairs).unwrap_or_default()
        )
    };
    let loc_link = |l: Option<&str>| {
        let mut pairs = vec![("range", range_name.to_owned())];
        if let Some(l) = l {
            pairs.push(("location", l.to_owned()));
        }
        format!(
            "?{}",
            serde_urlencoded::to_string(&pairs).unwrap_or_default()
        )
    };
    let state = status.as_ref().map_or("unknown", |s| s.state.as_str());
    let body = html! {
        h1 { (m.name) " " (badge(state)) }
        div.card {
            dl.kv {
                dt { "target" } dd.mono { (m.spec.target) }
                dt { "checked every" } dd { (span(i64::from(m.spec.interval_ms))) @if let Some(t) = &m.raw.timeout { ", timeout " (t) } }
                dt { "locations" } dd { @for l in &locations { span.tag { (l) } } }
                @if !m.tags.is_empty() { dt { "tags" } dd { @for t in &m.tags { span.tag { (t) } } } }
                @if let Some(o) = &m.owner { dt { "owner" } dd { (o) } }
                @if let Some(r) = &m.runbook { dt { "runbook" } dd { (r) } }
                @if let Some(d) = &m.depends_on { dt { "depends on" } dd { a href={"/monitors/" (urlencode(d))} { (d) } } }
                @if let Some(w) = status.as_ref().and_then(|s| s.maintenance.as_ref()) { dt { "maintenance" } dd { (w) } }
            }
        }
        @if let Some(s) = &status {
            table {
                thead { tr { th { "location" } th { "state" } th { "reason" } th { "down since" } th { "last check" } } }
                tbody {
                    @for l in &s.locations {
                        tr {
                            td { (l.location) }
                            td { (badge(l.state.as_str())) }
                            td { (l.reason.as_deref().unwrap_or("")) }
                            td { @if let Some(d) = l.down_since_ms { (ago(now, d)) } }
                            td { @if let Some(c) = l.last_check_ms { (ago(now, c)) } }
                        }
                    }
                }
            }
        }
        h2 { "Latency" }
        p.ranges {
            @for (r, _) in RANGES { a class=[(r == range_name).then_some("on")] href=(range_link(r)) { (r) } }
            " · "
            a class=[q.location.as_deref().is_none_or(str::is_empty).then_some("on")] href=(loc_link(None)) { "all locations" }
            @for l in &locations { " " a class=[(q.location.as_deref() == Some(l.as_str())).then_some("on")] href=(loc_link(Some(l))) { (l) } }
        }
        p.muted {
            (if phase == Phase::Connect { "TCP handshake (connect)" } else { "whole check" })
            ", average per " (span(bucket_ms)) "; red marks: failed checks; shaded: incidents and maintenance. Times in UTC."
        }
        (chart::lines(&format!("{} latency by location", m.name), from, to, &lines, &spans))
        h2 { "Phase breakdown" }
        @if layers.is_empty() {
            p.muted { "No phase timings in this range." }
        } @else {
            (chart::stacked(&format!("{} phases", m.name), from, to, &layers, &[]))
        }
        h2 { "Uptime" }
        table {
            thead { tr { th { "location" } th.num { "24 h" } th.num { "7 d" } th.num { "30 d" } th.num { "checks (30 d)" } } }
            tbody {
                @for loc in &locations {
                    tr {
                        td { (loc) }
                        @for r in &data.uptimes {
                            td.num { (percent(r.locations.iter().find(|l| &l.location == loc).and_then(|l| l.uptime))) }
                        }
                        td.num { (data.uptimes.last().and_then(|r| r.locations.iter().find(|l| &l.location == loc)).map_or(0, |l| l.checks)) }
                    }
                }
                tr {
                    td { b { "all locations" } }
                    @for r in &data.uptimes { td.num { b { (percent(r.uptime)) } } }
                    td.num { (data.uptimes.last().map_or(0, |r| r.checks)) }
                }
                tr.maintenance-excluded {
                    td.muted { "maintenance excluded" }
                    @for r in &data.uptimes {
                        td.num.muted { @if r.maintenance_excluded_ms > 0 { (span(r.maintenance_excluded_ms)) } @else { "none" } }
                    }
                    td {}
                }
            }
        }
        p.muted { "Uptime is the share of checks not down. Checks during maintenance windows covering this monitor count neither as up nor as down (whole minutes: a window touching a minute leaves it out); " code { "GET /api/v1/uptime" } " gives the same figures." }
        h2 { "Incidents" }
        (incident_table(&incidents, now, false))
        h2 { "Maintenance windows" }
        @if windows.is_empty() {
            p.muted { "None covers this monitor." }
        } @else {
            table {
                thead { tr { th { "window" } th { "reason" } th { "next" } th { "until" } } }
                tbody {
                    @for w in &windows {
                        @let info = w.info(now);
                        tr {
                            td { (w.name) @if info.active { " " (badge("maintenance")) } }
                            td { (w.reason.as_deref().unwrap_or("")) }
                            td { @if let Some(s) = info.next_start_ms { (utc(s)) } }
                            td { @if let Some(e) = info.next_end_ms { (utc(e)) } }
                        }
                    }
                }
            }
        }
        h2 { "Recent results" }
        (results_table(&data.results))
    };
    html_page(StatusCode::OK, layout(&m.name, Some(&nav), body))
}

fn results_table(results: &[crate::store::StoredResult]) -> Markup {
    let status_name = |s: i32| match pb::Status::try_from(s) {
        Ok(pb::Status::Up) => "up",
        Ok(pb::Status::Degraded) => "degraded",
        Ok(pb::Status::Down) => "down",
        _ => "unknown",
    };
    html! {
        @if results.is_empty() {
            p.muted { "No results in the last 7 days." }
        } @else {
            table {
                thead { tr { th { "time (UTC)" } th { "location" } th { "status" } th { "reason" } th { "message" } th { "address" } th.num { "connect" } th.num { "total" } } }
                tbody {
                    @for r in results {
                        @let res = &r.result;
                        @let phases = res.phases.as_ref();
                        tr {
                            td.mono { (utc(res.scheduled_at_unix_ms)) }
                            td { (r.location) }
                            td { (badge(status_name(res.status))) }
                            td { (crate::incident::reason_name(res.reason)) }
                            td.mono { (untrusted(&res.message, 160)) }
                            td.mono { (untrusted(&res.address, 64)) }
                            td.num { (page::ms_of_us(phases.and_then(|p| p.connect_us))) }
                            td.num { (page::ms_of_us(phases.map(|p| p.total_us))) }
                        }
                    }
                }
            }
        }
    }
}

fn incident_table(incidents: &[Incident], now: i64, with_monitor: bool) -> Markup {
    html! {
        @if incidents.is_empty() {
            p.muted { "No incidents." }
        } @else {
            table {
                thead { tr {
                    th { "#" } @if with_monitor { th { "monitor" } } th { "state" } th { "diagnosis" } th { "began" } th { "lasted" } th { "notified" }
                } }
                tbody {
                    @for i in incidents {
                        tr {
                            td { a href={"/incidents/" (i.id)} { (i.id) } }
                            @if with_monitor {
                                td {
                                    @if i.monitor.starts_with("agent:") { a href="/agents" { (i.monitor) } }
                                    @else { a href={"/monitors/" (urlencode(&i.monitor))} { (i.monitor) } }
                                }
                            }
                            td { @if i.resolved_ms.is_some() { span.st.st-up { "resolved" } } @else { span.st.st-down { "open" } } }
                            td { (i.diagnosis) @if let Some(r) = &i.reason { " " span.muted { "(" (r) ")" } } }
                            td { (ago(now, i.since_ms)) }
                            td { (span(i.resolved_ms.unwrap_or(now) - i.since_ms)) @if i.resolved_ms.is_none() { " so far" } }
                            td {
                                @if i.silent { span.muted { "no (" (i.held.as_deref().or(i.maintenance.as_deref()).unwrap_or("silent")) ")" } }
                                @else if i.notified_open_ms.is_some() { "yes" }
                                @else if let Some(h) = &i.held { span.muted { "held: " (h) } }
                                @else { span.muted { "pending" } }
                            }
                        }
                    }
                }
            }
        }
    }
}

// ---- incidents ------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
struct IncidentsPageQuery {
    #[serde(default)]
    open: Option<String>,
    #[serde(default)]
    before: Option<u64>,
}

async fn incidents<B: WebBackend>(
    State(web): State<Arc<Web<B>>>,
    viewer: Viewer,
    query: Result<Query<IncidentsPageQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let nav = viewer.nav("incidents");
    let q = query.map(|Query(q)| q).unwrap_or_default();
    let open_only = q.open.as_deref().is_some_and(|v| v == "1" || v == "true");
    const PAGE: usize = 50;
    let list = web
        .backend
        .incidents(&IncidentsQuery {
            open: open_only,
            before: q.before,
            limit: PAGE,
            monitor: None,
        })
        .await;
    let list = match list {
        Ok(l) => l,
        Err(e) => {
            return html_page(
                StatusCode::SERVICE_UNAVAILABLE,
                page::problem("Incidents unavailable", Some(&nav), &e.message),
            );
        }
    };
    let now = now_ms();
    let older = (list.len() == PAGE)
        .then(|| list.last().map(|i| i.id))
        .flatten();
    let body = html! {
        h1 { "Incidents" }
        p.ranges {
            a class=[(!open_only).then_some("on")] href="/incidents" { "all" }
            a class=[open_only.then_some("on")] href="/incidents?open=1" { "open" }
        }
        div data-refresh="15" { (incident_table(&list, now, true)) }
        div.pager {
            @if q.before.is_some() { a href=(if open_only { "/incidents?open=1" } else { "/incidents" }) { "← newest" } }
            @if let Some(id) = older {
                a href={"/incidents?" (if open_only { "open=1&" } else { "" }) "before=" (id)} { "older →" }
            }
        }
    };
    html_page(StatusCode::OK, layout("Incidents", Some(&nav), body))
}

// ---- agents ---------------------------------------------------------------------

async fn agents<B: WebBackend>(State(web): State<Arc<Web<B>>>, viewer: Viewer) -> Response {
    let nav = viewer.nav("agents");
    let list: Vec<AgentInfo> = match web.backend.list_agents().await {
        Ok(l) => l,
        Err(e) => {
            return html_page(
                StatusCode::SERVICE_UNAVAILABLE,
                page::problem("Agents unavailable", Some(&nav), &e.message),
            );
        }
    };
    let store = web.backend.store();
    let drops: Vec<u64> = list
        .iter()
        .map(|a| {
            store
                .gaps(&a.id)
                .unwrap_or_default()
                .iter()
                .map(|g| g.gap.count)
                .sum()
        })
        .collect();
    let now = now_ms();
    let body = html! {
        h1 { "Agents" }
        @if list.is_empty() {
            p.card.muted { "No agent enrolled yet: " code { "portwatch-collector token create --name NAME" } ", then " code { "portwatch-agent enroll '<join string>'" } " on the bastion host." }
        } @else {
            div data-refresh="15" {
                table {
                    thead { tr { th { "name" } th { "labels" } th { "link" } th { "version" } th { "certificate" } th.num { "backlog" } th.num { "dropped" } th {} } }
                    tbody {
                        @for (a, dropped) in list.iter().zip(&drops) {
                            tr {
                                td { b { (a.name) } @if let Some(r) = &a.public_region { br; span.muted { "public:" (r) } } }
                                td { @for (k, v) in &a.labels { span.tag { (k) "=" (v) } } }
                                td {
                                    @if a.revoked { span.st.st-down { "revoked" } }
                                    @else if let Some(since) = a.connected_since_unix_ms { span.st.st-up { "connected" } " " span.muted { "since " (ago(now, since)) } }
                                    @else if let Some(seen) = a.last_seen_unix_ms { span.st.st-unknown { "offline" } " " span.muted { "since " (ago(now, seen)) } }
                                    @else { span.st.st-unknown { "never connected" } }
                                }
                                td { (a.version.as_deref().unwrap_or("-")) }
                                td {
                                    @if a.cert_expires_at_unix_ms <= now { span.diag { "expired " } }
                                    (ago(now, a.cert_expires_at_unix_ms))
                                }
                                td.num { (a.backlog.map(|b| b.to_string()).unwrap_or_else(|| "-".into())) }
                                td.num { (dropped) }
                                td {
                                    @if !a.revoked {
                                        form method="post" action={"/agents/" (urlencode(&a.name)) "/revoke"} {
                                            input type="hidden" name="csrf" value=(viewer.csrf());
                                            button.danger type="submit" title="its stream closes; it must be enrolled again" { "revoke" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        p.muted { "Backlog: results waiting in the agent's buffer at its last report. Dropped: results its full buffer had to drop (shown as unknown)." }
    };
    html_page(StatusCode::OK, layout("Agents", Some(&nav), body))
}

async fn revoke<B: WebBackend>(
    State(web): State<Arc<Web<B>>>,
    viewer: Viewer,
    Path(name): Path<String>,
    form: FormResult<CsrfForm>,
) -> Response {
    let nav = viewer.nav("agents");
    if !viewer.may_post(&form.map(|Form(f)| f.csrf).unwrap_or_default()) {
        return forbidden(&nav);
    }
    match web.backend.revoke_agent(&name).await {
        Ok(a) => {
            tracing::info!(agent = %a.name, "agent revoked from the dashboard");
            web.backend.audit(
                "agent.revoke",
                &a.name,
                serde_json::json!({"via": "dashboard"}),
            );
            Redirect::to("/agents").into_response()
        }
        Err(e) => html_page(
            StatusCode::NOT_FOUND,
            page::problem("Revoke failed", Some(&nav), &e.message),
        ),
    }
}

// ---- maintenance ----------------------------------------------------------------

async fn maintenance<B: WebBackend>(State(web): State<Arc<Web<B>>>, viewer: Viewer) -> Response {
    maintenance_page(
        &web,
        &viewer,
        StatusCode::OK,
        None,
        &MaintenanceForm::default(),
    )
}

fn maintenance_page<B: WebBackend>(
    web: &Web<B>,
    viewer: &Viewer,
    code: StatusCode,
    error: Option<&str>,
    form: &MaintenanceForm,
) -> Response {
    let nav = viewer.nav("maintenance");
    let now = now_ms();
    let reg = web.backend.maintenance_registry();
    let windows = reg.list();
    let upcoming = reg.upcoming(now, now + 30 * 24 * HOUR_MS);
    let body = html! {
        h1 { "Maintenance" }
        p.muted { "Incidents inside a window are stored and shown, never notified. Windows from the config file are changed there." }
        h2 { "Windows" }
        @if windows.is_empty() {
            p.muted { "No window." }
        } @else {
            table {
                thead { tr { th { "name" } th { "covers" } th { "reason" } th { "next / current" } th { "from" } th {} } }
                tbody {
                    @for w in &windows {
                        @let info = w.info(now);
                        tr {
                            td { b { (w.name) } @if info.active { " " (badge("maintenance")) } }
                            td {
                                @for m in &w.monitors { span.tag { (m) } }
                                @for t in &w.tags { span.tag { "tag:" (t) } }
                            }
                            td { (w.reason.as_deref().unwrap_or("")) }
                            td {
                                @match (info.next_start_ms, info.next_end_ms) {
                                    (Some(s), Some(e)) => { (utc(s)) " → " (utc(e)) }
                                    _ => { span.muted { "over" } }
                                }
                            }
                            td { (format!("{:?}", w.origin).to_lowercase()) }
                            td {
                                @if w.origin == crate::maintenance::WindowOrigin::Api {
                                    form method="post" action={"/maintenance/" (urlencode(&w.name)) "/cancel"} {
                                        input type="hidden" name="csrf" value=(viewer.csrf());
                                        button.danger type="submit" { "cancel" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Next 30 days" }
        @if upcoming.is_empty() { p.muted { "Nothing scheduled." } } @else {
            table {
                thead { tr { th { "window" } th { "start (UTC)" } th { "end (UTC)" } th { "reason" } } }
                tbody { @for o in &upcoming { tr { td { (o.name) } td { (utc(o.start_ms)) } td { (utc(o.end_ms)) } td { (o.reason.as_deref().unwrap_or("")) } } } }
            }
        }
        h2 { "New window" }
        @if let Some(e) = error { pre.notice.error { (e) } }
        form.card method="post" action="/maintenance" {
            input type="hidden" name="csrf" value=(viewer.csrf());
            dl.kv {
                dt { label for="w-name" { "name" } } dd { input #w-name name="name" required value=(form.name); }
                dt { label for="w-monitors" { "monitors" } } dd { input #w-monitors name="monitors" placeholder="pg-main, redis (or *)" value=(form.monitors); }
                dt { label for="w-tags" { "tags" } } dd { input #w-tags name="tags" placeholder="db, cache" value=(form.tags); }
                dt { label for="w-start" { "start" } } dd { input #w-start name="start" placeholder="now, or 2026-12-01 02:00" value=(form.start); }
                dt { label for="w-duration" { "duration" } } dd { input #w-duration name="duration" placeholder="1h" required value=(form.duration); }
                dt { label for="w-tz" { "time zone" } } dd { input #w-tz name="time_zone" placeholder="UTC" value=(form.time_zone); }
                dt { label for="w-reason" { "reason" } } dd { input #w-reason name="reason" value=(form.reason); }
            }
            button type="submit" { "schedule" }
        }
    };
    html_page(code, layout("Maintenance", Some(&nav), body))
}

#[derive(Debug, Default, Deserialize)]
struct MaintenanceForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    monitors: String,
    #[serde(default)]
    tags: String,
    #[serde(default)]
    start: String,
    #[serde(default)]
    duration: String,
    #[serde(default)]
    time_zone: String,
    #[serde(default)]
    reason: String,
}

impl MaintenanceForm {
    fn raw(&self, now_ms: i64) -> RawWindow {
        let list = |s: &str| -> Vec<String> {
            s.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        };
        let opt = |s: &str| Some(s.trim().to_owned()).filter(|s| !s.is_empty());
        let start = match self.start.trim() {
            "" | "now" => Some(page::rfc3339(now_ms)),
            s => Some(s.to_owned()),
        };
        RawWindow {
            name: self.name.trim().to_owned(),
            reason: opt(&self.reason),
            monitors: list(&self.monitors),
            tags: list(&self.tags),
            start,
            duration: opt(&self.duration),
            time_zone: opt(&self.time_zone),
            ..RawWindow::default()
        }
    }
}

async fn add_maintenance<B: WebBackend>(
    State(web): State<Arc<Web<B>>>,
    viewer: Viewer,
    form: FormResult<MaintenanceForm>,
) -> Response {
    let form = form.map(|Form(f)| f).unwrap_or_default();
    if !viewer.may_post(&form.csrf) {
        return forbidden(&viewer.nav("maintenance"));
    }
    let now = now_ms();
    let raw = form.raw(now);
    let registry = web.backend.maintenance_registry().clone();
    let added = tokio::task::spawn_blocking(move || registry.add(raw, now)).await;
    match added {
        Ok(Ok(w)) => {
            tracing::info!(window = %w.name, "maintenance window added from the dashboard");
            web.backend.audit(
                "maintenance.add",
                &w.name,
                serde_json::to_value(&w.raw).unwrap_or_default(),
            );
            Redirect::to("/maintenance").into_response()
        }
        Ok(Err(e)) => maintenance_page(
            &web,
            &viewer,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some(&e.to_string()),
            &form,
        ),
        Err(e) => maintenance_page(
            &web,
            &viewer,
            StatusCode::INTERNAL_SERVER_ERROR,
            Some(&e.to_string()),
            &form,
        ),
    }
}

async fn cancel_maintenance<B: WebBackend>(
    State(web): State<Arc<Web<B>>>,
    viewer: Viewer,
    Path(name): Path<String>,
    form: FormResult<CsrfForm>,
) -> Response {
    if !viewer.may_post(&form.map(|Form(f)| f.csrf).unwrap_or_default()) {
        return forbidden(&viewer.nav("maintenance"));
    }
    let registry = web.backend.maintenance_registry().clone();
    match tokio::task::spawn_blocking(move || registry.cancel(&name)).await {
        Ok(Ok(w)) => {
            tracing::info!(window = %w.name, "maintenance window cancelled from the dashboard");
            web.backend
                .audit("maintenance.cancel", &w.name, serde_json::Value::Null);
            Redirect::to("/maintenance").into_response()
        }
        Ok(Err(e)) => maintenance_page(
            &web,
            &viewer,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some(&e.to_string()),
            &MaintenanceForm::default(),
        ),
        Err(e) => maintenance_page(
            &web,
            &viewer,
            StatusCode::INTERNAL_SERVER_ERROR,
            Some(&e.to_string()),
            &MaintenanceForm::default(),
        ),
    }
}

// ---- the public status page -----------------------------------------------------

async fn status_page<B: WebBackend>(State(web): State<Arc<Web<B>>>) -> Response {
    let config = web.backend.status_page();
    if !config.enabled {
        return html_page(
            StatusCode::NOT_FOUND,
            page::problem(
                "No status page",
                None,
                "This collector's status page is turned off.",
            ),
        );
    }
    let now = now_ms();
    if let Some(cached) = web.status_cache.get(now) {
        return html_page(StatusCode::OK, cached);
    }
    let statuses = web.backend.status().await.unwrap_or_default();
    let incidents = web
        .backend
        .incidents(&IncidentsQuery {
            limit: 200,
            ..IncidentsQuery::default()
        })
        .await
        .unwrap_or_default();
    let monitors = web.backend.monitor_registry().snapshot();
    let upcoming = web
        .backend
        .maintenance_registry()
        .upcoming(now, now + 30 * 24 * HOUR_MS);
    let store = web.backend.store();
    let windows = web.backend.maintenance_registry().clone();
    let markup = tokio::task::spawn_blocking(move || {
        status::render(
            &config,
            &status::Inputs {
                now_ms: now,
                windows: &windows,
                monitors: &monitors,
                statuses: &statuses,
                incidents: &incidents,
                upcoming: &upcoming,
                store: store.as_ref(),
            },
        )
    })
    .await;
    match markup {
        Ok(m) => {
            web.status_cache.put(now, m.clone());
            html_page(StatusCode::OK, m)
        }
        Err(e) => html_page(
            StatusCode::INTERNAL_SERVER_ERROR,
            page::problem("Status unavailable", None, &e.to_string()),
        ),
    }
}
