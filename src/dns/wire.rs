//! DNS messages for the stub resolver, without I/O.
//!
//! - The query: one question, RD=1, an EDNS0 OPT record advertising a 1232-octet UDP payload
//!   (RFC 1035 4.1, RFC 6891 6.2.5).
//! - The checks a reply passes before it is believed: same transaction ID, QR=1 and the same
//!   question, name compared case-insensitively (RFC 5452 9.1, RFC 1035 7.3). The source address
//!   is checked by the transport, which knows it.
//! - What an accepted reply means: CNAME chains inside the answer section (RFC 1034 3.6.2),
//!   NODATA and NXDOMAIN with the negative TTL from the SOA in the authority section
//!   (RFC 2308 3 and 5), and every other RCODE a temporary failure. A chain that stops at an
//!   unresolved target is restarted there by the resolver (RFC 1034 5.3.3).

use std::fmt;
use std::net::IpAddr;

use hickory_proto::op::{Edns, Header, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};

use super::{MxRecord, SrvRecord};

/// UDP payload size advertised in EDNS0: the 2020 DNS flag day value, which avoids IP
/// fragmentation on ordinary paths.
pub const EDNS_PAYLOAD: u16 = 1232;

/// Longest CNAME chain followed inside one answer section; longer chains are treated as loops.
const MAX_CNAME_CHAIN: usize = 8;

/// One question as it goes on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Question {
    /// Fully qualified, in the case the caller gave it.
    pub name: Name,
    pub record_type: RecordType,
}

/// A name that cannot be written on the wire (empty label, label over 63 octets, name over 255
/// octets, or not ASCII).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidName {
    pub name: String,
    pub problem: String,
}

impl fmt::Display for InvalidName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` is not a valid DNS name: {}",
            self.name, self.problem
        )
    }
}

impl Question {
    /// A question for `name` (with or without the trailing dot) and `record_type`.
    pub fn new(name: &str, record_type: RecordType) -> Result<Question, InvalidName> {
        let invalid = |problem: &str| InvalidName {
            name: name.to_string(),
            problem: problem.to_string(),
        };
        let relative = name.strip_suffix('.').unwrap_or(name);
        if relative.is_empty() {
            return Err(invalid("empty name"));
        }
        if !relative.is_ascii() {
            return Err(invalid("not ASCII (IDNs must be given as A-labels)"));
        }
        let mut parsed = Name::from_ascii(relative).map_err(|e| invalid(&e.to_string()))?;
        parsed.set_fqdn(true);
        if parsed.iter().any(|label| label.is_empty()) {
            return Err(invalid("empty label"));
        }
        Ok(Question {
            name: parsed,
            record_type,
        })
    }

    /// The cache and coalescing key: lowercase name with trailing dot, and the type.
    pub fn key(&self) -> QuestionKey {
        QuestionKey {
            name: self.name.to_lowercase().to_ascii(),
            record_type: u16::from(self.record_type),
        }
    }
}

/// Identifies a question regardless of the case of its name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct QuestionKey {
    pub name: String,
    pub record_type: u16,
}

impl QuestionKey {
    /// The key [`Question::key`] gives for `name`, made without parsing the name, when `name`
    /// is a plain host name (letters, digits, `-` and `_` in labels of 1 to 63 octets, 253
    /// octets at most); `None` for anything else, which takes the way through [`Question`].
    /// Lets the resolver answer from its cache without building a `Name` for every question.
    pub fn for_plain_name(name: &str, record_type: RecordType) -> Option<QuestionKey> {
        let relative = name.strip_suffix('.').unwrap_or(name);
        let plain_label = |label: &str| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if relative.len() > 253 || !relative.split('.').all(plain_label) {
            return None;
        }
        let mut key = String::with_capacity(relative.len() + 1);
        key.push_str(relative);
        key.make_ascii_lowercase();
        key.push('.');
        Some(QuestionKey {
            name: key,
            record_type: u16::from(record_type),
        })
    }
}

/// Records of one answer, as the resolver hands them out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Records {
    Srv(Vec<SrvRecord>),
    Mx(Vec<MxRecord>),
    /// From an A or an AAAA query.
    Addresses(Vec<IpAddr>),
}

/// The wire form of a query for `question` with transaction ID `id`.
pub fn encode_query(question: &Question, id: u16) -> Vec<u8> {
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(question.name.clone(), question.record_type));
    let mut edns = Edns::new();
    edns.set_max_payload(EDNS_PAYLOAD);
    message.set_edns(edns);
    // A validated Name under 256 octets with one question always encodes.
    message
        .to_vec()
        .expect("a single-question query always encodes")
}

/// What a datagram or TCP message received for a query turned out to be.
#[derive(Debug)]
pub enum ReplyCheck {
    /// The reply to our question, fully decoded.
    Accepted(Message),
    /// The reply to our question with TC=1: ask again over TCP, use nothing from it.
    Truncated,
    /// Not a reply to our question (wrong ID, QR=0, other question, unreadable header): ignore
    /// it and keep waiting.
    Rejected(&'static str),
    /// The reply to our question, but its records do not decode.
    Malformed(String),
}

/// Checks `bytes` against the query with ID `id` for `question` (RFC 5452 9.1).
pub fn check_reply(bytes: &[u8], id: u16, question: &Question) -> ReplyCheck {
    let mut decoder = BinDecoder::new(bytes);
    let Ok(header) = Header::read(&mut decoder) else {
        return ReplyCheck::Rejected("shorter than a DNS header");
    };
    if header.metadata.id != id {
        return ReplyCheck::Rejected("transaction ID differs");
    }
    if header.metadata.message_type != MessageType::Response {
        return ReplyCheck::Rejected("QR=0, not a response");
    }
    if header.metadata.op_code != OpCode::Query {
        return ReplyCheck::Rejected("opcode is not QUERY");
    }
    if header.counts.queries != 1 {
        return ReplyCheck::Rejected("question count is not 1");
    }
    let Ok(echoed) = Query::read(&mut decoder) else {
        return ReplyCheck::Rejected("question section unreadable");
    };
    if echoed.name() != &question.name
        || echoed.query_type() != question.record_type
        || echoed.query_class() != DNSClass::IN
    {
        return ReplyCheck::Rejected("question differs");
    }
    if header.metadata.truncation {
        return ReplyCheck::Truncated;
    }
    match Message::from_vec(bytes) {
        Ok(message) => ReplyCheck::Accepted(message),
        Err(error) => ReplyCheck::Malformed(error.to_string()),
    }
}

/// What an accepted reply says about the question.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Interpretation {
    /// Records of the asked type; `ttl` is the smallest TTL of them and of the CNAMEs leading
    /// to them, before any clamping.
    Answer { records: Records, ttl: u32 },
    /// The name exists without records of the type. `negative_ttl` from the SOA, if any.
    NoData { negative_ttl: Option<u32> },
    /// The name does not exist. `negative_ttl` from the SOA, if any.
    NxDomain { negative_ttl: Option<u32> },
    /// The answer section ends at a CNAME whose target it does not resolve, with no SOA to
    /// say the target has no data: the server did not follow the alias (unbound's local data,
    /// an authoritative server) and the question must be asked again for `target`.
    Alias { target: Name, ttl: u32 },
    /// The server could not answer; another server or a later try may.
    TempFail(String),
}

/// Interprets a reply already accepted by [`check_reply`] for `question`.
pub fn interpret(message: &Message, question: &Question) -> Interpretation {
    match message.metadata.response_code {
        ResponseCode::NoError => {}
        ResponseCode::NXDomain => {
            return Interpretation::NxDomain {
                negative_ttl: negative_ttl(message),
            };
        }
        other => return Interpretation::TempFail(format!("server answered {other}")),
    }

    let mut owner = question.name.clone();
    let mut ttl = u32::MAX;
    for _ in 0..=MAX_CNAME_CHAIN {
        let rrset: Vec<&Record> = message
            .answers
            .iter()
            .filter(|r| {
                r.dns_class == DNSClass::IN
                    && r.record_type() == question.record_type
                    && r.name == owner
            })
            .collect();
        if !rrset.is_empty() {
            let rrset_ttl = rrset.iter().map(|r| r.ttl).min().unwrap_or(0);
            return Interpretation::Answer {
                records: collect_records(&rrset, question.record_type),
                ttl: ttl.min(rrset_ttl),
            };
        }

        let cname = message.answers.iter().find_map(|r| match &r.data {
            RData::CNAME(target) if r.dns_class == DNSClass::IN && r.name == owner => {
                Some((target.0.clone(), r.ttl))
            }
            _ => None,
        });
        match cname {
            Some((target, cname_ttl)) => {
                owner = target;
                ttl = ttl.min(cname_ttl);
            }
            None if owner != question.name && negative_ttl(message).is_none() => {
                return Interpretation::Alias { target: owner, ttl };
            }
            None => return no_data(message),
        }
    }
    Interpretation::TempFail(format!(
        "CNAME chain for {} longer than {MAX_CNAME_CHAIN} links or looping",
        question.name
    ))
}

/// NOERROR without the records asked for. A referral (NS records, no SOA, in the authority
/// section) is not NODATA (RFC 2308 2.2): it comes from a server that does not recurse, and
/// reading it as "no MX" would send mail to an implicit MX.
fn no_data(message: &Message) -> Interpretation {
    let has_soa = message
        .authorities
        .iter()
        .any(|r| r.record_type() == RecordType::SOA);
    let has_ns = message
        .authorities
        .iter()
        .any(|r| r.record_type() == RecordType::NS);
    if has_ns && !has_soa {
        return Interpretation::TempFail(
            "server sent a referral: it does not resolve recursively".to_string(),
        );
    }
    Interpretation::NoData {
        negative_ttl: negative_ttl(message),
    }
}

/// RFC 2308 5: a negative answer lives for the smaller of the SOA record's TTL and its
/// MINIMUM field.
fn negative_ttl(message: &Message) -> Option<u32> {
    message.authorities.iter().find_map(|r| match &r.data {
        RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
        _ => None,
    })
}

fn collect_records(rrset: &[&Record], record_type: RecordType) -> Records {
    match record_type {
        RecordType::SRV => Records::Srv(
            rrset
                .iter()
                .filter_map(|r| match &r.data {
                    RData::SRV(srv) => Some(SrvRecord {
                        priority: srv.priority,
                        weight: srv.weight,
                        port: srv.port,
                        target: host_name(&srv.target),
                    }),
                    _ => None,
                })
                .collect(),
        ),
        RecordType::MX => Records::Mx(
            rrset
                .iter()
                .filter_map(|r| match &r.data {
                    RData::MX(mx) => Some(MxRecord {
                        preference: mx.preference,
                        exchange: host_name(&mx.exchange),
                    }),
                    _ => None,
                })
                .collect(),
        ),
        _ => Records::Addresses(
            rrset
                .iter()
                .filter_map(|r| match &r.data {
                    RData::A(a) => Some(IpAddr::V4(a.0)),
                    RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
                    _ => None,
                })
                .collect(),
        ),
    }
}

/// A target name as secmx uses it (SNI, certificate checks, logs): lowercase, no trailing dot,
/// `""` for the root.
pub fn host_name(name: &Name) -> String {
    let ascii = name.to_lowercase().to_ascii();
    ascii.trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, NS, SOA, SRV};

    use super::*;

    fn name(text: &str) -> Name {
        Name::from_ascii(text).unwrap()
    }

    #[test]
    fn plain_name_keys_match_the_keys_of_parsed_questions() {
        for text in [
            "example.org",
            "Example.ORG.",
            "_secmx._tcp.Mail-1.example.net",
            "a.b.c.d.e.f.g",
            "xn--bcher-kva.example",
            &format!("{}.example", "a".repeat(63)),
        ] {
            for record_type in [RecordType::A, RecordType::MX, RecordType::SRV] {
                let parsed = Question::new(text, record_type).unwrap().key();
                assert_eq!(
                    QuestionKey::for_plain_name(text, record_type),
                    Some(parsed),
                    "{text}"
                );
            }
        }
        for text in [
            "",
            ".",
            "a..b",
            "a b.example",
            "bücher.example",
            "a\\.b",
            "x*.example",
        ] {
            assert_eq!(
                QuestionKey::for_plain_name(text, RecordType::A),
                None,
                "{text:?}"
            );
        }
        let long = format!("{}.example", "a".repeat(64));
        assert_eq!(QuestionKey::for_plain_name(&long, RecordType::A), None);
    }

    fn question(text: &str, record_type: RecordType) -> Question {
        Question::new(text, record_type).unwrap()
    }

    fn reply_to(question: &Question, id: u16, code: ResponseCode) -> Message {
        let mut message = Message::response(id, OpCode::Query);
        message.metadata.response_code = code;
        message.add_query(Query::query(question.name.clone(), question.record_type));
        message
    }

    fn soa(ttl: u32, minimum: u32) -> Record {
        Record::from_rdata(
            name("example.net."),
            ttl,
            RData::SOA(SOA::new(
                name("ns.example.net."),
                name("hostmaster.example.net."),
                1,
                3600,
                600,
                604800,
                minimum,
            )),
        )
    }

    #[test]
    fn query_carries_edns_payload_recursion_and_one_question() {
        let q = question("Example.NET", RecordType::MX);
        let bytes = encode_query(&q, 0x1234);
        let message = Message::from_vec(&bytes).unwrap();
        assert_eq!(message.metadata.id, 0x1234);
        assert!(message.metadata.recursion_desired);
        assert_eq!(message.queries.len(), 1);
        assert_eq!(message.queries[0].name(), &name("example.net."));
        assert_eq!(message.queries[0].query_type(), RecordType::MX);
        assert_eq!(message.edns.unwrap().max_payload(), EDNS_PAYLOAD);
    }

    #[test]
    fn question_key_ignores_case_and_trailing_dot() {
        assert_eq!(
            question("MX.Example.Net.", RecordType::A).key(),
            question("mx.example.net", RecordType::A).key()
        );
        assert_ne!(
            question("example.net", RecordType::A).key(),
            question("example.net", RecordType::AAAA).key()
        );
    }

    #[test]
    fn names_that_cannot_go_on_the_wire_are_refused() {
        assert!(Question::new("", RecordType::MX).is_err());
        assert!(Question::new(".", RecordType::MX).is_err());
        assert!(Question::new("a..example.net", RecordType::MX).is_err());
        assert!(Question::new(&format!("{}.net", "a".repeat(64)), RecordType::MX).is_err());
        assert!(Question::new("bücher.example", RecordType::MX).is_err());
        assert!(Question::new("_secmx._tcp.example.net", RecordType::SRV).is_ok());
    }

    #[test]
    fn reply_is_accepted_only_with_same_id_qr_and_question() {
        let q = question("spoof.example.net", RecordType::MX);
        let genuine = reply_to(&q, 7, ResponseCode::NoError).to_vec().unwrap();
        assert!(matches!(
            check_reply(&genuine, 7, &q),
            ReplyCheck::Accepted(_)
        ));
        assert!(matches!(
            check_reply(&genuine, 8, &q),
            ReplyCheck::Rejected(_)
        ));

        let mut as_query = reply_to(&q, 7, ResponseCode::NoError);
        as_query.metadata.message_type = MessageType::Query;
        let as_query = as_query.to_vec().unwrap();
        assert!(matches!(
            check_reply(&as_query, 7, &q),
            ReplyCheck::Rejected(_)
        ));

        let other = question("other.example.net", RecordType::MX);
        let other = reply_to(&other, 7, ResponseCode::NoError).to_vec().unwrap();
        assert!(matches!(
            check_reply(&other, 7, &q),
            ReplyCheck::Rejected(_)
        ));

        let other_type = question("spoof.example.net", RecordType::A);
        let other_type = reply_to(&other_type, 7, ResponseCode::NoError)
            .to_vec()
            .unwrap();
        assert!(matches!(
            check_reply(&other_type, 7, &q),
            ReplyCheck::Rejected(_)
        ));

        assert!(matches!(
            check_reply(&[0x00, 0x07, 0x80], 7, &q),
            ReplyCheck::Rejected(_)
        ));
    }

    #[test]
    fn question_match_ignores_case() {
        let q = question("spoof.example.net", RecordType::MX);
        let upper = question("SPOOF.Example.NET", RecordType::MX);
        let reply = reply_to(&upper, 9, ResponseCode::NoError).to_vec().unwrap();
        assert!(matches!(
            check_reply(&reply, 9, &q),
            ReplyCheck::Accepted(_)
        ));
    }

    #[test]
    fn truncated_reply_is_flagged_even_when_its_records_are_cut_off() {
        let q = question("big.example.net", RecordType::MX);
        let mut reply = reply_to(&q, 3, ResponseCode::NoError);
        reply.metadata.truncation = true;
        reply.add_answer(Record::from_rdata(
            name("big.example.net."),
            300,
            RData::MX(MX::new(10, name("mx.big.example.net."))),
        ));
        let mut bytes = reply.to_vec().unwrap();
        bytes.truncate(bytes.len() - 5);
        assert!(matches!(check_reply(&bytes, 3, &q), ReplyCheck::Truncated));
    }

    #[test]
    fn reply_to_our_question_with_broken_records_is_malformed() {
        let q = question("big.example.net", RecordType::MX);
        let mut reply = reply_to(&q, 3, ResponseCode::NoError);
        reply.add_answer(Record::from_rdata(
            name("big.example.net."),
            300,
            RData::MX(MX::new(10, name("mx.big.example.net."))),
        ));
        let mut bytes = reply.to_vec().unwrap();
        bytes.truncate(bytes.len() - 5);
        assert!(matches!(
            check_reply(&bytes, 3, &q),
            ReplyCheck::Malformed(_)
        ));
    }

    #[test]
    fn answer_takes_the_smallest_ttl_and_normalises_targets() {
        let q = question("srv1.example.net", RecordType::SRV);
        let mut reply = reply_to(&q, 1, ResponseCode::NoError);
        reply.add_answer(Record::from_rdata(
            name("SRV1.example.net."),
            300,
            RData::SRV(SRV::new(10, 60, 2525, name("MX-A.Example.NET."))),
        ));
        reply.add_answer(Record::from_rdata(
            name("srv1.example.net."),
            120,
            RData::SRV(SRV::new(0, 0, 0, name("."))),
        ));
        let expected = Records::Srv(vec![
            SrvRecord {
                priority: 10,
                weight: 60,
                port: 2525,
                target: "mx-a.example.net".to_string(),
            },
            SrvRecord {
                priority: 0,
                weight: 0,
                port: 0,
                target: String::new(),
            },
        ]);
        assert_eq!(
            interpret(&reply, &q),
            Interpretation::Answer {
                records: expected,
                ttl: 120
            }
        );
    }

    #[test]
    fn cname_chain_is_followed_and_its_ttls_count() {
        let q = question("alias.example.net", RecordType::A);
        let mut reply = reply_to(&q, 1, ResponseCode::NoError);
        reply.add_answer(Record::from_rdata(
            name("alias.example.net."),
            60,
            RData::CNAME(CNAME(name("Real.example.net."))),
        ));
        reply.add_answer(Record::from_rdata(
            name("real.example.net."),
            300,
            RData::A(A(Ipv4Addr::new(127, 0, 0, 81))),
        ));
        reply.add_answer(Record::from_rdata(
            name("unrelated.example.net."),
            300,
            RData::A(A(Ipv4Addr::new(127, 0, 0, 66))),
        ));
        assert_eq!(
            interpret(&reply, &q),
            Interpretation::Answer {
                records: Records::Addresses(vec![IpAddr::V4(Ipv4Addr::new(127, 0, 0, 81))]),
                ttl: 60
            }
        );
    }

    #[test]
    fn cname_without_its_target_asks_for_the_target() {
        let q = question("alias.example.net", RecordType::A);
        let mut reply = reply_to(&q, 1, ResponseCode::NoError);
        reply.add_answer(Record::from_rdata(
            name("alias.example.net."),
            60,
            RData::CNAME(CNAME(name("amx.example.net."))),
        ));
        assert_eq!(
            interpret(&reply, &q),
            Interpretation::Alias {
                target: name("amx.example.net."),
                ttl: 60
            }
        );

        reply.add_authority(soa(300, 300));
        assert_eq!(
            interpret(&reply, &q),
            Interpretation::NoData {
                negative_ttl: Some(300)
            }
        );
    }

    #[test]
    fn records_for_another_owner_are_not_an_answer() {
        let q = question("spoof.example.net", RecordType::AAAA);
        let mut reply = reply_to(&q, 1, ResponseCode::NoError);
        reply.add_answer(Record::from_rdata(
            name("evil.example.org."),
            300,
            RData::AAAA(AAAA(Ipv6Addr::LOCALHOST)),
        ));
        reply.add_authority(soa(300, 60));
        assert_eq!(
            interpret(&reply, &q),
            Interpretation::NoData {
                negative_ttl: Some(60)
            }
        );
    }

    #[test]
    fn cname_loop_is_a_temporary_failure() {
        let q = question("a.example.net", RecordType::MX);
        let mut reply = reply_to(&q, 1, ResponseCode::NoError);
        for (from, to) in [
            ("a.example.net.", "b.example.net."),
            ("b.example.net.", "a.example.net."),
        ] {
            reply.add_answer(Record::from_rdata(
                name(from),
                300,
                RData::CNAME(CNAME(name(to))),
            ));
        }
        assert!(matches!(interpret(&reply, &q), Interpretation::TempFail(_)));
    }

    #[test]
    fn negative_ttl_is_the_smaller_of_soa_ttl_and_minimum() {
        let q = question("nxd.example.net", RecordType::MX);
        let mut reply = reply_to(&q, 1, ResponseCode::NXDomain);
        reply.add_authority(soa(3600, 300));
        assert_eq!(
            interpret(&reply, &q),
            Interpretation::NxDomain {
                negative_ttl: Some(300)
            }
        );

        let mut reply = reply_to(&q, 1, ResponseCode::NoError);
        reply.add_authority(soa(30, 300));
        assert_eq!(
            interpret(&reply, &q),
            Interpretation::NoData {
                negative_ttl: Some(30)
            }
        );

        let reply = reply_to(&q, 1, ResponseCode::NXDomain);
        assert_eq!(
            interpret(&reply, &q),
            Interpretation::NxDomain { negative_ttl: None }
        );
    }

    #[test]
    fn servfail_and_refused_are_temporary_failures() {
        let q = question("broken.example.net", RecordType::MX);
        for code in [
            ResponseCode::ServFail,
            ResponseCode::Refused,
            ResponseCode::FormErr,
        ] {
            let reply = reply_to(&q, 1, code);
            assert!(matches!(interpret(&reply, &q), Interpretation::TempFail(_)));
        }
    }

    #[test]
    fn referral_is_not_read_as_nodata() {
        let q = question("amx.example.net", RecordType::MX);
        let mut reply = reply_to(&q, 1, ResponseCode::NoError);
        reply.add_authority(Record::from_rdata(
            name("example.net."),
            300,
            RData::NS(NS(name("ns.example.net."))),
        ));
        assert!(matches!(interpret(&reply, &q), Interpretation::TempFail(_)));
    }
}
