//! TCP conversations: what to send first and how to read the reply. Presets
//! answer the question users really ask, "is it ACCEPTING connections?", not
//! just "is the port open?" (a database at max connections still completes the
//! TCP handshake). Every parser here reads untrusted bytes: pure functions of
//! the reply, bounded, never panicking.

use std::borrow::Cow;

use regex::bytes::Regex;

use crate::check::TcpPreset;
use crate::result::{Reason, escape_excerpt};

/// A conversation's reading of the reply so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Not enough bytes to decide yet.
    NeedMore,
    /// The service is accepting connections; `info` is what it told us (version...).
    Up { info: Option<String> },
    /// It is not; `reason` is usually `UnexpectedReply`.
    Down { reason: Reason, message: String },
}

/// One TCP conversation. Implementations are pure: `judge` sees every byte read
/// so far and may be called again with more.
pub trait Conversation: Send + Sync {
    /// Bytes to send right after the connection (or TLS) is up; empty for banner protocols.
    fn request(&self) -> Cow<'_, [u8]>;
    /// Reads the reply so far.
    fn judge(&self, reply: &[u8]) -> Verdict;
    /// The peer closed the connection after `reply`.
    fn on_eof(&self, reply: &[u8]) -> Verdict {
        match self.judge(reply) {
            Verdict::NeedMore if reply.is_empty() => Verdict::Down {
                reason: Reason::UnexpectedReply,
                message: "the server closed the connection without a reply".into(),
            },
            Verdict::NeedMore => Verdict::Down {
                reason: Reason::UnexpectedReply,
                message: "the server closed the connection mid-reply".into(),
            },
            v => v,
        }
    }
    /// The deadline came with `reply` (not empty) read and no verdict: the
    /// server stalled mid-reply.
    fn on_timeout(&self, reply: &[u8]) -> Verdict {
        let _ = reply;
        Verdict::Down {
            reason: Reason::Timeout,
            message: "the reply was incomplete when the timeout came".into(),
        }
    }
    /// Bytes sent best-effort after an `Up` verdict to end the session politely (QUIT...).
    fn farewell(&self) -> &[u8] {
        b""
    }
}

mod amqp;
mod ftp;
mod imap;
mod kafka;
mod memcached;
mod mqtt;
mod mysql;
mod pop3;
mod postgres;
mod redis;
mod smtp;
mod ssh;
#[cfg(test)]
mod testing;

/// The conversation for a preset. A fresh one per check: some carry per-session
/// values (MQTT client id, Kafka correlation id).
pub fn conversation(preset: TcpPreset) -> Box<dyn Conversation> {
    match preset {
        TcpPreset::Redis => Box::new(redis::Redis),
        TcpPreset::Postgres => Box::new(postgres::Postgres::new()),
        TcpPreset::Mysql => Box::new(mysql::Mysql),
        TcpPreset::Smtp => Box::new(smtp::Smtp),
        TcpPreset::Ssh => Box::new(ssh::Ssh),
        TcpPreset::Imap => Box::new(imap::Imap),
        TcpPreset::Pop3 => Box::new(pop3::Pop3),
        TcpPreset::Ftp => Box::new(ftp::Ftp),
        TcpPreset::Memcached => Box::new(memcached::Memcached),
        TcpPreset::Amqp => Box::new(amqp::Amqp),
        TcpPreset::Mqtt => Box::new(mqtt::Mqtt::new()),
        TcpPreset::Kafka => Box::new(kafka::Kafka::new()),
    }
}

/// The most bytes of server text kept in a message or in `info`.
const TEXT_MAX: usize = 120;

/// The longest line a line-based greeting may have. Real greetings are far
/// shorter (SSH caps its identification at 255); past this the peer is not
/// speaking the protocol and waiting for the 4 KiB reply cap would only hide that.
const LINE_MAX: usize = 1024;

/// Server text made safe to show: trimmed, escaped, cut to `TEXT_MAX`.
fn text(bytes: &[u8]) -> String {
    escape_excerpt(bytes.trim_ascii(), TEXT_MAX)
}

/// A server that answered in its own protocol that it will not serve us now
/// (full, starting, shutting down, blocking our address). The message carries
/// the server's own words: they say why better than we could.
fn refuses(service: &str, said: impl AsRef<[u8]>) -> Verdict {
    Verdict::Down {
        reason: Reason::UnexpectedReply,
        message: format!("{service} refuses connections: {}", text(said.as_ref())),
    }
}

/// A reply that is not what the protocol says. The prober keeps an escaped
/// excerpt of the raw reply in `details.banner`, so this only says what was wrong.
fn unexpected(message: impl Into<String>) -> Verdict {
    Verdict::Down {
        reason: Reason::UnexpectedReply,
        message: message.into(),
    }
}

/// One line of a line-based reply, found from `start`.
#[derive(Debug, PartialEq, Eq)]
enum Line<'a> {
    /// The line without its `\n` (and `\r`), and where the next one starts.
    Complete(&'a [u8], usize),
    /// No line end yet.
    Partial(&'a [u8]),
    /// No line end within `LINE_MAX` bytes.
    TooLong,
}

fn line_at(buf: &[u8], start: usize) -> Line<'_> {
    let rest = buf.get(start..).unwrap_or_default();
    let scan = &rest[..rest.len().min(LINE_MAX + 1)];
    match scan.iter().position(|&b| b == b'\n') {
        Some(i) => {
            let line = &rest[..i];
            Line::Complete(line.strip_suffix(b"\r").unwrap_or(line), start + i + 1)
        }
        None if rest.len() > LINE_MAX => Line::TooLong,
        None => Line::Partial(rest),
    }
}

/// Whether `buf` (possibly an incomplete prefix) can still become a reply that
/// starts with one of `words`: lets line protocols reject a foreign service
/// from its first bytes instead of waiting for a line end that may never come.
fn may_start_with(buf: &[u8], words: &[&[u8]]) -> bool {
    words.iter().any(|w| {
        let n = buf.len().min(w.len());
        buf[..n] == w[..n]
    })
}

/// A numbered reply in the shape SMTP (RFC 5321) and FTP (RFC 959) share:
/// `220 text`, or `220-first` ... `220 last` over several lines.
#[derive(Debug, PartialEq, Eq)]
enum Coded<'a> {
    /// A complete reply: its code and the text of its first line.
    Reply(u16, &'a [u8]),
    NeedMore,
    /// Not a numbered reply; says what was wrong.
    Malformed(&'static str),
}

fn coded_reply(buf: &[u8]) -> Coded<'_> {
    // Judge the code as its bytes arrive, so a foreign banner fails at once.
    for (i, &b) in buf.iter().take(4).enumerate() {
        let ok = if i < 3 {
            b.is_ascii_digit()
        } else {
            matches!(b, b' ' | b'-' | b'\r' | b'\n')
        };
        if !ok {
            return Coded::Malformed("not a numbered reply");
        }
    }
    let first = match line_at(buf, 0) {
        Line::Complete(line, next) => (line, next),
        Line::Partial(_) => return Coded::NeedMore,
        Line::TooLong => return Coded::Malformed("no line end"),
    };
    let (line, mut next) = first;
    let Some(code_digits) = line.get(..3) else {
        return Coded::Malformed("not a numbered reply");
    };
    let code = code_digits
        .iter()
        .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    let text = line.get(4..).unwrap_or_default();
    if line.get(3) != Some(&b'-') {
        return Coded::Reply(code, text);
    }
    // A multi-line reply ends at a line that starts with the same code and a
    // space (or is just the code). FTP allows free text in between; SMTP
    // repeats the code with '-' on each line, which this accepts too.
    loop {
        match line_at(buf, next) {
            Line::Complete(l, after) => {
                if l.starts_with(code_digits) && matches!(l.get(3), None | Some(b' ')) {
                    return Coded::Reply(code, text);
                }
                next = after;
            }
            Line::Partial(_) => return Coded::NeedMore,
            Line::TooLong => return Coded::Malformed("no line end"),
        }
    }
}

/// Reads a big-endian u16 at `at`, if there.
fn be16(buf: &[u8], at: usize) -> Option<u16> {
    let b = buf.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([b[0], b[1]]))
}

/// Reads a big-endian u32 at `at`, if there.
fn be32(buf: &[u8], at: usize) -> Option<u32> {
    let b = buf.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// Generic send/expect: send optional bytes, then read until `expect` matches.
/// Without `expect`, any first bytes mean up.
pub struct SendExpect {
    send: Option<Vec<u8>>,
    expect: Option<Regex>,
}

impl SendExpect {
    fn mismatch(&self, reply: &[u8]) -> Verdict {
        let message = match &self.expect {
            Some(re) => format!(
                "reply does not match /{}/: {}",
                shown_pattern(re.as_str()),
                crate::result::escape_excerpt(reply, super::tcp::MESSAGE_EXCERPT)
            ),
            None => "the server closed the connection without a reply".into(),
        };
        Verdict::Down {
            reason: Reason::UnexpectedReply,
            message,
        }
    }

    pub fn new(send: Option<Vec<u8>>, expect: Option<Regex>) -> Self {
        SendExpect { send, expect }
    }
}

/// A pattern as its owner wrote it, safe to print: printable ASCII as is
/// (backslashes are regex syntax), anything else escaped, cut at 64
/// characters. A pattern may hold raw control characters (a TOML `"\u001b"`).
fn shown_pattern(pattern: &str) -> String {
    const SHOWN: usize = 64;
    let mut out = String::new();
    for c in pattern.chars().take(SHOWN) {
        if c == ' ' || c.is_ascii_graphic() {
            out.push(c);
        } else {
            out.extend(c.escape_default());
        }
    }
    if pattern.chars().nth(SHOWN).is_some() {
        out.push_str("...");
    }
    out
}

impl Conversation for SendExpect {
    fn request(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self.send.as_deref().unwrap_or(b""))
    }

    fn judge(&self, reply: &[u8]) -> Verdict {
        match &self.expect {
            None if reply.is_empty() => Verdict::NeedMore,
            None => Verdict::Up { info: None },
            Some(re) if re.is_match(reply) => Verdict::Up { info: None },
            Some(_) => Verdict::NeedMore,
        }
    }

    fn on_eof(&self, reply: &[u8]) -> Verdict {
        match self.judge(reply) {
            Verdict::NeedMore => self.mismatch(reply),
            v => v,
        }
    }

    /// A banner that stays unmatched while the server keeps the connection
    /// open is a mismatch, not a slow server.
    fn on_timeout(&self, reply: &[u8]) -> Verdict {
        self.mismatch(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mismatch_shows_the_pattern_escaped_and_bounded() {
        // Found by the `expect` fuzz target: a pattern with a control
        // character and a CR went raw into the message.
        let re =
            crate::check::compile_regex("^HTTP/1\\.[01] [23];\u{10}HTTP/1.1 200 OK\r").unwrap();
        let conv = SendExpect::new(None, Some(re));
        let Verdict::Down { message, .. } = conv.on_eof(b"erver: x\r\n\r\n") else {
            panic!("a mismatch is down");
        };
        assert_eq!(
            message,
            "reply does not match /^HTTP/1\\.[01] [23];\\u{10}HTTP/1.1 200 OK\\r/: erver: x\\r\\n\\r\\n"
        );
        let long = crate::check::compile_regex(&"\u{e9}".repeat(200)).unwrap();
        let Verdict::Down { message, .. } = SendExpect::new(None, Some(long)).on_timeout(b"x")
        else {
            panic!("a mismatch is down");
        };
        assert!(message.is_ascii() && message.len() < 1024, "{message}");
        assert!(
            message.contains("\\u{e9}") && message.contains("..."),
            "{message}"
        );
    }
}
