//! The caching stub resolver: hickory-proto for the wire format, transport and cache our own.
//!
//! One [`Resolver`] per core. It asks the configured recursive servers (`[dns] nameservers`, or
//! those in `/etc/resolv.conf`) over UDP with EDNS0, repeats truncated questions over TCP
//! (RFC 1123 6.1.3.2, RFC 7766 5), accepts only replies that match the query (RFC 5452 9.1),
//! caches answers and negative answers (RFC 2308) and lets concurrent askers of the same
//! question share one upstream query.
//!
//! - `wire`: queries, reply checks and interpretation, without I/O.
//! - `cache`: the TTL-bounded answer cache, with the clock as a parameter.
//! - `flight`: coalescing of identical questions in flight.
//! - `transport`: one UDP or TCP exchange on glommio sockets.
//! - `resolv_conf`: the `nameserver` lines of `/etc/resolv.conf`.

mod cache;
mod flight;
mod resolv_conf;
mod transport;
// Public only so that the fuzz targets under fuzz/ can feed it arbitrary replies.
#[doc(hidden)]
pub mod wire;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::future;
use hickory_proto::rr::{Name, RecordType};
use rand::RngExt;
use tracing::{debug, trace, warn};

use self::cache::{CAPACITY, Cache, TtlPolicy};
use self::flight::{Flight, Leader};
use self::transport::{UdpReply, tcp_exchange, udp_exchange};
use self::wire::{Interpretation, Question, QuestionKey, Records, encode_query, interpret};

pub use self::resolv_conf::nameservers_from_resolv_conf;

/// What the DNS said about a question: a sum type, so that a temporary failure
/// can never be mistaken for "no such record".
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DnsOutcome<T> {
    /// Records of the asked type; `ttl` is the time in seconds they remain valid.
    Answer { records: T, ttl: u32 },
    /// The name exists but has no records of the type.
    NoData,
    /// The name does not exist.
    NxDomain,
    /// No usable answer now (timeout, SERVFAIL, REFUSED, garbage); the reason is for operators.
    TempFail(String),
}

impl<T> DnsOutcome<T> {
    /// Applies `f` to the records of an answer.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> DnsOutcome<U> {
        match self {
            DnsOutcome::Answer { records, ttl } => DnsOutcome::Answer {
                records: f(records),
                ttl,
            },
            DnsOutcome::NoData => DnsOutcome::NoData,
            DnsOutcome::NxDomain => DnsOutcome::NxDomain,
            DnsOutcome::TempFail(reason) => DnsOutcome::TempFail(reason),
        }
    }
}

/// One SRV record (RFC 2782).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SrvRecord {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    /// Lowercase, without trailing dot; `""` for the "." target (service not offered).
    pub target: String,
}

/// One MX record (RFC 1035 3.3.9).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MxRecord {
    pub preference: u16,
    /// Lowercase, without trailing dot; `""` for the null MX "." (RFC 7505).
    pub exchange: String,
}

/// Counters since the resolver was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResolverStats {
    /// Queries sent upstream, over UDP or TCP.
    pub queries_sent: u64,
    /// Questions answered from the cache.
    pub cache_hits: u64,
    /// Questions that waited for an identical query already in flight instead of sending one.
    pub coalesced: u64,
    /// Questions repeated over TCP after a truncated UDP reply.
    pub tcp_retries: u64,
}

/// The per-core caching stub resolver.
pub struct Resolver {
    nameservers: Vec<SocketAddr>,
    timeout: Duration,
    attempts: u32,
    cache: RefCell<Cache>,
    in_flight: RefCell<HashMap<QuestionKey, Rc<Flight>>>,
    stats: Cell<ResolverStats>,
}

/// CNAME targets asked for again, one after the other, before the chain counts as a loop.
const MAX_ALIAS_RESTARTS: usize = 8;

/// Where `resolv.conf(5)` says queries go when it names no server.
const FALLBACK_NAMESERVER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 53);

impl Resolver {
    /// A resolver for the `[dns]` section. With no `nameservers` there, the servers come from
    /// `/etc/resolv.conf`, and failing that from 127.0.0.1:53 as `resolv.conf(5)` specifies.
    pub fn new(config: &crate::config::Dns) -> Rc<Resolver> {
        let nameservers = if config.nameservers.is_empty() {
            system_nameservers()
        } else {
            config.nameservers.clone()
        };
        let policy = TtlPolicy::new(config.min_ttl, config.max_ttl, config.negative_max_ttl);
        Rc::new(Resolver {
            nameservers,
            timeout: config.timeout,
            attempts: config.attempts.max(1),
            cache: RefCell::new(Cache::new(policy, CAPACITY)),
            in_flight: RefCell::new(HashMap::new()),
            stats: Cell::new(ResolverStats::default()),
        })
    }

    /// The servers queries go to, in the order they are tried.
    pub fn nameservers(&self) -> &[SocketAddr] {
        &self.nameservers
    }

    /// SRV records of `name` (e.g. `_secmx._tcp.example.net`), in wire order.
    pub async fn srv(&self, name: &str) -> DnsOutcome<Vec<SrvRecord>> {
        self.lookup(name, RecordType::SRV)
            .await
            .map(|records| match records {
                Records::Srv(srv) => srv,
                _ => Vec::new(),
            })
    }

    /// MX records of `name`, in wire order.
    pub async fn mx(&self, name: &str) -> DnsOutcome<Vec<MxRecord>> {
        self.lookup(name, RecordType::MX)
            .await
            .map(|records| match records {
                Records::Mx(mx) => mx,
                _ => Vec::new(),
            })
    }

    /// IPv4 then IPv6 addresses of `name`, from an A and an AAAA query asked together.
    ///
    /// Addresses of either family make an answer, even if the other query failed. Otherwise a
    /// temporary failure of either is a temporary failure, NXDOMAIN from either is NXDOMAIN,
    /// and only two NODATA make NODATA.
    pub async fn addresses(&self, name: &str) -> DnsOutcome<Vec<IpAddr>> {
        let (v4, v6) = future::zip(
            self.lookup(name, RecordType::A),
            self.lookup(name, RecordType::AAAA),
        )
        .await;
        merge_addresses(v4, v6)
    }

    /// Counters since creation.
    pub fn stats(&self) -> ResolverStats {
        self.stats.get()
    }

    fn count(&self, update: impl FnOnce(&mut ResolverStats)) {
        let mut stats = self.stats.get();
        update(&mut stats);
        self.stats.set(stats);
    }

    /// A name that cannot be written on the wire cannot exist in the DNS: NXDOMAIN.
    async fn lookup(&self, name: &str, record_type: RecordType) -> DnsOutcome<Records> {
        // Most questions are answered from the cache: look there before parsing the name.
        if let Some(key) = QuestionKey::for_plain_name(name, record_type)
            && let Some(outcome) = self.cached(&key)
        {
            return outcome;
        }
        match Question::new(name, record_type) {
            Ok(question) => self.lookup_question(question, 0).await,
            Err(invalid) => {
                debug!(
                    qname = name,
                    qtype = %record_type,
                    error = %invalid,
                    "name cannot exist in the DNS"
                );
                DnsOutcome::NxDomain
            }
        }
    }

    /// The cache, else the identical query in flight, else a new upstream query. `restarts`
    /// counts the CNAME targets asked for on the way here.
    async fn lookup_question(&self, question: Question, restarts: usize) -> DnsOutcome<Records> {
        let key = question.key();
        loop {
            if let Some(outcome) = self.cached(&key) {
                return outcome;
            }

            let existing = self.in_flight.borrow().get(&key).cloned();
            if let Some(flight) = existing {
                self.count(|s| s.coalesced += 1);
                match flight.wait().await {
                    Some(outcome) => return outcome,
                    // The asker that sent the query gave up before the reply; ask anew.
                    None => continue,
                }
            }

            let flight = Rc::new(Flight::default());
            self.in_flight
                .borrow_mut()
                .insert(key.clone(), Rc::clone(&flight));
            let leader = Leader::new(&self.in_flight, key.clone(), flight);
            // Boxed: a lookup answered from the cache need not carry room for an exchange.
            let interpretation = match Box::pin(self.ask_upstream(&question)).await {
                Interpretation::Alias { target, ttl } => {
                    self.follow_alias(&question, target, ttl, restarts).await
                }
                interpretation => interpretation,
            };
            let outcome = self
                .cache
                .borrow_mut()
                .store(key, interpretation, Instant::now());
            leader.finish(outcome.clone());
            return outcome;
        }
    }

    fn cached(&self, key: &QuestionKey) -> Option<DnsOutcome<Records>> {
        let outcome = self.cache.borrow_mut().get(key, Instant::now())?;
        self.count(|s| s.cache_hits += 1);
        trace!(
            qname = %key.name,
            qtype = %RecordType::from(key.record_type),
            "answered from cache"
        );
        Some(outcome)
    }

    /// Asks for the target of a CNAME the server did not follow (RFC 1034 5.3.3). The alias
    /// inherits the target's records with the smaller TTL; a negative outcome is handed on but
    /// cached under the target only.
    async fn follow_alias(
        &self,
        question: &Question,
        target: Name,
        alias_ttl: u32,
        restarts: usize,
    ) -> Interpretation {
        if restarts >= MAX_ALIAS_RESTARTS {
            return Interpretation::TempFail(format!(
                "{} {}: more than {MAX_ALIAS_RESTARTS} CNAMEs to follow",
                question.name, question.record_type
            ));
        }
        let target = Question {
            name: target,
            record_type: question.record_type,
        };
        match Box::pin(self.lookup_question(target, restarts + 1)).await {
            DnsOutcome::Answer { records, ttl } => Interpretation::Answer {
                records,
                ttl: ttl.min(alias_ttl),
            },
            DnsOutcome::NoData => Interpretation::NoData { negative_ttl: None },
            DnsOutcome::NxDomain => Interpretation::NxDomain { negative_ttl: None },
            DnsOutcome::TempFail(reason) => Interpretation::TempFail(reason),
        }
    }

    /// Up to `attempts` tries, rotating over the servers. NXDOMAIN, NODATA and answers end the
    /// search; a failure of one server sends the question to the next.
    async fn ask_upstream(&self, question: &Question) -> Interpretation {
        if self.nameservers.is_empty() {
            return Interpretation::TempFail("no nameservers configured".to_string());
        }
        let mut last_error = String::new();
        for attempt in 0..self.attempts {
            let server = self.nameservers[attempt as usize % self.nameservers.len()];
            let error = match self.try_server(server, question).await {
                Ok(Interpretation::TempFail(reason)) => reason,
                Ok(interpretation) => return interpretation,
                Err(error) => error,
            };
            debug!(
                %server,
                qname = %question.name,
                qtype = %question.record_type,
                attempt,
                %error,
                "DNS try failed"
            );
            last_error = format!("{server}: {error}");
        }
        Interpretation::TempFail(format!(
            "{} {}: {last_error} (after {} tries)",
            question.name, question.record_type, self.attempts
        ))
    }

    /// One question to one server: over UDP, and over TCP when the UDP reply was truncated.
    async fn try_server(
        &self,
        server: SocketAddr,
        question: &Question,
    ) -> Result<Interpretation, String> {
        let id: u16 = rand::rng().random();
        let query = encode_query(question, id);
        self.count(|s| s.queries_sent += 1);
        let reply = udp_exchange(server, &query, id, question, self.timeout)
            .await
            .map_err(|e| e.to_string())?;
        let message = match reply {
            UdpReply::Accepted(message) => message,
            UdpReply::Truncated => {
                debug!(
                    %server,
                    qname = %question.name,
                    qtype = %question.record_type,
                    "truncated reply, asking again over TCP"
                );
                let id: u16 = rand::rng().random();
                let query = encode_query(question, id);
                self.count(|s| {
                    s.queries_sent += 1;
                    s.tcp_retries += 1;
                });
                tcp_exchange(server, &query, id, question, self.timeout)
                    .await
                    .map_err(|e| format!("over TCP: {e}"))?
            }
        };
        Ok(interpret(&message, question))
    }
}

fn system_nameservers() -> Vec<SocketAddr> {
    let servers = match std::fs::read_to_string("/etc/resolv.conf") {
        Ok(text) => nameservers_from_resolv_conf(&text),
        Err(error) => {
            warn!(%error, file = "/etc/resolv.conf", "cannot read resolver configuration");
            Vec::new()
        }
    };
    if servers.is_empty() {
        warn!(nameserver = %FALLBACK_NAMESERVER, "no nameserver configured, using the local host");
        return vec![FALLBACK_NAMESERVER];
    }
    servers
}

fn merge_addresses(v4: DnsOutcome<Records>, v6: DnsOutcome<Records>) -> DnsOutcome<Vec<IpAddr>> {
    let addresses = |records: Records| match records {
        Records::Addresses(addresses) => addresses,
        _ => Vec::new(),
    };
    let (v4, v6) = (v4.map(addresses), v6.map(addresses));
    match (v4, v6) {
        (
            DnsOutcome::Answer {
                records: mut a,
                ttl: ttl_a,
            },
            DnsOutcome::Answer {
                records: b,
                ttl: ttl_b,
            },
        ) => {
            a.extend(b);
            DnsOutcome::Answer {
                records: a,
                ttl: ttl_a.min(ttl_b),
            }
        }
        (answer @ DnsOutcome::Answer { .. }, _) | (_, answer @ DnsOutcome::Answer { .. }) => answer,
        (DnsOutcome::TempFail(reason), _) | (_, DnsOutcome::TempFail(reason)) => {
            DnsOutcome::TempFail(reason)
        }
        (DnsOutcome::NxDomain, _) | (_, DnsOutcome::NxDomain) => DnsOutcome::NxDomain,
        (DnsOutcome::NoData, DnsOutcome::NoData) => DnsOutcome::NoData,
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use super::*;

    fn v4() -> DnsOutcome<Records> {
        DnsOutcome::Answer {
            records: Records::Addresses(vec![IpAddr::V4(Ipv4Addr::new(127, 0, 0, 81))]),
            ttl: 300,
        }
    }

    fn v6() -> DnsOutcome<Records> {
        DnsOutcome::Answer {
            records: Records::Addresses(vec![IpAddr::V6(Ipv6Addr::LOCALHOST)]),
            ttl: 60,
        }
    }

    #[test]
    fn addresses_merge_ipv4_first_with_the_smaller_ttl() {
        assert_eq!(
            merge_addresses(v4(), v6()),
            DnsOutcome::Answer {
                records: vec![
                    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 81)),
                    IpAddr::V6(Ipv6Addr::LOCALHOST)
                ],
                ttl: 60
            }
        );
    }

    #[test]
    fn addresses_of_one_family_are_an_answer_whatever_the_other_says() {
        let temp = || DnsOutcome::TempFail("timeout".to_string());
        assert!(matches!(
            merge_addresses(v4(), DnsOutcome::NoData),
            DnsOutcome::Answer { .. }
        ));
        assert!(matches!(
            merge_addresses(temp(), v6()),
            DnsOutcome::Answer { .. }
        ));
    }

    #[test]
    fn addresses_are_nodata_only_when_both_families_are() {
        let temp = || DnsOutcome::TempFail("timeout".to_string());
        assert_eq!(
            merge_addresses(DnsOutcome::NoData, DnsOutcome::NoData),
            DnsOutcome::NoData
        );
        assert_eq!(
            merge_addresses(DnsOutcome::NoData, DnsOutcome::NxDomain),
            DnsOutcome::NxDomain
        );
        let failed = DnsOutcome::TempFail("timeout".to_string());
        assert_eq!(merge_addresses(DnsOutcome::NoData, temp()), failed);
        assert_eq!(merge_addresses(DnsOutcome::NxDomain, temp()), failed);
    }
}
