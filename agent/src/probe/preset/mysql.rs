//! MySQL and MariaDB: the server speaks first, with either the initial
//! handshake (protocol 10, carrying the version string) or an error packet
//! when it will not take the connection (too many connections, host blocked,
//! host not allowed). We send nothing.
//!
//! What this cannot see, and what it costs the server:
//! - The too-many-connections error comes before the handshake only once every
//!   slot, the one kept for an administrator included, is taken. With exactly
//!   `max_connections` clients an ordinary user is refused only after logging
//!   in, which a check without credentials never does: that state reads as up.
//!   (MariaDB 10.11 with `max_connections=10`: connections 1 to 11 get the
//!   handshake, the 12th gets 1040.)
//! - A client that leaves after the greeting is an aborted connection: MariaDB
//!   logs a warning per check ("closed normally without authentication");
//!   and, per the MySQL and MariaDB documentation, `max_connect_errors` of them
//!   in a row (100 by default) with no successful login from the same host get
//!   that host blocked (error 1129; not for loopback, which skips the host
//!   cache). A server with real traffic from the monitoring
//!   host never gets there; if one does, this check reports the block in the
//!   server's own words rather than hiding it.

use std::borrow::Cow;

use super::{Conversation, Verdict, refuses, text, unexpected};
use crate::check::MAX_REPLY_BYTES;

pub struct Mysql;

/// Error codes that mean "not taking this connection" (ER_CON_COUNT_ERROR,
/// ER_HOST_IS_BLOCKED, ER_HOST_NOT_PRIVILEGED).
const REFUSALS: [u16; 3] = [1040, 1129, 1130];

impl Conversation for Mysql {
    fn request(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(b"")
    }

    fn judge(&self, reply: &[u8]) -> Verdict {
        // Packet header: 3-byte little-endian payload length, sequence id.
        let Some(header) = reply.get(..4) else {
            return Verdict::NeedMore;
        };
        let len =
            usize::from(header[0]) | usize::from(header[1]) << 8 | usize::from(header[2]) << 16;
        if len == 0 || len + 4 > MAX_REPLY_BYTES {
            return unexpected(format!("not a mysql greeting (packet length {len})"));
        }
        // The first payload byte tells the packet kind: decide on it before
        // waiting for a body that a foreign service may never send.
        let Some(&kind) = reply.get(4) else {
            return Verdict::NeedMore;
        };
        if kind != 0x0a && kind != 0xff {
            return unexpected(format!("not a mysql greeting (packet type 0x{kind:02x})"));
        }
        let Some(payload) = reply.get(4..4 + len) else {
            return Verdict::NeedMore;
        };
        if kind == 0x0a {
            // Protocol 10: the server version is the NUL-terminated string that follows.
            return match payload[1..].iter().position(|&b| b == 0) {
                Some(end) => Verdict::Up {
                    info: Some(text(&payload[1..1 + end])),
                },
                None => unexpected("mysql handshake without a version string"),
            };
        }
        // ERR packet: 0xff, error code (u16 LE), then the message, optionally
        // preceded by '#' and a 5-character SQLSTATE.
        let Some(code) = payload.get(1..3).map(|c| u16::from_le_bytes([c[0], c[1]])) else {
            return unexpected("mysql error packet without a code");
        };
        let mut message = &payload[3..];
        if message.first() == Some(&b'#') && message.len() >= 6 {
            message = &message[6..];
        }
        let said = format!("{code} {}", text(message));
        if REFUSALS.contains(&code) {
            refuses("mysql", said)
        } else {
            unexpected(format!("mysql error {said}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{down, truncated_needs_more, up};
    use super::*;

    fn packet(seq: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        [&len.to_le_bytes()[..3], &[seq], payload].concat()
    }

    /// A MariaDB 10.11 initial handshake, field by field.
    fn mariadb_handshake() -> Vec<u8> {
        let mut p = vec![0x0a];
        p.extend_from_slice(b"5.5.5-10.11.6-MariaDB-0+deb12u1\0");
        p.extend_from_slice(&42u32.to_le_bytes()); // connection id
        p.extend_from_slice(b"abcdefgh\0"); // auth plugin data part 1 + filler
        p.extend_from_slice(&[0xfe, 0xf7]); // capability flags (lower)
        p.push(0x2d); // charset
        p.extend_from_slice(&[0x02, 0x00]); // status
        p.extend_from_slice(&[0xff, 0x81]); // capability flags (upper)
        p.push(21); // auth plugin data length
        p.extend_from_slice(&[0; 6]);
        p.extend_from_slice(&[0x1d, 0, 0, 0]); // MariaDB extended capabilities
        p.extend_from_slice(b"ijklmnopqrst\0");
        p.extend_from_slice(b"mysql_native_password\0");
        packet(0, &p)
    }

    fn err(code: u16, sqlstate: Option<&str>, msg: &str) -> Vec<u8> {
        let mut p = vec![0xff];
        p.extend_from_slice(&code.to_le_bytes());
        if let Some(s) = sqlstate {
            p.push(b'#');
            p.extend_from_slice(s.as_bytes());
        }
        p.extend_from_slice(msg.as_bytes());
        packet(0, &p)
    }

    #[test]
    fn a_protocol_10_handshake_is_up_with_the_version() {
        let hs = mariadb_handshake();
        assert_eq!(up(&Mysql, &hs).unwrap(), "5.5.5-10.11.6-MariaDB-0+deb12u1");
        truncated_needs_more(&Mysql, &hs);
        let mysql8 = packet(0, b"\x0a8.0.36\0\x08\0\0\0rest-of-handshake\0");
        assert_eq!(up(&Mysql, &mysql8).unwrap(), "8.0.36");
    }

    #[test]
    fn refusals_are_down_with_code_and_message() {
        let cases = [
            (1040, "Too many connections"),
            (
                1129,
                "Host '10.0.0.5' is blocked because of many connection errors; unblock with 'mariadb-admin flush-hosts'",
            ),
            (
                1130,
                "Host '10.0.0.5' is not allowed to connect to this MariaDB server",
            ),
        ];
        for (code, m) in cases {
            let reply = err(code, None, m);
            let msg = down(&Mysql, &reply);
            assert!(
                msg.starts_with(&format!("mysql refuses connections: {code} ")),
                "{msg}"
            );
            assert!(msg.contains(&m[..20]), "{msg}");
            truncated_needs_more(&Mysql, &reply);
        }
        // With a SQLSTATE marker (sent once the client said it speaks 4.1).
        assert_eq!(
            down(&Mysql, &err(1040, Some("08004"), "Too many connections")),
            "mysql refuses connections: 1040 Too many connections"
        );
    }

    #[test]
    fn other_errors_and_packets_are_unexpected() {
        assert_eq!(
            down(&Mysql, &err(1045, Some("28000"), "Access denied")),
            "mysql error 1045 Access denied"
        );
        // Protocol 9 (MySQL 3.21 and older) and anything else.
        assert!(down(&Mysql, &packet(0, b"\x093.20.0\0")).contains("packet type 0x09"));
        assert!(down(&Mysql, b"HTTP/1.1 400 Bad Request\r\n").contains("packet length"));
        assert!(down(&Mysql, b"\x00\x00\x00\x00").contains("packet length 0"));
        assert!(down(&Mysql, &packet(0, b"\x0a5.7 no terminator")).contains("without a version"));
        assert!(down(&Mysql, &packet(0, b"\xff\x10")).contains("without a code"));
    }
}
