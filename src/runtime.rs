//! The thread-per-core runtime: one glommio executor per core, each with its own listeners
//! (SO_REUSEPORT), sessions, spool, resolver and egress shard; cores talk only through the
//! channel mesh. SIGTERM or SIGINT stops intake, lets sessions finish within a deadline, and
//! exits once every acknowledged message is on stable storage (it always is: see the spool).

use std::collections::HashMap;
use std::os::fd::{FromRawFd, IntoRawFd, RawFd};
use std::path::Path;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{LocalExecutorPoolBuilder, PoolPlacement};

use crate::config::{Config, LogFormat};
use crate::dns::Resolver;
use crate::egress::shard::{Shard, ShardMessage, ShardParts};
use crate::envelope::{Envelope, QueueId};
use crate::smtp::server::{IngressContext, Intake, SubmitError};
use crate::spool::{Recovered, Spool, SpoolError};
use crate::tls;

/// Set by the signal thread; every core polls it.
static STOP: AtomicBool = AtomicBool::new(false);

/// How long sessions may run on after a stop request before the core exits anyway.
const STOP_DEADLINE: Duration = Duration::from_secs(10);

/// What every core starts from; all of it is `Send` and cloned once per core.
#[derive(Clone)]
struct Startup {
    config: Config,
    server_tls: Arc<rustls::ServerConfig>,
    client_tls: tls::ClientTls,
    /// Per core, one bound listening socket per configured listener, in order.
    listener_fds: Arc<Vec<Vec<RawFd>>>,
    mesh: MeshBuilder<ShardMessage, glommio::channels::channel_mesh::Full>,
    cores: usize,
}

/// Runs secmx until stopped; the exit status reports startup failures.
pub fn run(config: Config) -> ExitCode {
    init_logging(&config);
    match start(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(problem) => {
            tracing::error!(%problem, "cannot start");
            eprintln!("secmx: {problem}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(config: &Config) {
    let filter = std::env::var("SECMX_LOG").unwrap_or_else(|_| config.log.level.clone());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    let _ = match config.log.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

fn start(config: Config) -> Result<(), String> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| format!("data_dir {}: cannot create: {e}", config.data_dir.display()))?;
    let identity = tls::server_identity(&config.tls, &config.data_dir, &config.hostname)
        .map_err(|e| format!("tls: {e}"))?;
    let server_tls = tls::server_config(&identity).map_err(|e| format!("tls: {e}"))?;
    let client_tls = tls::client_configs(config.tls.ca_file.as_deref(), config.tls.system_roots)
        .map_err(|e| format!("tls.ca_file: {e}"))?;

    let cores = config.worker_count();
    let listener_fds = bind_listeners(&config, cores)?;
    install_signal_thread();

    for listener in &config.listeners {
        tracing::info!(address = %listener.address, role = ?listener.role, "listening");
    }
    tracing::info!(cores, hostname = %config.hostname, data_dir = %config.data_dir.display(), "secmx started");

    let startup = Startup {
        config,
        server_tls,
        client_tls,
        listener_fds: Arc::new(listener_fds),
        mesh: MeshBuilder::full(cores, 1024),
        cores,
    };
    let available = std::thread::available_parallelism().map_or(1, |n| n.get());
    let placement = if cores <= available {
        PoolPlacement::MaxSpread(cores, None)
    } else {
        PoolPlacement::Unbound(cores)
    };
    let handles = LocalExecutorPoolBuilder::new(placement)
        .name("secmx-core")
        .on_all_shards(move || {
            let startup = startup.clone();
            async move { run_core(startup).await }
        })
        .map_err(|e| format!("cannot start the executors: {e}"))?;

    let mut problems = Vec::new();
    for result in handles.join_all() {
        match result {
            Ok(Ok(())) => {}
            Ok(Err(problem)) => problems.push(problem),
            Err(e) => problems.push(format!("core failed: {e}")),
        }
    }
    if problems.is_empty() {
        tracing::info!("secmx stopped");
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// Binds one SO_REUSEPORT socket per listener per core, so the kernel spreads connections over
/// the cores and an address already in use is reported before any core starts.
fn bind_listeners(config: &Config, cores: usize) -> Result<Vec<Vec<RawFd>>, String> {
    use socket2::{Domain, Protocol, Socket, Type};

    let mut per_core = vec![Vec::new(); cores];
    for listener in &config.listeners {
        let addr = listener.address;
        for fds in per_core.iter_mut() {
            let domain = if addr.is_ipv6() {
                Domain::IPV6
            } else {
                Domain::IPV4
            };
            let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))
                .and_then(|s| {
                    if addr.is_ipv6() {
                        s.set_only_v6(true)?;
                    }
                    s.set_reuse_address(true)?;
                    s.set_reuse_port(true)?;
                    s.bind(&addr.into())?;
                    s.listen(1024)?;
                    Ok(s)
                })
                .map_err(|e| format!("listener {addr}: cannot listen: {e}"))?;
            fds.push(socket.into_raw_fd());
        }
    }
    Ok(per_core)
}

/// Blocks SIGTERM and SIGINT in every thread and waits for them in one thread of their own.
fn install_signal_thread() {
    // SAFETY: plain libc signal-mask calls on a zeroed, initialised sigset.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        std::thread::Builder::new()
            .name("secmx-signals".into())
            .spawn(move || {
                let mut signal = 0;
                libc::sigwait(&set, &mut signal);
                tracing::info!(signal, "stop requested; closing listeners");
                STOP.store(true, Ordering::SeqCst);
            })
            .expect("can start the signal thread");
    }
}

/// Adapts the shard to the ingress: a message is acknowledged once `accept` returns.
struct CoreIntake(Rc<Shard>);

impl Intake for CoreIntake {
    async fn submit(&self, envelope: Envelope, body: Vec<u8>) -> Result<QueueId, SubmitError> {
        self.0.accept(envelope, body).await.map_err(|e| match e {
            SpoolError::Full => SubmitError::SpoolFull,
            SpoolError::Io(e) => SubmitError::Unavailable(e.to_string()),
        })
    }
}

async fn run_core(startup: Startup) -> Result<(), String> {
    let (senders, receivers) = startup
        .mesh
        .join()
        .await
        .map_err(|e| format!("cannot join the channel mesh: {e}"))?;
    let index = senders.peer_id();
    let config = Rc::new(startup.config);
    let spool_dir = config.data_dir.join("spool");

    let (spools, recovered) = open_spools(&spool_dir, index, startup.cores, &config).await?;
    let resolver = Resolver::new(&config.dns);
    let shard = Shard::new(ShardParts {
        index,
        cores: startup.cores,
        config: config.clone(),
        resolver,
        client_tls: startup.client_tls,
        spool_dir,
        spools,
        senders,
    });
    shard.listen(receivers);
    glommio::spawn_local(shard.clone().tick()).detach();

    let mut recovered_messages = 0;
    for message in recovered {
        recovered_messages += 1;
        tracing::debug!(queue_id = %message.id, "recovered");
        shard.route(message.id, message.envelope, None, &message.pending);
    }
    if recovered_messages > 0 {
        tracing::info!(
            core = index,
            messages = recovered_messages,
            "queued mail recovered from the spool"
        );
    }

    let ingress = IngressContext::new(config.clone(), startup.server_tls)
        .map_err(|e| format!("recipients file: {e}"))?;
    let ingress = Rc::new(ingress);
    let intake = Rc::new(CoreIntake(shard.clone()));
    let mut accept_loops = Vec::new();
    for (listener, &fd) in config.listeners.iter().zip(&startup.listener_fds[index]) {
        // SAFETY: the descriptor was bound for this core alone and is handed over exactly once.
        let socket = unsafe { glommio::net::TcpListener::from_raw_fd(fd) };
        let task = glommio::spawn_local(crate::smtp::server::serve_listener(
            socket,
            listener.role,
            ingress.clone(),
            intake.clone(),
        ));
        accept_loops.push(task);
    }

    while !STOP.load(Ordering::Relaxed) {
        glommio::timer::sleep(Duration::from_millis(100)).await;
    }

    drop(accept_loops);
    let deadline = Instant::now() + STOP_DEADLINE;
    while ingress.active_sessions() > 0 && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(50)).await;
    }
    if ingress.active_sessions() > 0 {
        tracing::warn!(
            core = index,
            sessions = ingress.active_sessions(),
            "abandoning sessions at the stop deadline; nothing they sent was acknowledged"
        );
    }
    Ok(())
}

/// Opens this core's spool and any spool left by an earlier, larger core count whose number
/// maps to this core, so no queued message is stranded when `workers` shrinks.
async fn open_spools(
    dir: &Path,
    index: usize,
    cores: usize,
    config: &Config,
) -> Result<(HashMap<u16, Rc<Spool>>, Vec<Recovered>), String> {
    let mut numbers: Vec<u16> = crate::spool::existing_cores(dir)
        .into_iter()
        .filter(|&core| core as usize % cores == index && core as usize != index)
        .collect();
    numbers.insert(0, index as u16);

    let mut spools = HashMap::new();
    let mut recovered = Vec::new();
    for core in numbers {
        let (spool, messages) = Spool::open(dir, core, &config.spool)
            .await
            .map_err(|e| format!("spool {}: cannot open core {core}: {e}", dir.display()))?;
        recovered.extend(messages);
        spools.insert(core, spool);
    }
    Ok((spools, recovered))
}
