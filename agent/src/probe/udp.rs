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
//!
//! **Retransmits.** One lost datagram (the request or the reply) must not fail
//! a check, so, as stub resolvers do, a request nobody answered is sent again:
//! [`UDP_SENDS`] sends spread evenly over the time the check has left (at 0, 1
//! and 2 s of a 3 s timeout), and a reply to any of them counts.
//! - DNS and generic checks resend the same datagram (the same query ID), so a
//!   late answer to an earlier send is still ours. Which send it answers cannot
//!   be told, so `first_byte` is measured from the latest send before the
//!   reply: on a lossy path that is the round trip that worked, not the time
//!   lost waiting for the one that did not (Karn's rule, as TCP measures).
//! - NTP sends a fresh transmit timestamp each time (its offset arithmetic
//!   needs the T1 of the request that was answered, and the reply names it in
//!   its origin field): a reply to any of them counts and `first_byte` is
//!   measured from exactly the send it answers.
//! - Syslog is sent once: it expects no reply, so silence is already up and a
//!   resend could not rescue anything; it would only write a second line into
//!   the server's log.
//!
//! An ICMP port unreachable after any send still ends the check at once
//! (`refused`), and a silent server still ends it at the deadline. A result
//! that needed a resend says so in its message (`after 1 resend`).

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

/// How often a request is sent at most when nothing answers it, the first send
/// included. Three sends over the wait: a path that loses 1 % of datagrams
/// fails a check about once in 10^5 instead of once in 50.
pub const UDP_SENDS: usize = 3;

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
    /// Each send's `t1` is set right before sending: it is both the salt the
    /// reply must echo and the first of the four NTP timestamps.
    Ntp {
        max_offset: Duration,
        /// The transmit timestamp of each send so far, in order.
        sent: Vec<NtpTime>,
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
        /// Which send the reply answers, when the reply says so (NTP).
        answers: Option<usize>,
    },
}

fn fail(status: Status, reason: Reason, message: impl Into<String>) -> Judged {
    Judged::Final {
        status,
        reason,
        message: message.into(),
        answers: None,
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
            sent: Vec::with_capacity(UDP_SENDS),
        },
        UdpMode::Syslog => Exchange::Syslog,
        UdpMode::Generic { payload, expect } => Exchange::Generic {
            payload,
            expect: expect.as_ref(),
        },
    };
    let sock = match connected_socket(addr).await {
        Ok(s) => s,
        Err(e) => return io_fail(addr, "connect", &e),
    };

    // When each send left; the first one starts the wait.
    let mut sends: Vec<Instant> = Vec::with_capacity(UDP_SENDS);
    if let Err(r) = send_next(&sock, &mut exchange, &ctx, &mut sends).await {
        return r;
    }
    let first = sends[0];
    let (wait_until, most_sends) = match exchange {
        Exchange::Syslog => (ctx.deadline.min(first + SYSLOG_ERROR_WAIT), 1),
        _ => (ctx.deadline, UDP_SENDS),
    };
    // Resends evenly over the wait: send k at first + k * wait / UDP_SENDS.
    let wait = wait_until.saturating_duration_since(first);
    let resend_at = |k: usize| first + wait.mul_f64(k as f64 / UDP_SENDS as f64);
    let mut r = CheckResult::new(Status::Up, Reason::Ok, "");
    let mut ignored = 0u32;
    let mut buf = vec![0u8; MAX_REPLY_BYTES];
    loop {
        let resend = (sends.len() < most_sends).then(|| resend_at(sends.len()));
        let got = tokio::select! {
            got = tokio::time::timeout_at(wait_until, sock.recv(&mut buf)) => Some(got),
            () = tokio::time::sleep_until(resend.unwrap_or(wait_until)), if resend.is_some() => None,
        };
        let n = match got {
            None => {
                if let Err(r) = send_next(&sock, &mut exchange, &ctx, &mut sends).await {
                    return r;
                }
                continue;
            }
            Some(Err(_)) => {
                silence(
                    &exchange,
                    ctx.spec.no_reply_is_up,
                    wait_until.saturating_duration_since(first),
                    sends.len(),
                    ignored,
                    &mut r,
                );
                return r;
            }
            Some(Ok(Err(e))) => return io_fail(addr, "receive", &e),
            Some(Ok(Ok(n))) => n,
        };
        let received = Instant::now();
        let reply = &buf[..n];
        match judge(&exchange, reply, &mut r.details) {
            Judged::NotOurs => {
                ignored = ignored.saturating_add(1);
                continue;
            }
            Judged::Final {
                status,
                reason,
                mut message,
                answers,
            } => {
                // The send this reply answers when it says so, else the latest.
                let sent = answers
                    .and_then(|i| sends.get(i))
                    .or(sends.last())
                    .copied()
                    .unwrap_or(first);
                r.phases.first_byte = Some(micros(received.saturating_duration_since(sent)));
                if let Some(note) = resend_note(sends.len()) {
                    if message.is_empty() {
                        message = note;
                    } else {
                        message = format!("{message} ({note})");
                    }
                }
                r.status = status;
                r.reason = reason;
                r.message = message;
                return r;
            }
        }
    }
}

/// A socket error as the check's verdict.
fn io_fail(addr: SocketAddr, what: &str, e: &std::io::Error) -> CheckResult {
    let reason = Reason::from_io(e);
    let message = match reason {
        Reason::Refused => format!("udp {addr}: port unreachable (icmp), nothing listens"),
        _ => format!("udp {addr}: {what}: {e}"),
    };
    CheckResult::new(Status::Down, reason, message)
}

/// Sends the exchange's request (a fresh one for NTP) and notes when; the
/// verdict instead when sending fails (an ICMP error reported on a resend
/// included: a closed port still fails fast).
async fn send_next(
    sock: &UdpSocket,
    exchange: &mut Exchange<'_>,
    ctx: &ProbeCtx<'_>,
    sends: &mut Vec<Instant>,
) -> Result<(), CheckResult> {
    let request = match exchange {
        Exchange::Dns(q) => q.bytes.clone(),
        Exchange::Ntp { sent, .. } => {
            let t1 = NtpTime::from_system(SystemTime::now()).salted(rand::random());
            sent.push(t1);
            ntp::build_request(t1).to_vec()
        }
        Exchange::Syslog => syslog_message(SystemTime::now(), &local_hostname()).into_bytes(),
        Exchange::Generic { payload, .. } => payload.to_vec(),
    };
    let at = Instant::now();
    match tokio::time::timeout_at(ctx.deadline, sock.send(&request)).await {
        Err(_) => Err(CheckResult::new(
            Status::Down,
            Reason::Timeout,
            format!("udp {}: timed out sending", ctx.addr),
        )),
        Ok(Err(e)) => Err(io_fail(ctx.addr, "send", &e)),
        Ok(Ok(_)) => {
            if !sends.is_empty() {
                tracing::debug!(address = %ctx.addr, send = sends.len() + 1, "no udp reply yet, request sent again");
            }
            sends.push(at);
            Ok(())
        }
    }
}

/// "after N resend(s)" when the request had to be sent more than once.
fn resend_note(sends: usize) -> Option<String> {
    match sends {
        0 | 1 => None,
        2 => Some("after 1 resend".to_owned()),
        n => Some(format!("after {} resends", n - 1)),
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
        Exchange::Ntp { max_offset, sent } => {
            let t4 = NtpTime::from_system(SystemTime::now());
            // The reply echoes the T1 of the send it answers; the newest first,
            // the likeliest after a loss.
            let Some((answers, verdict)) = sent.iter().enumerate().rev().find_map(|(i, t1)| {
                match ntp::judge_reply(reply, *t1, t4) {
                    NtpReply::NotOurs => None,
                    other => Some((i, other)),
                }
            }) else {
                return Judged::NotOurs;
            };
            let judged = match verdict {
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
            };
            match judged {
                Judged::Final {
                    status,
                    reason,
                    message,
                    ..
                } => Judged::Final {
                    status,
                    reason,
                    message,
                    answers: Some(answers),
                },
                other => other,
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

/// The verdict when nothing (of ours) came back to `sends` requests before
/// `waited` ran out.
fn silence(
    exchange: &Exchange<'_>,
    no_reply_is_up: bool,
    waited: Duration,
    sends: usize,
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
        let to = match sends {
            0 | 1 => String::new(),
            n => format!(" to {n} sends"),
        };
        r.message = format!(
            "no reply within {} ms{to}{ignored_note}",
            waited.as_millis()
        );
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
