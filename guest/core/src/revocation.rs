//! Revocation lookups: the policy's static lists plus whatever the host supplies.
//!
//! The core never holds the dynamic set itself. Each runtime implements [`Revocations`] over its
//! own store (the sidecar's in-memory set fed from Postgres, a feed snapshot in Envoy or Spin) and
//! passes it to every decision.

use crate::{FastMap, FastSet};

/// What is being asked about.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RevocationQuery<'a> {
    /// A JWT `jti`.
    TokenId(&'a str),
    /// A service token `jti`.
    ServiceTokenId(&'a str),
    /// An API key id.
    ApiKey(&'a str),
    /// A subject, with the credential's issue time: revoked when issued at or before the
    /// subject's revocation time, or when the credential has no issue time.
    Subject {
        /// The subject.
        subject: &'a str,
        /// `iat`, when the credential carries one.
        issued_at: Option<f64>,
    },
}

/// The kinds of revocation entry, with their stable names (`jti`, `service-token`, `api-key`,
/// `subject`) as used by the CLI, the admin API, the feed and the Postgres schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RevocationKind {
    /// A JWT `jti`.
    TokenId,
    /// A service token `jti`.
    ServiceTokenId,
    /// An API key id.
    ApiKey,
    /// Every credential of a subject issued at or before a cut-off.
    Subject,
}

impl RevocationKind {
    /// Every kind.
    pub const ALL: [RevocationKind; 4] =
        [RevocationKind::TokenId, RevocationKind::ServiceTokenId, RevocationKind::ApiKey, RevocationKind::Subject];

    /// The stable name.
    pub fn code(self) -> &'static str {
        match self {
            RevocationKind::TokenId => "jti",
            RevocationKind::ServiceTokenId => "service-token",
            RevocationKind::ApiKey => "api-key",
            RevocationKind::Subject => "subject",
        }
    }

    /// Parses a stable name.
    pub fn from_code(code: &str) -> Option<RevocationKind> {
        RevocationKind::ALL.into_iter().find(|k| k.code() == code)
    }
}

impl serde::Serialize for RevocationKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.code())
    }
}

impl<'de> serde::Deserialize<'de> for RevocationKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        RevocationKind::from_code(&s).ok_or_else(|| {
            serde::de::Error::custom(format!("unknown revocation kind `{s}` (jti, service-token, api-key, subject)"))
        })
    }
}

impl std::fmt::Display for RevocationKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

/// The answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RevocationStatus {
    /// Not revoked, as far as a fresh-enough set knows.
    Active,
    /// Revoked.
    Revoked,
    /// The host cannot vouch for its set (stale past its bound, configured to fail closed).
    Unavailable,
}

/// A source of revocations supplied by the host.
pub trait Revocations {
    /// Looks up one identifier. Must be cheap: it runs on every request.
    fn status(&self, query: RevocationQuery<'_>) -> RevocationStatus;

    /// Verifies one asymmetric signature for the core, when the host can do it faster than
    /// the core's own code (the sidecar, natively, for the wasm guest). The core chose the key,
    /// the algorithm and the bytes; the host computes one primitive. The default,
    /// [`SignatureVerdict::Unsupported`], makes the core verify it itself.
    fn verify_signature(&self, check: &SignatureCheck<'_>) -> SignatureVerdict {
        let _ = check;
        SignatureVerdict::Unsupported
    }

    /// Told what the core found when it verified `check` itself (after
    /// [`Revocations::verify_signature`] answered `Unsupported`), so that a host with no
    /// signature capability of its own can remember valid signatures and answer
    /// [`SignatureVerdict::Valid`] next time (the Spin component keeps them in its key-value
    /// store, which outlives its instances). The default forgets.
    fn signature_checked(&self, check: &SignatureCheck<'_>, valid: bool) {
        let _ = (check, valid);
    }

    /// Spends one request from a rate-limit bucket the host keeps (see `crate::rate`): the
    /// runtime's counter, shared by every instance that should share the limit, counting with
    /// [`crate::rate::take`] on the host's own clock. The default, `Unavailable`, leaves the
    /// decision to the policy's `rate_limits.when_uncounted` (deny unless it says otherwise).
    fn rate_limit(&self, bucket: &RateBucket<'_>) -> RateCount {
        let _ = bucket;
        RateCount::Unavailable
    }

    /// The host's cache of verified JWTs, if it keeps one for this policy (see [`TokenCache`]).
    fn verified_tokens(&self) -> Option<&dyn TokenCache> {
        None
    }
}

/// JWTs that passed every check once, kept by a host per compiled policy (it must drop them
/// with the policy: they name its issuers). On a hit the core skips decoding, the signature,
/// the claims and building the identity, and still checks what depends on the request: the
/// route's accepted issuers, the token's times against the request's clock, and revocations.
/// A hit therefore decides exactly as the full path would.
pub trait TokenCache {
    /// The verification of `token` (the whole compact JWT), if kept.
    fn get(&self, token: &str) -> Option<std::sync::Arc<crate::credential::jwt::VerifiedToken>>;
    /// Keeps a verification (the core calls this only for tokens that passed every check).
    fn put(&self, token: &str, verified: std::sync::Arc<crate::credential::jwt::VerifiedToken>);
}

use crate::keys::{SignatureCheck, SignatureVerdict};
use crate::rate::{RateBucket, RateCount};

/// No dynamic revocations (tools, tests, a policy whose static lists are enough).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoRevocations;

impl Revocations for NoRevocations {
    fn status(&self, _: RevocationQuery<'_>) -> RevocationStatus {
        RevocationStatus::Active
    }
}

/// An in-memory set: the policy's static lists, a host's live set, a test double.
///
/// Lookups hash the identifier once and probe one table, whatever the size of the set. Entries
/// are `Box<str>` rather than `String` (16 bytes less per entry at a million entries).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RevocationSet {
    token_ids: FastSet<Box<str>>,
    service_token_ids: FastSet<Box<str>>,
    api_keys: FastSet<Box<str>>,
    /// Subject -> revoked-before time (Unix seconds).
    subjects: FastMap<Box<str>, i64>,
}

static EMPTY_SET: std::sync::LazyLock<RevocationSet> = std::sync::LazyLock::new(RevocationSet::default);

impl RevocationSet {
    /// A shared empty set.
    pub fn empty() -> &'static RevocationSet {
        &EMPTY_SET
    }

    /// Revokes a JWT `jti`.
    pub fn revoke_token_id(&mut self, jti: impl Into<String>) {
        self.token_ids.insert(jti.into().into_boxed_str());
    }
    /// Revokes a service token `jti`.
    pub fn revoke_service_token_id(&mut self, jti: impl Into<String>) {
        self.service_token_ids.insert(jti.into().into_boxed_str());
    }
    /// Revokes an API key by id.
    pub fn revoke_api_key(&mut self, id: impl Into<String>) {
        self.api_keys.insert(id.into().into_boxed_str());
    }
    /// Revokes every credential of `subject` issued at or before `before`; a cut-off already
    /// later is kept (an accumulating source such as a policy's static list).
    pub fn revoke_subject(&mut self, subject: impl Into<String>, before: i64) {
        let e = self.subjects.entry(subject.into().into_boxed_str()).or_insert(before);
        *e = (*e).max(before);
    }

    /// Makes `(kind, id)` revoked exactly as given: for a subject, `before` replaces any earlier
    /// cut-off (a replicated source, whose latest row is the truth). `before` is ignored for
    /// other kinds.
    pub fn insert(&mut self, kind: RevocationKind, id: &str, before: i64) {
        match kind {
            RevocationKind::TokenId => self.revoke_token_id(id),
            RevocationKind::ServiceTokenId => self.revoke_service_token_id(id),
            RevocationKind::ApiKey => self.revoke_api_key(id),
            RevocationKind::Subject => {
                self.subjects.insert(id.into(), before);
            }
        }
    }

    /// Removes `(kind, id)`; true when it was present.
    pub fn remove(&mut self, kind: RevocationKind, id: &str) -> bool {
        match kind {
            RevocationKind::TokenId => self.token_ids.remove(id),
            RevocationKind::ServiceTokenId => self.service_token_ids.remove(id),
            RevocationKind::ApiKey => self.api_keys.remove(id),
            RevocationKind::Subject => self.subjects.remove(id).is_some(),
        }
    }

    /// Every entry as `(kind, id, before)` (`before` is 0 except for subjects), in no order.
    pub fn entries(&self) -> impl Iterator<Item = (RevocationKind, &str, i64)> + '_ {
        fn plain(k: RevocationKind, s: &FastSet<Box<str>>) -> impl Iterator<Item = (RevocationKind, &str, i64)> {
            s.iter().map(move |id| (k, &**id, 0))
        }
        plain(RevocationKind::TokenId, &self.token_ids)
            .chain(plain(RevocationKind::ServiceTokenId, &self.service_token_ids))
            .chain(plain(RevocationKind::ApiKey, &self.api_keys))
            .chain(self.subjects.iter().map(|(id, &b)| (RevocationKind::Subject, &**id, b)))
    }

    /// Reserves room for `additional` more entries of `kind` (bulk loads).
    pub fn reserve(&mut self, kind: RevocationKind, additional: usize) {
        match kind {
            RevocationKind::TokenId => self.token_ids.reserve(additional),
            RevocationKind::ServiceTokenId => self.service_token_ids.reserve(additional),
            RevocationKind::ApiKey => self.api_keys.reserve(additional),
            RevocationKind::Subject => self.subjects.reserve(additional),
        }
    }
    /// Number of entries.
    pub fn len(&self) -> usize {
        self.token_ids.len() + self.service_token_ids.len() + self.api_keys.len() + self.subjects.len()
    }
    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Revocations for RevocationSet {
    fn status(&self, query: RevocationQuery<'_>) -> RevocationStatus {
        let revoked = match query {
            RevocationQuery::TokenId(id) => self.token_ids.contains(id),
            RevocationQuery::ServiceTokenId(id) => self.service_token_ids.contains(id),
            RevocationQuery::ApiKey(id) => self.api_keys.contains(id),
            RevocationQuery::Subject { subject, issued_at } => {
                self.subjects.get(subject).is_some_and(|&before| subject_revoked(before, issued_at))
            }
        };
        if revoked { RevocationStatus::Revoked } else { RevocationStatus::Active }
    }
}

/// The subject rule: a credential issued at or before the cut-off is revoked, and one with no
/// issue time is treated as issued before it (it cannot prove otherwise).
#[allow(clippy::cast_precision_loss)]
pub fn subject_revoked(before: i64, issued_at: Option<f64>) -> bool {
    issued_at.is_none_or(|iat| iat <= before as f64)
}

/// Asks the policy's static set first, then the host's.
pub(crate) fn check(
    statics: &RevocationSet,
    dynamic: &dyn Revocations,
    query: RevocationQuery<'_>,
) -> RevocationStatus {
    match statics.status(query) {
        RevocationStatus::Active => dynamic.status(query),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn insert_replaces_a_subject_cutoff_and_remove_forgets() {
        let mut s = RevocationSet::default();
        s.insert(RevocationKind::Subject, "bob", 100);
        s.insert(RevocationKind::Subject, "bob", 50);
        let q = |iat| RevocationQuery::Subject { subject: "bob", issued_at: Some(iat) };
        assert_eq!(s.status(q(60.0)), RevocationStatus::Active, "a replicated row replaces the cut-off");
        assert_eq!(s.status(q(50.0)), RevocationStatus::Revoked);
        s.insert(RevocationKind::ApiKey, "k1", 0);
        assert_eq!(s.len(), 2);
        assert_eq!(s.entries().count(), 2);
        assert!(s.remove(RevocationKind::ApiKey, "k1"));
        assert!(!s.remove(RevocationKind::ApiKey, "k1"));
        assert!(!s.remove(RevocationKind::TokenId, "bob"), "kinds stay separate");
        assert!(s.remove(RevocationKind::Subject, "bob"));
        assert!(s.is_empty());
    }

    #[test]
    fn kind_codes_round_trip() {
        for k in RevocationKind::ALL {
            assert_eq!(RevocationKind::from_code(k.code()), Some(k));
        }
        assert_eq!(RevocationKind::from_code("JTI"), None);
    }

    #[test]
    fn kinds_are_separate_namespaces() {
        let mut s = RevocationSet::default();
        s.revoke_token_id("x");
        assert_eq!(s.status(RevocationQuery::TokenId("x")), RevocationStatus::Revoked);
        assert_eq!(s.status(RevocationQuery::ApiKey("x")), RevocationStatus::Active);
        assert_eq!(s.status(RevocationQuery::ServiceTokenId("x")), RevocationStatus::Active);
    }

    #[test]
    fn subject_revocation_covers_tokens_issued_up_to_the_cutoff() {
        let mut s = RevocationSet::default();
        s.revoke_subject("alice", 1000);
        let q = |iat| RevocationQuery::Subject { subject: "alice", issued_at: iat };
        assert_eq!(s.status(q(Some(999.5))), RevocationStatus::Revoked);
        assert_eq!(s.status(q(Some(1000.0))), RevocationStatus::Revoked);
        assert_eq!(s.status(q(Some(1000.5))), RevocationStatus::Active);
        assert_eq!(s.status(q(None)), RevocationStatus::Revoked, "no iat cannot prove it is newer");
        s.revoke_subject("alice", 10);
        assert_eq!(s.status(q(Some(999.0))), RevocationStatus::Revoked, "an earlier cut-off never narrows");
    }
}
