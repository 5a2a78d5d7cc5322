//! Test harness shared by the agent's prober tests and the end-to-end suite:
//! a fresh temp dir per test, free loopback ports, real services (Redis,
//! dnsmasq, chrony, PostgreSQL...) started in the foreground on those ports and
//! killed on drop, and network namespaces removed on drop.
//!
//! Everything here sends traffic only to loopback or to namespaces it created.

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod netns;

use netns::Netns;

/// Where a service runs and listens: the root namespace's loopback, or an
/// address inside a namespace the test made.
#[derive(Clone, Copy)]
pub struct Host<'a> {
    pub ns: Option<&'a Netns>,
    pub ip: IpAddr,
}

impl Host<'static> {
    /// 127.0.0.1 in the test's own namespace.
    pub const LOOPBACK: Host<'static> = Host {
        ns: None,
        ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
    };
}

impl<'a> Host<'a> {
    /// `ip` inside `ns`.
    pub fn inside(ns: &'a Netns, ip: &str) -> Host<'a> {
        Host {
            ns: Some(ns),
            ip: ip.parse().expect("an IP address"),
        }
    }

    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.ip, port)
    }

    /// A `Command` for `bin` run where this host is.
    pub fn command(&self, bin: impl AsRef<std::ffi::OsStr>) -> Command {
        match self.ns {
            Some(ns) => ns.command(bin),
            None => Command::new(bin),
        }
    }

    /// Runs `f` with this host's network.
    pub fn within<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        match self.ns {
            Some(ns) => ns.within(f),
            None => f(),
        }
    }
}

/// Polls `ready` every 20 ms until it holds or `within` has passed; returns
/// whether it held. For waiting on something a test cannot be told about
/// (a log line, a process exit), never for passing time.
pub fn poll_until(within: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if ready() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `find` every 20 ms until it returns something or `within` has
/// passed: [`poll_until`] for a test that wants the thing it waited for.
pub fn wait_for<T>(within: Duration, mut find: impl FnMut() -> Option<T>) -> Option<T> {
    let mut found = None;
    poll_until(within, || {
        found = find();
        found.is_some()
    });
    found
}

/// The next port to try for a server of a test: below the kernel's
/// ephemeral range (`ip_local_port_range`, 32768-60999 by default), so no
/// outgoing connection of a parallel test can take it between our check and
/// the server's bind (a port from `bind(0)` can: that range is where the
/// kernel picks both). Each process walks its own order, seeded by its pid.
fn next_candidate() -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    static RANGE: std::sync::OnceLock<(u32, u32)> = std::sync::OnceLock::new();
    let (low, span) = *RANGE.get_or_init(|| {
        let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
            .unwrap_or(32768);
        let low = 10_000.min(ephemeral_low / 2);
        (low, ephemeral_low.saturating_sub(low).max(1))
    });
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // 7919 is prime, so the walk covers the span before it repeats (unless
    // the span is a multiple of it).
    let start = std::process::id().wrapping_mul(7919);
    u16::try_from(low + start.wrapping_add(n.wrapping_mul(7919)) % span).unwrap_or(0)
}

/// A port on 127.0.0.1 that `free` says is free, from [`next_candidate`].
fn free_port(what: &str, free: impl Fn(u16) -> bool) -> u16 {
    for _ in 0..1000 {
        let p = next_candidate();
        if p != 0 && free(p) {
            return p;
        }
    }
    panic!("no free {what} port on 127.0.0.1 after 1000 tries");
}

/// A free TCP port on 127.0.0.1 for a test's server (checked by binding it,
/// then released; see [`next_candidate`] for why it is not `bind(0)`).
pub fn free_tcp_port() -> u16 {
    free_port("tcp", |p| TcpListener::bind(("127.0.0.1", p)).is_ok())
}

/// A TCP port that is certainly closed: bound by this guard but not listening,
/// so a connect gets a RST (refused) and no other test can take the port while
/// the guard lives. Freeing a port and hoping it stays free is a race.
pub struct ClosedPort {
    _socket: socket2::Socket,
    pub addr: SocketAddr,
}

impl ClosedPort {
    /// On `ip` (e.g. "127.0.0.1" or "::1"), a port the kernel picks.
    pub fn on(ip: &str) -> ClosedPort {
        let ip: std::net::IpAddr = ip.parse().expect("ip");
        let addr = SocketAddr::new(ip, 0);
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        )
        .expect("tcp socket");
        socket.bind(&addr.into()).expect("bind");
        let addr = socket
            .local_addr()
            .expect("local addr")
            .as_socket()
            .expect("inet address");
        ClosedPort {
            _socket: socket,
            addr,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

/// A free UDP port on 127.0.0.1.
pub fn free_udp_port() -> u16 {
    free_port("udp", |p| UdpSocket::bind(("127.0.0.1", p)).is_ok())
}

/// A port free for both TCP and UDP on 127.0.0.1 (for DNS servers, which bind both).
pub fn free_port_both() -> u16 {
    free_port("tcp+udp", |p| {
        UdpSocket::bind(("127.0.0.1", p)).is_ok() && TcpListener::bind(("127.0.0.1", p)).is_ok()
    })
}

/// A UDP responder thread on `ip` (a port the kernel picks): `answer` maps
/// each datagram to the replies to send back (none: it stays silent). Stops
/// on drop; bounded either way (30 s, 100 datagrams).
pub struct UdpResponder {
    pub addr: SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<Vec<u8>>>>,
}

impl UdpResponder {
    pub fn start(
        ip: &str,
        answer: impl Fn(&[u8]) -> Vec<Vec<u8>> + Send + 'static,
    ) -> UdpResponder {
        use std::sync::atomic::Ordering;
        let sock = UdpSocket::bind((ip.parse::<IpAddr>().expect("an IP address"), 0))
            .expect("bind the responder");
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .expect("read timeout");
        let addr = sock.local_addr().expect("local addr");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = std::sync::Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut seen = Vec::new();
            let until = Instant::now() + Duration::from_secs(30);
            let mut buf = [0u8; 2048];
            while !stopped.load(Ordering::Relaxed) && Instant::now() < until && seen.len() < 100 {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                seen.push(buf[..n].to_vec());
                for reply in answer(&buf[..n]) {
                    let _ = sock.send_to(&reply, from);
                }
            }
            seen
        });
        UdpResponder {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the thread and returns every datagram it received.
    pub fn received(mut self) -> Vec<Vec<u8>> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread
            .take()
            .map(|t| t.join().expect("the responder thread"))
            .unwrap_or_default()
    }
}

impl Drop for UdpResponder {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A fresh temporary directory, removed on drop.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("portwatch-test-")
        .tempdir()
        .expect("create temp dir")
}

/// Finds an executable in PATH or the usual sbin/lib directories; `None` when the
/// package is not installed.
pub fn find_binary(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(
        [
            "/usr/sbin",
            "/sbin",
            "/usr/local/sbin",
            "/usr/local/bin",
            "/usr/bin",
        ]
        .map(PathBuf::from),
    );
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<PathBuf> = entries.flatten().map(|e| e.path().join("bin")).collect();
        versions.sort();
        dirs.extend(versions.into_iter().rev());
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// Like `find_binary`, but a missing binary fails the test with the package to install.
pub fn require_binary(name: &str, package: &str) -> PathBuf {
    find_binary(name).unwrap_or_else(|| {
        panic!("{name} not found: install the Debian package {package} (.ci/run does this)")
    })
}

/// A foreground process owned by a test; killed (SIGKILL) and reaped on drop.
pub struct Service {
    pub name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Service {
    /// Spawns `cmd` with stdout/stderr to a log file in `dir`.
    pub fn spawn(name: &str, mut cmd: Command, dir: &Path) -> Service {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("create service log");
        let err = out.try_clone().expect("clone log handle");
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        // Its own process group, so a kill reaches whatever it started
        // (runuser -> postgres -> its workers).
        cmd.process_group(0);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Service {
            name: name.to_owned(),
            child: Some(child),
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// What the service printed so far (for failure messages).
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Whether the process has exited (reaping it if so).
    pub fn exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => !matches!(c.try_wait(), Ok(None)),
            None => true,
        }
    }

    /// Panics with the service's log if it exited.
    pub fn assert_running(&mut self) {
        if let Some(c) = self.child.as_mut()
            && let Ok(Some(status)) = c.try_wait()
        {
            panic!("{} exited early ({status}):\n{}", self.name, self.log());
        }
    }

    /// Waits until a TCP connect to `addr` succeeds (the service is listening).
    pub fn wait_tcp(&mut self, addr: SocketAddr, within: Duration) {
        self.wait_tcp_on(Host::LOOPBACK, addr, within)
    }

    /// [`Service::wait_tcp`] from inside `from`'s network.
    pub fn wait_tcp_on(&mut self, from: Host<'_>, addr: SocketAddr, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            self.assert_running();
            if from.within(|| TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok())
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} not listening on {addr} after {within:?}:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the log contains `needle`.
    pub fn wait_log(&mut self, needle: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            self.assert_running();
            if self.log().contains(needle) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} never logged {needle:?} within {within:?}:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process and everything in its process group now (SIGKILL)
    /// and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", c.id())])
                .stderr(Stdio::null())
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis server on 127.0.0.1:`port`, no persistence.
pub fn redis(dir: &Path, port: u16) -> Service {
    redis_with(dir, port, &[])
}

/// A Redis server with extra arguments (e.g. `--maxclients 1`).
pub fn redis_with(dir: &Path, port: u16, extra: &[&str]) -> Service {
    redis_on(Host::LOOPBACK, dir, port, extra)
}

/// A Redis server listening on `host`:`port`.
pub fn redis_on(host: Host<'_>, dir: &Path, port: u16, extra: &[&str]) -> Service {
    let bin = require_binary("redis-server", "redis-server");
    let mut cmd = host.command(bin);
    cmd.args([
        "--bind",
        &host.ip.to_string(),
        "--port",
        &port.to_string(),
        "--save",
        "",
        "--appendonly",
        "no",
        "--protected-mode",
        "no",
    ])
    .args(["--daemonize", "no", "--dir"])
    .arg(dir)
    .args(extra);
    let mut s = Service::spawn(&format!("redis-{}-{port}", host.ip), cmd, dir);
    s.wait_tcp_on(host, host.addr(port), Duration::from_secs(10));
    s
}

/// An SMTP server on 127.0.0.1:`port` (Debian's python3-aiosmtpd, run with
/// Debian's own interpreter) that prints every message it accepts to its log.
/// With `tls` = (certificate, key) PEM files it offers STARTTLS and requires it.
pub fn smtp_sink(dir: &Path, port: u16, tls: Option<(&Path, &Path)>) -> Service {
    let python = Path::new("/usr/bin/python3");
    let has_module = Command::new(python)
        .args(["-c", "import aiosmtpd"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        has_module,
        "aiosmtpd not found: install the Debian package python3-aiosmtpd (.ci/run does this)"
    );
    let mut cmd = Command::new(python);
    cmd.env("PYTHONUNBUFFERED", "1").args([
        "-m",
        "aiosmtpd",
        "-n",
        "-l",
        &format!("127.0.0.1:{port}"),
    ]);
    if let Some((cert, key)) = tls {
        cmd.arg("--tlscert").arg(cert).arg("--tlskey").arg(key);
    }
    let mut s = Service::spawn(&format!("aiosmtpd-{port}"), cmd, dir);
    s.wait_tcp(
        SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(15),
    );
    s
}

/// A dnsmasq on 127.0.0.1:`port` (UDP and TCP) with the given extra options
/// (e.g. `--host-record=ok.test,192.0.2.10`, `--address=/nx.test/`). It never
/// forwards to the machine's resolver (`--no-resolv`) and caches nothing.
pub fn dnsmasq(dir: &Path, port: u16, extra: &[&str]) -> Service {
    dnsmasq_on(Host::LOOPBACK, dir, port, extra)
}

/// [`dnsmasq`] listening on `host`:`port`.
pub fn dnsmasq_on(host: Host<'_>, dir: &Path, port: u16, extra: &[&str]) -> Service {
    let bin = require_binary("dnsmasq", "dnsmasq");
    let mut cmd = host.command(bin);
    cmd.args(["-k", "-p", &port.to_string()])
        .arg(format!("--listen-address={}", host.ip))
        .arg("--bind-interfaces")
        .args([
            "--no-resolv",
            "--no-hosts",
            "--cache-size=0",
            "--conf-file=/dev/null",
            "--log-facility=-",
        ])
        .arg(format!(
            "--pid-file={}",
            dir.join(format!("dnsmasq-{}-{port}.pid", host.ip))
                .display()
        ))
        .args(["--user=root", "--group=root"])
        .args(extra);
    let mut s = Service::spawn(&format!("dnsmasq-{}-{port}", host.ip), cmd, dir);
    s.wait_tcp_on(host, host.addr(port), Duration::from_secs(10));
    s
}

/// A chronyd serving NTP on 127.0.0.1:`port` from its local clock (stratum 8).
pub fn chrony(dir: &Path, port: u16) -> Service {
    chrony_on(Host::LOOPBACK, dir, port)
}

/// [`chrony`] serving on `host`:`port`, to any client.
pub fn chrony_on(host: Host<'_>, dir: &Path, port: u16) -> Service {
    let bin = require_binary("chronyd", "chrony");
    let tag = format!("{}-{port}", host.ip);
    let conf = dir.join(format!("chrony-{tag}.conf"));
    let body = format!(
        "port {port}\nbindaddress {ip}\nallow all\nlocal stratum 8\ncmdport 0\n\
         driftfile {d}/chrony-{tag}.drift\npidfile {d}/chrony-{tag}.pid\n",
        ip = host.ip,
        d = dir.display()
    );
    std::fs::write(&conf, body).expect("write chrony.conf");
    let mut cmd = host.command(bin);
    cmd.arg("-d").arg("-x").arg("-f").arg(&conf);
    let mut s = Service::spawn(&format!("chrony-{tag}"), cmd, dir);
    wait_ntp(&mut s, host, host.addr(port), Duration::from_secs(10));
    s
}

fn wait_ntp(s: &mut Service, host: Host<'_>, addr: SocketAddr, within: Duration) {
    let mut req = [0u8; 48];
    req[0] = 0x23;
    let deadline = Instant::now() + within;
    loop {
        s.assert_running();
        let answered = host.within(|| {
            let sock = UdpSocket::bind(SocketAddr::new(host.ip, 0)).expect("bind udp");
            sock.set_read_timeout(Some(Duration::from_millis(200)))
                .expect("timeout");
            let _ = sock.send_to(&req, addr);
            let mut buf = [0u8; 128];
            matches!(sock.recv_from(&mut buf), Ok((n, _)) if n >= 48)
        });
        if answered {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} not answering NTP on {addr}:\n{}",
            s.name,
            s.log()
        );
    }
}

/// A PostgreSQL cluster initialised in `dir` and served on 127.0.0.1:`port`,
/// running as the `postgres` user (initdb refuses root). `extra` are `-c` settings
/// such as `max_connections=3`.
pub fn postgres(dir: &Path, port: u16, extra: &[&str]) -> Service {
    postgres_on(Host::LOOPBACK, dir, port, extra)
}

/// Where [`postgres_on`] keeps the cluster it serves on `host`:`port`
/// (pg_hba.conf and friends live there).
pub fn postgres_data_dir(host: Host<'_>, dir: &Path, port: u16) -> PathBuf {
    dir.join(format!("pg-{}-{port}", host.ip))
}

/// [`postgres`] listening on `host`:`port`.
pub fn postgres_on(host: Host<'_>, dir: &Path, port: u16, extra: &[&str]) -> Service {
    let initdb = require_binary("initdb", "postgresql");
    let postgres = require_binary("postgres", "postgresql");
    let data = postgres_data_dir(host, dir, port);
    std::fs::create_dir_all(&data).expect("create pg dir");
    let chown = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(dir)
        .status()
        .expect("chown");
    assert!(chown.success(), "chown {dir:?} to postgres failed");
    // The temp dir's parents must be traversable by the postgres user.
    let _ = Command::new("chmod").arg("755").arg(dir).status();
    let init = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(&initdb)
        .args(["-D"])
        .arg(&data)
        .args(["-A", "trust", "-U", "postgres", "--no-sync"])
        .output()
        .expect("run initdb");
    assert!(
        init.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    let mut cmd = host.command("runuser");
    cmd.args(["-u", "postgres", "--"])
        .arg(&postgres)
        .arg("-D")
        .arg(&data);
    cmd.args(["-p", &port.to_string(), "-k"])
        .arg(&data)
        .args(["-c", &format!("listen_addresses={}", host.ip)]);
    cmd.args(["-c", "fsync=off"]);
    for e in extra {
        cmd.args(["-c", e]);
    }
    let mut s = Service::spawn(&format!("postgres-{}-{port}", host.ip), cmd, dir);
    s.wait_log(
        "database system is ready to accept connections",
        Duration::from_secs(30),
    );
    s
}

/// An OpenSSH server on `host`:`port` with a fresh ed25519 host key; no
/// account can log in (no keys, no PAM), it only has to answer.
pub fn sshd_on(host: Host<'_>, dir: &Path, port: u16) -> Service {
    let bin = require_binary("sshd", "openssh-server");
    let keygen = require_binary("ssh-keygen", "openssh-client");
    // Privilege separation needs its empty directory, normally made by the service unit.
    std::fs::create_dir_all("/run/sshd").expect("create /run/sshd");
    let tag = format!("{}-{port}", host.ip);
    let key = dir.join(format!("ssh_host_ed25519_key-{tag}"));
    let out = Command::new(keygen)
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .output()
        .expect("run ssh-keygen");
    assert!(
        out.status.success(),
        "ssh-keygen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let conf = dir.join(format!("sshd_config-{tag}"));
    let body = format!(
        "ListenAddress {}\nHostKey {}\nPidFile {}\nUsePAM no\nStrictModes no\n",
        host.ip,
        key.display(),
        dir.join(format!("sshd-{tag}.pid")).display()
    );
    std::fs::write(&conf, body).expect("write sshd_config");
    let mut cmd = host.command(bin);
    cmd.args(["-D", "-e", "-f"])
        .arg(&conf)
        .args(["-p", &port.to_string()]);
    let mut s = Service::spawn(&format!("sshd-{tag}"), cmd, dir);
    s.wait_tcp_on(host, host.addr(port), Duration::from_secs(10));
    s
}

/// Runs the current test binary again as a child that runs only the test
/// `test` (one that does its work only when `env` is set) with `env` set to
/// `dir`, its stdout piped for the parent to follow. For crash tests: the
/// parent reads what the child reports and kills it at a point of its choice.
pub fn spawn_test_child(test: &str, env: &str, dir: &Path) -> std::process::Child {
    let exe = std::env::current_exe().expect("current_exe");
    Command::new(exe)
        .args(["--exact", test, "--nocapture", "--test-threads", "1"])
        .env(env, dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn the test binary as a child")
}

/// The path of a binary this workspace builds (`portwatch-agent`...), next to the
/// running test executable in the target directory. `cargo test --workspace`
/// builds every binary before the tests run.
pub fn cargo_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join(name);
    assert!(
        bin.is_file(),
        "{} not built: run `cargo build --workspace --bins` first",
        bin.display()
    );
    bin
}

/// Runs a command to completion and panics with its output if it fails.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
