//! The sender and resolver cases of the hostile corpus (`tests/cases/C2x-C3x *.zone`), end to
//! end: each case's zone is loaded into a real unbound, receivers stand on the 127.0.0.x
//! addresses its header names, and a `secmx serve` gateway relays mail submitted with swaks or
//! smtplib. Where unbound will not misbehave as the case needs (partial truncation, forged
//! replies), a scripted DNS front stands between the daemon and unbound.
//!
//! Addresses are the cases' own; the DNS servers and gateways of each test use further
//! 127.0.0.x addresses of the case's range, so that tests running in parallel never share one.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use common::dns_front::{DnsFront, UdpQuery};
use common::receiver::{ReceivedMessage, Script, ScriptedReceiver};
use common::zone_file::CaseZone;
use common::*;
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::{A, MX, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};

fn lo(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, host)
}

fn at(host: u8, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(lo(host)), port)
}

/// `example.net.` is a static zone of its own, so that negative answers carry its SOA when the
/// case gives one (RFC 2308).
const EXAMPLE_NET_ZONE: &str = "    local-zone: \"example.net.\" static\n";

/// Serves the case's records from a real unbound on `127.0.0.<host>`.
fn case_dns(dir: &TempDir, case: &CaseZone, host: u8, extra: &str) -> Unbound {
    let extra = format!("{EXAMPLE_NET_ZONE}{extra}");
    Unbound::start_with(dir.path(), lo(host), &case.records(), &extra)
}

/// The sending gateway: a BER listener for submissions on `listen`, `a.test` local so that
/// DSNs to alice@a.test land in the returned Maildir, and `mode` as the default outbound mode.
fn gateway(
    dir: &TempDir,
    nameserver: SocketAddr,
    listen: SocketAddr,
    mode: &str,
    smtp_port: u16,
    tweak: impl FnOnce(SecmxConfig) -> SecmxConfig,
) -> (Secmx, Maildir) {
    let dsn_box = Maildir::new(&dir.join("mail-a"));
    let config = SecmxConfig::new("gw.a.test", nameserver)
        .listener(listen, "ber")
        .maildir_domain("a.test", dsn_box.root())
        .set(&["outbound", "mode"], mode)
        .set(&["outbound", "smtp_port"], i64::from(smtp_port));
    let secmx = Secmx::start(dir.path(), "gateway", tweak(config));
    (secmx, dsn_box)
}

/// The message among `messages` whose Subject is `subject`.
fn find<'a>(messages: &'a [ReceivedMessage], subject: &str) -> Option<&'a ReceivedMessage> {
    let header = format!("Subject: {subject}");
    messages
        .iter()
        .find(|m| m.content.lines().any(|l| l.trim_end() == header))
}

fn context(case: &CaseZone, gateway: &Secmx) -> String {
    format!(
        "case {} expects: {}\n{}",
        case.file,
        case.header("expect"),
        gateway.log_tail()
    )
}

/// Sends `count` messages over one SMTP session (Subjects `<prefix>-<n>`).
fn send_many(gateway: &Secmx, to: &str, count: usize, prefix: &str) {
    let server = gateway.address();
    let sent = python(
        "send_messages.py",
        &[
            &server.ip().to_string(),
            &server.port().to_string(),
            "alice@a.test",
            to,
            &count.to_string(),
            prefix,
        ],
        Duration::from_secs(120),
    );
    assert_eq!(
        sent.code,
        Some(0),
        "{}\n{}",
        sent.transcript(),
        gateway.log_tail()
    );
}

/// The `Status:` line of a DSN's delivery report.
fn dsn_status(dsn: &str) -> Option<&str> {
    dsn.lines()
        .find_map(|l| l.strip_prefix("Status: "))
        .map(str::trim)
}

// ---------------------------------------------------------------------------------------------
// C20: SRV priority and weight (RFC 2782)

/// Messages in the weighted phase of C20. The weight-60 target comes first with probability
/// p = 121/202 (about 0.6, with the inclusive draw of RFC 2782), so its count is
/// Binomial(2000, p): mean 1198, standard deviation 21.9. The case's band of 55-65 % (1100 to
/// 1300) lies 4.5 deviations out on either side: a correct sender fails it with probability
/// below 1e-5, and so does a sender that ignored the weights (p = 0.5: mean 1000, deviation
/// 22.4) pass it; one that kept the wire order (mx-b-w40 first) never passes.
const WEIGHTED_MESSAGES: usize = 2000;
const WEIGHTED_BOUNDS: std::ops::RangeInclusive<usize> = 1100..=1300;

/// Messages in the priority phase of C20.
const PRIORITY_MESSAGES: usize = 20;

#[test]
fn c20_srv_lowest_priority_takes_all_mail_then_the_weighted_pair_shares_by_weight() {
    let dir = TempDir::new("c20");
    let case = CaseZone::read("C20-srv-priority-weight-order.zone");
    let dns = case_dns(&dir, &case, 55, "");
    let mut p5 = ScriptedReceiver::start(dir.path(), "mx-p5", &[at(51, 2526)], Script::new());
    let w60 = ScriptedReceiver::start(dir.path(), "mx-a-w60", &[at(52, 2525)], Script::new());
    let w40 = ScriptedReceiver::start(dir.path(), "mx-b-w40", &[at(53, 2525)], Script::new());
    let p20 = ScriptedReceiver::start(dir.path(), "mx-p20", &[at(54, 2525)], Script::new());
    let fallback =
        ScriptedReceiver::start(dir.path(), "mx-fallback", &[at(59, 2525)], Script::new());
    let (gateway, _) = gateway(
        &dir,
        dns.address(),
        at(56, 2525),
        "best-effort",
        2525,
        |c| c,
    );
    let why = || context(&case, &gateway);

    // Phase 1: mx-p5, last on the wire, has the lowest priority number and its own port.
    send_many(&gateway, "user@srv1.example.net", PRIORITY_MESSAGES, "p1");
    p5.wait_for_messages(PRIORITY_MESSAGES, why);
    for other in [&w60, &w40, &p20, &fallback] {
        assert_eq!(other.connections(), 0, "{}\n{}", why(), other.log_tail());
    }

    // Phase 2: mx-p5 refuses connections; the priority-10 pair shares by weight.
    p5.kill();
    send_many(&gateway, "user@srv1.example.net", WEIGHTED_MESSAGES, "p2");
    let counts = wait_until(
        &format!("{WEIGHTED_MESSAGES} messages at mx-a-w60 and mx-b-w40"),
        Duration::from_secs(90),
        why,
        || {
            let counts = (w60.messages().len(), w40.messages().len());
            (counts.0 + counts.1 >= WEIGHTED_MESSAGES).then_some(counts)
        },
    );
    let summary = format!(
        "mx-a-w60 (weight 60): {}, mx-b-w40 (weight 40): {}, mx-p20 connections: {}, \
         MX fallback connections: {}",
        counts.0,
        counts.1,
        p20.connections(),
        fallback.connections()
    );
    eprintln!("{summary}");
    assert_eq!(counts.0 + counts.1, WEIGHTED_MESSAGES, "{summary}");
    assert!(WEIGHTED_BOUNDS.contains(&counts.0), "{summary}\n{}", why());
    assert_eq!(p20.connections(), 0, "{summary}");
    assert_eq!(fallback.connections(), 0, "{summary}");
    assert!(
        gateway.events("deferred").is_empty(),
        "every message went out in its first attempt\n{}",
        why()
    );
}

// ---------------------------------------------------------------------------------------------
// C23: implicit MX, NXDOMAIN, SERVFAIL

/// `broken.example.net` is resolved instead of answered locally, by forwarding to an address
/// unbound is told never to query: unbound answers SERVFAIL at once and sends nothing anywhere.
const BROKEN_EXAMPLE_NET: &str = "    local-zone: \"broken.example.net.\" transparent\n\
                                  \x20   do-not-query-address: 127.0.0.254\n\
                                  forward-zone:\n\
                                  \x20   name: \"broken.example.net.\"\n\
                                  \x20   forward-addr: 127.0.0.254\n";

#[test]
fn c23_domain_without_mx_or_srv_is_its_own_implicit_mx() {
    let dir = TempDir::new("c23-amx");
    let case = CaseZone::read("C23-implicit-mx-fallback.zone");
    let dns = case_dns(&dir, &case, 82, BROKEN_EXAMPLE_NET);
    let amx = ScriptedReceiver::start(dir.path(), "amx", &[at(81, 2525)], Script::new());
    let (gateway, dsn_box) = gateway(
        &dir,
        dns.address(),
        at(83, 2525),
        "best-effort",
        2525,
        |c| c,
    );

    submit(
        gateway.address(),
        "alice@a.test",
        "user@amx.example.net",
        "c23-amx",
    );

    let messages = amx.wait_for_messages(1, || context(&case, &gateway));
    let message = find(&messages, "c23-amx").expect("the submitted message");
    assert_eq!(message.recipients, ["user@amx.example.net"]);
    let delivered = gateway.wait_for_event("delivered", "user@amx.example.net");
    assert!(delivered.contains("amx.example.net"), "{delivered}");
    assert!(dsn_box.messages("alice").is_empty(), "no DSN");
}

#[test]
fn c23_nxdomain_bounces_at_once_with_5_1_2() {
    let dir = TempDir::new("c23-nxd");
    let case = CaseZone::read("C23-implicit-mx-fallback.zone");
    let dns = case_dns(&dir, &case, 84, BROKEN_EXAMPLE_NET);
    let (gateway, dsn_box) = gateway(
        &dir,
        dns.address(),
        at(85, 2525),
        "best-effort",
        2525,
        |c| c,
    );

    submit(
        gateway.address(),
        "alice@a.test",
        "user@nxd.example.net",
        "c23-nxd",
    );

    let dsns = dsn_box.wait_for("alice", 1, &[&gateway]);
    let dsn = &dsns[0];
    assert_eq!(dsn_status(dsn), Some("5.1.2"), "{dsn}");
    assert!(dsn.contains("user@nxd.example.net"), "{dsn}");
    let bounced = gateway.wait_for_event("bounced", "user@nxd.example.net");
    assert!(bounced.contains("status=5.1.2"), "{bounced}");
    assert!(
        gateway.events("deferred").is_empty(),
        "NXDOMAIN is permanent: no retry\n{}",
        context(&case, &gateway)
    );
}

#[test]
fn c23_servfail_defers_with_4_4_3_and_never_bounces() {
    let dir = TempDir::new("c23-broken");
    let case = CaseZone::read("C23-implicit-mx-fallback.zone");
    let dns = case_dns(&dir, &case, 86, BROKEN_EXAMPLE_NET);
    let (gateway, dsn_box) = gateway(
        &dir,
        dns.address(),
        at(87, 2525),
        "best-effort",
        2525,
        |c| c,
    );

    submit(
        gateway.address(),
        "alice@a.test",
        "user@broken.example.net",
        "c23-broken",
    );

    // Retried: at least three attempts, each a 4.4.3 deferral.
    let deferrals = wait_until(
        "three deferrals of user@broken.example.net",
        WAIT,
        || context(&case, &gateway),
        || {
            let lines: Vec<String> = gateway
                .events("deferred")
                .into_iter()
                .filter(|l| l.contains("user@broken.example.net"))
                .collect();
            (lines.len() >= 3).then_some(lines)
        },
    );
    for line in &deferrals {
        assert!(line.contains("status=4.4.3"), "{line}");
    }
    assert!(
        gateway.events("bounced").is_empty(),
        "{}",
        context(&case, &gateway)
    );
    assert!(
        dsn_box.messages("alice").is_empty(),
        "no DSN for a temporary failure"
    );
}

// ---------------------------------------------------------------------------------------------
// C24: null MX (RFC 7505)

#[test]
fn c24_null_mx_bounces_at_once_with_5_1_10_without_address_lookup_or_connection() {
    let dir = TempDir::new("c24");
    let case = CaseZone::read("C24-null-mx.zone");
    let dns = case_dns(&dir, &case, 92, "");
    let trap = ScriptedReceiver::start(dir.path(), "nullmx", &[at(91, 2525)], Script::new());
    let (gateway, dsn_box) = gateway(
        &dir,
        dns.address(),
        at(93, 2525),
        "best-effort",
        2525,
        |c| c,
    );

    submit(
        gateway.address(),
        "alice@a.test",
        "user@nullmx.example.net",
        "c24",
    );

    let dsns = dsn_box.wait_for("alice", 1, &[&gateway]);
    let dsn = &dsns[0];
    assert_eq!(dsn_status(dsn), Some("5.1.10"), "{dsn}");
    assert!(dsn.contains("user@nullmx.example.net"), "{dsn}");
    gateway.wait_for_event("bounced", "user@nullmx.example.net");
    assert!(
        gateway.events("deferred").is_empty(),
        "{}",
        context(&case, &gateway)
    );
    assert_eq!(trap.connections(), 0, "{}", trap.log_tail());
    let queries = dns.log();
    for record_type in ["A", "AAAA"] {
        let lookup = format!("nullmx.example.net. {record_type} IN");
        assert!(
            !queries.contains(&lookup),
            "no address lookup for a null-MX domain\n{}",
            dns.log_tail()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// C26: truncated UDP answers are asked again over TCP

#[test]
fn c26_mx_rrsets_too_large_for_udp_are_fetched_over_tcp_from_unbound() {
    let dir = TempDir::new("c26-unbound");
    let case = CaseZone::read("C26-truncated-udp-tcp-retry.zone");
    // 40 MX records of about 70 octets each do not fit the resolver's 1232-octet EDNS payload:
    // unbound answers TC=1 with an empty answer section over UDP.
    let dns = case_dns(&dir, &case, 113, "");
    let mx40_big = ScriptedReceiver::start(dir.path(), "mx40-big", &[at(111, 2525)], Script::new());
    let mx40_big2 =
        ScriptedReceiver::start(dir.path(), "mx40-big2", &[at(112, 2525)], Script::new());
    let (gateway, _) = gateway(
        &dir,
        dns.address(),
        at(115, 2525),
        "best-effort",
        2525,
        |c| c,
    );

    submit(
        gateway.address(),
        "alice@a.test",
        "user@big.example.net",
        "c26-big",
    );
    submit(
        gateway.address(),
        "alice@a.test",
        "user@big2.example.net",
        "c26-big2",
    );

    let why = || context(&case, &gateway);
    find(&mx40_big.wait_for_messages(1, why), "c26-big").expect("c26-big at mx40.big");
    find(&mx40_big2.wait_for_messages(1, why), "c26-big2").expect("c26-big2 at mx40.big2");
    assert!(gateway.events("deferred").is_empty(), "{}", why());
}

/// The five lowest-preference records of an MX RRset, in preference order: what a server that
/// cut the RRset after its first records would put in a truncated reply.
fn first_five_mx(answers: &[Record]) -> Vec<Record> {
    let mut records: Vec<Record> = answers
        .iter()
        .filter(|r| matches!(&r.data, RData::MX(mx) if mx.preference >= 11))
        .cloned()
        .collect();
    records.sort_by_key(|r| match &r.data {
        RData::MX(mx) => mx.preference,
        _ => u16::MAX,
    });
    records.truncate(5);
    records
}

#[test]
fn c26_truncated_udp_replies_with_and_without_records_are_never_used() {
    let dir = TempDir::new("c26-front");
    let case = CaseZone::read("C26-truncated-udp-tcp-retry.zone");
    let dns = case_dns(&dir, &case, 116, "");
    // Over UDP, MX big gets TC=1 with no records and MX big2 TC=1 with five records for hosts
    // without addresses; everything else, and every TCP query, is unbound's genuine answer.
    let script = Arc::new(|query: &UdpQuery<'_>| {
        let name = query.name();
        if query.record_type() != RecordType::MX || !name.starts_with("big") {
            return query.relay();
        }
        let mut reply = query.genuine();
        reply.metadata.truncation = true;
        let partial = if name == "big2.example.net." {
            first_five_mx(&reply.answers)
        } else {
            Vec::new()
        };
        reply.answers = partial;
        query.reply(&reply);
    });
    let front = DnsFront::start(at(117, 0), dns.address(), script);
    let mx40_big = ScriptedReceiver::start(dir.path(), "mx40-big", &[at(111, 2526)], Script::new());
    let mx40_big2 =
        ScriptedReceiver::start(dir.path(), "mx40-big2", &[at(112, 2526)], Script::new());
    let (gateway, _) = gateway(
        &dir,
        front.address(),
        at(118, 2525),
        "best-effort",
        2526,
        |c| c,
    );

    submit(
        gateway.address(),
        "alice@a.test",
        "user@big.example.net",
        "c26-big",
    );
    submit(
        gateway.address(),
        "alice@a.test",
        "user@big2.example.net",
        "c26-big2",
    );

    let why = || {
        format!(
            "{}\nqueries seen: {:#?}",
            context(&case, &gateway),
            front.seen()
        )
    };
    find(&mx40_big.wait_for_messages(1, why), "c26-big").expect("c26-big at mx40.big");
    find(&mx40_big2.wait_for_messages(1, why), "c26-big2").expect("c26-big2 at mx40.big2");
    let seen = front.seen();
    for domain in ["big.example.net.", "big2.example.net."] {
        let asked = |over_tcp: bool| {
            seen.iter().any(|q| {
                q.over_tcp == over_tcp && q.name == domain && q.record_type == RecordType::MX
            })
        };
        assert!(
            asked(false) && asked(true),
            "MX {domain} over UDP, then TCP\n{}",
            why()
        );
    }
    assert!(gateway.events("deferred").is_empty(), "{}", why());
}

// ---------------------------------------------------------------------------------------------
// C29: forged DNS replies

/// Where the case's configured server is; another port of 127.0.0.53 if port 53 is taken.
fn c29_front_address() -> SocketAddr {
    let wanted = at(53, 53);
    let free = UdpSocket::bind(wanted).is_ok() && std::net::TcpListener::bind(wanted).is_ok();
    if free {
        wanted
    } else {
        eprintln!("127.0.0.53:53 is taken; the C29 DNS front uses another port of 127.0.0.53");
        at(53, 0)
    }
}

fn name(text: &str) -> Name {
    Name::from_ascii(text).expect("a valid name")
}

fn record(owner: &str, data: RData) -> Record {
    Record::from_rdata(name(owner), 300, data)
}

/// The port of the C29 receivers (and of the attacker's, in a forged SRV record).
const C29_PORT: u16 = 2525;

/// A forged reply: transaction `id`, question `qname`/`qtype`, `kind` (QR), and answers that
/// all lead to the attacker's host 127.0.0.66, plus the case's MX and A records.
fn forged(id: u16, qname: &str, qtype: RecordType, kind: MessageType) -> Message {
    let evil = "evil.example.org.";
    let evil_a = record(evil, RData::A(A(lo(66))));
    let mut message = Message::new(id, kind, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.metadata.recursion_available = true;
    message.add_query(Query::query(name(qname), qtype));
    match qtype {
        RecordType::SRV => message.add_answer(record(
            qname,
            RData::SRV(SRV::new(0, 0, C29_PORT, name(evil))),
        )),
        RecordType::A => message.add_answer(record(qname, RData::A(A(lo(66))))),
        _ => message.add_answer(record(qname, RData::MX(MX::new(10, name(evil))))),
    };
    message.add_answer(record(
        "spoof.example.net.",
        RData::MX(MX::new(10, name(evil))),
    ));
    message.add_additional(evil_a);
    message
}

#[test]
fn c29_forged_replies_are_dropped_and_the_genuine_mx_gets_the_mail() {
    let dir = TempDir::new("c29");
    let case = CaseZone::read("C29-dns-reply-validation.zone");
    let dns = case_dns(&dir, &case, 142, "");
    let wanted = c29_front_address();
    // The attacker sends from 127.0.0.99 and from another port of the server's address.
    let attackers = std::sync::OnceLock::<(UdpSocket, UdpSocket)>::new();
    let script = Arc::new(move |query: &UdpQuery<'_>| {
        let front_port = query.socket.local_addr().expect("front address").port();
        let (attacker, side_port) = attackers.get_or_init(|| {
            (
                UdpSocket::bind((lo(99), front_port)).expect("bind 127.0.0.99 at the front's port"),
                UdpSocket::bind((lo(53), 0)).expect("bind another port of 127.0.0.53"),
            )
        });
        let id = query.query.metadata.id;
        let (qname, qtype) = (query.name(), query.record_type());
        let send = |socket: &UdpSocket, message: Message| {
            let _ = socket.send_to(&message.to_vec().expect("forgery encodes"), query.client);
        };
        let response = MessageType::Response;
        // (a) right ID, wrong source address.
        send(attacker, forged(id, &qname, qtype, response));
        // (b) right source, wrong ID.
        query.reply(&forged(id.wrapping_add(1), &qname, qtype, response));
        // (c) right source and ID, another question.
        query.reply(&forged(id, "other.example.net.", RecordType::MX, response));
        // (d) right source and ID, but a query (QR=0).
        query.reply(&forged(id, &qname, qtype, MessageType::Query));
        // (e) right address and ID, wrong source port.
        send(side_port, forged(id, &qname, qtype, response));
        std::thread::sleep(Duration::from_millis(300));
        query.relay();
    });
    let front = DnsFront::start(wanted, dns.address(), script);
    let genuine =
        ScriptedReceiver::start(dir.path(), "mx-spoof", &[at(141, C29_PORT)], Script::new());
    let evil = ScriptedReceiver::start(dir.path(), "evil", &[at(66, C29_PORT)], Script::new());
    let (gateway, _) = gateway(
        &dir,
        front.address(),
        at(143, 2525),
        "best-effort",
        C29_PORT,
        |c| c.set(&["dns", "timeout"], "2s"),
    );

    submit(
        gateway.address(),
        "alice@a.test",
        "user@spoof.example.net",
        "c29-first",
    );
    let why = || {
        format!(
            "{}\nqueries seen: {:#?}",
            context(&case, &gateway),
            front.seen()
        )
    };
    find(&genuine.wait_for_messages(1, why), "c29-first").expect("c29-first at mx.spoof");

    // A second message goes by the cache: still the genuine MX.
    submit(
        gateway.address(),
        "alice@a.test",
        "user@spoof.example.net",
        "c29-second",
    );
    find(&genuine.wait_for_messages(2, why), "c29-second").expect("c29-second at mx.spoof");

    assert_eq!(evil.connections(), 0, "{}\n{}", why(), evil.log_tail());
    let seen = front.seen();
    assert!(
        seen.iter().all(|q| !q.name.contains("evil")),
        "no forged name was ever looked up\n{}",
        why()
    );
    assert!(
        seen.iter()
            .any(|q| q.name == "spoof.example.net." && q.record_type == RecordType::MX),
        "{}",
        why()
    );
}

// ---------------------------------------------------------------------------------------------
// C31: SNI and the certificate name check

/// The receiver of C31 on `port`: with SNI "mx.sni.example.net" the test CA's certificate for
/// that name, without SNI (or, when `honours_sni` is false, always) the hosting wildcard, and
/// for the trailing-dot name an unrecognized_name alert.
fn c31_receiver(dir: &TempDir, ca: &TestCa, port: u16, honours_sni: bool) -> ScriptedReceiver {
    let wildcard = ca.issue("*.hosting.example.org");
    let mut script = Script::new().tls(&wildcard);
    if honours_sni {
        let own = ca.issue("mx.sni.example.net");
        script = script
            .sni("mx.sni.example.net", &own)
            .refuse_sni("mx.sni.example.net.");
    }
    ScriptedReceiver::start(dir.path(), "mx-sni", &[at(161, port)], script)
}

#[test]
fn c31_sos_sends_the_mx_name_as_sni_and_delivers_over_verified_tls() {
    let dir = TempDir::new("c31-sni");
    let case = CaseZone::read("C31-tls-sni-mx-hostname.zone");
    let ca = TestCa::new(dir.path());
    let dns = case_dns(&dir, &case, 162, "");
    let receiver = c31_receiver(&dir, &ca, 2525, true);
    let (gateway, _) = gateway(
        &dir,
        dns.address(),
        at(165, 2525),
        "secure-only",
        2525,
        |c| c.ca_file(ca.ca_file()),
    );

    submit(
        gateway.address(),
        "alice@a.test",
        "user@sni.example.net",
        "c31-sni",
    );

    let messages = receiver.wait_for_messages(1, || context(&case, &gateway));
    let message = find(&messages, "c31-sni").expect("the submitted message");
    assert_eq!(message.sni, "mx.sni.example.net");
    assert_ne!(message.tls, "none");
    let delivered = gateway.wait_for_event("delivered", "user@sni.example.net");
    assert!(delivered.contains(" verified"), "{delivered}");
}

#[test]
fn c31_sos_defers_with_4_7_when_the_mx_presents_only_the_hosting_wildcard() {
    let dir = TempDir::new("c31-wildcard-sos");
    let case = CaseZone::read("C31-tls-sni-mx-hostname.zone");
    let ca = TestCa::new(dir.path());
    let dns = case_dns(&dir, &case, 163, "");
    let receiver = c31_receiver(&dir, &ca, 2526, false);
    let (gateway, dsn_box) = gateway(
        &dir,
        dns.address(),
        at(166, 2525),
        "secure-only",
        2526,
        |c| c.ca_file(ca.ca_file()),
    );

    submit(
        gateway.address(),
        "alice@a.test",
        "user@sni.example.net",
        "c31-wildcard",
    );

    let deferred = gateway.wait_for_event("deferred", "user@sni.example.net");
    assert!(deferred.contains("status=4.7."), "{deferred}");
    receiver.wait_for_event("tls-failed", || context(&case, &gateway));
    assert!(
        !receiver.commands().iter().any(|c| c.starts_with("MAIL")),
        "no transaction with an unverified receiver\n{}",
        receiver.log_tail()
    );
    assert!(receiver.messages().is_empty());
    assert!(
        gateway.events("bounced").is_empty(),
        "{}",
        gateway.log_tail()
    );
    assert!(dsn_box.messages("alice").is_empty());
}

#[test]
fn c31_bes_delivers_over_unverified_tls_when_the_mx_presents_the_hosting_wildcard() {
    let dir = TempDir::new("c31-wildcard-bes");
    let case = CaseZone::read("C31-tls-sni-mx-hostname.zone");
    let ca = TestCa::new(dir.path());
    let dns = case_dns(&dir, &case, 164, "");
    let receiver = c31_receiver(&dir, &ca, 2527, false);
    let (gateway, _) = gateway(
        &dir,
        dns.address(),
        at(167, 2525),
        "best-effort",
        2527,
        |c| c.ca_file(ca.ca_file()),
    );

    submit(
        gateway.address(),
        "alice@a.test",
        "user@sni.example.net",
        "c31-bes",
    );

    let messages = receiver.wait_for_messages(1, || context(&case, &gateway));
    let message = find(&messages, "c31-bes").expect("the submitted message");
    assert_ne!(message.tls, "none", "TLS, though unauthenticated");
    assert_eq!(message.sni, "mx.sni.example.net");
    let delivered = gateway.wait_for_event("delivered", "user@sni.example.net");
    assert!(delivered.contains("unverified"), "{delivered}");
}

// ---------------------------------------------------------------------------------------------
// C32: a receiver whose TLS handshake fails

fn c32_receiver(dir: &TempDir, ca: &TestCa, port: u16) -> ScriptedReceiver {
    let leaf = ca.issue("mx.badtls.example.net");
    let script = Script::new().tls(&leaf).tls_abort();
    ScriptedReceiver::start(dir.path(), "mx-badtls", &[at(171, port)], script)
}

#[test]
fn c32_bes_reconnects_in_plaintext_and_delivers_within_the_same_attempt() {
    let dir = TempDir::new("c32-bes");
    let case = CaseZone::read("C32-tls-preferred-fallback.zone");
    let ca = TestCa::new(dir.path());
    let dns = case_dns(&dir, &case, 172, "");
    let receiver = c32_receiver(&dir, &ca, 2525);
    let (gateway, _) = gateway(
        &dir,
        dns.address(),
        at(174, 2525),
        "best-effort",
        2525,
        |c| c.ca_file(ca.ca_file()),
    );

    submit(
        gateway.address(),
        "alice@a.test",
        "user@badtls.example.net",
        "c32-bes",
    );

    let messages = receiver.wait_for_messages(1, || context(&case, &gateway));
    let message = find(&messages, "c32-bes").expect("the submitted message");
    assert_eq!(message.tls, "none");
    let aborted = receiver.events_of("tls-aborted");
    assert_eq!(aborted.len(), 1, "{}", receiver.log_tail());
    let aborted_session = aborted[0].get("session").unwrap_or_default().to_string();
    assert_ne!(
        message.session.to_string(),
        aborted_session,
        "the session whose handshake failed is not reused"
    );
    let plaintext_session_used_starttls = receiver.events_of("command").iter().any(|e| {
        e.get("session") == Some(message.session.to_string().as_str())
            && e.get("line")
                .is_some_and(|l| l.eq_ignore_ascii_case("STARTTLS"))
    });
    assert!(!plaintext_session_used_starttls, "{}", receiver.log_tail());
    let delivered = gateway.wait_for_event("delivered", "user@badtls.example.net");
    assert!(delivered.contains("tls=\"none\""), "{delivered}");
    assert!(
        gateway.log().contains("TLS failed; retrying in plaintext"),
        "the failed handshake is logged\n{}",
        gateway.log_tail()
    );
    assert!(
        gateway.events("deferred").is_empty(),
        "delivered in the attempt whose handshake failed\n{}",
        gateway.log_tail()
    );
}

#[test]
fn c32_sos_defers_with_4_7_and_bounces_with_5_7_at_queue_expiry_never_in_clear() {
    let dir = TempDir::new("c32-sos");
    let case = CaseZone::read("C32-tls-preferred-fallback.zone");
    let ca = TestCa::new(dir.path());
    let dns = case_dns(&dir, &case, 173, "");
    let receiver = c32_receiver(&dir, &ca, 2526);
    let (gateway, dsn_box) = gateway(
        &dir,
        dns.address(),
        at(175, 2525),
        "secure-only",
        2526,
        |c| {
            c.ca_file(ca.ca_file())
                .set(&["outbound", "queue_lifetime"], "5s")
        },
    );

    submit(
        gateway.address(),
        "alice@a.test",
        "user@badtls.example.net",
        "c32-sos",
    );

    let deferred = gateway.wait_for_event("deferred", "user@badtls.example.net");
    assert!(deferred.contains("status=4.7."), "{deferred}");
    let dsns = dsn_box.wait_for("alice", 1, &[&gateway]);
    let dsn = &dsns[0];
    let status = dsn_status(dsn).unwrap_or_default();
    assert!(status.starts_with("5.7."), "{dsn}");
    assert!(dsn.contains("user@badtls.example.net"), "{dsn}");
    assert!(dsn.contains("TLS"), "the DSN names the TLS failure\n{dsn}");
    gateway.wait_for_event("bounced", "user@badtls.example.net");

    assert!(receiver.messages().is_empty(), "{}", receiver.log_tail());
    let commands = receiver.commands();
    assert!(
        !commands
            .iter()
            .any(|c| c.to_ascii_uppercase().starts_with("MAIL")),
        "never a transaction in clear: {commands:#?}"
    );
    // Every session ended in the aborted handshake (its event may trail the daemon's log line).
    wait_until(
        "every session to have tried TLS",
        WAIT,
        || format!("{commands:#?}\n{}", receiver.log_tail()),
        || (receiver.connections() == receiver.events_of("tls-aborted").len()).then_some(()),
    );
}
