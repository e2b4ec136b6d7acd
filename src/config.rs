//! Configuration: one TOML file, or the embedded default when none is given.
//!
//! Every key is documented in `docs/configuration.md`. Unknown keys are errors, so a typo never
//! silently falls back to a default. Relative paths are resolved against `data_dir`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The configuration `secmx serve` runs without `--config`.
pub const EMBEDDED_DEFAULT: &str = include_str!("default.toml");

/// A configuration error: which file, which key, what is wrong.
#[derive(Debug)]
pub struct ConfigError {
    pub file: String,
    pub key: String,
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file, self.problem)
        } else {
            write!(f, "{}: key `{}`: {}", self.file, self.key, self.problem)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Ingress role of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// BER: offers STARTTLS, also accepts plaintext.
    BestEffortReceiver,
    /// SOR: refuses MAIL, RCPT and DATA until TLS is up.
    SecureOnlyReceiver,
}

/// Egress mode for a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// BES: SecMX receivers first, then MX with STARTTLS when offered, else plaintext.
    BestEffort,
    /// SOS: only over a verified TLS session; otherwise defer, then bounce.
    SecureOnly,
}

/// What to do with a bare CR or bare LF inside DATA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BareNewline {
    /// Refuse the message after end of data with `554 5.6.11`.
    Reject,
    /// Rewrite each bare CR or LF to CRLF.
    Normalize,
}

#[derive(Debug, Clone)]
pub struct Listener {
    pub address: SocketAddr,
    pub role: Role,
}

#[derive(Debug, Clone)]
pub struct Tls {
    /// Certificate chain (PEM). `None`: a self-signed certificate in `data_dir/tls/`.
    pub certificate: Option<PathBuf>,
    pub private_key: Option<PathBuf>,
    /// Extra trust roots for outbound verification, added to the system roots.
    pub ca_file: Option<PathBuf>,
    /// Trust the system roots for outbound verification.
    pub system_roots: bool,
}

#[derive(Debug, Clone)]
pub struct Dns {
    /// Upstream servers; empty means those in `/etc/resolv.conf`.
    pub nameservers: Vec<SocketAddr>,
    pub timeout: Duration,
    pub attempts: u32,
    pub min_ttl: Duration,
    pub max_ttl: Duration,
    pub negative_max_ttl: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Network {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Relay {
    /// Lowercase, without trailing dot.
    pub local_domains: Vec<String>,
    pub trusted_networks: Vec<Network>,
}

impl Relay {
    pub fn is_local_domain(&self, domain: &str) -> bool {
        let domain = domain.trim_end_matches('.');
        self.local_domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(domain))
    }

    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted_networks.iter().any(|n| n.contains(ip))
    }
}

/// Where accepted mail for a domain goes instead of SecMX discovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Maildir(PathBuf),
    NextHop(String),
}

#[derive(Debug, Clone)]
pub struct Route {
    pub destination: Option<Destination>,
    /// File of valid recipient addresses, one a line. `None`: every local part is accepted.
    pub recipients: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Outbound {
    pub mode: Mode,
    pub smtp_port: u16,
    pub queue_lifetime: Duration,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    pub max_connections_per_domain: usize,
    pub max_messages_per_connection: usize,
    pub idle_timeout: Duration,
    /// Per-domain overrides of `mode`, keyed by lowercase domain.
    pub domains: BTreeMap<String, Mode>,
}

impl Outbound {
    pub fn mode_for(&self, domain: &str) -> Mode {
        self.domains.get(domain).copied().unwrap_or(self.mode)
    }
}

#[derive(Debug, Clone)]
pub struct Smtp {
    pub max_message_size: u64,
    pub max_recipients: usize,
    pub max_errors: u32,
    pub bare_newline: BareNewline,
    pub greeting_timeout: Duration,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    pub max_connections_per_core: usize,
    pub max_connections_per_client: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct Log {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Debug, Clone)]
pub struct Spool {
    /// Issue `fdatasync` before acknowledging. Only benchmarks of the non-durable ceiling turn
    /// this off.
    pub sync: bool,
    pub segment_size: u64,
    /// Longest time a message waits for the next group commit.
    pub commit_delay: Duration,
}

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub source: String,
    pub hostname: String,
    pub data_dir: PathBuf,
    pub workers: usize,
    pub listeners: Vec<Listener>,
    pub tls: Tls,
    pub dns: Dns,
    pub relay: Relay,
    pub routes: BTreeMap<String, Route>,
    pub outbound: Outbound,
    pub smtp: Smtp,
    pub spool: Spool,
    pub log: Log,
}

impl Config {
    /// Reads and validates a configuration file.
    /// Reads and validates a configuration file; `data_dir`, when given, replaces the file's
    /// `data_dir` before relative paths are resolved against it.
    pub fn load(path: &Path, data_dir: Option<&Path>) -> Result<Config, ConfigError> {
        let source = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: source.clone(),
            key: String::new(),
            problem: format!("cannot read: {e}"),
        })?;
        Config::parse_with(&text, &source, path.parent(), data_dir)
    }

    /// The embedded default, with `data_dir` relative to the working directory.
    pub fn embedded_default() -> Config {
        Config::embedded_default_with(None)
    }

    /// The embedded default with another data directory.
    pub fn embedded_default_with(data_dir: Option<&Path>) -> Config {
        Config::parse_with(EMBEDDED_DEFAULT, "<embedded default>", None, data_dir)
            .expect("the embedded default configuration is valid")
    }

    /// Parses configuration text. `base` is where a relative `data_dir` is resolved; the working
    /// directory when `None`.
    pub fn parse(text: &str, source: &str, base: Option<&Path>) -> Result<Config, ConfigError> {
        Config::parse_with(text, source, base, None)
    }

    fn parse_with(
        text: &str,
        source: &str,
        base: Option<&Path>,
        data_dir: Option<&Path>,
    ) -> Result<Config, ConfigError> {
        let mut raw: raw::File = toml::from_str(text).map_err(|e| toml_error(source, &e))?;
        if let Some(dir) = data_dir {
            raw.data_dir = Some(dir.display().to_string());
        }
        raw.validate(source, base)
    }

    pub fn route(&self, domain: &str) -> Option<&Route> {
        self.routes.get(domain)
    }

    /// Number of executors to start.
    pub fn worker_count(&self) -> usize {
        if self.workers == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            self.workers
        }
    }
}

fn toml_error(source: &str, e: &toml::de::Error) -> ConfigError {
    let message = e.message().to_string();
    let line = e.span().map(|span| span.start);
    ConfigError {
        file: source.to_string(),
        key: String::new(),
        problem: match line {
            Some(offset) => format!("{message} (at byte {offset})"),
            None => message,
        },
    }
}

/// Parses a duration such as `500ms`, `30s`, `10m`, `2h`, `5d`; a bare number is seconds.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let secs = match unit.trim() {
        "ms" => return Some(Duration::from_millis(n)),
        "" | "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86_400)?,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

/// Parses a size such as `1048576`, `512K`, `35M`, `1G` (binary multiples).
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let factor = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" | "k" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(factor)
}

/// Parses `10.0.0.0/8`, `::1/128` or a bare address (a host network).
pub fn parse_network(text: &str) -> Option<Network> {
    let (addr, prefix) = match text.split_once('/') {
        Some((a, p)) => (a.parse::<IpAddr>().ok()?, Some(p.parse::<u8>().ok()?)),
        None => (text.parse::<IpAddr>().ok()?, None),
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = prefix.unwrap_or(max);
    (prefix <= max).then_some(Network { addr, prefix })
}

/// Parses `host:port`, `[v6]:port`, or a bare IP address with `default_port`.
pub fn parse_socket_addr(text: &str, default_port: u16) -> Option<SocketAddr> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Some(addr);
    }
    text.parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, default_port))
}

mod raw {
    //! The file as written, before validation.

    use super::*;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct File {
        hostname: Option<String>,
        pub(super) data_dir: Option<String>,
        workers: Option<usize>,
        #[serde(default)]
        listener: Vec<RawListener>,
        #[serde(default)]
        tls: RawTls,
        #[serde(default)]
        dns: RawDns,
        #[serde(default)]
        relay: RawRelay,
        #[serde(default)]
        routes: BTreeMap<String, RawRoute>,
        #[serde(default)]
        outbound: RawOutbound,
        #[serde(default)]
        smtp: RawSmtp,
        #[serde(default)]
        spool: RawSpool,
        #[serde(default)]
        log: RawLog,
        /// Used by the appliance's boot, not by the daemon; checked here all the same, so that
        /// `check-config` and secmx's start name a misspelt or malformed key.
        #[serde(default)]
        appliance: Option<RawAppliance>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct RawListener {
        address: String,
        role: Option<String>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    struct RawTls {
        certificate: Option<String>,
        private_key: Option<String>,
        ca_file: Option<String>,
        system_roots: Option<bool>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    struct RawDns {
        nameservers: Option<Vec<String>>,
        timeout: Option<String>,
        attempts: Option<u32>,
        min_ttl: Option<String>,
        max_ttl: Option<String>,
        negative_max_ttl: Option<String>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    struct RawRelay {
        local_domains: Option<Vec<String>>,
        trusted_networks: Option<Vec<String>>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct RawRoute {
        next_hop: Option<String>,
        maildir: Option<String>,
        recipients: Option<String>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    struct RawOutbound {
        mode: Option<String>,
        smtp_port: Option<u16>,
        queue_lifetime: Option<String>,
        retry_initial: Option<String>,
        retry_max: Option<String>,
        connect_timeout: Option<String>,
        command_timeout: Option<String>,
        data_timeout: Option<String>,
        max_connections_per_domain: Option<usize>,
        max_messages_per_connection: Option<usize>,
        idle_timeout: Option<String>,
        #[serde(default)]
        domains: BTreeMap<String, RawDomain>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct RawDomain {
        mode: Option<String>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    struct RawSmtp {
        max_message_size: Option<toml::Value>,
        max_recipients: Option<usize>,
        max_errors: Option<u32>,
        bare_newline: Option<String>,
        greeting_timeout: Option<String>,
        command_timeout: Option<String>,
        data_timeout: Option<String>,
        max_connections_per_core: Option<usize>,
        max_connections_per_client: Option<usize>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    struct RawSpool {
        sync: Option<bool>,
        segment_size: Option<toml::Value>,
        commit_delay: Option<String>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    struct RawLog {
        format: Option<String>,
        level: Option<String>,
    }

    /// The `[appliance]` table (docs/appliance.md).
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct RawAppliance {
        dhcp: Option<bool>,
        address: Option<OneOrMany>,
        gateway: Option<OneOrMany>,
        dns: Option<OneOrMany>,
        hostname: Option<String>,
        ntp: Option<OneOrMany>,
        interface: Option<String>,
    }

    /// A string or a list of strings.
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }

    impl OneOrMany {
        fn items(&self) -> &[String] {
            match self {
                OneOrMany::One(one) => std::slice::from_ref(one),
                OneOrMany::Many(many) => many,
            }
        }
    }

    /// The strings of an optional string-or-list key; none when it is absent.
    fn items(value: &Option<OneOrMany>) -> &[String] {
        value.as_ref().map_or(&[], OneOrMany::items)
    }

    impl RawAppliance {
        /// Checks every key the way the appliance's boot will use it.
        fn check(&self, c: &Checker) -> Result<(), ConfigError> {
            for address in items(&self.address) {
                let with_prefix = address.contains('/') && parse_network(address).is_some();
                if !with_prefix {
                    return Err(c.error(
                        "appliance.address",
                        format!("`{address}` is not an address/prefix such as \"192.0.2.10/24\""),
                    ));
                }
            }
            if self.dhcp == Some(true) && self.address.is_some() {
                return Err(c.error(
                    "appliance.dhcp",
                    "`true` together with appliance.address: set one of them",
                ));
            }
            for (key, value) in [
                ("appliance.gateway", &self.gateway),
                ("appliance.dns", &self.dns),
            ] {
                for ip in items(value) {
                    if ip.parse::<IpAddr>().is_err() {
                        return Err(c.error(key, format!("`{ip}` is not an IP address")));
                    }
                }
            }
            for server in items(&self.ntp) {
                if server.parse::<IpAddr>().is_err() {
                    c.domain("appliance.ntp", server)?;
                }
            }
            if let Some(name) = &self.hostname {
                c.domain("appliance.hostname", name)?;
            }
            if let Some(name) = &self.interface {
                let valid = !name.is_empty()
                    && name.len() < 16
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
                if !valid {
                    return Err(c.error(
                        "appliance.interface",
                        format!("`{name}` is not a network interface name (e.g. \"eth0\")"),
                    ));
                }
            }
            Ok(())
        }
    }

    /// Builds errors that name the file and the key.
    struct Checker<'a> {
        source: &'a str,
    }

    impl Checker<'_> {
        fn error(&self, key: &str, problem: impl Into<String>) -> ConfigError {
            ConfigError {
                file: self.source.to_string(),
                key: key.to_string(),
                problem: problem.into(),
            }
        }

        fn duration(
            &self,
            key: &str,
            value: Option<&str>,
            default: &str,
        ) -> Result<Duration, ConfigError> {
            let text = value.unwrap_or(default);
            parse_duration(text).ok_or_else(|| {
                self.error(
                    key,
                    format!("`{text}` is not a duration (use e.g. 30s, 10m, 2h, 5d)"),
                )
            })
        }

        fn size(
            &self,
            key: &str,
            value: Option<&toml::Value>,
            default: u64,
        ) -> Result<u64, ConfigError> {
            match value {
                None => Ok(default),
                Some(toml::Value::Integer(n)) if *n > 0 => Ok(*n as u64),
                Some(toml::Value::String(s)) => parse_size(s).filter(|n| *n > 0).ok_or_else(|| {
                    self.error(
                        key,
                        format!("`{s}` is not a size (use e.g. 1048576, 512K, 35M)"),
                    )
                }),
                Some(other) => Err(self.error(key, format!("`{other}` is not a positive size"))),
            }
        }

        fn mode(&self, key: &str, value: Option<&str>, default: Mode) -> Result<Mode, ConfigError> {
            match value {
                None => Ok(default),
                Some("best-effort") => Ok(Mode::BestEffort),
                Some("secure-only") => Ok(Mode::SecureOnly),
                Some(other) => Err(self.error(
                    key,
                    format!("`{other}` is not a mode (use \"best-effort\" or \"secure-only\")"),
                )),
            }
        }

        fn domain(&self, key: &str, text: &str) -> Result<String, ConfigError> {
            let domain = text.trim_end_matches('.').to_ascii_lowercase();
            let valid = !domain.is_empty()
                && domain.len() <= 253
                && domain.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                });
            if valid {
                Ok(domain)
            } else {
                Err(self.error(key, format!("`{text}` is not a domain name")))
            }
        }

        fn path(&self, data_dir: &Path, text: &str) -> PathBuf {
            let path = Path::new(text);
            if path.is_absolute() {
                path.to_path_buf()
            } else {
                data_dir.join(path)
            }
        }
    }

    impl File {
        pub fn validate(self, source: &str, base: Option<&Path>) -> Result<Config, ConfigError> {
            let c = Checker { source };

            let hostname = match self.hostname {
                Some(h) => c.domain("hostname", &h)?,
                None => system_hostname(),
            };
            // Absolute, so that no later change of working directory moves the spool.
            let data_dir = {
                let text = self.data_dir.as_deref().unwrap_or("secmx-data");
                let path = match base {
                    Some(base) if !base.as_os_str().is_empty() => base.join(text),
                    _ => PathBuf::from(text),
                };
                std::path::absolute(&path)
                    .map_err(|e| c.error("data_dir", format!("cannot resolve `{text}`: {e}")))?
            };

            if self.listener.is_empty() {
                return Err(c.error("listener", "at least one [[listener]] is needed"));
            }
            let mut listeners = Vec::new();
            for (i, l) in self.listener.iter().enumerate() {
                let key = format!("listener[{i}].address");
                let address = parse_socket_addr(&l.address, 25).ok_or_else(|| {
                    c.error(&key, format!("`{}` is not an address:port", l.address))
                })?;
                let role = match l.role.as_deref() {
                    None | Some("ber") => Role::BestEffortReceiver,
                    Some("sor") => Role::SecureOnlyReceiver,
                    Some(other) => {
                        return Err(c.error(
                            &format!("listener[{i}].role"),
                            format!("`{other}` is not a role (use \"ber\" or \"sor\")"),
                        ));
                    }
                };
                if listeners.iter().any(|x: &Listener| x.address == address) {
                    return Err(c.error(&key, format!("{address} is listed twice")));
                }
                listeners.push(Listener { address, role });
            }

            if self.tls.certificate.is_some() != self.tls.private_key.is_some() {
                let missing = if self.tls.certificate.is_some() {
                    "private_key"
                } else {
                    "certificate"
                };
                return Err(c.error(
                    &format!("tls.{missing}"),
                    "tls.certificate and tls.private_key go together",
                ));
            }
            let tls = Tls {
                certificate: self
                    .tls
                    .certificate
                    .as_deref()
                    .map(|p| c.path(&data_dir, p)),
                private_key: self
                    .tls
                    .private_key
                    .as_deref()
                    .map(|p| c.path(&data_dir, p)),
                ca_file: self.tls.ca_file.as_deref().map(|p| c.path(&data_dir, p)),
                system_roots: self.tls.system_roots.unwrap_or(true),
            };

            let mut nameservers = Vec::new();
            for (i, s) in self.dns.nameservers.unwrap_or_default().iter().enumerate() {
                let addr = parse_socket_addr(s, 53).ok_or_else(|| {
                    c.error(
                        &format!("dns.nameservers[{i}]"),
                        format!("`{s}` is not an IP address[:port]"),
                    )
                })?;
                nameservers.push(addr);
            }
            let attempts = self.dns.attempts.unwrap_or(3);
            if attempts == 0 {
                return Err(c.error("dns.attempts", "must be at least 1"));
            }
            let dns = Dns {
                nameservers,
                timeout: c.duration("dns.timeout", self.dns.timeout.as_deref(), "2s")?,
                attempts,
                min_ttl: c.duration("dns.min_ttl", self.dns.min_ttl.as_deref(), "0s")?,
                max_ttl: c.duration("dns.max_ttl", self.dns.max_ttl.as_deref(), "1d")?,
                negative_max_ttl: c.duration(
                    "dns.negative_max_ttl",
                    self.dns.negative_max_ttl.as_deref(),
                    "1h",
                )?,
            };

            let mut local_domains = Vec::new();
            for (i, d) in self
                .relay
                .local_domains
                .unwrap_or_default()
                .iter()
                .enumerate()
            {
                local_domains.push(c.domain(&format!("relay.local_domains[{i}]"), d)?);
            }
            let trusted = self
                .relay
                .trusted_networks
                .unwrap_or_else(|| vec!["127.0.0.0/8".into(), "::1/128".into()]);
            let mut trusted_networks = Vec::new();
            for (i, n) in trusted.iter().enumerate() {
                trusted_networks.push(parse_network(n).ok_or_else(|| {
                    c.error(
                        &format!("relay.trusted_networks[{i}]"),
                        format!("`{n}` is not a network (use e.g. 10.0.0.0/8)"),
                    )
                })?);
            }
            let relay = Relay {
                local_domains,
                trusted_networks,
            };

            let mut routes = BTreeMap::new();
            for (name, r) in self.routes {
                let key = format!("routes.\"{name}\"");
                let domain = c.domain(&key, &name)?;
                let destination = match (r.maildir, r.next_hop) {
                    (Some(_), Some(_)) => {
                        return Err(c.error(&key, "give either maildir or next_hop, not both"));
                    }
                    (Some(m), None) => Some(Destination::Maildir(c.path(&data_dir, &m))),
                    (None, Some(h)) => {
                        if !h.contains(':')
                            || h.rsplit_once(':')
                                .is_none_or(|(_, p)| p.parse::<u16>().is_err())
                        {
                            return Err(c.error(
                                &format!("{key}.next_hop"),
                                format!("`{h}` is not host:port"),
                            ));
                        }
                        Some(Destination::NextHop(h))
                    }
                    (None, None) => None,
                };
                let recipients = r.recipients.as_deref().map(|p| c.path(&data_dir, p));
                routes.insert(
                    domain,
                    Route {
                        destination,
                        recipients,
                    },
                );
            }

            let mode = c.mode(
                "outbound.mode",
                self.outbound.mode.as_deref(),
                Mode::BestEffort,
            )?;
            let mut domains = BTreeMap::new();
            for (name, d) in &self.outbound.domains {
                let key = format!("outbound.domains.\"{name}\"");
                let domain = c.domain(&key, name)?;
                domains.insert(
                    domain,
                    c.mode(&format!("{key}.mode"), d.mode.as_deref(), mode)?,
                );
            }
            let max_connections_per_domain = self.outbound.max_connections_per_domain.unwrap_or(10);
            if max_connections_per_domain == 0 {
                return Err(c.error("outbound.max_connections_per_domain", "must be at least 1"));
            }
            let outbound = Outbound {
                mode,
                smtp_port: self.outbound.smtp_port.unwrap_or(25),
                queue_lifetime: c.duration(
                    "outbound.queue_lifetime",
                    self.outbound.queue_lifetime.as_deref(),
                    "5d",
                )?,
                retry_initial: c.duration(
                    "outbound.retry_initial",
                    self.outbound.retry_initial.as_deref(),
                    "1m",
                )?,
                retry_max: c.duration(
                    "outbound.retry_max",
                    self.outbound.retry_max.as_deref(),
                    "1h",
                )?,
                connect_timeout: c.duration(
                    "outbound.connect_timeout",
                    self.outbound.connect_timeout.as_deref(),
                    "30s",
                )?,
                command_timeout: c.duration(
                    "outbound.command_timeout",
                    self.outbound.command_timeout.as_deref(),
                    "5m",
                )?,
                data_timeout: c.duration(
                    "outbound.data_timeout",
                    self.outbound.data_timeout.as_deref(),
                    "10m",
                )?,
                max_connections_per_domain,
                max_messages_per_connection: self
                    .outbound
                    .max_messages_per_connection
                    .unwrap_or(100)
                    .max(1),
                idle_timeout: c.duration(
                    "outbound.idle_timeout",
                    self.outbound.idle_timeout.as_deref(),
                    "10s",
                )?,
                domains,
            };

            let bare_newline = match self.smtp.bare_newline.as_deref() {
                None | Some("reject") => BareNewline::Reject,
                Some("normalize") => BareNewline::Normalize,
                Some(other) => {
                    return Err(c.error(
                        "smtp.bare_newline",
                        format!("`{other}` is not a policy (use \"reject\" or \"normalize\")"),
                    ));
                }
            };
            let max_recipients = self.smtp.max_recipients.unwrap_or(100);
            if max_recipients < 1 {
                return Err(c.error("smtp.max_recipients", "must be at least 1"));
            }
            let smtp = Smtp {
                max_message_size: c.size(
                    "smtp.max_message_size",
                    self.smtp.max_message_size.as_ref(),
                    35 << 20,
                )?,
                max_recipients,
                max_errors: self.smtp.max_errors.unwrap_or(20),
                bare_newline,
                greeting_timeout: c.duration(
                    "smtp.greeting_timeout",
                    self.smtp.greeting_timeout.as_deref(),
                    "5m",
                )?,
                command_timeout: c.duration(
                    "smtp.command_timeout",
                    self.smtp.command_timeout.as_deref(),
                    "5m",
                )?,
                data_timeout: c.duration(
                    "smtp.data_timeout",
                    self.smtp.data_timeout.as_deref(),
                    "10m",
                )?,
                max_connections_per_core: self.smtp.max_connections_per_core.unwrap_or(20_000),
                max_connections_per_client: self.smtp.max_connections_per_client.unwrap_or(100),
            };

            let spool = Spool {
                sync: self.spool.sync.unwrap_or(true),
                segment_size: c.size(
                    "spool.segment_size",
                    self.spool.segment_size.as_ref(),
                    64 << 20,
                )?,
                commit_delay: c.duration(
                    "spool.commit_delay",
                    self.spool.commit_delay.as_deref(),
                    "0ms",
                )?,
            };

            if let Some(appliance) = &self.appliance {
                appliance.check(&c)?;
            }

            let log = Log {
                format: match self.log.format.as_deref() {
                    None | Some("text") => LogFormat::Text,
                    Some("json") => LogFormat::Json,
                    Some(other) => {
                        return Err(c.error(
                            "log.format",
                            format!("`{other}` is not a format (use \"text\" or \"json\")"),
                        ));
                    }
                },
                level: self.log.level.unwrap_or_else(|| "info".into()),
            };
            if tracing_subscriber::EnvFilter::try_new(&log.level).is_err() {
                return Err(c.error(
                    "log.level",
                    format!("`{}` is not a level or filter", log.level),
                ));
            }

            Ok(Config {
                source: source.to_string(),
                hostname,
                data_dir,
                workers: self.workers.unwrap_or(0),
                listeners,
                tls,
                dns,
                relay,
                routes,
                outbound,
                smtp,
                spool,
                log,
            })
        }
    }

    fn system_hostname() -> String {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "test.toml", Some(Path::new("/etc/secmx")))
    }

    const MINIMAL: &str = "[[listener]]\naddress = \"127.0.0.1:2525\"\n";

    #[test]
    fn embedded_default_is_valid() {
        let config = Config::embedded_default();
        assert_eq!(
            config.listeners[0].address,
            "127.0.0.1:2525".parse().unwrap()
        );
        assert_eq!(config.listeners[0].role, Role::BestEffortReceiver);
        assert!(config.route("localhost").is_some());
    }

    #[test]
    fn unknown_key_is_named() {
        let err = parse(&format!("{MINIMAL}[outbound]\nmod = \"secure-only\"\n")).unwrap_err();
        assert!(err.to_string().contains("mod"), "{err}");
        assert!(err.to_string().starts_with("test.toml"), "{err}");
    }

    #[test]
    fn appliance_table_as_documented_is_accepted() {
        let static_network = "[appliance]\naddress = [\"192.0.2.10/24\", \"2001:db8::10/64\"]\n\
                              gateway = \"192.0.2.1\"\ndns = [\"192.0.2.53\", \"192.0.2.54\"]\n\
                              ntp = \"ntp.example.govt.nz\"\nhostname = \"gw.example.govt.nz\"\n\
                              interface = \"eth1\"\n";
        parse(&format!("{MINIMAL}{static_network}")).unwrap();
        parse(&format!("{MINIMAL}[appliance]\ndhcp = true\ndns = []\n")).unwrap();
    }

    #[test]
    fn appliance_mistakes_name_the_key() {
        let err = parse(&format!("{MINIMAL}[appliance]\nhostnme = \"gw\"\n")).unwrap_err();
        assert!(err.to_string().contains("hostnme"), "{err}");
        for (table, key) in [
            ("address = \"192.0.2.10\"", "appliance.address"),
            ("address = \"not-an-ip/24\"", "appliance.address"),
            ("dhcp = true\naddress = \"192.0.2.10/24\"", "appliance.dhcp"),
            ("gateway = \"192.0.2\"", "appliance.gateway"),
            ("dns = [\"resolver.example\"]", "appliance.dns"),
            ("ntp = [\"ntp example\"]", "appliance.ntp"),
            ("hostname = \"gw;reboot\"", "appliance.hostname"),
            ("interface = \"eth0 up\"", "appliance.interface"),
        ] {
            let err = parse(&format!("{MINIMAL}[appliance]\n{table}\n")).unwrap_err();
            assert_eq!(err.key, key, "{table}: {err}");
        }
        let err = parse(&format!("{MINIMAL}[appliance]\ndhcp = \"yes\"\n")).unwrap_err();
        assert!(err.to_string().contains("boolean"), "{err}");
    }

    #[test]
    fn bad_mode_names_the_key() {
        let err = parse(&format!("{MINIMAL}[outbound]\nmode = \"sometimes\"\n")).unwrap_err();
        assert_eq!(err.key, "outbound.mode");
    }

    #[test]
    fn bad_role_names_the_key() {
        let err = parse("[[listener]]\naddress = \"127.0.0.1:25\"\nrole = \"sos\"\n").unwrap_err();
        assert_eq!(err.key, "listener[0].role");
    }

    #[test]
    fn relative_paths_resolve_against_data_dir() {
        let text = format!(
            "data_dir = \"/var/lib/secmx\"\n{MINIMAL}[routes.\"Example.ORG.\"]\nmaildir = \"mail/x\"\n"
        );
        let config = parse(&text).unwrap();
        let route = config.route("example.org").unwrap();
        assert_eq!(
            route.destination,
            Some(Destination::Maildir("/var/lib/secmx/mail/x".into()))
        );
    }

    #[test]
    fn per_domain_mode_overrides_default() {
        let text =
            format!("{MINIMAL}[outbound.domains.\"partner.example\"]\nmode = \"secure-only\"\n");
        let config = parse(&text).unwrap();
        assert_eq!(
            config.outbound.mode_for("partner.example"),
            Mode::SecureOnly
        );
        assert_eq!(config.outbound.mode_for("other.example"), Mode::BestEffort);
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("5d"), Some(Duration::from_secs(432_000)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("5 weeks"), None);
        assert_eq!(parse_size("35M"), Some(35 << 20));
        assert_eq!(parse_size("-1"), None);
    }

    #[test]
    fn networks_match_addresses() {
        let net = parse_network("10.0.0.0/8").unwrap();
        assert!(net.contains("10.1.2.3".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.0.0.1".parse().unwrap()));
        assert!(
            parse_network("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!(parse_network("10.0.0.0/33").is_none());
    }

    #[test]
    fn certificate_without_key_is_an_error() {
        let err = parse(&format!("{MINIMAL}[tls]\ncertificate = \"c.pem\"\n")).unwrap_err();
        assert_eq!(err.key, "tls.private_key");
    }
}
