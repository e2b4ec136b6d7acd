//! Specification of the command parser and the RFC 5321 address grammar.

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
        "RCPT TO:<a@[x-tag:b@example.net]>",
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

#[test]
fn arbitrary_lines_never_panic_and_results_borrow_from_the_line() {
    // Deterministic pseudo-random lines over the characters the grammar cares about.
    const ALPHABET: &[u8] = b"MAILFROM:RCPTTO:<>@\"\\.,[]: =-aZ09%\x00\r\n\x7f\xc3\xa9";
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let prefixes: [&[u8]; 3] = [b"MAIL FROM:<", b"RCPT TO:<", b"EHLO "];
    for _ in 0..20_000 {
        let mut line = prefixes[(next() % 3) as usize].to_vec();
        for _ in 0..next() % 40 {
            line.push(ALPHABET[(next() % ALPHABET.len() as u64) as usize]);
        }
        if let Ok(
            Command::Mail {
                reverse_path: p, ..
            }
            | Command::Rcpt {
                forward_path: p, ..
            },
        ) = parse_command(&line)
        {
            let text = std::str::from_utf8(&line).unwrap();
            assert!(text.contains(p.mailbox()));
            assert!(p.mailbox().ends_with(p.domain()));
            assert!(!p.domain().contains('@'));
        }
    }
}
