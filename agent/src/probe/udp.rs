//! The UDP prober: honest three states. UDP has no handshake, so a check sends a
//! datagram that should make the service answer (a DNS query, an NTP request, a
//! user payload) on a CONNECTED socket and reads what comes back:
//!
//! - a matching reply: up (`first_byte` is the round trip);
//! - an ICMP port unreachable, which the kernel reports as ECONNREFUSED on a
//!   connected socket only: down, `refused`;
//! - silence until the deadline: `no_reply`, down unless the check says silence
//!   means "open|filtered" (`no_reply_is_up`), because UDP cannot tell a service
//!   that ignores us from a firewall that drops us.
//!
//! A connected socket only receives datagrams from the target address, so the
//! only foreign replies left are stale or forged answers to other requests: the
//! DNS and NTP presets recognise those (ID, origin timestamp), ignore them and keep
//! reading. Syslog expects no reply at all: only an ICMP error can fail it.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::dns::{self, DnsQuery, DnsReply};
use super::ntp::{self, NtpReply, NtpTime};
use super::tcp::{BANNER_EXCERPT, MESSAGE_EXCERPT};
use super::{ProbeCtx, ProbeFuture, Prober};
use crate::check::{MAX_REPLY_BYTES, Protocol, UdpMode};
use crate::result::{CheckResult, Details, Reason, Status, escape_excerpt, micros};

/// How long a syslog check waits for an ICMP error after sending. Loopback and
/// LAN errors come back in well under a millisecond; beyond a second the answer
/// would not change, only the check would get slower.
pub const SYSLOG_ERROR_WAIT: Duration = Duration::from_secs(1);

pub struct UdpProber;

impl Prober for UdpProber {
    fn protocol(&self) -> Protocol {
        Protocol::Udp
    }

    fn probe<'a>(&'a self, ctx: ProbeCtx<'a>) -> ProbeFuture<'a> {
        Box::pin(probe_udp(ctx))
    }
}

/// The request of one check and what its answer must be.
enum Exchange<'a> {
    Dns(DnsQuery),
    /// `t1` is set right before sending: it is both the salt the reply must echo
    /// and the first of the four NTP timestamps.
    Ntp {
        max_offset: Duration,
        t1: NtpTime,
    },
    Syslog,
    Generic {
        payload: &'a [u8],
        expect: Option<&'a regex::bytes::Regex>,
    },
}

/// What one datagram means for the check.
enum Judged {
    /// Not an answer to our request: keep reading.
    NotOurs,
    /// The verdict.
    Final {
        status: Status,
        reason: Reason,
        message: String,
    },
}

fn fail(status: Status, reason: Reason, message: impl Into<String>) -> Judged {
    Judged::Final {
        status,
        reason,
        message: message.into(),
    }
}

async fn probe_udp(ctx: ProbeCtx<'_>) -> CheckResult {
    let addr = ctx.addr;
    let mut exchange = match &ctx.spec.udp {
        UdpMode::Dns { name } => match dns::build_query(name, rand::random()) {
            Ok(q) => Exchange::Dns(q),
            Err(why) => return CheckResult::new(Status::Down, Reason::Internal, why),
        },
        UdpMode::Ntp { max_offset } => Exchange::Ntp {
            max_offset: *max_offset,
            t1: NtpTime(0),
        },
        UdpMode::Syslog => Exchange::Syslog,
        UdpMode::Generic { payload, expect } => Exchange::Generic {
            payload,
            expect: expect.as_ref(),
        },
    };
    let io_fail = |what: &str, e: std::io::Error| {
        let reason = Reason::from_io(&e);
        let message = match reason {
            Reason::Refused => format!("udp {addr}: port unreachable (icmp), nothing listens"),
            _ => format!("udp {addr}: {what}: {e}"),
        };
        CheckResult::new(Status::Down, reason, message)
    };
    let sock = match connected_socket(addr).await {
        Ok(s) => s,
        Err(e) => return io_fail("connect", e),
    };

    let request = match &mut exchange {
        Exchange::Dns(q) => q.bytes.clone(),
        Exchange::Ntp { t1, .. } => {
            *t1 = NtpTime::from_system(SystemTime::now()).salted(rand::random());
            ntp::build_request(*t1).to_vec()
        }
        Exchange::Syslog => syslog_message(SystemTime::now(), &local_hostname()).into_bytes(),
        Exchange::Generic { payload, .. } => payload.to_vec(),
    };
    let sent_at = Instant::now();
    match tokio::time::timeout_at(ctx.deadline, sock.send(&request)).await {
        Err(_) => {
            return CheckResult::new(
                Status::Down,
                Reason::Timeout,
                format!("udp {addr}: timed out sending"),
            );
        }
        Ok(Err(e)) => return io_fail("send", e),
        Ok(Ok(_)) => {}
    }

    let wait_until = match exchange {
        Exchange::Syslog => ctx.deadline.min(sent_at + SYSLOG_ERROR_WAIT),
        _ => ctx.deadline,
    };
    let mut r = CheckResult::new(Status::Up, Reason::Ok, "");
    let mut ignored = 0u32;
    let mut buf = vec![0u8; MAX_REPLY_BYTES];
    loop {
        let n = match tokio::time::timeout_at(wait_until, sock.recv(&mut buf)).await {
            Err(_) => {
                silence(
                    &exchange,
                    ctx.spec.no_reply_is_up,
                    wait_until.saturating_duration_since(sent_at),
                    ignored,
                    &mut r,
                );
                return r;
            }
            Ok(Err(e)) => return io_fail("receive", e),
            Ok(Ok(n)) => n,
        };
        let rtt = sent_at.elapsed();
        let reply = &buf[..n];
        match judge(&exchange, reply, &mut r.details) {
            Judged::NotOurs => {
                ignored = ignored.saturating_add(1);
                continue;
            }
            Judged::Final {
                status,
                reason,
                message,
            } => {
                r.phases.first_byte = Some(micros(rtt));
                r.status = status;
                r.reason = reason;
                r.message = message;
                return r;
            }
        }
    }
}

/// A UDP socket bound to the unspecified address of the target's family and
/// connected to it, so ICMP errors come back as errors and only the target's
/// datagrams are delivered.
async fn connected_socket(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let local: SocketAddr = match addr {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = UdpSocket::bind(local).await?;
    sock.connect(addr).await?;
    Ok(sock)
}

/// Judges one datagram against the request; fills the details it learns.
fn judge(exchange: &Exchange<'_>, reply: &[u8], details: &mut Details) -> Judged {
    let unexpected = |why: String| {
        fail(
            Status::Down,
            Reason::UnexpectedReply,
            format!("{why}: {}", escape_excerpt(reply, MESSAGE_EXCERPT)),
        )
    };
    match exchange {
        Exchange::Dns(q) => match dns::judge_reply(q, reply) {
            DnsReply::NotOurs => Judged::NotOurs,
            DnsReply::Malformed(why) => unexpected(why),
            DnsReply::Answer { rcode, answers } => {
                let name = dns::rcode_name(rcode);
                details.dns_rcode = Some(name.clone());
                details.dns_answers = Some(answers);
                if dns::rcode_is_up(rcode) {
                    fail(Status::Up, Reason::Ok, "")
                } else {
                    fail(
                        Status::Down,
                        Reason::UnexpectedReply,
                        format!("the dns server answered {name}"),
                    )
                }
            }
        },
        Exchange::Ntp { max_offset, t1 } => {
            let t4 = NtpTime::from_system(SystemTime::now());
            match ntp::judge_reply(reply, *t1, t4) {
                NtpReply::NotOurs => Judged::NotOurs,
                NtpReply::NotNtp(why) => unexpected(why),
                NtpReply::Rejected(why) => fail(Status::Down, Reason::UnexpectedReply, why),
                NtpReply::Sample(s) => {
                    let offset_us = s.offset_ns / 1000;
                    details.ntp_offset_us = Some(offset_us);
                    details.ntp_stratum = Some(u32::from(s.stratum));
                    if u128::from(s.offset_ns.unsigned_abs()) > max_offset.as_nanos() {
                        // The server answers, so it is not down; its time is wrong, which
                        // is a reply we did not expect rather than a slow one.
                        fail(
                            Status::Degraded,
                            Reason::UnexpectedReply,
                            format!(
                                "clock offset {} ms above the {} ms threshold",
                                fmt_ms(s.offset_ns),
                                fmt_ms(i64::try_from(max_offset.as_nanos()).unwrap_or(i64::MAX))
                            ),
                        )
                    } else {
                        fail(Status::Up, Reason::Ok, "")
                    }
                }
            }
        }
        // A syslog server has nothing to say; one that answers is at least listening.
        Exchange::Syslog => {
            details.banner = Some(escape_excerpt(reply, BANNER_EXCERPT));
            fail(Status::Up, Reason::Ok, "sent; the server replied")
        }
        Exchange::Generic { expect, .. } => {
            details.banner = Some(escape_excerpt(reply, BANNER_EXCERPT));
            match expect {
                Some(re) if !re.is_match(reply) => {
                    unexpected("the reply does not match the expected pattern".into())
                }
                _ => fail(Status::Up, Reason::Ok, ""),
            }
        }
    }
}

/// The verdict when nothing (of ours) came back before `waited` ran out.
fn silence(
    exchange: &Exchange<'_>,
    no_reply_is_up: bool,
    waited: Duration,
    ignored: u32,
    r: &mut CheckResult,
) {
    if let Exchange::Syslog = exchange {
        r.status = Status::Up;
        r.reason = Reason::Ok;
        r.message = "sent, no ICMP error".into();
        return;
    }
    let ignored_note = match ignored {
        0 => String::new(),
        1 => " (1 reply to another request was ignored)".to_owned(),
        n => format!(" ({n} replies to other requests were ignored)"),
    };
    r.reason = Reason::NoReply;
    if no_reply_is_up {
        r.status = Status::Up;
        r.message = format!("open|filtered: no reply{ignored_note}");
    } else {
        r.status = Status::Down;
        r.message = format!("no reply within {} ms{ignored_note}", waited.as_millis());
    }
}

/// Nanoseconds as signed milliseconds with microsecond precision (`+0.012`).
fn fmt_ms(ns: i64) -> String {
    let sign = if ns < 0 { "-" } else { "+" };
    let us = ns.unsigned_abs() / 1000;
    format!("{sign}{}.{:03}", us / 1000, us % 1000)
}

/// An RFC 5424 message: facility user (1), severity informational (6) => PRI 14.
fn syslog_message(now: SystemTime, host: &str) -> String {
    format!(
        "<14>1 {} {host} portwatch - - - portwatch syslog check",
        rfc3339_utc(now)
    )
}

/// This machine's name for the syslog HOSTNAME field, or the NILVALUE `-` when it
/// cannot be read or is not a valid field (printable ASCII, no spaces, <= 255).
fn local_hostname() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name = name.trim();
    if name.is_empty() || name.len() > 255 || !name.bytes().all(|b| b.is_ascii_graphic()) {
        return "-".into();
    }
    name.to_owned()
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` for a system time (UTC, microseconds).
fn rfc3339_utc(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_micros()
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian
/// calendar (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syslog_message_is_rfc_5424() {
        let t = UNIX_EPOCH + Duration::from_micros(1_795_000_000_123_456);
        let m = syslog_message(t, "agent-1");
        assert_eq!(
            m,
            "<14>1 2026-11-18T11:06:40.123456Z agent-1 portwatch - - - portwatch syslog check"
        );
        let h = local_hostname();
        assert!(!h.is_empty() && !h.contains(' '));
    }

    #[test]
    fn civil_dates_match_known_days() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(
            rfc3339_utc(UNIX_EPOCH + Duration::from_secs(951_868_799)),
            "2000-02-29T23:59:59.000000Z"
        );
    }

    #[test]
    fn offsets_format_as_signed_milliseconds() {
        assert_eq!(fmt_ms(12_345), "+0.012");
        assert_eq!(fmt_ms(-1_500_000_000), "-1500.000");
        assert_eq!(fmt_ms(0), "+0.000");
    }
}
