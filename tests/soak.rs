//! Soak: thousands of messages through a two-core secmx over mixed plaintext and STARTTLS
//! sessions, with clients hanging up in the middle of transactions and a receiver that defers a
//! fifth of what it is offered. At the end the set of Message-IDs acknowledged with 250 must
//! equal the set delivered: nothing lost, nothing abandoned by its client delivered.
//!
//! Sends for `SECMX_SOAK_SECONDS` (default 60) and prints one summary line;
//! `scripts/soak.sh` runs the long form.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::faults::{LoadClient, Outcome, RecordingReceiver, Tally, wait_for_delivery};
use common::*;

/// Sending time when `SECMX_SOAK_SECONDS` is not set.
const DEFAULT_SECONDS: u64 = 60;
/// Share of messages the receiver defers (451 after DATA; a quarter of it as 450 to RCPT).
const DEFER_RATE: f64 = 0.2;

#[test]
fn soak_acknowledged_equals_delivered_under_tls_mix_client_hangups_and_deferrals() {
    let seconds: u64 = std::env::var("SECMX_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SECONDS);
    let dir = TempDir::new("soak");
    let ca = TestCa::new(dir.path());
    let leaf = ca.issue("gw.a.test");
    let receiver = RecordingReceiver::start(dir.path(), "sink", addr(145, 20, 2600), DEFER_RATE);
    let secmx = Secmx::start(
        dir.path(),
        "relay",
        SecmxConfig::new("gw.a.test", addr(145, 53, 53))
            .listener(addr(145, 10, 2525), "ber")
            .certificate(&leaf)
            .next_hop_domain("b.test", receiver.address())
            .set(&["workers"], 2),
    );

    let started = Instant::now();
    let seconds_arg = seconds.to_string();
    let ca_file = ca.ca_file().to_str().expect("UTF-8 path").to_string();
    let mut load = LoadClient::start(
        dir.path(),
        "soak",
        secmx.address(),
        &[
            "--to",
            "sink@b.test",
            "--threads",
            "8",
            "--per-session",
            "4",
            "--size",
            "500",
            "--max-size",
            "20000",
            "--tls-rate",
            "0.5",
            "--cafile",
            &ca_file,
            "--abort-rate",
            "0.05",
            "--seconds",
            &seconds_arg,
        ],
    );
    let journal = load.wait(Duration::from_secs(seconds + 60));
    let sending = started.elapsed();
    let summary = load.summary();

    let acked = journal.with(Outcome::Acked);
    let drain_started = Instant::now();
    wait_for_delivery(&receiver, &acked, Duration::from_secs(120), || {
        secmx.log_tail()
    });
    let drain = drain_started.elapsed();
    let accepted = receiver.accepted();
    let delivered: BTreeSet<String> = accepted.iter().cloned().collect();
    let tally = Tally::of(&journal, &accepted);
    let aborted = journal.with(Outcome::Aborted);
    let aborted_delivered: Vec<&String> = aborted.intersection(&delivered).collect();
    let deferred_events = secmx.events("deferred").len();

    println!(
        "soak: seconds={:.0} drain={:.1}s messages={} sessions={} tls_sessions={} acked={} \
         aborted={} refused={} unknown={} unsent={} receiver_deferred={} secmx_deferred={} \
         delivered={} lost={} duplicates={}",
        sending.as_secs_f64(),
        drain.as_secs_f64(),
        journal.len(),
        summary.get("sessions").copied().unwrap_or_default(),
        summary.get("tls_sessions").copied().unwrap_or_default(),
        tally.acked,
        aborted.len(),
        journal.count(Outcome::Refused),
        tally.unknown,
        journal.count(Outcome::Unsent),
        receiver.deferred().len(),
        deferred_events,
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
        aborted_delivered.is_empty(),
        "delivered although the client hung up before the end of DATA: {aborted_delivered:?}"
    );
    assert_eq!(delivered, acked, "acknowledged and delivered differ");
    assert_eq!(
        tally.duplicates,
        0,
        "delivered twice without any lost reply: {:?}",
        Tally::repeated(&accepted)
    );
    assert!(
        tally.acked >= 100,
        "the soak hardly ran: {} messages acknowledged",
        tally.acked
    );
}
