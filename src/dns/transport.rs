//! One exchange with one upstream server, on glommio sockets.
//!
//! UDP: a fresh socket per query, bound to port 0 so the kernel picks a random ephemeral source
//! port (RFC 5452 9.2), and connected to the server so ICMP errors end the try early. Each
//! datagram is checked against the server's address and port before [`check_reply`] looks at
//! it; anything that does not match is dropped and the wait goes on until the deadline
//! (RFC 5452 9.1). TCP (RFC 7766, RFC 1035 4.2.2): one connection per question, messages with a
//! two-octet length prefix.

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::time::Duration;

use futures_lite::future;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpStream, UdpSocket};
use hickory_proto::op::Message;
use tracing::debug;

use super::wire::{Question, ReplyCheck, check_reply};

/// Largest datagram accepted; more than the advertised EDNS payload, in case a server sends
/// more than it was asked to.
const MAX_DATAGRAM: usize = 65_535;

/// How one try with one server failed.
#[derive(Debug)]
pub enum TryError {
    Timeout(Duration),
    Io(io::Error),
    /// The server's reply to our question did not decode.
    Malformed(String),
    /// Over TCP, the reply was not for our question, or was itself truncated.
    Unusable(&'static str),
}

impl fmt::Display for TryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryError::Timeout(limit) => write!(f, "no reply within {} ms", limit.as_millis()),
            TryError::Io(error) => write!(f, "{error}"),
            TryError::Malformed(problem) => write!(f, "malformed reply: {problem}"),
            TryError::Unusable(problem) => write!(f, "unusable reply over TCP: {problem}"),
        }
    }
}

impl From<io::Error> for TryError {
    fn from(error: io::Error) -> TryError {
        TryError::Io(error)
    }
}

impl From<glommio::GlommioError<()>> for TryError {
    fn from(error: glommio::GlommioError<()>) -> TryError {
        TryError::Io(error.into())
    }
}

/// What a UDP try brought back.
#[derive(Debug)]
pub enum UdpReply {
    Accepted(Message),
    /// TC=1: the question must be asked again over TCP.
    Truncated,
}

/// Sends `query` (transaction `id`, asking `question`) to `server` over UDP and waits up to
/// `limit` for the matching reply.
pub async fn udp_exchange(
    server: SocketAddr,
    query: &[u8],
    id: u16,
    question: &Question,
    limit: Duration,
) -> Result<UdpReply, TryError> {
    let socket = udp_socket_for(server)?;
    let exchange = async {
        socket.send_to(query, server).await?;
        let mut buffer = vec![0u8; MAX_DATAGRAM];
        loop {
            let (len, source) = socket.recv_from(&mut buffer).await?;
            if source != server {
                debug!(
                    %server,
                    %source,
                    qname = %question.name,
                    "dropped datagram from another address"
                );
                continue;
            }
            match check_reply(&buffer[..len], id, question) {
                ReplyCheck::Accepted(message) => return Ok(UdpReply::Accepted(message)),
                ReplyCheck::Truncated => return Ok(UdpReply::Truncated),
                ReplyCheck::Malformed(problem) => return Err(TryError::Malformed(problem)),
                ReplyCheck::Rejected(reason) => {
                    debug!(
                        %server,
                        qname = %question.name,
                        reason,
                        "dropped datagram that is not our reply"
                    );
                }
            }
        }
    };
    with_deadline(limit, exchange).await
}

/// Asks `question` (transaction `id`) of `server` over TCP, within `limit` for connecting,
/// sending and reading the reply together.
pub async fn tcp_exchange(
    server: SocketAddr,
    query: &[u8],
    id: u16,
    question: &Question,
    limit: Duration,
) -> Result<Message, TryError> {
    let exchange = async {
        let mut stream = TcpStream::connect_timeout(server, limit).await?;
        let len = u16::try_from(query.len()).map_err(|_| TryError::Unusable("query too long"))?;
        let mut framed = Vec::with_capacity(query.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(query);
        stream.write_all(&framed).await?;
        stream.flush().await?;

        let mut prefix = [0u8; 2];
        stream.read_exact(&mut prefix).await?;
        let mut reply = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
        stream.read_exact(&mut reply).await?;
        match check_reply(&reply, id, question) {
            ReplyCheck::Accepted(message) => Ok(message),
            ReplyCheck::Truncated => Err(TryError::Unusable("TC=1 over TCP")),
            ReplyCheck::Rejected(reason) => Err(TryError::Unusable(reason)),
            ReplyCheck::Malformed(problem) => Err(TryError::Malformed(problem)),
        }
    };
    with_deadline(limit, exchange).await
}

async fn with_deadline<T>(
    limit: Duration,
    work: impl Future<Output = Result<T, TryError>>,
) -> Result<T, TryError> {
    let expiry = async {
        glommio::timer::sleep(limit).await;
        Err(TryError::Timeout(limit))
    };
    future::or(work, expiry).await
}

/// A UDP socket on a kernel-chosen random port, connected to `server`. Built with std rather
/// than `glommio::net::UdpSocket::bind`, which sets SO_REUSEPORT: with it, the kernel may hand
/// the same ephemeral port to two concurrent queries and split their replies between them.
fn udp_socket_for(server: SocketAddr) -> io::Result<UdpSocket> {
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = std::net::UdpSocket::bind(local)?;
    socket.connect(server)?;
    socket.set_nonblocking(true)?;
    // SAFETY: the descriptor comes from `into_raw_fd`, so it is open and owned by nobody else;
    // glommio takes ownership and closes it on drop.
    Ok(unsafe { UdpSocket::from_raw_fd(socket.into_raw_fd()) })
}
