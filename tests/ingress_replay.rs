//! Replays the hostile SMTP client scripts (`C*.case`) with `replay.py` against the ingress
//! listeners, set up as the cases' README describes: example.org local with a recipients file,
//! relaying refused, 100 recipients per transaction, a STARTTLS-optional (BER) and a
//! STARTTLS-required (SOR) listener.
//!
//! Needs python3 and the case directory (`SECMX_CASES_DIR`, default `tests/cases`), hence
//! ignored by default: `cargo test --test ingress_replay -- --ignored`.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::rc::Rc;
use std::sync::Arc;

use glommio::net::TcpListener;
use glommio::{LocalExecutorBuilder, Placement};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use secmx::config::{Config, Role};
use secmx::envelope::{Envelope, QueueId};
use secmx::smtp::server::{IngressContext, Intake, SubmitError, serve_listener};

/// Keeps messages in memory, numbered in arrival order.
#[derive(Default)]
struct MemoryIntake {
    messages: RefCell<Vec<(Envelope, Vec<u8>)>>,
}

impl Intake for MemoryIntake {
    async fn submit(&self, envelope: Envelope, body: Vec<u8>) -> Result<QueueId, SubmitError> {
        let mut messages = self.messages.borrow_mut();
        messages.push((envelope, body));
        Ok(QueueId {
            core: 0,
            segment: 1,
            offset: messages.len() as u64,
        })
    }
}

fn cases_dir() -> PathBuf {
    std::env::var_os("SECMX_CASES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cases"))
}

fn fixture_config(dir: &Path) -> String {
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
         [smtp]\nmax_recipients = 100\n",
        dir.display()
    )
}

/// Runs one case with replay.py; returns its output when it did not pass.
fn replay(case: &Path, ber: SocketAddr, sor: SocketAddr) -> Option<String> {
    let script = case.parent().unwrap().join("replay.py");
    let text = std::fs::read_to_string(case).unwrap();
    let target = match text.contains("# listener: starttls-required") {
        true => sor,
        false => ber,
    };
    let output = Command::new("python3")
        .arg(&script)
        .args(["--timeout", "10", "--quiet-wait", "0.5"])
        .arg(case)
        .arg(target.to_string())
        .output()
        .expect("python3 runs");
    let transcript = format!(
        "{}\n{}{}",
        case.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (!output.status.success()).then_some(transcript)
}

#[test]
#[ignore = "needs python3 and the replay cases (SECMX_CASES_DIR)"]
fn every_receiver_case_passes() {
    let cases = cases_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&cases)
        .unwrap_or_else(|e| panic!("{}: {e}", cases.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "case"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .case files in {}", cases.display());

    let dir = std::env::temp_dir().join(format!("secmx-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = fixture_config(&dir);
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let key = PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![certified.cert.der().clone()],
            PrivateKeyDer::Pkcs8(key),
        )
        .unwrap();
    let tls = Arc::new(tls);

    let executor = LocalExecutorBuilder::new(Placement::Unbound)
        .name("replay-server")
        .io_memory(256 << 10)
        .spawn(move || async move {
            let config = Rc::new(Config::parse(&text, "replay.toml", None).unwrap());
            let ctx = Rc::new(IngressContext::new(config, tls).unwrap());
            let intake = Rc::new(MemoryIntake::default());
            let ber = TcpListener::bind("127.0.0.1:0").unwrap();
            let sor = TcpListener::bind("127.0.0.1:0").unwrap();
            let (ber_addr, sor_addr) = (ber.local_addr().unwrap(), sor.local_addr().unwrap());
            let roles = [
                (ber, Role::BestEffortReceiver),
                (sor, Role::SecureOnlyReceiver),
            ];
            for (listener, role) in roles {
                let task = serve_listener(listener, role, ctx.clone(), intake.clone());
                glommio::spawn_local(task).detach();
            }
            let failures = glommio::executor()
                .spawn_blocking(move || {
                    files
                        .iter()
                        .filter_map(|case| replay(case, ber_addr, sor_addr))
                        .collect::<Vec<_>>()
                })
                .await;
            (failures, intake.messages.take())
        })
        .unwrap();
    let (failures, messages) = executor.join().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // C01: nothing smuggled was queued; C11: the quoted mailbox never went to example.net.
    for (envelope, body) in &messages {
        assert!(
            !envelope.reverse_path.starts_with("ceo@"),
            "smuggled message queued"
        );
        assert!(
            envelope
                .recipients
                .iter()
                .all(|r| !r.ends_with("@example.net"))
        );
        assert!(
            !body.windows(8).any(|w| w == b"smuggled"),
            "smuggled text queued"
        );
    }
}
