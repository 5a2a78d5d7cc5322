//! The collector's configuration file (TOML): where it listens, certificate
//! and token lifetimes, and, until the monitors-as-code issue replaces it, a
//! minimal list of monitors with the agents they are assigned to.
//!
//! Parsed into serde structs with `deny_unknown_fields`, then turned by
//! `validate` into a checked `Config`. Every monitor is validated with the same
//! rules the agent applies (`portwatch_agent::check::build_spec`), so a monitor
//! the collector accepts is one every agent can run.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use portwatch_agent::check::{CheckOptions, Family, TlsSettings, build_spec, unescape};
use portwatch_proto::v1 as pb;
use serde::Deserialize;

/// Default address agents connect to.
pub const DEFAULT_AGENT_ADDR: &str = "0.0.0.0:7443";
/// Default address of the HTTP API and dashboard (localhost only).
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8080";
/// Default interval of a monitor.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);

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
    #[serde(default)]
    monitors: Vec<RawMonitor>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMonitor {
    id: String,
    /// tcp://host:port, udp://host:port or icmp://host
    target: String,
    /// e.g. "30s" (>= 1 s)
    interval: Option<String>,
    /// e.g. "3s"
    timeout: Option<String>,
    degraded_ms: Option<u64>,
    #[serde(default)]
    expect_closed: bool,
    /// "any", "ipv4" or "ipv6"
    family: Option<String>,
    preset: Option<String>,
    /// Escaped bytes (\r \n \t \0 \\ \xNN)
    send: Option<String>,
    expect_regex: Option<String>,
    tls: Option<RawTls>,
    #[serde(default)]
    no_reply_ok: bool,
    dns_name: Option<String>,
    ntp_max_offset_ms: Option<u64>,
    /// Agents that run it: names, or label selectors "key=value".
    #[serde(default)]
    agents: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    server_name: Option<String>,
    ca_file: Option<PathBuf>,
    #[serde(default)]
    no_verify: bool,
    expiring_days: Option<u32>,
}

/// Which agents run a monitor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    Name(String),
    Label(String, String),
}

impl Selector {
    pub fn matches(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Selector::Name(n) => n == name,
            Selector::Label(k, v) => labels.get(k) == Some(v),
        }
    }
}

/// A validated monitor: its wire form and who runs it.
#[derive(Debug, Clone)]
pub struct MonitorDef {
    pub spec: pb::MonitorSpec,
    pub selectors: Vec<Selector>,
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
    pub monitors: Vec<MonitorDef>,
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
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses and validates `text`; `origin` names it in errors (a file path).
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            origin: origin.to_owned(),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        validate(raw, origin)
    }

    /// The monitors an agent with this name and labels runs.
    pub fn assignment_for(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Vec<pb::MonitorSpec> {
        self.monitors
            .iter()
            .filter(|m| m.selectors.iter().any(|s| s.matches(name, labels)))
            .map(|m| m.spec.clone())
            .collect()
    }
}

fn validate(raw: RawConfig, origin: &str) -> Result<Config, ConfigError> {
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
    let mut server_names = raw.server_names;
    if server_names.is_empty() {
        if !agent_addr.ip().is_unspecified() {
            server_names.push(agent_addr.ip().to_string());
        }
        server_names.extend(["localhost".to_owned(), "127.0.0.1".to_owned()]);
    }
    let mut seen = HashSet::new();
    let mut monitors = Vec::with_capacity(raw.monitors.len());
    for (i, m) in raw.monitors.into_iter().enumerate() {
        let at = format!("monitors[{i}] ({:?})", m.id);
        if m.id.is_empty() || m.id.len() > 128 || m.id.chars().any(|c| c.is_control() || c == '/') {
            return Err(invalid(
                format!("monitors[{i}].id"),
                "must be 1-128 characters, no '/' or control characters".into(),
            ));
        }
        if !seen.insert(m.id.clone()) {
            return Err(invalid(
                format!("{at}.id"),
                "is used by another monitor".into(),
            ));
        }
        let interval = dur(&format!("{at}.interval"), m.interval, DEFAULT_INTERVAL)?;
        if interval < Duration::from_secs(1) {
            return Err(invalid(
                format!("{at}.interval"),
                "must be at least 1s".into(),
            ));
        }
        let timeout = m
            .timeout
            .map(|t| dur(&format!("{at}.timeout"), Some(t), Duration::ZERO))
            .transpose()?;
        let family = match m.family.as_deref() {
            None | Some("any") => Family::Any,
            Some("ipv4") => Family::V4,
            Some("ipv6") => Family::V6,
            Some(other) => {
                return Err(invalid(
                    format!("{at}.family"),
                    format!("{other:?} is not any, ipv4 or ipv6"),
                ));
            }
        };
        let ca_pem = match m.tls.as_ref().and_then(|t| t.ca_file.as_ref()) {
            Some(p) => Some(std::fs::read_to_string(p).map_err(|e| {
                invalid(format!("{at}.tls.ca_file"), format!("{}: {e}", p.display()))
            })?),
            None => None,
        };
        let send = m
            .send
            .as_deref()
            .map(unescape)
            .transpose()
            .map_err(|e| invalid(format!("{at}.send"), e.to_string()))?;
        let opts = CheckOptions {
            timeout,
            degraded_after: m.degraded_ms.map(Duration::from_millis),
            expect_closed: m.expect_closed,
            family,
            preset: m.preset.clone(),
            send: send.clone(),
            expect_regex: m.expect_regex.clone(),
            tls: m.tls.as_ref().map(|t| TlsSettings {
                server_name: t.server_name.clone(),
                ca_pem: ca_pem.clone(),
                no_verify: t.no_verify,
                expiring_days: t.expiring_days,
            }),
            no_reply_is_up: m.no_reply_ok,
            dns_name: m.dns_name.clone(),
            ntp_max_offset: m.ntp_max_offset_ms.map(Duration::from_millis),
        };
        // The agent's own rules: what passes here runs there.
        build_spec(&m.target, &opts).map_err(|e| invalid(at.clone(), e.to_string()))?;
        if m.agents.is_empty() {
            return Err(invalid(
                format!("{at}.agents"),
                "name at least one agent or label selector (key=value)".into(),
            ));
        }
        let selectors = m
            .agents
            .iter()
            .map(|a| match a.split_once('=') {
                Some((k, v)) if !k.is_empty() && !v.is_empty() => {
                    Ok(Selector::Label(k.to_owned(), v.to_owned()))
                }
                Some(_) => Err(invalid(
                    format!("{at}.agents"),
                    format!("{a:?} is not key=value"),
                )),
                None if !a.is_empty() => Ok(Selector::Name(a.clone())),
                None => Err(invalid(
                    format!("{at}.agents"),
                    "an empty agent name".into(),
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let ms = |d: Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
        let spec = pb::MonitorSpec {
            id: m.id,
            target: m.target,
            interval_ms: ms(interval),
            options: Some(pb::CheckOptions {
                timeout_ms: timeout.map(ms).unwrap_or(0),
                degraded_ms: m
                    .degraded_ms
                    .map(|d| u32::try_from(d).unwrap_or(u32::MAX))
                    .unwrap_or(0),
                expect_closed: m.expect_closed,
                family: m.family.unwrap_or_default(),
                preset: m.preset.unwrap_or_default(),
                send: send.unwrap_or_default(),
                expect_regex: m.expect_regex.unwrap_or_default(),
                tls: m.tls.map(|t| pb::TlsOptions {
                    server_name: t.server_name.unwrap_or_default(),
                    ca_pem: ca_pem.unwrap_or_default(),
                    no_verify: t.no_verify,
                    expiring_days: t.expiring_days.unwrap_or(0),
                }),
                no_reply_is_up: m.no_reply_ok,
                dns_name: m.dns_name.unwrap_or_default(),
                ntp_max_offset_ms: m
                    .ntp_max_offset_ms
                    .map(|d| u32::try_from(d).unwrap_or(u32::MAX))
                    .unwrap_or(0),
            }),
        };
        monitors.push(MonitorDef { spec, selectors });
    }
    Ok(Config {
        agent_addr,
        http_addr,
        server_names,
        token_ttl,
        token_max_ttl,
        agent_cert_lifetime,
        monitors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use portwatch_agent::check::{TcpMode, TcpPreset, spec_from_proto};

    #[test]
    fn defaults_bind_agents_everywhere_and_http_to_localhost() {
        let c = Config::default();
        assert_eq!(c.agent_addr.to_string(), DEFAULT_AGENT_ADDR);
        assert!(c.http_addr.ip().is_loopback());
        assert_eq!(c.token_ttl, Duration::from_secs(3600));
        assert!(c.server_names.contains(&"localhost".to_owned()));
    }

    #[test]
    fn monitors_become_specs_the_agent_builds_identically() {
        let c = Config::parse(
            r#"
            [[monitors]]
            id = "pg-main"
            target = "tcp://10.0.0.5:5432"
            interval = "10s"
            timeout = "2s"
            degraded_ms = 500
            preset = "postgres"
            agents = ["bastion-fra-1", "site=ams"]

            [[monitors]]
            id = "dns"
            target = "udp://10.0.0.53:53"
            preset = "dns"
            dns_name = "db.internal"
            agents = ["site=fra"]
            "#,
            "test.toml",
        )
        .unwrap();
        let fra: BTreeMap<String, String> = [("site".to_owned(), "fra".to_owned())].into();
        let ams: BTreeMap<String, String> = [("site".to_owned(), "ams".to_owned())].into();
        let ids = |v: Vec<pb::MonitorSpec>| v.into_iter().map(|m| m.id).collect::<Vec<_>>();
        assert_eq!(
            ids(c.assignment_for("bastion-fra-1", &fra)),
            vec!["pg-main", "dns"]
        );
        assert_eq!(ids(c.assignment_for("other", &ams)), vec!["pg-main"]);
        assert!(c.assignment_for("other", &BTreeMap::new()).is_empty());
        let (spec, every) = spec_from_proto(&c.monitors[0].spec).unwrap();
        assert_eq!(every, Duration::from_secs(10));
        assert_eq!(spec.timeout, Duration::from_secs(2));
        assert!(matches!(spec.tcp, TcpMode::Preset(TcpPreset::Postgres)));
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
        let e = err("[[monitors]]\nid = \"a\"\ntarget = \"tcp://h:0\"\nagents = [\"x\"]");
        assert!(
            e.contains("monitors[0] (\"a\")") && e.contains("1-65535"),
            "{e}"
        );
        let e = err(
            "[[monitors]]\nid = \"a\"\ntarget = \"tcp://h:1\"\ninterval = \"500ms\"\nagents = [\"x\"]",
        );
        assert!(e.contains("interval") && e.contains("at least 1s"), "{e}");
        let e = err(
            "[[monitors]]\nid = \"a\"\ntarget = \"tcp://h:1\"\nagents = [\"x\"]\n[[monitors]]\nid = \"a\"\ntarget = \"tcp://h:2\"\nagents = [\"x\"]",
        );
        assert!(
            e.contains("monitors[1]") && e.contains("used by another"),
            "{e}"
        );
        let e = err("[[monitors]]\nid = \"a\"\ntarget = \"tcp://h:1\"");
        assert!(e.contains("agents"), "{e}");
        let e = err(
            "[[monitors]]\nid = \"a\"\ntarget = \"tcp://h:1\"\npreset = \"oracle\"\nagents = [\"x\"]",
        );
        assert!(e.contains("oracle"), "{e}");
        let e = err("monitors = 3");
        assert!(e.contains("collector.toml"), "{e}");
    }
}
