//! The `Received:` trace header an SMTP server prepends to each message (RFC 5321 section 4.4,
//! protocol names from RFC 3848) and the RFC 5322 section 3.3 date it ends with.

use std::net::{IpAddr, Ipv4Addr};

use crate::date::push_rfc5322_date;

/// What the trace header records about one session.
#[derive(Debug, Clone, Copy)]
pub struct Trace<'a> {
    /// The EHLO/HELO argument.
    pub helo: &'a str,
    pub peer: IpAddr,
    /// Our own host name.
    pub hostname: &'a str,
    /// True when the client greeted with EHLO.
    pub extended: bool,
    /// TLS version and cipher suite, `None` without TLS.
    pub tls: Option<&'a str>,
    /// Seconds since the Unix epoch.
    pub time: u64,
}

impl Trace<'_> {
    /// The header field with CRLF line ends, folded before `by` and before the date. No `id`
    /// clause: the queue id is not known until the spool has the message.
    pub fn header(&self) -> String {
        let protocol = match (self.tls.is_some(), self.extended) {
            (true, _) => "ESMTPS",
            (false, true) => "ESMTP",
            (false, false) => "SMTP",
        };
        // Built piece by piece rather than with `format!`: every message gets one.
        let literal = address_literal(self.peer);
        let tls = self.tls.unwrap_or_default();
        let mut header = String::with_capacity(
            self.helo.len() + literal.len() + self.hostname.len() + tls.len() + 96,
        );
        for piece in [
            "Received: from ",
            self.helo,
            " (",
            &literal,
            ")\r\n\tby ",
            self.hostname,
            " with ",
            protocol,
        ] {
            header.push_str(piece);
        }
        if let Some(tls) = self.tls {
            header.push_str(" (");
            header.push_str(tls);
            header.push(')');
        }
        header.push_str(";\r\n\t");
        push_rfc5322_date(&mut header, self.time);
        header.push_str("\r\n");
        header
    }
}

/// `[192.0.2.1]` or `[IPv6:2001:db8::1]` (RFC 5321 section 4.1.3); IPv4-mapped IPv6 addresses
/// are written as IPv4.
pub fn address_literal(ip: IpAddr) -> String {
    let v4 = match ip {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4,
            None => return format!("[IPv6:{v6}]"),
        },
    };
    let mut literal = String::with_capacity(17);
    literal.push('[');
    push_ipv4(&mut literal, v4);
    literal.push(']');
    literal
}

/// The address as `IpAddr::to_string` writes it; IPv4 without `fmt`, as every message records
/// its client's address.
pub fn ip_text(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let mut text = String::with_capacity(15);
            push_ipv4(&mut text, v4);
            text
        }
        IpAddr::V6(v6) => v6.to_string(),
    }
}

fn push_ipv4(out: &mut String, ip: Ipv4Addr) {
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        if octet >= 100 {
            out.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            out.push(char::from(b'0' + octet / 10 % 10));
        }
        out.push(char::from(b'0' + octet % 10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn received_header_names_helo_peer_host_protocol_and_tls() {
        let trace = Trace {
            helo: "client.example",
            peer: "192.0.2.1".parse().unwrap(),
            hostname: "mx.example.org",
            extended: true,
            tls: Some("TLSv1.3 TLS13_AES_256_GCM_SHA384"),
            time: 0,
        };
        assert_eq!(
            trace.header(),
            "Received: from client.example ([192.0.2.1])\r\n\tby mx.example.org with ESMTPS \
             (TLSv1.3 TLS13_AES_256_GCM_SHA384);\r\n\tThu, 01 Jan 1970 00:00:00 +0000\r\n"
        );
        let plain = Trace {
            tls: None,
            peer: "2001:db8::1".parse().unwrap(),
            ..trace
        };
        assert!(plain.header().starts_with(
            "Received: from client.example ([IPv6:2001:db8::1])\r\n\tby mx.example.org with ESMTP;"
        ));
        let helo = Trace {
            tls: None,
            extended: false,
            ..trace
        };
        assert!(helo.header().contains("with SMTP;"));
    }

    #[test]
    fn addresses_are_written_as_std_writes_them() {
        for text in [
            "0.0.0.0",
            "127.0.0.1",
            "192.0.2.9",
            "10.100.255.99",
            "2001:db8::1",
            "::1",
        ] {
            let ip: IpAddr = text.parse().unwrap();
            assert_eq!(ip_text(ip), ip.to_string());
        }
        assert_eq!(
            address_literal("10.20.0.255".parse().unwrap()),
            "[10.20.0.255]"
        );
    }

    #[test]
    fn mapped_ipv4_is_written_as_ipv4() {
        assert_eq!(
            address_literal("::ffff:192.0.2.9".parse().unwrap()),
            "[192.0.2.9]"
        );
    }
}
