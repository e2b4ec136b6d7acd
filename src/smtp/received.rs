//! The `Received:` trace header an SMTP server prepends to each message (RFC 5321 section 4.4,
//! protocol names from RFC 3848) and the RFC 5322 section 3.3 date it ends with.

use std::fmt::Write;
use std::net::IpAddr;

use crate::date::rfc5322_date;

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
        let mut header = format!(
            "Received: from {} ({})\r\n\tby {} with {}",
            self.helo,
            address_literal(self.peer),
            self.hostname,
            protocol
        );
        if let Some(tls) = self.tls {
            let _ = write!(header, " ({tls})");
        }
        let _ = write!(header, ";\r\n\t{}\r\n", rfc5322_date(self.time));
        header
    }
}

/// `[192.0.2.1]` or `[IPv6:2001:db8::1]` (RFC 5321 section 4.1.3); IPv4-mapped IPv6 addresses
/// are written as IPv4.
pub fn address_literal(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("[{v4}]"),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => format!("[{v4}]"),
            None => format!("[IPv6:{v6}]"),
        },
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
    fn mapped_ipv4_is_written_as_ipv4() {
        assert_eq!(
            address_literal("::ffff:192.0.2.9".parse().unwrap()),
            "[192.0.2.9]"
        );
    }
}
