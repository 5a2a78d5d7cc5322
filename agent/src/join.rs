//! The join string: everything an agent needs to enroll, on one line.
//!
//! `pwjoin1:` followed by base64url (no padding) of a JSON object
//! `{"addr": "host:port", "token_id": "...", "secret": "...", "pin": "sha256:<hex>"}`:
//! where the collector's agent port is, the one-time token, and the SHA-256
//! of the collector CA's public key, which the agent checks during the TLS
//! handshake before the token leaves the machine.
//!
//! The collector builds it (`JoinString::new(..).encode()`), the agent parses
//! it. Its `Debug` and `Display` never show the secret.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

/// Prefix and format version of a join string.
pub const PREFIX: &str = "pwjoin1:";
/// Longest join string looked at (a real one is ~250 bytes).
const MAX_LEN: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    #[error("the join string is empty")]
    Empty,
    #[error("the join string is longer than {MAX_LEN} bytes")]
    TooLong,
    #[error(
        "this join string has format version {0:?}, this agent understands pwjoin1: upgrade the agent"
    )]
    UnsupportedVersion(String),
    #[error(
        "not a join string (it must start with {PREFIX:?}; copy the last line printed by `portwatch-collector token create`)"
    )]
    WrongPrefix,
    #[error("the join string is damaged (not base64url after {PREFIX:?}): {0}")]
    BadBase64(String),
    #[error("the join string is damaged (not the expected JSON inside): {0}")]
    BadJson(String),
    #[error("the join string has no {0:?} field")]
    MissingField(&'static str),
    #[error("the join string's collector address {0:?} is not host:port")]
    BadAddr(String),
    #[error("the join string's token {0}")]
    BadToken(&'static str),
    #[error("the join string's pin {0:?} is not sha256: followed by 64 hex digits")]
    BadPin(String),
}

/// A parsed, checked join string.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinString {
    addr: String,
    token_id: String,
    secret: String,
    pin: String,
}

/// The JSON inside; every field optional so a missing one is named in the error.
#[derive(Serialize, Deserialize)]
struct Wire {
    addr: Option<String>,
    token_id: Option<String>,
    secret: Option<String>,
    pin: Option<String>,
}

impl JoinString {
    /// Builds a join string from its parts, checking each.
    pub fn new(
        addr: impl Into<String>,
        token_id: impl Into<String>,
        secret: impl Into<String>,
        pin: impl Into<String>,
    ) -> Result<JoinString, JoinError> {
        let addr = addr.into();
        split_host_port(&addr).ok_or_else(|| JoinError::BadAddr(addr.clone()))?;
        let token_id = token_id.into();
        let secret = secret.into();
        if token_id.is_empty()
            || token_id.len() > 128
            || !token_id.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(JoinError::BadToken("id is not 1-128 printable characters"));
        }
        if secret.is_empty() || secret.len() > 128 || !secret.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(JoinError::BadToken(
                "secret is not 1-128 printable characters",
            ));
        }
        let pin = pin.into();
        let hex = pin
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| JoinError::BadPin(pin.clone()))?;
        Ok(JoinString {
            addr,
            token_id,
            secret,
            pin: format!("sha256:{}", hex.to_ascii_lowercase()),
        })
    }

    /// Parses a join string (surrounding whitespace ignored).
    pub fn parse(s: &str) -> Result<JoinString, JoinError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(JoinError::Empty);
        }
        if s.len() > MAX_LEN {
            return Err(JoinError::TooLong);
        }
        let Some(body) = s.strip_prefix(PREFIX) else {
            // `pwjoin2:...` is a join string from a newer collector, not garbage.
            if let Some((head, _)) = s.split_once(':')
                && let Some(v) = head.strip_prefix("pwjoin")
                && !v.is_empty()
                && v.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(JoinError::UnsupportedVersion(format!("pwjoin{v}")));
            }
            return Err(JoinError::WrongPrefix);
        };
        let json = URL_SAFE_NO_PAD
            .decode(body.trim_end_matches('='))
            .map_err(|e| JoinError::BadBase64(e.to_string()))?;
        let wire: Wire =
            serde_json::from_slice(&json).map_err(|e| JoinError::BadJson(e.to_string()))?;
        JoinString::new(
            wire.addr.ok_or(JoinError::MissingField("addr"))?,
            wire.token_id.ok_or(JoinError::MissingField("token_id"))?,
            wire.secret.ok_or(JoinError::MissingField("secret"))?,
            wire.pin.ok_or(JoinError::MissingField("pin"))?,
        )
    }

    /// The one-line form to hand to `portwatch-agent enroll`. Contains the secret.
    pub fn encode(&self) -> String {
        let wire = Wire {
            addr: Some(self.addr.clone()),
            token_id: Some(self.token_id.clone()),
            secret: Some(self.secret.clone()),
            pin: Some(self.pin.clone()),
        };
        let json = serde_json::to_vec(&wire).expect("a join string serializes");
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(json))
    }

    /// The collector's agent address, `host:port`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Host and port of `addr` (IPv6 without brackets).
    pub fn host_port(&self) -> (&str, u16) {
        split_host_port(&self.addr).expect("checked in new")
    }

    pub fn token_id(&self) -> &str {
        &self.token_id
    }

    /// The token secret: send it only to a collector that proved the pin.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// `sha256:<64 lowercase hex>` of the collector CA's SubjectPublicKeyInfo.
    pub fn pin(&self) -> &str {
        &self.pin
    }
}

/// `host:port`, `[v6]:port`; the host non-empty, the port non-zero.
pub(crate) fn split_host_port(addr: &str) -> Option<(&str, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    let host = match host.strip_prefix('[') {
        Some(h) => h
            .strip_suffix(']')
            .filter(|h| h.parse::<std::net::Ipv6Addr>().is_ok())?,
        None if host.contains(':') => return None,
        None => host,
    };
    let ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'));
    ok.then_some((host, port))
}

impl FromStr for JoinString {
    type Err = JoinError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JoinString::parse(s)
    }
}

impl fmt::Debug for JoinString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinString")
            .field("addr", &self.addr)
            .field("token_id", &self.token_id)
            .field("secret", &"<redacted>")
            .field("pin", &self.pin)
            .finish()
    }
}

/// A description for messages, without the secret.
impl fmt::Display for JoinString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "join string for collector {} (token {}, CA pin {})",
            self.addr, self.token_id, self.pin
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIN: &str = "sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    fn b64(json: &str) -> String {
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(json))
    }

    #[test]
    fn round_trips_and_never_shows_the_secret() {
        let j = JoinString::new(
            "collector.example:7443",
            "0123456789abcdef",
            "s3cr3t-Value_x",
            PIN,
        )
        .unwrap();
        let line = j.encode();
        assert!(line.starts_with("pwjoin1:") && !line.contains(char::is_whitespace));
        let back: JoinString = format!("  {line}\n").parse().unwrap();
        assert_eq!(back, j);
        assert_eq!(back.host_port(), ("collector.example", 7443));
        assert_eq!(back.secret(), "s3cr3t-Value_x");
        for shown in [format!("{back:?}"), format!("{back}"), format!("{back:#?}")] {
            assert!(!shown.contains("s3cr3t"), "{shown}");
            assert!(shown.contains("0123456789abcdef"), "{shown}");
        }
        let v6 = JoinString::new(
            "[::1]:7443",
            "a",
            "b",
            PIN.to_uppercase().replace("SHA256", "sha256"),
        )
        .unwrap();
        assert_eq!(v6.host_port(), ("::1", 7443));
        assert_eq!(v6.pin(), PIN, "hex normalized to lowercase");
    }

    #[test]
    fn garbage_gets_an_error_that_says_what_is_wrong() {
        let full = r#"{"addr":"h:1","token_id":"t","secret":"s","pin":"PIN"}"#.replace("PIN", PIN);
        let cases: Vec<(String, JoinError)> = vec![
            ("".into(), JoinError::Empty),
            ("   \n".into(), JoinError::Empty),
            ("hello world".into(), JoinError::WrongPrefix),
            ("pwjoin:abc".into(), JoinError::WrongPrefix),
            (full.clone(), JoinError::WrongPrefix),
            (
                "pwjoin2:abc".into(),
                JoinError::UnsupportedVersion("pwjoin2".into()),
            ),
            ("x".repeat(5000), JoinError::TooLong),
        ];
        for (input, want) in cases {
            assert_eq!(JoinString::parse(&input).unwrap_err(), want, "{input:.40}");
        }
        let err = |s: &str| JoinString::parse(s).unwrap_err();
        assert!(matches!(
            err("pwjoin1:!!!not base64"),
            JoinError::BadBase64(_)
        ));
        assert!(matches!(err(&b64("not json")), JoinError::BadJson(_)));
        assert!(matches!(err(&b64("[1,2]")), JoinError::BadJson(_)));
        for field in ["addr", "token_id", "secret", "pin"] {
            let mut v: serde_json::Value = serde_json::from_str(&full).unwrap();
            v.as_object_mut().unwrap().remove(field);
            assert_eq!(err(&b64(&v.to_string())), JoinError::MissingField(field));
        }
        for pin in ["md5:abcd", "sha256:xyz", "sha256:0011", &PIN[7..]] {
            let s = full.replace(PIN, pin);
            assert!(matches!(err(&b64(&s)), JoinError::BadPin(_)), "{pin}");
        }
        for addr in [
            "nohost",
            ":7443",
            "h:0",
            "h:99999",
            "::1:7443",
            "[nothex]:1",
            "a b:1",
        ] {
            let s = full.replace("h:1", addr);
            assert!(matches!(err(&b64(&s)), JoinError::BadAddr(_)), "{addr}");
        }
        assert!(matches!(
            err(&b64(&full.replace(r#""t""#, r#""""#))),
            JoinError::BadToken(_)
        ));
        // Messages name the problem in words a user can act on.
        assert!(JoinError::WrongPrefix.to_string().contains("token create"));
        assert!(
            JoinError::MissingField("pin")
                .to_string()
                .contains("\"pin\"")
        );
    }
}
