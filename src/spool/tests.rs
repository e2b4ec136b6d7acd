//! The spool on a real glommio executor and real files, each test in its own directory.

use std::ffi::CString;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use glommio::{LocalExecutorBuilder, Placement};

use super::*;

/// A directory removed when the test ends.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("secmx-spool-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run<F, Fut>(test: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    LocalExecutorBuilder::new(Placement::Unbound)
        .spawn(test)
        .unwrap()
        .join()
        .unwrap();
}

fn options(segment_size: u64) -> config::Spool {
    config::Spool {
        sync: true,
        segment_size,
        commit_delay: Duration::ZERO,
    }
}

fn envelope(n: usize, recipients: usize) -> Envelope {
    Envelope {
        reverse_path: format!("sender{n}@example.org"),
        recipients: (0..recipients)
            .map(|r| format!("rcpt{r}@example.net"))
            .collect(),
        received_at: 1_700_000_000 + n as u64,
        peer: "192.0.2.1".into(),
        helo: "client.example.org".into(),
        tls: "none".into(),
    }
}

fn body(n: usize, len: usize) -> Vec<u8> {
    let mut body = format!("Subject: message {n}\r\n\r\n").into_bytes();
    body.resize(len, b'a' + (n % 26) as u8);
    body
}

fn segment_files(dir: &Path, core: u16) -> Vec<u32> {
    segment::list_segments(&segment::core_dir(dir, core)).unwrap()
}

fn damaged_files(dir: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(dir.join("damaged")) {
        Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn appended_messages_are_pending_after_reopen() {
    let tmp = TempDir::new("reopen");
    let dir = tmp.path().to_path_buf();
    run(move || async move {
        let (spool, recovered) = Spool::open(&dir, 0, &options(1 << 20)).await.unwrap();
        assert!(recovered.is_empty());
        let mut ids = Vec::new();
        for n in 0..3 {
            ids.push(spool.append(&envelope(n, 2), &body(n, 1024)).await.unwrap());
        }
        assert_eq!(spool.pending_messages(), 3);
        drop(spool);

        let (spool, recovered) = Spool::open(&dir, 0, &options(1 << 20)).await.unwrap();
        assert_eq!(spool.pending_messages(), 3);
        assert_eq!(recovered.len(), 3);
        for (n, r) in recovered.iter().enumerate() {
            assert_eq!(r.id, ids[n]);
            assert_eq!(r.envelope, envelope(n, 2));
            assert_eq!(r.pending, vec![0, 1]);
            let (stored_envelope, stored_body) = read_message(&dir, r.id).await.unwrap();
            assert_eq!(stored_envelope, envelope(n, 2));
            assert_eq!(stored_body, body(n, 1024));
        }
    });
}

#[test]
fn completed_recipients_are_not_pending_after_reopen() {
    let tmp = TempDir::new("complete");
    let dir = tmp.path().to_path_buf();
    run(move || async move {
        let (spool, _) = Spool::open(&dir, 0, &options(1 << 20)).await.unwrap();
        let a = spool.append(&envelope(0, 2), &body(0, 100)).await.unwrap();
        let b = spool.append(&envelope(1, 3), &body(1, 100)).await.unwrap();
        spool.complete(a, &[0, 1]).await.unwrap();
        spool.complete(b, &[0, 2]).await.unwrap();
        assert_eq!(spool.pending_messages(), 1);
        // Finishing a finished recipient or message again changes nothing and succeeds.
        spool.complete(a, &[1]).await.unwrap();
        spool.complete(b, &[2]).await.unwrap();
        drop(spool);

        let (spool, recovered) = Spool::open(&dir, 0, &options(1 << 20)).await.unwrap();
        assert_eq!(spool.pending_messages(), 1);
        assert_eq!(recovered.len(), 1);
        assert_eq!(recovered[0].id, b);
        assert_eq!(recovered[0].pending, vec![1]);
        assert_eq!(
            spool.stats().completions,
            0,
            "nothing written since reopening"
        );
    });
}

#[test]
fn completion_with_a_foreign_core_or_unknown_recipient_is_refused() {
    let tmp = TempDir::new("refuse");
    let dir = tmp.path().to_path_buf();
    run(move || async move {
        let (spool, _) = Spool::open(&dir, 1, &options(1 << 20)).await.unwrap();
        let id = spool.append(&envelope(0, 2), &body(0, 10)).await.unwrap();
        assert_eq!(id.core, 1);

        let foreign = QueueId { core: 0, ..id };
        assert!(matches!(
            spool.complete(foreign, &[0]).await,
            Err(SpoolError::Io(_))
        ));
        assert!(matches!(
            spool.complete(id, &[2]).await,
            Err(SpoolError::Io(_))
        ));
        assert_eq!(spool.pending_messages(), 1);
    });
}

#[test]
fn concurrent_appends_share_fsyncs() {
    let tmp = TempDir::new("group");
    let dir = tmp.path().to_path_buf();
    run(move || async move {
        let (spool, _) = Spool::open(&dir, 0, &options(64 << 20)).await.unwrap();
        let tasks: Vec<_> = (0..200)
            .map(|n| {
                let spool = spool.clone();
                glommio::spawn_local(async move {
                    spool.append(&envelope(n, 1), &body(n, 1024)).await.unwrap()
                })
            })
            .collect();
        let mut ids = Vec::new();
        for task in tasks {
            ids.push(task.await);
        }

        let stats = spool.stats();
        assert_eq!(stats.appends, 200);
        assert!(
            stats.syncs < stats.appends / 2,
            "{} fsyncs for {} appends",
            stats.syncs,
            stats.appends
        );
        assert_eq!(stats.syncs, stats.flushes);
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 200, "every append got its own id");
    });
}

#[test]
fn commit_delay_gathers_appends_that_arrive_while_it_waits() {
    let tmp = TempDir::new("delay");
    let dir = tmp.path().to_path_buf();
    run(move || async move {
        for (delay, expect_one_flush) in
            [(Duration::from_millis(100), true), (Duration::ZERO, false)]
        {
            let mut opts = options(64 << 20);
            opts.commit_delay = delay;
            let core = u16::from(expect_one_flush);
            let (spool, _) = Spool::open(&dir, core, &opts).await.unwrap();
            let mut tasks = Vec::new();
            for n in 0..10 {
                let spool = spool.clone();
                tasks.push(glommio::spawn_local(async move {
                    spool.append(&envelope(n, 1), &body(n, 100)).await.unwrap()
                }));
                // Let the writer run (it has a task queue of its own, so a yield is not enough):
                // without a delay it starts flushing the first append alone.
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
            for task in tasks {
                task.await;
            }
            let stats = spool.stats();
            assert_eq!(stats.appends, 10);
            assert_eq!(
                stats.flushes == 1,
                expect_one_flush,
                "delay {delay:?}: {stats:?}"
            );
        }
    });
}

#[test]
fn without_sync_nothing_is_fsynced_but_records_are_written() {
    let tmp = TempDir::new("nosync");
    let dir = tmp.path().to_path_buf();
    run(move || async move {
        let mut opts = options(1 << 20);
        opts.sync = false;
        let (spool, _) = Spool::open(&dir, 0, &opts).await.unwrap();
        spool.append(&envelope(0, 1), &body(0, 100)).await.unwrap();
        assert_eq!(spool.stats().syncs, 0);
        assert_eq!(spool.stats().flushes, 1);
        drop(spool);

        let (_, recovered) = Spool::open(&dir, 0, &opts).await.unwrap();
        assert_eq!(recovered.len(), 1);
    });
}

#[test]
fn a_second_open_of_the_same_core_is_refused() {
    let tmp = TempDir::new("lock");
    let dir = tmp.path().to_path_buf();
    run(move || async move {
        let (spool, _) = Spool::open(&dir, 0, &options(1 << 20)).await.unwrap();
        let second = Spool::open(&dir, 0, &options(1 << 20)).await;
        assert_eq!(
            second.err().map(|e| e.kind()),
            Some(std::io::ErrorKind::ResourceBusy)
        );
        assert!(Spool::open(&dir, 1, &options(1 << 20)).await.is_ok());
        drop(spool);
        assert!(Spool::open(&dir, 0, &options(1 << 20)).await.is_ok());
    });
}

#[test]
fn reopening_on_the_same_executor_waits_for_the_dropped_writer() {
    let tmp = TempDir::new("handover");
    let dir = tmp.path().to_path_buf();
    run(move || async move {
        let (spool, _) = Spool::open(&dir, 0, &options(1 << 20)).await.unwrap();
        // An append abandoned after it was queued is still written by the writer, which keeps
        // the lock until it is done.
        let (envelope0, body0) = (envelope(0, 1), body(0, 10));
        let queued = futures_lite::future::poll_once(spool.append(&envelope0, &body0)).await;
        assert!(queued.is_none());
        drop(spool);

        let (_spool, recovered) = Spool::open(&dir, 0, &options(1 << 20)).await.unwrap();
        assert_eq!(recovered.len(), 1);
        assert_eq!(recovered[0].envelope, envelope(0, 1));
    });
}

#[test]
fn segments_roll_over_and_finished_ones_are_deleted_oldest_first() {
    let tmp = TempDir::new("reclaim");
    let dir = tmp.path().to_path_buf();
    run(move || async move {
        let (spool, _) = Spool::open(&dir, 0, &options(4096)).await.unwrap();
        let mut ids = Vec::new();
        for n in 0..20 {
            ids.push(spool.append(&envelope(n, 1), &body(n, 1024)).await.unwrap());
        }
        let segments = segment_files(&dir, 0);
        assert!(segments.len() >= 5, "segments: {segments:?}");

        // Everything but one message in the second segment finishes: only the first segment
        // may go, because the second is still needed.
        let keep = *ids.iter().find(|id| id.segment == 1).unwrap();
        for &id in ids.iter().filter(|&&id| id != keep) {
            spool.complete(id, &[0]).await.unwrap();
        }
        spool.reclaim().await;
        let after = segment_files(&dir, 0);
        assert_eq!(after.first(), Some(&1), "segments: {after:?}");

        spool.complete(keep, &[0]).await.unwrap();
        spool.reclaim().await;
        let last = segment_files(&dir, 0);
        assert_eq!(last.len(), 1, "only the newest segment stays: {last:?}");
        assert!(spool.stats().segments_deleted >= 4);
        drop(spool);

        let (spool, recovered) = Spool::open(&dir, 0, &options(4096)).await.unwrap();
        assert!(recovered.is_empty());
        let next = spool.append(&envelope(99, 1), &body(99, 10)).await.unwrap();
        assert!(next.segment >= last[0], "segment numbers are never reused");
    });
}

#[test]
fn long_lived_message_is_copied_forward_and_keeps_its_state() {
    let tmp = TempDir::new("relocate");
    let dir = tmp.path().to_path_buf();
    run(move || async move {
        let (spool, _) = Spool::open(&dir, 0, &options(4096)).await.unwrap();
        let old = spool.append(&envelope(0, 3), &body(0, 60)).await.unwrap();
        spool.complete(old, &[1]).await.unwrap();
        let mut others = Vec::new();
        for n in 1..16 {
            others.push(spool.append(&envelope(n, 1), &body(n, 1024)).await.unwrap());
        }
        for &id in &others {
            spool.complete(id, &[0]).await.unwrap();
        }
        assert_eq!(segment_files(&dir, 0).first(), Some(&0));

        let relocated = spool.reclaim().await;
        assert_eq!(relocated.len(), 1);
        assert_eq!(relocated[0].from, old);
        let new = relocated[0].to;
        assert!(new.segment > old.segment);
        assert_eq!(spool.pending_messages(), 1);
        assert_eq!(spool.stats().relocated, 1);

        // The old id still reads until the next pass, which deletes the emptied segment.
        assert_eq!(read_message(&dir, old).await.unwrap().1, body(0, 60));
        assert!(spool.reclaim().await.is_empty());
        assert!(!segment_files(&dir, 0).contains(&0));
        assert_eq!(read_message(&dir, new).await.unwrap().1, body(0, 60));
        drop(spool);

        let (spool, recovered) = Spool::open(&dir, 0, &options(4096)).await.unwrap();
        assert_eq!(recovered.len(), 1);
        assert_eq!(recovered[0].id, new);
        assert_eq!(recovered[0].envelope, envelope(0, 3));
        assert_eq!(recovered[0].pending, vec![0, 2]);

        // Even after a restart, a completion naming the old id reaches the copy.
        spool.complete(old, &[0]).await.unwrap();
        assert_eq!(spool.pending_messages(), 1);
        spool.complete(new, &[2]).await.unwrap();
        assert_eq!(spool.pending_messages(), 0);
    });
}

#[test]
fn completion_by_old_id_reaches_the_copy_in_the_same_run() {
    let tmp = TempDir::new("alias");
    let dir = tmp.path().to_path_buf();
    run(move || async move {
        let (spool, _) = Spool::open(&dir, 0, &options(4096)).await.unwrap();
        let old = spool.append(&envelope(0, 2), &body(0, 60)).await.unwrap();
        for n in 1..16 {
            let id = spool.append(&envelope(n, 1), &body(n, 1024)).await.unwrap();
            spool.complete(id, &[0]).await.unwrap();
        }
        let relocated = spool.reclaim().await;
        assert_eq!(relocated.len(), 1);

        spool.complete(old, &[0]).await.unwrap();
        drop(spool);
        let (spool, recovered) = Spool::open(&dir, 0, &options(4096)).await.unwrap();
        assert_eq!(recovered.len(), 1);
        assert_eq!(recovered[0].id, relocated[0].to);
        assert_eq!(recovered[0].pending, vec![1]);
        spool.complete(relocated[0].to, &[1]).await.unwrap();
        assert_eq!(spool.pending_messages(), 0);
    });
}

#[test]
fn damaged_middle_record_is_set_aside_and_later_segments_recovered() {
    let tmp = TempDir::new("damaged");
    let dir = tmp.path().to_path_buf();
    run(move || async move {
        let (spool, _) = Spool::open(&dir, 0, &options(4096)).await.unwrap();
        let mut ids = Vec::new();
        for n in 0..8 {
            ids.push(spool.append(&envelope(n, 1), &body(n, 1024)).await.unwrap());
        }
        drop(spool);
        let in_first: Vec<QueueId> = ids.iter().copied().filter(|id| id.segment == 0).collect();
        assert!(in_first.len() >= 3, "ids: {ids:?}");

        let path = segment::segment_path(&dir, 0, 0);
        let mut bytes = std::fs::read(&path).unwrap();
        let original_len = bytes.len() as u64;
        let cut = in_first[1].offset;
        bytes[cut as usize + 100] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();

        let (_spool, recovered) = Spool::open(&dir, 0, &options(4096)).await.unwrap();
        let recovered_ids: Vec<QueueId> = recovered.iter().map(|r| r.id).collect();
        let expected: Vec<QueueId> = ids
            .iter()
            .copied()
            .filter(|id| id.segment != 0 || id.offset < cut)
            .collect();
        assert_eq!(recovered_ids, expected);

        assert_eq!(std::fs::metadata(&path).unwrap().len(), cut);
        let damaged = damaged_files(&dir);
        assert_eq!(damaged.len(), 1);
        assert!(
            damaged[0]
                .to_string_lossy()
                .ends_with(&format!("-{cut:012}.bin"))
        );
        assert_eq!(
            std::fs::metadata(&damaged[0]).unwrap().len(),
            original_len - cut
        );
        assert_eq!(std::fs::read(&damaged[0]).unwrap(), bytes[cut as usize..]);
    });
}

#[test]
fn torn_last_record_at_every_offset_keeps_all_earlier_records() {
    let tmp = TempDir::new("torn");
    let dir = tmp.path().to_path_buf();
    run(move || async move {
        let (spool, _) = Spool::open(&dir, 0, &options(1 << 20)).await.unwrap();
        let first = spool.append(&envelope(0, 1), &body(0, 300)).await.unwrap();
        let second = spool.append(&envelope(1, 2), &body(1, 200)).await.unwrap();
        let last = spool.append(&envelope(2, 1), &body(2, 150)).await.unwrap();
        drop(spool);

        let path = segment::segment_path(&dir, 0, 0);
        let whole = std::fs::read(&path).unwrap();
        for cut in last.offset..whole.len() as u64 {
            std::fs::write(&path, &whole[..cut as usize]).unwrap();
            let (spool, recovered) = Spool::open(&dir, 0, &options(1 << 20)).await.unwrap();
            let ids: Vec<QueueId> = recovered.iter().map(|r| r.id).collect();
            assert_eq!(ids, vec![first, second], "cut at {cut}");
            assert_eq!(
                std::fs::metadata(&path).unwrap().len(),
                last.offset,
                "cut at {cut}"
            );
            drop(spool);
        }

        // Appending after a cut tail lands where the torn record was, and survives a reopen.
        let (spool, _) = Spool::open(&dir, 0, &options(1 << 20)).await.unwrap();
        let again = spool.append(&envelope(3, 1), &body(3, 50)).await.unwrap();
        assert_eq!(again.offset, last.offset);
        drop(spool);
        let (_spool, recovered) = Spool::open(&dir, 0, &options(1 << 20)).await.unwrap();
        assert_eq!(recovered.len(), 3);
        assert_eq!(recovered[2].envelope, envelope(3, 1));
    });
}

#[test]
fn segment_with_a_torn_header_is_removed_and_its_number_reused() {
    let tmp = TempDir::new("header");
    let dir = tmp.path().to_path_buf();
    run(move || async move {
        let (spool, _) = Spool::open(&dir, 0, &options(1 << 20)).await.unwrap();
        let id = spool.append(&envelope(0, 1), &body(0, 10)).await.unwrap();
        drop(spool);
        // A crash right after creating the next segment: the file exists, its header does not.
        std::fs::write(segment::segment_path(&dir, 0, 1), b"secmx").unwrap();

        let (spool, recovered) = Spool::open(&dir, 0, &options(1 << 20)).await.unwrap();
        assert_eq!(recovered.len(), 1);
        assert_eq!(recovered[0].id, id);
        assert_eq!(segment_files(&dir, 0), vec![0]);
        assert_eq!(damaged_files(&dir).len(), 1);
        drop(spool);
    });
}

#[test]
fn reading_a_message_that_is_not_there_is_an_error() {
    let tmp = TempDir::new("missing");
    let dir = tmp.path().to_path_buf();
    run(move || async move {
        let (spool, _) = Spool::open(&dir, 0, &options(1 << 20)).await.unwrap();
        let id = spool.append(&envelope(0, 1), &body(0, 10)).await.unwrap();
        let done = spool.append(&envelope(1, 1), &body(1, 10)).await.unwrap();
        spool.complete(done, &[0]).await.unwrap();

        let inside = QueueId {
            offset: id.offset + 1,
            ..id
        };
        assert!(read_message(&dir, inside).await.is_err());
        let missing_segment = QueueId { segment: 7, ..id };
        let error = read_message(&dir, missing_segment).await.unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::NotFound);
    });
}

/// A tmpfs of `size` bytes mounted on a fresh directory, unmounted when dropped.
struct SmallFileSystem(TempDir);

impl SmallFileSystem {
    fn mount(size: usize) -> Result<SmallFileSystem, std::io::Error> {
        let dir = TempDir::new("full");
        let target = CString::new(dir.path().as_os_str().as_encoded_bytes()).unwrap();
        let options = CString::new(format!("size={size}")).unwrap();
        // SAFETY: all pointers are valid NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                options.as_ptr().cast(),
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(SmallFileSystem(dir))
    }
}

impl Drop for SmallFileSystem {
    fn drop(&mut self) {
        let target = CString::new(self.0.path().as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

#[test]
fn full_disk_fails_the_batch_loses_nothing_and_recovers_when_space_returns() {
    let fs = match SmallFileSystem::mount(512 << 10) {
        Ok(fs) => fs,
        Err(e) => {
            eprintln!("skipped: cannot mount a small tmpfs to fill ({e}); needs CAP_SYS_ADMIN");
            return;
        }
    };
    let dir = fs.0.path().join("spool");
    let filler = fs.0.path().join("filler");
    run(move || async move {
        std::fs::write(&filler, vec![0u8; 128 << 10]).unwrap();
        let (spool, _) = Spool::open(&dir, 0, &options(64 << 20)).await.unwrap();

        let mut acknowledged = Vec::new();
        let mut n = 0;
        let full = loop {
            match spool.append(&envelope(n, 1), &body(n, 16 << 10)).await {
                Ok(id) => acknowledged.push(id),
                Err(e) => break e,
            }
            n += 1;
            assert!(n < 1000, "the file system never filled up");
        };
        assert!(matches!(full, SpoolError::Full), "got {full}");
        assert!(!acknowledged.is_empty());

        // Every waiter of a batch that cannot be written gets `Full`.
        let tasks: Vec<_> = (0..4)
            .map(|k| {
                let spool = spool.clone();
                glommio::spawn_local(async move {
                    spool.append(&envelope(k, 1), &body(k, 64 << 10)).await
                })
            })
            .collect();
        for task in tasks {
            assert!(matches!(task.await, Err(SpoolError::Full)));
        }
        assert!(spool.stats().failed_flushes >= 2);

        // Space returns: appends work again, in the same segment, right after the last good one.
        // A small record, so that any leftover of the failed batches behind it would show.
        std::fs::remove_file(&filler).unwrap();
        let after = spool
            .append(&envelope(500, 1), &body(500, 100))
            .await
            .unwrap();
        let last = acknowledged.last().unwrap();
        assert_eq!(after.segment, last.segment);
        acknowledged.push(after);
        drop(spool);

        let (_spool, recovered) = Spool::open(&dir, 0, &options(64 << 20)).await.unwrap();
        let ids: Vec<QueueId> = recovered.iter().map(|r| r.id).collect();
        assert_eq!(ids, acknowledged);
        assert!(
            damaged_files(&dir).is_empty(),
            "no half record was left behind"
        );
    });
    drop(fs);
}

#[test]
fn completions_refused_by_a_full_disk_still_free_their_segments_and_are_written_later() {
    let fs = match SmallFileSystem::mount(512 << 10) {
        Ok(fs) => fs,
        Err(e) => {
            eprintln!("skipped: cannot mount a small tmpfs to fill ({e}); needs CAP_SYS_ADMIN");
            return;
        }
    };
    let dir = fs.0.path().join("spool");
    run(move || async move {
        let (spool, _) = Spool::open(&dir, 0, &options(64 << 10)).await.unwrap();

        // Fill the file system to the last byte the spool can use: large messages, then small.
        let mut acknowledged = Vec::new();
        for len in [16 << 10, 200] {
            let mut n = acknowledged.len();
            while let Ok(id) = spool.append(&envelope(n, 1), &body(n, len)).await {
                acknowledged.push(id);
                n += 1;
                assert!(n < 5000, "the file system never filled up");
            }
        }
        assert!(segment_files(&dir, 0).len() > 3);

        // Every message is delivered, newest first, so no segment drains before the disk is
        // full of completion records.
        let mut refused = 0;
        for &id in acknowledged.iter().rev() {
            if let Err(e) = spool.complete(id, &[0]).await {
                assert!(matches!(e, SpoolError::Full), "got {e}");
                refused += 1;
            }
        }
        assert!(refused > 0, "the full disk refused no completion record");
        assert_eq!(
            spool.pending_messages(),
            0,
            "finished messages pin no segment"
        );

        // Their segments were reclaimed, so new mail is taken again without outside help.
        spool.reclaim().await;
        assert_eq!(
            segment_files(&dir, 0).len(),
            1,
            "only the newest segment stays"
        );
        let after = spool
            .append(&envelope(9000, 1), &body(9000, 16 << 10))
            .await
            .expect("intake resumes once the delivered mail's segments are gone");
        drop(spool);

        // The refused completion records were written once there was room: nothing delivered
        // comes back after a restart.
        let (_spool, recovered) = Spool::open(&dir, 0, &options(64 << 10)).await.unwrap();
        let ids: Vec<QueueId> = recovered.iter().map(|r| r.id).collect();
        assert_eq!(ids, vec![after]);
    });
    drop(fs);
}

#[test]
fn torn_tail_with_no_room_to_set_it_aside_still_opens_and_moves_aside_once_drained() {
    let fs = match SmallFileSystem::mount(256 << 10) {
        Ok(fs) => fs,
        Err(e) => {
            eprintln!("skipped: cannot mount a small tmpfs to fill ({e}); needs CAP_SYS_ADMIN");
            return;
        }
    };
    let dir = fs.0.path().join("spool");
    let filler = fs.0.path().join("filler");
    run(move || async move {
        let (spool, _) = Spool::open(&dir, 0, &options(1 << 20)).await.unwrap();
        let mut ids = Vec::new();
        for n in 0..4 {
            ids.push(
                spool
                    .append(&envelope(n, 1), &body(n, 8 << 10))
                    .await
                    .unwrap(),
            );
        }
        drop(spool);

        // A crash while writing the batch that took the last free space: half a record behind
        // the good ones, and not a byte left.
        let path = segment::segment_path(&dir, 0, 0);
        let whole = std::fs::read(&path).unwrap();
        let last = ids[3].offset as usize;
        let torn = whole[last..last + (whole.len() - last) / 2].to_vec();
        let mut damaged_segment = whole.clone();
        damaged_segment.extend_from_slice(&torn);
        std::fs::write(&path, &damaged_segment).unwrap();
        let mut fill = std::fs::File::create(&filler).unwrap();
        while std::io::Write::write_all(&mut fill, &[0u8; 512]).is_ok() {}
        drop(fill);

        let (spool, recovered) = Spool::open(&dir, 0, &options(1 << 20)).await.unwrap();
        let recovered_ids: Vec<QueueId> = recovered.iter().map(|r| r.id).collect();
        assert_eq!(recovered_ids, ids, "every good record is recovered");
        assert_eq!(std::fs::read(&path).unwrap(), damaged_segment, "left whole");
        assert!(
            damaged_files(&dir).is_empty(),
            "no partial copy is left behind"
        );
        assert!(read_message(&dir, ids[3]).await.is_ok());

        // Space returns and the messages are done: the segment moves aside, damage and all.
        std::fs::remove_file(&filler).unwrap();
        let next = spool.append(&envelope(9, 1), &body(9, 100)).await.unwrap();
        assert_eq!(next.segment, 1, "the damaged segment is not appended to");
        for &id in &ids {
            spool.complete(id, &[0]).await.unwrap();
        }
        spool.reclaim().await;
        assert_eq!(segment_files(&dir, 0), vec![1]);
        let damaged = damaged_files(&dir);
        assert_eq!(damaged.len(), 1);
        assert!(
            damaged[0]
                .to_string_lossy()
                .ends_with(&format!("-{:012}.bin", whole.len()))
        );
        assert_eq!(std::fs::read(&damaged[0]).unwrap(), damaged_segment);
        drop(spool);

        let (_spool, recovered) = Spool::open(&dir, 0, &options(1 << 20)).await.unwrap();
        let recovered_ids: Vec<QueueId> = recovered.iter().map(|r| r.id).collect();
        assert_eq!(recovered_ids, vec![next]);
    });
    drop(fs);
}
