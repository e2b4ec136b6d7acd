//! Configuration errors: `secmx check-config` and `secmx serve` name the file and the key and
//! exit with status 2.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

/// A configuration that is valid as it stands; each test breaks one thing in it.
fn valid(dir: &Path) -> SecmxConfig {
    SecmxConfig::new("gw.a.test", addr(9, 53, 53))
        .listener(addr(9, 10, 2525), "ber")
        .set(&["data_dir"], dir.join("data").to_str().unwrap())
}

fn run(verb: &str, file: &Path) -> Output {
    let mut command = Command::new(secmx_bin());
    command
        .arg(verb)
        .arg("--config")
        .arg(file)
        .env("NO_COLOR", "1");
    run_bounded(&mut command, Duration::from_secs(20))
}

fn write(dir: &TempDir, text: &str) -> std::path::PathBuf {
    let file = dir.join("secmx.toml");
    std::fs::write(&file, text).expect("write the configuration");
    file
}

/// Asserts exit status 2 and `secmx: configuration error: FILE: ...` on stderr.
fn assert_config_error(out: &Output, file: &Path) {
    assert_eq!(out.code, Some(2), "{}", out.transcript());
    let prefix = format!("secmx: configuration error: {}", file.display());
    assert!(
        out.stderr.starts_with(&prefix),
        "expected `{prefix}`\n{}",
        out.transcript()
    );
}

#[test]
fn the_unbroken_configuration_passes_check_config() {
    let dir = TempDir::new("config-ok");
    let file = write(&dir, &valid(dir.path()).to_toml());
    let out = run("check-config", &file);
    assert_eq!(out.code, Some(0), "{}", out.transcript());
}

#[test]
fn an_unknown_key_is_named_and_check_config_exits_with_status_2() {
    let dir = TempDir::new("config-unknown-key");
    let config = valid(dir.path()).set(&["outbound", "mod"], "secure-only");
    let file = write(&dir, &config.to_toml());
    let out = run("check-config", &file);
    assert_config_error(&out, &file);
    assert!(out.stderr.contains("`mod`"), "{}", out.transcript());
}

#[test]
fn a_bad_outbound_mode_names_the_key_and_check_config_exits_with_status_2() {
    let dir = TempDir::new("config-bad-mode");
    let config = valid(dir.path()).set(&["outbound", "mode"], "sometimes");
    let file = write(&dir, &config.to_toml());
    let out = run("check-config", &file);
    assert_config_error(&out, &file);
    assert!(
        out.stderr.contains("key `outbound.mode`"),
        "{}",
        out.transcript()
    );
    assert!(out.stderr.contains("sometimes"), "{}", out.transcript());
}

#[test]
fn a_toml_syntax_error_names_the_file_and_check_config_exits_with_status_2() {
    let dir = TempDir::new("config-syntax");
    let text = format!(
        "{}\n[outbound\nmode = \"secure-only\"\n",
        valid(dir.path()).to_toml()
    );
    let file = write(&dir, &text);
    let out = run("check-config", &file);
    assert_config_error(&out, &file);
}

#[test]
fn serve_refuses_to_start_on_a_bad_configuration_with_status_2() {
    let dir = TempDir::new("config-serve");
    let config = valid(dir.path()).set(&["outbound", "mode"], "sometimes");
    let file = write(&dir, &config.to_toml());
    let out = run("serve", &file);
    assert_config_error(&out, &file);
    assert!(
        out.stderr.contains("key `outbound.mode`"),
        "{}",
        out.transcript()
    );
}
