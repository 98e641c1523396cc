//! Signatures already verified, so a token seen again skips the cryptography: the rules every
//! runtime's cache follows (the sidecar's, shared by its instances behind a lock; the Envoy
//! filter's, one per worker VM).
//!
//! An entry is the SHA-256 of the whole check (algorithm, key, message, signature): a hit can
//! only be the very same signature over the very same bytes with the very same key. Only
//! *valid* answers are kept, so a flood of forged tokens cannot fill it. Every claim check
//! (times, audience, revocation, policy) still runs on every request: the cache answers one
//! primitive, never a decision. Bounded (oldest entries evicted first); a runtime empties it
//! when the policy, and so the keys, change.

use portcullis_core::{PublicKeyRef, SignatureCheck, SignatureVerdict};
use sha2::{Digest as _, Sha256};

use crate::bounded::Bounded;

/// What one lookup did, for a runtime's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lookup {
    /// Answered from the cache.
    pub hit: bool,
    /// Entries dropped to make room for this one.
    pub evicted: u64,
}

/// A bounded set of verified signatures.
#[derive(Debug, Default)]
pub struct VerifiedSignatures {
    entries: Bounded<[u8; 32], ()>,
}

impl VerifiedSignatures {
    /// A cache of at most `capacity` signatures (0 keeps none).
    pub fn new(capacity: usize) -> VerifiedSignatures {
        VerifiedSignatures { entries: Bounded::new(capacity) }
    }

    /// The entry for `check`: every field length-prefixed, so no two checks share an encoding.
    pub fn digest(check: &SignatureCheck<'_>) -> [u8; 32] {
        let mut h = Sha256::new();
        let mut field = |bytes: &[u8]| {
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        };
        field(check.alg.name().as_bytes());
        match check.key {
            PublicKeyRef::Rsa { n, e } => {
                field(b"rsa");
                field(n);
                field(e);
            }
            PublicKeyRef::Ec { point } => {
                field(b"ec");
                field(point);
            }
        }
        field(check.message);
        field(check.signature);
        h.finalize().into()
    }

    /// Whether `digest` was verified before.
    pub fn contains(&self, digest: &[u8; 32]) -> bool {
        self.entries.get(digest).is_some()
    }

    /// Records a *valid* verification; returns how many old entries made room.
    pub fn insert(&mut self, digest: [u8; 32]) -> u64 {
        self.entries.insert(digest, ())
    }

    /// Answers `check` from the cache, or with `verify` (keeping a valid answer). For a runtime
    /// that owns the cache outright; the sidecar splits the steps around its lock.
    pub fn verify<E>(
        &mut self,
        check: &SignatureCheck<'_>,
        verify: impl FnOnce(&SignatureCheck<'_>) -> Result<SignatureVerdict, E>,
    ) -> (Result<SignatureVerdict, E>, Lookup) {
        if self.entries.capacity() == 0 {
            return (verify(check), Lookup::default());
        }
        let digest = Self::digest(check);
        if self.contains(&digest) {
            return (Ok(SignatureVerdict::Valid), Lookup { hit: true, evicted: 0 });
        }
        let verdict = verify(check);
        let evicted = if matches!(verdict, Ok(SignatureVerdict::Valid)) { self.insert(digest) } else { 0 };
        (verdict, Lookup { hit: false, evicted })
    }

    /// Forgets every entry.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.entries.len() == 0
    }

    /// The most it holds.
    pub fn capacity(&self) -> usize {
        self.entries.capacity()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use portcullis_core::Alg;

    fn check<'a>(message: &'a [u8], signature: &'a [u8]) -> SignatureCheck<'a> {
        SignatureCheck { alg: Alg::ES256, key: PublicKeyRef::Ec { point: b"point" }, message, signature }
    }

    #[test]
    fn a_valid_signature_is_verified_once_and_an_invalid_one_every_time() {
        let mut cache = VerifiedSignatures::new(8);
        let mut calls = 0;
        for i in 0..3 {
            let (v, l) = cache.verify(&check(b"m", b"good"), |_| {
                calls += 1;
                Ok::<_, ()>(SignatureVerdict::Valid)
            });
            assert_eq!((v, l.hit), (Ok(SignatureVerdict::Valid), i > 0));
        }
        assert_eq!(calls, 1);
        for _ in 0..3 {
            let (v, _) = cache.verify(&check(b"m", b"forged"), |_| {
                calls += 1;
                Ok::<_, ()>(SignatureVerdict::Invalid)
            });
            assert_eq!(v, Ok(SignatureVerdict::Invalid));
        }
        assert_eq!(calls, 4, "invalid answers are never cached");
        let other_key = SignatureCheck { key: PublicKeyRef::Ec { point: b"other" }, ..check(b"m", b"good") };
        assert_eq!(
            cache.verify(&other_key, |_| Ok::<_, ()>(SignatureVerdict::Invalid)).0,
            Ok(SignatureVerdict::Invalid)
        );
        assert!(cache.verify(&check(b"e", b"e"), |_| Err("down")).0.is_err(), "a host error is passed on, not kept");
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn the_cache_stays_bounded_under_a_flood_keeps_the_newest_and_clears() {
        let mut cache = VerifiedSignatures::new(100);
        let mut evicted = 0;
        for i in 0..10_000u32 {
            let m = i.to_le_bytes();
            evicted += cache.verify(&check(&m, b"s"), |_| Ok::<_, ()>(SignatureVerdict::Valid)).1.evicted;
        }
        assert_eq!((cache.len(), evicted), (100, 9_900));
        let last = 9_999u32.to_le_bytes();
        assert!(cache.verify(&check(&last, b"s"), |_| Err("not asked")).1.hit);
        cache.clear();
        assert!(cache.is_empty());
        let mut off = VerifiedSignatures::new(0);
        off.verify(&check(b"m", b"s"), |_| Ok::<_, ()>(SignatureVerdict::Valid)).0.unwrap();
        assert!(off.is_empty(), "capacity 0 keeps nothing");
    }
}
