//! JWTs already verified, so a token seen again skips decoding, signature and claims: the
//! bounded store behind the core's `TokenCache` (what Envoy's `jwt_authn` calls its JWT cache).
//!
//! An entry is keyed by the whole token string and holds what the core verified once. A hit is
//! only the very same token, and the core still checks on every hit what depends on the
//! request: the route's accepted issuers, the token's times against the request's clock, and
//! revocations. Only tokens that passed every check enter, so a flood of forged tokens cannot
//! fill it. Bounded (oldest evicted first); a runtime keeps one per compiled policy and drops it
//! with the policy.

use std::sync::Arc;

use portcullis_core::VerifiedToken;

use crate::bounded::Bounded;

/// A bounded map from token to its verification.
#[derive(Debug, Default)]
pub struct VerifiedTokens {
    entries: Bounded<Box<str>, Arc<VerifiedToken>>,
}

impl VerifiedTokens {
    /// A store of at most `capacity` tokens (0 keeps none).
    pub fn new(capacity: usize) -> VerifiedTokens {
        VerifiedTokens { entries: Bounded::new(capacity) }
    }

    /// The verification of `token`, when it was verified before.
    pub fn get(&self, token: &str) -> Option<Arc<VerifiedToken>> {
        self.entries.get(token).cloned()
    }

    /// Keeps a verification; returns how many old entries made room.
    pub fn put(&mut self, token: &str, verified: Arc<VerifiedToken>) -> u64 {
        self.entries.insert(token.into(), verified)
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.entries.len() == 0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A real verification to store: the core makes them only for tokens that pass.
    fn verified() -> Arc<VerifiedToken> {
        use portcullis_core::{Policy, Request, TokenCache, UnixTime};
        struct Keep(std::cell::RefCell<Option<Arc<VerifiedToken>>>);
        impl portcullis_core::Revocations for Keep {
            fn status(&self, _: portcullis_core::RevocationQuery<'_>) -> portcullis_core::RevocationStatus {
                portcullis_core::RevocationStatus::Active
            }
            fn verified_tokens(&self) -> Option<&dyn TokenCache> {
                Some(self)
            }
        }
        impl TokenCache for Keep {
            fn get(&self, _: &str) -> Option<Arc<VerifiedToken>> {
                None
            }
            fn put(&self, _: &str, v: Arc<VerifiedToken>) {
                *self.0.borrow_mut() = Some(v);
            }
        }
        let policy = Policy::load(
            "version: 1\nissuers:\n  - issuer: https://t.example\n    audiences: [api]\n    algorithms: [HS256]\n    jwks: {keys: [{kty: oct, kid: k, k: MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY}]}\n",
            &portcullis_core::NoFiles,
        )
        .unwrap();
        // HS256 over {"alg":"HS256","kid":"k"}.{"iss":"https://t.example","aud":"api","sub":"a","exp":1900000000}
        let token = "eyJhbGciOiJIUzI1NiIsImtpZCI6ImsifQ.eyJpc3MiOiJodHRwczovL3QuZXhhbXBsZSIsImF1ZCI6ImFwaSIsInN1YiI6ImEiLCJleHAiOjE5MDAwMDAwMDB9.";
        let keep = Keep(std::cell::RefCell::new(None));
        let mac = {
            use base64::Engine as _;
            use sha2::Digest as _;
            // HMAC-SHA256 by hand from the kit's own dependency, to sign the test token.
            let key = b"0123456789abcdef0123456789abcdef";
            let (mut ipad, mut opad) = ([0x36u8; 64], [0x5cu8; 64]);
            for (i, k) in key.iter().enumerate() {
                ipad[i] ^= k;
                opad[i] ^= k;
            }
            let signing = token.trim_end_matches('.');
            let inner = sha2::Sha256::new().chain_update(ipad).chain_update(signing).finalize();
            let outer = sha2::Sha256::new().chain_update(opad).chain_update(inner).finalize();
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(outer)
        };
        let token = format!("{token}{mac}");
        let auth = format!("Bearer {token}");
        let headers = [("authorization", auth.as_str())];
        let d =
            policy.decide(&Request { headers: &headers, ..Request::new("GET", "/", UnixTime(1_800_000_000)) }, &keep);
        assert!(d.allowed(), "{:?}", d.reason);
        keep.0.borrow_mut().take().unwrap()
    }

    #[test]
    fn the_store_is_bounded_keeps_the_newest_and_capacity_zero_keeps_none() {
        let v = verified();
        let mut s = VerifiedTokens::new(3);
        let mut evicted = 0;
        for i in 0..10 {
            evicted += s.put(&format!("t{i}"), Arc::clone(&v));
        }
        assert_eq!((s.len(), evicted), (3, 7));
        assert!(s.get("t9").is_some() && s.get("t0").is_none());
        assert_eq!(s.put("t9", Arc::clone(&v)), 0, "already kept");
        let mut off = VerifiedTokens::new(0);
        off.put("t", v);
        assert!(off.is_empty() && off.get("t").is_none());
    }
}
