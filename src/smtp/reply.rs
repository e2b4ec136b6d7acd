//! SMTP replies (RFC 5321 section 4.2) with enhanced status codes (RFC 3463, RFC 2034).

use std::borrow::Cow;
use std::fmt;

/// An enhanced status code `class.subject.detail`, e.g. `5.7.1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Status {
    pub class: u8,
    pub subject: u16,
    pub detail: u16,
}

impl Status {
    pub const fn new(class: u8, subject: u16, detail: u16) -> Status {
        Status {
            class,
            subject,
            detail,
        }
    }

    /// Parses `5.7.1` at the start of `text`; returns the status and the rest after one space.
    /// Each part is decimal digits only, within the range of its field.
    pub fn parse_prefix(text: &str) -> Option<(Status, &str)> {
        let (code, rest) = match memchr::memchr(b' ', text.as_bytes()) {
            Some(space) => (&text[..space], &text[space + 1..]),
            None => (text, ""),
        };
        let mut parts = code.as_bytes().splitn(3, |&b| b == b'.');
        let class = u8::try_from(decimal(parts.next()?)?).ok()?;
        let subject = u16::try_from(decimal(parts.next()?)?).ok()?;
        let detail = u16::try_from(decimal(parts.next()?)?).ok()?;
        if !matches!(class, 2 | 4 | 5) {
            return None;
        }
        Some((
            Status {
                class,
                subject,
                detail,
            },
            rest,
        ))
    }
}

/// The value of 1 to 5 decimal digits.
fn decimal(digits: &[u8]) -> Option<u32> {
    if digits.is_empty() || digits.len() > 5 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0, |n, &d| n * 10 + u32::from(d - b'0')))
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = Vec::with_capacity(16);
        self.write_to(&mut text);
        f.write_str(std::str::from_utf8(&text).expect("digits and dots"))
    }
}

impl Status {
    /// Appends `class.subject.detail` to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        push_decimal(out, self.class.into());
        out.push(b'.');
        push_decimal(out, self.subject.into());
        out.push(b'.');
        push_decimal(out, self.detail.into());
    }
}

/// One SMTP reply: a code, an optional enhanced status, and text. Multi-line text separates
/// lines with `\n`; each line goes out with the code and, when present, the status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub status: Option<Status>,
    pub text: Cow<'static, str>,
}

impl Reply {
    /// A reply with constant text; allocation-free.
    pub const fn fixed(code: u16, status: Status, text: &'static str) -> Reply {
        Reply {
            code,
            status: Some(status),
            text: Cow::Borrowed(text),
        }
    }

    pub fn new(code: u16, status: Option<Status>, text: impl Into<Cow<'static, str>>) -> Reply {
        Reply {
            code,
            status,
            text: text.into(),
        }
    }

    /// 2xx or 3xx.
    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    /// 4xx: try again later.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// 5xx: do not try again.
    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    /// The enhanced status, or one derived from the reply class when the peer sent none.
    pub fn status_or_default(&self) -> Status {
        self.status.unwrap_or(match self.code {
            200..=399 => Status::new(2, 0, 0),
            400..=499 => Status::new(4, 0, 0),
            _ => Status::new(5, 0, 0),
        })
    }

    /// Appends the wire form (CRLF line ends, `-` on all but the last line) to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let mut rest = self.text.as_bytes();
        loop {
            let end = memchr::memchr(b'\n', rest);
            let mut line = &rest[..end.unwrap_or(rest.len())];
            while let Some(trimmed) = line.strip_suffix(b"\r") {
                line = trimmed;
            }
            push_decimal(out, self.code.into());
            out.push(if end.is_some() { b'-' } else { b' ' });
            if let Some(status) = self.status {
                status.write_to(out);
                out.push(b' ');
            }
            out.extend_from_slice(line);
            out.extend_from_slice(b"\r\n");
            let Some(end) = end else {
                return;
            };
            rest = &rest[end + 1..];
        }
    }
}

/// Appends `n` in decimal; replies are written for every command, so without `fmt`.
fn push_decimal(out: &mut Vec<u8>, n: u32) {
    let mut digits = [0u8; 10];
    let mut at = digits.len();
    let mut rest = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// The reply as it would appear on one log line: `550 5.1.1 text` with lines joined by ` / `.
impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut head = Vec::with_capacity(24);
        push_decimal(&mut head, self.code.into());
        if let Some(status) = self.status {
            head.push(b' ');
            status.write_to(&mut head);
        }
        f.write_str(std::str::from_utf8(&head).expect("digits, dots and a space"))?;
        for (i, line) in self.text.split('\n').enumerate() {
            f.write_str(if i == 0 { " " } else { " / " })?;
            f.write_str(line)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_line_reply_carries_enhanced_status() {
        let mut out = Vec::new();
        Reply::fixed(550, Status::new(5, 1, 1), "No such user").write_to(&mut out);
        assert_eq!(out, b"550 5.1.1 No such user\r\n");
    }

    #[test]
    fn multi_line_reply_uses_dash_on_all_but_last() {
        let mut out = Vec::new();
        Reply::new(250, None, "gw.example\nPIPELINING\nSTARTTLS").write_to(&mut out);
        assert_eq!(out, b"250-gw.example\r\n250-PIPELINING\r\n250 STARTTLS\r\n");
    }

    #[test]
    fn lines_end_in_crlf_whatever_the_text_used() {
        let mut out = Vec::new();
        Reply::new(250, None, "a\r\nb\n\nc\r\r").write_to(&mut out);
        assert_eq!(out, b"250-a\r\n250-b\r\n250-\r\n250 c\r\n");
        let reply = Reply::new(451, Some(Status::new(4, 3, 0)), "try\nlater");
        assert_eq!(reply.to_string(), "451 4.3.0 try / later");
    }

    #[test]
    fn numbers_are_written_in_full() {
        let mut out = Vec::new();
        Reply::new(250, Some(Status::new(2, 10, 0)), "a\nb").write_to(&mut out);
        Reply::new(9, Some(Status::new(5, 0, 65535)), "odd").write_to(&mut out);
        assert_eq!(out, b"250-2.10.0 a\r\n250 2.10.0 b\r\n9 5.0.65535 odd\r\n");
    }

    #[test]
    fn status_prefix_parses_and_rejects_garbage() {
        let (status, rest) = Status::parse_prefix("4.7.0 try later").unwrap();
        assert_eq!((status, rest), (Status::new(4, 7, 0), "try later"));
        assert!(Status::parse_prefix("hello there").is_none());
        assert!(Status::parse_prefix("3.1.1 x").is_none());
        assert_eq!(
            Status::parse_prefix("5.1.10"),
            Some((Status::new(5, 1, 10), ""))
        );
        for garbage in [
            "5.1",
            "5.1.1.1 x",
            "5..1 x",
            "+5.1.1 x",
            "5.1.x",
            "5.70000.1",
            "",
        ] {
            assert!(Status::parse_prefix(garbage).is_none(), "{garbage:?}");
        }
    }
}
