//! The engine end to end on loopback: TCP connect verdicts, IPv6, DNS failure
//! classes from a real dnsmasq, expect-closed and the degraded threshold.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use portwatch_agent::check::{CheckSpec, Family, Target};
use portwatch_agent::probe::{AddressPolicy, Engine, Registry};
use portwatch_agent::resolve::Resolver;
use portwatch_agent::result::{Reason, Status};
use portwatch_harness as h;

fn spec(target: &str, timeout_ms: u64) -> CheckSpec {
    let mut s = CheckSpec::new(target.parse::<Target>().expect("target"));
    s.timeout = Duration::from_millis(timeout_ms);
    s
}

fn engine_with_ns(ns_port: u16) -> Engine {
    let ns = SocketAddr::from(([127, 0, 0, 1], ns_port));
    Engine::with_resolver(
        Resolver::with_nameserver(ns, Duration::from_millis(400)).expect("resolver"),
    )
}

fn literal_engine() -> Engine {
    Engine::with_resolver(Resolver::literal_only())
}

#[tokio::test]
async fn open_port_is_up_with_connect_time() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let r = literal_engine()
        .run(&spec(&format!("tcp://127.0.0.1:{port}"), 1000))
        .await;
    assert_eq!((r.status, r.reason), (Status::Up, Reason::Ok), "{r:?}");
    assert_eq!(r.address, Some(SocketAddr::from(([127, 0, 0, 1], port))));
    let connect = r.phases.connect.expect("connect phase");
    assert!(connect > 0 && connect <= r.phases.total, "{:?}", r.phases);
    assert_eq!(r.phases.dns, None, "an IP literal needs no DNS");
}

#[tokio::test]
async fn closed_port_is_refused() {
    let closed = h::ClosedPort::on("127.0.0.1");
    let port = closed.port();
    let r = literal_engine()
        .run(&spec(&format!("tcp://127.0.0.1:{port}"), 1000))
        .await;
    assert_eq!(
        (r.status, r.reason),
        (Status::Down, Reason::Refused),
        "{r:?}"
    );
    assert!(r.message.contains("connection refused"), "{}", r.message);
}

#[tokio::test]
async fn ipv6_loopback_up_and_refused() {
    let listener = TcpListener::bind("[::1]:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let r = literal_engine()
        .run(&spec(&format!("tcp://[::1]:{port}"), 1000))
        .await;
    assert_eq!((r.status, r.reason), (Status::Up, Reason::Ok), "{r:?}");
    assert_eq!(r.address_display(), format!("[::1]:{port}"));
    let closed = h::ClosedPort::on("::1");
    let r = literal_engine()
        .run(&spec(&format!("tcp://[::1]:{}", closed.port()), 1000))
        .await;
    assert_eq!(r.reason, Reason::Refused, "{r:?}");
}

#[tokio::test]
async fn expect_closed_inverts_the_verdict() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut s = spec(&format!("tcp://127.0.0.1:{port}"), 1000);
    s.expect_closed = true;
    let r = literal_engine().run(&s).await;
    assert_eq!(
        (r.status, r.reason),
        (Status::Down, Reason::Exposed),
        "{r:?}"
    );
    let closed = h::ClosedPort::on("127.0.0.1");
    s.target = format!("tcp://127.0.0.1:{}", closed.port())
        .parse()
        .unwrap();
    let r = literal_engine().run(&s).await;
    assert_eq!((r.status, r.reason), (Status::Up, Reason::Refused), "{r:?}");
}

#[tokio::test]
async fn degraded_threshold_marks_slow_only_above_it() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut s = spec(&format!("tcp://127.0.0.1:{port}"), 1000);
    // A loopback handshake takes well under 500 ms: not slow.
    s.degraded_after = Some(Duration::from_millis(500));
    let r = literal_engine().run(&s).await;
    assert_eq!(r.status, Status::Up, "{r:?}");
    // A 0 ms threshold: every handshake is above it, so the verdict must flip.
    s.degraded_after = Some(Duration::ZERO);
    let r = literal_engine().run(&s).await;
    assert_eq!(
        (r.status, r.reason),
        (Status::Degraded, Reason::Slow),
        "{r:?}"
    );
    assert!(r.message.contains("threshold"), "{}", r.message);
}

#[tokio::test]
async fn names_resolve_through_the_given_nameserver() {
    let dir = h::temp_dir();
    let dns_port = h::free_port_both();
    let _dns = h::dnsmasq(
        dir.path(),
        dns_port,
        &["--host-record=ok.test,127.0.0.1", "--address=/nx.test/"],
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let engine = engine_with_ns(dns_port);

    let r = engine
        .run(&spec(&format!("tcp://ok.test:{port}"), 2000))
        .await;
    assert_eq!((r.status, r.reason), (Status::Up, Reason::Ok), "{r:?}");
    assert!(r.phases.dns.is_some(), "dns phase measured: {:?}", r.phases);
    assert_eq!(r.address, Some(SocketAddr::from(([127, 0, 0, 1], port))));

    let r = engine
        .run(&spec(&format!("tcp://nx.test:{port}"), 2000))
        .await;
    assert_eq!(
        (r.status, r.reason),
        (Status::Down, Reason::DnsNxdomain),
        "{r:?}"
    );
    assert!(r.address.is_none());

    // ok.test has only an IPv4 address: asking for IPv6 only finds nothing.
    let mut v6 = spec(&format!("tcp://ok.test:{port}"), 2000);
    v6.family = Family::V6;
    let r = engine.run(&v6).await;
    assert_eq!(r.reason, Reason::DnsNxdomain, "{r:?}");
    assert!(r.message.contains("IPv6"), "{}", r.message);
}

/// A tiny upstream that answers every query with SERVFAIL, so dnsmasq passes it on.
fn servfail_upstream() -> (u16, Arc<AtomicBool>) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = sock.local_addr().unwrap().port();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut buf = [0u8; 512];
        while !stop2.load(Ordering::Relaxed) && Instant::now() < deadline {
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                continue;
            };
            if n < 12 {
                continue;
            }
            let mut reply = buf[..n].to_vec();
            reply[2] = 0x80 | (buf[2] & 0x01); // QR, keep RD
            reply[3] = 0x80 | 0x02; // RA, RCODE=SERVFAIL
            reply[6..12].fill(0); // no answers, authority or additional records
            let _ = sock.send_to(&reply, from);
        }
    });
    (port, stop)
}

#[tokio::test]
async fn servfail_refused_and_silence_are_told_apart() {
    let dir = h::temp_dir();
    let (up_port, stop) = servfail_upstream();
    let dns_port = h::free_port_both();
    let _dns = h::dnsmasq(
        dir.path(),
        dns_port,
        &[&format!("--server=/up.test/127.0.0.1#{up_port}")],
    );
    let engine = engine_with_ns(dns_port);

    let r = engine.run(&spec("tcp://broken.up.test:80", 2000)).await;
    assert_eq!(
        (r.status, r.reason),
        (Status::Down, Reason::DnsServfail),
        "{r:?}"
    );
    assert!(
        r.message.contains("SERVFAIL") || r.message.contains("Server Failure"),
        "{}",
        r.message
    );

    // No upstream at all for this name: dnsmasq answers REFUSED, also a server-side failure.
    let r = engine.run(&spec("tcp://elsewhere.example:80", 2000)).await;
    assert_eq!(r.reason, Reason::DnsServfail, "{r:?}");
    stop.store(true, Ordering::Relaxed);

    // A nameserver that never answers: a DNS timeout, bounded by the check timeout.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let engine = engine_with_ns(silent.local_addr().unwrap().port());
    let started = Instant::now();
    let r = engine.run(&spec("tcp://anything.test:80", 1000)).await;
    assert_eq!(
        (r.status, r.reason),
        (Status::Down, Reason::DnsTimeout),
        "{r:?}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "took {:?}",
        started.elapsed()
    );
}

struct DenyLoopback;

impl AddressPolicy for DenyLoopback {
    fn check(&self, addr: SocketAddr) -> Result<(), String> {
        if addr.ip().is_loopback() {
            Err(format!("{addr} is a loopback address: use an agent"))
        } else {
            Ok(())
        }
    }
}

#[tokio::test]
async fn address_policy_blocks_before_any_connect() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let engine = Engine::new(
        Resolver::literal_only(),
        Registry::standard(),
        Arc::new(DenyLoopback),
    );
    let r = engine
        .run(&spec(&format!("tcp://127.0.0.1:{port}"), 1000))
        .await;
    assert_eq!(
        (r.status, r.reason),
        (Status::Down, Reason::BlockedAddress),
        "{r:?}"
    );
    assert!(r.message.contains("use an agent"), "{}", r.message);
    assert!(
        listener.accept().is_err(),
        "no connection may reach a blocked address"
    );
}
