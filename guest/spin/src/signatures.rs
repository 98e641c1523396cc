//! Valid signatures remembered across instances, in the key-value store: Spin offers a
//! component no signature capability and no memory between requests, so without this every
//! request with an RS256 token pays an RSA verification in wasm.
//!
//! The rules are the adapter kit's cache of verified signatures (an entry is the SHA-256 of the
//! whole check; only valid answers are kept; every claim check still runs on every request),
//! kept in a store instead of memory:
//!
//! - **Bounded**: 256 buckets by the entry's first byte, each a value holding at most
//!   [`PER_BUCKET`] entries, oldest dropped first: one read per lookup, one write per new
//!   signature, at most 256 × 16 entries whatever the traffic.
//! - **Not forgeable through the store**: an entry is an HMAC of the check's digest under a
//!   secret made at build time (`portcullis spin build`) and kept in the component's image, so
//!   another component that can write the store cannot make a signature count as verified.
//!   Concurrent writers may lose an entry: it is verified again next time.

use hmac::{Hmac, Mac};
use portcullis_adapter::signatures::VerifiedSignatures;
use portcullis_core::{SignatureCheck, SignatureVerdict};
use sha2::Sha256;

use crate::revocations::Store;

/// Prefix of the bucket keys.
pub const PREFIX: &str = "portcullis.signatures.";
/// Entries per bucket.
pub const PER_BUCKET: usize = 16;
const ENTRY: usize = 32;

/// The store's view of remembered signatures, under one build's secret.
pub struct Remembered<'a> {
    store: &'a dyn Store,
    secret: &'a [u8],
}

impl std::fmt::Debug for Remembered<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remembered").finish_non_exhaustive()
    }
}

impl<'a> Remembered<'a> {
    /// Signatures in `store`, keyed with `secret` (at least 16 bytes, or nothing is
    /// remembered).
    pub fn new(store: &'a dyn Store, secret: &'a [u8]) -> Remembered<'a> {
        Remembered { store, secret }
    }

    fn entry(&self, check: &SignatureCheck<'_>) -> Option<([u8; ENTRY], String)> {
        if self.secret.len() < 16 {
            return None;
        }
        let digest = VerifiedSignatures::digest(check);
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.secret).ok()?;
        mac.update(&digest);
        let entry: [u8; ENTRY] = mac.finalize().into_bytes().into();
        Some((entry, format!("{PREFIX}{:02x}", entry[0])))
    }

    /// [`SignatureVerdict::Valid`] when this signature was verified before; otherwise
    /// `Unsupported` (the core verifies it).
    pub fn lookup(&self, check: &SignatureCheck<'_>) -> SignatureVerdict {
        let Some((entry, key)) = self.entry(check) else { return SignatureVerdict::Unsupported };
        match self.store.get(&key) {
            Ok(Some(bucket)) if bucket.chunks_exact(ENTRY).any(|e| e == entry) => SignatureVerdict::Valid,
            _ => SignatureVerdict::Unsupported,
        }
    }

    /// Remembers a signature the core found valid (invalid ones are never kept).
    pub fn remember(&self, check: &SignatureCheck<'_>, valid: bool) {
        let Some((entry, key)) = self.entry(check).filter(|_| valid) else { return };
        let mut bucket = match self.store.get(&key) {
            Ok(Some(b)) if b.len() % ENTRY == 0 => b,
            Ok(_) => Vec::new(),
            Err(_) => return,
        };
        if bucket.chunks_exact(ENTRY).any(|e| e == entry) {
            return;
        }
        bucket.extend_from_slice(&entry);
        let excess = bucket.len().saturating_sub(PER_BUCKET * ENTRY);
        bucket.drain(..excess);
        let _ = self.store.set(&key, &bucket);
    }
}

#[cfg(test)]
mod tests {
    use portcullis_core::{Alg, PublicKeyRef};

    use super::*;

    use crate::revocations::memory::Map;

    fn check<'a>(message: &'a [u8], signature: &'a [u8]) -> SignatureCheck<'a> {
        SignatureCheck {
            alg: Alg::RS256,
            key: PublicKeyRef::Rsa { n: b"modulus", e: b"\x01\x00\x01" },
            message,
            signature,
        }
    }

    const SECRET: &[u8] = b"a build's secret, 32 bytes long!";

    #[test]
    fn only_valid_signatures_are_remembered_under_the_builds_secret() {
        let store = Map::default();
        let memo = Remembered::new(&store, SECRET);
        let c = check(b"header.payload", b"sig");
        assert_eq!(memo.lookup(&c), SignatureVerdict::Unsupported);
        memo.remember(&c, false);
        assert!(store.0.borrow().is_empty(), "an invalid signature is never kept");
        memo.remember(&c, true);
        assert_eq!(memo.lookup(&c), SignatureVerdict::Valid);
        assert_eq!(memo.lookup(&check(b"header.payload", b"sig2")), SignatureVerdict::Unsupported);
        // Another build (another secret) does not trust these entries.
        let other = Remembered::new(&store, b"another build's secret, 32 bytes");
        assert_eq!(other.lookup(&c), SignatureVerdict::Unsupported);
        // Without a secret nothing is remembered.
        let none = Remembered::new(&store, b"");
        none.remember(&check(b"x", b"y"), true);
        assert_eq!(none.lookup(&check(b"x", b"y")), SignatureVerdict::Unsupported);
    }

    #[test]
    fn the_store_holds_at_most_sixteen_entries_per_bucket_oldest_dropped() {
        let store = Map::default();
        let memo = Remembered::new(&store, SECRET);
        let messages: Vec<Vec<u8>> = (0..5000u32).map(|i| i.to_le_bytes().to_vec()).collect();
        for m in &messages {
            memo.remember(&check(m, b"s"), true);
        }
        let map = store.0.borrow();
        assert!(map.len() <= 256);
        assert!(map.values().all(|b| b.len() <= PER_BUCKET * ENTRY && b.len() % ENTRY == 0));
        drop(map);
        assert_eq!(memo.lookup(&check(&messages[4999], b"s")), SignatureVerdict::Valid, "the newest stays");
        assert_eq!(memo.lookup(&check(&messages[0], b"s")), SignatureVerdict::Unsupported, "the oldest went");
    }
}
