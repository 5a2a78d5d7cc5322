//! The CA issues what it decides, not what a CSR asks for, and rustls' own
//! verifiers accept what it issues.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;

use super::*;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A CSR as a hostile or confused agent might send it: asking for a server
/// name, another agent's identity and CA powers.
fn greedy_csr() -> (KeyPair, Vec<u8>) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["collector.example".to_owned()]).unwrap();
    params
        .subject_alt_names
        .push(SanType::URI("portwatch://agent/admin".try_into().unwrap()));
    params.distinguished_name.push(DnType::CommonName, "root");
    let csr = params.serialize_request(&key).unwrap();
    (key, csr.der().to_vec())
}

#[test]
fn creates_once_with_a_private_key_file_and_a_stable_pin() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::load_or_create(dir.path()).unwrap();
    let mode = fs::metadata(dir.path().join("ca.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "the CA key is readable by its owner only");
    assert!(ca.pin().starts_with("sha256:") && ca.pin().len() == 7 + 64);
    let again = Ca::load_or_create(dir.path()).unwrap();
    assert_eq!(ca.pin(), again.pin(), "a restart keeps the same CA");
    assert_eq!(ca.pin(), pin_of_spki(&spki_of(ca.cert_der()).unwrap()));
}

#[test]
fn a_key_that_does_not_match_the_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    Ca::load_or_create(dir.path()).unwrap();
    let other = tempfile::tempdir().unwrap();
    Ca::load_or_create(other.path()).unwrap();
    fs::copy(other.path().join("ca.key"), dir.path().join("ca.key")).unwrap();
    let err = Ca::load_or_create(dir.path())
        .err()
        .expect("mismatch detected")
        .to_string();
    assert!(err.contains("does not belong"), "{err}");
    fs::write(dir.path().join("ca.key"), "garbage").unwrap();
    let err = Ca::load_or_create(dir.path())
        .err()
        .expect("garbage detected")
        .to_string();
    assert!(
        err.contains("ca.key") && err.contains("private key"),
        "{err}"
    );
}

#[test]
fn agent_certificates_carry_only_the_identity_the_ca_chose() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::load_or_create(dir.path()).unwrap();
    let (_key, csr) = greedy_csr();
    let issued = ca
        .issue_agent(&csr, "bastion-fra-1", DEFAULT_AGENT_CERT_LIFETIME)
        .unwrap();

    assert_eq!(
        agent_id_of(&issued.cert_der).as_deref(),
        Some("bastion-fra-1")
    );
    let (_, x509) = x509_parser::parse_x509_certificate(&issued.cert_der).unwrap();
    let sans: Vec<String> = x509
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|g| g.to_string())
        .collect();
    assert_eq!(
        sans,
        vec!["URI(portwatch://agent/bastion-fra-1)".to_owned()],
        "CSR SANs are ignored"
    );
    assert!(!x509.is_ca());
    let eku = x509.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth, "client-auth only");
    let lifetime = x509.validity().not_after.timestamp() - x509.validity().not_before.timestamp();
    assert!(
        (24 * 3600..=24 * 3600 + 600).contains(&lifetime),
        "validity set by the CA: {lifetime} s"
    );

    // rustls' client verifier (what the stream endpoint uses) accepts it.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert_der().clone()).unwrap();
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .unwrap();
    verifier
        .verify_client_cert(&issued.cert_der, &[], UnixTime::now())
        .expect("issued cert verifies");
}

#[test]
fn a_certificate_from_another_ca_is_rejected_by_the_verifier() {
    let ours = tempfile::tempdir().unwrap();
    let theirs = tempfile::tempdir().unwrap();
    let ca = Ca::load_or_create(ours.path()).unwrap();
    let rogue = Ca::load_or_create(theirs.path()).unwrap();
    let (_key, csr) = greedy_csr();
    let forged = rogue
        .issue_agent(&csr, "bastion-fra-1", DEFAULT_AGENT_CERT_LIFETIME)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert_der().clone()).unwrap();
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .unwrap();
    assert!(
        verifier
            .verify_client_cert(&forged.cert_der, &[], UnixTime::now())
            .is_err()
    );
}

#[test]
fn bad_csrs_and_agent_ids_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::load_or_create(dir.path()).unwrap();
    let err = ca
        .issue_agent(b"not a csr", "a1", DEFAULT_AGENT_CERT_LIFETIME)
        .unwrap_err();
    assert!(matches!(err, CaError::BadCsr(_)), "{err}");
    // A CSR whose signature does not match its key: no proof of possession.
    let (_key, mut csr) = greedy_csr();
    let last = csr.len() - 1;
    csr[last] ^= 0x01;
    assert!(matches!(
        ca.issue_agent(&csr, "a1", DEFAULT_AGENT_CERT_LIFETIME),
        Err(CaError::BadCsr(_))
    ));
    let (_key, csr) = greedy_csr();
    for bad in ["", "Admin", "../etc", "a b", &"x".repeat(65)] {
        assert!(
            matches!(
                ca.issue_agent(&csr, bad, DEFAULT_AGENT_CERT_LIFETIME),
                Err(CaError::BadAgentId(_))
            ),
            "{bad:?}"
        );
    }
}

#[test]
fn server_certificate_verifies_for_its_names() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::load_or_create(dir.path()).unwrap();
    let (issued, key_pem) = ca
        .issue_server(&["localhost".into(), "127.0.0.1".into()], CA_LIFETIME)
        .unwrap();
    assert!(key_pem.contains("PRIVATE KEY"));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert_der().clone()).unwrap();
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .unwrap();
    for name in ["localhost", "127.0.0.1"] {
        let sn = ServerName::try_from(name).unwrap();
        verifier
            .verify_server_cert(&issued.cert_der, &[], &sn, &[], UnixTime::now())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let wrong = ServerName::try_from("collector.example").unwrap();
    assert!(
        verifier
            .verify_server_cert(&issued.cert_der, &[], &wrong, &[], UnixTime::now())
            .is_err()
    );
}
