//! The `portwatch-collector` command line. Admin subcommands talk to the
//! running collector's HTTP API, found from `--data-dir` (or `--url` and
//! `--admin-token-file`), like kubectl with a kubeconfig.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use portwatch_agent::cli::shutdown_signal;

use crate::admin::AdminToken;
use crate::client::{AdminClient, ClientError};
use crate::config::Config;
use crate::http::{AgentInfo, CreateToken};

/// Usage or configuration error (sysexits EX_USAGE).
pub const EXIT_USAGE: i32 = 64;
/// The collector could not be reached or refused the request.
pub const EXIT_FAILURE: i32 = 1;

#[derive(Debug, Parser)]
#[command(
    name = "portwatch-collector",
    version,
    propagate_version = true,
    about = "portwatch collector: enrollment, agent streams, incidents, dashboard",
    long_about = "portwatch collector: enrolls agents, holds their mTLS streams, stores their \
results, runs its own public probes, opens incidents, sends notifications and serves the HTTP \
API, the dashboard and the status page.\n\n\
`serve` is the service (the Debian package's portwatch-collector.service). The other commands \
are its admin client: they find the running collector and its admin token through the data dir \
(run them as root or as the portwatch-collector user), or take --url and --admin-token-file.",
    after_long_help = COLLECTOR_AFTER_HELP
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

const COLLECTOR_AFTER_HELP: &str = "\
Files: /etc/portwatch/collector.toml is serve's configuration (serve --config; the Debian
package's conffile, root:portwatch-collector 0640 since it can hold notification secrets).
/var/lib/portwatch-collector, the data dir (--data-dir; 0700, owned by the service user), holds the
CA (ca.pem, ca.key), the admin token, the agents and the results.

Environment: PORTWATCH_DATA_DIR sets the data dir (serve and every admin command);
PORTWATCH_CONFIG serve's config file; PORTWATCH_URL with PORTWATCH_ADMIN_TOKEN_FILE reach a
collector over HTTP instead of through the data dir; PORTWATCH_LOG the log filter, e.g. debug
(default info). Logs go to stderr (the journal under systemd).

Exit status: 0 success, 1 the collector failed, could not be reached or refused the request, 64
bad usage or configuration.

See `portwatch-collector help <command>`, or man portwatch-collector-<command> (e.g.
portwatch-collector-serve, portwatch-collector-token-create).";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the collector: agent port (enrollment + mTLS streams) and the HTTP API
    Serve(ServeArgs),
    /// Try portwatch on this machine: a collector, a really enrolled local agent, real local ports
    Demo(DemoArgs),
    /// Enrollment tokens: create (prints a join string), list, delete
    #[command(subcommand)]
    Token(TokenCommand),
    /// List enrolled agents
    Agents {
        #[command(flatten)]
        target: Target,
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Act on one agent
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Monitors: list, show, put (create/replace through the API), delete, check a config file
    #[command(subcommand)]
    Monitors(MonitorsCommand),
    /// Maintenance windows: list, add, cancel, upcoming
    #[command(subcommand)]
    Maintenance(MaintenanceCommand),
    /// Recent results of a monitor, from every location
    Results {
        #[command(flatten)]
        target: Target,
        /// Monitor id
        #[arg(long)]
        monitor: String,
        /// How many of the newest results
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Only this location (agent:<name> or public:<region>)
        #[arg(long)]
        location: Option<String>,
        /// Only results from this long ago until now, e.g. 1h
        #[arg(long, value_parser = |s: &str| humantime::parse_duration(s).map_err(|e| e.to_string()))]
        since: Option<std::time::Duration>,
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Every monitor at every location now (colour on a terminal)
    Status {
        #[command(flatten)]
        target: Target,
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Notification channels and the latest delivery attempts; `channels`
    /// manages the channels (list, show, put, delete, test)
    #[command(args_conflicts_with_subcommands = true)]
    Notifications {
        #[command(subcommand)]
        command: Option<NotificationsCommand>,
        #[command(flatten)]
        target: Target,
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Incidents, newest first: open ones, or the history
    Incidents {
        #[command(flatten)]
        target: Target,
        /// Only the open ones
        #[arg(long)]
        open: bool,
        /// Only this monitor (or agent:<name>)
        #[arg(long)]
        monitor: Option<String>,
        /// How many incidents at most
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// The audit log: every admin action and config reload
    Audit {
        #[command(flatten)]
        target: Target,
        /// How far back, e.g. 24h (default: everything)
        #[arg(long, value_parser = |s: &str| humantime::parse_duration(s).map_err(|e| e.to_string()))]
        since: Option<std::time::Duration>,
        /// Print JSON instead of lines
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a one-time enrollment token; the join string is the last line printed
    Create {
        #[command(flatten)]
        target: Target,
        /// Name of the agent that will enroll with it
        #[arg(long)]
        name: String,
        /// Labels for the agent, e.g. site=fra,env=prod
        #[arg(long, value_name = "K=V,...")]
        labels: Option<String>,
        /// Lifetime, e.g. 1h (the collector caps it)
        #[arg(long)]
        ttl: Option<String>,
        /// Enroll the agent as the public location public:<REGION> (an agent
        /// in another cloud): it runs public monitors under the public address policy
        #[arg(long, value_name = "REGION")]
        public_region: Option<String>,
    },
    /// List tokens (secrets are never shown again)
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Delete a token by id
    Delete {
        #[command(flatten)]
        target: Target,
        id: String,
    },
}

// Parsed once per process: the size of the `add` variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum MaintenanceCommand {
    /// Every window (config file and API) with its current or next occurrence
    List {
        #[command(flatten)]
        target: Target,
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Add a window through the API: one-off (--start with --end or --duration)
    /// or recurring (--days, --at, --duration, --time-zone)
    Add {
        #[command(flatten)]
        target: Target,
        /// The window's name (unique)
        #[arg(long)]
        name: String,
        /// Monitor names, comma separated ("*" for all)
        #[arg(long, value_delimiter = ',')]
        monitors: Vec<String>,
        /// Tags, comma separated: monitors with any of them
        #[arg(long, value_delimiter = ',')]
        tags: Vec<String>,
        /// One-off start: 2026-11-28T02:00:00Z, "2026-11-28 02:00" in --time-zone, or "now"
        #[arg(long)]
        start: Option<String>,
        /// One-off end, in the same forms as --start
        #[arg(long)]
        end: Option<String>,
        /// e.g. 2h
        #[arg(long)]
        duration: Option<String>,
        /// Recurring days: mon,thu or daily, weekdays, weekends
        #[arg(long, value_delimiter = ',')]
        days: Vec<String>,
        /// Recurring local start time, e.g. 02:30
        #[arg(long)]
        at: Option<String>,
        /// IANA time zone (default UTC)
        #[arg(long)]
        time_zone: Option<String>,
        /// Recurring: first date, YYYY-MM-DD
        #[arg(long)]
        from: Option<String>,
        /// Recurring: last date, YYYY-MM-DD
        #[arg(long)]
        until: Option<String>,
        /// Why (shown on the dashboard and in notifications)
        #[arg(long)]
        reason: Option<String>,
    },
    /// Cancel an API window (a running one ends now)
    Cancel {
        #[command(flatten)]
        target: Target,
        name: String,
    },
    /// Occurrences in the coming days
    Upcoming {
        #[command(flatten)]
        target: Target,
        /// How far ahead, e.g. 7d (default 30d)
        #[arg(long, value_parser = |s: &str| humantime::parse_duration(s).map_err(|e| e.to_string()))]
        within: Option<std::time::Duration>,
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum MonitorsCommand {
    /// List every monitor (config file and API)
    List {
        #[command(flatten)]
        target: Target,
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Show one monitor's definition (JSON)
    Show {
        #[command(flatten)]
        target: Target,
        name: String,
    },
    /// Create or replace an API monitor from a file: one monitor as a TOML
    /// table (the fields of a `[[monitors]]` entry) or a JSON object
    Put {
        #[command(flatten)]
        target: Target,
        /// .toml or .json
        #[arg(long, short)]
        file: PathBuf,
    },
    /// Delete an API monitor (config-file monitors change with the file)
    Delete {
        #[command(flatten)]
        target: Target,
        name: String,
    },
    /// Check a collector config file offline: every problem, one per line (exit 64 if any)
    Check {
        /// The config file
        config: PathBuf,
    },
    /// How the running collector's last config reload went
    Status {
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Debug, Subcommand)]
pub enum NotificationsCommand {
    /// Notification channels: list, show, put (create/replace through the API), delete, test
    #[command(subcommand)]
    Channels(ChannelsCommand),
}

#[derive(Debug, Subcommand)]
pub enum ChannelsCommand {
    /// List every channel (config file and API); secrets are never shown
    List {
        #[command(flatten)]
        target: Target,
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Show one channel's definition without its secrets (JSON)
    Show {
        #[command(flatten)]
        target: Target,
        name: String,
    },
    /// Create or replace an API channel from a file: one channel as a JSON
    /// object or a TOML table (the fields of a `[[notifications]]` entry).
    /// Replacing a channel of the same kind, a secret the file leaves out
    /// (url, secret, headers, routing_key, password) keeps its stored value
    Put {
        #[command(flatten)]
        target: Target,
        /// .json or .toml
        #[arg(long, short)]
        file: PathBuf,
    },
    /// Delete an API channel (config-file channels change with the file)
    Delete {
        #[command(flatten)]
        target: Target,
        name: String,
    },
    /// Send a test notification through a channel now (exit 1 if it is not delivered)
    Test {
        #[command(flatten)]
        target: Target,
        name: String,
        /// Print JSON instead of a line
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Ask a connected agent to renew its certificate now (fresh key, same identity)
    Rotate {
        #[command(flatten)]
        target: Target,
        /// Agent name or id
        name: String,
    },
    /// Revoke an agent: its stream closes within seconds and it cannot reconnect
    Revoke {
        #[command(flatten)]
        target: Target,
        /// Agent name or id
        name: String,
    },
}

/// Which collector an admin command talks to.
#[derive(Debug, Args)]
pub struct Target {
    /// The collector's data directory (finds its address and admin token)
    #[arg(
        long,
        env = "PORTWATCH_DATA_DIR",
        default_value = "/var/lib/portwatch-collector"
    )]
    pub data_dir: PathBuf,
    /// The collector's HTTP API URL (instead of the data dir's discovery file)
    #[arg(long, env = "PORTWATCH_URL", requires = "admin_token_file")]
    pub url: Option<String>,
    /// File holding the admin token (with --url)
    #[arg(long, env = "PORTWATCH_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
}

impl Target {
    fn client(&self) -> Result<AdminClient, String> {
        match (&self.url, &self.admin_token_file) {
            (Some(url), Some(file)) => {
                let token = AdminToken::read(file).map_err(|e| e.to_string())?;
                Ok(AdminClient::new(url, token))
            }
            _ => AdminClient::from_data_dir(&self.data_dir).map_err(|e| e.to_string()),
        }
    }

    /// The client, with the exit code a failure to build it means.
    fn api(&self) -> Result<AdminClient, (i32, String)> {
        self.client().map_err(|e| (EXIT_FAILURE, e))
    }
}

/// What a result learnt, in a few words: "ntp offset +0.120 ms, stratum 9".
fn facts(d: &crate::http::ResultDetails) -> String {
    let mut out = Vec::new();
    if let Some(o) = d.ntp_offset_us {
        let mut s = format!("ntp offset {:+.3} ms", o as f64 / 1000.0);
        if let Some(st) = d.ntp_stratum {
            s.push_str(&format!(", stratum {st}"));
        }
        out.push(s);
    }
    if let Some(rc) = &d.dns_rcode {
        let n = d.dns_answers.unwrap_or(0);
        out.push(format!(
            "{}, {n} answer{}",
            terminal_safe(rc),
            if n == 1 { "" } else { "s" }
        ));
    }
    if let Some(v) = &d.tls_version {
        let mut s = terminal_safe(v);
        if let Some(days) = d.cert_days_left {
            s.push_str(&format!(", cert {days} d left"));
        }
        out.push(s);
    }
    if let Some(i) = &d.server_info {
        out.push(terminal_safe(i));
    }
    out.join("; ")
}

/// Text from a probed server, made harmless for a terminal: control
/// characters (escape sequences included) are shown escaped.
fn terminal_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Prints `value` as JSON with `--json`, else as `table` lays it out.
fn show<T: serde::Serialize>(json: bool, value: &T, table: impl FnOnce(&T)) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        );
    } else {
        table(value);
    }
}

const SERVE_AFTER_HELP: &str = "\
On first start it creates the CA (ca.pem, ca.key 0600) and the admin token in the data dir. The
config file is reloaded when it changes and on SIGHUP (`systemctl reload portwatch-collector`); a
file with a problem never replaces the good one (`monitors check FILE` checks it offline, `monitors
status` shows the last reload). Listen addresses take effect at the next start.

Signals: SIGHUP reloads the config; SIGTERM and SIGINT stop it: agent streams are closed (agents
keep every unacknowledged result and send it on reconnect) and HTTP requests in flight finish.

Endpoints: /healthz (alive) and /readyz (the store answers) need no token.

What the Debian package's systemd unit runs, as user portwatch-collector:

    portwatch-collector serve --config /etc/portwatch/collector.toml";

#[derive(Debug, Args)]
#[command(after_long_help = SERVE_AFTER_HELP)]
pub struct ServeArgs {
    /// Where the collector keeps its CA, admin token, state and results
    #[arg(
        long,
        env = "PORTWATCH_DATA_DIR",
        default_value = "/var/lib/portwatch-collector"
    )]
    pub data_dir: PathBuf,
    /// Configuration file (TOML); defaults apply without one
    #[arg(long, env = "PORTWATCH_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address agents connect to (overrides the config file)
    #[arg(long)]
    pub agent_addr: Option<std::net::SocketAddr>,
    /// Address of the HTTP API (overrides the config file)
    #[arg(long)]
    pub http_addr: Option<std::net::SocketAddr>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep the demo's state here (default: a new directory under the temp dir)
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Address the demo's agent port listens on
    #[arg(long, default_value = "127.0.0.1:7443")]
    pub agent_addr: std::net::SocketAddr,
    /// Address of the demo's HTTP API and dashboard
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http_addr: std::net::SocketAddr,
    /// Check interval of the demo monitors
    #[arg(long, default_value = "5s", value_parser = |s: &str| humantime::parse_duration(s).map_err(|e| e.to_string()))]
    pub interval: std::time::Duration,
}

/// `serve`: exit 64 with one line on a bad config, 1 on a runtime failure.
pub async fn run_serve(args: &ServeArgs) -> i32 {
    let mut config = match &args.config {
        Some(path) => match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("portwatch-collector serve: {e}");
                return EXIT_USAGE;
            }
        },
        None => Config::default(),
    };
    if let Some(a) = args.agent_addr {
        config.agent_addr = a;
    }
    if let Some(a) = args.http_addr {
        config.http_addr = a;
    }
    let (agent_addr, http_addr) = (config.agent_addr, config.http_addr);
    let (collector, admin) = match crate::server::open(&args.data_dir, config, agent_addr) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("portwatch-collector serve: {e}");
            return EXIT_FAILURE;
        }
    };
    let bind = |addr| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("listening on {addr}: {e}"))
    };
    let (agent_listener, http_listener) = match (bind(agent_addr).await, bind(http_addr).await) {
        (Ok(a), Ok(h)) => (a, h),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("portwatch-collector serve: {e}");
            return EXIT_FAILURE;
        }
    };
    match crate::server::serve(
        &args.data_dir,
        collector,
        admin,
        agent_listener,
        http_listener,
        shutdown_signal(),
    )
    .await
    {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("portwatch-collector serve: {e}");
            EXIT_FAILURE
        }
    }
}

/// `demo`
pub async fn run_demo(args: &DemoArgs) -> i32 {
    let opts = crate::demo::DemoOptions {
        data_dir: args.data_dir.clone(),
        agent_addr: args.agent_addr,
        http_addr: args.http_addr,
        interval: args.interval,
    };
    match crate::demo::run(opts, shutdown_signal()).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("portwatch-collector demo: {e}");
            EXIT_FAILURE
        }
    }
}

/// Parses `k=v,k2=v2` labels.
pub fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for part in s.split(',').filter(|p| !p.trim().is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("label {part:?} is not key=value"))?;
        let (k, v) = (k.trim(), v.trim());
        if k.is_empty() || v.is_empty() {
            return Err(format!("label {part:?} is not key=value"));
        }
        out.insert(k.to_owned(), v.to_owned());
    }
    Ok(out)
}

/// Runs an admin subcommand; returns the exit code.
pub fn run_admin(command: &Command) -> i32 {
    let result = match command {
        Command::Serve(_) | Command::Demo(_) => Err((
            EXIT_USAGE,
            "serve and demo are not admin commands".to_owned(),
        )),
        Command::Token(TokenCommand::Create {
            target,
            name,
            labels,
            ttl,
            public_region,
        }) => (|| {
            let labels = labels
                .as_deref()
                .map(parse_labels)
                .transpose()
                .map_err(|e| (EXIT_USAGE, e))?;
            let created = target
                .client()
                .map_err(|e| (EXIT_FAILURE, e))?
                .create_token(&CreateToken {
                    name: name.clone(),
                    labels: labels.unwrap_or_default(),
                    ttl: ttl.clone(),
                    public_region: public_region.clone(),
                })
                .map_err(api_failure)?;
            println!(
                "token {} for {:?}, expires at {}",
                created.token_id,
                created.name,
                fmt_ms(created.expires_at_unix_ms)
            );
            println!(
                "enroll the agent with: portwatch-agent enroll '<join string>' --data-dir /var/lib/portwatch-agent"
            );
            println!("{}", created.join);
            Ok(())
        })(),
        Command::Token(TokenCommand::List { target }) => (|| {
            let tokens = target
                .client()
                .map_err(|e| (EXIT_FAILURE, e))?
                .list_tokens()
                .map_err(api_failure)?;
            println!("{:<18} {:<24} {:<22} USED BY", "ID", "NAME", "EXPIRES");
            for t in tokens {
                println!(
                    "{:<18} {:<24} {:<22} {}",
                    t.token_id,
                    t.name,
                    fmt_ms(t.expires_at_unix_ms),
                    t.used_by.unwrap_or_else(|| "-".into())
                );
            }
            Ok(())
        })(),
        Command::Token(TokenCommand::Delete { target, id }) => (|| {
            target
                .client()
                .map_err(|e| (EXIT_FAILURE, e))?
                .delete_token(id)
                .map_err(api_failure)?;
            println!("token {id} deleted");
            Ok(())
        })(),
        Command::Agents { target, json } => (|| {
            let agents = target
                .client()
                .map_err(|e| (EXIT_FAILURE, e))?
                .list_agents()
                .map_err(api_failure)?;
            if *json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&agents).unwrap_or_default()
                );
            } else {
                print_agents(&agents);
            }
            Ok(())
        })(),
        Command::Status { target, json } => (|| {
            let status = target.api()?.status().map_err(api_failure)?;
            let colour = std::io::IsTerminal::is_terminal(&std::io::stdout());
            show(*json, &status, |s| print_status(s, colour));
            Ok(())
        })(),
        Command::Notifications {
            command: Some(NotificationsCommand::Channels(cmd)),
            ..
        } => run_channels(cmd),
        Command::Notifications {
            command: None,
            target,
            json,
        } => (|| {
            let info = target.api()?.notifications().map_err(api_failure)?;
            show(*json, &info, print_notifications);
            Ok(())
        })(),
        Command::Incidents {
            target,
            open,
            monitor,
            limit,
            json,
        } => (|| {
            let incidents = target
                .api()?
                .incidents(&crate::http::IncidentsQuery {
                    open: *open,
                    monitor: monitor.clone(),
                    before: None,
                    limit: *limit,
                })
                .map_err(api_failure)?;
            show(*json, &incidents, |i| print_incidents(i));
            Ok(())
        })(),
        Command::Audit {
            target,
            since,
            json,
        } => (|| {
            let events = target
                .client()
                .map_err(|e| (EXIT_FAILURE, e))?
                .events(&crate::http::EventsQuery {
                    kind: Some("audit".into()),
                    from: since.map(since_ms),
                    limit: 10_000,
                    ..Default::default()
                })
                .map_err(api_failure)?;
            if *json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&events).unwrap_or_default()
                );
                return Ok(());
            }
            for e in events {
                println!(
                    "{}  {:<16} {:<28} {}",
                    fmt_ms(e.at_unix_ms),
                    e.body["action"].as_str().unwrap_or("?"),
                    e.subject,
                    e.body["detail"]
                );
            }
            Ok(())
        })(),
        Command::Results {
            target,
            monitor,
            limit,
            location,
            since,
            json,
        } => (|| {
            let results = target
                .client()
                .map_err(|e| (EXIT_FAILURE, e))?
                .results(&crate::http::ResultsQuery {
                    monitor: monitor.clone(),
                    location: location.clone(),
                    from: since.map(since_ms),
                    to: None,
                    limit: *limit,
                })
                .map_err(api_failure)?;
            if *json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&results).unwrap_or_default()
                );
                return Ok(());
            }
            let ms = |us: Option<u64>| {
                us.map(|v| format!("{:.2}ms", v as f64 / 1000.0))
                    .unwrap_or_else(|| "-".into())
            };
            println!(
                "{:<22} {:<22} {:<9} {:<17} {:<22} {:<10} TOTAL",
                "SCHEDULED", "LOCATION", "STATUS", "REASON", "ADDRESS", "CONNECT"
            );
            for r in results {
                let facts = facts(&r.details);
                println!(
                    "{:<22} {:<22} {:<9} {:<17} {:<22} {:<10} {}{}{}",
                    fmt_ms(r.scheduled_at_unix_ms),
                    r.location,
                    r.status,
                    r.reason,
                    r.address,
                    ms(r.connect_us),
                    ms(Some(r.total_us)),
                    if r.message.is_empty() {
                        String::new()
                    } else {
                        format!("  {}", terminal_safe(&r.message))
                    },
                    if facts.is_empty() {
                        String::new()
                    } else {
                        format!("  [{facts}]")
                    }
                );
            }
            Ok(())
        })(),
        Command::Monitors(cmd) => run_monitors(cmd),
        Command::Maintenance(cmd) => run_maintenance(cmd),
        Command::Agent(AgentCommand::Rotate { target, name }) => (|| {
            let a = target
                .client()
                .map_err(|e| (EXIT_FAILURE, e))?
                .rotate_agent(name)
                .map_err(api_failure)?;
            println!("agent {} ({}) asked to renew its certificate", a.name, a.id);
            Ok(())
        })(),
        Command::Agent(AgentCommand::Revoke { target, name }) => (|| {
            let a = target
                .client()
                .map_err(|e| (EXIT_FAILURE, e))?
                .revoke_agent(name)
                .map_err(api_failure)?;
            println!("agent {} ({}) revoked", a.name, a.id);
            Ok(())
        })(),
    };
    match result {
        Ok(()) => 0,
        Err((code, message)) => {
            eprintln!("portwatch-collector: {message}");
            code
        }
    }
}

fn api_failure(e: ClientError) -> (i32, String) {
    let code = match &e {
        ClientError::Api { status, .. } if (400..500).contains(status) && *status != 401 => {
            EXIT_USAGE
        }
        _ => EXIT_FAILURE,
    };
    (code, e.to_string())
}

fn print_agents(agents: &[AgentInfo]) {
    println!(
        "{:<24} {:<20} {:<10} {:<22} {:<22} {:<10} {:<22} BACKLOG",
        "NAME", "LABELS", "STATE", "CONNECTED SINCE", "LAST SEEN", "VERSION", "CERT EXPIRES"
    );
    for a in agents {
        let labels: Vec<String> = a.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let state = if a.revoked {
            "revoked"
        } else if a.connected_since_unix_ms.is_some() {
            "connected"
        } else {
            "offline"
        };
        println!(
            "{:<24} {:<20} {:<10} {:<22} {:<22} {:<10} {:<22} {}",
            a.name,
            if labels.is_empty() {
                "-".into()
            } else {
                labels.join(",")
            },
            state,
            a.connected_since_unix_ms
                .map(fmt_ms)
                .unwrap_or_else(|| "-".into()),
            a.last_seen_unix_ms
                .map(fmt_ms)
                .unwrap_or_else(|| "-".into()),
            a.version.clone().unwrap_or_else(|| "-".into()),
            fmt_ms(a.cert_expires_at_unix_ms),
            a.backlog
                .map(|b| b.to_string())
                .unwrap_or_else(|| "-".into()),
        );
    }
}

fn print_status(status: &[crate::incident::engine::MonitorStatus], colour: bool) {
    let paint = |state: &str| -> String {
        let code = match state {
            "up" => "32",
            "degraded" | "edge" => "33",
            "down" => "31",
            "maintenance" => "34",
            _ => "90",
        };
        if colour {
            format!("\x1b[{code}m{state:<11}\x1b[0m")
        } else {
            format!("{state:<11}")
        }
    };
    println!(
        "{:<28} {:<11} {:<9} LOCATIONS",
        "MONITOR", "STATE", "INCIDENT"
    );
    for m in status {
        let locations: Vec<String> = m
            .locations
            .iter()
            .map(|l| match &l.reason {
                Some(r) if l.state != crate::incident::LocState::Up => {
                    format!("{}={}({r})", l.location, l.state.as_str())
                }
                _ => format!("{}={}", l.location, l.state.as_str()),
            })
            .collect();
        println!(
            "{:<28} {} {:<9} {}",
            m.monitor,
            paint(&m.state),
            m.incident.map_or_else(|| "-".to_owned(), |i| i.to_string()),
            if locations.is_empty() {
                "-".to_owned()
            } else {
                locations.join("  ")
            }
        );
    }
}

fn print_notifications(info: &crate::http::NotificationsInfo) {
    println!("{:<20} {:<10} DESTINATION", "CHANNEL", "KIND");
    for c in &info.channels {
        println!("{:<20} {:<10} {}", c.name, c.kind, c.destination);
    }
    println!();
    for e in &info.recent {
        let d = &e.body["delivery"];
        println!(
            "{}  {:<16} incident #{:<5} {:<20} attempt {:<3} {}",
            fmt_ms(e.at_unix_ms),
            e.body["action"].as_str().unwrap_or("?"),
            e.body["incident"],
            d["channel"].as_str().unwrap_or("?"),
            d["attempt"],
            d["error"].as_str().unwrap_or("")
        );
    }
}

fn print_incidents(incidents: &[crate::incident::Incident]) {
    println!(
        "{:>5}  {:<13} {:<24} {:<20} {:<20} {:<10} DIAGNOSIS",
        "ID", "KIND", "MONITOR", "SINCE", "RESOLVED", "REASON"
    );
    for i in incidents {
        let mut notes = String::new();
        if let Some(h) = &i.held {
            notes.push_str(&format!(" [not notified: {h}]"));
        }
        if i.backfilled {
            notes.push_str(" [from late results]");
        }
        println!(
            "{:>5}  {:<13} {:<24} {:<20} {:<20} {:<10} {}{}",
            i.id,
            i.kind.as_str(),
            i.monitor,
            fmt_ms(i.since_ms),
            i.resolved_ms.map_or_else(|| "open".to_owned(), fmt_ms),
            i.reason.as_deref().unwrap_or("-"),
            portwatch_agent::result::escape_excerpt(i.diagnosis.as_bytes(), 400),
            notes
        );
    }
}

/// Unix milliseconds as an RFC 3339 UTC time, to the second.
pub fn fmt_ms(ms: i64) -> String {
    let t =
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Reads one monitor definition from a .toml or .json file.
fn read_monitor(path: &std::path::Path) -> Result<crate::monitors::RawMonitor, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let parsed = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).map_err(|e| e.to_string())
    } else {
        toml::from_str(&text).map_err(|e| e.to_string().trim().replace('\n', " "))
    };
    parsed.map_err(|e| format!("{}: {e}", path.display()))
}

/// Reads one channel definition from a .json or .toml file, as JSON: sent
/// as it is, so that a field left out stays left out (a stored secret is
/// kept) and a JSON `null` stays null (it is cleared). Returns its name too.
fn read_channel(path: &std::path::Path) -> Result<(String, serde_json::Value), String> {
    let at = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let text = std::fs::read_to_string(path).map_err(|e| at(&e))?;
    let value: serde_json::Value = if path.extension().is_some_and(|e| e == "toml") {
        let t: toml::Table =
            toml::from_str(&text).map_err(|e| at(&e.to_string().trim().replace('\n', " ")))?;
        serde_json::to_value(t).map_err(|e| at(&e))?
    } else {
        serde_json::from_str(&text).map_err(|e| at(&e))?
    };
    // Unknown fields and wrong types are caught here, before the collector.
    let def: crate::notify::RawChannel =
        serde_json::from_value(value.clone()).map_err(|e| at(&e))?;
    if def.name.is_empty() {
        return Err(at(&"name: the channel needs one"));
    }
    Ok((def.name, value))
}

fn run_channels(cmd: &ChannelsCommand) -> Result<(), (i32, String)> {
    match cmd {
        ChannelsCommand::List { target, json } => {
            let list = target.api()?.list_channels().map_err(api_failure)?;
            show(*json, &list, |list| {
                println!(
                    "{:<24} {:<5} {:<10} {:<40} ROUTE",
                    "NAME", "FROM", "KIND", "DESTINATION"
                );
                for c in list {
                    let d = &c.definition;
                    let mut route: Vec<String> = d.monitors.clone();
                    route.extend(d.tags.iter().map(|t| format!("tag:{t}")));
                    if let Some(s) = d.min_severity {
                        route.push(format!(">={}", s.as_str()));
                    }
                    println!(
                        "{:<24} {:<5} {:<10} {:<40} {}",
                        c.name,
                        match c.origin {
                            crate::monitors::Origin::File => "file",
                            crate::monitors::Origin::Api => "api",
                        },
                        c.kind,
                        c.destination,
                        if route.is_empty() {
                            "all".to_owned()
                        } else {
                            route.join(",")
                        }
                    );
                }
            });
            Ok(())
        }
        ChannelsCommand::Show { target, name } => {
            let c = target.api()?.get_channel(name).map_err(api_failure)?;
            println!("{}", serde_json::to_string_pretty(&c).unwrap_or_default());
            Ok(())
        }
        ChannelsCommand::Put { target, file } => {
            let (name, def) = read_channel(file).map_err(|e| (EXIT_USAGE, e))?;
            let c = target
                .api()?
                .put_channel(&name, &def)
                .map_err(api_failure)?;
            println!(
                "channel {} saved ({} -> {}){}",
                c.name,
                c.kind,
                c.destination,
                if c.write_only.is_empty() {
                    String::new()
                } else {
                    format!(", write-only: {}", c.write_only.join(", "))
                }
            );
            Ok(())
        }
        ChannelsCommand::Delete { target, name } => {
            target.api()?.delete_channel(name).map_err(api_failure)?;
            println!("channel {name} deleted");
            Ok(())
        }
        ChannelsCommand::Test { target, name, json } => {
            let r = target.api()?.test_channel(name).map_err(api_failure)?;
            show(*json, &r, |r| match &r.error {
                None => println!("channel {}: delivered in {} ms", r.channel, r.took_ms),
                Some(e) => println!(
                    "channel {}: NOT delivered after {} ms: {e}",
                    r.channel, r.took_ms
                ),
            });
            if r.delivered {
                Ok(())
            } else {
                Err((
                    EXIT_FAILURE,
                    format!("the test notification on channel {name} was not delivered"),
                ))
            }
        }
    }
}

fn run_maintenance(cmd: &MaintenanceCommand) -> Result<(), (i32, String)> {
    let window_line = |w: &crate::maintenance::WindowInfo| {
        let d = &w.definition;
        let schedule = if d.days.is_empty() {
            format!(
                "once {} .. {}",
                d.start.as_deref().unwrap_or("?"),
                d.end
                    .clone()
                    .or_else(|| d.duration.clone().map(|x| format!("+{x}")))
                    .unwrap_or_default()
            )
        } else {
            format!(
                "{} at {} for {} ({})",
                d.days.join(","),
                d.at.as_deref().unwrap_or("?"),
                d.duration.as_deref().unwrap_or("?"),
                d.time_zone.as_deref().unwrap_or("UTC")
            )
        };
        let mut selects = d.monitors.clone();
        selects.extend(d.tags.iter().map(|t| format!("tag:{t}")));
        format!(
            "{:<24} {:<5} {:<7} {:<40} {:<22} {}",
            w.name,
            match w.origin {
                crate::maintenance::WindowOrigin::File => "file",
                crate::maintenance::WindowOrigin::Api => "api",
            },
            if w.active { "ACTIVE" } else { "-" },
            schedule,
            w.next_start_ms.map_or_else(|| "-".into(), fmt_ms),
            selects.join(",")
        )
    };
    match cmd {
        MaintenanceCommand::List { target, json } => {
            let list = target.api()?.list_maintenance().map_err(api_failure)?;
            show(*json, &list, |list| {
                println!(
                    "{:<24} {:<5} {:<7} {:<40} {:<22} SELECTS",
                    "NAME", "FROM", "NOW", "SCHEDULE", "NEXT START"
                );
                for w in list {
                    println!("{}", window_line(w));
                }
            });
            Ok(())
        }
        MaintenanceCommand::Add {
            target,
            name,
            monitors,
            tags,
            start,
            end,
            duration,
            days,
            at,
            time_zone,
            from,
            until,
            reason,
        } => {
            let def = crate::maintenance::RawWindow {
                name: name.clone(),
                reason: reason.clone(),
                monitors: monitors.clone(),
                tags: tags.clone(),
                // "now" is the CLI's shorthand for putting something into
                // maintenance at once.
                start: start.as_ref().map(|s| {
                    if s == "now" {
                        fmt_ms(crate::state::unix_ms(std::time::SystemTime::now()))
                    } else {
                        s.clone()
                    }
                }),
                end: end.clone(),
                days: days.clone(),
                at: at.clone(),
                duration: duration.clone(),
                time_zone: time_zone.clone(),
                from: from.clone(),
                until: until.clone(),
            };
            let w = target.api()?.add_maintenance(&def).map_err(api_failure)?;
            println!("{}", window_line(&w));
            Ok(())
        }
        MaintenanceCommand::Cancel { target, name } => {
            let w = target
                .api()?
                .cancel_maintenance(name)
                .map_err(api_failure)?;
            println!("cancelled {}", w.name);
            Ok(())
        }
        MaintenanceCommand::Upcoming {
            target,
            within,
            json,
        } => {
            let now = crate::state::unix_ms(std::time::SystemTime::now());
            let to = within.map(|w| now + crate::store::ms(w));
            let list = target
                .api()?
                .upcoming_maintenance(Some(now), to)
                .map_err(api_failure)?;
            show(*json, &list, |list| {
                for o in list {
                    println!(
                        "{}  {}  {:<24} {}",
                        fmt_ms(o.start_ms),
                        fmt_ms(o.end_ms),
                        o.name,
                        o.reason.as_deref().unwrap_or("")
                    );
                }
            });
            Ok(())
        }
    }
}

fn run_monitors(cmd: &MonitorsCommand) -> Result<(), (i32, String)> {
    match cmd {
        MonitorsCommand::List { target, json } => {
            let monitors = target
                .client()
                .map_err(|e| (EXIT_FAILURE, e))?
                .list_monitors()
                .map_err(api_failure)?;
            if *json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&monitors).unwrap_or_default()
                );
                return Ok(());
            }
            println!(
                "{:<28} {:<6} {:<34} {:<9} LOCATIONS",
                "NAME", "FROM", "TARGET", "INTERVAL"
            );
            for m in monitors {
                let d = &m.definition;
                println!(
                    "{:<28} {:<6} {:<34} {:<9} {}",
                    m.name,
                    match m.origin {
                        crate::monitors::Origin::File => "file",
                        crate::monitors::Origin::Api => "api",
                    },
                    d.target,
                    d.interval.as_deref().unwrap_or("30s"),
                    d.locations.join(",")
                );
            }
            Ok(())
        }
        MonitorsCommand::Show { target, name } => {
            let m = target
                .client()
                .map_err(|e| (EXIT_FAILURE, e))?
                .get_monitor(name)
                .map_err(api_failure)?;
            println!("{}", serde_json::to_string_pretty(&m).unwrap_or_default());
            Ok(())
        }
        MonitorsCommand::Put { target, file } => {
            let def = read_monitor(file).map_err(|e| (EXIT_USAGE, e))?;
            let m = target
                .client()
                .map_err(|e| (EXIT_FAILURE, e))?
                .put_monitor(&def)
                .map_err(api_failure)?;
            println!("monitor {} saved", m.name);
            Ok(())
        }
        MonitorsCommand::Delete { target, name } => {
            target
                .client()
                .map_err(|e| (EXIT_FAILURE, e))?
                .delete_monitor(name)
                .map_err(api_failure)?;
            println!("monitor {name} deleted");
            Ok(())
        }
        MonitorsCommand::Check { config } => {
            let c = Config::load(config).map_err(|e| (EXIT_USAGE, e.to_string()))?;
            println!("{}: ok, {} monitor(s)", config.display(), c.monitors.len());
            Ok(())
        }
        MonitorsCommand::Status { target } => {
            let s = target
                .client()
                .map_err(|e| (EXIT_FAILURE, e))?
                .config_status()
                .map_err(api_failure)?;
            match (s.ok, s.file, s.error) {
                (_, None, _) => println!("no config file reload yet"),
                (true, Some(f), _) => println!("{f}: last reload ok"),
                (false, Some(f), e) => {
                    return Err((
                        EXIT_FAILURE,
                        format!(
                            "{f}: last reload rejected, the previous monitors keep running:\n{}",
                            e.unwrap_or_default()
                        ),
                    ));
                }
            }
            Ok(())
        }
    }
}

/// Unix ms `d` ago.
fn since_ms(d: std::time::Duration) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.saturating_sub(d).as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse_or_say_why() {
        let l = parse_labels("site=fra, env=prod").unwrap();
        assert_eq!(l.get("site").map(String::as_str), Some("fra"));
        assert_eq!(l.len(), 2);
        assert!(parse_labels("site").unwrap_err().contains("key=value"));
        assert!(parse_labels("=x").is_err());
        assert!(parse_labels("").unwrap().is_empty());
    }

    #[test]
    fn times_print_as_utc() {
        assert_eq!(fmt_ms(0), "1970-01-01T00:00:00Z");
    }
}
