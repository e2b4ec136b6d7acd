//! The client side of the SMTP wire format, without I/O: server replies (RFC 5321 section 4.2
//! and 4.2.1, enhanced status codes per RFC 2034), EHLO keywords (RFC 5321 section 4.1.1.1,
//! RFC 2920, RFC 3207, RFC 1870, RFC 6152, RFC 6531) and dot-stuffing of the message content
//! (RFC 5321 section 4.5.2) with line ends made canonical (section 2.3.8).

use std::fmt;

use memchr::{memchr, memchr2};

use crate::smtp::reply::{Reply, Status};

/// Longest reply line accepted, CRLF excluded. RFC 5321 4.5.3.1.5 sets 512; real servers send
/// longer lines, so allow some slack before calling the peer broken.
pub const MAX_REPLY_LINE: usize = 2048;

/// Most lines one reply may have (an EHLO reply with every extension is about 20).
pub const MAX_REPLY_LINES: usize = 128;

/// A server reply that does not follow RFC 5321 4.2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyError {
    /// A line longer than [`MAX_REPLY_LINE`].
    LineTooLong,
    /// More than [`MAX_REPLY_LINES`] continuation lines.
    TooManyLines,
    /// A line that does not start with a three-digit code and a separator.
    Malformed(String),
    /// Continuation lines with a code other than the first line's.
    MixedCodes { first: u16, then: u16 },
}

impl fmt::Display for ReplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplyError::LineTooLong => write!(f, "reply line longer than {MAX_REPLY_LINE} octets"),
            ReplyError::TooManyLines => write!(f, "reply with more than {MAX_REPLY_LINES} lines"),
            ReplyError::Malformed(line) => write!(f, "malformed reply line {line:?}"),
            ReplyError::MixedCodes { first, then } => {
                write!(f, "reply lines with codes {first} and {then}")
            }
        }
    }
}

/// Parses one complete reply at the start of `buf`. Returns the reply and the number of bytes
/// it took, or `None` while the last line has not arrived yet. Lines end in CRLF; a bare LF is
/// accepted as a line end since nothing in a reply depends on the difference.
pub fn parse_reply(buf: &[u8]) -> Result<Option<(Reply, usize)>, ReplyError> {
    let mut pos = 0;
    let mut code = None;
    let mut lines: Vec<String> = Vec::new();
    loop {
        let rest = &buf[pos..];
        let Some(end) = memchr(b'\n', rest) else {
            // The CR of a line at the limit may have arrived without its LF.
            if without_cr(rest).len() > MAX_REPLY_LINE {
                return Err(ReplyError::LineTooLong);
            }
            return Ok(None);
        };
        let line = without_cr(&rest[..end]);
        if line.len() > MAX_REPLY_LINE {
            return Err(ReplyError::LineTooLong);
        }
        pos += end + 1;

        let (line_code, last, text) = split_line(line)?;
        match code {
            None => code = Some(line_code),
            Some(first) if first != line_code => {
                return Err(ReplyError::MixedCodes {
                    first,
                    then: line_code,
                });
            }
            Some(_) => {}
        }
        lines.push(text);
        if last {
            break;
        }
        if lines.len() >= MAX_REPLY_LINES {
            return Err(ReplyError::TooManyLines);
        }
    }

    let code = code.unwrap_or_default();
    let status = Status::parse_prefix(&lines[0])
        .map(|(status, _)| status)
        .filter(|status| u16::from(status.class) == code / 100);
    if let Some(status) = status {
        let mut prefix = Vec::with_capacity(16);
        status.write_to(&mut prefix);
        for line in &mut lines {
            if let Some(rest) = line.as_bytes().strip_prefix(prefix.as_slice())
                && (rest.is_empty() || rest[0] == b' ')
            {
                let space = usize::from(!rest.is_empty());
                line.drain(..prefix.len() + space);
            }
        }
    }
    let text = match <[String; 1]>::try_from(lines) {
        Ok([line]) => line,
        Err(lines) => lines.join("\n"),
    };
    Ok(Some((Reply::new(code, status, text), pos)))
}

fn without_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Splits `250-text` into the code, whether it is the last line, and the text with control
/// characters replaced (reply text ends up in logs and DSNs).
fn split_line(line: &[u8]) -> Result<(u16, bool, String), ReplyError> {
    let malformed = || ReplyError::Malformed(String::from_utf8_lossy(line).into_owned());
    let [a, b, c, rest @ ..] = line else {
        return Err(malformed());
    };
    if !(b'2'..=b'5').contains(a) || !(b'0'..=b'5').contains(b) || !c.is_ascii_digit() {
        return Err(malformed());
    }
    let code = u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0');
    let (last, text) = match rest {
        [] => (true, &[][..]),
        [b' ', text @ ..] => (true, text),
        [b'-', text @ ..] => (false, text),
        _ => return Err(malformed()),
    };
    Ok((code, last, printable(text)))
}

/// The text with invalid UTF-8 and control characters (other than tab) replaced.
fn printable(text: &[u8]) -> String {
    let plain = |b: &u8| (0x20..0x7f).contains(b) || *b == b'\t';
    if text.iter().all(plain)
        && let Ok(text) = std::str::from_utf8(text)
    {
        return text.to_owned();
    }
    String::from_utf8_lossy(text)
        .chars()
        .map(|ch| {
            if ch.is_control() && ch != '\t' {
                '?'
            } else {
                ch
            }
        })
        .collect()
}

/// The service extensions a server listed in its EHLO reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extensions {
    /// RFC 2920.
    pub pipelining: bool,
    /// RFC 3207.
    pub starttls: bool,
    /// RFC 6152.
    pub eight_bit_mime: bool,
    /// RFC 6531.
    pub smtputf8: bool,
    /// RFC 1870: `Some(limit)` when SIZE is listed; a limit of 0 means none was stated.
    pub size: Option<u64>,
}

impl Extensions {
    /// Reads the keywords from the lines after the first (which carries the server's name).
    pub fn from_ehlo(reply: &Reply) -> Extensions {
        let mut extensions = Extensions::default();
        for line in reply.text.split('\n').skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            match keyword.to_ascii_uppercase().as_str() {
                "PIPELINING" => extensions.pipelining = true,
                "STARTTLS" => extensions.starttls = true,
                "8BITMIME" => extensions.eight_bit_mime = true,
                "SMTPUTF8" => extensions.smtputf8 = true,
                "SIZE" => {
                    let limit = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
                    extensions.size = Some(limit);
                }
                _ => {}
            }
        }
        extensions
    }
}

/// True when the content has octets outside US-ASCII and so needs `BODY=8BITMIME`.
pub fn has_eight_bit(body: &[u8]) -> bool {
    !body.is_ascii()
}

/// True when a mailbox can go into a command line as is: no control characters, so nothing in
/// it can end the command early.
pub fn is_safe_mailbox(mailbox: &str) -> bool {
    !mailbox.bytes().any(|b| b < 0x20 || b == 0x7f)
}

/// Dot-stuffs message content chunk by chunk (RFC 5321 4.5.2) and writes every line end as
/// CRLF: a bare CR or bare LF becomes CRLF, so no receiver can find a line end or an end of
/// data that another would not (section 2.3.8; the SMTP smuggling reports).
#[derive(Debug)]
pub struct DotStuffer {
    at_line_start: bool,
    pending_cr: bool,
}

impl Default for DotStuffer {
    fn default() -> Self {
        DotStuffer {
            at_line_start: true,
            pending_cr: false,
        }
    }
}

impl DotStuffer {
    /// Appends the stuffed form of `input` to `out`.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let mut rest = input;
        while let Some(&first) = rest.first() {
            if self.pending_cr {
                self.pending_cr = false;
                self.end_line(out);
                if first == b'\n' {
                    rest = &rest[1..];
                    continue;
                }
            }
            if self.at_line_start && first == b'.' {
                out.push(b'.');
            }
            let end = memchr2(b'\r', b'\n', rest).unwrap_or(rest.len());
            out.extend_from_slice(&rest[..end]);
            self.at_line_start = false;
            match rest.get(end) {
                None => break,
                Some(b'\r') => self.pending_cr = true,
                Some(_) => self.end_line(out),
            }
            rest = &rest[end + 1..];
        }
    }

    /// Ends the content: a final CRLF when the last line lacks one, then `.` CRLF.
    pub fn finish(mut self, out: &mut Vec<u8>) {
        if self.pending_cr || !self.at_line_start {
            self.end_line(out);
        }
        out.extend_from_slice(b".\r\n");
    }

    fn end_line(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"\r\n");
        self.at_line_start = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(text: &str) -> Reply {
        let (reply, used) = parse_reply(text.as_bytes()).unwrap().unwrap();
        assert_eq!(used, text.len());
        reply
    }

    fn stuff(chunks: &[&[u8]]) -> Vec<u8> {
        let mut stuffer = DotStuffer::default();
        let mut out = Vec::new();
        for chunk in chunks {
            stuffer.push(chunk, &mut out);
        }
        stuffer.finish(&mut out);
        out
    }

    #[test]
    fn single_line_reply_with_enhanced_status() {
        let reply = reply("550 5.1.1 no such user\r\n");
        assert_eq!(reply.code, 550);
        assert_eq!(reply.status, Some(Status::new(5, 1, 1)));
        assert_eq!(reply.text, "no such user");
    }

    #[test]
    fn multi_line_reply_strips_repeated_status_and_keeps_lines() {
        let reply = reply("452-4.5.3 too many\r\n452-4.5.3 recipients\r\n452 4.5.3 later\r\n");
        assert_eq!(reply.status, Some(Status::new(4, 5, 3)));
        assert_eq!(reply.text, "too many\nrecipients\nlater");
    }

    #[test]
    fn status_of_another_class_is_text() {
        let reply = reply("250 5.1.1 odd\r\n");
        assert_eq!(reply.status, None);
        assert_eq!(reply.text, "5.1.1 odd");
    }

    #[test]
    fn bare_code_is_a_complete_reply() {
        let reply = reply("220\r\n");
        assert_eq!((reply.code, reply.text.as_ref()), (220, ""));
    }

    #[test]
    fn incomplete_reply_asks_for_more() {
        assert_eq!(parse_reply(b"250-first\r\n250 sec"), Ok(None));
        assert_eq!(parse_reply(b""), Ok(None));
    }

    #[test]
    fn reply_ends_at_its_last_line_leaving_the_next() {
        let input = b"250 ok\r\n354 go ahead\r\n";
        let (first, used) = parse_reply(input).unwrap().unwrap();
        assert_eq!((first.code, used), (250, 8));
        let (second, _) = parse_reply(&input[used..]).unwrap().unwrap();
        assert_eq!(second.code, 354);
    }

    #[test]
    fn garbage_and_mixed_codes_are_errors() {
        assert!(matches!(
            parse_reply(b"HTTP/1.1 400\r\n"),
            Err(ReplyError::Malformed(_))
        ));
        assert!(matches!(
            parse_reply(b"250x\r\n"),
            Err(ReplyError::Malformed(_))
        ));
        assert!(matches!(
            parse_reply(b"699 no\r\n"),
            Err(ReplyError::Malformed(_))
        ));
        assert_eq!(
            parse_reply(b"250-a\r\n251 b\r\n"),
            Err(ReplyError::MixedCodes {
                first: 250,
                then: 251
            })
        );
    }

    #[test]
    fn overlong_lines_and_endless_replies_are_errors() {
        let long = vec![b'a'; MAX_REPLY_LINE + 10];
        assert_eq!(parse_reply(&long), Err(ReplyError::LineTooLong));
        let endless = "250-x\r\n".repeat(MAX_REPLY_LINES + 1);
        assert_eq!(
            parse_reply(endless.as_bytes()),
            Err(ReplyError::TooManyLines)
        );
    }

    #[test]
    fn line_limit_is_the_same_whether_or_not_the_lf_has_arrived() {
        let mut at_limit = b"250 ".to_vec();
        at_limit.resize(MAX_REPLY_LINE, b'x');
        at_limit.extend_from_slice(b"\r\n");
        for received in 0..at_limit.len() {
            assert_eq!(
                parse_reply(&at_limit[..received]),
                Ok(None),
                "{received} octets"
            );
        }
        assert!(matches!(parse_reply(&at_limit), Ok(Some(_))));

        let mut over_limit = b"250 ".to_vec();
        over_limit.resize(MAX_REPLY_LINE + 1, b'x');
        over_limit.push(b'\n');
        assert_eq!(parse_reply(&over_limit), Err(ReplyError::LineTooLong));
        assert_eq!(
            parse_reply(&over_limit[..MAX_REPLY_LINE + 1]),
            Err(ReplyError::LineTooLong)
        );
    }

    #[test]
    fn control_characters_in_reply_text_are_replaced() {
        let reply = reply("550 bad\rinjected\x1b[0m\r\n");
        assert_eq!(reply.text, "bad?injected?[0m");
    }

    #[test]
    fn ehlo_keywords_are_case_insensitive_and_size_is_read() {
        let ehlo = reply(
            "250-mx.example\r\n250-pipelining\r\n250-SIZE 10240000\r\n250-8BITMIME\r\n\
             250 STARTTLS\r\n",
        );
        let extensions = Extensions::from_ehlo(&ehlo);
        assert!(extensions.pipelining && extensions.starttls && extensions.eight_bit_mime);
        assert!(!extensions.smtputf8);
        assert_eq!(extensions.size, Some(10_240_000));
        assert_eq!(
            Extensions::from_ehlo(&reply("250 mx.example\r\n")),
            Extensions::default()
        );
    }

    #[test]
    fn first_ehlo_line_is_not_a_keyword() {
        let extensions = Extensions::from_ehlo(&reply("250-STARTTLS\r\n250 SIZE\r\n"));
        assert!(!extensions.starttls);
        assert_eq!(extensions.size, Some(0));
    }

    #[test]
    fn leading_dots_are_doubled_across_chunks() {
        assert_eq!(
            stuff(&[b".a\r\n..b\r\nc.\r\n.\r\n"]),
            b"..a\r\n...b\r\nc.\r\n..\r\n.\r\n"
        );
        assert_eq!(stuff(&[b"x\r", b"\n", b".y\r\n"]), b"x\r\n..y\r\n.\r\n");
        assert_eq!(stuff(&[b"x\r\n", b".", b"\r\n"]), b"x\r\n..\r\n.\r\n");
    }

    #[test]
    fn content_without_final_line_end_gets_one() {
        assert_eq!(
            stuff(&[b"Subject: x\r\n\r\nbody"]),
            b"Subject: x\r\n\r\nbody\r\n.\r\n"
        );
        assert_eq!(stuff(&[b"body\r"]), b"body\r\n.\r\n");
        assert_eq!(stuff(&[]), b".\r\n");
    }

    #[test]
    fn bare_line_ends_become_crlf_so_nothing_ends_data_early() {
        assert_eq!(stuff(&[b"a\n.\nb\r\n"]), b"a\r\n..\r\nb\r\n.\r\n");
        assert_eq!(stuff(&[b"a\r.\rb"]), b"a\r\n..\r\nb\r\n.\r\n");
        assert_eq!(stuff(&[b"a\r\r\n"]), b"a\r\n\r\n.\r\n");
    }

    #[test]
    fn mailboxes_with_line_breaks_are_unsafe() {
        assert!(is_safe_mailbox("\"a b>c\"@example.org"));
        assert!(!is_safe_mailbox("a@example.org>\r\nRCPT TO:<b@example.org"));
    }
}
