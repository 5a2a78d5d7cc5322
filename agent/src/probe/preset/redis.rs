//! Redis: `PING`, and the first reply line. A Redis that cannot serve says so
//! in an error reply (`-ERR max number of clients reached` is written on
//! accept, before any command is read), so one round trip tells "accepting"
//! from "open but refusing".

use std::borrow::Cow;

use super::{Conversation, Line, Verdict, line_at, may_start_with, refuses, unexpected};

pub struct Redis;

/// Error prefixes that mean "this server will not serve anyone right now".
const NOT_SERVING: [&[u8]; 5] = [
    b"ERR max number of clients reached",
    // Still loading the dataset after a restart.
    b"LOADING",
    // Protected mode: no password and bound to a non-loopback address.
    b"DENIED",
    // A replica whose master is down, with replica-serve-stale-data off.
    b"MASTERDOWN",
    // A script or function has run past busy-reply-threshold.
    b"BUSY ",
];

impl Conversation for Redis {
    fn request(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(b"PING\r\n")
    }

    fn judge(&self, reply: &[u8]) -> Verdict {
        // A simple string or an error; anything else is another protocol.
        if !may_start_with(reply, &[b"+", b"-"]) {
            return unexpected("not a redis reply to PING");
        }
        let line = match line_at(reply, 0) {
            Line::Complete(line, _) => line,
            Line::Partial(_) => return Verdict::NeedMore,
            Line::TooLong => return unexpected("not a redis reply to PING (no line end)"),
        };
        match line.split_first() {
            Some((b'+', b"PONG")) => Verdict::Up { info: None },
            // Requirepass or an ACL default user without nopass: the server is
            // up and taking connections, it just wants AUTH first.
            Some((b'-', err)) if err.starts_with(b"NOAUTH") => Verdict::Up {
                info: Some("accepting connections, authentication required".into()),
            },
            Some((b'-', err)) if NOT_SERVING.iter().any(|p| err.starts_with(p)) => {
                refuses("redis", err)
            }
            _ => unexpected("unexpected redis reply to PING"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{down, truncated_needs_more, up};
    use super::*;

    #[test]
    fn pong_is_up() {
        assert_eq!(Redis.request().as_ref(), b"PING\r\n");
        assert_eq!(up(&Redis, b"+PONG\r\n"), None);
        // A bare \n ends the line too (some proxies).
        assert_eq!(up(&Redis, b"+PONG\n"), None);
    }

    #[test]
    fn noauth_is_up_and_says_so() {
        let info = up(&Redis, b"-NOAUTH Authentication required.\r\n").unwrap();
        assert!(info.contains("authentication required"), "{info}");
    }

    #[test]
    fn servers_that_cannot_serve_are_down_with_their_own_words() {
        let cases: [(&[u8], &str); 5] = [
            (b"-ERR max number of clients reached\r\n", "redis refuses connections: ERR max number of clients reached"),
            (b"-LOADING Redis is loading the dataset in memory\r\n", "LOADING Redis is loading the dataset in memory"),
            (
                b"-DENIED Redis is running in protected mode because protected mode is enabled and no password is set for the default user.\r\n",
                "DENIED Redis is running in protected mode",
            ),
            (
                b"-MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.\r\n",
                "MASTERDOWN Link with MASTER is down",
            ),
            (b"-BUSY Redis is busy running a script.\r\n", "BUSY Redis is busy"),
        ];
        for (reply, want) in cases {
            let msg = down(&Redis, reply);
            assert!(msg.contains(want), "{msg:?} lacks {want:?}");
            assert!(
                msg.len() <= "redis refuses connections: ".len() + 123,
                "{msg}"
            );
        }
    }

    #[test]
    fn other_replies_are_unexpected() {
        for reply in [
            &b"-ERR unknown command 'PING'\r\n"[..],
            b"+OK\r\n",
            b":1\r\n",
            b"$4\r\nPONG\r\n",
            b"HTTP/1.1 400",
        ] {
            let msg = down(&Redis, reply);
            assert!(msg.contains("redis reply"), "{msg}");
        }
    }

    #[test]
    fn truncated_replies_wait_and_garbage_fails_fast() {
        truncated_needs_more(&Redis, b"+PONG\r\n");
        truncated_needs_more(&Redis, b"-ERR max number of clients reached\r\n");
        // Decided on the first byte, long before the 4 KiB cap.
        down(&Redis, b"\x00\x00\x00\x00");
        let endless = [b"+".as_slice(), &[b'A'; 2000]].concat();
        assert!(down(&Redis, &endless).contains("no line end"));
    }
}
