//! Sudden death under load: secmx relays a continuous stream of mail to a recording receiver
//! and is killed with SIGKILL at random moments, then restarted on the same spool. Every message
//! that got a 250 must reach the receiver; a message may arrive twice only when secmx died
//! between the receiver's 250 and the durable completion record. On one core each delivery
//! connection can have at most one message in that window; on two cores a completion for the
//! other core's spool is handed over without waiting for its flush, so the window has no fixed
//! bound there and duplicates are only counted.
//!
//! Each test prints one summary line; `SECMX_FAULTS_SEED` repeats a run's kill timing.

mod common;

use std::time::{Duration, Instant};

use common::faults::{LoadClient, Outcome, RecordingReceiver, Rng, Tally, wait_for_delivery};
use common::*;

/// SIGKILLs per run.
const KILLS: usize = 5;
/// `outbound.max_connections_per_domain`: the delivery connections that can each have one
/// message between the receiver's 250 and its completion record.
const CONNECTIONS: usize = 4;
/// Messages one outbound connection has in flight at once (secmx sends one transaction at a
/// time and records its completion before taking the next job).
const IN_FLIGHT_PER_CONNECTION: usize = 1;
/// Acknowledgements to see between two kills, so that every kill lands under load.
const ACKED_BETWEEN_KILLS: usize = 20;

#[test]
fn every_acknowledged_message_arrives_although_secmx_is_killed_under_load() {
    let duplicates_bound = KILLS * CONNECTIONS * IN_FLIGHT_PER_CONNECTION;
    kill_repeatedly_under_load("faults-sigkill", 140, 1, Some(duplicates_bound));
}

#[test]
fn every_acknowledged_message_arrives_although_a_two_core_secmx_is_killed_under_load() {
    kill_repeatedly_under_load("faults-sigkill-2", 147, 2, None);
}

/// Runs the load, kills secmx `KILLS` times, then checks and prints the tally; duplicates fail
/// the test only past `duplicates_bound`.
fn kill_repeatedly_under_load(
    label: &str,
    block: u8,
    workers: i64,
    duplicates_bound: Option<usize>,
) {
    let mut rng = Rng::from_env();
    let dir = TempDir::new(label);
    let receiver = RecordingReceiver::start(dir.path(), "sink", addr(block, 20, 2600), 0.0);
    let mut secmx = Secmx::start(
        dir.path(),
        "relay",
        SecmxConfig::new("gw.a.test", addr(block, 53, 53))
            .listener(addr(block, 10, 2525), "ber")
            .next_hop_domain("b.test", receiver.address())
            .set(&["workers"], workers)
            .set(
                &["outbound", "max_connections_per_domain"],
                CONNECTIONS as i64,
            ),
    );
    let mut load = LoadClient::start(
        dir.path(),
        "load",
        secmx.address(),
        &[
            "--to",
            "sink@b.test",
            "--threads",
            "4",
            "--per-session",
            "5",
            "--size",
            "3000",
            "--seconds",
            "300",
        ],
    );

    let started = Instant::now();
    for _ in 0..KILLS {
        let before = load.journal().count(Outcome::Acked);
        wait_until(
            &format!("{ACKED_BETWEEN_KILLS} more acknowledgements"),
            WAIT,
            || secmx.log_tail(),
            || (load.journal().count(Outcome::Acked) >= before + ACKED_BETWEEN_KILLS).then_some(()),
        );
        std::thread::sleep(rng.between(Duration::ZERO, Duration::from_millis(3000)));
        secmx.kill();
        secmx.restart();
    }
    let after = load.journal().count(Outcome::Acked);
    wait_until(
        "acknowledgements after the last restart",
        WAIT,
        || secmx.log_tail(),
        || (load.journal().count(Outcome::Acked) >= after + ACKED_BETWEEN_KILLS).then_some(()),
    );
    let journal = load.stop(WAIT);
    let sending = started.elapsed();

    let acked = journal.with(Outcome::Acked);
    wait_for_delivery(&receiver, &acked, Duration::from_secs(90), || {
        secmx.log_tail()
    });
    let accepted = receiver.accepted();
    let tally = Tally::of(&journal, &accepted);
    let torn_tails = secmx
        .log()
        .matches("spool segment cut at a bad record")
        .count();
    let bound = duplicates_bound.map_or_else(|| "none".to_string(), |b| b.to_string());

    println!(
        "faults_sigkill: workers={workers} seed={} kills={KILLS} sending={:.1}s sent={} acked={} \
         delivered={} lost={} duplicates={} (bound {bound}) unknown={} (delivered {}) unsent={} \
         torn_tails={}",
        rng.seed(),
        sending.as_secs_f64(),
        journal.len(),
        tally.acked,
        tally.delivered,
        tally.lost.len(),
        tally.duplicates,
        tally.unknown,
        tally.unknown_delivered,
        journal.count(Outcome::Unsent),
        torn_tails,
    );
    assert!(
        tally.lost.is_empty(),
        "acknowledged but lost: {:?}",
        tally.lost
    );
    assert!(
        tally.unexpected.is_empty(),
        "delivered without having been sent completely: {:?}",
        tally.unexpected
    );
    if let Some(bound) = duplicates_bound {
        assert!(
            tally.duplicates <= bound,
            "{} duplicates, more than {KILLS} kills x {CONNECTIONS} connections x \
             {IN_FLIGHT_PER_CONNECTION} in flight: {:?}",
            tally.duplicates,
            Tally::repeated(&accepted)
        );
    }
}

/// Kills during startup, while the spool is being replayed and the recovered queue starts
/// going out.
const STARTUP_KILLS: usize = 5;
/// Messages queued before the startup kills.
const STARTUP_QUEUE: usize = 1000;

#[test]
fn queue_survives_sigkill_during_startup_and_recovery() {
    let mut rng = Rng::from_env();
    let dir = TempDir::new("faults-sigkill-startup");
    let receiver_address = addr(148, 20, 2600);
    let mut secmx = Secmx::start(
        dir.path(),
        "relay",
        SecmxConfig::new("gw.a.test", addr(148, 53, 53))
            .listener(addr(148, 10, 2525), "ber")
            .next_hop_domain("b.test", receiver_address)
            .set(
                &["outbound", "max_connections_per_domain"],
                CONNECTIONS as i64,
            ),
    );
    let limit = STARTUP_QUEUE.to_string();
    let mut load = LoadClient::start(
        dir.path(),
        "queued",
        secmx.address(),
        &["--to", "sink@b.test", "--threads", "4", "--limit", &limit],
    );
    let journal = load.wait(Duration::from_secs(120));
    let acked = journal.with(Outcome::Acked);
    assert_eq!(
        acked.len(),
        STARTUP_QUEUE,
        "the receiver is down; all is queued"
    );
    secmx.kill();

    // The receiver is up, so deliveries start as soon as the queue is recovered; each start is
    // cut short at a random moment of its first 200 milliseconds.
    let receiver = RecordingReceiver::start(dir.path(), "sink", receiver_address, 0.0);
    let log = dir.join("relay").join("secmx.log");
    for _ in 0..STARTUP_KILLS {
        let mut command = std::process::Command::new(secmx_bin());
        command
            .arg("serve")
            .arg("--config")
            .arg(secmx.config_file())
            .env("NO_COLOR", "1");
        let mut process = Process::spawn("secmx relay (cut short)", &mut command, &log);
        std::thread::sleep(rng.between(Duration::ZERO, Duration::from_millis(200)));
        process.kill();
    }
    let delivered_during_kills = receiver.accepted().len();
    secmx.restart();
    wait_for_delivery(&receiver, &acked, Duration::from_secs(90), || {
        secmx.log_tail()
    });

    let accepted = receiver.accepted();
    let tally = Tally::of(&journal, &accepted);
    let bound = STARTUP_KILLS * CONNECTIONS * IN_FLIGHT_PER_CONNECTION;
    println!(
        "faults_sigkill[startup]: seed={} kills={STARTUP_KILLS} queued={} delivered_during_kills={} \
         delivered={} lost={} duplicates={} (bound {bound})",
        rng.seed(),
        tally.acked,
        delivered_during_kills,
        tally.delivered,
        tally.lost.len(),
        tally.duplicates,
    );
    assert!(
        tally.lost.is_empty(),
        "acknowledged but lost: {:?}",
        tally.lost
    );
    assert!(
        tally.unexpected.is_empty(),
        "unexpected: {:?}",
        tally.unexpected
    );
    assert!(
        tally.duplicates <= bound,
        "{} duplicates: {:?}",
        tally.duplicates,
        Tally::repeated(&accepted)
    );
}
