//! Command line of `secmx-load`.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

pub const USAGE: &str = "\
usage: secmx-load --server HOST:PORT [options]

modes:
  --mode load        send --messages messages over --sessions sessions (default)
  --mode handshake   STARTTLS handshakes (EHLO, STARTTLS, EHLO, QUIT) for --duration
  --mode idle        open --sessions sessions, EHLO, hold them for --hold, then NOOP and QUIT

options:
  --sessions N               concurrent SMTP sessions (default 1)
  --messages M               messages in all (load mode, default 100)
  --size BYTES               message payload, without headers (default 1024)
  --starttls                 STARTTLS before MAIL (any certificate is accepted)
  --pipelining               send MAIL, RCPT and DATA in one group (RFC 2920)
  --connection-per-message   a new connection for every message, like smtp-source
                             (default: one connection per session, reused, like a relay)
  --executors K              threads, one glommio executor each (default 1)
  --from ADDR, --to ADDR     envelope (default bench@source.example, user@bench.example)
  --helo NAME                EHLO name (default load.example)
  --tls-name NAME            server name sent in the TLS handshake (default localhost)
  --duration SECS            handshake mode: how long to run (default 5)
  --hold SECS                idle mode: how long to hold the sessions (default 5)
  --source-addrs N           bind sessions to N source addresses 127.1.x.y in turn (default 0:
                             let the kernel pick)
  --timeout SECS             limit for each reply and for connecting (default 60)

Prints one line of JSON on standard output. Exit status 1 when any message or session failed.
";

/// What the run does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Load,
    Handshake,
    Idle,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Load => "load",
            Mode::Handshake => "handshake",
            Mode::Idle => "idle",
        }
    }
}

/// Everything the command line sets.
#[derive(Debug, Clone)]
pub struct Options {
    pub server: SocketAddr,
    pub mode: Mode,
    pub sessions: usize,
    pub messages: usize,
    pub size: usize,
    pub starttls: bool,
    pub pipelining: bool,
    pub connection_per_message: bool,
    pub executors: usize,
    pub reverse_path: String,
    pub forward_path: String,
    pub helo: String,
    pub tls_name: String,
    pub duration: Duration,
    pub hold: Duration,
    pub source_addrs: usize,
    pub timeout: Duration,
}

impl Options {
    /// The source address for session number `index`, when sources are spread.
    pub fn source_for(&self, index: usize) -> Option<SocketAddr> {
        if self.source_addrs == 0 {
            return None;
        }
        let n = index % self.source_addrs;
        let ip = Ipv4Addr::new(127, 1, (n / 250) as u8, (n % 250 + 1) as u8);
        Some(SocketAddr::new(ip.into(), 0))
    }
}

fn number<T: std::str::FromStr>(name: &str, value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("{name}: `{value}` is not a number"))
}

fn seconds(name: &str, value: &str) -> Result<Duration, String> {
    let secs: f64 = number(name, value)?;
    if !(secs > 0.0 && secs.is_finite()) {
        return Err(format!(
            "{name}: `{value}` must be a positive number of seconds"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses the arguments after the program name.
pub fn parse(args: &[String]) -> Result<Options, String> {
    let mut server = None;
    let mut options = Options {
        server: SocketAddr::from(([127, 0, 0, 1], 25)),
        mode: Mode::Load,
        sessions: 1,
        messages: 100,
        size: 1024,
        starttls: false,
        pipelining: false,
        connection_per_message: false,
        executors: 1,
        reverse_path: "bench@source.example".into(),
        forward_path: "user@bench.example".into(),
        helo: "load.example".into(),
        tls_name: "localhost".into(),
        duration: Duration::from_secs(5),
        hold: Duration::from_secs(5),
        source_addrs: 0,
        timeout: Duration::from_secs(60),
    };

    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let flag = arg.as_str();
        let mut value = || {
            rest.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag {
            "--server" => {
                let text = value()?;
                server = Some(
                    text.parse::<SocketAddr>()
                        .map_err(|_| format!("--server: `{text}` is not IP:PORT"))?,
                );
            }
            "--mode" => {
                options.mode = match value()?.as_str() {
                    "load" => Mode::Load,
                    "handshake" => Mode::Handshake,
                    "idle" => Mode::Idle,
                    other => return Err(format!("--mode: unknown mode `{other}`")),
                }
            }
            "--sessions" => options.sessions = number(flag, &value()?)?,
            "--messages" => options.messages = number(flag, &value()?)?,
            "--size" => options.size = number(flag, &value()?)?,
            "--starttls" => options.starttls = true,
            "--pipelining" => options.pipelining = true,
            "--connection-per-message" => options.connection_per_message = true,
            "--executors" => options.executors = number(flag, &value()?)?,
            "--from" => options.reverse_path = value()?,
            "--to" => options.forward_path = value()?,
            "--helo" => options.helo = value()?,
            "--tls-name" => options.tls_name = value()?,
            "--duration" => options.duration = seconds(flag, &value()?)?,
            "--hold" => options.hold = seconds(flag, &value()?)?,
            "--source-addrs" => options.source_addrs = number(flag, &value()?)?,
            "--timeout" => options.timeout = seconds(flag, &value()?)?,
            "--help" | "-h" => return Err(String::new()),
            other => return Err(format!("unexpected argument `{other}`")),
        }
    }

    options.server = server.ok_or("--server is required")?;
    if options.sessions == 0 || options.executors == 0 {
        return Err("--sessions and --executors must be at least 1".into());
    }
    if options.executors > options.sessions {
        options.executors = options.sessions;
    }
    if options.source_addrs > 250 * 256 {
        return Err("--source-addrs: at most 64000".into());
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn server_is_required_and_flags_are_read() {
        assert!(parse(&args(&["--sessions", "3"])).is_err());
        let parsed = parse(&args(&[
            "--server",
            "127.0.0.1:2525",
            "--sessions",
            "50",
            "--starttls",
            "--size",
            "65536",
        ]))
        .unwrap();
        assert_eq!(parsed.server, "127.0.0.1:2525".parse().unwrap());
        assert_eq!(
            (parsed.sessions, parsed.size, parsed.starttls),
            (50, 65536, true)
        );
    }

    #[test]
    fn executors_never_outnumber_sessions() {
        let parsed = parse(&args(&[
            "--server",
            "127.0.0.1:25",
            "--executors",
            "4",
            "--sessions",
            "2",
        ]))
        .unwrap();
        assert_eq!(parsed.executors, 2);
    }

    #[test]
    fn source_addresses_cycle_through_127_1() {
        let parsed = parse(&args(&[
            "--server",
            "127.0.0.1:25",
            "--source-addrs",
            "300",
        ]))
        .unwrap();
        assert_eq!(parsed.source_for(0), Some("127.1.0.1:0".parse().unwrap()));
        assert_eq!(parsed.source_for(251), Some("127.1.1.2:0".parse().unwrap()));
        assert_eq!(parsed.source_for(300), Some("127.1.0.1:0".parse().unwrap()));
    }
}
