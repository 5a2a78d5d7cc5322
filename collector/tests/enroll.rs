//! Enrollment over real TLS on loopback: a tonic server with the collector's
//! `Enrollment` service and the agent library's `enroll`, both as they ship.
//!
//! What a user relies on: the token admits exactly one agent, the agent only
//! talks to the collector its join string pinned (a wrong collector never
//! sees the token), the identity on disk is usable and private, refusals do
//! not tell an attacker which part was wrong, and revocations stick.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use portwatch_agent::enroll::{EnrollError, EnrollOptions, enroll};
use portwatch_agent::identity::AgentIdentity;
use portwatch_agent::join::{JoinError, JoinString};
use portwatch_collector::agents::AgentRegistry;
use portwatch_collector::ca::{Ca, agent_id_of};
use portwatch_collector::enroll::{EnrollConfig, EnrollService, INVALID_TOKEN, server_tls};
use portwatch_collector::state::State;
use portwatch_collector::token::{DEFAULT_MAX_TTL, NewToken, TokenSpec, TokenStore};
use portwatch_proto::v1::EnrollRequest;
use portwatch_proto::v1::enrollment_client::EnrollmentClient;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::ServerTlsConfig;

fn init() {
    // Only tonic's own client in `raw_client` needs a process-wide provider;
    // the library code under test builds its configs with an explicit one.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A collector's data dir with its CA, state, token store and registry.
struct Collector {
    dir: TempDir,
    ca: Arc<Ca>,
    state: State,
    tokens: TokenStore,
    agents: AgentRegistry,
}

impl Collector {
    fn new() -> Collector {
        let dir = tempfile::tempdir().unwrap();
        Collector::open(dir)
    }

    fn open(dir: TempDir) -> Collector {
        let ca = Arc::new(Ca::load_or_create(dir.path()).unwrap());
        let state = State::open(dir.path()).unwrap();
        let tokens = TokenStore::open(&state, DEFAULT_MAX_TTL).unwrap();
        let agents = AgentRegistry::open(&state).unwrap();
        Collector {
            dir,
            ca,
            state,
            tokens,
            agents,
        }
    }

    fn token_at(&self, name: &str, now: SystemTime, ttl: Duration) -> NewToken {
        let labels = BTreeMap::from([("site".to_owned(), "fra".to_owned())]);
        self.tokens
            .create(
                TokenSpec {
                    name: name.into(),
                    labels,
                    ttl: Some(ttl),
                    public_region: None,
                },
                now,
            )
            .unwrap()
    }

    fn token(&self, name: &str) -> NewToken {
        self.token_at(name, SystemTime::now(), Duration::from_secs(3600))
    }

    /// The join string `token create` would print, for a server at `addr`.
    fn join(&self, addr: &str, tok: &NewToken) -> JoinString {
        JoinString::new(addr, &tok.record.id, tok.secret(), self.ca.pin()).unwrap()
    }

    fn service(&self, config: EnrollConfig) -> EnrollService {
        EnrollService::new(
            self.ca.clone(),
            self.tokens.clone(),
            self.agents.clone(),
            config,
        )
    }
}

/// A running tonic server; stopped (and its port closed) by `stop`.
struct Server {
    addr: SocketAddr,
    svc: EnrollService,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Server {
    async fn start(svc: EnrollService, tls: ServerTlsConfig) -> Server {
        Server::start_on("127.0.0.1:0", svc, tls).await
    }

    async fn start_on(bind: &str, svc: EnrollService, tls: ServerTlsConfig) -> Server {
        init();
        let listener = TcpListener::bind(bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel();
        let router = tonic::transport::Server::builder()
            .tls_config(tls)
            .unwrap()
            .add_service(svc.clone().into_server());
        let task = tokio::spawn(router.serve_with_incoming_shutdown(
            TcpListenerStream::new(listener),
            async {
                let _ = stopped.await;
            },
        ));
        Server {
            addr,
            svc,
            stop,
            task,
        }
    }

    /// The usual collector: its own CA's server certificate for localhost and 127.0.0.1.
    async fn for_collector(c: &Collector, config: EnrollConfig) -> Server {
        let tls = server_tls(&c.ca, &names()).unwrap();
        Server::start(c.service(config), tls).await
    }

    fn addr_ip(&self) -> String {
        format!("127.0.0.1:{}", self.addr.port())
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

fn names() -> Vec<String> {
    vec!["localhost".into(), "127.0.0.1".into()]
}

fn opts() -> EnrollOptions {
    EnrollOptions {
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(10),
        hostname: Some("bastion.example".into()),
        ..EnrollOptions::default()
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// A plain tonic client trusting the collector's CA, to send what the agent
/// library never would (a bad CSR, an oversized message, guessed tokens).
async fn raw_client(c: &Collector, server: &Server) -> EnrollmentClient<tonic::transport::Channel> {
    init();
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(c.ca.cert_pem()))
        .domain_name("localhost");
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{}", server.addr_ip()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    EnrollmentClient::new(channel)
}

/// Everything logged by the test binary (tonic's server tasks run on other
/// threads, so the subscriber is global).
#[derive(Clone, Default)]
struct Logs(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;
    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

impl Logs {
    fn capture() -> Logs {
        static LOGS: std::sync::OnceLock<Logs> = std::sync::OnceLock::new();
        LOGS.get_or_init(|| {
            let logs = Logs::default();
            tracing_subscriber::fmt()
                .with_writer(logs.clone())
                .with_ansi(false)
                .with_max_level(tracing::Level::DEBUG)
                .init();
            logs
        })
        .clone()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn csr() -> Vec<u8> {
    let key = rcgen::KeyPair::generate().unwrap();
    rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .der()
        .to_vec()
}

#[tokio::test]
async fn happy_path_writes_a_private_key_and_a_certificate_the_ca_vouches_for() {
    let c = Collector::new();
    let server = Server::for_collector(&c, EnrollConfig::default()).await;
    let tok = c.token("bastion-fra-1");
    // By name: the verifier checks the DNS name "localhost" against the certificate.
    let join = c.join(&format!("localhost:{}", server.addr.port()), &tok);
    let agent_dir = tempfile::tempdir().unwrap();
    let data = agent_dir.path().join("agent");

    let id = enroll(&join, &data, &opts()).await.unwrap();

    assert_eq!(mode(&data.join("agent.key")), 0o600, "the key is private");
    assert_eq!(mode(&data), 0o700);
    assert!(!data.join("agent.key.new").exists(), "no pending key left");
    let again = AgentIdentity::load(&data).unwrap();
    assert_eq!(again.agent_id(), id.agent_id());
    assert_eq!(again.collector_addr(), join.addr());
    assert_eq!(id.info.name, "bastion-fra-1");
    assert_eq!(id.info.labels.get("site").map(String::as_str), Some("fra"));
    assert!(
        id.agent_id().starts_with("bastion-fra-1-"),
        "{}",
        id.agent_id()
    );
    let left = id
        .cert_not_after()
        .duration_since(SystemTime::now())
        .unwrap();
    assert!(left > Duration::from_secs(23 * 3600) && left <= Duration::from_secs(24 * 3600));

    // The certificate carries the identity the collector chose, nothing the
    // CSR asked for (the agent put its host name in CN and a DNS SAN).
    use rustls_pki_types::pem::PemObject;
    let cert = rustls_pki_types::CertificateDer::from_pem_slice(id.cert_pem().as_bytes()).unwrap();
    assert_eq!(agent_id_of(&cert).as_deref(), Some(id.agent_id()));
    let (_, x509) = x509_parser::parse_x509_certificate(&cert).unwrap();
    let sans = &x509
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names;
    assert_eq!(sans.len(), 1, "only the URI SAN: {sans:?}");
    assert!(!format!("{:?}", x509.subject()).contains("bastion.example"));
    assert_eq!(id.ca_pem(), c.ca.cert_pem());

    // rustls, as the mTLS stream will use it, accepts it as a client certificate.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(c.ca.cert_der().clone()).unwrap();
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .unwrap();
    verifier
        .verify_client_cert(&cert, &[], rustls_pki_types::UnixTime::now())
        .expect("the CA vouches for the agent certificate");

    // The collector registered it and marked the token used.
    let rec = c.agents.get(id.agent_id()).unwrap().unwrap();
    assert_eq!(rec.name, "bastion-fra-1");
    assert_eq!(rec.hostname, "bastion.example");
    assert!(!rec.revoked);
    assert_eq!(rec.cert_serial, hex(x509.raw_serial()));
    assert_eq!(
        c.tokens
            .get(&tok.record.id)
            .unwrap()
            .unwrap()
            .used_by
            .as_deref(),
        Some(id.agent_id())
    );
    assert_eq!(server.svc.requests_seen(), 1);

    // A second enroll into the same dir is refused before anything is sent.
    let err = enroll(&join, &data, &opts()).await.unwrap_err();
    assert!(matches!(err, EnrollError::AlreadyEnrolled { .. }), "{err}");
    assert!(err.to_string().contains("--force"));
    assert_eq!(server.svc.requests_seen(), 1);
    server.stop().await;
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn a_token_admits_one_agent_and_names_stay_unique() {
    let c = Collector::new();
    let server = Server::for_collector(&c, EnrollConfig::default()).await;
    let tok = c.token("edge");
    let join = c.join(&server.addr_ip(), &tok);
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());

    let first = enroll(&join, a.path(), &opts()).await.unwrap();
    let err = enroll(&join, b.path(), &opts()).await.unwrap_err();
    assert!(matches!(err, EnrollError::TokenRejected(_)), "{err}");
    assert!(
        err.to_string()
            .starts_with("token rejected: invalid or expired token"),
        "{err}"
    );
    assert!(!b.path().join("agent.key.new").exists() && !b.path().join("agent.key").exists());

    // Another token with the same name: a second agent, with a suffixed name.
    let second = enroll(
        &c.join(&server.addr_ip(), &c.token("edge")),
        b.path(),
        &opts(),
    )
    .await
    .unwrap();
    assert_eq!(first.info.name, "edge");
    let suffix = second.agent_id().rsplit('-').next().unwrap();
    assert_eq!(second.info.name, format!("edge-{suffix}"));
    assert_eq!(
        c.agents.by_name("edge").unwrap().unwrap().id,
        first.agent_id()
    );
    assert_eq!(c.agents.list().unwrap().len(), 2);

    // --force replaces an identity with a new agent.
    let third = enroll(
        &c.join(&server.addr_ip(), &c.token("edge")),
        a.path(),
        &EnrollOptions {
            force: true,
            ..opts()
        },
    )
    .await
    .unwrap();
    assert_ne!(third.agent_id(), first.agent_id());
    assert_eq!(
        AgentIdentity::load(a.path()).unwrap().agent_id(),
        third.agent_id()
    );
    server.stop().await;
}

#[tokio::test]
async fn expired_tokens_are_refused() {
    let c = Collector::new();
    let now = SystemTime::now();
    // Valid for a minute, judged by a collector whose clock is two minutes ahead.
    let short = c.token_at("short", now, Duration::from_secs(60));
    // Created two hours ago with a one-hour ttl.
    let old = c.token_at(
        "old",
        now - Duration::from_secs(7200),
        Duration::from_secs(3600),
    );
    assert_eq!(c.tokens.list().unwrap().len(), 2);
    let svc = EnrollService::with_clock(
        c.ca.clone(),
        c.tokens.clone(),
        c.agents.clone(),
        EnrollConfig::default(),
        move || now + Duration::from_secs(120),
    );
    let server = Server::start(svc, server_tls(&c.ca, &names()).unwrap()).await;
    for tok in [&old, &short] {
        let dir = tempfile::tempdir().unwrap();
        let err = enroll(&c.join(&server.addr_ip(), tok), dir.path(), &opts())
            .await
            .unwrap_err();
        assert!(matches!(err, EnrollError::TokenRejected(_)), "{err}");
    }
    assert!(c.agents.list().unwrap().is_empty());
    assert!(c.tokens.list().unwrap().is_empty(), "expired tokens purged");
    server.stop().await;
}

#[tokio::test]
async fn a_collector_that_cannot_prove_the_pin_never_receives_the_token() {
    let c = Collector::new();
    let tok = c.token("bastion");
    let impostor = Collector::new();

    // 1. Another CA altogether.
    let server = Server::for_collector(&impostor, EnrollConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let err = enroll(&c.join(&server.addr_ip(), &tok), dir.path(), &opts())
        .await
        .unwrap_err();
    assert!(matches!(err, EnrollError::PinMismatch { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("the collector's CA does not match the pin in the join string")
            && msg.contains(&impostor.ca.pin())
            && msg.contains(&c.ca.pin())
            && msg.contains("not sent"),
        "{msg}"
    );
    assert_eq!(
        server.svc.requests_seen(),
        0,
        "no Enroll call reached the impostor"
    );
    server.stop().await;

    // 2. The real CA's certificate copied into the impostor's chain: the pin
    //    matches a certificate, but the leaf is not signed by it.
    let (leaf, key) = impostor
        .ca
        .issue_server(&names(), Duration::from_secs(3600))
        .unwrap();
    let forged = ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(
        format!("{}{}", leaf.cert_pem, c.ca.cert_pem()),
        key,
    ));
    let server = Server::start(impostor.service(EnrollConfig::default()), forged).await;
    let err = enroll(&c.join(&server.addr_ip(), &tok), dir.path(), &opts())
        .await
        .unwrap_err();
    assert!(matches!(err, EnrollError::Tls { .. }), "{err}");
    assert_eq!(server.svc.requests_seen(), 0);
    server.stop().await;

    // 3. The right CA, but a certificate for other names than the address used.
    let server = Server::start_on(
        "127.0.0.2:0",
        c.service(EnrollConfig::default()),
        server_tls(&c.ca, &names()).unwrap(),
    )
    .await;
    let err = enroll(
        &c.join(&format!("127.0.0.2:{}", server.addr.port()), &tok),
        dir.path(),
        &opts(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, EnrollError::Tls { .. }), "{err}");
    assert!(err.to_string().contains("127.0.0.2"), "{err}");
    assert_eq!(server.svc.requests_seen(), 0);
    server.stop().await;

    // Nothing was written but nothing was lost: the token still works.
    assert!(!AgentIdentity::exists(dir.path()));
    assert!(!dir.path().join("agent.key.new").exists());
    assert_eq!(c.tokens.get(&tok.record.id).unwrap().unwrap().used_by, None);
    let server = Server::for_collector(&c, EnrollConfig::default()).await;
    enroll(&c.join(&server.addr_ip(), &tok), dir.path(), &opts())
        .await
        .unwrap();
    server.stop().await;
}

#[tokio::test]
async fn unreachable_collector_is_named() {
    let c = Collector::new();
    // Bind and drop: a loopback port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{port}");
    let err = enroll(&c.join(&addr, &c.token("x")), dir.path(), &opts())
        .await
        .unwrap_err();
    assert!(matches!(err, EnrollError::Unreachable { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with(&format!("cannot reach the collector at {addr}")),
        "{err}"
    );
}

#[test]
fn damaged_join_strings_are_refused_with_a_reason() {
    let c = Collector::new();
    let line = c.join("collector.example:7443", &c.token("x")).encode();
    assert!(JoinString::parse(&line).is_ok());
    let body = line.strip_prefix("pwjoin1:").unwrap();
    let cases = [
        (String::new(), "empty"),
        (format!("pwjoin9:{body}"), "version"),
        (body.to_owned(), "must start with"),
        (format!("pwjoin1:{}", &body[..body.len() / 2]), "damaged"),
        (format!("pwjoin1:{body}%%"), "base64url"),
    ];
    for (input, want) in cases {
        let err = JoinString::parse(&input).unwrap_err();
        assert!(err.to_string().contains(want), "{input:.30}: {err}");
    }
    assert!(matches!(
        JoinString::parse("pwjoin1:e30"), // {}
        Err(JoinError::MissingField("addr"))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_enrollments_with_one_token_admit_exactly_one() {
    let c = Collector::new();
    let server = Server::for_collector(&c, EnrollConfig::default()).await;
    let tok = c.token("racer");
    let join = c.join(&server.addr_ip(), &tok);
    let dirs: Vec<TempDir> = (0..8).map(|_| tempfile::tempdir().unwrap()).collect();
    let tasks: Vec<_> = dirs
        .iter()
        .map(|d| {
            let (join, path) = (join.clone(), d.path().to_owned());
            tokio::spawn(async move { enroll(&join, &path, &opts()).await })
        })
        .collect();
    let mut ok = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(id) => ok.push(id),
            Err(e) => assert!(matches!(e, EnrollError::TokenRejected(_)), "{e}"),
        }
    }
    assert_eq!(ok.len(), 1, "exactly one enrollment wins");
    let agents = c.agents.list().unwrap();
    assert_eq!(agents.len(), 1);
    assert_eq!(agents[0].id, ok[0].agent_id());
    assert_eq!(
        c.tokens
            .get(&tok.record.id)
            .unwrap()
            .unwrap()
            .used_by
            .as_deref(),
        Some(ok[0].agent_id())
    );
    assert_eq!(
        server.svc.requests_seen(),
        8,
        "all eight reached the collector"
    );
    server.stop().await;
}

#[tokio::test]
async fn attempts_beyond_the_rate_limit_are_refused_without_using_the_token() {
    let c = Collector::new();
    let config = EnrollConfig {
        rate_limit: 3,
        ..EnrollConfig::default()
    };
    let server = Server::for_collector(&c, config).await;
    let tok = c.token("limited");
    let wrong = JoinString::new(server.addr_ip(), &tok.record.id, "guess", c.ca.pin()).unwrap();
    for _ in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let err = enroll(&wrong, dir.path(), &opts()).await.unwrap_err();
        assert!(matches!(err, EnrollError::TokenRejected(_)), "{err}");
    }
    let dir = tempfile::tempdir().unwrap();
    let err = enroll(&c.join(&server.addr_ip(), &tok), dir.path(), &opts())
        .await
        .unwrap_err();
    assert!(matches!(err, EnrollError::RateLimited(_)), "{err}");
    assert_eq!(c.tokens.get(&tok.record.id).unwrap().unwrap().used_by, None);
    assert_eq!(server.svc.requests_seen(), 4);
    server.stop().await;
}

#[tokio::test]
async fn refusals_look_alike_and_bad_requests_are_told_apart() {
    let logs = Logs::capture();
    let c = Collector::new();
    let now = SystemTime::now();
    let server = Server::for_collector(&c, EnrollConfig::default()).await;
    let mut client = raw_client(&c, &server).await;
    let tok = c.token("raw");
    let used = c.token("used");
    let dir = tempfile::tempdir().unwrap();
    enroll(&c.join(&server.addr_ip(), &used), dir.path(), &opts())
        .await
        .unwrap();
    let expired = c.token_at(
        "expired",
        now - Duration::from_secs(10),
        Duration::from_secs(5),
    );
    let req = |id: &str, secret: &str, csr_der: Vec<u8>| EnrollRequest {
        token_id: id.into(),
        token_secret: secret.into(),
        csr_der,
        ..Default::default()
    };

    let refusals = [
        req("0123456789abcdef", tok.secret(), csr()),
        req(&tok.record.id, "wrong", csr()),
        req(&tok.record.id, "", csr()),
        req(&used.record.id, used.secret(), csr()),
        req(&expired.record.id, expired.secret(), csr()),
    ];
    for r in refusals {
        let status = client.enroll(r).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert_eq!(
            status.message(),
            INVALID_TOKEN,
            "the same words whatever was wrong"
        );
    }

    let status = client
        .enroll(req(&tok.record.id, tok.secret(), b"not a csr".to_vec()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("certificate signing request"),
        "{status:?}"
    );
    assert_eq!(c.tokens.get(&tok.record.id).unwrap().unwrap().used_by, None);

    let seen = server.svc.requests_seen();
    let status = client
        .enroll(req(&tok.record.id, tok.secret(), vec![0u8; 70 * 1024]))
        .await
        .unwrap_err();
    assert_ne!(status.code(), tonic::Code::Ok);
    assert_eq!(
        server.svc.requests_seen(),
        seen,
        "oversized requests never reach the handler"
    );

    // After all that, the token is still good for one agent.
    let resp = client
        .enroll(req(&tok.record.id, tok.secret(), csr()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.name, "raw");
    assert_eq!(resp.ca_cert_der, c.ca.cert_der().to_vec());
    server.stop().await;

    // Every attempt is logged with its token id and source, never a secret.
    let text = logs.text();
    for t in [&tok, &used, &expired] {
        assert!(text.contains(&format!("token={}", t.record.id)), "{text}");
        assert!(!text.contains(t.secret()), "a secret was logged: {text}");
    }
    assert!(
        text.contains("enrollment refused") && text.contains("source=127.0.0.1"),
        "{text}"
    );
    assert!(
        text.contains(&format!("agent enrolled token={}", tok.record.id)),
        "{text}"
    );
}

#[tokio::test]
async fn the_registry_and_revocations_survive_a_restart() {
    let c = Collector::new();
    let server = Server::for_collector(&c, EnrollConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let id = enroll(
        &c.join(&server.addr_ip(), &c.token("fra")),
        dir.path(),
        &opts(),
    )
    .await
    .unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    let other = enroll(
        &c.join(&server.addr_ip(), &c.token("ams")),
        other_dir.path(),
        &opts(),
    )
    .await
    .unwrap();
    server.stop().await;

    let revoked = c.agents.revoke("fra", SystemTime::now()).unwrap();
    assert_eq!(revoked.id, id.agent_id());
    let not_after = SystemTime::now() + Duration::from_secs(1000);
    c.agents
        .record_cert(other.agent_id(), "abcd", not_after)
        .unwrap();
    assert!(c.agents.revoke("nobody", SystemTime::now()).is_err());

    // Restart: drop every handle on the database and open it again.
    let Collector {
        dir: data,
        ca,
        state,
        tokens,
        agents,
    } = c;
    drop((ca, state, tokens, agents));
    let c = Collector::open(data);

    let rec = c.agents.get(id.agent_id()).unwrap().unwrap();
    assert!(rec.revoked && rec.revoked_at_unix_ms.is_some());
    assert!(c.agents.is_revoked(id.agent_id()).unwrap());
    assert!(!c.agents.is_revoked(other.agent_id()).unwrap());
    assert!(
        c.agents.is_revoked("never-enrolled").unwrap(),
        "unknown ids are not served"
    );
    assert!(
        c.agents.by_name("fra").unwrap().is_none(),
        "revoked agents give up their name"
    );
    assert_eq!(
        c.agents.get(other.agent_id()).unwrap().unwrap().cert_serial,
        "abcd"
    );
    assert_eq!(c.agents.list().unwrap().len(), 2);
    // Revoking by id again is a no-op that keeps the first revocation time.
    let again = c.agents.revoke(id.agent_id(), SystemTime::now()).unwrap();
    assert_eq!(again.revoked_at_unix_ms, rec.revoked_at_unix_ms);

    // The name is free for a new agent.
    let server = Server::for_collector(&c, EnrollConfig::default()).await;
    let new_dir = tempfile::tempdir().unwrap();
    let fresh = enroll(
        &c.join(&server.addr_ip(), &c.token("fra")),
        new_dir.path(),
        &opts(),
    )
    .await
    .unwrap();
    assert_eq!(fresh.info.name, "fra");
    assert_eq!(
        c.agents.by_name("fra").unwrap().unwrap().id,
        fresh.agent_id()
    );
    server.stop().await;
}

#[tokio::test]
async fn only_a_hash_of_the_secret_is_stored() {
    let c = Collector::new();
    let server = Server::for_collector(&c, EnrollConfig::default()).await;
    let tok = c.token("hashed");
    let unused = c.token("unused");
    let dir = tempfile::tempdir().unwrap();
    enroll(&c.join(&server.addr_ip(), &tok), dir.path(), &opts())
        .await
        .unwrap();
    server.stop().await;
    c.state.flush().await.unwrap();

    let raw = c.state.tree(TokenStore::TREE).unwrap();
    let mut stored = Vec::new();
    for kv in raw.iter() {
        let (_, v) = kv.unwrap();
        stored.extend_from_slice(&v);
        stored.push(b'\n');
    }
    let stored = String::from_utf8(stored).unwrap();
    for t in [&tok, &unused] {
        let digest = ring::digest::digest(&ring::digest::SHA256, t.secret().as_bytes());
        assert!(!stored.contains(t.secret()), "the secret is not stored");
        assert!(
            stored.contains(&hex(digest.as_ref())),
            "its SHA-256 is: {stored}"
        );
    }
    // Nor anywhere else in the database files.
    for entry in walk(&c.dir.path().join("state")) {
        let bytes = std::fs::read(&entry).unwrap();
        for t in [&tok, &unused] {
            let needle = t.secret().as_bytes();
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "{} holds a secret",
                entry.display()
            );
        }
    }
    // The admin view has neither.
    let listed = serde_json::to_string(&c.tokens.list().unwrap()).unwrap();
    assert!(
        !listed.contains("secret") && !listed.contains(tok.secret()),
        "{listed}"
    );
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The guarantee under the service: redemptions that all passed the cheap
/// check race to consume the token, and the transaction lets one through.
#[test]
fn redemption_is_atomic_when_many_race_past_the_check() {
    use portwatch_collector::agents::AgentRecord;
    let c = Collector::new();
    let tok = c.token("race");
    let now = SystemTime::now();
    let barrier = Arc::new(std::sync::Barrier::new(16));
    let threads: Vec<_> = (0..16)
        .map(|i| {
            let (tokens, agents, barrier) = (c.tokens.clone(), c.agents.clone(), barrier.clone());
            let (id, secret) = (tok.record.id.clone(), tok.secret().to_owned());
            std::thread::spawn(move || {
                tokens
                    .check(&id, &secret, now)
                    .expect("every racer passes the check");
                barrier.wait();
                let agent = AgentRecord {
                    id: format!("race-{i:08x}"),
                    name: String::new(),
                    labels: BTreeMap::new(),
                    enrolled_at_unix_ms: 0,
                    cert_serial: String::new(),
                    cert_not_after_unix_ms: 0,
                    revoked: false,
                    revoked_at_unix_ms: None,
                    hostname: String::new(),
                    agent_version: String::new(),
                    public_region: None,
                };
                tokens.redeem(&id, &secret, now, &agents, agent)
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let winners: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    assert!(
        results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .all(|e| e.is_invalid_token()),
        "{results:?}"
    );
    assert_eq!(c.agents.list().unwrap().len(), 1);
    assert_eq!(
        c.tokens
            .get(&tok.record.id)
            .unwrap()
            .unwrap()
            .used_by
            .as_deref(),
        Some(winners[0].id.as_str())
    );
    assert_eq!(winners[0].name, "race", "the name comes from the token");
}

#[tokio::test]
async fn a_broken_identity_dir_names_the_file_and_the_fix() {
    let c = Collector::new();
    let server = Server::for_collector(&c, EnrollConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    enroll(
        &c.join(&server.addr_ip(), &c.token("id")),
        dir.path(),
        &opts(),
    )
    .await
    .unwrap();
    server.stop().await;

    let empty = tempfile::tempdir().unwrap();
    let err = AgentIdentity::load(empty.path()).unwrap_err().to_string();
    assert!(
        err.contains("agent.json not found") && err.contains("portwatch-agent enroll"),
        "{err}"
    );

    let other_key = rcgen::KeyPair::generate().unwrap().serialize_pem();
    let good_key = std::fs::read(dir.path().join("agent.key")).unwrap();
    std::fs::write(dir.path().join("agent.key"), other_key).unwrap();
    let err = AgentIdentity::load(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("agent.key")
            && err.contains("does not belong to agent.pem")
            && err.contains("--force"),
        "{err}"
    );
    std::fs::write(dir.path().join("agent.key"), good_key).unwrap();
    AgentIdentity::load(dir.path()).unwrap();

    std::fs::write(dir.path().join("ca.pem"), "garbage").unwrap();
    let err = AgentIdentity::load(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("ca.pem") && err.contains("not a PEM certificate"),
        "{err}"
    );
    std::fs::remove_file(dir.path().join("agent.pem")).unwrap();
    let err = AgentIdentity::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("agent.pem not found"), "{err}");
}
