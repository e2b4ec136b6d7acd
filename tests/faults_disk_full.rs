//! Disk full: secmx's data directory is a 4 MiB tmpfs and its receiver is down, so accepted
//! mail piles up until the spool cannot take more. secmx must then refuse new mail with
//! `452 4.3.1` (RFC 3463: insufficient system storage), lose nothing it acknowledged before,
//! and take mail again by itself once space returns: first when a file filling the disk is
//! deleted, then, after a second episode, when the receiver comes up and the delivered mail's
//! segments are reclaimed.
//!
//! Needs root for `mount -t tmpfs`; skips with a message when mounting is not permitted.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use common::faults::{
    Journal, LoadClient, Outcome, RecordingReceiver, Tmpfs, pending_at_last_open, wait_for_delivery,
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
