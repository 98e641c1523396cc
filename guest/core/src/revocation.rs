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
}

/// No dynamic revocations (tools, tests, a policy whose static lists are enough).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoRevocations;

impl Revocations for NoRevocations {
    fn status(&self, _: RevocationQuery<'_>) -> RevocationStatus {
        RevocationStatus::Active
    }
}

/// An in-memory set, usable as a host implementation and as a test double.
#[derive(Clone, Debug, Default)]
pub struct RevocationSet {
    token_ids: FastSet<String>,
    service_token_ids: FastSet<String>,
    api_keys: FastSet<String>,
    /// Subject -> revoked-before time (Unix seconds).
    subjects: FastMap<String, i64>,
}

static EMPTY_SET: std::sync::LazyLock<RevocationSet> = std::sync::LazyLock::new(RevocationSet::default);

impl RevocationSet {
    /// A shared empty set.
    pub fn empty() -> &'static RevocationSet {
        &EMPTY_SET
    }

    /// Revokes a JWT `jti`.
    pub fn revoke_token_id(&mut self, jti: impl Into<String>) {
        self.token_ids.insert(jti.into());
    }
    /// Revokes a service token `jti`.
    pub fn revoke_service_token_id(&mut self, jti: impl Into<String>) {
        self.service_token_ids.insert(jti.into());
    }
    /// Revokes an API key by id.
    pub fn revoke_api_key(&mut self, id: impl Into<String>) {
        self.api_keys.insert(id.into());
    }
    /// Revokes every credential of `subject` issued at or before `before`.
    pub fn revoke_subject(&mut self, subject: impl Into<String>, before: i64) {
        let e = self.subjects.entry(subject.into()).or_insert(before);
        *e = (*e).max(before);
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
