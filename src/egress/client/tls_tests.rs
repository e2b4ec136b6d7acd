//! STARTTLS under each policy against scripted servers with test certificates (cases C31, C32;
//! RFC 3207, RFC 6066 section 3, RFC 6125).

use std::sync::Arc;

use rustls::ServerConfig;

use super::test_peer::{Peer, TestPki, ehlo_reply, greet, run, serve, settings};
use super::*;
use crate::smtp::reply::Status;

const STARTTLS_EXTENSIONS: &[&str] = &["PIPELINING", "STARTTLS"];

/// Greets, offers STARTTLS, accepts it and runs the server side of the handshake; then, if it
/// succeeded, answers the second EHLO without STARTTLS and QUIT.
fn tls_session(peer: &mut Peer, config: Arc<ServerConfig>) -> Result<(), rustls::Error> {
    greet(peer, STARTTLS_EXTENSIONS);
    peer.expect("STARTTLS");
    peer.send("220 2.0.0 ready to start TLS\r\n");
    peer.start_tls(config)?;
    peer.expect("EHLO client.test.example");
    ehlo_reply(peer, &["PIPELINING", "SIZE 5000"]);
    peer.expect("QUIT");
    peer.send("221 bye\r\n");
    Ok(())
}

async fn open(
    addr: SocketAddr,
    host: &str,
    policy: TlsPolicy,
    tls: &ClientTls,
) -> Result<Connection, AttemptError> {
    Connection::open(addr, host, policy, tls, &settings()).await
}

#[test]
fn required_tls_verifies_the_mx_name_and_sends_it_as_sni_without_trailing_dot() {
    let pki = TestPki::new("tls-required");
    let config = pki.server_config(&["mx.test.example"]);
    let (addr, server) = serve(move |peer| {
        tls_session(peer, config).unwrap();
        peer.sni.clone()
    });

    let client_tls = pki.client_tls();
    let info = run(async move {
        let connection = open(addr, "MX.Test.Example.", TlsPolicy::Required, &client_tls)
            .await
            .unwrap();
        assert_eq!(connection.host(), "mx.test.example");
        assert_eq!(
            connection.extensions().size,
            Some(5000),
            "extensions of the second EHLO"
        );
        assert!(!connection.extensions().starttls);
        let info = connection.tls().cloned().unwrap();
        connection.quit().await;
        info
    });

    assert_eq!(server.join().unwrap().as_deref(), Some("mx.test.example"));
    assert!(info.verified);
    assert!(
        info.version == "TLSv1.3" || info.version == "TLSv1.2",
        "{info}"
    );
    assert!(info.to_string().ends_with(" verified"), "{info}");
    assert!(info.to_string().contains(&info.cipher));
}

#[test]
fn required_tls_to_an_address_literal_checks_the_address_and_sends_no_sni() {
    let pki = TestPki::new("tls-ip");
    let config = pki.server_config(&["127.0.0.1"]);
    let (addr, server) = serve(move |peer| {
        tls_session(peer, config).unwrap();
        peer.sni.clone()
    });

    let client_tls = pki.client_tls();
    let verified = run(async move {
        let connection = open(addr, "127.0.0.1", TlsPolicy::Required, &client_tls)
            .await
            .unwrap();
        let verified = connection.tls().unwrap().verified;
        connection.quit().await;
        verified
    });

    assert!(verified);
    assert_eq!(server.join().unwrap(), None);
}

#[test]
fn required_tls_refuses_a_certificate_for_another_name() {
    let pki = TestPki::new("tls-wrong-name");
    let config = pki.server_config(&["*.hosting.example.org"]);
    let (addr, server) = serve(move |peer| tls_session(peer, config).is_err());

    let client_tls = pki.client_tls();
    let error = run(async move {
        open(addr, "mx.test.example", TlsPolicy::Required, &client_tls)
            .await
            .unwrap_err()
    });

    assert!(
        matches!(&error, AttemptError::TlsCertificate(reason)
        if reason.contains("mx.test.example")),
        "{error}"
    );
    assert!(error.is_transient(), "a TLS-required sender defers");
    assert_eq!(error.status(), Status::new(4, 7, 5));
    assert!(server.join().unwrap(), "the handshake must not complete");
}

#[test]
fn required_tls_refuses_a_certificate_from_an_unknown_issuer() {
    let pki = TestPki::new("tls-unknown-ca");
    let config = TestPki::untrusted_server_config(&["mx.test.example"]);
    let (addr, server) = serve(move |peer| tls_session(peer, config).is_err());

    let client_tls = pki.client_tls();
    let error = run(async move {
        open(addr, "mx.test.example", TlsPolicy::Required, &client_tls)
            .await
            .unwrap_err()
    });

    assert!(matches!(error, AttemptError::TlsCertificate(_)), "{error}");
    assert!(server.join().unwrap());
}

#[test]
fn required_tls_without_starttls_offered_fails_and_sends_no_mail() {
    let (addr, server) = serve(|peer| {
        greet(peer, &["PIPELINING", "8BITMIME"]);
        peer.line()
    });

    let client_tls = TestPki::new("tls-none").client_tls();
    let error = run(async move {
        open(addr, "mx.test.example", TlsPolicy::Required, &client_tls)
            .await
            .unwrap_err()
    });

    assert!(matches!(error, AttemptError::NoStartTls), "{error}");
    assert_eq!(error.status(), Status::new(4, 7, 4));
    assert_eq!(server.join().unwrap(), "QUIT");
}

#[test]
fn required_tls_with_starttls_refused_fails_with_the_reply() {
    let (addr, _server) = serve(|peer| {
        greet(peer, STARTTLS_EXTENSIONS);
        peer.expect("STARTTLS");
        peer.send("454 4.7.0 TLS not available\r\n");
    });

    let client_tls = TestPki::new("tls-refused").client_tls();
    let error = run(async move {
        open(addr, "mx.test.example", TlsPolicy::Required, &client_tls)
            .await
            .unwrap_err()
    });
    assert!(
        matches!(
            error,
            AttemptError::Rejected {
                stage: "STARTTLS",
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn opportunistic_tls_accepts_an_untrusted_certificate_as_unverified() {
    let config = TestPki::untrusted_server_config(&["*.hosting.example.org"]);
    let (addr, server) = serve(move |peer| tls_session(peer, config).unwrap());

    let client_tls = TestPki::new("tls-opportunistic").client_tls();
    let info = run(async move {
        let connection = open(
            addr,
            "mx.test.example",
            TlsPolicy::Opportunistic,
            &client_tls,
        )
        .await
        .unwrap();
        let info = connection.tls().cloned().unwrap();
        connection.quit().await;
        info
    });

    assert!(!info.verified);
    assert!(info.to_string().ends_with(" unverified"), "{info}");
    server.join().unwrap();
}

#[test]
fn opportunistic_tls_stays_in_plaintext_when_starttls_is_not_offered() {
    let (addr, server) = serve(|peer| {
        greet(peer, &["PIPELINING"]);
        peer.line()
    });

    let client_tls = TestPki::new("tls-plain").client_tls();
    run(async move {
        let connection = open(
            addr,
            "mx.test.example",
            TlsPolicy::Opportunistic,
            &client_tls,
        )
        .await
        .unwrap();
        assert!(connection.tls().is_none());
        connection.quit().await;
    });
    assert_eq!(server.join().unwrap(), "QUIT");
}

#[test]
fn opportunistic_tls_with_aborted_handshake_reports_a_handshake_failure() {
    let (addr, _server) = serve(|peer| {
        greet(peer, STARTTLS_EXTENSIONS);
        peer.expect("STARTTLS");
        peer.send("220 2.0.0 go ahead\r\n");
        let client_hello_start = peer.read_some();
        assert_eq!(
            client_hello_start.first(),
            Some(&0x16),
            "a TLS handshake record"
        );
        // A fatal handshake_failure alert, as a peer that likes nothing offered would send.
        peer.send_bytes(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28]);
    });

    let client_tls = TestPki::new("tls-broken").client_tls();
    let error = run(async move {
        open(
            addr,
            "mx.test.example",
            TlsPolicy::Opportunistic,
            &client_tls,
        )
        .await
        .unwrap_err()
    });

    assert!(matches!(error, AttemptError::TlsHandshake(_)), "{error}");
    assert!(error.is_transient());
}

#[test]
fn disabled_tls_never_sends_starttls() {
    let (addr, server) = serve(|peer| {
        greet(peer, STARTTLS_EXTENSIONS);
        peer.line()
    });

    let client_tls = TestPki::new("tls-disabled").client_tls();
    run(async move {
        let connection = open(addr, "mx.test.example", TlsPolicy::Disabled, &client_tls)
            .await
            .unwrap();
        connection.quit().await;
    });
    assert_eq!(server.join().unwrap(), "QUIT");
}

#[test]
fn plaintext_sent_after_the_starttls_reply_is_discarded_not_read_as_a_reply() {
    let pki = TestPki::new("tls-injection");
    let config = pki.server_config(&["mx.test.example"]);
    let (addr, server) = serve(move |peer| {
        greet(peer, STARTTLS_EXTENSIONS);
        peer.expect("STARTTLS");
        // One write: the injected reply arrives with the 220, before the handshake.
        peer.send("220 2.0.0 ready to start TLS\r\n250 injected.example\r\n");
        peer.start_tls(config).unwrap();
        peer.expect("EHLO client.test.example");
        ehlo_reply(peer, &["SIZE 777"]);
        peer.expect("MAIL FROM:<a@example.net>");
        peer.send("250 ok\r\n");
        peer.expect("RCPT TO:<b@example.org>");
        peer.send("250 ok\r\n");
        peer.expect("DATA");
        peer.send("354 go\r\n");
        let content = peer.data();
        peer.send("250 2.0.0 queued\r\n");
        content
    });

    let client_tls = pki.client_tls();
    let results = run(async move {
        let mut connection = open(addr, "mx.test.example", TlsPolicy::Required, &client_tls)
            .await
            .unwrap();
        assert_eq!(connection.extensions().size, Some(777));
        let rcpts = vec!["b@example.org".to_string()];
        connection
            .send("a@example.net", &rcpts, b"Subject: t\r\n\r\n.x\r\n")
            .await
            .unwrap()
    });

    assert_eq!(server.join().unwrap(), b"Subject: t\r\n\r\n..x\r\n.\r\n");
    assert!(matches!(&results[..], [RecipientResult::Accepted(reply)] if reply.code == 250));
}
