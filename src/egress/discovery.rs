//! SecMX discovery: which hosts may take mail for a destination domain, in the order to try.
//!
//! 1. `_secmx._tcp.<domain>` SRV records, lowest priority first and weighted random within a
//!    priority (RFC 2782 "Usage rules"); a lone "." target means no SecMX service.
//! 2. MX records, lowest preference first and equal preferences in random order
//!    (RFC 5321 5.1); without MX records the domain itself is the implicit MX; a null MX
//!    (RFC 7505) fails the destination permanently before any address lookup.
//! 3. A and AAAA records of every target host.
//!
//! A temporary DNS failure of the SRV or MX lookup fails the whole discovery temporarily: a
//! route is never weakened because the DNS could not answer.

use std::fmt;
use std::future::poll_fn;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::Poll;

use rand::seq::SliceRandom;
use rand::{Rng, RngExt};
use tracing::debug;

use crate::dns::{DnsOutcome, MxRecord, Resolver, SrvRecord};
use crate::smtp::reply::Status;

/// The record that made a host a candidate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A `_secmx._tcp` SRV record.
    Srv { priority: u16, weight: u16 },
    /// An MX record.
    Mx { preference: u16 },
    /// No MX records: the domain is its own mail exchanger (RFC 5321 5.1).
    ImplicitMx,
    /// A fixed `routes.<domain>.next_hop`; no discovery.
    NextHop,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Srv { priority, weight } => {
                write!(f, "SecMX SRV priority {priority} weight {weight}")
            }
            Source::Mx { preference } => write!(f, "MX preference {preference}"),
            Source::ImplicitMx => f.write_str("implicit MX (no MX records)"),
            Source::NextHop => f.write_str("configured next hop"),
        }
    }
}

/// What the address lookup for a candidate host found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Addresses {
    /// IPv4 addresses first, then IPv6.
    Resolved(Vec<IpAddr>),
    /// The host has no A or AAAA records, or does not exist.
    NoAddress,
    /// The lookup failed for now.
    TempFail(String),
}

/// One host to try, with the port to connect to and why it is a candidate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// Lowercase, without trailing dot: the name for TLS SNI and certificate checks.
    pub host: String,
    /// From the SRV record; the configured SMTP port for MX and implicit-MX hosts.
    pub port: u16,
    pub source: Source,
    pub addresses: Addresses,
}

/// The outcome of discovery: SRV candidates first, then MX or implicit-MX candidates, each
/// group in the order to try. At least one candidate has resolved addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Discovery {
    pub candidates: Vec<Candidate>,
}

/// Why no candidate could be found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiscoveryError {
    /// The domain publishes a null MX: it accepts no mail (RFC 7505).
    NullMx,
    /// The domain does not exist (NXDOMAIN for its MX lookup).
    NoSuchDomain,
    /// The DNS could not answer now; try again later.
    TempFail(String),
    /// Neither SRV, MX nor the domain's own address records lead to any address.
    NoCandidates,
}

impl DiscoveryError {
    /// Enhanced status code for the DSN or the deferral (RFC 3463, RFC 7505 4.3).
    pub fn status(&self) -> Status {
        match self {
            DiscoveryError::NullMx => Status::new(5, 1, 10),
            DiscoveryError::NoSuchDomain => Status::new(5, 1, 2),
            DiscoveryError::TempFail(_) => Status::new(4, 4, 3),
            DiscoveryError::NoCandidates => Status::new(5, 4, 4),
        }
    }

    /// Whether the message should bounce now rather than be retried.
    pub fn is_permanent(&self) -> bool {
        self.status().class == 5
    }
}

impl fmt::Display for DiscoveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiscoveryError::NullMx => {
                f.write_str("domain accepts no mail: it publishes a null MX (RFC 7505)")
            }
            DiscoveryError::NoSuchDomain => {
                f.write_str("domain does not exist: the DNS answered NXDOMAIN")
            }
            DiscoveryError::TempFail(reason) => write!(f, "DNS lookup failed for now: {reason}"),
            DiscoveryError::NoCandidates => f.write_str(
                "no mail server found: no SecMX SRV target, MX host or implicit MX has an address",
            ),
        }
    }
}

impl std::error::Error for DiscoveryError {}

/// Finds the candidates for mail to `domain` (ASCII, with internationalised labels as
/// A-labels; any case; trailing dot or not). MX and implicit-MX hosts are reached on
/// `smtp_port`, SRV targets on the port of their record.
pub async fn discover(
    resolver: &Resolver,
    domain: &str,
    smtp_port: u16,
) -> Result<Discovery, DiscoveryError> {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();

    let mut targets = secmx_targets(resolver, &domain).await?;
    targets.extend(mx_targets(resolver, &domain, smtp_port).await?);

    let hosts: Vec<&str> = targets.iter().map(|t| t.host.as_str()).collect();
    let lookups = resolve_all(resolver, &hosts).await;
    let candidates: Vec<Candidate> = targets
        .into_iter()
        .zip(lookups)
        .filter_map(|(target, lookup)| target.with_addresses(lookup))
        .collect();
    debug!(domain, candidates = candidates.len(), "discovery finished");

    let has_address = |c: &Candidate| matches!(c.addresses, Addresses::Resolved(_));
    if candidates.iter().any(has_address) {
        return Ok(Discovery { candidates });
    }
    let temporary = candidates.into_iter().find_map(|c| match c.addresses {
        Addresses::TempFail(reason) => Some(format!("addresses of {}: {reason}", c.host)),
        _ => None,
    });
    Err(temporary.map_or(DiscoveryError::NoCandidates, DiscoveryError::TempFail))
}

/// A host to look up, before its addresses are known.
struct Target {
    host: String,
    port: u16,
    source: Source,
}

impl Target {
    /// The candidate for this target, or `None` for an implicit MX without addresses: the
    /// domain then simply has no mail server of its own.
    fn with_addresses(self, lookup: DnsOutcome<Vec<IpAddr>>) -> Option<Candidate> {
        let addresses = match lookup {
            DnsOutcome::Answer { records, .. } if !records.is_empty() => {
                Addresses::Resolved(records)
            }
            DnsOutcome::TempFail(reason) => Addresses::TempFail(reason),
            _ if self.source == Source::ImplicitMx => return None,
            _ => Addresses::NoAddress,
        };
        Some(Candidate {
            host: self.host,
            port: self.port,
            source: self.source,
            addresses,
        })
    }
}

/// SecMX SRV targets in RFC 2782 order. NXDOMAIN for the `_secmx._tcp` owner says only that
/// no SecMX service is published, nothing about the domain.
async fn secmx_targets(resolver: &Resolver, domain: &str) -> Result<Vec<Target>, DiscoveryError> {
    let owner = format!("_secmx._tcp.{domain}");
    let records = match resolver.srv(&owner).await {
        DnsOutcome::Answer { records, .. } => records,
        DnsOutcome::NoData | DnsOutcome::NxDomain => Vec::new(),
        DnsOutcome::TempFail(reason) => {
            return Err(DiscoveryError::TempFail(format!("SRV {owner}: {reason}")));
        }
    };
    let ordered = order_srv(records, &mut rand::rng());
    Ok(ordered
        .into_iter()
        .map(|srv| Target {
            host: srv.target,
            port: srv.port,
            source: Source::Srv {
                priority: srv.priority,
                weight: srv.weight,
            },
        })
        .collect())
}

/// MX hosts in RFC 5321 5.1 order, the implicit MX when there are none, or the null MX and
/// NXDOMAIN verdicts.
async fn mx_targets(
    resolver: &Resolver,
    domain: &str,
    smtp_port: u16,
) -> Result<Vec<Target>, DiscoveryError> {
    let records = match resolver.mx(domain).await {
        DnsOutcome::Answer { records, .. } => records,
        DnsOutcome::NoData => {
            return Ok(vec![Target {
                host: domain.to_string(),
                port: smtp_port,
                source: Source::ImplicitMx,
            }]);
        }
        DnsOutcome::NxDomain => return Err(DiscoveryError::NoSuchDomain),
        DnsOutcome::TempFail(reason) => {
            return Err(DiscoveryError::TempFail(format!("MX {domain}: {reason}")));
        }
    };
    if is_null_mx(&records) {
        return Err(DiscoveryError::NullMx);
    }
    let ordered = order_mx(records, &mut rand::rng());
    Ok(ordered
        .into_iter()
        .map(|mx| Target {
            host: mx.exchange,
            port: smtp_port,
            source: Source::Mx {
                preference: mx.preference,
            },
        })
        .collect())
}

/// RFC 7505 3: a null MX is a single MX record whose exchange is the root. ("A domain that
/// advertises a null MX MUST NOT advertise any other MX RR"; when it does anyway, the real
/// hosts are used and the root target skipped.)
fn is_null_mx(records: &[MxRecord]) -> bool {
    matches!(records, [only] if only.exchange.is_empty())
}

/// Looks up the addresses of all `hosts` at once; results in the same order.
async fn resolve_all(resolver: &Resolver, hosts: &[&str]) -> Vec<DnsOutcome<Vec<IpAddr>>> {
    type Lookup<'a> = Pin<Box<dyn Future<Output = DnsOutcome<Vec<IpAddr>>> + 'a>>;
    enum Slot<'a> {
        Running(Lookup<'a>),
        Done(DnsOutcome<Vec<IpAddr>>),
    }
    let mut slots: Vec<Slot<'_>> = hosts
        .iter()
        .map(|host| Slot::Running(Box::pin(resolver.addresses(host)) as Lookup<'_>))
        .collect();
    poll_fn(|cx| {
        let mut running = false;
        for slot in slots.iter_mut() {
            if let Slot::Running(lookup) = slot {
                match lookup.as_mut().poll(cx) {
                    Poll::Ready(outcome) => *slot = Slot::Done(outcome),
                    Poll::Pending => running = true,
                }
            }
        }
        if running {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    slots
        .into_iter()
        .filter_map(|slot| match slot {
            Slot::Done(outcome) => Some(outcome),
            Slot::Running(_) => None,
        })
        .collect()
}

/// Orders SRV records as RFC 2782 says: ascending priority; within a priority, repeatedly
/// draw a uniform number between 0 and the sum of the remaining weights (inclusive) and take
/// the first record, in an order with the weight-0 records first, whose running weight sum
/// reaches it. Weight-0 records thus come last unless all weights are 0, and the wire order
/// decides nothing. Records with the "." target are dropped: alone they mean "no service
/// here", beside others they name no host.
pub fn order_srv(records: Vec<SrvRecord>, rng: &mut impl Rng) -> Vec<SrvRecord> {
    let mut records: Vec<SrvRecord> = records
        .into_iter()
        .filter(|r| !r.target.is_empty())
        .collect();
    records.sort_by_key(|r| r.priority);
    let mut ordered = Vec::with_capacity(records.len());
    for group in records.chunk_by(|a, b| a.priority == b.priority) {
        ordered.extend(weighted_order(group.to_vec(), rng));
    }
    ordered
}

fn weighted_order(mut group: Vec<SrvRecord>, rng: &mut impl Rng) -> Vec<SrvRecord> {
    group.shuffle(rng);
    group.sort_by_key(|r| r.weight != 0);
    let mut ordered = Vec::with_capacity(group.len());
    while !group.is_empty() {
        let total: u64 = group.iter().map(|r| u64::from(r.weight)).sum();
        let draw = rng.random_range(0..=total);
        let mut running = 0;
        let chosen = group
            .iter()
            .position(|r| {
                running += u64::from(r.weight);
                running >= draw
            })
            .unwrap_or(group.len() - 1);
        ordered.push(group.remove(chosen));
    }
    ordered
}

/// Orders MX records as RFC 5321 5.1 says: ascending preference, records of equal preference
/// in random order. Records with the root as exchange are dropped (see [`discover`] for the
/// null MX).
pub fn order_mx(records: Vec<MxRecord>, rng: &mut impl Rng) -> Vec<MxRecord> {
    let mut records: Vec<MxRecord> = records
        .into_iter()
        .filter(|r| !r.exchange.is_empty())
        .collect();
    records.shuffle(rng);
    records.sort_by_key(|r| r.preference);
    records
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn srv(priority: u16, weight: u16, port: u16, target: &str) -> SrvRecord {
        SrvRecord {
            priority,
            weight,
            port,
            target: target.to_string(),
        }
    }

    fn mx(preference: u16, exchange: &str) -> MxRecord {
        MxRecord {
            preference,
            exchange: exchange.to_string(),
        }
    }

    /// The `_secmx._tcp.srv1.example.net` RRset of case C20, in its wire order.
    fn c20_records() -> Vec<SrvRecord> {
        vec![
            srv(20, 0, 2525, "mx-p20.example.net"),
            srv(10, 40, 2525, "mx-b-w40.example.net"),
            srv(10, 60, 2525, "mx-a-w60.example.net"),
            srv(5, 0, 2526, "mx-p5.example.net"),
        ]
    }

    fn targets(records: &[SrvRecord]) -> Vec<&str> {
        records.iter().map(|r| r.target.as_str()).collect()
    }

    #[test]
    fn srv_lowest_priority_comes_first_whatever_the_wire_order() {
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..200 {
            let ordered = order_srv(c20_records(), &mut rng);
            assert_eq!(ordered[0].target, "mx-p5.example.net");
            assert_eq!(ordered[0].port, 2526);
            assert_eq!(ordered[3].target, "mx-p20.example.net");
            let middle = targets(&ordered[1..3]);
            assert!(middle.contains(&"mx-a-w60.example.net"));
            assert!(middle.contains(&"mx-b-w40.example.net"));
        }
    }

    #[test]
    fn srv_weighted_draw_follows_the_weights() {
        let mut rng = StdRng::seed_from_u64(2525);
        let draws = 2000;
        let heavier_first = (0..draws)
            .filter(|_| order_srv(c20_records(), &mut rng)[1].target == "mx-a-w60.example.net")
            .count();
        let share = heavier_first as f64 / draws as f64;
        assert!(
            (0.55..=0.65).contains(&share),
            "weight-60 target first in {share}"
        );
    }

    #[test]
    fn srv_weight_zero_comes_after_weighted_records_of_its_priority() {
        let mut rng = StdRng::seed_from_u64(3);
        let records = vec![
            srv(10, 0, 25, "zero.example.net"),
            srv(10, 1000, 25, "a.example.net"),
            srv(10, 1000, 25, "b.example.net"),
        ];
        let draws = 2000;
        let zero_first = (0..draws)
            .filter(|_| order_srv(records.clone(), &mut rng)[0].target == "zero.example.net")
            .count();
        // Chosen first only when the draw is exactly 0: 1 in 2001.
        assert!(zero_first <= 5, "weight-0 record first {zero_first} times");
    }

    #[test]
    fn srv_all_weight_zero_are_ordered_at_random() {
        let mut rng = StdRng::seed_from_u64(4);
        let records = vec![
            srv(10, 0, 25, "a.example.net"),
            srv(10, 0, 25, "b.example.net"),
        ];
        let draws = 2000;
        let a_first = (0..draws)
            .filter(|_| order_srv(records.clone(), &mut rng)[0].target == "a.example.net")
            .count();
        let share = a_first as f64 / draws as f64;
        assert!(
            (0.45..=0.55).contains(&share),
            "first wire record first in {share}"
        );
    }

    #[test]
    fn srv_dot_target_means_no_service() {
        let mut rng = StdRng::seed_from_u64(5);
        assert!(order_srv(vec![srv(0, 0, 0, "")], &mut rng).is_empty());
        let mixed = vec![srv(0, 0, 0, ""), srv(10, 5, 2525, "mx.example.net")];
        assert_eq!(targets(&order_srv(mixed, &mut rng)), vec!["mx.example.net"]);
    }

    #[test]
    fn mx_sorted_by_preference_with_ties_shuffled() {
        let mut rng = StdRng::seed_from_u64(6);
        let records = vec![
            mx(20, "backup.example.net"),
            mx(10, "b.example.net"),
            mx(10, "a.example.net"),
            mx(5, "primary.example.net"),
        ];
        let mut a_first = 0;
        for _ in 0..1000 {
            let ordered = order_mx(records.clone(), &mut rng);
            assert_eq!(ordered[0].exchange, "primary.example.net");
            assert_eq!(ordered[3].exchange, "backup.example.net");
            if ordered[1].exchange == "a.example.net" {
                a_first += 1;
            }
        }
        assert!(
            (400..=600).contains(&a_first),
            "a.example.net first of the tie {a_first} times"
        );
    }

    #[test]
    fn lone_root_mx_is_a_null_mx() {
        assert!(is_null_mx(&[mx(0, "")]));
        assert!(!is_null_mx(&[mx(0, ""), mx(10, "mx.example.net")]));
        assert!(!is_null_mx(&[mx(10, "mx.example.net")]));
        assert!(!is_null_mx(&[]));
    }

    #[test]
    fn discovery_errors_map_to_their_enhanced_status() {
        assert_eq!(DiscoveryError::NullMx.status(), Status::new(5, 1, 10));
        assert_eq!(DiscoveryError::NoSuchDomain.status(), Status::new(5, 1, 2));
        assert_eq!(
            DiscoveryError::TempFail("x".into()).status(),
            Status::new(4, 4, 3)
        );
        assert_eq!(DiscoveryError::NoCandidates.status(), Status::new(5, 4, 4));
        assert!(!DiscoveryError::TempFail("x".into()).is_permanent());
        assert!(DiscoveryError::NullMx.is_permanent());
    }

    #[test]
    fn implicit_mx_without_addresses_is_no_candidate_but_an_mx_host_is() {
        let implicit = Target {
            host: "amx.example.net".into(),
            port: 25,
            source: Source::ImplicitMx,
        };
        assert_eq!(implicit.with_addresses(DnsOutcome::NoData), None);
        let mx_host = Target {
            host: "mx.example.net".into(),
            port: 25,
            source: Source::Mx { preference: 10 },
        };
        assert_eq!(
            mx_host
                .with_addresses(DnsOutcome::NxDomain)
                .map(|c| c.addresses),
            Some(Addresses::NoAddress)
        );
    }
}
