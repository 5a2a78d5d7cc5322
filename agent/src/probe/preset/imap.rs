//! IMAP: the server greets first (RFC 9051 7.1): `* OK` ready, `* PREAUTH`
//! ready and already authenticated, `* BYE` refusing. We send nothing but a
//! polite `LOGOUT`.

use std::borrow::Cow;

use super::{Conversation, Line, Verdict, line_at, may_start_with, refuses, text, unexpected};

pub struct Imap;

impl Conversation for Imap {
    fn request(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(b"")
    }

    fn judge(&self, reply: &[u8]) -> Verdict {
        if !may_start_with(reply, &[b"* "]) {
            return unexpected("not an imap greeting");
        }
        let line = match line_at(reply, 0) {
            Line::Complete(line, _) => line,
            Line::Partial(_) => return Verdict::NeedMore,
            Line::TooLong => return unexpected("not an imap greeting (no line end)"),
        };
        let rest = &line[2..];
        let (status, said) = match rest.iter().position(|&b| b == b' ') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &b""[..]),
        };
        if status.eq_ignore_ascii_case(b"OK") || status.eq_ignore_ascii_case(b"PREAUTH") {
            Verdict::Up {
                info: Some(text(without_response_code(said))),
            }
        } else if status.eq_ignore_ascii_case(b"BYE") {
            refuses("imap", rest)
        } else {
            unexpected("not an imap greeting")
        }
    }

    fn farewell(&self) -> &[u8] {
        b"a1 LOGOUT\r\n"
    }
}

/// The greeting text without a leading `[CAPABILITY ...]`-style response code,
/// which is long and says nothing about the server that the text does not.
fn without_response_code(said: &[u8]) -> &[u8] {
    if said.first() == Some(&b'[')
        && let Some(end) = said.iter().position(|&b| b == b']')
        && let after = said[end + 1..].trim_ascii_start()
        && !after.is_empty()
    {
        return after;
    }
    said
}

#[cfg(test)]
mod tests {
    use super::super::testing::{down, truncated_needs_more, up};
    use super::*;

    #[test]
    fn ok_and_preauth_greetings_are_up() {
        let dovecot = b"* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ STARTTLS AUTH=PLAIN] Dovecot (Debian) ready.\r\n";
        assert_eq!(up(&Imap, dovecot).unwrap(), "Dovecot (Debian) ready.");
        truncated_needs_more(&Imap, dovecot);
        assert_eq!(
            up(&Imap, b"* PREAUTH IMAP4rev1 server logged in as Smith\r\n").unwrap(),
            "IMAP4rev1 server logged in as Smith"
        );
        assert_eq!(up(&Imap, b"* ok\r\n").unwrap(), "");
        assert_eq!(Imap.farewell(), b"a1 LOGOUT\r\n");
    }

    #[test]
    fn bye_is_down_with_the_text() {
        assert_eq!(
            down(&Imap, b"* BYE Too many connections from your IP\r\n"),
            "imap refuses connections: BYE Too many connections from your IP"
        );
    }

    #[test]
    fn other_replies_are_unexpected() {
        assert_eq!(down(&Imap, b"* NO maybe\r\n"), "not an imap greeting");
        assert_eq!(down(&Imap, b"+OK POP3\r\n"), "not an imap greeting");
        assert!(
            down(&Imap, &[b"* OK ".as_slice(), &[b'a'; 1100]].concat()).contains("no line end")
        );
    }
}
