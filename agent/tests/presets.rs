//! TCP presets against real servers on loopback: each is asked the question
//! users care about, "is it accepting connections?", in the healthy state and,
//! where the server can be put there, in the "port open but refusing" state
//! (Redis, PostgreSQL and MariaDB at their client limits, memcached out of
//! connections).
//! Plus the generic send/expect conversation against sockets we control.
//!
//! Needs the Debian packages redis-server, postgresql, mariadb-server, memcached,
//! mosquitto and openssh-server.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use portwatch_agent::check::{CheckSpec, TcpMode, TcpPreset, compile_regex};
use portwatch_agent::probe::Engine;
use portwatch_agent::resolve::Resolver;
use portwatch_agent::result::{CheckResult, Reason, Status};
use portwatch_harness::{
    Host, Service, free_tcp_port, postgres, postgres_data_dir, redis, redis_with, require_binary,
    temp_dir,
};

fn engine() -> Engine {
    // Targets are IP literals: the resolver is never asked.
    let resolver =
        Resolver::with_nameserver("127.0.0.1:53".parse().unwrap(), Duration::from_millis(300))
            .unwrap();
    Engine::with_resolver(resolver)
}

fn spec(port: u16, mode: TcpMode) -> CheckSpec {
    let mut spec = CheckSpec::new(format!("tcp://127.0.0.1:{port}").parse().unwrap());
    spec.tcp = mode;
    spec.timeout = Duration::from_millis(1000);
    spec.validate().unwrap();
    spec
}

async fn check(preset: TcpPreset, port: u16) -> CheckResult {
    engine().run(&spec(port, TcpMode::Preset(preset))).await
}

/// Runs the check until `done` accepts its result or `within` passes; returns the last result.
async fn check_until(
    preset: TcpPreset,
    port: u16,
    within: Duration,
    done: impl Fn(&CheckResult) -> bool,
) -> CheckResult {
    let deadline = Instant::now() + within;
    loop {
        let r = check(preset, port).await;
        if done(&r) || Instant::now() >= deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Takes connections (`open` returns one once the server has accepted it)
/// until the check says down, at most `max`. Checking after each one rather
/// than counting slots copes with slots freed late, such as the one the
/// harness's readiness probe held.
async fn fill_until_down(
    preset: TcpPreset,
    port: u16,
    max: usize,
    open: impl Fn() -> TcpStream,
) -> (CheckResult, Vec<TcpStream>) {
    let mut held = Vec::new();
    loop {
        let r = check(preset, port).await;
        if r.status == Status::Down || held.len() >= max {
            return (r, held);
        }
        held.push(open());
    }
}

#[track_caller]
fn assert_up(r: &CheckResult) {
    assert_eq!((r.status, r.reason), (Status::Up, Reason::Ok), "{r:#?}");
}

#[track_caller]
fn assert_refusing(r: &CheckResult, needle: &str) {
    assert_eq!(
        (r.status, r.reason),
        (Status::Down, Reason::UnexpectedReply),
        "{r:#?}"
    );
    assert!(
        r.message.contains(needle),
        "message {:?} lacks {needle:?}",
        r.message
    );
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

// ---------------------------------------------------------------- redis

#[tokio::test]
async fn redis_answering_pong_is_up() {
    let dir = temp_dir();
    let port = free_tcp_port();
    let _redis = redis(dir.path(), port);
    let r = check(TcpPreset::Redis, port).await;
    assert_up(&r);
    assert_eq!(r.details.banner.as_deref(), Some("+PONG\\r\\n"));
    assert!(r.phases.first_byte.is_some());
}

#[tokio::test]
async fn redis_at_max_clients_is_down_with_its_message() {
    let dir = temp_dir();
    let port = free_tcp_port();
    let _redis = redis_with(dir.path(), port, &["--maxclients", "1"]);
    // Take the only slot. The harness's own readiness probe may still hold it
    // for a moment (Redis has not yet seen it close): retry until we get it.
    let deadline = Instant::now() + Duration::from_secs(5);
    let held = loop {
        let mut s = connect(port);
        s.write_all(b"PING\r\n").unwrap();
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).unwrap();
        if &buf == b"+PONG\r\n" {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "never got redis's only client slot: {:?}",
            String::from_utf8_lossy(&buf)
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let r = check_until(TcpPreset::Redis, port, Duration::from_secs(5), |r| {
        r.status == Status::Down
    })
    .await;
    assert_refusing(
        &r,
        "redis refuses connections: ERR max number of clients reached",
    );
    // The slot back, the same server is up again.
    drop(held);
    let r = check_until(TcpPreset::Redis, port, Duration::from_secs(5), |r| {
        r.status == Status::Up
    })
    .await;
    assert_up(&r);
}

#[tokio::test]
async fn redis_requiring_a_password_is_up_and_says_so() {
    let dir = temp_dir();
    let port = free_tcp_port();
    let _redis = redis_with(dir.path(), port, &["--requirepass", "s3cret"]);
    let r = check(TcpPreset::Redis, port).await;
    assert_up(&r);
    assert_eq!(
        r.details.server_info.as_deref(),
        Some("accepting connections, authentication required")
    );
}

#[tokio::test]
async fn a_preset_pointed_at_the_wrong_service_is_an_unexpected_reply() {
    let dir = temp_dir();
    let port = free_tcp_port();
    let _redis = redis(dir.path(), port);
    // Redis answers memcached's `version` as an unknown command.
    let r = check(TcpPreset::Memcached, port).await;
    assert_eq!(
        (r.status, r.reason),
        (Status::Down, Reason::UnexpectedReply),
        "{r:#?}"
    );
    assert!(
        r.message.contains("not a memcached reply to version"),
        "{}",
        r.message
    );
    let banner = r.details.banner.as_deref().unwrap_or("");
    assert!(
        banner.starts_with("-ERR unknown command"),
        "the server's bytes are shown, escaped: {banner}"
    );
}

#[tokio::test]
async fn a_preset_whose_request_the_service_does_not_understand_is_no_reply() {
    let dir = temp_dir();
    let port = free_tcp_port();
    let _redis = redis(dir.path(), port);
    // A PostgreSQL startup message has no line end: Redis waits for one and
    // says nothing, which is what the user must see (not "up").
    let r = check(TcpPreset::Postgres, port).await;
    assert_eq!(
        (r.status, r.reason),
        (Status::Down, Reason::NoReply),
        "{r:#?}"
    );
}

// ---------------------------------------------------------------- postgres

/// Reads one backend message: tag and body.
fn pg_message(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut head = [0u8; 5];
    s.read_exact(&mut head).unwrap();
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let mut body = vec![0u8; len - 4];
    s.read_exact(&mut body).unwrap();
    (head[0], body)
}

/// A logged-in session as the superuser (trust), kept open by the caller.
fn pg_session(port: u16) -> TcpStream {
    let mut s = connect(port);
    let mut body = 196_608u32.to_be_bytes().to_vec();
    body.extend_from_slice(b"user\0postgres\0database\0postgres\0\0");
    let len = (body.len() + 4) as u32;
    s.write_all(&[&len.to_be_bytes()[..], &body].concat())
        .unwrap();
    loop {
        match pg_message(&mut s) {
            (b'Z', _) => return s,
            (b'E', body) => panic!(
                "postgres session refused: {}",
                String::from_utf8_lossy(&body)
            ),
            _ => {}
        }
    }
}

/// Runs one simple query on a session and waits for it to finish.
fn pg_query(s: &mut TcpStream, sql: &str) {
    let len = (sql.len() + 5) as u32;
    s.write_all(&[&b"Q"[..], &len.to_be_bytes(), sql.as_bytes(), b"\0"].concat())
        .unwrap();
    loop {
        match pg_message(s) {
            (b'Z', _) => return,
            (b'E', body) => panic!("query {sql:?} failed: {}", String::from_utf8_lossy(&body)),
            _ => {}
        }
    }
}

#[tokio::test]
async fn postgres_accepting_connections_is_up_with_its_version() {
    let dir = temp_dir();
    let port = free_tcp_port();
    let _pg = postgres(dir.path(), port, &[]);
    let r = check(TcpPreset::Postgres, port).await;
    assert_up(&r);
    // Trust authentication: the server goes on to the role check, which fails
    // for our user "portwatch" on a server that is plainly serving. (The version
    // would follow only for a session that gets that far.)
    assert_eq!(
        r.details.server_info.as_deref(),
        Some("accepting connections, login refused: FATAL 28000 role \"portwatch\" does not exist")
    );
}

#[tokio::test]
async fn postgres_letting_us_in_is_up_with_its_version() {
    let dir = temp_dir();
    let port = free_tcp_port();
    let _pg = postgres(dir.path(), port, &[]);
    let mut admin = pg_session(port);
    pg_query(&mut admin, "create role portwatch login");
    pg_query(&mut admin, "create database portwatch owner portwatch");
    let r = check(TcpPreset::Postgres, port).await;
    assert_up(&r);
    let info = r.details.server_info.unwrap();
    assert!(
        info.starts_with("postgres 15") && info.ends_with(", authentication ok"),
        "{info}"
    );
}

#[tokio::test]
async fn postgres_asking_for_a_password_is_up_and_logs_nothing() {
    let dir = temp_dir();
    let port = free_tcp_port();
    // Connection and backend-exit logging give a positive signal that the
    // backend serving our check is gone, before we look for what it logged.
    let pg = postgres(
        dir.path(),
        port,
        &["log_connections=on", "log_min_messages=debug2"],
    );
    let mut admin = pg_session(port);
    let hba = postgres_data_dir(Host::LOOPBACK, dir.path(), port).join("pg_hba.conf");
    std::fs::write(&hba, "host all all 127.0.0.1/32 scram-sha-256\n").unwrap();
    pg_query(&mut admin, "select pg_reload_conf()");
    let r = check_until(TcpPreset::Postgres, port, Duration::from_secs(5), |r| {
        r.details
            .server_info
            .as_deref()
            .is_some_and(|i| i.contains("sasl"))
    })
    .await;
    assert_up(&r);
    assert_eq!(
        r.details.server_info.as_deref(),
        Some("accepting connections, sasl SCRAM-SHA-256 authentication required")
    );
    // The last connection received is our check's; the default log prefix
    // carries the backend's pid as "[pid]".
    let log = pg.log();
    let line = log
        .lines()
        .rfind(|l| l.contains("connection received: host=127.0.0.1"))
        .unwrap();
    let pid = line
        .split('[')
        .nth(1)
        .and_then(|s| s.split(']').next())
        .unwrap()
        .to_owned();
    let exited = format!("server process (PID {pid}) exited with exit code");
    portwatch_harness::poll_until(Duration::from_secs(5), || pg.log().contains(&exited));
    let log = pg.log();
    assert!(
        log.contains(&format!("{exited} 0")),
        "backend {pid} did not exit cleanly:\n{log}"
    );
    let ours: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(&format!("[{pid}]")) && !l.contains("DEBUG"))
        .collect();
    assert!(
        ours.iter().all(|l| !l.contains("FATAL")),
        "our check made the server log an error:\n{}",
        ours.join("\n")
    );
}

#[tokio::test]
async fn postgres_with_too_many_clients_is_down_with_sqlstate_53300() {
    let dir = temp_dir();
    let port = free_tcp_port();
    let pg = postgres(
        dir.path(),
        port,
        &["max_connections=3", "superuser_reserved_connections=0"],
    );
    let held: Vec<TcpStream> = (0..3).map(|_| pg_session(port)).collect();
    let r = check_until(TcpPreset::Postgres, port, Duration::from_secs(5), |r| {
        r.status == Status::Down
    })
    .await;
    assert_refusing(
        &r,
        "postgres refuses connections: FATAL 53300 sorry, too many clients already",
    );
    drop(held);
    let r = check_until(TcpPreset::Postgres, port, Duration::from_secs(5), |r| {
        r.status == Status::Up
    })
    .await;
    assert_up(&r);
    drop(pg);
}

// ---------------------------------------------------------------- mariadb

fn mariadb(dir: &Path, port: u16, extra: &[&str]) -> Service {
    let install = require_binary("mariadb-install-db", "mariadb-server");
    let bin = require_binary("mariadbd", "mariadb-server");
    let data = dir.join(format!("mariadb-{port}"));
    // Its own temp dir: two servers bootstrapping at once in the shared /tmp
    // trip over each other's temporary tables.
    let tmp = dir.join(format!("mariadb-{port}-tmp"));
    std::fs::create_dir_all(&tmp).unwrap();
    let out = Command::new(install)
        .args([
            "--no-defaults",
            "--user=root",
            "--skip-test-db",
            "--auth-root-authentication-method=normal",
        ])
        .arg(format!("--datadir={}", data.display()))
        .arg(format!("--tmpdir={}", tmp.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mariadb-install-db: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut cmd = Command::new(bin);
    cmd.args([
        "--no-defaults",
        "--user=root",
        "--bind-address=127.0.0.1",
        "--skip-log-bin",
    ])
    .arg(format!("--port={port}"))
    .arg(format!("--datadir={}", data.display()))
    .arg(format!("--tmpdir={}", tmp.display()))
    .arg(format!("--socket={}", data.join("mariadb.sock").display()))
    .arg(format!("--pid-file={}", data.join("mariadb.pid").display()))
    .args(extra);
    let mut s = Service::spawn(&format!("mariadb-{port}"), cmd, dir);
    s.wait_tcp(
        SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(30),
    );
    s
}

#[tokio::test]
async fn mariadb_is_up_with_its_version() {
    let dir = temp_dir();
    let port = free_tcp_port();
    let _db = mariadb(dir.path(), port, &[]);
    let r = check(TcpPreset::Mysql, port).await;
    assert_up(&r);
    let version = r.details.server_info.unwrap();
    assert!(version.contains("-MariaDB"), "{version}");
}

#[tokio::test]
async fn mariadb_with_too_many_connections_is_down_with_error_1040() {
    let dir = temp_dir();
    let port = free_tcp_port();
    // 10 is MariaDB's minimum; one more is kept for an administrator, and past
    // that the server answers 1040 instead of its handshake, before any login.
    let _db = mariadb(dir.path(), port, &["--max-connections=10"]);
    let (r, held) = fill_until_down(TcpPreset::Mysql, port, 32, || {
        let mut s = connect(port);
        s.read_exact(&mut [0u8; 4]).unwrap();
        s
    })
    .await;
    assert_refusing(&r, "mysql refuses connections: 1040 Too many connections");
    assert!(
        held.len() >= 10,
        "down after only {} connections",
        held.len()
    );
}

// ---------------------------------------------------------------- memcached

fn memcached(dir: &Path, port: u16, extra: &[&str]) -> Service {
    let bin = require_binary("memcached", "memcached");
    let mut cmd = Command::new(bin);
    cmd.args([
        "-l",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-U",
        "0",
        "-u",
        "root",
    ])
    .args(extra);
    let mut s = Service::spawn(&format!("memcached-{port}"), cmd, dir);
    s.wait_tcp(
        SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(10),
    );
    s
}

#[tokio::test]
async fn memcached_is_up_with_its_version() {
    let dir = temp_dir();
    let port = free_tcp_port();
    let _mc = memcached(dir.path(), port, &[]);
    let r = check(TcpPreset::Memcached, port).await;
    assert_up(&r);
    let version = r.details.server_info.unwrap();
    assert!(version.starts_with("1."), "{version}");
}

#[tokio::test]
async fn memcached_out_of_connections_is_down_with_its_message() {
    let dir = temp_dir();
    let port = free_tcp_port();
    // memcached lowers its file limit to -c, so it cannot go very low; with one
    // worker thread, -c 24 leaves about a dozen client connections.
    let _mc = memcached(dir.path(), port, &["-c", "24", "-t", "1"]);
    let (r, held) = fill_until_down(TcpPreset::Memcached, port, 64, || {
        let mut s = connect(port);
        s.write_all(b"version\r\n").unwrap();
        s.read_exact(&mut [0u8; 8]).unwrap();
        s
    })
    .await;
    assert_refusing(
        &r,
        "memcached refuses connections: ERROR Too many open connections",
    );
    assert!(
        held.len() >= 4,
        "down after only {} connections",
        held.len()
    );
}

// ---------------------------------------------------------------- mosquitto

fn mosquitto(dir: &Path, port: u16, anonymous: bool) -> Service {
    let bin = require_binary("mosquitto", "mosquitto");
    let conf = dir.join(format!("mosquitto-{port}.conf"));
    let body = format!(
        "listener {port} 127.0.0.1\nallow_anonymous {anonymous}\npersistence false\nlog_dest stderr\n"
    );
    std::fs::write(&conf, body).unwrap();
    let mut cmd = Command::new(bin);
    cmd.arg("-c").arg(&conf);
    let mut s = Service::spawn(&format!("mosquitto-{port}"), cmd, dir);
    s.wait_tcp(
        SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(10),
    );
    s
}

#[tokio::test]
async fn mqtt_broker_accepting_anonymous_clients_is_up() {
    let dir = temp_dir();
    let port = free_tcp_port();
    let broker = mosquitto(dir.path(), port, true);
    let r = check(TcpPreset::Mqtt, port).await;
    assert_up(&r);
    // CONNACK, return code 0 (0x20 shows as a space).
    assert_eq!(r.details.banner.as_deref(), Some(" \\x02\\x00\\x00"));
    // Our DISCONNECT reached the broker: it logs a clean disconnect of our
    // client, not a lost connection.
    portwatch_harness::poll_until(Duration::from_secs(5), || {
        broker.log().contains("disconnected.")
    });
    let log = broker.log();
    let id = log
        .split(" as ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no client connected:\n{log}"));
    assert!(
        id.starts_with("portwatch-") && id.len() == "portwatch-".len() + 8,
        "{log}"
    );
    assert!(log.contains(&format!("Client {id} disconnected.")), "{log}");
    assert!(
        !log.contains(&format!("Client {id} closed its connection")),
        "{log}"
    );
}

#[tokio::test]
async fn mqtt_broker_refusing_anonymous_clients_is_still_up() {
    let dir = temp_dir();
    let port = free_tcp_port();
    let _broker = mosquitto(dir.path(), port, false);
    let r = check(TcpPreset::Mqtt, port).await;
    assert_up(&r);
    assert_eq!(
        r.details.server_info.as_deref(),
        Some("accepting connections, not authorized")
    );
}

// ---------------------------------------------------------------- ssh

fn sshd(dir: &Path, port: u16) -> Service {
    portwatch_harness::sshd_on(portwatch_harness::Host::LOOPBACK, dir, port)
}

#[tokio::test]
async fn sshd_is_up_with_its_software_version_and_logs_no_error() {
    let dir = temp_dir();
    let port = free_tcp_port();
    let sshd = sshd(dir.path(), port);
    // The harness's readiness probe connected and left without a word; let
    // sshd log that first, then look only at what our check causes.
    // A client leaving with sshd's key exchange unread shows as a reset.
    let closed = |log: &str| {
        log.matches("Connection closed by 127.0.0.1").count()
            + log.matches("Connection reset by 127.0.0.1").count()
    };
    portwatch_harness::poll_until(Duration::from_secs(5), || closed(&sshd.log()) >= 1);
    let before = sshd.log().len();
    let r = check(TcpPreset::Ssh, port).await;
    assert_up(&r);
    let software = r.details.server_info.unwrap();
    assert!(software.starts_with("OpenSSH_"), "{software}");
    // We identified ourselves, so sshd saw a client leave during key exchange,
    // not a connection that never said anything (logged as an error).
    portwatch_harness::poll_until(Duration::from_secs(5), || closed(&sshd.log()) >= 2);
    let log = sshd.log();
    let ours = &log[before..];
    assert!(
        (ours.contains("Connection closed by 127.0.0.1")
            || ours.contains("Connection reset by 127.0.0.1"))
            && ours.contains("[preauth]"),
        "{log}"
    );
    assert!(!ours.contains("kex_exchange_identification"), "{log}");
}

// ---------------------------------------------------------------- send/expect

fn expect(send: Option<&[u8]>, pattern: &str) -> TcpMode {
    TcpMode::Expect {
        send: send.map(<[u8]>::to_vec),
        expect: Some(compile_regex(pattern).unwrap()),
    }
}

#[tokio::test]
async fn a_server_that_resets_after_the_request_is_reset() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap();
        // Linger 0: close() sends RST instead of FIN.
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(s);
        buf[..n].to_vec()
    });
    let r = engine()
        .run(&spec(port, expect(Some(b"HELLO\r\n"), "^OK")))
        .await;
    assert_eq!(server.join().unwrap(), b"HELLO\r\n");
    assert_eq!(
        (r.status, r.reason),
        (Status::Down, Reason::Reset),
        "{r:#?}"
    );
}

#[tokio::test]
async fn a_banner_that_does_not_match_is_an_unexpected_reply_shown_escaped() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.write_all(b"220 \x1b[31mhello\xff\r\n").unwrap();
        // A clean close (FIN) once the banner is out.
        s.shutdown(std::net::Shutdown::Write).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.read(&mut [0u8; 16]);
    });
    let r = engine().run(&spec(port, expect(None, "^SSH-"))).await;
    server.join().unwrap();
    assert_eq!(
        (r.status, r.reason),
        (Status::Down, Reason::UnexpectedReply),
        "{r:#?}"
    );
    assert!(
        r.message.contains("reply does not match /^SSH-/"),
        "{}",
        r.message
    );
    assert!(
        r.message.contains("220 \\x1b[31mhello\\xff\\r\\n"),
        "{}",
        r.message
    );
    assert_eq!(
        r.details.banner.as_deref(),
        Some("220 \\x1b[31mhello\\xff\\r\\n")
    );
}

#[tokio::test]
async fn a_banner_that_matches_is_up() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.write_all(b"SSH-2.0-fake\r\n").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.read(&mut [0u8; 16]);
    });
    let r = engine().run(&spec(port, expect(None, "^SSH-2\\.0-"))).await;
    server.join().unwrap();
    assert_up(&r);
}
