//! The byte transport under the SMTP client: one TCP stream, plain or inside TLS, with a read
//! buffer that yields whole replies (RFC 5321 section 4.2).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use futures_rustls::client::TlsStream;
use glommio::net::TcpStream;

use super::protocol::{ReplyError, parse_reply};
use crate::smtp::reply::Reply;

/// Smallest free space offered to one read.
const READ_CHUNK: usize = 8 * 1024;

/// The connection, before or after STARTTLS.
pub(super) enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
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
            Stream::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_close(cx),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_close(cx),
        }
    }
}

/// Why no reply could be read.
#[derive(Debug)]
pub(super) enum WireError {
    Io(io::Error),
    Reply(ReplyError),
}

/// A stream with its read buffer. Replies are parsed in place; bytes after a reply stay
/// buffered for the next one (pipelining, RFC 2920).
pub(super) struct Wire {
    stream: Stream,
    buf: Vec<u8>,
    start: usize,
}

impl Wire {
    pub(super) fn new(stream: Stream) -> Wire {
        Wire {
            stream,
            buf: Vec::with_capacity(READ_CHUNK),
            start: 0,
        }
    }

    /// Bytes received but not yet consumed as a reply.
    pub(super) fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Reads until one complete reply is buffered and returns it.
    pub(super) async fn read_reply(&mut self) -> Result<Reply, WireError> {
        loop {
            if let Some((reply, used)) =
                parse_reply(&self.buf[self.start..]).map_err(WireError::Reply)?
            {
                self.start += used;
                return Ok(reply);
            }
            self.fill().await.map_err(WireError::Io)?;
        }
    }

    async fn fill(&mut self) -> io::Result<()> {
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let filled = self.buf.len();
        self.buf.resize(filled + READ_CHUNK, 0);
        let read = self.stream.read(&mut self.buf[filled..]).await;
        self.buf.truncate(filled + *read.as_ref().unwrap_or(&0));
        match read? {
            0 => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed by the server",
            )),
            _ => Ok(()),
        }
    }

    /// Writes all of `bytes` and flushes them through TLS, if any.
    pub(super) async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// Gives back the plain TCP stream for the TLS handshake, dropping whatever the server sent
    /// after its reply to STARTTLS (RFC 3207 section 4.2; CVE-2011-0411 in reverse).
    pub(super) fn into_plain(self) -> Option<TcpStream> {
        match self.stream {
            Stream::Plain(tcp) => Some(tcp),
            Stream::Tls(_) => None,
        }
    }

    /// Sends TLS close_notify when there is TLS, then shuts the stream down.
    pub(super) async fn close(mut self) -> io::Result<()> {
        self.stream.close().await
    }
}
