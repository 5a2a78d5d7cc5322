//! The collector's side of the agent link: the `AgentLink.Session` stream.
//!
//! - **Identity** comes only from the verified client certificate
//!   (`request.peer_certs()` on tonic's own TLS, then [`ca::agent_id_of`]). The
//!   agent port also serves enrollment, so TLS makes the client certificate
//!   optional and this handler enforces it: none -> `Unauthenticated`.
//! - **Admission**: an [`AgentDirectory`] says whether the agent may connect
//!   (denied -> `PermissionDenied`). It is asked again every
//!   [`IngestConfig::recheck`] on a live stream, and [`Ingest::revoke`] closes
//!   one at once.
//! - **One live stream per agent**: a new stream closes the older one (`Aborted`).
//!   An identity opening streams in a storm (a crash-looping or cloned agent)
//!   gets `Unavailable` past [`IngestConfig::streams_per_window`] new streams
//!   per [`IngestConfig::stream_window`], before it replaces anything: the
//!   live stream goes on, and the agent's backoff slows it down.
//! - **Assignment**: after the agent's `Hello`, the collector sends the monitors
//!   [`Assignments`] gives that agent, and again whenever they change.
//! - **Results**: a `ResultBatch` is filtered (results for monitors not assigned
//!   to the agent are dropped and counted), stored durably in the [`Store`]
//!   (location `agent:<name>`, deduplicated on the agent's seq watermark,
//!   one transaction, durable on return), then acked.
//!
//! ## What an `Ack` means
//! `Ack { durable_through_seq: N }` is sent after a batch has been processed
//! (batches already waiting when one arrives are stored together, with one
//! fsync, and share one ack), with `N` the highest sequence number (of a result or a gap's `to_seq`) seen
//! on this stream so far. Batches on one stream are processed in order and
//! each is flushed before its ack, so every result and gap the agent sent on
//! this stream with a seq <= N is on disk (or was dropped as unassigned, which
//! is final). The agent sends its buffer in seq order starting after its last
//! ack, so this is "everything the agent still held through N": it may delete
//! through N. Acks on a stream never go down.
//!
//! A message that fails to decode or exceeds [`IngestConfig::max_message_bytes`]
//! ends the stream with an error (`ResourceExhausted` for the size) and is not
//! acked: the agent keeps the results, sends smaller batches, and sends again.
//!
//! ## Serving
//! Add [`Ingest::service`] to a tonic server whose `ServerTlsConfig` has the
//! collector's identity (leaf + CA chain), `client_ca_root(<collector CA>)`
//! and `client_auth_optional(true)` (enrollment shares the port). Without
//! `client_ca_root` rustls asks for no client certificate at all, so every
//! stream is refused as unauthenticated rather than trusted. Set
//! `http2_keepalive_interval` on the server so a silently dead agent
//! connection is noticed. On shutdown call [`Ingest::close_all`] so a graceful
//! server shutdown does not wait for the long-lived streams.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use portwatch_proto::v1 as pb;
use portwatch_proto::v1::agent_link_server::{AgentLink, AgentLinkServer};
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::ca;
use crate::ratelimit::RateLimiter;
use crate::store::{Sample, SourceGap, Store};

/// Default bound on one decoded agent message.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// How long a closing stream waits to hand the agent its final status.
const CLOSE_SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// Most waiting result batches stored with one fsync.
const MAX_COALESCED_BATCHES: usize = 16;

/// Why an agent may not connect.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Denied {
    pub reason: String,
}

/// Which agents may hold a stream. The enrollment registry implements it
/// (unknown and revoked agents are denied).
pub trait AgentDirectory: Send + Sync + 'static {
    fn check(&self, agent_id: &str) -> Result<(), Denied>;

    /// The location the agent's results are stored under, asked once per
    /// stream: `agent:<agent name>`. The default (no registry) uses the id.
    fn location(&self, agent_id: &str) -> String {
        format!("agent:{agent_id}")
    }

    /// Why the agent should renew its certificate now, if it should (checked
    /// when its stream opens): e.g. its certificate is late in its life, so
    /// its own renewal timer did not fire (a suspended VM, a stopped clock).
    fn rotation_due(&self, _agent_id: &str) -> Option<String> {
        None
    }
}

/// The monitors each agent runs. Implementations bump the agent's version on
/// every change and notify `changes()` so open streams push the new set.
pub trait Assignments: Send + Sync + 'static {
    /// The agent's current assignment (version 0 and no monitors when it has none).
    fn assignment(&self, agent_id: &str) -> pb::Assignment;
    /// Changes whenever any agent's assignment changes.
    fn changes(&self) -> watch::Receiver<u64>;
}

/// An in-memory [`Assignments`]: agent id -> monitors, each agent with its
/// own version. Stands in for the collector's monitor model until that lands.
pub struct StaticAssignments {
    map: RwLock<HashMap<String, pb::Assignment>>,
    tick: watch::Sender<u64>,
}

impl Default for StaticAssignments {
    fn default() -> Self {
        StaticAssignments {
            map: RwLock::new(HashMap::new()),
            tick: watch::channel(0).0,
        }
    }
}

impl StaticAssignments {
    /// No agent has monitors yet.
    pub fn new() -> StaticAssignments {
        StaticAssignments::default()
    }

    /// Replaces `agent_id`'s monitors; open streams receive the new set.
    /// Returns the new version.
    pub fn set(&self, agent_id: &str, monitors: Vec<pb::MonitorSpec>) -> u64 {
        let version = {
            let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
            let entry = map.entry(agent_id.to_owned()).or_default();
            entry.version += 1;
            entry.monitors = monitors;
            entry.version
        };
        self.tick.send_modify(|t| *t += 1);
        version
    }
}

impl Assignments for StaticAssignments {
    fn assignment(&self, agent_id: &str) -> pb::Assignment {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        map.get(agent_id).cloned().unwrap_or_default()
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.tick.subscribe()
    }
}

/// Issues a new certificate for an authenticated agent's fresh key (the
/// `Renew` RPC). The collector's CA implements it; without one, `Renew`
/// answers `Unimplemented`.
pub trait Renewer: Send + Sync + 'static {
    fn renew(&self, agent_id: &str, csr_der: &[u8]) -> Result<pb::RenewResponse, Status>;
}

/// Limits and timings of the ingest service.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// Largest agent message accepted (tonic's `max_decoding_message_size`).
    pub max_message_bytes: usize,
    /// How long a new stream may take to send its `Hello`.
    pub hello_timeout: Duration,
    /// How often a live stream asks the [`AgentDirectory`] again.
    pub recheck: Duration,
    /// New streams one agent may open per `stream_window`. A healthy agent
    /// opens one per reconnect, with backoff from 1 s between failures; one
    /// restarted by systemd, one per 10 s. The default (30 a minute) leaves
    /// room for an agent killed and restarted by hand in a loop.
    pub streams_per_window: u32,
    pub stream_window: Duration,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            hello_timeout: Duration::from_secs(10),
            recheck: Duration::from_secs(2),
            streams_per_window: 30,
            stream_window: Duration::from_secs(60),
        }
    }
}

/// What the collector knows of one agent's link, for `agents` and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentLinkStats {
    pub connected: bool,
    pub connected_since: Option<SystemTime>,
    pub last_seen: Option<SystemTime>,
    pub agent_version: String,
    /// The backlog the agent last reported (Hello or Heartbeat).
    pub backlog: u64,
    /// Results stored for the first time, ever (since the collector started).
    pub stored: u64,
    /// Results that were already stored (resent after a lost ack).
    pub duplicates: u64,
    /// Results for monitors not assigned to this agent: dropped.
    pub dropped_unassigned: u64,
    /// Gaps the agent reported.
    pub gaps: u64,
    /// Highest seq acked to the agent.
    pub acked_through: u64,
    /// Streams opened, ever.
    pub sessions: u64,
    /// What the agent last said of its own health (heartbeat).
    pub health: Option<AgentHealth>,
}

/// How an agent keeps its schedule and what it costs its host, as its last
/// heartbeat said (since the agent started).
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
pub struct AgentHealth {
    /// Monitors the agent runs.
    pub monitors: u32,
    /// Checks started.
    pub checks_started: u64,
    /// Due checks not run: the monitor's previous run was still going.
    pub skipped_overlap: u64,
    /// Due checks passed over: the agent was more than an interval behind.
    pub missed: u64,
    /// How late checks started (start minus due time), in microseconds.
    pub lateness_p50_us: u64,
    pub lateness_p99_us: u64,
    pub lateness_max_us: u64,
    /// The agent process's resident memory.
    pub rss_bytes: u64,
    /// The agent process's CPU time (user + system), in milliseconds.
    pub cpu_ms: u64,
}

impl From<&pb::AgentHealth> for AgentHealth {
    fn from(h: &pb::AgentHealth) -> AgentHealth {
        AgentHealth {
            monitors: h.monitors,
            checks_started: h.checks_started,
            skipped_overlap: h.skipped_overlap,
            missed: h.missed,
            lateness_p50_us: h.lateness_p50_us,
            lateness_p99_us: h.lateness_p99_us,
            lateness_max_us: h.lateness_max_us,
            rss_bytes: h.rss_bytes,
            // A NaN or negative time from a broken agent reads as 0.
            cpu_ms: (h.cpu_seconds * 1000.0).clamp(0.0, u64::MAX as f64) as u64,
        }
    }
}

struct Live {
    id: u64,
    close: mpsc::Sender<Status>,
    /// Rotation hints for the agent (a reason each).
    hint: mpsc::Sender<String>,
}

struct Inner {
    store: Arc<dyn Store>,
    directory: Arc<dyn AgentDirectory>,
    assignments: Arc<dyn Assignments>,
    config: IngestConfig,
    live: Mutex<HashMap<String, Live>>,
    stats: Mutex<HashMap<String, AgentLinkStats>>,
    next_id: AtomicU64,
    renewer: std::sync::OnceLock<Arc<dyn Renewer>>,
    /// New streams per agent identity.
    limiter: RateLimiter<String>,
    /// Stream tasks running, live or winding down.
    open: AtomicUsize,
}

/// The `AgentLink` service and the handle to its live streams. Cheap to clone.
#[derive(Clone)]
pub struct Ingest {
    inner: Arc<Inner>,
}

impl Ingest {
    /// The service over `store`, admitting agents `directory` allows and
    /// assigning them what `assignments` says.
    pub fn new(
        store: Arc<dyn Store>,
        directory: Arc<dyn AgentDirectory>,
        assignments: Arc<dyn Assignments>,
        config: IngestConfig,
    ) -> Ingest {
        Ingest {
            inner: Arc::new(Inner {
                limiter: RateLimiter::new(config.streams_per_window, config.stream_window),
                store,
                directory,
                assignments,
                config,
                live: Mutex::new(HashMap::new()),
                stats: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                renewer: std::sync::OnceLock::new(),
                open: AtomicUsize::new(0),
            }),
        }
    }

    /// The tonic service to add to the agent port's router, with the message
    /// size limit applied.
    pub fn service(&self) -> AgentLinkServer<Ingest> {
        let max = self.inner.config.max_message_bytes;
        AgentLinkServer::new(self.clone())
            .max_decoding_message_size(max)
            .max_encoding_message_size(DEFAULT_MAX_MESSAGE_BYTES.max(max))
    }

    /// Serves `Renew` with `renewer` (set once, before agents connect).
    pub fn set_renewer(&self, renewer: Arc<dyn Renewer>) {
        let _ = self.inner.renewer.set(renewer);
    }

    /// Closes `agent_id`'s live stream with `PermissionDenied`. Call it after
    /// revoking the agent in the directory (which then refuses reconnects).
    /// Returns whether a stream was open.
    pub fn revoke(&self, agent_id: &str) -> bool {
        self.close(
            agent_id,
            Status::permission_denied(format!("agent {agent_id} is revoked")),
        )
    }

    /// Asks `agent_id`'s live stream to renew its certificate now (the agent
    /// renews at most once a minute on hints). Returns whether a stream was open.
    pub fn hint_rotation(&self, agent_id: &str, reason: &str) -> bool {
        match self.lock_live().get(agent_id) {
            Some(l) => l.hint.try_send(reason.to_owned()).is_ok(),
            None => false,
        }
    }

    /// Closes every live stream with `Unavailable` (collector shutting down),
    /// so a graceful server shutdown does not wait on them.
    pub fn close_all(&self) {
        let live: Vec<String> = self.lock_live().keys().cloned().collect();
        for agent in live {
            self.close(
                &agent,
                Status::unavailable("the collector is shutting down"),
            );
        }
    }

    /// Stream tasks running: live streams and replaced or closed ones not
    /// yet wound down.
    pub fn open_streams(&self) -> usize {
        self.inner.open.load(Ordering::Relaxed)
    }

    /// Agents with a live stream now.
    pub fn connected(&self) -> Vec<String> {
        let mut v: Vec<String> = self.lock_live().keys().cloned().collect();
        v.sort();
        v
    }

    /// Link statistics of one agent, if it ever connected since the collector started.
    pub fn agent_stats(&self, agent_id: &str) -> Option<AgentLinkStats> {
        self.lock_stats().get(agent_id).cloned()
    }

    fn close(&self, agent_id: &str, status: Status) -> bool {
        let live = self.lock_live().remove(agent_id);
        match live {
            Some(l) => {
                // The stream's task ends on this (or already ended).
                let _ = l.close.try_send(status);
                true
            }
            None => false,
        }
    }

    fn lock_live(&self) -> std::sync::MutexGuard<'_, HashMap<String, Live>> {
        self.inner.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_stats(&self) -> std::sync::MutexGuard<'_, HashMap<String, AgentLinkStats>> {
        self.inner.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update_stats(&self, agent_id: &str, f: impl FnOnce(&mut AgentLinkStats)) {
        f(self.lock_stats().entry(agent_id.to_owned()).or_default());
    }
}

/// The agent id of the verified client certificate on this request.
fn identity<T>(req: &Request<T>) -> Result<String, Status> {
    let certs = req
        .peer_certs()
        .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
    let leaf = certs
        .first()
        .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
    ca::agent_id_of(leaf).ok_or_else(|| {
        Status::unauthenticated("the client certificate carries no portwatch agent identity")
    })
}

type SessionStream = Pin<Box<dyn Stream<Item = Result<pb::CollectorMessage, Status>> + Send>>;

#[tonic::async_trait]
impl AgentLink for Ingest {
    type SessionStream = SessionStream;

    async fn renew(
        &self,
        request: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::RenewResponse>, Status> {
        // The identity comes from the verified certificate being renewed,
        // never from the CSR (whose subject the CA ignores anyway).
        let agent_id = identity(&request)?;
        if let Err(denied) = self.inner.directory.check(&agent_id) {
            tracing::warn!(agent = %agent_id, reason = %denied, "certificate renewal refused");
            return Err(Status::permission_denied(format!(
                "agent {agent_id} may not renew: {denied}"
            )));
        }
        let Some(renewer) = self.inner.renewer.get() else {
            return Err(Status::unimplemented(
                "this collector does not renew certificates",
            ));
        };
        let resp = renewer.renew(&agent_id, &request.get_ref().csr_der)?;
        tracing::info!(agent = %agent_id, not_after_unix_ms = resp.not_after_unix_ms, "agent certificate renewed");
        Ok(Response::new(resp))
    }

    async fn session(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<SessionStream>, Status> {
        let agent_id = identity(&request)?;
        if let Err(denied) = self.inner.directory.check(&agent_id) {
            tracing::warn!(agent = %agent_id, reason = %denied, "agent stream refused");
            return Err(Status::permission_denied(format!(
                "agent {agent_id} may not connect: {denied}"
            )));
        }
        if !self
            .inner
            .limiter
            .allow(&agent_id, tokio::time::Instant::now())
        {
            tracing::warn!(agent = %agent_id, "agent stream refused: too many new streams");
            return Err(Status::unavailable(format!(
                "too many new streams for agent {agent_id} (over {} in {} s): the live one goes on; retry later",
                self.inner.config.streams_per_window,
                self.inner.config.stream_window.as_secs()
            )));
        }
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (close_tx, close_rx) = mpsc::channel(1);
        let (hint_tx, hint_rx) = mpsc::channel(4);
        let old = self.lock_live().insert(
            agent_id.clone(),
            Live {
                id,
                close: close_tx,
                hint: hint_tx,
            },
        );
        if let Some(old) = old {
            tracing::info!(agent = %agent_id, "a new stream replaces the agent's older one");
            let _ = old
                .close
                .try_send(Status::aborted("replaced by a newer stream for this agent"));
        }
        self.update_stats(&agent_id, |s| {
            s.connected = true;
            s.connected_since = Some(SystemTime::now());
            s.last_seen = Some(SystemTime::now());
            s.sessions += 1;
        });
        tracing::info!(agent = %agent_id, "agent stream open");
        let (tx, rx) = mpsc::channel(16);
        let location = self.inner.directory.location(&agent_id);
        let session = Session {
            ingest: self.clone(),
            agent_id,
            location,
            epoch: 0,
            id,
            tx,
            close: close_rx,
            hints: hint_rx,
            assigned: HashSet::new(),
            sent_version: None,
            acked: 0,
        };
        tokio::spawn(session.run(request.into_inner()));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// One agent stream's state, owned by its task.
struct Session {
    ingest: Ingest,
    agent_id: String,
    /// Where this agent's results are stored: `agent:<name>`.
    location: String,
    /// The agent's buffer epoch (from its hello): its sequence space.
    epoch: u64,
    id: u64,
    tx: mpsc::Sender<Result<pb::CollectorMessage, Status>>,
    /// Revocation, replacement or collector shutdown: end with this status.
    close: mpsc::Receiver<Status>,
    hints: mpsc::Receiver<String>,
    /// Monitor ids in the assignment last sent.
    assigned: HashSet<String>,
    sent_version: Option<u64>,
    acked: u64,
}

/// Counts a stream task in [`Ingest::open_streams`] while it runs.
struct OpenGuard(Ingest);

impl OpenGuard {
    fn new(ingest: &Ingest) -> OpenGuard {
        ingest.inner.open.fetch_add(1, Ordering::Relaxed);
        OpenGuard(ingest.clone())
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.inner.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Session {
    async fn run(mut self, inbound: Streaming<pb::AgentMessage>) {
        let _open = OpenGuard::new(&self.ingest);
        let end = self.serve(inbound).await;
        if let Err(status) = end {
            tracing::info!(agent = %self.agent_id, code = ?status.code(), error = %status.message(), "agent stream closed");
            // An agent that stopped reading must not keep the task (and its
            // stream) alive: without the status it still sees the stream end.
            let _ = tokio::time::timeout(CLOSE_SEND_TIMEOUT, self.tx.send(Err(status))).await;
        } else {
            tracing::info!(agent = %self.agent_id, "agent stream ended");
        }
        // Deregister unless a newer stream already took the slot (a revoked
        // or closed stream was deregistered by the close itself).
        let mut live = self.ingest.lock_live();
        let disconnected = match live.get(&self.agent_id) {
            Some(l) if l.id == self.id => {
                live.remove(&self.agent_id);
                true
            }
            Some(_) => false,
            None => true,
        };
        drop(live);
        if disconnected {
            self.ingest
                .update_stats(&self.agent_id, |s| s.connected = false);
        }
    }

    async fn serve(&mut self, mut inbound: Streaming<pb::AgentMessage>) -> Result<(), Status> {
        let config = self.ingest.inner.config.clone();
        let first = tokio::select! {
            m = tokio::time::timeout(config.hello_timeout, inbound.message()) => m
                .map_err(|_| Status::deadline_exceeded("no hello in time"))?
                .map_err(|s| reject(&self.agent_id, s))?,
            Some(status) = self.close.recv() => return Err(status),
        };
        let Some(pb::AgentMessage {
            msg: Some(pb::agent_message::Msg::Hello(hello)),
        }) = first
        else {
            return Err(Status::invalid_argument("the first message must be hello"));
        };
        tracing::info!(agent = %self.agent_id, version = %hello.agent_version, assignment = hello.assignment_version, backlog = hello.backlog, "agent hello");
        self.epoch = hello.buffer_epoch;
        self.ingest.update_stats(&self.agent_id, |s| {
            s.agent_version = hello.agent_version.clone();
            s.backlog = hello.backlog;
        });
        let mut changes = self.ingest.inner.assignments.changes();
        changes.mark_unchanged();
        self.push_assignment().await?;
        if let Some(reason) = self.ingest.inner.directory.rotation_due(&self.agent_id) {
            tracing::info!(agent = %self.agent_id, reason = %reason, "rotation hint sent");
            self.send(pb::collector_message::Msg::Rotate(pb::RotateHint {
                reason,
            }))
            .await?;
        }
        let mut recheck = tokio::time::interval(config.recheck);
        recheck.tick().await;
        loop {
            tokio::select! {
                Some(status) = self.close.recv() => return Err(status),
                Some(reason) = self.hints.recv() => {
                    tracing::info!(agent = %self.agent_id, reason = %reason, "rotation hint sent");
                    self.send(pb::collector_message::Msg::Rotate(pb::RotateHint { reason })).await?;
                }
                _ = recheck.tick() => {
                    if let Err(denied) = self.ingest.inner.directory.check(&self.agent_id) {
                        return Err(Status::permission_denied(format!(
                            "agent {} may no longer connect: {denied}", self.agent_id
                        )));
                    }
                }
                changed = changes.changed() => {
                    if changed.is_ok() {
                        self.push_assignment().await?;
                    }
                }
                m = inbound.message() => {
                    let Some(m) = m.map_err(|s| reject(&self.agent_id, s))? else {
                        return Ok(());
                    };
                    self.ingest.update_stats(&self.agent_id, |s| s.last_seen = Some(SystemTime::now()));
                    match m.msg {
                        Some(pb::agent_message::Msg::Results(batch)) => {
                            // Batches already waiting share one write and
                            // one fsync (the store's cost is mostly the
                            // fsync); the ack then covers them all.
                            // A malformed batch is rejected whole, after
                            // the good ones before it are stored and acked.
                            let mut poisoned = check_batch(&batch).err();
                            let mut batches = Vec::new();
                            if poisoned.is_none() {
                                batches.push(batch);
                            }
                            let mut after = None;
                            while poisoned.is_none() && batches.len() < MAX_COALESCED_BATCHES {
                                // A zero timeout polls once: only what is already here.
                                match tokio::time::timeout(Duration::ZERO, inbound.message()).await {
                                    Ok(Ok(Some(pb::AgentMessage {
                                        msg: Some(pb::agent_message::Msg::Results(b)),
                                    }))) => match check_batch(&b) {
                                        Ok(()) => batches.push(b),
                                        Err(why) => poisoned = Some(why),
                                    },
                                    Ok(next) => {
                                        after = Some(next);
                                        break;
                                    }
                                    Err(_) => break,
                                }
                            }
                            if !batches.is_empty() {
                                self.on_batches(batches).await?;
                            }
                            if let Some(why) = poisoned {
                                tracing::warn!(agent = %self.agent_id, error = %why, "malformed result batch rejected; nothing of it stored or acked");
                                return Err(Status::invalid_argument(format!("result batch rejected: {why}")));
                            }
                            match after {
                                None => {}
                                Some(Ok(None)) => return Ok(()),
                                Some(Err(s)) => return Err(reject(&self.agent_id, s)),
                                Some(Ok(Some(m))) => self.on_other(m)?,
                            }
                        }
                        other => self.on_other(pb::AgentMessage { msg: other })?,
                    }
                }
            }
        }
    }

    /// Anything but a result batch, after the hello.
    fn on_other(&mut self, m: pb::AgentMessage) -> Result<(), Status> {
        match m.msg {
            Some(pb::agent_message::Msg::Heartbeat(hb)) => {
                self.ingest.update_stats(&self.agent_id, |s| {
                    s.backlog = hb.backlog;
                    if let Some(h) = &hb.health {
                        s.health = Some(h.into());
                    }
                });
                Ok(())
            }
            Some(pb::agent_message::Msg::Hello(_)) => {
                Err(Status::invalid_argument("hello sent twice"))
            }
            Some(pb::agent_message::Msg::Results(_)) => {
                Err(Status::internal("a result batch was not handled"))
            }
            None => Err(Status::invalid_argument("empty agent message")),
        }
    }

    /// Sends to the agent; a close (revocation, replacement) wins over an
    /// agent that does not read.
    async fn send(&mut self, msg: pb::collector_message::Msg) -> Result<(), Status> {
        tokio::select! {
            r = self.tx.send(Ok(pb::CollectorMessage { msg: Some(msg) })) => {
                r.map_err(|_| Status::cancelled("the agent went away"))
            }
            Some(status) = self.close.recv() => Err(status),
        }
    }

    async fn push_assignment(&mut self) -> Result<(), Status> {
        let a = self.ingest.inner.assignments.assignment(&self.agent_id);
        if self.sent_version == Some(a.version) {
            return Ok(());
        }
        self.sent_version = Some(a.version);
        self.assigned = a.monitors.iter().map(|m| m.id.clone()).collect();
        tracing::info!(agent = %self.agent_id, version = a.version, monitors = a.monitors.len(), "assignment sent");
        self.send(pb::collector_message::Msg::Assignment(a)).await
    }

    /// Stores batches (in order, as one transaction), then acks through the
    /// highest seq among them.
    async fn on_batches(&mut self, batches: Vec<pb::ResultBatch>) -> Result<(), Status> {
        let mut high = self.acked;
        let mut keep = Vec::new();
        let mut gaps = Vec::new();
        let mut dropped = 0u64;
        for batch in batches {
            for sr in batch.results {
                high = high.max(sr.seq);
                match sr.result {
                    Some(r) if self.assigned.contains(&r.monitor_id) => keep.push(Sample {
                        monitor_id: r.monitor_id.clone(),
                        location: self.location.clone(),
                        seq: sr.seq,
                        result: r,
                    }),
                    _ => dropped += 1,
                }
            }
            for g in batch.gaps {
                high = high.max(g.to_seq);
                gaps.push(SourceGap {
                    location: self.location.clone(),
                    from_seq: g.from_seq,
                    to_seq: g.to_seq,
                    count: g.count,
                    from_ts_ms: None,
                    to_ts_ms: None,
                });
            }
        }
        if dropped > 0 {
            tracing::warn!(agent = %self.agent_id, dropped, "results for monitors not assigned to this agent dropped");
        }
        let store = Arc::clone(&self.ingest.inner.store);
        let agent = self.agent_id.clone();
        let n_gaps = gaps.len() as u64;
        let now_ms = crate::state::unix_ms(SystemTime::now());
        let epoch = self.epoch;
        let outcome =
            tokio::task::spawn_blocking(move || store.ingest(&agent, epoch, now_ms, &keep, &gaps))
                .await
                .map_err(|e| Status::internal(format!("storing results: {e}")))?
                .map_err(|e| {
                    tracing::error!(agent = %self.agent_id, error = %e, "storing results failed");
                    Status::unavailable("the collector could not store results")
                })?;
        if outcome.expired + outcome.rejected > 0 {
            tracing::warn!(agent = %self.agent_id, expired = outcome.expired, future = outcome.rejected, "results outside the stored time range acked without storing");
        }
        self.acked = high;
        self.ingest.update_stats(&self.agent_id, |s| {
            s.stored += outcome.stored;
            s.duplicates += outcome.duplicates;
            s.dropped_unassigned += dropped;
            s.gaps += n_gaps;
            s.acked_through = high;
        });
        self.send(pb::collector_message::Msg::Ack(pb::Ack {
            durable_through_seq: high,
        }))
        .await
    }
}

/// What no agent's buffer can produce: a seq of 0, seqs not increasing
/// within a batch, a result without its body or monitor, a status this
/// collector does not know, a gap that ends before it begins. One such entry
/// makes the whole batch suspect: it is rejected (the agent keeps it and
/// retries), never half stored. A seq jump is not checked here: seqs are the
/// agent's own, and only its watermark would suffer.
///
/// Public, though hidden, only as the entry point of the `proto` fuzz target
/// (`tests/fuzz`).
#[doc(hidden)]
pub fn check_batch(batch: &pb::ResultBatch) -> Result<(), String> {
    let mut last = 0u64;
    for (i, sr) in batch.results.iter().enumerate() {
        if sr.seq <= last {
            return Err(if sr.seq == 0 {
                format!("result {i} has seq 0")
            } else {
                format!("result {i}: seq {} after seq {last}", sr.seq)
            });
        }
        last = sr.seq;
        let Some(r) = &sr.result else {
            return Err(format!("result {i} (seq {}) has no body", sr.seq));
        };
        if r.monitor_id.is_empty() {
            return Err(format!("result {i} (seq {}) names no monitor", sr.seq));
        }
        if !matches!(
            pb::Status::try_from(r.status),
            Ok(pb::Status::Up | pb::Status::Degraded | pb::Status::Down)
        ) {
            return Err(format!(
                "result {i} (seq {}) has status {}, not up, degraded or down",
                sr.seq, r.status
            ));
        }
    }
    for (i, g) in batch.gaps.iter().enumerate() {
        if g.from_seq == 0 || g.to_seq < g.from_seq {
            return Err(format!(
                "gap {i} runs from seq {} to {}",
                g.from_seq, g.to_seq
            ));
        }
    }
    Ok(())
}

/// The status an undecodable or oversized agent message ends the stream with.
fn reject(agent_id: &str, s: Status) -> Status {
    tracing::warn!(agent = %agent_id, code = ?s.code(), error = %s.message(), "bad message from agent");
    match s.code() {
        // tonic reports an oversized message as OutOfRange.
        tonic::Code::OutOfRange | tonic::Code::ResourceExhausted => {
            Status::resource_exhausted(format!("message rejected: {}", s.message()))
        }
        _ => s,
    }
}
