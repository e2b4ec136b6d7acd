//! The durable spool: one append-only log per core, written with group commit.
//!
//! A message is acknowledged (RFC 5321 section 4.1.1.4: the `250` after DATA takes responsibility
//! for delivery) only after its record is on stable storage. Each core owns one log in
//! `<dir>/core-NN/`, a sequence of segment files. [`Spool::append`] writes a message record
//! (envelope and body) into the current batch; the core's writer task flushes a batch with one
//! synchronous write (the segment is open `O_DSYNC`: the write returns once the data is on
//! stable storage, as `fdatasync` would), so one sync covers every message that arrived while
//! the previous one ran. [`Spool::complete`] appends small completion records the same way.
//!
//! A [`QueueId`] is the record's place in the log: core, segment and byte offset. Ids are stable
//! except when reclamation copies a message forward: the oldest segment can only be deleted once
//! nothing in it is live (deletion goes oldest first, so completion records in a later segment are
//! never lost while an earlier one still needs them), and when a few long-lived messages pin it,
//! [`Spool::reclaim`] copies them to the active segment and reports the new ids. The old ids keep
//! working for [`Spool::complete`], and for [`read_message`] until the next `reclaim` call.
//!
//! A full disk refuses new messages ([`SpoolError::Full`]) but cannot keep space from coming
//! back: a completion record it refused still counts in memory, so delivered mail releases its
//! segment, and the record is written as soon as there is room.
//!
//! Recovery replays the segments oldest first and stops reading a segment at its first torn or
//! damaged record; the rest of that segment is set aside under `<dir>/damaged/` and replay goes
//! on with the next segment.
//!
//! Segments are written through the page cache (`BufferedFile`, `write_at` on an `O_DSYNC` file):
//! records are not block-aligned, and direct I/O would have to rewrite the partly filled last
//! block on every flush and pad the file with zeros. The copy into the page cache costs little
//! next to the sync that a group commit already shares among many messages.

mod codec;
mod commit;
mod ledger;
mod record;
mod recovery;
mod segment;

#[cfg(test)]
mod tests;

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::io;
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use glommio::io::BufferedFile;
use glommio::{Latency, Shares, TaskQueueHandle};
use tracing::{debug, info, warn};

use self::codec::MessageHead;
use self::commit::{Shared, Ticket};
pub use self::segment::existing_cores;
use crate::config;
use crate::envelope::{Envelope, QueueId};
use crate::smtp::reply::{Reply, Status};

/// Why the spool could not make a record durable.
#[derive(Debug)]
pub enum SpoolError {
    /// The file system is out of space or quota. Nothing already acknowledged is lost, and later
    /// appends succeed once space returns.
    Full,
    /// Any other I/O failure of the spool's files.
    Io(io::Error),
}

impl SpoolError {
    /// The reply for a client whose message could not be spooled (RFC 3463 4.3.1, 4.3.0).
    pub fn reply(&self) -> Reply {
        match self {
            SpoolError::Full => {
                Reply::fixed(452, Status::new(4, 3, 1), "Insufficient system storage")
            }
            SpoolError::Io(_) => Reply::fixed(
                451,
                Status::new(4, 3, 0),
                "Local error in processing, try again later",
            ),
        }
    }
}

impl fmt::Display for SpoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpoolError::Full => f.write_str("spool file system is full (no space or quota left)"),
            SpoolError::Io(e) => write!(f, "spool I/O error: {e}"),
        }
    }
}

impl std::error::Error for SpoolError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SpoolError::Full => None,
            SpoolError::Io(e) => Some(e),
        }
    }
}

/// A message found pending when a log was opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    pub id: QueueId,
    pub envelope: Envelope,
    /// Indices into `envelope.recipients` not yet finished, ascending.
    pub pending: Vec<u32>,
}

/// A message that reclamation copied forward: its record now lives at `to`. `from` still works
/// for [`Spool::complete`]; [`read_message`] of `from` works until the next [`Spool::reclaim`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Relocated {
    pub from: QueueId,
    pub to: QueueId,
}

/// Counters of one core's log since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Message records made durable (appends and copies forward).
    pub appends: u64,
    /// Completion records made durable.
    pub completions: u64,
    /// Batches written successfully.
    pub flushes: u64,
    /// Synchronous batch writes (zero with `sync = false`).
    pub syncs: u64,
    /// Bytes of records written.
    pub bytes: u64,
    /// Batches that failed (full disk, I/O error); their waiters got the error.
    pub failed_flushes: u64,
    pub segments_deleted: u64,
    /// Messages copied forward by reclamation.
    pub relocated: u64,
}

/// One core's log. Single-threaded: use it only on the executor that opened it.
pub struct Spool {
    shared: Rc<Shared>,
    reclaiming: Cell<bool>,
}

impl Spool {
    /// Opens (creating the directory) this core's log in `dir`, replays it, returns what is
    /// still pending, oldest first. Fails when another process holds this core's log; when a
    /// handle of the same log was dropped on this executor, first waits for its writer to finish.
    pub async fn open(
        dir: &Path,
        core: u16,
        options: &config::Spool,
    ) -> io::Result<(Rc<Spool>, Vec<Recovered>)> {
        let core_dir = segment::core_dir(dir, core);
        std::fs::create_dir_all(&core_dir).map_err(|e| segment::with_path(e, &core_dir))?;
        commit::wait_for_closing(&core_dir).await;
        let lock = segment::lock(&core_dir)?;

        let mut replayed = recovery::replay(dir, core, options.sync).await?;
        let recovered: Vec<Recovered> = replayed
            .ledger
            .live_ids()
            .into_iter()
            .filter_map(|id| {
                Some(Recovered {
                    id,
                    envelope: replayed.envelopes.remove(&id)?,
                    pending: replayed.ledger.pending(id)?,
                })
            })
            .collect();

        let shared = Shared::new(
            dir.to_path_buf(),
            core,
            options.clone(),
            replayed.ledger,
            replayed.tail,
            lock,
        )
        .await?;
        let shared = Rc::new(shared);
        spawn_writer(commit::run_writer(shared.clone()));
        shared.delete_drained(true).await;

        info!(
            core,
            dir = %dir.display(),
            pending = recovered.len(),
            "spool opened"
        );
        let spool = Spool {
            shared,
            reclaiming: Cell::new(false),
        };
        Ok((Rc::new(spool), recovered))
    }

    /// Durable (group-committed) append of a new message; resolves once the record is on stable
    /// storage.
    pub async fn append(&self, envelope: &Envelope, body: &[u8]) -> Result<QueueId, SpoolError> {
        let recipients = u32::try_from(envelope.recipients.len()).map_err(|_| {
            SpoolError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "too many recipients for one spool record",
            ))
        })?;
        let ticket = self
            .shared
            .enqueue_message(MessageHead::default(), recipients, |buf| {
                codec::put_envelope(buf, envelope);
                buf.extend_from_slice(body);
            })?;
        ticket.durable().await
    }

    /// Records that these recipients of `id` are finished (delivered, bounced or expired). Only
    /// for ids of this core. Resolves once durable. Finishing a recipient twice, or a message
    /// that is already complete, succeeds without writing anything.
    ///
    /// On a full disk this fails with [`SpoolError::Full`], yet the recipients count as finished
    /// from then on: the message no longer keeps its segment from being reclaimed (which is how
    /// space comes back), and the record is written later, once there is room. Only a restart
    /// before that can deliver those recipients again.
    pub async fn complete(&self, id: QueueId, recipients: &[u32]) -> Result<(), SpoolError> {
        match self.enqueue_completion(id, recipients)? {
            Some(ticket) => ticket.durable().await.map(|_| ()),
            None => Ok(()),
        }
    }

    /// Checks a completion and queues its record; `None` when there is nothing to write.
    fn enqueue_completion(
        &self,
        id: QueueId,
        recipients: &[u32],
    ) -> Result<Option<Ticket>, SpoolError> {
        if id.core != self.shared.core {
            return Err(invalid_input(format!(
                "queue id {id} belongs to core {}, not core {}",
                id.core, self.shared.core
            )));
        }

        let target = {
            let ledger = self.shared.ledger.borrow();
            let target = ledger.resolve(id);
            let Some(count) = ledger.recipients(target) else {
                debug!(queue_id = %id, "completion for a message no longer live");
                return Ok(None);
            };
            if let Some(&bad) = recipients.iter().find(|&&i| i >= count) {
                return Err(invalid_input(format!(
                    "queue id {id} has {count} recipients, no index {bad}"
                )));
            }
            if ledger.all_finished(target, recipients) {
                return Ok(None);
            }
            target
        };

        let ticket = self.shared.enqueue_completion(target, recipients);
        Ok(Some(ticket))
    }

    /// Number of messages with at least one unfinished recipient.
    pub fn pending_messages(&self) -> usize {
        self.shared.ledger.borrow().live_messages()
    }

    pub fn stats(&self) -> SpoolStats {
        self.shared.stats()
    }

    /// One reclamation pass; the owner of the log calls it periodically. Deletes the oldest
    /// segments no live message needs, and queues again completion records a full disk refused. When the oldest segment is kept only by a few live
    /// messages (under a tenth of its bytes, with at least two newer segments behind it), copies
    /// them forward and returns their new ids: the caller passes them on to whoever holds the
    /// old ones before its next call, which is when the emptied segment is deleted. Failures are
    /// logged and retried on the next pass.
    pub async fn reclaim(&self) -> Vec<Relocated> {
        if self.reclaiming.replace(true) {
            return Vec::new();
        }
        self.shared.ledger.borrow_mut().release_holds();
        self.shared.delete_drained(true).await;
        self.shared.requeue_unrecorded();
        let relocated = self.copy_forward_pinned().await;
        self.reclaiming.set(false);
        relocated
    }

    async fn copy_forward_pinned(&self) -> Vec<Relocated> {
        let shared = &self.shared;
        let (segment, movable) = {
            let ledger = shared.ledger.borrow();
            let Some(segment) = ledger.pinned_oldest() else {
                return Vec::new();
            };
            (segment, ledger.movable_in(segment))
        };
        // Held from now on, so that the writer does not delete it the moment the copies land.
        shared.ledger.borrow_mut().hold(segment);

        let records = match self.read_records(segment, &movable).await {
            Ok(records) => records,
            Err(e) => {
                warn!(core = shared.core, segment, error = %e, "spool segment not readable for copying");
                return Vec::new();
            }
        };

        let mut tickets = Vec::with_capacity(records.len());
        for (from, stored) in &records {
            match self.enqueue_copy(*from, stored.payload()) {
                Ok(Some(ticket)) => tickets.push((*from, ticket)),
                Ok(None) => {}
                Err(e) => warn!(queue_id = %from, error = %e, "spool message not copied forward"),
            }
        }

        let mut relocated = Vec::with_capacity(tickets.len());
        for (from, ticket) in tickets {
            match ticket.durable().await {
                Ok(to) => relocated.push(Relocated { from, to }),
                Err(e) => warn!(queue_id = %from, error = %e, "spool message not copied forward"),
            }
        }
        if !relocated.is_empty() {
            let count = relocated.len() as u64;
            shared.count(|s| s.relocated += count);
            info!(
                core = shared.core,
                segment,
                messages = count,
                "spool messages copied forward"
            );
        }
        relocated
    }

    async fn read_records(
        &self,
        segment: u32,
        ids: &[QueueId],
    ) -> io::Result<Vec<(QueueId, segment::StoredRecord)>> {
        let path = segment::segment_path(&self.shared.dir, self.shared.core, segment);
        let file = BufferedFile::open(&path).await?;
        let mut records = Vec::with_capacity(ids.len());
        for &id in ids {
            match segment::read_record(&file, id.offset).await {
                Ok(stored) => records.push((id, stored)),
                Err(e) => {
                    let _ = file.close().await;
                    return Err(e);
                }
            }
        }
        let _ = file.close().await;
        Ok(records)
    }

    /// Queues the copy of a live message; `None` when it finished or got a completion in flight
    /// while its record was being read.
    fn enqueue_copy(&self, from: QueueId, payload: &[u8]) -> Result<Option<Ticket>, SpoolError> {
        let Some((recipients, done)) = self.shared.ledger.borrow().copy_state(from) else {
            return Ok(None);
        };
        let start = codec::envelope_start(payload).map_err(|e| SpoolError::Io(e.into()))?;
        let head = MessageHead {
            origin: Some(from),
            done,
        };
        let ticket = self.shared.enqueue_message(head, recipients, |buf| {
            buf.extend_from_slice(&payload[start..]);
        })?;
        Ok(Some(ticket))
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        self.shared.close();
    }
}

fn invalid_input(message: String) -> SpoolError {
    SpoolError::Io(io::Error::new(io::ErrorKind::InvalidInput, message))
}

/// Reads a message's envelope and body from any core's log (egress shards on other cores use
/// this).
pub async fn read_message(dir: &Path, id: QueueId) -> io::Result<(Envelope, Vec<u8>)> {
    let stored = segment::read_message_record(dir, id).await?;
    let message = codec::message(stored.payload()).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("queue id {id}: message record not decodable: {e}"),
        )
    })?;
    Ok((message.envelope, message.body.to_vec()))
}

thread_local! {
    /// The executor of this thread and its task queue for spool writers, made on first use.
    static WRITER_QUEUE: Cell<Option<(usize, TaskQueueHandle)>> = const { Cell::new(None) };
}

/// Runs a log's writer in a latency-sensitive task queue: its writes go to glommio's latency
/// ring, whose completions cut short the time slice of the sessions, so that a flush that
/// finished wakes its waiters without waiting for busy sessions to yield.
fn spawn_writer(writer: impl Future<Output = ()> + 'static) {
    let executor = glommio::executor();
    let queue = match WRITER_QUEUE.get() {
        Some((id, queue)) if id == executor.id() => queue,
        _ => {
            let queue = executor.create_task_queue(
                Shares::default(),
                Latency::Matters(Duration::from_millis(1)),
                "spool-writer",
            );
            WRITER_QUEUE.set(Some((executor.id(), queue)));
            queue
        }
    };
    glommio::spawn_local_into(writer, queue)
        .expect("the writer queue belongs to this executor")
        .detach();
}
