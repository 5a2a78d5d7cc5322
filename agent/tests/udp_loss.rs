//! UDP checks on a path that loses datagrams: a request nobody answered is
//! sent again inside the check's timeout, so one lost datagram does not fail
//! it. Against a socket bound here that ignores the first datagram, and
//! against real dnsmasq and chronyd inside a network namespace this test
//! creates, behind an iptables rule that drops every second request. Also:
//! an ICMP port unreachable still fails at once, and silence still ends at
//! the timeout.

use std::net::{IpAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hickory_resolver::proto::op::{Message, MessageType};
use portwatch_agent::check::{CheckSpec, Host, Protocol, Target, UdpMode};
use portwatch_agent::probe::Engine;
use portwatch_agent::probe::udp::UDP_SENDS;
use portwatch_agent::resolve::Resolver;
use portwatch_agent::result::{CheckResult, Reason, Status};
use portwatch_harness::netns::{self, Netns};
use portwatch_harness::{self as h, UdpResponder};

const TIMEOUT: Duration = Duration::from_millis(900);
/// When the first resend goes: a third of the wait.
const RESEND: Duration = Duration::from_millis(300);

fn spec(ip: &str, port: u16, mode: UdpMode) -> CheckSpec {
    let target = Target {
        protocol: Protocol::Udp,
        host: Host::Ip(ip.parse().unwrap()),
        port,
    };
    let mut s = CheckSpec::new(target);
    s.timeout = TIMEOUT;
    s.udp = mode;
    s.validate().unwrap();
    s
}

async fn run(spec: &CheckSpec) -> CheckResult {
    // Every target here is an IP literal: the resolver is never asked.
    Engine::with_resolver(
        Resolver::with_nameserver("127.0.0.1:9".parse().unwrap(), TIMEOUT).unwrap(),
    )
    .run(spec)
    .await
}

fn ntp() -> UdpMode {
    UdpMode::Ntp {
        max_offset: Duration::from_millis(100),
    }
}

/// Answers every datagram but the first with `answer`.
fn deaf_to_the_first(answer: fn(&[u8]) -> Vec<u8>) -> UdpResponder {
    let seen = Arc::new(AtomicUsize::new(0));
    UdpResponder::start("127.0.0.1", move |q| {
        if seen.fetch_add(1, Ordering::SeqCst) == 0 {
            Vec::new()
        } else {
            vec![answer(q)]
        }
    })
}

fn dns_answer(query: &[u8]) -> Vec<u8> {
    let q = Message::from_vec(query).unwrap();
    let mut m = Message::response(q.metadata.id, q.metadata.op_code);
    m.metadata.message_type = MessageType::Response;
    m.add_queries(q.queries.clone());
    m.to_vec().unwrap()
}

/// A synchronized stratum 2 server's answer echoing the request's transmit
/// timestamp, with our own clock as its time.
fn ntp_answer(request: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 48];
    p[0] = 0x24;
    p[1] = 2;
    p[24..32].copy_from_slice(&request[40..48]);
    let now = portwatch_agent::probe::ntp::NtpTime::from_system(std::time::SystemTime::now());
    p[32..40].copy_from_slice(&now.0.to_be_bytes());
    p[40..48].copy_from_slice(&now.0.to_be_bytes());
    p
}

/// Up, after one resend, with the round trip of the send that was answered
/// (microseconds on loopback), not the time spent waiting for the lost one.
fn assert_rescued(r: &CheckResult, took: Duration, what: &str) {
    assert_eq!(
        (r.status, r.reason),
        (Status::Up, Reason::Ok),
        "{what}: {r:?}"
    );
    assert!(r.message.contains("after 1 resend"), "{what}: {r:?}");
    let rtt = Duration::from_micros(r.phases.first_byte.expect("a round trip"));
    assert!(
        rtt < RESEND / 2,
        "{what}: round trip {rtt:?} counts the wait"
    );
    assert!(
        took >= RESEND && took < RESEND * 2,
        "{what}: the resend goes a third into the wait: {took:?}"
    );
}

#[tokio::test]
async fn a_lost_first_datagram_is_sent_again_and_the_reply_counts() {
    // Generic: the same payload again.
    let echo = deaf_to_the_first(|q| q.to_vec());
    let started = Instant::now();
    let r = run(&spec("127.0.0.1", echo.addr.port(), UdpMode::default())).await;
    assert_rescued(&r, started.elapsed(), "generic");
    let got = echo.received();
    assert_eq!(got.len(), 2, "sent twice, no more once answered");
    assert_eq!(got[0], got[1]);

    // DNS: the same query with the same ID, so a late answer to either counts.
    let dns = deaf_to_the_first(dns_answer);
    let started = Instant::now();
    let r = run(&spec(
        "127.0.0.1",
        dns.addr.port(),
        UdpMode::Dns {
            name: "ok.test".into(),
        },
    ))
    .await;
    assert_rescued(&r, started.elapsed(), "dns");
    assert_eq!(r.details.dns_rcode.as_deref(), Some("NOERROR"));
    let got = dns.received();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0], got[1], "the same datagram, the same query id");

    // NTP: a fresh transmit timestamp each time, the offset from the one answered.
    let server = deaf_to_the_first(ntp_answer);
    let started = Instant::now();
    let r = run(&spec("127.0.0.1", server.addr.port(), ntp())).await;
    assert_rescued(&r, started.elapsed(), "ntp");
    let offset = r.details.ntp_offset_us.expect("an offset");
    assert!(
        offset.abs() < 20_000,
        "the offset is computed from the T1 of the answered send, not the lost one: {offset} us"
    );
    let got = server.received();
    assert_eq!(got.len(), 2);
    assert_ne!(got[0][40..48], got[1][40..48], "a new transmit timestamp");
}

#[tokio::test]
async fn a_late_answer_to_the_first_ntp_send_is_still_ours() {
    // The server answers only the first request, after the resend went out:
    // the reply names the first T1, which still counts.
    let seen = Arc::new(AtomicUsize::new(0));
    let first: Arc<std::sync::Mutex<Option<Vec<u8>>>> = Arc::default();
    let keep = Arc::clone(&first);
    let slow = UdpResponder::start("127.0.0.1", move |q| {
        let n = seen.fetch_add(1, Ordering::SeqCst);
        let mut kept = keep.lock().unwrap();
        if n == 0 {
            *kept = Some(q.to_vec());
            Vec::new()
        } else {
            // Answer the first request, now.
            kept.take().map(|q| ntp_answer(&q)).into_iter().collect()
        }
    });
    let mode = UdpMode::Ntp {
        max_offset: Duration::from_secs(1),
    };
    let r = run(&spec("127.0.0.1", slow.addr.port(), mode)).await;
    assert_eq!((r.status, r.reason), (Status::Up, Reason::Ok), "{r:?}");
    let rtt = Duration::from_micros(r.phases.first_byte.expect("a round trip"));
    assert!(
        rtt >= RESEND,
        "measured from the first send, which it answers: {rtt:?}"
    );
    // This server stamps its receive time when it answers, ~RESEND after
    // the first send: with that send's T1 the offset is ~+RESEND/2 (with the
    // second's it would be ~0, the sign of a reply matched to the wrong send).
    let offset = r.details.ntp_offset_us.expect("offset");
    let half = i64::try_from(RESEND.as_micros() / 2).unwrap();
    assert!(
        (half / 2..half * 3 / 2).contains(&offset),
        "{offset} us, expected about {half} us"
    );
}

#[tokio::test]
async fn refused_still_fails_at_once_and_silence_still_ends_at_the_timeout() {
    let closed = UdpSocket::bind(("127.0.0.1".parse::<IpAddr>().unwrap(), 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    for mode in [UdpMode::default(), ntp()] {
        let started = Instant::now();
        let r = run(&spec("127.0.0.1", closed, mode)).await;
        assert_eq!(
            (r.status, r.reason),
            (Status::Down, Reason::Refused),
            "{r:?}"
        );
        assert!(
            started.elapsed() < RESEND,
            "no resend wait: {:?}",
            started.elapsed()
        );
    }

    let silent = UdpResponder::start("127.0.0.1", |_| Vec::new());
    let started = Instant::now();
    let r = run(&spec("127.0.0.1", silent.addr.port(), UdpMode::default())).await;
    let took = started.elapsed();
    assert_eq!(
        (r.status, r.reason),
        (Status::Down, Reason::NoReply),
        "{r:?}"
    );
    assert!(
        took >= TIMEOUT && took < TIMEOUT + Duration::from_millis(200),
        "{took:?}"
    );
    assert!(
        r.message.contains(&format!("to {UDP_SENDS} sends")),
        "{r:?}"
    );
    assert_eq!(
        silent.received().len(),
        UDP_SENDS,
        "every send, within the timeout"
    );
}

/// Real dnsmasq and chronyd in a namespace of our own, with every second
/// request to them dropped (`-m statistic --mode nth --every 2`): one send
/// per check would fail every other check; with resends every check is up.
#[test]
fn dnsmasq_and_chrony_behind_a_rule_dropping_every_second_request() {
    if !netns::available() {
        panic!("this test needs root and iproute2 (network namespaces)");
    }
    let dir = h::temp_dir();
    let ns = Netns::new("udploss");
    let host = h::Host::inside(&ns, "127.0.0.1");
    let dns_port = h::free_port_both();
    let ntp_port = h::free_udp_port();
    let _dnsmasq = h::dnsmasq_on(
        host,
        dir.path(),
        dns_port,
        &["--host-record=ok.test,192.0.2.10"],
    );
    let _chrony = h::chrony_on(host, dir.path(), ntp_port);
    for port in [dns_port, ntp_port] {
        ns.rule("-A", &netns::drop_nth_udp(port, 2));
    }
    let dns = spec(
        "127.0.0.1",
        dns_port,
        UdpMode::Dns {
            name: "ok.test".into(),
        },
    );
    let ntp = spec("127.0.0.1", ntp_port, ntp());
    let results: Vec<(&str, CheckResult)> = ns.within(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut out = Vec::new();
            // Bounded: 5 checks of each, one at a time.
            for _ in 0..5 {
                out.push(("dns", run(&dns).await));
                out.push(("ntp", run(&ntp).await));
            }
            out
        })
    });
    let dropped = ns.iptables(&["-L", "INPUT", "-v", "-x", "-n"]);
    for (what, r) in &results {
        assert_eq!(
            (r.status, r.reason),
            (Status::Up, Reason::Ok),
            "{what}: {r:?}\n{dropped}"
        );
        assert!(r.message.contains("after 1 resend"), "{what}: {r:?}");
    }
    assert_eq!(results.len(), 10);
    // The rule really dropped one request of each check.
    let drops: Vec<u64> = dropped
        .lines()
        .filter(|l| l.contains("DROP"))
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    assert_eq!(drops, vec![5, 5], "{dropped}");
}
