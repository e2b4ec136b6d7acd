//! Ingress: the secure-only receiver (SOR) and best-effort receiver (BER) listener roles of
//! SecMX (RFC 3207 STARTTLS), and relay control, driven by real SMTP clients.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;

/// Parses the `STEP CODE TEXT` lines `sor_client.py` prints.
fn steps(output: &str) -> HashMap<String, (u16, String)> {
    output
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ' ');
            let step = parts.next()?.to_string();
            let code = parts.next()?.parse().ok()?;
            Some((step, (code, parts.next().unwrap_or("").to_string())))
        })
        .collect()
}

#[test]
fn sor_refuses_mail_in_plaintext_with_530_and_accepts_it_after_starttls() {
    let dir = TempDir::new("sor");
    let maildir = Maildir::new(&dir.join("mail"));
    let listener = addr(1, 10, 2525);
    let secmx = Secmx::start(
        dir.path(),
        "sor",
        SecmxConfig::new("sor.a.test", addr(1, 53, 53))
            .listener(listener, "sor")
            .maildir_domain("a.test", maildir.root()),
    );

    let out = python(
        "sor_client.py",
        &[
            &listener.ip().to_string(),
            &listener.port().to_string(),
            "alice@client.test",
            "bob@a.test",
            "sor-after-starttls",
        ],
        Duration::from_secs(60),
    );
    let context = format!("{}\n{}", out.transcript(), secmx.log_tail());
    assert_eq!(out.code, Some(0), "{context}");
    let steps = steps(&out.stdout);
    let step = |name: &str| {
        steps
            .get(name)
            .cloned()
            .unwrap_or_else(|| panic!("no step `{name}`\n{context}"))
    };

    let (code, text) = step("mail-plain");
    assert!(
        code == 530 && text.starts_with("5.7.0"),
        "MAIL in plaintext: {code} {text}\n{context}"
    );
    for name in ["rcpt-plain", "data-plain"] {
        let (code, text) = step(name);
        assert!(
            (500..600).contains(&code),
            "{name}: {code} {text}\n{context}"
        );
    }
    assert_eq!(step("starttls").0, 220, "{context}");
    for name in ["mail-tls", "rcpt-tls", "data-tls"] {
        let (code, text) = step(name);
        assert_eq!(code, 250, "{name}: {code} {text}\n{context}");
    }

    let messages = maildir.wait_for("bob", 1, &[&secmx]);
    assert_eq!(
        messages.len(),
        1,
        "only the TLS transaction is queued: {messages:#?}"
    );
    let message = with_subject(&messages, "sor-after-starttls");
    let received = first_header(message, "Received").expect("a Received header");
    assert!(received.contains("with ESMTPS"), "{received}");
    assert_eq!(
        secmx.events("received").len(),
        1,
        "exactly one message is received\n{}",
        secmx.log_tail()
    );
}

#[test]
fn ber_accepts_mail_in_plaintext_and_after_starttls_and_marks_the_tls_one_esmtps() {
    let dir = TempDir::new("ber");
    let maildir = Maildir::new(&dir.join("mail"));
    let listener = addr(2, 10, 2525);
    let secmx = Secmx::start(
        dir.path(),
        "ber",
        SecmxConfig::new("ber.a.test", addr(2, 53, 53))
            .listener(listener, "ber")
            .maildir_domain("a.test", maildir.root()),
    );

    submit(listener, "alice@client.test", "bob@a.test", "ber-plaintext");
    let tls = swaks(
        listener,
        &[
            "--tls",
            "--from",
            "alice@client.test",
            "--to",
            "bob@a.test",
            "--header",
            "Subject: ber-starttls",
        ],
    );
    assert_eq!(tls.code, Some(0), "swaks --tls\n{}", tls.transcript());
    assert!(tls.stdout.contains("TLS started"), "{}", tls.transcript());

    let messages = maildir.wait_for("bob", 2, &[&secmx]);
    assert_eq!(messages.len(), 2, "{messages:#?}");
    let plaintext = with_subject(&messages, "ber-plaintext");
    let received = first_header(plaintext, "Received").expect("a Received header");
    assert!(
        received.contains("with ESMTP") && !received.contains("ESMTPS"),
        "plaintext: {received}"
    );
    let starttls = with_subject(&messages, "ber-starttls");
    let received = first_header(starttls, "Received").expect("a Received header");
    assert!(received.contains("with ESMTPS"), "STARTTLS: {received}");
    for message in &messages {
        assert!(message.starts_with("Return-Path:"), "{message}");
        assert!(
            first_header(message, "Delivered-To").is_some_and(|h| h.contains("bob@a.test")),
            "{message}"
        );
    }
}

/// A reply line swaks printed for a refused command: `<** 550 5.7.1 ...` (or 554, `-` form).
fn refused_with_5_7_1(swaks_stdout: &str) -> bool {
    swaks_stdout.lines().any(|line| {
        let reply = line.trim_start_matches("<** ");
        line.starts_with("<** ")
            && (reply.starts_with("550") || reply.starts_with("554"))
            && reply[3..]
                .trim_start_matches(['-', ' '])
                .starts_with("5.7.1")
    })
}

#[test]
fn relay_from_an_untrusted_address_to_a_foreign_domain_is_refused_and_nothing_is_queued() {
    let dir = TempDir::new("relay");
    let maildir = Maildir::new(&dir.join("mail"));
    let listener = addr(8, 10, 2525);
    let untrusted = ip(8, 66).to_string();
    let secmx = Secmx::start(
        dir.path(),
        "relay",
        SecmxConfig::new("gw.a.test", addr(8, 53, 53))
            .listener(listener, "ber")
            .maildir_domain("a.test", maildir.root())
            .trusted_networks(&["127.77.8.1/32"]),
    );

    let relay = swaks(
        listener,
        &[
            "--local-interface",
            &untrusted,
            "--from",
            "mallory@client.test",
            "--to",
            "victim@elsewhere.test",
            "--header",
            "Subject: relay-attempt",
        ],
    );
    assert_ne!(
        relay.code,
        Some(0),
        "relay accepted\n{}",
        relay.transcript()
    );
    assert!(
        refused_with_5_7_1(&relay.stdout),
        "expected 550/554 5.7.1\n{}",
        relay.transcript()
    );

    // Local mail from the same untrusted address is still accepted: once it is in the Maildir,
    // the log shows every message this daemon took in.
    let local = swaks(
        listener,
        &[
            "--local-interface",
            &untrusted,
            "--from",
            "mallory@client.test",
            "--to",
            "bob@a.test",
            "--header",
            "Subject: local-from-untrusted",
        ],
    );
    assert_eq!(local.code, Some(0), "{}", local.transcript());
    let messages = maildir.wait_for("bob", 1, &[&secmx]);
    with_subject(&messages, "local-from-untrusted");

    let received = secmx.events("received");
    assert_eq!(
        received.len(),
        1,
        "only the local message is queued: {received:#?}"
    );
    for event in ["received", "delivered", "deferred", "bounced"] {
        let lines = secmx.events(event);
        assert!(
            !lines.iter().any(|l| l.contains("elsewhere.test")),
            "the refused relay was queued: {lines:#?}"
        );
    }
}
