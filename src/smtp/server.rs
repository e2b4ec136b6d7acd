//! The SMTP listener on glommio: accept loop, per-connection I/O, STARTTLS (RFC 3207),
//! PIPELINING (RFC 2920) and timeouts (RFC 5321 section 4.5.3.2).
//!
//! This is the thin layer that touches sockets. Commands are parsed in place in a per-connection
//! read buffer and answered by the [`Session`]; replies to pipelined commands are batched and
//! written before the next read. The same code serves plaintext and TLS streams. After a
//! STARTTLS reply every byte already buffered is dropped, so plaintext sent behind STARTTLS is
//! never executed inside TLS (CVE-2011-0411).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use tracing::Instrument;

use super::data::{DataDecoder, Feed};
use super::policy::{PolicyError, RecipientPolicy};
use super::reply::{Reply, Status};
use super::session::{Action, Session};
use crate::config::{Config, Role, Smtp};
use crate::envelope::{Envelope, QueueId};

/// Read buffer size between messages: room for two longest command lines, and for a pipelined
/// envelope of a few dozen recipients in one read. Idle sessions hold only this.
const IDLE_BUFFER: usize = 1024;
/// Read buffer size while a message is coming in.
const DATA_BUFFER: usize = 32 * 1024;
/// Message read buffers a core keeps for reuse once their messages are in: enough for the
/// messages a busy core receives at once, at most 2 MiB.
const SPARE_DATA_BUFFERS: usize = 64;
/// Initial room for a message's content; larger messages grow it by doubling.
const BODY_CAPACITY: usize = 4096;
/// Longest command line with its CRLF (RFC 5321 section 4.5.3.1.4).
const MAX_COMMAND_LINE: usize = 512;
/// Bound on writing a last reply to a client that is being dropped.
const FAREWELL_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the spool could not take a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubmitError {
    /// No room for the message now.
    SpoolFull,
    /// The spool failed; the text is for the log.
    Unavailable(String),
}

impl SubmitError {
    /// The reply sent instead of the 250.
    pub fn reply(&self) -> Reply {
        match self {
            SubmitError::SpoolFull => {
                Reply::fixed(452, Status::new(4, 3, 1), "Insufficient system storage")
            }
            SubmitError::Unavailable(_) => Reply::fixed(
                451,
                Status::new(4, 3, 0),
                "Local error in processing, try again later",
            ),
        }
    }
}

impl fmt::Display for SubmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubmitError::SpoolFull => f.write_str("spool full"),
            SubmitError::Unavailable(why) => write!(f, "spool unavailable: {why}"),
        }
    }
}

/// Where accepted messages go: the spool of this core.
// Futures stay on the core that made them, so they need not be Send.
#[allow(async_fn_in_trait)]
pub trait Intake {
    /// Stores the message durably; the client gets its 250 only after this returns `Ok`.
    async fn submit(&self, envelope: Envelope, body: Vec<u8>) -> Result<QueueId, SubmitError>;
}

/// What every session of a core shares.
pub struct IngressContext {
    pub config: Rc<Config>,
    pub tls: Arc<rustls::ServerConfig>,
    pub policy: RecipientPolicy,
    /// Open connections of this core, over all its listeners.
    limits: Rc<ConnectionLimits>,
    /// Message read buffers not in use, already allocated and initialised.
    spare_data_buffers: RefCell<Vec<Vec<u8>>>,
}

impl IngressContext {
    pub fn new(
        config: Rc<Config>,
        tls: Arc<rustls::ServerConfig>,
    ) -> Result<IngressContext, PolicyError> {
        let policy = RecipientPolicy::from_config(&config)?;
        Ok(IngressContext {
            config,
            tls,
            policy,
            limits: Rc::default(),
            spare_data_buffers: RefCell::default(),
        })
    }

    /// A read buffer of `DATA_BUFFER` bytes for a message, reused when one is spare.
    fn take_data_buffer(&self) -> Vec<u8> {
        let spare = self.spare_data_buffers.borrow_mut().pop();
        spare.unwrap_or_else(|| vec![0; DATA_BUFFER])
    }

    /// Keeps a message read buffer for the next message, within `SPARE_DATA_BUFFERS`.
    fn give_back_data_buffer(&self, buffer: Vec<u8>) {
        let mut spare = self.spare_data_buffers.borrow_mut();
        if buffer.len() == DATA_BUFFER && spare.len() < SPARE_DATA_BUFFERS {
            spare.push(buffer);
        }
    }

    /// Sessions open on this core.
    pub fn active_sessions(&self) -> usize {
        self.limits.total.get()
    }
}

/// Accepts connections on `listener` forever, one task per connection on this core.
pub async fn serve_listener<I: Intake + 'static>(
    listener: TcpListener,
    role: Role,
    ctx: Rc<IngressContext>,
    intake: Rc<I>,
) {
    loop {
        let stream = match listener.accept().await {
            Ok(stream) => stream,
            Err(error) => {
                // Out of descriptors, usually: give the sessions a moment to finish.
                tracing::warn!(%error, "accept failed");
                glommio::timer::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(peer) = stream.peer_addr() else {
            continue;
        };
        let slot = ConnectionLimits::admit(&ctx.limits, peer.ip(), &ctx.config.smtp);
        let span = tracing::info_span!("smtp_session", peer = %peer.ip(), ?role);
        let (ctx, intake) = (ctx.clone(), intake.clone());
        let task = async move {
            match slot {
                Some(_slot) => serve_connection(stream, peer, role, ctx, intake).await,
                None => refuse_busy(stream, &ctx.config.hostname).await,
            }
        };
        glommio::spawn_local(task.instrument(span)).detach();
    }
}

/// Open connections per core and per client address.
#[derive(Default)]
struct ConnectionLimits {
    total: Cell<usize>,
    per_client: RefCell<HashMap<IpAddr, usize>>,
}

/// One admitted connection; gives its place back when dropped.
struct ConnectionSlot {
    limits: Rc<ConnectionLimits>,
    ip: IpAddr,
}

impl ConnectionLimits {
    fn admit(limits: &Rc<ConnectionLimits>, ip: IpAddr, smtp: &Smtp) -> Option<ConnectionSlot> {
        let mut per_client = limits.per_client.borrow_mut();
        let from_client = per_client.entry(ip).or_insert(0);
        if limits.total.get() >= smtp.max_connections_per_core
            || *from_client >= smtp.max_connections_per_client
        {
            if *from_client == 0 {
                per_client.remove(&ip);
            }
            return None;
        }
        *from_client += 1;
        limits.total.set(limits.total.get() + 1);
        Some(ConnectionSlot {
            limits: limits.clone(),
            ip,
        })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.limits.total.set(self.limits.total.get() - 1);
        let mut per_client = self.limits.per_client.borrow_mut();
        if let Some(count) = per_client.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                per_client.remove(&self.ip);
            }
        }
    }
}

async fn refuse_busy(mut stream: TcpStream, hostname: &str) {
    tracing::info!("connection refused: too many connections");
    let mut out = Vec::new();
    let text = format!("{hostname} Too many connections, try again later");
    Reply::new(421, Some(Status::new(4, 7, 0)), text).write_to(&mut out);
    let _ = within(FAREWELL_TIMEOUT, stream.write_all(&out)).await;
    let _ = within(FAREWELL_TIMEOUT, stream.close()).await;
}

/// Runs `future` for at most `duration`; `None` when time ran out. The timer is armed only if
/// the future does not finish at once, as writes and reads of data already there do: most
/// socket operations of a session then cost no timer at all.
async fn within<T>(duration: Duration, future: impl Future<Output = T>) -> Option<T> {
    let mut future = std::pin::pin!(future);
    if let Some(done) = futures_lite::future::poll_once(future.as_mut()).await {
        return Some(done);
    }
    let expired = async {
        glommio::timer::sleep(duration).await;
        None
    };
    futures_lite::future::or(async { Some(future.await) }, expired).await
}

async fn serve_connection<I: Intake>(
    stream: TcpStream,
    peer: SocketAddr,
    role: Role,
    ctx: Rc<IngressContext>,
    intake: Rc<I>,
) {
    let _ = stream.set_nodelay(true);
    tracing::debug!("session started");
    let mut session = Session::new(ctx.config.clone(), role, peer.ip());
    let mut plain = Connection::new(stream, &ctx.config.smtp);
    session.greeting(&mut plain.out);
    if plain.run(&mut session, &ctx, &*intake).await != Outcome::StartTls {
        plain.close().await;
        return;
    }

    let discarded = plain.end - plain.start;
    if discarded > 0 {
        tracing::info!(discarded, "plaintext sent behind STARTTLS dropped");
    }
    // The handshake and the TLS session live in an allocation of their own, so that a
    // plaintext session's task (idle sessions above all) has no room set aside for them.
    Box::pin(serve_tls(plain.stream, session, &ctx, &*intake)).await;
}

/// The STARTTLS handshake, then the session inside TLS until it ends.
async fn serve_tls<I: Intake>(
    stream: TcpStream,
    mut session: Session,
    ctx: &IngressContext,
    intake: &I,
) {
    let acceptor = futures_rustls::TlsAcceptor::from(ctx.tls.clone());
    let handshake = within(ctx.config.smtp.command_timeout, acceptor.accept(stream));
    let stream = match handshake.await {
        Some(Ok(stream)) => stream,
        Some(Err(error)) => {
            tracing::info!(%error, "TLS handshake failed");
            return;
        }
        None => {
            tracing::info!("TLS handshake timed out");
            return;
        }
    };
    let tls = describe_tls(stream.get_ref().1);
    tracing::debug!(%tls, "TLS established");
    session.tls_started(tls);

    let mut secure = Connection::new(stream, &ctx.config.smtp);
    let outcome = secure.run(&mut session, ctx, intake).await;
    debug_assert_ne!(outcome, Outcome::StartTls, "STARTTLS is refused inside TLS");
    secure.close().await;
}

/// `TLSv1.3 TLS13_AES_256_GCM_SHA384`.
fn describe_tls(connection: &rustls::ServerConnection) -> String {
    let version = match connection.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
        Some(other) => format!("{other:?}"),
        None => "unknown".to_string(),
    };
    let suite = connection
        .negotiated_cipher_suite()
        .map(|s| s.suite())
        .map_or("unknown".to_string(), |s| {
            s.as_str().map_or_else(|| format!("{s:?}"), str::to_string)
        });
    format!("{version} {suite}")
}

/// How a connection's command loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// QUIT, too many errors, timeout, or the client went away.
    Closed,
    /// The 220 to STARTTLS was sent; the caller does the handshake.
    StartTls,
}

/// Why reading or writing stopped.
enum Stop {
    Eof,
    Timeout,
    Io(io::Error),
}

/// One stream with its read buffer and pending replies.
struct Connection<S> {
    stream: S,
    /// Received bytes live in `buf[start..end]`.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The idle-size read buffer, set aside while `buf` is a message buffer.
    idle_buf: Vec<u8>,
    /// Replies not yet written.
    out: Vec<u8>,
    /// Inside a command line longer than 512 octets, waiting for its CRLF.
    skipping_long_line: bool,
    greeting_timeout: Duration,
    command_timeout: Duration,
    data_timeout: Duration,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    fn new(stream: S, smtp: &Smtp) -> Connection<S> {
        Connection {
            stream,
            buf: vec![0; IDLE_BUFFER],
            start: 0,
            end: 0,
            idle_buf: Vec::new(),
            out: Vec::with_capacity(256),
            skipping_long_line: false,
            greeting_timeout: smtp.greeting_timeout,
            command_timeout: smtp.command_timeout,
            data_timeout: smtp.data_timeout,
        }
    }

    /// Answers commands until the session ends or STARTTLS is accepted.
    async fn run<I: Intake>(
        &mut self,
        session: &mut Session,
        ctx: &IngressContext,
        intake: &I,
    ) -> Outcome {
        match self.serve_commands(session, ctx, intake).await {
            Ok(outcome) => outcome,
            Err(Stop::Timeout) => {
                tracing::info!("client timed out");
                session.timed_out(&mut self.out);
                let _ = within(FAREWELL_TIMEOUT, self.flush()).await;
                Outcome::Closed
            }
            Err(Stop::Eof) => {
                tracing::debug!("client closed the connection");
                Outcome::Closed
            }
            Err(Stop::Io(error)) => {
                tracing::debug!(%error, "connection failed");
                Outcome::Closed
            }
        }
    }

    /// Reads and answers commands. `greeting_timeout` applies until EHLO/HELO (again after
    /// STARTTLS), `command_timeout` after it, `data_timeout` between chunks of a message.
    async fn serve_commands<I: Intake>(
        &mut self,
        session: &mut Session,
        ctx: &IngressContext,
        intake: &I,
    ) -> Result<Outcome, Stop> {
        loop {
            let Some(mut action) = self.next_command(session, &ctx.policy) else {
                let timeout = match session.has_helo() {
                    true => self.command_timeout,
                    false => self.greeting_timeout,
                };
                self.fill(timeout).await?;
                continue;
            };
            if action == Action::EnterData {
                // In a box of its own: an idle session's task need not have room for a
                // message in progress and its spool submission.
                action = Box::pin(self.receive_message(session, ctx, intake)).await?;
            }
            match action {
                Action::Quit => {
                    self.flush().await?;
                    return Ok(Outcome::Closed);
                }
                Action::StartTls => {
                    self.flush().await?;
                    return Ok(Outcome::StartTls);
                }
                _ => {}
            }
        }
    }

    /// Handles the next complete command line in the buffer, if there is one.
    fn next_command(&mut self, session: &mut Session, policy: &RecipientPolicy) -> Option<Action> {
        let pending = &self.buf[self.start..self.end];
        let Some(len) = memchr::memmem::find(pending, b"\r\n") else {
            // A line that cannot fit any more is skipped; keep a final CR, it may start the CRLF.
            if pending.len() > MAX_COMMAND_LINE - 1 {
                self.skipping_long_line = true;
                let keep = usize::from(pending.last() == Some(&b'\r'));
                self.start = self.end - keep;
            }
            return None;
        };
        let line = self.start..self.start + len;
        self.start += len + 2;
        if self.skipping_long_line || len + 2 > MAX_COMMAND_LINE {
            self.skipping_long_line = false;
            return Some(session.line_too_long(&mut self.out));
        }
        Some(session.command(&self.buf[line], policy, &mut self.out))
    }

    /// Receives DATA after the 354 and queues the message when the session accepts it;
    /// returns what to do next.
    async fn receive_message<I: Intake>(
        &mut self,
        session: &mut Session,
        ctx: &IngressContext,
        intake: &I,
    ) -> Result<Action, Stop> {
        let mut decoder = session.data_decoder();
        let header = session.received_header();
        let mut body = Vec::with_capacity(header.len() + BODY_CAPACITY);
        body.extend_from_slice(header.as_bytes());
        self.enter_data(ctx);
        let received = self.read_content(&mut decoder, &mut body).await;
        self.leave_data(ctx);
        received?;

        let verdict = decoder.finish();
        if let Err(error) = verdict {
            tracing::info!(reply = %error.reply(), "message refused");
        }
        let Action::Submit(envelope) = session.end_of_data(verdict, &mut self.out) else {
            return Ok(Action::Continue);
        };
        // The replies before DATA go out now; the 250 waits for the spool.
        self.flush().await?;
        let (size, recipients) = (body.len(), envelope.recipients.len());
        let result = intake.submit(envelope, body).await;
        match &result {
            Ok(queue_id) => tracing::info!(
                %queue_id,
                peer = %session.peer(),
                tls = session.tls(),
                size,
                recipients,
                "received"
            ),
            Err(error) => tracing::warn!(%error, "message not queued"),
        }
        session.submitted(result, &mut self.out);
        Ok(Action::Continue)
    }

    /// Decodes the message content into `body` up to its end of data.
    async fn read_content(
        &mut self,
        decoder: &mut DataDecoder,
        body: &mut Vec<u8>,
    ) -> Result<(), Stop> {
        loop {
            match decoder.feed(&self.buf[self.start..self.end], body) {
                Feed::End { consumed } => {
                    self.start += consumed;
                    return Ok(());
                }
                Feed::More => self.start = self.end,
            }
            self.fill(self.data_timeout).await?;
        }
    }

    /// Moves what is buffered into a message-sized read buffer, one of the core's spares when
    /// there is one: no allocation and no zeroing per message.
    fn enter_data(&mut self, ctx: &IngressContext) {
        if self.buf.len() >= DATA_BUFFER {
            return;
        }
        let mut data_buf = ctx.take_data_buffer();
        let pending = self.end - self.start;
        data_buf[..pending].copy_from_slice(&self.buf[self.start..self.end]);
        self.idle_buf = std::mem::replace(&mut self.buf, data_buf);
        (self.start, self.end) = (0, pending);
    }

    /// Back to the idle buffer after a message, keeping pipelined bytes behind it; the message
    /// buffer goes back to the core. When more is pending than the idle buffer holds, the
    /// message buffer stays until the next message ends.
    fn leave_data(&mut self, ctx: &IngressContext) {
        let pending = self.end - self.start;
        if self.buf.len() <= IDLE_BUFFER || pending > IDLE_BUFFER {
            return;
        }
        let mut idle_buf = std::mem::take(&mut self.idle_buf);
        idle_buf.resize(IDLE_BUFFER, 0);
        idle_buf[..pending].copy_from_slice(&self.buf[self.start..self.end]);
        let data_buf = std::mem::replace(&mut self.buf, idle_buf);
        (self.start, self.end) = (0, pending);
        ctx.give_back_data_buffer(data_buf);
    }

    /// Sends pending replies, then reads more bytes; `Eof` when the client closed.
    async fn fill(&mut self, timeout: Duration) -> Result<(), Stop> {
        self.flush().await?;
        if self.start > 0 {
            // At most a partial command line is left over: cheap to move.
            self.buf.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
        }
        let read = within(timeout, self.stream.read(&mut self.buf[self.end..]));
        match read.await {
            None => Err(Stop::Timeout),
            Some(Ok(0)) => Err(Stop::Eof),
            Some(Ok(n)) => {
                self.end += n;
                Ok(())
            }
            Some(Err(error)) => Err(Stop::Io(error)),
        }
    }

    /// Writes pending replies in one write.
    async fn flush(&mut self) -> Result<(), Stop> {
        if self.out.is_empty() {
            return Ok(());
        }
        let write = async {
            self.stream.write_all(&self.out).await?;
            self.stream.flush().await
        };
        match within(self.command_timeout, write).await {
            None => Err(Stop::Timeout),
            Some(Err(error)) => Err(Stop::Io(error)),
            Some(Ok(())) => {
                self.out.clear();
                Ok(())
            }
        }
    }

    /// Sends what is pending and closes; for TLS this includes close_notify.
    async fn close(&mut self) {
        let _ = within(FAREWELL_TIMEOUT, self.flush()).await;
        let _ = within(FAREWELL_TIMEOUT, self.stream.close()).await;
    }
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
