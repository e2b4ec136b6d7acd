//! A child process whose output goes to a log file and which is killed by pid on drop.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use super::{WAIT, wait_until};

/// A running server process (secmx, unbound, smtp-sink).
pub struct Process {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Process {
    /// Starts `command` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, command: &mut Command, log: &Path) -> Process {
        let file = File::options()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", log.display()));
        let stderr = file.try_clone().expect("log file handle clones");
        let child = command
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({command:?}): {e}"));
        Process {
            name: name.to_string(),
            child: Some(child),
            log: log.to_path_buf(),
        }
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The exit status, if the process has ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Sends SIGKILL to this process (by its pid) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Everything the process logged so far, ANSI colour codes removed.
    pub fn log(&self) -> String {
        let mut bytes = Vec::new();
        if let Ok(mut file) = File::open(&self.log) {
            let _ = file.read_to_end(&mut bytes);
        }
        strip_ansi(&String::from_utf8_lossy(&bytes))
    }

    /// The last `lines` lines of the log, headed by the process name.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        let start = all.len().saturating_sub(lines);
        format!(
            "--- last {} lines of {} ({})\n{}",
            all.len() - start,
            self.name,
            self.log.display(),
            all[start..].join("\n")
        )
    }

    /// Waits until the server at `address` sends a `220` greeting, failing early if the process
    /// exits first. Answers the greeting with QUIT.
    pub fn wait_for_greeting(&mut self, address: SocketAddr) {
        let name = self.name.clone();
        let log = self.log.clone();
        let mut exited = None;
        let greeted = wait_until(
            &format!("the 220 greeting of {name} on {address}"),
            WAIT,
            || tail_file(&log, 40),
            || {
                if let Some(status) = self.exited() {
                    exited = Some(status);
                    return Some(false);
                }
                greeting(address).then_some(true)
            },
        );
        if !greeted {
            panic!(
                "{name} exited with {:?} before greeting on {address}\n{}",
                exited,
                self.log_tail(40)
            );
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// True when `address` accepts a connection and greets with 220.
fn greeting(address: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&address, Duration::from_secs(1)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return false,
    });
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return false,
            Ok(_) if line.starts_with("220-") => continue,
            Ok(_) => break,
        }
    }
    let ready = line.starts_with("220");
    if ready {
        let _ = stream.write_all(b"QUIT\r\n");
        let _ = reader.read_line(&mut line);
    }
    ready
}

/// The last `lines` lines of a log file, ANSI colour codes removed.
pub fn tail_file(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    format!(
        "--- last lines of {}\n{}",
        log.display(),
        strip_ansi(&all[start..].join("\n"))
    )
}

/// Removes `ESC [ ... letter` sequences.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
