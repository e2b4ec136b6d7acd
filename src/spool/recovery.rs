//! Replay of one core's log at startup.
//!
//! Segments are read oldest first and every good record is applied to a [`Ledger`], exactly as
//! the writer applied it after its flush. A segment is read up to its first torn or damaged
//! record; the bytes from there on are copied to `<dir>/damaged/`, the segment is cut there, one
//! warning names the file and offset, and replay goes on with the next segment.
//!
//! A crash on a full disk leaves no room for that copy. Then the segment stays whole and is no
//! longer appended to; its good records are delivered like any others, and once they are all
//! done the segment moves to `damaged/` by rename instead of being deleted. The queue it holds
//! is never kept from starting for want of space.

use std::collections::HashMap;
use std::io;
use std::path::Path;

use glommio::io::BufferedFile;
use tracing::{error, warn};

use super::codec;
use super::ledger::Ledger;
use super::record::{self, Damage, Frame, Kind, SEGMENT_HEADER_LEN};
use super::segment;
use crate::envelope::{Envelope, QueueId};

/// Bytes read from a segment at a time.
const READ_CHUNK: usize = 1 << 20;

/// The state of a core's log after replay.
#[derive(Default)]
pub(crate) struct Replayed {
    pub ledger: Ledger,
    /// Envelopes of the live messages.
    pub envelopes: HashMap<QueueId, Envelope>,
    /// The newest segment with a good header, and where its good records end.
    pub tail: Option<(u32, u64)>,
}

/// Replays every segment of `core` under `dir`.
pub(crate) async fn replay(dir: &Path, core: u16, sync: bool) -> io::Result<Replayed> {
    let mut replayed = Replayed::default();
    for segment in segment::list_segments(&segment::core_dir(dir, core))? {
        let path = segment::segment_path(dir, core, segment);
        let file = segment::open_for_append(&path, false)
            .await
            .map_err(|e| segment::with_path(e, &path))?;
        let outcome = replay_segment(dir, core, segment, &file, sync, &mut replayed).await;
        let _ = file.close().await;
        outcome.map_err(|e| segment::with_path(e, &path))?;
    }
    Ok(replayed)
}

async fn replay_segment(
    dir: &Path,
    core: u16,
    segment: u32,
    file: &BufferedFile,
    sync: bool,
    replayed: &mut Replayed,
) -> io::Result<()> {
    let path = segment::segment_path(dir, core, segment);
    let size = file.file_size().await?;
    let header = file.read_at(0, SEGMENT_HEADER_LEN as usize).await?;
    if let Err(damage) = record::check_segment_header(&header, core, segment) {
        return discard_segment(dir, core, segment, size, damage).await;
    }

    replayed.ledger.add_segment(segment, SEGMENT_HEADER_LEN);
    let (end, damage) = scan(file, core, segment, size, replayed).await?;
    replayed.ledger.add_segment(segment, end);
    let Some(damage) = damage else {
        replayed.tail = Some((segment, end));
        return Ok(());
    };

    match segment::set_aside(dir, core, segment, file, end, size, sync).await {
        Ok(target) => {
            warn!(
                file = %path.display(),
                offset = end,
                bytes = size - end,
                %damage,
                set_aside = %target.display(),
                "spool segment cut at a bad record; later segments are still replayed"
            );
            replayed.tail = Some((segment, end));
        }
        Err(e) if segment::is_full(&e) => {
            warn!(
                file = %path.display(),
                offset = end,
                bytes = size - end,
                %damage,
                "spool segment has a bad record but no room to set the rest aside; it is no \
                 longer appended to, and moves to damaged/ once its messages are done"
            );
            replayed.ledger.keep_damaged_tail(segment, end);
            replayed.tail = None;
        }
        Err(e) => return Err(e),
    }
    Ok(())
}

/// A segment whose own header is wrong holds nothing that can be trusted: usually a crash while
/// it was being created. The file moves to `damaged/` (an empty one is removed).
async fn discard_segment(
    dir: &Path,
    core: u16,
    segment: u32,
    size: u64,
    damage: Damage,
) -> io::Result<()> {
    let path = segment::segment_path(dir, core, segment);
    let target = if size > 0 {
        // A rename keeps every byte and needs no space, even on a full disk.
        let target = segment::move_aside(dir, core, segment, 0).await?;
        target.display().to_string()
    } else {
        glommio::io::remove(&path).await?;
        String::from("nothing (empty file)")
    };
    warn!(
        file = %path.display(),
        offset = 0,
        bytes = size,
        %damage,
        set_aside = %target,
        "spool segment removed: its header is not a secmx segment header for this core"
    );
    Ok(())
}

/// Applies the records of one segment from its header on; returns where the good records end and
/// what stopped the scan before the end of the file.
async fn scan(
    file: &BufferedFile,
    core: u16,
    segment: u32,
    size: u64,
    replayed: &mut Replayed,
) -> io::Result<(u64, Option<Damage>)> {
    let mut window: Vec<u8> = Vec::new();
    let mut window_start = SEGMENT_HEADER_LEN;
    let mut pos = SEGMENT_HEADER_LEN;

    while pos < size {
        let relative = (pos - window_start) as usize;
        let needed = match record::parse(&window[relative..]) {
            Frame::Record { kind, payload, len } => {
                let id = QueueId {
                    core,
                    segment,
                    offset: pos,
                };
                apply(replayed, id, kind, payload, len as u64);
                pos += len as u64;
                continue;
            }
            Frame::Damaged(damage) => return Ok((pos, Some(damage))),
            Frame::Partial { needed } => needed,
        };

        let window_end = window_start + window.len() as u64;
        if window_end >= size {
            return Ok((pos, Some(Damage::Torn)));
        }
        window.drain(..relative);
        window_start = pos;
        let want = needed.max(READ_CHUNK) - window.len();
        let want = want.min((size - window_end) as usize);
        let more = file.read_at(window_end, want).await?;
        if more.is_empty() {
            return Ok((pos, Some(Damage::Torn)));
        }
        window.extend_from_slice(&more);
    }
    Ok((pos, None))
}

/// Applies one good record. A record with a good checksum that this build cannot decode was
/// written by another version of secmx: it is skipped but left in place, never cut away.
fn apply(replayed: &mut Replayed, id: QueueId, kind: Option<Kind>, payload: &[u8], len: u64) {
    let ledger = &mut replayed.ledger;
    match kind {
        Some(Kind::Message) => match codec::message(payload) {
            Ok(message) => {
                let recipients = u32::try_from(message.envelope.recipients.len()).unwrap_or(0);
                let head = &message.head;
                if let Some(replaced) = ledger.message(id, len, recipients, &head.done, head.origin)
                {
                    replayed.envelopes.remove(&replaced);
                }
                if ledger.recipients(id).is_some() {
                    replayed.envelopes.insert(id, message.envelope);
                }
            }
            Err(e) => {
                error!(queue_id = %id, error = %e, "spool message record not decodable; skipped")
            }
        },
        Some(Kind::Completion) => match codec::completion(payload) {
            Ok((target, recipients)) => {
                if let Some(finished) = ledger.completion(target, &recipients) {
                    replayed.envelopes.remove(&finished);
                }
            }
            Err(e) => {
                warn!(queue_id = %id, error = %e, "spool completion record not decodable; skipped")
            }
        },
        None => warn!(queue_id = %id, "spool record of unknown kind skipped"),
    }
}
