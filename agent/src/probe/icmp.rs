//! The ICMP echo prober (`icmp://host`): one echo request with a random
//! identifier, sequence and payload token, and the matching reply or error.
//!
//! Two socket kinds can send it. An unprivileged "ping socket" (SOCK_DGRAM +
//! IPPROTO_ICMP/ICMPV6) works when `net.ipv4.ping_group_range` includes our
//! group; the kernel then owns the identifier and delivers only our replies. A
//! raw socket needs CAP_NET_RAW and sees every ICMP packet on the host (with
//! the IPv4 header), so the packet parser (`icmp/packet.rs`) filters by source,
//! identifier, sequence and token, and reads Destination Unreachable errors
//! whose quoted packet is ours. The default tries the ping socket first and
//! falls back to raw.
//!
//! Ping sockets see ICMP errors only as socket errors, and only the "hard" ones
//! (administratively prohibited, port unreachable...) because setting
//! IP_RECVERR needs a `setsockopt` socket2 does not offer and the workspace
//! denies `unsafe`; a plain "host unreachable" then ends as a timeout. Raw
//! sockets see every error.
//!
//! Sockets are made with socket2 and driven as a `tokio::net::UdpSocket`, whose
//! `send_to`/`recv_from` are plain sendto/recvfrom on any datagram-style
//! descriptor (ping and raw sockets included). `AsyncFd` would be the obvious
//! tool, but in tokio 1.54 its safe constructor is deprecated as unsound and
//! `AsyncFd::register` is `unsafe`, which the workspace denies.

mod packet;

use std::io;
use std::net::{IpAddr, SocketAddr};

use socket2::{Domain, Socket, Type};
use tokio::net::UdpSocket;
use tokio::time::Instant;

pub use packet::{Echo, Parsed, checksum, parse_icmp, parse_raw_v4};

use super::{ProbeCtx, ProbeFuture, Prober};
use crate::check::{MAX_REPLY_BYTES, Protocol};
use crate::result::{CheckResult, Reason, Status, micros};

/// Which socket kinds the prober may use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum IcmpSockets {
    /// A ping socket when the system allows it, else a raw socket.
    #[default]
    Auto,
    /// Only an unprivileged ping socket.
    Ping,
    /// Only a raw socket.
    Raw,
}

/// The socket kind actually used for one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ping,
    Raw,
}

#[derive(Debug, Default)]
pub struct IcmpProber {
    sockets: IcmpSockets,
}

impl IcmpProber {
    /// A prober restricted to one socket kind (tests, or hosts that want no raw sockets).
    pub fn with_sockets(sockets: IcmpSockets) -> IcmpProber {
        IcmpProber { sockets }
    }
}

impl Prober for IcmpProber {
    fn protocol(&self) -> Protocol {
        Protocol::Icmp
    }

    fn probe<'a>(&'a self, ctx: ProbeCtx<'a>) -> ProbeFuture<'a> {
        Box::pin(probe_icmp(self.sockets, ctx))
    }
}

const NO_PERMISSION: &str = "icmp needs a ping socket or a raw socket and this process may open neither: \
     grant it CAP_NET_RAW or widen net.ipv4.ping_group_range to include its group";

fn is_permission(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EACCES) | Some(libc::EPERM))
}

/// Why no ICMP socket could be opened, already sorted into the taxonomy.
struct OpenFailure {
    reason: Reason,
    message: String,
}

/// Opens a socket of the allowed kinds for `target`'s family.
fn open(sockets: IcmpSockets, target: IpAddr) -> Result<(Socket, Kind), OpenFailure> {
    let (domain, proto) = match target {
        IpAddr::V4(_) => (Domain::IPV4, socket2::Protocol::ICMPV4),
        IpAddr::V6(_) => (Domain::IPV6, socket2::Protocol::ICMPV6),
    };
    let other = |e: io::Error| OpenFailure {
        reason: Reason::from_io(&e),
        message: format!("opening an icmp socket: {e}"),
    };
    let denied = || OpenFailure {
        reason: Reason::Internal,
        message: NO_PERMISSION.to_owned(),
    };
    if sockets != IcmpSockets::Raw {
        match Socket::new(domain, Type::DGRAM, Some(proto)) {
            Ok(s) => return Ok((s, Kind::Ping)),
            // Not allowed by net.ipv4.ping_group_range: try raw.
            Err(e) if is_permission(&e) && sockets == IcmpSockets::Auto => {}
            Err(e) if is_permission(&e) => return Err(denied()),
            Err(e) => return Err(other(e)),
        }
    }
    match Socket::new(domain, Type::RAW, Some(proto)) {
        Ok(s) => Ok((s, Kind::Raw)),
        Err(e) if is_permission(&e) => Err(denied()),
        Err(e) => Err(other(e)),
    }
}

async fn probe_icmp(sockets: IcmpSockets, ctx: ProbeCtx<'_>) -> CheckResult {
    let target = ctx.addr.ip();
    let dest = SocketAddr::new(target, 0);
    let (sock, kind) = match open(sockets, target) {
        Ok(ok) => ok,
        Err(f) => return CheckResult::new(Status::Down, f.reason, f.message),
    };
    let fail = |what: &str, e: io::Error| {
        let reason = Reason::from_io(&e);
        let hint = match e.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => " (a local firewall rule?)",
            _ => "",
        };
        CheckResult::new(
            Status::Down,
            reason,
            format!("icmp {target}: {what}: {e}{hint}"),
        )
    };
    if let Err(e) = sock.set_nonblocking(true) {
        return fail("socket setup", e);
    }
    // Connected, a ping socket reports hard ICMP errors about our request as a
    // socket error. A raw socket stays unconnected: it reads errors as packets,
    // and those come from routers too, not only from the target.
    if kind == Kind::Ping
        && let Err(e) = sock.connect(&dest.into())
    {
        return fail("connect", e);
    }
    let sock = match UdpSocket::from_std(std::net::UdpSocket::from(sock)) {
        Ok(s) => s,
        Err(e) => return fail("socket setup", e),
    };
    let echo = Echo {
        target,
        id: rand::random(),
        seq: rand::random(),
        token: rand::random(),
        check_id: kind == Kind::Raw,
    };
    let request = echo.request();

    let sent_at = Instant::now();
    let sent = tokio::time::timeout_at(ctx.deadline, sock.send_to(&request, dest)).await;
    match sent {
        Err(_) => {
            return CheckResult::new(
                Status::Down,
                Reason::Timeout,
                format!("icmp {target}: timed out sending"),
            );
        }
        Ok(Err(e)) => return fail("sending the echo request", e),
        Ok(Ok(_)) => {}
    }

    let mut buf = vec![0u8; MAX_REPLY_BYTES];
    loop {
        let received = tokio::time::timeout_at(ctx.deadline, sock.recv_from(&mut buf)).await;
        let (n, from) = match received {
            Err(_) => {
                let waited = ctx.deadline.saturating_duration_since(sent_at);
                return CheckResult::new(
                    Status::Down,
                    Reason::Timeout,
                    format!(
                        "no echo reply from {target} within {} ms",
                        waited.as_millis()
                    ),
                );
            }
            Ok(Err(e)) => return fail("waiting for the echo reply", e),
            Ok(Ok(got)) => got,
        };
        let rtt = sent_at.elapsed();
        let packet = &buf[..n];
        let parsed = match (kind, target) {
            (Kind::Raw, IpAddr::V4(_)) => parse_raw_v4(packet, &echo),
            _ => parse_icmp(packet, from.ip(), &echo),
        };
        match parsed {
            Parsed::Ignore => continue,
            Parsed::Reply => {
                let mut r = CheckResult::new(Status::Up, Reason::Ok, "");
                r.phases.first_byte = Some(micros(rtt));
                return r;
            }
            Parsed::Unreachable { reason, message } => {
                return CheckResult::new(Status::Down, reason, format!("icmp {target}: {message}"));
            }
        }
    }
}
