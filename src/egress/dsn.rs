//! Delivery status notifications for failed recipients: a `multipart/report` (RFC 6522) with a
//! human-readable part, a `message/delivery-status` part (RFC 3464 sections 2.2 and 2.3) and
//! the original's header block as `text/rfc822-headers`. Composition only; the caller queues
//! the result. Every line ends in CRLF and stays within 998 octets (RFC 5322 section 2.1.1).

use std::collections::hash_map::DefaultHasher;
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};

use crate::date::rfc5322_date;
use crate::envelope::Envelope;
use crate::smtp::reply::Status;

/// Lines are folded before this many octets where a space allows.
const FOLD_AT: usize = 78;

/// Longest run of text without a space kept on one line; longer runs are split.
const LONGEST_WORD: usize = 900;

/// Longest diagnostic kept; the rest is cut, since a DSN is no place for a server's essay.
const MAX_DIAGNOSTIC: usize = 4000;

/// One recipient the message could not be delivered to, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedRecipient {
    pub recipient: String,
    /// The final status; reported with class 5, since the action is `failed`.
    pub status: Status,
    /// The remote reply (`550 5.1.1 no such user`) or secmx's own reason.
    pub diagnostic: String,
    /// The host that gave the reply, when one did.
    pub remote_mta: Option<String>,
}

/// Composes the DSN for `failed` recipients of `original`, sent from `MAILER-DAEMON@hostname`
/// to the original reverse-path with the null reverse-path. `None` when the original has the
/// null reverse-path (a DSN is never sent to `<>`, RFC 5321 section 6.1) or nothing failed.
pub fn compose(
    hostname: &str,
    original: &Envelope,
    original_body: &[u8],
    failed: &[FailedRecipient],
    now_unix: u64,
) -> Option<(Envelope, Vec<u8>)> {
    if original.is_null_sender() || failed.is_empty() {
        return None;
    }
    let hostname = single_line(hostname);
    let original_headers = header_block(original_body);

    let mut hasher = DefaultHasher::new();
    (
        &original.reverse_path,
        &original.recipients,
        original.received_at,
    )
        .hash(&mut hasher);
    failed
        .iter()
        .for_each(|f| (&f.recipient, &f.diagnostic).hash(&mut hasher));
    now_unix.hash(&mut hasher);
    let digest = hasher.finish();

    let notification = notification_text(&hostname, failed);
    let report = delivery_status(&hostname, original, failed);
    let boundary = boundary(digest, &[&notification, &report, &original_headers]);

    let mut out = Vec::with_capacity(2048 + original_headers.len());
    write_top_headers(&mut out, &hostname, original, &boundary, digest, now_unix);
    out.extend_from_slice(b"This is a MIME-encapsulated delivery status notification.\r\n");
    write_part(
        &mut out,
        &boundary,
        "Notification",
        "text/plain; charset=utf-8",
        &notification,
    );
    write_part(
        &mut out,
        &boundary,
        "Delivery report",
        "message/delivery-status",
        &report,
    );
    write_part(
        &mut out,
        &boundary,
        "Undelivered message headers",
        "text/rfc822-headers",
        &original_headers,
    );
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());

    let envelope = Envelope {
        reverse_path: String::new(),
        recipients: vec![original.reverse_path.clone()],
        received_at: now_unix,
        peer: "local".to_string(),
        helo: hostname,
        tls: "none".to_string(),
    };
    Some((envelope, out))
}

fn write_top_headers(
    out: &mut Vec<u8>,
    hostname: &str,
    original: &Envelope,
    boundary: &str,
    digest: u64,
    now_unix: u64,
) {
    let mut headers = String::new();
    let mut field = |name: &str, value: &str| fold_field(&mut headers, name, value);
    field(
        "From",
        &format!("secmx at {hostname} <MAILER-DAEMON@{hostname}>"),
    );
    field("To", &format!("<{}>", single_line(&original.reverse_path)));
    field("Subject", "Delivery failed: your message was not delivered");
    field("Date", &rfc5322_date(now_unix));
    field(
        "Message-ID",
        &format!("<dsn.{now_unix}.{digest:016x}@{hostname}>"),
    );
    field("Auto-Submitted", "auto-replied");
    field("MIME-Version", "1.0");
    field(
        "Content-Type",
        &format!("multipart/report; report-type=delivery-status; boundary=\"{boundary}\""),
    );
    headers.push_str("\r\n");
    out.extend_from_slice(headers.as_bytes());
}

fn write_part(out: &mut Vec<u8>, boundary: &str, description: &str, kind: &str, body: &[u8]) {
    let encoding = if body.is_ascii() { "7bit" } else { "8bit" };
    let part = format!(
        "\r\n--{boundary}\r\nContent-Description: {description}\r\nContent-Type: {kind}\r\n\
         Content-Transfer-Encoding: {encoding}\r\n\r\n"
    );
    out.extend_from_slice(part.as_bytes());
    out.extend_from_slice(body);
}

/// The part a person reads: which recipients failed and why.
fn notification_text(hostname: &str, failed: &[FailedRecipient]) -> Vec<u8> {
    let mut text = format!(
        "secmx at {hostname} gave up delivering your message to the recipients below.\r\n\
         Each line names the recipient and what stopped the delivery.\r\n\r\n"
    );
    for failure in failed {
        let mut line = format!("<{}>: ", single_line(&failure.recipient));
        if let Some(remote) = &failure.remote_mta {
            let _ = write!(line, "host {} said: ", single_line(remote));
        }
        line.push_str(&diagnostic(&failure.diagnostic));
        fold(&mut text, &line, "    ");
        text.push_str("\r\n");
    }
    text.into_bytes()
}

/// The machine-readable report (RFC 3464 section 2.1): per-message fields, then one group of
/// per-recipient fields each, groups separated by a blank line.
fn delivery_status(hostname: &str, original: &Envelope, failed: &[FailedRecipient]) -> Vec<u8> {
    let mut report = String::new();
    fold_field(&mut report, "Reporting-MTA", &format!("dns; {hostname}"));
    fold_field(
        &mut report,
        "Arrival-Date",
        &rfc5322_date(original.received_at),
    );
    for failure in failed {
        report.push_str("\r\n");
        let recipient = single_line(&failure.recipient);
        let address_type = if recipient.is_ascii() {
            "rfc822"
        } else {
            "utf-8"
        };
        let status = Status::new(5, failure.status.subject, failure.status.detail);
        fold_field(
            &mut report,
            "Final-Recipient",
            &format!("{address_type}; {recipient}"),
        );
        fold_field(&mut report, "Action", "failed");
        fold_field(&mut report, "Status", &status.to_string());
        if let Some(remote) = &failure.remote_mta {
            fold_field(
                &mut report,
                "Remote-MTA",
                &format!("dns; {}", single_line(remote)),
            );
        }
        let diagnostic = diagnostic(&failure.diagnostic);
        fold_field(
            &mut report,
            "Diagnostic-Code",
            &format!("smtp; {diagnostic}"),
        );
    }
    report.into_bytes()
}

/// The original's header section up to (not including) the blank line, with every line end
/// made CRLF and over-long lines cut at 998 octets.
fn header_block(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len().min(16 * 1024));
    for line in body.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        for piece in line.split(|&b| b == b'\r') {
            out.extend_from_slice(&piece[..piece.len().min(998)]);
            out.extend_from_slice(b"\r\n");
        }
    }
    out
}

/// A diagnostic on one line, without control characters, cut at [`MAX_DIAGNOSTIC`].
fn diagnostic(text: &str) -> String {
    let mut line = single_line(text);
    if line.len() > MAX_DIAGNOSTIC {
        let mut cut = MAX_DIAGNOSTIC;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
        line.push_str(" [...]");
    }
    line
}

/// Replaces control characters, CR and LF among them, so no text can start a new line.
fn single_line(text: &str) -> String {
    text.chars()
        .map(|ch| if ch.is_control() { ' ' } else { ch })
        .collect::<String>()
        .trim()
        .to_string()
}

/// Writes `name: value` CRLF, folded (RFC 5322 section 2.2.3).
fn fold_field(out: &mut String, name: &str, value: &str) {
    fold(out, &format!("{name}: {value}"), " ");
    out.push_str("\r\n");
}

/// Writes `text` (one logical line, no CRLF at the end) broken before spaces so lines stay near
/// [`FOLD_AT`]; continuation lines start with `indent`. Runs longer than [`LONGEST_WORD`] are
/// split wherever they must be.
fn fold(out: &mut String, text: &str, indent: &str) {
    let mut line_len = 0;
    for (i, word) in text.split(' ').enumerate() {
        for (j, piece) in split_long(word).into_iter().enumerate() {
            let separator = usize::from(i > 0 && j == 0);
            if line_len > 0 && line_len + separator + piece.len() > FOLD_AT {
                out.push_str("\r\n");
                out.push_str(indent);
                line_len = indent.len();
            } else if separator == 1 {
                out.push(' ');
                line_len += 1;
            }
            out.push_str(piece);
            line_len += piece.len();
        }
    }
}

fn split_long(word: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut rest = word;
    while rest.len() > LONGEST_WORD {
        let mut cut = LONGEST_WORD;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let (piece, tail) = rest.split_at(cut);
        pieces.push(piece);
        rest = tail;
    }
    pieces.push(rest);
    pieces
}

/// A MIME boundary (RFC 2046 section 5.1.1) that occurs in none of the parts.
fn boundary(digest: u64, parts: &[&[u8]]) -> String {
    let mut salt = 0u32;
    loop {
        let boundary = format!("=_secmx_dsn_{digest:016x}_{salt}");
        let found = parts.iter().any(|part| {
            part.windows(boundary.len())
                .any(|window| window == boundary.as_bytes())
        });
        if !found {
            return boundary;
        }
        salt += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn original() -> Envelope {
        Envelope {
            reverse_path: "alice@example.net".to_string(),
            recipients: vec![
                "bob@example.org".to_string(),
                "carol@example.org".to_string(),
            ],
            received_at: 1_764_870_000,
            peer: "192.0.2.7".to_string(),
            helo: "client.example.net".to_string(),
            tls: "TLSv1.3 TLS13_AES_256_GCM_SHA384".to_string(),
        }
    }

    const BODY: &[u8] = b"From: alice@example.net\r\nTo: bob@example.org\r\nSubject: plans\r\n\
                          \r\nsecret body text\r\n";

    fn failures() -> Vec<FailedRecipient> {
        vec![
            FailedRecipient {
                recipient: "bob@example.org".to_string(),
                status: Status::new(5, 1, 1),
                diagnostic: "550 5.1.1 no such user".to_string(),
                remote_mta: Some("mx.example.org".to_string()),
            },
            FailedRecipient {
                recipient: "carol@example.org".to_string(),
                status: Status::new(4, 7, 5),
                diagnostic: "TLS certificate not verified".to_string(),
                remote_mta: None,
            },
        ]
    }

    type Fields = Vec<(String, String)>;

    /// A header section and body split at the first blank line; header lines unfolded.
    fn split_entity(entity: &str) -> (Fields, &str) {
        let (head, body) = entity.split_once("\r\n\r\n").unwrap_or((entity, ""));
        let mut fields: Fields = Vec::new();
        for line in head.split("\r\n") {
            if line.starts_with([' ', '\t']) {
                fields.last_mut().unwrap().1.push_str(line);
            } else {
                let (name, value) = line.split_once(':').unwrap();
                fields.push((name.to_string(), value.trim_start().to_string()));
            }
        }
        (fields, body)
    }

    fn field<'a>(fields: &'a [(String, String)], name: &str) -> &'a str {
        let found = fields.iter().find(|(n, _)| n.eq_ignore_ascii_case(name));
        found
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {name} field"))
    }

    /// Top-level headers and the parts of the multipart/report, each split into its headers
    /// and body.
    fn parse(dsn: &[u8]) -> (Fields, Vec<(Fields, String)>) {
        let text = std::str::from_utf8(dsn).unwrap();
        let (headers, body) = split_entity(text);
        let content_type = field(&headers, "Content-Type");
        let boundary = content_type.split("boundary=\"").nth(1).unwrap();
        let boundary = &boundary[..boundary.find('"').unwrap()];

        let close = format!("\r\n--{boundary}--\r\n");
        assert!(body.ends_with(&close), "closing boundary");
        let body = &body[..body.len() - close.len()];
        let delimiter = format!("\r\n--{boundary}\r\n");
        let mut parts = body.split(&delimiter);
        parts.next().unwrap();
        let parts = parts
            .map(|part| {
                let (fields, body) = split_entity(part);
                (fields, body.to_string())
            })
            .collect();
        (headers, parts)
    }

    /// Groups of `name: value` fields separated by blank lines (RFC 3464 section 2.1).
    fn status_groups(report: &str) -> Vec<Fields> {
        report
            .trim_end_matches("\r\n")
            .split("\r\n\r\n")
            .map(|group| split_entity(group).0)
            .collect()
    }

    fn assert_wire_lines(dsn: &[u8]) {
        assert!(dsn.ends_with(b"\r\n"));
        for (i, line) in dsn.split(|&b| b == b'\n').enumerate() {
            assert!(line.len() <= 999, "line {i} is {} octets", line.len());
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            assert!(!line.contains(&b'\r'), "bare CR in line {i}");
        }
    }

    #[test]
    fn dsn_is_a_multipart_report_with_text_status_and_original_headers() {
        let (envelope, dsn) = compose(
            "gw.example.net",
            &original(),
            BODY,
            &failures(),
            1_764_873_600,
        )
        .unwrap();
        assert_wire_lines(&dsn);
        let (headers, parts) = parse(&dsn);

        assert_eq!(
            field(&headers, "From"),
            "secmx at gw.example.net <MAILER-DAEMON@gw.example.net>"
        );
        assert_eq!(field(&headers, "To"), "<alice@example.net>");
        assert_eq!(
            field(&headers, "Subject"),
            "Delivery failed: your message was not delivered"
        );
        assert_eq!(field(&headers, "Date"), "Thu, 04 Dec 2025 18:40:00 +0000");
        assert_eq!(field(&headers, "Auto-Submitted"), "auto-replied");
        assert_eq!(field(&headers, "MIME-Version"), "1.0");
        assert!(field(&headers, "Message-ID").ends_with("@gw.example.net>"));
        assert!(
            field(&headers, "Content-Type")
                .starts_with("multipart/report; report-type=delivery-status;")
        );

        assert_eq!(parts.len(), 3);
        let kinds: Vec<&str> = parts
            .iter()
            .map(|(h, _)| field(h, "Content-Type"))
            .collect();
        assert_eq!(
            kinds,
            [
                "text/plain; charset=utf-8",
                "message/delivery-status",
                "text/rfc822-headers"
            ]
        );

        let notification = &parts[0].1;
        assert!(
            notification
                .contains("<bob@example.org>: host mx.example.org said: 550 5.1.1 no such user")
        );
        assert!(notification.contains("<carol@example.org>: TLS certificate not verified"));

        let headers_part = &parts[2].1;
        assert_eq!(
            headers_part,
            "From: alice@example.net\r\nTo: bob@example.org\r\nSubject: plans\r\n"
        );
        assert!(!String::from_utf8_lossy(&dsn).contains("secret body text"));

        assert_eq!(envelope.reverse_path, "");
        assert_eq!(envelope.recipients, ["alice@example.net"]);
        assert_eq!(envelope.received_at, 1_764_873_600);
        assert_eq!(
            (envelope.peer.as_str(), envelope.tls.as_str()),
            ("local", "none")
        );
        assert_eq!(envelope.helo, "gw.example.net");
    }

    #[test]
    fn delivery_status_has_one_group_per_failed_recipient() {
        let (_, dsn) = compose(
            "gw.example.net",
            &original(),
            BODY,
            &failures(),
            1_764_873_600,
        )
        .unwrap();
        let (_, parts) = parse(&dsn);
        let groups = status_groups(&parts[1].1);
        assert_eq!(groups.len(), 3);

        assert_eq!(field(&groups[0], "Reporting-MTA"), "dns; gw.example.net");
        assert_eq!(
            field(&groups[0], "Arrival-Date"),
            "Thu, 04 Dec 2025 17:40:00 +0000"
        );

        assert_eq!(
            field(&groups[1], "Final-Recipient"),
            "rfc822; bob@example.org"
        );
        assert_eq!(field(&groups[1], "Action"), "failed");
        assert_eq!(field(&groups[1], "Status"), "5.1.1");
        assert_eq!(field(&groups[1], "Remote-MTA"), "dns; mx.example.org");
        assert_eq!(
            field(&groups[1], "Diagnostic-Code"),
            "smtp; 550 5.1.1 no such user"
        );

        assert_eq!(
            field(&groups[2], "Final-Recipient"),
            "rfc822; carol@example.org"
        );
        assert_eq!(
            field(&groups[2], "Status"),
            "5.7.5",
            "a failed action reports class 5"
        );
        assert!(groups[2].iter().all(|(name, _)| name != "Remote-MTA"));
    }

    #[test]
    fn no_dsn_for_the_null_reverse_path_or_without_failures() {
        let mut from_null = original();
        from_null.reverse_path.clear();
        assert!(compose("gw.example.net", &from_null, BODY, &failures(), 0).is_none());
        assert!(compose("gw.example.net", &original(), BODY, &[], 0).is_none());
    }

    #[test]
    fn long_diagnostics_are_folded_and_line_breaks_cannot_inject_fields() {
        let mut failed = failures();
        failed[0].diagnostic = format!(
            "550-5.1.1 {} / 550 5.1.1 end\r\nAction: delivered\r\n{}",
            "word ".repeat(300),
            "x".repeat(MAX_DIAGNOSTIC)
        );
        let (_, dsn) = compose("gw.example.net", &original(), BODY, &failed, 0).unwrap();
        assert_wire_lines(&dsn);
        let (_, parts) = parse(&dsn);

        let groups = status_groups(&parts[1].1);
        let actions: Vec<_> = groups[1]
            .iter()
            .filter(|(name, _)| name == "Action")
            .collect();
        assert_eq!(actions.len(), 1, "{:?}", groups[1]);
        let diagnostic = field(&groups[1], "Diagnostic-Code");
        assert!(diagnostic.starts_with("smtp; 550-5.1.1 word word"));
        assert!(diagnostic.contains("550 5.1.1 end  Action: delivered"));
        assert!(diagnostic.len() < MAX_DIAGNOSTIC + 100);
        assert!(diagnostic.ends_with("[...]"));
    }

    #[test]
    fn original_headers_with_bare_line_ends_and_no_body_are_made_canonical() {
        let body = b"Subject: a\nX-Long: yy\rZ: z\r\n";
        let (_, dsn) = compose("gw.example.net", &original(), body, &failures(), 0).unwrap();
        assert_wire_lines(&dsn);
        let (_, parts) = parse(&dsn);
        assert_eq!(parts[2].1, "Subject: a\r\nX-Long: yy\r\nZ: z\r\n");
    }

    #[test]
    fn python_email_parser_reads_the_report_without_defects() {
        let (_, dsn) = compose(
            "gw.example.net",
            &original(),
            BODY,
            &failures(),
            1_764_873_600,
        )
        .unwrap();
        let script = "import email, sys\n\
            m = email.message_from_bytes(sys.stdin.buffer.read())\n\
            for p in m.walk():\n\
            \x20   assert not p.defects, p.defects\n\
            ds = [p for p in m.walk() if p.get_content_type() == 'message/delivery-status'][0]\n\
            for group in ds.get_payload()[1:]:\n\
            \x20   print(group['Final-Recipient'], group['Status'])\n";
        let mut child = std::process::Command::new("python3")
            .args(["-c", script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3");
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&dsn).unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success());
        assert_eq!(
            String::from_utf8(output.stdout).unwrap(),
            "rfc822; bob@example.org 5.1.1\nrfc822; carol@example.org 5.7.5\n"
        );
    }

    #[test]
    fn boundary_avoids_text_found_in_the_parts() {
        let first = boundary(7, &[]);
        let chosen = boundary(7, &[first.as_bytes()]);
        assert_ne!(first, chosen);
    }
}
