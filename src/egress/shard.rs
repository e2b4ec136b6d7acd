//! The per-core egress shard. Each destination domain is owned by one core (a stable hash of the
//! domain); that core holds the domain's queue, its connection pool and its retry schedule.
//! Messages accepted on any core are handed to the owning shard through the channel mesh, and
//! finished recipients are reported back to the core whose spool holds the message.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use glommio::channels::channel_mesh::{Receivers, Senders};
use glommio::{GlommioError, ResourceType};

use crate::config::Config;
use crate::dns::Resolver;
use crate::egress::client::{ClientSettings, Connection};
use crate::egress::delivery::{self, Fate};
use crate::egress::dsn::{self, FailedRecipient};
use crate::envelope::{Envelope, QueueId, mailbox_domain, unix_now};
use crate::spool::{self, Relocated, Spool, SpoolError};
use crate::tls::ClientTls;

/// Work for a destination domain: some recipients of one message.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: QueueId,
    /// Lowercase destination domain; all `recipients` belong to it.
    pub domain: String,
    pub envelope: Envelope,
    /// Indices into `envelope.recipients`.
    pub recipients: Vec<u32>,
    /// The body when it is at hand; read from the spool otherwise.
    pub body: Option<Bytes>,
    /// Attempts made so far.
    pub attempts: u32,
}

/// What cores send each other.
pub enum ShardMessage {
    /// A job for a domain the receiving core owns.
    Deliver(Job),
    /// Recipients finished (delivered or bounced) for a message in the receiving core's spool.
    Completed { id: QueueId, recipients: Vec<u32> },
    /// Messages the sending core's spool copied forward: their bodies are now read at the new ids.
    Relocated(Vec<Relocated>),
}

/// The core that owns a destination domain: FNV-1a of the domain, modulo the core count.
pub fn owner_of(domain: &str, cores: usize) -> usize {
    let hash = domain.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b.to_ascii_lowercase())).wrapping_mul(0x0000_0100_0000_01b3)
    });
    (hash % cores as u64) as usize
}

/// `host[address]` of the receiver that took part in an attempt, empty without one.
struct PeerText<'a>(Option<&'a (String, SocketAddr)>);

impl std::fmt::Display for PeerText<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some((host, addr)) => write!(f, "{host}[{addr}]"),
            None => Ok(()),
        }
    }
}

/// Idle connections are kept per destination domain and receiver address.
type PoolKey = (String, SocketAddr);

#[derive(Default)]
struct DomainQueue {
    jobs: VecDeque<Job>,
    workers: usize,
}

/// Counters for the metrics log line.
#[derive(Default)]
pub struct ShardStats {
    pub delivered: Cell<u64>,
    pub deferred: Cell<u64>,
    pub bounced: Cell<u64>,
    pub connections_opened: Cell<u64>,
    pub connections_reused: Cell<u64>,
}

pub struct Shard {
    pub index: usize,
    pub cores: usize,
    pub config: Rc<Config>,
    pub resolver: Rc<Resolver>,
    pub client_tls: ClientTls,
    pub client_settings: ClientSettings,
    pub stats: ShardStats,
    spool_dir: PathBuf,
    /// This core's own spool and any left by a former larger core count that map here.
    spools: HashMap<u16, Rc<Spool>>,
    senders: Senders<ShardMessage>,
    queues: RefCell<HashMap<String, DomainQueue>>,
    retries: RefCell<BTreeMap<(Instant, u64), Job>>,
    retry_sequence: Cell<u64>,
    idle: RefCell<HashMap<PoolKey, Vec<(Connection, Instant)>>>,
    /// Old queue id -> new one, for messages a spool copied forward, and when it was learnt.
    relocated: RefCell<HashMap<QueueId, (QueueId, Instant)>>,
}

/// How often each spool is offered a reclamation pass.
const RECLAIM_INTERVAL: Duration = Duration::from_secs(30);

/// How long a relocation is remembered; far longer than a job takes between being read from a
/// queue and reading its body.
const RELOCATION_MEMORY: Duration = Duration::from_secs(3600);

/// Everything a shard is built from.
pub struct ShardParts {
    pub index: usize,
    pub cores: usize,
    pub config: Rc<Config>,
    pub resolver: Rc<Resolver>,
    pub client_tls: ClientTls,
    pub spool_dir: PathBuf,
    pub spools: HashMap<u16, Rc<Spool>>,
    pub senders: Senders<ShardMessage>,
}

impl Shard {
    pub fn new(parts: ShardParts) -> Rc<Shard> {
        let outbound = &parts.config.outbound;
        let client_settings = ClientSettings {
            helo_name: parts.config.hostname.clone(),
            connect_timeout: outbound.connect_timeout,
            command_timeout: outbound.command_timeout,
            data_timeout: outbound.data_timeout,
        };
        Rc::new(Shard {
            index: parts.index,
            cores: parts.cores,
            client_settings,
            config: parts.config,
            resolver: parts.resolver,
            client_tls: parts.client_tls,
            stats: ShardStats::default(),
            spool_dir: parts.spool_dir,
            spools: parts.spools,
            senders: parts.senders,
            queues: RefCell::default(),
            retries: RefCell::default(),
            retry_sequence: Cell::new(0),
            idle: RefCell::default(),
            relocated: RefCell::default(),
        })
    }

    fn own_spool(&self) -> &Rc<Spool> {
        &self.spools[&(self.index as u16)]
    }

    /// Stores an accepted message durably in this core's spool and routes it. Resolves once the
    /// message is on stable storage: the caller may acknowledge it then.
    pub async fn accept(
        self: &Rc<Self>,
        envelope: Envelope,
        body: Vec<u8>,
    ) -> Result<QueueId, SpoolError> {
        let id = self.own_spool().append(&envelope, &body).await?;
        let all: Vec<u32> = (0..envelope.recipients.len() as u32).collect();
        self.route(id, envelope, Some(Bytes::from(body)), &all);
        Ok(id)
    }

    /// Splits a message's pending recipients by destination domain and hands each part to the
    /// shard owning that domain.
    pub fn route(
        self: &Rc<Self>,
        id: QueueId,
        envelope: Envelope,
        body: Option<Bytes>,
        pending: &[u32],
    ) {
        let mut by_domain: Vec<(String, Vec<u32>)> = Vec::new();
        for &index in pending {
            let domain = mailbox_domain(&envelope.recipients[index as usize]);
            match by_domain.iter_mut().find(|(d, _)| *d == domain) {
                Some((_, list)) => list.push(index),
                None => by_domain.push((domain, vec![index])),
            }
        }
        // The last domain's job takes the envelope itself; only further domains need copies.
        let mut envelope = Some(envelope);
        let last = by_domain.len().saturating_sub(1);
        for (n, (domain, recipients)) in by_domain.into_iter().enumerate() {
            let envelope = match n == last {
                true => envelope.take().expect("taken for the last domain only"),
                false => envelope.clone().expect("kept until the last domain"),
            };
            let job = Job {
                id,
                domain,
                envelope,
                recipients,
                body: body.clone(),
                attempts: 0,
            };
            self.dispatch(job);
        }
    }

    fn dispatch(self: &Rc<Self>, job: Job) {
        let owner = owner_of(&job.domain, self.cores);
        if owner == self.index {
            self.enqueue(job);
            return;
        }
        let job = match self.senders.try_send_to(owner, ShardMessage::Deliver(job)) {
            Ok(()) => return,
            Err(GlommioError::WouldBlock(ResourceType::Channel(job))) => job,
            Err(_) => {
                tracing::warn!(
                    core = owner,
                    "core is gone; the job stays queued until restart"
                );
                return;
            }
        };
        // The channel is full: a task waits for room, so that the caller need not.
        let shard = self.clone();
        glommio::spawn_local(async move {
            if shard.senders.send_to(owner, job).await.is_err() {
                tracing::warn!(
                    core = owner,
                    "core is gone; the job stays queued until restart"
                );
            }
        })
        .detach();
    }

    /// Queues a job on this shard and starts a worker for its domain if the domain has room.
    pub fn enqueue(self: &Rc<Self>, job: Job) {
        let domain = job.domain.clone();
        let start_worker = {
            let mut queues = self.queues.borrow_mut();
            let queue = queues.entry(domain.clone()).or_default();
            queue.jobs.push_back(job);
            let room = queue.workers < self.config.outbound.max_connections_per_domain;
            // One worker per waiting job at most: a lone message opens one connection.
            let wanted = queue.workers < queue.jobs.len();
            if room && wanted {
                queue.workers += 1;
            }
            room && wanted
        };
        if start_worker {
            glommio::spawn_local(self.clone().work(domain)).detach();
        }
    }

    async fn work(self: Rc<Self>, domain: String) {
        loop {
            let job = {
                let mut queues = self.queues.borrow_mut();
                let queue = queues
                    .get_mut(&domain)
                    .expect("a worker's domain has a queue");
                match queue.jobs.pop_front() {
                    Some(job) => job,
                    None => {
                        queue.workers -= 1;
                        if queue.workers == 0 {
                            queues.remove(&domain);
                        }
                        return;
                    }
                }
            };
            self.process(job).await;
        }
    }

    async fn process(self: &Rc<Self>, mut job: Job) {
        job.id = self.current_id(job.id);
        let body = match job.body.take() {
            Some(body) => body,
            // Boxed, like the other rare steps below: a worker's task is moved into place
            // whenever a worker starts, so it should hold only what every message needs.
            None => match Box::pin(spool::read_message(&self.spool_dir, job.id)).await {
                Ok((_, body)) => Bytes::from(body),
                Err(e) => {
                    tracing::error!(queue_id = %job.id, error = %e, "cannot read queued message; retrying later");
                    self.schedule_retry(job);
                    return;
                }
            },
        };

        let started = Instant::now();
        let attempt = delivery::attempt(self, &job, &body).await;
        let tls = attempt.tls.as_str();
        // Written only if an event below is logged.
        let peer = PeerText(attempt.peer.as_ref());
        let delay = unix_now().saturating_sub(job.envelope.received_at);

        let mut finished = Vec::new();
        let mut failed = Vec::new();
        let mut bounced = Vec::new();
        let mut deferred = Vec::new();
        let expires_at = job.envelope.received_at + self.config.outbound.queue_lifetime.as_secs();
        for (index, fate) in attempt.fates {
            let recipient = &job.envelope.recipients[index as usize];
            let fate = match fate {
                Fate::Deferred { status, reason } if unix_now() >= expires_at => {
                    delivery::expired(status, &reason)
                }
                other => other,
            };
            match &fate {
                Fate::Delivered { host, reply } => {
                    self.stats.delivered.set(self.stats.delivered.get() + 1);
                    tracing::info!(queue_id = %job.id, recipient, host, %peer, tls, reply, delay, "delivered");
                    finished.push(index);
                }
                Fate::Deferred { status, reason } => {
                    self.stats.deferred.set(self.stats.deferred.get() + 1);
                    tracing::warn!(queue_id = %job.id, recipient, %peer, tls, %status, reason, delay, attempts = job.attempts + 1, "deferred");
                    deferred.push(index);
                }
                Fate::Bounced {
                    status,
                    reason,
                    remote_mta,
                } => {
                    self.stats.bounced.set(self.stats.bounced.get() + 1);
                    tracing::warn!(queue_id = %job.id, recipient, %peer, tls, %status, reason, delay, "bounced");
                    failed.push(FailedRecipient {
                        recipient: recipient.clone(),
                        status: *status,
                        diagnostic: reason.clone(),
                        remote_mta: remote_mta.clone(),
                    });
                    bounced.push(index);
                }
            }
        }
        tracing::debug!(queue_id = %job.id, elapsed_ms = started.elapsed().as_millis() as u64, "attempt finished");

        if !failed.is_empty() {
            if Box::pin(self.bounce(&job, &body, &failed)).await {
                finished.extend(bounced);
            } else {
                // The DSN could not be stored: keep the failed recipients queued rather than
                // lose the notice; they are tried (and fail) again later.
                deferred.extend(bounced);
            }
        }
        if !finished.is_empty() {
            self.complete(job.id, finished).await;
        }
        if !deferred.is_empty() {
            job.recipients = deferred;
            job.attempts += 1;
            self.schedule_retry(job);
        }
    }

    /// Queues a DSN for the failed recipients; false if it could not be stored.
    async fn bounce(self: &Rc<Self>, job: &Job, body: &[u8], failed: &[FailedRecipient]) -> bool {
        let Some((envelope, report)) = dsn::compose(
            &self.config.hostname,
            &job.envelope,
            body,
            failed,
            unix_now(),
        ) else {
            tracing::info!(queue_id = %job.id, "no DSN for the null reverse-path");
            return true;
        };
        match self.accept(envelope, report).await {
            Ok(dsn_id) => {
                tracing::info!(queue_id = %job.id, dsn_queue_id = %dsn_id, to = %job.envelope.reverse_path, "DSN queued");
                true
            }
            Err(e) => {
                tracing::error!(queue_id = %job.id, error = %e, "cannot queue DSN");
                false
            }
        }
    }

    /// Records finished recipients in the spool holding the message, on whichever core that is.
    /// On this core it waits until the record is durable, so that a crash repeats at most the
    /// deliveries in flight; for another core it waits only for the hand-over.
    pub async fn complete(self: &Rc<Self>, id: QueueId, recipients: Vec<u32>) {
        let owner = id.core as usize % self.cores;
        if owner != self.index {
            let message = match self
                .senders
                .try_send_to(owner, ShardMessage::Completed { id, recipients })
            {
                Ok(()) => return,
                Err(GlommioError::WouldBlock(ResourceType::Channel(message))) => message,
                Err(_) => {
                    tracing::warn!(queue_id = %id, "owning core is gone; completion not recorded");
                    return;
                }
            };
            if self.senders.send_to(owner, message).await.is_err() {
                tracing::warn!(queue_id = %id, "owning core is gone; completion not recorded");
            }
            return;
        }
        self.complete_here(id, recipients).await;
    }

    /// [`Shard::complete`] for a message in a spool of this core.
    async fn complete_here(&self, id: QueueId, recipients: Vec<u32>) {
        let Some(spool) = self.spools.get(&id.core) else {
            tracing::error!(queue_id = %id, "no spool for this queue id on this core");
            return;
        };
        match spool.complete(id, &recipients).await {
            Ok(()) => {}
            // Counted as finished all the same; the spool writes the record when it has room.
            Err(SpoolError::Full) => {
                tracing::warn!(queue_id = %id, "completion not yet durable: spool full")
            }
            // The recipients were handled; at worst they are tried again after a restart.
            Err(e) => tracing::error!(queue_id = %id, error = %e, "cannot record completion"),
        }
    }

    fn schedule_retry(&self, job: Job) {
        let outbound = &self.config.outbound;
        let exponent = job.attempts.saturating_sub(1).min(16);
        let wait = outbound
            .retry_initial
            .saturating_mul(1 << exponent)
            .min(outbound.retry_max);
        let sequence = self.retry_sequence.get();
        self.retry_sequence.set(sequence + 1);
        self.retries
            .borrow_mut()
            .insert((Instant::now() + wait, sequence), job);
    }

    /// Where a message's record is now, following the spool's copy-forward.
    fn current_id(&self, id: QueueId) -> QueueId {
        let relocated = self.relocated.borrow();
        let mut current = id;
        while let Some((next, _)) = relocated.get(&current) {
            current = *next;
        }
        current
    }

    fn learn_relocations(&self, moves: &[Relocated]) {
        let now = Instant::now();
        let mut relocated = self.relocated.borrow_mut();
        for m in moves {
            relocated.insert(m.from, (m.to, now));
        }
    }

    /// Offers every spool of this core a reclamation pass and tells every core about the
    /// messages copied forward, before the next pass deletes their old segment.
    async fn reclaim(self: &Rc<Self>) {
        for spool in self.spools.values() {
            let moves = spool.reclaim().await;
            if moves.is_empty() {
                continue;
            }
            tracing::info!(
                core = self.index,
                messages = moves.len(),
                "spool copied messages forward"
            );
            self.learn_relocations(&moves);
            for peer in (0..self.cores).filter(|&peer| peer != self.index) {
                let message = ShardMessage::Relocated(moves.clone());
                if self.senders.send_to(peer, message).await.is_err() {
                    tracing::warn!(core = peer, "core is gone; relocation not passed on");
                }
            }
        }
        let now = Instant::now();
        self.relocated
            .borrow_mut()
            .retain(|_, (_, learnt)| now.duration_since(*learnt) < RELOCATION_MEMORY);
    }

    /// Releases due retries, closes idle connections past their time and reclaims spool space;
    /// runs for the life of the core.
    pub async fn tick(self: Rc<Self>) {
        let mut last_reclaim = Instant::now();
        loop {
            glommio::timer::sleep(Duration::from_millis(500)).await;
            let now = Instant::now();
            if now.duration_since(last_reclaim) >= RECLAIM_INTERVAL {
                last_reclaim = now;
                self.reclaim().await;
            }
            let due: Vec<Job> = {
                let mut retries = self.retries.borrow_mut();
                let later = retries.split_off(&(now, u64::MAX));
                std::mem::replace(&mut *retries, later)
                    .into_values()
                    .collect()
            };
            for job in due {
                self.enqueue(job);
            }
            self.close_idle(now);
        }
    }

    fn close_idle(&self, now: Instant) {
        let idle_timeout = self.config.outbound.idle_timeout;
        let mut expired = Vec::new();
        self.idle.borrow_mut().retain(|_, list| {
            let (old, fresh): (Vec<_>, Vec<_>) = list
                .drain(..)
                .partition(|(_, since)| now.duration_since(*since) >= idle_timeout);
            expired.extend(old.into_iter().map(|(c, _)| c));
            *list = fresh;
            !list.is_empty()
        });
        for connection in expired {
            glommio::spawn_local(connection.quit()).detach();
        }
    }

    /// An idle connection to `addr` for `domain`, if one is waiting.
    pub fn take_idle(&self, domain: &str, addr: SocketAddr) -> Option<Connection> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(&(domain.to_string(), addr))?;
        let (connection, _) = list.pop()?;
        self.stats
            .connections_reused
            .set(self.stats.connections_reused.get() + 1);
        Some(connection)
    }

    /// Keeps a connection for the next message to the same domain, unless it has carried its
    /// share.
    pub fn put_idle(&self, domain: &str, addr: SocketAddr, connection: Connection) {
        if connection.messages_sent() >= self.config.outbound.max_messages_per_connection {
            glommio::spawn_local(connection.quit()).detach();
            return;
        }
        let key = (domain.to_string(), addr);
        self.idle
            .borrow_mut()
            .entry(key)
            .or_default()
            .push((connection, Instant::now()));
    }

    pub fn note_connection_opened(&self) {
        self.stats
            .connections_opened
            .set(self.stats.connections_opened.get() + 1);
    }

    /// Serves messages from the other cores; one task per peer.
    pub fn listen(self: &Rc<Self>, mut receivers: Receivers<ShardMessage>) {
        for (_, receiver) in receivers.streams() {
            let shard = self.clone();
            glommio::spawn_local(async move {
                while let Some(message) = receiver.recv().await {
                    match message {
                        ShardMessage::Deliver(job) => shard.enqueue(job),
                        ShardMessage::Completed { id, recipients } => {
                            let shard = shard.clone();
                            glommio::spawn_local(async move {
                                shard.complete_here(id, recipients).await
                            })
                            .detach();
                        }
                        ShardMessage::Relocated(moves) => shard.learn_relocations(&moves),
                    }
                }
            })
            .detach();
        }
    }

    /// Number of jobs waiting for a retry.
    pub fn deferred_jobs(&self) -> usize {
        self.retries.borrow().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_is_stable_and_case_insensitive() {
        assert_eq!(owner_of("Example.ORG", 4), owner_of("example.org", 4));
        assert_eq!(owner_of("example.org", 1), 0);
        let spread: std::collections::HashSet<usize> = (0..64)
            .map(|i| owner_of(&format!("d{i}.example"), 4))
            .collect();
        assert_eq!(spread.len(), 4, "64 domains land on every one of 4 cores");
    }
}
