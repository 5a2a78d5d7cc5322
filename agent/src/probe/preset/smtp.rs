//! SMTP: the server greets first (RFC 5321 4.2, possibly over several `220-`
//! lines). 220 means it is taking mail sessions; 421 (service not available)
//! and 554 (no SMTP service here, e.g. a relay refusing this client) mean it
//! is not, and the text says why. We send nothing but a polite `QUIT`.

use std::borrow::Cow;

use super::{Coded, Conversation, Verdict, coded_reply, refuses, text, unexpected};

pub struct Smtp;

impl Conversation for Smtp {
    fn request(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(b"")
    }

    fn judge(&self, reply: &[u8]) -> Verdict {
        match coded_reply(reply) {
            Coded::NeedMore => Verdict::NeedMore,
            Coded::Malformed(why) => unexpected(format!("not an smtp greeting ({why})")),
            Coded::Reply(220, greeting) => Verdict::Up {
                info: Some(text(greeting)),
            },
            Coded::Reply(code @ (421 | 554), said) => {
                refuses("smtp", format!("{code} {}", text(said)))
            }
            Coded::Reply(code, _) => unexpected(format!("smtp greeting with code {code}")),
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
    fn a_220_greeting_is_up_with_its_text() {
        assert_eq!(
            up(&Smtp, b"220 mx.example.test ESMTP Postfix (Debian/GNU)\r\n").unwrap(),
            "mx.example.test ESMTP Postfix (Debian/GNU)"
        );
        let multi = b"220-mx.example.test ESMTP Exim 4.96\r\n220-We do not authorize the use of this system\r\n220 to transport unsolicited mail\r\n";
        assert_eq!(up(&Smtp, multi).unwrap(), "mx.example.test ESMTP Exim 4.96");
        truncated_needs_more(&Smtp, multi);
        assert_eq!(Smtp.farewell(), b"QUIT\r\n");
    }

    #[test]
    fn refusing_greetings_are_down_with_the_text() {
        assert_eq!(
            down(
                &Smtp,
                b"421 mx.example.test Service not available - too busy\r\n"
            ),
            "smtp refuses connections: 421 mx.example.test Service not available - too busy"
        );
        let multi = b"554-mx.example.test\r\n554 No SMTP service here\r\n";
        assert_eq!(
            down(&Smtp, multi),
            "smtp refuses connections: 554 mx.example.test"
        );
        truncated_needs_more(&Smtp, multi);
    }

    #[test]
    fn other_codes_and_other_protocols_are_unexpected() {
        assert_eq!(down(&Smtp, b"250 ok\r\n"), "smtp greeting with code 250");
        assert!(down(&Smtp, b"SSH-2.0-OpenSSH_9.2\r\n").contains("not an smtp greeting"));
        assert!(down(&Smtp, b"22x ").contains("not a numbered reply"));
        assert!(down(&Smtp, b"2200 ").contains("not a numbered reply"));
        let endless = [b"220-".as_slice(), &[b'a'; 1500]].concat();
        assert!(down(&Smtp, &endless).contains("no line end"));
    }
}
