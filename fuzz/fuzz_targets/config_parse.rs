//! The configuration loader (`Config::parse`) over arbitrary UTF-8 text.
//!
//! Checked: nothing panics; every error names the file, and a key when it has one names a key
//! that exists; every configuration accepted keeps the promises the rest of secmx relies on
//! (a listener, no duplicate listener, absolute paths, limits of at least one, domains
//! lowercase without trailing dot).

#![no_main]

use std::collections::HashSet;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use secmx::config::{Config, ConfigError, Destination};

const SOURCE: &str = "/etc/secmx/fuzz.toml";

/// Top-level keys and tables; an error's key starts with one of them.
const SECTIONS: [&str; 13] = [
    "hostname", "data_dir", "workers", "listener", "tls", "dns", "relay", "routes", "outbound",
    "smtp", "spool", "log", "appliance",
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, SOURCE, Some(Path::new("/etc/secmx"))) {
        Ok(config) => check_config(&config),
        Err(error) => check_error(&error),
    }
});

fn check_error(error: &ConfigError) {
    assert_eq!(error.file, SOURCE);
    assert!(!error.problem.is_empty(), "{error:?}");
    let shown = error.to_string();
    assert!(shown.starts_with(&format!("{SOURCE}: ")), "{shown}");
    if !error.key.is_empty() {
        let section = error.key.split(['.', '[']).next().unwrap_or_default();
        assert!(
            SECTIONS.contains(&section),
            "error names no known key: {shown}"
        );
        assert!(shown.contains(&format!("key `{}`", error.key)), "{shown}");
    }
}

fn check_config(config: &Config) {
    assert_eq!(config.source, SOURCE);
    assert!(config.data_dir.is_absolute());
    assert!(!config.hostname.is_empty() && !config.hostname.ends_with('.'));

    assert!(!config.listeners.is_empty());
    let addresses: HashSet<_> = config.listeners.iter().map(|l| l.address).collect();
    assert_eq!(
        addresses.len(),
        config.listeners.len(),
        "duplicate listener"
    );

    let tls = &config.tls;
    assert_eq!(tls.certificate.is_some(), tls.private_key.is_some());
    for path in [&tls.certificate, &tls.private_key, &tls.ca_file]
        .into_iter()
        .flatten()
    {
        assert!(path.is_absolute(), "{path:?}");
    }

    assert!(config.dns.attempts >= 1);
    assert!(config.smtp.max_recipients >= 1);
    assert!(config.smtp.max_message_size >= 1);
    assert!(config.spool.segment_size >= 1);
    assert!(config.outbound.max_connections_per_domain >= 1);
    assert!(config.outbound.max_messages_per_connection >= 1);

    let canonical = |domain: &str| {
        !domain.is_empty()
            && !domain.ends_with('.')
            && !domain.bytes().any(|b| b.is_ascii_uppercase())
    };
    assert!(config.relay.local_domains.iter().all(|d| canonical(d)));
    assert!(config.outbound.domains.keys().all(|d| canonical(d)));
    for (domain, route) in &config.routes {
        assert!(canonical(domain), "{domain:?}");
        assert!(config.route(domain).is_some());
        if let Some(Destination::Maildir(path)) = &route.destination {
            assert!(path.is_absolute(), "{path:?}");
        }
        if let Some(path) = &route.recipients {
            assert!(path.is_absolute(), "{path:?}");
        }
    }
}
