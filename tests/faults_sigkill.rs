//! Sudden death under load: secmx relays a continuous stream of mail to a recording receiver
//! and is killed with SIGKILL at random moments, then restarted on the same spool. Every message
//! that got a 250 must reach the receiver; a message may arrive twice only when secmx died
//! between the receiver's 250 and the durable completion record, which each delivery
//! connection can have for at most one message at a time.
//!
//! Prints one summary line; `SECMX_FAULTS_SEED` repeats a run's kill timing.

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
    let mut rng = Rng::from_env();
    let dir = TempDir::new("faults-sigkill");
    let receiver = RecordingReceiver::start(dir.path(), "sink", addr(140, 20, 2600), 0.0);
    let mut secmx = Secmx::start(
        dir.path(),
        "relay",
        SecmxConfig::new("gw.a.test", addr(140, 53, 53))
            .listener(addr(140, 10, 2525), "ber")
            .next_hop_domain("b.test", receiver.address())
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
    let bound = KILLS * CONNECTIONS * IN_FLIGHT_PER_CONNECTION;

    println!(
        "faults_sigkill: seed={} kills={KILLS} sending={:.1}s sent={} acked={} delivered={} \
         lost={} duplicates={} (bound {bound}) unknown={} (delivered {}) unsent={} torn_tails={}",
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
    assert!(
        tally.duplicates <= bound,
        "{} duplicates, more than {KILLS} kills x {CONNECTIONS} connections x \
         {IN_FLIGHT_PER_CONNECTION} in flight: {:?}",
        tally.duplicates,
        Tally::repeated(&accepted)
    );
}
