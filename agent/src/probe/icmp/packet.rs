//! ICMP and ICMPv6 echo packets: building the request and reading whatever a
//! socket hands back. Pure functions of bytes, tested with fixtures. A raw IPv4
//! socket sees every ICMP packet reaching this host (other pings, our own
//! request looped back on `lo`, errors about other traffic), so a reply is ours
//! only when source, identifier, sequence and payload token all match, and an
//! error is ours only when the packet it quotes is our request.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::result::Reason;

/// Fixed start of every echo payload, so a capture shows who sent it.
const PAYLOAD_TAG: &[u8] = b"portwatch ";

const V4_ECHO_REPLY: u8 = 0;
const V4_DEST_UNREACH: u8 = 3;
const V4_ECHO_REQUEST: u8 = 8;
const V4_TIME_EXCEEDED: u8 = 11;
const V6_DEST_UNREACH: u8 = 1;
const V6_TIME_EXCEEDED: u8 = 3;
const V6_ECHO_REQUEST: u8 = 128;
const V6_ECHO_REPLY: u8 = 129;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;

/// One echo request: what we send and what a reply must carry back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Echo {
    pub target: IpAddr,
    pub id: u16,
    pub seq: u16,
    pub token: [u8; 16],
    /// Whether the identifier must match. Ping sockets (SOCK_DGRAM) replace it
    /// with their own and only deliver replies carrying that one, so only raw
    /// sockets check it.
    pub check_id: bool,
}

impl Echo {
    fn payload(&self) -> Vec<u8> {
        [PAYLOAD_TAG, &self.token].concat()
    }

    /// The ICMP (v4) or ICMPv6 echo request. The v4 checksum is computed here
    /// (raw sockets send it as is; ping sockets recompute it); the kernel always
    /// computes the ICMPv6 one, which covers a pseudo-header we do not know.
    pub fn request(&self) -> Vec<u8> {
        let ty = if self.target.is_ipv4() {
            V4_ECHO_REQUEST
        } else {
            V6_ECHO_REQUEST
        };
        let mut p = vec![ty, 0, 0, 0];
        p.extend_from_slice(&self.id.to_be_bytes());
        p.extend_from_slice(&self.seq.to_be_bytes());
        p.extend_from_slice(&self.payload());
        if self.target.is_ipv4() {
            let sum = checksum(&p);
            p[2..4].copy_from_slice(&sum.to_be_bytes());
        }
        p
    }

    /// The first 8 bytes of our request (type, code, id, seq) as a quoted error
    /// shows them: checksum excluded, id only when it is ours to check.
    fn quotes_us(&self, quoted_icmp: &[u8], request_type: u8) -> bool {
        quoted_icmp.len() >= 8
            && quoted_icmp[0] == request_type
            && (!self.check_id || be16(quoted_icmp, 4) == self.id)
            && be16(quoted_icmp, 6) == self.seq
    }
}

/// What one received packet means for the check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Not about our request: keep reading.
    Ignore,
    /// Our echo reply.
    Reply,
    /// An ICMP error about our request: the target cannot be reached.
    Unreachable { reason: Reason, message: String },
}

/// The RFC 1071 internet checksum.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = match chunk {
            [a, b] => u16::from_be_bytes([*a, *b]),
            [a] => u16::from_be_bytes([*a, 0]),
            _ => 0,
        };
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Reads a packet from a raw IPv4 socket, which includes the IP header.
pub fn parse_raw_v4(packet: &[u8], echo: &Echo) -> Parsed {
    let Some((ihl, from)) = ipv4_header(packet, IPPROTO_ICMP) else {
        return Parsed::Ignore;
    };
    parse_icmp(&packet[ihl..], IpAddr::V4(from), echo)
}

/// The header length and source of an IPv4 packet carrying `proto`.
fn ipv4_header(p: &[u8], proto: u8) -> Option<(usize, Ipv4Addr)> {
    let first = *p.first()?;
    let ihl = usize::from(first & 0x0f) * 4;
    if first >> 4 != 4 || ihl < 20 || p.len() < ihl || p[9] != proto {
        return None;
    }
    Some((ihl, Ipv4Addr::new(p[12], p[13], p[14], p[15])))
}

/// Reads an ICMP or ICMPv6 message (no IP header) received from `from`.
pub fn parse_icmp(icmp: &[u8], from: IpAddr, echo: &Echo) -> Parsed {
    if icmp.len() < 8 {
        return Parsed::Ignore;
    }
    let (ty, code) = (icmp[0], icmp[1]);
    let v4 = echo.target.is_ipv4();
    let reply_type = if v4 { V4_ECHO_REPLY } else { V6_ECHO_REPLY };
    if ty == reply_type {
        let ours = from == echo.target
            && (!echo.check_id || be16(icmp, 4) == echo.id)
            && be16(icmp, 6) == echo.seq
            && icmp[8..] == echo.payload()[..];
        return if ours { Parsed::Reply } else { Parsed::Ignore };
    }
    let error = if v4 {
        matches!(ty, V4_DEST_UNREACH | V4_TIME_EXCEEDED) && quoted_v4_is_ours(&icmp[8..], echo)
    } else {
        matches!(ty, V6_DEST_UNREACH | V6_TIME_EXCEEDED) && quoted_v6_is_ours(&icmp[8..], echo)
    };
    if !error {
        return Parsed::Ignore;
    }
    let (reason, what) = if v4 {
        classify_v4(ty, code)
    } else {
        classify_v6(ty, code)
    };
    Parsed::Unreachable {
        reason,
        message: format!("{what} (icmp type {ty} code {code} from {from})"),
    }
}

/// Whether an IPv4 error's quoted datagram is our echo request to the target.
fn quoted_v4_is_ours(quoted: &[u8], echo: &Echo) -> bool {
    let Some((ihl, _)) = ipv4_header(quoted, IPPROTO_ICMP) else {
        return false;
    };
    let dst = Ipv4Addr::new(quoted[16], quoted[17], quoted[18], quoted[19]);
    IpAddr::V4(dst) == echo.target && echo.quotes_us(&quoted[ihl..], V4_ECHO_REQUEST)
}

/// Whether an ICMPv6 error's quoted datagram is our echo request to the target.
fn quoted_v6_is_ours(quoted: &[u8], echo: &Echo) -> bool {
    if quoted.len() < 48 || quoted[0] >> 4 != 6 || quoted[6] != IPPROTO_ICMPV6 {
        return false;
    }
    let mut dst = [0u8; 16];
    dst.copy_from_slice(&quoted[24..40]);
    IpAddr::V6(Ipv6Addr::from(dst)) == echo.target && echo.quotes_us(&quoted[40..], V6_ECHO_REQUEST)
}

fn classify_v4(ty: u8, code: u8) -> (Reason, &'static str) {
    if ty == V4_TIME_EXCEEDED {
        return (
            Reason::NetUnreachable,
            "time to live exceeded in transit (routing loop?)",
        );
    }
    match code {
        0 => (Reason::NetUnreachable, "network unreachable"),
        1 => (Reason::HostUnreachable, "host unreachable"),
        6 => (Reason::NetUnreachable, "destination network unknown"),
        7 => (Reason::HostUnreachable, "destination host unknown"),
        9 | 11 => (
            Reason::NetUnreachable,
            "network administratively prohibited",
        ),
        10 | 12 => (Reason::HostUnreachable, "host administratively prohibited"),
        13 => (
            Reason::HostUnreachable,
            "communication administratively prohibited",
        ),
        _ => (Reason::HostUnreachable, "destination unreachable"),
    }
}

fn classify_v6(ty: u8, code: u8) -> (Reason, &'static str) {
    if ty == V6_TIME_EXCEEDED {
        return (
            Reason::NetUnreachable,
            "hop limit exceeded in transit (routing loop?)",
        );
    }
    match code {
        0 => (Reason::NetUnreachable, "no route to destination"),
        1 => (
            Reason::HostUnreachable,
            "communication administratively prohibited",
        ),
        3 => (Reason::HostUnreachable, "address unreachable"),
        5 | 6 => (Reason::HostUnreachable, "source address failed policy"),
        _ => (Reason::HostUnreachable, "destination unreachable"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo(target: &str) -> Echo {
        Echo {
            target: target.parse().unwrap(),
            id: 0x1234,
            seq: 0x0007,
            token: *b"0123456789abcdef",
            check_id: true,
        }
    }

    /// An IPv4 header (no options) from `src` to `dst` around `payload`.
    fn ipv4(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut h = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, IPPROTO_ICMP, 0, 0];
        h[2..4].copy_from_slice(&u16::try_from(20 + payload.len()).unwrap().to_be_bytes());
        h.extend_from_slice(&src);
        h.extend_from_slice(&dst);
        h.extend_from_slice(payload);
        h
    }

    /// What the target sends back: the request turned into a reply.
    fn reply_to(e: &Echo) -> Vec<u8> {
        let mut p = e.request();
        p[0] = if e.target.is_ipv4() {
            V4_ECHO_REPLY
        } else {
            V6_ECHO_REPLY
        };
        p
    }

    /// An ICMP error quoting `quoted`.
    fn error(ty: u8, code: u8, quoted: &[u8]) -> Vec<u8> {
        [&[ty, code, 0, 0, 0, 0, 0, 0][..], quoted].concat()
    }

    #[test]
    fn checksum_matches_rfc_1071_and_validates() {
        // The example from RFC 1071 section 3.
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
        let p = echo("127.0.0.1").request();
        assert_eq!(checksum(&p), 0, "a packet with its checksum sums to zero");
        assert_eq!(checksum(&[0xff]), !0xff00);
    }

    #[test]
    fn requests_carry_id_seq_and_token() {
        let p = echo("127.0.0.1").request();
        assert_eq!(&p[..2], &[8, 0]);
        assert_eq!(&p[4..8], &[0x12, 0x34, 0x00, 0x07]);
        assert_eq!(&p[8..], b"portwatch 0123456789abcdef");
        let p6 = echo("::1").request();
        assert_eq!(
            &p6[..4],
            &[128, 0, 0, 0],
            "the kernel fills the icmpv6 checksum"
        );
    }

    #[test]
    fn raw_v4_reply_is_ours_only_when_everything_matches() {
        let e = echo("127.0.0.77");
        let target = [127, 0, 0, 77];
        let me = [127, 0, 0, 1];
        assert_eq!(
            parse_raw_v4(&ipv4(target, me, &reply_to(&e)), &e),
            Parsed::Reply
        );
        // With IP options (IHL 6) the header is skipped correctly.
        let mut with_opts = ipv4(target, me, &[]);
        with_opts[0] = 0x46;
        with_opts.extend_from_slice(&[1, 1, 1, 0]);
        with_opts.extend_from_slice(&reply_to(&e));
        assert_eq!(parse_raw_v4(&with_opts, &e), Parsed::Reply);
        // Our own request looped back on lo.
        assert_eq!(
            parse_raw_v4(&ipv4(me, target, &e.request()), &e),
            Parsed::Ignore
        );
        // Another source, id, sequence or token.
        assert_eq!(
            parse_raw_v4(&ipv4([127, 0, 0, 9], me, &reply_to(&e)), &e),
            Parsed::Ignore
        );
        for other in [
            Echo { id: 1, ..e.clone() },
            Echo {
                seq: 1,
                ..e.clone()
            },
            Echo {
                token: [0; 16],
                ..e.clone()
            },
        ] {
            assert_eq!(
                parse_raw_v4(&ipv4(target, me, &reply_to(&other)), &e),
                Parsed::Ignore
            );
        }
        // Ping sockets rewrite the id: then it is not checked.
        let dgram = Echo {
            check_id: false,
            ..e.clone()
        };
        assert_eq!(
            parse_icmp(
                &reply_to(&Echo {
                    id: 999,
                    ..e.clone()
                }),
                e.target,
                &dgram
            ),
            Parsed::Reply
        );
    }

    #[test]
    fn raw_v4_unreachable_quoting_our_request_is_classified() {
        let e = echo("127.0.0.78");
        let sent = ipv4([127, 0, 0, 1], [127, 0, 0, 78], &e.request());
        let router = [10, 0, 0, 1];
        for (code, reason) in [
            (0, Reason::NetUnreachable),
            (1, Reason::HostUnreachable),
            (13, Reason::HostUnreachable),
            (10, Reason::HostUnreachable),
        ] {
            // Errors may come from a router, not the target; only the quote matters.
            let pkt = ipv4(router, [127, 0, 0, 1], &error(3, code, &sent[..28]));
            match parse_raw_v4(&pkt, &e) {
                Parsed::Unreachable { reason: r, message } => {
                    assert_eq!(r, reason, "code {code}");
                    assert!(
                        message.contains(&format!("code {code} from 10.0.0.1")),
                        "{message}"
                    );
                }
                other => panic!("code {code}: {other:?}"),
            }
        }
        let pkt = ipv4(router, [127, 0, 0, 1], &error(11, 0, &sent));
        assert!(matches!(
            parse_raw_v4(&pkt, &e),
            Parsed::Unreachable {
                reason: Reason::NetUnreachable,
                ..
            }
        ));
        // An error about someone else's ping, or about a packet to another host.
        let theirs = ipv4(
            [127, 0, 0, 1],
            [127, 0, 0, 78],
            &Echo {
                seq: 9,
                ..e.clone()
            }
            .request(),
        );
        assert_eq!(
            parse_raw_v4(&ipv4(router, [127, 0, 0, 1], &error(3, 1, &theirs)), &e),
            Parsed::Ignore
        );
        let elsewhere = ipv4([127, 0, 0, 1], [127, 0, 0, 79], &e.request());
        assert_eq!(
            parse_raw_v4(&ipv4(router, [127, 0, 0, 1], &error(3, 1, &elsewhere)), &e),
            Parsed::Ignore
        );
    }

    #[test]
    fn v6_replies_and_errors() {
        let e = echo("::1");
        assert_eq!(parse_icmp(&reply_to(&e), e.target, &e), Parsed::Reply);
        assert_eq!(parse_icmp(&e.request(), e.target, &e), Parsed::Ignore);
        let mut ip6 = vec![0x60, 0, 0, 0, 0, 0, IPPROTO_ICMPV6, 64];
        ip6.extend_from_slice(&[0; 15]);
        ip6.push(1);
        ip6.extend_from_slice(&[0; 15]);
        ip6.push(1);
        ip6.extend_from_slice(&e.request());
        let from: IpAddr = "fe80::1".parse().unwrap();
        assert!(matches!(
            parse_icmp(&error(1, 3, &ip6), from, &e),
            Parsed::Unreachable {
                reason: Reason::HostUnreachable,
                ..
            }
        ));
        assert!(matches!(
            parse_icmp(&error(1, 0, &ip6), from, &e),
            Parsed::Unreachable {
                reason: Reason::NetUnreachable,
                ..
            }
        ));
        // Neighbour discovery and other chatter.
        assert_eq!(
            parse_icmp(&[135, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3], from, &e),
            Parsed::Ignore
        );
    }

    #[test]
    fn any_bytes_parse_without_panicking() {
        let e = echo("127.0.0.1");
        let good = ipv4(
            [127, 0, 0, 1],
            [127, 0, 0, 1],
            &error(3, 1, &ipv4([127, 0, 0, 1], [127, 0, 0, 1], &e.request())),
        );
        for cut in 0..good.len() {
            let _ = parse_raw_v4(&good[..cut], &e);
            let _ = parse_icmp(&good[..cut], e.target, &e);
        }
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] = 0xff;
            let _ = parse_raw_v4(&bad, &e);
            bad[i] = 0x4f;
            let _ = parse_raw_v4(&bad, &e);
        }
        let e6 = echo("::1");
        for n in 0..64 {
            let _ = parse_icmp(&vec![1u8; n], e6.target, &e6);
        }
    }
}
