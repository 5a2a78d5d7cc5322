//! The `Enrollment` gRPC service: trades a one-time token and a CSR for an
//! agent certificate.
//!
//! It runs on the agent port under server-auth TLS (`server_tls`), where a
//! client certificate is optional because an enrolling agent has none yet;
//! the stream handlers on the same port require one. The agent has already
//! checked the CA pin during the handshake when its token arrives here.
//!
//! Order of an enrollment: rate limit per source address, purge expired
//! tokens, check the token (cheap, before any signing), sign the CSR with an
//! identity chosen here, then consume the token and register the agent in one
//! transaction: a certificate is only returned if that transaction committed.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use portwatch_proto::v1::enrollment_server::{Enrollment, EnrollmentServer};
use portwatch_proto::v1::{EnrollRequest, EnrollResponse};
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use crate::agents::{AgentRecord, AgentRegistry};
use crate::ca::{Ca, CaError, DEFAULT_AGENT_CERT_LIFETIME};
use crate::ratelimit::RateLimiter;
use crate::state::{hex, random_bytes, unix_ms};
use crate::token::{RedeemError, TokenStore};

/// Largest Enroll request or response accepted: a CSR is well under 1 KiB and
/// a certificate pair a few KiB.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// What every refused token is told, whatever was wrong with it.
pub const INVALID_TOKEN: &str = "invalid or expired token";
/// Lifetime of the collector's own server certificate.
pub const SERVER_CERT_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// Longest token id or secret looked at; anything longer is not ours.
const MAX_TOKEN_FIELD: usize = 128;

/// Settings of the enrollment service.
#[derive(Debug, Clone)]
pub struct EnrollConfig {
    /// Lifetime of the certificates it issues.
    pub cert_lifetime: Duration,
    /// Attempts allowed per source address per `rate_window`.
    pub rate_limit: u32,
    pub rate_window: Duration,
}

impl Default for EnrollConfig {
    fn default() -> Self {
        EnrollConfig {
            cert_lifetime: DEFAULT_AGENT_CERT_LIFETIME,
            rate_limit: 10,
            rate_window: Duration::from_secs(60),
        }
    }
}

type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// The service. Cheap to clone; clones share their state and counters.
#[derive(Clone)]
pub struct EnrollService {
    inner: Arc<Inner>,
}

struct Inner {
    ca: Arc<Ca>,
    tokens: TokenStore,
    agents: AgentRegistry,
    config: EnrollConfig,
    limiter: RateLimiter<IpAddr>,
    clock: Clock,
    requests: AtomicU64,
}

impl EnrollService {
    pub fn new(
        ca: Arc<Ca>,
        tokens: TokenStore,
        agents: AgentRegistry,
        config: EnrollConfig,
    ) -> EnrollService {
        EnrollService::with_clock(ca, tokens, agents, config, SystemTime::now)
    }

    /// `new` with another wall clock (token expiry is judged by it), for tests.
    pub fn with_clock(
        ca: Arc<Ca>,
        tokens: TokenStore,
        agents: AgentRegistry,
        config: EnrollConfig,
        clock: impl Fn() -> SystemTime + Send + Sync + 'static,
    ) -> EnrollService {
        EnrollService {
            inner: Arc::new(Inner {
                limiter: RateLimiter::new(config.rate_limit, config.rate_window),
                ca,
                tokens,
                agents,
                config,
                clock: Arc::new(clock),
                requests: AtomicU64::new(0),
            }),
        }
    }

    /// Enroll requests received so far (whatever their outcome).
    pub fn requests_seen(&self) -> u64 {
        self.inner.requests.load(Ordering::Relaxed)
    }

    /// The tonic service to add to the agent port's router, with explicit message size limits.
    pub fn into_server(self) -> EnrollmentServer<EnrollService> {
        EnrollmentServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}

#[tonic::async_trait]
impl Enrollment for EnrollService {
    async fn enroll(
        &self,
        request: Request<EnrollRequest>,
    ) -> Result<Response<EnrollResponse>, Status> {
        self.inner.requests.fetch_add(1, Ordering::Relaxed);
        // No address means no TCP (an in-process transport): one shared bucket.
        let source = request
            .remote_addr()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip());
        let req = request.into_inner();
        let token_id = printable(&req.token_id);
        if !self.inner.limiter.allow(&source, Instant::now()) {
            tracing::warn!(token = %token_id, %source, "enrollment rate limited");
            return Err(Status::resource_exhausted(
                "too many enrollment attempts from this address, try again in a minute",
            ));
        }
        tracing::info!(token = %token_id, %source, hostname = %printable(&req.hostname), "enrollment attempt");
        let inner = self.inner.clone();
        let outcome = tokio::task::spawn_blocking(move || inner.enroll(req))
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "enrollment task failed");
                Status::internal("internal error")
            })?;
        match outcome {
            Ok((agent, resp)) => {
                tracing::info!(token = %token_id, %source, agent = %agent.id, name = %agent.name, "agent enrolled");
                Ok(Response::new(resp))
            }
            Err(Refusal::Token(why)) => {
                tracing::warn!(token = %token_id, %source, reason = %why, "enrollment refused");
                Err(Status::permission_denied(INVALID_TOKEN))
            }
            Err(Refusal::Csr(why)) => {
                tracing::warn!(token = %token_id, %source, reason = %why, "enrollment refused: bad csr");
                Err(Status::invalid_argument(why))
            }
            Err(Refusal::Internal(why)) => {
                tracing::error!(token = %token_id, %source, error = %why, "enrollment failed");
                Err(Status::internal("internal error"))
            }
        }
    }
}

enum Refusal {
    Token(String),
    Csr(String),
    Internal(String),
}

impl From<RedeemError> for Refusal {
    fn from(e: RedeemError) -> Self {
        if e.is_invalid_token() {
            Refusal::Token(e.to_string())
        } else {
            Refusal::Internal(e.to_string())
        }
    }
}

impl Inner {
    /// The blocking part: sled and signing.
    fn enroll(&self, req: EnrollRequest) -> Result<(AgentRecord, EnrollResponse), Refusal> {
        if req.token_id.len() > MAX_TOKEN_FIELD || req.token_secret.len() > MAX_TOKEN_FIELD {
            return Err(Refusal::Token("oversized token field".into()));
        }
        let now = (self.clock)();
        self.tokens
            .purge_expired(now)
            .map_err(|e| Refusal::Internal(e.to_string()))?;
        let token = self.tokens.check(&req.token_id, &req.token_secret, now)?;
        let agent_id = new_agent_id(&token.name);
        let issued = self
            .ca
            .issue_agent(&req.csr_der, &agent_id, self.config.cert_lifetime)
            .map_err(|e| match e {
                CaError::BadCsr(_) => Refusal::Csr(e.to_string()),
                e => Refusal::Internal(e.to_string()),
            })?;
        let record = AgentRecord {
            id: agent_id,
            name: token.name.clone(),
            labels: token.labels.clone(),
            enrolled_at_unix_ms: unix_ms(now),
            cert_serial: issued.serial_hex.clone(),
            cert_not_after_unix_ms: unix_ms(issued.not_after),
            revoked: false,
            revoked_at_unix_ms: None,
            hostname: printable(&req.hostname),
            agent_version: printable(&req.agent_version),
            public_region: token.public_region.clone(),
        };
        // The signed certificate is dropped unless this commits.
        let agent =
            self.tokens
                .redeem(&req.token_id, &req.token_secret, now, &self.agents, record)?;
        let resp = EnrollResponse {
            agent_id: agent.id.clone(),
            name: agent.name.clone(),
            labels: agent.labels.clone().into_iter().collect(),
            cert_der: issued.cert_der.to_vec(),
            ca_cert_der: self.ca.cert_der().to_vec(),
            not_after_unix_ms: agent.cert_not_after_unix_ms,
        };
        Ok((agent, resp))
    }
}

/// `<name as an id>-<8 random hex>`: readable in logs, unique, and valid per
/// `ca::validate_agent_id`.
fn new_agent_id(name: &str) -> String {
    let mut base: String = name
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '_' | '-' => c,
            _ => '-',
        })
        .take(40)
        .collect();
    base = base.trim_matches('-').to_owned();
    if base.is_empty() {
        base = "agent".into();
    }
    format!("{base}-{}", hex(&random_bytes::<4>()))
}

/// Untrusted text for a log line: printable, bounded.
fn printable(s: &str) -> String {
    s.chars()
        .take(64)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum ServerTlsError {
    #[error("issuing the collector's server certificate: {0}")]
    Issue(#[from] CaError),
}

/// TLS for the agent port: a fresh server certificate from `ca` for `names`
/// (DNS names or IP addresses), served with the CA certificate in the chain so
/// an enrolling agent finds the CA it pinned. Client certificates from `ca`
/// are verified when presented but optional: enrollment has none, and the
/// stream handlers refuse requests without one.
pub fn server_tls(
    ca: &Ca,
    names: &[String],
) -> Result<tonic::transport::ServerTlsConfig, ServerTlsError> {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    let (issued, key_pem) = ca.issue_server(names, SERVER_CERT_LIFETIME)?;
    let chain = format!("{}{}", issued.cert_pem, ca.cert_pem());
    Ok(ServerTlsConfig::new()
        .identity(Identity::from_pem(chain, key_pem))
        .client_ca_root(Certificate::from_pem(ca.cert_pem()))
        .client_auth_optional(true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_ids_are_valid_whatever_the_name() {
        for name in [
            "bastion-fra-1",
            "Bastion FRA #1",
            "日本",
            "--",
            &"x".repeat(64),
        ] {
            let id = new_agent_id(name);
            crate::ca::validate_agent_id(&id).unwrap();
            assert_ne!(id, new_agent_id(name), "random suffix");
        }
        assert!(new_agent_id("Bastion FRA #1").starts_with("bastion-fra--1-"));
    }
}
