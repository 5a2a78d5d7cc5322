//! PostgreSQL: a protocol 3.0 StartupMessage as user, database and
//! application `portwatch`, and the server's first messages.
//!
//! A server that asks us to authenticate (`R`) is accepting connections. One
//! that cannot take us answers an ErrorResponse before authenticating: 53300
//! "sorry, too many clients already" when every backend slot is taken, 57P03
//! while starting up, shutting down or in recovery. Errors about who we are
//! (28xxx: no such role, no pg_hba.conf entry, bad password; 3D000: no such
//! database) come from a server that is serving everyone else, so they count
//! as up.
//!
//! With `trust` authentication the server says AuthenticationOk and goes on
//! to set up the session, and that is where the slots kept for superusers are
//! enforced (53300 "remaining connection slots are reserved..."): so after
//! AuthenticationOk we keep reading, to ReadyForQuery or an error, and pick up
//! `server_version` on the way. With password authentication we cannot get
//! that far and report up on the authentication request.
//!
//! No farewell: we just close. A Terminate message in the middle of
//! authentication makes the server log `FATAL: expected SASL response, got
//! message type 88` (or "password response") on every check, while a client
//! that hangs up there is deliberately not logged (psql does it when it
//! prompts for a password). After ReadyForQuery a plain close is logged only at
//! DEBUG1. The integration test checks the server's log for this.
//!
//! Under `trust` a missing `portwatch` role costs a `FATAL: role "portwatch"
//! does not exist` log line per check; creating the role (no rights needed)
//! silences it and lets the check report the server version.

use std::borrow::Cow;

use super::{Conversation, Verdict, be32, refuses, text, unexpected};
use crate::check::MAX_REPLY_BYTES;

/// Protocol version 3.0, as the StartupMessage spells it.
const PROTOCOL_3_0: u32 = 3 << 16;

pub struct Postgres {
    startup: Vec<u8>,
}

impl Postgres {
    pub fn new() -> Postgres {
        Postgres {
            startup: startup_message(&[
                ("user", "portwatch"),
                ("database", "portwatch"),
                ("application_name", "portwatch"),
            ]),
        }
    }
}

/// A StartupMessage: Int32 length (itself included), Int32 protocol version,
/// then name/value C strings and a final NUL.
fn startup_message(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = PROTOCOL_3_0.to_be_bytes().to_vec();
    for (name, value) in params {
        for s in [name, value] {
            body.extend_from_slice(s.as_bytes());
            body.push(0);
        }
    }
    body.push(0);
    let len = u32::try_from(body.len() + 4).unwrap_or(u32::MAX);
    [len.to_be_bytes().as_slice(), &body].concat()
}

/// The fields of an ErrorResponse that matter here.
#[derive(Debug, Default, PartialEq, Eq)]
struct ErrorFields<'a> {
    severity: Option<&'a [u8]>,
    code: Option<&'a [u8]>,
    message: Option<&'a [u8]>,
}

impl ErrorFields<'_> {
    /// "FATAL 53300 sorry, too many clients already", escaped and bounded.
    fn describe(&self) -> String {
        let parts: Vec<&[u8]> = [self.severity, self.code, self.message]
            .into_iter()
            .flatten()
            .collect();
        text(&parts.join(&b' '))
    }
}

/// Parses ErrorResponse/NoticeResponse fields: a type byte and a C string
/// each, ended by a zero byte. Stops quietly at the first malformed field.
fn error_fields(body: &[u8]) -> ErrorFields<'_> {
    let mut f = ErrorFields::default();
    let mut rest = body;
    while let Some((&kind, after)) = rest.split_first() {
        if kind == 0 {
            break;
        }
        let Some(end) = after.iter().position(|&b| b == 0) else {
            break;
        };
        let value = &after[..end];
        match kind {
            // V is the untranslated severity (9.6+); prefer it over S.
            b'V' => f.severity = Some(value),
            b'S' if f.severity.is_none() => f.severity = Some(value),
            b'C' => f.code = Some(value),
            b'M' => f.message = Some(value),
            _ => {}
        }
        rest = &after[end + 1..];
    }
    f
}

/// What an authentication request asks for.
fn auth_method(code: u32, body: &[u8]) -> String {
    match code {
        2 => "kerberos v5".into(),
        3 => "cleartext password".into(),
        5 => "md5 password".into(),
        6 => "scm credential".into(),
        7 => "gssapi".into(),
        9 => "sspi".into(),
        10 => {
            // AuthenticationSASL lists its mechanisms as C strings.
            let mechs: Vec<&[u8]> = body
                .get(4..)
                .unwrap_or_default()
                .split(|&b| b == 0)
                .filter(|m| !m.is_empty())
                .take(4)
                .collect();
            format!("sasl {}", text(&mechs.join(&b',')))
        }
        n => format!("method {n}"),
    }
}

impl Conversation for Postgres {
    fn request(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.startup)
    }

    fn judge(&self, reply: &[u8]) -> Verdict {
        let mut at = 0;
        let mut authenticated = false;
        let mut version: Option<String> = None;
        let with_version = |info: String, version: &Option<String>| match version {
            Some(v) => format!("postgres {v}, {info}"),
            None => info,
        };
        loop {
            let Some(&tag) = reply.get(at) else {
                return Verdict::NeedMore;
            };
            let allowed = match tag {
                b'R' | b'E' | b'N' => true,
                // Session setup after AuthenticationOk: ParameterStatus,
                // BackendKeyData, ReadyForQuery.
                b'S' | b'K' | b'Z' => authenticated,
                _ => false,
            };
            if !allowed {
                return unexpected(format!(
                    "not a postgres reply to a startup message (message type 0x{tag:02x})"
                ));
            }
            let Some(len) = be32(reply, at + 1) else {
                return Verdict::NeedMore;
            };
            let len = len as usize;
            // A length counts itself; no startup reply comes near the reply cap.
            if !(4..MAX_REPLY_BYTES).contains(&len) {
                return unexpected(format!("not a postgres reply (message length {len})"));
            }
            let end = at + 1 + len;
            let Some(body) = reply.get(at + 5..end) else {
                if authenticated && reply.len() >= MAX_REPLY_BYTES {
                    // Authenticated, but the session setup outgrew what we read.
                    return Verdict::Up {
                        info: Some(with_version("authentication ok".into(), &version)),
                    };
                }
                return Verdict::NeedMore;
            };
            match tag {
                // Notices may precede anything; they decide nothing.
                b'N' | b'K' => {}
                b'R' if authenticated => {
                    return unexpected("postgres sent a second authentication request");
                }
                b'R' => match be32(body, 0) {
                    None => return unexpected("postgres authentication request without a method"),
                    Some(0) => authenticated = true,
                    Some(code) => {
                        return Verdict::Up {
                            info: Some(format!(
                                "accepting connections, {} authentication required",
                                auth_method(code, body)
                            )),
                        };
                    }
                },
                b'S' => {
                    let mut kv = body.split(|&b| b == 0);
                    if let (Some(b"server_version"), Some(v)) = (kv.next(), kv.next()) {
                        version = Some(text(v));
                    }
                }
                b'Z' => {
                    return Verdict::Up {
                        info: Some(with_version("authentication ok".into(), &version)),
                    };
                }
                _ => return judge_error(&error_fields(body), &version),
            }
            at = end;
        }
    }
}

fn judge_error(e: &ErrorFields<'_>, version: &Option<String>) -> Verdict {
    let code = e.code.unwrap_or_default();
    match code {
        // too_many_connections; cannot_connect_now (starting up, shutting
        // down, in recovery without hot standby).
        b"53300" | b"57P03" => refuses("postgres", e.describe()),
        // Who we are was refused, by a server that is serving: the answer a
        // monitor without credentials expects.
        _ if code.starts_with(b"28") || code == b"3D000" => {
            let info = format!("accepting connections, login refused: {}", e.describe());
            Verdict::Up {
                info: Some(match version {
                    Some(v) => format!("postgres {v}, {info}"),
                    None => info,
                }),
            }
        }
        _ if e.describe().is_empty() => unexpected("postgres error without any fields"),
        _ => unexpected(format!("postgres error: {}", e.describe())),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{down, truncated_needs_more, up};
    use super::*;

    /// A backend message: tag, Int32 length, body.
    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let len = (body.len() + 4) as u32;
        [&[tag][..], &len.to_be_bytes(), body].concat()
    }

    /// An ErrorResponse (or NoticeResponse) as PostgreSQL 15 sends it.
    fn error(tag: u8, severity: &str, code: &str, message: &str) -> Vec<u8> {
        let mut body = Vec::new();
        for (k, v) in [
            (b'S', severity),
            (b'V', severity),
            (b'C', code),
            (b'M', message),
            (b'F', "postinit.c"),
            (b'L', "886"),
            (b'R', "InitPostgres"),
        ] {
            body.push(k);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        msg(tag, &body)
    }

    fn auth(code: u32, extra: &[u8]) -> Vec<u8> {
        msg(b'R', &[&code.to_be_bytes()[..], extra].concat())
    }

    fn param(name: &str, value: &str) -> Vec<u8> {
        msg(b'S', format!("{name}\0{value}\0").as_bytes())
    }

    #[test]
    fn the_startup_message_is_protocol_3_with_our_names() {
        let p = Postgres::new();
        let req = p.request().into_owned();
        assert_eq!(
            u32::from_be_bytes(req[..4].try_into().unwrap()) as usize,
            req.len()
        );
        assert_eq!(&req[4..8], &[0, 3, 0, 0]);
        assert_eq!(
            &req[8..],
            b"user\0portwatch\0database\0portwatch\0application_name\0portwatch\0\0"
        );
        // No Terminate: see the module documentation.
        assert_eq!(p.farewell(), b"");
    }

    #[test]
    fn an_authentication_request_is_up() {
        let p = Postgres::new();
        assert!(
            up(&p, &auth(5, b"\x01\x02\x03\x04"))
                .unwrap()
                .contains("md5 password authentication required")
        );
        assert!(
            up(&p, &auth(3, b""))
                .unwrap()
                .contains("cleartext password")
        );
        let sasl = up(&p, &auth(10, b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0")).unwrap();
        assert!(
            sasl.contains("sasl SCRAM-SHA-256-PLUS,SCRAM-SHA-256"),
            "{sasl}"
        );
    }

    #[test]
    fn trust_authentication_reads_on_to_ready_for_query_and_the_version() {
        let p = Postgres::new();
        let reply = [
            auth(0, b""),
            param("application_name", "portwatch"),
            param("server_version", "15.14 (Debian 15.14-0+deb12u1)"),
            msg(b'K', &[0, 0, 0x30, 0x39, 1, 2, 3, 4]),
            msg(b'Z', b"I"),
        ]
        .concat();
        assert_eq!(
            up(&p, &reply).unwrap(),
            "postgres 15.14 (Debian 15.14-0+deb12u1), authentication ok"
        );
        // AuthenticationOk alone decides nothing yet: the slot check comes after it.
        truncated_needs_more(&p, &reply);
    }

    #[test]
    fn too_many_clients_and_cannot_connect_now_are_down_with_sqlstate() {
        let p = Postgres::new();
        let full = error(b'E', "FATAL", "53300", "sorry, too many clients already");
        assert_eq!(
            down(&p, &full),
            "postgres refuses connections: FATAL 53300 sorry, too many clients already"
        );
        truncated_needs_more(&p, &full);
        for why in [
            "the database system is starting up",
            "the database system is shutting down",
            "the database system is in recovery mode",
        ] {
            let msg = down(&p, &error(b'E', "FATAL", "57P03", why));
            assert!(msg.ends_with(&format!("FATAL 57P03 {why}")), "{msg}");
        }
        // The reserved-slots check comes after AuthenticationOk (trust).
        let reserved = [
            auth(0, b""),
            param("server_version", "15.14"),
            error(
                b'E',
                "FATAL",
                "53300",
                "remaining connection slots are reserved for non-replication superuser connections",
            ),
        ]
        .concat();
        assert!(down(&p, &reserved).contains("53300 remaining connection slots are reserved"));
    }

    #[test]
    fn login_errors_mean_the_server_is_accepting() {
        let p = Postgres::new();
        let cases = [
            ("28000", "role \"portwatch\" does not exist"),
            (
                "28000",
                "no pg_hba.conf entry for host \"10.0.0.5\", user \"portwatch\", database \"portwatch\", no encryption",
            ),
            (
                "28P01",
                "password authentication failed for user \"portwatch\"",
            ),
            ("3D000", "database \"portwatch\" does not exist"),
        ];
        for (code, m) in cases {
            let info = up(&p, &error(b'E', "FATAL", code, m)).unwrap();
            assert!(
                info.starts_with(&format!(
                    "accepting connections, login refused: FATAL {code}"
                )),
                "{info}"
            );
        }
        // After AuthenticationOk (trust), the role check; the version is kept.
        let reply = [
            auth(0, b""),
            param("server_version", "15.14"),
            error(b'E', "FATAL", "28000", "role \"portwatch\" does not exist"),
        ]
        .concat();
        let info = up(&p, &reply).unwrap();
        assert!(
            info.starts_with(
                "postgres 15.14, accepting connections, login refused: FATAL 28000 role"
            ),
            "{info}"
        );
        assert!(info.contains("\"portwatch\""), "{info}");
    }

    #[test]
    fn other_errors_are_down_unexpected() {
        let p = Postgres::new();
        let msg = down(
            &p,
            &error(b'E', "FATAL", "08P01", "unsupported frontend protocol 3.0"),
        );
        assert_eq!(
            msg,
            "postgres error: FATAL 08P01 unsupported frontend protocol 3.0"
        );
        // An ErrorResponse with no fields at all still decides.
        assert_eq!(
            down(&p, &msg_empty_error()),
            "postgres error without any fields"
        );
    }

    fn msg_empty_error() -> Vec<u8> {
        msg(b'E', b"\0")
    }

    #[test]
    fn notices_before_the_answer_are_skipped() {
        let p = Postgres::new();
        let reply = [
            error(b'N', "WARNING", "01000", "something to note"),
            auth(5, b"salt"),
        ]
        .concat();
        assert!(up(&p, &reply).unwrap().contains("md5"));
        truncated_needs_more(&p, &reply);
    }

    #[test]
    fn anything_else_is_unexpected() {
        let p = Postgres::new();
        for reply in [
            &b"HTTP/1.1 400 Bad Request\r\n"[..],
            b"S",
            b"Z\0\0\0\x05I",
            b"\x00\x00",
        ] {
            assert!(down(&p, reply).contains("not a postgres reply"));
        }
        // Hostile lengths are refused before anything waits on them.
        assert!(down(&p, b"R\xff\xff\xff\xff").contains("message length"));
        assert!(down(&p, b"E\x00\x00\x00\x02").contains("message length"));
        // A second authentication request after AuthenticationOk.
        assert!(
            down(&p, &[auth(0, b""), auth(5, b"salt")].concat()).contains("second authentication")
        );
        // An authentication request too short to hold its method.
        assert!(down(&p, &msg(b'R', b"\0\0")).contains("without a method"));
    }

    #[test]
    fn error_fields_survive_truncation() {
        assert_eq!(
            error_fields(b"SFATAL\0C533"),
            ErrorFields {
                severity: Some(b"FATAL"),
                code: None,
                message: None
            }
        );
        assert_eq!(error_fields(b""), ErrorFields::default());
    }
}
