//! Egress: SecMX discovery (`_secmx._tcp` SRV in RFC 2782 order, then MX, RFC 5321 section 5.1)
//! and the secure-only (SOS) and best-effort (BES) sender policies, against a real DNS server,
//! a second secmx as the SecMX receiver and smtp-sink as a plaintext-only MX.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn sos_delivers_over_verified_tls_to_the_srv_target_on_the_port_of_the_srv_record() {
    let dir = TempDir::new("sos-srv");
    let ca = TestCa::new(dir.path());
    let leaf = ca.issue("secmail.b.test");
    let dns = Unbound::start(
        dir.path(),
        ip(3, 53),
        &[
            "_secmx._tcp.b.test. 300 IN SRV 10 10 2600 secmail.b.test.",
            "secmail.b.test. 300 IN A 127.77.3.20",
        ],
    );
    let mail_b = Maildir::new(&dir.join("mail-b"));
    let receiver = Secmx::start(
        dir.path(),
        "receiver",
        SecmxConfig::new("secmail.b.test", dns.address())
            .listener(addr(3, 20, 2600), "sor")
            .certificate(&leaf)
            .maildir_domain("b.test", mail_b.root()),
    );
    let sender = Secmx::start(
        dir.path(),
        "sender",
        SecmxConfig::new("gw.a.test", dns.address())
            .listener(addr(3, 10, 2525), "ber")
            .ca_file(ca.ca_file())
            .set(&["outbound", "mode"], "secure-only")
            .set(&["outbound", "smtp_port"], 2525),
    );

    submit(
        sender.address(),
        "alice@a.test",
        "carol@b.test",
        "sos-over-srv",
    );

    let messages = mail_b.wait_for("carol", 1, &[&sender, &receiver]);
    let message = with_subject(&messages, "sos-over-srv");
    let received = first_header(message, "Received").expect("a Received header");
    assert!(received.contains("with ESMTPS"), "{received}");
    sender.wait_for_event("delivered", "carol@b.test");
}

#[test]
fn sos_does_not_deliver_to_an_srv_target_whose_certificate_names_another_host() {
    let dir = TempDir::new("sos-wrong-name");
    let ca = TestCa::new(dir.path());
    let impostor = ca.issue("impostor.d.test");
    let dns = Unbound::start(
        dir.path(),
        ip(11, 53),
        &[
            "_secmx._tcp.d.test. 300 IN SRV 10 10 2600 secmail.d.test.",
            "secmail.d.test. 300 IN A 127.77.11.20",
        ],
    );
    let mail_d = Maildir::new(&dir.join("mail-d"));
    let receiver = Secmx::start(
        dir.path(),
        "receiver",
        SecmxConfig::new("secmail.d.test", dns.address())
            .listener(addr(11, 20, 2600), "sor")
            .certificate(&impostor)
            .maildir_domain("d.test", mail_d.root()),
    );
    let sender = Secmx::start(
        dir.path(),
        "sender",
        SecmxConfig::new("gw.a.test", dns.address())
            .listener(addr(11, 10, 2525), "ber")
            .ca_file(ca.ca_file())
            .set(&["outbound", "mode"], "secure-only"),
    );

    submit(
        sender.address(),
        "alice@a.test",
        "erin@d.test",
        "sos-name-mismatch",
    );

    // A failed certificate check is a deferral (4.7.x), retried until the queue lifetime ends.
    let deferred = sender.wait_for_event("deferred", "erin@d.test");
    assert!(deferred.contains("4.7."), "{deferred}");
    assert!(
        mail_d.messages("erin").is_empty(),
        "{}",
        receiver.log_tail()
    );
}

/// `plain.test` has only an MX, served by smtp-sink, which offers no STARTTLS.
fn plaintext_mx_zone(block: u8) -> Vec<String> {
    vec![
        "plain.test. 300 IN MX 10 mx.plain.test.".to_string(),
        format!("mx.plain.test. 300 IN A {}", ip(block, 25)),
    ]
}

fn as_strs(records: &[String]) -> Vec<&str> {
    records.iter().map(String::as_str).collect()
}

#[test]
fn sos_bounces_mail_for_a_domain_with_only_a_plaintext_mx_with_a_5_7_dsn_to_the_sender() {
    let dir = TempDir::new("sos-bounce");
    let zone = plaintext_mx_zone(4);
    let dns = Unbound::start(dir.path(), ip(4, 53), &as_strs(&zone));
    let sink = SmtpSink::start(dir.path(), "mx", addr(4, 25, 2525));
    let mail_a = Maildir::new(&dir.join("mail-a"));
    let sender = Secmx::start(
        dir.path(),
        "sender",
        SecmxConfig::new("gw.a.test", dns.address())
            .listener(addr(4, 10, 2525), "ber")
            .maildir_domain("a.test", mail_a.root())
            .set(&["outbound", "mode"], "secure-only")
            .set(&["outbound", "smtp_port"], 2525),
    );

    submit(
        sender.address(),
        "alice@a.test",
        "bob@plain.test",
        "sos-to-plaintext-mx",
    );

    let dsns = mail_a.wait_for("alice", 1, &[&sender]);
    let dsn = &dsns[0];
    assert!(
        dsn.lines().any(|l| l.starts_with("Status: 5.7.")),
        "the DSN gives a 5.7.x status\n{dsn}"
    );
    assert!(
        dsn.contains("bob@plain.test"),
        "the DSN names the recipient\n{dsn}"
    );
    sender.wait_for_event("bounced", "bob@plain.test");
    assert_eq!(
        sink.count(),
        0,
        "nothing went to the plaintext MX: {:#?}",
        sink.messages()
    );
}

#[test]
fn bes_delivers_in_plaintext_to_an_mx_that_offers_no_starttls() {
    let dir = TempDir::new("bes-plain");
    let zone = plaintext_mx_zone(5);
    let dns = Unbound::start(dir.path(), ip(5, 53), &as_strs(&zone));
    let sink = SmtpSink::start(dir.path(), "mx", addr(5, 25, 2525));
    let sender = Secmx::start(
        dir.path(),
        "sender",
        SecmxConfig::new("gw.a.test", dns.address())
            .listener(addr(5, 10, 2525), "ber")
            .set(&["outbound", "mode"], "best-effort")
            .set(&["outbound", "smtp_port"], 2525),
    );

    submit(
        sender.address(),
        "alice@a.test",
        "bob@plain.test",
        "bes-to-plaintext-mx",
    );

    let dump = wait_until(
        "the message in smtp-sink's dump directory",
        WAIT,
        || sender.log_tail(),
        || {
            sink.messages()
                .into_iter()
                .find(|m| m.contains("Subject: bes-to-plaintext-mx"))
        },
    );
    assert!(dump.contains("X-Rcpt-Args: <bob@plain.test>"), "{dump}");
    sender.wait_for_event("delivered", "bob@plain.test");
}

/// Messages sent through the SRV weighting test.
const WEIGHTED_MESSAGES: usize = 40;

#[test]
fn bes_prefers_srv_targets_over_the_mx_and_follows_srv_priorities_and_weights() {
    let dir = TempDir::new("srv-weights");
    let dns = Unbound::start(
        dir.path(),
        ip(6, 53),
        &[
            "_secmx._tcp.w.test. 300 IN SRV 5 10 2600 down.w.test.",
            "_secmx._tcp.w.test. 300 IN SRV 10 60 2600 heavy.w.test.",
            "_secmx._tcp.w.test. 300 IN SRV 10 40 2600 light.w.test.",
            "_secmx._tcp.w.test. 300 IN SRV 20 10 2600 backup.w.test.",
            "down.w.test. 300 IN A 127.77.6.50",
            "heavy.w.test. 300 IN A 127.77.6.60",
            "light.w.test. 300 IN A 127.77.6.40",
            "backup.w.test. 300 IN A 127.77.6.20",
            "w.test. 300 IN MX 10 mx.w.test.",
            "mx.w.test. 300 IN A 127.77.6.25",
        ],
    );
    let heavy = SmtpSink::start(dir.path(), "heavy", addr(6, 60, 2600));
    let light = SmtpSink::start(dir.path(), "light", addr(6, 40, 2600));
    let backup = SmtpSink::start(dir.path(), "backup", addr(6, 20, 2600));
    let mx = SmtpSink::start(dir.path(), "mx", addr(6, 25, 2525));
    // One message per connection, so every message gets its own walk of the SRV list.
    let sender = Secmx::start(
        dir.path(),
        "sender",
        SecmxConfig::new("gw.a.test", dns.address())
            .listener(addr(6, 10, 2525), "ber")
            .set(&["outbound", "mode"], "best-effort")
            .set(&["outbound", "smtp_port"], 2525)
            .set(&["outbound", "max_messages_per_connection"], 1),
    );

    let sent = python(
        "send_messages.py",
        &[
            &ip(6, 10).to_string(),
            "2525",
            "alice@a.test",
            "bob@w.test",
            &WEIGHTED_MESSAGES.to_string(),
            "weighted",
        ],
        Duration::from_secs(120),
    );
    assert_eq!(
        sent.code,
        Some(0),
        "{}\n{}",
        sent.transcript(),
        sender.log_tail()
    );

    let sinks = [&heavy, &light, &backup, &mx];
    let counts = wait_until(
        &format!("{WEIGHTED_MESSAGES} messages at the receivers"),
        Duration::from_secs(90),
        || sender.log_tail(),
        || {
            let counts: Vec<usize> = sinks.iter().map(|s| s.count()).collect();
            (counts.iter().sum::<usize>() >= WEIGHTED_MESSAGES).then_some(counts)
        },
    );
    let [heavy_count, light_count, backup_count, mx_count] = counts[..] else {
        unreachable!()
    };
    let summary = format!(
        "heavy (weight 60): {heavy_count}, light (weight 40): {light_count}, \
         priority 20: {backup_count}, MX: {mx_count}"
    );
    eprintln!("{summary}");
    assert_eq!(backup_count, 0, "{summary}");
    assert_eq!(mx_count, 0, "{summary}");
    assert_eq!(heavy_count + light_count, WEIGHTED_MESSAGES, "{summary}");
    // With weights 60/40 the heavy target's count is Binomial(40, 0.6). The bounds below fail a
    // correct implementation with probability about 8e-8 (P(X < 8) = 4.4e-8, P(X > 38) =
    // 3.7e-8); they catch a sender that ignores weights by always taking one target.
    assert!((8..=38).contains(&heavy_count), "{summary}");
    assert!(light_count >= 1, "{summary}");
}
