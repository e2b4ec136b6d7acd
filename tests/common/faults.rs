//! Fault injection around a running secmx: a receiver that records the Message-ID of every
//! message it accepts, a load client that journals the reply to every message it sends, the
//! tally of acknowledged against delivered mail, a tmpfs mount for running out of space, the
//! record layout of spool segment files for damaging them, and a seeded random source so a
//! failing run can be repeated.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::process::tail_file;
use super::{Process, support_script, wait_until};

/// A plaintext SMTP receiver (`tests/support/recording_receiver.py`) that accepts everything,
/// or defers a share of messages, and records each outcome by Message-ID.
pub struct RecordingReceiver {
    address: SocketAddr,
    record: PathBuf,
    process: Process,
}

impl RecordingReceiver {
    /// Starts the receiver on `address`, deferring each message with probability `defer_rate`
    /// (and each recipient with a quarter of it), and waits for its greeting.
    pub fn start(
        dir: &Path,
        name: &str,
        address: SocketAddr,
        defer_rate: f64,
    ) -> RecordingReceiver {
        let record = dir.join(format!("{name}.record"));
        let mut command = Command::new("python3");
        command
            .arg(support_script("recording_receiver.py"))
            .arg(address.ip().to_string())
            .arg(address.port().to_string())
            .arg(&record)
            .args(["--defer-rate", &defer_rate.to_string()]);
        let mut process = Process::spawn(
            &format!("receiver {name}"),
            &mut command,
            &dir.join(format!("{name}.log")),
        );
        process.wait_for_greeting(address);
        RecordingReceiver {
            address,
            record,
            process,
        }
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Message-IDs of every accepted message, in arrival order, repeats included.
    pub fn accepted(&self) -> Vec<String> {
        self.outcomes("accepted")
    }

    /// Message-IDs of every message deferred with 451 at the end of DATA.
    pub fn deferred(&self) -> Vec<String> {
        self.outcomes("deferred")
    }

    fn outcomes(&self, wanted: &str) -> Vec<String> {
        let text = std::fs::read_to_string(&self.record).unwrap_or_default();
        text.lines()
            .filter_map(|line| line.split_once(' '))
            .filter(|(outcome, _)| *outcome == wanted)
            .map(|(_, id)| id.to_string())
            .collect()
    }

    pub fn log_tail(&self) -> String {
        self.process.log_tail(20)
    }
}

/// What the load client learnt about one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// 250 after DATA: the server took responsibility for it.
    Acked,
    /// A reply refusing the message (MAIL, RCPT or end of DATA).
    Refused,
    /// Sent completely, but the connection broke before a reply came.
    Unknown,
    /// The connection broke before the end of DATA was sent.
    Unsent,
    /// The client hung up on purpose before the end of DATA.
    Aborted,
}

/// The load client's journal: one outcome per Message-ID.
#[derive(Debug, Default)]
pub struct Journal {
    entries: BTreeMap<String, (Outcome, String)>,
}

impl Journal {
    fn read(path: &Path) -> Journal {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let mut entries = BTreeMap::new();
        for line in text.lines() {
            let mut fields = line.splitn(3, ' ');
            let (Some(outcome), Some(id)) = (fields.next(), fields.next()) else {
                continue;
            };
            let outcome = match outcome {
                "acked" => Outcome::Acked,
                "refused" => Outcome::Refused,
                "unknown" => Outcome::Unknown,
                "unsent" => Outcome::Unsent,
                "aborted" => Outcome::Aborted,
                other => panic!("unknown journal outcome `{other}` in {}", path.display()),
            };
            let detail = fields.next().unwrap_or_default().to_string();
            let previous = entries.insert(id.to_string(), (outcome, detail));
            assert!(previous.is_none(), "Message-ID {id} journalled twice");
        }
        Journal { entries }
    }

    /// Message-IDs with this outcome.
    pub fn with(&self, outcome: Outcome) -> BTreeSet<String> {
        self.entries
            .iter()
            .filter(|(_, (o, _))| *o == outcome)
            .map(|(id, _)| id.clone())
            .collect()
    }

    pub fn count(&self, outcome: Outcome) -> usize {
        self.entries.values().filter(|(o, _)| *o == outcome).count()
    }

    /// The replies of refused messages.
    pub fn refusals(&self) -> Vec<String> {
        self.entries
            .values()
            .filter(|(o, _)| *o == Outcome::Refused)
            .map(|(_, detail)| detail.clone())
            .collect()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Adds another journal's entries (of distinct Message-IDs).
    pub fn extend(&mut self, other: Journal) {
        for (id, entry) in other.entries {
            let previous = self.entries.insert(id, entry);
            assert!(previous.is_none(), "a Message-ID in two journals");
        }
    }
}

/// A run of `tests/support/load_client.py` against one server, journalling to its own file.
pub struct LoadClient {
    journal: PathBuf,
    stop_file: PathBuf,
    process: Process,
}

impl LoadClient {
    /// Starts the client against `server`; `args` are its options (see the script).
    pub fn start(dir: &Path, name: &str, server: SocketAddr, args: &[&str]) -> LoadClient {
        let journal = dir.join(format!("{name}.journal"));
        let stop_file = dir.join(format!("{name}.stop"));
        let _ = std::fs::remove_file(&stop_file);
        let mut command = Command::new("python3");
        command
            .arg(support_script("load_client.py"))
            .arg(server.ip().to_string())
            .arg(server.port().to_string())
            .arg(&journal)
            .arg("--prefix")
            .arg(name)
            .arg("--stop-file")
            .arg(&stop_file)
            .args(args);
        let process = Process::spawn(
            &format!("load client {name}"),
            &mut command,
            &dir.join(format!("{name}.log")),
        );
        LoadClient {
            journal,
            stop_file,
            process,
        }
    }

    /// The journal so far.
    pub fn journal(&self) -> Journal {
        Journal::read(&self.journal)
    }

    /// The counts of the client's closing `summary` line (`sessions`, `tls_sessions`, ...);
    /// empty before it has finished.
    pub fn summary(&self) -> BTreeMap<String, u64> {
        let log = self.process.log();
        let Some(line) = log.lines().rev().find(|l| l.starts_with("summary ")) else {
            return BTreeMap::new();
        };
        line.split_whitespace()
            .filter_map(|field| field.split_once('='))
            .filter_map(|(key, value)| Some((key.to_string(), value.parse().ok()?)))
            .collect()
    }

    /// Asks the client to stop and waits (at most `timeout`) until it has.
    pub fn stop(&mut self, timeout: Duration) -> Journal {
        std::fs::write(&self.stop_file, b"stop").expect("write the stop file");
        self.wait(timeout)
    }

    /// Waits (at most `timeout`) for the client to finish on its own; returns its journal.
    pub fn wait(&mut self, timeout: Duration) -> Journal {
        let log = self.process.log_path().to_path_buf();
        let status = wait_until(
            &format!("{} to finish", self.process.name()),
            timeout,
            || tail_file(&log, 20),
            || self.process.exited(),
        );
        assert!(
            status.success(),
            "{} failed with {status}\n{}",
            self.process.name(),
            self.process.log_tail(30)
        );
        self.journal()
    }
}

/// Acknowledged against delivered mail for one run.
#[derive(Debug)]
pub struct Tally {
    pub acked: usize,
    /// Distinct Message-IDs the receiver accepted.
    pub delivered: usize,
    /// Deliveries beyond the first of the same Message-ID.
    pub duplicates: usize,
    /// Acknowledged but never delivered.
    pub lost: BTreeSet<String>,
    /// Delivered although the client never sent it completely, or was refused.
    pub unexpected: BTreeSet<String>,
    /// Delivered without an acknowledgement after a broken connection (allowed).
    pub unknown_delivered: usize,
    pub unknown: usize,
}

impl Tally {
    /// Compares the journal with the receiver's accepted Message-IDs.
    pub fn of(journal: &Journal, accepted: &[String]) -> Tally {
        let acked = journal.with(Outcome::Acked);
        let unknown = journal.with(Outcome::Unknown);
        let delivered: BTreeSet<String> = accepted.iter().cloned().collect();
        Tally {
            acked: acked.len(),
            delivered: delivered.len(),
            duplicates: accepted.len() - delivered.len(),
            lost: acked.difference(&delivered).cloned().collect(),
            unexpected: delivered
                .iter()
                .filter(|id| !acked.contains(*id) && !unknown.contains(*id))
                .cloned()
                .collect(),
            unknown_delivered: delivered.intersection(&unknown).count(),
            unknown: unknown.len(),
        }
    }

    /// Message-IDs accepted more than once, with their counts.
    pub fn repeated(accepted: &[String]) -> BTreeMap<String, usize> {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for id in accepted {
            *counts.entry(id.clone()).or_default() += 1;
        }
        counts.retain(|_, n| *n > 1);
        counts
    }
}

/// Waits until every Message-ID in `acked` has been accepted by `receiver`; `context` explains a
/// timeout (daemon log tails).
pub fn wait_for_delivery(
    receiver: &RecordingReceiver,
    acked: &BTreeSet<String>,
    timeout: Duration,
    context: impl Fn() -> String,
) {
    wait_until(
        &format!(
            "{} acknowledged message(s) at {}",
            acked.len(),
            receiver.address()
        ),
        timeout,
        || {
            let delivered: BTreeSet<String> = receiver.accepted().into_iter().collect();
            let missing: Vec<&String> = acked.difference(&delivered).take(10).collect();
            format!(
                "still missing (first 10): {missing:?}\n{}\n{}",
                receiver.log_tail(),
                context()
            )
        },
        || {
            let delivered: BTreeSet<String> = receiver.accepted().into_iter().collect();
            acked.is_subset(&delivered).then_some(())
        },
    );
}

/// A tmpfs mounted by the test, unmounted (lazily if still busy) on drop.
pub struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. `4m`) on `path`, creating it; `Err` explains why mounting
    /// is not possible here (not root, no CAP_SYS_ADMIN, no mount binary).
    pub fn mount(path: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let output = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "mount -t tmpfs on {} failed: {}",
                path.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(Tmpfs {
            path: path.to_path_buf(),
        })
    }

    /// Bytes still free on the file system.
    pub fn available(&self) -> u64 {
        let path = std::ffi::CString::new(self.path.to_str().expect("UTF-8 path"))
            .expect("no NUL in the path");
        // SAFETY: statvfs writes into the zeroed struct it is given; the path is NUL-terminated.
        unsafe {
            let mut stat: libc::statvfs = std::mem::zeroed();
            assert_eq!(libc::statvfs(path.as_ptr(), &mut stat), 0, "statvfs");
            stat.f_bavail * stat.f_frsize
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

/// Segment files of core 0's spool log under a data directory, oldest first.
pub fn segment_files(data_dir: &Path) -> Vec<PathBuf> {
    let core_dir = data_dir.join("spool").join("core-00");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&core_dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "log"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Length of a segment file's header, and of each record's header (see `src/spool/record.rs`).
pub const SEGMENT_HEADER_LEN: usize = 16;
pub const RECORD_HEADER_LEN: usize = 16;
/// Record kinds.
pub const KIND_MESSAGE: u8 = 1;
pub const KIND_COMPLETION: u8 = 2;

/// One record found in a segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordSpan {
    pub offset: usize,
    pub kind: u8,
    /// Header and payload.
    pub len: usize,
}

/// The records of a segment file, read by their frames (magic, kind, length); stops at the first
/// bytes that are not a complete frame.
pub fn records(segment: &[u8]) -> Vec<RecordSpan> {
    const MAGIC: [u8; 4] = [0xa7, b'S', b'X', b'R'];
    let mut spans = Vec::new();
    let mut offset = SEGMENT_HEADER_LEN;
    while offset + RECORD_HEADER_LEN <= segment.len() && segment[offset..offset + 4] == MAGIC {
        let length = &segment[offset + 8..offset + 12];
        let payload = u32::from_le_bytes(length.try_into().expect("four bytes")) as usize;
        let len = RECORD_HEADER_LEN + payload;
        if offset + len > segment.len() {
            break;
        }
        spans.push(RecordSpan {
            offset,
            kind: segment[offset + 4],
            len,
        });
        offset += len;
    }
    spans
}

/// Files secmx set aside under `spool/damaged/`.
pub fn damaged_files(data_dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(data_dir.join("spool").join("damaged"))
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    files
}

/// A small seeded generator (xorshift64*) for fault timing. The seed comes from
/// `SECMX_FAULTS_SEED` when set, from the clock otherwise; tests print it so a run can be
/// repeated.
pub struct Rng {
    seed: u64,
    state: u64,
}

impl Rng {
    pub fn from_env() -> Rng {
        let seed = std::env::var("SECMX_FAULTS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
        let seed = seed.max(1);
        Rng { seed, state: seed }
    }

    /// The seed this generator started from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A duration in `[low, high)`.
    pub fn between(&mut self, low: Duration, high: Duration) -> Duration {
        let span = (high - low).as_millis().max(1) as u64;
        low + Duration::from_millis(self.next() % span)
    }
}

/// `pending` of the last "spool opened" line in a secmx log: the messages recovery found.
pub fn pending_at_last_open(log: &str) -> usize {
    let line = log
        .lines()
        .rev()
        .find(|line| line.contains("spool opened"))
        .expect("a `spool opened` line");
    line.split_whitespace()
        .find_map(|field| field.strip_prefix("pending="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no pending count in `{line}`"))
}
