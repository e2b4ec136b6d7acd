//! Why an outbound attempt failed, with its enhanced status code (RFC 3463) and transience.

use std::fmt;
use std::io;
use std::net::SocketAddr;

use crate::smtp::reply::{Reply, Status};

/// Why a connection or transaction failed as a whole.
#[derive(Debug)]
pub enum AttemptError {
    /// The TCP connection could not be made.
    Connect(io::Error),
    /// No answer within the timeout of the named stage.
    Timeout(&'static str),
    /// The server's greeting was not 220.
    Greeting(Reply),
    /// TLS was required but the server does not offer STARTTLS.
    NoStartTls,
    /// The TLS handshake failed for a reason other than the certificate.
    TlsHandshake(String),
    /// The certificate did not verify for the host name (chain, name or validity).
    TlsCertificate(String),
    /// The server refused a command that concerns the whole session or transaction.
    Rejected { stage: &'static str, reply: Reply },
    /// The connection broke.
    Io(io::Error),
    /// The server broke the protocol, or the transaction could not be expressed in it.
    Protocol(String),
}

impl AttemptError {
    /// True when trying again later (or at another host) may succeed. TLS failures are
    /// transient: the destination may fix its certificate before the queue lifetime ends.
    pub fn is_transient(&self) -> bool {
        match self {
            AttemptError::Greeting(reply) | AttemptError::Rejected { reply, .. } => {
                !reply.is_permanent()
            }
            _ => true,
        }
    }

    /// The enhanced status code (RFC 3463) for logs and DSNs. Its class follows
    /// [`is_transient`](Self::is_transient); a bounce at queue expiry turns 4 into 5.
    pub fn status(&self) -> Status {
        match self {
            AttemptError::Connect(_) => Status::new(4, 4, 1),
            AttemptError::Timeout(_) | AttemptError::Io(_) => Status::new(4, 4, 2),
            AttemptError::Greeting(reply) | AttemptError::Rejected { reply, .. } => {
                reply.status_or_default()
            }
            AttemptError::NoStartTls => Status::new(4, 7, 4),
            AttemptError::TlsHandshake(_) | AttemptError::TlsCertificate(_) => Status::new(4, 7, 5),
            AttemptError::Protocol(_) => Status::new(4, 5, 0),
        }
    }

    /// Displays the error after the host and address it came from.
    pub fn at<'a>(&'a self, host: &'a str, peer: SocketAddr) -> impl fmt::Display + 'a {
        AtHost {
            error: self,
            host,
            peer,
        }
    }
}

impl fmt::Display for AttemptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttemptError::Connect(error) => write!(f, "connection failed: {error}"),
            AttemptError::Timeout(stage) => write!(f, "timed out in {stage}"),
            AttemptError::Greeting(reply) => write!(f, "greeting refused: {reply}"),
            AttemptError::NoStartTls => f.write_str("STARTTLS not offered but TLS is required"),
            AttemptError::TlsHandshake(error) => write!(f, "TLS handshake failed: {error}"),
            AttemptError::TlsCertificate(error) => {
                write!(f, "TLS certificate not verified: {error}")
            }
            AttemptError::Rejected { stage, reply } => write!(f, "{reply} (in reply to {stage})"),
            AttemptError::Io(error) => write!(f, "connection lost: {error}"),
            AttemptError::Protocol(error) => write!(f, "protocol error: {error}"),
        }
    }
}

impl std::error::Error for AttemptError {}

struct AtHost<'a> {
    error: &'a AttemptError,
    host: &'a str,
    peer: SocketAddr,
}

impl fmt::Display for AtHost<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}[{}]:{}: {}",
            self.host,
            self.peer.ip(),
            self.peer.port(),
            self.error
        )
    }
}

/// Sorts a failed handshake: a certificate the verifier refused, or anything else.
pub(super) fn handshake_error(error: io::Error) -> AttemptError {
    let rustls_error = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls_error {
        Some(rustls::Error::InvalidCertificate(reason)) => {
            AttemptError::TlsCertificate(reason.to_string())
        }
        Some(other) => AttemptError::TlsHandshake(other.to_string()),
        None => AttemptError::TlsHandshake(error.to_string()),
    }
}
