//! One delivery attempt for the recipients of one message at one destination domain: the route
//! (Maildir, fixed next hop, or SecMX discovery), the walk over the candidates under the
//! destination's mode, and the fate of each recipient with the reason that decided it.

use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;

use crate::config::{Destination, Mode};
use crate::egress::client::{AttemptError, Connection, RecipientResult, TlsPolicy};
use crate::egress::discovery::{self, Addresses, Candidate, Source};
use crate::egress::maildir;
use crate::egress::shard::{Job, Shard};
use crate::smtp::reply::{Reply, Status};

/// What became of one recipient in one attempt.
#[derive(Debug, Clone)]
pub enum Fate {
    Delivered {
        host: String,
        reply: String,
    },
    Deferred {
        status: Status,
        reason: String,
    },
    /// With `remote_mta`, `reason` is that host's reply (and the command it answered), never
    /// the host again: the DSN prints "host <remote_mta> said: <reason>" and gives `reason` as
    /// the Diagnostic-Code (RFC 3464 2.3.6).
    Bounced {
        status: Status,
        reason: String,
        remote_mta: Option<String>,
    },
}

/// The outcome of an attempt, one fate per recipient index of the job.
pub struct Attempt {
    pub fates: Vec<(u32, Fate)>,
    /// The TLS state of the session that carried the mail, `none` for plaintext or local.
    pub tls: String,
    /// The receiving host and address, for logs.
    pub peer: Option<(String, SocketAddr)>,
}

impl Attempt {
    fn all(job: &Job, fate: Fate) -> Attempt {
        let fates = job.recipients.iter().map(|&i| (i, fate.clone())).collect();
        Attempt {
            fates,
            tls: "none".into(),
            peer: None,
        }
    }
}

/// Why a candidate could not take the mail; decides between deferral and bounce at the end.
enum Miss {
    /// Network trouble or a temporary refusal: retry later.
    Transient(Status, String),
    /// The receiver answered but offered no TLS, under secure-only.
    Insecure(String),
}

/// Runs one attempt for `job` with the message `body`.
pub async fn attempt(shard: &Rc<Shard>, job: &Job, body: &[u8]) -> Attempt {
    let domain = job.domain.as_str();
    match shard
        .config
        .route(domain)
        .and_then(|r| r.destination.clone())
    {
        Some(Destination::Maildir(root)) => Box::pin(deliver_to_maildir(job, &root, body)).await,
        Some(Destination::NextHop(next_hop)) => {
            let candidates = match next_hop_candidate(shard, &next_hop).await {
                Ok(candidate) => vec![candidate],
                Err(miss) => return Attempt::all(job, miss),
            };
            walk(shard, job, body, candidates).await
        }
        None => match discovery::discover(&shard.resolver, domain, shard.config.outbound.smtp_port)
            .await
        {
            Ok(found) => walk(shard, job, body, found.candidates).await,
            Err(e) if e.status().class == 4 => Attempt::all(
                job,
                Fate::Deferred {
                    status: e.status(),
                    reason: e.to_string(),
                },
            ),
            Err(e) => Attempt::all(
                job,
                Fate::Bounced {
                    status: e.status(),
                    reason: e.to_string(),
                    remote_mta: None,
                },
            ),
        },
    }
}

async fn deliver_to_maildir(job: &Job, root: &std::path::Path, body: &[u8]) -> Attempt {
    let mut fates = Vec::with_capacity(job.recipients.len());
    for &index in &job.recipients {
        let recipient = &job.envelope.recipients[index as usize];
        let fate = match maildir::deliver(root, recipient, &job.envelope, body).await {
            Ok(path) => Fate::Delivered {
                host: "maildir".into(),
                reply: path.display().to_string(),
            },
            Err(e) => Fate::Deferred {
                status: Status::new(4, 3, 0),
                reason: format!("cannot write to Maildir {}: {e}", root.display()),
            },
        };
        fates.push((index, fate));
    }
    Attempt {
        fates,
        tls: "none".into(),
        peer: None,
    }
}

async fn next_hop_candidate(shard: &Rc<Shard>, next_hop: &str) -> Result<Candidate, Fate> {
    let (host, port) = next_hop.rsplit_once(':').expect("validated as host:port");
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port.parse().expect("validated as host:port");
    let addresses = match host.parse::<IpAddr>() {
        Ok(ip) => Addresses::Resolved(vec![ip]),
        Err(_) => match shard.resolver.addresses(host).await {
            crate::dns::DnsOutcome::Answer { records, .. } => Addresses::Resolved(records),
            crate::dns::DnsOutcome::TempFail(e) => Addresses::TempFail(e),
            _ => {
                return Err(Fate::Deferred {
                    status: Status::new(4, 4, 4),
                    reason: format!("next hop {host} has no address"),
                });
            }
        },
    };
    Ok(Candidate {
        host: host.to_ascii_lowercase(),
        port,
        source: Source::NextHop,
        addresses,
    })
}

/// Walks the candidates in order until one takes the mail, under the domain's mode.
async fn walk(shard: &Rc<Shard>, job: &Job, body: &[u8], candidates: Vec<Candidate>) -> Attempt {
    let mode = shard.config.outbound.mode_for(&job.domain);
    let mut misses: Vec<Miss> = Vec::new();

    for candidate in &candidates {
        let addresses = match &candidate.addresses {
            Addresses::Resolved(list) => list,
            Addresses::NoAddress => continue,
            Addresses::TempFail(e) => {
                let reason = format!("address of {} not resolved: {e}", candidate.host);
                misses.push(Miss::Transient(Status::new(4, 4, 3), reason));
                continue;
            }
        };
        for &ip in addresses {
            let addr = SocketAddr::new(ip, candidate.port);
            match try_address(shard, job, body, candidate, addr, mode).await {
                Ok(attempt) => return attempt,
                Err(miss) => misses.push(miss),
            }
        }
    }

    conclude(job, mode, misses)
}

/// Decides the fate of every recipient when no candidate took the mail.
fn conclude(job: &Job, mode: Mode, misses: Vec<Miss>) -> Attempt {
    let insecure_only = !misses.is_empty() && misses.iter().all(|m| matches!(m, Miss::Insecure(_)));
    let reasons: Vec<String> = misses
        .iter()
        .map(|m| match m {
            Miss::Transient(_, r) | Miss::Insecure(r) => r.clone(),
        })
        .collect();
    let reason = if reasons.is_empty() {
        format!("no receiver for {} has an address", job.domain)
    } else {
        reasons.join("; ")
    };

    if mode == Mode::SecureOnly && insecure_only {
        return Attempt::all(
            job,
            Fate::Bounced {
                status: Status::new(5, 7, 10),
                reason: format!(
                    "no receiver for {} offers TLS (secure-only): {reason}",
                    job.domain
                ),
                remote_mta: None,
            },
        );
    }
    let status = misses
        .iter()
        .find_map(|m| match m {
            Miss::Transient(status, _) => Some(*status),
            Miss::Insecure(_) => None,
        })
        .unwrap_or(Status::new(4, 4, 4));
    Attempt::all(job, Fate::Deferred { status, reason })
}

async fn try_address(
    shard: &Rc<Shard>,
    job: &Job,
    body: &[u8],
    candidate: &Candidate,
    addr: SocketAddr,
    mode: Mode,
) -> Result<Attempt, Miss> {
    let mut connection = match shard.take_idle(&job.domain, addr) {
        Some(connection) => connection,
        None => open(shard, candidate, addr, mode).await?,
    };

    let recipients: Vec<String> = job
        .recipients
        .iter()
        .map(|&i| job.envelope.recipients[i as usize].clone())
        .collect();
    let tls = connection
        .tls()
        .map_or_else(|| "none".to_string(), |t| t.to_string());
    let remote_mta = candidate.host.clone();
    match connection
        .send(&job.envelope.reverse_path, &recipients, body)
        .await
    {
        Ok(results) => {
            let fates = job
                .recipients
                .iter()
                .zip(results)
                .map(|(&index, result)| (index, recipient_fate(result, &remote_mta)))
                .collect();
            shard.put_idle(&job.domain, addr, connection);
            Ok(Attempt {
                fates,
                tls,
                peer: Some((remote_mta, addr)),
            })
        }
        Err(AttemptError::Rejected { stage, reply }) if reply.is_permanent() => {
            let fate = refused_fate(&reply, stage, &remote_mta);
            shard.put_idle(&job.domain, addr, connection);
            let mut attempt = Attempt::all(job, fate);
            attempt.tls = tls;
            attempt.peer = Some((remote_mta, addr));
            Ok(attempt)
        }
        Err(e) => Err(Miss::Transient(
            e.status(),
            format!("{remote_mta} [{addr}]: {e}"),
        )),
    }
}

/// The bounce of every recipient when `remote_mta` refused the transaction for good at `stage`.
fn refused_fate(reply: &Reply, stage: &str, remote_mta: &str) -> Fate {
    Fate::Bounced {
        status: reply.status_or_default(),
        reason: format!("{reply} (in reply to {stage})"),
        remote_mta: Some(remote_mta.to_string()),
    }
}

/// What one recipient's reply means. A deferral names the host in its reason, since nothing
/// else carries it to the DSN sent if the queue lifetime ends.
fn recipient_fate(result: RecipientResult, remote_mta: &str) -> Fate {
    match result {
        RecipientResult::Accepted(reply) => Fate::Delivered {
            host: remote_mta.to_string(),
            reply: reply.to_string(),
        },
        RecipientResult::Transient(reply) => Fate::Deferred {
            status: reply.status_or_default(),
            reason: format!("{remote_mta} said: {reply}"),
        },
        RecipientResult::Permanent(reply) => Fate::Bounced {
            status: reply.status_or_default(),
            reason: reply.to_string(),
            remote_mta: Some(remote_mta.to_string()),
        },
    }
}

/// Opens a session under the mode's TLS policy. Best effort falls back to plaintext on a new
/// connection when the TLS handshake fails (RFC 7435); secure-only never does.
async fn open(
    shard: &Rc<Shard>,
    candidate: &Candidate,
    addr: SocketAddr,
    mode: Mode,
) -> Result<Connection, Miss> {
    let settings = &shard.client_settings;
    let host = candidate.host.as_str();
    let policy = match mode {
        Mode::SecureOnly => TlsPolicy::Required,
        Mode::BestEffort => TlsPolicy::Opportunistic,
    };
    // Boxed: opening a connection (TLS handshake included) is rare next to sending over one,
    // and its future is several times the size of the rest of a delivery worker's.
    let first = Box::pin(Connection::open(
        addr,
        host,
        policy,
        &shard.client_tls,
        settings,
    ))
    .await;
    let error = match first {
        Ok(connection) => {
            shard.note_connection_opened();
            return Ok(connection);
        }
        Err(e) => e,
    };

    let here = format!("{host} [{addr}]");
    match (mode, &error) {
        (Mode::SecureOnly, AttemptError::NoStartTls) => {
            Err(Miss::Insecure(format!("{here}: {error}")))
        }
        (Mode::BestEffort, AttemptError::TlsHandshake(_) | AttemptError::TlsCertificate(_)) => {
            tracing::info!(host, %addr, %error, "TLS failed; retrying in plaintext (best effort)");
            let plain =
                Connection::open(addr, host, TlsPolicy::Disabled, &shard.client_tls, settings);
            let connection = Box::pin(plain)
                .await
                .map_err(|e| Miss::Transient(e.status(), format!("{here}: {e}")))?;
            shard.note_connection_opened();
            Ok(connection)
        }
        (_, AttemptError::Greeting(reply)) if reply.is_permanent() => Err(Miss::Transient(
            Status::new(4, 4, 0),
            format!("{here} refused the session: {reply}"),
        )),
        _ => Err(Miss::Transient(error.status(), format!("{here}: {error}"))),
    }
}

/// Turns a deferral reason into the bounce given when the queue lifetime ends.
pub fn expired(status: Status, reason: &str) -> Fate {
    Fate::Bounced {
        status: Status::new(5, status.subject, status.detail),
        reason: format!("queue lifetime expired; last error: {reason}"),
        remote_mta: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(code: u16, class: u8, subject: u16, detail: u16, text: &'static str) -> Reply {
        Reply::new(code, Some(Status::new(class, subject, detail)), text)
    }

    #[test]
    fn recipient_refused_for_good_has_the_reply_as_reason_and_the_host_apart() {
        let refused = RecipientResult::Permanent(reply(550, 5, 1, 1, "no such user"));
        let Fate::Bounced {
            status,
            reason,
            remote_mta,
        } = recipient_fate(refused, "mx.example.org")
        else {
            panic!("a 5xx reply to RCPT bounces");
        };
        assert_eq!(status, Status::new(5, 1, 1));
        assert_eq!(reason, "550 5.1.1 no such user");
        assert_eq!(remote_mta.as_deref(), Some("mx.example.org"));
    }

    #[test]
    fn transaction_refused_for_good_names_the_command_but_not_the_host_twice() {
        let fate = refused_fate(
            &reply(550, 5, 7, 1, "sender refused"),
            "MAIL FROM",
            "mx.example.org",
        );
        let Fate::Bounced {
            reason, remote_mta, ..
        } = fate
        else {
            panic!("a 5xx reply to MAIL bounces");
        };
        assert_eq!(reason, "550 5.7.1 sender refused (in reply to MAIL FROM)");
        assert_eq!(remote_mta.as_deref(), Some("mx.example.org"));
    }

    #[test]
    fn recipient_deferred_keeps_the_host_in_its_reason_for_a_bounce_at_expiry() {
        let busy = RecipientResult::Transient(reply(452, 4, 2, 2, "mailbox busy"));
        let Fate::Deferred { reason, .. } = recipient_fate(busy, "mx.example.org") else {
            panic!("a 4xx reply to RCPT defers");
        };
        assert_eq!(reason, "mx.example.org said: 452 4.2.2 mailbox busy");
    }
}
