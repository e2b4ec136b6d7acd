//! secmx instances under test: their configuration, the daemon process, its log events and
//! the Maildirs it delivers to.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{Leaf, Process, WAIT, secmx_bin, wait_until};

/// A secmx configuration file, built key by key (the key names are the documented contract).
///
/// Every instance gets `workers = 1`, no system trust roots, a DNS server of the test's own,
/// short retry intervals and `log.level = "info"`.
pub struct SecmxConfig {
    table: toml::Table,
    listeners: Vec<SocketAddr>,
}

impl SecmxConfig {
    /// A configuration for `hostname` resolving through `nameserver` (a test's unbound, or an
    /// address where nothing listens when the test needs no DNS).
    pub fn new(hostname: &str, nameserver: SocketAddr) -> SecmxConfig {
        SecmxConfig {
            table: toml::Table::new(),
            listeners: Vec::new(),
        }
        .set(&["hostname"], hostname)
        .set(&["workers"], 1)
        .set(&["tls", "system_roots"], false)
        .set(&["dns", "nameservers"], vec![nameserver.to_string()])
        .set(&["dns", "timeout"], "1s")
        .set(&["dns", "attempts"], 2)
        .set(&["outbound", "retry_initial"], "1s")
        .set(&["outbound", "retry_max"], "2s")
        .set(&["outbound", "connect_timeout"], "3s")
        .set(&["log", "level"], "info")
    }

    /// Sets any key, e.g. `set(&["outbound", "domains", "b.test", "mode"], "secure-only")`.
    pub fn set(mut self, path: &[&str], value: impl Into<toml::Value>) -> SecmxConfig {
        let (last, parents) = path.split_last().expect("a key path");
        let mut table = &mut self.table;
        for key in parents {
            table = table
                .entry(key.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .unwrap_or_else(|| panic!("`{key}` is not a table"));
        }
        table.insert(last.to_string(), value.into());
        self
    }

    /// Adds a `[[listener]]` with role `ber` or `sor`.
    pub fn listener(mut self, address: SocketAddr, role: &str) -> SecmxConfig {
        let mut listener = toml::Table::new();
        listener.insert("address".into(), address.to_string().into());
        listener.insert("role".into(), role.into());
        let list = self
            .table
            .entry("listener")
            .or_insert_with(|| toml::Value::Array(Vec::new()));
        list.as_array_mut()
            .expect("listener is an array")
            .push(listener.into());
        self.listeners.push(address);
        self
    }

    /// Serves STARTTLS with this certificate instead of a self-signed one.
    pub fn certificate(self, leaf: &Leaf) -> SecmxConfig {
        self.set(&["tls", "certificate"], path_text(&leaf.certificate))
            .set(&["tls", "private_key"], path_text(&leaf.private_key))
    }

    /// Trusts this CA for outbound verification.
    pub fn ca_file(self, ca_file: &Path) -> SecmxConfig {
        self.set(&["tls", "ca_file"], path_text(ca_file))
    }

    /// Makes `domain` local, delivered into the Maildir tree at `root`.
    pub fn maildir_domain(self, domain: &str, root: &Path) -> SecmxConfig {
        self.local_domain(domain)
            .set(&["routes", domain, "maildir"], path_text(root))
    }

    /// Makes `domain` local, relayed to `next_hop` (`host:port`).
    pub fn next_hop_domain(self, domain: &str, next_hop: SocketAddr) -> SecmxConfig {
        self.local_domain(domain)
            .set(&["routes", domain, "next_hop"], next_hop.to_string())
    }

    fn local_domain(mut self, domain: &str) -> SecmxConfig {
        let relay = self
            .table
            .entry("relay")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .expect("relay is a table");
        let list = relay
            .entry("local_domains")
            .or_insert_with(|| toml::Value::Array(Vec::new()));
        list.as_array_mut()
            .expect("local_domains is an array")
            .push(domain.into());
        self
    }

    /// Replaces the default trusted networks (loopback).
    pub fn trusted_networks(self, networks: &[&str]) -> SecmxConfig {
        let list: Vec<String> = networks.iter().map(|n| n.to_string()).collect();
        self.set(&["relay", "trusted_networks"], list)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(&self.table).expect("the configuration serialises")
    }
}

fn path_text(path: &Path) -> String {
    path.to_str().expect("test paths are UTF-8").to_string()
}

/// A secmx daemon started with `secmx serve --config FILE`.
pub struct Secmx {
    name: String,
    config_file: PathBuf,
    listeners: Vec<SocketAddr>,
    log: PathBuf,
    process: Option<Process>,
}

impl Secmx {
    /// Writes `dir/<name>/secmx.toml` (data in `dir/<name>/data`), starts the daemon and waits
    /// for the 220 greeting on every listener.
    pub fn start(dir: &Path, name: &str, config: SecmxConfig) -> Secmx {
        let home = dir.join(name);
        std::fs::create_dir_all(&home).expect("instance directory");
        let config = config.set(&["data_dir"], path_text(&home.join("data")));
        let config_file = home.join("secmx.toml");
        std::fs::write(&config_file, config.to_toml()).expect("write the configuration");
        let mut secmx = Secmx {
            name: name.to_string(),
            config_file,
            listeners: config.listeners.clone(),
            log: home.join("secmx.log"),
            process: None,
        };
        secmx.restart();
        secmx
    }

    /// Starts the daemon again on the same configuration and data (the log is appended to).
    pub fn restart(&mut self) {
        assert!(self.process.is_none(), "{} is still running", self.name);
        let mut command = Command::new(secmx_bin());
        command
            .arg("serve")
            .arg("--config")
            .arg(&self.config_file)
            .env("NO_COLOR", "1")
            .env_remove("SECMX_LOG");
        let mut process = Process::spawn(&format!("secmx {}", self.name), &mut command, &self.log);
        for address in &self.listeners {
            process.wait_for_greeting(*address);
        }
        self.process = Some(process);
    }

    /// Stops the daemon with SIGKILL: no chance to flush or clean up.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// True while the daemon process is alive.
    pub fn is_running(&mut self) -> bool {
        self.process.as_mut().is_some_and(|p| p.exited().is_none())
    }

    /// The first listener's address.
    pub fn address(&self) -> SocketAddr {
        self.listeners[0]
    }

    pub fn config_file(&self) -> &Path {
        &self.config_file
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        super::process::strip_ansi(&text)
    }

    /// The end of the log, for failure messages.
    pub fn log_tail(&self) -> String {
        let mut tail = super::process::tail_file(&self.log, 60);
        tail.insert_str(0, &format!("[secmx {}] ", self.name));
        tail
    }

    /// Log lines of the event with this message (`received`, `delivered`, `deferred`,
    /// `bounced`): in the text format the message follows the `target: ` prefix.
    pub fn events(&self, message: &str) -> Vec<String> {
        let infix = format!(": {message} ");
        let suffix = format!(": {message}");
        self.log()
            .lines()
            .filter(|line| line.contains(&infix) || line.ends_with(&suffix))
            .map(str::to_string)
            .collect()
    }

    /// Waits for an event line with this message that contains `needle`.
    pub fn wait_for_event(&self, message: &str, needle: &str) -> String {
        wait_until(
            &format!(
                "a `{message}` event mentioning `{needle}` from {}",
                self.name
            ),
            WAIT,
            || self.log_tail(),
            || {
                self.events(message)
                    .into_iter()
                    .find(|line| line.contains(needle))
            },
        )
    }
}

/// A Maildir tree as secmx writes it: `ROOT/<local part>/new/<file>`.
pub struct Maildir {
    root: PathBuf,
}

impl Maildir {
    pub fn new(root: &Path) -> Maildir {
        Maildir {
            root: root.to_path_buf(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The messages in `ROOT/<user>/new`, in file name order.
    pub fn messages(&self, user: &str) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.root.join(user).join("new")) else {
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

    /// Waits until `user` has at least `count` messages; returns them all.
    pub fn wait_for(&self, user: &str, count: usize, daemons: &[&Secmx]) -> Vec<String> {
        wait_until(
            &format!(
                "{count} message(s) in {}",
                self.root.join(user).join("new").display()
            ),
            WAIT,
            || {
                let tails: Vec<String> = daemons.iter().map(|d| d.log_tail()).collect();
                tails.join("\n")
            },
            || {
                let messages = self.messages(user);
                (messages.len() >= count).then_some(messages)
            },
        )
    }
}

/// The first header field called `name` (case-insensitive) in the header section, unfolded.
pub fn first_header(message: &str, name: &str) -> Option<String> {
    let header_section = message
        .split("\r\n\r\n")
        .next()
        .unwrap_or(message)
        .split("\n\n")
        .next()
        .unwrap_or(message);
    let prefix = format!("{}:", name.to_ascii_lowercase());
    let mut lines = header_section.lines().peekable();
    while let Some(line) = lines.next() {
        if line.to_ascii_lowercase().starts_with(&prefix) {
            let mut field = line.trim_end_matches('\r').to_string();
            while let Some(next) = lines.peek() {
                if next.starts_with(' ') || next.starts_with('\t') {
                    field.push(' ');
                    field.push_str(next.trim());
                    lines.next();
                } else {
                    break;
                }
            }
            return Some(field);
        }
    }
    None
}
