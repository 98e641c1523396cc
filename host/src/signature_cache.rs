//! The sidecar's cache of verified signatures: the adapter kit's [`VerifiedSignatures`] behind
//! a lock, shared by every instance (warm or fresh) in the host's answer to the guest's
//! `signatures` import, with Prometheus counters; emptied on each new policy generation. What
//! is kept, and why it is safe, is said in the kit.

use std::sync::{Arc, Mutex, PoisonError};

use portcullis_adapter::signatures::VerifiedSignatures;
use portcullis_core::{SignatureCheck, SignatureVerdict};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::runtime::HostSignatures;

/// Counters of a cache.
#[derive(Clone, Debug, Default)]
pub struct CacheMetrics {
    /// Checks answered from the cache.
    pub hits: Counter,
    /// Checks verified (and stored when valid).
    pub misses: Counter,
    /// Entries dropped to make room.
    pub evictions: Counter,
    /// Entries held.
    pub entries: Gauge,
}

impl CacheMetrics {
    /// Adds these metrics to a registry (prefixed `portcullis_signature_cache_`).
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("signature_cache");
        r.register("hits", "Signature checks answered from the cache", self.hits.clone());
        r.register("misses", "Signature checks verified", self.misses.clone());
        r.register("evictions", "Verified signatures dropped to make room", self.evictions.clone());
        r.register("entries", "Verified signatures held", self.entries.clone());
    }
}

/// A bounded set of verified signatures.
#[derive(Debug)]
pub struct SignatureCache {
    /// Fixed at creation, so the request path reads it without the lock.
    capacity: usize,
    entries: Mutex<VerifiedSignatures>,
    /// Its counters.
    pub metrics: CacheMetrics,
}

impl SignatureCache {
    /// A cache of at most `capacity` signatures (0 keeps none).
    pub fn new(capacity: usize) -> SignatureCache {
        SignatureCache {
            capacity,
            entries: Mutex::new(VerifiedSignatures::new(capacity)),
            metrics: CacheMetrics::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VerifiedSignatures> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Answers `check` from the cache, or with `verify` (storing a valid answer). The lock is
    /// not held while `verify` runs.
    pub fn verify(
        &self,
        check: &SignatureCheck<'_>,
        verify: impl FnOnce(&SignatureCheck<'_>) -> Result<SignatureVerdict, String>,
    ) -> Result<SignatureVerdict, String> {
        if self.capacity == 0 {
            return verify(check);
        }
        let key = VerifiedSignatures::digest(check);
        if self.lock().contains(&key) {
            self.metrics.hits.inc();
            return Ok(SignatureVerdict::Valid);
        }
        self.metrics.misses.inc();
        let verdict = verify(check)?;
        if verdict == SignatureVerdict::Valid {
            let mut e = self.lock();
            self.metrics.evictions.inc_by(e.insert(key));
            self.metrics.entries.set(i64::try_from(e.len()).unwrap_or(i64::MAX));
        }
        Ok(verdict)
    }

    /// Forgets every entry (a new policy generation: its keys may differ).
    pub fn clear(&self) {
        self.lock().clear();
        self.metrics.entries.set(0);
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `inner` behind `cache`: what the sidecar hands its runtime.
pub fn cached(inner: HostSignatures, cache: Arc<SignatureCache>) -> HostSignatures {
    HostSignatures(Arc::new(move |check| cache.verify(check, |c| (inner.0)(c))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_core::{Alg, PublicKeyRef};

    fn check<'a>(message: &'a [u8], signature: &'a [u8]) -> SignatureCheck<'a> {
        SignatureCheck { alg: Alg::ES256, key: PublicKeyRef::Ec { point: b"point" }, message, signature }
    }

    #[test]
    fn a_valid_signature_is_verified_once_and_an_invalid_one_every_time() {
        let cache = SignatureCache::new(8);
        let mut calls = 0;
        for _ in 0..3 {
            let v = cache.verify(&check(b"m", b"good"), |_| {
                calls += 1;
                Ok(SignatureVerdict::Valid)
            });
            assert_eq!(v, Ok(SignatureVerdict::Valid));
        }
        assert_eq!(calls, 1);
        for _ in 0..3 {
            let v = cache.verify(&check(b"m", b"forged"), |_| {
                calls += 1;
                Ok(SignatureVerdict::Invalid)
            });
            assert_eq!(v, Ok(SignatureVerdict::Invalid));
        }
        assert_eq!(calls, 4, "invalid answers are never cached");
        assert_eq!((cache.metrics.hits.get(), cache.metrics.misses.get()), (2, 4));
        // Another key, message or signature is another entry.
        let other_key = SignatureCheck { key: PublicKeyRef::Ec { point: b"other" }, ..check(b"m", b"good") };
        assert_eq!(cache.verify(&other_key, |_| Ok(SignatureVerdict::Invalid)), Ok(SignatureVerdict::Invalid));
        assert_eq!(
            cache.verify(&check(b"m2", b"good"), |_| Ok(SignatureVerdict::Invalid)),
            Ok(SignatureVerdict::Invalid)
        );
        // A host error is passed on, not cached.
        assert!(cache.verify(&check(b"e", b"e"), |_| Err("down".into())).is_err());
    }

    #[test]
    fn the_cache_stays_bounded_under_a_flood_and_clears() {
        let cache = SignatureCache::new(100);
        for i in 0..10_000u32 {
            let m = i.to_le_bytes();
            cache.verify(&check(&m, b"s"), |_| Ok(SignatureVerdict::Valid)).unwrap();
        }
        assert_eq!(cache.len(), 100);
        assert_eq!(cache.metrics.evictions.get(), 9_900);
        assert_eq!(cache.metrics.entries.get(), 100);
        // The newest are kept.
        let last = 9_999u32.to_le_bytes();
        assert_eq!(cache.verify(&check(&last, b"s"), |_| Err("not asked".into())), Ok(SignatureVerdict::Valid));
        cache.clear();
        assert!(cache.is_empty());
        let off = SignatureCache::new(0);
        off.verify(&check(b"m", b"s"), |_| Ok(SignatureVerdict::Valid)).unwrap();
        assert!(off.is_empty(), "capacity 0 keeps nothing");
    }
}
