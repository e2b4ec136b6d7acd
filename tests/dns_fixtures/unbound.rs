//! A real unbound serving `local-data` on a loopback port, with nothing forwarded or iterated:
//! every name outside the test zones is refused, so no query ever leaves the host.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};

use super::zone::ZoneRecord;

const UNBOUND: &str = "/usr/sbin/unbound";

/// A running unbound; killed (by its pid) and its directory removed on drop.
pub struct Unbound {
    child: Child,
    dir: PathBuf,
    pub address: SocketAddr,
}

/// Extra zones beside `example.net.`: `(zone, local-zone type, records)`.
pub struct LocalZone<'a> {
    pub name: &'a str,
    pub kind: &'a str,
    pub records: Vec<String>,
}

impl Unbound {
    /// Starts unbound with `example.net.` (static) holding `records`, plus `zones`. Returns
    /// `None` when unbound is not installed, unless `CI=true`, where that is a failure.
    pub fn start(records: &[ZoneRecord], zones: &[LocalZone<'_>]) -> Option<Unbound> {
        if !Path::new(UNBOUND).exists() {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{UNBOUND} is not installed; .ci/run must install the `unbound` package");
            }
            eprintln!("SKIPPED: {UNBOUND} is not installed (apt-get install unbound)");
            return None;
        }
        let dir = fresh_dir();
        for _ in 0..5 {
            let address = free_port();
            let config = config_text(&dir, address, records, zones);
            let config_path = dir.join("unbound.conf");
            std::fs::write(&config_path, config).expect("write unbound.conf");
            let log = std::fs::File::create(dir.join("stderr.log")).expect("create unbound log");
            let child = Command::new(UNBOUND)
                .arg("-d")
                .arg("-c")
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("clone log handle"))
                .stderr(log)
                .spawn()
                .expect("spawn unbound");
            let mut unbound = Unbound {
                child,
                dir: dir.clone(),
                address,
            };
            if unbound.wait_until_answering() {
                return Some(unbound);
            }
            // Port taken between probing and binding: try another one.
            unbound.stop();
        }
        panic!("unbound did not start; log:\n{}", read_log(&dir));
    }

    /// Polls with real queries until unbound answers one, or it exits, or 10 s pass.
    fn wait_until_answering(&mut self) -> bool {
        let probe = UdpSocket::bind("127.0.0.1:0").expect("bind probe socket");
        probe
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut query = Message::new(0x5ec0, MessageType::Query, OpCode::Query);
        query.add_query(Query::query(
            Name::from_ascii("example.net.").unwrap(),
            RecordType::SOA,
        ));
        let query = query.to_vec().unwrap();
        let mut buffer = [0u8; 4096];
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            probe.send_to(&query, self.address).expect("send probe");
            if let Ok((len, from)) = probe.recv_from(&mut buffer)
                && from == self.address
                && len >= 2
                && buffer[..2] == [0x5e, 0xc0]
            {
                return true;
            }
        }
        false
    }

    /// Stops unbound with SIGTERM, so that it logs its statistics, and returns its log.
    pub fn stop_and_read_log(mut self) -> String {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: plain syscall on the pid of a child we spawned and have not reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return self.log();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("unbound ignored SIGTERM; log:\n{}", self.log());
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// unbound's own log, for failure messages.
    pub fn log(&self) -> String {
        read_log(&self.dir)
    }
}

impl Drop for Unbound {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn config_text(
    dir: &Path,
    address: SocketAddr,
    records: &[ZoneRecord],
    zones: &[LocalZone<'_>],
) -> String {
    let dir = dir.display();
    let mut config = format!(
        "server:\n\
         \tinterface: {ip}\n\
         \tport: {port}\n\
         \taccess-control: 127.0.0.0/8 allow\n\
         \tdo-ip6: no\n\
         \tnum-threads: 1\n\
         \tso-reuseport: no\n\
         \tusername: \"\"\n\
         \tchroot: \"\"\n\
         \tdirectory: \"{dir}\"\n\
         \tpidfile: \"{dir}/unbound.pid\"\n\
         \tuse-syslog: no\n\
         \tlogfile: \"\"\n\
         \tverbosity: 1\n\
         \tdo-daemonize: no\n\
         \tdo-not-query-localhost: no\n\
         \tmodule-config: \"iterator\"\n\
         \tlocal-zone: \".\" refuse\n\
         \tlocal-zone: \"example.net.\" static\n",
        ip = address.ip(),
        port = address.port(),
    );
    for record in records {
        config.push_str(&format!("\tlocal-data: \"{}\"\n", record.local_data()));
    }
    for zone in zones {
        config.push_str(&format!("\tlocal-zone: \"{}\" {}\n", zone.name, zone.kind));
        for record in &zone.records {
            config.push_str(&format!("\tlocal-data: \"{record}\"\n"));
        }
    }
    config.push_str("remote-control:\n\tcontrol-enable: no\n");
    config
}

/// A loopback port free for both UDP and TCP at the time of the call.
fn free_port() -> SocketAddr {
    for _ in 0..20 {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind UDP probe");
        let address = udp.local_addr().unwrap();
        if TcpListener::bind(address).is_ok() {
            return address;
        }
    }
    panic!("no loopback port free for both UDP and TCP");
}

fn fresh_dir() -> PathBuf {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "secmx-unbound-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create unbound directory");
    dir
}

fn read_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default()
}
