//! Zero-copy SMTP command parser (RFC 5321 sections 4.1.1 and 4.1.2).
//!
//! A command line is parsed in place in the connection's read buffer: every string a
//! [`Command`] carries borrows from that line. Addresses follow the grammar of section 4.1.2:
//! Dot-string and Quoted-string local parts, domains and address literals, source routes (accepted
//! and ignored, section 4.1.1.3 and appendix C), the null reverse-path `<>` and the bare
//! `<Postmaster>` forward-path. ESMTP parameters are only ever taken after the closing `>`.
//! Addresses with non-ASCII octets need SMTPUTF8 (RFC 6531), which secmx does not offer.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::reply::{Reply, Status};

/// Longest reverse- or forward-path, angle brackets included (RFC 5321 section 4.5.3.1.3).
const MAX_PATH: usize = 256;
/// Longest domain name (RFC 5321 section 4.5.3.1.2).
const MAX_DOMAIN: usize = 255;

/// One SMTP command, borrowing from the command line it was parsed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command<'a> {
    /// `EHLO domain`; the argument as sent.
    Ehlo(&'a str),
    /// `HELO domain`; the argument as sent.
    Helo(&'a str),
    /// `MAIL FROM:<reverse-path> [params]`.
    Mail {
        reverse_path: Path<'a>,
        /// Everything after the closing `>`, without leading and trailing spaces.
        params: &'a str,
    },
    /// `RCPT TO:<forward-path> [params]`.
    Rcpt {
        forward_path: Path<'a>,
        /// Everything after the closing `>`, without leading and trailing spaces.
        params: &'a str,
    },
    Data,
    Rset,
    Noop,
    Quit,
    Vrfy,
    Help,
    StartTls,
}

/// A reverse- or forward-path reduced to its mailbox; any source route is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Path<'a> {
    mailbox: &'a str,
    domain_start: usize,
}

impl<'a> Path<'a> {
    /// The null reverse-path `<>`.
    pub const NULL: Path<'static> = Path {
        mailbox: "",
        domain_start: 0,
    };

    /// `local@domain` exactly as sent (a quoted local part keeps its quotes and escapes); empty
    /// for `<>`, `Postmaster` (in the case sent) for the bare `<Postmaster>`.
    pub fn mailbox(&self) -> &'a str {
        self.mailbox
    }

    /// The local part as sent, quotes included.
    pub fn local_part(&self) -> &'a str {
        match self.domain_start {
            0 => self.mailbox,
            start => &self.mailbox[..start - 1],
        }
    }

    /// The domain or address literal after the last unquoted `@`, as sent; empty for `<>` and
    /// the bare `<Postmaster>`.
    pub fn domain(&self) -> &'a str {
        match self.domain_start {
            0 => "",
            start => &self.mailbox[start..],
        }
    }

    /// True for the null reverse-path `<>`.
    pub fn is_null(&self) -> bool {
        self.mailbox.is_empty()
    }

    /// True for `<Postmaster>` without a domain (RFC 5321 section 4.1.1.3).
    pub fn is_bare_postmaster(&self) -> bool {
        self.domain_start == 0 && self.mailbox.eq_ignore_ascii_case("postmaster")
    }
}

/// Why a command line could not be parsed; each kind knows its reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// The verb is not an SMTP command at all.
    Unrecognized,
    /// A known command secmx does not implement (BDAT, EXPN, ...).
    NotImplemented,
    /// The line holds control characters or the command's fixed words are wrong.
    Syntax,
    /// The arguments of a known command are malformed; the text says which.
    Arguments(&'static str),
    /// An address with non-ASCII octets, which would need SMTPUTF8.
    NonAsciiAddress,
}

impl ParseError {
    /// The reply sent to the client for this error.
    pub fn reply(&self) -> Reply {
        match self {
            ParseError::Unrecognized => {
                Reply::fixed(500, Status::new(5, 5, 2), "Command unrecognized")
            }
            ParseError::NotImplemented => {
                Reply::fixed(502, Status::new(5, 5, 1), "Command not implemented")
            }
            ParseError::Syntax => Reply::fixed(500, Status::new(5, 5, 2), "Syntax error"),
            ParseError::Arguments(what) => Reply::fixed(501, Status::new(5, 5, 4), what),
            ParseError::NonAsciiAddress => Reply::fixed(
                553,
                Status::new(5, 6, 7),
                "Non-ASCII addresses are not supported",
            ),
        }
    }
}

/// Parses one command line, without its CRLF.
pub fn parse_command(line: &[u8]) -> Result<Command<'_>, ParseError> {
    if line.iter().any(|&b| b < 0x20 || b == 0x7f) {
        return Err(ParseError::Syntax);
    }
    let (verb, rest) = match memchr::memchr(b' ', line) {
        Some(i) => (&line[..i], &line[i..]),
        None => (line, &line[line.len()..]),
    };
    let command = match_verb(verb)?;

    if rest.iter().any(|&b| b >= 0x80) {
        return Err(match command {
            Verb::Mail | Verb::Rcpt => ParseError::NonAsciiAddress,
            _ => ParseError::Arguments("Non-ASCII argument"),
        });
    }
    // Only ASCII from here on, so every slice is valid UTF-8.
    let rest = std::str::from_utf8(rest).map_err(|_| ParseError::Syntax)?;

    match command {
        Verb::Ehlo => hello_argument(rest).map(Command::Ehlo),
        Verb::Helo => hello_argument(rest).map(Command::Helo),
        Verb::Mail => {
            let path = after_keyword(rest, "FROM:")?;
            let (reverse_path, params) = parse_path(path)?;
            if reverse_path.is_bare_postmaster() {
                return Err(ParseError::Arguments("Sender address needs a domain"));
            }
            Ok(Command::Mail {
                reverse_path,
                params,
            })
        }
        Verb::Rcpt => {
            let path = after_keyword(rest, "TO:")?;
            let (forward_path, params) = parse_path(path)?;
            if forward_path.is_null() {
                return Err(ParseError::Arguments("Recipient address must not be empty"));
            }
            Ok(Command::Rcpt {
                forward_path,
                params,
            })
        }
        Verb::Data => no_argument(rest, Command::Data),
        Verb::Rset => no_argument(rest, Command::Rset),
        Verb::Quit => no_argument(rest, Command::Quit),
        Verb::StartTls => no_argument(rest, Command::StartTls),
        Verb::Noop => Ok(Command::Noop),
        Verb::Vrfy => Ok(Command::Vrfy),
        Verb::Help => Ok(Command::Help),
    }
}

/// Iterates over ESMTP parameters (`keyword[=value]`, RFC 5321 section 4.1.2), checking each.
pub fn parameters(params: &str) -> impl Iterator<Item = Result<(&str, Option<&str>), ParseError>> {
    params.split(' ').filter(|p| !p.is_empty()).map(|param| {
        let (keyword, value) = match param.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (param, None),
        };
        let keyword_ok = keyword
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
            && keyword
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        let value_ok = value.is_none_or(|v| {
            !v.is_empty() && v.bytes().all(|b| (33..=126).contains(&b) && b != b'=')
        });
        if keyword_ok && value_ok {
            Ok((keyword, value))
        } else {
            Err(ParseError::Arguments("Malformed ESMTP parameter"))
        }
    })
}

#[derive(Clone, Copy)]
enum Verb {
    Ehlo,
    Helo,
    Mail,
    Rcpt,
    Data,
    Rset,
    Noop,
    Quit,
    Vrfy,
    Help,
    StartTls,
}

fn match_verb(verb: &[u8]) -> Result<Verb, ParseError> {
    const VERBS: [(&[u8], Verb); 11] = [
        (b"EHLO", Verb::Ehlo),
        (b"HELO", Verb::Helo),
        (b"MAIL", Verb::Mail),
        (b"RCPT", Verb::Rcpt),
        (b"DATA", Verb::Data),
        (b"RSET", Verb::Rset),
        (b"NOOP", Verb::Noop),
        (b"QUIT", Verb::Quit),
        (b"VRFY", Verb::Vrfy),
        (b"HELP", Verb::Help),
        (b"STARTTLS", Verb::StartTls),
    ];
    const NOT_IMPLEMENTED: [&[u8]; 9] = [
        b"BDAT", b"EXPN", b"ETRN", b"TURN", b"ATRN", b"AUTH", b"SEND", b"SOML", b"SAML",
    ];
    if let Some((_, v)) = VERBS
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(verb))
    {
        return Ok(*v);
    }
    if NOT_IMPLEMENTED
        .iter()
        .any(|name| name.eq_ignore_ascii_case(verb))
    {
        return Err(ParseError::NotImplemented);
    }
    Err(ParseError::Unrecognized)
}

/// `rest` starts with the space after the verb (or is empty).
fn no_argument<'a>(rest: &str, command: Command<'a>) -> Result<Command<'a>, ParseError> {
    if rest.trim_matches(' ').is_empty() {
        Ok(command)
    } else {
        Err(ParseError::Arguments("This command takes no argument"))
    }
}

/// The EHLO/HELO argument: one domain or address literal. The characters are restricted so the
/// name can be written into a Received: header as is.
fn hello_argument(rest: &str) -> Result<&str, ParseError> {
    let arg = rest.trim_matches(' ');
    let valid = !arg.is_empty()
        && !arg.contains(' ')
        && arg.len() <= MAX_DOMAIN
        && arg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:[]".contains(&b));
    if valid {
        Ok(arg)
    } else {
        Err(ParseError::Arguments(
            "EHLO/HELO needs a domain or address literal",
        ))
    }
}

/// After `MAIL`/`RCPT`: a space, `FROM:`/`TO:` in any case, optional spaces, then the path.
fn after_keyword<'a>(rest: &'a str, keyword: &str) -> Result<&'a str, ParseError> {
    let rest = rest.strip_prefix(' ').ok_or(ParseError::Syntax)?;
    match rest.get(..keyword.len()) {
        Some(word) if word.eq_ignore_ascii_case(keyword) => {
            Ok(rest[keyword.len()..].trim_start_matches(' '))
        }
        _ => Err(ParseError::Syntax),
    }
}

/// Parses `<...>` followed by optional parameters. `text` starts at the `<`.
fn parse_path(text: &str) -> Result<(Path<'_>, &str), ParseError> {
    let bytes = text.as_bytes();
    if bytes.first() != Some(&b'<') {
        return Err(ParseError::Arguments("Address must be enclosed in <>"));
    }
    let mut pos = 1;
    if bytes.get(pos) == Some(&b'>') {
        return Ok((Path::NULL, parameters_after(text, pos + 1)?));
    }
    if bytes.get(pos) == Some(&b'@') {
        pos = skip_source_route(text, pos)?;
    }

    let mailbox_start = pos;
    pos = match bytes.get(pos) {
        Some(b'"') => scan_quoted_string(bytes, pos)?,
        _ => scan_dot_string(bytes, pos)?,
    };
    let domain_start = match bytes.get(pos) {
        Some(b'@') => {
            let start = pos + 1;
            pos = scan_domain_or_literal(text, start)?;
            start - mailbox_start
        }
        Some(b'>') => 0,
        _ => return Err(ParseError::Arguments("Malformed address")),
    };
    if bytes.get(pos) != Some(&b'>') {
        return Err(ParseError::Arguments("Malformed address"));
    }
    if pos + 1 > MAX_PATH {
        return Err(ParseError::Arguments("Address too long"));
    }

    let path = Path {
        mailbox: &text[mailbox_start..pos],
        domain_start,
    };
    if domain_start == 0 && !path.is_bare_postmaster() {
        return Err(ParseError::Arguments("Address needs a domain"));
    }
    Ok((path, parameters_after(text, pos + 1)?))
}

/// Whatever follows the closing `>`: nothing, or a space and parameters.
fn parameters_after(text: &str, pos: usize) -> Result<&str, ParseError> {
    let rest = &text[pos..];
    if rest.is_empty() {
        return Ok(rest);
    }
    if !rest.starts_with(' ') {
        return Err(ParseError::Arguments(
            "Parameters must follow the address after a space",
        ));
    }
    Ok(rest.trim_matches(' '))
}

/// `@a,@b:` — checked and skipped; returns the position after the colon.
fn skip_source_route(text: &str, mut pos: usize) -> Result<usize, ParseError> {
    let bytes = text.as_bytes();
    loop {
        if bytes.get(pos) != Some(&b'@') {
            return Err(ParseError::Arguments("Malformed source route"));
        }
        pos = scan_domain_or_literal(text, pos + 1)?;
        match bytes.get(pos) {
            Some(b',') => pos += 1,
            Some(b':') => return Ok(pos + 1),
            _ => return Err(ParseError::Arguments("Malformed source route")),
        }
    }
}

/// RFC 5322 atext, as used by RFC 5321's Atom.
fn is_atext(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b)
}

/// Dot-string: atoms separated by single dots. Returns the position after it.
fn scan_dot_string(bytes: &[u8], start: usize) -> Result<usize, ParseError> {
    let mut pos = start;
    loop {
        let atom_start = pos;
        while bytes.get(pos).is_some_and(|&b| is_atext(b)) {
            pos += 1;
        }
        if pos == atom_start {
            return Err(ParseError::Arguments("Malformed local part"));
        }
        if bytes.get(pos) == Some(&b'.') {
            pos += 1;
        } else {
            return Ok(pos);
        }
    }
}

/// Quoted-string: `"` then qtextSMTP or backslash-escaped printable characters, then `"`.
fn scan_quoted_string(bytes: &[u8], start: usize) -> Result<usize, ParseError> {
    let mut pos = start + 1;
    loop {
        match bytes.get(pos) {
            Some(b'"') => return Ok(pos + 1),
            Some(b'\\') => match bytes.get(pos + 1) {
                Some(32..=126) => pos += 2,
                _ => return Err(ParseError::Arguments("Malformed quoted local part")),
            },
            Some(32..=126) => pos += 1,
            _ => return Err(ParseError::Arguments("Unterminated quoted local part")),
        }
    }
}

/// A domain or an address literal starting at `start`; returns the position after it.
fn scan_domain_or_literal(text: &str, start: usize) -> Result<usize, ParseError> {
    let bytes = text.as_bytes();
    if bytes.get(start) == Some(&b'[') {
        let close = memchr::memchr(b']', &bytes[start..])
            .ok_or(ParseError::Arguments("Unterminated address literal"))?;
        let end = start + close + 1;
        if valid_address_literal(&text[start + 1..end - 1]) {
            return Ok(end);
        }
        return Err(ParseError::Arguments("Malformed address literal"));
    }

    let mut pos = start;
    while bytes
        .get(pos)
        .is_some_and(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        pos += 1;
    }
    if valid_domain(&text[start..pos]) {
        Ok(pos)
    } else {
        Err(ParseError::Arguments("Malformed domain"))
    }
}

/// Domain = sub-domain *("." sub-domain), each Let-dig [Ldh-str]; one trailing dot tolerated.
fn valid_domain(domain: &str) -> bool {
    let name = domain.strip_suffix('.').unwrap_or(domain);
    !name.is_empty()
        && domain.len() <= MAX_DOMAIN
        && name.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && label.len() <= 63
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
        })
}

/// The inside of `[...]`: IPv4, `IPv6:` address, or a general `tag:content` literal.
fn valid_address_literal(inside: &str) -> bool {
    if inside.parse::<Ipv4Addr>().is_ok() {
        return true;
    }
    let Some((tag, content)) = inside.split_once(':') else {
        return false;
    };
    if tag.eq_ignore_ascii_case("IPv6") {
        return content.parse::<Ipv6Addr>().is_ok();
    }
    let tag_ok = tag
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric())
        && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && tag
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_alphanumeric());
    // dcontent minus `@`: everything downstream finds the domain after the last `@`.
    let content_ok = !content.is_empty()
        && content
            .bytes()
            .all(|b| b != b'@' && ((33..=90).contains(&b) || (94..=126).contains(&b)));
    tag_ok && content_ok
}

#[cfg(test)]
#[path = "parser_tests.rs"]
mod tests;
