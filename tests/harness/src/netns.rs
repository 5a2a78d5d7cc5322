//! Network namespaces made and removed by a test: `Netns::new("site")` creates a
//! uniquely named namespace with loopback up, deleted on drop with everything in it.
//! Traffic in tests stays inside namespaces they made.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::run;

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A network namespace owned by the test.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates `pw-<tag>-<pid>-<n>` with `lo` up.
    pub fn new(tag: &str) -> Netns {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let name = format!("pw-{tag}-{}-{n}", std::process::id());
        run("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n <ns> ARGS`, panicking on failure.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Runs `cmd args` inside the namespace, panicking on failure.
    pub fn exec(&self, cmd: &str, args: &[&str]) -> String {
        let mut full = vec!["netns", "exec", self.name.as_str(), cmd];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// A `Command` that runs `cmd` inside the namespace (for long-running servers).
    pub fn command(&self, cmd: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(cmd);
        c
    }

    /// `iptables ARGS` inside the namespace, panicking on failure. It waits
    /// for the xtables lock (`-w`), which every namespace shares.
    pub fn iptables(&self, args: &[&str]) -> String {
        let mut all = vec!["-w"];
        all.extend_from_slice(args);
        self.exec("iptables", &all)
    }

    /// `iptables OP RULE` inside the namespace, for a rule made by one of
    /// the functions below (`op`: `-A`, `-I` or `-D`).
    pub fn rule(&self, op: &str, rule: &[String]) -> String {
        let mut args = vec![op];
        args.extend(rule.iter().map(String::as_str));
        self.iptables(&args)
    }

    /// Runs `f` on a thread that has entered this namespace: every socket it
    /// makes lives there (and keeps living there if `f` hands it out, e.g. a
    /// listener served by a thread of its own).
    pub fn within<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                rustix::thread::move_into_link_name_space(
                    ns.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .unwrap_or_else(|e| panic!("setns {path}: {e}"));
                f()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }

    /// Runs `cmd args` inside the namespace and returns its raw output, success or not.
    pub fn output(&self, cmd: impl AsRef<OsStr>, args: &[&str]) -> Output {
        self.command(&cmd)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("ip netns exec {:?}: {e}", cmd.as_ref()))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

/// Whether this process may create namespaces (root with iproute2).
pub fn available() -> bool {
    Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
        && is_root()
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Joins two namespaces with a veth pair: `up0` in `a` with `a_addr/prefix`,
/// `dn0` in `b` with `b_addr/prefix`. Nothing is added to the root namespace,
/// so traffic between them never reaches the host's network.
pub fn veth(a: &Netns, a_addr: &str, b: &Netns, b_addr: &str, prefix: u8) {
    run(
        "ip",
        &[
            "link", "add", "up0", "netns", &a.name, "type", "veth", "peer", "name", "dn0", "netns",
            &b.name,
        ],
    );
    a.ip(&["addr", "add", &format!("{a_addr}/{prefix}"), "dev", "up0"]);
    b.ip(&["addr", "add", &format!("{b_addr}/{prefix}"), "dev", "dn0"]);
    a.ip(&["link", "set", "up0", "up"]);
    b.ip(&["link", "set", "dn0", "up"]);
}

/// The INPUT rule that drops every `every`-th SYN to TCP `port`: a failure
/// mode made for real (this kernel has no netem). With `every` 2 and one
/// client at a time, each connection loses its first SYN and the kernel's
/// 1 s retransmit sets the handshake time; with 4, one connect in four
/// waits 1 s, never two in a row. Use with [`Netns::rule`].
pub fn drop_nth_syn(port: u16, every: u32) -> Vec<String> {
    drop_nth(&["-p", "tcp", "--dport", &port.to_string(), "--syn"], every)
}

/// The INPUT rule that drops every `every`-th UDP datagram to `port`: with
/// `every` 2 and one client at a time, each request's first send is lost and
/// only a resend can be answered (replies come from `port`, so they pass).
/// Use with [`Netns::rule`].
pub fn drop_nth_udp(port: u16, every: u32) -> Vec<String> {
    drop_nth(&["-p", "udp", "--dport", &port.to_string()], every)
}

/// INPUT, the packets `matching` selects, then DROP every `every`-th of them.
fn drop_nth(matching: &[&str], every: u32) -> Vec<String> {
    let every = every.to_string();
    let mut rule = vec!["INPUT"];
    rule.extend_from_slice(matching);
    rule.extend_from_slice(&[
        "-m",
        "statistic",
        "--mode",
        "nth",
        "--every",
        &every,
        "--packet",
        "0",
        "-j",
        "DROP",
    ]);
    rule.into_iter().map(String::from).collect()
}
