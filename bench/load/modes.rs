//! What one executor does in each mode: a share of the sessions, run concurrently.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Instant;

use futures_rustls::TlsConnector;
use rustls::pki_types::ServerName;

use crate::args::Options;
use crate::client::{self, ClientError, Connection};
use crate::report::Tally;

/// This executor's part of the run.
pub struct Share {
    /// Index of this executor's first session among all sessions (for source addresses).
    pub first_session: usize,
    pub sessions: usize,
    pub messages: usize,
}

/// Shared by the sessions of one executor (single-threaded: Rc and Cell).
struct Context {
    options: Options,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    tally: RefCell<Tally>,
}

impl Context {
    fn new(options: Options) -> Result<Rc<Context>, String> {
        let tls = if options.starttls || options.mode == crate::args::Mode::Handshake {
            let name = ServerName::try_from(options.tls_name.clone())
                .map_err(|_| format!("--tls-name: `{}` is not a server name", options.tls_name))?;
            Some((client::tls_connector(), name))
        } else {
            None
        };
        Ok(Rc::new(Context {
            options,
            tls,
            tally: RefCell::new(Tally::new(Instant::now())),
        }))
    }

    /// Connects, says EHLO and, when asked, upgrades to TLS.
    async fn open(&self, session: usize, starttls: bool) -> Result<Connection, ClientError> {
        let options = &self.options;
        let source = options.source_for(session);
        let mut connection =
            Connection::open(options.server, source, &options.helo, options.timeout).await?;
        self.tally.borrow_mut().connections += 1;
        if starttls {
            let (connector, name) = self.tls.as_ref().expect("TLS set up for STARTTLS runs");
            if !connection.starttls {
                return Err(ClientError::Malformed("EHLO (STARTTLS not offered)"));
            }
            connection.starttls(connector, name, &options.helo).await?;
        }
        Ok(connection)
    }

    fn into_tally(self: Rc<Self>) -> Tally {
        match Rc::try_unwrap(self) {
            Ok(context) => context.tally.into_inner(),
            Err(_) => panic!("a session outlived its executor's run"),
        }
    }
}

/// Load mode: `share.messages` messages over `share.sessions` sessions; each session takes the
/// next message until none is left.
pub async fn load(options: Options, share: Share) -> Result<Tally, String> {
    let context = Context::new(options)?;
    let remaining = Rc::new(Cell::new(share.messages));
    let envelope: Rc<[u8]> =
        client::envelope(&context.options.reverse_path, &context.options.forward_path).into();
    let content: Rc<[u8]> = client::message(
        &context.options.reverse_path,
        &context.options.forward_path,
        context.options.size,
    )
    .into();

    let tasks: Vec<_> = (0..share.sessions)
        .map(|i| {
            let context = context.clone();
            let remaining = remaining.clone();
            let (envelope, content) = (envelope.clone(), content.clone());
            glommio::spawn_local(async move {
                load_session(
                    &context,
                    share.first_session + i,
                    &remaining,
                    &envelope,
                    &content,
                )
                .await
            })
        })
        .collect();
    for task in tasks {
        task.await;
    }
    Ok(context.into_tally())
}

fn take_one(remaining: &Cell<usize>) -> bool {
    let left = remaining.get();
    remaining.set(left.saturating_sub(1));
    left > 0
}

async fn load_session(
    context: &Context,
    session: usize,
    remaining: &Cell<usize>,
    envelope: &[u8],
    content: &[u8],
) {
    let options = &context.options;
    let mut open: Option<Connection> = None;
    while take_one(remaining) {
        context.tally.borrow_mut().attempted += 1;
        let mut connection = match open.take() {
            Some(connection) => connection,
            None => match context.open(session, options.starttls).await {
                Ok(connection) => connection,
                Err(error) => {
                    context.tally.borrow_mut().failure(error);
                    continue;
                }
            },
        };

        let pipelined = options.pipelining && connection.pipelining;
        match connection.transaction(envelope, content, pipelined).await {
            Ok(latency) => context.tally.borrow_mut().success(Some(latency)),
            Err(error) => {
                context.tally.borrow_mut().failure(error);
                continue;
            }
        }
        if options.connection_per_message {
            connection.quit().await;
        } else {
            open = Some(connection);
        }
    }
    if let Some(connection) = open {
        connection.quit().await;
    }
}

/// Handshake mode: every session repeats connect, EHLO, STARTTLS, EHLO, QUIT until the
/// duration is over. The latency recorded is STARTTLS to the EHLO reply over TLS.
pub async fn handshake(options: Options, share: Share) -> Result<Tally, String> {
    let context = Context::new(options)?;
    let deadline = Instant::now() + context.options.duration;
    let tasks: Vec<_> = (0..share.sessions)
        .map(|i| {
            let context = context.clone();
            glommio::spawn_local(async move {
                while Instant::now() < deadline {
                    handshake_once(&context, share.first_session + i).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await;
    }
    Ok(context.into_tally())
}

async fn handshake_once(context: &Context, session: usize) {
    context.tally.borrow_mut().attempted += 1;
    let mut connection = match context.open(session, false).await {
        Ok(connection) => connection,
        Err(error) => return context.tally.borrow_mut().failure(error),
    };
    if !connection.starttls {
        return context
            .tally
            .borrow_mut()
            .failure("EHLO did not offer STARTTLS");
    }
    let (connector, name) = context
        .tls
        .as_ref()
        .expect("TLS is set up in handshake mode");
    let started = Instant::now();
    match connection
        .starttls(connector, name, &context.options.helo)
        .await
    {
        Ok(()) => {
            context.tally.borrow_mut().success(Some(started.elapsed()));
            connection.quit().await;
        }
        Err(error) => context.tally.borrow_mut().failure(error),
    }
}

/// Across executors in idle mode: all sessions are up before any hold starts.
pub struct IdleSync {
    pub barrier: Barrier,
    pub established: AtomicUsize,
    pub failed: AtomicUsize,
}

impl IdleSync {
    pub fn new(executors: usize) -> Arc<IdleSync> {
        Arc::new(IdleSync {
            barrier: Barrier::new(executors),
            established: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
        })
    }
}

/// At most this many connections are being set up at once per executor, so the server's
/// listen backlog is not the thing measured.
const IDLE_OPENING_AT_ONCE: u64 = 256;

/// Idle mode: open every session (connect, greeting, EHLO, STARTTLS when asked), announce
/// on standard error once all executors have theirs, hold, then NOOP and QUIT each.
pub async fn idle(options: Options, share: Share, sync: Arc<IdleSync>) -> Result<Tally, String> {
    let context = Context::new(options)?;
    let gate = Rc::new(glommio::sync::Semaphore::new(IDLE_OPENING_AT_ONCE));
    let tasks: Vec<_> = (0..share.sessions)
        .map(|i| {
            let (context, gate) = (context.clone(), gate.clone());
            glommio::spawn_local(async move {
                let _permit = gate.acquire_permit(1).await.ok()?;
                context.tally.borrow_mut().attempted += 1;
                match context
                    .open(share.first_session + i, context.options.starttls)
                    .await
                {
                    Ok(connection) => {
                        context.tally.borrow_mut().success(None);
                        Some(connection)
                    }
                    Err(error) => {
                        context.tally.borrow_mut().failure(error);
                        None
                    }
                }
            })
        })
        .collect();
    let mut connections = Vec::with_capacity(share.sessions);
    for task in tasks {
        connections.extend(task.await);
    }

    announce_established(&context, &sync);
    glommio::timer::sleep(context.options.hold).await;

    let tasks: Vec<_> = connections
        .into_iter()
        .map(|mut connection| {
            let context = context.clone();
            glommio::spawn_local(async move {
                match connection.noop().await {
                    Ok(()) => {
                        context.tally.borrow_mut().held += 1;
                        connection.quit().await;
                    }
                    Err(error) => context.tally.borrow_mut().failure(error),
                }
            })
        })
        .collect();
    for task in tasks {
        task.await;
    }
    Ok(context.into_tally())
}

/// Waits (blocking this executor: its sessions are idle by design) until every executor has
/// opened its sessions; one of them prints the line the caller waits for.
fn announce_established(context: &Context, sync: &IdleSync) {
    let (established, failed) = {
        let tally = context.tally.borrow();
        (tally.succeeded, tally.failed)
    };
    sync.established.fetch_add(established, Ordering::SeqCst);
    sync.failed.fetch_add(failed, Ordering::SeqCst);
    if sync.barrier.wait().is_leader() {
        eprintln!(
            "{{\"event\":\"established\",\"established\":{},\"failed\":{}}}",
            sync.established.load(Ordering::SeqCst),
            sync.failed.load(Ordering::SeqCst)
        );
    }
    sync.barrier.wait();
}
