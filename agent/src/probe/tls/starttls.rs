//! STARTTLS: the plaintext dialogue that brings an smtp, imap or pop3 session
//! to the point where the server waits for a TLS ClientHello.
//!
//! Every read is bounded (`MAX_REPLY_BYTES` per reply) and by the check's
//! deadline; the reply parsers are pure functions of untrusted bytes.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::check::{MAX_REPLY_BYTES, StartTls};
use crate::probe::tcp::BANNER_EXCERPT;
use crate::result::{CheckResult, Reason, escape_excerpt, micros};

/// The name we introduce ourselves with (`EHLO`): reserved, so it can never be
/// mistaken for a real host in the server's logs.
const EHLO_NAME: &str = "portwatch.invalid";

/// How long a goodbye may take: politeness must not cost the check time.
pub(super) const FAREWELL_TIMEOUT: Duration = Duration::from_millis(50);

/// Why the plaintext part failed, sorted into the taxonomy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Failure {
    pub reason: Reason,
    pub message: String,
}

fn unexpected(message: String) -> Failure {
    Failure {
        reason: Reason::UnexpectedReply,
        message,
    }
}

/// What ends the session politely in each dialect (sent in plaintext after a
/// refusal, through TLS after a successful upgrade).
pub(super) fn farewell(dialect: StartTls) -> &'static [u8] {
    match dialect {
        StartTls::Smtp | StartTls::Pop3 => b"QUIT\r\n",
        StartTls::Imap => b"a2 LOGOUT\r\n",
    }
}

/// Runs the dialogue up to the server's "go ahead". Fills `first_byte` (from
/// `since` to the greeting's first byte) and the greeting as the banner.
pub(super) async fn upgrade<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    dialect: StartTls,
    deadline: Instant,
    since: Instant,
    r: &mut CheckResult,
) -> Result<(), Failure> {
    let mut d = Dialogue {
        stream,
        buf: Vec::with_capacity(512),
        deadline,
        first_byte: None,
    };
    let greeting = d.reply("greeting", greeting_end(dialect)).await;
    if let Some(at) = d.first_byte {
        r.phases.first_byte = Some(micros(at.duration_since(since)));
    }
    let greeting = greeting?;
    r.details.banner = Some(escape_excerpt(&greeting, BANNER_EXCERPT));
    let outcome = match dialect {
        StartTls::Smtp => smtp(&mut d, &greeting).await,
        StartTls::Imap => imap(&mut d, &greeting).await,
        StartTls::Pop3 => pop3(&mut d, &greeting).await,
    };
    match outcome {
        Ok(()) if !d.buf.is_empty() => {
            // Bytes after the "go ahead" would be read as if they came through TLS
            // by a careless client (the STARTTLS injection of CVE-2011-0411); a
            // correct server sends nothing until our ClientHello.
            Err(unexpected(format!(
                "server sent data after agreeing to start tls: {}",
                escape_excerpt(&d.buf, 64)
            )))
        }
        Ok(()) => Ok(()),
        Err(f) => {
            if f.reason == Reason::UnexpectedReply {
                let _ =
                    tokio::time::timeout(FAREWELL_TIMEOUT, d.stream.write_all(farewell(dialect)))
                        .await;
            }
            Err(f)
        }
    }
}

async fn smtp<S: AsyncRead + AsyncWrite + Unpin>(
    d: &mut Dialogue<'_, S>,
    greeting: &[u8],
) -> Result<(), Failure> {
    match reply_code(greeting) {
        Some(220) => {}
        Some(421 | 554) => {
            return Err(unexpected(format!(
                "smtp server refused the session: {}",
                excerpt(greeting)
            )));
        }
        _ => {
            return Err(unexpected(format!(
                "unexpected smtp greeting: {}",
                excerpt(greeting)
            )));
        }
    }
    d.send(format!("EHLO {EHLO_NAME}\r\n").as_bytes()).await?;
    let ehlo = d.reply("EHLO reply", smtp_reply_end).await?;
    if reply_code(&ehlo) != Some(250) {
        return Err(unexpected(format!(
            "smtp server rejected EHLO: {}",
            excerpt(&ehlo)
        )));
    }
    if !smtp_offers_starttls(&ehlo) {
        return Err(unexpected("server does not offer STARTTLS".to_owned()));
    }
    d.send(b"STARTTLS\r\n").await?;
    let go = d.reply("STARTTLS reply", smtp_reply_end).await?;
    if reply_code(&go) != Some(220) {
        return Err(unexpected(format!(
            "smtp server refused STARTTLS: {}",
            excerpt(&go)
        )));
    }
    Ok(())
}

async fn imap<S: AsyncRead + AsyncWrite + Unpin>(
    d: &mut Dialogue<'_, S>,
    greeting: &[u8],
) -> Result<(), Failure> {
    if starts_with_ci(greeting, b"* PREAUTH") {
        // RFC 9051 6.2.1: STARTTLS is only valid before authentication.
        return Err(unexpected(format!(
            "imap server greeted with PREAUTH, so STARTTLS is not possible: {}",
            excerpt(greeting)
        )));
    }
    if starts_with_ci(greeting, b"* BYE") {
        return Err(unexpected(format!(
            "imap server refused the session: {}",
            excerpt(greeting)
        )));
    }
    if !starts_with_ci(greeting, b"* OK") {
        return Err(unexpected(format!(
            "unexpected imap greeting: {}",
            excerpt(greeting)
        )));
    }
    d.send(b"a1 STARTTLS\r\n").await?;
    let reply = d.reply("STARTTLS reply", |b| tagged_end(b, b"a1 ")).await?;
    let tagged = last_line(&reply);
    if !starts_with_ci(tagged, b"a1 OK") {
        return Err(unexpected(format!(
            "imap server refused STARTTLS: {}",
            excerpt(tagged)
        )));
    }
    Ok(())
}

async fn pop3<S: AsyncRead + AsyncWrite + Unpin>(
    d: &mut Dialogue<'_, S>,
    greeting: &[u8],
) -> Result<(), Failure> {
    if starts_with_ci(greeting, b"-ERR") {
        return Err(unexpected(format!(
            "pop3 server refused the session: {}",
            excerpt(greeting)
        )));
    }
    if !starts_with_ci(greeting, b"+OK") {
        return Err(unexpected(format!(
            "unexpected pop3 greeting: {}",
            excerpt(greeting)
        )));
    }
    d.send(b"STLS\r\n").await?;
    let reply = d.reply("STLS reply", line_end).await?;
    if !starts_with_ci(&reply, b"+OK") {
        return Err(unexpected(format!(
            "pop3 server refused STLS: {}",
            excerpt(&reply)
        )));
    }
    Ok(())
}

/// A plaintext session: the stream, what was read but not yet consumed, and
/// when the first byte arrived.
struct Dialogue<'s, S> {
    stream: &'s mut S,
    buf: Vec<u8>,
    deadline: Instant,
    first_byte: Option<Instant>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Dialogue<'_, S> {
    async fn send(&mut self, line: &[u8]) -> Result<(), Failure> {
        let what = String::from_utf8_lossy(
            line.split(|&b| b == b' ' || b == b'\r')
                .next()
                .unwrap_or(b""),
        );
        match tokio::time::timeout_at(self.deadline, self.stream.write_all(line)).await {
            Err(_) => Err(Failure {
                reason: Reason::Timeout,
                message: format!("timed out sending {what}"),
            }),
            Ok(Err(e)) => Err(Failure {
                reason: Reason::from_io(&e),
                message: format!("sending {what}: {e}"),
            }),
            Ok(Ok(())) => Ok(()),
        }
    }

    /// Reads until `end` finds a complete reply and returns it; bytes after it stay in `buf`.
    async fn reply(
        &mut self,
        what: &str,
        end: impl Fn(&[u8]) -> Option<usize>,
    ) -> Result<Vec<u8>, Failure> {
        let mut chunk = [0u8; 1024];
        loop {
            if let Some(n) = end(&self.buf) {
                return Ok(self.buf.drain(..n.min(self.buf.len())).collect());
            }
            if self.buf.len() >= MAX_REPLY_BYTES {
                return Err(unexpected(format!(
                    "no complete {what} within the first {MAX_REPLY_BYTES} bytes: {}",
                    escape_excerpt(&self.buf, 64)
                )));
            }
            let room = (MAX_REPLY_BYTES - self.buf.len()).min(chunk.len());
            let n =
                match tokio::time::timeout_at(self.deadline, self.stream.read(&mut chunk[..room]))
                    .await
                {
                    Err(_) if self.first_byte.is_none() => {
                        return Err(Failure {
                            reason: Reason::NoReply,
                            message: format!("connected, but no {what} before the timeout"),
                        });
                    }
                    Err(_) if self.buf.is_empty() => {
                        return Err(Failure {
                            reason: Reason::Timeout,
                            message: format!("no {what} before the timeout"),
                        });
                    }
                    Err(_) => {
                        return Err(Failure {
                            reason: Reason::Timeout,
                            message: format!(
                                "the {what} was incomplete when the timeout came: {}",
                                escape_excerpt(&self.buf, 64)
                            ),
                        });
                    }
                    Ok(Err(e)) => {
                        return Err(Failure {
                            reason: Reason::from_io(&e),
                            message: format!("reading the {what}: {e}"),
                        });
                    }
                    Ok(Ok(n)) => n,
                };
            if n == 0 {
                let message = if self.buf.is_empty() {
                    format!("the server closed the connection before its {what}")
                } else {
                    format!(
                        "the server closed the connection in the middle of its {what}: {}",
                        escape_excerpt(&self.buf, 64)
                    )
                };
                return Err(unexpected(message));
            }
            self.first_byte.get_or_insert_with(Instant::now);
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

fn greeting_end(dialect: StartTls) -> fn(&[u8]) -> Option<usize> {
    match dialect {
        StartTls::Smtp => smtp_reply_end,
        StartTls::Imap | StartTls::Pop3 => line_end,
    }
}

/// Complete lines of `buf`, each with its terminator, as (start, end) offsets.
fn lines(buf: &[u8]) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut start = 0;
    std::iter::from_fn(move || {
        let nl = buf[start..].iter().position(|&b| b == b'\n')?;
        let line = (start, start + nl + 1);
        start = line.1;
        Some(line)
    })
}

/// The end of the first complete line.
fn line_end(buf: &[u8]) -> Option<usize> {
    lines(buf).next().map(|(_, end)| end)
}

/// The end of a complete smtp reply: continuation lines are `ddd-text`; the
/// first line that is not one ends the reply (a non-smtp line too, so garbage
/// is judged rather than waited on).
fn smtp_reply_end(buf: &[u8]) -> Option<usize> {
    lines(buf)
        .find(|&(s, _)| !is_smtp_continuation(&buf[s..]))
        .map(|(_, end)| end)
}

fn is_smtp_continuation(line: &[u8]) -> bool {
    line.len() >= 4 && line[..3].iter().all(u8::is_ascii_digit) && line[3] == b'-'
}

/// The end of the line tagged `tag`, after any untagged lines.
fn tagged_end(buf: &[u8], tag: &[u8]) -> Option<usize> {
    lines(buf)
        .find(|&(s, _)| starts_with_ci(&buf[s..], tag))
        .map(|(_, end)| end)
}

/// The three-digit code of an smtp reply.
fn reply_code(reply: &[u8]) -> Option<u16> {
    let digits = reply.get(..3)?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // Each line of a multi-line reply must carry the same code; a following byte,
    // if any, must be a separator.
    match reply.get(3) {
        None | Some(b' ' | b'-' | b'\r' | b'\n') => {}
        Some(_) => return None,
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Whether an EHLO reply lists the STARTTLS extension (RFC 3207).
fn smtp_offers_starttls(reply: &[u8]) -> bool {
    lines(reply).any(|(s, e)| {
        let line = &reply[s..e];
        let text = line.get(4..).unwrap_or(b"");
        let keyword = text
            .split(|b| b.is_ascii_whitespace())
            .next()
            .unwrap_or(b"");
        keyword.eq_ignore_ascii_case(b"STARTTLS")
    })
}

fn last_line(reply: &[u8]) -> &[u8] {
    lines(reply)
        .last()
        .map(|(s, e)| &reply[s..e])
        .unwrap_or(reply)
}

fn starts_with_ci(buf: &[u8], prefix: &[u8]) -> bool {
    buf.len() >= prefix.len() && buf[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// A reply as it may appear in a message: trailing line break dropped, escaped, bounded.
fn excerpt(reply: &[u8]) -> String {
    let trimmed = reply.strip_suffix(b"\n").unwrap_or(reply);
    let trimmed = trimmed.strip_suffix(b"\r").unwrap_or(trimmed);
    escape_excerpt(trimmed, 120)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smtp_replies_end_at_the_first_line_without_a_dash() {
        assert_eq!(smtp_reply_end(b"220 ready\r\n"), Some(11));
        assert_eq!(smtp_reply_end(b"220-hello\r\n"), None);
        assert_eq!(smtp_reply_end(b"220-hello\r\n220 ready\r\nxx"), Some(22));
        assert_eq!(smtp_reply_end(b"220 rea"), None);
        // Bare LF line ends and a code with no text are accepted.
        assert_eq!(smtp_reply_end(b"250\n"), Some(4));
        // Something that is not smtp ends the reply so it can be judged.
        assert_eq!(smtp_reply_end(b"SSH-2.0-OpenSSH\r\n"), Some(17));
    }

    #[test]
    fn smtp_codes_come_from_the_start_of_the_reply() {
        assert_eq!(reply_code(b"220 ok\r\n"), Some(220));
        assert_eq!(reply_code(b"421-busy\r\n421 bye\r\n"), Some(421));
        assert_eq!(reply_code(b"554\r\n"), Some(554));
        assert_eq!(reply_code(b"2200 ok"), None);
        assert_eq!(reply_code(b"+OK"), None);
        assert_eq!(reply_code(b"22"), None);
        assert_eq!(reply_code(b""), None);
    }

    #[test]
    fn starttls_is_found_only_as_an_ehlo_keyword() {
        let with = b"250-mail.test hello\r\n250-PIPELINING\r\n250-starttls\r\n250 SIZE 1000\r\n";
        assert!(smtp_offers_starttls(with));
        assert!(smtp_offers_starttls(b"250 STARTTLS\r\n"));
        let without = b"250-mail.test STARTTLS is not here\r\n250-8BITMIME\r\n250 SIZE\r\n";
        assert!(!smtp_offers_starttls(without));
        assert!(!smtp_offers_starttls(b"250-STARTTLSX\r\n250 OK\r\n"));
        assert!(!smtp_offers_starttls(b""));
    }

    #[test]
    fn imap_tagged_reply_skips_untagged_lines() {
        let reply = b"* CAPABILITY IMAP4rev1\r\na1 OK begin tls\r\n";
        assert_eq!(tagged_end(reply, b"a1 "), Some(reply.len()));
        assert_eq!(last_line(reply), b"a1 OK begin tls\r\n");
        assert_eq!(tagged_end(b"* OK still talking\r\n", b"a1 "), None);
        assert_eq!(tagged_end(b"a1 OK no newline yet", b"a1 "), None);
    }

    #[test]
    fn excerpts_drop_the_line_break_and_escape_the_rest() {
        assert_eq!(excerpt(b"421 busy\r\n"), "421 busy");
        assert_eq!(excerpt(b"\x1b[31m\n"), "\\x1b[31m");
    }
}
