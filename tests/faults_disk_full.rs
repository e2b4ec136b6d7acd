//! Disk full: secmx's data directory is a 4 MiB tmpfs and its receiver is down, so accepted
//! mail piles up until the spool cannot take more. secmx must then refuse new mail with
//! `452 4.3.1` (RFC 3463: insufficient system storage), lose nothing it acknowledged before,
//! and take mail again by itself once space returns: first when a file filling the disk is
//! deleted, then, after a second episode, when the receiver comes up and the delivered mail's
//! segments are reclaimed.
//!
//! A crash on a full disk can leave a torn record at the end of the spool with no room to set
//! it aside; secmx must still start and deliver the mail it holds.
//!
//! Needs root for `mount -t tmpfs`; skips with a message when mounting is not permitted.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use common::faults::{
    Journal, LoadClient, Outcome, RecordingReceiver, Tmpfs, damaged_files, pending_at_last_open,
    records, segment_files, wait_for_delivery,
};
use common::*;

/// `outbound.max_connections_per_domain` (its default): deliveries that can be between the
/// receiver's 250 and their completion record when secmx is killed.
const DELIVERY_CONNECTIONS: usize = 10;
/// Messages large enough that a few hundred fill the disk, small enough to leave it in steps.
const MESSAGE_SIZE: &str = "12000";
/// The small messages sent after the first 452 to use up the last free bytes.
const SMALL_MESSAGE_SIZE: &str = "600";

#[test]
fn full_spool_refuses_with_452_keeps_what_it_acknowledged_and_resumes_when_space_returns() {
    let dir = TempDir::new("faults-disk-full");
    let data_dir = dir.join("relay").join("data");
    let tmpfs = match Tmpfs::mount(&data_dir, "4m") {
        Ok(tmpfs) => tmpfs,
        Err(why) => {
            eprintln!("faults_disk_full: SKIPPED, a tmpfs cannot be mounted here: {why}");
            return;
        }
    };
    let filler = data_dir.join("filler");
    std::fs::write(&filler, vec![0u8; 1 << 20]).expect("write the filler file");

    let receiver_address = addr(141, 20, 2600);
    let mut secmx = Secmx::start(
        dir.path(),
        "relay",
        SecmxConfig::new("gw.a.test", addr(141, 53, 53))
            .listener(addr(141, 10, 2525), "ber")
            .next_hop_domain("b.test", receiver_address)
            .set(&["spool", "segment_size"], "256K"),
    );
    let server = secmx.address();

    // Episode 1: fill the disk, then free it by deleting the filler file.
    let first = fill_until_452(dir.path(), "fill-1", server);
    std::fs::remove_file(&filler).expect("delete the filler file");
    let resumed_1 = wait_for_intake(dir.path(), "resume-1", server, &secmx);

    // Episode 2: fill it again; space returns only when the queue drains to the receiver.
    let second = fill_until_452(dir.path(), "fill-2", server);
    let free_when_full = tmpfs.available();
    let receiver = RecordingReceiver::start(dir.path(), "sink", receiver_address, 0.0);
    let resumed_2 = wait_for_intake(dir.path(), "resume-2", server, &secmx);

    let journals = [
        &first.0, &first.1, &resumed_1, &second.0, &second.1, &resumed_2,
    ];
    let acked: BTreeSet<String> = journals
        .iter()
        .flat_map(|j| j.with(Outcome::Acked))
        .collect();
    wait_for_delivery(&receiver, &acked, Duration::from_secs(90), || {
        secmx.log_tail()
    });
    let accepted = receiver.accepted();
    let delivered: BTreeSet<String> = accepted.iter().cloned().collect();
    let refused_452: usize = journals
        .iter()
        .map(|j| {
            j.refusals()
                .iter()
                .filter(|r| r.starts_with("452 4.3.1"))
                .count()
        })
        .sum();
    let lost: Vec<&String> = acked.difference(&delivered).collect();
    let refused: BTreeSet<String> = journals
        .iter()
        .flat_map(|j| j.with(Outcome::Refused))
        .collect();
    let refused_delivered: Vec<&String> = refused.intersection(&delivered).collect();
    let failed_flushes = secmx.log().matches("spool flush failed").count();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    assert!(
        refused_delivered.is_empty(),
        "refused but delivered: {refused_delivered:?}"
    );
    assert!(secmx.is_running(), "secmx died\n{}", secmx.log_tail());

    // Completion records the full disk refused were written once there was room: a restart finds
    // at most the messages whose completion was being flushed at the kill.
    secmx.kill();
    secmx.restart();
    let recovered = pending_at_last_open(&secmx.log());
    let before_restart = accepted.len();
    wait_until(
        "the messages recovered after the restart to be delivered",
        WAIT,
        || secmx.log_tail(),
        || (receiver.accepted().len() >= before_restart + recovered).then_some(()),
    );
    let accepted = receiver.accepted();
    let distinct: BTreeSet<&String> = accepted.iter().collect();

    println!(
        "faults_disk_full: episodes=2 acked={} (first fill: {}, second fill: {}) \
         refused_452={refused_452} failed_flushes={failed_flushes} free_when_full={free_when_full}B \
         delivered={} lost={} duplicates={} recovered_after_restart={recovered}",
        acked.len(),
        first.0.count(Outcome::Acked) + first.1.count(Outcome::Acked),
        second.0.count(Outcome::Acked) + second.1.count(Outcome::Acked),
        distinct.len(),
        lost.len(),
        accepted.len() - distinct.len(),
    );
    assert!(
        recovered <= DELIVERY_CONNECTIONS,
        "{recovered} delivered messages came back after a restart: their completion records \
         were never written"
    );
    drop(receiver);
    secmx.kill();
    drop(tmpfs);
}

#[test]
fn secmx_starts_on_a_full_disk_whose_spool_ends_in_a_torn_record_and_delivers_its_queue() {
    let dir = TempDir::new("faults-full-torn");
    let data_dir = dir.join("relay").join("data");
    let tmpfs = match Tmpfs::mount(&data_dir, "1m") {
        Ok(tmpfs) => tmpfs,
        Err(why) => {
            eprintln!("faults_disk_full: SKIPPED, a tmpfs cannot be mounted here: {why}");
            return;
        }
    };
    let filler = data_dir.join("filler");
    std::fs::write(&filler, vec![0u8; 64 << 10]).expect("write the filler file");
    let receiver_address = addr(146, 20, 2600);
    let mut secmx = Secmx::start(
        dir.path(),
        "relay",
        SecmxConfig::new("gw.a.test", addr(146, 53, 53))
            .listener(addr(146, 10, 2525), "ber")
            .next_hop_domain("b.test", receiver_address),
    );
    let queued = send_until_452(dir.path(), "fill", secmx.address(), MESSAGE_SIZE);
    secmx.kill();

    // A crash while the last batch was being written leaves part of a record behind the good
    // ones, and that batch took the last free space: make room for such a torn record, write
    // it, then fill whatever is left.
    std::fs::remove_file(&filler).expect("delete the filler file");
    let segment = segment_files(&data_dir).pop().expect("a spool segment");
    let bytes = std::fs::read(&segment).expect("read the segment");
    let last = *records(&bytes).last().expect("a record");
    let torn = bytes[last.offset..last.offset + last.len / 2].to_vec();
    let cut_at = bytes.len();
    append(&segment, &torn);
    fill_up(&data_dir.join("filler-2"));
    let free_at_restart = tmpfs.available();

    secmx.restart();
    let no_room = secmx
        .log()
        .lines()
        .filter(|l| l.contains("spool segment has a bad record but no room"))
        .count();
    assert_eq!(no_room, 1, "the damage is reported\n{}", secmx.log_tail());
    let receiver = RecordingReceiver::start(dir.path(), "sink", receiver_address, 0.0);
    let acked = queued.with(Outcome::Acked);
    wait_for_delivery(&receiver, &acked, WAIT, || secmx.log_tail());

    // The operator frees space: intake resumes, and the damaged segment, its mail done, is
    // moved whole under spool/damaged/ (named after the offset of the damage).
    std::fs::remove_file(data_dir.join("filler-2")).expect("delete the second filler");
    let resumed = wait_for_intake(dir.path(), "resume", secmx.address(), &secmx);
    let damaged = wait_until(
        "the damaged segment under spool/damaged",
        WAIT,
        || secmx.log_tail(),
        || damaged_files(&data_dir).pop(),
    );
    assert!(
        damaged
            .to_string_lossy()
            .ends_with(&format!("-{cut_at:012}.bin")),
        "named after the offset of the damage: {}",
        damaged.display()
    );
    let kept = std::fs::read(&damaged).expect("read the damaged file");
    assert_eq!(
        kept.get(cut_at..),
        Some(&torn[..]),
        "the torn bytes are kept"
    );

    let mut all = Journal::default();
    all.extend(resumed);
    let resumed_acked = all.with(Outcome::Acked);
    wait_for_delivery(&receiver, &resumed_acked, WAIT, || secmx.log_tail());
    let accepted = receiver.accepted();
    let distinct: BTreeSet<&String> = accepted.iter().collect();
    println!(
        "faults_disk_full[torn-on-full]: acked={} free_at_restart={free_at_restart}B \
         torn_bytes={} delivered={} lost=0 duplicates={}",
        acked.len() + resumed_acked.len(),
        torn.len(),
        distinct.len(),
        accepted.len() - distinct.len(),
    );
    assert!(secmx.is_running(), "secmx died\n{}", secmx.log_tail());
    drop(receiver);
    secmx.kill();
    drop(tmpfs);
}

fn append(path: &std::path::Path, bytes: &[u8]) {
    use std::io::Write;
    let mut file = std::fs::File::options()
        .append(true)
        .open(path)
        .expect("open the segment");
    file.write_all(bytes).expect("append to the segment");
}

/// Writes `path` until the file system has no byte left.
fn fill_up(path: &std::path::Path) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).expect("create the filler");
    let chunk = [0u8; 512];
    for _ in 0..(64 << 20) / chunk.len() {
        if file.write_all(&chunk).and_then(|()| file.flush()).is_err() {
            return;
        }
    }
    panic!("{} never filled the file system", path.display());
}

/// Sends large messages until one is refused with 452, then small ones until a small one is
/// refused too, so the disk is as full as the spool can make it. Returns both journals.
fn fill_until_452(dir: &std::path::Path, name: &str, server: SocketAddr) -> (Journal, Journal) {
    let large = send_until_452(dir, &format!("{name}-large"), server, MESSAGE_SIZE);
    let small = send_until_452(dir, &format!("{name}-small"), server, SMALL_MESSAGE_SIZE);
    (large, small)
}

fn send_until_452(dir: &std::path::Path, name: &str, server: SocketAddr, size: &str) -> Journal {
    let mut client = LoadClient::start(
        dir,
        name,
        server,
        &[
            "--to",
            "sink@b.test",
            "--threads",
            "1",
            "--per-session",
            "50",
            "--size",
            size,
            "--limit",
            "2000",
            "--stop-on-code",
            "452",
            "--seconds",
            "120",
        ],
    );
    let journal = client.wait(Duration::from_secs(150));
    let refusals = journal.refusals();
    assert!(
        refusals.iter().any(|r| r.starts_with("452 4.3.1")),
        "{name}: no `452 4.3.1` after {} messages; refusals: {refusals:?}",
        journal.len()
    );
    assert!(
        refusals.iter().all(|r| r.starts_with("452 4.3.1")),
        "{name}: refused for another reason: {refusals:?}"
    );
    assert_eq!(
        journal.count(Outcome::Unknown) + journal.count(Outcome::Unsent),
        0,
        "{name}: the connection broke"
    );
    journal
}

/// Sends one message at a time until one is acknowledged (bounded); secmx is not touched.
fn wait_for_intake(
    dir: &std::path::Path,
    name: &str,
    server: SocketAddr,
    secmx: &Secmx,
) -> Journal {
    let mut attempt = 0;
    let mut journals = Vec::new();
    wait_until(
        &format!("{name}: secmx to take mail again"),
        Duration::from_secs(90),
        || secmx.log_tail(),
        || {
            attempt += 1;
            let mut client = LoadClient::start(
                dir,
                &format!("{name}-{attempt}"),
                server,
                &["--to", "sink@b.test", "--threads", "1", "--limit", "1"],
            );
            let journal = client.wait(WAIT);
            let acked = journal.count(Outcome::Acked) == 1;
            journals.push(journal);
            acked.then_some(())
        },
    );
    let mut merged = Journal::default();
    for journal in journals {
        merged.extend(journal);
    }
    merged
}
