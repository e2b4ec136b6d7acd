//! Harness for the end-to-end tests: secmx instances, a real DNS server (unbound), a real
//! plaintext SMTP receiver (Postfix's smtp-sink), real SMTP clients (swaks, Python's smtplib)
//! and a test certificate authority.
//!
//! Every process started here is killed by its pid when its guard drops; every wait is bounded
//! and fails with the tail of the relevant log. Each test uses its own `127.77.<n>.0/24` block
//! so tests running in parallel never share an address.

#![allow(dead_code, unused_imports)]

mod ca;
pub mod dns_front;
mod peers;
mod process;
pub mod receiver;
mod secmx;
pub mod zone_file;

pub use ca::{Leaf, TestCa};
pub use peers::{SmtpSink, Unbound};
pub use process::Process;
pub use secmx::{Maildir, Secmx, SecmxConfig, first_header};

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long any wait for mail, a log line or a listener may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(30);

/// Pause between two polls of a condition (a poll interval, never a readiness guess).
const POLL: Duration = Duration::from_millis(50);

/// The secmx binary under test.
pub fn secmx_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_secmx"))
}

/// `127.77.<block>.<host>`: the address plan giving each test its own /24.
pub fn ip(block: u8, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 77, block, host)
}

/// `127.77.<block>.<host>:<port>`.
pub fn addr(block: u8, host: u8, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(ip(block, host), port))
}

/// A directory under the system temp dir, removed on drop unless `SECMX_TEST_KEEP` is set.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!(
            "secmx-it-{label}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("SECMX_TEST_KEEP").is_some() {
            eprintln!("keeping {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Polls `probe` until it yields a value, for at most `timeout`; on timeout panics with `what`
/// and the diagnostic text `context` produces (typically the tail of a daemon log).
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    context: impl Fn() -> String,
    mut probe: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        if Instant::now() >= deadline {
            panic!(
                "timed out after {:?} waiting for {what}\n{}",
                timeout,
                context()
            );
        }
        std::thread::sleep(POLL);
    }
}

/// What a finished client command printed.
#[derive(Debug)]
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// Both streams, for assertion messages.
    pub fn transcript(&self) -> String {
        format!(
            "exit status {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs a client command to completion, killing it (by pid) if it outlives `timeout`.
pub fn run_bounded(command: &mut Command, timeout: Duration) -> Output {
    let program = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let mut stdout_pipe = child.stdout.take().expect("stdout is piped");
    let mut stderr_pipe = child.stderr.take().expect("stderr is piped");
    let stdout_reader = std::thread::spawn(move || read_all(&mut stdout_pipe));
    let stderr_reader = std::thread::spawn(move || read_all(&mut stderr_pipe));

    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{program} did not finish within {timeout:?}");
            }
            Err(e) => panic!("cannot wait for {program}: {e}"),
        }
    };
    Output {
        code: status.code(),
        stdout: stdout_reader.join().unwrap_or_default(),
        stderr: stderr_reader.join().unwrap_or_default(),
    }
}

fn read_all(pipe: &mut impl std::io::Read) -> String {
    let mut bytes = Vec::new();
    let _ = pipe.read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Runs swaks against `server` with a bounded protocol timeout; `args` are added as given.
pub fn swaks(server: SocketAddr, args: &[&str]) -> Output {
    let mut command = Command::new("swaks");
    command
        .arg("--server")
        .arg(server.ip().to_string())
        .arg("--port")
        .arg(server.port().to_string())
        .args(["--timeout", "20", "--helo", "client.test"])
        .args(args);
    run_bounded(&mut command, Duration::from_secs(60))
}

/// A helper script under `tests/support/`.
pub fn support_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/support")
        .join(name)
}

/// Runs `python3 tests/support/<script> args...`, bounded.
pub fn python(script: &str, args: &[&str], timeout: Duration) -> Output {
    let mut command = Command::new("python3");
    command.arg(support_script(script)).args(args);
    run_bounded(&mut command, timeout)
}

/// Submits one message with swaks in plaintext and fails the test unless it is accepted.
pub fn submit(server: SocketAddr, from: &str, to: &str, subject: &str) -> Output {
    let subject_header = format!("Subject: {subject}");
    let out = swaks(
        server,
        &["--from", from, "--to", to, "--header", &subject_header],
    );
    assert_eq!(
        out.code,
        Some(0),
        "swaks could not submit `{subject}` to {server}\n{}",
        out.transcript()
    );
    out
}

/// The message among `messages` whose Subject is `subject`.
pub fn with_subject<'a>(messages: &'a [String], subject: &str) -> &'a str {
    let header = format!("Subject: {subject}");
    messages
        .iter()
        .find(|m| m.lines().any(|line| line.trim_end() == header))
        .unwrap_or_else(|| panic!("no message with `{header}` among {messages:#?}"))
}
