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
    let content_ok = !content.is_empty()
        && content
            .bytes()
            .all(|b| (33..=90).contains(&b) || (94..=126).contains(&b));
    tag_ok && content_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mail(line: &str) -> (Path<'_>, &str) {
        match parse_command(line.as_bytes()) {
            Ok(Command::Mail {
                reverse_path,
                params,
            }) => (reverse_path, params),
            other => panic!("{line}: {other:?}"),
        }
    }

    fn rcpt(line: &str) -> (Path<'_>, &str) {
        match parse_command(line.as_bytes()) {
            Ok(Command::Rcpt {
                forward_path,
                params,
            }) => (forward_path, params),
            other => panic!("{line}: {other:?}"),
        }
    }

    fn error(line: &[u8]) -> ParseError {
        parse_command(line).expect_err(&String::from_utf8_lossy(line))
    }

    #[test]
    fn verbs_are_case_insensitive() {
        assert_eq!(
            parse_command(b"ehlo client.example"),
            Ok(Command::Ehlo("client.example"))
        );
        assert_eq!(
            parse_command(b"HeLo client.example"),
            Ok(Command::Helo("client.example"))
        );
        assert_eq!(parse_command(b"data"), Ok(Command::Data));
        assert_eq!(parse_command(b"RsEt"), Ok(Command::Rset));
        assert_eq!(parse_command(b"quit"), Ok(Command::Quit));
        assert_eq!(parse_command(b"StartTLS"), Ok(Command::StartTls));
        assert_eq!(parse_command(b"NOOP"), Ok(Command::Noop));
        assert_eq!(parse_command(b"VRFY bob"), Ok(Command::Vrfy));
        assert_eq!(parse_command(b"HELP"), Ok(Command::Help));
        let (path, _) = mail("mail from:<a@b.example>");
        assert_eq!(path.mailbox(), "a@b.example");
    }

    #[test]
    fn noop_help_and_vrfy_ignore_their_arguments() {
        assert_eq!(parse_command(b"NOOP anything at all"), Ok(Command::Noop));
        assert_eq!(parse_command(b"HELP MAIL"), Ok(Command::Help));
    }

    #[test]
    fn unknown_and_unimplemented_verbs_are_told_apart() {
        assert_eq!(error(b"XYZZY"), ParseError::Unrecognized);
        assert_eq!(error(b""), ParseError::Unrecognized);
        assert_eq!(error(b"MAILFROM:<a@b.example>"), ParseError::Unrecognized);
        assert_eq!(error(b"BDAT 10 LAST"), ParseError::NotImplemented);
        assert_eq!(error(b"EXPN list"), ParseError::NotImplemented);
        assert_eq!(ParseError::Unrecognized.reply().code, 500);
        assert_eq!(ParseError::NotImplemented.reply().code, 502);
    }

    #[test]
    fn commands_without_arguments_refuse_them() {
        assert!(matches!(error(b"DATA now"), ParseError::Arguments(_)));
        assert!(matches!(error(b"STARTTLS x"), ParseError::Arguments(_)));
        assert_eq!(parse_command(b"QUIT  "), Ok(Command::Quit));
    }

    #[test]
    fn hello_needs_one_domain_or_literal() {
        assert_eq!(
            parse_command(b"EHLO [192.0.2.1]"),
            Ok(Command::Ehlo("[192.0.2.1]"))
        );
        assert!(matches!(error(b"EHLO"), ParseError::Arguments(_)));
        assert!(matches!(error(b"EHLO   "), ParseError::Arguments(_)));
        assert!(matches!(error(b"EHLO two words"), ParseError::Arguments(_)));
        assert!(matches!(error(b"HELO a(b)"), ParseError::Arguments(_)));
    }

    #[test]
    fn control_characters_make_a_syntax_error() {
        assert_eq!(error(b"NOOP\nMAIL FROM:<a@b.example>"), ParseError::Syntax);
        assert_eq!(error(b"RCPT TO:<a@b.example>\r"), ParseError::Syntax);
        assert_eq!(error(b"EHLO a\x00b"), ParseError::Syntax);
        assert_eq!(
            ParseError::Syntax.reply().status,
            Some(Status::new(5, 5, 2))
        );
    }

    #[test]
    fn optional_space_after_colon() {
        assert_eq!(mail("MAIL FROM: <a@b.example>").0.mailbox(), "a@b.example");
        assert_eq!(rcpt("RCPT TO:  <c@d.example>").0.mailbox(), "c@d.example");
        assert_eq!(error(b"MAIL FROM <a@b.example>"), ParseError::Syntax);
        assert_eq!(error(b"MAIL  FROM:<a@b.example>"), ParseError::Syntax);
        assert_eq!(error(b"RCPT"), ParseError::Syntax);
    }

    #[test]
    fn null_reverse_path_with_and_without_parameters() {
        let (path, params) = mail("MAIL FROM:<>");
        assert!(path.is_null());
        assert_eq!((path.mailbox(), path.domain(), params), ("", "", ""));
        let (path, params) = mail("MAIL FROM:<> SIZE=512 BODY=7BIT");
        assert!(path.is_null());
        assert_eq!(params, "SIZE=512 BODY=7BIT");
    }

    #[test]
    fn null_forward_path_is_refused() {
        assert!(matches!(error(b"RCPT TO:<>"), ParseError::Arguments(_)));
        assert_eq!(ParseError::Arguments("x").reply().code, 501);
    }

    #[test]
    fn bare_postmaster_only_as_recipient() {
        let (path, _) = rcpt("RCPT TO:<Postmaster>");
        assert!(path.is_bare_postmaster());
        assert_eq!((path.mailbox(), path.domain()), ("Postmaster", ""));
        assert!(matches!(
            error(b"MAIL FROM:<postmaster>"),
            ParseError::Arguments(_)
        ));
        assert!(matches!(error(b"RCPT TO:<bob>"), ParseError::Arguments(_)));
    }

    #[test]
    fn mailbox_splits_at_last_unquoted_at() {
        let (path, params) = rcpt("RCPT TO:<bob@Example.ORG>");
        assert_eq!(path.mailbox(), "bob@Example.ORG");
        assert_eq!(path.local_part(), "bob");
        assert_eq!(path.domain(), "Example.ORG");
        assert_eq!(params, "");
        assert!(!path.is_null() && !path.is_bare_postmaster());
    }

    #[test]
    fn quoted_local_part_with_at_angle_and_parameters_inside_stays_local() {
        let line = r#"RCPT TO:<"victim@example.net> NOTIFY=SUCCESS ORCPT=rfc822;spy@example.net"@example.org>"#;
        let (path, params) = rcpt(line);
        assert_eq!(path.domain(), "example.org");
        assert_eq!(
            path.local_part(),
            r#""victim@example.net> NOTIFY=SUCCESS ORCPT=rfc822;spy@example.net""#
        );
        assert_eq!(
            path.mailbox(),
            r#""victim@example.net> NOTIFY=SUCCESS ORCPT=rfc822;spy@example.net"@example.org"#
        );
        assert_eq!(params, "");
    }

    #[test]
    fn quoted_local_part_with_escaped_quote_is_kept_as_sent() {
        let (path, _) = rcpt(r#"RCPT TO:<"a\"b@c"@example.org>"#);
        assert_eq!(path.local_part(), r#""a\"b@c""#);
        assert_eq!(path.domain(), "example.org");
        let (path, _) = mail(r#"MAIL FROM:<"sender>odd"@example.net>"#);
        assert_eq!(path.mailbox(), r#""sender>odd"@example.net"#);
        assert_eq!(path.domain(), "example.net");
        let (path, _) = rcpt(r#"RCPT TO:<"a\\"@example.org>"#);
        assert_eq!(path.local_part(), r#""a\\""#);
    }

    #[test]
    fn malformed_quoted_local_parts_are_refused() {
        assert!(matches!(
            error(br#"RCPT TO:<"abc@example.org>"#),
            ParseError::Arguments(_)
        ));
        assert!(matches!(
            error(br#"RCPT TO:<"abc\"@example.org>"#),
            ParseError::Arguments(_)
        ));
        assert!(matches!(
            error(br#"RCPT TO:<"a"b"@example.org>"#),
            ParseError::Arguments(_)
        ));
        assert!(matches!(
            error(br#"RCPT TO:<"a"@example.org"#),
            ParseError::Arguments(_)
        ));
    }

    #[test]
    fn parameters_only_after_the_closing_bracket() {
        let (path, params) = mail("MAIL FROM:<a@b.example>  SIZE=1000 BODY=8BITMIME ");
        assert_eq!(path.mailbox(), "a@b.example");
        assert_eq!(params, "SIZE=1000 BODY=8BITMIME");
        assert!(matches!(
            error(b"MAIL FROM:<a@b.example>SIZE=1"),
            ParseError::Arguments(_)
        ));
        assert!(matches!(
            error(b"MAIL FROM:<a b@c.example>"),
            ParseError::Arguments(_)
        ));
        assert!(matches!(
            error(b"RCPT TO:<a@b.example NOTIFY=NEVER>"),
            ParseError::Arguments(_)
        ));
    }

    #[test]
    fn parameters_iterate_and_reject_garbage() {
        let all: Vec<_> = parameters("SIZE=10 BODY=8BITMIME SMTPUTF8").collect();
        assert_eq!(
            all,
            vec![
                Ok(("SIZE", Some("10"))),
                Ok(("BODY", Some("8BITMIME"))),
                Ok(("SMTPUTF8", None))
            ]
        );
        assert!(parameters("=x").next().unwrap().is_err());
        assert!(parameters("A=").next().unwrap().is_err());
        assert!(parameters("A=b=c").next().unwrap().is_err());
        assert_eq!(parameters("").count(), 0);
    }

    #[test]
    fn source_routes_are_accepted_and_ignored() {
        let (path, _) = rcpt("RCPT TO:<@relay.example,@[192.0.2.7]:user@example.org>");
        assert_eq!(path.mailbox(), "user@example.org");
        assert_eq!(path.domain(), "example.org");
        assert!(matches!(
            error(b"RCPT TO:<@relay.example user@x.example>"),
            ParseError::Arguments(_)
        ));
        assert!(matches!(
            error(b"RCPT TO:<@:user@x.example>"),
            ParseError::Arguments(_)
        ));
        assert!(matches!(
            error(b"RCPT TO:<@a.example,:u@x.example>"),
            ParseError::Arguments(_)
        ));
    }

    #[test]
    fn double_at_is_a_syntax_error() {
        assert!(matches!(
            error(b"RCPT TO:<user@other.example@example.org>"),
            ParseError::Arguments(_)
        ));
    }

    #[test]
    fn percent_hack_is_an_ordinary_local_part() {
        let (path, _) = rcpt("RCPT TO:<user%other.example@example.org>");
        assert_eq!(path.local_part(), "user%other.example");
        assert_eq!(path.domain(), "example.org");
    }

    #[test]
    fn dot_string_rules() {
        assert_eq!(
            rcpt("RCPT TO:<first.last+tag@x.example>").0.local_part(),
            "first.last+tag"
        );
        for bad in [
            "RCPT TO:<.a@x.example>",
            "RCPT TO:<a.@x.example>",
            "RCPT TO:<a..b@x.example>",
        ] {
            assert!(
                matches!(error(bad.as_bytes()), ParseError::Arguments(_)),
                "{bad}"
            );
        }
    }

    #[test]
    fn domains_and_address_literals() {
        assert_eq!(rcpt("RCPT TO:<a@example.org.>").0.domain(), "example.org.");
        assert_eq!(rcpt("RCPT TO:<a@[192.0.2.1]>").0.domain(), "[192.0.2.1]");
        assert_eq!(
            rcpt("RCPT TO:<a@[IPv6:2001:db8::1]>").0.domain(),
            "[IPv6:2001:db8::1]"
        );
        assert_eq!(
            rcpt("RCPT TO:<a@[x-tag:stuff]>").0.domain(),
            "[x-tag:stuff]"
        );
        for bad in [
            "RCPT TO:<a@>",
            "RCPT TO:<a@-x.example>",
            "RCPT TO:<a@x-.example>",
            "RCPT TO:<a@x..example>",
            "RCPT TO:<a@x_y.example>",
            "RCPT TO:<a@[300.0.0.1]>",
            "RCPT TO:<a@[IPv6:zz]>",
            "RCPT TO:<a@[192.0.2.1>",
        ] {
            assert!(
                matches!(error(bad.as_bytes()), ParseError::Arguments(_)),
                "{bad}"
            );
        }
    }

    #[test]
    fn missing_brackets_are_refused() {
        assert!(matches!(
            error(b"MAIL FROM:a@b.example"),
            ParseError::Arguments(_)
        ));
        assert!(matches!(error(b"MAIL FROM:"), ParseError::Arguments(_)));
        assert!(matches!(
            error(b"MAIL FROM:<a@b.example"),
            ParseError::Arguments(_)
        ));
    }

    #[test]
    fn over_long_path_is_refused() {
        let long = format!("RCPT TO:<{}@example.org>", "a".repeat(250));
        assert!(matches!(error(long.as_bytes()), ParseError::Arguments(_)));
        let fits = format!("RCPT TO:<{}@example.org>", "a".repeat(240));
        assert_eq!(rcpt(&fits).0.domain(), "example.org");
    }

    #[test]
    fn non_ascii_addresses_are_refused_cleanly() {
        let err = error("RCPT TO:<jörg@example.org>".as_bytes());
        assert_eq!(err, ParseError::NonAsciiAddress);
        assert_eq!(
            (err.reply().code, err.reply().status),
            (553, Some(Status::new(5, 6, 7)))
        );
        assert_eq!(
            error("MAIL FROM:<a@bücher.example>".as_bytes()),
            ParseError::NonAsciiAddress
        );
        assert_eq!(
            error(b"MAIL FROM:<\xff@x.example>"),
            ParseError::NonAsciiAddress
        );
        assert!(matches!(
            error("EHLO bücher.example".as_bytes()),
            ParseError::Arguments(_)
        ));
    }
}
