//! One SMTP client connection: replies (RFC 5321 section 4.2), STARTTLS (RFC 3207),
//! pipelined MAIL/RCPT/DATA groups (RFC 2920 section 3.1).

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use futures_rustls::TlsConnector;
use futures_rustls::client::TlsStream;
use glommio::GlommioError;
use glommio::net::TcpStream;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;

/// Why a session or a message failed.
#[derive(Debug)]
pub enum ClientError {
    Io(io::Error),
    Timeout(&'static str),
    /// The server answered `step` with a reply other than the one expected.
    Reply {
        step: &'static str,
        code: u16,
    },
    /// The server closed the connection while a reply was awaited.
    Closed(&'static str),
    Malformed(&'static str),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Io(error) => write!(f, "i/o error: {error}"),
            ClientError::Timeout(step) => write!(f, "timed out waiting for {step}"),
            ClientError::Reply { step, code } => write!(f, "{step} answered {code}"),
            ClientError::Closed(step) => write!(f, "connection closed before {step} reply"),
            ClientError::Malformed(step) => write!(f, "malformed reply to {step}"),
        }
    }
}

impl From<io::Error> for ClientError {
    fn from(error: io::Error) -> Self {
        ClientError::Io(error)
    }
}

/// The TLS client side: any certificate is accepted (the benchmark measures the server, not
/// the PKI), but handshake signatures are checked as a real client would, and every session
/// is a full handshake (no resumption).
pub fn tls_connector() -> TlsConnector {
    let client = secmx::tls::client_configs(None, false)
        .expect("the opportunistic client configuration needs no files");
    let mut config = ClientConfig::clone(&client.opportunistic);
    config.resumption = rustls::client::Resumption::disabled();
    TlsConnector::from(Arc::new(config))
}

/// Plaintext or TLS, behind one reader and writer.
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Gone,
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Gone => Poll::Ready(Ok(0)),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Gone => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
            Stream::Gone => Poll::Ready(Ok(())),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_close(cx),
            Stream::Tls(s) => Pin::new(s).poll_close(cx),
            Stream::Gone => Poll::Ready(Ok(())),
        }
    }
}

/// An SMTP reply: its code and whether the server offered PIPELINING / STARTTLS in it.
pub struct Reply {
    pub code: u16,
    pub pipelining: bool,
    pub starttls: bool,
}

/// One client connection with its read buffer.
pub struct Connection {
    stream: Stream,
    buffer: Vec<u8>,
    timeout: Duration,
    pub pipelining: bool,
    pub starttls: bool,
}

impl Connection {
    /// Connects (from `source` when given), reads the greeting and says EHLO.
    pub async fn open(
        server: SocketAddr,
        source: Option<SocketAddr>,
        helo: &str,
        timeout: Duration,
    ) -> Result<Connection, ClientError> {
        let tcp = match source {
            None => {
                within(timeout, "connect", async {
                    TcpStream::connect(server).await.map_err(io::Error::from)
                })
                .await?
            }
            Some(source) => connect_from(source, server, timeout).await?,
        };
        tcp.set_nodelay(true).map_err(io::Error::from)?;

        let mut connection = Connection {
            stream: Stream::Plain(tcp),
            buffer: Vec::with_capacity(1024),
            timeout,
            pipelining: false,
            starttls: false,
        };
        connection.expect("greeting", 220).await?;
        connection.ehlo(helo).await?;
        Ok(connection)
    }

    /// EHLO, remembering what the server offers.
    pub async fn ehlo(&mut self, helo: &str) -> Result<(), ClientError> {
        self.send(format!("EHLO {helo}\r\n").as_bytes()).await?;
        let reply = self.reply("EHLO").await?;
        if reply.code != 250 {
            return Err(ClientError::Reply {
                step: "EHLO",
                code: reply.code,
            });
        }
        self.pipelining = reply.pipelining;
        self.starttls = reply.starttls;
        Ok(())
    }

    /// STARTTLS, the handshake, and EHLO again over TLS.
    pub async fn starttls(
        &mut self,
        connector: &TlsConnector,
        name: &ServerName<'static>,
        helo: &str,
    ) -> Result<(), ClientError> {
        self.send(b"STARTTLS\r\n").await?;
        self.expect("STARTTLS", 220).await?;
        if !self.buffer.is_empty() {
            return Err(ClientError::Malformed("STARTTLS (data after the 220)"));
        }
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::Gone) else {
            return Err(ClientError::Malformed("STARTTLS (already in TLS)"));
        };
        let tls = within(
            self.timeout,
            "TLS handshake",
            connector.connect(name.clone(), tcp),
        )
        .await?;
        self.stream = Stream::Tls(Box::new(tls));
        self.ehlo(helo).await
    }

    /// Sends one whole message transaction; returns the time from the end of the data to its
    /// reply, or the reply that refused it.
    pub async fn transaction(
        &mut self,
        envelope: &[u8],
        content: &[u8],
        pipelined: bool,
    ) -> Result<Duration, ClientError> {
        if pipelined {
            self.send(envelope).await?;
            let mail = self.reply("MAIL").await?.code;
            let rcpt = self.reply("RCPT").await?.code;
            let data = self.reply("DATA").await?.code;
            check("MAIL", mail, 250)?;
            check("RCPT", rcpt, 250)?;
            check("DATA", data, 354)?;
        } else {
            for (step, line, want) in split_envelope(envelope) {
                self.send(line).await?;
                self.expect(step, want).await?;
            }
        }
        self.send(content).await?;
        let sent = Instant::now();
        self.expect("end of data", 250).await?;
        Ok(sent.elapsed())
    }

    /// NOOP, expecting 250.
    pub async fn noop(&mut self) -> Result<(), ClientError> {
        self.send(b"NOOP\r\n").await?;
        self.expect("NOOP", 250).await
    }

    /// QUIT and close, without caring much how the server answers.
    pub async fn quit(mut self) {
        if self.send(b"QUIT\r\n").await.is_ok() {
            let _ = self.reply("QUIT").await;
        }
        let _ = self.stream.close().await;
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        let stream = &mut self.stream;
        within(self.timeout, "write", async {
            stream.write_all(bytes).await?;
            stream.flush().await
        })
        .await
    }

    async fn expect(&mut self, step: &'static str, want: u16) -> Result<(), ClientError> {
        check(step, self.reply(step).await?.code, want)
    }

    async fn reply(&mut self, step: &'static str) -> Result<Reply, ClientError> {
        loop {
            if let Some((reply, used)) = parse_reply(&self.buffer, step)? {
                self.buffer.drain(..used);
                return Ok(reply);
            }
            let mut chunk = [0u8; 4096];
            match within(self.timeout, step, self.stream.read(&mut chunk)).await? {
                0 => return Err(ClientError::Closed(step)),
                n => self.buffer.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

/// Runs an i/o future for `step` under `timeout`, telling a timeout from an i/o error.
async fn within<T>(
    timeout: Duration,
    step: &'static str,
    future: impl Future<Output = io::Result<T>>,
) -> Result<T, ClientError> {
    match glommio::timer::timeout(timeout, async { future.await.map_err(GlommioError::from) }).await
    {
        Ok(value) => Ok(value),
        Err(GlommioError::TimedOut(_)) => Err(ClientError::Timeout(step)),
        Err(error) => Err(ClientError::Io(error.into())),
    }
}

fn check(step: &'static str, code: u16, want: u16) -> Result<(), ClientError> {
    if code == want {
        Ok(())
    } else {
        Err(ClientError::Reply { step, code })
    }
}

/// The three command lines of an envelope built by [`envelope`], with their expected replies.
fn split_envelope(envelope: &[u8]) -> Vec<(&'static str, &[u8], u16)> {
    let steps = [("MAIL", 250), ("RCPT", 250), ("DATA", 354)];
    envelope
        .split_inclusive(|&b| b == b'\n')
        .zip(steps)
        .map(|(line, (step, want))| (step, line, want))
        .collect()
}

/// MAIL, RCPT and DATA command lines.
pub fn envelope(reverse_path: &str, forward_path: &str) -> Vec<u8> {
    format!("MAIL FROM:<{reverse_path}>\r\nRCPT TO:<{forward_path}>\r\nDATA\r\n").into_bytes()
}

/// A message with a few headers and `size` payload bytes in 78-character lines, then the
/// end-of-data line. No line starts with a dot, so nothing needs stuffing.
pub fn message(reverse_path: &str, forward_path: &str, size: usize) -> Vec<u8> {
    let mut text = format!(
        "From: <{reverse_path}>\r\nTo: <{forward_path}>\r\nSubject: secmx-load\r\n\
         Date: Thu, 1 Jan 2026 00:00:00 +0000\r\nMessage-ID: <load@source.example>\r\n\r\n"
    )
    .into_bytes();
    let alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut written = 0;
    while written < size {
        let line = (size - written).min(80);
        let chars = line.saturating_sub(2).max(1);
        for i in 0..chars {
            text.push(alphabet[(written + i) % alphabet.len()]);
        }
        text.extend_from_slice(b"\r\n");
        written += line.max(3);
    }
    text.extend_from_slice(b".\r\n");
    text
}

/// Finds one complete reply at the start of `buffer`: its code, what an EHLO reply offers,
/// and how many bytes it used.
fn parse_reply(buffer: &[u8], step: &'static str) -> Result<Option<(Reply, usize)>, ClientError> {
    let mut reply = Reply {
        code: 0,
        pipelining: false,
        starttls: false,
    };
    let mut start = 0;
    while let Some(end) = memchr::memchr(b'\n', &buffer[start..]) {
        let line = &buffer[start..start + end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        start += end + 1;

        if line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) {
            return Err(ClientError::Malformed(step));
        }
        let code = line[..3]
            .iter()
            .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
        let keyword = line.get(4..).unwrap_or_default();
        reply.code = code;
        reply.pipelining |= keyword.eq_ignore_ascii_case(b"PIPELINING");
        reply.starttls |= keyword.eq_ignore_ascii_case(b"STARTTLS");
        if line.get(3) != Some(&b'-') {
            return Ok(Some((reply, start)));
        }
    }
    Ok(None)
}

/// Connects from a chosen loopback source address. Glommio's own connect cannot bind first,
/// so the socket connects without blocking and is polled until it is writable.
async fn connect_from(
    source: SocketAddr,
    server: SocketAddr,
    timeout: Duration,
) -> Result<TcpStream, ClientError> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};

    let socket = Socket::new(
        Domain::for_address(server),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_nonblocking(true)?;
    socket.bind(&SockAddr::from(source))?;
    match socket.connect(&SockAddr::from(server)) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e.into()),
    }

    let deadline = Instant::now() + timeout;
    loop {
        let mut poll = libc::pollfd {
            fd: socket.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        let ready = unsafe { libc::poll(&mut poll, 1, 0) };
        if ready > 0 {
            if let Some(error) = socket.take_error()? {
                return Err(error.into());
            }
            // SAFETY: the descriptor is a connected TCP socket whose ownership moves here.
            return Ok(unsafe { TcpStream::from_raw_fd(socket.into_raw_fd()) });
        }
        if Instant::now() > deadline {
            return Err(ClientError::Timeout("connect"));
        }
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multiline_ehlo_reply_reports_offered_extensions() {
        let text = b"250-mx.example\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250 STARTTLS\r\nrest";
        let (reply, used) = parse_reply(text, "EHLO").unwrap().unwrap();
        assert_eq!(
            (reply.code, reply.pipelining, reply.starttls),
            (250, true, true)
        );
        assert_eq!(&text[used..], b"rest");
    }

    #[test]
    fn incomplete_reply_waits_for_more() {
        assert!(
            parse_reply(b"250-mx.example\r\n250-PIPE", "EHLO")
                .unwrap()
                .is_none()
        );
        assert!(parse_reply(b"25", "EHLO").unwrap().is_none());
    }

    #[test]
    fn reply_without_code_is_malformed() {
        assert!(parse_reply(b"hello\r\n", "greeting").is_err());
    }

    #[test]
    fn message_payload_has_the_asked_size_and_ends_with_the_dot_line() {
        for size in [0, 1, 3, 1024, 65536] {
            let text = message("a@b", "c@d", size);
            let body_start = memchr::memmem::find(&text, b"\r\n\r\n").unwrap() + 4;
            let body = &text[body_start..text.len() - 3];
            assert!(
                body.len() >= size && body.len() <= size + 3,
                "size {size}: {}",
                body.len()
            );
            assert!(text.ends_with(b"\r\n.\r\n"));
            assert!(
                !body
                    .split(|&b| b == b'\n')
                    .any(|line| line.starts_with(b"."))
            );
        }
    }

    #[test]
    fn envelope_splits_into_three_steps() {
        let env = envelope("a@b", "c@d");
        let steps = split_envelope(&env);
        assert_eq!(steps.len(), 3);
        assert_eq!(steps[1].1, b"RCPT TO:<c@d>\r\n");
        assert_eq!(steps[2].2, 354);
    }
}
