//! Client sessions against scripted servers and against Postfix's smtp-sink.

use std::net::TcpListener;
use std::process::{Child, Command};
use std::time::Duration;

use super::test_peer::{TempDir, greet, run, serve, settings};
use super::*;
use crate::smtp::reply::Status;

fn no_tls() -> ClientTls {
    crate::tls::client_configs(None, false).unwrap()
}

fn recipients(list: &[&str]) -> Vec<String> {
    list.iter().map(|r| r.to_string()).collect()
}

async fn open_plain(addr: SocketAddr) -> Result<Connection, AttemptError> {
    Connection::open(
        addr,
        "mx.test.example",
        TlsPolicy::Disabled,
        &no_tls(),
        &settings(),
    )
    .await
}

fn codes(results: &[RecipientResult]) -> Vec<(char, u16)> {
    results
        .iter()
        .map(|result| match result {
            RecipientResult::Accepted(r) => ('A', r.code),
            RecipientResult::Transient(r) => ('T', r.code),
            RecipientResult::Permanent(r) => ('P', r.code),
        })
        .collect()
}

#[test]
fn pipelined_envelope_goes_out_before_any_reply_and_replies_are_read_in_order() {
    let (addr, server) = serve(|peer| {
        greet(peer, &["PIPELINING", "SIZE 1000000", "8BITMIME"]);
        // Every command arrives before the first reply is sent: a client waiting for the
        // MAIL reply would stall here until the peer times out.
        let mail = peer.expect("MAIL FROM:<>");
        let rcpt1 = peer.expect("RCPT TO:");
        let rcpt2 = peer.expect("RCPT TO:");
        peer.expect("DATA");
        peer.send("250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 no such user\r\n354 go ahead\r\n");
        let content = peer.data();
        peer.send("250 2.0.0 queued as 1234\r\n");
        peer.expect("QUIT");
        peer.send("221 2.0.0 bye\r\n");
        (mail, rcpt1, rcpt2, content)
    });

    let body = "Subject: caf\u{e9}\r\n\r\nhello\r\n".as_bytes().to_vec();
    let body_len = body.len();
    let results = run(async move {
        let mut connection = open_plain(addr).await.unwrap();
        assert!(connection.extensions().pipelining);
        let rcpts = recipients(&["bob@example.org", "nouser@example.org"]);
        let results = connection.send("", &rcpts, &body).await.unwrap();
        assert_eq!(connection.messages_sent(), 1);
        connection.quit().await;
        results
    });

    let (mail, rcpt1, rcpt2, content) = server.join().unwrap();
    assert_eq!(mail, format!("MAIL FROM:<> SIZE={body_len} BODY=8BITMIME"));
    assert_eq!(rcpt1, "RCPT TO:<bob@example.org>");
    assert_eq!(rcpt2, "RCPT TO:<nouser@example.org>");
    assert_eq!(
        content,
        "Subject: caf\u{e9}\r\n\r\nhello\r\n.\r\n".as_bytes()
    );
    assert_eq!(codes(&results), [('A', 250), ('P', 550)]);
    assert_eq!(results[0].reply().text, "queued as 1234");
    assert_eq!(results[1].reply().status, Some(Status::new(5, 1, 1)));
}

#[test]
fn stepwise_transaction_reports_each_recipient_and_applies_final_reply_to_accepted_ones() {
    let (addr, server) = serve(|peer| {
        greet(peer, &["8BITMIME"]);
        let mail = peer.expect("MAIL FROM:<alice@example.net>");
        peer.send("250 ok\r\n");
        peer.expect("RCPT TO:<a@example.org>");
        peer.send("451 4.3.0 try later\r\n");
        peer.expect("RCPT TO:<b@example.org>");
        peer.send("250 ok\r\n");
        peer.expect("RCPT TO:<c@example.org>");
        peer.send("550 5.1.1 unknown\r\n");
        peer.expect("DATA");
        peer.send("354 go ahead\r\n");
        peer.data();
        peer.send("452 4.3.1 insufficient storage\r\n");
        mail
    });

    let results = run(async move {
        let mut connection = open_plain(addr).await.unwrap();
        let rcpts = recipients(&["a@example.org", "b@example.org", "c@example.org"]);
        let results = connection
            .send("alice@example.net", &rcpts, b"ascii\r\n")
            .await
            .unwrap();
        assert_eq!(connection.messages_sent(), 0);
        results
    });

    let mail = server.join().unwrap();
    assert_eq!(
        mail, "MAIL FROM:<alice@example.net>",
        "no SIZE, no BODY for ASCII"
    );
    assert_eq!(codes(&results), [('T', 451), ('T', 452), ('P', 550)]);
}

#[test]
fn transaction_without_accepted_recipient_is_reset_instead_of_sending_data() {
    let (addr, server) = serve(|peer| {
        greet(peer, &[]);
        peer.expect("MAIL FROM:");
        peer.send("250 ok\r\n");
        peer.expect("RCPT TO:");
        peer.send("550 5.1.1 unknown\r\n");
        let next = peer.line();
        peer.send("250 2.0.0 reset\r\n");
        next
    });

    let results = run(async move {
        let mut connection = open_plain(addr).await.unwrap();
        let rcpts = recipients(&["nouser@example.org"]);
        connection
            .send("a@example.net", &rcpts, b"x\r\n")
            .await
            .unwrap()
    });

    assert_eq!(server.join().unwrap(), "RSET");
    assert_eq!(codes(&results), [('P', 550)]);
}

#[test]
fn pipelined_transaction_without_accepted_recipient_resets_after_refused_data() {
    let (addr, server) = serve(|peer| {
        greet(peer, &["PIPELINING"]);
        peer.expect("MAIL FROM:");
        peer.expect("RCPT TO:");
        peer.expect("DATA");
        peer.send("250 ok\r\n450 4.2.1 mailbox busy\r\n554 5.5.1 no valid recipients\r\n");
        let next = peer.line();
        peer.send("250 ok\r\n");
        next
    });

    let results = run(async move {
        let mut connection = open_plain(addr).await.unwrap();
        let rcpts = recipients(&["busy@example.org"]);
        connection
            .send("a@example.net", &rcpts, b"x\r\n")
            .await
            .unwrap()
    });

    assert_eq!(server.join().unwrap(), "RSET");
    assert_eq!(codes(&results), [('T', 450)]);
}

#[test]
fn refused_mail_from_fails_the_transaction_with_its_reply() {
    let (addr, _server) = serve(|peer| {
        greet(peer, &[]);
        peer.expect("MAIL FROM:");
        peer.send("550 5.7.1 sender refused\r\n");
    });

    let error = run(async move {
        let mut connection = open_plain(addr).await.unwrap();
        let rcpts = recipients(&["bob@example.org"]);
        connection
            .send("spam@example.net", &rcpts, b"x\r\n")
            .await
            .unwrap_err()
    });

    assert!(
        matches!(
            error,
            AttemptError::Rejected {
                stage: "MAIL FROM",
                ..
            }
        ),
        "{error}"
    );
    assert!(!error.is_transient());
    assert_eq!(error.status(), Status::new(5, 7, 1));
    assert_eq!(
        error.to_string(),
        "550 5.7.1 sender refused (in reply to MAIL FROM)"
    );
}

#[test]
fn content_is_dot_stuffed_and_given_a_final_line_end() {
    let (addr, server) = serve(|peer| {
        greet(peer, &[]);
        peer.expect("MAIL FROM:");
        peer.send("250 ok\r\n");
        peer.expect("RCPT TO:");
        peer.send("250 ok\r\n");
        peer.expect("DATA");
        peer.send("354 go ahead\r\n");
        let content = peer.data();
        peer.send("250 ok\r\n");
        peer.expect("RSET");
        peer.send("250 ok\r\n");
        content
    });

    run(async move {
        let mut connection = open_plain(addr).await.unwrap();
        let rcpts = recipients(&["bob@example.org"]);
        let body = b"Subject: dots\r\n\r\n.\r\n..two\r\nmid.dle\r\n.last";
        let results = connection
            .send("a@example.net", &rcpts, body)
            .await
            .unwrap();
        assert_eq!(codes(&results), [('A', 250)]);
        connection.reset().await.unwrap();
    });

    let content = server.join().unwrap();
    assert_eq!(
        content,
        b"Subject: dots\r\n\r\n..\r\n...two\r\nmid.dle\r\n..last\r\n.\r\n"
    );
}

#[test]
fn quoted_local_parts_are_sent_unchanged() {
    let (addr, server) = serve(|peer| {
        greet(peer, &[]);
        let mail = peer.expect("MAIL FROM:");
        peer.send("250 ok\r\n");
        let rcpt = peer.expect("RCPT TO:");
        peer.send("550 no\r\n");
        peer.expect("RSET");
        peer.send("250 ok\r\n");
        (mail, rcpt)
    });

    run(async move {
        let mut connection = open_plain(addr).await.unwrap();
        let rcpts = recipients(&[r#""a\"b@c"@example.org"#]);
        connection
            .send(r#""x >y"@example.net"#, &rcpts, b"x\r\n")
            .await
            .unwrap();
    });

    let (mail, rcpt) = server.join().unwrap();
    assert_eq!(mail, r#"MAIL FROM:<"x >y"@example.net>"#);
    assert_eq!(rcpt, r#"RCPT TO:<"a\"b@c"@example.org>"#);
}

#[test]
fn mailbox_with_line_break_is_refused_before_anything_is_sent() {
    let (addr, server) = serve(|peer| {
        greet(peer, &["PIPELINING"]);
        peer.line()
    });

    run(async move {
        let mut connection = open_plain(addr).await.unwrap();
        let rcpts = recipients(&["b@example.org>\r\nRCPT TO:<c@example.org"]);
        let error = connection
            .send("a@example.net", &rcpts, b"x\r\n")
            .await
            .unwrap_err();
        assert!(matches!(error, AttemptError::Protocol(_)), "{error}");
        connection.quit().await;
    });

    assert_eq!(server.join().unwrap(), "QUIT");
}

#[test]
fn ehlo_refused_permanently_falls_back_to_helo_without_extensions() {
    let (addr, _server) = serve(|peer| {
        peer.send("220 old.test.example SMTP\r\n");
        peer.expect("EHLO client.test.example");
        peer.send("502 5.5.1 command not implemented\r\n");
        peer.expect("HELO client.test.example");
        peer.send("250 old.test.example\r\n");
    });

    let extensions = run(async move { open_plain(addr).await.unwrap().extensions().clone() });
    assert_eq!(extensions, protocol::Extensions::default());
}

#[test]
fn refusing_greeting_is_reported_with_its_reply() {
    let (addr, server) = serve(|peer| {
        peer.send("554 5.3.2 no service here\r\n");
        peer.line()
    });

    let error = run(async move { open_plain(addr).await.unwrap_err() });
    assert!(
        matches!(&error, AttemptError::Greeting(reply) if reply.code == 554),
        "{error}"
    );
    assert!(!error.is_transient());
    assert_eq!(server.join().unwrap(), "QUIT");
}

#[test]
fn garbage_instead_of_a_greeting_is_a_protocol_error() {
    let (addr, _server) = serve(|peer| peer.send("SSH-2.0-OpenSSH_9.6\r\n"));
    let error = run(async move { open_plain(addr).await.unwrap_err() });
    assert!(matches!(error, AttemptError::Protocol(_)), "{error}");
    assert!(error.is_transient());
}

#[test]
fn silent_server_times_out_in_the_greeting_stage() {
    let (addr, server) = serve(|peer| peer.line());
    let error = run(async move {
        let mut settings = settings();
        settings.command_timeout = Duration::from_millis(200);
        Connection::open(addr, "mx", TlsPolicy::Disabled, &no_tls(), &settings)
            .await
            .unwrap_err()
    });
    assert!(
        matches!(error, AttemptError::Timeout("greeting")),
        "{error}"
    );
    assert_eq!(error.status(), Status::new(4, 4, 2));
    drop(server.join());
}

#[test]
fn refused_connection_is_a_transient_connect_error_naming_host() {
    let addr = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let error = run(async move { open_plain(addr).await.unwrap_err() });
    assert!(matches!(error, AttemptError::Connect(_)), "{error}");
    assert!(error.is_transient());
    assert_eq!(error.status(), Status::new(4, 4, 1));
    let shown = error.at("mx.test.example", addr).to_string();
    assert!(shown.starts_with(&format!("mx.test.example[127.0.0.1]:{}: ", addr.port())));
}

#[test]
fn service_closing_reply_mid_session_ends_the_transaction() {
    let (addr, _server) = serve(|peer| {
        greet(peer, &["PIPELINING"]);
        peer.expect("MAIL FROM:");
        peer.send("421 4.3.2 shutting down\r\n");
    });

    let error = run(async move {
        let mut connection = open_plain(addr).await.unwrap();
        let rcpts = recipients(&["a@example.org", "b@example.org"]);
        connection
            .send("x@example.net", &rcpts, b"x\r\n")
            .await
            .unwrap_err()
    });
    assert!(matches!(&error, AttemptError::Rejected { reply, .. } if reply.code == 421));
    assert!(error.is_transient());
}

/// Postfix's smtp-sink, listening on a free loopback port, stopped on drop.
struct SmtpSink {
    child: Child,
    addr: SocketAddr,
    dump: TempDir,
}

impl SmtpSink {
    fn start() -> SmtpSink {
        // smtp-sink drops privileges to nobody when started as root and must write its dumps.
        let dump = TempDir::new("smtp-sink");
        std::fs::set_permissions(&dump.0, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .unwrap();
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut command = Command::new("/usr/sbin/smtp-sink");
        command.arg("-d").arg(dump.0.join("msg."));
        if nix_is_root() {
            command.args(["-u", "nobody"]);
        }
        let child = command
            .args([
                "-h",
                "sink.test.example",
                &format!("127.0.0.1:{}", addr.port()),
                "10",
            ])
            .spawn()
            .expect("smtp-sink from the postfix package must be installed");
        let sink = SmtpSink { child, addr, dump };
        for _ in 0..100 {
            if std::net::TcpStream::connect(addr).is_ok() {
                return sink;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("smtp-sink did not listen on {addr}");
    }

    fn dumps(&self) -> Vec<String> {
        let mut files: Vec<_> = std::fs::read_dir(&self.dump.0)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| {
                path.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("msg.")
            })
            .collect();
        files.sort();
        files
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn postfix_smtp_sink_accepts_two_pipelined_messages_on_one_connection() {
    let sink = SmtpSink::start();
    let addr = sink.addr;

    run(async move {
        let mut connection = open_plain(addr).await.unwrap();
        assert!(
            connection.extensions().pipelining,
            "smtp-sink offers PIPELINING"
        );

        let rcpts = recipients(&["bob@example.org", "alice@example.org"]);
        let body = b"Subject: one\r\n\r\n.leading dot\r\nend";
        let results = connection
            .send("sender@example.net", &rcpts, body)
            .await
            .unwrap();
        assert_eq!(codes(&results), [('A', 250), ('A', 250)]);

        connection.reset().await.unwrap();
        let rcpts = recipients(&["carol@example.org"]);
        let results = connection
            .send("", &rcpts, b"Subject: two\r\n\r\nx\r\n")
            .await
            .unwrap();
        assert_eq!(codes(&results), [('A', 250)]);
        assert_eq!(connection.messages_sent(), 2);
        connection.quit().await;
    });

    let dumps = sink.dumps();
    assert_eq!(dumps.len(), 2, "{dumps:?}");
    let (first, second) = if dumps[0].contains("Subject: one") {
        (&dumps[0], &dumps[1])
    } else {
        (&dumps[1], &dumps[0])
    };
    // smtp-sink writes what it received after undoing the dot-stuffing, with LF line ends.
    assert!(
        first.contains("X-Mail-Args: <sender@example.net>"),
        "{first}"
    );
    assert!(
        first.contains("X-Rcpt-Args: <alice@example.org>"),
        "{first}"
    );
    assert!(first.contains("\n.leading dot\nend\n"), "{first:?}");
    assert!(second.contains("X-Mail-Args: <>"), "{second}");
}

#[test]
fn connection_out_of_step_after_a_timeout_refuses_further_commands() {
    let (addr, server) = serve(|peer| {
        greet(peer, &[]);
        peer.expect("MAIL FROM:");
        // No reply: the client times out. Then the late reply arrives.
        let late = peer.line();
        peer.send("250 late reply to MAIL\r\n");
        late
    });

    run(async move {
        let mut settings = settings();
        settings.command_timeout = Duration::from_millis(300);
        let mut connection =
            Connection::open(addr, "mx", TlsPolicy::Disabled, &no_tls(), &settings)
                .await
                .unwrap();
        let rcpts = recipients(&["b@example.org"]);
        let error = connection
            .send("a@example.net", &rcpts, b"x\r\n")
            .await
            .unwrap_err();
        assert!(
            matches!(error, AttemptError::Timeout("MAIL FROM")),
            "{error}"
        );

        let error = connection.reset().await.unwrap_err();
        assert!(matches!(error, AttemptError::Io(_)), "{error}");
        let error = connection
            .send("a@example.net", &rcpts, b"x\r\n")
            .await
            .unwrap_err();
        assert!(matches!(error, AttemptError::Io(_)), "{error}");
        connection.quit().await;
    });

    assert_eq!(
        server.join().unwrap(),
        "QUIT",
        "nothing but QUIT after the timeout"
    );
}

#[test]
fn positive_reply_to_data_other_than_354_is_a_protocol_error() {
    let (addr, _server) = serve(|peer| {
        greet(peer, &["PIPELINING"]);
        peer.expect("MAIL FROM:");
        peer.expect("RCPT TO:");
        peer.expect("DATA");
        peer.send("250 ok\r\n250 ok\r\n250 sure\r\n");
    });

    let error = run(async move {
        let mut connection = open_plain(addr).await.unwrap();
        let rcpts = recipients(&["b@example.org"]);
        connection
            .send("a@example.net", &rcpts, b"x\r\n")
            .await
            .unwrap_err()
    });
    assert!(matches!(error, AttemptError::Protocol(_)), "{error}");
}
