//! Scripted SMTP servers for the client tests: one connection each, on 127.0.0.1, on a std
//! thread, with read timeouts so that a client bug ends the test instead of hanging it. Also a
//! test PKI (a CA and server certificates made with rcgen).

use std::future::Future;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ServerConfig, ServerConnection, StreamOwned};

use super::ClientSettings;
use crate::tls::{ClientTls, client_configs};

const PEER_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `future` on a fresh glommio executor on this thread.
pub fn run<T>(future: impl Future<Output = T>) -> T {
    glommio::LocalExecutorBuilder::default()
        .make()
        .expect("glommio executor")
        .run(future)
}

pub fn settings() -> ClientSettings {
    ClientSettings {
        helo_name: "client.test.example".to_string(),
        connect_timeout: Duration::from_secs(5),
        command_timeout: Duration::from_secs(5),
        data_timeout: Duration::from_secs(5),
    }
}

enum Conn {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ServerConnection, TcpStream>>),
}

/// The server side of one scripted session.
pub struct Peer {
    conn: Conn,
    /// The SNI the client sent, once TLS is up.
    pub sni: Option<String>,
}

impl Peer {
    fn io(&mut self) -> &mut dyn ReadWrite {
        match &mut self.conn {
            Conn::Plain(tcp) => tcp,
            Conn::Tls(tls) => tls.as_mut(),
        }
    }

    /// Sends `text` exactly as given, in one write.
    pub fn send(&mut self, text: &str) {
        self.send_bytes(text.as_bytes());
    }

    pub fn send_bytes(&mut self, bytes: &[u8]) {
        let io = self.io();
        io.write_all(bytes).expect("peer write");
        io.flush().expect("peer flush");
    }

    /// Whatever one read returns (at least one byte unless the stream ended).
    pub fn read_some(&mut self) -> Vec<u8> {
        let mut buf = vec![0u8; 16 * 1024];
        let read = self.io().read(&mut buf).unwrap_or(0);
        buf.truncate(read);
        buf
    }

    /// Reads one line including its CRLF; empty at end of stream.
    pub fn raw_line(&mut self) -> Vec<u8> {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\n") {
            match self.io().read(&mut byte) {
                Ok(1) => line.push(byte[0]),
                _ => break,
            }
        }
        line
    }

    /// Reads one command line without its CRLF.
    pub fn line(&mut self) -> String {
        let line = self.raw_line();
        String::from_utf8_lossy(&line)
            .trim_end_matches(['\r', '\n'])
            .to_string()
    }

    /// Reads one line and checks that it starts with `prefix`; returns the whole line.
    pub fn expect(&mut self, prefix: &str) -> String {
        let line = self.line();
        assert!(
            line.to_ascii_uppercase()
                .starts_with(&prefix.to_ascii_uppercase()),
            "expected {prefix:?}, got {line:?}"
        );
        line
    }

    /// Reads the content after 354 up to and including the final `.` CRLF, as sent.
    pub fn data(&mut self) -> Vec<u8> {
        let mut content = Vec::new();
        loop {
            let line = self.raw_line();
            assert!(!line.is_empty(), "connection closed inside DATA");
            content.extend_from_slice(&line);
            if line == b".\r\n" {
                return content;
            }
        }
    }

    /// Server side of a TLS handshake on the plain connection.
    pub fn start_tls(&mut self, config: Arc<ServerConfig>) -> Result<(), rustls::Error> {
        let Conn::Plain(tcp) = &self.conn else {
            panic!("TLS already active");
        };
        let tcp = tcp.try_clone().expect("clone tcp");
        let mut session = ServerConnection::new(config)?;
        let mut handshake_io = tcp.try_clone().expect("clone tcp");
        while session.is_handshaking() {
            session
                .complete_io(&mut handshake_io)
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        }
        self.sni = session.server_name().map(str::to_string);
        self.conn = Conn::Tls(Box::new(StreamOwned::new(session, tcp)));
        Ok(())
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// Listens on 127.0.0.1, serves one connection with `script` and returns what it returns.
pub fn serve<T: Send + 'static>(
    script: impl FnOnce(&mut Peer) -> T + Send + 'static,
) -> (SocketAddr, JoinHandle<T>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let handle = thread::spawn(move || {
        let (tcp, _) = listener.accept().expect("accept");
        tcp.set_read_timeout(Some(PEER_TIMEOUT))
            .expect("read timeout");
        tcp.set_write_timeout(Some(PEER_TIMEOUT))
            .expect("write timeout");
        let mut peer = Peer {
            conn: Conn::Plain(tcp),
            sni: None,
        };
        script(&mut peer)
    });
    (addr, handle)
}

/// A directory under the system temp directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let unique = rand::random::<u64>();
        let dir =
            std::env::temp_dir().join(format!("secmx-{name}-{}-{unique:x}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A test CA and a directory holding its PEM file.
pub struct TestPki {
    ca: CertifiedIssuer<'static, KeyPair>,
    dir: TempDir,
}

impl TestPki {
    pub fn new(name: &str) -> TestPki {
        let mut params = CertificateParams::new(Vec::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "secmx test CA");
        let key = KeyPair::generate().expect("ca key");
        let ca = CertifiedIssuer::self_signed(params, key).expect("ca certificate");

        let dir = TempDir::new(name);
        std::fs::write(dir.0.join("ca.pem"), ca.pem()).expect("write ca");
        TestPki { ca, dir }
    }

    /// Client configurations trusting only this CA.
    pub fn client_tls(&self) -> ClientTls {
        client_configs(Some(&self.dir.0.join("ca.pem")), false).expect("client tls")
    }

    /// A server configuration presenting a certificate for `names` (DNS names or addresses)
    /// issued by this CA.
    pub fn server_config(&self, names: &[&str]) -> Arc<ServerConfig> {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let params = CertificateParams::new(names).expect("leaf params");
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.ca).expect("leaf certificate");
        let chain = vec![cert.der().clone(), self.ca.der().clone()];
        server_config(chain, &key)
    }

    /// A server configuration with a self-signed certificate no client trusts.
    pub fn untrusted_server_config(names: &[&str]) -> Arc<ServerConfig> {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(names)
            .expect("params")
            .self_signed(&key)
            .expect("self-signed certificate");
        server_config(vec![cert.der().clone()], &key)
    }
}

fn server_config(chain: Vec<CertificateDer<'static>>, key: &KeyPair) -> Arc<ServerConfig> {
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server certificate");
    Arc::new(config)
}

/// The usual start of a session: greeting and an EHLO reply listing `extensions`.
pub fn greet(peer: &mut Peer, extensions: &[&str]) {
    peer.send("220 mx.test.example ESMTP\r\n");
    peer.expect("EHLO client.test.example");
    ehlo_reply(peer, extensions);
}

pub fn ehlo_reply(peer: &mut Peer, extensions: &[&str]) {
    let mut reply = String::from("250");
    reply.push(if extensions.is_empty() { ' ' } else { '-' });
    reply.push_str("mx.test.example\r\n");
    for (i, extension) in extensions.iter().enumerate() {
        let sep = if i + 1 == extensions.len() { ' ' } else { '-' };
        reply.push_str(&format!("250{sep}{extension}\r\n"));
    }
    peer.send(&reply);
}
