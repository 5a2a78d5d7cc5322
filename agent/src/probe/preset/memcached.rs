//! memcached: `version`, answered `VERSION 1.6.18`. A server at its
//! connection limit writes `ERROR Too many open connections` on accept and
//! closes; other trouble comes as `SERVER_ERROR ...`.

use std::borrow::Cow;

use super::{Conversation, Line, Verdict, line_at, may_start_with, refuses, text, unexpected};

pub struct Memcached;

impl Conversation for Memcached {
    fn request(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(b"version\r\n")
    }

    fn judge(&self, reply: &[u8]) -> Verdict {
        if !may_start_with(
            reply,
            &[b"VERSION ", b"SERVER_ERROR", b"ERROR", b"CLIENT_ERROR"],
        ) {
            return unexpected("not a memcached reply to version");
        }
        let line = match line_at(reply, 0) {
            Line::Complete(line, _) => line,
            Line::Partial(_) => return Verdict::NeedMore,
            Line::TooLong => return unexpected("not a memcached reply to version (no line end)"),
        };
        if let Some(version) = line.strip_prefix(b"VERSION ") {
            return Verdict::Up {
                info: Some(text(version)),
            };
        }
        // A bare ERROR is "unknown command": something memcached-like that
        // does not know `version`, not a refusal.
        if line.starts_with(b"SERVER_ERROR ") || line.starts_with(b"ERROR ") {
            return refuses("memcached", line);
        }
        unexpected("unexpected memcached reply to version")
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{down, truncated_needs_more, up};
    use super::*;

    #[test]
    fn version_is_up_with_the_version() {
        assert_eq!(Memcached.request().as_ref(), b"version\r\n");
        assert_eq!(up(&Memcached, b"VERSION 1.6.18\r\n").unwrap(), "1.6.18");
        truncated_needs_more(&Memcached, b"VERSION 1.6.18\r\n");
    }

    #[test]
    fn server_errors_are_down_with_the_text() {
        assert_eq!(
            down(&Memcached, b"ERROR Too many open connections\r\n"),
            "memcached refuses connections: ERROR Too many open connections"
        );
        assert_eq!(
            down(&Memcached, b"SERVER_ERROR out of memory\r\n"),
            "memcached refuses connections: SERVER_ERROR out of memory"
        );
    }

    #[test]
    fn other_replies_are_unexpected() {
        assert_eq!(
            down(&Memcached, b"ERROR\r\n"),
            "unexpected memcached reply to version"
        );
        assert_eq!(
            down(&Memcached, b"CLIENT_ERROR bad command line format\r\n"),
            "unexpected memcached reply to version"
        );
        assert_eq!(
            down(&Memcached, b"VERSIONS\r\n"),
            "not a memcached reply to version"
        );
        assert_eq!(
            down(&Memcached, b"+PONG\r\n"),
            "not a memcached reply to version"
        );
    }
}
