//! Client side of TLS (outbound STARTTLS, RFC 3207): a verifying configuration that checks the chain
//! against the system roots plus the configured CA bundle and the name against the SRV or MX
//! target (RFC 6125), and an opportunistic configuration that accepts any certificate, for
//! best-effort delivery where encryption without authentication beats plaintext (RFC 7435).

use std::path::Path;
use std::sync::Arc;

use super::TlsError;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// The two outbound TLS configurations, built once at start and shared by every core.
#[derive(Debug, Clone)]
pub struct ClientTls {
    /// System roots plus the configured CA bundle; WebPKI chain and name verification.
    pub verified: Arc<ClientConfig>,
    /// Accepts any certificate (handshake signatures are still checked): only for best-effort
    /// TLS, where encryption without authentication beats plaintext.
    pub opportunistic: Arc<ClientConfig>,
}

/// Builds the outbound TLS configurations. `ca_file` adds trust anchors (PEM) to the system
/// roots, which are loaded through `rustls-native-certs` when `system_roots` is set.
pub fn client_configs(ca_file: Option<&Path>, system_roots: bool) -> Result<ClientTls, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());

    let mut roots = RootCertStore::empty();
    if system_roots {
        add_system_roots(&mut roots);
    }
    if let Some(path) = ca_file {
        add_ca_file(&mut roots, path)?;
    }
    if roots.is_empty() {
        tracing::warn!("no outbound trust anchors: verified TLS delivery will always fail");
    }

    let verified = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_root_certificates(roots)
        .with_no_client_auth();

    let any_certificate = AnyCertificate {
        algorithms: provider.signature_verification_algorithms,
    };
    let opportunistic = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(any_certificate))
        .with_no_client_auth();

    Ok(ClientTls {
        verified: Arc::new(verified),
        opportunistic: Arc::new(opportunistic),
    })
}

fn add_system_roots(roots: &mut RootCertStore) {
    let loaded = rustls_native_certs::load_native_certs();
    for error in &loaded.errors {
        tracing::warn!(%error, "system trust anchor could not be loaded");
    }
    let (added, ignored) = roots.add_parsable_certificates(loaded.certs);
    tracing::debug!(added, ignored, "system trust anchors loaded");
}

fn add_ca_file(roots: &mut RootCertStore, path: &Path) -> Result<(), TlsError> {
    let pem_error = |error| TlsError::Pem {
        path: path.to_path_buf(),
        error,
    };
    let mut count = 0;
    for cert in CertificateDer::pem_file_iter(path).map_err(pem_error)? {
        let cert = cert.map_err(pem_error)?;
        roots.add(cert).map_err(|error| TlsError::BadTrustAnchor {
            path: path.to_path_buf(),
            error: error.to_string(),
        })?;
        count += 1;
    }
    if count == 0 {
        return Err(TlsError::NoCertificates {
            path: path.to_path_buf(),
        });
    }
    tracing::debug!(path = %path.display(), count, "configured trust anchors loaded");
    Ok(())
}

/// Accepts any server certificate, still checking that the server holds its key.
#[derive(Debug)]
struct AnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_file_errors_name_the_file() {
        let dir = std::env::temp_dir().join(format!("secmx-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();

        let missing = dir.join("missing.pem");
        let error = client_configs(Some(&missing), false).unwrap_err();
        assert!(error.to_string().contains("missing.pem"), "{error}");

        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let error = client_configs(Some(&empty), false).unwrap_err();
        assert!(matches!(error, TlsError::NoCertificates { .. }), "{error}");
        assert!(error.to_string().contains("empty.pem"));

        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ca_file_certificates_become_trust_anchors() {
        let dir = std::env::temp_dir().join(format!("secmx-tls-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["ca.test.example".to_string()]).unwrap();
        let path = dir.join("ca.pem");
        std::fs::write(&path, ca.cert.pem()).unwrap();

        let mut roots = RootCertStore::empty();
        add_ca_file(&mut roots, &path).unwrap();
        assert_eq!(roots.len(), 1);
        assert!(client_configs(Some(&path), false).is_ok());

        std::fs::remove_dir_all(&dir).unwrap();
    }
}
