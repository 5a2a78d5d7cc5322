//! SSH: the server's identification line, `SSH-2.0-software comments`
//! (RFC 4253 4.2), possibly after other lines it may send first.
//!
//! We send our own identification, `SSH-2.0-portwatch`, right after connect,
//! as every SSH client does (no need to wait for the server's). Without it
//! OpenSSH logs each check as an error ("kex_exchange_identification:
//! Connection closed by remote host", older: "Did not receive identification
//! string"), which fail2ban's aggressive sshd filter counts towards a ban of
//! the monitoring host; with it the server sees a client that closed during
//! key exchange, logged at info level.

use std::borrow::Cow;

use super::{Conversation, Line, Verdict, line_at, text, unexpected};

pub struct Ssh;

/// Lines a server may send before its identification; more means it is not SSH.
const MAX_PRE_LINES: usize = 16;

impl Conversation for Ssh {
    fn request(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(b"SSH-2.0-portwatch\r\n")
    }

    fn judge(&self, reply: &[u8]) -> Verdict {
        let mut at = 0;
        for _ in 0..=MAX_PRE_LINES {
            let line = match line_at(reply, at) {
                Line::Complete(line, next) => {
                    at = next;
                    line
                }
                Line::Partial(_) => return Verdict::NeedMore,
                Line::TooLong => return unexpected("not an ssh server (no line end)"),
            };
            let Some(rest) = line.strip_prefix(b"SSH-") else {
                continue;
            };
            // 1.99 is a server that speaks both 1 and 2.
            return match rest
                .strip_prefix(b"2.0-")
                .or_else(|| rest.strip_prefix(b"1.99-"))
            {
                Some(software) => Verdict::Up {
                    info: Some(text(software)),
                },
                None => unexpected("ssh server without protocol 2"),
            };
        }
        unexpected("not an ssh server (no identification line)")
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{down, truncated_needs_more, up};
    use super::*;

    #[test]
    fn a_v2_identification_is_up_with_the_software() {
        assert_eq!(Ssh.request().as_ref(), b"SSH-2.0-portwatch\r\n");
        let id = b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n";
        assert_eq!(up(&Ssh, id).unwrap(), "OpenSSH_9.2p1 Debian-2+deb12u3");
        truncated_needs_more(&Ssh, id);
        assert_eq!(up(&Ssh, b"SSH-1.99-Cisco-1.25\n").unwrap(), "Cisco-1.25");
        // Key exchange data right behind the line changes nothing.
        assert_eq!(
            up(
                &Ssh,
                b"SSH-2.0-dropbear_2022.83\r\n\x00\x00\x01\x14\x0a\x14"
            )
            .unwrap(),
            "dropbear_2022.83"
        );
    }

    #[test]
    fn lines_before_the_identification_are_skipped() {
        let reply = b"Welcome to the bastion\r\nAuthorized use only\r\nSSH-2.0-OpenSSH_8.4\r\n";
        assert_eq!(up(&Ssh, reply).unwrap(), "OpenSSH_8.4");
        truncated_needs_more(&Ssh, reply);
    }

    #[test]
    fn other_servers_are_unexpected() {
        assert_eq!(
            down(&Ssh, b"SSH-1.5-OldServer\r\n"),
            "ssh server without protocol 2"
        );
        assert!(down(&Ssh, &b"noise\r\n".repeat(20)).contains("no identification line"));
        assert!(down(&Ssh, &[b'x'; 1100]).contains("no line end"));
        // A greeting then a close: the prober's end-of-file verdict is a down.
        assert!(matches!(
            Ssh.on_eof(b"220 mail ready\r\n"),
            Verdict::Down { .. }
        ));
    }
}
