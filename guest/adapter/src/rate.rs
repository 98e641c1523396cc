//! Rate-limit buckets in memory, for a runtime whose instances share one address space (the
//! sidecar's workers, the CLI's batch mode).
//!
//! A fixed-size, 4-way set-associative table of GCRA buckets ([`portcullis_core::rate`]): each
//! bucket is a 64-bit fingerprint of its key and one arrival time, 16 bytes. A key hashes to one
//! set of four slots behind its own lock, so counting is one hash, one uncontended lock and a
//! few comparisons, and memory is fixed at creation however many distinct keys arrive.
//!
//! When a set is full, a new key takes the slot of a bucket that is already full (it has
//! refilled: forgetting it loses nothing) or else the one closest to full. Under a flood of
//! distinct keys an evicted bucket therefore restarts full: a client can gain at most one extra
//! burst per eviction, never lose budget. Evictions are counted so an operator can size the
//! table (`capacity`).
//!
//! Keys can come from clients (addresses, subjects), so the fingerprint hash is seeded by the
//! runtime with a secret it draws (the sidecar draws one at start): a client cannot aim its
//! keys at another client's set.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use portcullis_core::rate::{RateParams, Taken, is_full, take};

const WAYS: usize = 4;

#[derive(Clone, Copy, Default)]
struct Slot {
    /// 0: empty.
    fingerprint: u64,
    /// GCRA theoretical arrival time.
    tat: u64,
}

/// The table. Shared by reference between threads.
pub struct RateTable {
    sets: Box<[Mutex<[Slot; WAYS]>]>,
    mask: u64,
    hasher: foldhash::fast::FixedState,
    evictions: AtomicU64,
}

impl std::fmt::Debug for RateTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateTable").field("capacity", &self.capacity()).finish_non_exhaustive()
    }
}

impl RateTable {
    /// A table for at least `capacity` buckets (rounded up to a power of two, at least 4),
    /// hashing keys with `seed`.
    pub fn new(capacity: usize, seed: u64) -> RateTable {
        let sets = capacity.div_ceil(WAYS).max(1).next_power_of_two();
        RateTable {
            sets: (0..sets).map(|_| Mutex::new([Slot::default(); WAYS])).collect(),
            mask: (sets as u64).wrapping_sub(1),
            hasher: foldhash::fast::FixedState::with_seed(seed),
            evictions: AtomicU64::new(0),
        }
    }

    /// How many buckets the table holds at most.
    pub fn capacity(&self) -> usize {
        self.sets.len() * WAYS
    }

    /// Buckets evicted while not yet full (the table was too small for the keys in flight).
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// Spends one request from `key`'s bucket at `now_ns` (the runtime's monotonic clock).
    pub fn take(&self, key: &str, params: RateParams, now_ns: u64) -> Taken {
        let hash = hash_with(&self.hasher, key);
        // The low bits choose the set; the whole hash (never 0) identifies the key in it.
        let fingerprint = hash.max(1);
        let index = usize::try_from(hash & self.mask).unwrap_or(0);
        let Some(set) = self.sets.get(index) else {
            return take(0, now_ns, params).1;
        };
        let mut set = set.lock().unwrap_or_else(PoisonError::into_inner);
        let way = match set.iter().position(|s| s.fingerprint == fingerprint) {
            Some(w) => w,
            None => {
                // An empty or refilled slot costs nothing; otherwise the one closest to full.
                let free = set.iter().position(|s| s.fingerprint == 0 || is_full(s.tat, now_ns));
                let w = free.unwrap_or_else(|| {
                    self.evictions.fetch_add(1, Ordering::Relaxed);
                    set.iter().enumerate().min_by_key(|(_, s)| s.tat).map_or(0, |(i, _)| i)
                });
                if let Some(s) = set.get_mut(w) {
                    *s = Slot { fingerprint, tat: 0 };
                }
                w
            }
        };
        let Some(slot) = set.get_mut(way) else {
            return take(0, now_ns, params).1;
        };
        let (next, taken) = take(slot.tat, now_ns, params);
        if let Some(n) = next {
            slot.tat = n;
        }
        taken
    }
}

fn hash_with(hasher: &foldhash::fast::FixedState, key: &str) -> u64 {
    let mut h = hasher.build_hasher();
    h.write(key.as_bytes());
    h.finish()
}

/// A bucket kept in a runtime's external store (Envoy's shared data, Spin's key-value store),
/// where a fixed number of slots hold one bucket each: which slot a key uses, and the 64-bit
/// fingerprint that says whether the slot holds this key's bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotKey {
    /// The slot, below the number of slots.
    pub slot: u64,
    /// Never 0 (0 marks an empty record).
    pub fingerprint: u64,
}

impl SlotKey {
    /// The slot and fingerprint of `key` among `slots` slots (a power of two), hashed with
    /// `seed`.
    pub fn of(key: &str, slots: u64, seed: u64) -> SlotKey {
        let hash = hash_with(&foldhash::fast::FixedState::with_seed(seed), key);
        SlotKey { slot: hash & slots.max(1).wrapping_sub(1), fingerprint: hash.max(1) }
    }
}

/// The size of a slot's record: the owner's fingerprint and its GCRA arrival time, little
/// endian.
pub const RECORD_BYTES: usize = 16;

/// Spends one request from the bucket in `record` (as read from the store; absent, malformed
/// or another key's record counts as a full bucket of this key: the slot is taken over).
/// Returns the record to write back (`None`: the request does not fit, write nothing) and the
/// answer.
pub fn spend_record(
    record: Option<&[u8]>,
    key: SlotKey,
    params: RateParams,
    now_ns: u64,
) -> (Option<[u8; RECORD_BYTES]>, Taken) {
    let stored = record.and_then(|r| <[u8; RECORD_BYTES]>::try_from(r).ok()).map(|b| {
        let (owner, tat) = b.split_at(8);
        let word = |w: &[u8]| <[u8; 8]>::try_from(w).map_or(0, u64::from_le_bytes);
        (word(owner), word(tat))
    });
    let tat = match stored {
        Some((owner, tat)) if owner == key.fingerprint => tat,
        _ => 0,
    };
    let (next, taken) = take(tat, now_ns, params);
    let out = next.map(|n| {
        let mut out = [0u8; RECORD_BYTES];
        let (owner, tat) = out.split_at_mut(8);
        owner.copy_from_slice(&key.fingerprint.to_le_bytes());
        tat.copy_from_slice(&n.to_le_bytes());
        out
    });
    (out, taken)
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: RateParams = RateParams { interval_ns: 1_000_000_000, burst: 2 };

    #[test]
    fn records_count_like_the_table_and_another_keys_record_restarts_full() {
        let a = SlotKey::of("a", 8, 1);
        assert!(a.slot < 8 && a.fingerprint != 0);
        let (r1, t) = spend_record(None, a, P, 10);
        assert!(t.allowed && t.remaining == 1);
        let (r2, t) = spend_record(r1.as_ref().map(|r| &r[..]), a, P, 10);
        assert!(t.allowed && t.remaining == 0);
        let (r3, t) = spend_record(r2.as_ref().map(|r| &r[..]), a, P, 10);
        assert!(!t.allowed && r3.is_none(), "nothing to write when refused");
        let other = SlotKey { fingerprint: a.fingerprint ^ 1, ..a };
        let (_, t) = spend_record(r2.as_ref().map(|r| &r[..]), other, P, 10);
        assert!(t.allowed && t.remaining == 1, "another key takes the slot over, full");
        let (_, t) = spend_record(Some(b"short"), a, P, 10);
        assert!(t.allowed && t.remaining == 1, "a malformed record is a full bucket");
    }

    #[test]
    fn each_key_has_its_own_bucket() {
        let t = RateTable::new(1024, 7);
        assert!(t.take("a", P, 10).allowed);
        assert!(t.take("a", P, 10).allowed);
        assert!(!t.take("a", P, 10).allowed);
        assert!(t.take("b", P, 10).allowed);
        assert_eq!(t.evictions(), 0);
    }

    #[test]
    fn memory_is_fixed_under_a_flood_of_distinct_keys_and_evictions_only_ever_refill() {
        let t = RateTable::new(16, 7);
        assert_eq!(t.capacity(), 16);
        let now = 1_000_000_000_000;
        // Spend a victim's burst, then flood with 10 000 distinct keys.
        assert!(t.take("victim", P, now).allowed);
        assert!(t.take("victim", P, now).allowed);
        for i in 0..10_000 {
            let _ = t.take(&format!("flood-{i}"), P, now);
        }
        assert!(t.evictions() > 0, "a full table evicts");
        assert_eq!(t.capacity(), 16, "and does not grow");
        // A key seen for the first time still gets a whole burst.
        assert!(t.take("newcomer", P, now).allowed);
        assert!(t.take("newcomer", P, now).allowed);
        assert!(!t.take("newcomer", P, now).allowed);
    }

    #[test]
    fn refilled_buckets_make_room_without_counting_as_evictions() {
        let t = RateTable::new(4, 7);
        let mut now = 1_000_000_000;
        for i in 0..1000 {
            let _ = t.take(&format!("k{i}"), P, now);
            now += 3_000_000_000; // every earlier bucket has refilled
        }
        assert_eq!(t.evictions(), 0);
    }

    #[test]
    fn threads_share_the_buckets_and_never_overspend() {
        let t = std::sync::Arc::new(RateTable::new(1024, 7));
        let params = RateParams { interval_ns: 1_000_000_000_000, burst: 100 };
        let admitted: usize = (0..4)
            .map(|_| {
                let t = std::sync::Arc::clone(&t);
                std::thread::spawn(move || (0..1000).filter(|_| t.take("shared", params, 5).allowed).count())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap_or(0))
            .sum();
        assert_eq!(admitted, 100, "exactly the burst across all threads");
    }
}
