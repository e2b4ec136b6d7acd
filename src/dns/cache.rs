//! The per-core answer cache, without I/O: the clock is a parameter.
//!
//! Positive answers live for the smallest TTL of their RRset, clamped to `dns.min_ttl` ..
//! `dns.max_ttl`. NODATA and NXDOMAIN live for the negative TTL from the SOA in the authority
//! section (RFC 2308 5), capped by `dns.negative_max_ttl`; a negative answer without an SOA is
//! not cached at all ("Negative responses without SOA records SHOULD NOT be cached",
//! RFC 2308 5). Temporary failures are never cached. `dns.min_ttl` raises only positive TTLs:
//! stretching negative answers would hide new records.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::DnsOutcome;
use super::wire::{Interpretation, QuestionKey, Records};

/// Entries held per core before the ones closest to expiry are dropped.
pub const CAPACITY: usize = 65_536;

/// TTL clamps, in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TtlPolicy {
    pub min_ttl: u32,
    pub max_ttl: u32,
    pub negative_max_ttl: u32,
}

impl TtlPolicy {
    /// From the `[dns]` durations; anything beyond `u32::MAX` seconds saturates.
    pub fn new(min_ttl: Duration, max_ttl: Duration, negative_max_ttl: Duration) -> TtlPolicy {
        let secs = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
        TtlPolicy {
            min_ttl: secs(min_ttl),
            max_ttl: secs(max_ttl),
            negative_max_ttl: secs(negative_max_ttl),
        }
    }

    /// TTL of a positive answer: raised to `min_ttl`, then capped at `max_ttl`.
    pub fn positive(&self, ttl: u32) -> u32 {
        ttl.max(self.min_ttl).min(self.max_ttl)
    }

    /// TTL of a negative answer, `None` when it must not be cached.
    pub fn negative(&self, soa_ttl: Option<u32>) -> Option<u32> {
        soa_ttl.map(|ttl| ttl.min(self.negative_max_ttl))
    }
}

#[derive(Clone, Debug)]
enum Cached {
    Answer(Records),
    NoData,
    NxDomain,
}

#[derive(Clone, Debug)]
struct Entry {
    value: Cached,
    expires: Instant,
}

/// Answers by question, each with its expiry time.
#[derive(Debug)]
pub struct Cache {
    entries: HashMap<QuestionKey, Entry>,
    policy: TtlPolicy,
    capacity: usize,
}

impl Cache {
    pub fn new(policy: TtlPolicy, capacity: usize) -> Cache {
        Cache {
            entries: HashMap::new(),
            policy,
            capacity: capacity.max(1),
        }
    }

    /// The cached outcome for `key` at `now`, with the remaining TTL (rounded up) in answers.
    /// An expired entry is removed and reported as absent.
    pub fn get(&mut self, key: &QuestionKey, now: Instant) -> Option<DnsOutcome<Records>> {
        let entry = self.entries.get(key)?;
        if entry.expires <= now {
            self.entries.remove(key);
            return None;
        }
        Some(match &entry.value {
            Cached::Answer(records) => DnsOutcome::Answer {
                records: records.clone(),
                ttl: remaining_secs(entry.expires - now),
            },
            Cached::NoData => DnsOutcome::NoData,
            Cached::NxDomain => DnsOutcome::NxDomain,
        })
    }

    /// Stores what upstream said about `key` as far as the policy allows, and returns the
    /// outcome to hand to the asker, with the clamped TTL.
    pub fn store(
        &mut self,
        key: QuestionKey,
        interpretation: Interpretation,
        now: Instant,
    ) -> DnsOutcome<Records> {
        let (value, ttl, outcome) = match interpretation {
            Interpretation::Answer { records, ttl } => {
                let ttl = self.policy.positive(ttl);
                let outcome = DnsOutcome::Answer {
                    records: records.clone(),
                    ttl,
                };
                (Cached::Answer(records), Some(ttl), outcome)
            }
            Interpretation::NoData { negative_ttl } => (
                Cached::NoData,
                self.policy.negative(negative_ttl),
                DnsOutcome::NoData,
            ),
            Interpretation::NxDomain { negative_ttl } => (
                Cached::NxDomain,
                self.policy.negative(negative_ttl),
                DnsOutcome::NxDomain,
            ),
            Interpretation::TempFail(reason) => return DnsOutcome::TempFail(reason),
            // The resolver follows aliases before storing; one left over is not an outcome.
            Interpretation::Alias { target, .. } => {
                return DnsOutcome::TempFail(format!("CNAME to {target} left unresolved"));
            }
        };
        match ttl {
            Some(ttl) if ttl > 0 => {
                self.make_room(now);
                let expires = now + Duration::from_secs(u64::from(ttl));
                self.entries.insert(key, Entry { value, expires });
            }
            _ => {
                self.entries.remove(&key);
            }
        }
        outcome
    }

    /// Number of entries, expired ones included until they are next touched.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// When full, drops expired entries, then the eighth of the rest closest to expiry, so that
    /// the cost of the scan is spread over many inserts.
    fn make_room(&mut self, now: Instant) {
        if self.entries.len() < self.capacity {
            return;
        }
        self.entries.retain(|_, entry| entry.expires > now);
        if self.entries.len() < self.capacity {
            return;
        }
        let mut expiries: Vec<Instant> = self.entries.values().map(|e| e.expires).collect();
        let cut = (self.capacity / 8).max(1).min(expiries.len() - 1);
        let (_, &mut threshold, _) = expiries.select_nth_unstable(cut);
        self.entries.retain(|_, entry| entry.expires > threshold);
    }
}

fn remaining_secs(remaining: Duration) -> u32 {
    let secs = remaining.as_secs() + u64::from(remaining.subsec_nanos() > 0);
    u32::try_from(secs).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;

    fn policy() -> TtlPolicy {
        TtlPolicy {
            min_ttl: 10,
            max_ttl: 3600,
            negative_max_ttl: 120,
        }
    }

    fn key(name: &str) -> QuestionKey {
        QuestionKey {
            name: name.to_string(),
            record_type: 1,
        }
    }

    fn address_answer(ttl: u32) -> Interpretation {
        Interpretation::Answer {
            records: Records::Addresses(vec![IpAddr::V4(Ipv4Addr::new(127, 0, 0, 81))]),
            ttl,
        }
    }

    #[test]
    fn positive_answer_is_served_with_remaining_ttl_until_it_expires() {
        let start = Instant::now();
        let mut cache = Cache::new(policy(), CAPACITY);
        let stored = cache.store(key("amx.example.net."), address_answer(300), start);
        assert!(matches!(stored, DnsOutcome::Answer { ttl: 300, .. }));

        let later = start + Duration::from_secs(100);
        match cache.get(&key("amx.example.net."), later) {
            Some(DnsOutcome::Answer { ttl, .. }) => assert_eq!(ttl, 200),
            other => panic!("expected a cached answer, got {other:?}"),
        }
        let expired = start + Duration::from_secs(300);
        assert_eq!(cache.get(&key("amx.example.net."), expired), None);
        assert!(cache.is_empty());
    }

    #[test]
    fn positive_ttl_is_clamped_to_min_and_max() {
        let now = Instant::now();
        let mut cache = Cache::new(policy(), CAPACITY);
        let low = cache.store(key("low."), address_answer(1), now);
        assert!(matches!(low, DnsOutcome::Answer { ttl: 10, .. }));
        let high = cache.store(key("high."), address_answer(86_400 * 7), now);
        assert!(matches!(high, DnsOutcome::Answer { ttl: 3600, .. }));
        assert!(
            cache
                .get(&key("low."), now + Duration::from_secs(9))
                .is_some()
        );
        assert!(
            cache
                .get(&key("high."), now + Duration::from_secs(3600))
                .is_none()
        );
    }

    #[test]
    fn negative_answer_lives_for_soa_ttl_capped_by_negative_max() {
        let now = Instant::now();
        let mut cache = Cache::new(policy(), CAPACITY);
        let negative = Interpretation::NxDomain {
            negative_ttl: Some(300),
        };
        assert_eq!(
            cache.store(key("nxd."), negative, now),
            DnsOutcome::NxDomain
        );
        let nodata = Interpretation::NoData {
            negative_ttl: Some(5),
        };
        cache.store(key("nodata."), nodata, now);

        let at = |secs| now + Duration::from_secs(secs);
        assert_eq!(cache.get(&key("nxd."), at(119)), Some(DnsOutcome::NxDomain));
        assert_eq!(cache.get(&key("nxd."), at(120)), None);
        assert_eq!(cache.get(&key("nodata."), at(4)), Some(DnsOutcome::NoData));
        assert_eq!(cache.get(&key("nodata."), at(5)), None);
    }

    #[test]
    fn negative_answer_without_soa_is_not_cached() {
        let now = Instant::now();
        let mut cache = Cache::new(policy(), CAPACITY);
        let outcome = cache.store(
            key("nosoa."),
            Interpretation::NoData { negative_ttl: None },
            now,
        );
        assert_eq!(outcome, DnsOutcome::NoData);
        assert_eq!(cache.get(&key("nosoa."), now), None);
    }

    #[test]
    fn temporary_failure_is_not_cached_and_does_not_evict() {
        let now = Instant::now();
        let mut cache = Cache::new(policy(), CAPACITY);
        cache.store(key("a."), address_answer(300), now);
        let outcome = cache.store(key("a."), Interpretation::TempFail("timeout".into()), now);
        assert_eq!(outcome, DnsOutcome::TempFail("timeout".into()));
        assert!(cache.get(&key("a."), now).is_some());
    }

    #[test]
    fn zero_ttl_answer_is_handed_out_but_not_cached() {
        let now = Instant::now();
        let mut cache = Cache::new(
            TtlPolicy::new(
                Duration::ZERO,
                Duration::from_secs(60),
                Duration::from_secs(60),
            ),
            CAPACITY,
        );
        let outcome = cache.store(key("zero."), address_answer(0), now);
        assert!(matches!(outcome, DnsOutcome::Answer { ttl: 0, .. }));
        assert_eq!(cache.get(&key("zero."), now), None);
    }

    #[test]
    fn full_cache_drops_entries_closest_to_expiry_first() {
        let now = Instant::now();
        let mut cache = Cache::new(policy(), 16);
        for i in 0..16u32 {
            cache.store(key(&format!("h{i}.")), address_answer(100 + i), now);
        }
        cache.store(key("new."), address_answer(50), now);
        assert!(cache.len() <= 16);
        assert!(cache.get(&key("new."), now).is_some());
        assert!(cache.get(&key("h15."), now).is_some());
        assert!(cache.get(&key("h0."), now).is_none());
    }
}
