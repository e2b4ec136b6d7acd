//! TLS configuration through rustls (RFC 8446, RFC 5246) with the ring provider, both
//! directions: `server` for STARTTLS on the listeners, `client` for outbound STARTTLS.

use std::fmt;
use std::path::PathBuf;

mod client;
mod server;

pub use client::{ClientTls, client_configs};
pub use server::{ServerIdentity, load_certificates, server_config, server_identity};

/// A TLS configuration that could not be built; names the file or source at fault.
#[derive(Debug)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    Pem {
        path: PathBuf,
        error: rustls::pki_types::pem::Error,
    },
    /// A PEM file held no certificate.
    NoCertificates { path: PathBuf },
    /// A certificate from the file was refused as a trust anchor.
    BadTrustAnchor { path: PathBuf, error: String },
    /// rustls refused the configuration (protocol versions or provider).
    Config(rustls::Error),
    /// A certificate, key or directory of the server identity could not be used.
    File { path: PathBuf, problem: String },
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Pem { path, error } => write!(f, "{}: {error}", path.display()),
            TlsError::NoCertificates { path } => {
                write!(f, "{}: no CERTIFICATE block found", path.display())
            }
            TlsError::BadTrustAnchor { path, error } => {
                write!(
                    f,
                    "{}: certificate refused as trust anchor: {error}",
                    path.display()
                )
            }
            TlsError::Config(error) => write!(f, "TLS configuration refused: {error}"),
            TlsError::File { path, problem } => write!(f, "{}: {problem}", path.display()),
        }
    }
}

impl std::error::Error for TlsError {}
