//! Test helpers shared by the preset modules, and the tests every preset must
//! pass: incremental judging and hostile input.

use super::{Conversation, Verdict, conversation};
use crate::check::{MAX_REPLY_BYTES, TcpPreset};
use crate::result::Reason;

/// Feeds `reply` to `conv` one byte at a time, as a slow or fragmenting server
/// would. Returns the first verdict reached, after checking that it is the
/// verdict on the whole reply and that no longer prefix changes it: a decision
/// must never depend on where the reads happened to split.
pub(super) fn judge_bytewise(conv: &dyn Conversation, reply: &[u8]) -> Verdict {
    let whole = conv.judge(reply);
    let mut first: Option<(usize, Verdict)> = None;
    for n in 0..=reply.len() {
        let v = conv.judge(&reply[..n]);
        match &first {
            None if v == Verdict::NeedMore => {}
            None => first = Some((n, v)),
            Some((at, f)) => assert_eq!(
                &v, f,
                "verdict changed between {at} and {n} bytes of {reply:?}"
            ),
        }
    }
    match first {
        Some((_, v)) => {
            assert_eq!(v, whole);
            v
        }
        None => Verdict::NeedMore,
    }
}

/// `judge_bytewise`, expecting `Up`; returns its info.
#[track_caller]
pub(super) fn up(conv: &dyn Conversation, reply: &[u8]) -> Option<String> {
    match judge_bytewise(conv, reply) {
        Verdict::Up { info } => info,
        v => panic!("expected up for {reply:?}, got {v:?}"),
    }
}

/// `judge_bytewise`, expecting `Down` with `UnexpectedReply`; returns the message.
#[track_caller]
pub(super) fn down(conv: &dyn Conversation, reply: &[u8]) -> String {
    match judge_bytewise(conv, reply) {
        Verdict::Down {
            reason: Reason::UnexpectedReply,
            message,
        } => message,
        v => panic!("expected down (unexpected_reply) for {reply:?}, got {v:?}"),
    }
}

/// Asserts that every proper prefix of `reply` needs more bytes (a truncated
/// reply is never judged), and that the peer closing there is a down.
#[track_caller]
pub(super) fn truncated_needs_more(conv: &dyn Conversation, reply: &[u8]) {
    for n in 0..reply.len() {
        assert_eq!(
            conv.judge(&reply[..n]),
            Verdict::NeedMore,
            "prefix of {n} bytes of {reply:?}"
        );
        assert!(
            matches!(conv.on_eof(&reply[..n]), Verdict::Down { .. }),
            "eof after {n} bytes of {reply:?}"
        );
    }
}

/// A small deterministic generator: the same garbage on every run, so a failure reproduces.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Bytes a hostile or confused peer might send: random, random after a valid
/// first byte, and length fields at their extremes.
fn hostile_inputs() -> Vec<Vec<u8>> {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut out: Vec<Vec<u8>> = Vec::new();
    let firsts: &[&[u8]] = &[
        b"+",
        b"-",
        b"R",
        b"E",
        b"N",
        b"\x0a",
        b"\xff",
        b"220-",
        b"220 ",
        b"SSH-",
        b"* ",
        b"+OK",
        b"VERSION",
        b"SERVER_ERROR",
        b"AMQP",
        b"\x01\x00\x00",
        b"\x20",
        b"\x00\x00\x00",
        b"HTTP/1.1 400 Bad Request\r\n",
    ];
    for i in 0..2000 {
        let len = (rng.next() % 300) as usize;
        let mut v: Vec<u8> = firsts[i % firsts.len()].to_vec();
        v.extend((0..len).map(|_| rng.next() as u8));
        out.push(v);
    }
    for fill in [0x00u8, 0xff, 0x7f, 0x80, b'\n', b'-'] {
        out.push(vec![fill; MAX_REPLY_BYTES]);
        for first in firsts {
            let mut v = first.to_vec();
            v.extend(std::iter::repeat_n(fill, 64));
            out.push(v);
        }
    }
    out
}

#[test]
fn every_preset_survives_hostile_input() {
    let inputs = hostile_inputs();
    for preset in TcpPreset::ALL {
        let conv = conversation(preset);
        for input in &inputs {
            // Whatever the verdict, it must come back (no panic) and a message
            // must be safe to print.
            for v in [conv.judge(input), conv.on_eof(input)] {
                match v {
                    Verdict::Up { info: Some(s) } | Verdict::Down { message: s, .. } => {
                        assert!(
                            s.bytes().all(|b| (0x20..0x7f).contains(&b)),
                            "{preset:?}: unescaped text {s:?}"
                        );
                        assert!(
                            s.len() < 1024,
                            "{preset:?}: unbounded text ({} bytes)",
                            s.len()
                        );
                    }
                    _ => {}
                }
            }
        }
    }
}

#[test]
fn every_preset_judges_an_empty_reply_as_need_more_and_eof_as_down() {
    for preset in TcpPreset::ALL {
        let conv = conversation(preset);
        assert_eq!(conv.judge(b""), Verdict::NeedMore, "{preset:?}");
        match conv.on_eof(b"") {
            Verdict::Down {
                reason: Reason::UnexpectedReply,
                message,
            } => {
                assert!(message.contains("without a reply"), "{preset:?}: {message}")
            }
            v => panic!("{preset:?}: {v:?}"),
        }
    }
}

#[test]
fn an_http_server_is_never_mistaken_for_a_preset() {
    let http = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    for preset in TcpPreset::ALL {
        let conv = conversation(preset);
        let v = match conv.judge(http) {
            Verdict::NeedMore => conv.on_eof(http),
            v => v,
        };
        assert!(
            matches!(
                v,
                Verdict::Down {
                    reason: Reason::UnexpectedReply,
                    ..
                }
            ),
            "{preset:?}: {v:?}"
        );
    }
}

#[test]
fn banner_presets_send_nothing_and_request_presets_send_their_request() {
    for preset in TcpPreset::ALL {
        let request = conversation(preset).request().into_owned();
        let banner_first = matches!(
            preset,
            TcpPreset::Mysql | TcpPreset::Smtp | TcpPreset::Imap | TcpPreset::Pop3 | TcpPreset::Ftp
        );
        assert_eq!(request.is_empty(), banner_first, "{preset:?}: {request:?}");
    }
}
