//! The collector's HTTP API (axum, on the same hyper/tower stack as tonic).
//! Today: the admin endpoints the CLI uses (tokens, agents). Every endpoint
//! takes `Authorization: Bearer <admin token>`; errors are JSON
//! `{"error": {"code": "...", "message": "..."}}` with a matching status.
//!
//! The handlers talk to an `AdminBackend`, so the HTTP layer knows nothing of
//! how tokens and agents are stored.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::admin::AdminToken;
use crate::incident::Incident;
use crate::incident::engine::MonitorStatus;
use crate::maintenance::registry::Occurrence;
use crate::maintenance::{MaintenanceError, MaintenanceRegistry, RawWindow, WindowInfo};
use crate::monitors::registry::{MonitorRegistry, RegistryError, ReloadStatus};
use crate::monitors::{Monitor, Origin, RawMonitor};

/// The largest request body the API reads.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// An API error: an HTTP status, a stable machine code and a message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

#[derive(Serialize, Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Serialize, Deserialize)]
struct ErrorDetail {
    code: String,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

/// `POST /api/v1/tokens`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// e.g. "1h"; the collector's default when absent.
    #[serde(default)]
    pub ttl: Option<String>,
    /// Enroll the agent as the public location `public:<region>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_region: Option<String>,
}

/// A created token: the join string is shown once and never again.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedToken {
    pub token_id: String,
    pub name: String,
    pub expires_at_unix_ms: i64,
    pub join: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenInfo {
    pub token_id: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub created_at_unix_ms: i64,
    pub expires_at_unix_ms: i64,
    /// The agent that used it, if any.
    pub used_by: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentInfo {
    pub id: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub enrolled_at_unix_ms: i64,
    pub cert_expires_at_unix_ms: i64,
    pub revoked: bool,
    pub connected_since_unix_ms: Option<i64>,
    pub last_seen_unix_ms: Option<i64>,
    pub version: Option<String>,
    /// Set for an agent enrolled as a public location (`public:<region>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_region: Option<String>,
    /// Results the agent last reported waiting in its buffer (hello/heartbeat).
    pub backlog: Option<u64>,
    /// The agent's results are durable here through this sequence number
    /// (since the collector started).
    #[serde(default)]
    pub acked_through: Option<u64>,
}

/// One stored check result, as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResultInfo {
    pub monitor_id: String,
    /// The location that ran it: `agent:<name>` or `public:<region>`.
    pub location: String,
    pub seq: u64,
    pub scheduled_at_unix_ms: i64,
    pub status: String,
    pub reason: String,
    pub message: String,
    pub address: String,
    pub connect_us: Option<u64>,
    pub tls_us: Option<u64>,
    pub first_byte_us: Option<u64>,
    pub total_us: u64,
}

/// `GET /api/v1/results?monitor=ID[&location=L][&from=MS][&to=MS][&limit=N]`:
/// the newest `limit` results in `[from, to)` (unix ms), returned oldest first.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResultsQuery {
    pub monitor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<i64>,
    #[serde(default = "default_limit")]
    pub limit: usize,
}

/// `GET /api/v1/rollups?monitor=ID&location=L[&from=MS][&to=MS]`: one-minute
/// rollups, oldest first (at most 10,080: a week of minutes).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollupsQuery {
    pub monitor: String,
    pub location: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<i64>,
}

/// One phase over one minute, in microseconds (absent phases: count 0).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PhaseInfo {
    pub count: u32,
    pub min_us: u64,
    pub avg_us: Option<f64>,
    pub p95_us: u64,
    pub max_us: u64,
}

/// One monitor at one location over one minute.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RollupInfo {
    pub minute_start_unix_ms: i64,
    pub checks: u32,
    pub failures: u32,
    pub degraded: u32,
    pub dns: PhaseInfo,
    pub connect: PhaseInfo,
    pub tls: PhaseInfo,
    pub first_byte: PhaseInfo,
    pub total: PhaseInfo,
}

/// `GET /api/v1/events?[kind=K][&from=MS][&to=MS][&limit=N]`: the audit log
/// (and, later, incidents), oldest first.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<i64>,
    #[serde(default = "default_limit")]
    pub limit: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventInfo {
    pub id: u64,
    pub at_unix_ms: i64,
    pub kind: String,
    pub subject: String,
    pub body: serde_json::Value,
}

/// `GET /api/v1/incidents?[open=true][&monitor=M][&before=ID][&limit=N]`:
/// newest first; page back with `before` = the last id seen.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncidentsQuery {
    #[serde(default)]
    pub open: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<u64>,
    #[serde(default = "default_limit")]
    pub limit: usize,
}

impl Default for IncidentsQuery {
    fn default() -> Self {
        IncidentsQuery {
            open: false,
            monitor: None,
            before: None,
            limit: default_limit(),
        }
    }
}

fn default_limit() -> usize {
    100
}

/// A monitor as the API shows it: its definition as written (the body a
/// `PUT` takes) and where it is defined.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MonitorInfo {
    pub name: String,
    /// `file` (change it in the config file) or `api`.
    pub origin: Origin,
    pub definition: RawMonitor,
}

impl MonitorInfo {
    pub fn of(m: &Monitor) -> MonitorInfo {
        MonitorInfo {
            name: m.name.clone(),
            origin: m.origin,
            definition: m.raw.clone(),
        }
    }
}

/// What the admin endpoints need from the collector.
pub trait AdminBackend: Send + Sync + 'static {
    fn create_token(
        &self,
        req: CreateToken,
    ) -> impl Future<Output = Result<CreatedToken, ApiError>> + Send;
    fn list_tokens(&self) -> impl Future<Output = Result<Vec<TokenInfo>, ApiError>> + Send;
    fn delete_token(&self, id: &str) -> impl Future<Output = Result<(), ApiError>> + Send;
    fn list_agents(&self) -> impl Future<Output = Result<Vec<AgentInfo>, ApiError>> + Send;
    /// Asks a connected agent (by name or id) to renew its certificate now.
    fn rotate_agent(
        &self,
        name_or_id: &str,
    ) -> impl Future<Output = Result<AgentInfo, ApiError>> + Send;
    /// Revokes by name or id; the live stream closes within seconds.
    fn revoke_agent(
        &self,
        name_or_id: &str,
    ) -> impl Future<Output = Result<AgentInfo, ApiError>> + Send;
    /// The live monitor set: the monitor endpoints work on it directly.
    fn monitor_registry(&self) -> &MonitorRegistry;
    /// The live maintenance windows, likewise.
    fn maintenance_registry(&self) -> &MaintenanceRegistry;
    /// The newest `q.limit` results of a monitor in the range, oldest first.
    fn results(
        &self,
        q: &ResultsQuery,
    ) -> impl Future<Output = Result<Vec<ResultInfo>, ApiError>> + Send;
    fn rollups(
        &self,
        q: &RollupsQuery,
    ) -> impl Future<Output = Result<Vec<RollupInfo>, ApiError>> + Send;
    fn events(
        &self,
        q: &EventsQuery,
    ) -> impl Future<Output = Result<Vec<EventInfo>, ApiError>> + Send;
    /// Incidents, newest first.
    fn incidents(
        &self,
        q: &IncidentsQuery,
    ) -> impl Future<Output = Result<Vec<Incident>, ApiError>> + Send;
    fn incident(&self, id: u64) -> impl Future<Output = Result<Incident, ApiError>> + Send;
    /// The channels (nothing secret) and the latest delivery attempts.
    fn notifications(&self) -> impl Future<Output = Result<NotificationsInfo, ApiError>> + Send;
    /// The Prometheus exposition.
    fn metrics(&self) -> impl Future<Output = Result<String, ApiError>> + Send;
    /// Whether `/metrics` is served without the admin token.
    fn metrics_open(&self) -> bool;
    /// Can the collector serve (its store answers)?
    fn ready(&self) -> impl Future<Output = Result<(), ApiError>> + Send;
    /// Every monitor at every location now, with its open incident.
    fn status(&self) -> impl Future<Output = Result<Vec<MonitorStatus>, ApiError>> + Send;
    /// Records an admin action in the audit log. Never fails the action: a
    /// failure to record is logged by the backend.
    fn audit(&self, action: &str, subject: &str, detail: serde_json::Value);
}

struct Api<B> {
    backend: B,
    admin: AdminToken,
}

/// The API router.
pub fn router<B: AdminBackend>(backend: B, admin: AdminToken) -> Router {
    let api = Arc::new(Api { backend, admin });
    Router::new()
        .route(
            "/api/v1/tokens",
            post(create_token::<B>).get(list_tokens::<B>),
        )
        .route("/api/v1/tokens/{id}", delete(delete_token::<B>))
        .route("/api/v1/agents", get(list_agents::<B>))
        .route("/api/v1/agents/{name}/revoke", post(revoke_agent::<B>))
        .route("/api/v1/agents/{name}/rotate", post(rotate_agent::<B>))
        .route("/api/v1/results", get(results::<B>))
        .route("/api/v1/monitors", get(list_monitors::<B>))
        .route(
            "/api/v1/monitors/{name}",
            get(get_monitor::<B>)
                .put(put_monitor::<B>)
                .delete(delete_monitor::<B>),
        )
        .route("/api/v1/config/status", get(config_status::<B>))
        .route("/api/v1/rollups", get(rollups::<B>))
        .route("/api/v1/events", get(events::<B>))
        .route("/api/v1/incidents", get(incidents::<B>))
        .route("/api/v1/incidents/{id}", get(incident::<B>))
        .route("/api/v1/status", get(status::<B>))
        .route("/api/v1/notifications", get(notifications::<B>))
        .route("/metrics", get(metrics::<B>))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz::<B>))
        .route(
            "/api/v1/maintenance",
            get(list_maintenance::<B>).post(add_maintenance::<B>),
        )
        .route(
            "/api/v1/maintenance/upcoming",
            get(upcoming_maintenance::<B>),
        )
        .route(
            "/api/v1/maintenance/{name}",
            get(get_maintenance::<B>).delete(cancel_maintenance::<B>),
        )
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(api)
}

fn authorize<B>(api: &Api<B>, headers: &HeaderMap) -> Result<(), ApiError> {
    let header = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if api.admin.verify_bearer(header) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid admin bearer token is required",
        ))
    }
}

type QueryParams<T> = Result<axum::extract::Query<T>, axum::extract::rejection::QueryRejection>;

/// Turns axum's query-string rejections into our error body.
fn query_params<T>(query: QueryParams<T>) -> Result<T, ApiError> {
    query
        .map(|axum::extract::Query(q)| q)
        .map_err(|e| ApiError::bad_request(e.body_text()))
}

fn check_limit(limit: usize) -> Result<(), ApiError> {
    if limit == 0 || limit > 10_000 {
        return Err(ApiError::bad_request("limit: must be 1-10000"));
    }
    Ok(())
}

/// Turns axum's JSON rejections into our error body.
fn json_body<T>(
    body: Result<Json<T>, axum::extract::rejection::JsonRejection>,
) -> Result<T, ApiError> {
    body.map(|Json(v)| v)
        .map_err(|e| ApiError::new(e.status(), "bad_request", e.body_text()))
}

async fn create_token<B: AdminBackend>(
    State(api): State<Arc<Api<B>>>,
    headers: HeaderMap,
    body: Result<Json<CreateToken>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    authorize(&api, &headers)?;
    let req = json_body(body)?;
    let created = api.backend.create_token(req).await?;
    api.backend.audit(
        "token.create",
        &created.name,
        serde_json::json!({ "token_id": created.token_id, "expires_at_unix_ms": created.expires_at_unix_ms }),
    );
    Ok((StatusCode::CREATED, Json(created)))
}

async fn list_tokens<B: AdminBackend>(
    State(api): State<Arc<Api<B>>>,
    headers: HeaderMap,
) -> Result<Json<Vec<TokenInfo>>, ApiError> {
    authorize(&api, &headers)?;
    Ok(Json(api.backend.list_tokens().await?))
}

async fn delete_token<B: AdminBackend>(
    State(api): State<Arc<Api<B>>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    authorize(&api, &headers)?;
    api.backend.delete_token(&id).await?;
    api.backend
        .audit("token.delete", &id, serde_json::json!({ "token_id": id }));
    Ok(StatusCode::NO_CONTENT)
}

async fn list_agents<B: AdminBackend>(
    State(api): State<Arc<Api<B>>>,
    headers: HeaderMap,
) -> Result<Json<Vec<AgentInfo>>, ApiError> {
    authorize(&api, &headers)?;
    Ok(Json(api.backend.list_agents().await?))
}

async fn revoke_agent<B: AdminBackend>(
    State(api): State<Arc<Api<B>>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<AgentInfo>, ApiError> {
    authorize(&api, &headers)?;
    let a = api.backend.revoke_agent(&name).await?;
    api.backend.audit(
        "agent.revoke",
        &a.name,
        serde_json::json!({ "agent_id": a.id }),
    );
    Ok(Json(a))
}

async fn rotate_agent<B: AdminBackend>(
    State(api): State<Arc<Api<B>>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<AgentInfo>, ApiError> {
    authorize(&api, &headers)?;
    let a = api.backend.rotate_agent(&name).await?;
    api.backend.audit(
        "agent.rotate",
        &a.name,
        serde_json::json!({ "agent_id": a.id }),
    );
    Ok(Json(a))
}

async fn results<B: AdminBackend>(
    State(api): State<Arc<Api<B>>>,
    headers: HeaderMap,
    query: QueryParams<ResultsQuery>,
) -> Result<Json<Vec<ResultInfo>>, ApiError> {
    authorize(&api, &headers)?;
    let q = query_params(query)?;
    check_limit(q.limit)?;
    Ok(Json(api.backend.results(&q).await?))
}

async fn rollups<B: AdminBackend>(
    State(api): State<Arc<Api<B>>>,
    headers: HeaderMap,
    query: QueryParams<RollupsQuery>,
) -> Result<Json<Vec<RollupInfo>>, ApiError> {
    authorize(&api, &headers)?;
    let q = query_params(query)?;
    Ok(Json(api.backend.rollups(&q).await?))
}

async fn events<B: AdminBackend>(
    State(api): State<Arc<Api<B>>>,
    headers: HeaderMap,
    query: QueryParams<EventsQuery>,
) -> Result<Json<Vec<EventInfo>>, ApiError> {
    authorize(&api, &headers)?;
    let q = query_params(query)?;
    check_limit(q.limit)?;
    Ok(Json(api.backend.events(&q).await?))
}

async fn incidents<B: AdminBackend>(
    State(api): State<Arc<Api<B>>>,
    headers: HeaderMap,
    query: QueryParams<IncidentsQuery>,
) -> Result<Json<Vec<Incident>>, ApiError> {
    authorize(&api, &headers)?;
    let q = query_params(query)?;
    check_limit(q.limit)?;
    Ok(Json(api.backend.incidents(&q).await?))
}

async fn incident<B: AdminBackend>(
    State(api): State<Arc<Api<B>>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Incident>, ApiError> {
    authorize(&api, &headers)?;
    let id: u64 = id
        .parse()
        .map_err(|_| ApiError::bad_request(format!("{id:?} is not an incident id")))?;
    Ok(Json(api.backend.incident(id).await?))
}

async fn status<B: AdminBackend>(
    State(api): State<Arc<Api<B>>>,
    headers: HeaderMap,
) -> Result<Json<Vec<MonitorStatus>>, ApiError> {
    authorize(&api, &headers)?;
    Ok(Json(api.backend.status().await?))
}

async fn list_monitors<B: AdminBackend>(
    State(api): State<Arc<Api<B>>>,
    headers: HeaderMap,
) -> Result<Json<Vec<MonitorInfo>>, ApiError> {
    authorize(&api, &headers)?;
    let monitors = api.backend.monitor_registry().monitors();
    Ok(Json(monitors.iter().map(MonitorInfo::of).collect()))
}

async fn get_monitor<B: AdminBackend>(
    State(api): State<Arc<Api<B>>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<MonitorInfo>, ApiError> {
    authorize(&api, &headers)?;
    let m = api
        .backend
        .monitor_registry()
        .get(&name)
        .ok_or_else(|| ApiError::not_found(format!("no monitor is named {name:?}")))?;
    Ok(Json(MonitorInfo::of(&m)))
}

/// `PUT /api/v1/monitors/{name}`: the body is the monitor as written in the
/// config file (JSON); its `name` may be left out, or must match the path.
async fn put_monitor<B: AdminBackend>(
    State(api): State<Arc<Api<B>>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Result<Json<serde_json::Value>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<MonitorInfo>), ApiError> {
    authorize(&api, &headers)?;
    let mut value = json_body(body)?;
    if let Some(obj) = value.as_object_mut() {
        match obj.get("name") {
            None => {
                obj.insert("name".into(), serde_json::Value::String(name.clone()));
            }
            Some(serde_json::Value::String(n)) if *n == name => {}
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "name: {other} does not match the path ({name:?})"
                )));
            }
        }
    }
    let def: RawMonitor = serde_json::from_value(value)
        .map_err(|e| ApiError::bad_request(format!("monitor: {e}")))?;
    // The registry fsyncs its file: off the async workers.
    let registry = api.backend.monitor_registry().clone();
    let (m, created) = tokio::task::spawn_blocking(move || registry.upsert(def))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    tracing::info!(monitor = %m.name, created, "monitor saved through the api");
    api.backend.audit(
        if created {
            "monitor.create"
        } else {
            "monitor.replace"
        },
        &m.name,
        serde_json::to_value(&m.raw).unwrap_or_default(),
    );
    let info = MonitorInfo::of(&m);
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(info)))
}

async fn delete_monitor<B: AdminBackend>(
    State(api): State<Arc<Api<B>>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    authorize(&api, &headers)?;
    let registry = api.backend.monitor_registry().clone();
    let owned = name.clone();
    tokio::task::spawn_blocking(move || registry.delete(&owned))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    tracing::info!(monitor = %name, "monitor deleted through the api");
    api.backend
        .audit("monitor.delete", &name, serde_json::Value::Null);
    Ok(StatusCode::NO_CONTENT)
}

async fn config_status<B: AdminBackend>(
    State(api): State<Arc<Api<B>>>,
    headers: HeaderMap,
) -> Result<Json<ReloadStatus>, ApiError> {
    authorize(&api, &headers)?;
    Ok(Json(api.backend.monitor_registry().reload_status()))
}

async fn metrics<B: AdminBackend>(
    State(api): State<Arc<Api<B>>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if !api.backend.metrics_open() {
        authorize(&api, &headers)?;
    }
    let text = api.backend.metrics().await?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

async fn readyz<B: AdminBackend>(State(api): State<Arc<Api<B>>>) -> Result<&'static str, ApiError> {
    api.backend.ready().await?;
    Ok("ready\n")
}

/// `GET /api/v1/notifications`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NotificationsInfo {
    pub channels: Vec<crate::notify::ChannelInfo>,
    /// The latest delivery attempts (last 24 h, newest first, at most 200):
    /// `{incident, action: delivered|delivery_failed, delivery: {...}}`.
    pub recent: Vec<EventInfo>,
}

async fn notifications<B: AdminBackend>(
    State(api): State<Arc<Api<B>>>,
    headers: HeaderMap,
) -> Result<Json<NotificationsInfo>, ApiError> {
    authorize(&api, &headers)?;
    Ok(Json(api.backend.notifications().await?))
}

/// `GET /api/v1/maintenance/upcoming?[from=MS][&to=MS]`: occurrences
/// overlapping the range (default: now to 30 days ahead).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpcomingQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<i64>,
}

pub(crate) fn now_ms() -> i64 {
    crate::state::unix_ms(std::time::SystemTime::now())
}

async fn list_maintenance<B: AdminBackend>(
    State(api): State<Arc<Api<B>>>,
    headers: HeaderMap,
) -> Result<Json<Vec<WindowInfo>>, ApiError> {
    authorize(&api, &headers)?;
    let now = now_ms();
    let list = api.backend.maintenance_registry().list();
    Ok(Json(list.iter().map(|w| w.info(now)).collect()))
}

async fn get_maintenance<B: AdminBackend>(
    State(api): State<Arc<Api<B>>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<WindowInfo>, ApiError> {
    authorize(&api, &headers)?;
    api.backend
        .maintenance_registry()
        .get(&name)
        .map(|w| Json(w.info(now_ms())))
        .ok_or_else(|| ApiError::not_found(format!("no maintenance window is named {name:?}")))
}

async fn add_maintenance<B: AdminBackend>(
    State(api): State<Arc<Api<B>>>,
    headers: HeaderMap,
    body: Result<Json<serde_json::Value>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<WindowInfo>), ApiError> {
    authorize(&api, &headers)?;
    let def: RawWindow = serde_json::from_value(json_body(body)?)
        .map_err(|e| ApiError::bad_request(format!("maintenance window: {e}")))?;
    let registry = api.backend.maintenance_registry().clone();
    let now = now_ms();
    let w = tokio::task::spawn_blocking(move || registry.add(def, now))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    tracing::info!(window = %w.name, "maintenance window added through the api");
    api.backend.audit(
        "maintenance.add",
        &w.name,
        serde_json::to_value(&w.raw).unwrap_or_default(),
    );
    Ok((StatusCode::CREATED, Json(w.info(now))))
}

async fn cancel_maintenance<B: AdminBackend>(
    State(api): State<Arc<Api<B>>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<WindowInfo>, ApiError> {
    authorize(&api, &headers)?;
    let registry = api.backend.maintenance_registry().clone();
    let w = tokio::task::spawn_blocking(move || registry.cancel(&name))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    tracing::info!(window = %w.name, "maintenance window cancelled through the api");
    api.backend
        .audit("maintenance.cancel", &w.name, serde_json::Value::Null);
    Ok(Json(w.info(now_ms())))
}

async fn upcoming_maintenance<B: AdminBackend>(
    State(api): State<Arc<Api<B>>>,
    headers: HeaderMap,
    query: QueryParams<UpcomingQuery>,
) -> Result<Json<Vec<Occurrence>>, ApiError> {
    authorize(&api, &headers)?;
    let q = query_params(query)?;
    let from = q.from.unwrap_or_else(now_ms);
    let to = q.to.unwrap_or(from + 30 * 86_400_000);
    if to < from || to - from > 400 * 86_400_000 {
        return Err(ApiError::bad_request(
            "to: must be after from and at most 400 days later",
        ));
    }
    Ok(Json(api.backend.maintenance_registry().upcoming(from, to)))
}

impl From<MaintenanceError> for ApiError {
    fn from(e: MaintenanceError) -> ApiError {
        let message = e.to_string();
        match e {
            MaintenanceError::NotFound(_) => ApiError::not_found(message),
            MaintenanceError::ManagedByFile(_) => {
                ApiError::new(StatusCode::CONFLICT, "managed_by_file", message)
            }
            MaintenanceError::Exists(_) => ApiError::new(StatusCode::CONFLICT, "exists", message),
            MaintenanceError::Invalid(_) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_window", message)
            }
            MaintenanceError::Storage { .. } => ApiError::internal(message),
        }
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> ApiError {
        let message = e.to_string();
        match e {
            RegistryError::NotFound(_) => ApiError::not_found(message),
            RegistryError::ManagedByFile(_) => {
                ApiError::new(StatusCode::CONFLICT, "managed_by_file", message)
            }
            RegistryError::DependedOn { .. } => {
                ApiError::new(StatusCode::CONFLICT, "depended_on", message)
            }
            RegistryError::Invalid(_) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_monitor", message)
            }
            RegistryError::Storage { .. } => ApiError::internal(message),
        }
    }
}

#[cfg(test)]
mod tests;
