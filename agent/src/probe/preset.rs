//! TCP conversations: what to send first and how to read the reply. Presets
//! answer the question users really ask, "is it ACCEPTING connections?", not
//! just "is the port open?" (a database at max connections still completes the
//! TCP handshake). Every parser here reads untrusted bytes: pure functions of
//! the reply, bounded, never panicking.

use std::borrow::Cow;

use regex::bytes::Regex;

use crate::check::TcpPreset;
use crate::result::Reason;

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
    /// Bytes sent best-effort after an `Up` verdict to end the session politely (QUIT...).
    fn farewell(&self) -> &[u8] {
        b""
    }
}

/// The conversation for a preset.
pub fn conversation(preset: TcpPreset) -> Box<dyn Conversation> {
    // Filled by the preset modules.
    let _ = preset;
    Box::new(SendExpect::new(None, None))
}

/// Generic send/expect: send optional bytes, then read until `expect` matches.
/// Without `expect`, any first bytes mean up.
pub struct SendExpect {
    send: Option<Vec<u8>>,
    expect: Option<Regex>,
}

impl SendExpect {
    pub fn new(send: Option<Vec<u8>>, expect: Option<Regex>) -> Self {
        SendExpect { send, expect }
    }
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
            Verdict::NeedMore => Verdict::Down {
                reason: Reason::UnexpectedReply,
                message: match &self.expect {
                    Some(re) => format!("reply does not match /{}/", re.as_str()),
                    None => "the server closed the connection without a reply".into(),
                },
            },
            v => v,
        }
    }
}
