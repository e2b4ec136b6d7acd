//! Files of the spool: where segments live, reading one record back, the per-core lock, and
//! setting a damaged tail aside.
//!
//! Layout under the spool directory:
//!
//! ```text
//! core-00/lock            flock(2)ed while a process owns core 0's log
//! core-00/00000000.log    segments, numbered upwards, never reused while the newest exists
//! damaged/core-00-00000003-000000001234.bin   bytes cut from segment 3 at offset 1234
//! ```
//!
//! When there is no room to copy a damaged tail, the segment stays whole and later moves to
//! `damaged/` by rename (which needs no space): the file is then the whole segment, and the
//! offset in its name is still where the damage starts.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use glommio::io::{BufferedFile, OpenOptions, ReadResult};

use super::record::{self, Frame, Kind, RECORD_HEADER_LEN};
use crate::envelope::QueueId;

/// Bytes read at a record's offset on the first try; larger records take a second read.
const FIRST_READ: usize = 64 << 10;
/// Bytes copied per read when setting a damaged tail aside.
const COPY_CHUNK: usize = 1 << 20;

pub(crate) fn core_dir(dir: &Path, core: u16) -> PathBuf {
    dir.join(format!("core-{core:02}"))
}

pub(crate) fn segment_path(dir: &Path, core: u16, segment: u32) -> PathBuf {
    core_dir(dir, core).join(format!("{segment:08}.log"))
}

/// Core numbers that have a log directory under `dir`, ascending; none if `dir` is missing.
pub fn existing_cores(dir: &Path) -> Vec<u16> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut cores: Vec<u16> = entries
        .filter_map(|entry| {
            let name = entry.ok()?.file_name();
            let digits = name.to_str()?.strip_prefix("core-")?;
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            digits.parse().ok()
        })
        .collect();
    cores.sort_unstable();
    cores
}

/// The segment number a file name stands for, if it is a segment file.
pub(crate) fn segment_number(file_name: &str) -> Option<u32> {
    let digits = file_name.strip_suffix(".log")?;
    if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Segment numbers present in a core's directory, ascending.
pub(crate) fn list_segments(core_dir: &Path) -> io::Result<Vec<u32>> {
    let mut numbers = Vec::new();
    for entry in std::fs::read_dir(core_dir)? {
        if let Some(n) = entry?.file_name().to_str().and_then(segment_number) {
            numbers.push(n);
        }
    }
    numbers.sort_unstable();
    Ok(numbers)
}

/// Opens a segment for reading and appending; it must exist. With `durable_writes` the file is
/// opened `O_DSYNC`: a write returns once it is on stable storage, as if followed by
/// `fdatasync`, in one request instead of two.
pub(crate) async fn open_for_append(path: &Path, durable_writes: bool) -> io::Result<BufferedFile> {
    Ok(OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(dsync_flag(durable_writes))
        .buffered_open(path)
        .await?)
}

/// Creates a segment file that must not exist yet; `durable_writes` as for [`open_for_append`].
pub(crate) async fn create(path: &Path, durable_writes: bool) -> glommio::Result<BufferedFile, ()> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .custom_flags(dsync_flag(durable_writes))
        .buffered_open(path)
        .await
}

fn dsync_flag(durable_writes: bool) -> i32 {
    if durable_writes { libc::O_DSYNC } else { 0 }
}

/// Exclusive ownership of one core's log by this process, held until dropped.
#[derive(Debug)]
pub(crate) struct CoreLock {
    _file: File,
}

/// Takes the lock of a core's log, so that two secmx processes never append to the same log.
pub(crate) fn lock(core_dir: &Path) -> io::Result<CoreLock> {
    let path = core_dir.join("lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)?;
    // SAFETY: flock on a file descriptor this function owns; no memory is passed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let error = io::Error::last_os_error();
        if error.kind() == io::ErrorKind::WouldBlock {
            return Err(io::Error::new(
                io::ErrorKind::ResourceBusy,
                format!("{} is held by another secmx process", path.display()),
            ));
        }
        return Err(error);
    }
    Ok(CoreLock { _file: file })
}

/// One record read back from a segment: the bytes from its header to its end.
pub(crate) struct StoredRecord {
    bytes: ReadResult,
    kind: Option<Kind>,
    len: usize,
}

impl StoredRecord {
    pub(crate) fn kind(&self) -> Option<Kind> {
        self.kind
    }

    pub(crate) fn payload(&self) -> &[u8] {
        &self.bytes[RECORD_HEADER_LEN..self.len]
    }
}

/// Reads and checks the record at `offset` of an open segment.
pub(crate) async fn read_record(file: &BufferedFile, offset: u64) -> io::Result<StoredRecord> {
    let mut bytes = file.read_at(offset, FIRST_READ).await?;
    if let Frame::Partial { needed } = record::parse(&bytes) {
        bytes = file.read_at(offset, needed).await?;
    }
    match record::parse(&bytes) {
        Frame::Record { kind, len, .. } => Ok(StoredRecord { bytes, kind, len }),
        Frame::Partial { .. } => Err(not_a_record(offset, record::Damage::Torn)),
        Frame::Damaged(damage) => Err(not_a_record(offset, damage)),
    }
}

fn not_a_record(offset: u64, damage: record::Damage) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("no good record at offset {offset}: {damage}"),
    )
}

/// Reads the message record `id` from its core's log.
pub(crate) async fn read_message_record(dir: &Path, id: QueueId) -> io::Result<StoredRecord> {
    let path = segment_path(dir, id.core, id.segment);
    let file = BufferedFile::open(&path)
        .await
        .map_err(|e| with_path(e.into(), &path))?;
    let stored = read_record(&file, id.offset).await;
    let _ = file.close().await;
    let stored = stored.map_err(|e| with_path(e, &path))?;
    if stored.kind() != Some(Kind::Message) {
        return Err(with_path(
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("record at offset {} is not a message", id.offset),
            ),
            &path,
        ));
    }
    Ok(stored)
}

/// Adds the file name to an error, keeping its kind.
pub(crate) fn with_path(error: io::Error, path: &Path) -> io::Error {
    io::Error::new(error.kind(), format!("{}: {error}", path.display()))
}

/// True for the errors of a file system out of space or quota.
pub(crate) fn is_full(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
        || matches!(
            error.kind(),
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
        )
}

/// Where the bytes of `segment` from offset `from` on are kept.
fn damaged_path(dir: &Path, core: u16, segment: u32, from: u64) -> PathBuf {
    dir.join("damaged")
        .join(format!("core-{core:02}-{segment:08}-{from:012}.bin"))
}

/// Copies bytes `from..end` of a segment to `<dir>/damaged/`, then cuts the segment at `from`.
/// Returns the file the bytes went to. On failure the segment is untouched and no partial copy
/// is left behind ([`is_full`] tells a lack of space from other failures).
pub(crate) async fn set_aside(
    dir: &Path,
    core: u16,
    segment: u32,
    file: &BufferedFile,
    from: u64,
    end: u64,
    sync: bool,
) -> io::Result<PathBuf> {
    let target = damaged_path(dir, core, segment, from);
    std::fs::create_dir_all(dir.join("damaged"))?;
    if let Err(e) = copy_range(file, from, end, &target).await {
        let _ = std::fs::remove_file(&target);
        return Err(e);
    }

    file.truncate(from).await?;
    if sync {
        file.fdatasync().await?;
    }
    Ok(target)
}

/// Moves a whole segment whose bytes from `from` on are damaged to `<dir>/damaged/`, by rename.
pub(crate) async fn move_aside(
    dir: &Path,
    core: u16,
    segment: u32,
    from: u64,
) -> io::Result<PathBuf> {
    let target = damaged_path(dir, core, segment, from);
    std::fs::create_dir_all(dir.join("damaged"))?;
    glommio::io::rename(segment_path(dir, core, segment), &target).await?;
    Ok(target)
}

/// Copies bytes `from..end` of `file` into a new file at `target`, durably.
async fn copy_range(file: &BufferedFile, from: u64, end: u64, target: &Path) -> io::Result<()> {
    let copy = BufferedFile::create(target).await?;
    let mut pos = from;
    while pos < end {
        let want = COPY_CHUNK.min((end - pos) as usize);
        let chunk = file.read_at(pos, want).await?;
        if chunk.is_empty() {
            break;
        }
        let written = copy.write_at(chunk.to_vec(), pos - from).await?;
        if written < chunk.len() {
            // A regular file takes less than asked only when it cannot take more; one more byte
            // tells why (usually ENOSPC).
            copy.write_at(vec![0], pos - from + written as u64).await?;
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("{}: short write", target.display()),
            ));
        }
        pos += written as u64;
    }
    copy.fdatasync().await?;
    copy.close().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_eight_digit_log_names_are_segments() {
        assert_eq!(segment_number("00000012.log"), Some(12));
        assert_eq!(segment_number("12.log"), None);
        assert_eq!(segment_number("0000001a.log"), None);
        assert_eq!(segment_number("00000012.log.tmp"), None);
        assert_eq!(segment_number("lock"), None);
    }

    #[test]
    fn segment_paths_are_per_core() {
        let path = segment_path(Path::new("/spool"), 3, 7);
        assert_eq!(path, Path::new("/spool/core-03/00000007.log"));
    }
}
