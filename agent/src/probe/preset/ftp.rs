//! FTP: the server greets first (RFC 959). 220 is ready; 421 is "service not
//! available, closing"; 120 is "ready in N minutes", which for a monitor is
//! not ready now. We send nothing but a polite `QUIT`.

use std::borrow::Cow;

use super::{Coded, Conversation, Verdict, coded_reply, refuses, text, unexpected};

pub struct Ftp;

impl Conversation for Ftp {
    fn request(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(b"")
    }

    fn judge(&self, reply: &[u8]) -> Verdict {
        match coded_reply(reply) {
            Coded::NeedMore => Verdict::NeedMore,
            Coded::Malformed(why) => unexpected(format!("not an ftp greeting ({why})")),
            Coded::Reply(220, greeting) => Verdict::Up {
                info: Some(text(greeting)),
            },
            Coded::Reply(code @ (120 | 421), said) => {
                refuses("ftp", format!("{code} {}", text(said)))
            }
            Coded::Reply(code, _) => unexpected(format!("ftp greeting with code {code}")),
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
    fn a_220_greeting_is_up() {
        assert_eq!(
            up(&Ftp, b"220 (vsFTPd 3.0.3)\r\n").unwrap(),
            "(vsFTPd 3.0.3)"
        );
        // RFC 959 multi-line replies may carry free text between the first and last line.
        let multi = b"220-Welcome to the archive\r\n  mirrors are listed below\r\n220 ProFTPD Server ready.\r\n";
        assert_eq!(up(&Ftp, multi).unwrap(), "Welcome to the archive");
        truncated_needs_more(&Ftp, multi);
        assert_eq!(Ftp.farewell(), b"QUIT\r\n");
    }

    #[test]
    fn not_ready_greetings_are_down_with_the_text() {
        assert_eq!(
            down(&Ftp, b"421 Too many users - please try again later\r\n"),
            "ftp refuses connections: 421 Too many users - please try again later"
        );
        assert_eq!(
            down(&Ftp, b"120 Service ready in 5 minutes.\r\n"),
            "ftp refuses connections: 120 Service ready in 5 minutes."
        );
    }

    #[test]
    fn other_codes_and_garbage_are_unexpected() {
        assert_eq!(
            down(&Ftp, b"530 Login incorrect.\r\n"),
            "ftp greeting with code 530"
        );
        assert!(down(&Ftp, b"+OK POP3 ready\r\n").contains("not an ftp greeting"));
        // A multi-line reply whose end line uses another code is still open.
        truncated_needs_more(&Ftp, b"220-a\r\n221 b\r\n220 c\r\n");
    }
}
