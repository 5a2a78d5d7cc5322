//! Client configurations for TLS checks and the certificate verifier they use.
//!
//! A check runs every few seconds, so the expensive parts are built once: the
//! crypto provider, the system roots (read from /etc/ssl once per process) and
//! one `ClientConfig` per distinct (verify, ca) option set.
//!
//! The verifier wraps rustls' `WebPkiServerVerifier` and records the leaf
//! certificate it was shown before judging it, so expiry, subject and issuer are
//! reported even when verification fails. The recording goes to a task-local
//! slot set around each handshake: rustls calls the verifier synchronously while
//! the handshake future is polled, inside that task, so concurrent checks sharing
//! one config never see each other's certificates.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};

use rustls::client::Resumption;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::check::TlsOptions;

/// Distinct option sets kept before the cache is emptied: far more than a real
/// agent has, small enough that endless reconfiguration cannot grow memory.
const MAX_CACHED_CONFIGS: usize = 64;

/// The one crypto provider of every TLS check. Built explicitly rather than
/// taken from the process default so the probe works whether or not `main`
/// installed one (tests do not).
fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// The system's trust anchors, read once. `None` when the system has none.
async fn system_roots() -> Option<Arc<RootCertStore>> {
    static ROOTS: tokio::sync::OnceCell<Option<Arc<RootCertStore>>> =
        tokio::sync::OnceCell::const_new();
    ROOTS
        .get_or_init(|| async {
            // Reading a few hundred files: keep it off the runtime threads.
            let loaded = tokio::task::spawn_blocking(rustls_native_certs::load_native_certs).await;
            let Ok(loaded) = loaded else {
                tracing::warn!("loading the system root certificates panicked");
                return None;
            };
            for err in &loaded.errors {
                tracing::warn!(error = %err, "reading a system root certificate");
            }
            let mut store = RootCertStore::empty();
            let (added, ignored) = store.add_parsable_certificates(loaded.certs);
            if ignored > 0 {
                tracing::warn!(ignored, "system root certificates that could not be parsed");
            }
            if added == 0 {
                tracing::warn!(
                    "no system root certificates found: every certificate will be untrusted"
                );
                return None;
            }
            Some(Arc::new(store))
        })
        .await
        .clone()
}

/// What a cached config depends on. With `verify` off the roots play no part.
#[derive(Clone, PartialEq, Eq, Hash)]
struct ConfigKey {
    verify: bool,
    ca: Option<Vec<Vec<u8>>>,
}

impl ConfigKey {
    fn of(opts: &TlsOptions) -> ConfigKey {
        let ca = if opts.verify {
            opts.ca
                .as_ref()
                .map(|c| c.iter().map(|d| d.as_ref().to_vec()).collect())
        } else {
            None
        };
        ConfigKey {
            verify: opts.verify,
            ca,
        }
    }
}

type ConfigCache = Mutex<HashMap<ConfigKey, Arc<ClientConfig>>>;

/// The client config for `opts`, built on first use and cached.
/// `Err` is a configuration problem (an unusable `ca`), not a probe failure.
pub(super) async fn client_config(opts: &TlsOptions) -> Result<Arc<ClientConfig>, String> {
    static CACHE: OnceLock<ConfigCache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let key = ConfigKey::of(opts);
    if let Some(c) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return Ok(c.clone());
    }
    let mode = if !opts.verify {
        Mode::AcceptAny
    } else if let Some(ca) = &opts.ca {
        let mut store = RootCertStore::empty();
        for (i, der) in ca.iter().enumerate() {
            store
                .add(der.clone())
                .map_err(|e| format!("tls ca certificate #{}: {e}", i + 1))?;
        }
        if store.is_empty() {
            return Err("tls ca: the list of trusted certificates is empty".to_owned());
        }
        Mode::WebPki(webpki(Arc::new(store))?)
    } else {
        match system_roots().await {
            Some(store) => Mode::WebPki(webpki(store)?),
            None => Mode::NoRoots,
        }
    };
    let verifier = Arc::new(CapturingVerifier {
        mode,
        provider: provider(),
    });
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls configuration: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    // A resumed session skips the certificate: the next check would see no leaf
    // and could not report expiry. Every check is a full handshake.
    config.resumption = Resumption::disabled();
    let config = Arc::new(config);
    let mut map = cache.lock().unwrap_or_else(|p| p.into_inner());
    if map.len() >= MAX_CACHED_CONFIGS {
        map.clear();
    }
    map.insert(key, config.clone());
    Ok(config)
}

fn webpki(roots: Arc<RootCertStore>) -> Result<Arc<WebPkiServerVerifier>, String> {
    WebPkiServerVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| format!("tls certificate verifier: {e}"))
}

/// True when the system has no trust anchors at all, so an `UnknownIssuer`
/// under the system roots is this host's problem rather than the server's.
pub(super) async fn system_roots_missing() -> bool {
    system_roots().await.is_none()
}

#[derive(Debug)]
enum Mode {
    /// Chain and name checked against these roots.
    WebPki(Arc<WebPkiServerVerifier>),
    /// Verification asked for, but the system has no roots: nothing can be trusted.
    NoRoots,
    /// `verify = false`: any chain is accepted; handshake signatures are still checked.
    AcceptAny,
}

#[derive(Debug)]
struct CapturingVerifier {
    mode: Mode,
    provider: Arc<CryptoProvider>,
}

tokio::task_local! {
    /// Where the verifier of the handshake being polled puts the leaf it saw.
    static LEAF: Arc<Mutex<Option<CertificateDer<'static>>>>;
}

/// Runs `handshake`, returning its output and the leaf certificate the server
/// presented, if it got that far.
pub(super) async fn capture_leaf<F: Future>(
    handshake: F,
) -> (F::Output, Option<CertificateDer<'static>>) {
    let slot = Arc::new(Mutex::new(None));
    let out = LEAF.scope(slot.clone(), handshake).await;
    let leaf = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
    (out, leaf)
}

impl ServerCertVerifier for CapturingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // Outside a `capture_leaf` scope there is nowhere to record: not an error.
        let _ = LEAF.try_with(|slot| {
            *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(end_entity.clone().into_owned());
        });
        match &self.mode {
            Mode::WebPki(v) => {
                v.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            }
            Mode::NoRoots => Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            )),
            Mode::AcceptAny => Ok(ServerCertVerified::assertion()),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_der(name: &str) -> CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    #[tokio::test]
    async fn configs_are_built_once_per_distinct_option_set() {
        let (a, b) = (ca_der("cache test ca a"), ca_der("cache test ca b"));
        let with = |ca: &CertificateDer<'static>, verify: bool| TlsOptions {
            ca: Some(vec![ca.clone()]),
            verify,
            server_name: Some("ignored.test".into()),
            ..TlsOptions::default()
        };
        let first = client_config(&with(&a, true)).await.unwrap();
        let again = client_config(&with(&a, true)).await.unwrap();
        assert!(Arc::ptr_eq(&first, &again), "same options, same config");
        let other_ca = client_config(&with(&b, true)).await.unwrap();
        assert!(
            !Arc::ptr_eq(&first, &other_ca),
            "different roots, different config"
        );
        // Without verification the roots play no part: one config serves both.
        let off_a = client_config(&with(&a, false)).await.unwrap();
        let off_b = client_config(&with(&b, false)).await.unwrap();
        assert!(Arc::ptr_eq(&off_a, &off_b));
        assert!(!Arc::ptr_eq(&off_a, &first));
    }

    #[tokio::test]
    async fn an_unusable_ca_is_a_configuration_error_naming_it() {
        let opts = TlsOptions {
            ca: Some(vec![CertificateDer::from(b"not a certificate".to_vec())]),
            ..TlsOptions::default()
        };
        let err = client_config(&opts).await.unwrap_err();
        assert!(err.starts_with("tls ca certificate #1: "), "{err}");
        let opts = TlsOptions {
            ca: Some(vec![]),
            ..TlsOptions::default()
        };
        assert!(client_config(&opts).await.unwrap_err().contains("empty"));
    }
}
