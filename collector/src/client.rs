//! The admin CLI's side of the HTTP API: a small blocking client (ureq) that
//! finds the collector from `--data-dir` (its discovery file and admin token)
//! or from an explicit URL and token.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::admin::{ADMIN_TOKEN_FILE, AdminToken, Discovery};
use crate::http::{
    AgentInfo, CreateToken, CreatedToken, EventInfo, EventsQuery, MonitorInfo, ResultInfo,
    ResultsQuery, TokenInfo,
};
use crate::monitors::RawMonitor;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot find the collector: {0} (is `portwatch-collector serve` running with this --data-dir?)"
    )]
    Discovery(String),
    #[error("cannot reach the collector at {url}: {why}")]
    Unreachable { url: String, why: String },
    #[error("the collector answered {status} {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("the collector's answer was not understood: {0}")]
    Decode(String),
}

/// A connection to a running collector's admin API.
pub struct AdminClient {
    base: String,
    token: AdminToken,
    agent: ureq::Agent,
}

impl AdminClient {
    pub fn new(base: &str, token: AdminToken) -> AdminClient {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(15)))
            .build();
        AdminClient {
            base: base.trim_end_matches('/').to_owned(),
            token,
            agent: ureq::Agent::new_with_config(config),
        }
    }

    /// Finds the collector serving `data_dir`: its URL from `collector.json`,
    /// its admin token from `admin.token`.
    pub fn from_data_dir(data_dir: &Path) -> Result<AdminClient, ClientError> {
        let d = Discovery::read(data_dir).map_err(|e| ClientError::Discovery(e.to_string()))?;
        let token = AdminToken::read(&data_dir.join(ADMIN_TOKEN_FILE))
            .map_err(|e| ClientError::Discovery(e.to_string()))?;
        Ok(AdminClient::new(&d.url, token))
    }

    pub fn create_token(&self, req: &CreateToken) -> Result<CreatedToken, ClientError> {
        self.call("POST", "/api/v1/tokens", Some(req))
    }

    pub fn list_tokens(&self) -> Result<Vec<TokenInfo>, ClientError> {
        self.call::<(), _>("GET", "/api/v1/tokens", None)
    }

    pub fn delete_token(&self, id: &str) -> Result<(), ClientError> {
        self.call::<(), serde_json::Value>(
            "DELETE",
            &format!("/api/v1/tokens/{}", path_segment(id)),
            None,
        )
        .map(|_| ())
    }

    pub fn list_agents(&self) -> Result<Vec<AgentInfo>, ClientError> {
        self.call::<(), _>("GET", "/api/v1/agents", None)
    }

    pub fn revoke_agent(&self, name: &str) -> Result<AgentInfo, ClientError> {
        self.call::<(), _>(
            "POST",
            &format!("/api/v1/agents/{}/revoke", path_segment(name)),
            None,
        )
    }

    pub fn rotate_agent(&self, name: &str) -> Result<AgentInfo, ClientError> {
        self.call::<(), _>(
            "POST",
            &format!("/api/v1/agents/{}/rotate", path_segment(name)),
            None,
        )
    }

    pub fn results(&self, q: &ResultsQuery) -> Result<Vec<ResultInfo>, ClientError> {
        let mut path = format!(
            "/api/v1/results?monitor={}&limit={}",
            path_segment(&q.monitor),
            q.limit
        );
        if let Some(l) = &q.location {
            path.push_str(&format!("&location={}", path_segment(l)));
        }
        for (k, v) in [("from", q.from), ("to", q.to)] {
            if let Some(v) = v {
                path.push_str(&format!("&{k}={v}"));
            }
        }
        self.call::<(), _>("GET", &path, None)
    }

    pub fn events(&self, q: &EventsQuery) -> Result<Vec<EventInfo>, ClientError> {
        let mut path = format!("/api/v1/events?limit={}", q.limit);
        if let Some(k) = &q.kind {
            path.push_str(&format!("&kind={}", path_segment(k)));
        }
        if let Some(v) = q.from {
            path.push_str(&format!("&from={v}"));
        }
        self.call::<(), _>("GET", &path, None)
    }

    pub fn incidents(
        &self,
        q: &crate::http::IncidentsQuery,
    ) -> Result<Vec<crate::incident::Incident>, ClientError> {
        let mut path = format!("/api/v1/incidents?limit={}", q.limit);
        if q.open {
            path.push_str("&open=true");
        }
        if let Some(m) = &q.monitor {
            path.push_str(&format!("&monitor={}", path_segment(m)));
        }
        if let Some(b) = q.before {
            path.push_str(&format!("&before={b}"));
        }
        self.call::<(), _>("GET", &path, None)
    }

    pub fn incident(&self, id: u64) -> Result<crate::incident::Incident, ClientError> {
        self.call::<(), _>("GET", &format!("/api/v1/incidents/{id}"), None)
    }

    pub fn status(&self) -> Result<Vec<crate::incident::engine::MonitorStatus>, ClientError> {
        self.call::<(), _>("GET", "/api/v1/status", None)
    }

    pub fn list_monitors(&self) -> Result<Vec<MonitorInfo>, ClientError> {
        self.call::<(), _>("GET", "/api/v1/monitors", None)
    }

    pub fn get_monitor(&self, name: &str) -> Result<MonitorInfo, ClientError> {
        self.call::<(), _>(
            "GET",
            &format!("/api/v1/monitors/{}", path_segment(name)),
            None,
        )
    }

    /// Creates or replaces an API monitor.
    pub fn put_monitor(&self, def: &RawMonitor) -> Result<MonitorInfo, ClientError> {
        self.call(
            "PUT",
            &format!("/api/v1/monitors/{}", path_segment(&def.name)),
            Some(def),
        )
    }

    pub fn delete_monitor(&self, name: &str) -> Result<(), ClientError> {
        self.call::<(), serde_json::Value>(
            "DELETE",
            &format!("/api/v1/monitors/{}", path_segment(name)),
            None,
        )
        .map(|_| ())
    }

    pub fn notifications(&self) -> Result<crate::http::NotificationsInfo, ClientError> {
        self.call::<(), _>("GET", "/api/v1/notifications", None)
    }

    pub fn list_channels(&self) -> Result<Vec<crate::http::ChannelView>, ClientError> {
        self.call::<(), _>("GET", "/api/v1/notifications/channels", None)
    }

    pub fn get_channel(&self, name: &str) -> Result<crate::http::ChannelView, ClientError> {
        self.call::<(), _>(
            "GET",
            &format!("/api/v1/notifications/channels/{}", path_segment(name)),
            None,
        )
    }

    /// Creates or replaces an API channel. `def` is sent as it is: a
    /// write-only field it leaves out keeps its stored value, `null` clears it.
    pub fn put_channel(
        &self,
        name: &str,
        def: &serde_json::Value,
    ) -> Result<crate::http::ChannelView, ClientError> {
        self.call(
            "PUT",
            &format!("/api/v1/notifications/channels/{}", path_segment(name)),
            Some(def),
        )
    }

    pub fn delete_channel(&self, name: &str) -> Result<(), ClientError> {
        self.call::<(), serde_json::Value>(
            "DELETE",
            &format!("/api/v1/notifications/channels/{}", path_segment(name)),
            None,
        )
        .map(|_| ())
    }

    /// Sends a test notification through the channel: its outcome.
    pub fn test_channel(&self, name: &str) -> Result<crate::http::ChannelTestResult, ClientError> {
        self.call::<(), _>(
            "POST",
            &format!("/api/v1/notifications/channels/{}/test", path_segment(name)),
            None,
        )
    }

    pub fn list_maintenance(&self) -> Result<Vec<crate::maintenance::WindowInfo>, ClientError> {
        self.call::<(), _>("GET", "/api/v1/maintenance", None)
    }

    pub fn add_maintenance(
        &self,
        def: &crate::maintenance::RawWindow,
    ) -> Result<crate::maintenance::WindowInfo, ClientError> {
        self.call("POST", "/api/v1/maintenance", Some(def))
    }

    pub fn cancel_maintenance(
        &self,
        name: &str,
    ) -> Result<crate::maintenance::WindowInfo, ClientError> {
        self.call::<(), _>(
            "DELETE",
            &format!("/api/v1/maintenance/{}", path_segment(name)),
            None,
        )
    }

    pub fn upcoming_maintenance(
        &self,
        from: Option<i64>,
        to: Option<i64>,
    ) -> Result<Vec<crate::maintenance::registry::Occurrence>, ClientError> {
        let mut path = "/api/v1/maintenance/upcoming?".to_owned();
        if let Some(f) = from {
            path.push_str(&format!("from={f}&"));
        }
        if let Some(t) = to {
            path.push_str(&format!("to={t}"));
        }
        self.call::<(), _>("GET", path.trim_end_matches(['&', '?']), None)
    }

    pub fn config_status(&self) -> Result<ReloadStatusView, ClientError> {
        self.call::<(), _>("GET", "/api/v1/config/status", None)
    }

    fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let auth = format!("Bearer {}", self.token.secret());
        let unreachable = |e: ureq::Error| ClientError::Unreachable {
            url: self.base.clone(),
            why: e.to_string(),
        };
        let resp = match (method, body) {
            ("POST", Some(b)) => self
                .agent
                .post(&url)
                .header("Authorization", &auth)
                .send_json(b),
            ("PUT", Some(b)) => self
                .agent
                .put(&url)
                .header("Authorization", &auth)
                .send_json(b),
            ("POST", None) => self
                .agent
                .post(&url)
                .header("Authorization", &auth)
                .send_empty(),
            ("DELETE", _) => self
                .agent
                .delete(&url)
                .header("Authorization", &auth)
                .call(),
            _ => self.agent.get(&url).header("Authorization", &auth).call(),
        }
        .map_err(unreachable)?;
        let status = resp.status().as_u16();
        let text = resp
            .into_body()
            .read_to_string()
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        if !(200..300).contains(&status) {
            let parsed: Option<serde_json::Value> = serde_json::from_str(&text).ok();
            let field = |k: &str| {
                parsed
                    .as_ref()
                    .and_then(|v| v["error"][k].as_str())
                    .unwrap_or_default()
                    .to_owned()
            };
            return Err(ClientError::Api {
                status,
                code: field("code"),
                message: field("message"),
            });
        }
        let text = if text.is_empty() { "null" } else { &text };
        serde_json::from_str(text).map_err(|e| ClientError::Decode(e.to_string()))
    }
}

/// Percent-encodes a path segment (names are validated server-side anyway).
fn path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `GET /api/v1/config/status`, as the client reads it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ReloadStatusView {
    pub file: Option<String>,
    pub at: Option<i64>,
    pub ok: bool,
    pub error: Option<String>,
}
