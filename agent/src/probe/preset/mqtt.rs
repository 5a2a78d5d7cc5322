//! MQTT: a 3.1.1 CONNECT (clean session, no credentials, a random client id)
//! and the broker's CONNACK. Return code 0 is up; "bad user name or password"
//! and "not authorized" come from a broker that is accepting connections, just
//! not anonymous ones, so they are up too; "server unavailable" is down.

use std::borrow::Cow;

use super::{Conversation, Verdict, refuses, unexpected};

/// Keep-alive we announce, in seconds; we disconnect long before it matters.
const KEEPALIVE_SECS: u16 = 10;

pub struct Mqtt {
    connect: Vec<u8>,
}

impl Mqtt {
    /// A fresh client id per check: brokers drop the older of two sessions with
    /// one id, and two agents probing one broker must not kick each other out.
    pub fn new() -> Mqtt {
        Mqtt::with_client_id(&format!("portwatch-{:08x}", rand::random::<u32>()))
    }

    fn with_client_id(client_id: &str) -> Mqtt {
        Mqtt {
            connect: connect_packet(client_id),
        }
    }
}

/// A CONNECT packet, protocol level 4 (3.1.1). The id must stay under 128
/// bytes (one-byte remaining length) and 23 characters for strict brokers.
fn connect_packet(client_id: &str) -> Vec<u8> {
    let id = client_id.as_bytes();
    let mut variable = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02];
    variable.extend_from_slice(&KEEPALIVE_SECS.to_be_bytes());
    variable.extend_from_slice(&(id.len() as u16).to_be_bytes());
    variable.extend_from_slice(id);
    let mut packet = vec![0x10, variable.len() as u8];
    packet.extend_from_slice(&variable);
    packet
}

impl Conversation for Mqtt {
    fn request(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.connect)
    }

    fn judge(&self, reply: &[u8]) -> Verdict {
        let Some(&kind) = reply.first() else {
            return Verdict::NeedMore;
        };
        if kind != 0x20 {
            return unexpected(format!("not an mqtt connack (packet type 0x{kind:02x})"));
        }
        // Remaining length: 1 to 4 bytes, 7 bits each, high bit = more.
        let mut remaining = 0usize;
        let mut at = 1;
        loop {
            let Some(&b) = reply.get(at) else {
                return Verdict::NeedMore;
            };
            remaining |= usize::from(b & 0x7f) << (7 * (at - 1));
            at += 1;
            if b & 0x80 == 0 {
                break;
            }
            if at > 4 {
                return unexpected("mqtt connack with a malformed length");
            }
        }
        if remaining < 2 {
            return unexpected("mqtt connack too short");
        }
        let Some(&code) = reply.get(at + 1) else {
            return Verdict::NeedMore;
        };
        // A 3.1.1 CONNACK is exactly 2 bytes; a longer one is an MQTT 5 broker
        // answering in its own dialect, with 5.0 reason codes.
        if remaining == 2 {
            match code {
                0 => Verdict::Up { info: None },
                4 => Verdict::Up {
                    info: Some("accepting connections, bad user name or password".into()),
                },
                5 => Verdict::Up {
                    info: Some("accepting connections, not authorized".into()),
                },
                3 => refuses("mqtt broker", "connack 3 server unavailable"),
                1 => unexpected("mqtt broker refused protocol 3.1.1 (connack 1)"),
                2 => unexpected("mqtt broker rejected the client identifier (connack 2)"),
                n => unexpected(format!("mqtt connack with unknown return code {n}")),
            }
        } else {
            match code {
                0 => Verdict::Up { info: None },
                0x86 => Verdict::Up {
                    info: Some("accepting connections, bad user name or password".into()),
                },
                0x87 => Verdict::Up {
                    info: Some("accepting connections, not authorized".into()),
                },
                0x88 => refuses("mqtt broker", "connack 0x88 server unavailable"),
                0x89 => refuses("mqtt broker", "connack 0x89 server busy"),
                0x97 => refuses("mqtt broker", "connack 0x97 quota exceeded"),
                0x9f => refuses("mqtt broker", "connack 0x9f connection rate exceeded"),
                n => unexpected(format!("mqtt 5 connack with reason code 0x{n:02x}")),
            }
        }
    }

    fn farewell(&self) -> &[u8] {
        // DISCONNECT: the broker drops the session without publishing a will.
        b"\xe0\x00"
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{down, truncated_needs_more, up};
    use super::*;

    #[test]
    fn the_connect_packet_is_mqtt_3_1_1_with_a_fresh_client_id() {
        let m = Mqtt::with_client_id("portwatch-0badf00d");
        let expected: &[u8] = b"\x10\x1e\x00\x04MQTT\x04\x02\x00\x0a\x00\x12portwatch-0badf00d";
        assert_eq!(m.request().as_ref(), expected);
        let (a, b) = (
            Mqtt::new().request().into_owned(),
            Mqtt::new().request().into_owned(),
        );
        assert_eq!(a.len(), expected.len());
        assert!(a.starts_with(b"\x10\x1e\x00\x04MQTT\x04\x02\x00\x0a\x00\x12portwatch-"));
        assert_ne!(a, b, "two checks must not share a client id");
        assert_eq!(m.farewell(), b"\xe0\x00");
    }

    #[test]
    fn accepted_and_credential_refusals_are_up() {
        let m = Mqtt::new();
        assert_eq!(up(&m, b"\x20\x02\x00\x00"), None);
        truncated_needs_more(&m, b"\x20\x02\x00\x00");
        assert!(
            up(&m, b"\x20\x02\x00\x04")
                .unwrap()
                .contains("bad user name or password")
        );
        assert!(
            up(&m, b"\x20\x02\x00\x05")
                .unwrap()
                .contains("not authorized")
        );
        // MQTT 5 broker: flags, reason, properties.
        assert!(
            up(&m, b"\x20\x03\x00\x87\x00")
                .unwrap()
                .contains("not authorized")
        );
    }

    #[test]
    fn unavailable_is_down_and_protocol_refusals_unexpected() {
        let m = Mqtt::new();
        assert_eq!(
            down(&m, b"\x20\x02\x00\x03"),
            "mqtt broker refuses connections: connack 3 server unavailable"
        );
        assert!(down(&m, b"\x20\x02\x00\x01").contains("refused protocol 3.1.1"));
        assert!(down(&m, b"\x20\x02\x00\x02").contains("client identifier"));
        assert!(down(&m, b"\x20\x02\x00\x09").contains("unknown return code 9"));
        assert!(down(&m, b"\x20\x03\x00\x89\x00").contains("server busy"));
    }

    #[test]
    fn malformed_replies_are_unexpected() {
        let m = Mqtt::new();
        assert!(down(&m, b"\x30\x02\x00\x00").contains("packet type 0x30"));
        assert!(down(&m, b"\x20\x01\x00").contains("too short"));
        assert!(down(&m, b"\x20\xff\xff\xff\xff\x01").contains("malformed length"));
        // The largest 4-byte length does not overflow anything.
        assert_eq!(m.judge(b"\x20\xff\xff\xff\x7f"), Verdict::NeedMore);
    }
}
