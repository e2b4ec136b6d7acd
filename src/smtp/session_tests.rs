//! Specification of the session state machine, command by command.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::smtp::data::DataError;

static FIXTURES: AtomicUsize = AtomicUsize::new(0);

/// A session against the fixture of the replay cases: example.org local with a recipients file,
/// nothing trusted, 100 recipients per transaction.
struct Harness {
    session: Session,
    policy: RecipientPolicy,
    dir: PathBuf,
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn harness_with(role: Role, extra: &str) -> Harness {
    let n = FIXTURES.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("secmx-session-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut list = String::from("bob@example.org\nalice@example.org\npostmaster@example.org\n");
    for i in 1..=150 {
        list.push_str(&format!("member{i:03}@example.org\n"));
    }
    std::fs::write(dir.join("recipients"), list).unwrap();
    let text = format!(
        "hostname = \"mx.example.org\"\ndata_dir = \"{}\"\n\
         [[listener]]\naddress = \"127.0.0.1:2525\"\n\
         [relay]\nlocal_domains = [\"example.org\"]\ntrusted_networks = []\n\
         [routes.\"example.org\"]\nrecipients = \"recipients\"\n\
         [smtp]\nmax_message_size = 10000\n{extra}",
        dir.display()
    );
    let config = Rc::new(Config::parse(&text, "test.toml", None).unwrap());
    let policy = RecipientPolicy::from_config(&config).unwrap();
    let session = Session::new(config, role, "192.0.2.10".parse().unwrap());
    Harness {
        session,
        policy,
        dir,
    }
}

fn harness() -> Harness {
    harness_with(Role::BestEffortReceiver, "")
}

impl Harness {
    fn send(&mut self, line: &str) -> (String, Action) {
        let mut out = Vec::new();
        let action = self
            .session
            .command(line.as_bytes(), &self.policy, &mut out);
        (String::from_utf8(out).unwrap(), action)
    }

    /// The reply text to `line`, asserting the session carries on.
    fn reply(&mut self, line: &str) -> String {
        let (reply, action) = self.send(line);
        assert!(
            matches!(action, Action::Continue | Action::EnterData),
            "{line}: {action:?}"
        );
        reply
    }

    fn transaction(&mut self) {
        assert!(self.reply("EHLO client.example").starts_with("250"));
        assert!(
            self.reply("MAIL FROM:<alice@example.net>")
                .starts_with("250 2.1.0")
        );
        assert!(
            self.reply("RCPT TO:<bob@example.org>")
                .starts_with("250 2.1.5")
        );
    }

    fn end(&mut self, verdict: Result<u64, DataError>) -> (String, Action) {
        let mut out = Vec::new();
        let action = self.session.end_of_data(verdict, &mut out);
        (String::from_utf8(out).unwrap(), action)
    }
}

#[test]
fn greeting_names_the_host() {
    let h = harness();
    let mut out = Vec::new();
    h.session.greeting(&mut out);
    assert_eq!(out, b"220 mx.example.org ESMTP secmx\r\n");
}

#[test]
fn ehlo_advertises_extensions_and_starttls_only_before_tls() {
    let mut h = harness();
    assert_eq!(
        h.reply("EHLO client.example"),
        "250-mx.example.org\r\n250-PIPELINING\r\n250-SIZE 10000\r\n250-8BITMIME\r\n\
         250-ENHANCEDSTATUSCODES\r\n250 STARTTLS\r\n"
    );
    h.session
        .tls_started("TLSv1.3 TLS13_AES_128_GCM_SHA256".into());
    let after = h.reply("EHLO client.example");
    assert!(!after.contains("STARTTLS"), "{after}");
    assert!(after.ends_with("250 ENHANCEDSTATUSCODES\r\n"), "{after}");
}

#[test]
fn helo_gets_a_single_line() {
    let mut h = harness();
    assert_eq!(h.reply("HELO client.example"), "250 mx.example.org\r\n");
}

#[test]
fn mail_before_hello_is_a_bad_sequence() {
    let mut h = harness();
    assert!(
        h.reply("MAIL FROM:<a@example.net>")
            .starts_with("503 5.5.1")
    );
}

#[test]
fn a_complete_transaction_submits_the_envelope_and_reports_the_queue_id() {
    let mut h = harness();
    h.transaction();
    assert!(
        h.reply(r#"RCPT TO:<"a\"b@c"@example.org>"#)
            .starts_with("550 5.1.1")
    );
    assert!(
        h.reply("RCPT TO:<member150@example.org>")
            .starts_with("250")
    );
    let (reply, action) = h.send("DATA");
    assert_eq!(
        (reply.as_str(), action),
        ("354 End data with <CR><LF>.<CR><LF>\r\n", Action::EnterData)
    );

    let (reply, action) = h.end(Ok(42));
    assert_eq!(reply, "");
    let Action::Submit(envelope) = action else {
        panic!("{action:?}")
    };
    assert_eq!(envelope.reverse_path, "alice@example.net");
    assert_eq!(
        envelope.recipients,
        ["bob@example.org", "member150@example.org"]
    );
    assert_eq!(envelope.peer, "192.0.2.10");
    assert_eq!(envelope.helo, "client.example");
    assert_eq!(envelope.tls, "none");

    let mut out = Vec::new();
    let queue_id = QueueId {
        core: 1,
        segment: 2,
        offset: 3,
    };
    h.session.submitted(Ok(queue_id), &mut out);
    assert_eq!(out, b"250 2.0.0 Ok: queued as 0100000200000003\r\n");
    // The transaction is over: a new one needs MAIL.
    assert!(
        h.reply("RCPT TO:<bob@example.org>")
            .starts_with("503 5.5.1")
    );
}

#[test]
fn spool_failures_are_temporary() {
    let mut h = harness();
    let mut out = Vec::new();
    h.session.submitted(Err(SubmitError::SpoolFull), &mut out);
    assert!(out.starts_with(b"452 4.3.1 "));
    out.clear();
    h.session
        .submitted(Err(SubmitError::Unavailable("disk".into())), &mut out);
    assert!(out.starts_with(b"451 4.3.0 "));
}

#[test]
fn refused_message_is_answered_once_and_ends_the_transaction() {
    let mut h = harness();
    h.transaction();
    h.send("DATA");
    let (reply, action) = h.end(Err(DataError::BareNewline));
    assert!(reply.starts_with("554 5.6.11"), "{reply}");
    assert_eq!(action, Action::Continue);
    assert!(h.reply("DATA").starts_with("503 5.5.1"));
}

#[test]
fn nested_mail_needs_rset() {
    let mut h = harness();
    h.transaction();
    assert!(
        h.reply("MAIL FROM:<b@example.net>")
            .starts_with("503 5.5.1")
    );
    assert!(h.reply("RSET").starts_with("250 2.0.0"));
    assert!(h.reply("MAIL FROM:<b@example.net>").starts_with("250"));
}

#[test]
fn rcpt_and_data_without_mail_are_bad_sequence() {
    let mut h = harness();
    h.reply("EHLO client.example");
    assert!(
        h.reply("RCPT TO:<bob@example.org>")
            .starts_with("503 5.5.1")
    );
    assert!(h.reply("DATA").starts_with("503 5.5.1"));
}

#[test]
fn data_after_every_recipient_was_refused_gets_554_no_valid_recipients() {
    let mut h = harness();
    h.reply("EHLO client.example");
    assert!(h.reply("MAIL FROM:<alice@example.net>").starts_with("250"));
    assert!(
        h.reply("RCPT TO:<nouser@example.org>")
            .starts_with("550 5.1.1")
    );
    assert!(
        h.reply("RCPT TO:<carol@example.net>")
            .starts_with("554 5.7.1")
    );
    let (reply, action) = h.send("DATA");
    assert!(reply.starts_with("554 5.5.1"), "{reply}");
    assert_eq!(action, Action::Continue);
}

#[test]
fn recipients_past_the_limit_get_452_and_do_not_count_as_errors() {
    let mut h = harness_with(Role::BestEffortReceiver, "max_errors = 2\n");
    h.reply("EHLO client.example");
    h.reply("MAIL FROM:<list-owner@example.net>");
    for i in 1..=100 {
        let reply = h.reply(&format!("RCPT TO:<member{i:03}@example.org>"));
        assert!(reply.starts_with("250 2.1.5"), "{i}: {reply}");
    }
    for i in 101..=110 {
        let reply = h.reply(&format!("RCPT TO:<member{i:03}@example.org>"));
        assert!(reply.starts_with("452 4.5.3"), "{i}: {reply}");
    }
    assert_eq!(h.send("DATA").1, Action::EnterData);
    let Action::Submit(envelope) = h.end(Ok(10)).1 else {
        panic!()
    };
    assert_eq!(envelope.recipients.len(), 100);
}

#[test]
fn mail_parameters_size_and_body() {
    let mut h = harness();
    h.reply("EHLO client.example");
    assert!(
        h.reply("MAIL FROM:<a@example.net> SIZE=10001")
            .starts_with("552 5.3.4")
    );
    assert!(
        h.reply("MAIL FROM:<a@example.net> SIZE=ten")
            .starts_with("501 5.5.4")
    );
    assert!(
        h.reply("MAIL FROM:<a@example.net> NOTIFY=NEVER")
            .starts_with("555 5.5.4")
    );
    assert!(
        h.reply("MAIL FROM:<a@example.net> BODY=BINARYMIME")
            .starts_with("555 5.5.4")
    );
    assert!(
        h.reply("MAIL FROM:<a@example.net> SIZE=10000 BODY=8BITMIME")
            .starts_with("250")
    );
    assert!(
        h.reply("RCPT TO:<bob@example.org> NOTIFY=SUCCESS")
            .starts_with("555 5.5.4")
    );
}

#[test]
fn null_reverse_path_is_accepted_and_null_forward_path_refused() {
    let mut h = harness();
    h.reply("EHLO client.example");
    assert!(
        h.reply("MAIL FROM:<> SIZE=512 BODY=7BIT")
            .starts_with("250")
    );
    assert!(h.reply("RCPT TO:<>").starts_with("501 5.5.4"));
    assert!(
        h.reply("RCPT TO:<postmaster@example.org>")
            .starts_with("250")
    );
    h.send("DATA");
    let Action::Submit(envelope) = h.end(Ok(0)).1 else {
        panic!()
    };
    assert!(envelope.is_null_sender());
}

#[test]
fn bare_postmaster_is_delivered_to_the_local_postmaster() {
    let mut h = harness();
    h.reply("EHLO client.example");
    h.reply("MAIL FROM:<a@example.net>");
    assert!(h.reply("RCPT TO:<Postmaster>").starts_with("250"));
    h.send("DATA");
    let Action::Submit(envelope) = h.end(Ok(0)).1 else {
        panic!()
    };
    assert_eq!(envelope.recipients, ["postmaster@example.org"]);
}

#[test]
fn quoted_local_part_is_never_relay() {
    let mut h = harness();
    h.reply("EHLO client.example");
    assert!(
        h.reply(r#"MAIL FROM:<"sender>odd"@example.net>"#)
            .starts_with("250")
    );
    let reply = h.reply(
        r#"RCPT TO:<"victim@example.net> NOTIFY=SUCCESS ORCPT=rfc822;spy@example.net"@example.org>"#,
    );
    assert!(reply.starts_with("550 5.1.1"), "{reply}");
    assert!(
        h.reply("RCPT TO:<victim@example.net>")
            .starts_with("554 5.7.1")
    );
}

#[test]
fn secure_only_receiver_refuses_mail_commands_before_tls() {
    let mut h = harness_with(Role::SecureOnlyReceiver, "");
    assert!(h.reply("EHLO client.example").contains("250 STARTTLS"));
    assert!(
        h.reply("MAIL FROM:<alice@example.net>")
            .starts_with("530 5.7.0")
    );
    assert!(
        h.reply("RCPT TO:<bob@example.org>")
            .starts_with("530 5.7.0")
    );
    assert!(h.reply("DATA").starts_with("530 5.7.0"));
    assert!(h.reply("NOOP").starts_with("250"));

    let (reply, action) = h.send("STARTTLS");
    assert_eq!(
        (reply.as_str(), action),
        ("220 2.0.0 Ready to start TLS\r\n", Action::StartTls)
    );
    h.session
        .tls_started("TLSv1.3 TLS13_AES_256_GCM_SHA384".into());
    h.transaction();
    assert_eq!(h.send("DATA").1, Action::EnterData);
    let Action::Submit(envelope) = h.end(Ok(1)).1 else {
        panic!()
    };
    assert_eq!(envelope.tls, "TLSv1.3 TLS13_AES_256_GCM_SHA384");
}

#[test]
fn starttls_forgets_the_greeting_and_the_transaction() {
    let mut h = harness();
    h.transaction();
    h.send("STARTTLS");
    h.session.tls_started("TLSv1.2 x".into());
    assert!(!h.session.has_helo());
    assert!(
        h.reply("MAIL FROM:<alice@example.net>")
            .starts_with("503 5.5.1")
    );
    h.reply("EHLO client.example");
    assert!(
        h.reply("RCPT TO:<bob@example.org>")
            .starts_with("503 5.5.1")
    );
    assert!(h.reply("STARTTLS").starts_with("503 5.5.1"));
}

#[test]
fn quit_vrfy_help_and_noop() {
    let mut h = harness();
    assert!(h.reply("VRFY bob").starts_with("252 2.5.0"));
    assert!(h.reply("HELP").starts_with("214 2.0.0"));
    assert!(h.reply("NOOP").starts_with("250 2.0.0"));
    let (reply, action) = h.send("QUIT");
    assert_eq!(reply, "221 2.0.0 mx.example.org closing connection\r\n");
    assert_eq!(action, Action::Quit);
}

#[test]
fn unknown_commands_and_syntax_errors() {
    let mut h = harness();
    assert!(h.reply("XYZZY").starts_with("500 5.5.2"));
    assert!(h.reply("BDAT 10 LAST").starts_with("502 5.5.1"));
    h.reply("EHLO client.example");
    assert!(
        h.reply("MAIL FROM:<a@b@example.org>")
            .starts_with("501 5.5.4")
    );
    assert!(
        h.reply("MAIL FROM:<jörg@example.org>")
            .starts_with("553 5.6.7")
    );
}

#[test]
fn too_many_errors_end_the_session_with_421() {
    let mut h = harness_with(Role::BestEffortReceiver, "max_errors = 3\n");
    for _ in 0..3 {
        assert_eq!(h.send("XYZZY").1, Action::Continue);
    }
    let (reply, action) = h.send("XYZZY");
    assert_eq!(action, Action::Quit);
    assert!(reply.starts_with("500 5.5.2"), "{reply}");
    assert!(reply.ends_with("421 4.7.0 mx.example.org Too many errors, closing connection\r\n"));
}

#[test]
fn over_long_command_line_gets_500_and_the_session_goes_on() {
    let mut h = harness();
    let mut out = Vec::new();
    assert_eq!(h.session.line_too_long(&mut out), Action::Continue);
    assert_eq!(out, b"500 5.5.2 Line too long\r\n");
    assert!(h.reply("NOOP").starts_with("250"));
}

#[test]
fn timeout_reply_is_421_4_4_2() {
    let h = harness();
    let mut out = Vec::new();
    h.session.timed_out(&mut out);
    assert!(out.starts_with(b"421 4.4.2 mx.example.org "));
}

#[test]
fn received_header_names_helo_peer_and_tls() {
    let mut h = harness();
    h.reply("EHLO client.example");
    let plain = h.session.received_header();
    assert!(
        plain.starts_with(
            "Received: from client.example ([192.0.2.10])\r\n\tby mx.example.org with ESMTP;\r\n\t"
        ),
        "{plain}"
    );
    assert!(plain.ends_with(" +0000\r\n"));
    h.session
        .tls_started("TLSv1.3 TLS13_AES_256_GCM_SHA384".into());
    h.reply("EHLO client.example");
    let secure = h.session.received_header();
    assert!(
        secure.contains("with ESMTPS (TLSv1.3 TLS13_AES_256_GCM_SHA384);"),
        "{secure}"
    );
}

#[test]
fn data_decoder_follows_the_configured_limits() {
    let h = harness();
    let mut decoder = h.session.data_decoder();
    let mut body = Vec::new();
    let big = vec![b'x'; 600].repeat(20);
    decoder.feed(&big, &mut body);
    decoder.feed(b"\r\n.\r\n", &mut body);
    assert_eq!(decoder.finish(), Err(DataError::TooBig));
}
