//! POP3: the server greets first (RFC 1939 4): `+OK` ready, `-ERR` refusing.
//! We send nothing but a polite `QUIT`.

use std::borrow::Cow;

use super::{Conversation, Line, Verdict, line_at, may_start_with, refuses, text, unexpected};

pub struct Pop3;

impl Conversation for Pop3 {
    fn request(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(b"")
    }

    fn judge(&self, reply: &[u8]) -> Verdict {
        if !may_start_with(reply, &[b"+OK", b"-ERR"]) {
            return unexpected("not a pop3 greeting");
        }
        let line = match line_at(reply, 0) {
            Line::Complete(line, _) => line,
            Line::Partial(_) => return Verdict::NeedMore,
            Line::TooLong => return unexpected("not a pop3 greeting (no line end)"),
        };
        // The status must be a word of its own: "+OKAY" is not "+OK".
        let status = |word: &[u8]| {
            line.starts_with(word) && matches!(line.get(word.len()), None | Some(b' '))
        };
        if status(b"+OK") {
            Verdict::Up {
                info: Some(text(&line[3..])),
            }
        } else if status(b"-ERR") {
            refuses("pop3", line)
        } else {
            unexpected("not a pop3 greeting")
        }
    }

    fn farewell(&self) -> &[u8] {
        b"QUIT\r\n"
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{down, truncated_needs_more, up};
    use super::*;

    #[test]
    fn ok_is_up() {
        let greeting = b"+OK Dovecot (Debian) ready.\r\n";
        assert_eq!(up(&Pop3, greeting).unwrap(), "Dovecot (Debian) ready.");
        truncated_needs_more(&Pop3, greeting);
        assert_eq!(up(&Pop3, b"+OK\r\n").unwrap(), "");
        assert_eq!(Pop3.farewell(), b"QUIT\r\n");
    }

    #[test]
    fn err_is_down_with_the_text() {
        assert_eq!(
            down(&Pop3, b"-ERR [SYS/TEMP] Server shutting down.\r\n"),
            "pop3 refuses connections: -ERR [SYS/TEMP] Server shutting down."
        );
        assert_eq!(down(&Pop3, b"-ERR\r\n"), "pop3 refuses connections: -ERR");
    }

    #[test]
    fn other_replies_are_unexpected() {
        assert_eq!(down(&Pop3, b"+OKAY\r\n"), "not a pop3 greeting");
        assert_eq!(down(&Pop3, b"-ERRATIC\r\n"), "not a pop3 greeting");
        assert_eq!(down(&Pop3, b"* OK IMAP\r\n"), "not a pop3 greeting");
    }
}
