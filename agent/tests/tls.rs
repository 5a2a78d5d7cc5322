//! TLS checks end to end through `Engine::run`, against real TLS servers on
//! loopback: tokio-rustls servers with certificates minted here by a test CA
//! (rcgen), scripted smtp/imap/pop3 servers that upgrade with STARTTLS, and
//! `openssl s_server` as an independent implementation.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use portwatch_agent::check::{CheckSpec, StartTls, TcpMode, TcpPreset, TlsOptions, compile_regex};
use portwatch_agent::probe::Engine;
use portwatch_agent::resolve::Resolver;
use portwatch_agent::result::{CheckResult, Reason, Status};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

const DAY: i64 = 86_400;
/// Added to every notAfter so whole-day counts do not depend on how long the test takes.
const MARGIN: i64 = 3_600;
const HOST: &str = "portwatch.test";

// ---------------------------------------------------------------------------
// Certificates

struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    fn new() -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "portwatch test ca");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        validity(&mut params, -DAY, 3650 * DAY);
        TestCa {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// A leaf for `names` signed by this CA, valid from `from` to `until` seconds relative to now.
    fn leaf(&self, names: &[&str], from: i64, until: i64) -> Leaf {
        let (params, key) = leaf_params(names, from, until);
        Leaf::new(params.signed_by(&key, &self.issuer).unwrap(), key)
    }
}

struct Leaf {
    cert: CertificateDer<'static>,
    cert_pem: String,
    key: KeyPair,
}

impl Leaf {
    fn new(cert: rcgen::Certificate, key: KeyPair) -> Leaf {
        Leaf {
            cert: cert.der().clone(),
            cert_pem: cert.pem(),
            key,
        }
    }

    fn self_signed(names: &[&str], until: i64) -> Leaf {
        let (params, key) = leaf_params(names, -DAY, until);
        Leaf::new(params.self_signed(&key).unwrap(), key)
    }

    fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()))
    }
}

/// Valid from `from` to `until`, in seconds relative to now.
fn leaf_params(names: &[&str], from: i64, until: i64) -> (CertificateParams, KeyPair) {
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, names[0]);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    validity(&mut params, from, until);
    (params, KeyPair::generate().unwrap())
}

/// Sets notBefore/notAfter to now + the given seconds (rcgen's default runs 1975-4096).
fn validity(params: &mut CertificateParams, from: i64, until: i64) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + Duration::from_secs((now + from) as u64);
    params.not_after = epoch + Duration::from_secs((now + until) as u64);
}

fn server_config(leaf: &Leaf) -> Arc<ServerConfig> {
    let config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![leaf.cert.clone()], leaf.key_der())
            .unwrap();
    Arc::new(config)
}

// ---------------------------------------------------------------------------
// Servers

/// A TLS server on `bind` (port 0): after the handshake it answers `PING` with
/// `+PONG` and waits for the client to close. Serves up to 16 connections.
async fn tls_server(bind: &str, leaf: &Leaf) -> SocketAddr {
    tls_server_with(bind, server_config(leaf)).await
}

async fn tls_server_with(bind: &str, config: Arc<ServerConfig>) -> SocketAddr {
    let listener = TcpListener::bind(bind).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        for _ in 0..16 {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            // Without it, Nagle holds replies behind the session tickets for a delayed ACK (40 ms).
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                serve_ping(tls).await;
            });
        }
    });
    addr
}

async fn serve_ping<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(stream: S) {
    let mut lines = BufReader::new(stream);
    let mut line = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        while lines.read_line(&mut line).await.unwrap_or(0) > 0 {
            if line.starts_with("PING") {
                let _ = lines.get_mut().write_all(b"+PONG\r\n").await;
            }
            line.clear();
        }
    })
    .await;
}

/// A plain TCP server that runs `handle` on each of up to 4 connections.
async fn raw_server<F, Fut>(handle: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        for _ in 0..4 {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(handle(tcp));
        }
    });
    addr
}

/// A STARTTLS server: sends `greeting`, then for each `(expected, reply)` reads
/// a line, checks it starts with `expected` and sends `reply`; when `upgrade`,
/// a TLS handshake follows. Every line it received (plaintext and inside TLS)
/// is recorded.
async fn starttls_server(
    greeting: &'static str,
    steps: Vec<(&'static str, &'static str)>,
    upgrade: Option<Arc<ServerConfig>>,
) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let addr = raw_server(move |tcp| {
        let steps = steps.clone();
        let upgrade = upgrade.clone();
        let seen = record.clone();
        async move {
            let mut io = BufReader::new(tcp);
            if io.get_mut().write_all(greeting.as_bytes()).await.is_err() {
                return;
            }
            let mut line = String::new();
            for (expected, reply) in steps {
                line.clear();
                let read =
                    tokio::time::timeout(Duration::from_secs(3), io.read_line(&mut line)).await;
                if !matches!(read, Ok(Ok(n)) if n > 0) {
                    return;
                }
                seen.lock().unwrap().push(line.trim_end().to_owned());
                assert!(
                    line.starts_with(expected),
                    "server expected {expected:?}, got {line:?}"
                );
                if io.get_mut().write_all(reply.as_bytes()).await.is_err() {
                    return;
                }
            }
            match upgrade {
                Some(config) => {
                    assert!(
                        io.buffer().is_empty(),
                        "client sent data before the tls handshake"
                    );
                    let Ok(tls) = TlsAcceptor::from(config).accept(io.into_inner()).await else {
                        return;
                    };
                    record_lines(tls, &seen).await;
                }
                None => record_lines(io, &seen).await,
            }
        }
    })
    .await;
    (addr, seen)
}

async fn record_lines<S: tokio::io::AsyncRead + Unpin>(stream: S, seen: &Mutex<Vec<String>>) {
    let mut lines = BufReader::new(stream);
    let mut line = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        while lines.read_line(&mut line).await.unwrap_or(0) > 0 {
            seen.lock().unwrap().push(line.trim_end().to_owned());
            line.clear();
        }
    })
    .await;
}

/// Polls `seen` until it holds `line` (the server records asynchronously).
async fn wait_for_line(seen: &Mutex<Vec<String>>, line: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        if seen.lock().unwrap().iter().any(|l| l == line) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "server never received {line:?}: {:?}",
            seen.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---------------------------------------------------------------------------
// Checks

fn engine() -> Engine {
    // Every target here is an IP literal: the resolver is never asked.
    let unused = "127.0.0.1:9".parse().unwrap();
    Engine::with_resolver(Resolver::with_nameserver(unused, Duration::from_millis(100)).unwrap())
}

fn spec(addr: SocketAddr, tls: TlsOptions) -> CheckSpec {
    let mut spec = CheckSpec::new(format!("tcp://{addr}").parse().unwrap());
    spec.timeout = Duration::from_millis(1000);
    spec.tls = Some(tls);
    spec.validate().unwrap();
    spec
}

fn trusting(ca: &TestCa) -> TlsOptions {
    TlsOptions {
        ca: Some(vec![ca.der()]),
        server_name: Some(HOST.to_owned()),
        ..TlsOptions::default()
    }
}

async fn check(spec: &CheckSpec) -> CheckResult {
    engine().run(spec).await
}

#[track_caller]
fn assert_verdict(r: &CheckResult, status: Status, reason: Reason) {
    assert_eq!((r.status, r.reason), (status, reason), "{r:#?}");
}

#[tokio::test]
async fn a_valid_certificate_from_the_trusted_ca_is_up_and_the_tunnel_carries_the_conversation() {
    let ca = TestCa::new();
    let addr = tls_server("127.0.0.1:0", &ca.leaf(&[HOST], -DAY, 90 * DAY + MARGIN)).await;
    let mut spec = spec(addr, trusting(&ca));
    spec.tcp = TcpMode::Expect {
        send: Some(b"PING\r\n".to_vec()),
        expect: Some(compile_regex("PONG").unwrap()),
    };
    let r = check(&spec).await;
    assert_verdict(&r, Status::Up, Reason::Ok);
    assert_eq!(r.details.cert_days_left, Some(90));
    // The exact notAfter too (what /metrics reports as probe_ssl_earliest_cert_expiry).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let not_after = r.details.cert_not_after_unix.expect("notAfter");
    assert!(
        (not_after - (now + 90 * DAY + MARGIN)).abs() <= 5,
        "{not_after} vs {now}"
    );
    assert_eq!(r.details.tls_version.as_deref(), Some("TLSv1.3"));
    assert_eq!(r.details.cert_subject.as_deref(), Some("CN=portwatch.test"));
    assert_eq!(
        r.details.cert_issuer.as_deref(),
        Some("CN=portwatch test ca")
    );
    assert_eq!(
        r.details.banner.as_deref(),
        Some("+PONG\\r\\n"),
        "the reply came through the tunnel"
    );
    let tls_us = r.phases.tls.expect("tls phase");
    assert!(tls_us > 0 && tls_us < r.phases.total, "{:?}", r.phases);
    assert!(
        r.phases.connect.is_some() && r.phases.first_byte.is_some(),
        "{:?}",
        r.phases
    );
}

#[tokio::test]
async fn an_expired_leaf_is_down_cert_expired_with_negative_days() {
    let ca = TestCa::new();
    let expired = ca.leaf(&[HOST], -30 * DAY, -2 * DAY + MARGIN);
    let addr = tls_server("127.0.0.1:0", &expired).await;
    let r = check(&spec(addr, trusting(&ca))).await;
    assert_verdict(&r, Status::Down, Reason::CertExpired);
    assert_eq!(r.details.cert_days_left, Some(-2));
    assert!(
        r.message.starts_with("certificate expired on ") && r.message.ends_with("(2 days ago)"),
        "{}",
        r.message
    );
    assert_eq!(r.details.cert_subject.as_deref(), Some("CN=portwatch.test"));
}

#[tokio::test]
async fn a_leaf_expiring_within_the_threshold_is_degraded_but_still_converses() {
    let ca = TestCa::new();
    let addr = tls_server("127.0.0.1:0", &ca.leaf(&[HOST], -DAY, 5 * DAY + MARGIN)).await;
    let mut spec = spec(
        addr,
        TlsOptions {
            expiring_days: 14,
            ..trusting(&ca)
        },
    );
    spec.tcp = TcpMode::Expect {
        send: Some(b"PING\r\n".to_vec()),
        expect: Some(compile_regex("PONG").unwrap()),
    };
    let r = check(&spec).await;
    assert_verdict(&r, Status::Degraded, Reason::CertExpiring);
    assert_eq!(r.details.cert_days_left, Some(5));
    assert!(
        r.message.starts_with("certificate expires in 5 days (on "),
        "{}",
        r.message
    );
    assert!(
        r.message.ends_with("below the 14-day threshold"),
        "{}",
        r.message
    );
    assert_eq!(
        r.details.banner.as_deref(),
        Some("+PONG\\r\\n"),
        "the handshake succeeded and the stream was used"
    );
}

#[tokio::test]
async fn a_leaf_valid_for_60_days_is_up_above_the_threshold() {
    let ca = TestCa::new();
    let addr = tls_server("127.0.0.1:0", &ca.leaf(&[HOST], -DAY, 60 * DAY + MARGIN)).await;
    let r = check(&spec(
        addr,
        TlsOptions {
            expiring_days: 14,
            ..trusting(&ca)
        },
    ))
    .await;
    assert_verdict(&r, Status::Up, Reason::Ok);
    assert_eq!(r.details.cert_days_left, Some(60));
}

#[tokio::test]
async fn a_certificate_from_an_unknown_ca_is_a_tls_error_that_still_reports_expiry() {
    let ca = TestCa::new();
    let addr = tls_server("127.0.0.1:0", &ca.leaf(&[HOST], -DAY, 40 * DAY + MARGIN)).await;
    // The system roots, which do not include the test CA.
    let opts = TlsOptions {
        server_name: Some(HOST.to_owned()),
        ..TlsOptions::default()
    };
    let r = check(&spec(addr, opts)).await;
    assert_verdict(&r, Status::Down, Reason::TlsError);
    assert!(
        r.message
            .starts_with("certificate not trusted: UnknownIssuer"),
        "{}",
        r.message
    );
    assert!(
        r.message.contains("CN=portwatch test ca"),
        "names the issuer: {}",
        r.message
    );
    assert_eq!(
        r.details.cert_days_left,
        Some(40),
        "captured even though verification failed"
    );
    assert_eq!(
        r.details.cert_issuer.as_deref(),
        Some("CN=portwatch test ca")
    );
    assert_eq!(r.phases.tls, None, "no handshake completed");
}

#[tokio::test]
async fn a_certificate_for_another_name_is_a_tls_error_naming_the_mismatch() {
    let ca = TestCa::new();
    let addr = tls_server(
        "127.0.0.1:0",
        &ca.leaf(&[HOST, "www.portwatch.test"], -DAY, 90 * DAY),
    )
    .await;
    let opts = TlsOptions {
        server_name: Some("other.test".to_owned()),
        ..trusting(&ca)
    };
    let r = check(&spec(addr, opts)).await;
    assert_verdict(&r, Status::Down, Reason::TlsError);
    assert_eq!(
        r.message,
        "name mismatch: certificate is for portwatch.test, www.portwatch.test, not other.test"
    );
}

#[tokio::test]
async fn without_verification_a_self_signed_certificate_is_up_with_its_expiry() {
    let addr = tls_server(
        "127.0.0.1:0",
        &Leaf::self_signed(&["selfsigned.test"], 30 * DAY + MARGIN),
    )
    .await;
    // The name does not match either: verify=false accepts any chain for any name.
    let opts = TlsOptions {
        verify: false,
        ..TlsOptions::default()
    };
    let r = check(&spec(addr, opts)).await;
    assert_verdict(&r, Status::Up, Reason::Ok);
    assert_eq!(r.details.cert_days_left, Some(30));
    assert_eq!(
        r.details.cert_subject.as_deref(),
        Some("CN=selfsigned.test")
    );
}

#[tokio::test]
async fn without_verification_an_expired_self_signed_certificate_is_still_cert_expired() {
    let (params, key) = leaf_params(&["selfsigned.test"], -30 * DAY, -3 * DAY + MARGIN);
    let leaf = Leaf::new(params.self_signed(&key).unwrap(), key);
    let addr = tls_server("127.0.0.1:0", &leaf).await;
    let r = check(&spec(
        addr,
        TlsOptions {
            verify: false,
            ..TlsOptions::default()
        },
    ))
    .await;
    assert_verdict(&r, Status::Down, Reason::CertExpired);
    assert_eq!(r.details.cert_days_left, Some(-3));
    assert!(r.phases.tls.is_some(), "the handshake itself completed");
}

#[tokio::test]
async fn a_plaintext_server_is_a_tls_error() {
    let addr = raw_server(|mut tcp| async move {
        let _ = tcp.write_all(b"220 plain smtp ready\r\n").await;
        let mut sink = [0u8; 1024];
        let _ = tokio::time::timeout(Duration::from_secs(2), tcp.read(&mut sink)).await;
    })
    .await;
    let r = check(&spec(
        addr,
        TlsOptions {
            verify: false,
            ..TlsOptions::default()
        },
    ))
    .await;
    assert_verdict(&r, Status::Down, Reason::TlsError);
    assert!(
        r.message.starts_with("the server did not answer with tls"),
        "{}",
        r.message
    );
}

#[tokio::test]
async fn a_server_that_closes_during_the_handshake_is_reset() {
    let addr = raw_server(|mut tcp| async move {
        // Take the ClientHello, then hang up.
        let mut hello = [0u8; 4096];
        let _ = tcp.read(&mut hello).await;
    })
    .await;
    let r = check(&spec(
        addr,
        TlsOptions {
            verify: false,
            ..TlsOptions::default()
        },
    ))
    .await;
    assert_verdict(&r, Status::Down, Reason::Reset);
    assert!(
        r.message.contains("during the tls handshake"),
        "{}",
        r.message
    );
}

#[tokio::test]
async fn a_server_that_never_speaks_times_out_within_the_deadline() {
    let addr = raw_server(|mut tcp| async move {
        let mut sink = [0u8; 4096];
        let _ = tokio::time::timeout(Duration::from_secs(3), async {
            while tcp.read(&mut sink).await.unwrap_or(0) > 0 {}
        })
        .await;
    })
    .await;
    let mut spec = spec(
        addr,
        TlsOptions {
            verify: false,
            ..TlsOptions::default()
        },
    );
    spec.timeout = Duration::from_millis(400);
    let r = check(&spec).await;
    assert_verdict(&r, Status::Down, Reason::Timeout);
    assert_eq!(r.message, "tls handshake did not finish before the timeout");
    let total_ms = r.phases.total / 1000;
    assert!(
        (390..600).contains(&total_ms),
        "took {total_ms} ms for a 400 ms timeout"
    );
}

#[tokio::test]
async fn ipv6_loopback_with_an_ip_san_is_up() {
    let ca = TestCa::new();
    let addr = tls_server("[::1]:0", &ca.leaf(&["::1"], -DAY, 90 * DAY + MARGIN)).await;
    // No server_name: the IP literal itself is verified against the IP SAN.
    let r = check(&spec(
        addr,
        TlsOptions {
            ca: Some(vec![ca.der()]),
            ..TlsOptions::default()
        },
    ))
    .await;
    assert_verdict(&r, Status::Up, Reason::Ok);
    assert_eq!(r.address, Some(addr));
    assert_eq!(r.details.cert_days_left, Some(90));

    // The same certificate does not cover 127.0.0.1: IP names are really checked.
    let v4 = tls_server("127.0.0.1:0", &ca.leaf(&["::1"], -DAY, 90 * DAY)).await;
    let r = check(&spec(
        v4,
        TlsOptions {
            ca: Some(vec![ca.der()]),
            ..TlsOptions::default()
        },
    ))
    .await;
    assert_verdict(&r, Status::Down, Reason::TlsError);
    assert_eq!(
        r.message,
        "name mismatch: certificate is for ::1, not 127.0.0.1"
    );
}

#[tokio::test]
async fn concurrent_checks_sharing_a_config_each_report_their_own_certificate() {
    let ca = TestCa::new();
    let a = tls_server("127.0.0.1:0", &ca.leaf(&[HOST], -DAY, 60 * DAY + MARGIN)).await;
    let b = tls_server("127.0.0.1:0", &ca.leaf(&[HOST], -DAY, 200 * DAY + MARGIN)).await;
    let engine = engine();
    let (sa, sb) = (spec(a, trusting(&ca)), spec(b, trusting(&ca)));
    for _ in 0..4 {
        // Polled in one task, so the handshakes interleave on the same thread.
        let (ra, rb) = tokio::join!(engine.run(&sa), engine.run(&sb));
        assert_eq!(
            (ra.status, ra.details.cert_days_left),
            (Status::Up, Some(60)),
            "{ra:#?}"
        );
        assert_eq!(
            (rb.status, rb.details.cert_days_left),
            (Status::Up, Some(200)),
            "{rb:#?}"
        );
    }
}

/// Serves whichever certificate was set last, from one server config (so one
/// session cache a resuming client could use).
#[derive(Debug)]
struct Renewable(Mutex<Arc<CertifiedKey>>);

impl Renewable {
    fn set(&self, leaf: &Leaf) {
        let provider = rustls::crypto::ring::default_provider();
        *self.0.lock().unwrap() = Arc::new(
            CertifiedKey::from_der(vec![leaf.cert.clone()], leaf.key_der(), &provider).unwrap(),
        );
    }
}

impl ResolvesServerCert for Renewable {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.lock().unwrap().clone())
    }
}

#[tokio::test]
async fn every_check_is_a_full_handshake_so_a_renewed_certificate_is_seen_at_once() {
    let ca = TestCa::new();
    let old = ca.leaf(&[HOST], -DAY, 3 * DAY + MARGIN);
    let provider = rustls::crypto::ring::default_provider();
    let key = CertifiedKey::from_der(vec![old.cert.clone()], old.key_der(), &provider).unwrap();
    let certs = Arc::new(Renewable(Mutex::new(Arc::new(key))));
    let config = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(certs.clone());
    let addr = tls_server_with("127.0.0.1:0", Arc::new(config)).await;
    let mut spec = spec(addr, trusting(&ca));
    // A conversation makes the client read what follows the handshake, TLS 1.3 session tickets included.
    spec.tcp = TcpMode::Expect {
        send: Some(b"PING\r\n".to_vec()),
        expect: Some(compile_regex("PONG").unwrap()),
    };
    let engine = engine();
    let r = engine.run(&spec).await;
    assert_eq!(
        (r.reason, r.details.cert_days_left),
        (Reason::CertExpiring, Some(3)),
        "{r:#?}"
    );
    // A resumed session would skip the certificate and keep reporting the old one.
    certs.set(&ca.leaf(&[HOST], -DAY, 365 * DAY + MARGIN));
    let r = engine.run(&spec).await;
    assert_eq!(
        (r.reason, r.details.cert_days_left),
        (Reason::Ok, Some(365)),
        "{r:#?}"
    );
}

// ---------------------------------------------------------------------------
// STARTTLS

fn smtp_spec(addr: SocketAddr, ca: &TestCa) -> CheckSpec {
    let mut spec = spec(
        addr,
        TlsOptions {
            starttls: Some(StartTls::Smtp),
            ..trusting(ca)
        },
    );
    spec.tcp = TcpMode::Preset(TcpPreset::Smtp);
    spec.validate().unwrap();
    spec
}

#[tokio::test]
async fn smtp_starttls_upgrades_and_reports_greeting_and_handshake() {
    let ca = TestCa::new();
    let leaf = ca.leaf(&[HOST], -DAY, 90 * DAY + MARGIN);
    let (addr, seen) = starttls_server(
        "220-mail.portwatch.test ESMTP\r\n220 ready\r\n",
        vec![
            ("EHLO ", "250-mail.portwatch.test\r\n250-PIPELINING\r\n250-STARTTLS\r\n250 SIZE 10240000\r\n"),
            ("STARTTLS", "220 2.0.0 go ahead\r\n"),
        ],
        Some(server_config(&leaf)),
    )
    .await;
    let r = check(&smtp_spec(addr, &ca)).await;
    assert_verdict(&r, Status::Up, Reason::Ok);
    assert!(
        r.phases.tls.is_some() && r.phases.first_byte.is_some(),
        "{:?}",
        r.phases
    );
    assert!(
        r.phases.first_byte < Some(r.phases.total) && r.phases.tls < Some(r.phases.total),
        "{:?}",
        r.phases
    );
    assert_eq!(
        r.details.banner.as_deref(),
        Some("220-mail.portwatch.test ESMTP\\r\\n220 ready\\r\\n")
    );
    assert_eq!(r.details.cert_days_left, Some(90));
    assert_eq!(r.details.tls_version.as_deref(), Some("TLSv1.3"));
    // The whole dialogue, the polite goodbye travelling inside TLS.
    wait_for_line(&seen, "QUIT").await;
    assert_eq!(
        *seen.lock().unwrap(),
        ["EHLO portwatch.invalid", "STARTTLS", "QUIT"]
    );
}

#[tokio::test]
async fn smtp_without_starttls_is_an_unexpected_reply() {
    let ca = TestCa::new();
    let (addr, seen) = starttls_server(
        "220 mail ESMTP\r\n",
        vec![("EHLO ", "250-mail\r\n250-8BITMIME\r\n250 SIZE 1000\r\n")],
        None,
    )
    .await;
    let r = check(&smtp_spec(addr, &ca)).await;
    assert_verdict(&r, Status::Down, Reason::UnexpectedReply);
    assert_eq!(r.message, "server does not offer STARTTLS");
    assert_eq!(r.details.banner.as_deref(), Some("220 mail ESMTP\\r\\n"));
    wait_for_line(&seen, "QUIT").await;
}

#[tokio::test]
async fn data_after_the_starttls_go_ahead_is_refused_not_carried_into_tls() {
    // A careless client would treat bytes that arrived in plaintext as part of
    // the TLS session (the STARTTLS injection of CVE-2011-0411).
    let ca = TestCa::new();
    let (addr, _) = starttls_server(
        "220 mail ESMTP\r\n",
        vec![
            ("EHLO ", "250-mail\r\n250 STARTTLS\r\n"),
            ("STARTTLS", "220 go ahead\r\n250 injected\r\n"),
        ],
        None,
    )
    .await;
    let r = check(&smtp_spec(addr, &ca)).await;
    assert_verdict(&r, Status::Down, Reason::UnexpectedReply);
    assert_eq!(
        r.message,
        "server sent data after agreeing to start tls: 250 injected\\r\\n"
    );
}

#[tokio::test]
async fn an_smtp_421_greeting_is_down_with_its_text() {
    let ca = TestCa::new();
    let (addr, _) =
        starttls_server("421 4.3.2 mail.test too busy, try later\r\n", vec![], None).await;
    let r = check(&smtp_spec(addr, &ca)).await;
    assert_verdict(&r, Status::Down, Reason::UnexpectedReply);
    assert_eq!(
        r.message,
        "smtp server refused the session: 421 4.3.2 mail.test too busy, try later"
    );
    assert_eq!(r.phases.tls, None);
}

#[tokio::test]
async fn imap_starttls_upgrades_after_untagged_lines() {
    let ca = TestCa::new();
    let leaf = ca.leaf(&[HOST], -DAY, 90 * DAY + MARGIN);
    let (addr, seen) = starttls_server(
        "* OK [CAPABILITY IMAP4rev1 STARTTLS] ready\r\n",
        vec![(
            "a1 STARTTLS",
            "* NOTE untagged first\r\na1 OK begin tls now\r\n",
        )],
        Some(server_config(&leaf)),
    )
    .await;
    let mut spec = spec(
        addr,
        TlsOptions {
            starttls: Some(StartTls::Imap),
            ..trusting(&ca)
        },
    );
    spec.tcp = TcpMode::Preset(TcpPreset::Imap);
    let r = check(&spec).await;
    assert_verdict(&r, Status::Up, Reason::Ok);
    assert_eq!(r.details.cert_days_left, Some(90));
    wait_for_line(&seen, "a2 LOGOUT").await;
}

#[tokio::test]
async fn pop3_refusing_stls_is_an_unexpected_reply() {
    let ca = TestCa::new();
    let (addr, _) = starttls_server(
        "+OK pop3 ready\r\n",
        vec![("STLS", "-ERR command not permitted\r\n")],
        None,
    )
    .await;
    let mut spec = spec(
        addr,
        TlsOptions {
            starttls: Some(StartTls::Pop3),
            ..trusting(&ca)
        },
    );
    spec.tcp = TcpMode::Preset(TcpPreset::Pop3);
    let r = check(&spec).await;
    assert_verdict(&r, Status::Down, Reason::UnexpectedReply);
    assert_eq!(
        r.message,
        "pop3 server refused STLS: -ERR command not permitted"
    );
}

#[tokio::test]
async fn a_starttls_server_that_never_greets_is_no_reply_within_the_deadline() {
    let ca = TestCa::new();
    let addr = raw_server(|mut tcp| async move {
        let mut sink = [0u8; 64];
        let _ = tokio::time::timeout(Duration::from_secs(3), tcp.read(&mut sink)).await;
    })
    .await;
    let mut spec = smtp_spec(addr, &ca);
    spec.timeout = Duration::from_millis(300);
    let r = check(&spec).await;
    assert_verdict(&r, Status::Down, Reason::NoReply);
    assert!(r.phases.total < 500_000, "{:?}", r.phases);
}

// ---------------------------------------------------------------------------
// openssl s_server: an independent TLS implementation

fn write_pem(dir: &Path, name: &str, pem: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, pem).unwrap();
    path.to_str().unwrap().to_owned()
}

#[tokio::test]
async fn openssl_s_server_speaking_tls12_is_up_and_serves_http_through_the_tunnel() {
    let openssl = portwatch_harness::require_binary("openssl", "openssl");
    let dir = portwatch_harness::temp_dir();
    let ca = TestCa::new();
    let leaf = ca.leaf(&[HOST], -DAY, 45 * DAY + MARGIN);
    let cert = write_pem(dir.path(), "cert.pem", &leaf.cert_pem);
    let key = write_pem(dir.path(), "key.pem", &leaf.key.serialize_pem());
    let port = portwatch_harness::free_tcp_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut cmd = Command::new(openssl);
    cmd.args([
        "s_server",
        "-accept",
        &addr.to_string(),
        "-cert",
        &cert,
        "-key",
        &key,
        "-tls1_2",
        "-www",
    ]);
    let mut server = portwatch_harness::Service::spawn("openssl-s_server", cmd, dir.path());
    server.wait_tcp(addr, Duration::from_secs(5));

    let mut spec = spec(addr, trusting(&ca));
    spec.tcp = TcpMode::Expect {
        send: Some(b"GET / HTTP/1.0\r\n\r\n".to_vec()),
        expect: Some(compile_regex("^HTTP/1.0 200").unwrap()),
    };
    let r = check(&spec).await;
    assert_verdict(&r, Status::Up, Reason::Ok);
    assert_eq!(r.details.tls_version.as_deref(), Some("TLSv1.2"));
    assert_eq!(r.details.cert_days_left, Some(45));
    assert!(
        r.details
            .banner
            .as_deref()
            .unwrap_or("")
            .starts_with("HTTP/1.0 200 ok"),
        "{:?}",
        r.details.banner
    );

    // And a name openssl's certificate does not carry, from the same server.
    let r = check(&spec_named(addr, &ca, "other.test")).await;
    assert_verdict(&r, Status::Down, Reason::TlsError);
    assert!(
        r.message
            .starts_with("name mismatch: certificate is for portwatch.test"),
        "{}",
        r.message
    );
    server.assert_running();
}

fn spec_named(addr: SocketAddr, ca: &TestCa, name: &str) -> CheckSpec {
    spec(
        addr,
        TlsOptions {
            server_name: Some(name.to_owned()),
            ..trusting(ca)
        },
    )
}
