//! Scripted SMTP receivers (`tests/support/scripted_receiver.py`): peers that greet with 421,
//! refuse at a chosen stage, reset mid-DATA, abort the TLS handshake or pick a certificate by
//! SNI, and record every connection, command, handshake and accepted message.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::process::tail_file;
use super::{Leaf, Process, WAIT, support_script, wait_until};

/// What a receiver does besides accepting mail; each method adds one option of the script.
#[derive(Clone, Default)]
pub struct Script {
    args: Vec<String>,
}

impl Script {
    /// A receiver that accepts everything in plaintext and offers no STARTTLS.
    pub fn new() -> Script {
        Script::default()
    }

    fn arg(mut self, option: &str, value: Option<String>) -> Script {
        self.args.push(option.to_string());
        self.args.extend(value);
        self
    }

    /// Offers STARTTLS with `leaf`, which is also the certificate sent when there is no SNI.
    pub fn tls(self, leaf: &Leaf) -> Script {
        self.arg("--tls", Some(pair(leaf)))
    }

    /// Presents `leaf` when the client's SNI is `name`.
    pub fn sni(self, name: &str, leaf: &Leaf) -> Script {
        self.arg("--sni", Some(format!("{name}={}", pair(leaf))))
    }

    /// Aborts the handshake with an `unrecognized_name` alert when the SNI is `name`.
    pub fn refuse_sni(self, name: &str) -> Script {
        self.arg("--refuse-sni", Some(name.to_string()))
    }

    /// Answers STARTTLS with 220, then aborts the handshake with a fatal alert.
    pub fn tls_abort(self) -> Script {
        self.arg("--tls-abort", None)
    }

    /// Greets with `reply` instead of 220 and closes.
    pub fn greeting(self, reply: &str) -> Script {
        self.arg("--greeting", Some(reply.to_string()))
    }

    /// Answers `stage` (`mail`, `rcpt`, `data` or `dot`, the end of the content) with `reply`.
    pub fn reply(self, stage: &str, reply: &str) -> Script {
        self.arg("--reply", Some(format!("{stage}={reply}")))
    }

    /// Answers `RCPT TO:<recipient>` with `reply`.
    pub fn rcpt_reply(self, recipient: &str, reply: &str) -> Script {
        self.arg("--rcpt-reply", Some(format!("{recipient}={reply}")))
    }

    /// Resets the TCP connection after the first line of message content.
    pub fn reset_in_data(self) -> Script {
        self.arg("--reset-in-data", None)
    }

    /// Misbehaves `times` times only, then behaves: the greeting in the first `times`
    /// sessions, scripted replies and resets in the first `times` transactions (counted at
    /// MAIL over all sessions, so a sender reusing its connection also sees the change).
    pub fn misbehave_times(self, times: usize) -> Script {
        self.arg("--misbehave", Some(times.to_string()))
    }
}

fn pair(leaf: &Leaf) -> String {
    format!(
        "{}:{}",
        leaf.certificate.display(),
        leaf.private_key.display()
    )
}

/// One line of a receiver's event log.
#[derive(Clone, Debug)]
pub struct PeerEvent {
    pub kind: String,
    fields: Vec<(String, String)>,
}

impl PeerEvent {
    /// A field of the event (`session`, `local`, `peer`, `line`, `sni`, ...), decoded.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn parse(line: &str) -> Option<PeerEvent> {
        let mut words = line.split(' ');
        let kind = words.next().filter(|k| !k.is_empty())?.to_string();
        let fields = words
            .filter_map(|word| word.split_once('='))
            .map(|(k, v)| (k.to_string(), percent_decode(v)))
            .collect();
        Some(PeerEvent { kind, fields })
    }
}

/// A message the receiver accepted at the end of DATA.
#[derive(Clone, Debug)]
pub struct ReceivedMessage {
    pub session: u32,
    /// The receiver address the message came in on.
    pub local: String,
    pub reverse_path: String,
    /// The recipients whose RCPT was accepted in that transaction.
    pub recipients: Vec<String>,
    /// `none`, or the TLS version of the session.
    pub tls: String,
    /// The SNI the client sent, empty without one.
    pub sni: String,
    pub content: String,
}

/// A running scripted receiver on one or more addresses; killed by pid on drop.
pub struct ScriptedReceiver {
    name: String,
    events: PathBuf,
    process: Process,
}

impl ScriptedReceiver {
    /// Starts the receiver on every address in `listen` and waits until it listens.
    pub fn start(
        dir: &Path,
        name: &str,
        listen: &[SocketAddr],
        script: Script,
    ) -> ScriptedReceiver {
        let events = dir.join(format!("receiver-{name}.events"));
        let mut command = Command::new("python3");
        command
            .arg(support_script("scripted_receiver.py"))
            .arg("--log")
            .arg(&events);
        for address in listen {
            command.arg("--listen").arg(address.to_string());
        }
        command.args(&script.args);
        let mut process = Process::spawn(
            &format!("receiver {name}"),
            &mut command,
            &dir.join(format!("receiver-{name}.log")),
        );
        let log = process.log_path().to_path_buf();
        let ready = wait_until(
            &format!("receiver {name} to listen on {listen:?}"),
            WAIT,
            || tail_file(&log, 30),
            || {
                if process.exited().is_some() {
                    return Some(false);
                }
                let text = std::fs::read_to_string(&events).unwrap_or_default();
                text.lines()
                    .any(|l| l.starts_with("ready "))
                    .then_some(true)
            },
        );
        assert!(
            ready,
            "receiver {name} exited before listening\n{}",
            process.log_tail(30)
        );
        ScriptedReceiver {
            name: name.to_string(),
            events,
            process,
        }
    }

    /// Every event so far, in order.
    pub fn events(&self) -> Vec<PeerEvent> {
        std::fs::read_to_string(&self.events)
            .unwrap_or_default()
            .lines()
            .filter_map(PeerEvent::parse)
            .collect()
    }

    /// Events of one kind (`connect`, `command`, `tls`, `tls-aborted`, `message`, `reset`, ...).
    pub fn events_of(&self, kind: &str) -> Vec<PeerEvent> {
        self.events()
            .into_iter()
            .filter(|e| e.kind == kind)
            .collect()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.events_of("connect").len()
    }

    /// The commands received so far, in order, over all sessions.
    pub fn commands(&self) -> Vec<String> {
        self.events_of("command")
            .iter()
            .filter_map(|e| e.get("line").map(str::to_string))
            .collect()
    }

    /// The messages accepted so far, in order.
    pub fn messages(&self) -> Vec<ReceivedMessage> {
        self.events_of("message")
            .iter()
            .map(|e| {
                let field = |key: &str| e.get(key).unwrap_or_default().to_string();
                ReceivedMessage {
                    session: field("session").parse().unwrap_or(0),
                    local: field("local"),
                    reverse_path: field("mail_from"),
                    recipients: field("rcpt")
                        .split(',')
                        .filter(|r| !r.is_empty())
                        .map(str::to_string)
                        .collect(),
                    tls: field("tls"),
                    sni: field("sni"),
                    content: std::fs::read_to_string(field("file")).unwrap_or_default(),
                }
            })
            .collect()
    }

    /// Waits until at least `count` messages arrived; `context` explains a timeout.
    pub fn wait_for_messages(
        &self,
        count: usize,
        context: impl Fn() -> String,
    ) -> Vec<ReceivedMessage> {
        wait_until(
            &format!("{count} message(s) at receiver {}", self.name),
            WAIT,
            || format!("{}\n{}", context(), self.log_tail()),
            || {
                let messages = self.messages();
                (messages.len() >= count).then_some(messages)
            },
        )
    }

    /// Waits for an event of `kind`; `context` explains a timeout.
    pub fn wait_for_event(&self, kind: &str, context: impl Fn() -> String) -> PeerEvent {
        wait_until(
            &format!("a `{kind}` event at receiver {}", self.name),
            WAIT,
            || format!("{}\n{}", context(), self.log_tail()),
            || self.events_of(kind).into_iter().next(),
        )
    }

    /// Stops the receiver (SIGKILL by pid): its addresses refuse connections from now on.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// The last events and the script's own output, for failure messages.
    pub fn log_tail(&self) -> String {
        format!(
            "{}\n{}",
            tail_file(&self.events, 40),
            self.process.log_tail(20)
        )
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
