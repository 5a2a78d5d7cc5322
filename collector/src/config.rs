//! The collector's configuration file (TOML): where it listens, certificate
//! and token lifetimes, public probes, retention, and the monitors as code
//! (`[[monitors]]`, the model in `monitors.rs`; the running collector reloads
//! them when the file changes or on SIGHUP).
//!
//! Parsed into serde structs with `deny_unknown_fields`, then turned by
//! `validate` into a checked `Config`. Every monitor problem is reported, each
//! with the file, the line of its `[[monitors]]` table and the field.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::maintenance::{RawWindow, Window, WindowOrigin};
use crate::monitors::{Located, Monitor, Origin, Parents, Problems, RawMonitor, validate_all};
use crate::notify::{Channel, RawChannel};

/// Default address agents connect to.
pub const DEFAULT_AGENT_ADDR: &str = "0.0.0.0:7443";
/// Default address of the HTTP API and dashboard (localhost only).
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8080";
/// Raw results are kept this long by default.
pub const DEFAULT_RAW_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// 1-minute rollups are kept this long by default.
pub const DEFAULT_ROLLUP_RETENTION: Duration = Duration::from_secs(90 * 24 * 3600);

/// The largest CA file a monitor or notification channel may point at: a
/// bundle of every public root is ~250 KiB.
pub const MAX_CA_FILE_BYTES: u64 = 1024 * 1024;

/// Reads a CA file named in the config (or through the API): only a regular
/// file, at most `MAX_CA_FILE_BYTES`. A path such as `/dev/zero` or a FIFO
/// would otherwise hang the load or exhaust memory.
pub fn read_ca_file(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let shown = path.display();
    let file = std::fs::File::open(path).map_err(|e| format!("{shown}: {e}"))?;
    let meta = file.metadata().map_err(|e| format!("{shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{shown}: not a regular file"));
    }
    let mut text = String::new();
    file.take(MAX_CA_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("{shown}: {e}"))?;
    if text.len() as u64 > MAX_CA_FILE_BYTES {
        return Err(format!(
            "{shown}: larger than {} KiB",
            MAX_CA_FILE_BYTES / 1024
        ));
    }
    Ok(text)
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: {message}")]
    Syntax { origin: String, message: String },
    #[error("{origin}: {field}: {why}")]
    Invalid {
        origin: String,
        field: String,
        why: String,
    },
    /// Every problem of every monitor, one per line.
    #[error("{0}")]
    Monitors(Problems),
    /// Every problem of every notification channel, one per line.
    #[error("{origin}: {}", .problems.join(&format!("\n{origin}: ")))]
    Notifications {
        origin: String,
        problems: Vec<String>,
    },
    /// Every problem of the status page settings, one per line.
    #[error("{origin}: {}", .problems.join(&format!("\n{origin}: ")))]
    StatusPage {
        origin: String,
        problems: Vec<String>,
    },
    /// Every problem of every maintenance window, one per line.
    #[error("{origin}: {}", .problems.join(&format!("\n{origin}: ")))]
    Maintenance {
        origin: String,
        problems: Vec<String>,
    },
}

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// Address agents connect to (mTLS gRPC). Default `0.0.0.0:7443`.
    agent_addr: Option<String>,
    /// Address of the HTTP API and dashboard. Default `127.0.0.1:8080`.
    http_addr: Option<String>,
    /// Names (DNS or IP) agents use to reach the collector; they go into its
    /// server certificate. Default: the agent address's host, `localhost`, `127.0.0.1`.
    #[serde(default)]
    server_names: Vec<String>,
    /// Default lifetime of an enrollment token, e.g. "1h".
    token_ttl: Option<String>,
    /// Longest lifetime a token may be given, e.g. "24h".
    token_max_ttl: Option<String>,
    /// Lifetime of agent certificates, e.g. "24h"; agents renew at 70-90 %.
    agent_cert_lifetime: Option<String>,
    /// Enrollment attempts allowed per source address per minute. Default
    /// 10; raise it to enroll a fleet behind one NAT address at once.
    enroll_rate_limit: Option<u32>,
    /// Name of the collector's own public probe location (`public:<region>`).
    public_region: Option<String>,
    /// Run public probes in this collector. Default true.
    public_probes: Option<bool>,
    /// Let public probes reach private and special addresses (labs, tests).
    #[serde(default)]
    allow_private_targets: bool,
    /// How long raw results are kept, e.g. "7d".
    raw_retention: Option<String>,
    /// How long 1-minute rollups are kept, e.g. "90d".
    rollup_retention: Option<String>,
    /// An agent whose stream has been gone this long gets one "agent
    /// offline" incident, e.g. "60s". Default 60s.
    agent_offline_after: Option<String>,
    /// The dashboard's address as users reach it, for links in notifications,
    /// e.g. "https://portwatch.example". Default: none.
    dashboard_url: Option<String>,
    #[serde(default)]
    monitors: Vec<toml::Spanned<RawMonitor>>,
    /// Maintenance windows (`[[maintenance]]`, see `maintenance.rs`).
    #[serde(default)]
    maintenance: Vec<RawWindow>,
    /// Serve `/metrics` without the admin token (for a Prometheus on a trusted
    /// network). Default false: scrape with `bearer_token_file`.
    #[serde(default)]
    metrics_open: bool,
    /// Notification channels (`[[notifications]]`, see `notify.rs`).
    #[serde(default)]
    notifications: Vec<RawChannel>,
    /// The public status page (`[status_page]`, see `web/status.rs`).
    #[serde(default)]
    status_page: crate::web::status::RawStatusPage,
}

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub agent_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub server_names: Vec<String>,
    pub token_ttl: Duration,
    pub token_max_ttl: Duration,
    pub agent_cert_lifetime: Duration,
    /// Enrollment attempts allowed per source address per minute.
    pub enroll_rate_limit: u32,
    /// The collector's own public location is `public:<public_region>`.
    pub public_region: String,
    pub public_probes: bool,
    pub allow_private_targets: bool,
    pub raw_retention: Duration,
    pub rollup_retention: Duration,
    pub agent_offline_after: Duration,
    pub dashboard_url: Option<String>,
    pub metrics_open: bool,
    /// The public status page's settings.
    pub status_page: crate::web::status::StatusPage,
    /// The file's monitors, checked on their own (names unique, dependencies
    /// inside the file); the registry re-checks them against the API's.
    pub monitors: Vec<Monitor>,
    /// The same monitors as written, with their lines.
    pub monitor_sources: Vec<Located>,
    /// The file's maintenance windows, checked, and as written.
    pub maintenance: Vec<Window>,
    pub maintenance_sources: Vec<RawWindow>,
    /// Where incidents are sent: the file's channels, checked, and as written
    /// (the channel registry re-checks them against the API's).
    pub notifications: Vec<Channel>,
    pub notification_sources: Vec<RawChannel>,
    /// Where it came from (a path, or "defaults").
    pub origin: String,
    /// The file it was loaded from, watched for changes by a running collector.
    pub path: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config::parse("", "defaults").expect("the empty config is valid")
    }
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Config::parse(&text, &path.display().to_string())?;
        config.path = Some(path.to_owned());
        Ok(config)
    }

    /// Parses and validates `text`; `origin` names it in errors (a file path).
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            origin: origin.to_owned(),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        validate(raw, text, origin)
    }
}

fn validate(raw: RawConfig, text: &str, origin: &str) -> Result<Config, ConfigError> {
    let invalid = |field: String, why: String| ConfigError::Invalid {
        origin: origin.to_owned(),
        field,
        why,
    };
    let addr = |field: &str, v: Option<String>, default: &str| -> Result<SocketAddr, ConfigError> {
        let v = v.unwrap_or_else(|| default.to_owned());
        v.parse()
            .map_err(|_| invalid(field.to_owned(), format!("{v:?} is not an ip:port address")))
    };
    let dur =
        |field: &str, v: Option<String>, default: Duration| -> Result<Duration, ConfigError> {
            match v {
                None => Ok(default),
                Some(s) => humantime::parse_duration(&s).map_err(|e| {
                    invalid(
                        field.to_owned(),
                        format!("{s:?} is not a duration like 30s or 1h: {e}"),
                    )
                }),
            }
        };
    let agent_addr = addr("agent_addr", raw.agent_addr, DEFAULT_AGENT_ADDR)?;
    let http_addr = addr("http_addr", raw.http_addr, DEFAULT_HTTP_ADDR)?;
    let token_ttl = dur("token_ttl", raw.token_ttl, Duration::from_secs(3600))?;
    let token_max_ttl = dur(
        "token_max_ttl",
        raw.token_max_ttl,
        Duration::from_secs(24 * 3600),
    )?;
    if token_ttl > token_max_ttl || token_ttl.is_zero() {
        return Err(invalid(
            "token_ttl".into(),
            "must be above 0 and at most token_max_ttl".into(),
        ));
    }
    let agent_cert_lifetime = dur(
        "agent_cert_lifetime",
        raw.agent_cert_lifetime,
        Duration::from_secs(24 * 3600),
    )?;
    if agent_cert_lifetime < Duration::from_secs(10)
        || agent_cert_lifetime > Duration::from_secs(90 * 24 * 3600)
    {
        return Err(invalid(
            "agent_cert_lifetime".into(),
            "must be between 10s and 90 days".into(),
        ));
    }
    let enroll_rate_limit = raw.enroll_rate_limit.unwrap_or(10);
    if !(1..=100_000).contains(&enroll_rate_limit) {
        return Err(invalid(
            "enroll_rate_limit".into(),
            "must be between 1 and 100000".into(),
        ));
    }
    let mut server_names = raw.server_names;
    if server_names.is_empty() {
        if !agent_addr.ip().is_unspecified() {
            server_names.push(agent_addr.ip().to_string());
        }
        server_names.extend(["localhost".to_owned(), "127.0.0.1".to_owned()]);
    }
    let public_region = raw.public_region.unwrap_or_else(|| "collector".to_owned());
    if crate::monitors::LocationSel::parse(&format!("public:{public_region}")).is_err() {
        return Err(invalid(
            "public_region".into(),
            "must be 1-64 letters, digits, '_', '.', '-'".into(),
        ));
    }
    let raw_retention = dur("raw_retention", raw.raw_retention, DEFAULT_RAW_RETENTION)?;
    let rollup_retention = dur(
        "rollup_retention",
        raw.rollup_retention,
        DEFAULT_ROLLUP_RETENTION,
    )?;
    if raw_retention < Duration::from_secs(3600) || rollup_retention < raw_retention {
        return Err(invalid(
            "raw_retention".into(),
            "must be at least 1h and at most rollup_retention".into(),
        ));
    }
    let agent_offline_after = dur(
        "agent_offline_after",
        raw.agent_offline_after,
        Duration::from_secs(60),
    )?;
    if agent_offline_after < Duration::from_secs(5)
        || agent_offline_after > Duration::from_secs(86_400)
    {
        return Err(invalid(
            "agent_offline_after".into(),
            "must be between 5s and 24h".into(),
        ));
    }
    let dashboard_url = raw
        .dashboard_url
        .map(|u| u.trim_end_matches('/').to_owned());
    if let Some(u) = &dashboard_url
        && !(u.starts_with("http://") || u.starts_with("https://"))
    {
        return Err(invalid(
            "dashboard_url".into(),
            format!("{u:?} must start with http:// or https://"),
        ));
    }
    let monitor_sources: Vec<Located> = raw
        .monitors
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let line = text
                .get(..m.span().start)
                .map(|before| before.matches('\n').count() + 1);
            Located {
                raw: m.into_inner(),
                line,
                path: format!("monitors[{i}]"),
            }
        })
        .collect();
    let maintenance =
        crate::maintenance::validate_all(&raw.maintenance, "maintenance", WindowOrigin::File)
            .map_err(|problems| ConfigError::Maintenance {
                origin: origin.to_owned(),
                problems,
            })?;
    let maintenance_sources = raw.maintenance;
    let notifications =
        crate::notify::validate_channels(&raw.notifications).map_err(|problems| {
            ConfigError::Notifications {
                origin: origin.to_owned(),
                problems,
            }
        })?;
    let notification_sources = raw.notifications;
    let status_page = crate::web::status::validate(&raw.status_page).map_err(|problems| {
        ConfigError::StatusPage {
            origin: origin.to_owned(),
            problems,
        }
    })?;
    let monitors = validate_all(
        &monitor_sources,
        origin,
        Origin::File,
        &[],
        Parents::MayBeElsewhere,
    )
    .map_err(ConfigError::Monitors)?;
    Ok(Config {
        agent_addr,
        http_addr,
        server_names,
        token_ttl,
        token_max_ttl,
        agent_cert_lifetime,
        enroll_rate_limit,
        public_region,
        agent_offline_after,
        dashboard_url,
        metrics_open: raw.metrics_open,
        status_page,
        public_probes: raw.public_probes.unwrap_or(true),
        allow_private_targets: raw.allow_private_targets,
        raw_retention,
        rollup_retention,
        monitors,
        monitor_sources,
        maintenance,
        maintenance_sources,
        notifications,
        notification_sources,
        origin: origin.to_owned(),
        path: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_bind_agents_everywhere_and_http_to_localhost() {
        let c = Config::default();
        assert_eq!(c.agent_addr.to_string(), DEFAULT_AGENT_ADDR);
        assert!(c.http_addr.ip().is_loopback());
        assert_eq!(c.token_ttl, Duration::from_secs(3600));
        assert!(c.server_names.contains(&"localhost".to_owned()));
        assert_eq!(c.public_region, "collector");
        assert!(c.public_probes && !c.allow_private_targets);
        assert_eq!(c.raw_retention, DEFAULT_RAW_RETENTION);
        assert_eq!(c.rollup_retention, DEFAULT_ROLLUP_RETENTION);
    }

    /// A shipped example file with every commented-out setting (`# key = ...`,
    /// `# [table]`) switched on; prose comments stay comments.
    fn uncommented(text: &str) -> String {
        let is_key = |k: &str| k.chars().all(|c| c.is_ascii_lowercase() || c == '_');
        text.lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest)
                    if rest.starts_with('[')
                        || rest.split_once(" = ").is_some_and(|(k, _)| is_key(k)) =>
                {
                    rest
                }
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The conffile the Debian package installs: as shipped it is the
    /// defaults; with its examples switched on it is still valid.
    #[test]
    fn the_packaged_config_file_is_the_defaults_and_its_examples_are_valid() {
        let shipped = include_str!("../../deploy/etc/collector.toml");
        let c = Config::parse(shipped, "collector.toml").unwrap();
        let d = Config::default();
        assert_eq!(
            (c.agent_addr, c.http_addr, &c.server_names, c.token_ttl),
            (d.agent_addr, d.http_addr, &d.server_names, d.token_ttl)
        );
        assert!(c.monitors.is_empty() && c.notifications.is_empty() && c.maintenance.is_empty());

        let all = uncommented(shipped);
        let c = Config::parse(&all, "collector.toml").unwrap_or_else(|e| panic!("{e}\n{all}"));
        assert_eq!(c.server_names, ["collector.example.com"]);
        assert_eq!(c.monitors.len(), 1);
        assert_eq!(c.notifications.len(), 1);
        assert_eq!(c.maintenance.len(), 1);
        assert_eq!(
            c.dashboard_url.as_deref(),
            Some("https://portwatch.example.com")
        );
    }

    #[test]
    fn a_ca_file_that_is_not_a_small_regular_file_is_refused_at_once() {
        // /dev/zero never ends and a FIFO never answers: reading either
        // whole would hang the load (or a reload) or exhaust memory.
        let started = std::time::Instant::now();
        for (path, why) in [
            ("/dev/zero", "not a regular file"),
            ("/", "not a regular file"),
            ("/nonexistent/ca.pem", "No such file"),
        ] {
            let text = format!(
                "[[monitors]]\nname = \"m\"\ntarget = \"tcp://127.0.0.1:1\"\nlocations = [\"a\"]\ntls = {{ ca_file = \"{path}\" }}\n\n[[notifications]]\nname = \"n\"\nkind = \"webhook\"\nurl = \"https://x.test\"\nca_file = \"{path}\"\n"
            );
            let e = Config::parse(&text, "c.toml").unwrap_err().to_string();
            assert!(e.contains("ca_file") && e.contains(why), "{path}: {e}");
        }
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.pem");
        std::fs::write(&big, vec![b'A'; MAX_CA_FILE_BYTES as usize + 1]).unwrap();
        let e = read_ca_file(&big).unwrap_err();
        assert!(e.contains("larger than 1024 KiB"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn every_problem_names_the_file_and_field() {
        let err = |text: &str| {
            Config::parse(text, "/etc/portwatch/collector.toml")
                .unwrap_err()
                .to_string()
        };
        let e = err("agent_adr = \"0.0.0.0:1\"");
        assert!(
            e.contains("collector.toml") && e.contains("agent_adr"),
            "{e}"
        );
        let e = err("agent_addr = \"nope\"");
        assert!(e.contains("agent_addr") && e.contains("nope"), "{e}");
        let e = err("token_ttl = \"48h\"");
        assert!(e.contains("token_ttl"), "{e}");
        let e = err("public_region = \"eu west\"");
        assert!(e.contains("public_region"), "{e}");
        let e = err("raw_retention = \"100d\"");
        assert!(e.contains("raw_retention"), "{e}");
        let e = err("monitors = 3");
        assert!(e.contains("collector.toml"), "{e}");
    }

    #[test]
    fn monitor_problems_carry_the_line_of_their_table() {
        let text = "http_addr = \"127.0.0.1:8080\"\n\n[[monitors]]\nname = \"ok\"\ntarget = \"tcp://h:1\"\nlocations = [\"public\"]\n\n[[monitors]]\nname = \"bad\"\ntarget = \"tcp://h:0\"\ninterval = \"500ms\"\nlocations = [\"public\"]\n";
        let e = Config::parse(text, "c.toml").unwrap_err().to_string();
        let lines: Vec<&str> = e.lines().collect();
        assert_eq!(lines.len(), 2, "one line per problem: {e}");
        assert!(
            lines
                .iter()
                .all(|l| l.starts_with("c.toml:8: monitors[1] (\"bad\").")),
            "{e}"
        );
        assert!(e.contains(".target") && e.contains("1-65535"), "{e}");
        assert!(e.contains(".interval: must be at least 1s"), "{e}");
    }

    #[test]
    fn channels_and_windows_are_checked_with_the_file_and_field() {
        let c = Config::parse(
            r#"
agent_offline_after = "2m"
[[notifications]]
name = "hook"
kind = "webhook"
url = "https://hooks.example/x"

[[maintenance]]
name = "nightly"
monitors = ["*"]
days = ["daily"]
at = "03:00"
duration = "30m"
time_zone = "Europe/Berlin"
"#,
            "c.toml",
        )
        .unwrap();
        assert_eq!(c.notifications.len(), 1);
        assert_eq!(c.maintenance.len(), 1);
        assert_eq!(c.agent_offline_after, Duration::from_secs(120));
        let e = Config::parse(
            "[[notifications]]\nname = \"mail\"\nkind = \"email\"\nsmtp_host = \"mx\"\nfrom = \"x@y.z\"\n",
            "c.toml",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "c.toml: notifications[0] (\"mail\").to: needs at least one recipient"
        );
        let e = Config::parse(
            "[[maintenance]]\nname = \"w\"\nmonitors = [\"db\"]\ndays = [\"mon\"]\nat = \"02:00\"\nduration = \"1h\"\ntime_zone = \"Mars/Base\"\n",
            "c.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("c.toml: maintenance[0] (\"w\").time_zone: unknown time zone"),
            "{e}"
        );
        assert_eq!(c.enroll_rate_limit, 10);
        let e = Config::parse("enroll_rate_limit = 0", "c.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("enroll_rate_limit: must be between 1 and 100000"),
            "{e}"
        );
        let e = Config::parse("agent_offline_after = \"1s\"", "c.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("agent_offline_after: must be between 5s and 24h"),
            "{e}"
        );
    }
}
