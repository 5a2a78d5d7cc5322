//! Agent-side enrollment: `portwatch-agent enroll '<join string>'`.
//!
//! 1. Generate an ECDSA P-256 key here and write it (mode 0600, fsynced) before
//!    any byte goes to the network; only a CSR leaves the machine.
//! 2. Connect with TLS to the join string's address. The certificate verifier
//!    (`PinnedVerifier`) requires the server's chain to contain a certificate
//!    whose public key hashes to the pin, and verifies the leaf against that
//!    certificate as the only trust anchor, for the host of the address. A
//!    mismatch aborts the handshake, so the token is never sent to a server
//!    that cannot prove it belongs to the collector's CA.
//! 3. Send token + CSR over that connection (a tonic channel on the already
//!    verified stream), check the answer (the certificate is for our key, the
//!    CA is the pinned one) and write `agent.pem`, `ca.pem`, `agent.json`.
//!
//! The new key is kept as `agent.key.new` until the certificate arrives, so a
//! failed `--force` re-enrollment leaves the previous identity working.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use hyper_util::rt::TokioIo;
use portwatch_proto::v1::EnrollRequest;
use portwatch_proto::v1::enrollment_client::EnrollmentClient;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{CertificateError, DigitallySignedStruct, OtherError, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::identity::{
    AgentIdentity, AgentInfo, CA_FILE, CERT_FILE, INFO_FILE, KEY_FILE, cert_to_pem, uri_ids,
    write_atomic,
};
use crate::join::JoinString;

/// Largest Enroll answer accepted (a certificate pair is a few KiB).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Where the new key waits for its certificate.
const PENDING_KEY_FILE: &str = "agent.key.new";

/// The identity an enrollment produced, as loaded back from disk.
pub type EnrolledIdentity = AgentIdentity;

/// How to enroll.
#[derive(Debug, Clone)]
pub struct EnrollOptions {
    /// Replace an existing identity in the data dir.
    pub force: bool,
    /// TCP connect plus TLS handshake.
    pub connect_timeout: Duration,
    /// The Enroll call itself.
    pub request_timeout: Duration,
    /// Host name reported to the collector for display; default: this machine's.
    pub hostname: Option<String>,
}

impl Default for EnrollOptions {
    fn default() -> Self {
        EnrollOptions {
            force: false,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            hostname: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error(
        "{dir} already holds an agent identity; pass --force to replace it (the old certificate stops being used)"
    )]
    AlreadyEnrolled { dir: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{dir} belongs to another user and its files cannot be given to it: {source}; enroll as root or as that user (e.g. sudo -u portwatch-agent)"
    )]
    Ownership {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("generating the agent key: {0}")]
    Key(String),
    #[error("cannot reach the collector at {addr}: {why}")]
    Unreachable { addr: String, why: String },
    #[error(
        "the collector's CA does not match the pin in the join string: {addr} presented {found}, the join string expects {expected}; the token was not sent (is the join string for this collector?)"
    )]
    PinMismatch {
        addr: String,
        expected: String,
        found: String,
    },
    #[error("TLS with the collector at {addr} failed: {why}; the token was not sent")]
    Tls { addr: String, why: String },
    #[error("token rejected: {0}; ask for a new join string (`portwatch-collector token create`)")]
    TokenRejected(String),
    #[error("the collector is rate limiting enrollments: {0}")]
    RateLimited(String),
    #[error("the collector refused the enrollment ({code:?}): {message}")]
    Rejected { code: tonic::Code, message: String },
    #[error("the collector's answer is not usable: {0}")]
    BadResponse(String),
}

/// Enrolls this agent with the collector named in `join`, writing its
/// identity into `data_dir` (created mode 0700 if missing). Refuses to
/// replace an existing identity unless `opts.force`.
pub async fn enroll(
    join: &JoinString,
    data_dir: &Path,
    opts: &EnrollOptions,
) -> Result<EnrolledIdentity, EnrollError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| EnrollError::Io { path, source }
    };
    if AgentIdentity::exists(data_dir) && !opts.force {
        return Err(EnrollError::AlreadyEnrolled {
            dir: data_dir.to_owned(),
        });
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .map_err(io(data_dir))?;

    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| EnrollError::Key(e.to_string()))?;
    let pending = data_dir.join(PENDING_KEY_FILE);
    write_atomic(&pending, key.serialize_pem().as_bytes(), 0o600).map_err(io(&pending))?;
    // Settled before the token leaves: a failure here must not spend it.
    let owner = match adopt_dir_owner(data_dir, &pending) {
        Ok(owner) => owner,
        Err(source) => {
            let _ = fs::remove_file(&pending);
            return Err(EnrollError::Ownership {
                dir: data_dir.to_owned(),
                source,
            });
        }
    };

    let result = enroll_with_key(join, data_dir, opts, &key, &pending, owner).await;
    if result.is_err() {
        let _ = fs::remove_file(&pending);
    }
    result
}

async fn enroll_with_key(
    join: &JoinString,
    data_dir: &Path,
    opts: &EnrollOptions,
    key: &rcgen::KeyPair,
    pending: &Path,
    owner: Option<Owner>,
) -> Result<EnrolledIdentity, EnrollError> {
    let hostname = opts.hostname.clone().unwrap_or_else(system_hostname);
    let csr = build_csr(key, &hostname)?;
    let stream = connect_pinned(join, opts.connect_timeout).await?;

    let addr = join.addr().to_owned();
    let unreachable = |why: String| EnrollError::Unreachable {
        addr: addr.clone(),
        why,
    };
    // The URI only fills the :authority header: the connection is ours.
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .or_else(|_| tonic::transport::Endpoint::from_shared("http://collector"))
        .map_err(|e| unreachable(e.to_string()))?
        .timeout(opts.request_timeout);
    let channel = endpoint
        .connect_with_connector(Preconnected(Arc::new(Mutex::new(Some(stream)))))
        .await
        .map_err(|e| unreachable(error_chain(&e)))?;
    let mut client = EnrollmentClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let request = EnrollRequest {
        token_id: join.token_id().to_owned(),
        token_secret: join.secret().to_owned(),
        csr_der: csr,
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        hostname,
    };
    let call = tokio::time::timeout(opts.request_timeout, client.enroll(request));
    let resp = match call.await {
        Err(_) => return Err(unreachable("no answer to the enrollment request".into())),
        Ok(Err(status)) => return Err(refused(status, &addr)),
        Ok(Ok(resp)) => resp.into_inner(),
    };

    // Check everything before writing anything.
    let bad = EnrollError::BadResponse;
    let (_, cert) = x509_parser::parse_x509_certificate(&resp.cert_der)
        .map_err(|e| bad(format!("the certificate does not parse: {e}")))?;
    if rcgen::PublicKeyData::subject_public_key_info(key) != cert.tbs_certificate.subject_pki.raw {
        return Err(bad(
            "the certificate is not for the key this agent generated".into(),
        ));
    }
    if uri_ids(&cert) != [resp.agent_id.as_str()] {
        return Err(bad(format!(
            "the certificate does not carry the identity {}",
            resp.agent_id
        )));
    }
    let ca_pin = pin_of_cert(&resp.ca_cert_der)
        .ok_or_else(|| bad("the CA certificate does not parse".into()))?;
    if ca_pin != join.pin() {
        return Err(bad(format!(
            "the collector sent a CA ({ca_pin}) other than the pinned one"
        )));
    }

    let info = AgentInfo {
        collector_addr: addr,
        agent_id: resp.agent_id,
        name: resp.name,
        labels: resp.labels.into_iter().collect(),
        enrolled_at_unix_ms: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
    };
    let info_json = serde_json::to_vec_pretty(&info).expect("agent info serializes");
    let files: [(&str, Vec<u8>, u32); 3] = [
        (CERT_FILE, cert_to_pem(&resp.cert_der).into_bytes(), 0o644),
        (CA_FILE, cert_to_pem(&resp.ca_cert_der).into_bytes(), 0o644),
        (INFO_FILE, info_json, 0o644),
    ];
    for (name, body, mode) in files {
        let path = data_dir.join(name);
        write_atomic(&path, &body, mode).map_err(io_err(&path))?;
        if let Some(owner) = owner {
            owner.give(&path).map_err(io_err(&path))?;
        }
    }
    let key_path = data_dir.join(KEY_FILE);
    fs::rename(pending, &key_path).map_err(io_err(&key_path))?;
    fs::File::open(data_dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(data_dir))?;
    tracing::info!(agent = %info.agent_id, name = %info.name, collector = %info.collector_addr, "enrolled");
    AgentIdentity::load(data_dir).map_err(|e| EnrollError::BadResponse(e.to_string()))
}

/// The user and group the identity files must belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Owner {
    uid: u32,
    gid: u32,
}

impl Owner {
    fn give(self, path: &Path) -> std::io::Result<()> {
        std::os::unix::fs::lchown(path, Some(self.uid), Some(self.gid))
    }
}

/// When the data dir belongs to someone other than the files this process
/// creates (root enrolling into the package's `/var/lib/portwatch-agent`,
/// which belongs to the `portwatch-agent` service user), gives `probe` (a
/// file just created there) to the dir's owner and returns that owner, so
/// every identity file can follow and the service can read its own key.
/// `None` when the dir is this process's own.
fn adopt_dir_owner(data_dir: &Path, probe: &Path) -> std::io::Result<Option<Owner>> {
    use std::os::unix::fs::MetadataExt;
    let dir = fs::metadata(data_dir)?;
    let file = fs::symlink_metadata(probe)?;
    // Only another user's dir: an owner whose dir has some other group keeps it.
    if dir.uid() == file.uid() {
        return Ok(None);
    }
    let owner = Owner {
        uid: dir.uid(),
        gid: dir.gid(),
    };
    owner.give(probe)?;
    Ok(Some(owner))
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> EnrollError {
    let path = path.to_owned();
    move |source| EnrollError::Io { path, source }
}

/// The CSR carries the host name (subject and, when it is a valid DNS name,
/// a SAN) for the operator's eyes; the collector replaces both.
fn build_csr(key: &rcgen::KeyPair, hostname: &str) -> Result<Vec<u8>, EnrollError> {
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, hostname);
    if let Ok(dns) = hostname.to_owned().try_into() {
        params.subject_alt_names.push(rcgen::SanType::DnsName(dns));
    }
    let csr = params
        .serialize_request(key)
        .map_err(|e| EnrollError::Key(format!("building the certificate request: {e}")))?;
    Ok(csr.der().to_vec())
}

fn system_hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

fn refused(status: tonic::Status, addr: &str) -> EnrollError {
    let message = status.message().to_owned();
    match status.code() {
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => {
            EnrollError::TokenRejected(message)
        }
        tonic::Code::ResourceExhausted => EnrollError::RateLimited(message),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::DeadlineExceeded => {
            EnrollError::Unreachable {
                addr: addr.to_owned(),
                why: format!("{message} ({})", error_chain(&status)),
            }
        }
        code => EnrollError::Rejected { code, message },
    }
}

/// TCP connect and TLS handshake with the pinned verifier.
async fn connect_pinned(
    join: &JoinString,
    timeout: Duration,
) -> Result<TlsStream<TcpStream>, EnrollError> {
    let addr = join.addr().to_owned();
    let (host, port) = join.host_port();
    let server_name = ServerName::try_from(host.to_owned()).map_err(|e| EnrollError::Tls {
        addr: addr.clone(),
        why: format!("{host:?} is not a valid server name: {e}"),
    })?;
    let unreachable = |why: String| EnrollError::Unreachable {
        addr: addr.clone(),
        why,
    };
    let tcp = tokio::time::timeout(timeout, TcpStream::connect((host, port)))
        .await
        .map_err(|_| unreachable(format!("no answer within {} ms", timeout.as_millis())))?
        .map_err(|e| unreachable(e.to_string()))?;
    let _ = tcp.set_nodelay(true);

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(PinnedVerifier {
        pin: join.pin().to_owned(),
        provider: provider.clone(),
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| EnrollError::Tls {
            addr: addr.clone(),
            why: e.to_string(),
        })?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    match tokio::time::timeout(timeout, connector.connect(server_name, tcp)).await {
        Err(_) => Err(unreachable(format!(
            "no TLS handshake within {} ms",
            timeout.as_millis()
        ))),
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(classify_handshake(e, join)),
    }
}

fn classify_handshake(e: std::io::Error, join: &JoinString) -> EnrollError {
    let addr = join.addr().to_owned();
    let rustls_err = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    if let Some(rustls::Error::InvalidCertificate(CertificateError::Other(other))) = rustls_err
        && let Some(m) = other.0.downcast_ref::<PinMismatch>()
    {
        return EnrollError::PinMismatch {
            addr,
            expected: join.pin().to_owned(),
            found: if m.found.is_empty() {
                "no parsable certificate".into()
            } else {
                m.found.join(", ")
            },
        };
    }
    match rustls_err {
        Some(r) => EnrollError::Tls {
            addr,
            why: r.to_string(),
        },
        // Not a TLS error: the connection broke (reset, closed).
        None => EnrollError::Unreachable {
            addr,
            why: format!("the connection failed during the TLS handshake: {e}"),
        },
    }
}

/// The server chain had no certificate with the pinned public key.
#[derive(Debug)]
struct PinMismatch {
    /// The pins of the certificates the server presented.
    found: Vec<String>,
}

impl std::fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no certificate in the chain matches the pinned CA key")
    }
}

impl std::error::Error for PinMismatch {}

/// Trusts exactly one CA: the certificate in the server's own chain whose
/// SubjectPublicKeyInfo hashes to the pin. The leaf must chain to it and be
/// valid for the server name, as webpki checks for any CA.
#[derive(Debug)]
struct PinnedVerifier {
    pin: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let chain = std::iter::once(end_entity).chain(intermediates);
        let mut found = Vec::new();
        let mut anchor = None;
        for cert in chain {
            let Some(pin) = pin_of_cert(cert) else {
                continue;
            };
            if pin == self.pin && anchor.is_none() {
                anchor = Some(cert.clone().into_owned());
            }
            found.push(pin);
        }
        let Some(anchor) = anchor else {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(PinMismatch { found })),
            )));
        };
        let mut roots = RootCertStore::empty();
        roots.add(anchor)?;
        let webpki =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(format!("pinned CA: {e}")))?;
        webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `sha256:<hex>` of a certificate's SubjectPublicKeyInfo, as the collector's
/// `ca::pin_of_spki` computes it.
pub fn pin_of_cert(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.tbs_certificate.subject_pki.raw);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    Some(format!("sha256:{hex}"))
}

/// Hands the channel the one connection that passed the pinned handshake. A
/// reconnect would need a new handshake, so a second call fails.
struct Preconnected(Arc<Mutex<Option<TlsStream<TcpStream>>>>);

impl tonic::codegen::Service<tonic::codegen::http::Uri> for Preconnected {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: tonic::codegen::http::Uri) -> Self::Future {
        let stream = self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
        std::future::ready(
            stream
                .map(TokioIo::new)
                .ok_or_else(|| std::io::Error::other("the enrollment connection was closed")),
        )
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    /// Root enrolling into a dir that belongs to the service user: the files
    /// go to that user, so the service can read its key. Needs root (CI runs
    /// as root); as another user it checks that the dir's owner's own files
    /// are left alone.
    #[test]
    fn files_written_into_another_users_dir_are_given_to_that_user() {
        let dir = tempfile::tempdir().unwrap();
        let probe = dir.path().join(PENDING_KEY_FILE);
        write_atomic(&probe, b"key", 0o600).unwrap();
        assert_eq!(adopt_dir_owner(dir.path(), &probe).unwrap(), None);

        let me = fs::metadata(&probe).unwrap().uid();
        if me != 0 {
            eprintln!("not root: the chown half of this test needs root");
            return;
        }
        // nobody:nogroup, as a packaged service user would own its state dir.
        std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534)).unwrap();
        let owner = adopt_dir_owner(dir.path(), &probe).unwrap();
        assert_eq!(
            owner,
            Some(Owner {
                uid: 65534,
                gid: 65534
            })
        );
        let m = fs::metadata(&probe).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (65534, 65534, 0o600));

        let other = dir.path().join(CERT_FILE);
        write_atomic(&other, b"cert", 0o644).unwrap();
        owner.unwrap().give(&other).unwrap();
        assert_eq!(fs::metadata(&other).unwrap().uid(), 65534);
    }
}
