//! The collector's HTTP API (axum, on the same hyper/tower stack as tonic).
//! The admin endpoints the CLI uses (tokens, agents, monitors, results,
//! incidents, maintenance, notifications) take `Authorization: Bearer <admin
//! token>`; `/healthz`, `/readyz` and `/api/openapi.json` are open, and
//! `/metrics` is too when `metrics_open` is set. Errors are JSON
//! `{"error": {"code": "...", "message": "..."}}` with a matching status.
//!
//! The OpenAPI 3.1 document at `/api/openapi.json` is generated from this
//! file: each handler carries its `#[utoipa::path]` (method, path,
//! parameters, body, every response) and the router is built from those same
//! annotations (`utoipa_axum::routes!`), so a route cannot be served without
//! being documented, nor documented at a path or method it is not served on.
//!
//! The handlers talk to an `AdminBackend`, so the HTTP layer knows nothing of
//! how tokens and agents are stored. `http/uptime.rs` serves uptime.

pub mod uptime;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::admin::AdminToken;
use crate::incident::Incident;
use crate::incident::engine::MonitorStatus;
use crate::maintenance::registry::Occurrence;
use crate::maintenance::{MaintenanceError, MaintenanceRegistry, RawWindow, WindowInfo};
use crate::monitors::registry::{MonitorRegistry, RegistryError, ReloadStatus};
use crate::monitors::{Monitor, Origin, RawMonitor};
use crate::notify::{ChannelEntry, ChannelError, ChannelRegistry, RawChannel};

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

/// Every error response: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Serialize, Deserialize, ToSchema)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Serialize, Deserialize, ToSchema)]
struct ErrorDetail {
    /// A stable machine code: `bad_request`, `unauthorized`, `not_found`,
    /// `exists`, `managed_by_file`, `depended_on`, `not_connected`,
    /// `invalid_monitor`, `invalid_window`, `invalid_channel`, `not_ready` or
    /// `internal`.
    #[schema(example = "not_found")]
    code: String,
    /// For people; several problems come one per line.
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

/// A new enrollment token (`POST /api/v1/tokens`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
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
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    pub token_id: String,
    pub name: String,
    pub expires_at_unix_ms: i64,
    pub join: String,
}

/// An enrollment token, without its secret.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenInfo {
    pub token_id: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub created_at_unix_ms: i64,
    pub expires_at_unix_ms: i64,
    /// The agent that used it, if any.
    pub used_by: Option<String>,
}

/// An enrolled agent and its stream.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
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
    /// What the agent's last heartbeat said of its schedule, memory and CPU
    /// (while it is connected).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<crate::ingest::AgentHealth>,
}

/// One stored check result, as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
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
    #[serde(default)]
    pub dns_us: Option<u64>,
    pub connect_us: Option<u64>,
    pub tls_us: Option<u64>,
    pub first_byte_us: Option<u64>,
    pub total_us: u64,
    /// What the check learnt on the way (NTP offset, DNS rcode, TLS
    /// certificate, the server's own words...); absent fields did not apply.
    #[serde(default, skip_serializing_if = "ResultDetails::is_empty")]
    pub details: ResultDetails,
}

/// Facts a check learnt on the way, each present only when it applies.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ResultDetails {
    /// The first bytes of the reply, escaped and truncated by the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub banner: Option<String>,
    /// A preset's reading of the reply, e.g. "redis 7.0.15" or the server's error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_info: Option<String>,
    /// NTP: the server's clock offset from the prober's, in microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ntp_offset_us: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ntp_stratum: Option<u32>,
    /// DNS: the response code, e.g. "NOERROR".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_rcode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_answers: Option<u32>,
    /// TLS: the negotiated version, e.g. "TLSv1.3".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_days_left: Option<i64>,
    /// The leaf certificate's notAfter, in Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_not_after_unix: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_issuer: Option<String>,
}

impl ResultDetails {
    pub fn is_empty(&self) -> bool {
        self == &ResultDetails::default()
    }
}

impl From<&portwatch_proto::v1::Details> for ResultDetails {
    fn from(d: &portwatch_proto::v1::Details) -> Self {
        ResultDetails {
            banner: d.banner.clone(),
            server_info: d.server_info.clone(),
            ntp_offset_us: d.ntp_offset_us,
            ntp_stratum: d.ntp_stratum,
            dns_rcode: d.dns_rcode.clone(),
            dns_answers: d.dns_answers,
            tls_version: d.tls_version.clone(),
            cert_days_left: d.cert_days_left,
            cert_not_after_unix: d.cert_not_after_unix,
            cert_subject: d.cert_subject.clone(),
            cert_issuer: d.cert_issuer.clone(),
        }
    }
}

/// `GET /api/v1/results?monitor=ID[&location=L][&from=MS][&to=MS][&limit=N]`:
/// the newest `limit` results in `[from, to)` (unix ms), returned oldest first.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ResultsQuery {
    /// The monitor's name.
    pub monitor: String,
    /// Only this location (`agent:<name>` or `public:<region>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// From this check time on (unix ms, inclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<i64>,
    /// Before this check time (unix ms, exclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<i64>,
    /// How many results at most (the newest ones).
    #[serde(default = "default_limit")]
    #[param(minimum = 1, maximum = 10_000, default = 100)]
    pub limit: usize,
}

/// `GET /api/v1/rollups?monitor=ID&location=L[&from=MS][&to=MS]`: one-minute
/// rollups, oldest first (at most 10,080: a week of minutes).
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RollupsQuery {
    /// The monitor's name.
    pub monitor: String,
    /// The location (`agent:<name>` or `public:<region>`).
    pub location: String,
    /// From this minute on (unix ms); default: a day before `to`, at most a
    /// week before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<i64>,
    /// Up to this time (unix ms); default: now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<i64>,
}

/// One phase over one minute, in microseconds (absent phases: count 0).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct PhaseInfo {
    pub count: u32,
    pub min_us: u64,
    pub avg_us: Option<f64>,
    pub p95_us: u64,
    pub max_us: u64,
}

/// One monitor at one location over one minute.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
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
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only events of this kind, e.g. `audit` or `notification`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// From this time on (unix ms, inclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<i64>,
    /// Before this time (unix ms, exclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<i64>,
    /// How many events at most.
    #[serde(default = "default_limit")]
    #[param(minimum = 1, maximum = 10_000, default = 100)]
    pub limit: usize,
}

/// One entry of the event log (an admin action, a notification delivery).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EventInfo {
    pub id: u64,
    pub at_unix_ms: i64,
    pub kind: String,
    pub subject: String,
    pub body: serde_json::Value,
}

/// `GET /api/v1/incidents?[open=true][&monitor=M][&before=ID][&limit=N]`:
/// newest first; page back with `before` = the last id seen.
#[derive(Debug, Clone, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct IncidentsQuery {
    /// Only incidents still open.
    #[serde(default)]
    pub open: bool,
    /// Only this monitor's (or `agent:<name>`'s) incidents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitor: Option<String>,
    /// Only incidents with a smaller id: the last id of the previous page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<u64>,
    /// How many incidents at most.
    #[serde(default = "default_limit")]
    #[param(minimum = 1, maximum = 10_000, default = 100)]
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
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
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
    /// The result store: uptime reads its summaries (`http/uptime.rs`).
    fn store(&self) -> Arc<dyn crate::store::Store>;
    /// The live notification channels, likewise.
    fn channel_registry(&self) -> &ChannelRegistry;
    /// The dashboard's address, for the link in a test notification.
    fn dashboard_url(&self) -> Option<String> {
        None
    }
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
    /// This API's OpenAPI document, serialized once.
    openapi: axum::body::Bytes,
}

/// The document's frame: what the handlers' `#[utoipa::path]`s do not say.
/// The paths and the schemas they use are added by [`api_routes`].
#[derive(OpenApi)]
#[openapi(
    info(
        title = "portwatch collector API",
        version = env!("CARGO_PKG_VERSION"),
        description = "The collector's REST API: enrollment tokens, agents, monitors, results, \
            incidents, maintenance windows and notifications, plus health, readiness and \
            Prometheus metrics. Every error is JSON `{\"error\": {\"code\", \"message\"}}` \
            with a matching HTTP status.",
    ),
    modifiers(&AdminBearer),
    tags(
        (name = "tokens", description = "Enrollment tokens: an agent joins with one"),
        (name = "agents", description = "Enrolled agents (private locations)"),
        (name = "monitors", description = "Monitors: file ones are read-only here"),
        (name = "results", description = "Stored check results, rollups and the event log"),
        (name = "incidents", description = "Incidents and the current status"),
        (name = "maintenance", description = "Maintenance windows"),
        (name = "notifications", description = "Notification channels (file ones are read-only here; secrets are write-only) and deliveries"),
        (name = "operations", description = "Health, readiness, metrics and this document"),
    )
)]
struct ApiDoc;

/// The admin bearer scheme's name in the document: the handlers'
/// `security(("admin_token" = []))` name it.
const ADMIN_TOKEN: &str = "admin_token";

/// Adds the admin bearer token as a security scheme.
struct AdminBearer;

impl utoipa::Modify for AdminBearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            ADMIN_TOKEN,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "`Authorization: Bearer <admin token>`: the collector's admin token",
                    ))
                    .build(),
            ),
        );
    }
}

/// Every route, each from its handler's `#[utoipa::path]`: the router and
/// the document come from this one list. Handlers in one `routes!` must share
/// a path: it serves each of them at every path among them.
fn api_routes<B: AdminBackend>() -> OpenApiRouter<Arc<Api<B>>> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(create_token, list_tokens))
        .routes(routes!(delete_token))
        .routes(routes!(list_agents))
        .routes(routes!(revoke_agent))
        .routes(routes!(rotate_agent))
        .routes(routes!(results))
        .routes(routes!(rollups))
        .routes(routes!(uptime::uptime))
        .routes(routes!(events))
        .routes(routes!(list_monitors))
        .routes(routes!(get_monitor, put_monitor, delete_monitor))
        .routes(routes!(config_status))
        .routes(routes!(incidents))
        .routes(routes!(incident))
        .routes(routes!(status))
        .routes(routes!(notifications))
        .routes(routes!(list_channels))
        .routes(routes!(get_channel, put_channel, delete_channel))
        .routes(routes!(test_channel))
        .routes(routes!(list_maintenance, add_maintenance))
        .routes(routes!(upcoming_maintenance))
        .routes(routes!(get_maintenance, cancel_maintenance))
        .routes(routes!(metrics))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(openapi_json))
}

/// The API router.
pub fn router<B: AdminBackend>(backend: B, admin: AdminToken) -> Router {
    let (routes, doc) = api_routes::<B>().split_for_parts();
    let openapi = serde_json::to_vec(&doc)
        .expect("an OpenAPI document always serializes")
        .into();
    let api = Arc::new(Api {
        backend,
        admin,
        openapi,
    });
    routes
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

/// Create an enrollment token
///
/// The answer's `join` string is all an agent needs to enroll; it is shown
/// once and never again.
#[utoipa::path(
    post,
    path = "/api/v1/tokens",
    tag = "tokens",
    security(("admin_token" = [])),
    request_body = CreateToken,
    responses(
        (status = 201, description = "Created", body = CreatedToken),
        (status = 400, description = "Malformed JSON, or a field the collector refuses (name, ttl, public_region)", body = ErrorBody),
        (status = 401, description = "No valid admin bearer token", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = ErrorBody),
        (status = 415, description = "Content-Type is not application/json", body = ErrorBody),
        (status = 422, description = "JSON that is not a CreateToken (missing or unknown field, wrong type)", body = ErrorBody),
        (status = 500, description = "The collector failed, e.g. its store", body = ErrorBody),
    )
)]
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

/// List enrollment tokens
///
/// Expired tokens are purged first.
#[utoipa::path(
    get,
    path = "/api/v1/tokens",
    tag = "tokens",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Every token", body = Vec<TokenInfo>),
        (status = 401, description = "No valid admin bearer token", body = ErrorBody),
        (status = 500, description = "The collector failed, e.g. its store", body = ErrorBody),
    )
)]
async fn list_tokens<B: AdminBackend>(
    State(api): State<Arc<Api<B>>>,
    headers: HeaderMap,
) -> Result<Json<Vec<TokenInfo>>, ApiError> {
    authorize(&api, &headers)?;
    Ok(Json(api.backend.list_tokens().await?))
}

/// Delete an enrollment token
#[utoipa::path(
    delete,
    path = "/api/v1/tokens/{id}",
    tag = "tokens",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "The token's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No valid admin bearer token", body = ErrorBody),
        (status = 404, description = "No such token", body = ErrorBody),
        (status = 500, description = "The collector failed, e.g. its store", body = ErrorBody),
    )
)]
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

/// List enrolled agents
#[utoipa::path(
    get,
    path = "/api/v1/agents",
    tag = "agents",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Every agent, revoked ones too", body = Vec<AgentInfo>),
        (status = 401, description = "No valid admin bearer token", body = ErrorBody),
        (status = 500, description = "The collector failed, e.g. its store", body = ErrorBody),
    )
)]
async fn list_agents<B: AdminBackend>(
    State(api): State<Arc<Api<B>>>,
    headers: HeaderMap,
) -> Result<Json<Vec<AgentInfo>>, ApiError> {
    authorize(&api, &headers)?;
    Ok(Json(api.backend.list_agents().await?))
}

/// Revoke an agent
///
/// Its live stream closes within seconds and it cannot reconnect.
#[utoipa::path(
    post,
    path = "/api/v1/agents/{name}/revoke",
    tag = "agents",
    security(("admin_token" = [])),
    params(("name" = String, Path, description = "The agent's name or id")),
    responses(
        (status = 200, description = "Revoked", body = AgentInfo),
        (status = 401, description = "No valid admin bearer token", body = ErrorBody),
        (status = 404, description = "No such agent", body = ErrorBody),
        (status = 500, description = "The collector failed, e.g. its store", body = ErrorBody),
    )
)]
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

/// Ask a connected agent to renew its certificate now
#[utoipa::path(
    post,
    path = "/api/v1/agents/{name}/rotate",
    tag = "agents",
    security(("admin_token" = [])),
    params(("name" = String, Path, description = "The agent's name or id")),
    responses(
        (status = 200, description = "Asked; the agent renews on its stream", body = AgentInfo),
        (status = 401, description = "No valid admin bearer token", body = ErrorBody),
        (status = 404, description = "No such agent", body = ErrorBody),
        (status = 409, description = "`not_connected`: the agent has no live stream", body = ErrorBody),
        (status = 500, description = "The collector failed, e.g. its store", body = ErrorBody),
    )
)]
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

/// Stored check results of a monitor
///
/// The newest `limit` results in `[from, to)`, returned oldest first. When
/// there may be older ones, the `x-next-to` header holds the `to` of the
/// next (older) page: results sharing one timestamp are never split across
/// pages, so paging neither skips nor repeats any.
#[utoipa::path(
    get,
    path = "/api/v1/results",
    tag = "results",
    security(("admin_token" = [])),
    params(ResultsQuery),
    responses(
        (status = 200, description = "Results, oldest first", body = Vec<ResultInfo>,
            headers(("x-next-to" = i64, description = "Pass as `to` for the next, older page; absent on the last page"))),
        (status = 400, description = "A missing, malformed or unknown query parameter, or `limit` out of 1-10000", body = ErrorBody),
        (status = 401, description = "No valid admin bearer token", body = ErrorBody),
        (status = 500, description = "The collector failed, e.g. its store", body = ErrorBody),
    )
)]
async fn results<B: AdminBackend>(
    State(api): State<Arc<Api<B>>>,
    headers: HeaderMap,
    query: QueryParams<ResultsQuery>,
) -> Result<(HeaderMap, Json<Vec<ResultInfo>>), ApiError> {
    authorize(&api, &headers)?;
    let q = query_params(query)?;
    check_limit(q.limit)?;
    let mut rows = api.backend.results(&q).await?;
    let mut out = HeaderMap::new();
    if let Some(next) = page_back(&mut rows, q.limit) {
        out.insert("x-next-to", next.into());
    }
    Ok((out, Json(rows)))
}

/// Trims a full page (oldest first) so no timestamp is split across pages,
/// and returns the `to` of the next, older page; None on the last page.
fn page_back(rows: &mut Vec<ResultInfo>, limit: usize) -> Option<i64> {
    if rows.len() < limit {
        return None;
    }
    let oldest = rows.first()?.scheduled_at_unix_ms;
    let tied = rows
        .iter()
        .take_while(|r| r.scheduled_at_unix_ms == oldest)
        .count();
    if tied == rows.len() {
        // One timestamp fills the page: older pages start before it.
        return Some(oldest);
    }
    // The oldest timestamp's results come whole on the next page.
    rows.drain(..tied);
    Some(oldest + 1)
}

/// One-minute rollups of a monitor at a location
///
/// Oldest first, at most a week of minutes (10,080).
#[utoipa::path(
    get,
    path = "/api/v1/rollups",
    tag = "results",
    security(("admin_token" = [])),
    params(RollupsQuery),
    responses(
        (status = 200, description = "Rollups, oldest first", body = Vec<RollupInfo>),
        (status = 400, description = "A missing, malformed or unknown query parameter", body = ErrorBody),
        (status = 401, description = "No valid admin bearer token", body = ErrorBody),
        (status = 500, description = "The collector failed, e.g. its store", body = ErrorBody),
    )
)]
async fn rollups<B: AdminBackend>(
    State(api): State<Arc<Api<B>>>,
    headers: HeaderMap,
    query: QueryParams<RollupsQuery>,
) -> Result<Json<Vec<RollupInfo>>, ApiError> {
    authorize(&api, &headers)?;
    let q = query_params(query)?;
    Ok(Json(api.backend.rollups(&q).await?))
}

/// The event log (audit, notifications), oldest first
#[utoipa::path(
    get,
    path = "/api/v1/events",
    tag = "results",
    security(("admin_token" = [])),
    params(EventsQuery),
    responses(
        (status = 200, description = "Events, oldest first", body = Vec<EventInfo>),
        (status = 400, description = "A malformed or unknown query parameter, or `limit` out of 1-10000", body = ErrorBody),
        (status = 401, description = "No valid admin bearer token", body = ErrorBody),
        (status = 500, description = "The collector failed, e.g. its store", body = ErrorBody),
    )
)]
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

/// List incidents, newest first
///
/// Page back with `before` = the last id seen.
#[utoipa::path(
    get,
    path = "/api/v1/incidents",
    tag = "incidents",
    security(("admin_token" = [])),
    params(IncidentsQuery),
    responses(
        (status = 200, description = "Incidents, newest first", body = Vec<Incident>),
        (status = 400, description = "A malformed or unknown query parameter, or `limit` out of 1-10000", body = ErrorBody),
        (status = 401, description = "No valid admin bearer token", body = ErrorBody),
        (status = 500, description = "The collector failed, e.g. its store", body = ErrorBody),
    )
)]
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

/// One incident
#[utoipa::path(
    get,
    path = "/api/v1/incidents/{id}",
    tag = "incidents",
    security(("admin_token" = [])),
    params(("id" = u64, Path, description = "The incident's id")),
    responses(
        (status = 200, description = "The incident", body = Incident),
        (status = 400, description = "The id is not a number", body = ErrorBody),
        (status = 401, description = "No valid admin bearer token", body = ErrorBody),
        (status = 404, description = "No such incident", body = ErrorBody),
        (status = 500, description = "The collector failed, e.g. its store", body = ErrorBody),
    )
)]
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

/// Every monitor at every location now, with its open incident
#[utoipa::path(
    get,
    path = "/api/v1/status",
    tag = "incidents",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "One entry per monitor", body = Vec<MonitorStatus>),
        (status = 401, description = "No valid admin bearer token", body = ErrorBody),
        (status = 500, description = "The collector failed, e.g. its store", body = ErrorBody),
    )
)]
async fn status<B: AdminBackend>(
    State(api): State<Arc<Api<B>>>,
    headers: HeaderMap,
) -> Result<Json<Vec<MonitorStatus>>, ApiError> {
    authorize(&api, &headers)?;
    Ok(Json(api.backend.status().await?))
}

/// List monitors, from the config file and from the API
#[utoipa::path(
    get,
    path = "/api/v1/monitors",
    tag = "monitors",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Every monitor", body = Vec<MonitorInfo>),
        (status = 401, description = "No valid admin bearer token", body = ErrorBody),
    )
)]
async fn list_monitors<B: AdminBackend>(
    State(api): State<Arc<Api<B>>>,
    headers: HeaderMap,
) -> Result<Json<Vec<MonitorInfo>>, ApiError> {
    authorize(&api, &headers)?;
    let monitors = api.backend.monitor_registry().monitors();
    Ok(Json(monitors.iter().map(MonitorInfo::of).collect()))
}

/// One monitor
#[utoipa::path(
    get,
    path = "/api/v1/monitors/{name}",
    tag = "monitors",
    security(("admin_token" = [])),
    params(("name" = String, Path, description = "The monitor's name")),
    responses(
        (status = 200, description = "The monitor", body = MonitorInfo),
        (status = 401, description = "No valid admin bearer token", body = ErrorBody),
        (status = 404, description = "No such monitor", body = ErrorBody),
    )
)]
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

/// Create or replace an API monitor
///
/// The body is the monitor as written in the config file, in JSON; its
/// `name` may be left out, or must match the path.
#[utoipa::path(
    put,
    path = "/api/v1/monitors/{name}",
    tag = "monitors",
    security(("admin_token" = [])),
    params(("name" = String, Path, description = "The monitor's name")),
    request_body(content = RawMonitor, description = "The definition; `name` may be left out"),
    responses(
        (status = 200, description = "Replaced", body = MonitorInfo),
        (status = 201, description = "Created", body = MonitorInfo),
        (status = 400, description = "Malformed JSON, unknown field, wrong type, or a name that does not match the path", body = ErrorBody),
        (status = 401, description = "No valid admin bearer token", body = ErrorBody),
        (status = 409, description = "`managed_by_file`: the monitor is defined in the config file", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = ErrorBody),
        (status = 415, description = "Content-Type is not application/json", body = ErrorBody),
        (status = 422, description = "`invalid_monitor`: every problem with the definition, one per line", body = ErrorBody),
        (status = 500, description = "The collector failed, e.g. its store", body = ErrorBody),
    )
)]
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

/// Delete an API monitor
///
/// Refused while another monitor depends on it.
#[utoipa::path(
    delete,
    path = "/api/v1/monitors/{name}",
    tag = "monitors",
    security(("admin_token" = [])),
    params(("name" = String, Path, description = "The monitor's name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No valid admin bearer token", body = ErrorBody),
        (status = 404, description = "No such monitor", body = ErrorBody),
        (status = 409, description = "`managed_by_file` (defined in the config file) or `depended_on` (another monitor's `depends_on`)", body = ErrorBody),
        (status = 500, description = "The collector failed, e.g. its store", body = ErrorBody),
    )
)]
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

/// The outcome of the last config file (re)load
#[utoipa::path(
    get,
    path = "/api/v1/config/status",
    tag = "monitors",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The last reload", body = ReloadStatus),
        (status = 401, description = "No valid admin bearer token", body = ErrorBody),
    )
)]
async fn config_status<B: AdminBackend>(
    State(api): State<Arc<Api<B>>>,
    headers: HeaderMap,
) -> Result<Json<ReloadStatus>, ApiError> {
    authorize(&api, &headers)?;
    Ok(Json(api.backend.monitor_registry().reload_status()))
}

/// Prometheus metrics
///
/// Probe series per monitor and location (blackbox_exporter-compatible),
/// states, open incidents, agent and notification self-metrics. Needs the
/// admin token unless the collector is configured with `metrics_open`.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    security((), ("admin_token" = [])),
    responses(
        (status = 200, description = "The text exposition format 0.0.4", body = String, content_type = "text/plain; version=0.0.4; charset=utf-8"),
        (status = 401, description = "No valid admin bearer token (unless `metrics_open`)", body = ErrorBody),
        (status = 500, description = "The collector failed, e.g. its store", body = ErrorBody),
    )
)]
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

/// Readiness: can the collector serve (does its store answer)?
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready", body = String, content_type = "text/plain", example = "ready\n"),
        (status = 503, description = "`not_ready`: the store does not answer", body = ErrorBody),
        (status = 500, description = "The collector failed, e.g. its store", body = ErrorBody),
    )
)]
async fn readyz<B: AdminBackend>(State(api): State<Arc<Api<B>>>) -> Result<&'static str, ApiError> {
    api.backend.ready().await?;
    Ok("ready\n")
}

/// Liveness: the process serves HTTP
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses(
        (status = 200, description = "Alive", body = String, content_type = "text/plain", example = "ok\n"),
    )
)]
async fn healthz() -> &'static str {
    "ok\n"
}

/// This document
///
/// The API's OpenAPI 3.1 description, generated from the code; open, since it
/// describes the API and holds no data.
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    tag = "operations",
    responses(
        (status = 200, description = "The OpenAPI document", body = Object, content_type = "application/json"),
    )
)]
async fn openapi_json<B: AdminBackend>(State(api): State<Arc<Api<B>>>) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        api.openapi.clone(),
    )
        .into_response()
}

/// `GET /api/v1/notifications`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct NotificationsInfo {
    pub channels: Vec<crate::notify::ChannelInfo>,
    /// The latest delivery attempts (last 24 h, newest first, at most 200):
    /// `{incident, action: delivered|delivery_failed, delivery: {...}}`.
    pub recent: Vec<EventInfo>,
}

/// Notification channels (nothing secret) and the latest deliveries
#[utoipa::path(
    get,
    path = "/api/v1/notifications",
    tag = "notifications",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Channels and recent delivery attempts", body = NotificationsInfo),
        (status = 401, description = "No valid admin bearer token", body = ErrorBody),
        (status = 500, description = "The collector failed, e.g. its store", body = ErrorBody),
    )
)]
async fn notifications<B: AdminBackend>(
    State(api): State<Arc<Api<B>>>,
    headers: HeaderMap,
) -> Result<Json<NotificationsInfo>, ApiError> {
    authorize(&api, &headers)?;
    Ok(Json(api.backend.notifications().await?))
}

/// A notification channel as the API shows it: never a secret.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChannelView {
    pub name: String,
    /// `file` (change it in the config file) or `api`.
    pub origin: Origin,
    pub kind: String,
    /// Where it goes, without credentials: the URL's scheme and host, or
    /// the SMTP relay and recipients.
    pub destination: String,
    /// The definition as written, without its write-only fields: what a
    /// `PUT` takes back.
    pub definition: RawChannel,
    /// The write-only fields that are set (`url`, `secret`, `headers`,
    /// `routing_key`, `password`); their values are never shown.
    pub write_only: Vec<String>,
}

impl ChannelView {
    pub fn of(e: &ChannelEntry) -> ChannelView {
        let info = e.channel.info();
        ChannelView {
            name: info.name,
            origin: e.origin,
            kind: info.kind,
            destination: info.destination,
            definition: e.raw.redacted(),
            write_only: e.raw.write_only_set(),
        }
    }

    /// What the audit log records of a change: the view, nothing secret.
    fn audit_detail(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": self.kind,
            "destination": self.destination,
            "definition": self.definition,
            "write_only": self.write_only,
        })
    }
}

/// The outcome of a test notification: one attempt, no retry.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChannelTestResult {
    pub channel: String,
    /// The receiver accepted it (2xx; the SMTP relay took the mail).
    pub delivered: bool,
    /// Why not, when not: an HTTP status with an excerpt of the answer, a
    /// connection or SMTP error. Never the channel's URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Whether a real notification would have been retried after this error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transient: Option<bool>,
    /// How long the attempt took.
    pub took_ms: u64,
}

/// List notification channels, from the config file and from the API
#[utoipa::path(
    get,
    path = "/api/v1/notifications/channels",
    tag = "notifications",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Every channel, by name, without its secrets", body = Vec<ChannelView>),
        (status = 401, description = "No valid admin bearer token", body = ErrorBody),
    )
)]
async fn list_channels<B: AdminBackend>(
    State(api): State<Arc<Api<B>>>,
    headers: HeaderMap,
) -> Result<Json<Vec<ChannelView>>, ApiError> {
    authorize(&api, &headers)?;
    let list = api.backend.channel_registry().list();
    Ok(Json(list.iter().map(ChannelView::of).collect()))
}

/// One notification channel, without its secrets
#[utoipa::path(
    get,
    path = "/api/v1/notifications/channels/{name}",
    tag = "notifications",
    security(("admin_token" = [])),
    params(("name" = String, Path, description = "The channel's name")),
    responses(
        (status = 200, description = "The channel", body = ChannelView),
        (status = 401, description = "No valid admin bearer token", body = ErrorBody),
        (status = 404, description = "No such channel", body = ErrorBody),
    )
)]
async fn get_channel<B: AdminBackend>(
    State(api): State<Arc<Api<B>>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<ChannelView>, ApiError> {
    authorize(&api, &headers)?;
    api.backend
        .channel_registry()
        .get(&name)
        .map(|e| Json(ChannelView::of(&e)))
        .ok_or_else(|| ApiError::from(ChannelError::NotFound(name)))
}

/// Create or replace an API notification channel
///
/// The body is the channel as written in the config file (`[[notifications]]`),
/// in JSON; its `name` may be left out, or must match the path. The fields
/// holding credentials (`url` except for PagerDuty, `secret`, `headers`,
/// `routing_key`, `password`) are write-only: no answer shows them. When the
/// body replaces an API channel of the same kind, a write-only field it
/// leaves out keeps its stored value; `null` (or `{}` for `headers`) clears
/// it.
#[utoipa::path(
    put,
    path = "/api/v1/notifications/channels/{name}",
    tag = "notifications",
    security(("admin_token" = [])),
    params(("name" = String, Path, description = "The channel's name")),
    request_body(content = RawChannel, description = "The definition; `name` may be left out"),
    responses(
        (status = 200, description = "Replaced", body = ChannelView),
        (status = 201, description = "Created", body = ChannelView),
        (status = 400, description = "Malformed JSON, unknown field, wrong type, or a name that does not match the path", body = ErrorBody),
        (status = 401, description = "No valid admin bearer token", body = ErrorBody),
        (status = 409, description = "`managed_by_file`: the channel is defined in the config file", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = ErrorBody),
        (status = 415, description = "Content-Type is not application/json", body = ErrorBody),
        (status = 422, description = "`invalid_channel`: every problem with the definition, one per line", body = ErrorBody),
        (status = 500, description = "The collector failed, e.g. writing its data dir", body = ErrorBody),
    )
)]
async fn put_channel<B: AdminBackend>(
    State(api): State<Arc<Api<B>>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Result<Json<serde_json::Value>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<ChannelView>), ApiError> {
    authorize(&api, &headers)?;
    let mut value = json_body(body)?;
    let mut omitted = Vec::new();
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
        // Absent, not null: null clears a stored secret.
        omitted.extend(
            crate::notify::WRITE_ONLY
                .iter()
                .filter(|f| !obj.contains_key(**f)),
        );
    }
    let def: RawChannel = serde_json::from_value(value)
        .map_err(|e| ApiError::bad_request(format!("channel: {e}")))?;
    // The registry fsyncs its file: off the async workers.
    let registry = api.backend.channel_registry().clone();
    let (entry, created) = tokio::task::spawn_blocking(move || registry.upsert(def, &omitted))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    let view = ChannelView::of(&entry);
    tracing::info!(channel = %view.name, kind = %view.kind, created, "notification channel saved through the api");
    api.backend.audit(
        if created {
            "channel.create"
        } else {
            "channel.replace"
        },
        &view.name,
        view.audit_detail(),
    );
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(view)))
}

/// Delete an API notification channel
///
/// Notifications already queued on it are still sent (or retried) before
/// its worker ends.
#[utoipa::path(
    delete,
    path = "/api/v1/notifications/channels/{name}",
    tag = "notifications",
    security(("admin_token" = [])),
    params(("name" = String, Path, description = "The channel's name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No valid admin bearer token", body = ErrorBody),
        (status = 404, description = "No such channel", body = ErrorBody),
        (status = 409, description = "`managed_by_file`: the channel is defined in the config file", body = ErrorBody),
        (status = 500, description = "The collector failed, e.g. writing its data dir", body = ErrorBody),
    )
)]
async fn delete_channel<B: AdminBackend>(
    State(api): State<Arc<Api<B>>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    authorize(&api, &headers)?;
    let registry = api.backend.channel_registry().clone();
    let owned = name.clone();
    let gone = tokio::task::spawn_blocking(move || registry.delete(&owned))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    tracing::info!(channel = %name, "notification channel deleted through the api");
    api.backend.audit(
        "channel.delete",
        &name,
        serde_json::json!({ "kind": gone.raw.kind }),
    );
    Ok(StatusCode::NO_CONTENT)
}

/// Send a test notification through a channel
///
/// One attempt, no retry, whatever the channel's route says; the answer is
/// its outcome (a failed delivery is still a 200). File and API channels
/// alike. A PagerDuty channel gets a real trigger (dedup key `portwatch-0`).
#[utoipa::path(
    post,
    path = "/api/v1/notifications/channels/{name}/test",
    tag = "notifications",
    security(("admin_token" = [])),
    params(("name" = String, Path, description = "The channel's name")),
    responses(
        (status = 200, description = "Attempted; `delivered` says whether it arrived", body = ChannelTestResult),
        (status = 401, description = "No valid admin bearer token", body = ErrorBody),
        (status = 404, description = "No such channel", body = ErrorBody),
    )
)]
async fn test_channel<B: AdminBackend>(
    State(api): State<Arc<Api<B>>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<ChannelTestResult>, ApiError> {
    authorize(&api, &headers)?;
    let entry = api
        .backend
        .channel_registry()
        .get(&name)
        .ok_or_else(|| ApiError::from(ChannelError::NotFound(name.clone())))?;
    let note = crate::notify::test_notification(&name, api.backend.dashboard_url().as_deref());
    let started = std::time::Instant::now();
    let sent = crate::notify::send(&entry.channel, &note).await;
    let took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let result = ChannelTestResult {
        channel: name.clone(),
        delivered: sent.is_ok(),
        transient: sent.as_ref().err().map(|e| e.is_transient()),
        error: sent.err().map(|e| e.to_string()),
        took_ms,
    };
    match &result.error {
        None => tracing::info!(channel = %name, took_ms, "test notification delivered"),
        Some(e) => tracing::warn!(channel = %name, error = %e, "test notification failed"),
    }
    api.backend.audit(
        "channel.test",
        &name,
        serde_json::json!({ "delivered": result.delivered, "error": result.error }),
    );
    Ok(Json(result))
}

/// `GET /api/v1/maintenance/upcoming?[from=MS][&to=MS]`: occurrences
/// overlapping the range (default: now to 30 days ahead).
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UpcomingQuery {
    /// From this time (unix ms); default: now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<i64>,
    /// Up to this time (unix ms), at most 400 days after `from`; default:
    /// 30 days after `from`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<i64>,
}

pub(crate) fn now_ms() -> i64 {
    crate::state::unix_ms(std::time::SystemTime::now())
}

/// List maintenance windows, from the config file and from the API
#[utoipa::path(
    get,
    path = "/api/v1/maintenance",
    tag = "maintenance",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Every window with its next occurrence", body = Vec<WindowInfo>),
        (status = 401, description = "No valid admin bearer token", body = ErrorBody),
    )
)]
async fn list_maintenance<B: AdminBackend>(
    State(api): State<Arc<Api<B>>>,
    headers: HeaderMap,
) -> Result<Json<Vec<WindowInfo>>, ApiError> {
    authorize(&api, &headers)?;
    let now = now_ms();
    let list = api.backend.maintenance_registry().list();
    Ok(Json(list.iter().map(|w| w.info(now)).collect()))
}

/// One maintenance window
#[utoipa::path(
    get,
    path = "/api/v1/maintenance/{name}",
    tag = "maintenance",
    security(("admin_token" = [])),
    params(("name" = String, Path, description = "The window's name")),
    responses(
        (status = 200, description = "The window", body = WindowInfo),
        (status = 401, description = "No valid admin bearer token", body = ErrorBody),
        (status = 404, description = "No such window", body = ErrorBody),
    )
)]
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

/// Add a maintenance window
#[utoipa::path(
    post,
    path = "/api/v1/maintenance",
    tag = "maintenance",
    security(("admin_token" = [])),
    request_body = RawWindow,
    responses(
        (status = 201, description = "Added", body = WindowInfo),
        (status = 400, description = "Malformed JSON, unknown field or wrong type", body = ErrorBody),
        (status = 401, description = "No valid admin bearer token", body = ErrorBody),
        (status = 409, description = "`exists`: a window of that name exists already", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = ErrorBody),
        (status = 415, description = "Content-Type is not application/json", body = ErrorBody),
        (status = 422, description = "`invalid_window`: every problem with the definition, one per line", body = ErrorBody),
        (status = 500, description = "The collector failed, e.g. its store", body = ErrorBody),
    )
)]
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

/// Cancel an API maintenance window
///
/// A running window ends at once.
#[utoipa::path(
    delete,
    path = "/api/v1/maintenance/{name}",
    tag = "maintenance",
    security(("admin_token" = [])),
    params(("name" = String, Path, description = "The window's name")),
    responses(
        (status = 200, description = "Cancelled; the window as it was", body = WindowInfo),
        (status = 401, description = "No valid admin bearer token", body = ErrorBody),
        (status = 404, description = "No such window", body = ErrorBody),
        (status = 409, description = "`managed_by_file`: the window is defined in the config file", body = ErrorBody),
        (status = 500, description = "The collector failed, e.g. its store", body = ErrorBody),
    )
)]
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

/// Maintenance occurrences overlapping a time range
#[utoipa::path(
    get,
    path = "/api/v1/maintenance/upcoming",
    tag = "maintenance",
    security(("admin_token" = [])),
    params(UpcomingQuery),
    responses(
        (status = 200, description = "Occurrences by start time", body = Vec<Occurrence>),
        (status = 400, description = "A malformed or unknown query parameter, or `to` not after `from` or over 400 days later", body = ErrorBody),
        (status = 401, description = "No valid admin bearer token", body = ErrorBody),
    )
)]
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

impl From<ChannelError> for ApiError {
    fn from(e: ChannelError) -> ApiError {
        let message = e.to_string();
        match e {
            ChannelError::NotFound(_) => ApiError::not_found(message),
            ChannelError::ManagedByFile(_) | ChannelError::Clash(_) => {
                ApiError::new(StatusCode::CONFLICT, "managed_by_file", message)
            }
            ChannelError::Invalid(_) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_channel", message)
            }
            ChannelError::Storage { .. } => ApiError::internal(message),
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
