//! What the log says is still to do: live messages with their unfinished recipients, and how
//! much of each segment is still needed.
//!
//! Recovery replays the segments through the same calls the writer makes after each flush, so
//! the state after a restart is the state before it. Nothing here touches files.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use crate::envelope::QueueId;

/// A message with at least one unfinished recipient.
#[derive(Debug)]
struct Live {
    recipients: u32,
    remaining: u32,
    /// Finished recipients, one bit per index.
    done: Box<[u64]>,
    /// Length of the message record in its segment, header included.
    len: u64,
    /// Completion records not yet flushed that name this message.
    completions_in_flight: u32,
    /// Earlier ids of this message (before it was copied forward), still accepted by `complete`.
    aliases: Vec<QueueId>,
}

impl Live {
    fn new(recipients: u32, len: u64) -> Live {
        Live {
            recipients,
            remaining: recipients,
            done: vec![0; (recipients as usize).div_ceil(64)].into_boxed_slice(),
            len,
            completions_in_flight: 0,
            aliases: Vec::new(),
        }
    }

    fn is_done(&self, index: u32) -> bool {
        self.done[(index / 64) as usize] & (1 << (index % 64)) != 0
    }

    /// Marks one recipient finished; out-of-range and repeated indices change nothing.
    fn finish(&mut self, index: u32) {
        if index < self.recipients && !self.is_done(index) {
            self.done[(index / 64) as usize] |= 1 << (index % 64);
            self.remaining -= 1;
        }
    }

    fn finished(&self) -> Vec<u32> {
        (0..self.recipients).filter(|&i| self.is_done(i)).collect()
    }

    fn pending(&self) -> Vec<u32> {
        (0..self.recipients).filter(|&i| !self.is_done(i)).collect()
    }
}

/// How much of one segment file is still needed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Usage {
    /// Bytes in the file, header included.
    pub size: u64,
    pub live_messages: u32,
    /// Bytes of the live messages' records.
    pub live_bytes: u64,
    /// Its messages were copied forward; it stays until the next reclamation pass so readers
    /// still holding the old ids can finish.
    pub held: bool,
    /// Its bytes from this offset on are damaged and could not be set aside: the file goes to
    /// `damaged/` whole instead of being deleted.
    pub damaged_from: Option<u64>,
}

/// Hashes queue ids, which the spool makes itself (nobody outside chooses them, so there is no
/// flooding to resist): a multiply-rotate mix, several times cheaper than SipHash on the
/// handful of ledger lookups every message costs.
#[derive(Default)]
struct IdHasher(u64);

impl IdHasher {
    fn mix(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.mix(b.into());
        }
    }

    fn write_u16(&mut self, n: u16) {
        self.mix(n.into());
    }

    fn write_u32(&mut self, n: u32) {
        self.mix(n.into());
    }

    fn write_u64(&mut self, n: u64) {
        self.mix(n);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type IdMap<V> = HashMap<QueueId, V, BuildHasherDefault<IdHasher>>;

/// The live messages of one core's log and the usage of its segments.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    live: IdMap<Live>,
    /// Old id -> current id of messages copied forward.
    aliases: IdMap<QueueId>,
    segments: BTreeMap<u32, Usage>,
}

/// A segment is worth emptying by copying when fewer than this share of its bytes are live…
const PINNED_LIVE_PERCENT: u64 = 10;
/// …and at least this many newer segments wait behind it.
const PINNED_NEWER_SEGMENTS: usize = 2;

impl Ledger {
    pub(crate) fn add_segment(&mut self, segment: u32, size: u64) {
        self.segments.entry(segment).or_default().size = size;
    }

    pub(crate) fn grow_segment(&mut self, segment: u32, bytes: u64) {
        self.segments.entry(segment).or_default().size += bytes;
    }

    pub(crate) fn remove_segment(&mut self, segment: u32) {
        self.segments.remove(&segment);
    }

    #[cfg(test)]
    pub(crate) fn segment(&self, segment: u32) -> Option<&Usage> {
        self.segments.get(&segment)
    }

    /// Marks a segment whose bytes from `from` on are damaged and still in the file.
    pub(crate) fn keep_damaged_tail(&mut self, segment: u32, from: u64) {
        self.segments.entry(segment).or_default().damaged_from = Some(from);
    }

    /// Where the damaged bytes still in a segment file start, if it has any.
    pub(crate) fn damaged_tail(&self, segment: u32) -> Option<u64> {
        self.segments.get(&segment)?.damaged_from
    }

    pub(crate) fn has_segment(&self, segment: u32) -> bool {
        self.segments.contains_key(&segment)
    }

    pub(crate) fn newest_segment(&self) -> Option<u32> {
        self.segments.last_key_value().map(|(&n, _)| n)
    }

    pub(crate) fn live_messages(&self) -> usize {
        self.live.len()
    }

    /// The current id of a message, following copies forward.
    pub(crate) fn resolve(&self, id: QueueId) -> QueueId {
        self.aliases.get(&id).copied().unwrap_or(id)
    }

    /// Number of recipients of a live message.
    pub(crate) fn recipients(&self, id: QueueId) -> Option<u32> {
        self.live.get(&id).map(|l| l.recipients)
    }

    /// True when every index in `recipients` is already recorded as finished.
    pub(crate) fn all_finished(&self, id: QueueId, recipients: &[u32]) -> bool {
        self.live
            .get(&id)
            .is_none_or(|l| recipients.iter().all(|&i| l.is_done(i)))
    }

    /// Recipient indices of a live message that are not finished.
    pub(crate) fn pending(&self, id: QueueId) -> Option<Vec<u32>> {
        self.live.get(&id).map(Live::pending)
    }

    /// Ids of all live messages, oldest first.
    pub(crate) fn live_ids(&self) -> Vec<QueueId> {
        let mut ids: Vec<QueueId> = self.live.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// A message record at `id`, `len` bytes long, with `recipients` recipients of which `done`
    /// are finished. With an `origin`, it replaces that earlier record of the same message, whose
    /// id is returned when it was live.
    pub(crate) fn message(
        &mut self,
        id: QueueId,
        len: u64,
        recipients: u32,
        done: &[u32],
        origin: Option<QueueId>,
    ) -> Option<QueueId> {
        let mut live = Live::new(recipients, len);
        for &i in done {
            live.finish(i);
        }

        let mut replaced = None;
        if let Some(origin) = origin {
            let origin = self.resolve(origin);
            if let Some(old) = self.remove_live(origin) {
                for i in old.finished() {
                    live.finish(i);
                }
                live.completions_in_flight = old.completions_in_flight;
                live.aliases = old.aliases;
                replaced = Some(origin);
            }
            live.aliases.push(origin);
            for &alias in &live.aliases {
                self.aliases.insert(alias, id);
            }
        }

        if live.remaining == 0 {
            self.forget_aliases(&live);
            return replaced;
        }
        let usage = self.segments.entry(id.segment).or_default();
        usage.live_messages += 1;
        usage.live_bytes += len;
        self.live.insert(id, live);
        replaced
    }

    /// A completion record: `recipients` of `id` are finished. Returns the message's current id
    /// when this finished its last recipient.
    pub(crate) fn completion(&mut self, id: QueueId, recipients: &[u32]) -> Option<QueueId> {
        let id = self.resolve(id);
        let live = self.live.get_mut(&id)?;
        for &i in recipients {
            live.finish(i);
        }
        if live.remaining > 0 {
            return None;
        }
        let live = self.remove_live(id)?;
        self.forget_aliases(&live);
        Some(id)
    }

    /// What a copy of a live message must say: its recipient count and finished recipients.
    /// `None` when the message is gone or a completion of it is still in flight (the copy could
    /// then claim a recipient unfinished that is about to be recorded finished under the old id).
    pub(crate) fn copy_state(&self, id: QueueId) -> Option<(u32, Vec<u32>)> {
        let live = self.live.get(&id)?;
        (live.completions_in_flight == 0).then(|| (live.recipients, live.finished()))
    }

    /// A completion record naming `id` was queued for the next flush.
    pub(crate) fn completion_queued(&mut self, id: QueueId) {
        if let Some(live) = self.live.get_mut(&self.resolve(id)) {
            live.completions_in_flight += 1;
        }
    }

    /// A queued completion record naming `id` was flushed or failed.
    pub(crate) fn completion_settled(&mut self, id: QueueId) {
        if let Some(live) = self.live.get_mut(&self.resolve(id)) {
            live.completions_in_flight = live.completions_in_flight.saturating_sub(1);
        }
    }

    fn remove_live(&mut self, id: QueueId) -> Option<Live> {
        let live = self.live.remove(&id)?;
        if let Some(usage) = self.segments.get_mut(&id.segment) {
            usage.live_messages -= 1;
            usage.live_bytes -= live.len;
        }
        Some(live)
    }

    fn forget_aliases(&mut self, live: &Live) {
        for alias in &live.aliases {
            self.aliases.remove(alias);
        }
    }

    /// The oldest segments, in order, that no live message needs any more. Stops at the first
    /// segment still needed, because a later segment may hold completion records for the
    /// messages of an earlier one. The newest segment always stays: it carries the numbering.
    pub(crate) fn drained_prefix(&self, honour_holds: bool) -> Vec<u32> {
        let newest = self.newest_segment();
        self.segments
            .iter()
            .take_while(|&(&n, usage)| {
                Some(n) != newest && usage.live_messages == 0 && !(honour_holds && usage.held)
            })
            .map(|(&n, _)| n)
            .collect()
    }

    /// The oldest segment when a few live messages are all that keep it, and newer segments that
    /// could otherwise go wait behind it.
    pub(crate) fn pinned_oldest(&self) -> Option<u32> {
        if self.segments.len() <= PINNED_NEWER_SEGMENTS {
            return None;
        }
        let (&n, usage) = self.segments.first_key_value()?;
        let pinned = usage.live_messages > 0
            && usage.live_bytes * 100 < usage.size * PINNED_LIVE_PERCENT
            && !usage.held;
        pinned.then_some(n)
    }

    /// Live messages of `segment` that can be copied now (see [`Ledger::copy_state`]), oldest
    /// first.
    pub(crate) fn movable_in(&self, segment: u32) -> Vec<QueueId> {
        let mut out: Vec<QueueId> = self
            .live
            .iter()
            .filter(|(id, live)| id.segment == segment && live.completions_in_flight == 0)
            .map(|(&id, _)| id)
            .collect();
        out.sort_unstable();
        out
    }

    pub(crate) fn hold(&mut self, segment: u32) {
        if let Some(usage) = self.segments.get_mut(&segment) {
            usage.held = true;
        }
    }

    pub(crate) fn release_holds(&mut self) {
        for usage in self.segments.values_mut() {
            usage.held = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(segment: u32, offset: u64) -> QueueId {
        QueueId {
            core: 0,
            segment,
            offset,
        }
    }

    #[test]
    fn completing_every_recipient_removes_the_message() {
        let mut ledger = Ledger::default();
        ledger.add_segment(0, 1000);
        ledger.message(id(0, 16), 100, 3, &[], None);
        ledger.completion(id(0, 16), &[0, 2]);
        assert_eq!(ledger.pending(id(0, 16)), Some(vec![1]));
        ledger.completion(id(0, 16), &[2, 1]);
        assert_eq!(ledger.pending(id(0, 16)), None);
        assert_eq!(ledger.live_messages(), 0);
        assert_eq!(ledger.segment(0).unwrap().live_bytes, 0);
    }

    #[test]
    fn out_of_range_and_repeated_indices_change_nothing() {
        let mut ledger = Ledger::default();
        ledger.message(id(0, 16), 100, 2, &[], None);
        ledger.completion(id(0, 16), &[0, 0, 7]);
        assert_eq!(ledger.pending(id(0, 16)), Some(vec![1]));
    }

    #[test]
    fn message_without_recipients_is_never_live() {
        let mut ledger = Ledger::default();
        ledger.message(id(0, 16), 100, 0, &[], None);
        assert_eq!(ledger.live_messages(), 0);
    }

    #[test]
    fn copy_forward_takes_over_finished_recipients_and_old_id() {
        let mut ledger = Ledger::default();
        ledger.add_segment(0, 1000);
        ledger.add_segment(1, 1000);
        ledger.message(id(0, 16), 100, 3, &[], None);
        ledger.completion(id(0, 16), &[0]);
        // The copy was made before recipient 1 finished; that completion came in between.
        ledger.completion(id(0, 16), &[1]);
        ledger.message(id(1, 16), 120, 3, &[0], Some(id(0, 16)));

        assert_eq!(ledger.pending(id(1, 16)), Some(vec![2]));
        assert_eq!(ledger.pending(id(0, 16)), None);
        assert_eq!(ledger.segment(0).unwrap().live_messages, 0);
        assert_eq!(ledger.resolve(id(0, 16)), id(1, 16));

        ledger.completion(id(0, 16), &[2]);
        assert_eq!(ledger.live_messages(), 0);
        assert_eq!(ledger.resolve(id(0, 16)), id(0, 16));
    }

    #[test]
    fn second_copy_keeps_the_first_id_working() {
        let mut ledger = Ledger::default();
        ledger.message(id(0, 16), 100, 2, &[], None);
        ledger.message(id(1, 16), 100, 2, &[], Some(id(0, 16)));
        ledger.message(id(2, 16), 100, 2, &[], Some(id(1, 16)));
        assert_eq!(ledger.resolve(id(0, 16)), id(2, 16));
        assert_eq!(ledger.resolve(id(1, 16)), id(2, 16));
        ledger.completion(id(0, 16), &[0]);
        assert_eq!(ledger.pending(id(2, 16)), Some(vec![1]));
    }

    #[test]
    fn copy_whose_origin_is_unknown_stands_on_its_own() {
        let mut ledger = Ledger::default();
        ledger.message(id(4, 16), 100, 2, &[1], Some(id(0, 16)));
        assert_eq!(ledger.pending(id(4, 16)), Some(vec![0]));
    }

    #[test]
    fn drained_prefix_stops_at_the_first_segment_in_use_and_keeps_the_newest() {
        let mut ledger = Ledger::default();
        for n in 0..5 {
            ledger.add_segment(n, 1000);
        }
        ledger.message(id(2, 16), 100, 1, &[], None);
        assert_eq!(ledger.drained_prefix(true), vec![0, 1]);

        ledger.completion(id(2, 16), &[0]);
        assert_eq!(ledger.drained_prefix(true), vec![0, 1, 2, 3]);

        ledger.hold(1);
        assert_eq!(ledger.drained_prefix(true), vec![0]);
        assert_eq!(ledger.drained_prefix(false), vec![0, 1, 2, 3]);
    }

    #[test]
    fn oldest_segment_is_pinned_when_little_of_it_lives_and_newer_ones_wait() {
        let mut ledger = Ledger::default();
        ledger.add_segment(0, 10_000);
        ledger.add_segment(1, 10_000);
        ledger.message(id(0, 16), 500, 1, &[], None);
        assert_eq!(ledger.pinned_oldest(), None, "only one newer segment");

        ledger.add_segment(2, 100);
        assert_eq!(ledger.pinned_oldest(), Some(0));

        ledger.message(id(0, 600), 600, 1, &[], None);
        assert_eq!(ledger.pinned_oldest(), None, "11% live is worth keeping");
    }

    #[test]
    fn messages_with_completions_in_flight_are_not_movable() {
        let mut ledger = Ledger::default();
        ledger.message(id(0, 16), 100, 2, &[], None);
        ledger.message(id(0, 116), 100, 2, &[], None);
        ledger.completion_queued(id(0, 16));
        assert_eq!(ledger.movable_in(0), vec![id(0, 116)]);
        assert_eq!(ledger.copy_state(id(0, 16)), None);
        ledger.completion_settled(id(0, 16));
        assert_eq!(ledger.movable_in(0).len(), 2);
        assert_eq!(ledger.copy_state(id(0, 16)), Some((2, vec![])));
    }
}
