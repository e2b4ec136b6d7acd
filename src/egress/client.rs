//! The outbound SMTP client (RFC 5321 sections 3 and 4) over a glommio TCP stream: greeting,
//! EHLO with HELO fallback (section 3.2), STARTTLS (RFC 3207) under a TLS policy, pipelined
//! transactions (RFC 2920), SIZE (RFC 1870), 8BITMIME (RFC 6152), per-stage timeouts (section
//! 4.5.3.2). Plain and TLS sessions share one code path through [`stream::Wire`].

mod error;
pub mod protocol;
mod stream;
#[cfg(test)]
mod test_peer;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tls_tests;

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_rustls::TlsConnector;
use glommio::net::TcpStream;
use rustls::pki_types::ServerName;

use crate::smtp::reply::Reply;
use crate::tls::ClientTls;
use protocol::{DotStuffer, Extensions, ReplyError, has_eight_bit, is_safe_mailbox};
use stream::{Stream, Wire, WireError};

pub use error::AttemptError;
use error::handshake_error;

/// Message content goes out in writes of about this size.
const CONTENT_CHUNK: usize = 64 * 1024;

/// How a connection uses STARTTLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsPolicy {
    /// STARTTLS must be offered and the certificate must verify for the host name.
    Required,
    /// STARTTLS when offered, any certificate; plaintext when not offered.
    Opportunistic,
    /// Never STARTTLS.
    Disabled,
}

/// Names and timeouts for outbound sessions (RFC 5321 section 4.5.3.2 gives the minimums).
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// The name sent in EHLO/HELO.
    pub helo_name: String,
    pub connect_timeout: Duration,
    /// Greeting, EHLO, STARTTLS and the handshake, MAIL, RCPT, DATA, RSET, QUIT.
    pub command_timeout: Duration,
    /// Each write of message content and the reply after the final dot.
    pub data_timeout: Duration,
}

/// The TLS session of a connection, as logged and put in Received headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// `TLSv1.2` or `TLSv1.3`.
    pub version: String,
    /// The IANA name of the cipher suite.
    pub cipher: String,
    /// Whether the certificate chain and name were verified.
    pub verified: bool,
}

impl fmt::Display for TlsInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verified = if self.verified {
            "verified"
        } else {
            "unverified"
        };
        write!(f, "{} {} {verified}", self.version, self.cipher)
    }
}

/// What became of one recipient of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecipientResult {
    /// Delivered: the reply after the final dot.
    Accepted(Reply),
    /// Refused for now (4xx to RCPT or to the content).
    Transient(Reply),
    /// Refused for good (5xx to RCPT or to the content).
    Permanent(Reply),
}

impl RecipientResult {
    /// The reply this result is based on.
    pub fn reply(&self) -> &Reply {
        match self {
            RecipientResult::Accepted(reply)
            | RecipientResult::Transient(reply)
            | RecipientResult::Permanent(reply) => reply,
        }
    }

    fn from_reply(reply: Reply, stage: &'static str) -> Result<RecipientResult, AttemptError> {
        match reply.code {
            200..=299 => Ok(RecipientResult::Accepted(reply)),
            400..=499 => Ok(RecipientResult::Transient(reply)),
            500..=599 => Ok(RecipientResult::Permanent(reply)),
            _ => Err(AttemptError::Protocol(format!(
                "unexpected {reply} to {stage}"
            ))),
        }
    }
}

/// An open SMTP session with one server, ready for transactions.
pub struct Connection {
    wire: Wire,
    peer: SocketAddr,
    host: String,
    extensions: Extensions,
    tls: Option<TlsInfo>,
    settings: ClientSettings,
    messages_sent: usize,
    /// Set once the session may be out of step with the server (broken connection, timeout,
    /// unparseable or unexpected reply, 421): nothing more is sent on it then.
    broken: bool,
}

impl Connection {
    /// Connects to `addr`, reads the greeting, sends EHLO (HELO when EHLO gets 5xx) and applies
    /// `policy`. Under [`TlsPolicy::Required`] STARTTLS must be offered and the certificate must
    /// verify against `tls.verified` for `host` (also sent as SNI unless it is an IP literal);
    /// under [`TlsPolicy::Opportunistic`] STARTTLS is used when offered, with
    /// `tls.opportunistic`. After STARTTLS, EHLO is sent again.
    pub async fn open(
        addr: SocketAddr,
        host: &str,
        policy: TlsPolicy,
        tls: &ClientTls,
        settings: &ClientSettings,
    ) -> Result<Connection, AttemptError> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let tcp = connect(addr, settings.connect_timeout).await?;
        let mut connection = Connection {
            wire: Wire::new(Stream::Plain(tcp)),
            peer: addr,
            host,
            extensions: Extensions::default(),
            tls: None,
            settings: settings.clone(),
            messages_sent: 0,
            broken: false,
        };

        let greeting = connection.read("greeting").await?;
        if greeting.code != 220 {
            connection.quit().await;
            return Err(AttemptError::Greeting(greeting));
        }
        connection.hello().await?;

        let use_tls = match policy {
            TlsPolicy::Disabled => false,
            TlsPolicy::Opportunistic => connection.extensions.starttls,
            TlsPolicy::Required if connection.extensions.starttls => true,
            TlsPolicy::Required => {
                connection.quit().await;
                return Err(AttemptError::NoStartTls);
            }
        };
        if use_tls {
            connection = connection.start_tls(policy, tls).await?;
        }
        tracing::debug!(
            mx_host = %connection.host,
            peer = %connection.peer,
            tls = %connection.tls.as_ref().map_or("none".to_string(), ToString::to_string),
            "smtp session open"
        );
        Ok(connection)
    }

    /// Sends one transaction: MAIL, one RCPT per recipient, DATA and the content, pipelined when
    /// the server offers PIPELINING. Without any accepted recipient the transaction is reset
    /// instead of sending content. Results follow the order of `recipients`; the reply to the
    /// content applies to every recipient whose RCPT was accepted. `body` is CRLF text; it is
    /// dot-stuffed on the way out and given a final CRLF when it lacks one.
    pub async fn send(
        &mut self,
        reverse_path: &str,
        recipients: &[String],
        body: &[u8],
    ) -> Result<Vec<RecipientResult>, AttemptError> {
        if let Some(bad) = std::iter::once(reverse_path)
            .chain(recipients.iter().map(String::as_str))
            .find(|mailbox| !is_safe_mailbox(mailbox))
        {
            return Err(AttemptError::Protocol(format!(
                "mailbox {bad:?} contains control characters"
            )));
        }
        if recipients.is_empty() {
            return Ok(Vec::new());
        }
        self.check_usable()?;

        let outcome = self.transaction(reverse_path, recipients, body).await;
        if let Err(AttemptError::Protocol(_)) = outcome {
            self.broken = true;
        }
        outcome
    }

    async fn transaction(
        &mut self,
        reverse_path: &str,
        recipients: &[String],
        body: &[u8],
    ) -> Result<Vec<RecipientResult>, AttemptError> {
        let mail = self.mail_command(reverse_path, recipients, body);
        let (mut results, data_reply) = if self.extensions.pipelining {
            self.pipelined_envelope(mail, recipients).await?
        } else {
            self.stepwise_envelope(mail, recipients).await?
        };

        let any_accepted = results
            .iter()
            .any(|r| matches!(r, RecipientResult::Accepted(_)));
        if !any_accepted {
            if data_reply.as_ref().is_some_and(|reply| reply.code == 354) {
                self.command(".", "end of data").await?;
            }
            self.reset_after_transaction().await;
            return Ok(results);
        }

        let data_reply = match data_reply {
            Some(reply) => reply,
            None => self.command("DATA", "DATA").await?,
        };
        if data_reply.is_positive() && data_reply.code != 354 {
            return Err(AttemptError::Protocol(format!(
                "unexpected {data_reply} to DATA"
            )));
        }
        let outcome = if data_reply.code == 354 {
            self.write_content(body).await?;
            let reply = self
                .read_timed(self.settings.data_timeout, "end of data")
                .await?;
            if reply.is_positive() {
                self.messages_sent += 1;
            }
            reply
        } else {
            self.reset_after_transaction().await;
            data_reply
        };

        for result in &mut results {
            if matches!(result, RecipientResult::Accepted(_)) {
                *result = RecipientResult::from_reply(outcome.clone(), "end of data")?;
            }
        }
        tracing::debug!(
            mx_host = %self.host,
            peer = %self.peer,
            reply = %outcome,
            "smtp transaction done"
        );
        Ok(results)
    }

    /// Sends RSET, so that the connection can carry another transaction.
    pub async fn reset(&mut self) -> Result<(), AttemptError> {
        self.check_usable()?;
        let reply = self.command("RSET", "RSET").await?;
        if !reply.is_positive() {
            return Err(AttemptError::Rejected {
                stage: "RSET",
                reply,
            });
        }
        Ok(())
    }

    /// RSET once a transaction's outcome is known; a failure only matters to the next
    /// transaction, which finds the connection marked broken.
    async fn reset_after_transaction(&mut self) {
        if let Err(error) = self.reset().await {
            tracing::debug!(mx_host = %self.host, peer = %self.peer, %error, "rset failed");
            self.broken = true;
        }
    }

    fn check_usable(&self) -> Result<(), AttemptError> {
        if self.broken {
            return Err(AttemptError::Io(io::Error::new(
                io::ErrorKind::NotConnected,
                "connection unusable after an earlier failure",
            )));
        }
        Ok(())
    }

    /// Sends QUIT and closes the connection; failures no longer matter at this point.
    pub async fn quit(mut self) {
        let _ = self.command("QUIT", "QUIT").await;
        let timeout = self.settings.command_timeout;
        let _ = timed(timeout, "close", async { Ok(self.wire.close().await) }).await;
    }

    /// The TLS session, when STARTTLS succeeded.
    pub fn tls(&self) -> Option<&TlsInfo> {
        self.tls.as_ref()
    }

    /// The server's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The host name the connection was opened for: lowercase, no trailing dot.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The extensions from the last EHLO (all off after HELO).
    pub fn extensions(&self) -> &Extensions {
        &self.extensions
    }

    /// Transactions whose content the server accepted on this connection.
    pub fn messages_sent(&self) -> usize {
        self.messages_sent
    }

    fn mail_command(&self, reverse_path: &str, recipients: &[String], body: &[u8]) -> String {
        let mut mail = String::with_capacity(reverse_path.len() + 64);
        mail.push_str("MAIL FROM:<");
        mail.push_str(reverse_path);
        mail.push('>');
        if self.extensions.size.is_some() {
            use std::fmt::Write;
            let _ = write!(mail, " SIZE={}", body.len());
        }
        if self.extensions.eight_bit_mime && has_eight_bit(body) {
            mail.push_str(" BODY=8BITMIME");
        }
        let international = !reverse_path.is_ascii() || recipients.iter().any(|r| !r.is_ascii());
        if self.extensions.smtputf8 && international {
            mail.push_str(" SMTPUTF8");
        }
        mail
    }

    /// MAIL, every RCPT and DATA in one write, then their replies in order (RFC 2920 3.1).
    async fn pipelined_envelope(
        &mut self,
        mail: String,
        recipients: &[String],
    ) -> Result<(Vec<RecipientResult>, Option<Reply>), AttemptError> {
        let mut batch = mail.into_bytes();
        batch.extend_from_slice(b"\r\n");
        for recipient in recipients {
            batch.extend_from_slice(b"RCPT TO:<");
            batch.extend_from_slice(recipient.as_bytes());
            batch.extend_from_slice(b">\r\n");
        }
        batch.extend_from_slice(b"DATA\r\n");
        self.write("MAIL FROM", &batch).await?;

        let mail_reply = self.read("MAIL FROM").await?;
        let mut results = Vec::with_capacity(recipients.len());
        for _ in recipients {
            let reply = self.read("RCPT TO").await?;
            results.push(RecipientResult::from_reply(reply, "RCPT TO")?);
        }
        let data_reply = self.read("DATA").await?;

        if !mail_reply.is_positive() {
            if data_reply.code == 354 {
                self.command(".", "end of data").await?;
            }
            return Err(AttemptError::Rejected {
                stage: "MAIL FROM",
                reply: mail_reply,
            });
        }
        Ok((results, Some(data_reply)))
    }

    /// MAIL and each RCPT one at a time; DATA is left to the caller.
    async fn stepwise_envelope(
        &mut self,
        mail: String,
        recipients: &[String],
    ) -> Result<(Vec<RecipientResult>, Option<Reply>), AttemptError> {
        let reply = self.command(&mail, "MAIL FROM").await?;
        if !reply.is_positive() {
            return Err(AttemptError::Rejected {
                stage: "MAIL FROM",
                reply,
            });
        }
        let mut results = Vec::with_capacity(recipients.len());
        for recipient in recipients {
            let reply = self
                .command(&format!("RCPT TO:<{recipient}>"), "RCPT TO")
                .await?;
            results.push(RecipientResult::from_reply(reply, "RCPT TO")?);
        }
        Ok((results, None))
    }

    async fn write_content(&mut self, body: &[u8]) -> Result<(), AttemptError> {
        let timeout = self.settings.data_timeout;
        let mut stuffer = DotStuffer::default();
        let chunk = body.len().min(CONTENT_CHUNK);
        let mut out = Vec::with_capacity(chunk + chunk / 8 + 8);
        for chunk in body.chunks(CONTENT_CHUNK) {
            stuffer.push(chunk, &mut out);
            self.write_timed(timeout, "message content", &out).await?;
            out.clear();
        }
        stuffer.finish(&mut out);
        self.write_timed(timeout, "message content", &out).await
    }

    async fn hello(&mut self) -> Result<(), AttemptError> {
        let ehlo = format!("EHLO {}", self.settings.helo_name);
        let reply = self.command(&ehlo, "EHLO").await?;
        if reply.is_positive() {
            self.extensions = Extensions::from_ehlo(&reply);
            return Ok(());
        }
        if reply.is_transient() {
            return Err(AttemptError::Rejected {
                stage: "EHLO",
                reply,
            });
        }

        let helo = format!("HELO {}", self.settings.helo_name);
        let reply = self.command(&helo, "HELO").await?;
        if !reply.is_positive() {
            return Err(AttemptError::Rejected {
                stage: "HELO",
                reply,
            });
        }
        self.extensions = Extensions::default();
        Ok(())
    }

    /// STARTTLS, the handshake and the second EHLO. Under the opportunistic policy a refused
    /// STARTTLS leaves the session in plaintext, as RFC 3207 section 4 allows.
    async fn start_tls(
        mut self,
        policy: TlsPolicy,
        tls: &ClientTls,
    ) -> Result<Connection, AttemptError> {
        let reply = self.command("STARTTLS", "STARTTLS").await?;
        if reply.code != 220 {
            if policy == TlsPolicy::Required {
                return Err(AttemptError::Rejected {
                    stage: "STARTTLS",
                    reply,
                });
            }
            tracing::info!(mx_host = %self.host, peer = %self.peer, %reply, "starttls refused");
            return Ok(self);
        }

        let verified = policy == TlsPolicy::Required;
        let server_name = self.server_name(verified)?;
        let config = if verified {
            &tls.verified
        } else {
            &tls.opportunistic
        };

        let discarded = self.wire.buffered();
        if discarded > 0 {
            tracing::warn!(
                mx_host = %self.host,
                peer = %self.peer,
                discarded,
                "bytes after the starttls reply discarded"
            );
        }
        let Connection {
            wire,
            peer,
            host,
            settings,
            messages_sent,
            ..
        } = self;
        let Some(tcp) = wire.into_plain() else {
            return Err(AttemptError::Protocol("STARTTLS inside TLS".to_string()));
        };

        let handshake = TlsConnector::from(config.clone()).connect(server_name, tcp);
        let stream = timed(settings.command_timeout, "TLS handshake", async {
            handshake.await.map_err(handshake_error)
        })
        .await?;

        let tls = tls_info(stream.get_ref().1, verified);
        let mut connection = Connection {
            wire: Wire::new(Stream::Tls(Box::new(stream))),
            peer,
            host,
            extensions: Extensions::default(),
            tls: Some(tls),
            settings,
            messages_sent,
            broken: false,
        };
        connection.hello().await?;
        Ok(connection)
    }

    /// The name for SNI and certificate checks: the host name, or the address for an IP literal
    /// (rustls sends no SNI for an address, as RFC 6066 section 3 requires).
    fn server_name(&self, verified: bool) -> Result<ServerName<'static>, AttemptError> {
        if let Ok(ip) = self
            .host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            return Ok(ServerName::IpAddress(ip.into()));
        }
        match ServerName::try_from(self.host.clone()) {
            Ok(name) => Ok(name),
            Err(_) if !verified => Ok(ServerName::IpAddress(self.peer.ip().into())),
            Err(error) => Err(AttemptError::TlsCertificate(format!(
                "{:?} cannot be checked against a certificate: {error}",
                self.host
            ))),
        }
    }

    /// Writes `line` CRLF and reads the reply; a 421 becomes [`AttemptError::Rejected`].
    async fn command(&mut self, line: &str, stage: &'static str) -> Result<Reply, AttemptError> {
        tracing::trace!(peer = %self.peer, command = line, "smtp command");
        let mut bytes = Vec::with_capacity(line.len() + 2);
        bytes.extend_from_slice(line.as_bytes());
        bytes.extend_from_slice(b"\r\n");
        self.write(stage, &bytes).await?;
        self.read(stage).await
    }

    async fn write(&mut self, stage: &'static str, bytes: &[u8]) -> Result<(), AttemptError> {
        self.write_timed(self.settings.command_timeout, stage, bytes)
            .await
    }

    async fn write_timed(
        &mut self,
        timeout: Duration,
        stage: &'static str,
        bytes: &[u8],
    ) -> Result<(), AttemptError> {
        let wire = &mut self.wire;
        let written = timed(timeout, stage, async {
            wire.write_all(bytes).await.map_err(AttemptError::Io)
        })
        .await;
        self.broken |= written.is_err();
        written
    }

    async fn read(&mut self, stage: &'static str) -> Result<Reply, AttemptError> {
        self.read_timed(self.settings.command_timeout, stage).await
    }

    async fn read_timed(
        &mut self,
        timeout: Duration,
        stage: &'static str,
    ) -> Result<Reply, AttemptError> {
        let wire = &mut self.wire;
        let read = timed(timeout, stage, async {
            wire.read_reply().await.map_err(|error| match error {
                WireError::Io(error) => AttemptError::Io(error),
                WireError::Reply(error) => reply_error(error, stage),
            })
        })
        .await;
        let reply = read.inspect_err(|_| self.broken = true)?;
        tracing::trace!(peer = %self.peer, stage, %reply, "smtp reply");
        if reply.code == 421 {
            self.broken = true;
            return Err(AttemptError::Rejected { stage, reply });
        }
        Ok(reply)
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("host", &self.host)
            .field("peer", &self.peer)
            .field("tls", &self.tls)
            .field("messages_sent", &self.messages_sent)
            .finish_non_exhaustive()
    }
}

async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, AttemptError> {
    let timeout = timeout.max(Duration::from_millis(1));
    let tcp = TcpStream::connect_timeout(addr, timeout)
        .await
        .map_err(io::Error::from)
        .map_err(|error| match error.kind() {
            io::ErrorKind::TimedOut => AttemptError::Timeout("connect"),
            _ => AttemptError::Connect(error),
        })?;
    tcp.set_nodelay(true)
        .map_err(|e| AttemptError::Connect(e.into()))?;
    Ok(tcp)
}

/// Runs `work` and gives up after `timeout`, naming `stage`. The timer is armed only if `work`
/// does not finish at once (writes, and replies already buffered, usually do).
async fn timed<T>(
    timeout: Duration,
    stage: &'static str,
    work: impl Future<Output = Result<T, AttemptError>>,
) -> Result<T, AttemptError> {
    let mut work = std::pin::pin!(work);
    if let Some(done) = futures_lite::future::poll_once(work.as_mut()).await {
        return done;
    }
    let expiry = async {
        glommio::timer::sleep(timeout).await;
        Err(AttemptError::Timeout(stage))
    };
    futures_lite::future::or(work, expiry).await
}

fn reply_error(error: ReplyError, stage: &'static str) -> AttemptError {
    AttemptError::Protocol(format!("{error} in reply to {stage}"))
}

fn tls_info(session: &rustls::ClientConnection, verified: bool) -> TlsInfo {
    let version = match session.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
        other => format!("{other:?}"),
    };
    let cipher = match session.negotiated_cipher_suite() {
        Some(suite) => {
            let suite = suite.suite();
            suite
                .as_str()
                .map_or_else(|| format!("{suite:?}"), str::to_string)
        }
        None => "unknown".to_string(),
    };
    TlsInfo {
        version,
        cipher,
        verified,
    }
}
