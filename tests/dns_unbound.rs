//! The resolver and SecMX discovery against a real unbound serving the case zones (C20, C23,
//! C24, C26, C29) as `local-data` on a loopback port. Every other name is refused by unbound,
//! so nothing is resolved beyond this host.

mod dns_fixtures;

use std::net::{IpAddr, Ipv4Addr};
use std::rc::Rc;
use std::time::Duration;

use secmx::dns::{DnsOutcome, MxRecord, Resolver};
use secmx::egress::discovery::{Addresses, DiscoveryError, Source, discover};
use secmx::smtp::reply::Status;

use dns_fixtures::unbound::{LocalZone, Unbound};
use dns_fixtures::zone::{ZoneRecord, parse_zone, read_case};
use dns_fixtures::{dns_config, run};

const CASES: [&str; 5] = [
    "C20-srv-priority-weight-order.zone",
    "C23-implicit-mx-fallback.zone",
    "C24-null-mx.zone",
    "C26-truncated-udp-tcp-retry.zone",
    "C29-dns-reply-validation.zone",
];

/// Records beside the cases: a name with neither mail nor address records, and an alias.
const EXTRA: &str = "$ORIGIN example.net.\n\
                     noaddr 300 IN TXT no-mail-here\n\
                     alias  300 IN CNAME amx.example.net.\n";

fn start_unbound() -> Option<Unbound> {
    let mut records: Vec<ZoneRecord> = CASES.iter().flat_map(|case| read_case(case)).collect();
    records.extend(parse_zone(EXTRA));
    let zones = [
        LocalZone {
            name: "broken.example.net.",
            kind: "always_refuse",
            records: Vec::new(),
        },
        LocalZone {
            name: "nosoa.test.",
            kind: "static",
            records: vec!["host.nosoa.test. 300 IN A 127.0.0.7".to_string()],
        },
    ];
    Unbound::start(&records, &zones)
}

fn resolver_for(unbound: &Unbound) -> Rc<Resolver> {
    Resolver::new(&dns_config(
        vec![unbound.address],
        Duration::from_secs(2),
        2,
    ))
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

#[test]
fn srv_targets_come_by_priority_then_weighted_draw_with_the_srv_port() {
    let Some(unbound) = start_unbound() else {
        return;
    };
    run(async {
        let resolver = resolver_for(&unbound);
        let discovery = discover(&resolver, "srv1.example.net", 25).await.unwrap();
        let hosts: Vec<(&str, u16)> = discovery
            .candidates
            .iter()
            .map(|c| (c.host.as_str(), c.port))
            .collect();
        assert_eq!(hosts.len(), 5, "candidates: {hosts:?}");
        assert_eq!(hosts[0], ("mx-p5.example.net", 2526));
        assert_eq!(
            discovery.candidates[0].source,
            Source::Srv {
                priority: 5,
                weight: 0
            }
        );
        assert_eq!(
            discovery.candidates[0].addresses,
            Addresses::Resolved(vec![v4(127, 0, 0, 51)])
        );
        let mut middle = vec![hosts[1], hosts[2]];
        middle.sort();
        assert_eq!(
            middle,
            vec![
                ("mx-a-w60.example.net", 2525),
                ("mx-b-w40.example.net", 2525)
            ]
        );
        assert_eq!(hosts[3], ("mx-p20.example.net", 2525));
        assert_eq!(hosts[4], ("mx-fallback.example.net", 25));
        assert_eq!(
            discovery.candidates[4].source,
            Source::Mx { preference: 10 }
        );

        let queries_after_first = resolver.stats().queries_sent;
        let draws = 2000;
        let mut heavier_first = 0;
        for _ in 0..draws {
            let discovery = discover(&resolver, "srv1.example.net", 25).await.unwrap();
            assert_eq!(discovery.candidates[0].host, "mx-p5.example.net");
            if discovery.candidates[1].host == "mx-a-w60.example.net" {
                heavier_first += 1;
            }
        }
        let share = f64::from(heavier_first) / f64::from(draws);
        assert!((0.55..=0.65).contains(&share), "weight 60 first in {share}");
        assert_eq!(
            resolver.stats().queries_sent,
            queries_after_first,
            "cache not used"
        );
    });
}

#[test]
fn domain_without_srv_or_mx_is_its_own_implicit_mx() {
    let Some(unbound) = start_unbound() else {
        return;
    };
    run(async {
        let resolver = resolver_for(&unbound);
        let discovery = discover(&resolver, "AMX.example.net.", 25).await.unwrap();
        assert_eq!(discovery.candidates.len(), 1);
        let candidate = &discovery.candidates[0];
        assert_eq!(candidate.host, "amx.example.net");
        assert_eq!(candidate.port, 25);
        assert_eq!(candidate.source, Source::ImplicitMx);
        assert_eq!(
            candidate.addresses,
            Addresses::Resolved(vec![v4(127, 0, 0, 81)])
        );
    });
}

#[test]
fn nonexistent_domain_bounces_with_5_1_2() {
    let Some(unbound) = start_unbound() else {
        return;
    };
    run(async {
        let resolver = resolver_for(&unbound);
        let error = discover(&resolver, "nxd.example.net", 25)
            .await
            .unwrap_err();
        assert_eq!(error, DiscoveryError::NoSuchDomain);
        assert_eq!(error.status(), Status::new(5, 1, 2));
    });
}

#[test]
fn refused_lookup_defers_instead_of_using_an_implicit_mx() {
    let Some(unbound) = start_unbound() else {
        return;
    };
    run(async {
        let resolver = resolver_for(&unbound);
        let error = discover(&resolver, "broken.example.net", 25)
            .await
            .unwrap_err();
        assert!(matches!(error, DiscoveryError::TempFail(_)), "{error:?}");
        assert_eq!(error.status(), Status::new(4, 4, 3));
    });
}

#[test]
fn null_mx_fails_at_once_with_5_1_10_and_no_address_lookup() {
    let Some(unbound) = start_unbound() else {
        return;
    };
    run(async {
        let resolver = resolver_for(&unbound);
        let error = discover(&resolver, "nullmx.example.net", 25)
            .await
            .unwrap_err();
        assert_eq!(error, DiscoveryError::NullMx);
        assert_eq!(error.status(), Status::new(5, 1, 10));
        assert_eq!(
            resolver.stats().queries_sent,
            2,
            "only the SRV and MX queries"
        );
    });
}

#[test]
fn name_without_mx_or_address_has_no_candidates() {
    let Some(unbound) = start_unbound() else {
        return;
    };
    run(async {
        let resolver = resolver_for(&unbound);
        let error = discover(&resolver, "noaddr.example.net", 25)
            .await
            .unwrap_err();
        assert_eq!(error, DiscoveryError::NoCandidates);
        assert_eq!(error.status(), Status::new(5, 4, 4));
    });
}

#[test]
fn mx_hosts_without_addresses_stay_candidates_behind_the_preferred_one() {
    let Some(unbound) = start_unbound() else {
        return;
    };
    run(async {
        let resolver = resolver_for(&unbound);
        let discovery = discover(&resolver, "big.example.net", 25).await.unwrap();
        assert_eq!(discovery.candidates.len(), 40);
        assert_eq!(discovery.candidates[0].host, "mx40.big.example.net");
        assert_eq!(
            discovery.candidates[0].addresses,
            Addresses::Resolved(vec![v4(127, 0, 0, 111)])
        );
        assert!(
            discovery.candidates[1..]
                .iter()
                .all(|c| c.addresses == Addresses::NoAddress)
        );
    });
}

#[test]
fn outcomes_distinguish_answer_nodata_and_nxdomain() {
    let Some(unbound) = start_unbound() else {
        return;
    };
    run(async {
        let resolver = resolver_for(&unbound);
        assert_eq!(resolver.mx("amx.example.net").await, DnsOutcome::NoData);
        assert_eq!(resolver.mx("nxd.example.net").await, DnsOutcome::NxDomain);
        assert_eq!(
            resolver.srv("_secmx._tcp.amx.example.net").await,
            DnsOutcome::NxDomain
        );
        match resolver.addresses("amx.example.net").await {
            DnsOutcome::Answer { records, ttl } => {
                assert_eq!(records, vec![v4(127, 0, 0, 81)]);
                assert!(ttl > 0 && ttl <= 300, "ttl {ttl}");
            }
            other => panic!("expected addresses, got {other:?}"),
        }
        assert_eq!(
            resolver.mx("nullmx.example.net").await,
            DnsOutcome::Answer {
                records: vec![MxRecord {
                    preference: 0,
                    exchange: String::new()
                }],
                ttl: 300
            }
        );
    });
}

#[test]
fn cname_is_followed_to_the_target_addresses() {
    let Some(unbound) = start_unbound() else {
        return;
    };
    run(async {
        let resolver = resolver_for(&unbound);
        match resolver.addresses("alias.example.net").await {
            DnsOutcome::Answer { records, .. } => assert_eq!(records, vec![v4(127, 0, 0, 81)]),
            other => panic!("expected the alias target's address, got {other:?}"),
        }
    });
}

#[test]
fn second_identical_question_is_answered_from_the_cache() {
    let Some(unbound) = start_unbound() else {
        return;
    };
    run(async {
        let resolver = resolver_for(&unbound);
        let DnsOutcome::Answer { records, ttl } = resolver.mx("SRV1.Example.NET.").await else {
            panic!("expected an MX answer");
        };
        assert_eq!(resolver.stats().queries_sent, 1);

        let DnsOutcome::Answer {
            records: cached,
            ttl: remaining,
        } = resolver.mx("srv1.example.net").await
        else {
            panic!("expected a cached MX answer");
        };
        assert_eq!(cached, records);
        assert!(remaining <= ttl);
        let stats = resolver.stats();
        assert_eq!((stats.queries_sent, stats.cache_hits), (1, 1));
    });
}

#[test]
fn negative_answers_are_cached_when_an_soa_comes_with_them() {
    let Some(unbound) = start_unbound() else {
        return;
    };
    run(async {
        let resolver = resolver_for(&unbound);
        for _ in 0..3 {
            assert_eq!(resolver.mx("nxd.example.net").await, DnsOutcome::NxDomain);
            assert_eq!(resolver.mx("amx.example.net").await, DnsOutcome::NoData);
        }
        let stats = resolver.stats();
        assert_eq!((stats.queries_sent, stats.cache_hits), (2, 4));
    });
}

#[test]
fn negative_answers_without_soa_are_asked_again() {
    let Some(unbound) = start_unbound() else {
        return;
    };
    run(async {
        let resolver = resolver_for(&unbound);
        for _ in 0..2 {
            assert_eq!(resolver.mx("gone.nosoa.test").await, DnsOutcome::NxDomain);
        }
        let stats = resolver.stats();
        assert_eq!((stats.queries_sent, stats.cache_hits), (2, 0));
    });
}

#[test]
fn answer_too_big_for_udp_is_fetched_over_tcp() {
    let Some(unbound) = start_unbound() else {
        return;
    };
    run(async {
        let resolver = resolver_for(&unbound);
        let DnsOutcome::Answer { records, .. } = resolver.mx("big2.example.net").await else {
            panic!("expected the MX RRset of big2");
        };
        assert_eq!(records.len(), 40);
        assert!(records.contains(&MxRecord {
            preference: 5,
            exchange: "mx40.big2.example.net".to_string()
        }));
        assert_eq!(
            resolver.stats().tcp_retries,
            1,
            "unbound log:\n{}",
            unbound.log()
        );
    });
}

#[test]
fn ttl_is_capped_by_max_ttl() {
    let Some(unbound) = start_unbound() else {
        return;
    };
    run(async {
        let mut config = dns_config(vec![unbound.address], Duration::from_secs(2), 1);
        config.max_ttl = Duration::from_secs(60);
        let resolver = Resolver::new(&config);
        match resolver.addresses("amx.example.net").await {
            DnsOutcome::Answer { ttl, .. } => assert_eq!(ttl, 60),
            other => panic!("expected addresses, got {other:?}"),
        }
    });
}

#[test]
fn names_outside_the_test_zones_are_refused_not_resolved() {
    let Some(unbound) = start_unbound() else {
        return;
    };
    run(async {
        let resolver = resolver_for(&unbound);
        let outcome = resolver.addresses("example.com").await;
        assert!(matches!(outcome, DnsOutcome::TempFail(_)), "{outcome:?}");
    });
}

#[test]
fn nothing_is_resolved_beyond_the_local_zones() {
    let Some(unbound) = start_unbound() else {
        return;
    };
    run(async {
        let resolver = resolver_for(&unbound);
        for domain in [
            "srv1.example.net",
            "amx.example.net",
            "example.com",
            "example.org",
        ] {
            let _ = discover(&resolver, domain, 25).await;
        }
        assert!(resolver.stats().queries_sent >= 8);
    });
    let log = unbound.stop_and_read_log();
    assert!(
        log.contains(" 0 recursions"),
        "unbound recursed; log:\n{log}"
    );
}
