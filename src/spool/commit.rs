//! Group commit: records collect in a batch while one writer task writes the previous batch to
//! the active segment with one synchronous `write` (`O_DSYNC`), then answers every waiter of it.
//!
//! Under load each flush covers everything that arrived during the previous one; at low load a
//! record waits only for its own flush. After a failed write the segment is cut back to its last
//! good record, so a full disk never leaves a half record in front of later good ones.
//!
//! Completion records are what frees space, so a full disk must not keep them out: one it
//! refused still counts in the ledger (its message stops pinning its segment, and a segment
//! deleted that way takes the message record with it), and is written again once a flush
//! succeeds or a segment was deleted.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::poll_fn;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::task::{Poll, Waker};

use glommio::GlommioError;
use glommio::io::{BufferedFile, Directory};
use glommio::sync::Semaphore;
use tracing::{debug, error, warn};

use super::codec::{self, MessageHead};
use super::ledger::Ledger;
use super::record::{self, Kind, SEGMENT_HEADER_LEN};
use super::segment::{self, CoreLock};
use super::{SpoolError, SpoolStats};
use crate::config;
use crate::envelope::QueueId;

/// A batch this large goes to disk on its own; later records start the next batch. Keeps single
/// writes far below the kernel's per-call limit.
const BATCH_LIMIT: usize = 64 << 20;
/// Initial capacity of a batch buffer.
const BATCH_CAPACITY: usize = 64 << 10;

/// Where a flushed batch landed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Placement {
    segment: u32,
    base: u64,
}

/// Why a batch did not become durable; shared by all its waiters.
#[derive(Debug, Clone)]
pub(crate) enum Failure {
    Full,
    Io(Rc<io::Error>),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Full => f.write_str("no space left or quota exceeded"),
            Failure::Io(e) => e.fmt(f),
        }
    }
}

impl From<Failure> for SpoolError {
    fn from(failure: Failure) -> SpoolError {
        match failure {
            Failure::Full => SpoolError::Full,
            Failure::Io(e) => SpoolError::Io(match e.raw_os_error() {
                Some(code) => io::Error::from_raw_os_error(code),
                None => io::Error::new(e.kind(), e.to_string()),
            }),
        }
    }
}

fn classify(error: GlommioError<()>) -> Failure {
    if let Some(libc::ENOSPC | libc::EDQUOT) = error.raw_os_error() {
        return Failure::Full;
    }
    let error = io::Error::from(error);
    match error.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => Failure::Full,
        _ => Failure::Io(Rc::new(error)),
    }
}

/// The result of one batch, awaited by every record in it.
#[derive(Default)]
pub(crate) struct Outcome {
    result: RefCell<Option<Result<Placement, Failure>>>,
    wakers: RefCell<Vec<Waker>>,
}

impl Outcome {
    fn finish(&self, result: Result<Placement, Failure>) {
        *self.result.borrow_mut() = Some(result);
        let wakers = std::mem::take(&mut *self.wakers.borrow_mut());
        for waker in wakers {
            waker.wake();
        }
    }

    async fn wait(&self) -> Result<Placement, Failure> {
        poll_fn(|cx| {
            if let Some(result) = self.result.borrow().as_ref() {
                return Poll::Ready(result.clone());
            }
            let mut wakers = self.wakers.borrow_mut();
            if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
                wakers.push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }
}

/// A record's place in a batch, redeemed for its id once the batch is durable.
pub(crate) struct Ticket {
    outcome: Rc<Outcome>,
    at: usize,
    core: u16,
}

impl Ticket {
    pub(crate) async fn durable(self) -> Result<QueueId, SpoolError> {
        let placement = self.outcome.wait().await?;
        Ok(QueueId {
            core: self.core,
            segment: placement.segment,
            offset: placement.base + self.at as u64,
        })
    }
}

/// What the ledger learns about a record once its batch is durable.
enum Entry {
    Message {
        at: usize,
        len: usize,
        recipients: u32,
        head: MessageHead,
    },
    Completion {
        id: QueueId,
        recipients: Vec<u32>,
    },
}

#[derive(Default)]
struct Batch {
    buf: Vec<u8>,
    entries: Vec<Entry>,
    outcome: Rc<Outcome>,
}

thread_local! {
    /// Logs of this executor whose handle was dropped while their writer still had work, by core
    /// directory. The semaphore closes when the writer has finished and released the lock.
    static CLOSING: RefCell<HashMap<PathBuf, Rc<Semaphore>>> = RefCell::default();
}

/// Waits until a log of `core_dir` dropped on this executor has finished writing, so that it can
/// be opened again at once.
pub(crate) async fn wait_for_closing(core_dir: &Path) {
    let closing = CLOSING.with(|c| c.borrow().get(core_dir).cloned());
    if let Some(closing) = closing {
        let _ = closing.acquire(1).await;
    }
}

/// The segment being appended to.
struct Active {
    segment: u32,
    file: Rc<BufferedFile>,
    end: u64,
}

/// State shared by the [`super::Spool`] handle and its writer task.
pub(crate) struct Shared {
    pub dir: PathBuf,
    pub core: u16,
    pub options: config::Spool,
    pub ledger: RefCell<Ledger>,
    batches: RefCell<VecDeque<Batch>>,
    active: RefCell<Option<Active>>,
    next_segment: Cell<u32>,
    directory: Directory,
    writer: Cell<Option<Waker>>,
    closed: Cell<bool>,
    flushing: Cell<bool>,
    /// Size of the last batch flushed, a capacity hint for the next.
    last_batch: Cell<usize>,
    stats: Cell<SpoolStats>,
    lock: RefCell<Option<CoreLock>>,
    /// Closed once the writer has stopped (see [`wait_for_closing`]).
    stopped: Rc<Semaphore>,
    /// Completions a full disk refused: already applied to the ledger, still to be written.
    unrecorded: RefCell<Vec<(QueueId, Vec<u32>)>>,
}

impl Shared {
    /// State for a replayed log. `tail` is the segment to keep appending to and its end.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn new(
        dir: PathBuf,
        core: u16,
        options: config::Spool,
        ledger: Ledger,
        tail: Option<(u32, u64)>,
        lock: CoreLock,
    ) -> io::Result<Shared> {
        let core_dir = segment::core_dir(&dir, core);
        let directory = Directory::open(&core_dir).await?;
        let next_segment = ledger.newest_segment().map_or(0, |n| n + 1);

        let mut active = None;
        if let Some((segment, end)) = tail
            && end < options.segment_size
        {
            let path = segment::segment_path(&dir, core, segment);
            let file = segment::open_for_append(&path, options.sync).await?;
            active = Some(Active {
                segment,
                file: Rc::new(file),
                end,
            });
        }

        Ok(Shared {
            dir,
            core,
            options,
            ledger: RefCell::new(ledger),
            batches: RefCell::default(),
            active: RefCell::new(active),
            next_segment: Cell::new(next_segment),
            directory,
            writer: Cell::new(None),
            closed: Cell::new(false),
            flushing: Cell::new(false),
            last_batch: Cell::new(0),
            stats: Cell::default(),
            lock: RefCell::new(Some(lock)),
            stopped: Rc::new(Semaphore::new(0)),
            unrecorded: RefCell::default(),
        })
    }

    pub(crate) fn stats(&self) -> SpoolStats {
        self.stats.get()
    }

    pub(crate) fn count(&self, update: impl FnOnce(&mut SpoolStats)) {
        let mut stats = self.stats.get();
        update(&mut stats);
        self.stats.set(stats);
    }

    /// Adds a message record to the batch: `head`, then whatever `payload` appends (the envelope
    /// and body, written once, straight into the batch buffer).
    pub(crate) fn enqueue_message(
        &self,
        head: MessageHead,
        recipients: u32,
        payload: impl FnOnce(&mut Vec<u8>),
    ) -> Result<Ticket, SpoolError> {
        let ticket = {
            let mut batches = self.batches.borrow_mut();
            let batch = open_batch(&mut batches, self.last_batch.get());
            let at = record::begin(&mut batch.buf, Kind::Message);
            codec::put_message_head(&mut batch.buf, &head);
            payload(&mut batch.buf);
            if record::seal(&mut batch.buf, at).is_err() {
                return Err(SpoolError::Io(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "message larger than one spool record can hold",
                )));
            }
            let len = batch.buf.len() - at;
            batch.entries.push(Entry::Message {
                at,
                len,
                recipients,
                head,
            });
            self.ticket(batch, at)
        };
        self.wake_writer();
        Ok(ticket)
    }

    /// Adds a completion record for the live message `id` to the batch.
    pub(crate) fn enqueue_completion(&self, id: QueueId, recipients: &[u32]) -> Ticket {
        let ticket = {
            let mut batches = self.batches.borrow_mut();
            let batch = open_batch(&mut batches, self.last_batch.get());
            let at = record::begin(&mut batch.buf, Kind::Completion);
            codec::put_completion(&mut batch.buf, id, recipients);
            record::seal(&mut batch.buf, at).expect("a completion record is small");
            batch.entries.push(Entry::Completion {
                id,
                recipients: recipients.to_vec(),
            });
            self.ticket(batch, at)
        };
        self.ledger.borrow_mut().completion_queued(id);
        self.wake_writer();
        ticket
    }

    fn ticket(&self, batch: &Batch, at: usize) -> Ticket {
        Ticket {
            outcome: batch.outcome.clone(),
            at,
            core: self.core,
        }
    }

    fn wake_writer(&self) {
        if let Some(waker) = self.writer.take() {
            waker.wake();
        }
    }

    /// Asks the writer to stop once nothing is left to write. Without pending work the core's
    /// lock is released at once, so the log can be opened again right away.
    pub(crate) fn close(&self) {
        self.closed.set(true);
        if !self.has_work() && !self.flushing.get() {
            self.lock.borrow_mut().take();
        } else {
            let core_dir = segment::core_dir(&self.dir, self.core);
            CLOSING.with(|c| c.borrow_mut().insert(core_dir, self.stopped.clone()));
        }
        self.wake_writer();
    }

    fn has_work(&self) -> bool {
        self.batches
            .borrow()
            .front()
            .is_some_and(|b| !b.entries.is_empty())
    }

    /// Resolves to true when a batch waits, to false when closed with nothing left to write.
    async fn work_ready(&self) -> bool {
        poll_fn(|cx| {
            if self.has_work() {
                Poll::Ready(true)
            } else if self.closed.get() {
                Poll::Ready(false)
            } else {
                self.writer.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }

    async fn flush(&self, buf: Vec<u8>) -> Result<Placement, Failure> {
        let (segment, file, base) = self.active_segment().await?;
        let len = buf.len() as u64;
        if let Err(failure) = self.write_and_sync(&file, buf, base).await {
            self.cut_back(segment, &file, base, &failure).await;
            return Err(failure);
        }

        if let Some(active) = self.active.borrow_mut().as_mut() {
            active.end = base + len;
        }
        self.ledger.borrow_mut().grow_segment(segment, len);
        Ok(Placement { segment, base })
    }

    /// The segment to append to, starting a new one when the current one has passed
    /// `segment_size` (or could not be cut back after a failure).
    async fn active_segment(&self) -> Result<(u32, Rc<BufferedFile>, u64), Failure> {
        let current = self
            .active
            .borrow()
            .as_ref()
            .map(|a| (a.segment, a.file.clone(), a.end));
        if let Some((segment, file, end)) = current
            && end < self.options.segment_size
        {
            return Ok((segment, file, end));
        }

        let previous = self.active.borrow_mut().take();
        if let Some(file) = previous.and_then(|p| Rc::into_inner(p.file)) {
            let _ = file.close().await;
        }

        let segment = self.next_segment.get();
        let file = Rc::new(self.create_segment(segment).await?);
        self.next_segment.set(segment + 1);
        self.ledger
            .borrow_mut()
            .add_segment(segment, SEGMENT_HEADER_LEN);
        *self.active.borrow_mut() = Some(Active {
            segment,
            file: file.clone(),
            end: SEGMENT_HEADER_LEN,
        });
        debug!(core = self.core, segment, "spool segment started");
        Ok((segment, file, SEGMENT_HEADER_LEN))
    }

    /// Creates segment `segment` with its header, durable together with its directory entry.
    async fn create_segment(&self, segment: u32) -> Result<BufferedFile, Failure> {
        let path = segment::segment_path(&self.dir, self.core, segment);
        let file = segment::create(&path, self.options.sync)
            .await
            .map_err(classify)?;
        let header = record::segment_header(self.core, segment).to_vec();
        let mut written = self.write_all(&file, header, 0).await;
        if written.is_ok() && self.options.sync {
            // The header is durable (O_DSYNC); the file's name is once the directory is.
            written = self.directory.sync().await.map_err(classify);
        }
        if let Err(failure) = written {
            let _ = file.close().await;
            let _ = glommio::io::remove(&path).await;
            return Err(failure);
        }
        Ok(file)
    }

    async fn write_and_sync(
        &self,
        file: &BufferedFile,
        buf: Vec<u8>,
        base: u64,
    ) -> Result<(), Failure> {
        // With `sync` the segment is open O_DSYNC: the write returns once durable.
        self.write_all(file, buf, base).await?;
        if self.options.sync {
            self.count(|s| s.syncs += 1);
        }
        Ok(())
    }

    async fn write_all(&self, file: &BufferedFile, buf: Vec<u8>, pos: u64) -> Result<(), Failure> {
        let len = buf.len();
        let written = file.write_at(buf, pos).await.map_err(classify)?;
        if written == len {
            return Ok(());
        }
        // A regular file takes less than asked only when it cannot take more; writing one more
        // byte where it stopped tells why (usually ENOSPC).
        Err(match file.write_at(vec![0], pos + written as u64).await {
            Err(e) => classify(e),
            Ok(_) => Failure::Io(Rc::new(io::Error::new(
                io::ErrorKind::WriteZero,
                "short write to spool segment",
            ))),
        })
    }

    /// Removes whatever part of a failed batch reached the segment. When even that fails, the
    /// segment is left for good at its last good record and the next batch starts a new one;
    /// recovery sets the leftover bytes aside.
    async fn cut_back(&self, segment: u32, file: &BufferedFile, base: u64, failure: &Failure) {
        warn!(core = self.core, segment, offset = base, error = %failure, "spool flush failed");
        let mut cut = file.truncate(base).await;
        if cut.is_ok() && self.options.sync {
            cut = file.fdatasync().await;
        }
        if let Err(e) = cut {
            error!(
                core = self.core,
                segment,
                offset = base,
                error = %e,
                "spool segment cannot be cut back; later records go to a new segment"
            );
            self.active.borrow_mut().take();
        }
    }

    /// Tells the ledger and the waiters how a batch ended.
    fn settle(&self, entries: &[Entry], bytes: usize, result: &Result<Placement, Failure>) {
        let mut messages = 0;
        let mut completions = 0;
        let mut unrecorded = Vec::new();
        {
            let mut ledger = self.ledger.borrow_mut();
            for entry in entries {
                match entry {
                    Entry::Message {
                        at,
                        len,
                        recipients,
                        head,
                    } => {
                        messages += 1;
                        if let Ok(placement) = result {
                            let id = QueueId {
                                core: self.core,
                                segment: placement.segment,
                                offset: placement.base + *at as u64,
                            };
                            ledger.message(id, *len as u64, *recipients, &head.done, head.origin);
                        }
                    }
                    Entry::Completion { id, recipients } => {
                        completions += 1;
                        ledger.completion_settled(*id);
                        match result {
                            Ok(_) => {
                                ledger.completion(*id, recipients);
                            }
                            Err(Failure::Full) => {
                                ledger.completion(*id, recipients);
                                unrecorded.push((*id, recipients.clone()));
                            }
                            Err(Failure::Io(_)) => {}
                        }
                    }
                }
            }
        }

        self.count(|s| match result {
            Ok(_) => {
                s.appends += messages;
                s.completions += completions;
                s.flushes += 1;
                s.bytes += bytes as u64;
            }
            Err(_) => s.failed_flushes += 1,
        });
        if !unrecorded.is_empty() {
            warn!(
                core = self.core,
                completions = unrecorded.len(),
                "spool full: completion records kept in memory until they can be written"
            );
            self.unrecorded.borrow_mut().extend(unrecorded);
        }
    }

    /// Queues again the completion records a full disk refused, except those whose message
    /// record is gone with its segment (nothing is left for them to finish).
    pub(crate) fn requeue_unrecorded(&self) {
        let unrecorded = std::mem::take(&mut *self.unrecorded.borrow_mut());
        for (id, recipients) in unrecorded {
            if self.ledger.borrow().has_segment(id.segment) {
                drop(self.enqueue_completion(id, &recipients));
            }
        }
    }

    /// Deletes the oldest segments no live message needs, oldest first, each deletion durable
    /// before the next (a later segment may hold the completions that make an earlier one
    /// unneeded). Segments held after a copy-forward stay unless `honour_holds` is false.
    /// Returns how many were deleted.
    pub(crate) async fn delete_drained(&self, honour_holds: bool) -> usize {
        let drained = self.ledger.borrow().drained_prefix(honour_holds);
        let mut deleted = 0;
        for segment in drained {
            if let Err(e) = self.remove_segment_file(segment).await {
                warn!(core = self.core, segment, error = %e, "spool segment not deleted");
                return deleted;
            }
            self.ledger.borrow_mut().remove_segment(segment);
            if self.options.sync
                && let Err(e) = self.directory.sync().await
            {
                warn!(core = self.core, error = %e, "spool directory sync after delete failed");
            }
            self.count(|s| s.segments_deleted += 1);
            deleted += 1;
            debug!(core = self.core, segment, "spool segment deleted");
        }
        deleted
    }

    /// Deletes a drained segment's file; one still holding damaged bytes moves to `damaged/`.
    async fn remove_segment_file(&self, segment: u32) -> io::Result<()> {
        let damaged_from = self.ledger.borrow().damaged_tail(segment);
        if let Some(from) = damaged_from {
            let target = segment::move_aside(&self.dir, self.core, segment, from).await?;
            warn!(
                core = self.core,
                segment,
                offset = from,
                set_aside = %target.display(),
                "spool segment with a damaged tail moved aside; its messages are done"
            );
            return Ok(());
        }
        let path = segment::segment_path(&self.dir, self.core, segment);
        match glommio::io::remove(&path).await.map_err(io::Error::from) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Closes the files and releases the core's lock.
    async fn shut_down(&self) {
        let active = self.active.borrow_mut().take();
        if let Some(file) = active.and_then(|a| Rc::into_inner(a.file)) {
            let _ = file.close().await;
        }
        self.lock.borrow_mut().take();

        let core_dir = segment::core_dir(&self.dir, self.core);
        CLOSING.with(|c| {
            let mut closing = c.borrow_mut();
            if closing
                .get(&core_dir)
                .is_some_and(|s| Rc::ptr_eq(s, &self.stopped))
            {
                closing.remove(&core_dir);
            }
        });
        self.stopped.close();
    }
}

/// The batch new records go to. A new batch starts with room for as much as the last flush
/// wrote, so that under steady load its buffer is not regrown (and its bodies not copied again).
fn open_batch(batches: &mut VecDeque<Batch>, capacity_hint: usize) -> &mut Batch {
    if batches.back().is_none_or(|b| b.buf.len() >= BATCH_LIMIT) {
        let capacity = capacity_hint.clamp(BATCH_CAPACITY, BATCH_LIMIT);
        batches.push_back(Batch {
            buf: Vec::with_capacity(capacity),
            ..Batch::default()
        });
    }
    batches.back_mut().expect("a batch was just ensured")
}

/// The writer task of one core's log: flushes batches until the spool is closed and drained.
pub(crate) async fn run_writer(shared: Rc<Shared>) {
    while shared.work_ready().await {
        let delay = shared.options.commit_delay;
        if !delay.is_zero() && !shared.closed.get() {
            glommio::timer::sleep(delay).await;
        }
        let Some(batch) = shared.batches.borrow_mut().pop_front() else {
            continue;
        };

        shared.flushing.set(true);
        let Batch {
            buf,
            entries,
            outcome,
            ..
        } = batch;
        let bytes = buf.len();
        shared.last_batch.set(bytes + bytes / 4);
        let result = shared.flush(buf).await;
        shared.settle(&entries, bytes, &result);
        let durable = result.is_ok();
        let full = matches!(result, Err(Failure::Full));
        outcome.finish(result);
        if durable || full {
            // After a full disk, completions counted in memory may have drained segments.
            let deleted = shared.delete_drained(true).await;
            if durable || deleted > 0 {
                // There is room again: the refused completions get another try. Without any,
                // they wait for the next success (or reclamation pass) instead of spinning.
                shared.requeue_unrecorded();
            }
        }
        shared.flushing.set(false);
    }
    shared.shut_down().await;
}
