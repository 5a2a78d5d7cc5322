//! The admin API over real HTTP on loopback, through the CLI's own client:
//! bearer auth, JSON error bodies, body limits, and the backend's answers.

use std::sync::Mutex;

use super::*;
use crate::client::{AdminClient, ClientError};

/// A backend that keeps tokens and agents in memory: the HTTP layer under test
/// here is auth, routing, JSON and errors; the real stores have their own tests.
#[derive(Default)]
struct Memory {
    tokens: Mutex<Vec<TokenInfo>>,
    agents: Mutex<Vec<AgentInfo>>,
    /// What the handlers asked to audit: (action, subject).
    audited: Mutex<Vec<(String, String)>>,
    incidents: Mutex<Vec<crate::incident::Incident>>,
    /// The real maintenance registry, in memory.
    maintenance: crate::maintenance::MaintenanceRegistry,
    /// The real registry, in memory: the API maps its answers and errors.
    monitors: crate::monitors::registry::MonitorRegistry,
}

impl AdminBackend for Arc<Memory> {
    async fn incidents(
        &self,
        q: &IncidentsQuery,
    ) -> Result<Vec<crate::incident::Incident>, ApiError> {
        Ok(self
            .incidents
            .lock()
            .unwrap()
            .iter()
            .filter(|i| !q.open || i.is_open())
            .take(q.limit)
            .cloned()
            .collect())
    }
    async fn incident(&self, id: u64) -> Result<crate::incident::Incident, ApiError> {
        self.incidents
            .lock()
            .unwrap()
            .iter()
            .find(|i| i.id == id)
            .cloned()
            .ok_or_else(|| ApiError::not_found(format!("no incident {id}")))
    }
    async fn status(&self) -> Result<Vec<crate::incident::engine::MonitorStatus>, ApiError> {
        Ok(Vec::new())
    }
    async fn notifications(&self) -> Result<NotificationsInfo, ApiError> {
        Ok(NotificationsInfo::default())
    }
    async fn metrics(&self) -> Result<String, ApiError> {
        Ok("# HELP up test\n# TYPE up gauge\nup 1\n".into())
    }
    fn metrics_open(&self) -> bool {
        false
    }
    async fn ready(&self) -> Result<(), ApiError> {
        Ok(())
    }
    async fn rotate_agent(&self, name: &str) -> Result<AgentInfo, ApiError> {
        self.agents
            .lock()
            .unwrap()
            .iter()
            .find(|a| a.name == name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(format!("no agent {name:?}")))
    }
    fn monitor_registry(&self) -> &crate::monitors::registry::MonitorRegistry {
        &self.monitors
    }
    fn maintenance_registry(&self) -> &crate::maintenance::MaintenanceRegistry {
        &self.maintenance
    }
    async fn create_token(&self, req: CreateToken) -> Result<CreatedToken, ApiError> {
        if req.name.is_empty() {
            return Err(ApiError::bad_request("name: must not be empty"));
        }
        let id = format!("t{}", self.tokens.lock().unwrap().len());
        self.tokens.lock().unwrap().push(TokenInfo {
            token_id: id.clone(),
            name: req.name.clone(),
            labels: req.labels,
            created_at_unix_ms: 1,
            expires_at_unix_ms: 2,
            used_by: None,
        });
        Ok(CreatedToken {
            token_id: id,
            name: req.name,
            expires_at_unix_ms: 2,
            join: "pwjoin1:x".into(),
        })
    }
    async fn list_tokens(&self) -> Result<Vec<TokenInfo>, ApiError> {
        Ok(self.tokens.lock().unwrap().clone())
    }
    async fn delete_token(&self, id: &str) -> Result<(), ApiError> {
        let mut t = self.tokens.lock().unwrap();
        let before = t.len();
        t.retain(|x| x.token_id != id);
        if t.len() == before {
            Err(ApiError::not_found(format!("no token {id:?}")))
        } else {
            Ok(())
        }
    }
    async fn list_agents(&self) -> Result<Vec<AgentInfo>, ApiError> {
        Ok(self.agents.lock().unwrap().clone())
    }
    async fn rollups(&self, _q: &RollupsQuery) -> Result<Vec<RollupInfo>, ApiError> {
        Ok(Vec::new())
    }
    async fn events(&self, q: &EventsQuery) -> Result<Vec<EventInfo>, ApiError> {
        let audited = self.audited.lock().unwrap();
        Ok(audited
            .iter()
            .enumerate()
            .filter(|_| q.kind.as_deref().is_none_or(|k| k == "audit"))
            .map(|(i, (action, subject))| EventInfo {
                id: i as u64,
                at_unix_ms: 0,
                kind: "audit".into(),
                subject: subject.clone(),
                body: serde_json::json!({ "action": action }),
            })
            .take(q.limit)
            .collect())
    }
    fn audit(&self, action: &str, subject: &str, _detail: serde_json::Value) {
        self.audited
            .lock()
            .unwrap()
            .push((action.to_owned(), subject.to_owned()));
    }
    async fn results(&self, q: &ResultsQuery) -> Result<Vec<ResultInfo>, ApiError> {
        let (monitor_id, limit) = (&q.monitor, q.limit);
        let r = ResultInfo {
            monitor_id: monitor_id.to_owned(),
            location: q
                .location
                .clone()
                .unwrap_or_else(|| "agent:bastion-1".into()),
            seq: 1,
            scheduled_at_unix_ms: 1,
            status: "up".into(),
            reason: "ok".into(),
            message: String::new(),
            address: "127.0.0.1:1".into(),
            connect_us: Some(80),
            tls_us: None,
            first_byte_us: None,
            total_us: 100,
        };
        Ok(vec![r; limit.min(3)])
    }
    async fn revoke_agent(&self, name: &str) -> Result<AgentInfo, ApiError> {
        let mut a = self.agents.lock().unwrap();
        let agent = a
            .iter_mut()
            .find(|x| x.name == name)
            .ok_or_else(|| ApiError::not_found(format!("no agent {name:?}")))?;
        agent.revoked = true;
        Ok(agent.clone())
    }
}

async fn serve(backend: Arc<Memory>) -> (String, AdminToken) {
    let admin = AdminToken::new(&"a".repeat(64)).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = router(backend, admin.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, admin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_client_creates_lists_and_revokes() {
    let backend = Arc::new(Memory::default());
    backend.agents.lock().unwrap().push(AgentInfo {
        id: "bastion-1-ab12".into(),
        name: "bastion-1".into(),
        labels: BTreeMap::new(),
        enrolled_at_unix_ms: 1,
        cert_expires_at_unix_ms: 2,
        revoked: false,
        connected_since_unix_ms: None,
        last_seen_unix_ms: None,
        version: None,
        backlog: None,
        public_region: None,
        acked_through: None,
    });
    let (url, admin) = serve(backend.clone()).await;
    tokio::task::spawn_blocking(move || {
        let c = AdminClient::new(&url, admin);
        let created = c
            .create_token(&CreateToken {
                name: "bastion-2".into(),
                labels: [("site".into(), "fra".into())].into(),
                ttl: None,
                public_region: None,
            })
            .unwrap();
        assert_eq!(created.join, "pwjoin1:x");
        assert_eq!(c.list_tokens().unwrap()[0].labels["site"], "fra");
        c.delete_token(&created.token_id).unwrap();
        let err = c.delete_token(&created.token_id).unwrap_err();
        assert!(
            matches!(&err, ClientError::Api { status: 404, code, .. } if code == "not_found"),
            "{err}"
        );
        assert!(c.revoke_agent("bastion-1").unwrap().revoked);
        // Every admin action lands in the audit log, in order.
        let audit = c
            .events(&EventsQuery {
                kind: Some("audit".into()),
                limit: 100,
                ..Default::default()
            })
            .unwrap();
        let actions: Vec<&str> = audit
            .iter()
            .map(|e| e.body["action"].as_str().unwrap())
            .collect();
        assert_eq!(actions, ["token.create", "token.delete", "agent.revoke"]);
        let q = |m: &str, limit| ResultsQuery {
            monitor: m.into(),
            limit,
            ..Default::default()
        };
        let r = c.results(&q("pg main", 2)).unwrap();
        assert_eq!(
            (r.len(), r[0].monitor_id.as_str()),
            (2, "pg main"),
            "query string encoded and decoded"
        );
        let by_location = c
            .results(&ResultsQuery {
                location: Some("public:eu west".into()),
                from: Some(5),
                to: Some(9),
                ..q("pg", 1)
            })
            .unwrap();
        assert_eq!(
            by_location[0].location, "public:eu west",
            "location encoded"
        );
        let err = c.results(&q("pg", 0)).unwrap_err().to_string();
        assert!(err.contains("limit"), "{err}");
        let err = c
            .create_token(&CreateToken::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("400") && err.contains("name"), "{err}");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_needs_the_admin_token_and_errors_are_json() {
    let (url, _) = serve(Arc::new(Memory::default())).await;
    tokio::task::spawn_blocking(move || {
        let wrong = AdminClient::new(&url, AdminToken::new(&"b".repeat(64)).unwrap());
        for r in [wrong.list_agents().map(|_| ()), wrong.list_tokens().map(|_| ()), wrong.revoke_agent("x").map(|_| ())] {
            let err = r.unwrap_err();
            assert!(matches!(&err, ClientError::Api { status: 401, code, .. } if code == "unauthorized"), "{err}");
        }
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let auth = format!("Bearer {}", "a".repeat(64));
        // Malformed JSON, unknown fields and oversized bodies are 4xx with a JSON error, never a panic.
        for (body, status) in [
            ("{not json".to_owned(), 400),
            (r#"{"name":"x","evil":1}"#.to_owned(), 422),
            (format!(r#"{{"name":"{}"}}"#, "x".repeat(MAX_BODY_BYTES + 10)), 413),
        ] {
            let resp = agent
                .post(&format!("{url}/api/v1/tokens"))
                .header("Authorization", &auth)
                .header("Content-Type", "application/json")
                .send(body.as_bytes())
                .unwrap();
            assert_eq!(resp.status().as_u16(), status);
            let text = resp.into_body().read_to_string().unwrap_or_default();
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
            assert!(v["error"]["message"].as_str().is_some(), "{text}");
        }
        let resp = agent.get(&format!("{url}/nope")).header("Authorization", &auth).call().unwrap();
        assert_eq!(resp.status().as_u16(), 404);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitors_are_created_replaced_and_deleted_through_the_api() {
    let (url, admin) = serve(Arc::new(Memory::default())).await;
    tokio::task::spawn_blocking(move || {
        let c = AdminClient::new(&url, admin);
        let def = RawMonitor {
            name: "orders-db".into(),
            target: "tcp://10.0.0.5:5432".into(),
            locations: vec!["site=fra".into()],
            preset: Some("postgres".into()),
            ..Default::default()
        };
        assert_eq!(c.put_monitor(&def).unwrap().name, "orders-db");
        let mut changed = def.clone();
        changed.interval = Some("10s".into());
        c.put_monitor(&changed).unwrap();
        let got = c.get_monitor("orders-db").unwrap();
        assert_eq!(got.definition, changed);
        assert_eq!(got.origin, Origin::Api);
        assert_eq!(c.list_monitors().unwrap().len(), 1);

        // Every problem comes back at once, as 422 with a stable code.
        let bad = RawMonitor {
            name: "bad".into(),
            target: "tcp://h:0".into(),
            interval: Some("0s".into()),
            ..Default::default()
        };
        let err = c.put_monitor(&bad).unwrap_err();
        let ClientError::Api {
            status,
            code,
            message,
        } = &err
        else {
            panic!("{err}")
        };
        assert_eq!((*status, code.as_str()), (422, "invalid_monitor"));
        assert_eq!(message.lines().count(), 3, "{message}");
        assert!(
            message.contains("target")
                && message.contains("interval")
                && message.contains("locations"),
            "{message}"
        );

        // A body whose name disagrees with the path, and unknown fields, are 400.
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let auth = format!("Bearer {}", "a".repeat(64));
        for body in [
            r#"{"name":"other","target":"tcp://h:1","locations":["public"]}"#,
            r#"{"target":"tcp://h:1","locations":["public"],"colour":"red"}"#,
        ] {
            let resp = agent
                .put(&format!("{url}/api/v1/monitors/orders-db"))
                .header("Authorization", &auth)
                .header("Content-Type", "application/json")
                .send(body.as_bytes())
                .unwrap();
            assert_eq!(resp.status().as_u16(), 400, "{body}");
        }
        // The name may come from the path alone.
        let resp = agent
            .put(&format!("{url}/api/v1/monitors/edge"))
            .header("Authorization", &auth)
            .header("Content-Type", "application/json")
            .send(r#"{"target":"tcp://h:443","locations":["public"]}"#.as_bytes())
            .unwrap();
        assert_eq!(resp.status().as_u16(), 201);

        c.delete_monitor("orders-db").unwrap();
        let err = c.delete_monitor("orders-db").unwrap_err();
        assert!(
            matches!(&err, ClientError::Api { status: 404, .. }),
            "{err}"
        );
        assert!(c.config_status().unwrap().file.is_none());
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incidents_are_listed_and_fetched_and_bad_ids_are_400() {
    let backend = Arc::new(Memory::default());
    backend
        .incidents
        .lock()
        .unwrap()
        .push(crate::incident::Incident {
            id: 7,
            notified_open_ms: Some(2_000),
            ..crate::incident::Incident::new(
                "redis",
                crate::incident::Kind::Down,
                2_000,
                1_000,
                "service down, seen from agent:a".into(),
                Some("refused".into()),
            )
        });
    let (url, admin) = serve(backend).await;
    tokio::task::spawn_blocking(move || {
        let c = AdminClient::new(&url, admin);
        let open = c
            .incidents(&IncidentsQuery {
                open: true,
                ..IncidentsQuery::default()
            })
            .unwrap();
        assert_eq!(open.len(), 1);
        assert_eq!(c.incident(7).unwrap().reason.as_deref(), Some("refused"));
        let err = c.incident(8).unwrap_err();
        assert!(
            matches!(&err, ClientError::Api { status: 404, .. }),
            "{err}"
        );
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let auth = format!("Bearer {}", "a".repeat(64));
        for (path, status) in [
            ("/api/v1/incidents/abc", 400),
            ("/api/v1/incidents?limit=abc", 400),
            ("/api/v1/incidents?bogus=1", 400),
            ("/api/v1/incidents?limit=100000000", 400),
        ] {
            let resp = agent
                .get(&format!("{url}{path}"))
                .header("Authorization", &auth)
                .call()
                .unwrap();
            assert_eq!(resp.status().as_u16(), status, "{path}");
            let text = resp.into_body().read_to_string().unwrap_or_default();
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert!(v["error"]["message"].as_str().is_some(), "{text}");
        }
        for path in ["/api/v1/incidents", "/api/v1/incidents/7", "/api/v1/status"] {
            let resp = agent.get(&format!("{url}{path}")).call().unwrap();
            assert_eq!(resp.status().as_u16(), 401, "{path}");
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_windows_are_added_listed_and_cancelled_through_the_api() {
    let backend = Arc::new(Memory::default());
    let (url, admin) = serve(backend.clone()).await;
    tokio::task::spawn_blocking(move || {
        let c = AdminClient::new(&url, admin);
        let now = crate::state::unix_ms(std::time::SystemTime::now());
        let start = crate::cli::fmt_ms(now - 60_000);
        let def = crate::maintenance::RawWindow {
            name: "redis-upgrade".into(),
            monitors: vec!["redis".into()],
            start: Some(start),
            duration: Some("1h".into()),
            reason: Some("7.2 upgrade".into()),
            ..Default::default()
        };
        let w = c.add_maintenance(&def).unwrap();
        assert!(w.active, "{w:?}");
        assert!(backend.maintenance.active_for("redis", &[], now).is_some());
        let err = c.add_maintenance(&def).unwrap_err();
        assert!(matches!(&err, ClientError::Api { status: 409, code, .. } if code == "exists"), "{err}");
        let err = c
            .add_maintenance(&crate::maintenance::RawWindow {
                name: "bad".into(),
                monitors: vec!["redis".into()],
                days: vec!["mon".into()],
                at: Some("02:00".into()),
                duration: Some("1h".into()),
                time_zone: Some("Mars/Base".into()),
                ..Default::default()
            })
            .unwrap_err();
        assert!(
            matches!(&err, ClientError::Api { status: 422, message, .. } if message.contains("unknown time zone")),
            "{err}"
        );
        assert_eq!(c.list_maintenance().unwrap().len(), 1);
        let upcoming = c.upcoming_maintenance(None, None).unwrap();
        assert_eq!(upcoming.len(), 1);
        assert_eq!(upcoming[0].reason.as_deref(), Some("7.2 upgrade"));
        c.cancel_maintenance("redis-upgrade").unwrap();
        let err = c.cancel_maintenance("redis-upgrade").unwrap_err();
        assert!(matches!(&err, ClientError::Api { status: 404, .. }), "{err}");
        assert!(backend.maintenance.active_for("redis", &[], now).is_none());
        let audited: Vec<String> = backend.audited.lock().unwrap().iter().map(|a| a.0.clone()).collect();
        assert_eq!(audited, vec!["maintenance.add", "maintenance.cancel"]);
    })
    .await
    .unwrap();
}
