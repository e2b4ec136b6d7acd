//! A `secmx serve` gateway against receivers and DNS servers that fail: refused connections,
//! resets in the middle of DATA, 421 greetings, 4xx and 5xx replies at MAIL, RCPT, DATA and
//! the end of data, certificates that do not verify, SERVFAIL and silent DNS servers.
//!
//! What must hold (RFC 5321 4.2.5, 4.5.4.1, 6.1; RFC 3463; RFC 3464): a temporary failure is
//! retried and the message delivered once the peer behaves, never twice; a permanent one
//! bounces the recipients it concerns, with a DSN naming the reply; another candidate is tried
//! when a host cannot take the mail; a secure-only destination is never weakened, whether by
//! a DNS failure or a receiver that cannot be verified.
//!
//! Each test owns the block `127.77.<block>.0/24` (blocks 60 to 79): the DNS server on `.53`,
//! the gateway on `.10`, receivers from `.25` on.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::dns_front::{DnsFront, UdpQuery};
use common::receiver::{Script, ScriptedReceiver};
use common::*;

/// Port of every receiver, and the gateway's `outbound.smtp_port`.
const SMTP_PORT: u16 = 2525;

/// `domain` with an MX record for each `(preference, host)`, the host at `127.77.<block>.<host>`
/// and named `mx<host>.<domain>`.
fn mx_zone(block: u8, domain: &str, hosts: &[(u16, u8)]) -> Vec<String> {
    let mut records = Vec::new();
    for &(preference, host) in hosts {
        records.push(format!(
            "{domain}. 300 IN MX {preference} mx{host}.{domain}."
        ));
        records.push(format!("mx{host}.{domain}. 300 IN A {}", ip(block, host)));
    }
    records
}

fn as_strs(records: &[String]) -> Vec<&str> {
    records.iter().map(String::as_str).collect()
}

fn dns(dir: &TempDir, block: u8, records: &[String]) -> Unbound {
    Unbound::start(dir.path(), ip(block, 53), &as_strs(records))
}

/// The sending gateway on `127.77.<block>.10:2525`, `a.test` local so that DSNs to
/// alice@a.test land in the returned Maildir.
fn gateway(
    dir: &TempDir,
    block: u8,
    nameserver: SocketAddr,
    mode: &str,
    tweak: impl FnOnce(SecmxConfig) -> SecmxConfig,
) -> (Secmx, Maildir) {
    let dsn_box = Maildir::new(&dir.join("mail-a"));
    let config = SecmxConfig::new("gw.a.test", nameserver)
        .listener(addr(block, 10, 2525), "ber")
        .maildir_domain("a.test", dsn_box.root())
        .set(&["outbound", "mode"], mode)
        .set(&["outbound", "smtp_port"], i64::from(SMTP_PORT));
    let secmx = Secmx::start(dir.path(), "gateway", tweak(config));
    (secmx, dsn_box)
}

fn receiver(dir: &TempDir, name: &str, block: u8, host: u8, script: Script) -> ScriptedReceiver {
    ScriptedReceiver::start(dir.path(), name, &[addr(block, host, SMTP_PORT)], script)
}

/// The gateway's events of kind `message` about `recipient`.
fn events_for(gateway: &Secmx, message: &str, recipient: &str) -> Vec<String> {
    let field = format!("recipient=\"{recipient}\"");
    gateway
        .events(message)
        .into_iter()
        .filter(|line| line.contains(&field))
        .collect()
}

/// Waits until `recipient` was deferred `count` times; returns those events.
fn wait_for_deferrals(gateway: &Secmx, recipient: &str, count: usize) -> Vec<String> {
    wait_until(
        &format!("{count} deferrals of {recipient}"),
        WAIT,
        || gateway.log_tail(),
        || {
            let lines = events_for(gateway, "deferred", recipient);
            (lines.len() >= count).then_some(lines)
        },
    )
}

/// `text` with LF line ends and folded lines joined: a line break followed by white space
/// becomes one space (RFC 5322 2.2.3).
fn unfold(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.replace("\r\n", "\n").split('\n') {
        if line.starts_with([' ', '\t']) {
            out.push(' ');
            out.push_str(line.trim_start());
        } else {
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(line);
        }
    }
    out
}

/// The per-recipient part of a DSN's delivery report for `recipient`, unfolded.
fn dsn_group(dsn: &str, recipient: &str) -> Option<String> {
    let dsn = unfold(dsn);
    let start = dsn.find(&format!("Final-Recipient: rfc822; {recipient}\n"))?;
    let rest = &dsn[start..];
    let end = rest.find("\n\n").unwrap_or(rest.len());
    Some(rest[..end].to_string())
}

/// Asserts the DSN reports `recipient` as failed with `status`, the receiver's `reply` as the
/// diagnostic code (RFC 3464 2.3.6) and `host` as the remote MTA, and that its human-readable
/// part says which host gave which reply.
fn assert_dsn_names(dsn: &str, recipient: &str, status: &str, host: &str, reply: &str) {
    let group = dsn_group(dsn, recipient)
        .unwrap_or_else(|| panic!("the DSN reports no failure for {recipient}\n{dsn}"));
    assert!(group.contains(&format!("Status: {status}\n")), "{group}");
    assert!(
        group.contains(&format!("Remote-MTA: dns; {host}\n")),
        "{group}"
    );
    assert!(
        group.contains(&format!("Diagnostic-Code: smtp; {reply}")),
        "the diagnostic code is the receiver's reply\n{group}"
    );
    let notice = format!("<{recipient}>: host {host} said: {reply}");
    assert!(
        unfold(dsn).contains(&notice),
        "the notification says `{notice}`\n{dsn}"
    );
}

// ---------------------------------------------------------------------------------------------
// Connection-level failures

#[test]
fn refused_connections_are_deferred_and_retried_until_the_receiver_listens() {
    let dir = TempDir::new("refused");
    let dns = dns(&dir, 60, &mx_zone(60, "refused.test", &[(10, 25)]));
    let (gateway, dsn_box) = gateway(&dir, 60, dns.address(), "best-effort", |c| c);

    submit(
        gateway.address(),
        "alice@a.test",
        "bob@refused.test",
        "refused",
    );

    for line in wait_for_deferrals(&gateway, "bob@refused.test", 2) {
        assert!(line.contains("status=4.4.1"), "{line}");
    }
    let mx = receiver(&dir, "mx", 60, 25, Script::new());
    let messages = mx.wait_for_messages(1, || gateway.log_tail());
    gateway.wait_for_event("delivered", "bob@refused.test");
    assert_eq!(messages.len(), 1, "{messages:#?}");
    assert!(
        gateway.events("bounced").is_empty(),
        "{}",
        gateway.log_tail()
    );
    assert!(dsn_box.messages("alice").is_empty());
}

#[test]
fn reset_in_the_middle_of_data_is_deferred_and_the_message_delivered_once_later() {
    let dir = TempDir::new("reset");
    let dns = dns(&dir, 61, &mx_zone(61, "reset.test", &[(10, 25)]));
    let script = Script::new().reset_in_data().misbehave_times(1);
    let mx = receiver(&dir, "mx", 61, 25, script);
    let (gateway, _) = gateway(&dir, 61, dns.address(), "best-effort", |c| c);

    submit(gateway.address(), "alice@a.test", "bob@reset.test", "reset");

    let messages = mx.wait_for_messages(1, || gateway.log_tail());
    gateway.wait_for_event("delivered", "bob@reset.test");
    let deferred = events_for(&gateway, "deferred", "bob@reset.test");
    assert_eq!(deferred.len(), 1, "{deferred:#?}");
    assert!(deferred[0].contains("status=4.4.2"), "{}", deferred[0]);
    assert_eq!(mx.events_of("reset").len(), 1, "{}", mx.log_tail());
    assert_eq!(messages.len(), 1, "delivered once: {messages:#?}");
    assert_eq!(
        events_for(&gateway, "delivered", "bob@reset.test").len(),
        1,
        "{}",
        gateway.log_tail()
    );
}

#[test]
fn greeting_421_sends_the_mail_to_the_next_mx_within_the_same_attempt() {
    let dir = TempDir::new("greeting-next");
    let dns = dns(&dir, 62, &mx_zone(62, "busy.test", &[(10, 25), (20, 26)]));
    let busy = receiver(
        &dir,
        "busy",
        62,
        25,
        Script::new().greeting("421 4.3.2 too busy"),
    );
    let backup = receiver(&dir, "backup", 62, 26, Script::new());
    let (gateway, _) = gateway(&dir, 62, dns.address(), "best-effort", |c| c);

    submit(
        gateway.address(),
        "alice@a.test",
        "bob@busy.test",
        "greeting-next",
    );

    backup.wait_for_messages(1, || gateway.log_tail());
    let delivered = gateway.wait_for_event("delivered", "bob@busy.test");
    assert!(delivered.contains("mx26.busy.test"), "{delivered}");
    assert!(busy.connections() >= 1, "the preferred MX was tried first");
    assert!(busy.messages().is_empty());
    assert!(
        gateway.events("deferred").is_empty(),
        "{}",
        gateway.log_tail()
    );
}

#[test]
fn greeting_421_at_the_only_mx_defers_until_it_greets_with_220() {
    let dir = TempDir::new("greeting-only");
    let dns = dns(&dir, 63, &mx_zone(63, "busy.test", &[(10, 25)]));
    let script = Script::new()
        .greeting("421 4.3.2 too busy")
        .misbehave_times(2);
    let mx = receiver(&dir, "mx", 63, 25, script);
    let (gateway, dsn_box) = gateway(&dir, 63, dns.address(), "best-effort", |c| c);

    submit(
        gateway.address(),
        "alice@a.test",
        "bob@busy.test",
        "greeting-only",
    );

    let messages = mx.wait_for_messages(1, || gateway.log_tail());
    gateway.wait_for_event("delivered", "bob@busy.test");
    let deferred = events_for(&gateway, "deferred", "bob@busy.test");
    assert_eq!(deferred.len(), 2, "{deferred:#?}");
    for line in &deferred {
        assert!(line.contains("status=4.3.2"), "{line}");
        assert!(line.contains("421 4.3.2 too busy"), "{line}");
    }
    assert_eq!(messages.len(), 1);
    assert!(dsn_box.messages("alice").is_empty());
}

// ---------------------------------------------------------------------------------------------
// Replies to MAIL, RCPT, DATA and the end of data

/// The parts of a test, kept alive while it checks the outcome.
struct Refusal {
    _dir: TempDir,
    _dns: Unbound,
    gateway: Secmx,
    mx: ScriptedReceiver,
    dsn_box: Maildir,
}

/// One message to bob@`label`.test through a receiver answering `stage` with `reply` once,
/// waiting for the outcome: delivered on retry for a 4xx, bounced for a 5xx.
fn refused_once(label: &str, block: u8, stage: &str, reply: &str) -> Refusal {
    let dir = TempDir::new(label);
    let domain = format!("{label}.test");
    let dns = dns(&dir, block, &mx_zone(block, &domain, &[(10, 25)]));
    let script = Script::new().reply(stage, reply).misbehave_times(1);
    let mx = receiver(&dir, "mx", block, 25, script);
    let (gateway, dsn_box) = gateway(&dir, block, dns.address(), "best-effort", |c| c);
    let recipient = format!("bob@{domain}");

    submit(gateway.address(), "alice@a.test", &recipient, label);

    if reply.starts_with('4') {
        gateway.wait_for_event("delivered", &recipient);
    } else {
        gateway.wait_for_event("bounced", &recipient);
        dsn_box.wait_for("alice", 1, &[&gateway]);
    }
    Refusal {
        _dir: dir,
        _dns: dns,
        gateway,
        mx,
        dsn_box,
    }
}

/// A 4xx at `stage`: deferred with the reply's status, delivered once on the retry.
fn assert_deferred_then_delivered(label: &str, block: u8, stage: &str, reply: &str) {
    let outcome = refused_once(label, block, stage, reply);
    let Refusal {
        gateway,
        mx,
        dsn_box,
        ..
    } = &outcome;
    let recipient = format!("bob@{label}.test");
    let status = reply.split(' ').nth(1).expect("an enhanced status code");

    let deferred = events_for(gateway, "deferred", &recipient);
    assert_eq!(deferred.len(), 1, "{deferred:#?}");
    assert!(
        deferred[0].contains(&format!("status={status}")),
        "{}",
        deferred[0]
    );
    assert!(
        deferred[0].contains(reply),
        "the reason quotes the reply: {}",
        deferred[0]
    );
    let messages = mx.messages();
    assert_eq!(messages.len(), 1, "delivered once: {messages:#?}");
    assert_eq!(messages[0].recipients, [recipient.as_str()]);
    assert!(
        gateway.events("bounced").is_empty(),
        "{}",
        gateway.log_tail()
    );
    assert!(dsn_box.messages("alice").is_empty());
}

/// A 5xx at `stage`: bounced at once with a DSN naming the reply, never retried.
fn assert_bounced_with_dsn(label: &str, block: u8, stage: &str, reply: &str) {
    let outcome = refused_once(label, block, stage, reply);
    let Refusal {
        gateway,
        mx,
        dsn_box,
        ..
    } = &outcome;
    let recipient = format!("bob@{label}.test");
    let status = reply.split(' ').nth(1).expect("an enhanced status code");

    let dsns = dsn_box.messages("alice");
    assert_eq!(dsns.len(), 1, "{dsns:#?}");
    assert_dsn_names(
        &dsns[0],
        &recipient,
        status,
        &format!("mx25.{label}.test"),
        reply,
    );
    assert!(
        gateway.events("deferred").is_empty(),
        "{}",
        gateway.log_tail()
    );
    assert!(mx.messages().is_empty(), "{}", mx.log_tail());
}

#[test]
fn mail_from_4xx_is_deferred_and_delivered_on_retry() {
    assert_deferred_then_delivered("mail4xx", 64, "mail", "451 4.3.0 try again later");
}

#[test]
fn mail_from_5xx_bounces_with_a_dsn_naming_the_reply() {
    assert_bounced_with_dsn("mail5xx", 65, "mail", "550 5.7.1 sender refused by policy");
}

#[test]
fn data_4xx_is_deferred_and_delivered_on_retry() {
    assert_deferred_then_delivered("data4xx", 67, "data", "451 4.3.0 queue full");
}

#[test]
fn data_5xx_bounces_with_a_dsn_naming_the_reply() {
    assert_bounced_with_dsn("data5xx", 68, "data", "554 5.7.0 transaction refused");
}

#[test]
fn end_of_data_4xx_is_deferred_and_delivered_on_retry() {
    assert_deferred_then_delivered("dot4xx", 69, "dot", "452 4.3.1 insufficient system storage");
}

#[test]
fn end_of_data_5xx_bounces_with_a_dsn_naming_the_reply() {
    assert_bounced_with_dsn("dot5xx", 70, "dot", "552 5.3.4 message too big for system");
}

#[test]
fn rcpt_replies_decide_each_recipient_alone_retry_the_4xx_bounce_the_5xx() {
    let dir = TempDir::new("rcpt");
    let dns = dns(&dir, 66, &mx_zone(66, "rcpt.test", &[(10, 25)]));
    let script = Script::new()
        .rcpt_reply("busy@rcpt.test", "452 4.2.2 mailbox busy")
        .rcpt_reply("gone@rcpt.test", "550 5.1.1 no such user")
        .misbehave_times(1);
    let mx = receiver(&dir, "mx", 66, 25, script);
    let (gateway, dsn_box) = gateway(&dir, 66, dns.address(), "best-effort", |c| c);

    submit(
        gateway.address(),
        "alice@a.test",
        "ok@rcpt.test,busy@rcpt.test,gone@rcpt.test",
        "rcpt",
    );

    let messages = mx.wait_for_messages(2, || gateway.log_tail());
    gateway.wait_for_event("delivered", "busy@rcpt.test");
    assert_eq!(messages.len(), 2, "{messages:#?}");
    assert_eq!(messages[0].recipients, ["ok@rcpt.test"]);
    assert_eq!(messages[1].recipients, ["busy@rcpt.test"]);

    let deferred = events_for(&gateway, "deferred", "busy@rcpt.test");
    assert_eq!(deferred.len(), 1, "{deferred:#?}");
    assert!(deferred[0].contains("status=4.2.2"), "{}", deferred[0]);
    assert_eq!(events_for(&gateway, "delivered", "ok@rcpt.test").len(), 1);
    assert!(events_for(&gateway, "deferred", "ok@rcpt.test").is_empty());

    let dsns = dsn_box.wait_for("alice", 1, &[&gateway]);
    assert_eq!(dsns.len(), 1, "{dsns:#?}");
    assert_dsn_names(
        &dsns[0],
        "gone@rcpt.test",
        "5.1.1",
        "mx25.rcpt.test",
        "550 5.1.1 no such user",
    );
    for delivered in ["ok@rcpt.test", "busy@rcpt.test"] {
        assert!(
            dsn_group(&dsns[0], delivered).is_none(),
            "the DSN reports only the failed recipient\n{}",
            dsns[0]
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Certificates that do not verify

/// A CA the gateway does not trust, with its own directory.
fn rogue_ca(dir: &TempDir) -> TestCa {
    let rogue_dir = dir.join("rogue");
    std::fs::create_dir_all(&rogue_dir).expect("rogue CA directory");
    TestCa::new(&rogue_dir)
}

#[test]
fn sos_skips_an_mx_whose_certificate_does_not_verify_and_delivers_to_the_next_one() {
    let dir = TempDir::new("sos-bad-cert");
    let ca = TestCa::new(dir.path());
    let rogue = rogue_ca(&dir);
    let dns = dns(&dir, 71, &mx_zone(71, "certs.test", &[(10, 25), (20, 26)]));
    let untrusted = Script::new().tls(&rogue.issue("mx25.certs.test"));
    let first = receiver(&dir, "untrusted", 71, 25, untrusted);
    let trusted = Script::new().tls(&ca.issue("mx26.certs.test"));
    let second = receiver(&dir, "trusted", 71, 26, trusted);
    let (gateway, _) = gateway(&dir, 71, dns.address(), "secure-only", |c| {
        c.ca_file(ca.ca_file())
    });

    submit(
        gateway.address(),
        "alice@a.test",
        "bob@certs.test",
        "sos-bad-cert",
    );

    let messages = second.wait_for_messages(1, || gateway.log_tail());
    assert_ne!(messages[0].tls, "none");
    let delivered = gateway.wait_for_event("delivered", "bob@certs.test");
    assert!(delivered.contains("mx26.certs.test"), "{delivered}");
    assert!(delivered.contains(" verified"), "{delivered}");
    first.wait_for_event("tls-failed", || gateway.log_tail());
    assert!(
        !first.commands().iter().any(|c| c.starts_with("MAIL")),
        "nothing sent to the unverified MX\n{}",
        first.log_tail()
    );
    assert!(
        gateway.events("deferred").is_empty(),
        "{}",
        gateway.log_tail()
    );
}

#[test]
fn bes_delivers_over_unverified_tls_to_an_mx_whose_certificate_does_not_verify() {
    let dir = TempDir::new("bes-bad-cert");
    let ca = TestCa::new(dir.path());
    let rogue = rogue_ca(&dir);
    let dns = dns(&dir, 72, &mx_zone(72, "certs.test", &[(10, 25)]));
    let untrusted = Script::new().tls(&rogue.issue("mx25.certs.test"));
    let mx = receiver(&dir, "untrusted", 72, 25, untrusted);
    let (gateway, _) = gateway(&dir, 72, dns.address(), "best-effort", |c| {
        c.ca_file(ca.ca_file())
    });

    submit(
        gateway.address(),
        "alice@a.test",
        "bob@certs.test",
        "bes-bad-cert",
    );

    let messages = mx.wait_for_messages(1, || gateway.log_tail());
    assert_ne!(messages[0].tls, "none", "TLS, though unauthenticated");
    let delivered = gateway.wait_for_event("delivered", "bob@certs.test");
    assert!(delivered.contains("unverified"), "{delivered}");
}

// ---------------------------------------------------------------------------------------------
// Broken DNS

/// Lines making unbound answer SERVFAIL for every name under `zone`: the zone is resolved by
/// forwarding to an address unbound may not query, so it fails at once and sends nothing.
fn servfail_for(zone: &str) -> String {
    format!(
        "    local-zone: \"{zone}\" transparent\n\
         \x20   do-not-query-address: 127.0.0.254\n\
         forward-zone:\n\
         \x20   name: \"{zone}\"\n\
         \x20   forward-addr: 127.0.0.254\n"
    )
}

#[test]
fn servfail_for_the_srv_lookup_defers_secure_only_mail_and_never_touches_the_mx() {
    let dir = TempDir::new("servfail-srv");
    let records = mx_zone(73, "sec.test", &[(10, 25)]);
    let extra = servfail_for("_secmx._tcp.sec.test.");
    let dns = Unbound::start_with(dir.path(), ip(73, 53), &as_strs(&records), &extra);
    let mx = receiver(&dir, "plaintext-mx", 73, 25, Script::new());
    let (gateway, dsn_box) = gateway(&dir, 73, dns.address(), "best-effort", |c| {
        c.set(&["outbound", "domains", "sec.test", "mode"], "secure-only")
    });

    submit(
        gateway.address(),
        "alice@a.test",
        "bob@sec.test",
        "servfail-srv",
    );

    for line in wait_for_deferrals(&gateway, "bob@sec.test", 3) {
        assert!(line.contains("status=4.4.3"), "{line}");
    }
    assert!(
        gateway.events("bounced").is_empty(),
        "{}",
        gateway.log_tail()
    );
    assert!(dsn_box.messages("alice").is_empty());
    assert_eq!(mx.connections(), 0, "{}", mx.log_tail());
}

#[test]
fn servfail_for_the_srv_targets_address_defers_secure_only_mail_instead_of_using_the_mx() {
    let dir = TempDir::new("servfail-target");
    let mut records = mx_zone(74, "sec.test", &[(10, 25)]);
    records.push("_secmx._tcp.sec.test. 300 IN SRV 10 10 2600 secmail.broken.sec.test.".into());
    let extra = servfail_for("broken.sec.test.");
    let dns = Unbound::start_with(dir.path(), ip(74, 53), &as_strs(&records), &extra);
    let mx = receiver(&dir, "plaintext-mx", 74, 25, Script::new());
    let (gateway, dsn_box) = gateway(&dir, 74, dns.address(), "secure-only", |c| c);

    submit(
        gateway.address(),
        "alice@a.test",
        "bob@sec.test",
        "servfail-target",
    );

    for line in wait_for_deferrals(&gateway, "bob@sec.test", 3) {
        assert!(line.contains("status=4.4.3"), "{line}");
    }
    assert!(
        gateway.events("bounced").is_empty(),
        "{}",
        gateway.log_tail()
    );
    assert!(dsn_box.messages("alice").is_empty());
    assert!(
        !mx.commands().iter().any(|c| c.starts_with("MAIL")),
        "nothing sent in clear\n{}",
        mx.log_tail()
    );
    assert!(mx.messages().is_empty());
}

#[test]
fn dns_timeouts_for_the_srv_lookup_defer_secure_only_mail_until_the_dns_answers() {
    let dir = TempDir::new("timeout-srv");
    let ca = TestCa::new(dir.path());
    let dns = dns(&dir, 75, &mx_zone(75, "slow.test", &[(10, 25)]));
    // The front drops every `_secmx._tcp` question while `silent` is set.
    let silent = Arc::new(AtomicBool::new(true));
    let script = {
        let silent = Arc::clone(&silent);
        Arc::new(move |query: &UdpQuery<'_>| {
            if !(silent.load(Ordering::SeqCst) && query.name().starts_with("_secmx._tcp.")) {
                query.relay();
            }
        })
    };
    let front = DnsFront::start(addr(75, 54, 0), dns.address(), script);
    let mx = receiver(
        &dir,
        "mx",
        75,
        25,
        Script::new().tls(&ca.issue("mx25.slow.test")),
    );
    let (gateway, dsn_box) = gateway(&dir, 75, front.address(), "secure-only", |c| {
        c.ca_file(ca.ca_file())
    });

    submit(
        gateway.address(),
        "alice@a.test",
        "bob@slow.test",
        "timeout-srv",
    );

    for line in wait_for_deferrals(&gateway, "bob@slow.test", 2) {
        assert!(line.contains("status=4.4.3"), "{line}");
    }
    assert_eq!(
        mx.connections(),
        0,
        "no fallback to the MX while the SRV lookup times out"
    );
    silent.store(false, Ordering::SeqCst);

    let messages = mx.wait_for_messages(1, || gateway.log_tail());
    assert_ne!(messages[0].tls, "none");
    let delivered = gateway.wait_for_event("delivered", "bob@slow.test");
    assert!(delivered.contains(" verified"), "{delivered}");
    assert!(
        gateway.events("bounced").is_empty(),
        "{}",
        gateway.log_tail()
    );
    assert!(dsn_box.messages("alice").is_empty());
}

#[test]
fn a_silent_dns_server_defers_mail_and_never_bounces_it() {
    let dir = TempDir::new("timeout-all");
    let dns = dns(&dir, 76, &mx_zone(76, "silent.test", &[(10, 25)]));
    let front = DnsFront::start(
        addr(76, 54, 0),
        dns.address(),
        Arc::new(|_: &UdpQuery<'_>| {}),
    );
    let mx = receiver(&dir, "mx", 76, 25, Script::new());
    let (gateway, dsn_box) = gateway(&dir, 76, front.address(), "best-effort", |c| c);

    submit(
        gateway.address(),
        "alice@a.test",
        "bob@silent.test",
        "timeout-all",
    );

    for line in wait_for_deferrals(&gateway, "bob@silent.test", 2) {
        assert!(line.contains("status=4.4.3"), "{line}");
    }
    assert!(
        gateway.events("bounced").is_empty(),
        "{}",
        gateway.log_tail()
    );
    assert!(dsn_box.messages("alice").is_empty());
    assert_eq!(mx.connections(), 0);
    assert!(
        !front.seen().is_empty(),
        "the queries reached the silent server"
    );
}
