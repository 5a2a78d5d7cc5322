//! The result model every prober produces: status, reason, the probed address,
//! phase timings and details. Probe failures are data, not errors: a refused
//! port is a perfectly good `CheckResult`.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;

use portwatch_proto::v1 as pb;

/// What the probed service looked like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Up,
    Degraded,
    Down,
}

impl Status {
    /// The Nagios plugin exit code for this status (0 OK, 1 WARNING, 2 CRITICAL).
    pub fn nagios_code(self) -> i32 {
        match self {
            Status::Up => 0,
            Status::Degraded => 1,
            Status::Down => 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Up => "up",
            Status::Degraded => "degraded",
            Status::Down => "down",
        }
    }
}

/// Why a check ended the way it did: the failure taxonomy. Travels in the proto unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    Ok,
    Refused,
    Timeout,
    Reset,
    NetUnreachable,
    HostUnreachable,
    DnsNxdomain,
    DnsServfail,
    DnsTimeout,
    Slow,
    TlsError,
    CertExpiring,
    CertExpired,
    UnexpectedReply,
    NoReply,
    /// An expect-closed monitor found the port open.
    Exposed,
    /// The location's address policy refused the resolved address.
    BlockedAddress,
    /// The check could not run on this host (e.g. no permission for a raw socket).
    Internal,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Ok => "ok",
            Reason::Refused => "refused",
            Reason::Timeout => "timeout",
            Reason::Reset => "reset",
            Reason::NetUnreachable => "net_unreachable",
            Reason::HostUnreachable => "host_unreachable",
            Reason::DnsNxdomain => "dns_nxdomain",
            Reason::DnsServfail => "dns_servfail",
            Reason::DnsTimeout => "dns_timeout",
            Reason::Slow => "slow",
            Reason::TlsError => "tls_error",
            Reason::CertExpiring => "cert_expiring",
            Reason::CertExpired => "cert_expired",
            Reason::UnexpectedReply => "unexpected_reply",
            Reason::NoReply => "no_reply",
            Reason::Exposed => "exposed",
            Reason::BlockedAddress => "blocked_address",
            Reason::Internal => "internal",
        }
    }

    /// Sorts an I/O error from a socket into the taxonomy.
    pub fn from_io(err: &std::io::Error) -> Reason {
        use std::io::ErrorKind;
        match err.raw_os_error() {
            Some(libc::ECONNREFUSED) => return Reason::Refused,
            Some(libc::ECONNRESET) | Some(libc::EPIPE) | Some(libc::ECONNABORTED) => {
                return Reason::Reset;
            }
            Some(libc::ETIMEDOUT) => return Reason::Timeout,
            Some(libc::ENETUNREACH) | Some(libc::ENETDOWN) => return Reason::NetUnreachable,
            Some(libc::EHOSTUNREACH) | Some(libc::EHOSTDOWN) => return Reason::HostUnreachable,
            // A local firewall rule (OUTPUT REJECT/DROP) or no source address of the
            // family: the network is unreachable from this host.
            Some(libc::EPERM) | Some(libc::EACCES) | Some(libc::EADDRNOTAVAIL) => {
                return Reason::NetUnreachable;
            }
            Some(libc::EAFNOSUPPORT) => return Reason::NetUnreachable,
            _ => {}
        }
        match err.kind() {
            ErrorKind::ConnectionRefused => Reason::Refused,
            ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe
            | ErrorKind::UnexpectedEof => Reason::Reset,
            ErrorKind::TimedOut => Reason::Timeout,
            ErrorKind::NetworkUnreachable => Reason::NetUnreachable,
            ErrorKind::HostUnreachable => Reason::HostUnreachable,
            _ => Reason::Internal,
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An I/O error as a short lowercase phrase ("connection refused"), without the
/// "(os error N)" suffix std adds.
pub fn io_phrase(err: &std::io::Error) -> String {
    let text = err.to_string();
    let text = match text.find(" (os error") {
        Some(i) => &text[..i],
        None => &text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Phase timings in microseconds. A phase that did not happen is `None`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Phases {
    pub dns: Option<u64>,
    pub connect: Option<u64>,
    pub tls: Option<u64>,
    pub first_byte: Option<u64>,
    pub total: u64,
}

/// Converts a monotonic duration to whole microseconds.
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Facts a check learnt on the way; each present only when it applies.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Details {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub banner: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_days_left: Option<i64>,
    /// The leaf certificate's notAfter, Unix seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_not_after_unix: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_subject: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_issuer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ntp_offset_us: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ntp_stratum: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_rcode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_answers: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_info: Option<String>,
}

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckResult {
    pub status: Status,
    pub reason: Reason,
    /// A human-readable explanation (empty for a plain success).
    pub message: String,
    /// The exact address probed; `None` when the check failed before one was known.
    pub address: Option<SocketAddr>,
    #[serde(rename = "phases_us")]
    pub phases: Phases,
    pub details: Details,
}

impl CheckResult {
    /// A result with the given verdict and nothing measured yet.
    pub fn new(status: Status, reason: Reason, message: impl Into<String>) -> Self {
        CheckResult {
            status,
            reason,
            message: message.into(),
            address: None,
            phases: Phases::default(),
            details: Details::default(),
        }
    }

    /// The address as users read it: `ip:port`, or just the IP for ICMP (port 0).
    pub fn address_display(&self) -> String {
        match self.address {
            Some(a) if a.port() == 0 => a.ip().to_string(),
            Some(a) => a.to_string(),
            None => String::new(),
        }
    }

    /// Converts to the wire form, adding the scheduling facts the engine does not know.
    pub fn to_proto(
        &self,
        monitor_id: &str,
        scheduled_at_unix_ms: i64,
        started_at_unix_ms: i64,
    ) -> pb::CheckResult {
        pb::CheckResult {
            monitor_id: monitor_id.to_owned(),
            scheduled_at_unix_ms,
            started_at_unix_ms,
            status: status_to_proto(self.status) as i32,
            reason: reason_to_proto(self.reason) as i32,
            message: self.message.clone(),
            address: self.address_display(),
            phases: Some(pb::Phases {
                dns_us: self.phases.dns,
                connect_us: self.phases.connect,
                tls_us: self.phases.tls,
                first_byte_us: self.phases.first_byte,
                total_us: self.phases.total,
            }),
            details: Some(pb::Details {
                banner: self.details.banner.clone(),
                cert_days_left: self.details.cert_days_left,
                cert_not_after_unix: self.details.cert_not_after_unix,
                cert_subject: self.details.cert_subject.clone(),
                cert_issuer: self.details.cert_issuer.clone(),
                tls_version: self.details.tls_version.clone(),
                ntp_offset_us: self.details.ntp_offset_us,
                ntp_stratum: self.details.ntp_stratum,
                dns_rcode: self.details.dns_rcode.clone(),
                dns_answers: self.details.dns_answers,
                server_info: self.details.server_info.clone(),
            }),
        }
    }
}

fn status_to_proto(s: Status) -> pb::Status {
    match s {
        Status::Up => pb::Status::Up,
        Status::Degraded => pb::Status::Degraded,
        Status::Down => pb::Status::Down,
    }
}

/// The wire enum for a reason; exhaustive so a new reason cannot be forgotten here.
pub fn reason_to_proto(r: Reason) -> pb::Reason {
    match r {
        Reason::Ok => pb::Reason::Ok,
        Reason::Refused => pb::Reason::Refused,
        Reason::Timeout => pb::Reason::Timeout,
        Reason::Reset => pb::Reason::Reset,
        Reason::NetUnreachable => pb::Reason::NetUnreachable,
        Reason::HostUnreachable => pb::Reason::HostUnreachable,
        Reason::DnsNxdomain => pb::Reason::DnsNxdomain,
        Reason::DnsServfail => pb::Reason::DnsServfail,
        Reason::DnsTimeout => pb::Reason::DnsTimeout,
        Reason::Slow => pb::Reason::Slow,
        Reason::TlsError => pb::Reason::TlsError,
        Reason::CertExpiring => pb::Reason::CertExpiring,
        Reason::CertExpired => pb::Reason::CertExpired,
        Reason::UnexpectedReply => pb::Reason::UnexpectedReply,
        Reason::NoReply => pb::Reason::NoReply,
        Reason::Exposed => pb::Reason::Exposed,
        Reason::BlockedAddress => pb::Reason::BlockedAddress,
        Reason::Internal => pb::Reason::Internal,
    }
}

/// Makes untrusted reply bytes safe to show anywhere (terminal, JSON, HTML after
/// escaping): printable ASCII kept, everything else as `\r`, `\n`, `\t` or `\xNN`,
/// cut to `max` input bytes with a trailing `...` when longer.
pub fn escape_excerpt(bytes: &[u8], max: usize) -> String {
    let mut out = String::with_capacity(bytes.len().min(max) + 8);
    for &b in bytes.iter().take(max) {
        match b {
            b'\r' => out.push_str("\\r"),
            b'\n' => out.push_str("\\n"),
            b'\t' => out.push_str("\\t"),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    if bytes.len() > max {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpt_escapes_control_and_non_ascii_bytes() {
        assert_eq!(escape_excerpt(b"+PONG\r\n", 64), "+PONG\\r\\n");
        assert_eq!(
            escape_excerpt(&[0x1b, b'[', 0xff, b'\\'], 64),
            "\\x1b[\\xff\\\\"
        );
        assert_eq!(escape_excerpt(b"abcdef", 3), "abc...");
    }

    #[test]
    fn io_phrases_are_short_and_lowercase() {
        let e = std::io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert_eq!(io_phrase(&e), "connection refused");
    }

    #[test]
    fn io_errors_map_to_the_taxonomy() {
        let e = |code| std::io::Error::from_raw_os_error(code);
        assert_eq!(Reason::from_io(&e(libc::ECONNREFUSED)), Reason::Refused);
        assert_eq!(Reason::from_io(&e(libc::ECONNRESET)), Reason::Reset);
        assert_eq!(
            Reason::from_io(&e(libc::EHOSTUNREACH)),
            Reason::HostUnreachable
        );
        assert_eq!(
            Reason::from_io(&e(libc::ENETUNREACH)),
            Reason::NetUnreachable
        );
        assert_eq!(Reason::from_io(&e(libc::ETIMEDOUT)), Reason::Timeout);
    }

    #[test]
    fn proto_form_carries_every_measured_fact() {
        let mut r = CheckResult::new(
            Status::Degraded,
            Reason::CertExpiring,
            "cert expires in 3 days",
        );
        r.address = Some("[::1]:993".parse().unwrap());
        r.phases = Phases {
            dns: None,
            connect: Some(80),
            tls: Some(900),
            first_byte: Some(40),
            total: 1100,
        };
        r.details.cert_days_left = Some(3);
        r.details.banner = Some("* OK".into());
        let p = r.to_proto("imap-main", 1_700_000_000_000, 1_700_000_000_002);
        assert_eq!(p.monitor_id, "imap-main");
        assert_eq!(p.status, pb::Status::Degraded as i32);
        assert_eq!(p.reason, pb::Reason::CertExpiring as i32);
        assert_eq!(p.address, "[::1]:993");
        assert_eq!(
            (p.scheduled_at_unix_ms, p.started_at_unix_ms),
            (1_700_000_000_000, 1_700_000_000_002)
        );
        let ph = p.phases.unwrap();
        assert_eq!(
            (
                ph.dns_us,
                ph.connect_us,
                ph.tls_us,
                ph.first_byte_us,
                ph.total_us
            ),
            (None, Some(80), Some(900), Some(40), 1100)
        );
        let d = p.details.unwrap();
        assert_eq!(
            (d.cert_days_left, d.banner.as_deref()),
            (Some(3), Some("* OK"))
        );
        // ICMP results carry no port.
        r.address = Some("10.0.0.1:0".parse().unwrap());
        assert_eq!(r.address_display(), "10.0.0.1");
    }

    #[test]
    fn every_reason_has_a_distinct_wire_value() {
        let all = [
            Reason::Ok,
            Reason::Refused,
            Reason::Timeout,
            Reason::Reset,
            Reason::NetUnreachable,
            Reason::HostUnreachable,
            Reason::DnsNxdomain,
            Reason::DnsServfail,
            Reason::DnsTimeout,
            Reason::Slow,
            Reason::TlsError,
            Reason::CertExpiring,
            Reason::CertExpired,
            Reason::UnexpectedReply,
            Reason::NoReply,
            Reason::Exposed,
            Reason::BlockedAddress,
            Reason::Internal,
        ];
        let mut wire: Vec<i32> = all.iter().map(|r| reason_to_proto(*r) as i32).collect();
        wire.sort_unstable();
        wire.dedup();
        assert_eq!(wire.len(), all.len());
        assert!(!wire.contains(&0), "no reason may map to UNSPECIFIED");
    }
}
