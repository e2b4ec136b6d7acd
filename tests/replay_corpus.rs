//! The replay corpus of hostile and tricky SMTP client scripts (`shared/cases/*.case`, next to
//! the repository), each replayed with `replay.py` against a receiver set up as the corpus
//! README's fixture describes.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

/// Where the corpus lives: `$SECMX_CASES_DIR` if set, else `shared/cases` beside the repository root
/// (`../shared/cases`), or beside one of its parent directories (a worktree checked out below the
/// main one).
fn corpus_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = match std::env::var_os("SECMX_CASES_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => manifest
            .ancestors()
            .skip(1)
            .map(|a| a.join("shared/cases"))
            .find(|d| d.is_dir())
            .unwrap_or_else(|| manifest.join("../shared/cases")),
    };
    assert!(
        dir.join("replay.py").is_file(),
        "the replay corpus is missing: expected {} with replay.py and *.case files \
         (set SECMX_CASES_DIR to its directory)",
        dir.display()
    );
    dir
}

fn cases(dir: &Path) -> Vec<PathBuf> {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read the corpus directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "case"))
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "no *.case files in {}", dir.display());
    cases
}

/// The recipients file of the fixture: bob, alice, postmaster, member001 to member150 and the
/// quoted `"a\"b@c"`, all at example.org.
fn recipients_file(path: &Path) {
    let mut lines = vec![
        "bob@example.org".to_string(),
        "alice@example.org".to_string(),
        "postmaster@example.org".to_string(),
    ];
    lines.extend((1..=150).map(|n| format!("member{n:03}@example.org")));
    lines.push(r#""a\"b@c"@example.org"#.to_string());
    std::fs::write(path, lines.join("\n") + "\n").expect("write the recipients file");
}

fn wants_starttls_required_listener(case: &Path) -> bool {
    std::fs::read_to_string(case)
        .expect("read the case")
        .lines()
        .any(|l| l.trim() == "# listener: starttls-required")
}

#[test]
fn every_replay_case_passes_against_the_corpus_fixture() {
    let corpus = corpus_dir();
    let dir = TempDir::new("replay");
    let maildir = Maildir::new(&dir.join("mail"));
    let recipients = dir.join("recipients");
    recipients_file(&recipients);
    let listener_a = addr(10, 10, 2525);
    let listener_b = addr(10, 11, 2525);
    let mut secmx = Secmx::start(
        dir.path(),
        "fixture",
        SecmxConfig::new("mx.example.org", addr(10, 53, 53))
            .listener(listener_a, "ber")
            .listener(listener_b, "sor")
            .maildir_domain("example.org", maildir.root())
            .set(
                &["routes", "example.org", "recipients"],
                recipients.to_str().unwrap(),
            )
            .trusted_networks(&[])
            .set(&["smtp", "max_recipients"], 100),
    );

    let mut failures = Vec::new();
    let mut summary = Vec::new();
    for case in cases(&corpus) {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let target = if wants_starttls_required_listener(&case) {
            listener_b
        } else {
            listener_a
        };
        let mut command = Command::new("python3");
        command
            .arg(corpus.join("replay.py"))
            .arg(&case)
            .arg(target.to_string());
        let out = run_bounded(&mut command, Duration::from_secs(180));
        let alive = secmx.is_running();
        let verdict = match (out.code, alive) {
            (Some(0), true) => "PASS",
            (_, false) => "FAIL (daemon died)",
            _ => "FAIL",
        };
        summary.push(format!("{verdict:>6} {name} -> {target}"));
        if verdict != "PASS" {
            failures.push(format!(
                "=== {name} against {target}: {verdict}\n{}\n{}",
                out.transcript(),
                secmx.log_tail()
            ));
        }
        if !alive {
            secmx.kill();
            secmx.restart();
        }
    }
    eprintln!("replay corpus:\n{}", summary.join("\n"));
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}\n\n{}",
        failures.len(),
        summary.len(),
        summary.join("\n"),
        failures.join("\n\n")
    );
}
