//! Hashed API keys: `<prefix><random>`, stored only as SHA-256.
//!
//! A presented key is found by its first `prefix_length` characters (the part dashboards show),
//! then its SHA-256 is compared in constant time with every stored hash under that prefix.
//! Restrictions (expiry, client ranges, origins) are checked after the key is proven, so an
//! unknown key learns nothing about them.

use std::sync::Arc;

use ipnet::IpNet;
use sha2::{Digest, Sha256};

use crate::credential::jwt::refuse_if_revoked;
use crate::identity::Identity;
use crate::reason::Reason;
use crate::request::{HeaderValue, Request};
use crate::revocation::{RevocationQuery, RevocationSet, Revocations};
use crate::types::ApiKeyPrefix;

/// Longest API key accepted.
pub(crate) const MAX_API_KEY_BYTES: usize = 256;

/// An origin a key may be used from: exact (`https://app.example.com`) or any subdomain
/// (`https://*.example.com`). Stored lowercase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum OriginPattern {
    /// Scheme, host and optional port, exactly.
    Exact(String),
    /// `scheme://` and a `.domain[:port]` suffix; at least one label must precede it.
    Subdomains {
        /// `https://`
        scheme: String,
        /// `.example.com` (with port, if any)
        suffix: String,
    },
}

impl OriginPattern {
    /// True when the `Origin` header value is allowed.
    pub(crate) fn matches(&self, origin: &str) -> bool {
        match self {
            OriginPattern::Exact(o) => origin.eq_ignore_ascii_case(o),
            OriginPattern::Subdomains { scheme, suffix } => {
                let Some(host) = strip_prefix_ignore_case(origin, scheme) else {
                    return false;
                };
                host.len() > suffix.len()
                    && host.get(host.len() - suffix.len()..).is_some_and(|tail| tail.eq_ignore_ascii_case(suffix))
                    && host
                        .get(..host.len() - suffix.len())
                        .is_some_and(|label| !label.is_empty() && !label.contains(['/', ':', '@']))
            }
        }
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| s.get(prefix.len()..)).flatten()
}

impl std::str::FromStr for OriginPattern {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.to_ascii_lowercase();
        let (scheme, rest) =
            lower.split_once("://").ok_or_else(|| format!("origin `{s}` must look like https://host[:port]"))?;
        if !matches!(scheme, "http" | "https") || rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
            return Err(format!("origin `{s}` must be scheme://host[:port] with no path"));
        }
        match rest.strip_prefix('*') {
            Some(suffix) if suffix.starts_with('.') && suffix.len() > 1 && !suffix.contains('*') => {
                Ok(OriginPattern::Subdomains { scheme: format!("{scheme}://"), suffix: suffix.to_owned() })
            }
            Some(_) => Err(format!("origin `{s}`: a wildcard is only allowed as `scheme://*.domain`")),
            None if rest.contains('*') => Err(format!("origin `{s}`: misplaced wildcard")),
            None => Ok(OriginPattern::Exact(lower)),
        }
    }
}

/// One stored key.
#[derive(Debug)]
pub(crate) struct ApiKeyEntry {
    /// Stable id (revocation, audit, `key_id`).
    pub id: Arc<str>,
    /// SHA-256 of the whole key.
    pub sha256: [u8; 32],
    /// Unix seconds after which the key is refused.
    pub expires_at: Option<i64>,
    /// When the key was issued (for subject revocations).
    pub created_at: Option<i64>,
    /// Client ranges; empty means any.
    pub allowed_cidrs: Vec<IpNet>,
    /// Origins; empty means any (and no `Origin` needed).
    pub allowed_origins: Vec<OriginPattern>,
    /// Revoked by the policy's own `revoked` section (decided at load, not per request).
    pub revoked_by_policy: bool,
    /// The identity an accepted key yields, shared by every decision that accepts the key.
    pub identity: Arc<Identity>,
}

impl ApiKeyEntry {
    /// `created_at` as a credential issue time.
    #[allow(clippy::cast_precision_loss)]
    pub(crate) fn issued_at(&self) -> Option<f64> {
        self.created_at.map(|t| t as f64)
    }
}

/// The compiled `api_keys` section.
#[derive(Debug)]
pub(crate) struct ApiKeyPolicy {
    /// Type prefix (`ask_`).
    pub prefix: ApiKeyPrefix,
    /// Characters used for lookup, including the type prefix.
    pub prefix_length: usize,
    /// Header carrying a key (besides `Authorization: Bearer`).
    pub header: String,
    entries: Vec<ApiKeyEntry>,
    by_prefix: crate::FastMap<Box<str>, Vec<usize>>,
}

impl ApiKeyPolicy {
    /// Indexes `entries` by their lookup prefix.
    pub(crate) fn new(
        prefix: ApiKeyPrefix,
        prefix_length: usize,
        header: String,
        entries: Vec<(String, ApiKeyEntry)>,
    ) -> Self {
        let mut by_prefix: crate::FastMap<Box<str>, Vec<usize>> =
            crate::FastMap::with_capacity_and_hasher(entries.len(), Default::default());
        let mut list = Vec::with_capacity(entries.len());
        for (i, (lookup, entry)) in entries.into_iter().enumerate() {
            by_prefix.entry(lookup.into_boxed_str()).or_default().push(i);
            list.push(entry);
        }
        ApiKeyPolicy { prefix, prefix_length, header, entries: list, by_prefix }
    }

    /// Stored keys.
    pub(crate) fn entries(&self) -> &[ApiKeyEntry] {
        &self.entries
    }

    /// Marks the keys the policy's static revocations cover, once, at load.
    pub(crate) fn apply_static_revocations(&mut self, statics: &RevocationSet) {
        use crate::revocation::RevocationStatus::Revoked;
        for e in &mut self.entries {
            let by_id = statics.status(RevocationQuery::ApiKey(&e.id)) == Revoked;
            let issued_at = e.issued_at();
            let by_subject = e
                .identity
                .subject
                .as_deref()
                .is_some_and(|subject| statics.status(RevocationQuery::Subject { subject, issued_at }) == Revoked);
            e.revoked_by_policy = by_id || by_subject;
        }
    }

    /// True when `token` carries this deployment's API key prefix.
    pub(crate) fn claims_token(&self, token: &str) -> bool {
        token.starts_with(self.prefix.as_str())
    }

    /// Verifies a presented key.
    pub(crate) fn verify(
        &self,
        key: &str,
        req: &Request<'_>,
        accept: &crate::credential::KeyAccept,
        revocations: &dyn Revocations,
    ) -> Result<Arc<Identity>, Reason> {
        if key.len() > MAX_API_KEY_BYTES || !crate::ascii::all_graphic(key.as_bytes()) {
            return Err(Reason::Malformed);
        }
        let lookup = key.get(..self.prefix_length).ok_or(Reason::UnknownApiKey)?;
        let candidates = self.by_prefix.get(lookup).ok_or(Reason::UnknownApiKey)?;
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        // Compare against every candidate so timing does not reveal which one matched.
        let mut found = None;
        for &i in candidates {
            if let Some(e) = self.entries.get(i)
                && digest_eq(&e.sha256, &digest)
            {
                found = Some(e);
            }
        }
        let entry = found.ok_or(Reason::UnknownApiKey)?;
        if let crate::credential::KeyAccept::Ids(ids) = accept
            && !ids.contains(&entry.id)
        {
            return Err(Reason::CredentialNotAccepted);
        }
        if entry.expires_at.is_some_and(|t| req.now.0 >= t) {
            return Err(Reason::KeyExpired);
        }
        if !entry.allowed_cidrs.is_empty() && !crate::request::client_in(req.client_ip, &entry.allowed_cidrs) {
            return Err(Reason::IpNotAllowed);
        }
        if !entry.allowed_origins.is_empty() {
            match req.header("origin") {
                HeaderValue::One(o) if entry.allowed_origins.iter().any(|p| p.matches(o)) => {}
                _ => return Err(Reason::OriginNotAllowed),
            }
        }
        if entry.revoked_by_policy {
            return Err(Reason::Revoked);
        }
        let none = RevocationSet::empty();
        refuse_if_revoked(none, revocations, RevocationQuery::ApiKey(&entry.id))?;
        if let Some(subject) = entry.identity.subject.as_deref() {
            let issued_at = entry.issued_at();
            refuse_if_revoked(none, revocations, RevocationQuery::Subject { subject, issued_at })?;
        }
        Ok(Arc::clone(&entry.identity))
    }
}

/// Constant-time equality of two SHA-256 digests: XOR-fold as words, then one comparison of the
/// folded value (no branch depends on where the digests differ).
fn digest_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    use subtle::ConstantTimeEq;
    let mut diff = 0u64;
    for (x, y) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        let x = u64::from_ne_bytes(x.try_into().unwrap_or_default());
        let y = u64::from_ne_bytes(y.try_into().unwrap_or_default());
        diff |= x ^ y;
    }
    bool::from(diff.ct_eq(&0))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn exact_origins_match_case_insensitively() {
        let p: OriginPattern = "https://App.Example.com".parse().unwrap();
        assert!(p.matches("https://app.example.com"));
        assert!(p.matches("HTTPS://APP.EXAMPLE.COM"));
        assert!(!p.matches("https://app.example.com:8443"));
        assert!(!p.matches("http://app.example.com"));
        assert!(!p.matches("null"));
    }

    #[test]
    fn subdomain_origins_need_a_label_before_the_suffix() {
        let p: OriginPattern = "https://*.example.com".parse().unwrap();
        assert!(p.matches("https://a.example.com"));
        assert!(p.matches("https://a.b.example.com"));
        assert!(!p.matches("https://example.com"));
        assert!(!p.matches("https://.example.com"));
        assert!(!p.matches("https://evil.com/.example.com"));
        assert!(!p.matches("https://evilexample.com"));
        assert!(!p.matches("http://a.example.com"));
    }

    #[test]
    fn bad_origin_patterns_are_rejected() {
        for bad in ["example.com", "https://a.com/path", "ftp://a.com", "https://a*.com", "https://*", "https://"] {
            assert!(bad.parse::<OriginPattern>().is_err(), "{bad}");
        }
    }

    #[test]
    fn digests_compare_equal_only_when_identical() {
        let a = [7u8; 32];
        assert!(digest_eq(&a, &a));
        for i in 0..32 {
            let mut b = a;
            b[i] ^= 0x80;
            assert!(!digest_eq(&a, &b), "difference at byte {i} missed");
        }
    }
}
