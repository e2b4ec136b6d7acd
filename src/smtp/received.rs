//! The `Received:` trace header an SMTP server prepends to each message (RFC 5321 section 4.4,
//! protocol names from RFC 3848) and the RFC 5322 section 3.3 date it ends with.

use std::fmt::Write;
use std::net::IpAddr;

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

/// `Thu, 1 Jan 1970 00:00:00 +0000` for a time in seconds since the Unix epoch, in UTC.
pub fn rfc5322_date(secs: u64) -> String {
    const WEEKDAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = secs / 86_400;
    let second_of_day = secs % 86_400;
    // 1970-01-01 was a Thursday.
    let weekday = WEEKDAYS[((days + 4) % 7) as usize];
    let (year, month, day) = civil_date(days);
    format!(
        "{weekday}, {day} {} {year} {:02}:{:02}:{:02} +0000",
        MONTHS[month as usize - 1],
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60
    )
}

fn is_leap_year(year: u64) -> bool {
    (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400)
}

/// Year, month (1-12) and day of month for a count of days since 1970-01-01.
fn civil_date(mut days: u64) -> (u64, u64, u64) {
    // Whole 400-year cycles (146,097 days each) first, so the loops below stay short.
    let mut year = 1970 + 400 * (days / 146_097);
    days %= 146_097;
    loop {
        let year_len = if is_leap_year(year) { 366 } else { 365 };
        if days < year_len {
            break;
        }
        days -= year_len;
        year += 1;
    }
    let february = if is_leap_year(year) { 29 } else { 28 };
    let month_lengths = [31, february, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    let mut month = 1;
    for len in month_lengths {
        if days < len {
            break;
        }
        days -= len;
        month += 1;
    }
    (year, month, days + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_rfc5322_in_utc() {
        assert_eq!(rfc5322_date(0), "Thu, 1 Jan 1970 00:00:00 +0000");
        assert_eq!(rfc5322_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
        assert_eq!(rfc5322_date(951_868_799), "Tue, 29 Feb 2000 23:59:59 +0000");
        assert_eq!(
            rfc5322_date(1_700_000_000),
            "Tue, 14 Nov 2023 22:13:20 +0000"
        );
        assert_eq!(
            rfc5322_date(4_107_542_400),
            "Mon, 1 Mar 2100 00:00:00 +0000"
        );
        assert_eq!(
            rfc5322_date(1_767_225_599),
            "Wed, 31 Dec 2025 23:59:59 +0000"
        );
        assert_eq!(
            rfc5322_date(13_574_563_200),
            "Tue, 29 Feb 2400 00:00:00 +0000"
        );
    }

    #[test]
    fn every_day_follows_the_previous_one() {
        let mut previous = civil_date(0);
        for days in 1..200_000 {
            let (y, m, d) = civil_date(days);
            let (py, pm, pd) = previous;
            let next_day = (y, m) == (py, pm) && d == pd + 1;
            let next_month = y == py && m == pm + 1 && d == 1;
            let next_year = y == py + 1 && (m, d) == (1, 1) && (pm, pd) == (12, 31);
            assert!(
                next_day || next_month || next_year,
                "{previous:?} -> {:?}",
                (y, m, d)
            );
            previous = (y, m, d);
        }
    }

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
             (TLSv1.3 TLS13_AES_256_GCM_SHA384);\r\n\tThu, 1 Jan 1970 00:00:00 +0000\r\n"
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
