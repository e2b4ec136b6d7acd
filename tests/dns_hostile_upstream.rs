//! The resolver against scripted upstream servers doing what a well-behaved server will not do
//! on request: answer SERVFAIL, stay silent, truncate (C26), race forged replies against the
//! genuine one (C29), answer slowly enough to show coalescing.

mod dns_fixtures;

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::mpsc;
use std::time::Duration;

use futures_lite::future;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, MX};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use secmx::dns::{DnsOutcome, MxRecord, Resolver};
use secmx::egress::discovery::{DiscoveryError, discover};
use secmx::smtp::reply::Status;

use dns_fixtures::responder::{Responder, reply_to};
use dns_fixtures::zone::read_case;
use dns_fixtures::{dns_config, run};

fn name(text: &str) -> Name {
    Name::from_ascii(text).unwrap()
}

fn mx_record(owner: &str, preference: u16, exchange: &str) -> Record {
    Record::from_rdata(
        name(owner),
        300,
        RData::MX(MX::new(preference, name(exchange))),
    )
}

fn a_record(owner: &str, address: Ipv4Addr) -> Record {
    Record::from_rdata(name(owner), 300, RData::A(A(address)))
}

fn question_of(query: &Message) -> (String, RecordType) {
    let question = &query.queries[0];
    (
        question.name().to_ascii().to_ascii_lowercase(),
        question.query_type(),
    )
}

fn send(socket: &UdpSocket, message: &Message, to: SocketAddr) {
    socket.send_to(&message.to_vec().unwrap(), to).unwrap();
}

fn resolver(servers: Vec<SocketAddr>, timeout: Duration, attempts: u32) -> std::rc::Rc<Resolver> {
    Resolver::new(&dns_config(servers, timeout, attempts))
}

/// The MX RRset of `owner` in case C26, in wire order.
fn c26_mx_records(owner: &str) -> Vec<Record> {
    read_case("C26-truncated-udp-tcp-retry.zone")
        .into_iter()
        .filter(|r| r.owner == owner && r.record_type == "MX")
        .map(|r| {
            let (preference, exchange) = r.rdata.split_once(' ').unwrap();
            mx_record(&r.owner, preference.parse().unwrap(), exchange.trim())
        })
        .collect()
}

/// C26 upstream: over UDP, `big` gets TC=1 with no records and `big2` TC=1 with the first
/// five; over TCP both get the whole RRset.
fn truncating_server(with_tcp: bool) -> Responder {
    let udp = Box::new(|socket: &UdpSocket, from: SocketAddr, query: &Message| {
        let (qname, _) = question_of(query);
        let mut reply = reply_to(query, ResponseCode::NoError);
        reply.metadata.truncation = true;
        if qname == "big2.example.net." {
            reply.add_answers(c26_mx_records(&qname).into_iter().take(5));
        }
        send(socket, &reply, from);
    });
    if !with_tcp {
        return Responder::udp("127.0.0.1", udp);
    }
    let tcp = Box::new(|query: &Message| {
        let (qname, _) = question_of(query);
        let mut reply = reply_to(query, ResponseCode::NoError);
        reply.add_answers(c26_mx_records(&qname));
        reply
    });
    Responder::udp_and_tcp("127.0.0.1", udp, tcp)
}

#[test]
fn truncated_udp_reply_is_asked_again_over_tcp_and_never_used() {
    let server = truncating_server(true);
    run(async {
        let resolver = resolver(vec![server.address], Duration::from_secs(2), 1);
        for domain in ["big.example.net", "big2.example.net"] {
            for _ in 0..2 {
                let DnsOutcome::Answer { records, .. } = resolver.mx(domain).await else {
                    panic!("expected the full MX RRset of {domain}");
                };
                assert_eq!(records.len(), 40, "{domain}");
                assert!(records.contains(&MxRecord {
                    preference: 5,
                    exchange: format!("mx40.{domain}")
                }));
            }
        }
        let stats = resolver.stats();
        assert_eq!((stats.tcp_retries, stats.cache_hits), (2, 2));
        assert_eq!(
            stats.queries_sent, 4,
            "one UDP and one TCP query per domain"
        );
    });
    assert_eq!((server.udp_queries(), server.tcp_queries()), (2, 2));
}

#[test]
fn truncated_records_are_not_an_answer_when_tcp_fails() {
    let server = truncating_server(false);
    run(async {
        let resolver = resolver(vec![server.address], Duration::from_millis(500), 1);
        let outcome = resolver.mx("big2.example.net").await;
        assert!(matches!(outcome, DnsOutcome::TempFail(_)), "{outcome:?}");
        let outcome = resolver.mx("big2.example.net").await;
        assert!(
            matches!(outcome, DnsOutcome::TempFail(_)),
            "cached: {outcome:?}"
        );
        assert_eq!(resolver.stats().cache_hits, 0);
    });
}

/// C29 upstream on 127.0.0.53: before the genuine reply (after 300 ms), forged replies reach
/// the client's port: (a) from 127.0.0.99 with the right ID, (b) from the server with a wrong
/// ID, (c) with the right ID for another question, (d) with QR=0, (e) from the server's
/// address but another port.
fn spoofed_server() -> Responder {
    let forged = |id: u16, qname: &str, kind: MessageType| {
        let mut message = Message::new(id, kind, OpCode::Query);
        message.metadata.recursion_available = true;
        message.add_query(Query::query(name(qname), RecordType::MX));
        message.add_answer(mx_record(qname, 10, "evil.example.org."));
        message.add_additional(a_record("evil.example.org.", Ipv4Addr::new(127, 0, 0, 66)));
        message
    };
    let mut attacker: Option<UdpSocket> = None;
    let other_port = UdpSocket::bind("127.0.0.53:0").unwrap();
    let handler = move |socket: &UdpSocket, from: SocketAddr, query: &Message| {
        let server_port = socket.local_addr().unwrap().port();
        let attacker =
            attacker.get_or_insert_with(|| UdpSocket::bind(("127.0.0.99", server_port)).unwrap());
        let id = query.metadata.id;
        match question_of(query) {
            (qname, RecordType::MX) if qname == "spoof.example.net." => {
                let spoof = "spoof.example.net.";
                send(attacker, &forged(id, spoof, MessageType::Response), from);
                send(
                    socket,
                    &forged(id.wrapping_add(1), spoof, MessageType::Response),
                    from,
                );
                send(
                    socket,
                    &forged(id, "other.example.net.", MessageType::Response),
                    from,
                );
                send(socket, &forged(id, spoof, MessageType::Query), from);
                send(&other_port, &forged(id, spoof, MessageType::Response), from);
                std::thread::sleep(Duration::from_millis(300));
                let mut genuine = reply_to(query, ResponseCode::NoError);
                genuine.add_answer(mx_record(spoof, 10, "mx.spoof.example.net."));
                send(socket, &genuine, from);
            }
            _ => send(socket, &reply_to(query, ResponseCode::NXDomain), from),
        }
    };
    Responder::udp("127.0.0.53", Box::new(handler))
}

#[test]
fn forged_replies_are_dropped_until_the_genuine_one_arrives() {
    let server = spoofed_server();
    run(async {
        let resolver = resolver(vec![server.address], Duration::from_secs(2), 1);
        let genuine = DnsOutcome::Answer {
            records: vec![MxRecord {
                preference: 10,
                exchange: "mx.spoof.example.net".to_string(),
            }],
            ttl: 300,
        };
        assert_eq!(resolver.mx("spoof.example.net").await, genuine);
        assert_eq!(
            resolver.stats().queries_sent,
            1,
            "the first try waited it out"
        );

        assert_eq!(
            resolver.addresses("evil.example.org").await,
            DnsOutcome::NxDomain
        );
        let DnsOutcome::Answer { records, .. } = resolver.mx("spoof.example.net").await else {
            panic!("expected the cached genuine answer");
        };
        assert_eq!(records[0].exchange, "mx.spoof.example.net");
        assert_eq!(
            resolver.stats().cache_hits,
            1,
            "only the genuine MX was cached"
        );
    });
}

#[test]
fn every_query_uses_a_fresh_random_source_port_and_id() {
    let (seen, observed) = mpsc::channel();
    let server = Responder::udp(
        "127.0.0.1",
        Box::new(move |socket, from, query| {
            let _ = seen.send((from.port(), query.metadata.id));
            send(socket, &reply_to(query, ResponseCode::NXDomain), from);
        }),
    );
    let questions = 24;
    run(async {
        let resolver = resolver(vec![server.address], Duration::from_secs(2), 1);
        for i in 0..questions {
            let outcome = resolver.mx(&format!("host{i}.example.net")).await;
            assert_eq!(outcome, DnsOutcome::NxDomain);
        }
    });
    let (ports, ids): (HashSet<u16>, HashSet<u16>) = observed.try_iter().unzip();
    assert!(ports.len() >= questions - 1, "source ports: {ports:?}");
    assert!(ids.len() >= questions - 1, "transaction IDs: {ids:?}");
}

#[test]
fn servfail_defers_discovery_with_4_4_3() {
    let server = Responder::udp(
        "127.0.0.1",
        Box::new(|socket, from, query| {
            send(socket, &reply_to(query, ResponseCode::ServFail), from);
        }),
    );
    run(async {
        let resolver = resolver(vec![server.address], Duration::from_secs(2), 2);
        match resolver.mx("broken.example.net").await {
            DnsOutcome::TempFail(reason) => {
                assert!(reason.contains(&server.address.to_string()), "{reason}");
            }
            other => panic!("expected a temporary failure, got {other:?}"),
        }
        let error = discover(&resolver, "broken.example.net", 25)
            .await
            .unwrap_err();
        assert!(matches!(error, DiscoveryError::TempFail(_)), "{error:?}");
        assert_eq!(error.status(), Status::new(4, 4, 3));
    });
    assert_eq!(server.udp_queries(), 4, "two tries for MX, two for the SRV");
}

#[test]
fn silent_server_is_a_temporary_failure_after_every_try() {
    let server = Responder::silent("127.0.0.1");
    run(async {
        let resolver = resolver(vec![server.address], Duration::from_millis(200), 3);
        let outcome = resolver.mx("amx.example.net").await;
        assert!(matches!(outcome, DnsOutcome::TempFail(_)), "{outcome:?}");
        assert_eq!(resolver.stats().queries_sent, 3);
    });
    assert_eq!(server.udp_queries(), 3);
}

#[test]
fn closed_port_is_a_temporary_failure() {
    let closed = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    run(async {
        let resolver = resolver(vec![closed], Duration::from_secs(2), 1);
        let outcome = resolver.addresses("amx.example.net").await;
        assert!(matches!(outcome, DnsOutcome::TempFail(_)), "{outcome:?}");
    });
}

/// Answers after `delay`: A 127.0.0.81, MX 10 mx.slow.example.net, NXDOMAIN otherwise.
fn slow_server(delay: Duration) -> Responder {
    Responder::udp(
        "127.0.0.1",
        Box::new(move |socket, from, query| {
            std::thread::sleep(delay);
            let (qname, qtype) = question_of(query);
            let mut reply = reply_to(query, ResponseCode::NoError);
            match qtype {
                RecordType::A => reply.add_answer(a_record(&qname, Ipv4Addr::new(127, 0, 0, 81))),
                RecordType::MX => reply.add_answer(mx_record(&qname, 10, "mx.slow.example.net.")),
                _ => &mut reply,
            };
            send(socket, &reply, from);
        }),
    )
}

#[test]
fn second_server_answers_when_the_first_is_silent() {
    let silent = Responder::silent("127.0.0.1");
    let good = slow_server(Duration::ZERO);
    run(async {
        let servers = vec![silent.address, good.address];
        let resolver = resolver(servers, Duration::from_millis(200), 2);
        let outcome = resolver.mx("amx.example.net").await;
        assert!(matches!(outcome, DnsOutcome::Answer { .. }), "{outcome:?}");
    });
    assert_eq!((silent.udp_queries(), good.udp_queries()), (1, 1));
}

#[test]
fn identical_concurrent_questions_share_one_upstream_query() {
    let server = slow_server(Duration::from_millis(200));
    run(async {
        let resolver = resolver(vec![server.address], Duration::from_secs(2), 1);
        let (first, second) = future::zip(
            resolver.mx("slow.example.net"),
            resolver.mx("SLOW.example.net."),
        )
        .await;
        assert!(matches!(first, DnsOutcome::Answer { .. }), "{first:?}");
        assert_eq!(first, second);
        let stats = resolver.stats();
        assert_eq!((stats.queries_sent, stats.coalesced), (1, 1));

        let (a, b) = future::zip(
            resolver.addresses("host.slow.example.net"),
            resolver.addresses("host.slow.example.net"),
        )
        .await;
        assert_eq!(a, b);
        let expected = vec![IpAddr::V4(Ipv4Addr::new(127, 0, 0, 81))];
        assert!(matches!(a, DnsOutcome::Answer { records, .. } if records == expected));
        let stats = resolver.stats();
        assert_eq!(
            (stats.queries_sent, stats.coalesced),
            (3, 3),
            "A and AAAA once each"
        );
    });
    assert_eq!(server.udp_queries(), 3);
}

#[test]
fn waiter_asks_again_when_the_first_asker_gives_up() {
    let server = slow_server(Duration::from_millis(200));
    run(async {
        let resolver = resolver(vec![server.address], Duration::from_secs(2), 1);
        let impatient = future::or(
            async { Some(resolver.mx("slow.example.net").await) },
            async {
                glommio::timer::sleep(Duration::from_millis(50)).await;
                None
            },
        );
        let (gave_up, waited) = future::zip(impatient, resolver.mx("slow.example.net")).await;
        assert_eq!(gave_up, None);
        assert!(matches!(waited, DnsOutcome::Answer { .. }), "{waited:?}");
        let stats = resolver.stats();
        assert_eq!((stats.queries_sent, stats.coalesced), (2, 1));
    });
}

#[test]
fn resolver_without_configured_servers_falls_back_to_the_system_list() {
    let resolver = Resolver::new(&dns_config(Vec::new(), Duration::from_secs(1), 1));
    assert!(!resolver.nameservers().is_empty());
    assert!(resolver.nameservers().len() <= 3);
}
