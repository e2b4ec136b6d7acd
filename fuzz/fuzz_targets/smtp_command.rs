//! SMTP ingress commands (RFC 5321 sections 4.1.1, 4.1.2 and 4.2): the command parser, the
//! ESMTP parameter iterator and the session state machine fed arbitrary lines.
//!
//! Input: one flag byte, then a client stream cut into lines at CRLF as the listener does.
//! Flag bits: 0 = SOR listener, 1 = untrusted peer, 2 = `bare_newline = "normalize"`.
//!
//! Checked: nothing panics; every reply is well-formed (each line three digits, `-` or space,
//! text without CR or LF, CRLF-terminated, at most 512 octets; continuation lines share the code
//! of the line after them); a parsed path is ASCII and its mailbox splits into local part and
//! domain; an envelope handed out for queueing has one to `max_recipients` recipients and no
//! control characters.

#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::rc::Rc;

use libfuzzer_sys::fuzz_target;
use secmx::config::{Config, Role};
use secmx::envelope::{Envelope, QueueId};
use secmx::smtp::data::Feed;
use secmx::smtp::parser::{Command, Path, parameters, parse_command};
use secmx::smtp::policy::RecipientPolicy;
use secmx::smtp::server::SubmitError;
use secmx::smtp::session::{Action, Session};

/// Mirrors the listener's limit on a command line, CRLF included.
const MAX_COMMAND_LINE: usize = 512;

/// Longest reply line, CRLF included (RFC 5321 section 4.5.3.1.5).
const MAX_REPLY_LINE: usize = 512;

const CONFIG: &str = r#"
hostname = "mx.example.org"
data_dir = "/nonexistent/secmx-fuzz"

[[listener]]
address = "127.0.0.1:2525"

[relay]
local_domains = ["example.org"]
trusted_networks = ["127.0.0.0/8"]

[smtp]
max_recipients = 3
max_errors = 6
max_message_size = 2048
"#;

struct Fixture {
    reject: Rc<Config>,
    normalize: Rc<Config>,
    policy: RecipientPolicy,
}

thread_local! {
    static FIXTURE: Fixture = {
        let reject = Config::parse(CONFIG, "fuzz.toml", None).expect("the fuzz config is valid");
        let normalize_text = format!("{CONFIG}bare_newline = \"normalize\"\n");
        let normalize = Config::parse(&normalize_text, "fuzz.toml", None)
            .expect("the fuzz config is valid");
        let policy = RecipientPolicy::from_config(&reject).expect("no recipients files");
        Fixture {
            reject: Rc::new(reject),
            normalize: Rc::new(normalize),
            policy,
        }
    };
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, stream)) = data.split_first() else {
        return;
    };
    for line in stream.split(|&b| b == b'\n') {
        check_parser(line.strip_suffix(b"\r").unwrap_or(line));
    }
    FIXTURE.with(|fixture| run_session(fixture, flags, stream));
});

/// The parser alone: a parsed command is internally consistent.
fn check_parser(line: &[u8]) {
    let Ok(command) = parse_command(line) else {
        return;
    };
    match command {
        Command::Ehlo(name) | Command::Helo(name) => {
            assert!(!name.is_empty() && name.len() <= 255);
            assert!(name.bytes().all(|b| b.is_ascii_graphic()));
        }
        Command::Mail {
            reverse_path,
            params,
        } => {
            check_path(&reverse_path);
            assert!(!reverse_path.is_bare_postmaster());
            check_params(params);
        }
        Command::Rcpt {
            forward_path,
            params,
        } => {
            check_path(&forward_path);
            assert!(!forward_path.is_null());
            check_params(params);
        }
        _ => {}
    }
}

fn check_path(path: &Path<'_>) {
    let mailbox = path.mailbox();
    assert!(mailbox.is_ascii());
    assert!(mailbox.bytes().all(|b| b.is_ascii_graphic() || b == b' '));
    assert!(
        mailbox.len() <= 254,
        "path longer than 256 with <>: {mailbox:?}"
    );
    if path.is_null() || path.is_bare_postmaster() {
        assert!(path.domain().is_empty());
        return;
    }
    let domain = path.domain();
    assert!(!domain.is_empty(), "mailbox {mailbox:?} without domain");
    assert!(!domain.contains('@'), "domain {domain:?} holds an @");
    assert_eq!(
        format!("{}@{}", path.local_part(), domain),
        mailbox,
        "local part and domain do not make up the mailbox"
    );
}

fn check_params(params: &str) {
    assert!(!params.starts_with(' ') && !params.ends_with(' '));
    for param in parameters(params) {
        let Ok((keyword, value)) = param else {
            continue;
        };
        assert!(!keyword.is_empty() && keyword.bytes().all(|b| b.is_ascii_graphic()));
        if let Some(value) = value {
            assert!(!value.is_empty() && !value.contains('=') && !value.contains(' '));
        }
    }
}

/// The session, driven the way the listener drives it.
fn run_session(fixture: &Fixture, flags: u8, mut stream: &[u8]) {
    let role = match flags & 1 {
        0 => Role::BestEffortReceiver,
        _ => Role::SecureOnlyReceiver,
    };
    let peer = match flags & 2 {
        0 => IpAddr::V4(Ipv4Addr::LOCALHOST),
        _ => IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
    };
    let config = match flags & 4 {
        0 => &fixture.reject,
        _ => &fixture.normalize,
    };
    let mut session = Session::new(Rc::clone(config), role, peer);
    let mut out = Vec::new();
    session.greeting(&mut out);
    check_replies(&out);

    while let Some(len) = find_crlf(stream) {
        let line = &stream[..len];
        stream = &stream[len + 2..];
        out.clear();
        let action = if len + 2 > MAX_COMMAND_LINE {
            session.line_too_long(&mut out)
        } else {
            session.command(line, &fixture.policy, &mut out)
        };
        check_replies(&out);

        let action = match action {
            Action::EnterData => {
                let (action, rest) = receive_message(&mut session, stream);
                stream = rest;
                action
            }
            other => other,
        };
        match action {
            Action::Continue | Action::EnterData => {}
            Action::Quit => return,
            Action::StartTls => session.tls_started("TLSv1.3 TLS13_AES_128_GCM_SHA256".into()),
            Action::Submit(envelope) => {
                check_envelope(&envelope, config.smtp.max_recipients);
                out.clear();
                let result = match envelope.recipients.len() {
                    1 => Err(SubmitError::SpoolFull),
                    n => Ok(QueueId {
                        core: 0,
                        segment: n as u32,
                        offset: stream.len() as u64,
                    }),
                };
                session.submitted(result, &mut out);
                check_replies(&out);
            }
        }
    }
}

/// Decodes DATA until its end and lets the session judge it; returns what follows.
fn receive_message<'a>(session: &mut Session, stream: &'a [u8]) -> (Action, &'a [u8]) {
    let mut decoder = session.data_decoder();
    let mut body = session.received_header().into_bytes();
    match decoder.feed(stream, &mut body) {
        Feed::End { consumed } => {
            let mut out = Vec::new();
            let action = session.end_of_data(decoder.finish(), &mut out);
            match action {
                // The reply waits for the spool.
                Action::Submit(_) => assert!(out.is_empty()),
                _ => check_replies(&out),
            }
            (action, &stream[consumed..])
        }
        // The client never finished the message: the connection would time out.
        Feed::More => (Action::Quit, &[]),
    }
}

fn check_envelope(envelope: &Envelope, max_recipients: usize) {
    assert!(!envelope.recipients.is_empty());
    assert!(envelope.recipients.len() <= max_recipients);
    let printable = |s: &str| s.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
    assert!(printable(&envelope.reverse_path), "{envelope:?}");
    assert!(
        envelope.recipients.iter().all(|r| printable(r)),
        "{envelope:?}"
    );
    assert!(printable(&envelope.helo), "{envelope:?}");
}

fn find_crlf(bytes: &[u8]) -> Option<usize> {
    bytes.windows(2).position(|w| w == b"\r\n")
}

/// Every line of `out` is a well-formed reply line and the last one ends a reply.
fn check_replies(out: &[u8]) {
    assert!(!out.is_empty(), "no reply");
    assert!(out.ends_with(b"\r\n"), "reply not CRLF-terminated: {out:?}");
    let lines: Vec<&[u8]> = out[..out.len() - 2].split(|&b| b == b'\n').collect();
    for (i, line) in lines.iter().enumerate() {
        let line = match i + 1 == lines.len() {
            true => *line,
            false => line
                .strip_suffix(b"\r")
                .unwrap_or_else(|| panic!("bare LF in reply: {out:?}")),
        };
        assert!(!line.contains(&b'\r'), "bare CR in reply: {out:?}");
        assert!(
            line.len() + 2 <= MAX_REPLY_LINE,
            "reply line too long: {out:?}"
        );
        let [a, b, c, sep, ..] = line else {
            panic!("reply line too short: {out:?}");
        };
        assert!((b'2'..=b'5').contains(a) && b.is_ascii_digit() && c.is_ascii_digit());
        let last = i + 1 == lines.len();
        match sep {
            b' ' => {}
            b'-' => {
                assert!(!last, "reply ends on a continuation line: {out:?}");
                assert_eq!(
                    lines[i + 1].get(..3),
                    Some(&line[..3]),
                    "mixed codes: {out:?}"
                );
            }
            _ => panic!("no separator after the code: {out:?}"),
        }
    }
}
