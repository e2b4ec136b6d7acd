//! The DATA decoder (RFC 5321 sections 4.1.1.4, 4.5.2 and 4.5.3.1.6) over arbitrary bytes cut
//! into arbitrary chunks.
//!
//! Input: a flag byte (bit 0 = normalize bare CR/LF, bit 1 = no practical size limit), two bytes
//! of `max_size`, a count byte and that many chunk lengths, then the stream.
//!
//! Checked: the chunked run gives the same content, consumed count and verdict as one chunk;
//! end of data is found exactly after the first `<CRLF>.<CRLF>` (the DATA command's CRLF
//! counting as the first CRLF), never elsewhere; under normalize the content holds no bare CR or
//! LF; and content and verdict match a plain reference decoder written from the RFC text.

#![no_main]

use libfuzzer_sys::fuzz_target;
use secmx::config::BareNewline;
use secmx::smtp::data::{DataDecoder, DataError, Feed};

/// Longest text line without its CRLF (RFC 5321 section 4.5.3.1.6).
const MAX_LINE: usize = 998;

const END_OF_DATA: &[u8] = b"\r\n.\r\n";

#[derive(Debug, PartialEq)]
struct Decoded {
    content: Vec<u8>,
    /// Bytes of the input consumed up to and including the end of data, if it came.
    end: Option<usize>,
    verdict: Result<u64, DataError>,
}

fuzz_target!(|data: &[u8]| {
    let [flags, size_hi, size_lo, count, rest @ ..] = data else {
        return;
    };
    let count = usize::from(*count % 16).min(rest.len());
    let (cuts, stream) = rest.split_at(count);
    let policy = match flags & 1 {
        0 => BareNewline::Reject,
        _ => BareNewline::Normalize,
    };
    let max_size = match flags & 2 {
        0 => u64::from(u16::from_be_bytes([*size_hi, *size_lo])) + 1,
        _ => 1 << 40,
    };

    let whole = decode(stream, &[], max_size, policy);
    let chunked = decode(stream, cuts, max_size, policy);
    assert_eq!(chunked, whole, "chunking at {cuts:?} changed the result");

    let expected_end = find(&[b"\r\n", stream].concat(), END_OF_DATA).map(|at| at + 3);
    assert_eq!(whole.end, expected_end, "end of data found elsewhere");

    if policy == BareNewline::Normalize {
        let content = match whole.verdict {
            // The size cut may split the CRLF of a rewritten newline; the message is refused.
            Err(DataError::TooBig) => whole.content.strip_suffix(b"\r").unwrap_or(&whole.content),
            _ => &whole.content,
        };
        assert_no_bare_newline(content);
    }
    if let Some(end) = whole.end {
        check_against_reference(&whole, &stream[..end - 3], max_size, policy);
    }
});

/// Feeds `stream` in pieces of the lengths in `cuts` (cycled; one piece when there are none).
fn decode(stream: &[u8], cuts: &[u8], max_size: u64, policy: BareNewline) -> Decoded {
    let mut decoder = DataDecoder::new(max_size, policy);
    let mut content = Vec::new();
    let mut end = None;
    let mut pos = 0;
    let progress = cuts.iter().any(|&c| c > 0);
    let mut cuts = cuts.iter().map(|&c| usize::from(c)).cycle();
    loop {
        let len = match progress {
            true => cuts.next().unwrap_or(0),
            false => stream.len(),
        };
        let piece = &stream[pos..(pos + len).min(stream.len())];
        if let Feed::End { consumed } = decoder.feed(piece, &mut content) {
            assert!(consumed <= piece.len());
            assert!(decoder.is_done());
            end = Some(pos + consumed);
            break;
        }
        assert!(!decoder.is_done());
        pos += piece.len();
        if pos == stream.len() {
            break;
        }
    }
    assert_eq!(decoder.size(), content.len() as u64);
    let verdict = decoder.finish();
    if let Ok(size) = verdict {
        assert!(size <= max_size);
    }
    Decoded {
        content,
        end,
        verdict,
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn assert_no_bare_newline(content: &[u8]) {
    for (i, &b) in content.iter().enumerate() {
        match b {
            b'\r' => assert_eq!(content.get(i + 1), Some(&b'\n'), "bare CR at {i}"),
            b'\n' => assert!(i > 0 && content[i - 1] == b'\r', "bare LF at {i}"),
            _ => {}
        }
    }
}

/// The content of `body` (everything before the final `.<CRLF>`, so ending in CRLF or empty),
/// decoded line by line: lines end at CRLF only, one leading dot is dropped, a bare CR or LF is
/// rewritten to CRLF. Also returns the length of the content before the first bare CR or LF,
/// and the longest line.
struct Reference {
    content: Vec<u8>,
    before_bare_newline: Option<usize>,
    longest_line: usize,
}

fn reference(body: &[u8]) -> Reference {
    let mut content = Vec::new();
    let mut before_bare_newline = None;
    let mut longest_line = 0;
    let mut rest = body;
    while let Some(len) = find(rest, b"\r\n") {
        let line = &rest[..len];
        rest = &rest[len + 2..];
        let line = line.strip_prefix(b".").unwrap_or(line);
        let mut line_len = 0;
        for &b in line {
            if b == b'\r' || b == b'\n' {
                before_bare_newline.get_or_insert(content.len());
                content.extend_from_slice(b"\r\n");
                line_len = 0;
            } else {
                content.push(b);
                line_len += 1;
                longest_line = longest_line.max(line_len);
            }
        }
        content.extend_from_slice(b"\r\n");
    }
    assert!(
        rest.is_empty(),
        "the body before the final dot ends in CRLF"
    );
    Reference {
        content,
        before_bare_newline,
        longest_line,
    }
}

fn check_against_reference(decoded: &Decoded, body: &[u8], max_size: u64, policy: BareNewline) {
    let expected = reference(body);
    let max_size = usize::try_from(max_size).unwrap_or(usize::MAX);

    let (kept, refused) = match (policy, expected.before_bare_newline) {
        (BareNewline::Reject, Some(len)) => (len, Some(DataError::BareNewline)),
        _ => (expected.content.len(), None),
    };
    let verdict = if kept > max_size {
        Err(DataError::TooBig)
    } else if let Some(error) = refused {
        Err(error)
    } else if expected.longest_line > MAX_LINE {
        Err(DataError::LineTooLong)
    } else {
        Ok(kept as u64)
    };
    assert_eq!(
        decoded.verdict, verdict,
        "verdict differs from the reference"
    );
    assert_eq!(
        decoded.content,
        expected.content[..kept.min(max_size)],
        "content differs from the reference"
    );
}
