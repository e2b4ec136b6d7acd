//! The SMTP client's reply parser (RFC 5321 sections 4.2 and 4.2.1, RFC 2034) over arbitrary
//! server output, as it arrives in pieces.
//!
//! Checked: nothing panics; a parsed reply has a code from 200 to 559 and says how many bytes
//! it took, all of them ending in its last line's LF; the outcome is the same whether the bytes
//! arrive at once or in pieces (the client parses its growing buffer after each read);
//! written back with `Reply::write_to`, a reply is well-formed and, unless its lines grew past
//! the limit, parses to itself.

#![no_main]

use libfuzzer_sys::fuzz_target;
use secmx::egress::client::protocol::{MAX_REPLY_LINE, ReplyError, parse_reply};
use secmx::smtp::reply::Reply;

fuzz_target!(|data: &[u8]| {
    let Some((&step, data)) = data.split_first() else {
        return;
    };
    let whole = parse_reply(data);
    if let Ok(Some((reply, used))) = &whole {
        check_reply(reply, *used, data);
    }
    assert_eq!(incremental(data, 16 * (usize::from(step) + 1)), whole);
});

/// Parses `data` as the client does when it arrives in several reads: after every read, until a
/// reply or an error comes out. Reads end every `step` octets, after every CR and before every
/// LF, where a line end can be cut in two; ending them everywhere would make long inputs
/// quadratic.
fn incremental(data: &[u8], step: usize) -> Result<Option<(Reply, usize)>, ReplyError> {
    let cut = |at: usize| at % step == 0 || data[at - 1] == b'\r' || data[at] == b'\n';
    for received in (1..data.len()).filter(|&at| cut(at)) {
        match parse_reply(&data[..received]) {
            Ok(None) => {}
            outcome => return outcome,
        }
    }
    parse_reply(data)
}

fn check_reply(reply: &Reply, used: usize, data: &[u8]) {
    assert!((200..=559).contains(&reply.code), "code {}", reply.code);
    assert!(used <= data.len() && data[used - 1] == b'\n');
    if let Some(status) = reply.status {
        assert_eq!(u16::from(status.class), reply.code / 100);
    }

    let mut wire = Vec::new();
    reply.write_to(&mut wire);
    let mut longest = 0;
    for line in wire.split_inclusive(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r\n").expect("CRLF line end");
        assert!(!line.contains(&b'\r') && line.len() >= 4);
        longest = longest.max(line.len());
    }
    // Text that was not UTF-8 comes back longer (U+FFFD for each bad octet) and may no longer
    // fit a line; everything else must survive the round trip unchanged.
    if longest <= MAX_REPLY_LINE {
        let (again, again_used) = parse_reply(&wire)
            .expect("a written reply parses")
            .expect("a written reply is complete");
        assert_eq!(again_used, wire.len());
        assert_eq!(&again, reply, "reply changed when written and parsed again");
    }
}
