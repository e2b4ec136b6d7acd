//! Torn and damaged spool: secmx holds queued mail (its receiver is down) and is killed with
//! SIGKILL; the test then damages the spool segment the way a crash or a bad disk would, and
//! restarts it. secmx must start, log the damaged record with the segment file and offset, set
//! the bytes from there on aside under `spool/damaged/`, and deliver every message whose
//! record is intact and in front of the damage.
//!
//! Each test prints one summary line.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::faults::{
    KIND_MESSAGE, LoadClient, Outcome, RecordSpan, RecordingReceiver, Rng, damaged_files,
    pending_at_last_open, records, segment_files, wait_for_delivery,
};
use common::*;

/// Messages queued before the kill.
const QUEUED: usize = 6;
/// The warning recovery logs for a segment cut at a bad record.
const CUT_WARNING: &str = "spool segment cut at a bad record";

/// A secmx killed while holding `QUEUED` acknowledged messages in one segment.
struct Killed {
    dir: TempDir,
    secmx: Secmx,
    receiver_address: std::net::SocketAddr,
    segment: PathBuf,
    /// The segment's records, oldest first, with the Message-ID each one carries.
    records: Vec<(RecordSpan, String)>,
}

impl Killed {
    fn data_dir(&self) -> PathBuf {
        self.dir.join("relay").join("data")
    }
}

fn queue_and_kill(label: &str, block: u8) -> Killed {
    let dir = TempDir::new(label);
    let receiver_address = addr(block, 20, 2600);
    let mut secmx = Secmx::start(
        dir.path(),
        "relay",
        SecmxConfig::new("gw.a.test", addr(block, 53, 53))
            .listener(addr(block, 10, 2525), "ber")
            .next_hop_domain("b.test", receiver_address),
    );
    let limit = QUEUED.to_string();
    let mut client = LoadClient::start(
        dir.path(),
        "queued",
        secmx.address(),
        &[
            "--to",
            "sink@b.test",
            "--threads",
            "1",
            "--per-session",
            &limit,
            "--limit",
            &limit,
        ],
    );
    let journal = client.wait(WAIT);
    let acked = journal.with(Outcome::Acked);
    assert_eq!(acked.len(), QUEUED, "not every message was acknowledged");
    secmx.kill();

    let data_dir = dir.join("relay").join("data");
    let segments = segment_files(&data_dir);
    assert_eq!(segments.len(), 1, "one segment expected: {segments:?}");
    let segment = segments[0].clone();
    let bytes = std::fs::read(&segment).expect("read the segment");
    let records: Vec<(RecordSpan, String)> = records(&bytes)
        .into_iter()
        .map(|span| {
            let payload = &bytes[span.offset..span.offset + span.len];
            let id = acked
                .iter()
                .find(|id| contains(payload, id.as_bytes()))
                .unwrap_or_else(|| panic!("record at {} carries no acked Message-ID", span.offset))
                .clone();
            (span, id)
        })
        .collect();
    assert_eq!(records.len(), QUEUED, "records: {records:?}");
    assert!(records.iter().all(|(span, _)| span.kind == KIND_MESSAGE));
    let end = records.last().map(|(s, _)| s.offset + s.len);
    assert_eq!(
        end,
        Some(bytes.len()),
        "the segment ends with its last record"
    );

    Killed {
        dir,
        secmx,
        receiver_address,
        segment,
        records,
    }
}

/// Restarts secmx on the damaged spool and delivers what it recovered; checks that the segment
/// was cut at `cut_at` and that exactly the messages in `survivors` come out.
fn restart_and_deliver(mut killed: Killed, survivors: &[String], variant: &str, cut_at: u64) {
    let size_before = std::fs::metadata(&killed.segment).expect("segment").len();
    killed.secmx.restart();

    let log = killed.secmx.log();
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains(CUT_WARNING)).collect();
    assert_eq!(warnings.len(), 1, "one cut warning expected:\n{log}");
    let warning = warnings[0];
    let segment_name = killed.segment.display().to_string();
    assert!(
        warning.contains(&segment_name) && warning.contains(&format!("offset={cut_at}")),
        "the warning names {segment_name} at offset {cut_at}: {warning}"
    );
    let set_aside = damaged_files(&killed.data_dir());
    assert_eq!(
        set_aside.len(),
        1,
        "one file under spool/damaged: {set_aside:?}"
    );
    let set_aside_bytes = std::fs::metadata(&set_aside[0])
        .expect("set-aside file")
        .len();
    assert_eq!(
        set_aside_bytes,
        size_before - cut_at,
        "the whole damaged tail is kept"
    );
    assert_eq!(
        std::fs::metadata(&killed.segment).expect("segment").len(),
        cut_at,
        "the segment is cut at the bad record"
    );
    let recovered = pending_at_last_open(&log);
    assert_eq!(recovered, survivors.len(), "messages recovered");

    let receiver =
        RecordingReceiver::start(killed.dir.path(), "sink", killed.receiver_address, 0.0);
    let expected: BTreeSet<String> = survivors.iter().cloned().collect();
    wait_for_delivery(&receiver, &expected, WAIT, || killed.secmx.log_tail());

    // A second kill and restart finds a clean spool: nothing new is cut or set aside.
    killed.secmx.kill();
    killed.secmx.restart();
    let cuts = killed.secmx.log().matches(CUT_WARNING).count();
    assert_eq!(cuts, 1, "the second restart found damage again");
    assert_eq!(damaged_files(&killed.data_dir()).len(), 1);

    let accepted = receiver.accepted();
    let delivered: BTreeSet<String> = accepted.iter().cloned().collect();
    assert_eq!(delivered, expected, "delivered exactly the intact messages");
    println!(
        "faults_torn_spool[{variant}]: acked={QUEUED} cut_at={cut_at} set_aside={set_aside_bytes}B \
         recovered={recovered} delivered={} lost_to_damage={} duplicates={}",
        delivered.len(),
        QUEUED - delivered.len(),
        accepted.len() - delivered.len(),
    );
}

#[test]
fn torn_last_record_is_set_aside_and_every_earlier_message_is_delivered() {
    let killed = queue_and_kill("faults-torn-last", 142);
    let (last, _) = killed.records[QUEUED - 1];
    // Cut inside the payload, as a write interrupted by a crash leaves it.
    let cut = last.offset + last.len / 2;
    std::fs::File::options()
        .write(true)
        .open(&killed.segment)
        .and_then(|f| f.set_len(cut as u64))
        .expect("truncate the segment");

    let survivors: Vec<String> = killed.records[..QUEUED - 1]
        .iter()
        .map(|(_, id)| id.clone())
        .collect();
    restart_and_deliver(killed, &survivors, "truncated-last", last.offset as u64);
}

#[test]
fn garbage_after_the_last_record_is_set_aside_and_every_message_is_delivered() {
    let killed = queue_and_kill("faults-torn-garbage", 143);
    let end = std::fs::metadata(&killed.segment).expect("segment").len();
    let mut rng = Rng::from_env();
    let mut garbage: Vec<u8> = (0..512).map(|_| rng.next() as u8).collect();
    garbage[0] = 0x00; // never the record magic's first byte (0xa7)
    append(&killed.segment, &garbage);

    let survivors: Vec<String> = killed.records.iter().map(|(_, id)| id.clone()).collect();
    restart_and_deliver(killed, &survivors, "garbage-appended", end);
}

#[test]
fn record_damaged_in_the_middle_cuts_the_segment_there_and_earlier_mail_is_delivered() {
    let killed = queue_and_kill("faults-torn-middle", 144);
    let (third, _) = killed.records[2];
    // One flipped bit in the payload: the record's CRC no longer matches.
    let at = third.offset + third.len - 10;
    let mut bytes = std::fs::read(&killed.segment).expect("read the segment");
    bytes[at] ^= 0x01;
    std::fs::write(&killed.segment, &bytes).expect("write the segment");

    let survivors: Vec<String> = killed.records[..2]
        .iter()
        .map(|(_, id)| id.clone())
        .collect();
    restart_and_deliver(killed, &survivors, "bit-flip-middle", third.offset as u64);
}

fn append(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    let mut file = std::fs::File::options()
        .append(true)
        .open(path)
        .expect("open the segment");
    file.write_all(bytes).expect("append to the segment");
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
