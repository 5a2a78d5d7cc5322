//! Hostile servers on real loopback sockets: a peer that never stops
//! talking, one that trickles a byte a second, one that sends control
//! characters and invalid UTF-8, one that accepts and says nothing, and one
//! that closes in the middle of its reply. Each runs against several presets
//! (and generic send/expect, and an SMTP STARTTLS dialogue); the check must
//! end by its own timeout, read a bounded amount, and give text that is safe
//! to store, print and put in JSON.
//!
//! The pure parsers get random input in `preset/testing.rs` and the fuzz
//! targets (`tests/fuzz`); this file is about the socket side.
//!
//! Every server serves one connection on 127.0.0.1, gives up after
//! `SERVER_LIFETIME` and writes at most `MAX_SERVER_BYTES`.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use portwatch_agent::check::{CheckSpec, StartTls, TcpMode, TcpPreset, TlsOptions, compile_regex};
use portwatch_agent::probe::Engine;
use portwatch_agent::resolve::Resolver;
use portwatch_agent::result::{CheckResult, Reason, Status};

/// The check's timeout in every test.
const TIMEOUT: Duration = Duration::from_millis(1500);
/// How late after its timeout a check may end on a loaded machine.
const SLACK: Duration = Duration::from_millis(1500);
/// No server thread outlives this.
const SERVER_LIFETIME: Duration = Duration::from_secs(10);
/// No server writes more than this.
const MAX_SERVER_BYTES: usize = 8 << 20;

/// What a hostile server does once it has accepted.
#[derive(Clone, Copy)]
enum Behaviour {
    /// `prefix`, then `filler` again and again until the client leaves.
    Endless {
        prefix: &'static [u8],
        filler: &'static [u8],
    },
    /// `bytes`, one a second (then silence).
    Trickle(&'static [u8]),
    /// `bytes`, then a clean close (FIN).
    SayAndClose(&'static [u8]),
    /// Nothing at all, the connection held open.
    Silent,
}

/// The conversations under test, each with the replies that look like its
/// protocol long enough to keep it reading.
struct Case {
    name: &'static str,
    mode: fn() -> TcpMode,
    starttls: Option<StartTls>,
    /// A reply that is valid so far but never complete.
    endless_prefix: &'static [u8],
    endless_filler: &'static [u8],
    /// The start of a valid reply, cut before its end.
    cut: &'static [u8],
    /// A reply full of control characters and invalid UTF-8.
    garbage: &'static [u8],
    /// The reason when `cut` is all that came by the deadline.
    stalled: Reason,
}

fn expect_ssh() -> TcpMode {
    TcpMode::Expect {
        send: Some(b"HELLO\r\n".to_vec()),
        expect: Some(compile_regex("^SSH-2\\.0-[^\\r\\n]*\\r?\\n").unwrap()),
    }
}

const CASES: &[Case] = &[
    Case {
        name: "redis",
        mode: || TcpMode::Preset(TcpPreset::Redis),
        starttls: None,
        endless_prefix: b"+",
        endless_filler: b"PONGPONGPONGPONG",
        cut: b"+PON",
        garbage: b"+\x1b[2J\x1b]0;pwned\x07\xff\xfe\xc3\x28\x00\r\n",
        stalled: Reason::Timeout,
    },
    Case {
        name: "smtp",
        mode: || TcpMode::Preset(TcpPreset::Smtp),
        starttls: None,
        endless_prefix: b"220-mail.test ESMTP\r\n",
        endless_filler: b"220-still greeting\r\n",
        cut: b"220-mail.test ESMTP\r\n220 rea",
        garbage: b"220 \x1b[31mmail\x00\x08\x7f\xff\xc0\xaf\xe2\x80\xae\r\n",
        stalled: Reason::Timeout,
    },
    Case {
        name: "smtp+starttls",
        mode: || TcpMode::Connect,
        starttls: Some(StartTls::Smtp),
        endless_prefix: b"220-mail.test ESMTP\r\n",
        endless_filler: b"220-still greeting\r\n",
        cut: b"220-mail.test ESMTP\r\n220 rea",
        garbage: b"554 \x1b[31mgo away\x00\x08\x7f\xff\xc0\xaf\xe2\x80\xae\r\n",
        stalled: Reason::Timeout,
    },
    Case {
        name: "ssh",
        mode: || TcpMode::Preset(TcpPreset::Ssh),
        starttls: None,
        endless_prefix: b"",
        endless_filler: b"welcome, this is not yet the identification\r\n",
        cut: b"SSH-2.0-OpenSSH_9.",
        garbage: b"SSH-2.0-\x1b[5m\xff\xfe\x00\x07srv\r\n",
        stalled: Reason::Timeout,
    },
    Case {
        name: "postgres",
        mode: || TcpMode::Preset(TcpPreset::Postgres),
        starttls: None,
        // NoticeResponse messages, which may precede anything.
        endless_prefix: b"",
        endless_filler: b"N\x00\x00\x00\x0dSNOTICE\x00\x00",
        cut: b"R\x00\x00\x00\x08\x00\x00",
        garbage: b"E\x00\x00\x00\x21SFATAL\x00C53300\x00M\x1b[2J\xff\xfe\x07\x08full\x00\x00",
        stalled: Reason::Timeout,
    },
    Case {
        name: "expect",
        mode: expect_ssh,
        starttls: None,
        endless_prefix: b"SSH-2.0-",
        endless_filler: b"xxxxxxxxxxxxxxxx",
        cut: b"SSH-2.0-Open",
        garbage: b"\x1b[2J\xff\xfe\x00\x07\x1b]0;pwned\x07SSH-1.99\r\n",
        // An unmatched banner at the deadline is a mismatch, not a slow server.
        stalled: Reason::UnexpectedReply,
    },
];

/// A one-connection server on 127.0.0.1 doing `behaviour`; returns its port
/// and the thread, which ends when the client leaves or at `SERVER_LIFETIME`.
fn serve(behaviour: Behaviour) -> (u16, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        let until = Instant::now() + SERVER_LIFETIME;
        listener.set_nonblocking(true).unwrap();
        let mut s = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(_) if Instant::now() < until => std::thread::sleep(Duration::from_millis(5)),
                Err(_) => return,
            }
        };
        s.set_nonblocking(false).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
        match behaviour {
            Behaviour::Endless { prefix, filler } => {
                let mut sent = s.write(prefix).unwrap_or(0);
                while sent < MAX_SERVER_BYTES && Instant::now() < until {
                    match s.write(filler) {
                        Ok(n) => sent += n,
                        Err(_) => break,
                    }
                }
            }
            Behaviour::Trickle(bytes) => {
                for b in bytes {
                    if Instant::now() >= until || s.write_all(&[*b]).is_err() {
                        break;
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
                hold(&mut s, until);
            }
            Behaviour::SayAndClose(bytes) => {
                let _ = s.write_all(bytes);
                let _ = s.shutdown(Shutdown::Write);
                hold(&mut s, until);
            }
            Behaviour::Silent => hold(&mut s, until),
        }
    });
    (port, handle)
}

/// Keeps the connection until the client closes it (or `until`), reading
/// and dropping whatever it sends.
fn hold(s: &mut TcpStream, until: Instant) {
    let mut buf = [0u8; 1024];
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

fn spec(case: &Case, port: u16) -> CheckSpec {
    let mut s = CheckSpec::new(format!("tcp://127.0.0.1:{port}").parse().unwrap());
    s.tcp = (case.mode)();
    s.timeout = TIMEOUT;
    s.tls = case.starttls.map(|st| TlsOptions {
        server_name: Some("mail.test".into()),
        starttls: Some(st),
        ..TlsOptions::default()
    });
    s.validate().unwrap();
    s
}

/// Runs `case` against a server doing `behaviour`; returns the result and how long it took.
async fn run(case: &Case, behaviour: Behaviour) -> (CheckResult, Duration) {
    let (port, server) = serve(behaviour);
    let engine = Engine::with_resolver(Resolver::literal_only());
    let started = Instant::now();
    let r = engine.run(&spec(case, port)).await;
    let took = started.elapsed();
    assert_safe_text(case.name, &r);
    // Servers that hold the connection see the close and end; a trickling
    // one may still be asleep, so it is not waited for.
    if !matches!(behaviour, Behaviour::Trickle(_)) {
        server.join().unwrap();
    }
    (r, took)
}

/// Every text a result carries is printable ASCII (escapes are), bounded,
/// and the JSON the agent prints and stores stays valid and holds no raw
/// control character or non-ASCII byte (which would reach a terminal or a
/// dashboard as they came).
#[track_caller]
fn assert_safe_text(name: &str, r: &CheckResult) {
    let d = &r.details;
    for (field, text) in [
        ("message", Some(&r.message)),
        ("banner", d.banner.as_ref()),
        ("server_info", d.server_info.as_ref()),
    ] {
        let Some(text) = text else { continue };
        assert!(
            text.bytes().all(|b| (0x20..0x7f).contains(&b)),
            "{name}: {field} {text:?} is not escaped"
        );
        assert!(
            text.len() <= 1024,
            "{name}: {field} is {} bytes",
            text.len()
        );
    }
    let json = serde_json::to_string(r).unwrap();
    assert!(
        json.bytes().all(|b| (0x20..0x7f).contains(&b)),
        "{name}: raw control or non-ASCII bytes in {json}"
    );
    let back: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(back["message"].as_str(), Some(r.message.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_reply_is_cut_at_the_byte_limit_before_the_timeout() {
    for case in CASES {
        let (r, took) = run(
            case,
            Behaviour::Endless {
                prefix: case.endless_prefix,
                filler: case.endless_filler,
            },
        )
        .await;
        // The verdict comes from the byte limit, not from the deadline.
        assert_eq!(
            (r.status, r.reason),
            (Status::Down, Reason::UnexpectedReply),
            "{}: {r:#?}",
            case.name
        );
        assert!(took < TIMEOUT, "{}: took {took:?}", case.name);
        let banner = r.details.banner.as_deref().unwrap_or_default();
        assert!(banner.len() <= 4 * 120 + 3, "{}: {banner}", case.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_server_is_bounded_by_the_check_timeout() {
    // Valid so far, so no parser can decide early: only the deadline ends it.
    all_end_at_the_timeout(|case| Behaviour::Trickle(case.cut), |case| case.stalled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_and_invalid_utf8_are_escaped_everywhere() {
    for case in CASES {
        let (r, took) = run(case, Behaviour::SayAndClose(case.garbage)).await;
        // Whatever the verdict, the text is escaped (checked in `run`) and
        // the raw bytes survive as escapes in the banner.
        assert!(took < TIMEOUT, "{}: took {took:?}", case.name);
        let banner = r.details.banner.as_deref().unwrap_or_default();
        assert!(
            banner.contains("\\x1b") && banner.contains("\\xff"),
            "{}: banner {banner:?} of {r:#?}",
            case.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_accepts_and_never_answers_is_no_reply_at_the_timeout() {
    all_end_at_the_timeout(|_| Behaviour::Silent, |_| Reason::NoReply).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_closes_mid_reply_is_an_unexpected_reply_at_once() {
    for case in CASES {
        let (r, took) = run(case, Behaviour::SayAndClose(case.cut)).await;
        assert_eq!(
            (r.status, r.reason),
            (Status::Down, Reason::UnexpectedReply),
            "{}: {r:#?}",
            case.name
        );
        assert!(
            r.message.contains("closed the connection")
                || r.message.contains("reply does not match"),
            "{}: {}",
            case.name,
            r.message
        );
        assert!(took < TIMEOUT, "{}: took {took:?}", case.name);
    }
}

/// Runs every case against its `behaviour` side by side (each waits for
/// its timeout) and checks that each ends down with its `reason` once its
/// timeout has passed, and not much later.
async fn all_end_at_the_timeout(behaviour: fn(&Case) -> Behaviour, reason: fn(&Case) -> Reason) {
    let mut set = tokio::task::JoinSet::new();
    for case in CASES {
        set.spawn(async move {
            let (r, took) = run(case, behaviour(case)).await;
            assert_eq!(
                (r.status, r.reason),
                (Status::Down, reason(case)),
                "{}: {r:#?}",
                case.name
            );
            assert!(
                took >= TIMEOUT && took < TIMEOUT + SLACK,
                "{}: took {took:?}",
                case.name
            );
        });
    }
    while let Some(done) = set.join_next().await {
        done.unwrap();
    }
}
