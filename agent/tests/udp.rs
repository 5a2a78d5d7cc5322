//! The UDP prober against real servers on loopback: dnsmasq (NOERROR, NXDOMAIN,
//! SERVFAIL through an upstream, REFUSED), chrony (NTP), closed ports (ICMP port
//! unreachable), silent sockets (no_reply) and tiny responders run by the test
//! (echo, wrong DNS IDs).

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;

use hickory_resolver::proto::op::{Message, MessageType, ResponseCode};
use portwatch_agent::check::{CheckSpec, Host, Protocol, Target, UdpMode, compile_regex};
use portwatch_agent::probe::Engine;
use portwatch_agent::resolve::Resolver;
use portwatch_agent::result::{CheckResult, Reason, Status};
use portwatch_harness::{self as h, UdpResponder};

const TIMEOUT: Duration = Duration::from_millis(600);

fn engine() -> Engine {
    // Every target here is an IP literal: the resolver is never asked.
    Engine::with_resolver(
        Resolver::with_nameserver("127.0.0.1:9".parse().unwrap(), TIMEOUT).unwrap(),
    )
}

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
    engine().run(spec).await
}

fn dns(name: &str) -> UdpMode {
    UdpMode::Dns { name: name.into() }
}

/// A DNS answer to `query` with `rcode`, the ID xored with `id_xor` (0 keeps it).
fn dns_answer(query: &[u8], rcode: ResponseCode, id_xor: u16) -> Vec<u8> {
    let q = Message::from_vec(query).unwrap();
    let mut m = Message::response(q.metadata.id ^ id_xor, q.metadata.op_code);
    m.metadata.message_type = MessageType::Response;
    m.metadata.recursion_desired = q.metadata.recursion_desired;
    m.metadata.response_code = rcode;
    m.add_queries(q.queries.clone());
    m.to_vec().unwrap()
}

#[tokio::test]
async fn dns_noerror_and_nxdomain_are_up() {
    let dir = h::temp_dir();
    let port = h::free_port_both();
    let _dnsmasq = h::dnsmasq(
        dir.path(),
        port,
        &["--host-record=ok.test,192.0.2.10", "--address=/nx.test/"],
    );

    let r = run(&spec("127.0.0.1", port, dns("ok.test"))).await;
    assert_eq!((r.status, r.reason), (Status::Up, Reason::Ok), "{r:?}");
    assert_eq!(r.details.dns_rcode.as_deref(), Some("NOERROR"));
    assert_eq!(r.details.dns_answers, Some(1));
    let rtt = r.phases.first_byte.expect("round trip measured");
    assert!(rtt > 0 && rtt < 600_000, "{rtt}");
    assert_eq!(r.phases.connect, None, "udp has no connect phase");

    let r = run(&spec("127.0.0.1", port, dns("nx.test"))).await;
    assert_eq!((r.status, r.reason), (Status::Up, Reason::Ok), "{r:?}");
    assert_eq!(r.details.dns_rcode.as_deref(), Some("NXDOMAIN"));
    assert_eq!(r.details.dns_answers, Some(0));
}

#[tokio::test]
async fn dns_servfail_and_refused_are_down_with_the_rcode() {
    // An upstream that answers SERVFAIL to everything; dnsmasq passes it on.
    let upstream = UdpResponder::start("127.0.0.1", |q| {
        vec![dns_answer(q, ResponseCode::ServFail, 0)]
    });
    let dir = h::temp_dir();
    let port = h::free_port_both();
    let server = format!("--server=/up.test/127.0.0.1#{}", upstream.addr.port());
    let _dnsmasq = h::dnsmasq(
        dir.path(),
        port,
        &["--host-record=ok.test,192.0.2.10", &server],
    );

    let r = run(&spec("127.0.0.1", port, dns("www.up.test"))).await;
    assert_eq!(
        (r.status, r.reason),
        (Status::Down, Reason::UnexpectedReply),
        "{r:?}"
    );
    assert_eq!(r.details.dns_rcode.as_deref(), Some("SERVFAIL"));
    assert!(r.message.contains("SERVFAIL"), "{}", r.message);
    assert!(
        !upstream.received().is_empty(),
        "dnsmasq forwarded the query upstream"
    );

    // No server configured for the name: dnsmasq refuses.
    let r = run(&spec("127.0.0.1", port, dns("elsewhere.example"))).await;
    assert_eq!(
        (r.status, r.reason),
        (Status::Down, Reason::UnexpectedReply),
        "{r:?}"
    );
    assert_eq!(r.details.dns_rcode.as_deref(), Some("REFUSED"));
}

#[tokio::test]
async fn dns_replies_with_another_id_are_ignored() {
    // First a reply with the wrong ID, then the right one: the check keeps reading.
    let both = UdpResponder::start("127.0.0.1", |q| {
        vec![
            dns_answer(q, ResponseCode::ServFail, 0x5555),
            dns_answer(q, ResponseCode::NoError, 0),
        ]
    });
    let r = run(&spec("127.0.0.1", both.addr.port(), dns("ok.test"))).await;
    assert_eq!((r.status, r.reason), (Status::Up, Reason::Ok), "{r:?}");
    assert_eq!(r.details.dns_rcode.as_deref(), Some("NOERROR"));

    // Only wrong IDs: no reply, and the message says replies were ignored.
    let wrong = UdpResponder::start("127.0.0.1", |q| {
        vec![dns_answer(q, ResponseCode::NoError, 1)]
    });
    let r = run(&spec("127.0.0.1", wrong.addr.port(), dns("ok.test"))).await;
    assert_eq!(
        (r.status, r.reason),
        (Status::Down, Reason::NoReply),
        "{r:?}"
    );
    // Each of the three sends drew one.
    assert!(
        r.message
            .contains("to 3 sends (3 replies to other requests were ignored)"),
        "{}",
        r.message
    );

    // Garbage with our ID is an unexpected reply, quoted safely.
    let junk = UdpResponder::start("127.0.0.1", |q| {
        vec![[&q[..2], b"\xff\x00junk\n".as_slice()].concat()]
    });
    let r = run(&spec("127.0.0.1", junk.addr.port(), dns("ok.test"))).await;
    assert_eq!(
        (r.status, r.reason),
        (Status::Down, Reason::UnexpectedReply),
        "{r:?}"
    );
    assert!(r.message.contains("junk\\n"), "{}", r.message);
}

#[tokio::test]
async fn ntp_against_chrony_reports_stratum_and_offset() {
    let dir = h::temp_dir();
    let port = h::free_udp_port();
    let _chrony = h::chrony(dir.path(), port);

    let mode = UdpMode::Ntp {
        max_offset: Duration::from_millis(100),
    };
    let r = run(&spec("127.0.0.1", port, mode)).await;
    assert_eq!((r.status, r.reason), (Status::Up, Reason::Ok), "{r:?}");
    let stratum = r.details.ntp_stratum.expect("stratum");
    assert!((1..=15).contains(&stratum), "{stratum}");
    // Same machine, same clock: the offset is tiny.
    let offset = r.details.ntp_offset_us.expect("offset");
    assert!(offset.abs() < 10_000, "{offset} us");
    assert!(r.phases.first_byte.is_some());

    // Any offset at all is above a zero threshold: degraded, not down.
    let r = run(&spec(
        "127.0.0.1",
        port,
        UdpMode::Ntp {
            max_offset: Duration::ZERO,
        },
    ))
    .await;
    assert_eq!(
        (r.status, r.reason),
        (Status::Degraded, Reason::UnexpectedReply),
        "{r:?}"
    );
    assert!(
        r.message.contains("clock offset") && r.message.contains("above the +0.000 ms threshold"),
        "{}",
        r.message
    );
    assert!(r.details.ntp_offset_us.is_some());
}

#[tokio::test]
async fn ntp_ignores_replies_to_other_requests() {
    // A server that answers with a valid packet but a wrong origin timestamp.
    let liar = UdpResponder::start("127.0.0.1", |q| {
        let mut p = vec![0u8; 48];
        p[0] = 0x24;
        p[1] = 2;
        p[24..32].copy_from_slice(&q[40..48]);
        p[31] ^= 1;
        p[40] = 1;
        vec![p]
    });
    let r = run(&spec(
        "127.0.0.1",
        liar.addr.port(),
        UdpMode::Ntp {
            max_offset: Duration::from_secs(1),
        },
    ))
    .await;
    assert_eq!(
        (r.status, r.reason),
        (Status::Down, Reason::NoReply),
        "{r:?}"
    );
    assert!(r.message.contains("ignored"), "{}", r.message);
}

#[tokio::test]
async fn closed_port_is_refused() {
    for ip in ["127.0.0.1", "::1"] {
        let port = UdpSocket::bind((ip.parse::<IpAddr>().unwrap(), 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let started = std::time::Instant::now();
        let r = run(&spec(ip, port, UdpMode::default())).await;
        assert_eq!(
            (r.status, r.reason),
            (Status::Down, Reason::Refused),
            "{ip}: {r:?}"
        );
        assert!(
            started.elapsed() < Duration::from_millis(300),
            "the icmp error ends the check early"
        );
    }
}

#[tokio::test]
async fn silence_is_no_reply_and_up_only_when_asked() {
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();

    let started = std::time::Instant::now();
    let r = run(&spec("127.0.0.1", port, UdpMode::default())).await;
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
    assert_eq!(r.phases.first_byte, None);

    let mut s = spec("127.0.0.1", port, UdpMode::default());
    s.no_reply_is_up = true;
    let r = run(&s).await;
    assert_eq!(
        (r.status, r.reason, r.message.as_str()),
        (Status::Up, Reason::NoReply, "open|filtered: no reply")
    );

    // The datagrams really reached the socket.
    let mut buf = [0u8; 64];
    silent
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let n = silent.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"portwatch\n");
}

#[tokio::test]
async fn generic_payload_with_regex_on_v4_and_v6() {
    for ip in ["127.0.0.1", "::1"] {
        let echo = UdpResponder::start(ip, |q| vec![[b"ECHO ".as_slice(), q].concat()]);
        let port = echo.addr.port();

        let mode = UdpMode::Generic {
            payload: b"hello\r\n".to_vec(),
            expect: Some(compile_regex("^ECHO hello").unwrap()),
        };
        let r = run(&spec(ip, port, mode)).await;
        assert_eq!(
            (r.status, r.reason),
            (Status::Up, Reason::Ok),
            "{ip}: {r:?}"
        );
        assert_eq!(r.details.banner.as_deref(), Some("ECHO hello\\r\\n"));
        assert!(r.phases.first_byte.is_some());
        assert_eq!(r.address, Some(SocketAddr::new(ip.parse().unwrap(), port)));

        // Any reply is up without a pattern.
        let r = run(&spec(
            ip,
            port,
            UdpMode::Generic {
                payload: b"x".to_vec(),
                expect: None,
            },
        ))
        .await;
        assert_eq!(r.status, Status::Up, "{ip}: {r:?}");

        let mode = UdpMode::Generic {
            payload: b"bye".to_vec(),
            expect: Some(compile_regex("^PONG").unwrap()),
        };
        let r = run(&spec(ip, port, mode)).await;
        assert_eq!(
            (r.status, r.reason),
            (Status::Down, Reason::UnexpectedReply),
            "{ip}: {r:?}"
        );
        assert!(r.message.contains("ECHO bye"), "{}", r.message);
        assert_eq!(
            echo.received(),
            vec![b"hello\r\n".to_vec(), b"x".to_vec(), b"bye".to_vec()]
        );
    }
}

#[tokio::test]
async fn syslog_is_up_without_icmp_error_and_refused_when_closed() {
    let listener = UdpResponder::start("127.0.0.1", |_| vec![]);
    let started = std::time::Instant::now();
    let mut s = spec("127.0.0.1", listener.addr.port(), UdpMode::Syslog);
    s.timeout = Duration::from_secs(3);
    let r = run(&s).await;
    let took = started.elapsed();
    assert_eq!(
        (r.status, r.reason, r.message.as_str()),
        (Status::Up, Reason::Ok, "sent, no ICMP error"),
        "{r:?}"
    );
    // It waits about a second for an ICMP error, not the whole timeout.
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    let got = listener.received();
    assert_eq!(got.len(), 1);
    let msg = String::from_utf8(got[0].clone()).unwrap();
    let fields: Vec<&str> = msg.splitn(8, ' ').collect();
    assert_eq!(fields[0], "<14>1");
    assert!(fields[1].ends_with('Z') && fields[1].len() == 27, "{msg}");
    assert_eq!(
        &fields[3..],
        ["portwatch", "-", "-", "-", "portwatch syslog check"],
        "{msg}"
    );

    let port = h::free_udp_port();
    let r = run(&spec("127.0.0.1", port, UdpMode::Syslog)).await;
    assert_eq!(
        (r.status, r.reason),
        (Status::Down, Reason::Refused),
        "{r:?}"
    );
}
