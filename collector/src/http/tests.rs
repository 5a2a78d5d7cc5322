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
    /// The details of those audit entries, in the same order.
    audit_details: Mutex<Vec<serde_json::Value>>,
    incidents: Mutex<Vec<crate::incident::Incident>>,
    /// The real maintenance registry, in memory.
    maintenance: crate::maintenance::MaintenanceRegistry,
    /// The real registry, in memory: the API maps its answers and errors.
    monitors: crate::monitors::registry::MonitorRegistry,
    /// The real channel registry, in memory, delivering nowhere.
    channels: ChannelRegistry,
    statuses: Mutex<Vec<crate::incident::engine::MonitorStatus>>,
    notifications: Mutex<NotificationsInfo>,
    /// A real store in a temp dir: uptime reads it.
    store: TestStore,
}

struct TestStore {
    store: Arc<crate::store::RedbStore>,
    _dir: tempfile::TempDir,
}

impl Default for TestStore {
    fn default() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::RedbStore::open(dir.path(), crate::store::StoreConfig::default())
            .unwrap();
        TestStore {
            store: Arc::new(store),
            _dir: dir,
        }
    }
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
        Ok(self.statuses.lock().unwrap().clone())
    }
    async fn notifications(&self) -> Result<NotificationsInfo, ApiError> {
        Ok(self.notifications.lock().unwrap().clone())
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
    fn store(&self) -> Arc<dyn crate::store::Store> {
        self.store.store.clone()
    }
    fn channel_registry(&self) -> &ChannelRegistry {
        &self.channels
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
    fn audit(&self, action: &str, subject: &str, detail: serde_json::Value) {
        self.audit_details.lock().unwrap().push(detail);
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
            dns_us: None,
            connect_us: Some(80),
            tls_us: None,
            first_byte_us: None,
            total_us: 100,
            details: crate::http::ResultDetails {
                server_info: Some("redis 7.0.15".into()),
                ..Default::default()
            },
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
        health: None,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uptime_leaves_maintenance_out_and_says_how_much() {
    use crate::store::{HOUR_MS, MINUTE_MS, Sample};
    use portwatch_proto::v1 as pb;
    let backend = Arc::new(Memory::default());
    // Two hours of checks every 10 s at one location, down from 0:60 to
    // 0:90; a window from 0:59:30 to 0:90:30 covers the outage.
    let now = crate::state::unix_ms(std::time::SystemTime::now());
    let t = crate::store::Bucket::Hour.start_of(now) - 3 * HOUR_MS;
    let down = t + 60 * MINUTE_MS..t + 90 * MINUTE_MS;
    let samples: Vec<Sample> = (0..720)
        .map(|i| {
            let ts = t + i * 10_000;
            Sample {
                monitor_id: "redis".into(),
                location: "agent:bastion-1".into(),
                seq: i as u64 + 1,
                result: pb::CheckResult {
                    monitor_id: "redis".into(),
                    scheduled_at_unix_ms: ts,
                    status: if down.contains(&ts) {
                        pb::Status::Down
                    } else {
                        pb::Status::Up
                    } as i32,
                    ..Default::default()
                },
            }
        })
        .collect();
    let store = backend.store();
    store.ingest("bastion-1", 0, now, &samples, &[]).unwrap();
    store.roll_up(now).unwrap();
    let (url, _) = serve(backend.clone()).await;
    tokio::task::spawn_blocking(move || {
        let monitor = serde_json::json!({
            "name": "redis", "target": "tcp://127.0.0.1:6379", "locations": ["site=fra"],
        });
        assert_eq!(
            call(&url, "PUT", "/api/v1/monitors/redis", true, Some(&monitor)).status,
            201
        );
        let window = serde_json::json!({
            "name": "redis-patch", "monitors": ["redis"],
            "start": crate::cli::fmt_ms(t + 59 * MINUTE_MS + 30_000),
            "end": crate::cli::fmt_ms(t + 90 * MINUTE_MS + 30_000),
        });
        assert_eq!(
            call(&url, "POST", "/api/v1/maintenance", true, Some(&window)).status,
            201
        );
        let path = format!(
            "/api/v1/uptime?monitor=redis&from={t}&to={}",
            t + 2 * HOUR_MS
        );
        let r = call(&url, "GET", &path, true, None);
        assert_eq!(r.status, 200, "{}", r.body);
        let report: uptime::UptimeReport = serde_json::from_str(&r.body).unwrap();
        // Minutes 0:59 to 0:90 are touched: 32 minutes of 6 checks left out.
        assert_eq!((report.checks, report.failures), (720 - 32 * 6, 0));
        assert_eq!(report.uptime, Some(1.0));
        assert_eq!(report.maintenance_excluded_ms, 31 * MINUTE_MS);
        assert_eq!(
            report.maintenance,
            [uptime::Interval {
                start_ms: t + 59 * MINUTE_MS + 30_000,
                end_ms: t + 90 * MINUTE_MS + 30_000
            }]
        );
        assert_eq!(report.locations.len(), 1);
        assert_eq!(report.locations[0].location, "agent:bastion-1");
        assert_eq!(report.locations[0].uptime, Some(1.0));
        // Without the window the outage counts: 30 minutes of 120 down.
        assert_eq!(
            call(
                &url,
                "DELETE",
                "/api/v1/maintenance/redis-patch",
                true,
                None
            )
            .status,
            200
        );
        let r = call(&url, "GET", &path, true, None);
        let report: uptime::UptimeReport = serde_json::from_str(&r.body).unwrap();
        assert_eq!((report.checks, report.failures), (720, 180));
        assert_eq!(report.uptime, Some(0.75));
        assert_eq!(report.maintenance_excluded_ms, 0);
        assert!(report.maintenance.is_empty());
    })
    .await
    .unwrap();
}

/// A channel registry with one config-file channel, `ops-file` (its URL is
/// a closed loopback port, should anything ever send to it).
fn with_file_channel() -> ChannelRegistry {
    let file = RawChannel {
        name: "ops-file".into(),
        kind: "slack".into(),
        url: Some("http://127.0.0.1:9/services/F1LE".into()),
        ..Default::default()
    };
    ChannelRegistry::open(&[file], None, None).unwrap()
}

/// What a [`receiver`] got: (path, headers, body) per POST.
type Received = Arc<Mutex<Vec<(String, axum::http::HeaderMap, String)>>>;

/// An HTTP receiver on loopback that records every POST and answers 204.
async fn receiver() -> (String, Received) {
    let got = Received::default();
    let record = got.clone();
    let app = Router::new().fallback(
        move |uri: axum::http::Uri, headers: HeaderMap, body: String| {
            let record = record.clone();
            async move {
                record
                    .lock()
                    .unwrap()
                    .push((uri.path().to_owned(), headers, body));
                StatusCode::NO_CONTENT
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notification_channels_are_managed_through_the_api_and_secrets_never_come_back() {
    let backend = Arc::new(Memory {
        channels: with_file_channel(),
        ..Memory::default()
    });
    let (hook_url, got) = receiver().await;
    let (url, admin) = serve(backend.clone()).await;
    let audit = backend.clone();
    tokio::task::spawn_blocking(move || {
        let c = AdminClient::new(&url, admin);
        let secret = "hmac-secret-0123456789";
        // Strings that must never come back: secret, URL token, header value.
        let hidden = [secret, "T0KEN", "0PS-H3ADER", "F1LE", "D3AD"];
        let def = serde_json::json!({
            "kind": "webhook",
            "url": format!("{hook_url}/T0KEN-path"),
            "secret": secret,
            "headers": { "X-Team": "0PS-H3ADER" },
            "tags": ["db"],
        });
        let created = c.put_channel("ops-hook", &def).unwrap();
        assert_eq!(
            (created.origin, created.kind.as_str(), created.destination.as_str()),
            (Origin::Api, "webhook", hook_url.as_str())
        );
        assert_eq!(created.write_only, ["url", "secret", "headers"]);
        assert_eq!(created.definition.tags, ["db"]);
        assert_eq!(backend.channels.get("ops-hook").unwrap().raw.secret.as_deref(), Some(secret));
        let list: Vec<(String, Origin)> = c
            .list_channels()
            .unwrap()
            .into_iter()
            .map(|v| (v.name, v.origin))
            .collect();
        assert_eq!(
            list,
            [("ops-file".to_owned(), Origin::File), ("ops-hook".to_owned(), Origin::Api)]
        );
        for path in [
            "/api/v1/notifications/channels",
            "/api/v1/notifications/channels/ops-hook",
            "/api/v1/notifications/channels/ops-file",
        ] {
            let r = call(&url, "GET", path, true, None);
            assert_eq!(r.status, 200, "{path}: {}", r.body);
            for h in hidden {
                assert!(!r.body.contains(h), "{path} shows {h}: {}", r.body);
            }
        }

        // What a client read back, with the route changed, goes back as is:
        // the write-only fields it leaves out keep their values.
        let mut shown = serde_json::to_value(c.get_channel("ops-hook").unwrap().definition).unwrap();
        shown["tags"] = serde_json::json!(["web"]);
        let r = call(&url, "PUT", "/api/v1/notifications/channels/ops-hook", true, Some(&shown));
        assert_eq!(r.status, 200, "{}", r.body);
        let replaced = c.get_channel("ops-hook").unwrap();
        assert_eq!(replaced.definition.tags, ["web"]);
        assert_eq!(replaced.write_only, ["url", "secret", "headers"]);

        // The test notification arrives, signed with the kept secret and
        // with the kept header.
        let t = c.test_channel("ops-hook").unwrap();
        assert!(t.delivered && t.error.is_none(), "{t:?}");
        let got = got.lock().unwrap().clone();
        assert_eq!(got.len(), 1);
        let (path, headers, body) = &got[0];
        assert_eq!(path, "/T0KEN-path");
        assert_eq!(headers["x-team"], "0PS-H3ADER");
        let ts = headers["x-portwatch-timestamp"].to_str().unwrap();
        let sig = headers["x-portwatch-signature"].to_str().unwrap();
        let hex = sig.strip_prefix("sha256=").unwrap();
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
        ring::hmac::verify(&key, format!("{ts}.{body}").as_bytes(), &bytes)
            .expect("signed with the kept secret");
        let note: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(note["kind"], "test");
        assert_eq!(note["incident_id"], 0);
        assert_eq!(note["subject"], "Test Notification: portwatch channel ops-hook");

        // null clears a secret: unsigned from now on.
        shown["secret"] = serde_json::Value::Null;
        let r = call(&url, "PUT", "/api/v1/notifications/channels/ops-hook", true, Some(&shown));
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(c.get_channel("ops-hook").unwrap().write_only, ["url", "headers"]);

        // A receiver that is not there: a 200 saying so, without the URL.
        let dead = serde_json::json!({ "kind": "webhook", "url": "http://127.0.0.1:9/D3AD" });
        c.put_channel("dead", &dead).unwrap();
        let t = c.test_channel("dead").unwrap();
        assert!(!t.delivered, "{t:?}");
        assert_eq!(t.transient, Some(true));
        let error = t.error.unwrap();
        assert!(error.contains("channel dead") && !error.contains("D3AD"), "{error}");

        // Every problem at once, as 422 invalid_channel.
        let bad = serde_json::json!({
            "kind": "webhook", "url": "ftp://x", "secret": "short", "timeout": "0s",
        });
        let err = c.put_channel("bad", &bad).unwrap_err();
        let ClientError::Api { status, code, message } = &err else { panic!("{err}") };
        assert_eq!((*status, code.as_str()), (422, "invalid_channel"));
        assert_eq!(message.lines().count(), 3, "{message}");
        for field in ["url", "secret", "timeout"] {
            assert!(message.contains(&format!("channel \"bad\".{field}: ")), "{message}");
        }
        // The config file's channel is read-only here.
        for err in [
            c.put_channel("ops-file", &dead).unwrap_err(),
            c.delete_channel("ops-file").unwrap_err(),
        ] {
            assert!(
                matches!(&err, ClientError::Api { status: 409, code, .. } if code == "managed_by_file"),
                "{err}"
            );
        }
        for err in [
            c.get_channel("nope").unwrap_err(),
            c.delete_channel("nope").unwrap_err(),
            c.test_channel("nope").map(|_| ()).unwrap_err(),
        ] {
            assert!(
                matches!(&err, ClientError::Api { status: 404, code, .. } if code == "not_found"),
                "{err}"
            );
        }
        // Malformed JSON, a name that is not the path's, an unknown field: 400.
        for body in [
            "{not json",
            r#"{"name":"other","kind":"webhook","url":"http://127.0.0.1:9/"}"#,
            r#"{"kind":"webhook","url":"http://127.0.0.1:9/","colour":"red"}"#,
        ] {
            let r = call_raw(
                &url,
                "PUT",
                "/api/v1/notifications/channels/x",
                true,
                Some(("application/json", body.as_bytes().to_vec())),
            );
            assert_eq!(r.status, 400, "{body}: {}", r.body);
        }
        // Nothing without the admin token.
        for (method, path) in [
            ("GET", "/api/v1/notifications/channels"),
            ("GET", "/api/v1/notifications/channels/ops-hook"),
            ("PUT", "/api/v1/notifications/channels/ops-hook"),
            ("DELETE", "/api/v1/notifications/channels/ops-hook"),
            ("POST", "/api/v1/notifications/channels/ops-hook/test"),
        ] {
            let r = call(&url, method, path, false, Some(&def));
            assert_eq!(r.status, 401, "{method} {path}: {}", r.body);
        }
        c.delete_channel("ops-hook").unwrap();
        assert!(c.get_channel("ops-hook").is_err());
        assert_eq!(c.list_channels().unwrap().len(), 2, "ops-file and dead");

        // Every change is audited, and no audit entry holds a secret.
        let audited: Vec<(String, String)> = audit.audited.lock().unwrap().clone();
        let actions: Vec<(&str, &str)> = audited
            .iter()
            .map(|(a, s)| (a.as_str(), s.as_str()))
            .collect();
        assert_eq!(
            actions,
            [
                ("channel.create", "ops-hook"),
                ("channel.replace", "ops-hook"),
                ("channel.test", "ops-hook"),
                ("channel.replace", "ops-hook"),
                ("channel.create", "dead"),
                ("channel.test", "dead"),
                ("channel.delete", "ops-hook"),
            ]
        );
        let details = serde_json::to_string(&*audit.audit_details.lock().unwrap()).unwrap();
        assert!(details.contains("\"write_only\""), "{details}");
        for h in hidden {
            assert!(!details.contains(h), "the audit log holds {h}: {details}");
        }
    })
    .await
    .unwrap();
}

// The OpenAPI document: served open, valid OpenAPI 3.1, and true to the router
// (every documented operation is served, nothing else is, and what comes back
// fits what the document says).

/// The JSON Schema of OpenAPI 3.1 documents (`$id` .../oas/3.1/schema/2022-10-07)
/// as the OpenAPI Initiative publishes it (Apache-2.0), from
/// openapi-spec-validator 0.9.0. It checks the document's structure strictly
/// (an unknown key is an error) but leaves the JSON Schemas inside it to
/// JSON Schema 2020-12, which `openapi_problems` checks separately.
const OAS_3_1_SCHEMA: &str = include_str!("openapi-3.1.schema.json");

/// The methods tried on every documented path.
const METHODS: [&str; 5] = ["GET", "POST", "PUT", "DELETE", "PATCH"];

/// One HTTP exchange, as the tests look at it.
struct Reply {
    status: u16,
    content_type: String,
    body: String,
}

/// `method url+path`, with the admin token when `auth`, and a JSON body.
fn call(
    url: &str,
    method: &str,
    path: &str,
    auth: bool,
    body: Option<&serde_json::Value>,
) -> Reply {
    let body = body.map(|b| ("application/json", serde_json::to_vec(b).unwrap()));
    call_raw(url, method, path, auth, body)
}

/// Like `call`, with any body: (content type, bytes).
fn call_raw(
    url: &str,
    method: &str,
    path: &str,
    auth: bool,
    body: Option<(&str, Vec<u8>)>,
) -> Reply {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut req = ureq::http::Request::builder()
        .method(method)
        .uri(format!("{url}{path}"));
    if auth {
        req = req.header("Authorization", format!("Bearer {}", "a".repeat(64)));
    }
    let resp = match body {
        Some((content_type, bytes)) => agent.run(
            req.header("Content-Type", content_type)
                .body(bytes)
                .unwrap(),
        ),
        None => agent.run(req.body(()).unwrap()),
    }
    .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    Reply {
        status: resp.status().as_u16(),
        content_type,
        body: resp.into_body().read_to_string().unwrap_or_default(),
    }
}

/// The router has nothing at this method and path: the fallback's 404 or a 405.
fn not_served(r: &Reply) -> bool {
    let fallback = serde_json::from_str::<serde_json::Value>(&r.body)
        .is_ok_and(|v| v["error"]["message"] == "no such endpoint");
    r.status == 405 || (r.status == 404 && fallback)
}

fn fetch_openapi(url: &str) -> serde_json::Value {
    let r = call(url, "GET", "/api/openapi.json", false, None);
    assert_eq!(r.status, 200, "{}", r.body);
    serde_json::from_str(&r.body).unwrap()
}

/// Every operation of the document: (METHOD, path template, operation).
fn operations(doc: &serde_json::Value) -> Vec<(String, String, &serde_json::Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            out.push((method.to_uppercase(), path.clone(), op));
        }
    }
    out
}

/// The documented path template `path` (no query) is an instance of; a
/// literal segment beats a parameter (`/maintenance/upcoming`, `/{name}`).
fn template_of<'a>(templates: &'a [String], path: &str) -> Option<&'a String> {
    let path = path.split('?').next().unwrap_or(path);
    let segments: Vec<&str> = path.split('/').collect();
    templates
        .iter()
        .filter(|t| {
            let ts: Vec<&str> = t.split('/').collect();
            ts.len() == segments.len()
                && ts
                    .iter()
                    .zip(&segments)
                    .all(|(t, s)| t == s || (t.starts_with('{') && t.ends_with('}')))
        })
        .min_by_key(|t| t.matches('{').count())
}

/// Does `value` fit `schema` (a schema of `doc`, its `$ref`s into the doc's
/// components)?
fn fits(
    doc: &serde_json::Value,
    schema: &serde_json::Value,
    value: &serde_json::Value,
) -> Result<(), String> {
    let root = serde_json::json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "components": doc["components"],
        "allOf": [schema],
    });
    let validator = jsonschema::draft202012::new(&root).map_err(|e| e.to_string())?;
    let errors: Vec<String> = validator
        .iter_errors(value)
        .map(|e| format!("{e} (at {})", e.instance_path()))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// Is the reply one the operation documents: its status listed, its content
/// type the documented one, and a JSON body fitting the documented schema?
fn answers_as_documented(
    doc: &serde_json::Value,
    op: &serde_json::Value,
    r: &Reply,
) -> Result<(), String> {
    let response = op["responses"]
        .get(r.status.to_string())
        .ok_or_else(|| format!("status {} is not documented: {}", r.status, r.body))?;
    let Some(content) = response.get("content").and_then(|c| c.as_object()) else {
        return match r.body.is_empty() {
            true => Ok(()),
            false => Err(format!(
                "{} has a body, documented without: {}",
                r.status, r.body
            )),
        };
    };
    let essence = |ct: &str| ct.split(';').next().unwrap_or("").trim().to_owned();
    let (_, media) = content
        .iter()
        .find(|(ct, _)| essence(ct) == essence(&r.content_type))
        .ok_or_else(|| {
            format!(
                "{}: content type {:?} is not documented",
                r.status, r.content_type
            )
        })?;
    if essence(&r.content_type) != "application/json" {
        return Ok(());
    }
    let value: serde_json::Value =
        serde_json::from_str(&r.body).map_err(|e| format!("{}: not JSON: {e}", r.status))?;
    fits(doc, &media["schema"], &value).map_err(|e| format!("{}: {e}: {}", r.status, r.body))
}

/// Every way `doc` falls short of a valid OpenAPI 3.1 document: the official
/// schema's verdict, each schema's against JSON Schema 2020-12, and what
/// neither checks: dangling `$ref`s, duplicate operation ids, path parameters
/// that do not match the template, security schemes that do not exist.
fn openapi_problems(doc: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    let oas: serde_json::Value = serde_json::from_str(OAS_3_1_SCHEMA).unwrap();
    let validator = jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&oas)
        .unwrap();
    out.extend(
        validator
            .iter_errors(doc)
            .map(|e| format!("OpenAPI 3.1 schema: {e} (at {})", e.instance_path())),
    );

    let mut schemas: Vec<(String, &serde_json::Value)> = Vec::new();
    if let Some(components) = doc["components"]["schemas"].as_object() {
        schemas.extend(
            components
                .iter()
                .map(|(n, s)| (format!("components {n}"), s)),
        );
    }
    let mut ids = std::collections::BTreeMap::<String, usize>::new();
    for (method, path, op) in operations(doc) {
        let at = format!("{method} {path}");
        let params: &[serde_json::Value] = op["parameters"].as_array().map_or(&[], |p| p);
        for p in params {
            schemas.push((format!("{at} parameter {}", p["name"]), &p["schema"]));
        }
        let bodies = op["requestBody"]["content"].as_object().into_iter();
        let replies = op["responses"]
            .as_object()
            .into_iter()
            .flat_map(|r| r.values())
            .filter_map(|r| r["content"].as_object());
        for content in bodies.chain(replies) {
            for (ct, media) in content {
                if let Some(s) = media.get("schema") {
                    schemas.push((format!("{at} {ct}"), s));
                }
            }
        }
        *ids.entry(op["operationId"].as_str().unwrap_or("").to_owned())
            .or_default() += 1;
        let in_template: std::collections::BTreeSet<&str> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .collect();
        let declared: std::collections::BTreeSet<&str> = params
            .iter()
            .filter(|p| p["in"] == "path" && p["required"] == true)
            .filter_map(|p| p["name"].as_str())
            .collect();
        if in_template != declared {
            out.push(format!(
                "{at}: path parameters {declared:?} do not match the template's {in_template:?}"
            ));
        }
        for requirement in op["security"].as_array().into_iter().flatten() {
            for name in requirement.as_object().into_iter().flat_map(|r| r.keys()) {
                if doc["components"]["securitySchemes"].get(name).is_none() {
                    out.push(format!("{at}: security scheme {name:?} is not defined"));
                }
            }
        }
    }
    for (at, schema) in schemas {
        if let Err(e) = jsonschema::meta::validate(schema) {
            out.push(format!("{at}: not a JSON Schema 2020-12: {e}"));
        }
    }
    out.extend(
        ids.into_iter()
            .filter(|(_, n)| *n != 1)
            .map(|(id, n)| format!("operationId {id:?} is used {n} times")),
    );

    fn dangling(v: &serde_json::Value, doc: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                if let Some(r) = map.get("$ref").and_then(|r| r.as_str()) {
                    let target = r.strip_prefix('#').and_then(|p| doc.pointer(p));
                    if !r.starts_with("#/components/") || target.is_none() {
                        out.push(format!("$ref {r:?} does not resolve to a component"));
                    }
                }
                map.values().for_each(|v| dangling(v, doc, out));
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| dangling(v, doc, out)),
            _ => {}
        }
    }
    dangling(doc, doc, &mut out);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_is_served_without_the_admin_token() {
    let (url, _) = serve(Arc::new(Memory::default())).await;
    tokio::task::spawn_blocking(move || {
        let r = call(&url, "GET", "/api/openapi.json", false, None);
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(
            r.content_type.starts_with("application/json"),
            "{}",
            r.content_type
        );
        let doc: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert!(
            doc["openapi"].as_str().unwrap().starts_with("3."),
            "{}",
            doc["openapi"]
        );
        assert_eq!(doc["info"]["title"], "portwatch collector API");
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(
            doc["components"]["securitySchemes"]["admin_token"],
            serde_json::json!({
                "type": "http",
                "scheme": "bearer",
                "description": "`Authorization: Bearer <admin token>`: the collector's admin token",
            })
        );
        // It documents itself, as open.
        let me = &doc["paths"]["/api/openapi.json"]["get"];
        assert!(me.is_object() && me.get("security").is_none(), "{me}");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_validates() {
    let (url, _) = serve(Arc::new(Memory::default())).await;
    let doc = tokio::task::spawn_blocking(move || fetch_openapi(&url))
        .await
        .unwrap();
    let problems = openapi_problems(&doc);
    assert!(problems.is_empty(), "{problems:#?}");

    // The checks catch what they are for: each broken copy has a problem.
    type Breaks = fn(&mut serde_json::Value);
    let broken: [(&str, Breaks); 6] = [
        ("version", |d| d["openapi"] = "3.1".into()),
        ("unknown key in an operation", |d| {
            d["paths"]["/healthz"]["get"]["colour"] = "red".into()
        }),
        ("status that is not one", |d| {
            let r = &mut d["paths"]["/healthz"]["get"]["responses"];
            r["20O"] = r["200"].clone();
        }),
        ("dangling $ref", |d| {
            d["components"]["schemas"]["ErrorBody"]["properties"]["error"]["$ref"] =
                "#/components/schemas/Nope".into()
        }),
        ("bad JSON Schema type", |d| {
            d["components"]["schemas"]["ErrorDetail"]["properties"]["code"]["type"] = "strin".into()
        }),
        ("path parameter not in the template", |d| {
            d["paths"]["/api/v1/incidents/{id}"]["get"]["parameters"][0]["name"] = "incident".into()
        }),
    ];
    for (what, breaks) in broken {
        let mut copy = doc.clone();
        breaks(&mut copy);
        assert!(!openapi_problems(&copy).is_empty(), "{what}: not caught");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_is_served_and_nothing_else_is() {
    let (url, _) = serve(Arc::new(Memory::default())).await;
    tokio::task::spawn_blocking(move || {
        let doc = fetch_openapi(&url);
        let paths = doc["paths"].as_object().unwrap();
        assert!(paths.len() >= 20, "{paths:?}");
        // The probe tells a route from the fallback.
        assert!(not_served(&call(&url, "GET", "/api/v1/nope", true, None)));
        for (template, item) in paths {
            // Any value will do: the point is which handler answers.
            let path = template
                .split('/')
                .map(|s| if s.starts_with('{') { "1" } else { s })
                .collect::<Vec<_>>()
                .join("/");
            for method in METHODS {
                let r = call(&url, method, &path, true, None);
                let op = item.get(method.to_lowercase());
                assert_eq!(
                    !not_served(&r),
                    op.is_some(),
                    "{method} {template}: served and documented disagree ({} {})",
                    r.status,
                    r.body
                );
                let Some(op) = op else { continue };
                if let Err(e) = answers_as_documented(&doc, op, &r) {
                    panic!("{method} {path}: {e}");
                }
                // The documented security is the one enforced.
                let open = call(&url, method, &path, false, None);
                if let Err(e) = answers_as_documented(&doc, op, &open) {
                    panic!("{method} {path} without a token: {e}");
                }
                let security = op.get("security").cloned().unwrap_or_default();
                if security == serde_json::json!([{ "admin_token": [] }]) {
                    assert_eq!(open.status, 401, "{method} {path}: {}", open.body);
                } else if security.is_null() {
                    assert_ne!(open.status, 401, "{method} {path}: documented as open");
                }
            }
        }
    })
    .await
    .unwrap();
}

/// A backend with something of every kind, so that every list and object the
/// API returns is checked against its schema with real content.
fn populated() -> Arc<Memory> {
    use crate::incident::{Delivery, Kind, LocState, LocationView, Phase};
    let backend = Arc::new(Memory {
        channels: with_file_channel(),
        ..Memory::default()
    });
    backend.agents.lock().unwrap().push(AgentInfo {
        id: "bastion-1-ab12".into(),
        name: "bastion-1".into(),
        labels: [("site".into(), "fra".into())].into(),
        enrolled_at_unix_ms: 1,
        cert_expires_at_unix_ms: 2,
        revoked: false,
        connected_since_unix_ms: Some(3),
        last_seen_unix_ms: Some(4),
        version: Some("0.1.0".into()),
        backlog: Some(5),
        public_region: None,
        acked_through: Some(6),
        health: None,
    });
    let location = LocationView {
        location: "agent:bastion-1".into(),
        state: LocState::Down,
        reason: Some("refused".into()),
        down_since_ms: Some(1_000),
        up_since_ms: None,
        last_check_ms: Some(2_000),
    };
    backend
        .incidents
        .lock()
        .unwrap()
        .push(crate::incident::Incident {
            id: 7,
            locations: vec![location.clone()],
            deliveries: vec![Delivery {
                channel: "ops".into(),
                phase: Phase::Opened,
                attempt: 2,
                at_ms: 2_500,
                state: "retrying".into(),
                error: Some("503".into()),
                retry_at_ms: Some(3_000),
            }],
            ..crate::incident::Incident::new(
                "redis",
                Kind::Down,
                2_000,
                1_000,
                "service down, seen from agent:bastion-1".into(),
                Some("refused".into()),
            )
        });
    backend
        .statuses
        .lock()
        .unwrap()
        .push(crate::incident::engine::MonitorStatus {
            monitor: "redis".into(),
            state: "down".into(),
            locations: vec![location],
            incident: Some(7),
            maintenance: None,
        });
    *backend.notifications.lock().unwrap() = NotificationsInfo {
        channels: vec![crate::notify::ChannelInfo {
            name: "ops".into(),
            kind: "webhook".into(),
            destination: "https://hooks.invalid".into(),
            route: crate::notify::Route {
                monitors: vec!["redis".into()],
                tags: Vec::new(),
                min_severity: Some(crate::monitors::Severity::High),
            },
        }],
        recent: vec![EventInfo {
            id: 1,
            at_unix_ms: 2_500,
            kind: "notification".into(),
            subject: "redis".into(),
            body: serde_json::json!({ "incident": 7, "action": "delivery_failed" }),
        }],
    };
    backend
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_answers_as_documented() {
    let (url, _) = serve(populated()).await;
    tokio::task::spawn_blocking(move || {
        let doc = fetch_openapi(&url);
        let ops = operations(&doc);
        let templates: Vec<String> = ops.iter().map(|(_, p, _)| p.clone()).collect();
        let now = crate::state::unix_ms(std::time::SystemTime::now());
        let monitor = serde_json::to_value(RawMonitor {
            name: "orders-db".into(),
            target: "tcp://10.0.0.5:5432".into(),
            locations: vec!["site=fra".into()],
            interval: Some("30s".into()),
            tls: Some(crate::monitors::RawTls {
                server_name: Some("db.internal".into()),
                ..Default::default()
            }),
            alert: Some(crate::monitors::RawAlert {
                consecutive_down: Some(2),
                ..Default::default()
            }),
            tags: vec!["db".into()],
            ..Default::default()
        })
        .unwrap();
        let window = serde_json::to_value(crate::maintenance::RawWindow {
            name: "redis-upgrade".into(),
            monitors: vec!["redis".into()],
            start: Some(crate::cli::fmt_ms(now - 60_000)),
            duration: Some("1h".into()),
            reason: Some("7.2 upgrade".into()),
            ..Default::default()
        })
        .unwrap();
        let token = serde_json::to_value(CreateToken {
            name: "bastion-2".into(),
            labels: [("site".into(), "fra".into())].into(),
            ttl: Some("1h".into()),
            public_region: None,
        })
        .unwrap();
        // Port 9 (discard) is closed here: the test answers "not delivered".
        let channel = serde_json::to_value(RawChannel {
            name: "hook".into(),
            kind: "webhook".into(),
            url: Some("http://127.0.0.1:9/hook".into()),
            secret: Some("hmac-secret-0123456789".into()),
            headers: [("X-Team".into(), "ops".into())].into(),
            monitors: vec!["redis".into()],
            min_severity: Some(crate::monitors::Severity::High),
            timeout: Some("2s".into()),
            ..Default::default()
        })
        .unwrap();
        // A session that succeeds at every operation once, in an order that
        // makes each one meaningful.
        let steps: Vec<(&str, &str, Option<serde_json::Value>)> = vec![
            ("POST", "/api/v1/tokens", Some(token)),
            ("GET", "/api/v1/tokens", None),
            ("DELETE", "/api/v1/tokens/t0", None),
            ("GET", "/api/v1/agents", None),
            ("POST", "/api/v1/agents/bastion-1/rotate", None),
            ("POST", "/api/v1/agents/bastion-1/revoke", None),
            ("GET", "/api/v1/results?monitor=orders-db&limit=2", None),
            (
                "GET",
                "/api/v1/rollups?monitor=orders-db&location=public:eu",
                None,
            ),
            ("GET", "/api/v1/events?kind=audit", None),
            ("PUT", "/api/v1/monitors/orders-db", Some(monitor.clone())),
            ("PUT", "/api/v1/monitors/orders-db", Some(monitor)),
            ("GET", "/api/v1/uptime?monitor=orders-db", None),
            ("GET", "/api/v1/monitors", None),
            ("GET", "/api/v1/monitors/orders-db", None),
            ("GET", "/api/v1/config/status", None),
            ("GET", "/api/v1/incidents?open=true", None),
            ("GET", "/api/v1/incidents/7", None),
            ("GET", "/api/v1/status", None),
            ("GET", "/api/v1/notifications", None),
            (
                "PUT",
                "/api/v1/notifications/channels/hook",
                Some(channel.clone()),
            ),
            ("PUT", "/api/v1/notifications/channels/hook", Some(channel)),
            ("GET", "/api/v1/notifications/channels", None),
            ("GET", "/api/v1/notifications/channels/hook", None),
            ("GET", "/api/v1/notifications/channels/ops-file", None),
            ("POST", "/api/v1/notifications/channels/hook/test", None),
            ("DELETE", "/api/v1/notifications/channels/hook", None),
            ("POST", "/api/v1/maintenance", Some(window)),
            ("GET", "/api/v1/maintenance", None),
            ("GET", "/api/v1/maintenance/upcoming", None),
            ("GET", "/api/v1/maintenance/redis-upgrade", None),
            ("DELETE", "/api/v1/maintenance/redis-upgrade", None),
            ("DELETE", "/api/v1/monitors/orders-db", None),
            ("GET", "/metrics", None),
            ("GET", "/healthz", None),
            ("GET", "/readyz", None),
            ("GET", "/api/openapi.json", None),
        ];
        let mut covered = std::collections::BTreeSet::new();
        for (method, path, body) in &steps {
            let template = template_of(&templates, path)
                .unwrap_or_else(|| panic!("{method} {path}: no documented path"));
            let (_, _, op) = ops
                .iter()
                .find(|(m, p, _)| m == method && p == template)
                .unwrap_or_else(|| panic!("{method} {template}: not documented"));
            if let Some(body) = body {
                let schema = &op["requestBody"]["content"]["application/json"]["schema"];
                assert!(
                    schema.is_object(),
                    "{method} {template}: no JSON request body"
                );
                if let Err(e) = fits(&doc, schema, body) {
                    panic!("{method} {path}: request body: {e}");
                }
            }
            let r = call(&url, method, path, true, body.as_ref());
            assert!(
                (200..300).contains(&r.status),
                "{method} {path}: {} {}",
                r.status,
                r.body
            );
            if let Err(e) = answers_as_documented(&doc, op, &r) {
                panic!("{method} {path}: {e}");
            }
            covered.insert((method.to_string(), template.clone()));
        }
        let missing: Vec<String> = ops
            .iter()
            .filter(|(m, p, _)| !covered.contains(&(m.clone(), p.clone())))
            .map(|(m, p, _)| format!("{m} {p}"))
            .collect();
        assert!(
            missing.is_empty(),
            "documented but never seen succeeding here: {missing:?}"
        );
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_the_cli_calls_is_documented() {
    use axum::extract::MatchedPath;
    let seen: Arc<Mutex<std::collections::BTreeSet<(String, String)>>> = Arc::default();
    let record = seen.clone();
    let admin = AdminToken::new(&"a".repeat(64)).unwrap();
    // Which route answered each request (the fallback has no matched path).
    let app = router(populated(), admin.clone()).layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            let route = req
                .extensions()
                .get::<MatchedPath>()
                .map_or("(fallback)".to_owned(), |p| p.as_str().to_owned());
            record
                .lock()
                .unwrap()
                .insert((req.method().as_str().to_owned(), route));
            next.run(req)
        },
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let doc = tokio::task::spawn_blocking(move || {
        let c = AdminClient::new(&url, admin);
        let def = RawMonitor {
            name: "orders-db".into(),
            target: "tcp://10.0.0.5:5432".into(),
            locations: vec!["site=fra".into()],
            ..Default::default()
        };
        let window = crate::maintenance::RawWindow {
            name: "w".into(),
            monitors: vec!["*".into()],
            start: Some("2030-01-01T00:00:00Z".into()),
            duration: Some("1h".into()),
            ..Default::default()
        };
        // Answers do not matter here, only which routes the CLI reaches.
        let _ = c.create_token(&CreateToken {
            name: "x".into(),
            ..Default::default()
        });
        let _ = c.list_tokens();
        let _ = c.delete_token("t0");
        let _ = c.list_agents();
        let _ = c.rotate_agent("bastion-1");
        let _ = c.revoke_agent("bastion-1");
        let _ = c.results(&ResultsQuery {
            monitor: "orders-db".into(),
            limit: 1,
            ..Default::default()
        });
        let _ = c.events(&EventsQuery::default());
        let _ = c.incidents(&IncidentsQuery::default());
        let _ = c.incident(7);
        let _ = c.status();
        let _ = c.put_monitor(&def);
        let _ = c.list_monitors();
        let _ = c.get_monitor("orders-db");
        let _ = c.delete_monitor("orders-db");
        let _ = c.config_status();
        let _ = c.notifications();
        let _ = c.add_maintenance(&window);
        let _ = c.list_maintenance();
        let _ = c.upcoming_maintenance(None, None);
        let _ = c.cancel_maintenance("w");
        let hook = serde_json::json!({
            "kind": "webhook", "url": "http://127.0.0.1:9/hook",
        });
        let _ = c.put_channel("hook", &hook);
        let _ = c.list_channels();
        let _ = c.get_channel("hook");
        let _ = c.test_channel("hook");
        let _ = c.delete_channel("hook");
        fetch_openapi(&url)
    })
    .await
    .unwrap();
    let documented: std::collections::BTreeSet<(String, String)> = operations(&doc)
        .into_iter()
        .map(|(m, p, _)| (m, p))
        .collect();
    let seen = seen.lock().unwrap().clone();
    assert!(seen.len() > 20, "{seen:?}");
    let undocumented: Vec<_> = seen.difference(&documented).collect();
    assert!(undocumented.is_empty(), "{undocumented:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_errors_returned_are_the_documented_ones() {
    let (url, _) = serve(populated()).await;
    tokio::task::spawn_blocking(move || {
        let doc = fetch_openapi(&url);
        let ops = operations(&doc);
        let templates: Vec<String> = ops.iter().map(|(_, p, _)| p.clone()).collect();
        let monitor = |name: &str, extra: serde_json::Value| {
            let mut m = serde_json::json!({
                "name": name,
                "target": "tcp://10.0.0.5:5432",
                "locations": ["site=fra"],
            });
            m.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            m
        };
        let window = serde_json::json!({
            "name": "w", "monitors": ["*"], "start": "2030-01-01T00:00:00Z", "duration": "1h",
        });
        let hook = serde_json::json!({ "kind": "webhook", "url": "http://127.0.0.1:9/hook" });
        let json =
            |v: serde_json::Value| Some(("application/json", serde_json::to_vec(&v).unwrap()));
        let raw = |ct: &'static str, b: &str| Some((ct, b.as_bytes().to_vec()));
        let huge = serde_json::json!({ "name": "x".repeat(MAX_BODY_BYTES + 10) });
        type Step = (
            &'static str,
            &'static str,
            Option<(&'static str, Vec<u8>)>,
            u16,
        );
        let steps: Vec<Step> = vec![
            (
                "POST",
                "/api/v1/tokens",
                raw("application/json", "{not json"),
                400,
            ),
            (
                "POST",
                "/api/v1/tokens",
                json(serde_json::json!({ "name": "" })),
                400,
            ),
            ("POST", "/api/v1/tokens", json(huge.clone()), 413),
            (
                "POST",
                "/api/v1/tokens",
                raw("text/plain", r#"{"name":"x"}"#),
                415,
            ),
            (
                "POST",
                "/api/v1/tokens",
                json(serde_json::json!({ "name": "x", "evil": 1 })),
                422,
            ),
            ("DELETE", "/api/v1/tokens/nope", None, 404),
            ("POST", "/api/v1/agents/nope/revoke", None, 404),
            ("POST", "/api/v1/agents/nope/rotate", None, 404),
            ("GET", "/api/v1/results", None, 400),
            ("GET", "/api/v1/results?monitor=m&limit=0", None, 400),
            ("GET", "/api/v1/rollups?monitor=m", None, 400),
            ("GET", "/api/v1/uptime", None, 400),
            ("GET", "/api/v1/uptime?monitor=m&from=10&to=10", None, 400),
            (
                "GET",
                "/api/v1/uptime?monitor=m&from=0&to=7776000001",
                None,
                400,
            ),
            ("GET", "/api/v1/uptime?monitor=nope", None, 404),
            ("GET", "/api/v1/events?bogus=1", None, 400),
            ("GET", "/api/v1/incidents?limit=abc", None, 400),
            ("GET", "/api/v1/incidents/abc", None, 400),
            ("GET", "/api/v1/incidents/8", None, 404),
            ("GET", "/api/v1/monitors/nope", None, 404),
            (
                "PUT",
                "/api/v1/monitors/m",
                raw("application/json", "{not json"),
                400,
            ),
            (
                "PUT",
                "/api/v1/monitors/m",
                json(monitor("other", serde_json::json!({}))),
                400,
            ),
            (
                "PUT",
                "/api/v1/monitors/m",
                json(monitor("m", serde_json::json!({ "colour": 1 }))),
                400,
            ),
            ("PUT", "/api/v1/monitors/m", json(huge.clone()), 413),
            ("PUT", "/api/v1/monitors/m", raw("text/plain", "{}"), 415),
            (
                "PUT",
                "/api/v1/monitors/m",
                json(monitor("m", serde_json::json!({ "interval": "0s" }))),
                422,
            ),
            (
                "PUT",
                "/api/v1/monitors/parent",
                json(monitor("parent", serde_json::json!({}))),
                201,
            ),
            (
                "PUT",
                "/api/v1/monitors/child",
                json(monitor(
                    "child",
                    serde_json::json!({ "depends_on": "parent" }),
                )),
                201,
            ),
            ("DELETE", "/api/v1/monitors/parent", None, 409),
            ("DELETE", "/api/v1/monitors/nope", None, 404),
            (
                "POST",
                "/api/v1/maintenance",
                raw("application/json", "{not json"),
                400,
            ),
            (
                "POST",
                "/api/v1/maintenance",
                json(serde_json::json!({ "name": "x", "colour": 1 })),
                400,
            ),
            ("POST", "/api/v1/maintenance", json(huge.clone()), 413),
            ("POST", "/api/v1/maintenance", raw("text/plain", "{}"), 415),
            ("POST", "/api/v1/maintenance", json(window.clone()), 201),
            ("POST", "/api/v1/maintenance", json(window), 409),
            (
                "POST",
                "/api/v1/maintenance",
                json(serde_json::json!({
                    "name": "tz", "monitors": ["*"], "days": ["mon"], "at": "02:00",
                    "duration": "1h", "time_zone": "Mars/Base",
                })),
                422,
            ),
            ("GET", "/api/v1/maintenance/nope", None, 404),
            ("DELETE", "/api/v1/maintenance/nope", None, 404),
            (
                "GET",
                "/api/v1/maintenance/upcoming?from=10&to=5",
                None,
                400,
            ),
            ("GET", "/api/v1/notifications/channels/nope", None, 404),
            (
                "PUT",
                "/api/v1/notifications/channels/c",
                raw("application/json", "{not json"),
                400,
            ),
            (
                "PUT",
                "/api/v1/notifications/channels/c",
                json(serde_json::json!({ "name": "other", "kind": "webhook" })),
                400,
            ),
            (
                "PUT",
                "/api/v1/notifications/channels/c",
                json(serde_json::json!({ "kind": "webhook", "colour": 1 })),
                400,
            ),
            ("PUT", "/api/v1/notifications/channels/c", json(huge), 413),
            (
                "PUT",
                "/api/v1/notifications/channels/c",
                raw("text/plain", "{}"),
                415,
            ),
            (
                "PUT",
                "/api/v1/notifications/channels/c",
                json(serde_json::json!({ "kind": "webhook", "url": "ftp://x", "secret": "short" })),
                422,
            ),
            (
                "PUT",
                "/api/v1/notifications/channels/ops-file",
                json(hook.clone()),
                409,
            ),
            ("PUT", "/api/v1/notifications/channels/c", json(hook), 201),
            (
                "DELETE",
                "/api/v1/notifications/channels/ops-file",
                None,
                409,
            ),
            ("DELETE", "/api/v1/notifications/channels/nope", None, 404),
            (
                "POST",
                "/api/v1/notifications/channels/nope/test",
                None,
                404,
            ),
        ];
        for (method, path, body, status) in steps {
            let template = template_of(&templates, path)
                .unwrap_or_else(|| panic!("{method} {path}: no documented path"));
            let (_, _, op) = ops
                .iter()
                .find(|(m, p, _)| m == method && p == template)
                .unwrap_or_else(|| panic!("{method} {template}: not documented"));
            let r = call_raw(&url, method, path, true, body);
            assert_eq!(r.status, status, "{method} {path}: {}", r.body);
            if let Err(e) = answers_as_documented(&doc, op, &r) {
                panic!("{method} {path}: {e}");
            }
        }
    })
    .await
    .unwrap();
}

/// Paging back through results with `x-next-to` sees each exactly once, even
/// where several locations share a timestamp at a page boundary.
#[test]
fn paging_back_splits_no_timestamp() {
    let row = |ts: i64, seq: u64| ResultInfo {
        monitor_id: "m".into(),
        location: format!("agent:{}", seq % 3),
        seq,
        scheduled_at_unix_ms: ts,
        status: "up".into(),
        reason: "ok".into(),
        message: String::new(),
        address: String::new(),
        dns_us: None,
        connect_us: None,
        tls_us: None,
        first_byte_us: None,
        total_us: 1,
        details: Default::default(),
    };
    // 3 locations per timestamp, 20 timestamps.
    let all: Vec<ResultInfo> = (0..60)
        .map(|i| row(1_000 + (i / 3) * 10, i as u64))
        .collect();
    // What the backend does: the newest `limit` in [.., to), oldest first.
    let query = |to: i64, limit: usize| -> Vec<ResultInfo> {
        let mut v: Vec<ResultInfo> = all
            .iter()
            .filter(|r| r.scheduled_at_unix_ms < to)
            .cloned()
            .collect();
        let skip = v.len().saturating_sub(limit);
        v.drain(..skip);
        v
    };
    let mut seen = Vec::new();
    let mut to = i64::MAX;
    for _ in 0..100 {
        let mut page = query(to, 7);
        let next = page_back(&mut page, 7);
        seen.extend(page.iter().map(|r| r.seq));
        match next {
            Some(n) => {
                assert!(n < to, "progress");
                to = n;
            }
            None => break,
        }
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..60).collect::<Vec<u64>>());
}
