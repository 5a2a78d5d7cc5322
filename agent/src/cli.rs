//! The `portwatch-agent` command line: `check` runs one check and prints it the
//! way a person (one line) or a program (`--json`) wants it, with Nagios plugin
//! exit codes so existing Nagios/Icinga setups can call it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::check::{
    CheckOptions, CheckSpec, DEFAULT_CERT_EXPIRING_DAYS, DEFAULT_DNS_NAME, Family, Host, SpecError,
    TlsSettings, build_spec, unescape,
};
use crate::probe::{Engine, Registry};
use crate::resolve::Resolver;
use crate::result::{CheckResult, Status};

/// Nagios "UNKNOWN": bad usage or a check that could not run.
pub const EXIT_UNKNOWN: i32 = 3;
/// The agent's state directory when none is given.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/portwatch-agent";
/// Usage or configuration error (sysexits EX_USAGE).
pub const EXIT_USAGE: i32 = 64;

#[derive(Debug, Args)]
#[command(after_long_help = ENROLL_AFTER_HELP)]
pub struct EnrollArgs {
    /// The join string printed by `portwatch-collector token create` (one use, short-lived);
    /// PORTWATCH_JOIN keeps it out of the process list and the shell history
    #[arg(
        env = "PORTWATCH_JOIN",
        hide_env_values = true,
        required_unless_present = "if_not_enrolled",
        value_name = "JOIN"
    )]
    pub join: Option<String>,
    /// Where the agent keeps its key, certificate and result buffer
    #[arg(long, env = "PORTWATCH_AGENT_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Replace an existing identity in the data dir
    #[arg(long)]
    pub force: bool,
    /// Exit 0 without contacting the collector when the data dir already holds a complete,
    /// valid identity (init containers, configuration management); a damaged one is still an error
    #[arg(long, conflicts_with = "force")]
    pub if_not_enrolled: bool,
}

const ENROLL_AFTER_HELP: &str = "\
Run it once per host, as root or as the service user: the key pair is generated here and never
leaves; the CA pin in the join string is checked during the TLS handshake before the token is
sent. Into the data dir go agent.key (the private key, 0600, written last: its presence means
enrolled), agent.pem (the agent's certificate, renewed over the stream before it expires), ca.pem
(the collector's CA) and agent.json (collector address, agent id, name, labels). When the data dir
belongs to another user, as the package's /var/lib/portwatch-agent belongs to portwatch-agent, the
files are given to that user.

Exit status: 0 enrolled (or already enrolled, with --if-not-enrolled), 1 refused or failed, 64 no
or damaged join string, 3 when the command line cannot be parsed.

Example, on a host with the Debian package:

    portwatch-agent enroll 'pwjoin1:...' && systemctl enable --now portwatch-agent";

#[derive(Debug, Parser)]
#[command(
    name = "portwatch-agent",
    version,
    propagate_version = true,
    about = "portwatch agent: TCP & UDP port checks from inside your network",
    long_about = "portwatch agent: TCP, UDP and ICMP checks from inside your network, for a portwatch \
collector.\n\n\
A bastion host is set up with `portwatch-agent enroll '<join string>'` once, then runs \
`portwatch-agent run` as a service (the Debian package's portwatch-agent.service). The agent \
dials out to the collector over mTLS; nothing connects to it. `check` runs one check by hand, \
with Nagios plugin exit codes.",
    after_long_help = AGENT_AFTER_HELP
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one check now and print the result (exit 0 up, 1 degraded, 2 down, 3 unknown)
    Check(Box<CheckArgs>),
    /// Enroll this agent with a collector, once, using the join string from `portwatch-collector token create`
    Enroll(EnrollArgs),
    /// Run the agent: hold the stream to the collector, run the assigned checks, buffer every result on disk
    Run(RunArgs),
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// What to check: tcp://host:port, udp://host:port or icmp://host
    pub target: String,
    /// Protocol preset: redis, postgres, mysql, smtp, ssh, imap, pop3, ftp, memcached, amqp, mqtt, kafka (tcp);
    /// dns, ntp, syslog (udp)
    #[arg(long, value_name = "PRESET")]
    pub expect: Option<String>,
    /// Bytes to send after connecting (escapes: \r \n \t \0 \\ \xNN); the UDP payload for udp targets
    #[arg(long, value_name = "BYTES")]
    pub send: Option<String>,
    /// Regex the reply must match (against raw bytes)
    #[arg(long, value_name = "REGEX")]
    pub expect_regex: Option<String>,
    /// Negotiate TLS (STARTTLS for the smtp, imap and pop3 presets) and check the certificate
    #[arg(long)]
    pub tls: bool,
    /// Trust only the CA certificates in this PEM file (instead of the system roots)
    #[arg(long, value_name = "FILE", requires = "tls")]
    pub tls_ca: Option<PathBuf>,
    /// Name for SNI and certificate verification (default: the target host)
    #[arg(long, value_name = "NAME", requires = "tls")]
    pub tls_server_name: Option<String>,
    /// Do not verify the certificate chain or name (expiry is still reported)
    #[arg(long, requires = "tls")]
    pub tls_no_verify: bool,
    /// Degraded (cert_expiring) when the certificate has fewer days left
    #[arg(long, value_name = "DAYS", default_value_t = DEFAULT_CERT_EXPIRING_DAYS, requires = "tls")]
    pub cert_warn_days: u32,
    /// Whole-check timeout, e.g. 3s, 500ms
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Degraded (slow) when the handshake takes longer than this many milliseconds
    #[arg(long, value_name = "MS")]
    pub degraded_ms: Option<u64>,
    /// Resolve names with this DNS server only (ip:port) instead of /etc/resolv.conf
    #[arg(long, value_name = "IP:PORT")]
    pub nameserver: Option<SocketAddr>,
    /// The port must be closed: up when refused or filtered, down (exposed) when it answers
    #[arg(long)]
    pub expect_closed: bool,
    /// UDP: treat silence (no reply, no ICMP error) as up (open|filtered)
    #[arg(long)]
    pub no_reply_ok: bool,
    /// DNS preset: the name to query
    #[arg(long, value_name = "NAME", default_value = DEFAULT_DNS_NAME)]
    pub dns_name: String,
    /// NTP preset: degraded when the clock offset exceeds this many milliseconds
    #[arg(long, value_name = "MS")]
    pub ntp_max_offset_ms: Option<u64>,
    /// Only use IPv4 addresses of the host
    #[arg(short = '4', long = "ipv4", conflicts_with = "ipv6")]
    pub ipv4: bool,
    /// Only use IPv6 addresses of the host
    #[arg(short = '6', long = "ipv6")]
    pub ipv6: bool,
    /// Print one JSON object instead of a line
    #[arg(long)]
    pub json: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration like 3s or 500ms: {e}"))
}

impl CheckArgs {
    /// Turns the flags into a validated spec; the error names the flag and why.
    pub fn to_spec(&self) -> Result<CheckSpec, SpecError> {
        let ca_pem = match &self.tls_ca {
            Some(path) => Some(
                std::fs::read_to_string(path).map_err(|e| SpecError::Invalid {
                    field: "--tls-ca",
                    why: format!("{}: {e}", path.display()),
                })?,
            ),
            None => None,
        };
        let opts = CheckOptions {
            timeout: Some(self.timeout),
            degraded_after: self.degraded_ms.map(Duration::from_millis),
            expect_closed: self.expect_closed,
            family: if self.ipv4 {
                Family::V4
            } else if self.ipv6 {
                Family::V6
            } else {
                Family::Any
            },
            preset: self.expect.clone(),
            send: self.send.as_deref().map(unescape).transpose()?,
            expect_regex: self.expect_regex.clone(),
            tls: self.tls.then(|| TlsSettings {
                server_name: self.tls_server_name.clone(),
                ca_pem,
                no_verify: self.tls_no_verify,
                expiring_days: Some(self.cert_warn_days),
            }),
            no_reply_is_up: self.no_reply_ok,
            dns_name: Some(self.dns_name.clone()),
            ntp_max_offset: self.ntp_max_offset_ms.map(Duration::from_millis),
        };
        build_spec(&self.target, &opts).map_err(|e| match e {
            // Name the file the user gave rather than "tls ca".
            SpecError::Invalid {
                field: "tls ca",
                why,
            } => SpecError::Invalid {
                field: "--tls-ca",
                why: format!(
                    "{}: {why}",
                    self.tls_ca
                        .as_deref()
                        .unwrap_or(std::path::Path::new(""))
                        .display()
                ),
            },
            other => other,
        })
    }
}

const AGENT_AFTER_HELP: &str = "\
Files: /etc/portwatch/agent.toml holds run's options (run --config; the Debian package's
conffile, every line a commented default). /var/lib/portwatch-agent, the data dir (--data-dir;
0700, owned by the service user), holds the identity written by enroll and the result buffer.

Environment: PORTWATCH_AGENT_DATA_DIR sets the data dir (enroll and run must agree);
PORTWATCH_AGENT_CONFIG run's config file; PORTWATCH_JOIN enroll's join string; PORTWATCH_LOG the
log filter, e.g. debug or portwatch_agent=trace (default info for run, warn otherwise). Logs go to
stderr (the journal under systemd).

Exit status: check exits 0 up, 1 degraded, 2 down, 3 unknown or bad usage. enroll and run exit 0
done, 1 failure, 64 bad configuration or usage, 3 when the command line cannot be parsed.

Signals (run): SIGTERM and SIGINT drain: checks in flight finish, every result is flushed to the
on-disk buffer, the stream closes; nothing is lost. Results not yet acknowledged are sent at the
next start.

See `portwatch-agent help <command>`, or man portwatch-agent-check, portwatch-agent-enroll and
portwatch-agent-run.";

const RUN_AFTER_HELP: &str = "\
Needs an enrolled data dir (`portwatch-agent enroll`). The checks come from the collector: its
monitors whose `locations` select this agent. While the collector is unreachable, results are kept
in the on-disk buffer (--buffer-mib) and sent when the stream is back; the link reconnects with
exponential backoff. A revoked or expired certificate stops the agent with a message saying how to
re-enroll.

ICMP checks use an unprivileged ping socket when net.ipv4.ping_group_range includes the agent's
group, else a raw socket, which needs CAP_NET_RAW (the Debian package's unit grants it: Debian 12
leaves ping sockets closed).

What the Debian package's systemd unit runs, as user portwatch-agent:

    portwatch-agent run --config /etc/portwatch/agent.toml";

#[derive(Debug, Args)]
#[command(after_long_help = RUN_AFTER_HELP)]
pub struct RunArgs {
    /// The data dir given to `enroll`
    #[arg(long, env = "PORTWATCH_AGENT_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Configuration file (TOML) with the options below as `buffer_mib`, `allow_targets` and
    /// `allow_ports`; a flag given on the command line wins over the file
    #[arg(long, env = "PORTWATCH_AGENT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Bound on the on-disk result buffer, in MiB (oldest dropped, with a gap record, when full)
    /// [default: 256]
    #[arg(long, value_name = "MIB")]
    pub buffer_mib: Option<u64>,
    /// Probe only addresses in these networks (e.g. 10.0.0.0/8,2001:db8::/32,192.168.1.5); any other
    /// target is reported down (blocked_address) without being contacted
    #[arg(long, value_name = "CIDR[,CIDR...]")]
    pub allow_targets: Option<String>,
    /// Probe only these TCP/UDP ports (e.g. 22,80,443,5000-5999); ICMP checks have no port and are
    /// limited by --allow-targets only
    #[arg(long, value_name = "PORTS")]
    pub allow_ports: Option<String>,
}

/// What `run` runs with: the flags over the config file over the defaults.
pub struct RunSettings {
    /// The result buffer's bound, in bytes.
    pub buffer_bytes: u64,
    pub policy: std::sync::Arc<dyn crate::probe::AddressPolicy>,
}

impl RunArgs {
    /// Reads the config file (if any) and checks every option; the error is
    /// one line naming the flag, or the file and its field.
    pub fn settings(&self) -> Result<RunSettings, String> {
        use crate::probe::policy::{PortSet, Restricted, parse_networks};
        let file = match &self.config {
            Some(path) => crate::config::AgentConfig::load(path).map_err(|e| e.to_string())?,
            None => crate::config::AgentConfig::default(),
        };
        let origin = self
            .config
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        // The value in effect and how to name it in an error.
        let pick = |flag: &'static str,
                    cli: Option<String>,
                    field: &str,
                    from_file: Option<String>| {
            match (cli, from_file) {
                (Some(v), _) => Some((flag.to_owned(), v)),
                (None, Some(v)) => Some((format!("{origin}: {field}"), v)),
                (None, None) => None,
            }
        };
        let buffer_mib = pick(
            "--buffer-mib",
            self.buffer_mib.map(|v| v.to_string()),
            "buffer_mib",
            file.buffer_mib.map(|v| v.to_string()),
        );
        let buffer_bytes = match buffer_mib {
            None => crate::config::DEFAULT_BUFFER_MIB * 1024 * 1024,
            Some((name, v)) => v
                .parse::<u64>()
                .ok()
                .filter(|&mib| mib >= 1)
                .and_then(|mib| mib.checked_mul(1024 * 1024))
                .ok_or_else(|| format!("{name}: {v} is not a size in MiB from 1 up"))?,
        };
        let targets = pick(
            "--allow-targets",
            self.allow_targets.clone(),
            "allow_targets",
            file.allow_targets,
        );
        let ports = pick(
            "--allow-ports",
            self.allow_ports.clone(),
            "allow_ports",
            file.allow_ports,
        );
        let policy: std::sync::Arc<dyn crate::probe::AddressPolicy> =
            if targets.is_none() && ports.is_none() {
                std::sync::Arc::new(crate::probe::AllowAll)
            } else {
                let networks = targets
                    .map(|(name, v)| parse_networks(&v).map_err(|e| format!("{name}: {e}")))
                    .transpose()?;
                let ports = ports
                    .map(|(name, v)| v.parse::<PortSet>().map_err(|e| format!("{name}: {e}")))
                    .transpose()?;
                let policy = Restricted::new(networks, ports);
                tracing::info!(allowed = %policy, "probing only allowed targets");
                std::sync::Arc::new(policy)
            };
        Ok(RunSettings {
            buffer_bytes,
            policy,
        })
    }

    /// The address policy the flags and the config file ask for: every
    /// address when neither restricts it.
    pub fn address_policy(
        &self,
    ) -> Result<std::sync::Arc<dyn crate::probe::AddressPolicy>, String> {
        self.settings().map(|s| s.policy)
    }
}

/// `portwatch-agent enroll`: one-time enrollment with a join string.
pub async fn run_enroll(args: &EnrollArgs) -> i32 {
    if args.if_not_enrolled && crate::identity::AgentIdentity::exists(&args.data_dir) {
        return match crate::identity::AgentIdentity::load(&args.data_dir) {
            Ok(id) => {
                println!(
                    "already enrolled as {} ({}) with the collector at {}; nothing done",
                    id.info.name,
                    id.agent_id(),
                    id.collector_addr()
                );
                0
            }
            Err(e) => {
                eprintln!("portwatch-agent enroll: {e}");
                1
            }
        };
    }
    let Some(join) = args.join.as_deref() else {
        eprintln!(
            "portwatch-agent enroll: not enrolled and no join string: give it as the argument or in PORTWATCH_JOIN"
        );
        return EXIT_USAGE;
    };
    let join = match crate::join::JoinString::parse(join.trim()) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("portwatch-agent enroll: {e}");
            return EXIT_USAGE;
        }
    };
    let opts = crate::enroll::EnrollOptions {
        force: args.force,
        ..Default::default()
    };
    match crate::enroll::enroll(&join, &args.data_dir, &opts).await {
        Ok(id) => {
            // The package's unit runs the default data dir.
            let packaged = args.data_dir == std::path::Path::new(DEFAULT_DATA_DIR)
                && ["/lib", "/usr/lib"].iter().any(|lib| {
                    std::path::Path::new(lib)
                        .join("systemd/system/portwatch-agent.service")
                        .exists()
                });
            let start = if packaged {
                "systemctl enable --now portwatch-agent".to_owned()
            } else {
                format!("portwatch-agent run --data-dir {}", args.data_dir.display())
            };
            println!(
                "enrolled as {} ({}) with the collector at {}; start it with: {start}",
                id.info.name,
                id.agent_id(),
                id.collector_addr(),
            );
            0
        }
        Err(e) => {
            eprintln!("portwatch-agent enroll: {e}");
            1
        }
    }
}

/// `portwatch-agent run`: the daemon. SIGTERM and SIGINT drain: checks in
/// flight finish, results are flushed to the buffer, the stream closes.
pub async fn run_daemon(args: &RunArgs) -> i32 {
    let RunSettings {
        buffer_bytes,
        policy,
    } = match args.settings() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("portwatch-agent run: {e}");
            return EXIT_USAGE;
        }
    };
    let identity = match crate::identity::AgentIdentity::load(&args.data_dir) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("portwatch-agent run: {e}");
            return EXIT_USAGE;
        }
    };
    if identity.cert_not_after() <= std::time::SystemTime::now() {
        eprintln!(
            "portwatch-agent run: this agent's certificate expired at {} while it could not reach the collector: \
             re-enroll it with a new token (portwatch-collector token create, then portwatch-agent enroll --force)",
            humantime::format_rfc3339_seconds(identity.cert_not_after())
        );
        return 1;
    }
    let buffer = match crate::buffer::SledBuffer::open(&args.data_dir.join("buffer"), buffer_bytes)
    {
        Ok(b) => std::sync::Arc::new(b),
        Err(e) => {
            eprintln!("portwatch-agent run: {e}");
            return 1;
        }
    };
    let resolver = Resolver::system().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "no system resolver: only monitors with IP addresses will work");
        Resolver::literal_only()
    });
    // The collector may declare this agent a public location: the switch
    // tightens the policy then.
    let public_only = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let policy: std::sync::Arc<dyn crate::probe::AddressPolicy> = std::sync::Arc::new(
        crate::probe::policy::Tightenable::new(policy, std::sync::Arc::clone(&public_only)),
    );
    let engine = std::sync::Arc::new(Engine::new(resolver, Registry::standard(), policy));
    let link = crate::link::Link::new(
        crate::link::LinkIdentity {
            collector: identity.collector_addr().to_owned(),
            server_name: server_name_of(identity.collector_addr()),
            cert_pem: identity.cert_pem().to_owned(),
            key_pem: identity.key_pem().to_owned(),
            ca_pem: identity.ca_pem().to_owned(),
        },
        buffer,
        crate::link::LinkConfig::default(),
    )
    .with_rotation(persist_into(args.data_dir.clone()))
    .with_public_only_switch(public_only)
    .with_saved_assignment(crate::assignment::SavedAssignment::in_dir(&args.data_dir));
    tracing::info!(agent = %identity.agent_id(), collector = %identity.collector_addr(), "agent starting");
    match link.run(engine, shutdown_signal()).await {
        Ok(()) => {
            tracing::info!("agent stopped");
            0
        }
        Err(e) => {
            eprintln!("portwatch-agent run: {e}");
            1
        }
    }
}

/// Saves renewed certificates into the agent's data dir (crash-safely).
pub fn persist_into(data_dir: PathBuf) -> crate::link::PersistIdentity {
    std::sync::Arc::new(move |key_pem: &str, cert_pem: &str| {
        crate::identity::AgentIdentity::save_rotated(&data_dir, key_pem, cert_pem)
            .map_err(|e| e.to_string())
    })
}

/// The host part of `host:port` (brackets stripped from IPv6).
fn server_name_of(addr: &str) -> String {
    crate::join::split_host_port(addr).map_or_else(|| addr.to_owned(), |(host, _)| host.to_owned())
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: draining"),
    }
}

/// Runs `check` and returns the process exit code.
pub async fn run_check(args: &CheckArgs) -> i32 {
    let spec = match args.to_spec() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("portwatch-agent check: {e}");
            return EXIT_UNKNOWN;
        }
    };
    let resolver = match (args.nameserver, &spec.target.host) {
        (Some(ns), _) => Resolver::with_nameserver(ns, spec.timeout),
        (None, Host::Name(_)) => Resolver::system(),
        (None, Host::Ip(_)) => Ok(Resolver::literal_only()),
    };
    let resolver = match resolver {
        Ok(r) => r,
        Err(e) => {
            eprintln!("portwatch-agent check: {e}");
            return EXIT_UNKNOWN;
        }
    };
    let engine = Engine::with_resolver(resolver);
    let result = engine.run(&spec).await;
    if args.json {
        println!("{}", to_json(&spec, &result));
    } else {
        println!("{}", human_line(&spec, &result));
    }
    exit_code(&result)
}

/// Nagios convention: 0 up, 1 degraded, 2 down, 3 when the check could not run.
pub fn exit_code(r: &CheckResult) -> i32 {
    if r.reason == crate::result::Reason::Internal {
        return EXIT_UNKNOWN;
    }
    r.status.nagios_code()
}

/// One line: status, reason, target, address, message and details, then Nagios
/// perfdata with the phases that happened.
pub fn human_line(spec: &CheckSpec, r: &CheckResult) -> String {
    let mut line = format!(
        "{} {} {}",
        r.status.as_str().to_uppercase(),
        r.reason,
        spec.target
    );
    let addr = r.address_display();
    if !addr.is_empty() {
        line.push_str(&format!(" ({addr})"));
    }
    let mut facts: Vec<String> = Vec::new();
    if !r.message.is_empty() {
        facts.push(r.message.clone());
    }
    let d = &r.details;
    if let Some(info) = &d.server_info {
        facts.push(info.clone());
    }
    if let Some(days) = d.cert_days_left {
        facts.push(format!("cert {days} days left"));
    }
    if let Some(v) = &d.tls_version {
        facts.push(v.clone());
    }
    if let (Some(off), Some(st)) = (d.ntp_offset_us, d.ntp_stratum) {
        facts.push(format!(
            "ntp stratum {st} offset {:.3} ms",
            off as f64 / 1000.0
        ));
    }
    if let Some(rc) = &d.dns_rcode {
        facts.push(format!("dns {rc} answers={}", d.dns_answers.unwrap_or(0)));
    }
    if (r.status != Status::Up || facts.is_empty())
        && let Some(b) = &d.banner
    {
        facts.push(format!("banner \"{b}\""));
    }
    if !facts.is_empty() {
        line.push_str(" - ");
        line.push_str(&facts.join(", "));
    }
    let p = &r.phases;
    let mut perf: Vec<String> = Vec::new();
    for (name, v) in [
        ("dns", p.dns),
        ("connect", p.connect),
        ("tls", p.tls),
        ("first_byte", p.first_byte),
    ] {
        if let Some(us) = v {
            perf.push(format!("{name}={:.3}ms", us as f64 / 1000.0));
        }
    }
    perf.push(format!("total={:.3}ms", p.total as f64 / 1000.0));
    line.push_str(" | ");
    line.push_str(&perf.join(" "));
    line
}

/// One JSON object with every phase key present (null when it did not happen).
pub fn to_json(spec: &CheckSpec, r: &CheckResult) -> String {
    let addr = r.address_display();
    let v = serde_json::json!({
        "target": spec.target.to_string(),
        "status": r.status,
        "reason": r.reason,
        "message": r.message,
        "address": if addr.is_empty() { serde_json::Value::Null } else { addr.into() },
        "phases_us": {
            "dns": r.phases.dns,
            "connect": r.phases.connect,
            "tls": r.phases.tls,
            "first_byte": r.phases.first_byte,
            "total": r.phases.total,
        },
        "details": r.details,
    });
    v.to_string()
}
