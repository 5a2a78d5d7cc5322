//! Kafka: an ApiVersions v0 request, answered by every broker version since
//! 0.10 (older or newer, it always answers ApiVersions, with error 35
//! UNSUPPORTED_VERSION if it no longer takes v0). A response carrying our
//! correlation id is a broker that is up; the number of API keys it lists
//! goes into `info`.

use std::borrow::Cow;

use super::{Conversation, Verdict, be16, be32, refuses, unexpected};

const API_VERSIONS: u16 = 18;
const CLIENT_ID: &[u8] = b"portwatch";
const UNSUPPORTED_VERSION: i16 = 35;

pub struct Kafka {
    correlation_id: i32,
    request: Vec<u8>,
}

impl Kafka {
    /// A random correlation id: a reply that does not echo it is not ours.
    pub fn new() -> Kafka {
        Kafka::with_correlation_id(rand::random::<i32>())
    }

    fn with_correlation_id(correlation_id: i32) -> Kafka {
        // Request header v1: api_key, api_version, correlation_id, client_id
        // (int16 length + bytes); the v0 body is empty.
        let mut body = Vec::new();
        body.extend_from_slice(&API_VERSIONS.to_be_bytes());
        body.extend_from_slice(&0u16.to_be_bytes());
        body.extend_from_slice(&correlation_id.to_be_bytes());
        body.extend_from_slice(&(CLIENT_ID.len() as u16).to_be_bytes());
        body.extend_from_slice(CLIENT_ID);
        let request = [&(body.len() as u32).to_be_bytes()[..], &body].concat();
        Kafka {
            correlation_id,
            request,
        }
    }
}

/// Names of the error codes a broker may plausibly answer ApiVersions with.
fn error_name(code: i16) -> &'static str {
    match code {
        -1 => "UNKNOWN_SERVER_ERROR",
        2 => "CORRUPT_MESSAGE",
        7 => "REQUEST_TIMED_OUT",
        8 => "BROKER_NOT_AVAILABLE",
        15 => "COORDINATOR_NOT_AVAILABLE",
        31 => "CLUSTER_AUTHORIZATION_FAILED",
        42 => "INVALID_REQUEST",
        _ => "unknown error",
    }
}

impl Conversation for Kafka {
    fn request(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.request)
    }

    fn judge(&self, reply: &[u8]) -> Verdict {
        // Decided on the first 14 bytes, whatever the size: the reply cap never
        // gets in the way. Response: int32 size, int32 correlation_id, int16 error_code,
        // int32 count of [api_key, min_version, max_version] entries.
        let Some(size) = be32(reply, 0) else {
            return Verdict::NeedMore;
        };
        let size = size as usize;
        if !(10..=1 << 20).contains(&size) {
            return unexpected(format!("not a kafka response (size {size})"));
        }
        let Some(correlation) = be32(reply, 4) else {
            return Verdict::NeedMore;
        };
        if correlation as i32 != self.correlation_id {
            return unexpected(format!(
                "kafka response for correlation id {}, not ours",
                correlation as i32
            ));
        }
        let (Some(error), Some(count)) = (be16(reply, 8), be32(reply, 10)) else {
            return Verdict::NeedMore;
        };
        let (error, count) = (error as i16, count as i32);
        // Each entry is 6 bytes; the count must fit in the size announced.
        if count < 0 || (count as usize).saturating_mul(6).saturating_add(10) > size {
            return unexpected(format!(
                "kafka response with an impossible api count {count}"
            ));
        }
        match error {
            0 => Verdict::Up {
                info: Some(format!("{count} api keys")),
            },
            UNSUPPORTED_VERSION => Verdict::Up {
                info: Some("broker alive, ApiVersions v0 unsupported (error 35)".into()),
            },
            code => refuses("kafka broker", format!("error {code} {}", error_name(code))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{down, truncated_needs_more, up};
    use super::*;

    fn response(correlation: i32, error: i16, apis: &[(u16, u16, u16)]) -> Vec<u8> {
        let mut body = correlation.to_be_bytes().to_vec();
        body.extend(error.to_be_bytes());
        body.extend((apis.len() as i32).to_be_bytes());
        for (key, min, max) in apis {
            body.extend(key.to_be_bytes());
            body.extend(min.to_be_bytes());
            body.extend(max.to_be_bytes());
        }
        [&(body.len() as u32).to_be_bytes()[..], &body].concat()
    }

    #[test]
    fn the_request_is_api_versions_v0() {
        let k = Kafka::with_correlation_id(0x0102_0304);
        assert_eq!(
            k.request().as_ref(),
            b"\x00\x00\x00\x13\x00\x12\x00\x00\x01\x02\x03\x04\x00\x09portwatch"
        );
        assert_ne!(
            Kafka::new().request(),
            Kafka::new().request(),
            "correlation ids are random"
        );
    }

    #[test]
    fn error_0_is_up_with_the_number_of_apis() {
        let k = Kafka::with_correlation_id(7);
        let reply = response(7, 0, &[(0, 0, 9), (1, 0, 13), (3, 0, 12), (18, 0, 3)]);
        assert_eq!(up(&k, &reply).unwrap(), "4 api keys");
        truncated_needs_more(&k, &reply[..14]);
    }

    #[test]
    fn unsupported_version_is_still_up() {
        let k = Kafka::with_correlation_id(7);
        let info = up(&k, &response(7, 35, &[(18, 0, 3)])).unwrap();
        assert!(info.contains("broker alive"), "{info}");
    }

    #[test]
    fn other_errors_are_down() {
        let k = Kafka::with_correlation_id(7);
        assert_eq!(
            down(&k, &response(7, -1, &[])),
            "kafka broker refuses connections: error -1 UNKNOWN_SERVER_ERROR"
        );
        assert_eq!(
            down(&k, &response(7, 99, &[])),
            "kafka broker refuses connections: error 99 unknown error"
        );
    }

    #[test]
    fn foreign_or_malformed_responses_are_unexpected() {
        let k = Kafka::with_correlation_id(7);
        assert!(down(&k, &response(8, 0, &[])).contains("correlation id 8, not ours"));
        assert!(down(&k, b"\xff\xff\xff\xff").contains("size"));
        assert!(down(&k, b"HTTP/1.1 400").contains("size"));
        let mut lying = response(7, 0, &[(0, 0, 9)]);
        lying[13] = 200;
        assert!(down(&k, &lying).contains("impossible api count 200"));
        let mut negative = response(7, 0, &[]);
        negative[10..14].copy_from_slice(&(-1i32).to_be_bytes());
        assert!(down(&k, &negative).contains("impossible api count -1"));
    }
}
