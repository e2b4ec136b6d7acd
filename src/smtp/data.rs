//! Incremental DATA decoder (RFC 5321 sections 4.1.1.4, 4.5.2 and 4.5.3.1.6).
//!
//! Bytes are fed as they arrive, in chunks split anywhere. The decoder removes the leading dot
//! of stuffed lines, copies each run of body bytes once into the caller's buffer and stops right
//! after the `<CRLF>.<CRLF>` that ends the data, so that pipelined commands behind it stay in the
//! connection buffer. Only that sequence ends DATA: a bare CR or LF never ends a line here, so
//! `<LF>.<LF>`, `<CR>.<CR>` and `<LF>.<CRLF>` are content (the basis of SMTP smuggling). Bare CR
//! and LF are refused or rewritten to CRLF, as `smtp.bare_newline` says, so nothing is passed on
//! in a form another MTA could read differently.
//!
//! Problems found in the body (too big, over-long line, bare newline) never interrupt reading:
//! the client is answered once, after the end of data (RFC 5321 section 4.2.5).

use memchr::memchr2;

use super::reply::{Reply, Status};
use crate::config::BareNewline;

/// Longest text line without its CRLF (RFC 5321 section 4.5.3.1.6: 1000 octets with CRLF).
const MAX_LINE: usize = 998;

/// Where the decoder stands in the byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Right after a CRLF (or the DATA command's CRLF).
    LineStart,
    /// Saw `.` at the start of a line; not yet written.
    Dot,
    /// Saw `.` CR at the start of a line.
    DotCr,
    /// Inside a line.
    Mid,
    /// Saw CR inside a line; not yet written.
    Cr,
    /// `<CRLF>.<CRLF>` seen.
    Done,
}

/// What [`DataDecoder::feed`] found in a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feed {
    /// The whole chunk was consumed; the data goes on.
    More,
    /// The data ended after `consumed` bytes of the chunk; the rest belongs to the next command.
    End { consumed: usize },
}

/// Why a message is refused once its data has ended. Each kind knows its reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataError {
    /// Larger than `smtp.max_message_size`.
    TooBig,
    /// A bare CR or LF under `smtp.bare_newline = "reject"`.
    BareNewline,
    /// A text line longer than 1000 octets with its CRLF.
    LineTooLong,
}

impl DataError {
    /// The reply sent after the end of data.
    pub fn reply(&self) -> Reply {
        match self {
            DataError::TooBig => Reply::fixed(
                552,
                Status::new(5, 3, 4),
                "Message exceeds the maximum size",
            ),
            DataError::BareNewline => Reply::fixed(
                554,
                Status::new(5, 6, 11),
                "Bare CR or LF in message; lines must end with CRLF",
            ),
            DataError::LineTooLong => Reply::fixed(
                500,
                Status::new(5, 5, 2),
                "Line too long (more than 1000 octets)",
            ),
        }
    }
}

/// Decodes one message's DATA stream into its content.
#[derive(Debug)]
pub struct DataDecoder {
    state: State,
    /// Octets on the current output line, without CRLF.
    line_len: usize,
    /// Octets written to the output so far.
    size: u64,
    max_size: u64,
    bare_newline: BareNewline,
    too_big: bool,
    bare_newline_seen: bool,
    line_too_long: bool,
}

impl DataDecoder {
    /// A decoder positioned right after the CRLF of the DATA command.
    pub fn new(max_size: u64, bare_newline: BareNewline) -> DataDecoder {
        DataDecoder {
            state: State::LineStart,
            line_len: 0,
            size: 0,
            max_size,
            bare_newline,
            too_big: false,
            bare_newline_seen: false,
            line_too_long: false,
        }
    }

    /// Decodes `input`, appending content to `out`. Once the message is certain to be refused,
    /// nothing more is appended, so an oversized message never costs more than `max_size`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Feed {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                State::Mid => match memchr2(b'\r', b'\n', &input[i..]) {
                    None => {
                        self.text(&input[i..], out);
                        i = input.len();
                    }
                    Some(k) => {
                        self.text(&input[i..i + k], out);
                        i += k;
                        if input[i] == b'\r' {
                            self.state = State::Cr;
                        } else {
                            self.bare_newline(out);
                        }
                        i += 1;
                    }
                },
                State::LineStart => {
                    if input[i] == b'.' {
                        self.state = State::Dot;
                        i += 1;
                    } else {
                        self.state = State::Mid;
                    }
                }
                // A dot followed by anything but CRLF was stuffing: it is dropped.
                State::Dot => {
                    if input[i] == b'\r' {
                        self.state = State::DotCr;
                        i += 1;
                    } else {
                        self.state = State::Mid;
                    }
                }
                State::DotCr => {
                    if input[i] == b'\n' {
                        self.state = State::Done;
                        return Feed::End { consumed: i + 1 };
                    }
                    self.bare_newline(out);
                    self.state = State::Mid;
                }
                State::Cr => {
                    if input[i] == b'\n' {
                        self.line_end(out);
                        self.state = State::LineStart;
                        i += 1;
                    } else {
                        self.bare_newline(out);
                        self.state = State::Mid;
                    }
                }
                State::Done => return Feed::End { consumed: 0 },
            }
        }
        Feed::More
    }

    /// True once `<CRLF>.<CRLF>` has been seen.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Octets of content written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The verdict after the end of data: the content size, or why the message is refused.
    pub fn finish(&self) -> Result<u64, DataError> {
        if self.too_big {
            Err(DataError::TooBig)
        } else if self.bare_newline_seen && self.bare_newline == BareNewline::Reject {
            Err(DataError::BareNewline)
        } else if self.line_too_long {
            Err(DataError::LineTooLong)
        } else {
            Ok(self.size)
        }
    }

    fn refused(&self) -> bool {
        self.too_big || (self.bare_newline_seen && self.bare_newline == BareNewline::Reject)
    }

    fn emit(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        if self.refused() {
            return;
        }
        let room = self.max_size - self.size;
        if bytes.len() as u64 > room {
            // Keep exactly `max_size` octets whatever the chunking; the rest is discarded.
            out.extend_from_slice(&bytes[..room as usize]);
            self.size = self.max_size;
            self.too_big = true;
            return;
        }
        out.extend_from_slice(bytes);
        self.size += bytes.len() as u64;
    }

    fn text(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        self.line_len += bytes.len();
        if self.line_len > MAX_LINE {
            self.line_too_long = true;
        }
        self.emit(bytes, out);
    }

    fn line_end(&mut self, out: &mut Vec<u8>) {
        self.line_len = 0;
        self.emit(b"\r\n", out);
    }

    /// A CR not followed by LF, or an LF not preceded by CR. It never ends a line for the
    /// purpose of finding the end of data or unstuffing dots.
    fn bare_newline(&mut self, out: &mut Vec<u8>) {
        self.bare_newline_seen = true;
        if self.bare_newline == BareNewline::Normalize {
            self.line_len = 0;
            self.emit(b"\r\n", out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in the given pieces; returns content, total bytes consumed, verdict.
    fn decode_pieces(
        pieces: &[&[u8]],
        max: u64,
        policy: BareNewline,
    ) -> (Vec<u8>, Option<usize>, Result<u64, DataError>) {
        let mut decoder = DataDecoder::new(max, policy);
        let mut out = Vec::new();
        let mut offset = 0;
        for piece in pieces {
            if let Feed::End { consumed } = decoder.feed(piece, &mut out) {
                return (out, Some(offset + consumed), decoder.finish());
            }
            offset += piece.len();
        }
        (out, None, decoder.finish())
    }

    fn decode(input: &[u8]) -> (Vec<u8>, Option<usize>, Result<u64, DataError>) {
        decode_pieces(&[input], 1 << 20, BareNewline::Reject)
    }

    /// Every split of `input` into two or three pieces decodes like the whole.
    fn assert_split_invariant(input: &[u8], max: u64, policy: BareNewline) {
        let whole = decode_pieces(&[input], max, policy);
        for a in 0..=input.len() {
            let two = decode_pieces(&[&input[..a], &input[a..]], max, policy);
            assert_eq!(
                two,
                whole,
                "split at {a} of {:?}",
                String::from_utf8_lossy(input)
            );
            for b in a..=input.len() {
                let three = decode_pieces(&[&input[..a], &input[a..b], &input[b..]], max, policy);
                assert_eq!(three, whole, "split at {a},{b}");
            }
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(decode_pieces(&bytes, max, policy), whole, "byte by byte");
    }

    #[test]
    fn crlf_dot_crlf_ends_data_and_content_keeps_last_crlf() {
        let (out, consumed, verdict) = decode(b"Subject: x\r\n\r\nhello\r\n.\r\n");
        assert_eq!(out, b"Subject: x\r\n\r\nhello\r\n");
        assert_eq!(consumed, Some(24));
        assert_eq!(verdict, Ok(21));
    }

    #[test]
    fn empty_message_is_a_lone_dot() {
        assert_eq!(decode(b".\r\n"), (Vec::new(), Some(3), Ok(0)));
    }

    #[test]
    fn bytes_after_the_final_dot_are_not_consumed() {
        let input = b"a\r\n.\r\nQUIT\r\n";
        let (out, consumed, _) = decode(input);
        assert_eq!(out, b"a\r\n");
        assert_eq!(&input[consumed.unwrap()..], b"QUIT\r\n");
    }

    #[test]
    fn stuffed_dots_are_removed_once() {
        let (out, _, verdict) = decode(b"..\r\n...x\r\n.y\r\na.b\r\n.\r\n");
        assert_eq!(out, b".\r\n..x\r\ny\r\na.b\r\n");
        assert!(verdict.is_ok());
    }

    #[test]
    fn incomplete_data_asks_for_more() {
        let mut decoder = DataDecoder::new(100, BareNewline::Reject);
        let mut out = Vec::new();
        assert_eq!(decoder.feed(b"abc\r\n.", &mut out), Feed::More);
        assert!(!decoder.is_done());
        assert_eq!(decoder.feed(b"\r", &mut out), Feed::More);
        assert_eq!(decoder.feed(b"\nNOOP", &mut out), Feed::End { consumed: 1 });
        assert!(decoder.is_done());
        assert_eq!(decoder.feed(b"more", &mut out), Feed::End { consumed: 0 });
        assert_eq!(out, b"abc\r\n");
    }

    #[test]
    fn lf_dot_lf_does_not_end_data() {
        let input = b"body\n.\nMAIL FROM:<ceo@example.org>\r\n.\r\n";
        let (_, consumed, verdict) = decode(input);
        assert_eq!(consumed, Some(input.len()));
        assert_eq!(verdict, Err(DataError::BareNewline));
    }

    #[test]
    fn other_lookalike_terminators_do_not_end_data() {
        for lookalike in [
            &b"a\r.\r"[..],
            b"a\n.\r\n",
            b"a\r\n.\n",
            b"a\r\n.\r",
            b"a\r.\r\n",
        ] {
            let mut input = lookalike.to_vec();
            input.extend_from_slice(b"tail\r\n.\r\n");
            let (_, consumed, verdict) = decode(&input);
            assert_eq!(consumed, Some(input.len()), "{lookalike:?}");
            assert_eq!(verdict, Err(DataError::BareNewline), "{lookalike:?}");
        }
    }

    #[test]
    fn smuggling_payload_stays_inside_the_first_message_when_normalized() {
        // After a bare LF the dot is not at the start of a line: it stays content, and the
        // egress stuffs it again when relaying.
        let input = b"Subject: first\r\n\r\nbody\n.\nMAIL FROM:<ceo@example.org>\r\n\
            DATA\r\nsmuggled\r\n.\r\n";
        let (out, consumed, verdict) = decode_pieces(&[input], 1 << 20, BareNewline::Normalize);
        assert_eq!(consumed, Some(input.len()));
        assert!(verdict.is_ok());
        assert_eq!(
            out,
            b"Subject: first\r\n\r\nbody\r\n.\r\nMAIL FROM:<ceo@example.org>\r\n\
              DATA\r\nsmuggled\r\n"
        );
    }

    #[test]
    fn normalize_turns_each_bare_cr_or_lf_into_crlf() {
        let input = b"a\nb\rc\r\rd\r\n\n\r\n.\r\n";
        let (out, _, verdict) = decode_pieces(&[input], 1 << 20, BareNewline::Normalize);
        assert_eq!(out, b"a\r\nb\r\nc\r\n\r\nd\r\n\r\n\r\n");
        assert_eq!(verdict, Ok(out.len() as u64));
    }

    #[test]
    fn reject_refuses_after_the_end_and_stops_collecting() {
        let (out, consumed, verdict) = decode(b"ok\r\nbad\nrest of it\r\n.\r\n");
        assert_eq!(verdict, Err(DataError::BareNewline));
        assert_eq!(consumed, Some(23));
        assert_eq!(out, b"ok\r\nbad");
        let reply = DataError::BareNewline.reply();
        assert_eq!(
            (reply.code, reply.status),
            (554, Some(Status::new(5, 6, 11)))
        );
    }

    #[test]
    fn a_998_octet_line_is_accepted_and_999_is_too_long() {
        let mut ok = vec![b'x'; 998];
        ok.extend_from_slice(b"\r\n.\r\n");
        assert_eq!(decode(&ok).2, Ok(1000));

        let mut long = vec![b'x'; 999];
        long.extend_from_slice(b"\r\nnext\r\n.\r\n");
        let (_, consumed, verdict) = decode(&long);
        assert_eq!(consumed, Some(long.len()));
        assert_eq!(verdict, Err(DataError::LineTooLong));
        assert_eq!(DataError::LineTooLong.reply().code, 500);
    }

    #[test]
    fn a_stuffed_dot_does_not_count_toward_line_length() {
        let mut line = vec![b'.'; 999];
        line.extend_from_slice(b"\r\n.\r\n");
        assert_eq!(decode(&line).2, Ok(1000));
    }

    #[test]
    fn size_limit_is_exact_and_the_excess_is_not_kept() {
        let input = b"0123456\r\n.\r\n";
        assert_eq!(decode_pieces(&[input], 9, BareNewline::Reject).2, Ok(9));
        let (out, consumed, verdict) = decode_pieces(&[input], 8, BareNewline::Reject);
        assert_eq!(verdict, Err(DataError::TooBig));
        assert_eq!(consumed, Some(input.len()));
        assert!(out.len() <= 8);

        let mut big = vec![b'y'; 500];
        big.extend_from_slice(b"\r\n");
        let mut stream = big.repeat(100);
        stream.extend_from_slice(b".\r\n");
        let (out, _, verdict) = decode_pieces(&[&stream], 1000, BareNewline::Reject);
        assert_eq!(verdict, Err(DataError::TooBig));
        assert_eq!(out.len(), 1000);
        let reply = DataError::TooBig.reply();
        assert_eq!(
            (reply.code, reply.status),
            (552, Some(Status::new(5, 3, 4)))
        );
    }

    #[test]
    fn too_big_takes_precedence_over_other_problems() {
        let mut input = vec![b'z'; 1200];
        input.extend_from_slice(b"\nx\r\n.\r\n");
        assert_eq!(
            decode_pieces(&[&input], 100, BareNewline::Reject).2,
            Err(DataError::TooBig)
        );
    }

    #[test]
    fn output_is_identical_for_every_chunk_boundary() {
        let cases: [&[u8]; 8] = [
            b"Subject: a\r\n\r\nline\r\n..dot\r\n.\r\nNOOP\r\n",
            b".\r\n",
            b"x\n.\ny\r.\rz\r\n.\r\nQUIT\r\n",
            b"a\r\r\n.\r\r\n.\n\r\n.\r\n",
            b"..\r\n.\r\n",
            b"abc\r\n.x\r\n.\r\r\n.\r\nRSET\r\n",
            b"\r\n\r\n.\r\n",
            b"unterminated\r\n.",
        ];
        for input in cases {
            for policy in [BareNewline::Reject, BareNewline::Normalize] {
                assert_split_invariant(input, 1 << 20, policy);
                assert_split_invariant(input, 7, policy);
            }
        }
    }

    #[test]
    fn long_lines_are_judged_the_same_across_chunk_boundaries() {
        let mut input = vec![b'q'; 999];
        input.extend_from_slice(b"\r\n.\r\n");
        for split in [1, 500, 998, 999, 1000, 1001] {
            let (_, _, verdict) = decode_pieces(
                &[&input[..split], &input[split..]],
                1 << 20,
                BareNewline::Reject,
            );
            assert_eq!(verdict, Err(DataError::LineTooLong), "split at {split}");
        }
    }
}
