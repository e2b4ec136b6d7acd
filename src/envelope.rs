//! The envelope of a queued message and the identifiers shared by the spool, ingress and egress.

use std::fmt;

/// Identifies a message in the spool: the core whose log holds it, the segment file and the byte
/// offset of its record inside that segment. Stable across restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueId {
    pub core: u16,
    pub segment: u32,
    pub offset: u64,
}

/// `CCSSSSSSOOOOOOOO`: core, segment and offset in upper-case hex, 2, 6 and 8 digits wide
/// (wider when a value needs more).
impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Written by hand: it goes into the reply to every message.
        let mut text = [0u8; 32];
        let mut len = 0;
        for (value, width) in [
            (u64::from(self.core), 2),
            (u64::from(self.segment), 6),
            (self.offset, 8),
        ] {
            let digits = (64 - value.leading_zeros()).div_ceil(4).max(width) as usize;
            for i in (0..digits).rev() {
                text[len] = b"0123456789ABCDEF"[(value >> (4 * i)) as usize & 0xf];
                len += 1;
            }
        }
        f.write_str(std::str::from_utf8(&text[..len]).expect("hex digits are ASCII"))
    }
}

/// What the SMTP transaction established about a message, apart from its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The reverse-path as a mailbox (`local@domain`); empty for the null reverse-path `<>`.
    pub reverse_path: String,
    /// Forward-paths as mailboxes, in the order they were accepted.
    pub recipients: Vec<String>,
    /// Seconds since the Unix epoch at which the message was accepted.
    pub received_at: u64,
    /// The client's address, or `local` for messages secmx made itself (DSNs).
    pub peer: String,
    /// The name the client gave in EHLO/HELO.
    pub helo: String,
    /// TLS version and cipher suite of the receiving session, `none` without TLS.
    pub tls: String,
}

impl Envelope {
    /// True for the null reverse-path `<>`, to which nothing is ever sent.
    pub fn is_null_sender(&self) -> bool {
        self.reverse_path.is_empty()
    }
}

/// The domain part of a mailbox, lowercased, without a trailing dot.
pub fn mailbox_domain(mailbox: &str) -> String {
    let domain = mailbox.rsplit_once('@').map_or("", |(_, d)| d);
    domain.trim_end_matches('.').to_ascii_lowercase()
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailbox_domain_is_lowercased_without_trailing_dot() {
        assert_eq!(mailbox_domain("Bob@Example.ORG."), "example.org");
        assert_eq!(mailbox_domain("\"a@b\"@c.example"), "c.example");
        assert_eq!(mailbox_domain("postmaster"), "");
    }

    #[test]
    fn queue_id_display_is_fixed_width_hex() {
        let id = QueueId {
            core: 1,
            segment: 2,
            offset: 255,
        };
        assert_eq!(id.to_string(), "01000002000000FF");
        let wide = QueueId {
            core: 0x1ab,
            segment: 0x1234567,
            offset: 0x1_0000_0000,
        };
        assert_eq!(wide.to_string(), "1AB1234567100000000");
    }
}
