//! Payload encodings of the spool's records: the envelope in secmx's own compact, versioned binary
//! form, the message record (a copied-forward message also names its origin and the recipients
//! already finished), and the completion record.
//!
//! Integers are little-endian; counts and lengths are LEB128 varints; strings are a varint length
//! followed by UTF-8 bytes. A message body is whatever follows the envelope in its record.

use std::fmt;

use crate::envelope::{Envelope, QueueId};

/// Version byte in front of every encoded envelope.
const ENVELOPE_VERSION: u8 = 1;

/// Message record flag: the record copies a live message forward from `origin`.
const FLAG_ORIGIN: u8 = 0x01;
/// Message record flag: a list of recipient indices already finished follows.
const FLAG_DONE: u8 = 0x02;

/// Why a payload could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DecodeError {
    /// The payload ends inside a field.
    Truncated,
    /// A varint longer than 64 bits, or a count that cannot be true for the payload size.
    BadLength,
    /// An envelope version or flag this build does not know.
    Unsupported(u8),
    /// A string field is not UTF-8.
    NotUtf8,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Truncated => f.write_str("payload ends inside a field"),
            DecodeError::BadLength => f.write_str("impossible length or count"),
            DecodeError::Unsupported(v) => write!(f, "unsupported version or flags {v:#04x}"),
            DecodeError::NotUtf8 => f.write_str("string field is not UTF-8"),
        }
    }
}

impl From<DecodeError> for std::io::Error {
    fn from(e: DecodeError) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
    }
}

pub(crate) fn put_varint(buf: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        buf.push((value as u8) | 0x80);
        value >>= 7;
    }
    buf.push(value as u8);
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    put_varint(buf, s.len() as u64);
    buf.extend_from_slice(s.as_bytes());
}

fn put_id(buf: &mut Vec<u8>, id: QueueId) {
    buf.extend_from_slice(&id.core.to_le_bytes());
    buf.extend_from_slice(&id.segment.to_le_bytes());
    buf.extend_from_slice(&id.offset.to_le_bytes());
}

fn put_indices(buf: &mut Vec<u8>, indices: &[u32]) {
    put_varint(buf, indices.len() as u64);
    for &i in indices {
        put_varint(buf, u64::from(i));
    }
}

/// A cursor over a payload.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, pos: 0 }
    }

    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::Truncated);
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.u8()?;
            let bits = u64::from(byte & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(DecodeError::BadLength);
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::BadLength)
    }

    /// A count of items that each take at least one byte, checked against what is left.
    fn count(&mut self) -> Result<usize, DecodeError> {
        let n = self.varint()?;
        if n > self.remaining() as u64 {
            return Err(DecodeError::BadLength);
        }
        Ok(n as usize)
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let len = self.count()?;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::NotUtf8)
    }

    fn id(&mut self) -> Result<QueueId, DecodeError> {
        Ok(QueueId {
            core: u16::from_le_bytes(self.array()?),
            segment: u32::from_le_bytes(self.array()?),
            offset: u64::from_le_bytes(self.array()?),
        })
    }

    fn indices(&mut self) -> Result<Vec<u32>, DecodeError> {
        let n = self.count()?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let i = u32::try_from(self.varint()?).map_err(|_| DecodeError::BadLength)?;
            out.push(i);
        }
        Ok(out)
    }

    fn rest(&mut self) -> &'a [u8] {
        let out = &self.bytes[self.pos..];
        self.pos = self.bytes.len();
        out
    }
}

/// Appends the encoded envelope to `buf`.
pub(crate) fn put_envelope(buf: &mut Vec<u8>, envelope: &Envelope) {
    buf.push(ENVELOPE_VERSION);
    put_str(buf, &envelope.reverse_path);
    put_varint(buf, envelope.recipients.len() as u64);
    for recipient in &envelope.recipients {
        put_str(buf, recipient);
    }
    buf.extend_from_slice(&envelope.received_at.to_le_bytes());
    put_str(buf, &envelope.peer);
    put_str(buf, &envelope.helo);
    put_str(buf, &envelope.tls);
}

fn envelope(r: &mut Reader<'_>) -> Result<Envelope, DecodeError> {
    let version = r.u8()?;
    if version != ENVELOPE_VERSION {
        return Err(DecodeError::Unsupported(version));
    }
    let reverse_path = r.string()?;
    let n = r.count()?;
    let mut recipients = Vec::with_capacity(n);
    for _ in 0..n {
        recipients.push(r.string()?);
    }
    Ok(Envelope {
        reverse_path,
        recipients,
        received_at: u64::from_le_bytes(r.array()?),
        peer: r.string()?,
        helo: r.string()?,
        tls: r.string()?,
    })
}

/// What a message record says besides its envelope and body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct MessageHead {
    /// The record this one copies forward; that record no longer counts once this one exists.
    pub origin: Option<QueueId>,
    /// Recipient indices finished before the copy was made.
    pub done: Vec<u32>,
}

/// Appends the head of a message record; the envelope and body follow it.
pub(crate) fn put_message_head(buf: &mut Vec<u8>, head: &MessageHead) {
    let mut flags = 0;
    if head.origin.is_some() {
        flags |= FLAG_ORIGIN;
    }
    if !head.done.is_empty() {
        flags |= FLAG_DONE;
    }
    buf.push(flags);
    if let Some(origin) = head.origin {
        put_id(buf, origin);
    }
    if !head.done.is_empty() {
        put_indices(buf, &head.done);
    }
}

/// Reads the head of a message record, leaving `r` at the envelope.
pub(crate) fn message_head(r: &mut Reader<'_>) -> Result<MessageHead, DecodeError> {
    let flags = r.u8()?;
    if flags & !(FLAG_ORIGIN | FLAG_DONE) != 0 {
        return Err(DecodeError::Unsupported(flags));
    }
    let origin = if flags & FLAG_ORIGIN != 0 {
        Some(r.id()?)
    } else {
        None
    };
    let done = if flags & FLAG_DONE != 0 {
        r.indices()?
    } else {
        Vec::new()
    };
    Ok(MessageHead { origin, done })
}

/// A decoded message record.
#[derive(Debug)]
pub(crate) struct Message<'a> {
    pub head: MessageHead,
    pub envelope: Envelope,
    pub body: &'a [u8],
}

/// Decodes a whole message record payload.
pub(crate) fn message(payload: &[u8]) -> Result<Message<'_>, DecodeError> {
    let mut r = Reader::new(payload);
    let head = message_head(&mut r)?;
    let envelope = envelope(&mut r)?;
    Ok(Message {
        head,
        envelope,
        body: r.rest(),
    })
}

/// Offset in a message record payload where the envelope starts (what a copy keeps verbatim).
pub(crate) fn envelope_start(payload: &[u8]) -> Result<usize, DecodeError> {
    let mut r = Reader::new(payload);
    message_head(&mut r)?;
    Ok(r.position())
}

/// Appends a completion record payload: `recipients` of `id` are finished.
pub(crate) fn put_completion(buf: &mut Vec<u8>, id: QueueId, recipients: &[u32]) {
    put_id(buf, id);
    put_indices(buf, recipients);
}

/// Decodes a completion record payload.
pub(crate) fn completion(payload: &[u8]) -> Result<(QueueId, Vec<u32>), DecodeError> {
    let mut r = Reader::new(payload);
    let id = r.id()?;
    let recipients = r.indices()?;
    if r.remaining() != 0 {
        return Err(DecodeError::BadLength);
    }
    Ok((id, recipients))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_envelope() -> Envelope {
        Envelope {
            reverse_path: "alice@example.org".into(),
            recipients: vec!["bob@example.net".into(), "carol@example.com".into()],
            received_at: 1_700_000_000,
            peer: "192.0.2.7".into(),
            helo: "mail.example.org".into(),
            tls: "TLSv1.3 TLS_AES_128_GCM_SHA256".into(),
        }
    }

    #[test]
    fn varint_round_trips_edges() {
        for value in [0, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            let mut buf = Vec::new();
            put_varint(&mut buf, value);
            assert_eq!(Reader::new(&buf).varint(), Ok(value));
        }
    }

    #[test]
    fn overlong_varint_is_rejected() {
        let buf = [0xff; 11];
        assert_eq!(Reader::new(&buf).varint(), Err(DecodeError::BadLength));
    }

    #[test]
    fn message_round_trips_with_and_without_origin() {
        let envelope = sample_envelope();
        for head in [
            MessageHead::default(),
            MessageHead {
                origin: Some(QueueId {
                    core: 3,
                    segment: 9,
                    offset: 4096,
                }),
                done: vec![1],
            },
        ] {
            let mut buf = Vec::new();
            put_message_head(&mut buf, &head);
            put_envelope(&mut buf, &envelope);
            buf.extend_from_slice(b"Subject: hi\r\n\r\nbody\r\n");

            let decoded = message(&buf).unwrap();
            assert_eq!(decoded.head, head);
            assert_eq!(decoded.envelope, envelope);
            assert_eq!(decoded.body, b"Subject: hi\r\n\r\nbody\r\n");
        }
    }

    #[test]
    fn null_reverse_path_and_empty_body_round_trip() {
        let mut envelope = sample_envelope();
        envelope.reverse_path.clear();
        let mut buf = Vec::new();
        put_message_head(&mut buf, &MessageHead::default());
        put_envelope(&mut buf, &envelope);

        let decoded = message(&buf).unwrap();
        assert!(decoded.envelope.is_null_sender());
        assert!(decoded.body.is_empty());
    }

    #[test]
    fn envelope_start_skips_the_head() {
        let head = MessageHead {
            origin: Some(QueueId {
                core: 0,
                segment: 1,
                offset: 16,
            }),
            done: vec![0, 5],
        };
        let mut buf = Vec::new();
        put_message_head(&mut buf, &head);
        let start = buf.len();
        put_envelope(&mut buf, &sample_envelope());
        assert_eq!(envelope_start(&buf), Ok(start));
        assert_eq!(buf[start], ENVELOPE_VERSION);
    }

    #[test]
    fn unknown_envelope_version_is_rejected() {
        let mut buf = Vec::new();
        put_message_head(&mut buf, &MessageHead::default());
        put_envelope(&mut buf, &sample_envelope());
        buf[1] = 9;
        assert_eq!(message(&buf).unwrap_err(), DecodeError::Unsupported(9));
    }

    #[test]
    fn every_truncation_of_an_envelope_is_an_error() {
        let mut buf = Vec::new();
        put_message_head(&mut buf, &MessageHead::default());
        put_envelope(&mut buf, &sample_envelope());
        // The body is open-ended, so only cuts inside the head and envelope can be detected.
        for cut in 0..buf.len() {
            assert!(message(&buf[..cut]).is_err(), "cut at {cut} decoded");
        }
    }

    #[test]
    fn completion_round_trips() {
        let id = QueueId {
            core: 1,
            segment: 7,
            offset: 123_456,
        };
        let mut buf = Vec::new();
        put_completion(&mut buf, id, &[0, 2, 300]);
        assert_eq!(completion(&buf), Ok((id, vec![0, 2, 300])));
        assert!(completion(&buf[..buf.len() - 1]).is_err());
    }
}
