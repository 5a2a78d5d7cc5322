//! Dashboard sign-in: the admin token buys a session, kept in an HttpOnly,
//! SameSite=Strict cookie (Secure when the dashboard is served over https).
//! Only a hash of the session id is kept, in memory: a restart signs
//! everybody out, and a leaked memory dump holds no usable cookie. Forms
//! that change something carry a token derived from the session (CSRF),
//! on top of SameSite.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use subtle::ConstantTimeEq;

pub const COOKIE: &str = "portwatch_session";

/// How long a session lasts after sign-in.
pub const LIFETIME_MS: i64 = 12 * 3_600_000;

/// Sessions kept at most; the oldest goes first beyond it.
const MAX_SESSIONS: usize = 1_000;

fn digest(parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// A signed-in viewer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The token forms must send back.
    pub csrf: String,
}

/// The live sessions.
#[derive(Default)]
pub struct Sessions {
    /// sha256(session id) -> expiry (unix ms).
    live: Mutex<HashMap<[u8; 32], i64>>,
}

impl Sessions {
    /// A new session; returns the cookie value.
    pub fn create(&self, now_ms: i64) -> String {
        let mut id = [0u8; 32];
        rand::rng().fill_bytes(&mut id);
        let value = URL_SAFE_NO_PAD.encode(id);
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.retain(|_, exp| *exp > now_ms);
        if live.len() >= MAX_SESSIONS
            && let Some(oldest) = live.iter().min_by_key(|(_, e)| **e).map(|(k, _)| *k)
        {
            live.remove(&oldest);
        }
        live.insert(digest(&[value.as_bytes()]), now_ms + LIFETIME_MS);
        value
    }

    /// The session of a cookie value, if it is live.
    pub fn check(&self, value: &str, now_ms: i64) -> Option<Session> {
        let key = digest(&[value.as_bytes()]);
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let exp = live.get(&key)?;
        (*exp > now_ms).then(|| Session {
            csrf: csrf_of(value),
        })
    }

    pub fn remove(&self, value: &str) {
        let key = digest(&[value.as_bytes()]);
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
    }
}

/// The CSRF token of a session: derived, so nothing more is stored, and
/// useless without the cookie it came from.
fn csrf_of(value: &str) -> String {
    URL_SAFE_NO_PAD.encode(digest(&[b"portwatch csrf\0", value.as_bytes()]))
}

/// Does a form's token belong to this session?
pub fn csrf_ok(session: &Session, given: &str) -> bool {
    given.len() == session.csrf.len() && bool::from(given.as_bytes().ct_eq(session.csrf.as_bytes()))
}

/// The session cookie's value in a `Cookie` header.
pub fn cookie_value(header: &str) -> Option<&str> {
    header
        .split(';')
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v)
}

/// The `Set-Cookie` value for a new session (or, with `value` empty, one
/// that deletes it).
pub fn set_cookie(value: &str, secure: bool) -> String {
    let age = if value.is_empty() {
        0
    } else {
        LIFETIME_MS / 1000
    };
    format!(
        "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={age}{}",
        if secure { "; Secure" } else { "" }
    )
}

/// Where to go after signing in: a path on this site only (never
/// `//elsewhere` or `https://...`: no open redirect).
pub fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n.starts_with("/\\")
                && !n.chars().any(|c| c.is_control()) =>
        {
            n.to_owned()
        }
        _ => "/".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_lives_until_it_expires_or_signs_out() {
        let s = Sessions::default();
        let v = s.create(1_000);
        let session = s.check(&v, 2_000).unwrap();
        assert!(csrf_ok(&session, &session.csrf));
        assert!(!csrf_ok(&session, "forged"));
        assert!(s.check("not-a-session", 2_000).is_none());
        assert!(s.check(&v, 1_000 + LIFETIME_MS).is_none(), "expired");
        let w = s.create(5_000);
        s.remove(&w);
        assert!(s.check(&w, 5_001).is_none(), "signed out");
        // Another session's token does not pass.
        let x = s.create(6_000);
        let other = s.check(&x, 6_001).unwrap();
        assert!(!csrf_ok(&other, &session.csrf));
    }

    #[test]
    fn the_session_store_is_bounded() {
        let s = Sessions::default();
        let first = s.create(0);
        for i in 1..=MAX_SESSIONS as i64 {
            s.create(i);
        }
        assert!(s.check(&first, 10).is_none(), "the oldest was evicted");
        assert_eq!(s.live.lock().unwrap().len(), MAX_SESSIONS);
    }

    #[test]
    fn cookies_and_redirects() {
        assert_eq!(cookie_value("a=1; portwatch_session=xyz; b=2"), Some("xyz"));
        assert_eq!(cookie_value("a=1"), None);
        let c = set_cookie("v", true);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.ends_with("Secure"));
        assert!(set_cookie("", false).contains("Max-Age=0"));
        assert_eq!(
            safe_next(Some("/monitors/pg?range=7d")),
            "/monitors/pg?range=7d"
        );
        for bad in [
            "//evil.example",
            "https://evil.example",
            "/\\evil",
            "/a\r\nSet-Cookie: x",
        ] {
            assert_eq!(safe_next(Some(bad)), "/", "{bad}");
        }
        assert_eq!(safe_next(None), "/");
    }
}
