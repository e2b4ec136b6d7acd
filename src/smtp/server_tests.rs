//! The listener on a real glommio executor and loopback sockets, driven by a blocking client:
//! plaintext, pipelining, STARTTLS injection (C04, C05), smuggling (C01), line limits (C10),
//! timeouts and connection limits.

use std::io::{Read, Write};
use std::net::TcpStream as StdTcpStream;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use glommio::{LocalExecutorBuilder, Placement};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned};

use super::*;

type Submission = (Envelope, Vec<u8>);

/// Records messages in memory and numbers them.
#[derive(Default)]
struct MemoryIntake {
    messages: RefCell<Vec<Submission>>,
}

impl Intake for MemoryIntake {
    async fn submit(&self, envelope: Envelope, body: Vec<u8>) -> Result<QueueId, SubmitError> {
        let mut messages = self.messages.borrow_mut();
        messages.push((envelope, body));
        Ok(QueueId {
            core: 0,
            segment: 7,
            offset: messages.len() as u64,
        })
    }
}

/// Where the client finds the server.
struct Endpoints {
    ber: SocketAddr,
    sor: SocketAddr,
    cert: CertificateDer<'static>,
}

static FIXTURES: AtomicUsize = AtomicUsize::new(0);

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn config_text(dir: &std::path::Path, extra: &str) -> String {
    let mut list = String::from("bob@example.org\nalice@example.org\npostmaster@example.org\n");
    for i in 1..=150 {
        list.push_str(&format!("member{i:03}@example.org\n"));
    }
    list.push_str("\"a\\\"b@c\"@example.org\n");
    std::fs::write(dir.join("recipients"), list).unwrap();
    format!(
        "hostname = \"mx.example.org\"\ndata_dir = \"{}\"\n\
         [[listener]]\naddress = \"127.0.0.1:2525\"\n\
         [relay]\nlocal_domains = [\"example.org\"]\ntrusted_networks = []\n\
         [routes.\"example.org\"]\nrecipients = \"recipients\"\n\
         [smtp]\n{extra}",
        dir.display()
    )
}

/// Runs BER and SOR listeners on one executor while `client` talks to them from a blocking
/// thread; returns what the intake received.
fn with_server<F>(extra_config: &str, client: F) -> Vec<Submission>
where
    F: FnOnce(Endpoints) + Send + 'static,
{
    let n = FIXTURES.fetch_add(1, Ordering::Relaxed);
    let dir: PathBuf =
        std::env::temp_dir().join(format!("secmx-server-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = config_text(&dir, extra_config);

    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = certified.cert.der().clone();
    let key = PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der());
    let tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], PrivateKeyDer::Pkcs8(key))
        .unwrap();
    let tls = Arc::new(tls);

    let executor = LocalExecutorBuilder::new(Placement::Unbound)
        .name("smtp-server-test")
        .io_memory(256 << 10)
        .spawn(move || async move {
            let config = Rc::new(Config::parse(&text, "test.toml", None).unwrap());
            let ctx = Rc::new(IngressContext::new(config, tls).unwrap());
            let intake = Rc::new(MemoryIntake::default());
            let ber = TcpListener::bind("127.0.0.1:0").unwrap();
            let sor = TcpListener::bind("127.0.0.1:0").unwrap();
            let endpoints = Endpoints {
                ber: ber.local_addr().unwrap(),
                sor: sor.local_addr().unwrap(),
                cert,
            };
            let roles = [
                (ber, Role::BestEffortReceiver),
                (sor, Role::SecureOnlyReceiver),
            ];
            for (listener, role) in roles {
                let task = serve_listener(listener, role, ctx.clone(), intake.clone());
                glommio::spawn_local(task).detach();
            }
            let outcome = glommio::executor()
                .spawn_blocking(move || {
                    std::panic::catch_unwind(AssertUnwindSafe(|| client(endpoints)))
                })
                .await;
            (outcome, intake.messages.take())
        })
        .unwrap();
    let (outcome, messages) = executor.join().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    messages
}

trait Io: Read + Write + Send {}
impl<T: Read + Write + Send> Io for T {}

/// A blocking SMTP client reading replies line by line.
struct Client {
    socket: StdTcpStream,
    io: Box<dyn Io>,
    received: Vec<u8>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let socket = StdTcpStream::connect(addr).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let io = Box::new(socket.try_clone().unwrap());
        Client {
            socket,
            io,
            received: Vec::new(),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).unwrap();
        self.io.flush().unwrap();
    }

    /// The next reply line, `None` at end of stream.
    fn line(&mut self) -> Option<String> {
        loop {
            if let Some(pos) = memchr::memmem::find(&self.received, b"\r\n") {
                let line = String::from_utf8(self.received[..pos].to_vec()).unwrap();
                self.received.drain(..pos + 2);
                return Some(line);
            }
            let mut chunk = [0; 4096];
            match self.io.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.received.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("reading a reply: {e}"),
            }
        }
    }

    /// One whole (possibly multi-line) reply, lines joined with `\n`.
    fn reply(&mut self) -> String {
        let mut lines = Vec::new();
        loop {
            let line = self.line().expect("a reply, not the end of the connection");
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if last {
                return lines.join("\n");
            }
        }
    }

    fn expect(&mut self, prefix: &str) -> String {
        let reply = self.reply();
        assert!(
            reply.starts_with(prefix),
            "expected {prefix}, got {reply:?}"
        );
        reply
    }

    fn expect_closed(&mut self) {
        assert_eq!(
            self.line(),
            None,
            "the server should have closed the connection"
        );
    }

    /// Nothing arrives for a while (the replay cases' `(none)`).
    fn expect_silence(&mut self) {
        self.socket
            .set_read_timeout(Some(Duration::from_millis(400)))
            .unwrap();
        let mut chunk = [0; 512];
        match self.io.read(&mut chunk) {
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            other => panic!("expected silence, got {other:?}"),
        }
        self.socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
    }

    /// Completes a TLS handshake trusting exactly the server's test certificate.
    fn start_tls(self, cert: CertificateDer<'static>) -> Client {
        assert!(self.received.is_empty(), "plaintext left over before TLS");
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(TestCertificate(cert)))
            .with_no_client_auth();
        let name = ServerName::try_from("localhost").unwrap();
        let mut connection = ClientConnection::new(Arc::new(config), name).unwrap();
        let mut socket = self.socket.try_clone().unwrap();
        while connection.is_handshaking() {
            connection.complete_io(&mut socket).unwrap();
        }
        Client {
            socket: self.socket,
            io: Box::new(StreamOwned::new(connection, socket)),
            received: Vec::new(),
        }
    }
}

/// Accepts the one certificate the test server was given.
#[derive(Debug)]
struct TestCertificate(CertificateDer<'static>);

impl ServerCertVerifier for TestCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.0.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("not the test certificate".into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &provider().signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &provider().signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[test]
fn plaintext_transaction_is_acknowledged_with_the_queue_id_after_submission() {
    let messages = with_server("", |at| {
        let mut c = Client::connect(at.ber);
        c.expect("220 mx.example.org ESMTP");
        c.send(b"EHLO client.example\r\n");
        let ehlo = c.expect("250-mx.example.org");
        assert!(
            ehlo.contains("PIPELINING") && ehlo.contains("STARTTLS"),
            "{ehlo}"
        );
        c.send(b"MAIL FROM:<alice@example.net>\r\n");
        c.expect("250 2.1.0");
        c.send(b"RCPT TO:<bob@example.org>\r\n");
        c.expect("250 2.1.5");
        c.send(b"DATA\r\n");
        c.expect("354 ");
        c.send(b"Subject: hello\r\n\r\n..stuffed\r\n.\r\n");
        assert_eq!(c.reply(), "250 2.0.0 Ok: queued as 0000000700000001");
        c.send(b"QUIT\r\n");
        c.expect("221 2.0.0");
        c.expect_closed();
    });
    assert_eq!(messages.len(), 1);
    let (envelope, body) = &messages[0];
    assert_eq!(envelope.reverse_path, "alice@example.net");
    assert_eq!(envelope.recipients, ["bob@example.org"]);
    assert_eq!(
        (envelope.peer.as_str(), envelope.tls.as_str()),
        ("127.0.0.1", "none")
    );
    let body = String::from_utf8(body.clone()).unwrap();
    assert!(
        body.starts_with(
            "Received: from client.example ([127.0.0.1])\r\n\tby mx.example.org with ESMTP;"
        ),
        "{body}"
    );
    assert!(
        body.ends_with("\r\nSubject: hello\r\n\r\n.stuffed\r\n"),
        "{body}"
    );
}

#[test]
fn pipelined_commands_are_answered_in_order() {
    let messages = with_server("", |at| {
        let mut c = Client::connect(at.ber);
        c.expect("220");
        c.send(
            b"EHLO client.example\r\nMAIL FROM:<alice@example.net>\r\nRCPT TO:<nouser@example.org>\r\n\
              RCPT TO:<carol@example.net>\r\nDATA\r\nRSET\r\nMAIL FROM:<alice@example.net>\r\n\
              RCPT TO:<bob@example.org>\r\nDATA\r\n",
        );
        for expected in [
            "250-",
            "250 2.1.0",
            "550 5.1.1",
            "554 5.7.1",
            "554 5.5.1",
            "250 2.0.0",
        ] {
            c.expect(expected);
        }
        for expected in ["250 2.1.0", "250 2.1.5", "354"] {
            c.expect(expected);
        }
        c.send(b"Subject: second\r\n\r\nhello\r\n.\r\nQUIT\r\n");
        c.expect("250 2.0.0 Ok: queued as");
        c.expect("221");
        c.expect_closed();
    });
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].0.recipients, ["bob@example.org"]);
}

#[test]
fn starttls_drops_plaintext_pipelined_behind_it() {
    let messages = with_server("", |at| {
        let mut c = Client::connect(at.ber);
        c.expect("220");
        c.send(b"EHLO client.example\r\n");
        c.expect("250-");
        c.send(b"STARTTLS\r\nRSET\r\n");
        c.expect("220 2.0.0");
        let mut c = c.start_tls(at.cert);
        c.expect_silence();
        c.send(b"EHLO client.example\r\n");
        let ehlo = c.expect("250-mx.example.org");
        assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
        c.send(b"MAIL FROM:<alice@example.net>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n");
        c.expect("250");
        c.expect("250");
        c.expect("354");
        c.send(b"Subject: secure\r\n\r\nhi\r\n.\r\n");
        c.expect("250 2.0.0 Ok: queued as");
        c.send(b"QUIT\r\n");
        c.expect("221");
    });
    assert_eq!(messages.len(), 1);
    let (envelope, body) = &messages[0];
    assert!(
        envelope.tls.starts_with("TLSv1.3 TLS13_"),
        "{}",
        envelope.tls
    );
    let body = String::from_utf8_lossy(body);
    assert!(
        body.contains(&format!("with ESMTPS ({});", envelope.tls)),
        "{body}"
    );
}

#[test]
fn secure_only_receiver_refuses_mail_before_tls_and_drops_injected_commands() {
    let messages = with_server("", |at| {
        let mut c = Client::connect(at.sor);
        c.expect("220");
        c.send(b"EHLO client.example\r\n");
        assert!(c.expect("250-").contains("STARTTLS"));
        c.send(b"MAIL FROM:<alice@example.net>\r\n");
        c.expect("530 5.7.0");
        c.send(b"RCPT TO:<bob@example.org>\r\n");
        c.expect("530 5.7.0");
        c.send(b"DATA\r\n");
        c.expect("530 5.7.0");
        c.send(b"STARTTLS\r\nMAIL FROM:<alice@example.net>\r\nRCPT TO:<bob@example.org>\r\n");
        c.expect("220 2.0.0");
        let mut c = c.start_tls(at.cert);
        c.expect_silence();
        c.send(b"EHLO client.example\r\n");
        c.expect("250-");
        c.send(b"MAIL FROM:<alice@example.net>\r\n");
        c.expect("250 2.1.0");
        c.send(b"RCPT TO:<bob@example.org>\r\n");
        c.expect("250 2.1.5");
        c.send(b"QUIT\r\n");
        c.expect("221");
    });
    assert!(messages.is_empty());
}

#[test]
fn smuggled_lf_dot_lf_is_answered_once_after_the_real_end() {
    let messages = with_server("", |at| {
        let mut c = Client::connect(at.ber);
        c.expect("220");
        c.send(b"EHLO client.example\r\nMAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n");
        for expected in ["250-", "250", "250", "354"] {
            c.expect(expected);
        }
        c.send(
            b"From: alice@example.org\r\n\r\nbody of the first message\n.\n\
              MAIL FROM:<ceo@example.org>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n\
              From: ceo@example.org\r\n\r\nsmuggled\r\n.\r\n",
        );
        c.expect("554 5.6.11");
        c.send(b"QUIT\r\n");
        c.expect("221");
    });
    assert!(messages.is_empty());
}

#[test]
fn over_long_lines_get_one_reply_and_the_session_stays_in_sync() {
    let messages = with_server("", |at| {
        let mut c = Client::connect(at.ber);
        c.expect("220");
        c.send(b"EHLO client.example\r\n");
        c.expect("250-");
        let mut noop = b"NOOP ".to_vec();
        noop.extend(std::iter::repeat_n(b'x', 5000));
        noop.extend_from_slice(b"\r\nNOOP\r\n");
        c.send(&noop);
        c.expect("500 5.5.2");
        c.expect("250 2.0.0");

        c.send(b"MAIL FROM:<alice@example.net>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n");
        for expected in ["250", "250", "354"] {
            c.expect(expected);
        }
        let mut body = b"Subject: long\r\n\r\n".to_vec();
        body.extend(std::iter::repeat_n(b'a', 1500));
        body.extend_from_slice(b"\r\n");
        c.send(&body);
        c.expect_silence();
        c.send(b"last line\r\n.\r\nNOOP\r\n");
        c.expect("500 5.5.2");
        c.expect("250 2.0.0");

        c.send(b"MAIL FROM:<alice@example.net>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n");
        for expected in ["250", "250", "354"] {
            c.expect(expected);
        }
        let mut body = vec![b'0'; 998];
        body.extend_from_slice(b"\r\n.\r\n");
        c.send(&body);
        c.expect("250 2.0.0 Ok: queued as");
    });
    assert_eq!(messages.len(), 1);
}

#[test]
fn silent_client_gets_421_4_4_2_and_is_disconnected() {
    with_server("greeting_timeout = \"300ms\"\n", |at| {
        let mut c = Client::connect(at.ber);
        c.expect("220");
        c.expect("421 4.4.2");
        c.expect_closed();
    });
}

#[test]
fn connections_over_the_per_client_limit_get_421_4_7_0() {
    with_server("max_connections_per_client = 1\n", |at| {
        let mut first = Client::connect(at.ber);
        first.expect("220");
        let mut second = Client::connect(at.ber);
        second.expect("421 4.7.0");
        second.expect_closed();
        first.send(b"NOOP\r\n");
        first.expect("250");
    });
}

#[test]
fn connection_slots_are_returned_when_dropped() {
    let smtp = Smtp {
        max_connections_per_core: 3,
        max_connections_per_client: 2,
        ..Config::embedded_default().smtp
    };
    let limits = Rc::new(ConnectionLimits::default());
    let a: IpAddr = "192.0.2.1".parse().unwrap();
    let b: IpAddr = "192.0.2.2".parse().unwrap();
    let a1 = ConnectionLimits::admit(&limits, a, &smtp).unwrap();
    let _a2 = ConnectionLimits::admit(&limits, a, &smtp).unwrap();
    assert!(
        ConnectionLimits::admit(&limits, a, &smtp).is_none(),
        "per client"
    );
    let _b1 = ConnectionLimits::admit(&limits, b, &smtp).unwrap();
    assert!(
        ConnectionLimits::admit(&limits, b, &smtp).is_none(),
        "per core"
    );
    drop(a1);
    let b2 = ConnectionLimits::admit(&limits, b, &smtp);
    assert!(b2.is_some());
    assert_eq!(limits.total.get(), 3);
    drop(b2);
    assert_eq!(limits.total.get(), 2);
}
