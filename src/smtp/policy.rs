//! Recipient policy: which forward-paths an ingress session accepts (RFC 5321 sections 3.6.2,
//! 4.5.1 and 7.1).
//!
//! Mail for a local domain (`relay.local_domains`) is accepted from anyone, restricted to the
//! addresses of the route's recipients file when it has one; `postmaster` is always accepted
//! (section 4.5.1). Mail for any other domain is relayed only for clients in
//! `relay.trusted_networks`. The decision uses only the domain after the last unquoted `@` of
//! the parsed mailbox: source routes are ignored, `%` in a local part is just a character, and a
//! quoted local part is a local part whatever it contains, so no address trick turns local
//! delivery into relaying.
//!
//! One policy is built per core; a recipients file is re-read when its modification time
//! changes, checked at most once a second.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::io;
use std::net::IpAddr;
use std::path::{Path as FsPath, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use super::parser::Path;
use super::reply::{Reply, Status};
use crate::config::{Config, Relay};

/// How often a recipients file's modification time is looked at.
const RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(1);

const UNKNOWN_MAILBOX: Reply = Reply::fixed(550, Status::new(5, 1, 1), "Mailbox unknown here");
const RELAY_DENIED: Reply = Reply::fixed(554, Status::new(5, 7, 1), "Relay access denied");

/// A recipients file that could not be read when the policy was built.
#[derive(Debug)]
pub struct PolicyError {
    /// The file, as configured in `routes.<domain>.recipients`.
    pub path: PathBuf,
    pub error: io::Error,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "recipients file {}: {}", self.path.display(), self.error)
    }
}

impl std::error::Error for PolicyError {}

/// The recipient policy of one core.
#[derive(Debug)]
pub struct RecipientPolicy {
    relay: Relay,
    /// Recipients files by lowercase domain.
    lists: BTreeMap<String, RecipientList>,
}

impl RecipientPolicy {
    /// Builds the policy from `relay` and the routes' recipients files, reading each file once.
    pub fn from_config(config: &Config) -> Result<RecipientPolicy, PolicyError> {
        let mut lists = BTreeMap::new();
        for (domain, route) in &config.routes {
            if let Some(path) = &route.recipients {
                lists.insert(domain.clone(), RecipientList::load(domain, path)?);
            }
        }
        Ok(RecipientPolicy {
            relay: config.relay.clone(),
            lists,
        })
    }

    /// Decides whether `forward_path`, sent by a client at `client_ip`, is accepted.
    pub fn check_recipient(&self, forward_path: &Path<'_>, client_ip: IpAddr) -> Result<(), Reply> {
        self.check_recipient_at(forward_path, client_ip, Instant::now())
    }

    fn check_recipient_at(
        &self,
        forward_path: &Path<'_>,
        client_ip: IpAddr,
        now: Instant,
    ) -> Result<(), Reply> {
        if forward_path.is_bare_postmaster() {
            return Ok(());
        }
        let domain = forward_path.domain().trim_end_matches('.');
        if !self.relay.is_local_domain(domain) {
            return match self.relay.is_trusted(client_ip) {
                true => Ok(()),
                false => Err(RELAY_DENIED),
            };
        }

        let local_part = forward_path.local_part();
        if local_part.eq_ignore_ascii_case("postmaster") {
            return Ok(());
        }
        let domain = domain.to_ascii_lowercase();
        match self.lists.get(&domain) {
            None => Ok(()),
            Some(list) if list.contains(local_part, &domain, now) => Ok(()),
            Some(_) => Err(UNKNOWN_MAILBOX),
        }
    }
}

/// The addresses of one recipients file, re-read when the file changes.
#[derive(Debug)]
struct RecipientList {
    domain: String,
    path: PathBuf,
    /// `local@domain`, the local part as listed, the domain lowercase without trailing dot.
    addresses: RefCell<HashSet<String>>,
    modified: Cell<Option<SystemTime>>,
    checked_at: Cell<Instant>,
}

impl RecipientList {
    fn load(domain: &str, path: &FsPath) -> Result<RecipientList, PolicyError> {
        let (addresses, modified) = read_list(domain, path).map_err(|error| PolicyError {
            path: path.to_path_buf(),
            error,
        })?;
        Ok(RecipientList {
            domain: domain.to_string(),
            path: path.to_path_buf(),
            addresses: RefCell::new(addresses),
            modified: Cell::new(modified),
            checked_at: Cell::new(Instant::now()),
        })
    }

    fn contains(&self, local_part: &str, domain: &str, now: Instant) -> bool {
        self.reload_if_changed(now);
        let key = format!("{local_part}@{domain}");
        self.addresses.borrow().contains(&key)
    }

    fn reload_if_changed(&self, now: Instant) {
        if now.saturating_duration_since(self.checked_at.get()) < RELOAD_CHECK_INTERVAL {
            return;
        }
        self.checked_at.set(now);
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        if modified.is_some() && modified == self.modified.get() {
            return;
        }
        match read_list(&self.domain, &self.path) {
            Ok((addresses, modified)) => {
                tracing::info!(
                    path = %self.path.display(),
                    addresses = addresses.len(),
                    "recipients file reloaded"
                );
                *self.addresses.borrow_mut() = addresses;
                self.modified.set(modified);
            }
            Err(error) => tracing::warn!(
                path = %self.path.display(),
                %error,
                "recipients file unreadable, keeping the previous list"
            ),
        }
    }
}

/// Reads a recipients file: one address a line, blank lines and `#` comment lines ignored; a
/// line without `@` is a local part in `domain`.
fn read_list(domain: &str, path: &FsPath) -> io::Result<(HashSet<String>, Option<SystemTime>)> {
    let text = std::fs::read_to_string(path)?;
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let addresses = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| match line.rsplit_once('@') {
            Some((local, listed_domain)) => {
                let listed_domain = listed_domain.trim_end_matches('.').to_ascii_lowercase();
                format!("{local}@{listed_domain}")
            }
            None => format!("{line}@{domain}"),
        })
        .collect();
    Ok((addresses, modified))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::parser::{Command, parse_command};

    const OUTSIDER: &str = "192.0.2.99";
    const TRUSTED: &str = "10.1.2.3";

    struct Fixture {
        dir: PathBuf,
        policy: RecipientPolicy,
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn fixture(name: &str, recipients: Option<&str>) -> Fixture {
        let dir = std::env::temp_dir().join(format!("secmx-policy-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut text = format!(
            "hostname = \"mx.example.org\"\ndata_dir = \"{}\"\n\
             [[listener]]\naddress = \"127.0.0.1:2525\"\n\
             [relay]\nlocal_domains = [\"example.org\", \"catchall.example\"]\n\
             trusted_networks = [\"10.0.0.0/8\"]\n",
            dir.display()
        );
        if let Some(list) = recipients {
            std::fs::write(dir.join("recipients"), list).unwrap();
            text.push_str("[routes.\"example.org\"]\nrecipients = \"recipients\"\n");
        }
        let config = Config::parse(&text, "test.toml", None).unwrap();
        let policy = RecipientPolicy::from_config(&config).unwrap();
        Fixture { dir, policy }
    }

    fn check(policy: &RecipientPolicy, line: &str, ip: &str) -> Result<(), Reply> {
        match parse_command(line.as_bytes()) {
            Ok(Command::Rcpt { forward_path, .. }) => {
                policy.check_recipient(&forward_path, ip.parse().unwrap())
            }
            other => panic!("{line}: {other:?}"),
        }
    }

    fn code(result: Result<(), Reply>) -> (u16, String) {
        match result {
            Ok(()) => (250, String::new()),
            Err(reply) => (reply.code, reply.status.unwrap().to_string()),
        }
    }

    const LIST: &str = "# fixture\n\nbob@example.org\nAlice@Example.ORG.\nmember001\n\
                        \"a\\\"b@c\"@example.org\n";

    #[test]
    fn listed_local_recipients_are_accepted() {
        let f = fixture("listed", Some(LIST));
        for rcpt in [
            "RCPT TO:<bob@example.org>",
            "RCPT TO:<bob@EXAMPLE.org.>",
            "RCPT TO:<Alice@example.org>",
            "RCPT TO:<member001@example.org>",
            r#"RCPT TO:<"a\"b@c"@example.org>"#,
        ] {
            assert_eq!(
                code(check(&f.policy, rcpt, OUTSIDER)),
                (250, String::new()),
                "{rcpt}"
            );
        }
    }

    #[test]
    fn unlisted_local_recipients_get_550_5_1_1() {
        let f = fixture("unlisted", Some(LIST));
        for rcpt in [
            "RCPT TO:<nouser@example.org>",
            "RCPT TO:<BOB@example.org>",
            "RCPT TO:<alice@example.org>",
            r#"RCPT TO:<"victim@example.net> NOTIFY=SUCCESS ORCPT=rfc822;spy@example.net"@example.org>"#,
        ] {
            assert_eq!(
                code(check(&f.policy, rcpt, OUTSIDER)),
                (550, "5.1.1".into()),
                "{rcpt}"
            );
        }
    }

    #[test]
    fn postmaster_is_always_accepted() {
        let f = fixture("postmaster", Some("bob@example.org\n"));
        assert!(check(&f.policy, "RCPT TO:<postmaster@example.org>", OUTSIDER).is_ok());
        assert!(check(&f.policy, "RCPT TO:<PostMaster@Example.org>", OUTSIDER).is_ok());
        assert!(check(&f.policy, "RCPT TO:<Postmaster>", OUTSIDER).is_ok());
    }

    #[test]
    fn local_domain_without_recipients_file_accepts_any_local_part() {
        let f = fixture("catchall", Some(LIST));
        assert!(check(&f.policy, "RCPT TO:<anyone@catchall.example>", OUTSIDER).is_ok());
        assert!(check(&f.policy, "RCPT TO:<x@CatchAll.Example.>", OUTSIDER).is_ok());
    }

    #[test]
    fn relaying_is_denied_to_outsiders_and_allowed_to_trusted_networks() {
        let f = fixture("relay", None);
        let denied = code(check(&f.policy, "RCPT TO:<victim@example.net>", OUTSIDER));
        assert_eq!(denied, (554, "5.7.1".into()));
        assert!(check(&f.policy, "RCPT TO:<victim@example.net>", TRUSTED).is_ok());
        let literal = code(check(&f.policy, "RCPT TO:<x@[192.0.2.1]>", OUTSIDER));
        assert_eq!(literal, (554, "5.7.1".into()));
    }

    #[test]
    fn open_relay_tricks_never_relay() {
        let f = fixture("tricks", None);
        // The percent hack and a quoted address are local parts of a local domain.
        assert!(
            check(
                &f.policy,
                "RCPT TO:<user%example.net@example.org>",
                OUTSIDER
            )
            .is_ok()
        );
        assert!(
            check(
                &f.policy,
                r#"RCPT TO:<"user@example.net"@example.org>"#,
                OUTSIDER
            )
            .is_ok()
        );
        // A source route through us to elsewhere: the final domain decides.
        let routed = code(check(
            &f.policy,
            "RCPT TO:<@example.org:user@example.net>",
            OUTSIDER,
        ));
        assert_eq!(routed, (554, "5.7.1".into()));
        // A source route naming another host, ending here: local.
        assert!(
            check(
                &f.policy,
                "RCPT TO:<@example.net:user@example.org>",
                OUTSIDER
            )
            .is_ok()
        );
        // Two @ never parses, so it never reaches the policy.
        assert!(parse_command(b"RCPT TO:<user@example.net@example.org>").is_err());
    }

    #[test]
    fn missing_recipients_file_is_an_error_naming_it() {
        let dir = std::env::temp_dir().join(format!("secmx-policy-missing-{}", std::process::id()));
        let text = format!(
            "data_dir = \"{}\"\n[[listener]]\naddress = \"127.0.0.1:2525\"\n\
             [relay]\nlocal_domains = [\"example.org\"]\n\
             [routes.\"example.org\"]\nrecipients = \"nowhere.txt\"\n",
            dir.display()
        );
        let config = Config::parse(&text, "test.toml", None).unwrap();
        let err = RecipientPolicy::from_config(&config).unwrap_err();
        assert!(err.to_string().contains("nowhere.txt"), "{err}");
    }

    #[test]
    fn recipients_file_is_reloaded_when_its_mtime_changes_at_most_once_a_second() {
        let f = fixture("reload", Some("bob@example.org\n"));
        let carol = parse_command(b"RCPT TO:<carol@example.org>").unwrap();
        let Command::Rcpt { forward_path, .. } = carol else {
            unreachable!()
        };
        let ip: IpAddr = OUTSIDER.parse().unwrap();
        let start = Instant::now();
        assert!(
            f.policy
                .check_recipient_at(&forward_path, ip, start)
                .is_err()
        );

        let file = f.dir.join("recipients");
        std::fs::write(&file, "bob@example.org\ncarol@example.org\n").unwrap();
        let later = SystemTime::now() + Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(later)
            .unwrap();

        // Within the check interval the old list still answers.
        let list = f.policy.lists.get("example.org").unwrap();
        list.checked_at.set(start);
        let soon = start + Duration::from_millis(500);
        assert!(
            f.policy
                .check_recipient_at(&forward_path, ip, soon)
                .is_err()
        );

        let after = start + Duration::from_secs(2);
        assert!(
            f.policy
                .check_recipient_at(&forward_path, ip, after)
                .is_ok()
        );

        // An unreadable file keeps the list it had.
        std::fs::remove_file(&file).unwrap();
        let much_later = start + Duration::from_secs(4);
        assert!(
            f.policy
                .check_recipient_at(&forward_path, ip, much_later)
                .is_ok()
        );
    }
}
