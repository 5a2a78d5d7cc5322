//! TLS on any TCP port: direct, or STARTTLS for smtp/imap/pop3.
//!
//! `negotiate` takes a connected stream, runs the STARTTLS dialogue when the
//! options ask for one (`tls/starttls.rs`), then a rustls handshake with a
//! cached client config (`tls/verify.rs`). It reports the handshake time, the
//! protocol version and the leaf certificate's expiry, subject and issuer, the
//! latter even when verification fails, and judges the certificate:
//!
//! - expired: down `cert_expired` (`cert_days_left` negative);
//! - fewer than `expiring_days` days left: degraded `cert_expiring`, and the
//!   stream is returned so the conversation can still run;
//! - not trusted, wrong name, not yet valid, alerts, non-TLS replies: down `tls_error`;
//! - reset or closed mid-handshake: `reset`; no handshake by the deadline: `timeout`.
//!
//! After a successful STARTTLS upgrade this module says goodbye itself (QUIT or
//! LOGOUT through the tunnel, best effort): the caller has no conversation to
//! run there and only closes the TLS session.

mod starttls;
mod verify;

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::{CertificateError, ProtocolVersion};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use x509_parser::extensions::GeneralName;

use super::ProbeCtx;
use crate::check::{StartTls, TlsOptions};
use crate::result::{CheckResult, Reason, Status, escape_excerpt, micros};

const SECONDS_PER_DAY: i64 = 86_400;
/// How many certificate names a mismatch message lists.
const NAMES_SHOWN: usize = 5;

/// Upgrades `stream` to TLS as `opts` says, filling the `tls` phase, certificate
/// details and, on failure or an expiring certificate, the verdict into `r`.
/// Returns the TLS stream when the check should go on.
pub async fn negotiate(
    mut stream: TcpStream,
    opts: &TlsOptions,
    ctx: &ProbeCtx<'_>,
    r: &mut CheckResult,
) -> Option<TlsStream<TcpStream>> {
    if let Some(dialect) = opts.starttls
        && let Err(f) =
            starttls::upgrade(&mut stream, dialect, ctx.deadline, Instant::now(), r).await
    {
        set(r, Status::Down, f.reason, f.message);
        return None;
    }
    let config = match verify::client_config(opts).await {
        Ok(c) => c,
        Err(why) => {
            set(r, Status::Down, Reason::Internal, why);
            return None;
        }
    };
    // An IP literal becomes `ServerName::IpAddress`: no SNI is sent and the
    // certificate must carry that address as an IP SAN.
    let name = match ServerName::try_from(ctx.server_name.to_owned()) {
        Ok(n) => n,
        Err(e) => {
            set(
                r,
                Status::Down,
                Reason::Internal,
                format!("tls server name {:?}: {e}", ctx.server_name),
            );
            return None;
        }
    };
    let start = Instant::now();
    let handshake = tokio::time::timeout_at(
        ctx.deadline,
        TlsConnector::from(config).connect(name, stream),
    );
    let (outcome, leaf) = verify::capture_leaf(handshake).await;
    let took = start.elapsed();

    let mut leaf = leaf;
    if let Ok(Ok(tls)) = &outcome {
        // The verifier always sees the leaf of a full handshake; this is a fallback only.
        if leaf.is_none() {
            leaf = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.clone().into_owned());
        }
    }
    let now = unix_now();
    let cert = leaf.as_ref().map(CertFacts::parse);
    if let Some(Ok(c)) = &cert {
        r.details.cert_days_left = Some(c.days_left(now));
        r.details.cert_not_after_unix = Some(c.not_after);
        r.details.cert_subject = Some(c.subject.clone());
        r.details.cert_issuer = Some(c.issuer.clone());
    }
    let (cert, unreadable) = match cert {
        Some(Ok(c)) => (Some(c), None),
        Some(Err(why)) => (None, Some(why)),
        None => (None, None),
    };

    let mut tls = match outcome {
        Err(_) => {
            let message = match &cert {
                Some(_) => {
                    "tls handshake did not finish before the timeout (the certificate was received)"
                }
                None => "tls handshake did not finish before the timeout",
            };
            set(r, Status::Down, Reason::Timeout, message.to_owned());
            return None;
        }
        Ok(Err(e)) => {
            let (reason, message) = match cert.as_ref().filter(|c| c.is_expired(now)) {
                // Whatever else is wrong, an expired certificate is what the user must fix first.
                Some(c) => (Reason::CertExpired, c.expired_message(now)),
                None => classify(&e, cert.as_ref(), ctx.server_name, opts).await,
            };
            set(r, Status::Down, reason, message);
            return None;
        }
        Ok(Ok(tls)) => tls,
    };

    r.phases.tls = Some(micros(took));
    r.details.tls_version = tls.get_ref().1.protocol_version().map(version_name);
    let verdict = match (&cert, unreadable) {
        (Some(c), _) if c.is_expired(now) => {
            Some((Status::Down, Reason::CertExpired, c.expired_message(now)))
        }
        (Some(c), _) if c.days_left(now) < i64::from(opts.expiring_days) => Some((
            Status::Degraded,
            Reason::CertExpiring,
            c.expiring_message(now, opts.expiring_days),
        )),
        (Some(_), _) => None,
        // Expiry is what the check is for: a certificate it cannot read is a failure.
        (None, Some(why)) => Some((
            Status::Down,
            Reason::TlsError,
            format!("the server's certificate could not be read: {why}"),
        )),
        (None, None) => Some((
            Status::Down,
            Reason::TlsError,
            "the server presented no certificate".to_owned(),
        )),
    };
    if let Some((status, reason, message)) = verdict {
        set(r, status, reason, message);
        if status == Status::Down {
            let _ = tokio::time::timeout(starttls::FAREWELL_TIMEOUT, tls.shutdown()).await;
            return None;
        }
    }
    if let Some(dialect) = opts.starttls {
        // The caller runs no conversation after STARTTLS; end the session politely.
        let _ = tokio::time::timeout(
            starttls::FAREWELL_TIMEOUT,
            tls.write_all(starttls::farewell(dialect)),
        )
        .await;
    }
    Some(tls)
}

/// Runs only the plaintext STARTTLS dialogue on any stream, leaving the
/// verdict in `r` (down on failure, untouched when the server agreed): the
/// entry point of the fuzz target for its reply parsers (`tests/fuzz`).
#[doc(hidden)]
pub async fn starttls_dialogue<S>(
    stream: &mut S,
    dialect: StartTls,
    deadline: Instant,
    r: &mut CheckResult,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if let Err(f) = starttls::upgrade(stream, dialect, deadline, Instant::now(), r).await {
        set(r, Status::Down, f.reason, f.message);
    }
}

fn set(r: &mut CheckResult, status: Status, reason: Reason, message: String) {
    r.status = status;
    r.reason = reason;
    r.message = message;
}

fn unix_now() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

fn version_name(v: ProtocolVersion) -> String {
    match v {
        ProtocolVersion::TLSv1_3 => "TLSv1.3".to_owned(),
        ProtocolVersion::TLSv1_2 => "TLSv1.2".to_owned(),
        other => format!("{other:?}"),
    }
}

/// Sorts a failed handshake into the taxonomy with a message saying which failure it was.
async fn classify(
    e: &std::io::Error,
    cert: Option<&CertFacts>,
    server_name: &str,
    opts: &TlsOptions,
) -> (Reason, String) {
    let Some(err) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        let reason = Reason::from_io(e);
        let message = match (reason, e.kind()) {
            (Reason::Reset, std::io::ErrorKind::UnexpectedEof) => {
                "the server closed the connection during the tls handshake".to_owned()
            }
            (Reason::Reset, _) => format!("connection reset during the tls handshake: {e}"),
            _ => format!("tls handshake: {e}"),
        };
        let reason = if reason == Reason::Internal {
            Reason::TlsError
        } else {
            reason
        };
        return (reason, message);
    };
    let message = match err {
        rustls::Error::InvalidCertificate(ce) => {
            if matches!(
                ce,
                CertificateError::Expired | CertificateError::ExpiredContext { .. }
            ) {
                return (Reason::CertExpired, "certificate expired".to_owned());
            }
            let mut m = describe_certificate_error(ce, cert, server_name);
            if *ce == CertificateError::UnknownIssuer
                && opts.verify
                && opts.ca.is_none()
                && verify::system_roots_missing().await
            {
                m.push_str(" (this host has no trusted root certificates)");
            }
            m
        }
        rustls::Error::AlertReceived(alert) => format!("server sent an alert: {alert:?}"),
        rustls::Error::InvalidMessage(m) => {
            format!("the server did not answer with tls ({m:?}): the port may not speak tls")
        }
        rustls::Error::PeerIncompatible(p) => format!("server is incompatible: {p:?}"),
        rustls::Error::PeerMisbehaved(p) => format!("server misbehaved: {p:?}"),
        rustls::Error::NoCertificatesPresented => "the server presented no certificate".to_owned(),
        other => format!("tls handshake failed: {other}"),
    };
    (Reason::TlsError, message)
}

fn describe_certificate_error(
    ce: &CertificateError,
    cert: Option<&CertFacts>,
    server_name: &str,
) -> String {
    let issuer = cert
        .map(|c| format!(" (issuer: {})", c.issuer))
        .unwrap_or_default();
    match ce {
        CertificateError::UnknownIssuer => {
            format!("certificate not trusted: UnknownIssuer{issuer}")
        }
        CertificateError::BadSignature => format!("certificate not trusted: BadSignature{issuer}"),
        CertificateError::Revoked => "certificate revoked".to_owned(),
        // rustls' own list of presented names is Debug text (`DnsName("a.test")`):
        // the names parsed from the leaf read better and are preferred.
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            match (cert, ce) {
                (Some(c), _) => name_mismatch(&c.names, Some(&c.subject), server_name),
                (None, CertificateError::NotValidForNameContext { presented, .. }) => {
                    let names: Vec<String> = presented
                        .iter()
                        .map(|n| escape_excerpt(n.as_bytes(), 100))
                        .collect();
                    name_mismatch(&names, None, server_name)
                }
                (None, _) => name_mismatch(&[], None, server_name),
            }
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => match cert {
            Some(c) => format!(
                "certificate not yet valid (valid from {})",
                c.not_before_date
            ),
            None => "certificate not yet valid".to_owned(),
        },
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            "certificate is not valid for server authentication".to_owned()
        }
        other => format!("certificate rejected: {other:?}"),
    }
}

fn name_mismatch(names: &[String], subject: Option<&str>, server_name: &str) -> String {
    let server_name = escape_excerpt(server_name.as_bytes(), 100);
    if names.is_empty() {
        // Verifiers ignore the subject's CN; saying so explains a "valid-looking" certificate.
        return match subject {
            Some(s) => format!(
                "name mismatch: the certificate has no dns or ip names (subject {s}), not {server_name}"
            ),
            None => {
                format!("name mismatch: the certificate has no dns or ip names, not {server_name}")
            }
        };
    }
    let mut shown = names
        .iter()
        .take(NAMES_SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > NAMES_SHOWN {
        shown.push_str(&format!(" and {} more", names.len() - NAMES_SHOWN));
    }
    format!("name mismatch: certificate is for {shown}, not {server_name}")
}

/// What the report needs from a leaf certificate, parsed once.
struct CertFacts {
    not_after: i64,
    not_after_date: String,
    not_before_date: String,
    subject: String,
    issuer: String,
    /// DNS and IP subject alternative names, escaped.
    names: Vec<String>,
}

impl CertFacts {
    fn parse(der: &CertificateDer<'_>) -> Result<CertFacts, String> {
        let (_, cert) =
            x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| e.to_string())?;
        let validity = cert.validity();
        let names = match cert.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(escape_excerpt(d.as_bytes(), 100)),
                    GeneralName::IPAddress(b) => ip_from_san(b).map(|ip| ip.to_string()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        Ok(CertFacts {
            not_after: validity.not_after.timestamp(),
            not_after_date: validity.not_after.to_datetime().date().to_string(),
            not_before_date: validity.not_before.to_datetime().date().to_string(),
            subject: escape_excerpt(cert.subject().to_string().as_bytes(), 200),
            issuer: escape_excerpt(cert.issuer().to_string().as_bytes(), 200),
            names,
        })
    }

    /// Whole days until notAfter, rounded down: 0 on the last day, negative once expired.
    fn days_left(&self, now: i64) -> i64 {
        self.not_after
            .saturating_sub(now)
            .div_euclid(SECONDS_PER_DAY)
    }

    /// notAfter is the last valid second (RFC 5280 4.1.2.5).
    fn is_expired(&self, now: i64) -> bool {
        now > self.not_after
    }

    fn expired_message(&self, now: i64) -> String {
        let ago = -self.days_left(now);
        let unit = if ago == 1 { "day" } else { "days" };
        format!(
            "certificate expired on {} ({ago} {unit} ago)",
            self.not_after_date
        )
    }

    fn expiring_message(&self, now: i64, threshold: u32) -> String {
        let left = match self.days_left(now) {
            0 => "within a day".to_owned(),
            1 => "in 1 day".to_owned(),
            n => format!("in {n} days"),
        };
        format!(
            "certificate expires {left} (on {}), below the {threshold}-day threshold",
            self.not_after_date
        )
    }
}

fn ip_from_san(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => <[u8; 4]>::try_from(b).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(b).ok().map(IpAddr::from),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(not_after: i64) -> CertFacts {
        CertFacts {
            not_after,
            not_after_date: "2030-01-01".into(),
            not_before_date: "2020-01-01".into(),
            subject: "CN=x".into(),
            issuer: "CN=ca".into(),
            names: vec!["x.test".into()],
        }
    }

    #[test]
    fn days_left_round_down_and_go_negative_once_expired() {
        let now = 1_000_000_000;
        assert_eq!(facts(now + 5 * SECONDS_PER_DAY + 3600).days_left(now), 5);
        assert_eq!(facts(now + 5 * SECONDS_PER_DAY - 1).days_left(now), 4);
        assert_eq!(facts(now + 3600).days_left(now), 0);
        assert!(
            !facts(now).is_expired(now),
            "notAfter itself is still valid"
        );
        assert!(facts(now - 1).is_expired(now));
        assert_eq!(facts(now - 1).days_left(now), -1);
        assert_eq!(facts(now - 3 * SECONDS_PER_DAY).days_left(now), -3);
    }

    #[test]
    fn mismatch_messages_list_a_bounded_number_of_names() {
        let names: Vec<String> = (0..8).map(|i| format!("n{i}.test")).collect();
        let m = name_mismatch(&names, None, "other.test");
        assert_eq!(
            m,
            "name mismatch: certificate is for n0.test, n1.test, n2.test, n3.test, n4.test and 3 more, not other.test"
        );
        assert_eq!(
            name_mismatch(&[], Some("CN=a.test"), "a.test"),
            "name mismatch: the certificate has no dns or ip names (subject CN=a.test), not a.test"
        );
    }

    #[test]
    fn san_ip_addresses_are_decoded() {
        assert_eq!(
            ip_from_san(&[127, 0, 0, 1]),
            Some("127.0.0.1".parse().unwrap())
        );
        let mut v6 = [0u8; 16];
        v6[15] = 1;
        assert_eq!(ip_from_san(&v6), Some("::1".parse().unwrap()));
        assert_eq!(ip_from_san(&[1, 2, 3]), None);
    }
}
