//! Rate-limit buckets in Spin's key-value store, shared by every instance of the app.
//!
//! Spin makes a fresh instance per request, so a bucket must live in the store: a fixed number
//! of slots (`rate_limit_slots`), each holding one bucket as the adapter kit's 16-byte record
//! (`portcullis_adapter::rate::spend_record`), under `portcullis:rl:<slot>`. A request reads its
//! slot and writes it back: Spin's store (`fermyon:spin/key-value@2.0.0`) has no
//! compare-and-swap, so two instances deciding at the same moment can both spend the bucket's
//! last request. Under N concurrent requests a limit can therefore admit up to N - 1 more than
//! its burst; the rate over time holds. docs/rate-limits.md says so.

use std::cell::OnceCell;
use std::time::Duration;

use portcullis_adapter::rate::{SlotKey, spend_record};
use portcullis_core::rate::{RateBucket, RateCount};

use crate::revocations::Store;

/// Opens a store by its label.
pub type Opener<'a> = &'a dyn Fn(&str) -> Result<Box<dyn Store>, String>;

/// The buckets of one request: the store is opened on the first limit that applies.
pub struct Buckets<'a> {
    label: &'a str,
    slots: u64,
    seed: u64,
    open: Opener<'a>,
    store: OnceCell<Option<Box<dyn Store>>>,
}

impl std::fmt::Debug for Buckets<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Buckets").field("label", &self.label).field("slots", &self.slots).finish_non_exhaustive()
    }
}

impl<'a> Buckets<'a> {
    /// Buckets in the store `label`, `slots` of them, slot hashes seeded with `seed` (the same
    /// for every instance of a build).
    pub fn new(label: &'a str, slots: u64, seed: u64, open: Opener<'a>) -> Buckets<'a> {
        Buckets { label, slots, seed, open, store: OnceCell::new() }
    }

    /// Spends one request at `now` (the wall clock: instances share no other).
    pub fn take(&self, bucket: &RateBucket<'_>, now: Duration) -> RateCount {
        let store = self.store.get_or_init(|| (self.open)(self.label).ok());
        let Some(store) = store else { return RateCount::Unavailable };
        let slot = SlotKey::of(bucket.key, self.slots, self.seed);
        let name = format!("portcullis:rl:{}", slot.slot);
        let Ok(record) = store.get(&name) else { return RateCount::Unavailable };
        let now_ns = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX);
        let (out, taken) = spend_record(record.as_deref(), slot, bucket.params, now_ns);
        if let Some(out) = out
            && store.set(&name, &out).is_err()
        {
            return RateCount::Unavailable;
        }
        RateCount::Counted(taken)
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    use portcullis_core::rate::RateParams;

    use super::*;
    use crate::revocations::memory::Map;

    /// A store whose every read fails.
    struct Down;

    impl Store for Down {
        fn get(&self, _: &str) -> Result<Option<Vec<u8>>, String> {
            Err("down".into())
        }
        fn set(&self, _: &str, _: &[u8]) -> Result<(), String> {
            Err("down".into())
        }
        fn delete(&self, _: &str) -> Result<(), String> {
            Err("down".into())
        }
    }

    const P: RateParams = RateParams { interval_ns: 1_000_000_000, burst: 2 };

    #[test]
    fn instances_share_buckets_through_the_store() {
        let memory = Rc::new(Map::default());
        let opened = RefCell::new(0);
        let open = |_: &str| {
            *opened.borrow_mut() += 1;
            Ok(Box::new(Rc::clone(&memory)) as Box<dyn Store>)
        };
        let now = Duration::from_secs(100);
        let bucket = RateBucket { key: "limit\x1fk1", params: P };
        // Each request is a fresh instance: new `Buckets`, same store.
        let spend = || Buckets::new("default", 16, 7, &open).take(&bucket, now);
        assert!(matches!(spend(), RateCount::Counted(t) if t.allowed && t.remaining == 1));
        assert!(matches!(spend(), RateCount::Counted(t) if t.allowed && t.remaining == 0));
        assert!(matches!(spend(), RateCount::Counted(t) if !t.allowed));
        assert_eq!(*opened.borrow(), 3);
        assert_eq!(memory.0.borrow().len(), 1, "one slot");
        let later = Buckets::new("default", 16, 7, &open).take(&bucket, now + Duration::from_secs(1));
        assert!(matches!(later, RateCount::Counted(t) if t.allowed));
    }

    #[test]
    fn a_store_that_fails_leaves_the_decision_to_the_policy() {
        let open_fails = |_: &str| Err::<Box<dyn Store>, _>("no such store".to_owned());
        let bucket = RateBucket { key: "k", params: P };
        assert_eq!(Buckets::new("x", 16, 7, &open_fails).take(&bucket, Duration::from_secs(1)), RateCount::Unavailable);
        let open = |_: &str| Ok(Box::new(Down) as Box<dyn Store>);
        assert_eq!(Buckets::new("x", 16, 7, &open).take(&bucket, Duration::from_secs(1)), RateCount::Unavailable);
    }
}
