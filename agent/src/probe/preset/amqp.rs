//! AMQP 0-9-1 (RabbitMQ and friends): the protocol header, answered by a
//! Connection.Start method frame when the broker takes the connection. A
//! broker that does not speak 0-9-1 answers with the protocol header it does
//! speak and closes. The version comes from Connection.Start's
//! server-properties (`product`, `version`).

use std::borrow::Cow;

use super::{Conversation, Verdict, be16, be32, text, unexpected};
use crate::check::MAX_REPLY_BYTES;

pub struct Amqp;

/// Frame header: type (1), channel (2), payload size (4).
const FRAME_HEADER: usize = 7;
/// Every frame ends with this octet.
const FRAME_END: u8 = 0xce;

impl Conversation for Amqp {
    fn request(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(b"AMQP\x00\x00\x09\x01")
    }

    fn judge(&self, reply: &[u8]) -> Verdict {
        let n = reply.len().min(4);
        if reply[..n] == b"AMQP"[..n] && !reply.is_empty() {
            let Some(v) = reply.get(4..8) else {
                return Verdict::NeedMore;
            };
            return unexpected(format!(
                "amqp protocol version not supported (the broker offers AMQP {}-{}-{}-{})",
                v[0], v[1], v[2], v[3]
            ));
        }
        let Some(&kind) = reply.first() else {
            return Verdict::NeedMore;
        };
        if kind != 1 {
            return unexpected(format!("not an amqp method frame (frame type {kind})"));
        }
        let (Some(channel), Some(size)) = (be16(reply, 1), be32(reply, 3)) else {
            return Verdict::NeedMore;
        };
        if channel != 0 {
            return unexpected(format!("amqp method frame on channel {channel}, not 0"));
        }
        let size = size as usize;
        if size < 4 {
            return unexpected("amqp method frame too short");
        }
        let (Some(class), Some(method)) = (be16(reply, 7), be16(reply, 9)) else {
            return Verdict::NeedMore;
        };
        if (class, method) != (10, 10) {
            return unexpected(format!(
                "amqp method {class}.{method}, not connection.start"
            ));
        }
        // Connection.Start is a few hundred bytes; wait for all of it to read the
        // version, unless it could never fit in what the prober reads.
        let end = FRAME_HEADER + size;
        if end + 1 > MAX_REPLY_BYTES {
            return Verdict::Up { info: None };
        }
        let Some(frame) = reply.get(..=end) else {
            return Verdict::NeedMore;
        };
        if frame[end] != FRAME_END {
            return unexpected("amqp frame without its end marker");
        }
        Verdict::Up {
            info: server_version(&frame[FRAME_HEADER + 4..end]),
        }
    }
}

/// "RabbitMQ 3.12.1" from Connection.Start's arguments: version-major,
/// version-minor, then the server-properties field table.
fn server_version(args: &[u8]) -> Option<String> {
    let table_len = be32(args, 2)? as usize;
    let table = args.get(6..6usize.checked_add(table_len)?)?;
    let (mut product, mut version) = (None, None);
    let mut at = 0;
    while at < table.len() {
        let name_len = usize::from(*table.get(at)?);
        let name = table.get(at + 1..at + 1 + name_len)?;
        at += 1 + name_len;
        let kind = *table.get(at)?;
        at += 1;
        // Sizes of the field types, as RabbitMQ encodes them; stop at an unknown one.
        let value_len = match kind {
            b'S' | b'F' | b'A' | b'x' => 4 + be32(table, at)? as usize,
            b't' | b'b' | b'B' => 1,
            b's' | b'u' => 2,
            b'I' | b'i' | b'f' => 4,
            b'l' | b'L' | b'd' | b'T' => 8,
            b'D' => 5,
            b'V' => 0,
            _ => break,
        };
        let value = table.get(at..at.checked_add(value_len)?)?;
        at += value_len;
        if kind == b'S' {
            match name {
                b"product" => product = Some(text(&value[4..])),
                b"version" => version = Some(text(&value[4..])),
                _ => {}
            }
        }
    }
    match (product, version) {
        (Some(p), Some(v)) => Some(format!("{p} {v}")),
        (p, v) => p.or(v),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{down, truncated_needs_more, up};
    use super::*;

    fn short_str(s: &str) -> Vec<u8> {
        [&[s.len() as u8][..], s.as_bytes()].concat()
    }

    fn long_str(b: &[u8]) -> Vec<u8> {
        [&(b.len() as u32).to_be_bytes()[..], b].concat()
    }

    /// Connection.Start as RabbitMQ 3.12 sends it (capabilities table first).
    fn connection_start() -> Vec<u8> {
        let mut caps = Vec::new();
        for name in [
            "publisher_confirms",
            "exchange_exchange_bindings",
            "basic.nack",
        ] {
            caps.extend(short_str(name));
            caps.extend([b't', 1]);
        }
        let mut props = Vec::new();
        props.extend(short_str("capabilities"));
        props.push(b'F');
        props.extend(long_str(&caps));
        props.extend(short_str("cluster_name"));
        props.push(b'S');
        props.extend(long_str(b"rabbit@mq1"));
        props.extend(short_str("platform"));
        props.push(b'S');
        props.extend(long_str(b"Erlang/OTP 25.3.2.8"));
        props.extend(short_str("product"));
        props.push(b'S');
        props.extend(long_str(b"RabbitMQ"));
        props.extend(short_str("version"));
        props.push(b'S');
        props.extend(long_str(b"3.12.1"));
        let mut payload = vec![0, 10, 0, 10, 0, 9];
        payload.extend(long_str(&props));
        payload.extend(long_str(b"AMQPLAIN PLAIN"));
        payload.extend(long_str(b"en_US"));
        let mut frame = vec![1, 0, 0];
        frame.extend((payload.len() as u32).to_be_bytes());
        frame.extend(payload);
        frame.push(FRAME_END);
        frame
    }

    #[test]
    fn connection_start_is_up_with_the_product_and_version() {
        assert_eq!(Amqp.request().as_ref(), b"AMQP\x00\x00\x09\x01");
        let start = connection_start();
        assert_eq!(up(&Amqp, &start).unwrap(), "RabbitMQ 3.12.1");
        truncated_needs_more(&Amqp, &start);
    }

    #[test]
    fn a_protocol_header_back_is_down() {
        assert_eq!(
            down(&Amqp, b"AMQP\x00\x01\x00\x00"),
            "amqp protocol version not supported (the broker offers AMQP 0-1-0-0)"
        );
        truncated_needs_more(&Amqp, b"AMQP\x00\x01\x00\x00");
    }

    #[test]
    fn other_frames_are_unexpected() {
        assert!(down(&Amqp, b"\x08\x00\x00\x00\x00\x00\x00\xce").contains("frame type 8"));
        assert!(down(&Amqp, b"\x01\x00\x01\x00\x00\x00\x04").contains("channel 1"));
        assert!(down(&Amqp, b"\x01\x00\x00\x00\x00\x00\x02").contains("too short"));
        // Connection.Close instead of Start.
        assert!(
            down(&Amqp, b"\x01\x00\x00\x00\x00\x00\x04\x00\x0a\x00\x32\xce")
                .contains("method 10.50")
        );
        let mut bad_end = connection_start();
        *bad_end.last_mut().unwrap() = 0;
        assert!(down(&Amqp, &bad_end).contains("end marker"));
    }

    #[test]
    fn a_start_frame_too_large_to_read_is_still_up_without_a_version() {
        assert_eq!(
            up(&Amqp, b"\x01\x00\x00\x00\x01\x00\x00\x00\x0a\x00\x0a"),
            None
        );
    }

    #[test]
    fn broken_server_properties_lose_the_version_not_the_verdict() {
        let mut start = connection_start();
        // Claim a huge server-properties table.
        start[13..17].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(up(&Amqp, &start), None);
        assert_eq!(server_version(b""), None);
        assert_eq!(server_version(b"\x00\x09\x00\x00\x00\x03\x01p\xfe"), None);
    }
}
