//! Framing of the spool's segment files.
//!
//! A segment starts with a 16-byte header (`secmxlog`, format version, core, segment number) and
//! then holds records back to back. Each record is a 16-byte header followed by its payload:
//!
//! ```text
//! magic  A7 'S' 'X' 'R'
//! kind   u8 (1 message, 2 completion), then three zero bytes
//! length u32 LE, payload bytes
//! crc32  u32 LE over kind, the zero bytes, length and payload
//! ```
//!
//! The magic lets recovery tell a record start from zeros or garbage; the length and CRC let it
//! tell a complete record from one torn by a crash or damaged on disk.

use std::fmt;

/// Length of a segment file's header; the first record starts here.
pub(crate) const SEGMENT_HEADER_LEN: u64 = 16;
/// Length of a record header.
pub(crate) const RECORD_HEADER_LEN: usize = 16;
/// Largest payload a record may carry; a length beyond it can only be damage.
pub(crate) const MAX_PAYLOAD: usize = 1 << 30;

const SEGMENT_MAGIC: &[u8; 8] = b"secmxlog";
const SEGMENT_FORMAT: u16 = 1;
const RECORD_MAGIC: [u8; 4] = [0xa7, b'S', b'X', b'R'];

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A message: envelope and body (see `codec::message`).
    Message,
    /// Recipients of an earlier message that are finished (see `codec::completion`).
    Completion,
}

impl Kind {
    fn code(self) -> u8 {
        match self {
            Kind::Message => 1,
            Kind::Completion => 2,
        }
    }

    fn from_code(code: u8) -> Option<Kind> {
        match code {
            1 => Some(Kind::Message),
            2 => Some(Kind::Completion),
            _ => None,
        }
    }
}

/// The header of a new segment file.
pub(crate) fn segment_header(core: u16, segment: u32) -> [u8; SEGMENT_HEADER_LEN as usize] {
    let mut header = [0; SEGMENT_HEADER_LEN as usize];
    header[..8].copy_from_slice(SEGMENT_MAGIC);
    header[8..10].copy_from_slice(&SEGMENT_FORMAT.to_le_bytes());
    header[10..12].copy_from_slice(&core.to_le_bytes());
    header[12..16].copy_from_slice(&segment.to_le_bytes());
    header
}

/// Checks that `bytes` begin with the header of segment `segment` of core `core`.
pub(crate) fn check_segment_header(bytes: &[u8], core: u16, segment: u32) -> Result<(), Damage> {
    if bytes.len() < SEGMENT_HEADER_LEN as usize {
        return Err(Damage::Torn);
    }
    if bytes[..SEGMENT_HEADER_LEN as usize] != segment_header(core, segment) {
        return Err(Damage::BadSegmentHeader);
    }
    Ok(())
}

/// A payload too large for one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TooLarge;

/// Starts a record of `kind` at the end of `buf`; append the payload, then call [`seal`].
pub(crate) fn begin(buf: &mut Vec<u8>, kind: Kind) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&RECORD_MAGIC);
    buf.extend_from_slice(&[kind.code(), 0, 0, 0]);
    buf.extend_from_slice(&[0; 8]);
    start
}

/// Fills in the length and checksum of the record begun at `start`. A payload over
/// [`MAX_PAYLOAD`] is removed from `buf` again.
pub(crate) fn seal(buf: &mut Vec<u8>, start: usize) -> Result<(), TooLarge> {
    let payload_len = buf.len() - start - RECORD_HEADER_LEN;
    if payload_len > MAX_PAYLOAD {
        buf.truncate(start);
        return Err(TooLarge);
    }
    buf[start + 8..start + 12].copy_from_slice(&(payload_len as u32).to_le_bytes());
    let crc = checksum(
        &buf[start + 4..start + 12],
        &buf[start + RECORD_HEADER_LEN..],
    );
    buf[start + 12..start + 16].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

fn checksum(header: &[u8], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(header);
    hasher.update(payload);
    hasher.finalize()
}

/// Why the bytes at a position are not a good record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Damage {
    /// The file ends inside the record: a write cut short by a crash or a full disk.
    Torn,
    /// No record magic where a record should start.
    BadMagic,
    /// A length no record can have.
    BadLength,
    /// The checksum does not match: the record was changed or only partly reached the disk.
    BadChecksum,
    /// The segment file's own header is wrong.
    BadSegmentHeader,
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Damage::Torn => "torn record",
            Damage::BadMagic => "no record magic",
            Damage::BadLength => "impossible record length",
            Damage::BadChecksum => "record checksum mismatch",
            Damage::BadSegmentHeader => "bad segment header",
        })
    }
}

/// The outcome of reading one record from the front of a byte slice.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame<'a> {
    /// A complete record with a good checksum. `kind` is `None` for a kind this build does not
    /// know; `len` is the record's whole length, header included.
    Record {
        kind: Option<Kind>,
        payload: &'a [u8],
        len: usize,
    },
    /// The slice ends before the record does; `needed` bytes from its start would complete it.
    Partial { needed: usize },
    /// The bytes cannot be a record, however many more follow.
    Damaged(Damage),
}

/// Reads the record at the start of `bytes`.
pub(crate) fn parse(bytes: &[u8]) -> Frame<'_> {
    let magic_seen = bytes.len().min(RECORD_MAGIC.len());
    if bytes[..magic_seen] != RECORD_MAGIC[..magic_seen] {
        return Frame::Damaged(Damage::BadMagic);
    }
    if bytes.len() < RECORD_HEADER_LEN {
        return Frame::Partial {
            needed: RECORD_HEADER_LEN,
        };
    }
    if bytes[5..8] != [0, 0, 0] {
        return Frame::Damaged(Damage::BadChecksum);
    }

    let payload_len = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
    if payload_len > MAX_PAYLOAD {
        return Frame::Damaged(Damage::BadLength);
    }
    let len = RECORD_HEADER_LEN + payload_len;
    if bytes.len() < len {
        return Frame::Partial { needed: len };
    }

    let payload = &bytes[RECORD_HEADER_LEN..len];
    let stored = u32::from_le_bytes(bytes[12..16].try_into().unwrap());
    if checksum(&bytes[4..12], payload) != stored {
        return Frame::Damaged(Damage::BadChecksum);
    }
    Frame::Record {
        kind: Kind::from_code(bytes[4]),
        payload,
        len,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(buf: &mut Vec<u8>, kind: Kind, payload: &[u8]) {
        let start = begin(buf, kind);
        buf.extend_from_slice(payload);
        seal(buf, start).unwrap();
    }

    /// Reads records from the front of `bytes` the way recovery does: up to the first record that
    /// is torn or damaged. Returns the payloads and where the good part ends.
    fn scan(bytes: &[u8]) -> (Vec<&[u8]>, usize, Option<Damage>) {
        let mut pos = 0;
        let mut payloads = Vec::new();
        while pos < bytes.len() {
            match parse(&bytes[pos..]) {
                Frame::Record { payload, len, .. } => {
                    payloads.push(payload);
                    pos += len;
                }
                Frame::Partial { .. } => return (payloads, pos, Some(Damage::Torn)),
                Frame::Damaged(damage) => return (payloads, pos, Some(damage)),
            }
        }
        (payloads, pos, None)
    }

    fn three_records() -> (Vec<u8>, usize) {
        let mut buf = Vec::new();
        record(&mut buf, Kind::Message, b"first message");
        record(&mut buf, Kind::Completion, b"a completion");
        let last = buf.len();
        record(&mut buf, Kind::Message, &[0x5a; 300]);
        (buf, last)
    }

    #[test]
    fn records_round_trip() {
        let (buf, _) = three_records();
        let (payloads, end, damage) = scan(&buf);
        assert_eq!(payloads.len(), 3);
        assert_eq!(payloads[0], b"first message");
        assert_eq!(payloads[1], b"a completion");
        assert_eq!(payloads[2], &[0x5a; 300][..]);
        assert_eq!((end, damage), (buf.len(), None));
    }

    #[test]
    fn parse_reports_the_kind() {
        let mut buf = Vec::new();
        record(&mut buf, Kind::Completion, b"x");
        assert!(matches!(
            parse(&buf),
            Frame::Record {
                kind: Some(Kind::Completion),
                len: 17,
                ..
            }
        ));
    }

    #[test]
    fn truncation_at_every_offset_of_the_last_record_keeps_the_earlier_ones() {
        let (buf, last) = three_records();
        for cut in last..buf.len() {
            let (payloads, end, damage) = scan(&buf[..cut]);
            assert_eq!(payloads.len(), 2, "cut at {cut}");
            assert_eq!(end, last, "cut at {cut}");
            let expected = if cut == last {
                None
            } else {
                Some(Damage::Torn)
            };
            assert_eq!(damage, expected, "cut at {cut}");
        }
    }

    #[test]
    fn every_single_bit_flip_in_the_last_record_is_detected() {
        let (buf, last) = three_records();
        for byte in last..buf.len() {
            for bit in 0..8 {
                let mut damaged = buf.clone();
                damaged[byte] ^= 1 << bit;
                let (payloads, end, damage) = scan(&damaged);
                assert_eq!(payloads.len(), 2, "flip at {byte}.{bit}");
                assert_eq!(end, last);
                assert!(damage.is_some(), "flip at {byte}.{bit} not detected");
            }
        }
    }

    #[test]
    fn zeros_after_the_last_record_are_damage_not_records() {
        let (mut buf, _) = three_records();
        let good = buf.len();
        buf.extend_from_slice(&[0; 4096]);
        let (payloads, end, damage) = scan(&buf);
        assert_eq!(
            (payloads.len(), end, damage),
            (3, good, Some(Damage::BadMagic))
        );
    }

    #[test]
    fn impossible_length_is_damage_even_when_the_file_is_short() {
        let mut buf = Vec::new();
        record(&mut buf, Kind::Message, b"m");
        buf[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(parse(&buf), Frame::Damaged(Damage::BadLength));
    }

    #[test]
    fn unknown_kind_with_good_checksum_is_a_record_of_no_kind() {
        let mut buf = Vec::new();
        record(&mut buf, Kind::Message, b"m");
        buf[4] = 9;
        let crc = checksum(&buf[4..12], &buf[16..]);
        buf[12..16].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(parse(&buf), Frame::Record { kind: None, .. }));
    }

    #[test]
    fn segment_header_names_core_and_segment() {
        let header = segment_header(2, 41);
        assert_eq!(check_segment_header(&header, 2, 41), Ok(()));
        assert_eq!(
            check_segment_header(&header, 2, 42),
            Err(Damage::BadSegmentHeader)
        );
        assert_eq!(check_segment_header(&header[..9], 2, 41), Err(Damage::Torn));
    }
}
