//! `portwatch-collector serve`: everything the collector runs, wired together.
//! The agent port carries enrollment (server-auth TLS) and the agents' mTLS
//! streams on one TLS listener; the HTTP port carries the admin API. One
//! shutdown future stops both, after which the stores are flushed.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use portwatch_agent::join::JoinString;
use portwatch_proto::v1 as pb;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;

use crate::admin::{AdminToken, Discovery};
use crate::agents::AgentRegistry;
use crate::ca::Ca;
use crate::config::Config;
use crate::enroll::{EnrollConfig, EnrollService, server_tls};
use crate::http::{
    AdminBackend, AgentInfo, ApiError, CreateToken, CreatedToken, EventInfo, EventsQuery,
    IncidentsQuery, NotificationsInfo, PhaseInfo, ResultInfo, ResultsQuery, RollupInfo,
    RollupsQuery, TokenInfo, router,
};
use crate::incident::engine::MonitorStatus;
use crate::incident::engine::{
    AgentPresence, EngineConfig, Outbound, Outbox, Presence, wall_clock,
};
use crate::incident::{Incident, IncidentEngine};
use crate::ingest::{AgentDirectory, Assignments, Denied, Ingest, IngestConfig, Renewer};
use crate::maintenance::MaintenanceRegistry;
use crate::monitors::registry::MonitorRegistry;
use crate::notify::{Backoff, ChannelRegistry, Dispatcher};
use crate::public::PublicConfig;
use crate::state::{State, unix_ms};
use crate::store::observed::Observed;
use crate::store::{
    Event, EventQuery, IncidentQuery, RedbStore, ResultQuery, RollupQuery, Store, StoreConfig,
    StoreError,
};
use crate::token::{TokenSpec, TokenStore};
use portwatch_agent::resolve::Resolver;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("data dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Setup(String),
    #[error("listening on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("serving: {0}")]
    Serve(String),
}

fn setup(e: impl std::fmt::Display) -> ServeError {
    ServeError::Setup(e.to_string())
}

/// The running collector's parts, for the admin API and the demo.
#[derive(Clone)]
pub struct Collector {
    pub ca: Arc<Ca>,
    pub tokens: TokenStore,
    pub agents: AgentRegistry,
    pub results: Arc<dyn Store>,
    pub ingest: Ingest,
    pub config: Arc<Config>,
    /// The live monitor set (config file + API).
    pub monitors: MonitorRegistry,
    /// Maintenance windows (config file + API).
    pub maintenance: MaintenanceRegistry,
    pub incidents: IncidentEngine,
    /// Notification channels (config file + API); every change reaches the
    /// dispatcher.
    pub channels: ChannelRegistry,
    /// Sends incidents to the notification channels.
    pub dispatcher: Dispatcher,
    /// The address agents are told to use (in join strings).
    pub public_agent_addr: String,
    /// The public status page's settings (replaced by config reloads).
    pub status_page: crate::web::status::Live,
}

/// Opens (creating on first start) everything under `data_dir`.
pub fn open(
    data_dir: &Path,
    mut config: Config,
    agent_addr: SocketAddr,
) -> Result<(Collector, AdminToken), ServeError> {
    // Join strings name the bound address when there is one, so the
    // certificate must too, whatever the file's server_names say and
    // even when `--agent-addr` chose the address after the file was read.
    let bound = agent_addr.ip();
    if !bound.is_unspecified() && !config.server_names.contains(&bound.to_string()) {
        config.server_names.push(bound.to_string());
    }
    create_private_dir(data_dir)?;
    let ca = Arc::new(Ca::load_or_create(data_dir).map_err(setup)?);
    let admin = AdminToken::load_or_create(data_dir).map_err(setup)?;
    let state = State::open(data_dir).map_err(setup)?;
    let tokens = TokenStore::open(&state, config.token_max_ttl).map_err(setup)?;
    let agents = AgentRegistry::open(&state).map_err(setup)?;
    let redb: Arc<dyn Store> = Arc::new(
        RedbStore::open(
            &data_dir.join("store"),
            StoreConfig {
                raw_retention: config.raw_retention,
                rollup_retention: config.rollup_retention,
                ..StoreConfig::default()
            },
        )
        .map_err(setup)?,
    );
    // Every durable batch also goes to incident detection.
    let observed = Arc::new(Observed::new(redb));
    let results: Arc<dyn Store> = observed.clone();
    let monitors = MonitorRegistry::open(
        config.monitors.clone(),
        Some(&data_dir.join("monitors.json")),
    )
    .map_err(setup)?;
    // Delivery reports are written on their incidents (by the task below).
    let (reports_tx, mut reports) = tokio::sync::mpsc::unbounded_channel();
    let dispatcher = Dispatcher::new(Vec::new(), Backoff::default(), reports_tx);
    // The registry hands the dispatcher its channels: the file's and the API's.
    let channels = ChannelRegistry::open(
        &config.notification_sources,
        Some(&data_dir.join(crate::notify::registry::API_FILE)),
        Some(dispatcher.clone()),
    )
    .map_err(setup)?;
    let maintenance = MaintenanceRegistry::open(
        config.maintenance.clone(),
        Some(&data_dir.join("maintenance.json")),
    )
    .map_err(setup)?;
    let config = Arc::new(config);
    let assignments = Arc::new(RegistryAssignments {
        monitors: monitors.clone(),
        agents: agents.clone(),
    });
    let ingest = Ingest::new(
        results.clone(),
        Arc::new(RegistryDirectory {
            agents: agents.clone(),
            lifetime: config.agent_cert_lifetime,
        }),
        assignments,
        IngestConfig::default(),
    );
    ingest.set_renewer(Arc::new(CaRenewer {
        ca: ca.clone(),
        agents: agents.clone(),
        lifetime: config.agent_cert_lifetime,
    }));
    let incidents = IncidentEngine::open(
        results.clone(),
        monitors.clone(),
        Arc::new(LinkPresence {
            agents: agents.clone(),
            ingest: ingest.clone(),
        }),
        Arc::new(maintenance.clone()),
        Arc::new(DispatcherOutbox {
            dispatcher: dispatcher.clone(),
            dashboard_url: config.dashboard_url.clone(),
        }),
        wall_clock(),
        EngineConfig {
            agent_offline_after: config.agent_offline_after,
            ..EngineConfig::default()
        },
    )
    .map_err(setup)?;
    {
        let engine = incidents.clone();
        observed.set_observer(Arc::new(move |samples| engine.observe(samples)));
        incidents.resume_deliveries();
        let engine = incidents.clone();
        tokio::spawn(async move {
            while let Some(r) = reports.recv().await {
                let engine = engine.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    engine.delivered(r.incident_id, crate::incident::delivery(&r))
                })
                .await;
            }
        });
    }
    let host = match agent_addr.ip() {
        ip if ip.is_unspecified() => config
            .server_names
            .first()
            .cloned()
            .unwrap_or_else(|| "localhost".into()),
        ip => ip.to_string(),
    };
    let public_agent_addr = if host.contains(':') {
        format!("[{host}]:{}", agent_addr.port())
    } else {
        format!("{host}:{}", agent_addr.port())
    };
    let status_page = crate::web::status::Live::new(config.status_page.clone());
    Ok((
        Collector {
            ca,
            tokens,
            agents,
            results,
            ingest,
            config,
            monitors,
            maintenance,
            incidents,
            channels,
            dispatcher,
            public_agent_addr,
            status_page,
        },
        admin,
    ))
}

fn create_private_dir(dir: &Path) -> Result<(), ServeError> {
    use std::os::unix::fs::DirBuilderExt;
    let err = |source| ServeError::DataDir {
        path: dir.to_owned(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(err)
}

/// Serves the agent port and the HTTP API until `shutdown` resolves.
pub async fn serve(
    data_dir: &Path,
    collector: Collector,
    admin: AdminToken,
    agent_listener: TcpListener,
    http_listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let tls = server_tls(&collector.ca, &collector.config.server_names).map_err(setup)?;
    let enroll = EnrollService::new(
        collector.ca.clone(),
        collector.tokens.clone(),
        collector.agents.clone(),
        EnrollConfig {
            cert_lifetime: collector.config.agent_cert_lifetime,
            rate_limit: collector.config.enroll_rate_limit,
            ..EnrollConfig::default()
        },
    );
    let http_addr = http_listener.local_addr().map_err(setup)?;
    let agent_addr = agent_listener.local_addr().map_err(setup)?;
    // SIGHUP reloads the config file: take it over before anyone can find this
    // collector (collector.json), or an early SIGHUP would kill it.
    let hup = match collector.config.path {
        Some(_) => tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|e| tracing::warn!(error = %e, "no SIGHUP reload: the file is still polled"))
            .ok(),
        None => None,
    };
    Discovery {
        url: format!("http://{http_addr}"),
        agent_addr: collector.public_agent_addr.clone(),
        pid: std::process::id(),
    }
    .write(data_dir)
    .map_err(setup)?;
    tracing::info!(agents = %agent_addr, http = %http_addr, "collector serving");

    let (stop_tx, stop_rx) = watch::channel(false);
    let closer = collector.ingest.clone();
    tokio::spawn(async move {
        shutdown.await;
        // Agent streams never end by themselves: close them first, or the
        // graceful shutdown would wait for them forever.
        closer.close_all();
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let public = collector.config.public_probes.then(|| {
        let config = PublicConfig {
            region: collector.config.public_region.clone(),
            allow_private_targets: collector.config.allow_private_targets,
            ..PublicConfig::default()
        };
        let resolver = Resolver::system().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "no system resolver: public probes check IP targets only");
            Resolver::literal_only()
        });
        tokio::spawn(crate::public::run(
            config,
            resolver,
            collector.monitors.clone(),
            collector.results.clone(),
            stop_rx.clone(),
        ))
    });
    if let Some(path) = collector.config.path.clone() {
        tokio::spawn(watch_config(
            path,
            Reloadable {
                monitors: collector.monitors.clone(),
                maintenance: collector.maintenance.clone(),
                channels: collector.channels.clone(),
                status_page: collector.status_page.clone(),
            },
            collector.results.clone(),
            hup,
            stop_rx.clone(),
        ));
    }
    tokio::spawn(collector.incidents.clone().run(stop_rx.clone()));
    tokio::spawn(maintain_store(
        collector.results.clone(),
        stopped(stop_rx.clone()),
    ));
    let ingest = collector.ingest.clone();
    let grpc = tonic::transport::Server::builder()
        // Answer the agents' pings and drop dead peers. A stream whose link
        // died silently (a cut, a dead NAT) counts as connected until this
        // notices, so agent_offline_after cannot be kept below it: ping after
        // 10 s without a frame from the agent, give up 5 s later (~15 s in
        // all). An agent sending results or heartbeats is never pinged.
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(5)))
        // An agent needs one stream (plus a renewal now and then); a client
        // opening hundreds on one connection waits for its turn instead.
        .max_concurrent_streams(Some(8))
        .tls_config(tls)
        .map_err(setup)?
        .add_service(enroll.into_server())
        .add_service(ingest.service())
        .serve_with_incoming_shutdown(
            TcpListenerStream::new(agent_listener),
            stopped(stop_rx.clone()),
        );
    let app = router(Backend(collector.clone()), admin.clone())
        .merge(crate::web::router(Backend(collector.clone()), admin));
    let http = axum::serve(http_listener, app).with_graceful_shutdown(stopped(stop_rx.clone()));
    let (g, h) = tokio::join!(grpc, async { http.await });
    if let Some(public) = public {
        match public.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "public probes failed"),
            Err(e) => tracing::error!(error = %e, "public probes panicked"),
        }
    }
    g.map_err(|e| ServeError::Serve(e.to_string()))?;
    h.map_err(|e| ServeError::Serve(e.to_string()))?;
    Ok(())
}

/// How often the store folds dirty minutes into rollups and drops expired
/// partitions.
const STORE_MAINTENANCE_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Rolls up and applies retention until `stop`. A failed round is logged and
/// retried at the next tick: both are idempotent.
async fn maintain_store(store: Arc<dyn Store>, stop: impl Future<Output = ()>) {
    let mut tick = tokio::time::interval(STORE_MAINTENANCE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tick.tick() => {}
        }
        let store = store.clone();
        let now = unix_ms(SystemTime::now());
        let round = tokio::task::spawn_blocking(move || {
            Ok::<_, StoreError>((store.roll_up(now)?, store.retain(now)?))
        })
        .await;
        match round {
            Ok(Ok((rolled, _))) => {
                tracing::debug!(
                    recomputed = rolled.recomputed,
                    cleared = rolled.cleared,
                    "rollups updated"
                )
            }
            Ok(Err(e)) => tracing::error!(error = %e, "store maintenance failed"),
            Err(e) => tracing::error!(error = %e, "store maintenance panicked"),
        }
    }
}

/// Incidents to notify go to the dispatcher's channel workers.
struct DispatcherOutbox {
    dispatcher: Dispatcher,
    dashboard_url: Option<String>,
}

impl Outbox for DispatcherOutbox {
    fn send(&self, out: Outbound) {
        self.dispatcher.notify_skipping(
            crate::incident::notification(&out, self.dashboard_url.as_deref()),
            &out.skip,
        );
    }
}

/// Agents as incident detection sees them: enrolled ones from the registry,
/// their stream state from the link.
struct LinkPresence {
    agents: AgentRegistry,
    ingest: Ingest,
}

impl Presence for LinkPresence {
    fn agents(&self) -> Vec<AgentPresence> {
        let agents = match self.agents.list() {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %e, "listing agents for presence failed");
                return Vec::new();
            }
        };
        agents
            .into_iter()
            .map(|a| {
                let link = self.ingest.agent_stats(&a.id);
                let connected = link.as_ref().is_some_and(|l| l.connected);
                let since = link.and_then(|l| {
                    if connected {
                        l.connected_since
                    } else {
                        l.last_seen
                    }
                });
                AgentPresence {
                    location: format!("agent:{}", a.name),
                    connected,
                    since_ms: since.map(unix_ms),
                    revoked: a.revoked,
                    enrolled_ms: a.enrolled_at_unix_ms,
                }
            })
            .collect()
    }
}

/// The registry decides who may stream: unknown and revoked agents may not.
struct RegistryDirectory {
    agents: AgentRegistry,
    /// The lifetime agent certificates are issued with.
    lifetime: std::time::Duration,
}

impl AgentDirectory for RegistryDirectory {
    fn check(&self, agent_id: &str) -> Result<(), Denied> {
        match self.agents.get(agent_id) {
            Ok(Some(a)) if !a.revoked => Ok(()),
            Ok(Some(_)) => Err(Denied {
                reason: "this agent was revoked: enroll it again with a new token".into(),
            }),
            Ok(None) => Err(Denied {
                reason: "unknown agent".into(),
            }),
            Err(e) => Err(Denied {
                reason: format!("agent registry unavailable: {e}"),
            }),
        }
    }

    fn location(&self, agent_id: &str) -> String {
        match self.agents.get(agent_id) {
            Ok(Some(a)) => match a.public_region {
                Some(region) => format!("public:{region}"),
                None => format!("agent:{}", a.name),
            },
            _ => format!("agent:{agent_id}"),
        }
    }

    fn rotation_due(&self, agent_id: &str) -> Option<String> {
        let a = self.agents.get(agent_id).ok()??;
        let left_ms = a.cert_not_after_unix_ms - unix_ms(SystemTime::now());
        // Agents renew at 70-90 % of the life; under 10 % left means that
        // timer did not fire.
        let tenth_ms = i64::try_from(self.lifetime.as_millis() / 10).unwrap_or(i64::MAX);
        (left_ms < tenth_ms).then(|| {
            format!(
                "the agent certificate expires in {}s, past its renewal time",
                left_ms.max(0) / 1000
            )
        })
    }
}

/// Renewal: the CA signs the agent's fresh key with the identity it already
/// has (from its current certificate) and the registry records the new one.
struct CaRenewer {
    ca: Arc<Ca>,
    agents: AgentRegistry,
    lifetime: std::time::Duration,
}

impl Renewer for CaRenewer {
    fn renew(&self, agent_id: &str, csr_der: &[u8]) -> Result<pb::RenewResponse, tonic::Status> {
        let issued = self
            .ca
            .issue_agent(csr_der, agent_id, self.lifetime)
            .map_err(|e| match e {
                crate::ca::CaError::BadCsr(_) => tonic::Status::invalid_argument(e.to_string()),
                other => tonic::Status::internal(other.to_string()),
            })?;
        self.agents
            .record_cert(agent_id, &issued.serial_hex, issued.not_after)
            .map_err(|e| tonic::Status::internal(format!("recording the new certificate: {e}")))?;
        Ok(pb::RenewResponse {
            cert_der: issued.cert_der.to_vec(),
            not_after_unix_ms: unix_ms(issued.not_after),
        })
    }
}

/// The live monitors, matched by agent name and labels.
struct RegistryAssignments {
    monitors: MonitorRegistry,
    agents: AgentRegistry,
}

impl Assignments for RegistryAssignments {
    fn assignment(&self, agent_id: &str) -> pb::Assignment {
        match self.agents.get(agent_id) {
            Ok(Some(a)) => {
                self.monitors
                    .assignment_for(&a.name, &a.labels, a.public_region.as_deref())
            }
            _ => pb::Assignment::default(),
        }
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.monitors.changes()
    }
}

/// What a config reload replaces, all or nothing.
#[derive(Clone)]
pub struct Reloadable {
    pub monitors: MonitorRegistry,
    pub maintenance: MaintenanceRegistry,
    pub channels: ChannelRegistry,
    pub status_page: crate::web::status::Live,
}

/// Reloads the config file's monitors when the file changes (polled every
/// two seconds) or on SIGHUP. A file with problems changes nothing: every
/// problem is logged and the last good set keeps running.
async fn watch_config(
    path: PathBuf,
    live: Reloadable,
    store: Arc<dyn Store>,
    mut hup: Option<tokio::signal::unix::Signal>,
    mut stop: watch::Receiver<bool>,
) {
    let read = |p: &Path| std::fs::read_to_string(p).ok();
    let mut last = read(&path);
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
    loop {
        let forced = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => false,
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
        };
        let text = read(&path);
        if !forced && text == last {
            continue;
        }
        last = text.clone();
        let Some(text) = text else {
            tracing::error!(file = %path.display(), "config file unreadable: keeping the current monitors");
            continue;
        };
        reload_monitors(&path, &text, &live, &*store);
    }
}

/// Applies a new version of the config file to the live monitors,
/// maintenance windows and notification channels (the API's stay), and
/// records the outcome in the audit log.
pub fn reload_monitors(path: &Path, text: &str, live: &Reloadable, store: &dyn Store) {
    let Reloadable {
        monitors,
        maintenance,
        channels,
        status_page,
    } = live;
    let origin = path.display().to_string();
    let parsed = match Config::parse(text, &origin) {
        Ok(c) => c,
        Err(e) => {
            for line in e.to_string().lines() {
                tracing::error!(problem = %line, "config file rejected: keeping the current monitors");
            }
            // Recorded before the status says so: whoever sees the failed
            // reload finds it in the audit log.
            audit(
                store,
                "config.reject",
                &origin,
                serde_json::json!({ "problems": e.to_string().lines().collect::<Vec<_>>() }),
            );
            monitors.reload_failed(&origin, e.to_string());
            return;
        }
    };
    // All or nothing: the windows and channels are checked (against the
    // API's names) before the monitors change.
    let checked = maintenance
        .check_file(&parsed.maintenance_sources)
        .and_then(|w| Ok((w, channels.check_file(&parsed.notification_sources)?)));
    let (windows, file_channels) = match checked {
        Ok(x) => x,
        Err(problems) => {
            for p in &problems {
                tracing::error!(problem = %p, "config file rejected: keeping the current monitors and windows");
            }
            audit(
                store,
                "config.reject",
                &origin,
                serde_json::json!({ "problems": problems }),
            );
            monitors.reload_failed(&origin, problems.join("\n"));
            return;
        }
    };
    let applied = monitors.replace_file(&parsed.monitor_sources, &origin);
    if applied.is_ok() {
        maintenance.set_file(windows);
        channels.set_file(file_channels);
        status_page.set(parsed.status_page.clone());
    }
    match applied {
        Ok(change) if change.is_empty() => {
            tracing::info!(file = %origin, "config file reloaded: monitors unchanged");
        }
        Ok(change) => {
            tracing::info!(
                file = %origin,
                added = ?change.added,
                changed = ?change.changed,
                removed = ?change.removed,
                "config file reloaded: monitors updated"
            );
            audit(
                store,
                "config.apply",
                &origin,
                serde_json::json!({
                    "added": change.added,
                    "changed": change.changed,
                    "removed": change.removed,
                }),
            );
        }
        Err(problems) => {
            for p in &problems.0 {
                tracing::error!(problem = %p, "config file rejected: keeping the current monitors");
            }
            audit(
                store,
                "config.reject",
                &origin,
                serde_json::json!({ "problems": problems.0.iter().map(|p| p.to_string()).collect::<Vec<_>>() }),
            );
        }
    }
}

struct Backend(Collector);

/// What `/metrics` shows, read from the store, the engine and the link.
fn metrics_snapshot(c: &Collector) -> Result<crate::metrics::Snapshot, ApiError> {
    use crate::metrics::{AgentSeries, ChannelSeries, ProbeSeries, Snapshot};
    let targets: std::collections::HashMap<String, String> = c
        .monitors
        .monitors()
        .into_iter()
        .map(|m| (m.name, m.spec.target))
        .collect();
    let probes = c
        .results
        .latest_all()
        .map_err(internal)?
        .into_iter()
        // Only monitors that still exist.
        .filter_map(|(monitor, location, result)| {
            let target = targets.get(&monitor)?.clone();
            Some(ProbeSeries {
                monitor,
                target,
                location,
                result,
            })
        })
        .collect();
    let status = c.incidents.status();
    let mut open: std::collections::BTreeMap<String, u64> = Default::default();
    for i in c.incidents.open_incidents() {
        *open.entry(i.kind.as_str().to_owned()).or_default() += 1;
    }
    let agents = c
        .agents
        .list()
        .map_err(internal)?
        .into_iter()
        .filter(|a| !a.revoked)
        .map(|a| {
            let link = c.ingest.agent_stats(&a.id).unwrap_or_default();
            AgentSeries {
                name: a.name.clone(),
                connected: link.connected,
                backlog: link.backlog,
                stored: link.stored,
                duplicates: link.duplicates,
                dropped_unassigned: link.dropped_unassigned,
                gaps: link.gaps,
                cert_expires_unix: a.cert_not_after_unix_ms / 1000,
                health: link.connected.then_some(link.health).flatten(),
            }
        })
        .collect();
    Ok(Snapshot {
        probes,
        monitor_states: status.into_iter().map(|s| (s.monitor, s.state)).collect(),
        open_incidents: open.into_iter().collect(),
        agents,
        channels: c
            .dispatcher
            .counts()
            .into_iter()
            .map(|(channel, delivered, failed)| ChannelSeries {
                channel,
                delivered,
                failed,
            })
            .collect(),
    })
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(e.to_string())
}

impl crate::web::WebBackend for Backend {
    fn status_page(&self) -> crate::web::status::StatusPage {
        self.0.status_page.get()
    }

    fn monitor_status(&self, name: &str) -> Option<crate::incident::engine::MonitorStatus> {
        self.0.incidents.status_of(name)
    }

    fn secure_cookies(&self) -> bool {
        self.0
            .config
            .dashboard_url
            .as_deref()
            .is_some_and(|u| u.starts_with("https://"))
    }
}

impl AdminBackend for Backend {
    fn store(&self) -> Arc<dyn Store> {
        self.0.results.clone()
    }

    async fn create_token(&self, req: CreateToken) -> Result<CreatedToken, ApiError> {
        let c = &self.0;
        if req.name.is_empty() || req.name.len() > 64 {
            return Err(ApiError::bad_request("name: must be 1-64 characters"));
        }
        if req.public_region.as_deref() == Some(c.config.public_region.as_str()) {
            return Err(ApiError::bad_request(format!(
                "public_region: {:?} is this collector's own public location: give the agent another region",
                c.config.public_region
            )));
        }
        let ttl = match &req.ttl {
            Some(t) => Some(
                humantime::parse_duration(t)
                    .map_err(|e| ApiError::bad_request(format!("ttl: {t:?}: {e}")))?,
            ),
            None => Some(c.config.token_ttl),
        };
        let new = c
            .tokens
            .create(
                TokenSpec {
                    name: req.name.clone(),
                    labels: req.labels,
                    ttl,
                    public_region: req.public_region.clone(),
                },
                SystemTime::now(),
            )
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let join = JoinString::new(
            c.public_agent_addr.clone(),
            new.record.id.clone(),
            new.secret(),
            c.ca.pin(),
        )
        .map_err(internal)?
        .encode();
        tracing::info!(token = %new.record.id, name = %new.record.name, "enrollment token created");
        Ok(CreatedToken {
            token_id: new.record.id.clone(),
            name: new.record.name.clone(),
            expires_at_unix_ms: new.record.expires_at_unix_ms,
            join,
        })
    }

    async fn list_tokens(&self) -> Result<Vec<TokenInfo>, ApiError> {
        let _ = self.0.tokens.purge_expired(SystemTime::now());
        Ok(self
            .0
            .tokens
            .list()
            .map_err(internal)?
            .into_iter()
            .map(|t| TokenInfo {
                token_id: t.id,
                name: t.name,
                labels: t.labels,
                created_at_unix_ms: t.created_at_unix_ms,
                expires_at_unix_ms: t.expires_at_unix_ms,
                used_by: t.used_by,
            })
            .collect())
    }

    async fn delete_token(&self, id: &str) -> Result<(), ApiError> {
        match self.0.tokens.delete(id).map_err(internal)? {
            true => Ok(()),
            false => Err(ApiError::not_found(format!("no token {id:?}"))),
        }
    }

    async fn list_agents(&self) -> Result<Vec<AgentInfo>, ApiError> {
        let c = &self.0;
        Ok(c.agents
            .list()
            .map_err(internal)?
            .into_iter()
            .map(|a| agent_info(c, a))
            .collect())
    }

    fn monitor_registry(&self) -> &MonitorRegistry {
        &self.0.monitors
    }

    async fn results(&self, q: &ResultsQuery) -> Result<Vec<ResultInfo>, ApiError> {
        results_info(&self.0, q)
    }

    async fn rollups(&self, q: &RollupsQuery) -> Result<Vec<RollupInfo>, ApiError> {
        let now = unix_ms(SystemTime::now());
        let to = q.to.unwrap_or(now);
        // A week of minutes at most per query.
        let from = q
            .from
            .unwrap_or(to - 24 * 3_600_000)
            .max(to - 7 * 24 * 3_600_000);
        let rollups = self
            .0
            .results
            .rollups(&RollupQuery {
                monitor_id: q.monitor.clone(),
                location: q.location.clone(),
                from_ms: from,
                to_ms: to,
            })
            .map_err(internal)?;
        let phase = |p: &crate::store::PhaseStats| PhaseInfo {
            count: p.count,
            min_us: p.min_us,
            avg_us: p.avg_us(),
            p95_us: p.p95_us,
            max_us: p.max_us,
        };
        Ok(rollups
            .iter()
            .map(|r| {
                let [dns, connect, tls, first_byte, total] = &r.phases;
                RollupInfo {
                    minute_start_unix_ms: r.minute_start_ms,
                    checks: r.checks,
                    failures: r.failures,
                    degraded: r.degraded,
                    dns: phase(dns),
                    connect: phase(connect),
                    tls: phase(tls),
                    first_byte: phase(first_byte),
                    total: phase(total),
                }
            })
            .collect())
    }

    async fn events(&self, q: &EventsQuery) -> Result<Vec<EventInfo>, ApiError> {
        let events = self
            .0
            .results
            .events(&EventQuery {
                from_ms: q.from.unwrap_or(i64::MIN),
                to_ms: q.to.unwrap_or(i64::MAX),
                kind: q.kind.clone(),
                limit: q.limit,
            })
            .map_err(internal)?;
        Ok(events
            .into_iter()
            .map(|(id, e)| EventInfo {
                id,
                at_unix_ms: e.ts_ms,
                kind: e.kind,
                subject: e.subject,
                body: serde_json::from_str(&e.body).unwrap_or(serde_json::Value::String(e.body)),
            })
            .collect())
    }

    fn audit(&self, action: &str, subject: &str, detail: serde_json::Value) {
        audit(&*self.0.results, action, subject, detail);
    }

    async fn incidents(&self, q: &IncidentsQuery) -> Result<Vec<Incident>, ApiError> {
        let store = self.0.results.clone();
        let query = IncidentQuery {
            subject: q.monitor.clone(),
            open_only: q.open,
            before_id: q.before,
            limit: q.limit,
        };
        let rows = tokio::task::spawn_blocking(move || store.incidents(&query))
            .await
            .map_err(internal)?
            .map_err(internal)?;
        rows.iter()
            .map(|r| crate::incident::engine::parse(r).map_err(internal))
            .collect()
    }

    async fn incident(&self, id: u64) -> Result<Incident, ApiError> {
        let store = self.0.results.clone();
        let row = tokio::task::spawn_blocking(move || store.incident(id))
            .await
            .map_err(internal)?
            .map_err(internal)?
            .ok_or_else(|| ApiError::not_found(format!("no incident {id}")))?;
        crate::incident::engine::parse(&row).map_err(internal)
    }

    async fn metrics(&self) -> Result<String, ApiError> {
        let c = self.0.clone();
        tokio::task::spawn_blocking(move || {
            metrics_snapshot(&c).map(|s| crate::metrics::render(&s))
        })
        .await
        .map_err(internal)?
    }

    fn metrics_open(&self) -> bool {
        self.0.config.metrics_open
    }

    async fn ready(&self) -> Result<(), ApiError> {
        let store = self.0.results.clone();
        tokio::task::spawn_blocking(move || store.watermark("readyz"))
            .await
            .map_err(internal)?
            .map(|_| ())
            .map_err(|e| {
                ApiError::new(
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    "not_ready",
                    e.to_string(),
                )
            })
    }

    async fn notifications(&self) -> Result<NotificationsInfo, ApiError> {
        let mut recent = self
            .events(&EventsQuery {
                kind: Some("notification".into()),
                from: Some(unix_ms(SystemTime::now()) - 86_400_000),
                to: None,
                limit: 100_000,
            })
            .await?;
        recent.reverse();
        recent.truncate(200);
        Ok(NotificationsInfo {
            channels: self
                .0
                .channels
                .list()
                .iter()
                .map(|e| e.channel.info())
                .collect(),
            recent,
        })
    }

    fn maintenance_registry(&self) -> &MaintenanceRegistry {
        &self.0.maintenance
    }

    fn channel_registry(&self) -> &ChannelRegistry {
        &self.0.channels
    }

    fn dashboard_url(&self) -> Option<String> {
        self.0.config.dashboard_url.clone()
    }

    async fn status(&self) -> Result<Vec<MonitorStatus>, ApiError> {
        Ok(self.0.incidents.status())
    }

    async fn rotate_agent(&self, name_or_id: &str) -> Result<AgentInfo, ApiError> {
        let c = &self.0;
        let rec = match c.agents.by_name(name_or_id).map_err(internal)? {
            Some(r) => r,
            None => c
                .agents
                .get(name_or_id)
                .map_err(internal)?
                .ok_or_else(|| ApiError::not_found(format!("no agent {name_or_id:?}")))?,
        };
        if !c
            .ingest
            .hint_rotation(&rec.id, "an operator asked for a certificate renewal")
        {
            return Err(ApiError::new(
                axum::http::StatusCode::CONFLICT,
                "not_connected",
                format!(
                    "agent {} has no live stream: it renews on its own schedule once connected",
                    rec.name
                ),
            ));
        }
        tracing::info!(agent = %rec.id, name = %rec.name, "certificate renewal requested");
        Ok(agent_info(c, rec))
    }

    async fn revoke_agent(&self, name_or_id: &str) -> Result<AgentInfo, ApiError> {
        let c = &self.0;
        let rec = c
            .agents
            .revoke(name_or_id, SystemTime::now())
            .map_err(|e| ApiError::not_found(e.to_string()))?;
        c.ingest.revoke(&rec.id);
        tracing::warn!(agent = %rec.id, name = %rec.name, "agent revoked");
        Ok(agent_info(c, rec))
    }
}

fn agent_info(c: &Collector, a: crate::agents::AgentRecord) -> AgentInfo {
    let live = c.ingest.agent_stats(&a.id).filter(|s| s.connected);
    AgentInfo {
        connected_since_unix_ms: live.as_ref().and_then(|s| s.connected_since).map(unix_ms),
        last_seen_unix_ms: c
            .ingest
            .agent_stats(&a.id)
            .and_then(|s| s.last_seen)
            .map(unix_ms),
        version: Some(
            live.as_ref()
                .map(|s| s.agent_version.clone())
                .unwrap_or_else(|| a.agent_version.clone()),
        ),
        backlog: live.as_ref().map(|s| s.backlog),
        health: live.as_ref().and_then(|s| s.health),
        public_region: a.public_region.clone(),
        acked_through: c.ingest.agent_stats(&a.id).map(|s| s.acked_through),
        id: a.id,
        name: a.name,
        labels: a.labels,
        enrolled_at_unix_ms: a.enrolled_at_unix_ms,
        cert_expires_at_unix_ms: a.cert_not_after_unix_ms,
        revoked: a.revoked,
    }
}

fn results_info(c: &Collector, q: &ResultsQuery) -> Result<Vec<ResultInfo>, ApiError> {
    let mut query = ResultQuery::monitor(&q.monitor)
        .range(q.from.unwrap_or(i64::MIN), q.to.unwrap_or(i64::MAX))
        .newest_first()
        .limit(q.limit);
    if let Some(l) = &q.location {
        query = query.location(l);
    }
    let mut newest = c.results.results(&query).map_err(internal)?;
    newest.reverse();
    Ok(newest
        .into_iter()
        .map(|s| {
            let r = &s.result;
            let ph = r.phases.unwrap_or_default();
            ResultInfo {
                monitor_id: r.monitor_id.clone(),
                location: s.location.clone(),
                seq: s.seq,
                scheduled_at_unix_ms: r.scheduled_at_unix_ms,
                status: pb::Status::try_from(r.status)
                    .map(|v| {
                        v.as_str_name()
                            .trim_start_matches("STATUS_")
                            .to_ascii_lowercase()
                    })
                    .unwrap_or_default(),
                reason: pb::Reason::try_from(r.reason)
                    .map(|v| {
                        v.as_str_name()
                            .trim_start_matches("REASON_")
                            .to_ascii_lowercase()
                    })
                    .unwrap_or_default(),
                message: r.message.clone(),
                address: r.address.clone(),
                dns_us: ph.dns_us,
                connect_us: ph.connect_us,
                tls_us: ph.tls_us,
                first_byte_us: ph.first_byte_us,
                total_us: ph.total_us,
                details: r
                    .details
                    .as_ref()
                    .map(crate::http::ResultDetails::from)
                    .unwrap_or_default(),
            }
        })
        .collect())
}

/// Appends an audit event (`kind` "audit", body `{"action", "detail"}`).
/// The action already happened: a failure to record it is logged, not returned.
pub fn audit(store: &dyn Store, action: &str, subject: &str, detail: serde_json::Value) {
    let event = Event {
        ts_ms: unix_ms(SystemTime::now()),
        kind: "audit".into(),
        subject: subject.to_owned(),
        body: serde_json::json!({ "action": action, "detail": detail }).to_string(),
    };
    if let Err(e) = store.append_event(&event) {
        tracing::error!(action, subject, error = %e, "recording an audit event failed");
    }
}
