//! What to check: the target (`tcp://host:port`, `udp://host:port`, `icmp://host`)
//! and the options of one check, validated once into a `CheckSpec` that the
//! engine can run as often as it likes.

use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use regex::bytes::Regex;
use rustls_pki_types::CertificateDer;

/// Default time a whole check may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);
/// Default threshold under which a certificate counts as expiring.
pub const DEFAULT_CERT_EXPIRING_DAYS: u32 = 14;
/// The largest reply the engine reads from a service, whatever it sends.
pub const MAX_REPLY_BYTES: usize = 4096;

/// The check types, one prober each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Icmp => "icmp",
        }
    }
}

/// A host as the user wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Ip(IpAddr),
    Name(String),
}

impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Name(n) => f.write_str(n),
        }
    }
}

/// Where a check goes. `port` is 0 for ICMP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub protocol: Protocol,
    pub host: Host,
    pub port: u16,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.protocol {
            Protocol::Icmp => write!(f, "icmp://{}", self.host),
            p => write!(f, "{}://{}:{}", p.as_str(), self.host, self.port),
        }
    }
}

/// Why a target or an option was refused. Each message names the field and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("target {0:?}: expected tcp://host:port, udp://host:port or icmp://host")]
    BadTarget(String),
    #[error("target {target:?}: unknown scheme {scheme:?} (use tcp, udp or icmp)")]
    UnknownScheme { target: String, scheme: String },
    #[error("target {target:?}: port {port:?} is not in 1-65535")]
    BadPort { target: String, port: String },
    #[error("target {target:?}: a port is required for {scheme}")]
    MissingPort {
        target: String,
        scheme: &'static str,
    },
    #[error("target {target:?}: icmp takes no port")]
    IcmpPort { target: String },
    #[error("target {target:?}: {why}")]
    BadHost { target: String, why: String },
    #[error("preset {name:?} is unknown for {protocol} (known: {known})")]
    UnknownPreset {
        name: String,
        protocol: &'static str,
        known: String,
    },
    #[error("expect regex {pattern:?} is invalid: {why}")]
    BadRegex { pattern: String, why: String },
    #[error("option {option} does not apply to {protocol} checks")]
    NotApplicable {
        option: &'static str,
        protocol: &'static str,
    },
    #[error("{field}: {why}")]
    Invalid { field: &'static str, why: String },
}

impl FromStr for Target {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| SpecError::BadTarget(s.to_owned()))?;
        let protocol = match scheme.to_ascii_lowercase().as_str() {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            "icmp" => Protocol::Icmp,
            _ => {
                return Err(SpecError::UnknownScheme {
                    target: s.to_owned(),
                    scheme: scheme.to_owned(),
                });
            }
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
            return Err(SpecError::BadTarget(s.to_owned()));
        }
        // Split host and port, honouring [v6]:port and bare IPv6 literals for ICMP.
        let (host_str, port_str) = if let Some(inner) = rest.strip_prefix('[') {
            let (h, after) = inner.split_once(']').ok_or_else(|| SpecError::BadHost {
                target: s.to_owned(),
                why: "unclosed [".into(),
            })?;
            match after {
                "" => (h, None),
                p if p.starts_with(':') => (h, Some(&p[1..])),
                _ => return Err(SpecError::BadTarget(s.to_owned())),
            }
        } else if rest.matches(':').count() > 1 {
            // A bare IPv6 literal: only valid without a port.
            (rest, None)
        } else {
            match rest.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            }
        };
        let host = parse_host(host_str).map_err(|why| SpecError::BadHost {
            target: s.to_owned(),
            why,
        })?;
        let port = match (protocol, port_str) {
            (Protocol::Icmp, None) => 0,
            (Protocol::Icmp, Some(_)) => {
                return Err(SpecError::IcmpPort {
                    target: s.to_owned(),
                });
            }
            (_, None) => {
                return Err(SpecError::MissingPort {
                    target: s.to_owned(),
                    scheme: protocol.as_str(),
                });
            }
            (_, Some(p)) => match p.parse::<u32>() {
                Ok(n) if (1..=65535).contains(&n) => n as u16,
                _ => {
                    return Err(SpecError::BadPort {
                        target: s.to_owned(),
                        port: p.to_owned(),
                    });
                }
            },
        };
        Ok(Target {
            protocol,
            host,
            port,
        })
    }
}

fn parse_host(h: &str) -> Result<Host, String> {
    if h.is_empty() {
        return Err("the host is empty".into());
    }
    if let Ok(ip) = h.parse::<IpAddr>() {
        return Ok(Host::Ip(ip));
    }
    if h.contains(':') {
        return Err(format!("{h:?} is not a valid IPv6 address"));
    }
    let name = h.strip_suffix('.').unwrap_or(h);
    if name.len() > 253 {
        return Err("the host name is longer than 253 characters".into());
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!("{h:?} has an empty or over-long label"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "{h:?} contains characters not allowed in a host name"
            ));
        }
    }
    Ok(Host::Name(h.to_ascii_lowercase()))
}

/// Which address families a name may resolve to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Family {
    #[default]
    Any,
    V4,
    V6,
}

/// Conversations the TCP prober knows: each answers "is it ACCEPTING connections?".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TcpPreset {
    Redis,
    Postgres,
    Mysql,
    Smtp,
    Ssh,
    Imap,
    Pop3,
    Ftp,
    Memcached,
    Amqp,
    Mqtt,
    Kafka,
}

impl TcpPreset {
    pub const ALL: [TcpPreset; 12] = [
        TcpPreset::Redis,
        TcpPreset::Postgres,
        TcpPreset::Mysql,
        TcpPreset::Smtp,
        TcpPreset::Ssh,
        TcpPreset::Imap,
        TcpPreset::Pop3,
        TcpPreset::Ftp,
        TcpPreset::Memcached,
        TcpPreset::Amqp,
        TcpPreset::Mqtt,
        TcpPreset::Kafka,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TcpPreset::Redis => "redis",
            TcpPreset::Postgres => "postgres",
            TcpPreset::Mysql => "mysql",
            TcpPreset::Smtp => "smtp",
            TcpPreset::Ssh => "ssh",
            TcpPreset::Imap => "imap",
            TcpPreset::Pop3 => "pop3",
            TcpPreset::Ftp => "ftp",
            TcpPreset::Memcached => "memcached",
            TcpPreset::Amqp => "amqp",
            TcpPreset::Mqtt => "mqtt",
            TcpPreset::Kafka => "kafka",
        }
    }

    /// The STARTTLS dialect of this preset, if it has one.
    pub fn starttls(self) -> Option<StartTls> {
        match self {
            TcpPreset::Smtp => Some(StartTls::Smtp),
            TcpPreset::Imap => Some(StartTls::Imap),
            TcpPreset::Pop3 => Some(StartTls::Pop3),
            _ => None,
        }
    }

    pub fn parse(name: &str) -> Option<TcpPreset> {
        TcpPreset::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(name))
    }
}

/// Protocols where TLS is negotiated in-band after a plaintext greeting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartTls {
    Smtp,
    Imap,
    Pop3,
}

/// TLS options of a TCP check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsOptions {
    /// Name for SNI and verification; defaults to the target's host name.
    pub server_name: Option<String>,
    /// Trust only these roots instead of the system's.
    pub ca: Option<Vec<CertificateDer<'static>>>,
    /// Verify the chain and name. When false, expiry is still reported.
    pub verify: bool,
    /// `cert_expiring` (degraded) when fewer days than this are left.
    pub expiring_days: u32,
    /// Negotiate TLS in-band first (set from the preset).
    pub starttls: Option<StartTls>,
}

impl Default for TlsOptions {
    fn default() -> Self {
        TlsOptions {
            server_name: None,
            ca: None,
            verify: true,
            expiring_days: DEFAULT_CERT_EXPIRING_DAYS,
            starttls: None,
        }
    }
}

/// What a TCP check does after the connection is established.
#[derive(Debug, Clone, Default)]
pub enum TcpMode {
    /// Connect, then close: "is the port open?".
    #[default]
    Connect,
    /// Speak a known protocol's first exchange.
    Preset(TcpPreset),
    /// Send optional bytes, then read until the regex matches.
    Expect {
        send: Option<Vec<u8>>,
        expect: Option<Regex>,
    },
}

/// Two expect regexes are the same when their patterns are: [`compile_regex`]
/// builds every one with the same settings, so equal text matches the same
/// replies. This is what lets the scheduler tell a changed spec from an
/// unchanged one (`regex` has no `PartialEq` of its own).
fn same_regex(a: &Option<Regex>, b: &Option<Regex>) -> bool {
    a.as_ref().map(Regex::as_str) == b.as_ref().map(Regex::as_str)
}

impl PartialEq for TcpMode {
    fn eq(&self, other: &TcpMode) -> bool {
        match (self, other) {
            (TcpMode::Connect, TcpMode::Connect) => true,
            (TcpMode::Preset(a), TcpMode::Preset(b)) => a == b,
            (
                TcpMode::Expect { send, expect },
                TcpMode::Expect {
                    send: send2,
                    expect: expect2,
                },
            ) => send == send2 && same_regex(expect, expect2),
            _ => false,
        }
    }
}

impl Eq for TcpMode {}

impl PartialEq for UdpMode {
    fn eq(&self, other: &UdpMode) -> bool {
        match (self, other) {
            (UdpMode::Dns { name }, UdpMode::Dns { name: name2 }) => name == name2,
            (UdpMode::Ntp { max_offset }, UdpMode::Ntp { max_offset: m2 }) => max_offset == m2,
            (UdpMode::Syslog, UdpMode::Syslog) => true,
            (
                UdpMode::Generic { payload, expect },
                UdpMode::Generic {
                    payload: payload2,
                    expect: expect2,
                },
            ) => payload == payload2 && same_regex(expect, expect2),
            _ => false,
        }
    }
}

impl Eq for UdpMode {}

/// What a UDP check sends and expects.
#[derive(Debug, Clone)]
pub enum UdpMode {
    /// A DNS query for `name` (type A); up on a reply with our ID and an acceptable RCODE.
    Dns { name: String },
    /// An NTP mode 3 request; degraded when |offset| exceeds `max_offset`.
    Ntp { max_offset: Duration },
    /// Send an RFC 5424 message; no reply expected, only ICMP errors count.
    Syslog,
    /// Any payload, optionally a regex the reply must match.
    Generic {
        payload: Vec<u8>,
        expect: Option<Regex>,
    },
}

/// What a generic UDP check sends when the user gives no payload.
pub const DEFAULT_UDP_PAYLOAD: &[u8] = b"portwatch\n";

impl Default for UdpMode {
    fn default() -> Self {
        UdpMode::Generic {
            payload: DEFAULT_UDP_PAYLOAD.to_vec(),
            expect: None,
        }
    }
}

/// The UDP presets `--expect` accepts.
pub const UDP_PRESETS: [&str; 3] = ["dns", "ntp", "syslog"];

/// Default NTP offset above which a server counts as degraded.
pub const DEFAULT_NTP_MAX_OFFSET: Duration = Duration::from_millis(100);

/// One check, validated. Equal specs run the same check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckSpec {
    pub target: Target,
    /// The whole check (DNS, connect, TLS, reply) must finish within this.
    pub timeout: Duration,
    /// Handshake (TCP connect, or UDP/ICMP round trip) above this is `slow` (degraded).
    pub degraded_after: Option<Duration>,
    /// Invert: a port that must stay closed (exposure monitoring).
    pub expect_closed: bool,
    pub family: Family,
    pub tcp: TcpMode,
    pub tls: Option<TlsOptions>,
    pub udp: UdpMode,
    /// UDP silence is `no_reply`; when true it counts as up (open|filtered).
    pub no_reply_is_up: bool,
}

impl CheckSpec {
    /// A plain check of `target` with every option at its default.
    pub fn new(target: Target) -> Self {
        CheckSpec {
            target,
            timeout: DEFAULT_TIMEOUT,
            degraded_after: None,
            expect_closed: false,
            family: Family::Any,
            tcp: TcpMode::Connect,
            tls: None,
            udp: UdpMode::default(),
            no_reply_is_up: false,
        }
    }

    /// Checks the combination of options; returns the first problem found.
    pub fn validate(&self) -> Result<(), SpecError> {
        let proto = self.target.protocol.as_str();
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(300) {
            return Err(SpecError::Invalid {
                field: "timeout",
                why: "must be between 1ms and 300s".into(),
            });
        }
        if let Some(d) = self.degraded_after
            && d >= self.timeout
        {
            return Err(SpecError::Invalid {
                field: "degraded threshold",
                why: format!(
                    "{} ms is not below the timeout ({} ms)",
                    d.as_millis(),
                    self.timeout.as_millis()
                ),
            });
        }
        if self.tls.is_some() && self.target.protocol != Protocol::Tcp {
            return Err(SpecError::NotApplicable {
                option: "tls",
                protocol: proto,
            });
        }
        if let (Some(tls), TcpMode::Preset(p)) = (&self.tls, &self.tcp)
            && tls.starttls.is_some()
            && p.starttls() != tls.starttls
        {
            return Err(SpecError::Invalid {
                field: "tls",
                why: "STARTTLS dialect does not match the preset".into(),
            });
        }
        if !matches!(self.tcp, TcpMode::Connect) && self.target.protocol != Protocol::Tcp {
            return Err(SpecError::NotApplicable {
                option: "tcp send/expect",
                protocol: proto,
            });
        }
        if self.no_reply_is_up && self.target.protocol != Protocol::Udp {
            return Err(SpecError::NotApplicable {
                option: "no-reply-is-up",
                protocol: proto,
            });
        }
        Ok(())
    }

    /// The name to use for SNI, certificate verification and protocol greetings.
    pub fn server_name(&self) -> String {
        if let Some(n) = self.tls.as_ref().and_then(|t| t.server_name.clone()) {
            return n;
        }
        match &self.target.host {
            Host::Name(n) => n.trim_end_matches('.').to_owned(),
            Host::Ip(ip) => ip.to_string(),
        }
    }
}

/// Check options as people and programs write them (CLI flags, the monitors
/// file, the assignment proto): plain data, turned into a validated `CheckSpec`
/// by `build_spec`, the one place those rules live.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckOptions {
    /// Default `DEFAULT_TIMEOUT`.
    pub timeout: Option<Duration>,
    pub degraded_after: Option<Duration>,
    pub expect_closed: bool,
    pub family: Family,
    /// A TCP or UDP preset name.
    pub preset: Option<String>,
    /// Raw bytes to send (already unescaped).
    pub send: Option<Vec<u8>>,
    pub expect_regex: Option<String>,
    pub tls: Option<TlsSettings>,
    pub no_reply_is_up: bool,
    /// DNS preset: the name to query (default `localhost.`).
    pub dns_name: Option<String>,
    /// NTP preset: default `DEFAULT_NTP_MAX_OFFSET`.
    pub ntp_max_offset: Option<Duration>,
}

/// TLS settings as written; `ca_pem` holds PEM certificates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    pub server_name: Option<String>,
    pub ca_pem: Option<String>,
    pub no_verify: bool,
    pub expiring_days: Option<u32>,
}

/// The default name a DNS preset asks for.
pub const DEFAULT_DNS_NAME: &str = "localhost.";

/// Builds and validates the spec for `target` with `o`; the error names the
/// option and why.
pub fn build_spec(target: &str, o: &CheckOptions) -> Result<CheckSpec, SpecError> {
    let mut spec = CheckSpec::new(target.parse()?);
    spec.timeout = o.timeout.unwrap_or(DEFAULT_TIMEOUT);
    spec.degraded_after = o.degraded_after;
    spec.expect_closed = o.expect_closed;
    spec.no_reply_is_up = o.no_reply_is_up;
    spec.family = o.family;
    let expect = o.expect_regex.as_deref().map(compile_regex).transpose()?;
    let send = o.send.clone();
    if o.preset.is_some() && (send.is_some() || expect.is_some()) {
        return Err(SpecError::Invalid {
            field: "preset",
            why: "a preset cannot be combined with send/expect-regex".into(),
        });
    }
    match spec.target.protocol {
        Protocol::Tcp => {
            spec.tcp = match &o.preset {
                Some(name) => TcpMode::Preset(TcpPreset::parse(name).ok_or_else(|| {
                    SpecError::UnknownPreset {
                        name: name.clone(),
                        protocol: "tcp",
                        known: TcpPreset::ALL.map(|p| p.as_str()).join(", "),
                    }
                })?),
                None if send.is_some() || expect.is_some() => TcpMode::Expect { send, expect },
                None => TcpMode::Connect,
            };
        }
        Protocol::Udp => {
            spec.udp = match o.preset.as_deref().map(str::to_ascii_lowercase).as_deref() {
                Some("dns") => UdpMode::Dns {
                    name: o
                        .dns_name
                        .clone()
                        .unwrap_or_else(|| DEFAULT_DNS_NAME.to_owned()),
                },
                Some("ntp") => UdpMode::Ntp {
                    max_offset: o.ntp_max_offset.unwrap_or(DEFAULT_NTP_MAX_OFFSET),
                },
                Some("syslog") => UdpMode::Syslog,
                Some(other) => {
                    return Err(SpecError::UnknownPreset {
                        name: other.to_owned(),
                        protocol: "udp",
                        known: UDP_PRESETS.join(", "),
                    });
                }
                None => UdpMode::Generic {
                    payload: send.unwrap_or_else(|| DEFAULT_UDP_PAYLOAD.to_vec()),
                    expect,
                },
            };
        }
        Protocol::Icmp => {
            if o.preset.is_some() || send.is_some() || expect.is_some() {
                return Err(SpecError::NotApplicable {
                    option: "preset/send/expect-regex",
                    protocol: "icmp",
                });
            }
        }
    }
    if let Some(t) = &o.tls {
        let ca = t.ca_pem.as_deref().map(parse_ca_pem).transpose()?;
        let starttls = match spec.tcp {
            TcpMode::Preset(p) => p.starttls(),
            _ => None,
        };
        spec.tls = Some(TlsOptions {
            server_name: t.server_name.clone(),
            ca,
            verify: !t.no_verify,
            expiring_days: t.expiring_days.unwrap_or(DEFAULT_CERT_EXPIRING_DAYS),
            starttls,
        });
    }
    spec.validate()?;
    Ok(spec)
}

/// Parses PEM CA certificates; at least one is required.
pub fn parse_ca_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, SpecError> {
    use rustls_pki_types::pem::PemObject;
    let bad = |why: String| SpecError::Invalid {
        field: "tls ca",
        why,
    };
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate found".into()));
    }
    Ok(certs)
}

/// A monitor as the collector assigns it: the spec and its interval.
pub fn spec_from_proto(
    m: &portwatch_proto::v1::MonitorSpec,
) -> Result<(CheckSpec, Duration), SpecError> {
    if m.interval_ms < 1000 {
        return Err(SpecError::Invalid {
            field: "interval",
            why: format!("{} ms is below the 1 s minimum", m.interval_ms),
        });
    }
    let o = m.options.clone().unwrap_or_default();
    let opt_str = |s: String| if s.is_empty() { None } else { Some(s) };
    let family = match o.family.as_str() {
        "" | "any" => Family::Any,
        "ipv4" => Family::V4,
        "ipv6" => Family::V6,
        other => {
            return Err(SpecError::Invalid {
                field: "family",
                why: format!("{other:?} is not any, ipv4 or ipv6"),
            });
        }
    };
    let opts = CheckOptions {
        timeout: (o.timeout_ms > 0).then(|| Duration::from_millis(o.timeout_ms.into())),
        degraded_after: (o.degraded_ms > 0).then(|| Duration::from_millis(o.degraded_ms.into())),
        expect_closed: o.expect_closed,
        family,
        preset: opt_str(o.preset),
        send: (!o.send.is_empty()).then_some(o.send),
        expect_regex: opt_str(o.expect_regex),
        tls: o.tls.map(|t| TlsSettings {
            server_name: opt_str(t.server_name),
            ca_pem: opt_str(t.ca_pem),
            no_verify: t.no_verify,
            expiring_days: (t.expiring_days > 0).then_some(t.expiring_days),
        }),
        no_reply_is_up: o.no_reply_is_up,
        dns_name: opt_str(o.dns_name),
        ntp_max_offset: (o.ntp_max_offset_ms > 0)
            .then(|| Duration::from_millis(o.ntp_max_offset_ms.into())),
    };
    let spec = build_spec(&m.target, &opts)?;
    Ok((spec, Duration::from_millis(m.interval_ms.into())))
}

/// Parses a user-written escape string (`\r`, `\n`, `\t`, `\0`, `\\`, `\xNN`) into bytes.
pub fn unescape(s: &str) -> Result<Vec<u8>, SpecError> {
    let bad = |why: &str| SpecError::Invalid {
        field: "send",
        why: why.to_owned(),
    };
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match bytes.next() {
            Some(b'r') => out.push(b'\r'),
            Some(b'n') => out.push(b'\n'),
            Some(b't') => out.push(b'\t'),
            Some(b'0') => out.push(0),
            Some(b'\\') => out.push(b'\\'),
            Some(b'x') => {
                let hi = bytes
                    .next()
                    .ok_or_else(|| bad("\\x needs two hex digits"))?;
                let lo = bytes
                    .next()
                    .ok_or_else(|| bad("\\x needs two hex digits"))?;
                let hex = [hi, lo];
                let txt = std::str::from_utf8(&hex).map_err(|_| bad("\\x needs two hex digits"))?;
                out.push(u8::from_str_radix(txt, 16).map_err(|_| bad("\\x needs two hex digits"))?);
            }
            _ => return Err(bad("unknown escape (use \\r \\n \\t \\0 \\\\ \\xNN)")),
        }
    }
    Ok(out)
}

/// Compiles a user's expect regex (matched against raw reply bytes).
pub fn compile_regex(pattern: &str) -> Result<Regex, SpecError> {
    regex::bytes::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| SpecError::BadRegex {
            pattern: pattern.to_owned(),
            why: e.to_string().lines().last().unwrap_or("").trim().to_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Result<Target, SpecError> {
        s.parse()
    }

    #[test]
    fn parses_every_target_form() {
        let tg = t("tcp://db.internal:5432").unwrap();
        assert_eq!(
            (tg.protocol, tg.host.clone(), tg.port),
            (Protocol::Tcp, Host::Name("db.internal".into()), 5432)
        );
        assert_eq!(tg.to_string(), "tcp://db.internal:5432");
        let tg = t("udp://127.0.0.1:53").unwrap();
        assert_eq!(tg.host, Host::Ip("127.0.0.1".parse().unwrap()));
        let tg = t("tcp://[::1]:6379").unwrap();
        assert_eq!(tg.host, Host::Ip("::1".parse().unwrap()));
        assert_eq!(tg.to_string(), "tcp://[::1]:6379");
        assert_eq!(t("icmp://10.0.0.1").unwrap().port, 0);
        assert_eq!(
            t("icmp://::1").unwrap().host,
            Host::Ip("::1".parse().unwrap())
        );
        assert_eq!(t("tcp://host:65535").unwrap().port, 65535);
        assert_eq!(t("tcp://host:1").unwrap().port, 1);
    }

    #[test]
    fn specs_built_alike_are_equal_and_any_option_tells_them_apart() {
        let build = |target: &str, o: &CheckOptions| build_spec(target, o).unwrap();
        let regex = CheckOptions {
            send: Some(b"PING\r\n".to_vec()),
            expect_regex: Some("^\\+PONG".into()),
            ..CheckOptions::default()
        };
        assert_eq!(
            build("tcp://db:6379", &regex),
            build("tcp://db:6379", &regex)
        );
        let other_regex = CheckOptions {
            expect_regex: Some("^\\+OK".into()),
            ..regex.clone()
        };
        assert_ne!(
            build("tcp://db:6379", &regex),
            build("tcp://db:6379", &other_regex)
        );
        let udp = |name: &str| CheckOptions {
            preset: Some("dns".into()),
            dns_name: Some(name.into()),
            ..CheckOptions::default()
        };
        assert_eq!(
            build("udp://ns:53", &udp("a.test")),
            build("udp://ns:53", &udp("a.test"))
        );
        assert_ne!(
            build("udp://ns:53", &udp("a.test")),
            build("udp://ns:53", &udp("b.test"))
        );
        let slower = CheckOptions {
            timeout: Some(Duration::from_secs(5)),
            ..CheckOptions::default()
        };
        assert_ne!(
            build("tcp://db:6379", &CheckOptions::default()),
            build("tcp://db:6379", &slower)
        );
    }

    #[test]
    fn refuses_bad_targets_with_a_reason() {
        assert!(matches!(t("tcp://host:0"), Err(SpecError::BadPort { .. })));
        assert!(matches!(
            t("tcp://host:65536"),
            Err(SpecError::BadPort { .. })
        ));
        assert!(matches!(t("tcp://host:-1"), Err(SpecError::BadPort { .. })));
        assert!(matches!(
            t("tcp://host:http"),
            Err(SpecError::BadPort { .. })
        ));
        assert!(matches!(
            t("http://host:80"),
            Err(SpecError::UnknownScheme { .. })
        ));
        assert!(matches!(t("host:80"), Err(SpecError::BadTarget(_))));
        assert!(matches!(
            t("tcp://host"),
            Err(SpecError::MissingPort { .. })
        ));
        assert!(matches!(
            t("icmp://host:7"),
            Err(SpecError::IcmpPort { .. })
        ));
        assert!(matches!(t("tcp://:80"), Err(SpecError::BadHost { .. })));
        assert!(matches!(
            t("tcp://bad_host!:80"),
            Err(SpecError::BadHost { .. })
        ));
        assert!(matches!(t("tcp://[::1:80"), Err(SpecError::BadHost { .. })));
        assert!(matches!(
            t("tcp://user@host:80"),
            Err(SpecError::BadTarget(_))
        ));
        let msg = t("tcp://host:70000").unwrap_err().to_string();
        assert!(msg.contains("70000") && msg.contains("1-65535"), "{msg}");
    }

    #[test]
    fn unescapes_payloads() {
        assert_eq!(unescape("PING\\r\\n").unwrap(), b"PING\r\n");
        assert_eq!(unescape("\\x00\\xff\\\\").unwrap(), vec![0, 0xff, b'\\']);
        assert!(unescape("\\q").is_err());
        assert!(unescape("\\x1").is_err());
        assert!(unescape("\\xzz").is_err());
    }

    #[test]
    fn assignments_from_the_collector_build_the_same_specs() {
        use portwatch_proto::v1 as pb;
        let m = pb::MonitorSpec {
            id: "pg".into(),
            target: "tcp://db.internal:5432".into(),
            interval_ms: 30_000,
            options: Some(pb::CheckOptions {
                timeout_ms: 2000,
                degraded_ms: 500,
                preset: "postgres".into(),
                family: "ipv4".into(),
                ..Default::default()
            }),
        };
        let (spec, every) = spec_from_proto(&m).unwrap();
        assert_eq!(every, Duration::from_secs(30));
        assert_eq!(spec.timeout, Duration::from_millis(2000));
        assert_eq!(spec.degraded_after, Some(Duration::from_millis(500)));
        assert!(matches!(spec.tcp, TcpMode::Preset(TcpPreset::Postgres)));
        assert_eq!(spec.family, Family::V4);
        let too_fast = pb::MonitorSpec {
            interval_ms: 200,
            ..m.clone()
        };
        assert!(
            spec_from_proto(&too_fast)
                .unwrap_err()
                .to_string()
                .contains("interval")
        );
        let bad = pb::MonitorSpec {
            target: "tcp://db:0".into(),
            ..m
        };
        assert!(matches!(
            spec_from_proto(&bad),
            Err(SpecError::BadPort { .. })
        ));
    }

    #[test]
    fn presets_and_payloads_do_not_mix() {
        let o = CheckOptions {
            preset: Some("redis".into()),
            send: Some(b"PING".to_vec()),
            ..Default::default()
        };
        assert!(
            build_spec("tcp://h:6379", &o)
                .unwrap_err()
                .to_string()
                .contains("preset")
        );
        let o = CheckOptions {
            preset: Some("ntp".into()),
            ..Default::default()
        };
        assert!(matches!(
            build_spec("udp://h:123", &o).unwrap().udp,
            UdpMode::Ntp { .. }
        ));
        assert!(matches!(
            build_spec("tcp://h:123", &o),
            Err(SpecError::UnknownPreset {
                protocol: "tcp",
                ..
            })
        ));
        let o = CheckOptions {
            tls: Some(TlsSettings {
                ca_pem: Some("nope".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(
            build_spec("tcp://h:443", &o)
                .unwrap_err()
                .to_string()
                .contains("no PEM certificate")
        );
        let o = CheckOptions {
            tls: Some(TlsSettings::default()),
            preset: Some("smtp".into()),
            ..Default::default()
        };
        assert_eq!(
            build_spec("tcp://h:25", &o).unwrap().tls.unwrap().starttls,
            Some(StartTls::Smtp)
        );
    }

    #[test]
    fn validation_names_the_field() {
        let mut spec = CheckSpec::new(t("tcp://h:1").unwrap());
        spec.degraded_after = Some(Duration::from_secs(5));
        assert!(
            spec.validate()
                .unwrap_err()
                .to_string()
                .contains("degraded threshold")
        );
        let mut spec = CheckSpec::new(t("udp://h:1").unwrap());
        spec.tls = Some(TlsOptions::default());
        assert!(matches!(
            spec.validate(),
            Err(SpecError::NotApplicable { option: "tls", .. })
        ));
        assert!(matches!(
            compile_regex("(unclosed"),
            Err(SpecError::BadRegex { .. })
        ));
    }
}
