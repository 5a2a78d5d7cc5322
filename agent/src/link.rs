//! The agent's link to its collector: one mutual-TLS gRPC stream
//! (`AgentLink.Session`) that brings assignments and acks down and carries
//! results up.
//!
//! Data flow:
//! ```text
//! scheduler --results--> appender --append (fsync)--> ResultBuffer
//!                                                        | read_after(last sent)
//! collector <--ResultBatch (<= max_batch, window)-- sender
//! collector --Ack N--> buffer.ack_through(N)
//! collector --Assignment--> spec_from_proto --> scheduler.update
//! ```
//! - A result counts as produced only once the buffer has fsynced it; results
//!   arriving within [`LinkConfig::append_linger`] share one append (one fsync).
//! - The scheduler and the appender run whether or not the collector is
//!   reachable: results pile up in the buffer and are sent, oldest first with
//!   their original timestamps, after the next connect. Everything not acked
//!   is sent again on every new stream; the collector deduplicates.
//! - At most [`LinkConfig::window`] batches are unacked at once (backpressure).
//! - Errors are transient (unreachable, reset, timeouts, a stream closed or
//!   replaced: reconnect with exponential backoff and jitter) or fatal (the
//!   collector refused this agent, or TLS rejected a certificate: stop and say so).
//! - With [`Link::with_saved_assignment`], every assignment applied is saved
//!   (see `crate::assignment`), and at start the saved one is loaded and runs
//!   at once, before the collector is reached: a restart during a collector
//!   outage costs no checks. Its `public_only` is restored before the first
//!   check, and `Hello` reports its version (the version the agent runs); the
//!   collector sends its current assignment on every new stream regardless,
//!   which replaces the restored one. A saved assignment that cannot be read
//!   is logged and ignored: the agent starts empty and waits for the collector.
//! - With [`Link::with_rotation`], the agent certificate is renewed over the
//!   link (`Renew`, a fresh key each time) at a jittered 70-90 % of its
//!   remaining lifetime; the new pair is persisted, then used from the next connect on
//!   (an established stream is not interrupted).

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use portwatch_proto::v1 as pb;
use portwatch_proto::v1::agent_link_client::AgentLinkClient;
use prost::Message;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::assignment::SavedAssignment;
use crate::buffer::{BufferError, ResultBuffer};
use crate::check::spec_from_proto;
use crate::scheduler::{
    Executor, FirstRun, Monitor, ScheduleError, ScheduledResult, Scheduler, StatsProbe,
};

/// Where the collector is and who this agent is.
#[derive(Clone)]
pub struct LinkIdentity {
    /// The collector's agent address, `host:port`.
    pub collector: String,
    /// The name the collector's certificate must carry (DNS name or IP).
    pub server_name: String,
    /// This agent's certificate (PEM), issued by the collector's CA.
    pub cert_pem: String,
    /// This agent's private key (PEM).
    pub key_pem: String,
    /// The collector's CA (PEM): the only root trusted for the collector.
    pub ca_pem: String,
}

impl std::fmt::Debug for LinkIdentity {
    // Never print the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkIdentity")
            .field("collector", &self.collector)
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// Timings and limits of the link. `Default` is what the agent daemon uses.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// First reconnect delay; each further attempt waits `backoff_factor` times
    /// longer, up to `backoff_max`, each delay +-`backoff_jitter` (a fraction).
    pub backoff_base: Duration,
    pub backoff_factor: f64,
    pub backoff_jitter: f64,
    pub backoff_max: Duration,
    /// How often a heartbeat (with the backlog) goes up on an open stream.
    pub heartbeat: Duration,
    /// Most results in one `ResultBatch` (and in one buffer append).
    pub max_batch: usize,
    /// Most batches sent and not yet acked.
    pub window: usize,
    /// Results arriving within this time share one buffer append (one fsync).
    pub append_linger: Duration,
    /// TCP + TLS connect timeout.
    pub connect_timeout: Duration,
    /// How long the collector may take to send the assignment after hello.
    pub assignment_timeout: Duration,
    /// Most checks the scheduler runs at once.
    pub max_in_flight: usize,
    /// On shutdown: how long in-flight checks may finish, and then how long
    /// the link may spend sending what is buffered before it closes.
    pub shutdown_grace: Duration,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            backoff_base: Duration::from_secs(1),
            backoff_factor: 1.6,
            backoff_jitter: 0.2,
            backoff_max: Duration::from_secs(120),
            heartbeat: Duration::from_secs(20),
            max_batch: 500,
            window: 4,
            append_linger: Duration::from_millis(20),
            connect_timeout: Duration::from_secs(10),
            assignment_timeout: Duration::from_secs(15),
            max_in_flight: 256,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// The link as the CLI shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkStatus {
    /// A stream is open and the assignment was received.
    pub connected: bool,
    /// The last error that ended a stream or a connect attempt.
    pub last_error: Option<String>,
    /// Results in the buffer (not yet acked).
    pub backlog: u64,
    /// Highest seq the collector acked.
    pub acked_through: u64,
    /// Version of the assignment running now (0 = none yet).
    pub assignment_version: u64,
    /// Monitors running now.
    pub monitors: usize,
    /// Monitor specs from the collector this agent could not run, ever.
    pub bad_monitors: u64,
    /// The assignment running now came from disk at start, not (yet) from
    /// the collector.
    pub restored: bool,
    /// Results that could not be written to the buffer, ever (lost).
    pub append_failures: u64,
    /// Streams established, ever.
    pub sessions: u64,
}

/// Why the link stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(
        "the collector refused this agent ({code:?}: {message}); if it was revoked or its certificate expired, re-enroll with a new token"
    )]
    Refused { code: tonic::Code, message: String },
    #[error(
        "TLS with the collector failed: {0}; check the agent certificate and the collector CA, or re-enroll"
    )]
    Tls(String),
    #[error("invalid link configuration: {0}")]
    Config(String),
    #[error("scheduler: {0}")]
    Scheduler(#[from] ScheduleError),
}

/// How one connect attempt or stream ended.
#[derive(Debug)]
enum Ended {
    /// Shutdown was asked and the stream closed cleanly.
    Stopped,
    Transient(String),
    Fatal(LinkError),
}

/// Persists a renewed identity (key PEM, certificate PEM) before it is used.
pub type PersistIdentity = Arc<dyn Fn(&str, &str) -> Result<(), String> + Send + Sync>;

/// The agent link. Build it with [`Link::new`], read its status with
/// [`Link::status`], then [`Link::run`] it.
pub struct Link {
    identity: LinkIdentity,
    buffer: Arc<dyn ResultBuffer>,
    config: LinkConfig,
    status: Arc<watch::Sender<LinkStatus>>,
    /// Where renewed identities are saved; `None`: no rotation.
    rotation: Option<PersistIdentity>,
    /// Most results per batch now: halved each time the collector rejects a
    /// message as too large, so a batch of large results still gets through.
    batch_limit: AtomicUsize,
    /// The collector's `RotateHint`: wakes the renewal loop early.
    rotate_now: Arc<Notify>,
    /// Set when an assignment says this agent is a public location (see
    /// `probe::policy::Tightenable`); never cleared.
    public_only: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// Where assignments are saved and restored from; `None`: not kept.
    saved: Option<SavedAssignment>,
    /// SHA-256 of the assignment last saved (or restored), so a resend of
    /// the same one is not written again.
    saved_digest: std::sync::Mutex<Option<Vec<u8>>>,
}

impl Link {
    /// A link that authenticates as `identity` and streams what `buffer` holds.
    pub fn new(identity: LinkIdentity, buffer: Arc<dyn ResultBuffer>, config: LinkConfig) -> Link {
        let backlog = buffer.stats().records;
        let (status, _) = watch::channel(LinkStatus {
            backlog,
            ..LinkStatus::default()
        });
        Link {
            identity,
            buffer,
            batch_limit: AtomicUsize::new(config.max_batch.max(1)),
            config,
            status: Arc::new(status),
            rotation: None,
            rotate_now: Arc::new(Notify::new()),
            public_only: None,
            saved: None,
            saved_digest: std::sync::Mutex::new(None),
        }
    }

    /// Saves every assignment applied into `saved` and, at start, resumes
    /// the one saved there (see the module docs).
    pub fn with_saved_assignment(mut self, saved: SavedAssignment) -> Link {
        self.saved = Some(saved);
        self
    }

    /// Lets assignments tighten the engine's address policy: `switch` is the
    /// one a `probe::policy::Tightenable` reads.
    pub fn with_public_only_switch(mut self, switch: Arc<std::sync::atomic::AtomicBool>) -> Link {
        self.public_only = Some(switch);
        self
    }

    /// Renews the certificate before it expires and hands each new key and
    /// certificate to `persist` (which must store them durably) before use.
    pub fn with_rotation(mut self, persist: PersistIdentity) -> Link {
        self.rotation = Some(persist);
        self
    }

    /// A live view of the link's status.
    pub fn status(&self) -> watch::Receiver<LinkStatus> {
        self.status.subscribe()
    }

    /// Runs the scheduler with `executor` and keeps the stream to the collector
    /// up until `shutdown` completes (Ok) or a fatal error (Err). Either way
    /// the scheduler is stopped (in-flight checks may finish within
    /// `shutdown_grace`) and every result it produced is in the buffer; on
    /// shutdown the link also tries, within `shutdown_grace`, to send what is
    /// buffered before it closes the stream. Nothing unacked is ever deleted.
    pub async fn run<E: Executor>(
        self,
        executor: E,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), LinkError> {
        let mut endpoint = endpoint(&self.identity, &self.config)?;
        let (res_tx, res_rx) = mpsc::channel(1024);
        // Restored before the scheduler exists: its public-only flag is set
        // before any check can run, and its monitors start at their phases.
        let restored = self.restore();
        let resumed = !restored.is_empty();
        let scheduler = Scheduler::spawn(restored, executor, self.config.max_in_flight, res_tx)?;
        let probe = scheduler.probe();
        let (stop_tx, stop_rx) = watch::channel(false);
        let stop_tx = Arc::new(stop_tx);
        // Should this future be dropped rather than run to the end, the
        // scheduler still stops and the appender still drains into the buffer.
        let _stop_on_drop = StopOnDrop(Arc::clone(&stop_tx));
        let on_shutdown = {
            let stop_tx = Arc::clone(&stop_tx);
            tokio::spawn(async move {
                shutdown.await;
                let _ = stop_tx.send(true);
            })
        };
        // The scheduler's owner: applies assignments, and on stop drains it.
        let (mon_tx, mut mon_rx) = mpsc::channel::<Vec<Monitor>>(4);
        let grace = self.config.shutdown_grace;
        let owner = {
            let mut stop_rx = stop_rx.clone();
            // The first set of a starting agent keeps its phases (no burst);
            // after that (or after a restored set) new and changed monitors
            // run at once.
            let mut first = if resumed {
                FirstRun::Now
            } else {
                FirstRun::AtPhase
            };
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        m = mon_rx.recv() => match m {
                            Some(monitors) => {
                                let when = std::mem::replace(&mut first, FirstRun::Now);
                                if let Err(e) = scheduler.update_with(monitors, when).await {
                                    tracing::error!(error = %e, "applying the assignment failed");
                                }
                            }
                            None => break,
                        },
                        _ = flag_set(&mut stop_rx) => break,
                    }
                }
                let report = scheduler.shutdown(grace).await;
                tracing::info!(
                    drained = report.drained,
                    cancelled = report.cancelled,
                    abandoned = report.abandoned,
                    "scheduler stopped"
                );
            })
        };
        let appended = Arc::new(Notify::new());
        let (done_tx, done_rx) = watch::channel(false);
        let appender = tokio::spawn(append_loop(
            res_rx,
            Arc::clone(&self.buffer),
            self.config.clone(),
            Arc::clone(&appended),
            Arc::clone(&self.status),
            done_tx,
        ));

        // The highest seq the collector acked; the acker deletes through it
        // off the send path, coalescing acks that arrive while it fsyncs.
        let (acked_tx, acked_rx) = watch::channel(0u64);
        let acker = tokio::spawn(ack_loop(
            acked_rx,
            Arc::clone(&self.buffer),
            Arc::clone(&self.status),
        ));

        let (id_tx, mut id_rx) = watch::channel(self.identity.clone());
        let renewer = self.rotation.clone().map(|persist| {
            tokio::spawn(renew_loop(
                self.identity.clone(),
                self.config.clone(),
                persist,
                id_tx,
                Arc::clone(&self.rotate_now),
                stop_rx.clone(),
            ))
        });

        let mut backoff = Backoff::new(&self.config);
        let mut stop = stop_rx.clone();
        let outcome = loop {
            if *stop.borrow() {
                break Ok(());
            }
            // A renewed certificate is used from the next connect on.
            if id_rx.has_changed().unwrap_or(false) {
                let id = id_rx.borrow_and_update().clone();
                match self::endpoint(&id, &self.config) {
                    Ok(e) => endpoint = e,
                    Err(e) => break Err(e),
                }
            }
            let mut established = false;
            let ended = self
                .session(
                    &Wiring {
                        endpoint: &endpoint,
                        mon_tx: &mon_tx,
                        appended: &appended,
                        acked: &acked_tx,
                        probe: &probe,
                    },
                    stop.clone(),
                    done_rx.clone(),
                    &mut established,
                )
                .await;
            self.status.send_modify(|s| s.connected = false);
            match ended {
                Ended::Stopped => break Ok(()),
                Ended::Fatal(e) => {
                    tracing::error!(error = %e, "agent link stopped");
                    self.status
                        .send_modify(|s| s.last_error = Some(e.to_string()));
                    break Err(e);
                }
                Ended::Transient(why) => {
                    if established {
                        backoff.reset();
                    }
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %why, retry_in_ms = delay.as_millis() as u64, "collector link down");
                    self.status.send_modify(|s| s.last_error = Some(why));
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = flag_set(&mut stop) => break Ok(()),
                    }
                }
            }
        };
        // Stop the scheduler (also on a fatal error) and let the appender put
        // every result it produced into the buffer.
        let _ = stop_tx.send(true);
        on_shutdown.abort();
        if let Some(r) = renewer {
            r.abort();
        }
        drop(mon_tx);
        let _ = owner.await;
        let _ = appender.await;
        drop(acked_tx);
        let _ = acker.await;
        let backlog = self.buffer.stats().records;
        self.status.send_modify(|s| s.backlog = backlog);
        outcome
    }

    /// One connect attempt and, if it succeeds, the stream until it ends.
    async fn session(
        &self,
        wiring: &Wiring<'_>,
        mut stop: watch::Receiver<bool>,
        mut appender_done: watch::Receiver<bool>,
        established: &mut bool,
    ) -> Ended {
        let cfg = &self.config;
        let Wiring {
            endpoint,
            mon_tx,
            appended,
            acked,
            probe,
        } = *wiring;
        // Until the stream is up, shutdown does not wait for the collector.
        let connect = tokio::select! {
            c = endpoint.connect() => c,
            _ = flag_set(&mut stop) => return Ended::Stopped,
        };
        let channel = match connect {
            Ok(c) => c,
            Err(e) => return classify_error(&e),
        };
        let mut client = AgentLinkClient::new(channel).max_decoding_message_size(16 * 1024 * 1024);
        let (out_tx, out_rx) = mpsc::channel::<pb::AgentMessage>(cfg.window + 4);
        let stats = self.buffer.stats();
        let hello = pb::Hello {
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            assignment_version: self.status.borrow().assignment_version,
            backlog: stats.records,
            buffer_epoch: stats.epoch,
        };
        let _ = out_tx
            .send(agent_msg(pb::agent_message::Msg::Hello(hello)))
            .await;
        let opened = tokio::select! {
            r = client.session(ReceiverStream::new(out_rx)) => r,
            _ = flag_set(&mut stop) => return Ended::Stopped,
        };
        let mut inbound = match opened {
            Ok(r) => r.into_inner(),
            Err(s) => return self.classify_status(&s),
        };
        let first = tokio::select! {
            m = tokio::time::timeout(cfg.assignment_timeout, inbound.message()) => m,
            _ = flag_set(&mut stop) => return Ended::Stopped,
        };
        match first {
            Err(_) => return Ended::Transient("no assignment from the collector in time".into()),
            Ok(Err(s)) => return self.classify_status(&s),
            Ok(Ok(None)) => {
                return Ended::Transient(
                    "the collector closed the stream before the assignment".into(),
                );
            }
            Ok(Ok(Some(pb::CollectorMessage {
                msg: Some(pb::collector_message::Msg::Assignment(a)),
            }))) => self.apply_assignment(a, mon_tx).await,
            Ok(Ok(Some(_))) => {
                return Ended::Transient(
                    "the collector sent something before the assignment".into(),
                );
            }
        }
        *established = true;
        self.status.send_modify(|s| {
            s.connected = true;
            s.sessions += 1;
        });
        tracing::info!(collector = %self.identity.collector, "collector link up");

        // Sent and not yet acked: each batch's highest seq, oldest first.
        let mut window: VecDeque<u64> = VecDeque::new();
        // Everything unacked goes again, oldest first; what was acked is
        // durable on the collector even if the buffer has not deleted it yet.
        let mut last_read = *acked.borrow();
        let mut gaps_read = 0u64;
        // Read from the buffer, not yet sent (the window was full).
        let mut ready: VecDeque<Batch> = VecDeque::new();
        let mut heartbeat = tokio::time::interval(cfg.heartbeat);
        heartbeat.tick().await;
        let mut drain_until: Option<Instant> = None;
        loop {
            while window.len() < cfg.window {
                if ready.is_empty() {
                    // One buffer read for all the room in the window: each
                    // read costs more than its size (it waits on fsyncs).
                    let room = cfg.window - window.len();
                    match self.read_batches(last_read, gaps_read, room).await {
                        Ok(batches) => ready.extend(batches),
                        Err(e) => {
                            // The buffer still holds the results: retry on the next stream.
                            return Ended::Transient(format!("reading the result buffer: {e}"));
                        }
                    }
                    let Some(last) = ready.back() else { break };
                    last_read = last_read.max(last.last_record);
                    gaps_read = gaps_read.max(last.last_gap);
                }
                let Some(batch) = ready.pop_front() else {
                    break;
                };
                // Only undecodable records: nothing to send, read on.
                let Some(msg) = batch.msg else { continue };
                window.push_back(batch.high);
                if out_tx
                    .send(agent_msg(pb::agent_message::Msg::Results(msg)))
                    .await
                    .is_err()
                {
                    return Ended::Transient("the stream to the collector closed".into());
                }
            }
            if let Some(until) = drain_until {
                let all_sent = *appender_done.borrow() && window.is_empty();
                if all_sent || Instant::now() >= until {
                    // Dropping the sender half-closes the stream: a clean end.
                    drop(out_tx);
                    tracing::info!(
                        backlog = self.buffer.stats().records,
                        "collector link closed for shutdown"
                    );
                    return Ended::Stopped;
                }
            }
            tokio::select! {
                m = inbound.message() => match m {
                    Ok(Some(msg)) => match msg.msg {
                        Some(pb::collector_message::Msg::Assignment(a)) => {
                            self.apply_assignment(a, mon_tx).await;
                        }
                        Some(pb::collector_message::Msg::Ack(ack)) => {
                            let through = ack.durable_through_seq;
                            while window.front().is_some_and(|&h| h <= through) {
                                window.pop_front();
                            }
                            acked.send_if_modified(|v| {
                                let newer = through > *v;
                                *v = (*v).max(through);
                                newer
                            });
                            self.status.send_modify(|s| s.acked_through = s.acked_through.max(through));
                        }
                        Some(pb::collector_message::Msg::Rotate(r)) => {
                            tracing::info!(reason = %r.reason, "the collector asks for a certificate renewal");
                            self.rotate_now.notify_one();
                        }
                        None => {}
                    },
                    Ok(None) => return Ended::Transient("the collector closed the stream".into()),
                    Err(s) => return self.classify_status(&s),
                },
                _ = appended.notified(), if window.len() < cfg.window => {}
                _ = heartbeat.tick() => {
                    let hb = pb::Heartbeat {
                        sent_at_unix_ms: unix_ms(SystemTime::now()),
                        backlog: self.buffer.stats().records,
                        health: Some(health(probe)),
                    };
                    if out_tx.send(agent_msg(pb::agent_message::Msg::Heartbeat(hb))).await.is_err() {
                        return Ended::Transient("the stream to the collector closed".into());
                    }
                }
                _ = flag_set(&mut stop), if drain_until.is_none() => {
                    drain_until = Some(Instant::now() + cfg.shutdown_grace * 2);
                }
                _ = flag_set(&mut appender_done), if drain_until.is_some() && !*appender_done.borrow() => {}
                _ = tokio::time::sleep_until(drain_until.unwrap_or_else(Instant::now)), if drain_until.is_some() => {}
            }
        }
    }

    /// Like [`classify_status`], and a message the collector found too large
    /// halves the batch size for the next attempts.
    fn classify_status(&self, s: &tonic::Status) -> Ended {
        if s.code() == tonic::Code::ResourceExhausted {
            let old = self.batch_limit.load(Ordering::Relaxed);
            let new = (old / 2).max(1);
            self.batch_limit.store(new, Ordering::Relaxed);
            tracing::warn!(
                error = %s.message(),
                batch = new,
                "the collector rejected a message as too large: sending smaller batches"
            );
        }
        classify_status(s)
    }

    /// Builds monitors from the assignment, hands them to the scheduler, and
    /// saves the assignment (when it is kept) for a restart.
    async fn apply_assignment(&self, a: pb::Assignment, mon_tx: &mpsc::Sender<Vec<Monitor>>) {
        let (monitors, bad) = self.monitors_of(&a);
        tracing::info!(
            version = a.version,
            monitors = monitors.len(),
            skipped = bad,
            "assignment received"
        );
        let count = monitors.len();
        let _ = mon_tx.send(monitors).await;
        self.status.send_modify(|s| {
            s.assignment_version = a.version;
            s.monitors = count;
            s.bad_monitors += bad;
            s.restored = false;
        });
        self.save(a).await;
    }

    /// The monitors of an assignment, and how many of its specs this agent
    /// cannot run (skipped and logged). Sets the public-only switch when the
    /// assignment says so; none at all when that switch is missing.
    fn monitors_of(&self, a: &pb::Assignment) -> (Vec<Monitor>, u64) {
        if a.public_only {
            match &self.public_only {
                Some(switch) => {
                    if !switch.swap(true, std::sync::atomic::Ordering::AcqRel) {
                        tracing::warn!(
                            "enrolled as a public location: private and special addresses are refused from now on"
                        );
                    }
                }
                None => {
                    // Running public checks without the public policy would let
                    // them reach this host's own network: run none.
                    tracing::error!(
                        "the collector says this agent is a public location, but this link cannot enforce the public address policy: no checks run"
                    );
                    return (Vec::new(), 0);
                }
            }
        }
        let mut monitors = Vec::with_capacity(a.monitors.len());
        let mut seen = std::collections::HashSet::new();
        let mut bad = 0u64;
        for m in &a.monitors {
            if !seen.insert(m.id.clone()) {
                tracing::error!(monitor = %m.id, "monitor assigned twice: the second is skipped");
                bad += 1;
                continue;
            }
            match spec_from_proto(m) {
                Ok((spec, interval)) => monitors.push(Monitor {
                    id: m.id.clone(),
                    interval,
                    spec: Arc::new(spec),
                }),
                Err(e) => {
                    tracing::error!(monitor = %m.id, error = %e, "assigned monitor cannot run: skipped");
                    bad += 1;
                }
            }
        }
        (monitors, bad)
    }

    /// The saved assignment's monitors, to run from the start (empty when
    /// none is kept, none was saved, or it cannot be read).
    fn restore(&self) -> Vec<Monitor> {
        let Some(saved) = &self.saved else {
            return Vec::new();
        };
        let a = match saved.load() {
            Ok(Some(a)) => a,
            Ok(None) => return Vec::new(),
            Err(e) => {
                tracing::error!(
                    error = %e,
                    "the saved assignment cannot be read: ignored, no checks run until the collector sends one"
                );
                return Vec::new();
            }
        };
        let (monitors, bad) = self.monitors_of(&a);
        tracing::info!(
            version = a.version,
            monitors = monitors.len(),
            skipped = bad,
            public_only = a.public_only,
            "saved assignment resumed until the collector is reached"
        );
        *self
            .saved_digest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(digest(&a));
        let count = monitors.len();
        self.status.send_modify(|s| {
            s.assignment_version = a.version;
            s.monitors = count;
            s.bad_monitors += bad;
            s.restored = true;
        });
        monitors
    }

    /// Saves `a` for a restart, unless it is the one saved already; a failure
    /// is logged (the agent runs on; a restart would resume an older one).
    async fn save(&self, a: pb::Assignment) {
        let Some(saved) = self.saved.clone() else {
            return;
        };
        let d = digest(&a);
        if self
            .saved_digest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            == Some(&d)
        {
            return;
        }
        let version = a.version;
        match tokio::task::spawn_blocking(move || saved.save(&a)).await {
            Ok(Ok(())) => {
                tracing::debug!(version, "assignment saved");
                *self
                    .saved_digest
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(d);
            }
            Ok(Err(e)) => {
                tracing::error!(version, error = %e, "saving the assignment failed")
            }
            Err(e) => tracing::error!(version, error = %e, "saving the assignment failed"),
        }
    }

    /// The next batches to send (at most `count`): buffered records after
    /// `after`, and gaps ending after `gaps_after` (with the first batch).
    /// Empty when there is nothing new.
    async fn read_batches(
        &self,
        after: u64,
        gaps_after: u64,
        count: usize,
    ) -> Result<Vec<Batch>, BufferError> {
        let buffer = Arc::clone(&self.buffer);
        let max = self.batch_limit.load(Ordering::Relaxed).max(1);
        let (records, gaps) = tokio::task::spawn_blocking(move || {
            Ok::<_, BufferError>((
                buffer.read_after(after, max.saturating_mul(count.max(1)))?,
                buffer.gaps()?,
            ))
        })
        .await
        .unwrap_or_else(|_| Ok((Vec::new(), Vec::new())))?;
        let mut gaps: Vec<pb::Gap> = gaps
            .into_iter()
            .filter(|g| g.to > gaps_after)
            .map(|g| pb::Gap {
                from_seq: g.from,
                to_seq: g.to,
                count: g.count,
            })
            .collect();
        let last_gap = gaps.iter().map(|g| g.to_seq).max().unwrap_or(gaps_after);
        let mut out = Vec::new();
        let mut records = records.into_iter().peekable();
        while records.peek().is_some() || !gaps.is_empty() {
            let chunk: Vec<_> = records.by_ref().take(max).collect();
            let last_record = chunk.last().map_or(after, |r| r.seq);
            let mut results = Vec::with_capacity(chunk.len());
            for r in chunk {
                match pb::CheckResult::decode(&*r.payload) {
                    Ok(result) => results.push(pb::SequencedResult {
                        seq: r.seq,
                        result: Some(result),
                    }),
                    // Checksummed, so this is a bug rather than a disk fault:
                    // the record cannot be sent; a later ack deletes it.
                    Err(e) => {
                        tracing::error!(seq = r.seq, error = %e, "buffered result does not decode: skipped")
                    }
                }
            }
            let gaps = std::mem::take(&mut gaps);
            let high = results
                .iter()
                .map(|r| r.seq)
                .chain(gaps.iter().map(|g| g.to_seq))
                .max()
                .unwrap_or(0);
            out.push(Batch {
                msg: (high > 0).then_some(pb::ResultBatch { results, gaps }),
                high,
                last_record,
                last_gap,
            });
        }
        Ok(out)
    }
}

/// What a stream attempt shares with the rest of the link.
#[derive(Clone, Copy)]
struct Wiring<'a> {
    endpoint: &'a Endpoint,
    /// Assignments to the scheduler's owner.
    mon_tx: &'a mpsc::Sender<Vec<Monitor>>,
    /// Signalled when results were appended to the buffer.
    appended: &'a Notify,
    /// The highest seq the collector acked, for the acker.
    acked: &'a watch::Sender<u64>,
    /// The scheduler's stats, for heartbeats.
    probe: &'a StatsProbe,
}

/// What a heartbeat says of the agent's health: its schedule (since it
/// started) and its process's memory and CPU time.
fn health(probe: &StatsProbe) -> pb::AgentHealth {
    let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    let mut h = pb::AgentHealth::default();
    if let Some(s) = probe.stats() {
        h.monitors = u32::try_from(s.monitors).unwrap_or(u32::MAX);
        h.checks_started = s.started;
        h.skipped_overlap = s.skipped_overlap;
        h.missed = s.missed;
        h.lateness_p50_us = us(s.lateness.p50);
        h.lateness_p99_us = us(s.lateness.p99);
        h.lateness_max_us = us(s.lateness.max);
    }
    let (rss_bytes, cpu_seconds) = crate::process::usage();
    h.rss_bytes = rss_bytes;
    h.cpu_seconds = cpu_seconds;
    h
}

struct Batch {
    /// `None` when every record read failed to decode.
    msg: Option<pb::ResultBatch>,
    /// The ack that covers this whole batch.
    high: u64,
    last_record: u64,
    last_gap: u64,
}

struct StopOnDrop(Arc<watch::Sender<bool>>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = self.0.send(true);
    }
}

/// Resolves once the flag is true (or its sender is gone).
async fn flag_set(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// SHA-256 of an assignment's encoding: equal assignments, equal digests.
fn digest(a: &pb::Assignment) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, &a.encode_to_vec())
        .as_ref()
        .to_vec()
}

fn agent_msg(msg: pb::agent_message::Msg) -> pb::AgentMessage {
    pb::AgentMessage { msg: Some(msg) }
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Deletes acked results from the buffer: always through the newest ack, so
/// acks that arrive during one deletion's fsync cost one more, not many.
/// Applies the last ack before it ends (when the sender is dropped).
async fn ack_loop(
    mut acked: watch::Receiver<u64>,
    buffer: Arc<dyn ResultBuffer>,
    status: Arc<watch::Sender<LinkStatus>>,
) {
    let mut applied = 0u64;
    loop {
        let open = acked.changed().await.is_ok();
        let through = *acked.borrow_and_update();
        if through > applied {
            let buf = Arc::clone(&buffer);
            match tokio::task::spawn_blocking(move || buf.ack_through(through)).await {
                Ok(Ok(removed)) => {
                    applied = through;
                    let backlog = buffer.stats().records;
                    tracing::debug!(through, removed, backlog, "acked results deleted");
                    status.send_modify(|s| s.backlog = backlog);
                }
                // Kept records are deleted by the next ack (it covers them);
                // they are not sent again, the collector has them.
                Ok(Err(e)) => tracing::error!(through, error = %e, "deleting acked results failed"),
                Err(e) => tracing::error!(through, error = %e, "deleting acked results failed"),
            }
        }
        if !open {
            break;
        }
    }
}

/// Moves scheduler results into the buffer, grouping those that arrive close
/// together into one append (one fsync). Ends when the scheduler has stopped
/// and every result is appended.
async fn append_loop(
    mut rx: mpsc::Receiver<ScheduledResult>,
    buffer: Arc<dyn ResultBuffer>,
    config: LinkConfig,
    appended: Arc<Notify>,
    status: Arc<watch::Sender<LinkStatus>>,
    done: watch::Sender<bool>,
) {
    let encode = |r: ScheduledResult| {
        r.result
            .to_proto(
                &r.monitor_id,
                unix_ms(r.scheduled_at),
                unix_ms(r.started_at),
            )
            .encode_to_vec()
    };
    let max = config.max_batch.max(1);
    while let Some(first) = rx.recv().await {
        let mut batch = vec![encode(first)];
        let deadline = Instant::now() + config.append_linger;
        while batch.len() < max {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(r)) => batch.push(encode(r)),
                Ok(None) | Err(_) => break,
            }
        }
        let n = batch.len() as u64;
        let buf = Arc::clone(&buffer);
        match tokio::task::spawn_blocking(move || buf.append(&batch)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, lost = n, "results could not be buffered");
                status.send_modify(|s| s.append_failures += n);
            }
            Err(e) => {
                tracing::error!(error = %e, lost = n, "results could not be buffered");
                status.send_modify(|s| s.append_failures += n);
            }
        }
        let backlog = buffer.stats().records;
        status.send_modify(|s| s.backlog = backlog);
        appended.notify_one();
    }
    let _ = done.send(true);
    appended.notify_one();
}

/// The tonic endpoint: mTLS with the collector CA as the only root.
fn endpoint(id: &LinkIdentity, cfg: &LinkConfig) -> Result<Endpoint, LinkError> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&id.ca_pem))
        .identity(Identity::from_pem(&id.cert_pem, &id.key_pem))
        .domain_name(id.server_name.clone());
    Endpoint::from_shared(format!("https://{}", id.collector))
        .map_err(|e| LinkError::Config(format!("collector address {:?}: {e}", id.collector)))?
        .tls_config(tls)
        .map_err(|e| LinkError::Config(format!("TLS settings: {}", error_chain(&e))))
        .map(|e| {
            e.connect_timeout(cfg.connect_timeout)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(30))
                .keep_alive_timeout(Duration::from_secs(10))
                .keep_alive_while_idle(true)
        })
}

/// Renews the agent certificate at a jittered 70-90 % of each certificate's
/// lifetime, retrying on failure until it expires (then the operator must
/// re-enroll: said once, loudly).
/// A collector's rotation hint renews at once, but never more often than
/// this: a confused (or hostile) collector cannot make the agent spin.
const MIN_HINTED_RENEWAL_GAP: Duration = Duration::from_secs(60);

async fn renew_loop(
    mut identity: LinkIdentity,
    cfg: LinkConfig,
    persist: PersistIdentity,
    id_tx: watch::Sender<LinkIdentity>,
    rotate_now: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    let mut last_renewal: Option<tokio::time::Instant> = None;
    loop {
        let Some((_, not_after)) = validity(&identity.cert_pem) else {
            tracing::error!("the agent certificate cannot be read: no renewal");
            return;
        };
        // 70-90 % of the time the certificate has left: its lifetime when it
        // is fresh. Measured from now, not from notBefore, which the CA
        // backdates for clock skew (that would make short lifetimes due at once).
        let left = not_after
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        let due = tokio::time::Instant::now() + left.mul_f64(rand::random_range(0.7..0.9));
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(due) => break,
                _ = rotate_now.notified() => {
                    let recent = last_renewal.is_some_and(|t| t.elapsed() < MIN_HINTED_RENEWAL_GAP);
                    if recent {
                        tracing::info!("rotation hint ignored: renewed less than a minute ago");
                    } else {
                        break;
                    }
                }
                _ = flag_set(&mut stop) => return,
            }
        }
        loop {
            match renew_once(&identity, &cfg).await {
                Ok(renewed) => {
                    if let Err(e) = persist(&renewed.key_pem, &renewed.cert_pem) {
                        tracing::error!(error = %e, "saving the renewed certificate failed: it is used until the agent restarts");
                    }
                    let until = validity(&renewed.cert_pem)
                        .map(|(_, na)| unix_ms(na))
                        .unwrap_or(0);
                    tracing::info!(not_after_unix_ms = until, "agent certificate renewed");
                    last_renewal = Some(tokio::time::Instant::now());
                    identity = renewed;
                    let _ = id_tx.send(identity.clone());
                    break;
                }
                Err(e) => {
                    let left = not_after
                        .duration_since(SystemTime::now())
                        .unwrap_or_default();
                    if left.is_zero() {
                        tracing::error!(error = %e, "the agent certificate expired before it could be renewed: re-enroll this agent with a new token");
                        return;
                    }
                    let delay = (left / 10).clamp(Duration::from_secs(1), Duration::from_secs(300));
                    tracing::warn!(error = %e, retry_in_s = delay.as_secs(), "certificate renewal failed");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = flag_set(&mut stop) => return,
                    }
                }
            }
        }
    }
}

/// One renewal: a fresh key, a CSR, `Renew` over mTLS with the current
/// certificate, and a check that the answer certifies the new key.
async fn renew_once(id: &LinkIdentity, cfg: &LinkConfig) -> Result<LinkIdentity, String> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| format!("key: {e}"))?;
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .map_err(|e| format!("csr: {e}"))?;
    let channel = endpoint(id, cfg)
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| error_chain(&e))?;
    let resp = AgentLinkClient::new(channel)
        .renew(pb::RenewRequest {
            csr_der: csr.der().to_vec(),
        })
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
        .into_inner();
    let (_, cert) = x509_parser::parse_x509_certificate(&resp.cert_der)
        .map_err(|e| format!("the renewed certificate is unreadable: {e}"))?;
    if cert.tbs_certificate.subject_pki.raw != rcgen::PublicKeyData::subject_public_key_info(&key) {
        return Err("the renewed certificate is not for the new key".into());
    }
    Ok(LinkIdentity {
        cert_pem: crate::identity::cert_to_pem(&resp.cert_der),
        key_pem: key.serialize_pem(),
        ..id.clone()
    })
}

/// A certificate's validity (notBefore, notAfter).
fn validity(cert_pem: &str) -> Option<(SystemTime, SystemTime)> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    let at = |t: i64| UNIX_EPOCH + Duration::from_secs(u64::try_from(t).unwrap_or(0));
    Some((
        at(cert.validity().not_before.timestamp()),
        at(cert.validity().not_after.timestamp()),
    ))
}

/// Exponential backoff with jitter: base, x factor, capped, +-jitter.
struct Backoff {
    base: Duration,
    factor: f64,
    jitter: f64,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(cfg: &LinkConfig) -> Backoff {
        Backoff {
            base: cfg.backoff_base,
            factor: cfg.backoff_factor.max(1.0),
            jitter: cfg.backoff_jitter.clamp(0.0, 1.0),
            max: cfg.backoff_max,
            next: cfg.backoff_base,
        }
    }

    fn reset(&mut self) {
        self.next = self.base;
    }

    fn next_delay(&mut self) -> Duration {
        use rand::Rng;
        let d = self.next;
        self.next = self.next.mul_f64(self.factor).min(self.max);
        let j = if self.jitter > 0.0 {
            rand::rng().random_range(-self.jitter..=self.jitter)
        } else {
            0.0
        };
        d.mul_f64(1.0 + j).min(self.max)
    }
}

/// Sorts a failed RPC: the collector refusing this agent, or TLS rejecting a
/// certificate, is fatal; anything else (unavailable, reset, timeout, a
/// stream replaced or closed) is worth retrying.
fn classify_status(s: &tonic::Status) -> Ended {
    match s.code() {
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => {
            Ended::Fatal(LinkError::Refused {
                code: s.code(),
                message: s.message().to_owned(),
            })
        }
        _ => match tls_rejection(s) {
            Some(why) => Ended::Fatal(LinkError::Tls(why)),
            None => Ended::Transient(format!("{:?}: {}", s.code(), error_chain(s))),
        },
    }
}

fn classify_error(e: &(dyn std::error::Error + 'static)) -> Ended {
    match tls_rejection(e) {
        Some(why) => Ended::Fatal(LinkError::Tls(why)),
        None => Ended::Transient(error_chain(e)),
    }
}

/// A certificate problem anywhere in the error's source chain: our
/// verification of the collector failed, or the collector sent a
/// certificate alert (TLS 1.3 reports a rejected client certificate on the
/// first RPC, as an alert buried under "transport error").
fn tls_rejection(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<rustls::Error>()
            && fatal_rustls(r)
        {
            return Some(r.to_string());
        }
        // io::Error::source() skips the wrapped error itself: look inside.
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(r) = inner.downcast_ref::<rustls::Error>()
            && fatal_rustls(r)
        {
            return Some(r.to_string());
        }
        // tokio-rustls can hand the alert up as text only.
        let text = err.to_string();
        if let Some(alert) = text.strip_prefix("received fatal alert: ")
            && FATAL_ALERTS.contains(&alert.trim())
        {
            return Some(text);
        }
        if text.starts_with("invalid peer certificate") {
            return Some(text);
        }
        cur = err.source();
    }
    None
}

/// The alerts (by rustls' names) that say a certificate was refused: no
/// retry can fix them.
const FATAL_ALERTS: &[&str] = &[
    "BadCertificate",
    "UnsupportedCertificate",
    "CertificateRevoked",
    "CertificateExpired",
    "CertificateUnknown",
    "UnknownCA",
    "CertificateRequired",
    "AccessDenied",
    "HandshakeFailure",
    "DecryptError",
];

fn fatal_rustls(e: &rustls::Error) -> bool {
    match e {
        rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => true,
        rustls::Error::AlertReceived(a) => FATAL_ALERTS.contains(&format!("{a:?}").as_str()),
        _ => false,
    }
}

/// "outer: inner: innermost", skipping repeats.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = Some(e);
    while let Some(err) = cur {
        let s = err.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = err.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_by_the_factor_within_jitter_and_caps() {
        let cfg = LinkConfig {
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(120),
            ..LinkConfig::default()
        };
        let mut b = Backoff::new(&cfg);
        let mut nominal = 1.0f64;
        for _ in 0..20 {
            let d = b.next_delay().as_secs_f64();
            assert!(
                d >= nominal * 0.8 - 1e-9 && d <= (nominal * 1.2).min(120.0) + 1e-9,
                "{d} vs {nominal}"
            );
            nominal = (nominal * 1.6).min(120.0);
        }
        assert!(nominal >= 120.0);
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(1200));
    }

    #[test]
    fn refusals_and_certificate_alerts_are_fatal_the_rest_transient() {
        assert!(matches!(
            classify_status(&tonic::Status::permission_denied("revoked")),
            Ended::Fatal(LinkError::Refused { .. })
        ));
        assert!(matches!(
            classify_status(&tonic::Status::unauthenticated("no cert")),
            Ended::Fatal(_)
        ));
        assert!(matches!(
            classify_status(&tonic::Status::unavailable("down")),
            Ended::Transient(_)
        ));
        let alert = std::io::Error::other(rustls::Error::AlertReceived(
            rustls::AlertDescription::UnknownCA,
        ));
        assert!(matches!(
            classify_error(&alert),
            Ended::Fatal(LinkError::Tls(_))
        ));
        // What tokio-rustls hands up when the collector rejects our certificate.
        let text = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "received fatal alert: DecryptError",
        );
        assert!(matches!(
            classify_error(&text),
            Ended::Fatal(LinkError::Tls(_))
        ));
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(matches!(classify_error(&refused), Ended::Transient(_)));
    }
}
