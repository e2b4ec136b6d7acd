//! Real peers of secmx in the tests: Debian's unbound serving fixed zones on a loopback port,
//! and Postfix's smtp-sink as a plaintext-only SMTP receiver that dumps every message to a file.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::process::tail_file;
use super::{Process, WAIT, wait_until};

const UNBOUND: &str = "/usr/sbin/unbound";
const SMTP_SINK: &str = "/usr/sbin/smtp-sink";

/// An unbound instance answering only from its local data: every name outside it is NXDOMAIN,
/// so nothing is ever forwarded or resolved recursively.
pub struct Unbound {
    address: SocketAddr,
    process: Process,
}

impl Unbound {
    /// Starts unbound on `ip` (a free port) with `records` in master-file syntax, e.g.
    /// `"_secmx._tcp.b.test. 300 IN SRV 10 10 2600 mx.b.test."`, and waits until it answers.
    pub fn start(dir: &Path, ip: Ipv4Addr, records: &[&str]) -> Unbound {
        Unbound::start_with(dir, ip, records, "")
    }

    /// Like [`Unbound::start`], with `extra` appended to the configuration after the records:
    /// more `server:` lines (`local-zone:`, ...) and then whole clauses (`forward-zone:`, ...).
    pub fn start_with(dir: &Path, ip: Ipv4Addr, records: &[&str], extra: &str) -> Unbound {
        let dir = dir.join("unbound");
        std::fs::create_dir_all(&dir).expect("unbound directory");
        let port = free_port(ip);
        let mut config = format!(
            "server:\n\
             \x20   interface: {ip}\n\
             \x20   port: {port}\n\
             \x20   do-daemonize: no\n\
             \x20   use-syslog: no\n\
             \x20   logfile: \"\"\n\
             \x20   username: \"\"\n\
             \x20   chroot: \"\"\n\
             \x20   directory: \"{dir}\"\n\
             \x20   pidfile: \"{dir}/unbound.pid\"\n\
             \x20   num-threads: 1\n\
             \x20   so-reuseport: no\n\
             \x20   do-ip6: no\n\
             \x20   access-control: 127.0.0.0/8 allow\n\
             \x20   do-not-query-localhost: no\n\
             \x20   module-config: \"iterator\"\n\
             \x20   verbosity: 1\n\
             \x20   log-queries: yes\n\
             \x20   local-zone: \".\" static\n",
            dir = dir.display()
        );
        for record in records {
            assert!(!record.contains('"'), "record with a quote: {record}");
            config.push_str(&format!("    local-data: \"{record}\"\n"));
        }
        config.push_str(extra);
        if !extra.is_empty() && !extra.ends_with('\n') {
            config.push('\n');
        }
        config.push_str("remote-control:\n    control-enable: no\n");
        let config_file = dir.join("unbound.conf");
        std::fs::write(&config_file, config).expect("unbound configuration");

        let mut process = Process::spawn(
            "unbound",
            Command::new(UNBOUND).arg("-d").arg("-c").arg(&config_file),
            &dir.join("unbound.log"),
        );
        let address = SocketAddr::new(IpAddr::V4(ip), port);
        let log = process.log_path().to_path_buf();
        let outcome = wait_until(
            &format!("unbound to answer on {address}"),
            WAIT,
            || tail_file(&log, 30),
            || match process.exited() {
                Some(status) => Some(Err(status)),
                None => answers_query(address).then_some(Ok(())),
            },
        );
        if let Err(status) = outcome {
            panic!("unbound exited with {status}\n{}", process.log_tail(30));
        }
        Unbound { address, process }
    }

    /// Where to point `dns.nameservers`.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn log_tail(&self) -> String {
        self.process.log_tail(40)
    }

    /// Everything unbound logged so far; with `log-queries` one line per question received.
    pub fn log(&self) -> String {
        self.process.log()
    }
}

/// A port free for both UDP and TCP on `ip` (each test owns its address, so nothing else
/// takes the port between this check and the server binding it).
fn free_port(ip: Ipv4Addr) -> u16 {
    for _ in 0..50 {
        let udp = UdpSocket::bind((ip, 0)).expect("bind a UDP socket on the test address");
        let port = udp.local_addr().expect("local address").port();
        if TcpListener::bind((ip, port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both UDP and TCP on {ip}");
}

/// Sends one query (`ready.invalid. A`) and reports whether a reply with its id came back.
fn answers_query(server: SocketAddr) -> bool {
    let Ok(socket) = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)) else {
        return false;
    };
    let _ = socket.set_read_timeout(Some(Duration::from_millis(500)));
    let id: u16 = 0x5ec3;
    let mut query = Vec::new();
    query.extend_from_slice(&id.to_be_bytes());
    query.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in ["ready", "invalid"] {
        query.push(label.len() as u8);
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 1, 0, 1]);
    if socket.send_to(&query, server).is_err() {
        return false;
    }
    let mut reply = [0u8; 512];
    matches!(socket.recv_from(&mut reply), Ok((n, _)) if n >= 12 && reply[..2] == id.to_be_bytes())
}

/// smtp-sink accepting everything in plaintext (it offers no STARTTLS) and writing each
/// message to its own file in `dump_dir`.
pub struct SmtpSink {
    address: SocketAddr,
    dump_dir: PathBuf,
    process: Process,
}

impl SmtpSink {
    pub fn start(dir: &Path, name: &str, address: SocketAddr) -> SmtpSink {
        let dump_dir = dir.join(format!("sink-{name}"));
        std::fs::create_dir_all(&dump_dir).expect("smtp-sink dump directory");
        let mut command = Command::new(SMTP_SINK);
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            // smtp-sink insists on dropping privileges when started by root.
            command.args(["-u", "root"]);
        }
        command
            .arg("-d")
            .arg(format!("{}/%H%M%S.", dump_dir.display()))
            .arg(address.to_string())
            .arg("100");
        let mut process = Process::spawn(
            &format!("smtp-sink {name}"),
            &mut command,
            &dir.join(format!("sink-{name}.log")),
        );
        process.wait_for_greeting(address);
        SmtpSink {
            address,
            dump_dir,
            process,
        }
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The dumped messages so far (each with smtp-sink's `X-Client-Addr`, `X-Mail-Args` and
    /// `X-Rcpt-Args` lines in front).
    pub fn messages(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.dump_dir) else {
            return Vec::new();
        };
        let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        files
            .iter()
            .filter_map(|f| std::fs::read(f).ok())
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .collect()
    }

    pub fn count(&self) -> usize {
        std::fs::read_dir(&self.dump_dir).map_or(0, |entries| entries.count())
    }
}
