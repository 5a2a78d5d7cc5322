//! The collector's certificate authority: the root of the agent <-> collector
//! mTLS. It signs agents' CSRs (the agent's private key never leaves the agent)
//! with an identity and validity the CA decides itself, and the collector's own
//! server certificate. Agents pin the CA's public key (`pin()`), carried in the
//! join string, before they send anything secret.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};

use crate::state::hex;

/// The URI SAN prefix of an agent identity: `portwatch://agent/<id>`.
pub const AGENT_URI_PREFIX: &str = "portwatch://agent/";
/// Lifetime of the CA certificate itself.
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Default lifetime of an agent certificate; agents rotate at 70-90% of it.
pub const DEFAULT_AGENT_CERT_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Certificates start a little in the past so a peer with a slightly slow clock accepts them.
const BACKDATE: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a valid {what}: {why}")]
    Invalid {
        path: PathBuf,
        what: &'static str,
        why: String,
    },
    #[error("the certificate signing request is invalid: {0}")]
    BadCsr(String),
    #[error("agent id {0:?} must be 1-64 characters of a-z, 0-9, '-' and '_'")]
    BadAgentId(String),
    #[error("signing: {0}")]
    Sign(#[from] rcgen::Error),
}

/// A certificate the CA issued.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub cert_der: CertificateDer<'static>,
    pub not_after: SystemTime,
    pub serial_hex: String,
}

/// The CA: its certificate and signing key, loaded from the collector's data dir.
pub struct Ca {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    /// Loads `ca.pem` and `ca.key` from `dir`, creating them (key mode 0600) on first start.
    pub fn load_or_create(dir: &Path) -> Result<Ca, CaError> {
        let cert_path = dir.join("ca.pem");
        let key_path = dir.join("ca.key");
        if !cert_path.exists() && !key_path.exists() {
            let (cert_pem, key_pem) = create_ca()?;
            write_file(&key_path, key_pem.as_bytes(), 0o600)?;
            write_file(&cert_path, cert_pem.as_bytes(), 0o644)?;
            tracing::info!(path = %cert_path.display(), "created the agent certificate authority");
        }
        let read = |p: &Path| {
            fs::read_to_string(p).map_err(|source| CaError::Io {
                path: p.to_owned(),
                source,
            })
        };
        let cert_pem = read(&cert_path)?;
        let key_pem = read(&key_path)?;
        let invalid = |path: &Path, what, why: String| CaError::Invalid {
            path: path.to_owned(),
            what,
            why,
        };
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| invalid(&key_path, "private key", e.to_string()))?;
        let cert_der =
            parse_pem_cert(&cert_pem).map_err(|why| invalid(&cert_path, "certificate", why))?;
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)
            .map_err(|e| invalid(&cert_path, "CA certificate", e.to_string()))?;
        if issuer.key().subject_public_key_info()
            != spki_of(&cert_der).map_err(|why| invalid(&cert_path, "certificate", why))?
        {
            return Err(invalid(
                &key_path,
                "private key",
                "it does not belong to ca.pem".into(),
            ));
        }
        Ok(Ca {
            cert_pem,
            cert_der,
            issuer,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// `sha256:<hex>` of the CA's SubjectPublicKeyInfo: what agents pin.
    pub fn pin(&self) -> String {
        pin_of_spki(&self.issuer.key().subject_public_key_info())
    }

    /// Signs an agent's CSR. Only the CSR's public key (and its proof of
    /// possession, the CSR signature) is used: subject, SANs and extensions are
    /// ignored and replaced by the identity `portwatch://agent/<agent_id>`,
    /// client-auth use only, valid from now (minus a small backdate) for `lifetime`.
    pub fn issue_agent(
        &self,
        csr_der: &[u8],
        agent_id: &str,
        lifetime: Duration,
    ) -> Result<Issued, CaError> {
        validate_agent_id(agent_id)?;
        let csr =
            CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
                .map_err(|e| CaError::BadCsr(e.to_string()))?;
        let uri = SanType::URI(format!("{AGENT_URI_PREFIX}{agent_id}").try_into()?);
        let leaf = Leaf::new(
            &format!("portwatch agent {agent_id}"),
            vec![uri],
            ExtendedKeyUsagePurpose::ClientAuth,
            lifetime,
        );
        let signed = CertificateSigningRequestParams {
            params: leaf.params.clone(),
            public_key: csr.public_key,
        }
        .signed_by(&self.issuer)?;
        Ok(leaf.issued(signed.pem(), signed.der().clone()))
    }

    /// Issues the collector's own server certificate (fresh key) for `names`
    /// (DNS names or IP addresses). Returns the certificate and the key PEM.
    pub fn issue_server(
        &self,
        names: &[String],
        lifetime: Duration,
    ) -> Result<(Issued, String), CaError> {
        let key = KeyPair::generate()?;
        let sans = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => n.clone().try_into().map(SanType::DnsName),
            })
            .collect::<Result<_, _>>()?;
        let leaf = Leaf::new(
            "portwatch collector",
            sans,
            ExtendedKeyUsagePurpose::ServerAuth,
            lifetime,
        );
        let cert = leaf.params.signed_by(&key, &self.issuer)?;
        Ok((
            leaf.issued(cert.pem(), cert.der().clone()),
            key.serialize_pem(),
        ))
    }
}

/// The parameters every leaf this CA signs shares: one name, one use, a
/// random serial and a validity the CA chooses.
struct Leaf {
    params: CertificateParams,
    not_after: SystemTime,
    serial: [u8; 16],
}

impl Leaf {
    fn new(cn: &str, sans: Vec<SanType>, eku: ExtendedKeyUsagePurpose, lifetime: Duration) -> Leaf {
        let now = SystemTime::now();
        let not_after = now + lifetime;
        let serial = random_serial();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![eku];
        params.not_before = (now - BACKDATE).into();
        params.not_after = not_after.into();
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.use_authority_key_identifier_extension = true;
        Leaf {
            params,
            not_after,
            serial,
        }
    }

    fn issued(&self, cert_pem: String, cert_der: CertificateDer<'static>) -> Issued {
        Issued {
            cert_pem,
            cert_der,
            not_after: self.not_after,
            serial_hex: hex(&self.serial),
        }
    }
}

fn create_ca() -> Result<(String, String), CaError> {
    let key = KeyPair::generate()?;
    let now = SystemTime::now();
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "portwatch agent CA");
    dn.push(DnType::OrganizationName, "portwatch");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + CA_LIFETIME).into();
    params.serial_number = Some(SerialNumber::from_slice(&random_serial()));
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Agent ids become part of a URI and of file names: keep them boring.
pub fn validate_agent_id(id: &str) -> Result<(), CaError> {
    let ok = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(CaError::BadAgentId(id.to_owned()))
    }
}

/// The agent id in a (verified) client certificate's URI SAN, if it has exactly one.
pub fn agent_id_of(cert: &[u8]) -> Option<String> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert).ok()?;
    let san = x509.subject_alternative_name().ok()??;
    let mut ids = san.value.general_names.iter().filter_map(|g| match g {
        x509_parser::extensions::GeneralName::URI(u) => u.strip_prefix(AGENT_URI_PREFIX),
        _ => None,
    });
    let id = ids.next()?;
    if ids.next().is_some() || validate_agent_id(id).is_err() {
        return None;
    }
    Some(id.to_owned())
}

/// `sha256:<hex>` of a SubjectPublicKeyInfo (DER).
pub fn pin_of_spki(spki_der: &[u8]) -> String {
    format!(
        "sha256:{}",
        hex(ring::digest::digest(&ring::digest::SHA256, spki_der).as_ref())
    )
}

/// The SubjectPublicKeyInfo (DER) of a certificate.
pub fn spki_of(cert: &[u8]) -> Result<Vec<u8>, String> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert).map_err(|e| e.to_string())?;
    Ok(x509.tbs_certificate.subject_pki.raw.to_vec())
}

fn parse_pem_cert(pem: &str) -> Result<CertificateDer<'static>, String> {
    use rustls_pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| e.to_string())
}

fn random_serial() -> [u8; 16] {
    let mut s = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut s)
        .expect("system randomness");
    s[0] &= 0x7f; // positive
    s[0] |= 0x01; // no leading zero byte
    s
}

fn write_file(path: &Path, body: &[u8], mode: u32) -> Result<(), CaError> {
    let io = |source| CaError::Io {
        path: path.to_owned(),
        source,
    };
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    f.write_all(body).map_err(io)?;
    f.sync_all().map_err(io)
}

#[cfg(test)]
mod tests;
