//! The agent link end to end over real mutual TLS on 127.0.0.1: the agent's
//! `Link` (scheduler, sled buffer, stream) against the collector's `Ingest`
//! service and redb `Store`, with certificates from the collector's own
//! CA. Each collector runs on its own tokio runtime so a test can kill it
//! outright (every connection dropped, no goodbye) and start it again.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use portwatch_agent::buffer::{DEFAULT_MAX_BYTES, ResultBuffer, SledBuffer};
use portwatch_agent::link::{Link, LinkConfig, LinkError, LinkIdentity, LinkStatus};
use portwatch_agent::probe::Engine;
use portwatch_agent::resolve::Resolver;
use portwatch_collector::ca::Ca;
use portwatch_collector::ingest::{
    AgentDirectory, Denied, Ingest, IngestConfig, StaticAssignments,
};
use portwatch_collector::store::{RedbStore, ResultQuery, Store, StoreConfig, StoredResult};
use portwatch_proto::v1 as pb;
use portwatch_proto::v1::agent_link_client::AgentLinkClient;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig};
use tonic::{Code, Streaming};

const AGENT: &str = "agent-1";

fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// The collector's CA and server certificate, in a temp dir.
struct Pki {
    _dir: tempfile::TempDir,
    ca: Ca,
    server_cert_pem: String,
    server_key_pem: String,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path()).unwrap();
        let (server, server_key_pem) = ca
            .issue_server(
                &["localhost".into(), "127.0.0.1".into()],
                Duration::from_secs(3600),
            )
            .unwrap();
        Pki {
            _dir: dir,
            ca,
            server_cert_pem: server.cert_pem,
            server_key_pem,
        }
    }

    /// A fresh agent key and a certificate for it, as enrollment would issue.
    fn agent(&self, agent_id: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let csr = rcgen::CertificateParams::default()
            .serialize_request(&key)
            .unwrap();
        let issued = self
            .ca
            .issue_agent(csr.der(), agent_id, Duration::from_secs(3600))
            .unwrap();
        (issued.cert_pem, key.serialize_pem())
    }

    fn identity(&self, addr: SocketAddr, agent_id: &str) -> LinkIdentity {
        let (cert_pem, key_pem) = self.agent(agent_id);
        LinkIdentity {
            collector: addr.to_string(),
            server_name: "localhost".into(),
            cert_pem,
            key_pem,
            ca_pem: self.ca.cert_pem().to_owned(),
        }
    }
}

/// Agents allowed to connect; removing one is revoking it.
struct Directory {
    allowed: Mutex<HashSet<String>>,
}

impl Directory {
    fn with(agents: &[&str]) -> Arc<Directory> {
        Arc::new(Directory {
            allowed: Mutex::new(agents.iter().map(|a| a.to_string()).collect()),
        })
    }

    fn deny(&self, agent_id: &str) {
        self.allowed.lock().unwrap().remove(agent_id);
    }
}

impl AgentDirectory for Directory {
    fn check(&self, agent_id: &str) -> Result<(), Denied> {
        if self.allowed.lock().unwrap().contains(agent_id) {
            Ok(())
        } else {
            Err(Denied {
                reason: "unknown or revoked".into(),
            })
        }
    }
}

/// A collector (agent port only) on its own runtime.
struct Collector {
    rt: Option<tokio::runtime::Runtime>,
    addr: SocketAddr,
    ingest: Ingest,
    store: Arc<RedbStore>,
}

impl Collector {
    async fn start(
        pki: &Pki,
        bind: SocketAddr,
        store_dir: &Path,
        directory: Arc<Directory>,
        assignments: Arc<StaticAssignments>,
        config: IngestConfig,
    ) -> Collector {
        let store = Arc::new(open_store(store_dir).await);
        let ingest = Ingest::new(store.clone(), directory, assignments, config);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let ca_pem = pki.ca.cert_pem().to_owned();
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(
                format!("{}{}", pki.server_cert_pem, ca_pem),
                &pki.server_key_pem,
            ))
            .client_ca_root(Certificate::from_pem(&ca_pem))
            // Enrollment shares the port: the handler enforces the client cert.
            .client_auth_optional(true);
        let service = ingest.service();
        let (bound_tx, bound_rx) = oneshot::channel();
        rt.spawn(async move {
            // tokio sets SO_REUSEADDR, so a restart can take the same port.
            let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
            bound_tx.send(listener.local_addr().unwrap()).unwrap();
            Server::builder()
                .tls_config(tls)
                .unwrap()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
        let addr = bound_rx.await.unwrap();
        Collector {
            rt: Some(rt),
            addr,
            ingest,
            store,
        }
    }

    /// Kills the collector: its runtime goes away with every connection.
    fn kill(mut self) -> SocketAddr {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
        self.addr
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// A local TCP service to monitor: accepts and closes.
async fn target() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            drop(s);
        }
    });
    (addr, task)
}

fn monitor(id: &str, target: SocketAddr) -> pb::MonitorSpec {
    pb::MonitorSpec {
        id: id.into(),
        target: format!("tcp://{target}"),
        interval_ms: 1000,
        options: Some(pb::CheckOptions {
            timeout_ms: 500,
            ..Default::default()
        }),
    }
}

fn link_config() -> LinkConfig {
    LinkConfig {
        backoff_base: Duration::from_millis(50),
        backoff_max: Duration::from_millis(500),
        heartbeat: Duration::from_secs(1),
        connect_timeout: Duration::from_secs(2),
        assignment_timeout: Duration::from_secs(5),
        shutdown_grace: Duration::from_secs(1),
        ..LinkConfig::default()
    }
}

/// A running agent link.
struct Agent {
    task: tokio::task::JoinHandle<Result<(), LinkError>>,
    status: watch::Receiver<LinkStatus>,
    stop: Option<oneshot::Sender<()>>,
}

impl Agent {
    fn start(identity: LinkIdentity, buffer: Arc<SledBuffer>, config: LinkConfig) -> Agent {
        let link = Link::new(identity, buffer, config);
        let status = link.status();
        let (stop, stopped) = oneshot::channel::<()>();
        let engine = Arc::new(Engine::with_resolver(Resolver::literal_only()));
        let task = tokio::spawn(link.run(engine, async {
            let _ = stopped.await;
        }));
        Agent {
            task,
            status,
            stop: Some(stop),
        }
    }

    fn status(&self) -> LinkStatus {
        self.status.borrow().clone()
    }

    /// Asks for a clean shutdown and waits for the link's result.
    async fn shutdown(mut self) -> Result<(), LinkError> {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .expect("the agent shuts down within 10 s")
            .unwrap()
    }

    /// Waits for the link to stop by itself.
    async fn ended(mut self, within: Duration) -> Result<(), LinkError> {
        tokio::time::timeout(within, &mut self.task)
            .await
            .expect("the agent link stops by itself")
            .unwrap()
    }
}

/// Polls `cond` every 20 ms until it holds; fails the test after `within`.
async fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn open_buffer(dir: &Path) -> Arc<SledBuffer> {
    Arc::new(SledBuffer::open(dir, DEFAULT_MAX_BYTES).unwrap())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn hello() -> pb::AgentMessage {
    pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Hello(pb::Hello {
            agent_version: "test".into(),
            assignment_version: 0,
            backlog: 0,
            buffer_epoch: 1,
        })),
    }
}

/// A hand-driven stream (no `Link`) that starts with a hello.
async fn raw_session(
    addr: SocketAddr,
    ca_pem: &str,
    cert: Option<&(String, String)>,
) -> Result<
    (
        mpsc::Sender<pb::AgentMessage>,
        Streaming<pb::CollectorMessage>,
    ),
    tonic::Status,
> {
    raw_session_with(addr, ca_pem, cert, hello()).await
}

/// A hand-driven stream: for what the real agent never sends.
async fn raw_session_with(
    addr: SocketAddr,
    ca_pem: &str,
    cert: Option<&(String, String)>,
    first: pb::AgentMessage,
) -> Result<
    (
        mpsc::Sender<pb::AgentMessage>,
        Streaming<pb::CollectorMessage>,
    ),
    tonic::Status,
> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    if let Some((c, k)) = cert {
        tls = tls.identity(Identity::from_pem(c, k));
    }
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(16);
    tx.send(first).await.unwrap();
    let inbound = AgentLinkClient::new(channel)
        .session(ReceiverStream::new(rx))
        .await?
        .into_inner();
    Ok((tx, inbound))
}

async fn next_msg(inbound: &mut Streaming<pb::CollectorMessage>) -> pb::collector_message::Msg {
    tokio::time::timeout(Duration::from_secs(5), inbound.message())
        .await
        .expect("a message from the collector within 5 s")
        .expect("the stream is healthy")
        .expect("the stream is open")
        .msg
        .expect("a message body")
}

fn result_for(monitor_id: &str) -> pb::CheckResult {
    pb::CheckResult {
        monitor_id: monitor_id.into(),
        scheduled_at_unix_ms: now_ms(),
        started_at_unix_ms: now_ms(),
        status: pb::Status::Up as i32,
        reason: pb::Reason::Ok as i32,
        ..Default::default()
    }
}

/// Where `Directory` (no registry) files an agent's results.
const LOCATION: &str = "agent:agent-1";

/// Opens the store; a killed collector's last blocking store call may still
/// hold the file for a moment, so retry briefly.
async fn open_store(dir: &Path) -> RedbStore {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match RedbStore::open(dir, StoreConfig::default()) {
            Ok(s) => return s,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "store still open, retrying");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("opening the store: {e}"),
        }
    }
}

/// Every stored result of one monitor, oldest first.
fn results_for(store: &RedbStore, monitor: &str) -> Vec<StoredResult> {
    store.results(&ResultQuery::monitor(monitor)).unwrap()
}

/// What `AGENT` stored for `monitors`, by seq.
fn results_of_agent(store: &RedbStore, monitors: &[&str]) -> Vec<StoredResult> {
    let mut all: Vec<StoredResult> = monitors
        .iter()
        .flat_map(|m| {
            store
                .results(&ResultQuery::monitor(m).location(LOCATION))
                .unwrap()
        })
        .collect();
    all.sort_by_key(|r| r.seq);
    all
}

fn count(store: &RedbStore) -> u64 {
    store.count_results().unwrap()
}

struct Setup {
    pki: Pki,
    dirs: tempfile::TempDir,
    directory: Arc<Directory>,
    assignments: Arc<StaticAssignments>,
}

impl Setup {
    fn new() -> Setup {
        init();
        Setup {
            pki: Pki::new(),
            dirs: tempfile::tempdir().unwrap(),
            directory: Directory::with(&[AGENT, "agent-2"]),
            assignments: Arc::new(StaticAssignments::new()),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dirs.path().join(name)
    }

    async fn collector(&self, bind: SocketAddr, config: IngestConfig) -> Collector {
        Collector::start(
            &self.pki,
            bind,
            &self.path("store"),
            Arc::clone(&self.directory),
            Arc::clone(&self.assignments),
            config,
        )
        .await
    }
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_are_stored_and_acks_empty_the_agent_buffer() {
    let s = Setup::new();
    let (t, _target) = target().await;
    s.assignments
        .set(AGENT, vec![monitor("m1", t), monitor("m2", t)]);
    let c = s.collector(any_port(), IngestConfig::default()).await;
    let buffer = open_buffer(&s.path("buffer"));
    let agent = Agent::start(
        s.pki.identity(c.addr, AGENT),
        Arc::clone(&buffer),
        link_config(),
    );

    wait_until(
        "2 results per monitor stored",
        Duration::from_secs(10),
        || results_for(&c.store, "m1").len() >= 2 && results_for(&c.store, "m2").len() >= 2,
    )
    .await;
    for m in ["m1", "m2"] {
        for r in results_for(&c.store, m) {
            assert_eq!(r.location, LOCATION);
            assert_eq!(r.result.reason, pb::Reason::Ok as i32, "{:?}", r.result);
            assert_eq!(r.result.status, pb::Status::Up as i32);
            assert_eq!(r.result.address, t.to_string());
        }
    }
    wait_until(
        "acks empty the agent buffer",
        Duration::from_secs(5),
        || buffer.stats().records == 0,
    )
    .await;
    let st = agent.status();
    assert!(st.connected, "{st:?}");
    assert_eq!(st.monitors, 2);
    assert_eq!(c.ingest.connected(), [AGENT]);
    // Its heartbeat says how it keeps its schedule and what it costs.
    wait_until(
        "a heartbeat with the agent's health",
        Duration::from_secs(5),
        || {
            c.ingest
                .agent_stats(AGENT)
                .and_then(|s| s.health)
                .is_some_and(|h| h.monitors == 2 && h.checks_started >= 4)
        },
    )
    .await;
    let h = c.ingest.agent_stats(AGENT).unwrap().health.unwrap();
    assert!(h.rss_bytes > 1 << 20, "{h:?}");
    assert!(h.lateness_max_us >= h.lateness_p99_us && h.lateness_p99_us >= h.lateness_p50_us);
    assert!(h.lateness_p99_us < 1_000_000, "checks start on time: {h:?}");

    agent.shutdown().await.unwrap();
    // A clean shutdown sends what the last checks produced: everything the
    // agent ever produced is stored, once, and nothing is left behind.
    let produced = buffer.stats().next_seq - 1;
    assert_eq!(buffer.stats().records, 0);
    let seqs: Vec<u64> = results_of_agent(&c.store, &["m1", "m2"])
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(seqs, (1..=produced).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_outage_loses_and_duplicates_nothing() {
    let s = Setup::new();
    let (t, _target) = target().await;
    s.assignments
        .set(AGENT, vec![monitor("m1", t), monitor("m2", t)]);
    let c = s.collector(any_port(), IngestConfig::default()).await;
    let buffer = open_buffer(&s.path("buffer"));
    let agent = Agent::start(
        s.pki.identity(c.addr, AGENT),
        Arc::clone(&buffer),
        link_config(),
    );
    wait_until("first results stored", Duration::from_secs(10), || {
        count(&c.store) >= 2
    })
    .await;

    let killed_at = now_ms();
    let addr = c.kill();
    wait_until(
        "the agent notices the outage",
        Duration::from_secs(10),
        || !agent.status().connected,
    )
    .await;
    // The scheduler keeps checking: results pile up in the agent's buffer.
    // Counted from what was buffered at the kill: up to one check per monitor
    // was in flight then and lands afterwards with an earlier schedule, so
    // 2 more than the 5 asserted below guarantees 5 from the outage itself.
    let at_kill = buffer.stats().records;
    wait_until(
        "results buffered while down",
        Duration::from_secs(10),
        || buffer.stats().records >= at_kill + 7,
    )
    .await;

    let restarted_at = now_ms();
    let c = s.collector(addr, IngestConfig::default()).await;
    assert_eq!(c.addr, addr);
    wait_until(
        "the backlog drains after restart",
        Duration::from_secs(15),
        || agent.status().connected && buffer.stats().records == 0,
    )
    .await;
    agent.shutdown().await.unwrap();

    let produced = buffer.stats().next_seq - 1;
    let stored = results_of_agent(&c.store, &["m1", "m2"]);
    let seqs: Vec<u64> = stored.iter().map(|r| r.seq).collect();
    assert_eq!(
        seqs,
        (1..=produced).collect::<Vec<_>>(),
        "every seq exactly once"
    );
    assert_eq!(count(&c.store), produced);
    assert!(c.store.gaps(AGENT).unwrap().is_empty());
    assert!(buffer.gaps().unwrap().is_empty());
    // Results checked during the outage arrived with their own timestamps.
    let during: Vec<i64> = stored
        .iter()
        .map(|r| r.result.scheduled_at_unix_ms)
        .filter(|&ms| ms > killed_at && ms < restarted_at)
        .collect();
    assert!(during.len() >= 5, "{during:?}");
    for m in ["m1", "m2"] {
        let times: Vec<i64> = results_for(&c.store, m)
            .iter()
            .map(|r| r.result.scheduled_at_unix_ms)
            .collect();
        assert!(times.windows(2).all(|w| w[0] < w[1]), "{m}: {times:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_without_a_client_certificate_is_unauthenticated() {
    let s = Setup::new();
    let c = s.collector(any_port(), IngestConfig::default()).await;
    let err = raw_session(c.addr, s.pki.ca.cert_pem(), None)
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(c.ingest.connected().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_is_rejected_at_tls_and_fatal() {
    let s = Setup::new();
    let (t, _target) = target().await;
    s.assignments.set(AGENT, vec![monitor("m1", t)]);
    let c = s.collector(any_port(), IngestConfig::default()).await;
    let other = Pki::new();
    let mut identity = other.identity(c.addr, AGENT);
    // It trusts the right collector; only its own certificate is foreign.
    identity.ca_pem = s.pki.ca.cert_pem().to_owned();
    let buffer = open_buffer(&s.path("buffer"));
    let agent = Agent::start(identity, buffer, link_config());
    let status = agent.status.clone();
    let err = agent.ended(Duration::from_secs(10)).await.unwrap_err();
    assert!(matches!(err, LinkError::Tls(_)), "{err:?}");
    assert_eq!(status.borrow().sessions, 0);
    assert!(c.ingest.agent_stats(AGENT).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_for_monitors_not_assigned_are_dropped_and_counted() {
    let s = Setup::new();
    let (t, _target) = target().await;
    s.assignments.set(AGENT, vec![monitor("m1", t)]);
    s.assignments.set("agent-2", vec![monitor("m-other", t)]);
    let c = s.collector(any_port(), IngestConfig::default()).await;
    let cert = s.pki.agent(AGENT);
    let (tx, mut inbound) = raw_session(c.addr, s.pki.ca.cert_pem(), Some(&cert))
        .await
        .unwrap();
    let pb::collector_message::Msg::Assignment(a) = next_msg(&mut inbound).await else {
        panic!("the assignment comes first");
    };
    assert_eq!(
        a.monitors.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
        ["m1"]
    );
    let results = [(1, "m1"), (2, "m-other"), (3, "m-unknown"), (4, "m1")]
        .into_iter()
        .map(|(seq, m)| pb::SequencedResult {
            seq,
            result: Some(result_for(m)),
        })
        .collect();
    tx.send(pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Results(pb::ResultBatch {
            results,
            gaps: vec![],
        })),
    })
    .await
    .unwrap();
    let pb::collector_message::Msg::Ack(ack) = next_msg(&mut inbound).await else {
        panic!("an ack");
    };
    // Dropped results are final: the agent may delete them too.
    assert_eq!(ack.durable_through_seq, 4);
    let seqs: Vec<u64> = results_of_agent(&c.store, &["m1", "m-other", "m-unknown"])
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(seqs, [1, 4]);
    assert!(results_for(&c.store, "m-other").is_empty());
    assert!(results_for(&c.store, "m-unknown").is_empty());
    let stats = c.ingest.agent_stats(AGENT).unwrap();
    assert_eq!((stats.stored, stats.dropped_unassigned), (2, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_an_agent_mid_stream_closes_it_and_the_agent_stops() {
    let s = Setup::new();
    let (t, _target) = target().await;
    s.assignments.set(AGENT, vec![monitor("m1", t)]);
    let c = s.collector(any_port(), IngestConfig::default()).await;
    let identity = s.pki.identity(c.addr, AGENT);
    let cert = (identity.cert_pem.clone(), identity.key_pem.clone());
    let buffer = open_buffer(&s.path("buffer"));
    let agent = Agent::start(identity, buffer, link_config());
    wait_until("results flowing", Duration::from_secs(10), || {
        count(&c.store) >= 1
    })
    .await;

    s.directory.deny(AGENT);
    assert!(c.ingest.revoke(AGENT));
    let err = agent.ended(Duration::from_secs(5)).await.unwrap_err();
    assert!(
        matches!(
            err,
            LinkError::Refused {
                code: Code::PermissionDenied,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(c.ingest.connected().is_empty());
    wait_until(
        "the collector shows it disconnected",
        Duration::from_secs(5),
        || !c.ingest.agent_stats(AGENT).unwrap().connected,
    )
    .await;
    // And it cannot come back.
    let again = raw_session(c.addr, s.pki.ca.cert_pem(), Some(&cert))
        .await
        .expect_err("refused");
    assert_eq!(again.code(), Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_denied_by_the_directory_is_closed_at_the_next_recheck() {
    let s = Setup::new();
    let (t, _target) = target().await;
    s.assignments.set(AGENT, vec![monitor("m1", t)]);
    let config = IngestConfig {
        recheck: Duration::from_millis(300),
        ..IngestConfig::default()
    };
    let c = s.collector(any_port(), config).await;
    let buffer = open_buffer(&s.path("buffer"));
    let agent = Agent::start(s.pki.identity(c.addr, AGENT), buffer, link_config());
    wait_until("connected", Duration::from_secs(10), || {
        agent.status().connected
    })
    .await;
    // Only the directory changes; nobody calls revoke().
    s.directory.deny(AGENT);
    let err = agent.ended(Duration::from_secs(3)).await.unwrap_err();
    assert!(
        matches!(
            err,
            LinkError::Refused {
                code: Code::PermissionDenied,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_stream_for_the_same_agent_replaces_the_first() {
    let s = Setup::new();
    let (t, _target) = target().await;
    s.assignments.set(AGENT, vec![monitor("m1", t)]);
    let c = s.collector(any_port(), IngestConfig::default()).await;
    let cert = s.pki.agent(AGENT);
    let (_tx1, mut first) = raw_session(c.addr, s.pki.ca.cert_pem(), Some(&cert))
        .await
        .unwrap();
    assert!(matches!(
        next_msg(&mut first).await,
        pb::collector_message::Msg::Assignment(_)
    ));
    let (tx2, mut second) = raw_session(c.addr, s.pki.ca.cert_pem(), Some(&cert))
        .await
        .unwrap();
    assert!(matches!(
        next_msg(&mut second).await,
        pb::collector_message::Msg::Assignment(_)
    ));

    let closed = tokio::time::timeout(Duration::from_secs(5), first.message())
        .await
        .expect("the first stream ends");
    assert_eq!(closed.unwrap_err().code(), Code::Aborted);
    // The second stream works.
    tx2.send(pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Results(pb::ResultBatch {
            results: vec![pb::SequencedResult {
                seq: 1,
                result: Some(result_for("m1")),
            }],
            gaps: vec![],
        })),
    })
    .await
    .unwrap();
    let pb::collector_message::Msg::Ack(ack) = next_msg(&mut second).await else {
        panic!("an ack");
    };
    assert_eq!(ack.durable_through_seq, 1);
    assert_eq!(c.ingest.connected(), [AGENT]);
    assert_eq!(c.ingest.agent_stats(AGENT).unwrap().sessions, 2);
}

/// A message with one result of `monitor` at `seq`.
fn one_result(seq: u64, monitor: &str) -> pb::AgentMessage {
    pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Results(pb::ResultBatch {
            results: vec![pb::SequencedResult {
                seq,
                result: Some(result_for(monitor)),
            }],
            gaps: vec![],
        })),
    }
}

/// Sends one result on a raw stream and waits for its ack.
async fn acked(
    tx: &mpsc::Sender<pb::AgentMessage>,
    inbound: &mut Streaming<pb::CollectorMessage>,
    seq: u64,
    monitor: &str,
) {
    tx.send(one_result(seq, monitor)).await.unwrap();
    loop {
        match next_msg(inbound).await {
            pb::collector_message::Msg::Ack(ack) if ack.durable_through_seq >= seq => return,
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_streams_with_one_identity_is_limited_and_one_stream_stays_live() {
    const STORM: usize = 100;
    let s = Setup::new();
    let (t, _target) = target().await;
    s.assignments.set(AGENT, vec![monitor("m1", t)]);
    s.assignments.set("agent-2", vec![monitor("m2", t)]);
    let c = s.collector(any_port(), IngestConfig::default()).await;
    let limit = IngestConfig::default().streams_per_window as usize;
    let cert = s.pki.agent(AGENT);
    let ca = s.pki.ca.cert_pem().to_owned();
    let (_tx0, mut first) = raw_session(c.addr, &ca, Some(&cert)).await.unwrap();
    assert!(matches!(
        next_msg(&mut first).await,
        pb::collector_message::Msg::Assignment(_)
    ));

    // Every stream of the storm on its own TLS connection, all at once.
    let storm: Vec<_> = (0..STORM)
        .map(|_| {
            let (ca, cert) = (ca.clone(), cert.clone());
            tokio::spawn(async move { raw_session(c.addr, &ca, Some(&cert)).await })
        })
        .collect();
    // Another agent is served meanwhile.
    let cert2 = s.pki.agent("agent-2");
    let (tx2, mut other) = raw_session(c.addr, &ca, Some(&cert2)).await.unwrap();
    acked(&tx2, &mut other, 1, "m2").await;

    let mut accepted = Vec::new();
    for task in storm {
        match task.await.unwrap() {
            Ok(stream) => accepted.push(stream),
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                assert!(
                    status.message().contains("too many new streams"),
                    "{status:?}"
                );
            }
        }
    }
    assert_eq!(
        accepted.len(),
        limit - 1,
        "the first stream and {} of the storm fit the window",
        limit - 1
    );
    // Each accepted stream replaced the one before: exactly one is live, it
    // stores results, and every other accepted stream was closed.
    let mut live = Vec::new();
    for (tx, mut inbound) in accepted {
        // A stream replaced at once may end before its assignment.
        let mut end = None;
        for _ in 0..2 {
            match tokio::time::timeout(Duration::from_millis(300), inbound.message()).await {
                Ok(Ok(Some(pb::CollectorMessage {
                    msg: Some(pb::collector_message::Msg::Assignment(_)),
                }))) => {}
                Ok(other) => {
                    end = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        match end {
            None => live.push((tx, inbound)),
            Some(end) => assert_eq!(end.unwrap_err().code(), Code::Aborted),
        }
    }
    assert_eq!(live.len(), 1, "one live stream per agent");
    let (tx, mut inbound) = live.pop().unwrap();
    acked(&tx, &mut inbound, 1, "m1").await;
    let closed = tokio::time::timeout(Duration::from_secs(5), first.message())
        .await
        .expect("the first stream was replaced");
    assert_eq!(closed.unwrap_err().code(), Code::Aborted);
    assert_eq!(c.ingest.connected(), [AGENT, "agent-2"]);
    assert_eq!(c.ingest.agent_stats(AGENT).unwrap().sessions, limit as u64);
    // Nothing of the storm lingers: two stream tasks, one per agent.
    wait_until(
        "the replaced streams wound down",
        Duration::from_secs(5),
        || c.ingest.open_streams() == 2,
    )
    .await;
    assert_eq!(results_for(&c.store, "m1").len(), 1);
    assert_eq!(results_for(&c.store, "m2").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_over_the_stream_limit_backs_off_and_gets_in_after_the_window() {
    let s = Setup::new();
    let (t, _target) = target().await;
    s.assignments.set(AGENT, vec![monitor("m1", t)]);
    let config = IngestConfig {
        streams_per_window: 1,
        stream_window: Duration::from_secs(2),
        ..IngestConfig::default()
    };
    let c = s.collector(any_port(), config).await;
    let cert = s.pki.agent(AGENT);
    let opened = tokio::time::Instant::now();
    let (tx, mut held) = raw_session(c.addr, s.pki.ca.cert_pem(), Some(&cert))
        .await
        .unwrap();
    let buffer = open_buffer(&s.path("buffer"));
    let agent = Agent::start(s.pki.identity(c.addr, AGENT), buffer, link_config());
    wait_until("the agent is refused", Duration::from_secs(5), || {
        agent
            .status()
            .last_error
            .is_some_and(|e| e.contains("too many new streams"))
    })
    .await;
    // Refused before it replaced anything: the stream already there goes on.
    assert!(!agent.status().connected);
    acked(&tx, &mut held, 1, "m1").await;
    // The refusal is transient: the agent retries and gets in (replacing
    // the held stream) once the window has passed.
    wait_until("the agent is connected", Duration::from_secs(15), || {
        agent.status().connected
    })
    .await;
    assert!(opened.elapsed() >= Duration::from_secs(2));
    let closed = tokio::time::timeout(Duration::from_secs(5), held.message())
        .await
        .expect("the held stream was replaced");
    assert_eq!(closed.unwrap_err().code(), Code::Aborted);
    agent.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assignment_change_is_pushed_to_the_live_stream() {
    let s = Setup::new();
    let (t, _target) = target().await;
    s.assignments.set(AGENT, vec![monitor("m1", t)]);
    let c = s.collector(any_port(), IngestConfig::default()).await;
    let buffer = open_buffer(&s.path("buffer"));
    let agent = Agent::start(s.pki.identity(c.addr, AGENT), buffer, link_config());
    wait_until("m1 results", Duration::from_secs(10), || {
        !results_for(&c.store, "m1").is_empty()
    })
    .await;
    // A spec the agent cannot run is skipped and counted, the rest runs.
    let mut bad = monitor("bad", t);
    bad.interval_ms = 10;
    let version = s.assignments.set(AGENT, vec![monitor("m2", t), bad]);
    wait_until("m2 results", Duration::from_secs(10), || {
        !results_for(&c.store, "m2").is_empty()
    })
    .await;
    let st = agent.status();
    assert_eq!(
        (st.assignment_version, st.monitors, st.bad_monitors),
        (version, 1, 1)
    );
    agent.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_is_rejected_and_the_agent_keeps_its_results() {
    let s = Setup::new();
    let (t, _target) = target().await;
    s.assignments.set(AGENT, vec![monitor("m1", t)]);
    // Hello and heartbeats fit; no batch with a result does.
    let config = IngestConfig {
        max_message_bytes: 40,
        ..IngestConfig::default()
    };
    let c = s.collector(any_port(), config).await;
    let buffer = open_buffer(&s.path("buffer"));
    let agent = Agent::start(
        s.pki.identity(c.addr, AGENT),
        Arc::clone(&buffer),
        link_config(),
    );
    wait_until(
        "batches rejected more than once",
        Duration::from_secs(10),
        || {
            let st = agent.status();
            st.sessions >= 2
                && st
                    .last_error
                    .as_deref()
                    .is_some_and(|e| e.contains("ResourceExhausted"))
        },
    )
    .await;
    assert_eq!(count(&c.store), 0);
    assert!(buffer.stats().records >= 1, "{:?}", buffer.stats());
    assert_eq!(agent.status().acked_through, 0);
    assert_eq!(buffer.read_after(0, 1).unwrap()[0].seq, 1);

    // With the limit lifted, everything the agent kept arrives.
    let addr = c.kill();
    let c = s.collector(addr, IngestConfig::default()).await;
    wait_until("the kept results arrive", Duration::from_secs(15), || {
        agent.status().connected && buffer.stats().records == 0
    })
    .await;
    agent.shutdown().await.unwrap();
    let produced = buffer.stats().next_seq - 1;
    let seqs: Vec<u64> = results_of_agent(&c.store, &["m1"])
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(seqs, (1..=produced).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_dropped_by_a_full_agent_buffer_arrive_as_a_gap() {
    let s = Setup::new();
    let (t, _target) = target().await;
    s.assignments
        .set(AGENT, vec![monitor("m1", t), monitor("m2", t)]);
    let c = s.collector(any_port(), IngestConfig::default()).await;
    // Room for a handful of results only.
    let buffer = Arc::new(SledBuffer::open(&s.path("buffer"), 600).unwrap());
    let agent = Agent::start(
        s.pki.identity(c.addr, AGENT),
        Arc::clone(&buffer),
        link_config(),
    );
    wait_until("first results stored", Duration::from_secs(10), || {
        count(&c.store) >= 1
    })
    .await;

    // What the first collector stored before it died: an ack for those may
    // have died with it, so the agent can still drop them into a gap.
    let store = Arc::clone(&c.store);
    let addr = c.kill();
    let stored_before_kill: HashSet<u64> = results_of_agent(&store, &["m1", "m2"])
        .iter()
        .map(|r| r.seq)
        .collect();
    drop(store);
    wait_until(
        "the full buffer drops results",
        Duration::from_secs(15),
        || buffer.stats().dropped_total >= 3,
    )
    .await;
    assert!(!buffer.gaps().unwrap().is_empty());

    let c = s.collector(addr, IngestConfig::default()).await;
    wait_until("buffer and its gaps acked", Duration::from_secs(15), || {
        buffer.stats().records == 0 && buffer.gaps().unwrap().is_empty()
    })
    .await;
    agent.shutdown().await.unwrap();

    // Never silent: every seq the agent produced is stored or inside a gap
    // the collector recorded, and the gap counts match the agent's drops. A
    // seq is in both only when it was stored before the kill and its ack was
    // lost with that collector: the agent could not know it had arrived.
    let produced = buffer.stats().next_seq - 1;
    let gaps: Vec<_> = c
        .store
        .gaps(AGENT)
        .unwrap()
        .into_iter()
        .map(|g| g.gap)
        .collect();
    let dropped: u64 = gaps.iter().map(|g| g.count).sum();
    assert_eq!(dropped, buffer.stats().dropped_total, "{gaps:?}");
    let stored: HashSet<u64> = results_of_agent(&c.store, &["m1", "m2"])
        .iter()
        .map(|r| r.seq)
        .collect();
    for seq in 1..=produced {
        let in_gap = gaps.iter().any(|g| (g.from_seq..=g.to_seq).contains(&seq));
        let both_explained = stored.contains(&seq) && in_gap && stored_before_kill.contains(&seq);
        assert!(
            stored.contains(&seq) != in_gap || both_explained,
            "seq {seq}: stored {} in a gap {in_gap}",
            stored.contains(&seq)
        );
    }
}

/// Replay throughput of a pre-filled agent buffer, for the resolve note:
/// `PORTWATCH_REPLAY_N=1000000 cargo test --release -p portwatch-collector
/// --test link replay_rate -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn replay_rate() {
    use prost::Message;
    let n: u64 = std::env::var("PORTWATCH_REPLAY_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let s = Setup::new();
    let (t, _target) = target().await;
    // Assigned (so results are kept) but never due within the test.
    let mut m = monitor("m1", t);
    m.interval_ms = 3_600_000;
    s.assignments.set(AGENT, vec![m]);
    let buffer = Arc::new(SledBuffer::open(&s.path("buffer"), 4 * DEFAULT_MAX_BYTES).unwrap());
    let template = pb::CheckResult {
        address: t.to_string(),
        message: "connected".into(),
        phases: Some(pb::Phases {
            connect_us: Some(180),
            total_us: 200,
            ..Default::default()
        }),
        ..result_for("m1")
    };
    let payload = template.encode_to_vec();
    let fill = std::time::Instant::now();
    for chunk in 0..n.div_ceil(1000) {
        let k = 1000.min(n - chunk * 1000) as usize;
        buffer.append(&vec![payload.clone(); k]).unwrap();
    }
    let fill = fill.elapsed();
    let buffer_dir_bytes: u64 = std::fs::read_dir(s.path("buffer"))
        .unwrap()
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    let c = s.collector(any_port(), IngestConfig::default()).await;
    let start = std::time::Instant::now();
    let mut config = link_config();
    if let Some(w) = std::env::var("PORTWATCH_REPLAY_WINDOW")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        config.window = w;
    }
    let agent = Agent::start(s.pki.identity(c.addr, AGENT), Arc::clone(&buffer), config);
    wait_until("the backlog drains", Duration::from_secs(600), || {
        buffer.stats().records == 0
    })
    .await;
    let took = start.elapsed();
    agent.shutdown().await.unwrap();
    assert_eq!(count(&c.store), n);
    println!(
        "replayed {n} results in {took:.2?}: {:.0} results/s (payload {} bytes, buffer fill {fill:.2?}, buffer files {} bytes = {} bytes/result)",
        n as f64 / took.as_secs_f64(),
        payload.len(),
        buffer_dir_bytes,
        buffer_dir_bytes / n.max(1),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_does_not_start_with_hello_is_refused_before_anything_is_stored() {
    let s = Setup::new();
    let (t, _target) = target().await;
    s.assignments.set(AGENT, vec![monitor("m1", t)]);
    let c = s.collector(any_port(), IngestConfig::default()).await;
    let cert = s.pki.agent(AGENT);
    let batch = pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Results(pb::ResultBatch {
            results: vec![pb::SequencedResult {
                seq: 1,
                result: Some(result_for("m1")),
            }],
            gaps: vec![],
        })),
    };
    let (_tx, mut inbound) = raw_session_with(c.addr, s.pki.ca.cert_pem(), Some(&cert), batch)
        .await
        .unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), inbound.message())
        .await
        .expect("the collector answers");
    assert_eq!(end.unwrap_err().code(), Code::InvalidArgument);
    assert_eq!(count(&c.store), 0);
}

fn hello_epoch(epoch: u64) -> pb::AgentMessage {
    pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Hello(pb::Hello {
            agent_version: "test".into(),
            assignment_version: 0,
            backlog: 0,
            buffer_epoch: epoch,
        })),
    }
}

fn batch_of(seqs: &[u64], monitor: &str) -> pb::AgentMessage {
    pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Results(pb::ResultBatch {
            results: seqs
                .iter()
                .map(|&seq| pb::SequencedResult {
                    seq,
                    result: Some(pb::CheckResult {
                        scheduled_at_unix_ms: now_ms() + seq as i64,
                        ..result_for(monitor)
                    }),
                })
                .collect(),
            gaps: vec![],
        })),
    }
}

/// An agent whose buffer was wiped numbers from 1 again under a new epoch:
/// its results are stored, not taken for duplicates of the old epoch's; a
/// resend within the new epoch is still deduplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_buffer_epoch_starts_a_new_sequence_space() {
    let s = Setup::new();
    let (t, _target) = target().await;
    s.assignments.set(AGENT, vec![monitor("m1", t)]);
    let c = s.collector(any_port(), IngestConfig::default()).await;
    let cert = s.pki.agent(AGENT);
    let mut stored = 0;
    for (epoch, seqs, new) in [
        (5, &[1u64, 2, 3][..], 3),
        (9, &[1, 2][..], 2),
        (9, &[1, 2][..], 0),
    ] {
        let (tx, mut inbound) =
            raw_session_with(c.addr, s.pki.ca.cert_pem(), Some(&cert), hello_epoch(epoch))
                .await
                .unwrap();
        let pb::collector_message::Msg::Assignment(_) = next_msg(&mut inbound).await else {
            panic!("the assignment comes first");
        };
        tx.send(batch_of(seqs, "m1")).await.unwrap();
        let pb::collector_message::Msg::Ack(ack) = next_msg(&mut inbound).await else {
            panic!("an ack");
        };
        assert_eq!(ack.durable_through_seq, *seqs.last().unwrap());
        stored += new;
        assert_eq!(count(&c.store), stored, "epoch {epoch} seqs {seqs:?}");
    }
    assert_eq!(c.store.watermark(AGENT).unwrap(), Some((9, 2)));
}

/// A batch no agent's buffer can produce (seq 0, seqs going back, a result
/// without body or monitor, an unknown status, a gap that ends before it
/// begins) is rejected whole: InvalidArgument naming what is wrong, nothing
/// of it stored, no ack (the agent keeps it). The stream's earlier results
/// stay stored, and the next good batch is stored as if nothing happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_batch_is_rejected_whole_and_stores_nothing() {
    let s = Setup::new();
    let (t, _target) = target().await;
    s.assignments.set(AGENT, vec![monitor("m1", t)]);
    let c = s.collector(any_port(), IngestConfig::default()).await;
    let cert = s.pki.agent(AGENT);
    let good = |seq: u64| pb::SequencedResult {
        seq,
        result: Some(pb::CheckResult {
            scheduled_at_unix_ms: now_ms() + seq as i64,
            ..result_for("m1")
        }),
    };
    let with = |results: Vec<pb::SequencedResult>, gaps: Vec<pb::Gap>| pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Results(pb::ResultBatch {
            results,
            gaps,
        })),
    };
    let bad_status = pb::SequencedResult {
        result: Some(pb::CheckResult {
            status: 7,
            ..good(4).result.unwrap()
        }),
        ..good(4)
    };
    let no_monitor = pb::SequencedResult {
        result: Some(pb::CheckResult {
            monitor_id: String::new(),
            ..good(4).result.unwrap()
        }),
        ..good(4)
    };
    let gap = |from_seq, to_seq| pb::Gap {
        from_seq,
        to_seq,
        count: 1,
    };
    let poisons = [
        (with(vec![good(3), good(0)], vec![]), "result 1 has seq 0"),
        (
            with(vec![good(4), good(3)], vec![]),
            "result 1: seq 3 after seq 4",
        ),
        (
            with(
                vec![
                    good(3),
                    pb::SequencedResult {
                        seq: 4,
                        result: None,
                    },
                ],
                vec![],
            ),
            "result 1 (seq 4) has no body",
        ),
        (with(vec![good(3), no_monitor], vec![]), "names no monitor"),
        (with(vec![good(3), bad_status], vec![]), "has status 7"),
        (
            with(vec![good(3)], vec![gap(9, 5)]),
            "gap 0 runs from seq 9 to 5",
        ),
        (
            with(vec![good(3)], vec![gap(0, 5)]),
            "gap 0 runs from seq 0 to 5",
        ),
    ];

    // Seqs 1 and 2 are stored and acked first.
    let (tx, mut inbound) = raw_session(c.addr, s.pki.ca.cert_pem(), Some(&cert))
        .await
        .unwrap();
    let pb::collector_message::Msg::Assignment(_) = next_msg(&mut inbound).await else {
        panic!("the assignment comes first");
    };
    tx.send(batch_of(&[1, 2], "m1")).await.unwrap();
    let pb::collector_message::Msg::Ack(ack) = next_msg(&mut inbound).await else {
        panic!("an ack");
    };
    assert_eq!(ack.durable_through_seq, 2);
    drop(tx);

    for (poison, says) in poisons {
        let (tx, mut inbound) = raw_session(c.addr, s.pki.ca.cert_pem(), Some(&cert))
            .await
            .unwrap();
        let pb::collector_message::Msg::Assignment(_) = next_msg(&mut inbound).await else {
            panic!("the assignment comes first");
        };
        tx.send(poison).await.unwrap();
        let end = tokio::time::timeout(Duration::from_secs(5), inbound.message())
            .await
            .expect("the collector answers");
        let status = end.expect_err("the poisoned batch ends the stream, without an ack");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().starts_with("result batch rejected: ")
                && status.message().contains(says),
            "{:?} does not say {says:?}",
            status.message()
        );
        assert_eq!(count(&c.store), 2, "nothing of a poisoned batch is stored");
        assert_eq!(c.store.watermark(AGENT).unwrap(), Some((1, 2)));
    }

    // The agent's retry, good this time, is stored as if nothing happened.
    let (tx, mut inbound) = raw_session(c.addr, s.pki.ca.cert_pem(), Some(&cert))
        .await
        .unwrap();
    let pb::collector_message::Msg::Assignment(_) = next_msg(&mut inbound).await else {
        panic!("the assignment comes first");
    };
    tx.send(batch_of(&[3, 4], "m1")).await.unwrap();
    let pb::collector_message::Msg::Ack(ack) = next_msg(&mut inbound).await else {
        panic!("an ack");
    };
    assert_eq!(ack.durable_through_seq, 4);
    assert_eq!(count(&c.store), 4);
}
