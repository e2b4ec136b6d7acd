//! Server side of TLS (STARTTLS on the listeners, RFC 3207): the configured certificate chain and key, or a self-signed ECDSA P-256
//! certificate generated into `data_dir/tls/` on first start and reused afterwards.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;

use super::TlsError;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

fn tls_error(path: &Path, problem: impl fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        problem: problem.to_string(),
    }
}

/// Where the server's certificate and key come from.
pub struct ServerIdentity {
    pub certificate: PathBuf,
    pub private_key: PathBuf,
    /// True when secmx generated the pair itself.
    pub self_signed: bool,
}

/// Returns the configured pair, or generates (once) a self-signed one in `data_dir/tls/`.
pub fn server_identity(
    tls: &crate::config::Tls,
    data_dir: &Path,
    hostname: &str,
) -> Result<ServerIdentity, TlsError> {
    if let (Some(certificate), Some(private_key)) = (&tls.certificate, &tls.private_key) {
        return Ok(ServerIdentity {
            certificate: certificate.clone(),
            private_key: private_key.clone(),
            self_signed: false,
        });
    }

    let dir = data_dir.join("tls");
    let certificate = dir.join("cert.pem");
    let private_key = dir.join("key.pem");
    if !certificate.exists() || !private_key.exists() {
        generate_self_signed(&dir, &certificate, &private_key, hostname)?;
        tracing::warn!(
            certificate = %certificate.display(),
            hostname,
            "generated a self-signed certificate; set tls.certificate and tls.private_key for production"
        );
    }
    Ok(ServerIdentity {
        certificate,
        private_key,
        self_signed: true,
    })
}

fn generate_self_signed(
    dir: &Path,
    certificate: &Path,
    private_key: &Path,
    hostname: &str,
) -> Result<(), TlsError> {
    std::fs::create_dir_all(dir).map_err(|e| tls_error(dir, format!("cannot create: {e}")))?;
    let names = vec![hostname.to_string(), "localhost".to_string()];
    let generated = rcgen::generate_simple_self_signed(names)
        .map_err(|e| tls_error(certificate, format!("cannot generate a certificate: {e}")))?;

    // The key is written first and the certificate last, so a crash between the two leaves no
    // certificate without its key; both go through a temporary name and a rename.
    write_atomically(
        private_key,
        generated.signing_key.serialize_pem().as_bytes(),
        0o600,
    )?;
    write_atomically(certificate, generated.cert.pem().as_bytes(), 0o644)
}

fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;

    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| tls_error(&tmp, format!("cannot create: {e}")))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|e| tls_error(&tmp, format!("cannot write: {e}")))?;
    std::fs::rename(&tmp, path)
        .map_err(|e| tls_error(path, format!("cannot rename into place: {e}")))
}

/// Reads every certificate in a PEM file.
pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| tls_error(path, format!("cannot read certificates: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_error(path, format!("bad PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(tls_error(path, "no certificate found in the file"));
    }
    Ok(certs)
}

/// Builds the server configuration used by every listener for STARTTLS.
pub fn server_config(identity: &ServerIdentity) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = load_certificates(&identity.certificate)?;
    let key = PrivateKeyDer::from_pem_file(&identity.private_key).map_err(|e| {
        tls_error(
            &identity.private_key,
            format!("cannot read the private key: {e}"),
        )
    })?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error(&identity.certificate, e))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| {
            tls_error(
                &identity.certificate,
                format!("certificate and key do not fit: {e}"),
            )
        })?;
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(4096);
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_identity_is_generated_once_and_reused() {
        let dir = std::env::temp_dir().join(format!("secmx-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let tls = crate::config::Tls {
            certificate: None,
            private_key: None,
            ca_file: None,
            system_roots: false,
        };

        let first = server_identity(&tls, &dir, "gw.example").unwrap();
        let pem = std::fs::read(&first.certificate).unwrap();
        let second = server_identity(&tls, &dir, "gw.example").unwrap();
        assert_eq!(std::fs::read(&second.certificate).unwrap(), pem);
        assert!(first.self_signed);
        server_config(&second).expect("generated pair loads");

        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_certificate_file_is_named() {
        let identity = ServerIdentity {
            certificate: "/nonexistent/cert.pem".into(),
            private_key: "/nonexistent/key.pem".into(),
            self_signed: false,
        };
        let err = server_config(&identity).unwrap_err();
        assert!(
            err.to_string().starts_with("/nonexistent/cert.pem"),
            "{err}"
        );
    }
}
