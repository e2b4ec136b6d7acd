//! DNS replies as the stub resolver receives them (RFC 1035 4.1, RFC 5452 9.1, RFC 2308):
//! reply validation and answer interpretation over arbitrary bytes.
//!
//! Each input is checked twice: against a fixed MX question, and against the question the
//! input itself carries (with its own ID), so that most inputs reach the interpretation.
//!
//! Checked: nothing panics; a reply is accepted only with the query's ID, QR=1, opcode QUERY and
//! exactly the asked question; TC=1 is reported only when set; an answer carries records of the
//! asked type with target names normalised, and its TTL is that of some answer record.

#![no_main]

use hickory_proto::op::{Header, Message, MessageType, OpCode, Query};
use hickory_proto::rr::RecordType;
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use libfuzzer_sys::fuzz_target;
use secmx::dns::wire::{
    Interpretation, Question, Records, ReplyCheck, check_reply, encode_query, interpret,
};

fuzz_target!(|data: &[u8]| {
    let fixed = Question::new("Spoof.Example.NET", RecordType::MX).expect("a valid name");
    check(data, 0x1234, &fixed);

    if let Some((id, question)) = echoed_question(data) {
        check(data, id, &question);
        let query = encode_query(&question, id);
        assert!(matches!(
            check_reply(&query, id, &question),
            ReplyCheck::Rejected(_)
        ));
    }
});

/// The ID and the first question of `data`, when they make a question secmx could ask.
fn echoed_question(data: &[u8]) -> Option<(u16, Question)> {
    let mut decoder = BinDecoder::new(data);
    let header = Header::read(&mut decoder).ok()?;
    let query = Query::read(&mut decoder).ok()?;
    let question = Question::new(&query.name().to_ascii(), query.query_type()).ok()?;
    Some((header.metadata.id, question))
}

fn check(data: &[u8], id: u16, question: &Question) {
    match check_reply(data, id, question) {
        ReplyCheck::Accepted(message) => {
            assert_matches_query(&message, id, question);
            assert!(!message.metadata.truncation);
            check_interpretation(&message, question);
        }
        ReplyCheck::Truncated => {
            assert!(data.len() >= 12 && data[2] & 0x02 != 0, "TC flag not set");
        }
        ReplyCheck::Rejected(_) | ReplyCheck::Malformed(_) => {}
    }
}

fn assert_matches_query(message: &Message, id: u16, question: &Question) {
    assert_eq!(message.metadata.id, id);
    assert_eq!(message.metadata.message_type, MessageType::Response);
    assert_eq!(message.metadata.op_code, OpCode::Query);
    assert_eq!(message.queries.len(), 1);
    assert_eq!(message.queries[0].name(), &question.name);
    assert_eq!(message.queries[0].query_type(), question.record_type);
}

fn check_interpretation(message: &Message, question: &Question) {
    match interpret(message, question) {
        Interpretation::Answer { records, ttl } => {
            assert!(
                message.answers.iter().any(|r| r.ttl == ttl),
                "TTL {ttl} is not from any answer record"
            );
            check_records(&records, question.record_type);
        }
        Interpretation::Alias { target, ttl } => {
            assert_ne!(target, question.name);
            assert!(message.answers.iter().any(|r| r.ttl == ttl));
        }
        Interpretation::NoData { negative_ttl } | Interpretation::NxDomain { negative_ttl } => {
            if let Some(ttl) = negative_ttl {
                assert!(message.authorities.iter().any(|r| r.ttl >= ttl));
            }
        }
        Interpretation::TempFail(reason) => assert!(!reason.is_empty()),
    }
}

fn check_records(records: &Records, record_type: RecordType) {
    let normalised = |name: &str| {
        assert!(!name.ends_with('.'), "{name:?}");
        assert!(!name.bytes().any(|b| b.is_ascii_uppercase()), "{name:?}");
    };
    match records {
        Records::Srv(srv) => {
            assert_eq!(record_type, RecordType::SRV);
            srv.iter().for_each(|r| normalised(&r.target));
        }
        Records::Mx(mx) => {
            assert_eq!(record_type, RecordType::MX);
            mx.iter().for_each(|r| normalised(&r.exchange));
        }
        Records::Addresses(addresses) => match record_type {
            RecordType::A => assert!(addresses.iter().all(|a| a.is_ipv4())),
            RecordType::AAAA => assert!(addresses.iter().all(|a| a.is_ipv6())),
            RecordType::SRV | RecordType::MX => panic!("addresses for {record_type}"),
            _ => {}
        },
    }
}
